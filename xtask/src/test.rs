//! `cargo xtask test`: every test, in stages, each reported with its time; the run fails if any
//! stage fails (all stages run, so one failure does not hide another).

use std::{collections::BTreeMap, time::Instant};

use anyhow::{Context as _, Result, bail};

use crate::{
    util::{artifacts_dir, cargo, cmd, is_root, note, output, run, secs, step},
    viewer, vm,
};

/// One stage of the test run.
pub struct Stage {
    pub name: &'static str,
    pub about: &'static str,
    pub run: fn() -> Result<String>,
}

pub fn stages() -> Vec<Stage> {
    vec![
        Stage {
            name: "lint",
            about: "rustfmt, clippy (userspace and eBPF crate)",
            run: lint,
        },
        Stage {
            name: "unit",
            about: "cargo test --workspace (unit tests; privileged tests load the probe as root)",
            run: unit,
        },
        Stage {
            name: "probe-host",
            about: "probe suite per backend on this machine's kernel",
            run: probe_host,
        },
        Stage {
            name: "deploy",
            about: "systemd unit (verify, security score) and Kubernetes manifests (kubernetes-validate, yamllint)",
            run: deploy,
        },
        Stage {
            name: "images",
            about: "OCI images (buildah, dev binaries); the agent under runc as the DaemonSet runs it (exact bytes, SIGTERM flush); the collector under runc on a volume across a restart",
            run: crate::image::stage,
        },
        Stage {
            name: "collector-e2e",
            about: "3 agents in network namespaces, one collector: exact instances and clusters maps",
            run: crate::collector::e2e,
        },
        Stage {
            name: "clickhouse",
            about: "collector's ClickHouse backend against clickhouse-server 18.16 and the current engine (chdb)",
            run: crate::collector::clickhouse,
        },
        Stage {
            name: "hostile",
            about: "attacks of issue 8 against the collector binary on SQLite and ClickHouse",
            run: crate::collector::hostile,
        },
        Stage {
            name: "ec2-moto",
            about: "collector's EC2 enrichment against moto_server",
            run: crate::collector::ec2_moto,
        },
        Stage {
            name: "archive",
            about: "collector's archive (S3) against moto_server: upload, idempotence, retention, restore",
            run: crate::collector::archive,
        },
        Stage {
            name: "mail",
            about: "collector's daily report mails against aiosmtpd (STARTTLS, AUTH): contents, wrong password, no resend",
            run: crate::collector::mail,
        },
        Stage {
            name: "fuzz",
            about: "report parser and report bounds through the sums, under cargo-fuzz for 60 s",
            run: crate::collector::fuzz,
        },
        Stage {
            name: "vm",
            about: "probe suite per backend on Debian kernels 5.10, 6.1, 6.12 in qemu",
            run: vm_matrix,
        },
        Stage {
            name: "viewer-bundle",
            about: "viewer/dist is a fresh build of viewer/src and references nothing outside itself",
            run: viewer::check,
        },
        Stage {
            name: "viewer-unit",
            about: "the viewer's logic under node --test",
            run: viewer::unit,
        },
        Stage {
            name: "viewer-browser",
            about: "the viewer in Debian's Chromium against the collector serving golden/maps, then synthetic fleets of 600 and 5,000 nodes (outlines, labels)",
            run: viewer::browser,
        },
    ]
}

