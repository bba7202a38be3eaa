//! Bad environments: a backend the kernel lacks, no tracefs, no BTF, no privileges. Each gives
//! one clear message and a non-zero exit, and leaves nothing loaded or attached.
//!
//! A test binary of its own: the in-process check below inspects this process's file
//! descriptors, which other probe tests running concurrently would disturb.

mod support;

use std::process::Command;

use support::*;
use trafficmap_daemon::{
    backend::{AttachMode, Backend, SelectError},
    probe::{NetnsScope, Probe, ProbeError, ProbeOptions},
};

const AGENT: &str = env!("CARGO_BIN_EXE_trafficmap-agent");

/// Tests that load the probe in this process take turns, so the descriptor check sees only its
/// own test's objects.
static IN_PROCESS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// BPF programs and maps this process holds, from its file descriptors.
fn bpf_objects() -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc/self/fdinfo").unwrap() {
        let text = std::fs::read_to_string(e.unwrap().path()).unwrap_or_default();
        for l in text.lines() {
            if l.starts_with("prog_id:") || l.starts_with("map_id:") || l.starts_with("link_id:") {
                found.push(l.to_owned());
            }
        }
    }
    found
}

#[test]
fn every_forced_backend_either_works_or_fails_leaving_nothing() {
    if !privileged() {
        return;
    }
    let _turn = IN_PROCESS.lock().unwrap_or_else(|e| e.into_inner());
    let ns = NetNs::new();
    assert!(bpf_objects().is_empty(), "{:?}", bpf_objects());
    let mut failures = 0;
    for backend in Backend::AUTO_ORDER {
        let opts = ProbeOptions {
            attach: AttachMode::Force(backend),
            netns: NetnsScope::Path(ns.path()),
            ..ProbeOptions::default()
        };
        match Probe::load(&opts) {
            Ok(p) => {
                assert_eq!(p.backend(), backend);
                assert!(!bpf_objects().is_empty());
                drop(p);
            }
            Err(ProbeError::Backend(SelectError::ForcedUnavailable { backend: b, reason })) => {
                assert_eq!(b, backend);
                let msg = ProbeError::Backend(SelectError::ForcedUnavailable {
                    backend: b,
                    reason: reason.clone(),
                })
                .to_string();
                // What is missing and what to do.
                assert!(msg.contains(backend.requirement()), "{msg}");
                assert!(msg.contains("use --attach auto"), "{msg}");
                failures += 1;
            }
            Err(e) => panic!("{backend}: unexpected error {e}"),
        }
        let left = bpf_objects();
        assert!(
            left.is_empty(),
            "{backend}: still held after load/drop: {left:?}"
        );
        let events =
            std::fs::read_to_string("/sys/kernel/tracing/kprobe_events").unwrap_or_default();
        assert!(
            !events.contains(&format!("trafficmap_{}_", std::process::id())),
            "{backend}: kprobe events left: {events}"
        );
    }
    println!("{failures} of 3 backends unavailable on this kernel");
}

/// Runs the agent in a private mount namespace after `prepare` (shell commands).
fn agent_in_mount_ns(prepare: &str, args: &[&str]) -> (Option<i32>, String) {
    let script = format!("{prepare}\nexec \"$0\" \"$@\"");
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            AGENT,
        ])
        .args(args)
        .args(["--listen", "off", "--imds", "off"])
        .output()
        .expect("unshare (util-linux)");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn no_tracefs_says_how_to_mount_it() {
    if !privileged() {
        return;
    }
    let (code, stderr) = agent_in_mount_ns(
        "umount -l /sys/kernel/tracing 2>/dev/null; umount -l /sys/kernel/debug/tracing 2>/dev/null; umount -l /sys/kernel/debug 2>/dev/null; true",
        &[],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "tracefs is not mounted; mount it with `mount -t tracefs nodev /sys/kernel/tracing`"
        ),
        "{stderr}"
    );
}

#[test]
fn no_btf_names_the_kernel_option() {
    if !privileged() {
        return;
    }
    let (code, stderr) = agent_in_mount_ns("mount -t tmpfs none /sys/kernel/btf", &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("this kernel has no BTF (/sys/kernel/btf/vmlinux")
            && stderr.contains("CONFIG_DEBUG_INFO_BTF=y"),
        "{stderr}"
    );
}

#[test]
fn no_privileges_says_which_are_needed() {
    if !privileged() {
        return;
    }
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
            AGENT,
            "--listen",
            "off",
            "--imds",
            "off",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // Without privileges the first thing refused is reading tracefs or loading BPF; either way
    // the message says what to grant.
    assert!(
        stderr.contains("run as root, or with CAP_BPF, CAP_PERFMON and CAP_DAC_READ_SEARCH"),
        "{stderr}"
    );
}

#[test]
fn forced_backend_missing_fails_the_agent_cleanly() {
    if !privileged() {
        return;
    }
    // Find a backend this kernel lacks; every kernel lacks at least one of the three except
    // those >= 6.3 with trampolines and kprobes, where there is nothing to test here.
    let _turn = IN_PROCESS.lock().unwrap_or_else(|e| e.into_inner());
    let ns = NetNs::new();
    let missing = Backend::AUTO_ORDER.into_iter().find(|&b| {
        Probe::load(&ProbeOptions {
            attach: AttachMode::Force(b),
            netns: NetnsScope::Path(ns.path()),
            ..ProbeOptions::default()
        })
        .is_err()
    });
    let Some(missing) = missing else {
        eprintln!("SKIPPED: every backend loads on this kernel, there is no missing one to force");
        return;
    };
    let out = Command::new(AGENT)
        .args([
            "--attach",
            missing.as_str(),
            "--listen",
            "off",
            "--imds",
            "off",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("the {missing} backend cannot run on this kernel")),
        "{stderr}"
    );
}
