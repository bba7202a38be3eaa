//! `cargo xtask bench`: benchmarks with their machine description, for BENCHMARKS.md.

use std::process::Stdio;

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;

use crate::util::{artifacts_dir, cargo, note, step};

#[derive(Subcommand)]
pub enum Bench {
    /// Collector: ingest (pair records/s on one core, agents posting concurrently) and the
    /// daily map of a large fleet (seconds, memory).
    Collector {
        /// Simulated agents posting at once, one connection each.
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        /// Reports each agent posts.
        #[arg(long, default_value_t = 5)]
        reports: usize,
        /// Pairs per report.
        #[arg(long, default_value_t = 200)]
        pairs: usize,
        /// Hosts in the daily-map benchmark.
        #[arg(long, default_value_t = 10_000)]
        hosts: usize,
        /// Pairs per host in the daily-map benchmark.
        #[arg(long, default_value_t = 200)]
        host_pairs: usize,
        /// Fail when a target is missed (>= 200k pairs/s; daily map <= 5 s).
        #[arg(long)]
        check: bool,
    },
}

/// What this machine is, for the record.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |k| k / 1024 / 1024);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} x {cpu}, {mem} GiB, Linux {}", kernel.trim())
}

pub fn bench(b: Bench) -> Result<()> {
    match b {
        Bench::Collector {
            agents,
            reports,
            pairs,
            hosts,
            host_pairs,
            check,
        } => collector(agents, reports, pairs, hosts, host_pairs, check),
    }
}

fn collector(
    agents: usize,
    reports: usize,
    pairs: usize,
    hosts: usize,
    host_pairs: usize,
    check: bool,
) -> Result<()> {
    step(
        "bench collector: building (release, without the AWS SDK, which the benchmarks do not use)",
    );
    let args = [
        "--agents".to_owned(),
        agents.to_string(),
        "--reports".into(),
        reports.to_string(),
        "--pairs".into(),
        pairs.to_string(),
        "--hosts".into(),
        hosts.to_string(),
        "--host-pairs".into(),
        host_pairs.to_string(),
    ];
    let command = format!(
        "cargo bench -p trafficmap-collector --no-default-features --bench collector -- {}",
        args.join(" ")
    );
    note(format!("$ {command}"));
    let out = cargo()
        .args([
            "bench",
            "-p",
            "trafficmap-collector",
            "--no-default-features",
            "--bench",
            "collector",
            "--",
        ])
        .args(&args)
        .stderr(Stdio::inherit())
        .output()
        .context("cargo bench")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("the benchmark failed:\n{stdout}");
    }
    let results: Vec<(String, f64, String)> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("RESULT "))
        .filter_map(|l| {
            let mut p = l.splitn(3, ' ');
            Some((
                p.next()?.to_owned(),
                p.next()?.parse().ok()?,
                p.next().unwrap_or("").to_owned(),
            ))
        })
        .collect();
    let get = |k: &str| results.iter().find(|r| r.0 == k).map(|r| r.1);
    let mut md = format!(
        "Machine: {}\n\nCommand: `{command}`\n\n| measurement | value |\n| --- | --- |\n",
        machine()
    );
    for (k, v, unit) in &results {
        md.push_str(&format!("| {k} | {v} {unit} |\n"));
    }
    let ingest = get("ingest_pairs_per_second").unwrap_or(0.0);
    let map = get("map_day_three_views").unwrap_or(f64::INFINITY);
    let verdict = format!(
        "\ningest: {ingest:.0} pairs/s on one core (target >= 200000): {}\ndaily map of {hosts} hosts x {host_pairs} pairs: {map:.2} s (target <= 5 s): {}\n",
        if ingest >= 200_000.0 { "met" } else { "MISSED" },
        if map <= 5.0 { "met" } else { "MISSED" }
    );
    md.push_str(&verdict);
    let path = artifacts_dir().join("bench-collector.md");
    std::fs::write(&path, &md)?;
    println!("{md}");
    note(format!("written to {}", path.display()));
    if check && (ingest < 200_000.0 || map > 5.0) {
        bail!("a collector benchmark target was missed");
    }
    Ok(())
}