pub fn test(only: &[String], skip: &[String]) -> Result<()> {
    if !is_root() {
        bail!(
            "`cargo xtask test` loads eBPF programs and creates network namespaces: run it as root"
        );
    }
    // Privileged tests fail instead of skipping when CI is set.
    // SAFETY: single-threaded at this point.
    unsafe { std::env::set_var("CI", "1") };
    let all = stages();
    for name in only.iter().chain(skip) {
        if !all.iter().any(|s| s.name == name) {
            bail!(
                "unknown stage `{name}`; stages: {}",
                all.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
            );
        }
    }
    let selected: Vec<&Stage> = all
        .iter()
        .filter(|s| only.is_empty() || only.iter().any(|o| o == s.name))
        .filter(|s| !skip.iter().any(|o| o == s.name))
        .collect();
    let start = Instant::now();
    let mut results = Vec::new();
    for (i, stage) in selected.iter().enumerate() {
        step(format!(
            "test stage {}/{}: {} ({})",
            i + 1,
            selected.len(),
            stage.name,
            stage.about
        ));
        let t = Instant::now();
        let outcome = (stage.run)();
        match &outcome {
            Ok(summary) => note(format!("{}: ok in {} {summary}", stage.name, secs(t))),
            Err(e) => note(format!("{}: FAILED in {}: {e:#}", stage.name, secs(t))),
        }
        results.push((stage.name, secs(t), outcome));
    }
    step(format!("test summary ({} total)", secs(start)));
    let mut failed = Vec::new();
    for (name, took, outcome) in &results {
        match outcome {
            Ok(s) => eprintln!("    ok      {name:<14} {took:>8}  {s}"),
            Err(e) => {
                eprintln!("    FAILED  {name:<14} {took:>8}  {e:#}");
                failed.push(*name);
            }
        }
    }
    if !failed.is_empty() {
        bail!("{} stage(s) failed: {}", failed.len(), failed.join(", "));
    }
    Ok(())
}

fn lint() -> Result<String> {
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        // Built for its own target below; on the host it cannot compile.
        "--exclude",
        "trafficmap-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The eBPF crate, for its own target (its panic handler cannot coexist with std).
    // Through rustup: `cargo +nightly` needs the rustup proxy, and under `cargo xtask` CARGO
    // is the stable toolchain's own binary.
    run(crate::util::cmd("rustup")
        .current_dir(crate::util::root())
        .args([
            "run",
            "nightly",
            "cargo",
            "clippy",
            "-p",
            "trafficmap-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--release",
            "--",
            "-D",
            "warnings",
        ])
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "--cfg=bpf_target_arch=\"x86_64\"",
        ))?;
    Ok(String::new())
}

fn unit() -> Result<String> {
    run(crate::util::cargo_test().arg("--no-fail-fast"))?;
    Ok(String::new())
}

