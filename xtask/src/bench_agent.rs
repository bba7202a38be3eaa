//! `cargo xtask bench agent`: the agent's own cost: RSS and CPU idle and at 1,000 and 10,000
//! new connections per second, and the time to drain 100,000 live connections.

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::util::{note, step};

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// utime + stime of a process, seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised comm: state is field 3; utime 14, stime 15.
    let rest = stat.rsplit_once(')').context("stat format")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ut: f64 = f[11].parse()?;
    let st: f64 = f[12].parse()?;
    Ok((ut + st) / clock_ticks())
}

/// (VmRSS, VmHWM) in MiB.
fn rss_mib(pid: u32) -> Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = |key: &str| -> f64 {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok((kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0))
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

struct Agent {
    child: Child,
    port: u16,
}

impl Agent {
    fn start(bin: &Path, extra: &[&str]) -> Result<Agent> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(bin)
            .args(["--listen", &format!("127.0.0.1:{port}"), "--imds", "off"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let a = Agent { child, port };
        let start = Instant::now();
        while http_get(port, "/metrics").is_none_or(|m| !m.contains("trafficmap_agent_info")) {
            if start.elapsed() > Duration::from_secs(60) {
                bail!("agent did not start");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(a)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// Opens `rate` short connections per second (connect, 100 bytes each way, close) until
/// `stop`; returns how many it made.
fn churn(rate: u64, stop: Arc<AtomicBool>) -> Result<u64> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let done = Arc::new(AtomicU64::new(0));
    // Two acceptor threads keep up at 10k/s.
    for _ in 0..2 {
        let l = l.try_clone()?;
        std::thread::spawn(move || {
            let mut buf = [0u8; 100];
            while let Ok((mut s, _)) = l.accept() {
                if s.read_exact(&mut buf).is_ok() {
                    let _ = s.write_all(&buf);
                }
            }
        });
    }
    let start = Instant::now();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        if n >= due {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        let mut c = TcpStream::connect(addr)?;
        c.write_all(&[1u8; 100])?;
        let mut back = [0u8; 100];
        c.read_exact(&mut back)?;
        c.shutdown(Shutdown::Both)?;
        n += 1;
        done.store(n, Ordering::Relaxed);
    }
    Ok(n)
}

/// CPU (% of one core) and memory of the agent over `secs` with `rate` new connections/s.
/// Returns CPU %, RSS and peak RSS (MiB), and the connection rate achieved.
fn load_point(bin: &Path, rate: u64, secs: u64) -> Result<(f64, f64, f64, f64)> {
    let agent = Agent::start(bin, &["--interval", "10s"])?;
    let stop = Arc::new(AtomicBool::new(false));
    // Two client threads at high rates: one sequential client tops out near 10k/s here.
    let clients: u64 = if rate >= 5_000 { 2 } else { 1 };
    let generating = Instant::now();
    let generators: Vec<_> = (0..if rate > 0 { clients } else { 0 })
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || churn(rate / clients, stop))
        })
        .collect();
    // Let it settle, then measure.
    std::thread::sleep(Duration::from_secs(2));
    let c0 = cpu_seconds(agent.pid())?;
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let c1 = cpu_seconds(agent.pid())?;
    let elapsed = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let generated_for = generating.elapsed().as_secs_f64();
    let mut made = 0;
    for g in generators {
        made += g
            .join()
            .map_err(|_| anyhow::anyhow!("generator panicked"))??;
    }
    let (rss, hwm) = rss_mib(agent.pid())?;
    Ok((
        (c1 - c0) / elapsed * 100.0,
        rss,
        hwm,
        made as f64 / generated_for,
    ))
}

/// Holds `n` loopback connections open (both ends in this process) until stdin closes. Runs
/// as a child process: one process may not hold more than RLIMIT_NOFILE descriptors, and the
/// hard limit cannot be raised without CAP_SYS_RESOURCE.
pub fn hold_connections(n: usize) -> Result<()> {
    let listeners: Vec<TcpListener> = (0..4)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()?;
    let mut keep = Vec::with_capacity(2 * n);
    for i in 0..n {
        let l = &listeners[i % listeners.len()];
        let mut c = TcpStream::connect(l.local_addr()?)?;
        let (s, _) = l.accept()?;
        c.write_all(b"x")?;
        keep.push(c);
        keep.push(s);
    }
    println!("ready");
    std::io::stdout().flush()?;
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    Ok(())
}

/// Opens `n` connections (2n sockets) that stay open, sends a little on each, and returns the
/// agent's drain time with them in its table (median of three drains), with backend `attach`.
pub fn drain_point(bin: &Path, n: usize, attach: &str) -> Result<(f64, f64, f64)> {
    drain_point_then(bin, n, attach, || Ok(()))
}

/// [`drain_point`], then `peer` runs with the same connections still open and the agent
/// stopped (so a peer reading the same sockets does not share the CPU with a drain).
pub fn drain_point_then(
    bin: &Path,
    n: usize,
    attach: &str,
    peer: impl FnOnce() -> Result<()>,
) -> Result<(f64, f64, f64)> {
    let agent = Agent::start(
        bin,
        &[
            "--interval",
            "5s",
            "--max-connections",
            "262144",
            "--attach",
            attach,
        ],
    )?;
    let per_child = 9_000;
    let t0 = Instant::now();
    let mut holders = Vec::new();
    let mut left = n;
    while left > 0 {
        let m = left.min(per_child);
        left -= m;
        let mut child = Command::new(std::env::current_exe()?)
            .args(["hold-connections", &m.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().context("stdout")?),
            &mut line,
        )?;
        if line.trim() != "ready" {
            bail!("connection holder failed");
        }
        holders.push(child);
    }
    note(format!("{n} connections open in {:.1?}", t0.elapsed()));
    // Wait for a drain that saw them all, then time the next three (median: one drain on a
    // shared machine is one sample of its noise).
    let start = Instant::now();
    let mut drains_seen: Option<f64> = None;
    let mut times = Vec::new();
    loop {
        let m = http_get(agent.port, "/metrics").unwrap_or_default();
        let entries = metric(&m, "trafficmap_probe_map_entries").unwrap_or(0.0);
        let drains = metric(&m, "trafficmap_drains_total").unwrap_or(0.0);
        if entries >= (2 * n) as f64 {
            match drains_seen {
                None => drains_seen = Some(drains),
                Some(d) if drains > d => {
                    drains_seen = Some(drains);
                    times.push(
                        metric(&m, "trafficmap_last_drain_duration_seconds")
                            .context("no last drain duration")?,
                    );
                }
                _ => {}
            }
        }
        if times.len() == 3 {
            times.sort_by(f64::total_cmp);
            note(format!(
                "drains: {:.1?} ms",
                times.iter().map(|t| t * 1e3).collect::<Vec<_>>()
            ));
            let (rss, hwm) = rss_mib(agent.pid())?;
            drop(agent);
            let peer_result = peer();
            for mut h in holders {
                drop(h.stdin.take());
                let _ = h.wait();
            }
            peer_result?;
            return Ok((times[1] * 1e3, rss, hwm));
        }
        if start.elapsed() > Duration::from_secs(120) {
            bail!("agent never drained {n} connections (entries {entries})");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

pub fn bench() -> Result<String> {
    if !crate::util::is_root() {
        bail!("the agent benchmark loads eBPF: run it as root");
    }
    let bin = crate::util::release_agent("bench agent")?;
    let mut out = String::from(
        "\n| load | agent CPU (% of one core) | RSS | peak RSS | connections/s achieved |\n| --- | ---: | ---: | ---: | ---: |\n",
    );
    for (label, rate, secs) in [
        ("idle", 0u64, 30u64),
        ("1,000 new connections/s", 1_000, 30),
        ("10,000 new connections/s", 10_000, 20),
    ] {
        step(format!("bench agent: {label}"));
        let (cpu, rss, hwm, made) = load_point(&bin, rate, secs)?;
        note(format!(
            "cpu {cpu:.2} %, rss {rss:.1} MiB (peak {hwm:.1}), {made:.0} connections/s"
        ));
        out.push_str(&format!(
            "| {label} | {cpu:.2} % | {rss:.1} MiB | {hwm:.1} MiB | {made:.0} |\n"
        ));
    }
    step("bench agent: drain with 100,000 live connections (50,000 connections, both ends)");
    let (ms, rss, hwm) = drain_point(&bin, 50_000, "auto")?;
    note(format!(
        "drain {ms:.1} ms, rss {rss:.1} MiB (peak {hwm:.1})"
    ));
    out.push_str(&format!(
        "\nDrain of 100,000 live connections (50,000 loopback connections, both ends in the table): \
         {ms:.1} ms; agent RSS {rss:.1} MiB, peak {hwm:.1} MiB.\n"
    ));
    Ok(out)
}
