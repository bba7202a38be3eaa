//! Test stages of the collector that need real parts: a real clickhouse-server, moto's EC2
//! emulator, agents in network namespaces, and a fuzzing run of the report parser.

use std::{path::PathBuf, process::Stdio};

use anyhow::{Context as _, Result, bail};

use crate::{
    setup,
    util::{cache_dir, cargo, note, root, run},
};

/// Builds one binary of a package and returns its path.
pub fn build_bin(package: &str, bin: &str, release: bool) -> Result<PathBuf> {
    let mut c = cargo();
    c.args([
        "build",
        "--message-format=json-render-diagnostics",
        "-p",
        package,
        "--bin",
        bin,
    ])
    .stdout(Stdio::piped());
    if release {
        c.arg("--release");
    }
    eprintln!(
        "    $ cargo build -p {package} --bin {bin}{}",
        if release { " --release" } else { "" }
    );
    let out = c.output().context("cargo build")?;
    if !out.status.success() {
        bail!("building {bin} failed");
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact"
            && msg["target"]["name"] == bin
            && let Some(exe) = msg["executable"].as_str()
        {
            return Ok(PathBuf::from(exe));
        }
    }
    bail!("cargo did not report the {bin} executable")
}

fn ignored_tests(test: &str, envs: &[(&str, String)]) -> Result<()> {
    run(cargo()
        .args([
            "test",
            "-p",
            "trafficmap-collector",
            "--test",
            test,
            "--",
            "--ignored",
            "--test-threads=1",
        ])
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str()))))
}

/// The ClickHouse backend against Debian's clickhouse-server (each test starts its own).
pub fn clickhouse() -> Result<String> {
    ignored_tests("clickhouse", &[])?;
    Ok("clickhouse-server 18.16: conformance, roll-ups, retention, two collectors".into())
}

/// Every network attack of issue 8 against the real collector binary, on SQLite and on
/// ClickHouse (Debian's clickhouse-server, as the `clickhouse` stage uses; `cargo xtask setup`
/// installs it). One `cargo test` builds the binary once for both backends.
pub fn hostile() -> Result<String> {
    if !["/usr/sbin/clickhouse-server", "/usr/bin/clickhouse-server"]
        .iter()
        .any(|p| std::path::Path::new(p).exists())
    {
        bail!("clickhouse-server is missing (cargo xtask setup installs it)");
    }
    run(cargo().args(["test", "-p", "trafficmap-collector", "--test", "hostile"]))?;
    Ok("attacks on SQLite and ClickHouse answered as documented; maps and exports equal the reference's".into())
}

/// EC2 enrichment against moto_server from the test venv.
pub fn ec2_moto() -> Result<String> {
    let moto = setup::venv().join("bin/moto_server");
    if !moto.exists() {
        bail!(
            "{} is missing (cargo xtask setup installs it)",
            moto.display()
        );
    }
    ignored_tests(
        "ec2_moto",
        &[("TRAFFICMAP_MOTO_SERVER", moto.display().to_string())],
    )?;
    Ok("moto: instances, groups, spot prices, maps".into())
}

/// Three agents, each scoped to a network namespace, one collector, real TCP of known sizes.
pub fn e2e() -> Result<String> {
    let agent = build_bin("trafficmap-daemon", "trafficmap-agent", false)?;
    note(format!("agent: {}", agent.display()));
    ignored_tests(
        "netns_e2e",
        &[("TRAFFICMAP_AGENT_BIN", agent.display().to_string())],
    )?;
    Ok("3 agents in network namespaces, exact instances and clusters maps".into())
}

/// The report parser under libFuzzer for about a minute, seeded with the golden reports.
pub fn fuzz() -> Result<String> {
    let corpus = cache_dir().join("fuzz-corpus/report_parser");
    std::fs::create_dir_all(&corpus)?;
    let seeds = root().join("golden/reports");
    run(crate::util::cmd("cargo")
        .args(["+nightly", "fuzz", "run", "report_parser"])
        .arg(&corpus)
        .arg(&seeds)
        .arg("--target-dir")
        .arg(cache_dir().join("fuzz-target"))
        .args([
            "--",
            "-max_total_time=60",
            "-rss_limit_mb=2048",
            "-print_final_stats=1",
        ])
        .current_dir(root().join("trafficmap-collector")))?;
    let n = std::fs::read_dir(&corpus).map(|d| d.count()).unwrap_or(0);
    Ok(format!(
        "60 s, no crash; corpus of {n} inputs kept in {}",
        corpus.display()
    ))
}