/// The probe suite once per backend on this kernel: a backend that loads must be exact; one that
/// does not is reported unsupported (the suite asserts the automatic fallback).
fn probe_host() -> Result<String> {
    let bins = crate::util::build_test_binaries(&["-p", "trafficmap-daemon", "--test", "probe"])?;
    let bin = bins
        .iter()
        .find(|(n, _)| n == "probe")
        .map(|(_, p)| p.clone())
        .context("probe test binary")?;
    let mut log = String::new();
    for b in vm::BACKENDS {
        let support = output(
            cmd(&bin)
                .args([
                    "--exact",
                    "backend_support",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("TRAFFICMAP_TEST_BACKEND", b),
        )
        .with_context(|| format!("backend support check for {b}"))?;
        log.push_str(&support);
        for l in support.lines().filter(|l| l.starts_with("TRAFFICMAP_")) {
            note(l);
        }
        let verdict = if support.contains(&format!("TRAFFICMAP_SUPPORT {b} supported")) {
            match run(cmd(&bin)
                .args(["--skip", "backend_support"])
                .env("TRAFFICMAP_TEST_BACKEND", b))
            {
                Ok(()) => "exact",
                Err(_) => "FAILED",
            }
        } else if support.contains(&format!("TRAFFICMAP_SUPPORT {b} unsupported")) {
            "unsupported"
        } else {
            "FAILED"
        };
        log.push_str(&format!("TRAFFICMAP_RESULT {b} {verdict}\n"));
    }
    // The classic-tracepoint fallback, where raw tracepoints are used by default: one more run
    // of the whole suite with them forced.
    let classic_ok = run(cmd(&bin)
        .args(["--skip", "backend_support"])
        .env("TRAFFICMAP_TEST_CLASSIC_TP", "1"));
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?
        .trim()
        .to_owned();
    // fexit and kprobes depend on the kernel's build and lockdown; the socket tracepoints only
    // on its version (6.3): from there, an unsupported tracepoint backend is a failure.
    let mut version = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let at_least_6_3 = (version.next().unwrap_or(0), version.next().unwrap_or(0)) >= (6, 3);
    let expect: &[&str] = if at_least_6_3 {
        &["tracepoint", "counters"]
    } else {
        &["counters"]
    };
    let cells = vm::parse_markers(&log, Some(expect));
    let rows = vec![("host".to_owned(), release, cells)];
    let table = vm::render_matrix(&rows);
    std::fs::write(artifacts_dir().join("kernel-matrix-host.md"), &table)?;
    eprintln!("{table}");
    if vm::any_failed(&rows) {
        bail!("a backend failed on this kernel");
    }
    if !rows[0].2.values().any(|c| *c == vm::Cell::Exact) {
        bail!("no backend loads on this kernel");
    }
    classic_ok.context("suite with classic tracepoints forced")?;
    Ok(format!(
        "{}; classic tracepoints exact",
        summary(&rows[0].2)
    ))
}

fn summary(cells: &BTreeMap<String, vm::Cell>) -> String {
    cells
        .iter()
        .map(|(b, c)| {
            format!(
                "{b}={}",
                match c {
                    vm::Cell::Exact => "exact",
                    vm::Cell::Unsupported(_) => "unsupported",
                    vm::Cell::Failed(_) => "FAILED",
                }
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn vm_matrix() -> Result<String> {
    let rows = vm::vm_test(&[])?;
    let table = vm::render_matrix(&rows);
    std::fs::write(artifacts_dir().join("kernel-matrix.md"), &table)?;
    eprintln!("{table}");
    if vm::any_failed(&rows) {
        // Repeated here: CI shows only the tail of the output.
        let failed: Vec<String> = rows
            .iter()
            .flat_map(|(label, _, cells)| {
                cells.iter().filter_map(move |(b, c)| match c {
                    vm::Cell::Failed(why) => Some(format!("{label} {b}: {why}")),
                    _ => None,
                })
            })
            .collect();
        bail!("kernel matrix has failures: {}", failed.join(" | "));
    }
    Ok(format!("{} kernels", rows.len()))
}

/// Highest acceptable `systemd-analyze security` exposure for our units ("OK" is below 4.0; we
/// hold ourselves to well under that).
const MAX_EXPOSURE: f64 = 3.0;

fn deploy() -> Result<String> {
    let root = crate::util::root();
    let venv = crate::setup::venv();
    let mut manifests = Vec::new();
    for e in std::fs::read_dir(root.join("deploy/kubernetes"))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            manifests.push(p);
        }
    }
    manifests.sort();
    if manifests.is_empty() {
        bail!("no Kubernetes manifests under deploy/kubernetes");
    }
    run(cmd(venv.join("bin/kubernetes-validate"))
        .args(["-k", "1.33.0", "--strict"])
        .args(&manifests))?;
    run(cmd(venv.join("bin/yamllint"))
        .args([
            "-d",
            "{extends: relaxed, rules: {line-length: {max: 120}}}",
            "--strict",
        ])
        .args(&manifests))?;
    // Units: full verification with ExecStart pointing at the freshly built binary, and the
    // security exposure score.
    let agent = crate::util::workspace_bin("trafficmap-agent")?;
    let bin_dir = agent.parent().context("the agent's directory")?.to_owned();
    let mut scores = Vec::new();
    let tmp = crate::util::artifacts_dir().join("units");
    std::fs::create_dir_all(&tmp)?;
    for e in std::fs::read_dir(root.join("deploy/systemd"))? {
        let unit = e?.path();
        if unit.extension().is_none_or(|x| x != "service") {
            continue;
        }
        let name = unit.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&unit)?;
        let local = text.replace("/usr/bin/", &format!("{}/", bin_dir.display()));
        let local_unit = tmp.join(&name);
        std::fs::write(&local_unit, local)?;
        run(cmd("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&local_unit))?;
        let report = output(
            cmd("systemd-analyze")
                .args(["security", "--offline=true", "--no-pager"])
                .arg(&unit),
        )?;
        let score: f64 = report
            .lines()
            .find_map(|l| l.split("exposure level for").nth(1))
            .and_then(|rest| rest.split(':').nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no exposure score for {name}"))?;
        note(format!("{name}: systemd-analyze security exposure {score}"));
        if score > MAX_EXPOSURE {
            bail!("{name}: exposure {score} above {MAX_EXPOSURE}");
        }
        scores.push(format!("{name} {score}"));
    }
    Ok(format!(
        "{} manifests valid; exposure {}",
        manifests.len(),
        scores.join(", ")
    ))
}
