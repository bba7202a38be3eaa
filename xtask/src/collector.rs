//! Test stages of the collector that need real parts: a real clickhouse-server, moto's EC2 (and S3)
//! emulator, agents in network namespaces, and a fuzzing run of the report parser.

use anyhow::{Result, bail};

use crate::{
    setup,
    util::{cache_dir, cargo_test, cmd, note, root, run, succeeds},
};

fn ignored_tests(test: &str, envs: &[(&str, String)]) -> Result<()> {
    run(cargo_test()
        .args(["--test", test, "--", "--ignored", "--test-threads=1"])
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str()))))
}

/// The ClickHouse backend's suite on two engines (each test starts its own): Debian's
/// clickhouse-server 18.16, the oldest anyone is likely to run, and the current engine
/// (chdb-core from the test venv, behind the harness's HTTP bridge).
pub fn clickhouse() -> Result<String> {
    let python = setup::venv().join("bin/python");
    for envs in [
        vec![("TRAFFICMAP_CLICKHOUSE_ENGINE", "server".to_owned())],
        vec![
            ("TRAFFICMAP_CLICKHOUSE_ENGINE", "chdb".to_owned()),
            ("TRAFFICMAP_CHDB_PYTHON", python.display().to_string()),
        ],
    ] {
        // The store's suite, and the upgrade of a previous release's database.
        run(cargo_test()
            .args(["--test", "clickhouse", "--test", "migrate"])
            .args(["--", "--ignored", "--test-threads=1"])
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str()))))?;
    }
    Ok("clickhouse-server 18.16 and chdb-core 26.9 (current engine): conformance, roll-ups, retention, two collectors, upgrade from schema 1".into())
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
    // The attacks are `#[ignore]`d so that the `unit` stage does not run them a second time.
    run(cargo_test().args(["--test", "hostile", "--", "--include-ignored"]))?;
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

/// The archive against moto_server's S3 (the same venv as `ec2-moto`).
pub fn archive() -> Result<String> {
    let moto = setup::venv().join("bin/moto_server");
    if !moto.exists() {
        bail!(
            "{} is missing (cargo xtask setup installs it)",
            moto.display()
        );
    }
    run(cargo_test()
        .args([
            "--test",
            "archive",
            "--",
            "--include-ignored",
            "--test-threads=1",
        ])
        .env("TRAFFICMAP_MOTO_SERVER", &moto))?;
    Ok("moto S3 and a local directory: names, bytes, idempotence, retention, restore".into())
}

/// The daily report mails against aiosmtpd (the same venv as `archive`).
pub fn mail() -> Result<String> {
    let python = setup::venv().join("bin/python");
    if !succeeds(cmd(&python).args(["-c", "import aiosmtpd"])) {
        bail!(
            "aiosmtpd is missing from {} (cargo xtask setup installs it)",
            setup::venv().display()
        );
    }
    run(cargo_test()
        .args([
            "--test",
            "mail",
            "--",
            "--include-ignored",
            "--test-threads=1",
        ])
        .env("TRAFFICMAP_SMTPD_PYTHON", &python))?;
    Ok("aiosmtpd with STARTTLS and AUTH: golden report contents, wrong password, schedule record, service restart".into())
}

/// Three agents, each scoped to a network namespace, one collector, real TCP of known sizes.
pub fn e2e() -> Result<String> {
    let agent = crate::util::workspace_bin("trafficmap-agent")?;
    note(format!("agent: {}", agent.display()));
    ignored_tests(
        "netns_e2e",
        &[("TRAFFICMAP_AGENT_BIN", agent.display().to_string())],
    )?;
    Ok("3 agents in network namespaces, exact instances and clusters maps; a Service behind DNAT merged into one edge".into())
}

/// The report parser and the bounds under libFuzzer for about a minute (30 s each).
pub fn fuzz() -> Result<String> {
    // Two targets share the stage's 60 s: the parser on arbitrary bytes (seeded with the
    // golden reports), and reports generated near every bound run through the collector's
    // sums (store, roll-up, range reads, merge, render).
    let mut kept = Vec::new();
    for (target, seeds) in [
        ("report_parser", Some(root().join("golden/reports"))),
        ("report_sums", None),
    ] {
        let corpus = cache_dir().join("fuzz-corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        let mut c = crate::util::cmd("cargo");
        c.args(["+nightly", "fuzz", "run", target]).arg(&corpus);
        if let Some(seeds) = &seeds {
            c.arg(seeds);
        }
        run(c
            .arg("--target-dir")
            .arg(cache_dir().join("fuzz-target"))
            .args([
                "--",
                "-max_total_time=30",
                "-rss_limit_mb=2048",
                "-print_final_stats=1",
            ])
            .current_dir(root().join("trafficmap-collector")))?;
        let n = std::fs::read_dir(&corpus).map(|d| d.count()).unwrap_or(0);
        kept.push(format!("{target}: {n} inputs"));
    }
    Ok(format!(
        "2 targets x 30 s, no crash; corpora kept in {} ({})",
        cache_dir().join("fuzz-corpus").display(),
        kept.join(", ")
    ))
}
