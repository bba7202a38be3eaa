//! `cargo xtask run`: the whole system on this host with embedded defaults: a collector with
//! the embedded SQLite store serving the API and the viewer, and an agent counting this host's
//! connections and reporting to it. Prints where the viewer is; Ctrl-C stops both cleanly.

use std::{
    io::{BufRead as _, BufReader},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::util::{cargo, note, root, run, step};

pub struct Options {
    pub listen: SocketAddr,
    pub interval: String,
    pub data_dir: Option<PathBuf>,
    pub release: bool,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
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
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[{name}] {line}");
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

    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }

    step("run: starting the collector (embedded SQLite store, API and viewer)");
    let mut collector = Command::new(bin.join("trafficmap-collector"))
        .arg("--listen")
        .arg(opts.listen.to_string())
        .arg("--data-dir")
        .arg(&data)
        .arg("--output-dir")
        .arg(&maps)
        // Loopback only: the local agent posts without a token.
        .arg("--allow-unauthenticated")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting trafficmap-collector")?;
    forward("collector", &mut collector);
    if !wait_http(opts.listen, Duration::from_secs(60)) {
        stop("collector", &mut collector);
        bail!("the collector did not start listening on {}", opts.listen);
    }

    step("run: starting the agent (all network namespaces of this host)");
    let mut agent = Command::new(bin.join("trafficmap-agent"))
        .args(["--interval", &opts.interval])
        .arg("--collector")
        .arg(format!("http://{}", opts.listen))
        .arg("--spool-dir")
        .arg(&spool)
        .args(["--listen", "127.0.0.1:9977", "--imds", "auto"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
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
        if STOP.load(Ordering::SeqCst) {
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
    stop("agent", &mut agent);
    stop("collector", &mut collector);
    outcome
}
