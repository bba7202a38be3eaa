//! Small helpers: running commands with echo, the download cache, workspace paths.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

/// Root of the workspace (parent of `xtask/`).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_owned()
}

/// Persistent cache for downloads (kernels, pip, npm, build products) that outlives a clean
/// clone: `$TRAFFICMAP_CACHE`, else `$XDG_CACHE_HOME/trafficmap`, else `~/.cache/trafficmap`.
pub fn cache_dir() -> PathBuf {
    let dir = std::env::var_os("TRAFFICMAP_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("trafficmap")))
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/trafficmap")
        });
    std::fs::create_dir_all(&dir).ok();
    dir
}

/// Where test artifacts (screenshots, logs, matrices) go; kept after the run.
pub fn artifacts_dir() -> PathBuf {
    let dir = std::env::var_os("TRAFFICMAP_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/test-artifacts"));
    std::fs::create_dir_all(&dir).ok();
    dir
}

/// Prints a step header, in the style of the rest of the output.
pub fn step(msg: impl std::fmt::Display) {
    say(format_args!("\x1b[1m==> {msg}\x1b[0m"));
}

pub fn note(msg: impl std::fmt::Display) {
    say(format_args!("    {msg}"));
}

/// A line on stderr, ignoring errors: after the terminal hangs up, writing to it fails, and
/// `cargo xtask run` must still stop its daemons in order (`eprintln!` would panic).
pub fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn render(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        if a.contains(' ') {
            s.push_str(&format!(" '{a}'"));
        } else {
            s.push(' ');
            s.push_str(&a);
        }
    }
    s
}

/// Runs a command, echoing it, inheriting stdio; fails on non-zero exit.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = render(cmd);
    eprintln!("    $ {shown}");
    let start = Instant::now();
    let status = cmd
        .status()
        .with_context(|| format!("starting `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status}) after {:.1?}", start.elapsed());
    }
    Ok(())
}

/// Runs a command quietly and returns its stdout; fails on non-zero exit.
pub fn output(cmd: &mut Command) -> Result<String> {
    let shown = render(cmd);
    let out = cmd
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("starting `{shown}`"))?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether a command runs successfully (quietly).
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn cmd(program: impl AsRef<OsStr>) -> Command {
    Command::new(program)
}

/// `cargo` of the toolchain running xtask.
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root());
    c
}

/// `cargo test` over the whole workspace but the eBPF crate: the `unit` stage's command. Every
/// other stage that builds tests or binaries of the workspace goes through it too, so they all
/// share one feature resolution and one set of artifacts: selecting one package (`-p`) or a
/// plain `cargo build` resolves features differently and rebuilds half the tree (aws-sdk-ec2
/// included) once per selection.
pub fn cargo_test() -> Command {
    let mut c = cargo();
    c.args(["test", "--workspace", "--exclude", "trafficmap-ebpf"]);
    c
}

/// The debug executable of binary target `bin`, as the `unit` stage builds it (nothing to build
/// when it ran before).
pub fn workspace_bin(bin: &str) -> Result<PathBuf> {
    Ok(workspace_bins(&[bin])?.remove(0))
}

/// The debug executables of binary targets `bins`, in order, from one `cargo test --no-run`.
pub fn workspace_bins(bins: &[&str]) -> Result<Vec<PathBuf>> {
    let mut c = cargo_test();
    c.args(["--no-run", "--message-format=json-render-diagnostics"])
        .stdout(std::process::Stdio::piped());
    eprintln!(
        "    $ cargo test --workspace --exclude trafficmap-ebpf --no-run (for {})",
        bins.join(", ")
    );
    let out = c.output().context("cargo test --no-run")?;
    if !out.status.success() {
        anyhow::bail!("building the workspace's tests and binaries failed");
    }
    let messages = String::from_utf8_lossy(&out.stdout);
    bins.iter()
        .map(|bin| {
            executable_of(&messages, bin)
                .with_context(|| format!("cargo reported no executable for `{bin}`"))
        })
        .collect()
}

/// The executable of binary target `name` in cargo's JSON messages (not its unit-test harness).
pub fn executable_of(messages: &str, name: &str) -> Option<PathBuf> {
    messages
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| {
            m["reason"] == "compiler-artifact"
                && m["target"]["name"] == name
                && m["profile"]["test"] != true
        })
        .filter_map(|m| m["executable"].as_str().map(PathBuf::from))
        .next_back()
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Builds test binaries of a package without running them and returns their paths, by target
/// name (`cargo test --no-run --message-format=json`).
pub fn build_test_binaries(args: &[&str]) -> Result<Vec<(String, PathBuf)>> {
    let mut c = cargo();
    c.args([
        "test",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ])
    .args(args)
    .stdout(Stdio::piped());
    eprintln!("    $ {}", render(&c));
    let out = c.output().context("cargo test --no-run")?;
    if !out.status.success() {
        bail!("building test binaries failed");
    }
    let mut bins = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact"
            && msg["profile"]["test"] == true
            && let Some(exe) = msg["executable"].as_str()
        {
            let name = msg["target"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            bins.push((name, PathBuf::from(exe)));
        }
    }
    Ok(bins)
}

/// Seconds since `start`, for summaries.
pub fn secs(start: Instant) -> String {
    format!("{:.1}s", start.elapsed().as_secs_f64())
}

/// Builds the release `trafficmap-agent` (benchmarks measure what users run) and returns its path.
pub fn release_agent(what: &str) -> Result<PathBuf> {
    step(format!("{what}: building trafficmap-agent (release)"));
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "trafficmap-daemon",
        "--bin",
        "trafficmap-agent",
    ]))?;
    Ok(root().join("target/release/trafficmap-agent"))
}
