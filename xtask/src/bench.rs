//! `cargo xtask bench`: benchmarks with their machine description, for BENCHMARKS.md.

use std::process::Stdio;

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;

use crate::util::{artifacts_dir, cargo, note, step};

#[derive(Subcommand)]
pub enum Bench {
    /// Collector: ingest (pair records/s on one core, agents posting concurrently) and the
    /// daily map of a large fleet (seconds, memory), each as a ratio to a floor measured in
    /// the same run, with a profile of where the time goes.
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
        /// Fail when a target is missed (ratios to floors measured in the same run: ingest at
        /// least 0.25x SQLite's bulk insert of the same rows, the daily map at most 4x one SQL
        /// GROUP BY over the same day).
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
    let results: Vec<Measured> = stdout
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
    let md = collector_report(&command, &results, hosts, host_pairs);
    let path = artifacts_dir().join("bench-collector.md");
    std::fs::write(&path, &md)?;
    println!("{md}");
    note(format!("written to {}", path.display()));
    if check && !collector_targets(&results).iter().all(|t| t.met) {
        bail!("a collector benchmark target was missed");
    }
    Ok(())
}

/// Ingest must reach this share of SQLite's own bulk insert of the same rows (the ingest path
/// adds HTTP, parsing, validation, names and the per-report rows to the bare insert).
const INGEST_VS_BULK_INSERT_MIN: f64 = 0.25;
/// The first build of the day's three maps may take at most this many times one SQL
/// `GROUP BY` over the same rows (the map also resolves, prices and lays out three views).
const MAP_VS_SQL_MAX: f64 = 4.0;

/// One `RESULT name value unit` line of the benchmark.
type Measured = (String, f64, String);

fn value(results: &[Measured], name: &str) -> f64 {
    // A missing figure fails its target rather than passing it.
    results
        .iter()
        .find(|r| r.0 == name)
        .map_or(f64::NAN, |r| r.1)
}

struct Ratio {
    what: &'static str,
    value: f64,
    /// (`>=` or `<=`, bound) for the ratios that have a target.
    target: Option<(&'static str, f64)>,
    met: bool,
}

/// The ratios to the floors; those with a target say whether it was met.
fn collector_ratios(r: &[Measured]) -> Vec<Ratio> {
    let ingest = value(r, "ingest_pairs_per_second");
    let map = value(r, "map_day_three_views");
    let sql = value(r, "sql_aggregation");
    let ratio = |what, value: f64, target: Option<(&'static str, f64)>| Ratio {
        what,
        value,
        target,
        met: match target {
            Some((">=", bound)) => value >= bound,
            Some((_, bound)) => value <= bound,
            None => true,
        },
    };
    vec![
        ratio(
            "ingest / parsing the same reports alone (pairs/s)",
            ingest / value(r, "parse_pairs_per_second"),
            None,
        ),
        ratio(
            "ingest / SQLite bulk insert of the same rows (pairs/s)",
            ingest / value(r, "bulk_insert_pairs_per_second"),
            Some((">=", INGEST_VS_BULK_INSERT_MIN)),
        ),
        ratio(
            "daily map, first build / SQL aggregation of the day (s)",
            map / sql,
            Some(("<=", MAP_VS_SQL_MAX)),
        ),
        ratio(
            "daily map, built again / SQL aggregation of the day (s)",
            value(r, "map_day_three_views_again") / sql,
            None,
        ),
    ]
}

fn collector_targets(results: &[Measured]) -> Vec<Ratio> {
    collector_ratios(results)
        .into_iter()
        .filter(|r| r.target.is_some())
        .collect()
}

/// The markdown of a run: machine, command, figures, ratios with targets, profile.
fn collector_report(
    command: &str,
    results: &[Measured],
    hosts: usize,
    host_pairs: usize,
) -> String {
    let mut md = format!(
        "Machine: {}\n\nCommand: `{command}`\n\n| measurement | value |\n| --- | ---: |\n",
        machine()
    );
    for (k, v, unit) in results.iter().filter(|r| !r.0.starts_with("profile_")) {
        md.push_str(&format!("| {k} | {v} {unit} |\n"));
    }
    md.push_str("\n| ratio to a floor measured in this run | value | target | |\n| --- | ---: | --- | --- |\n");
    for r in collector_ratios(results) {
        let (target, verdict) = match r.target {
            Some((op, bound)) => (
                format!("{op} {bound}"),
                if r.met { "met" } else { "MISSED" },
            ),
            None => (String::new(), ""),
        };
        md.push_str(&format!(
            "| {} | {:.2} | {target} | {verdict} |\n",
            r.what, r.value
        ));
    }
    for (part, title) in [
        (
            "profile_ingest_",
            "Ingest profile (one core: the collector's steps timed in-process on the same reports; the rest is the end-to-end time beyond their sum: HTTP, scheduling, batching)",
        ),
        (
            "profile_map_",
            "Map profile (the day built again phase by phase; views rendered one after another)",
        ),
    ] {
        let phases: Vec<_> = results
            .iter()
            .filter_map(|(k, v, _)| Some((k.strip_prefix(part)?, *v)))
            .collect();
        let total: f64 = phases.iter().map(|p| p.1).sum();
        md.push_str(&format!(
            "\n{title}\n\n| phase | seconds | share |\n| --- | ---: | ---: |\n"
        ));
        for (phase, secs) in phases {
            md.push_str(&format!(
                "| {} | {secs:.3} | {:.0} % |\n",
                phase.replace('_', " "),
                100.0 * secs / total
            ));
        }
    }
    md.push_str(&format!(
        "\ningest: {:.0} pairs/s on one core; daily map of {hosts} hosts x {host_pairs} pairs: {:.2} s\n",
        value(results, "ingest_pairs_per_second"),
        value(results, "map_day_three_views"),
    ));
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn results(pairs: &[(&str, f64)]) -> Vec<Measured> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v, String::new()))
            .collect()
    }

    #[test]
    fn targets_are_ratios_to_the_floors_and_a_missing_figure_misses() {
        let run = |ingest: f64, map: f64| {
            collector_targets(&results(&[
                ("ingest_pairs_per_second", ingest),
                ("bulk_insert_pairs_per_second", 400_000.0),
                ("map_day_three_views", map),
                ("sql_aggregation", 1.5),
            ]))
            .iter()
            .map(|t| t.met)
            .collect::<Vec<_>>()
        };
        let (ingest, map) = (INGEST_VS_BULK_INSERT_MIN * 400_000.0, MAP_VS_SQL_MAX * 1.5);
        assert_eq!(run(ingest, map), [true, true]);
        assert_eq!(run(ingest - 1.0, map + 0.01), [false, false]);
        assert!(
            collector_targets(&results(&[("sql_aggregation", 1.0)]))
                .iter()
                .all(|t| !t.met)
        );
    }
}
