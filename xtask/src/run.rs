//! `cargo xtask run`: the whole system on this host with embedded defaults: a collector with
//! the embedded SQLite store serving the API and the viewer, and an agent counting this host's
//! connections and reporting to it. Prints where the viewer is; Ctrl-C stops both cleanly.
//!
//! Shutdown order: the daemons run in process groups of their own, so the signals a terminal
//! sends to its foreground group (Ctrl-C, hang-up) reach xtask alone. xtask then stops the
//! agent first and waits for it (it ships its last window to the collector on SIGTERM), and
//! only then the collector.

use std::{
    io::{BufRead as _, BufReader},
    net::{SocketAddr, TcpStream},
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::util::{cargo, note, root, run, say, step};

pub struct Options {
    pub listen: SocketAddr,
    pub interval: String,
    pub data_dir: Option<PathBuf>,
    pub release: bool,
}

/// What stops `cargo xtask run`: Ctrl-C, `kill`, and the terminal closing.
const STOP_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// Prepares a daemon's command: its own process group (the terminal's signals are for xtask,
/// which stops the daemons in order), no terminal input, stderr piped to [`forward`].
fn daemon(cmd: &mut Command) -> &mut Command {
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // Out of the terminal's group, a daemon would outlive an xtask killed outright (SIGKILL):
    // the kernel sends it SIGTERM when xtask dies instead.
    // SAFETY: prctl is async-signal-safe and touches only the child's own attributes.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

fn wait_http(addr: SocketAddr, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// Sends SIGTERM and waits (both daemons flush on SIGTERM).
fn stop(name: &str, child: &mut Child) {
    if child.try_wait().ok().flatten().is_some() {
        return;
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            note(format!("{name} stopped ({status})"));
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    note(format!("{name} killed after 30 s"));
}

/// Forwards a child's stderr with a prefix, so the two logs stay apart.
fn forward(name: &'static str, child: &mut Child) {
    if let Some(err) = child.stderr.take() {
        std::thread::spawn(move || {
            // Keeps draining even when the terminal is gone, so a daemon never blocks on a
            // full pipe while it shuts down.
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                say(format_args!("[{name}] {line}"));
            }
        });
    }
}

pub fn run_all(opts: &Options) -> Result<()> {
    if !crate::util::is_root() {
        bail!("`cargo xtask run` loads the eBPF probe into this kernel: run it as root");
    }
    let profile = if opts.release { "release" } else { "debug" };
    step(format!(
        "run: building trafficmap-agent and trafficmap-collector ({profile})"
    ));
    let mut build = cargo();
    build.args([
        "build",
        "-p",
        "trafficmap-daemon",
        "--bin",
        "trafficmap-agent",
        "-p",
        "trafficmap-collector",
        "--bin",
        "trafficmap-collector",
    ]);
    if opts.release {
        build.arg("--release");
    }
    run(&mut build)?;
    let bin = root().join("target").join(profile);
    let state = opts
        .data_dir
        .clone()
        .unwrap_or_else(|| crate::util::cache_dir().join("run"));
    let (data, maps, spool) = (state.join("data"), state.join("maps"), state.join("spool"));
    for d in [&data, &maps, &spool] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }

    let stop_requested = Arc::new(AtomicBool::new(false));
    for sig in STOP_SIGNALS {
        signal_hook::flag::register(sig, Arc::clone(&stop_requested))
            .with_context(|| format!("catching signal {sig}"))?;
    }

    step("run: starting the collector (embedded SQLite store, API and viewer)");
    let mut collector = Command::new(bin.join("trafficmap-collector"));
    collector
        .arg("--listen")
        .arg(opts.listen.to_string())
        .arg("--data-dir")
        .arg(&data)
        .arg("--output-dir")
        .arg(&maps)
        // Loopback only: the local agent posts without a token.
        .arg("--allow-unauthenticated");
    let mut collector = daemon(&mut collector)
        .spawn()
        .context("starting trafficmap-collector")?;
    forward("collector", &mut collector);
    if !wait_http(opts.listen, Duration::from_secs(60)) {
        stop("collector", &mut collector);
        bail!("the collector did not start listening on {}", opts.listen);
    }

    step("run: starting the agent (all network namespaces of this host)");
    let mut agent = Command::new(bin.join("trafficmap-agent"));
    agent
        .args(["--interval", &opts.interval])
        .arg("--collector")
        .arg(format!("http://{}", opts.listen))
        .arg("--spool-dir")
        .arg(&spool)
        .args(["--listen", "127.0.0.1:9977", "--imds", "auto"]);
    let mut agent = daemon(&mut agent)
        .spawn()
        .context("starting trafficmap-agent")?;
    forward("agent", &mut agent);

    eprintln!();
    eprintln!("\x1b[1m    trafficmap is running.\x1b[0m");
    eprintln!("      viewer:          http://{}/", opts.listen);
    eprintln!("      collector API:   http://{}/api/v1/days", opts.listen);
    eprintln!("      agent metrics:   http://127.0.0.1:9977/metrics");
    eprintln!(
        "      state:           {} (data, daily maps, spool)",
        state.display()
    );
    eprintln!(
        "    The first report arrives within {}; the map fills as traffic flows. Ctrl-C stops both.",
        opts.interval
    );
    eprintln!();

    let outcome = loop {
        if stop_requested.load(Ordering::SeqCst) {
            break Ok(());
        }
        if let Ok(Some(status)) = agent.try_wait() {
            break Err(anyhow::anyhow!("the agent exited ({status})"));
        }
        if let Ok(Some(status)) = collector.try_wait() {
            break Err(anyhow::anyhow!("the collector exited ({status})"));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    step("run: stopping (the agent flushes its last window to the collector first)");
    stop_in_order(&mut agent, &mut collector);
    outcome
}

/// The agent first, waited for (its last window reaches the collector), then the collector.
fn stop_in_order(agent: &mut Child, collector: &mut Child) {
    stop("agent", agent);
    stop("collector", collector);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in daemon: a shell that records its start and, on SIGTERM, runs `on_term`.
    fn fake(log: &std::path::Path, name: &str, on_term: &str) -> Child {
        let script = format!(
            r#"trap '{on_term}; echo {name}-stopped >> "$LOG"; exit 0' TERM
echo {name}-up >> "$LOG"
while :; do sleep 0.05; done"#
        );
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script).env("LOG", log);
        daemon(&mut cmd).spawn().expect("sh")
    }

    fn lines(log: &std::path::Path) -> Vec<String> {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn daemons_have_their_own_groups_and_the_agent_stops_first() {
        let dir = std::env::temp_dir().join(format!("xtask-run-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("log");
        let _ = std::fs::remove_file(&log);
        // The agent takes its time to flush; a collector stopped at the same moment would
        // log its stop first.
        let mut agent = fake(&log, "agent", "sleep 0.5");
        let mut collector = fake(&log, "collector", "true");
        let deadline = Instant::now() + Duration::from_secs(10);
        while lines(&log).len() < 2 {
            assert!(Instant::now() < deadline, "fake daemons did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: plain syscalls on our own process and our children.
        let (ours, a, c) = unsafe {
            (
                libc::getpgrp(),
                libc::getpgid(agent.id() as i32),
                libc::getpgid(collector.id() as i32),
            )
        };
        // A terminal signals its foreground group: ours, not theirs.
        assert_eq!(a, agent.id() as i32);
        assert_eq!(c, collector.id() as i32);
        assert_ne!(a, ours);
        assert_ne!(c, ours);

        stop_in_order(&mut agent, &mut collector);
        assert!(agent.wait().unwrap().success());
        assert!(collector.wait().unwrap().success());
        assert_eq!(lines(&log)[2..], ["agent-stopped", "collector-stopped"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
