//! `cargo xtask bench probe`: the probe's overhead on real TCP, against peers measured in the
//! same run: no probe (baseline), trafficmap's agent with the backend `auto` picks (a per-call
//! one) and with `--attach counters`, `tcpdump -i lo -w /dev/null`, and a bpftrace script
//! counting the same tracepoints. Three workloads over loopback: request/response (64-byte
//! messages, fixed count), a bulk stream, and short connections (connect, 100 bytes each way,
//! close: there only the lifecycle programs run for the counters backend), pinned to one CPU. Every peer run
//! sits between two baseline runs and is compared with their mean, so the slow drift of a
//! shared VM cancels; medians of those ratios are reported. A last run per eBPF peer reads the
//! kernel's own per-program statistics: time inside the programs, per event.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Shutdown, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::util::{note, step};

/// Wall and CPU (user + system, all threads of this process) time of one run.
#[derive(Clone, Copy, Debug)]
pub struct Cost {
    pub wall: Duration,
    pub cpu: Duration,
}

fn cpu_time() -> Duration {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer; RUSAGE_SELF covers every thread of the process.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Pins the calling thread (and threads it spawns afterwards) to the last CPU, so both ends of
/// the workload share one core: round trips become context switches instead of cross-CPU
/// wake-ups, whose latency varies far more on a shared VM. Peers keep the other CPUs.
/// Returns the previous mask.
fn pin_to_last_cpu() -> libc::cpu_set_t {
    // SAFETY: plain affinity calls on the current thread with valid cpu_set_t values.
    unsafe {
        let mut old: libc::cpu_set_t = std::mem::zeroed();
        libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut old);
        let n = libc::sysconf(libc::_SC_NPROCESSORS_ONLN).max(1) as usize;
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(n - 1, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        old
    }
}

fn restore_affinity(old: libc::cpu_set_t) {
    // SAFETY: restoring a mask obtained from sched_getaffinity.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &old) };
}

fn measure(f: impl FnOnce() -> Result<()>) -> Result<Cost> {
    let (c0, t0) = (cpu_time(), Instant::now());
    f()?;
    Ok(Cost {
        wall: t0.elapsed(),
        cpu: cpu_time() - c0,
    })
}

/// `count` round trips of `size`-byte messages on one loopback connection.
pub fn request_response(count: usize, size: usize) -> Result<Cost> {
    let old = pin_to_last_cpu();
    let r = request_response_pinned(count, size);
    restore_affinity(old);
    r
}

fn request_response_pinned(count: usize, size: usize) -> Result<Cost> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = l.accept()?;
        s.set_nodelay(true)?;
        let mut buf = vec![0u8; size];
        for _ in 0..count {
            s.read_exact(&mut buf)?;
            s.write_all(&buf)?;
        }
        Ok(())
    });
    let mut c = TcpStream::connect(addr)?;
    c.set_nodelay(true)?;
    let msg = vec![0x5au8; size];
    let mut back = vec![0u8; size];
    let cost = measure(|| {
        for _ in 0..count {
            c.write_all(&msg)?;
            c.read_exact(&mut back)?;
        }
        Ok(())
    })?;
    server
        .join()
        .map_err(|_| anyhow::anyhow!("server panicked"))??;
    Ok(cost)
}

/// `total` bytes in `chunk`-byte writes on one loopback connection.
pub fn stream(total: usize, chunk: usize) -> Result<Cost> {
    let old = pin_to_last_cpu();
    let r = stream_pinned(total, chunk);
    restore_affinity(old);
    r
}

fn stream_pinned(total: usize, chunk: usize) -> Result<Cost> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let reader = std::thread::spawn(move || -> std::io::Result<usize> {
        let (mut s, _) = l.accept()?;
        let mut buf = vec![0u8; 1 << 17];
        let mut got = 0;
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok(got);
            }
            got += n;
        }
    });
    let mut c = TcpStream::connect(addr)?;
    let data = vec![0xa5u8; chunk];
    let cost = measure(|| {
        let mut left = total;
        while left > 0 {
            let n = left.min(chunk);
            c.write_all(&data[..n])?;
            left -= n;
        }
        c.shutdown(Shutdown::Write)?;
        Ok(())
    })?;
    let got = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    if got != total {
        bail!("stream delivered {got} of {total} bytes");
    }
    Ok(cost)
}

/// `count` short connections one after the other: connect, 100 bytes each way, close.
pub fn short_connections(count: usize) -> Result<Cost> {
    let old = pin_to_last_cpu();
    let r = short_connections_pinned(count);
    restore_affinity(old);
    r
}

fn short_connections_pinned(count: usize) -> Result<Cost> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let mut buf = [0u8; 100];
        for _ in 0..count {
            let (mut s, _) = l.accept()?;
            s.read_exact(&mut buf)?;
            s.write_all(&buf)?;
        }
        Ok(())
    });
    let msg = [0x3cu8; 100];
    let mut back = [0u8; 100];
    let cost = measure(|| {
        for _ in 0..count {
            let mut c = TcpStream::connect(addr)?;
            c.write_all(&msg)?;
            c.read_exact(&mut back)?;
        }
        Ok(())
    })?;
    server
        .join()
        .map_err(|_| anyhow::anyhow!("server panicked"))??;
    Ok(cost)
}

/// What runs beside the workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    Baseline,
    /// The agent with `--attach auto`: a per-call backend (the one this kernel loads first).
    Trafficmap,
    /// The agent with `--attach counters`: lifecycle programs only, sock_diag at each drain.
    TrafficmapCounters,
    Tcpdump,
    Bpftrace,
}

impl Condition {
    pub fn name(self) -> &'static str {
        match self {
            Condition::Baseline => "no probe",
            Condition::Trafficmap => "trafficmap agent (auto: per-call backend)",
            Condition::TrafficmapCounters => "trafficmap agent (counters)",
            Condition::Tcpdump => "tcpdump -i lo -w /dev/null",
            Condition::Bpftrace => "bpftrace (same tracepoints)",
        }
    }
}

/// bpftrace doing what the tracepoint backend does: bytes per socket, sends and receives
/// (MSG_PEEK excluded), in kernel maps.
const BPFTRACE_SCRIPT: &str = r#"
tracepoint:sock:sock_send_length /args->protocol == 6 && args->ret > 0/ { @sent[args->sk] = sum(args->ret); }
tracepoint:sock:sock_recv_length /args->protocol == 6 && args->ret > 0 && (args->flags & 2) == 0/ { @recv[args->sk] = sum(args->ret); }
END { clear(@sent); clear(@recv); }
"#;

/// A running peer; stopped on drop.
struct Peer {
    child: Option<Child>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGINT lets tcpdump and bpftrace detach cleanly; SIGTERM makes the agent flush.
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if c.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits until a line containing `marker` appears on the child's stderr or stdout.
fn wait_marker(child: &mut Child, marker: &str, from_stdout: bool) -> Result<()> {
    let stream: Box<dyn std::io::Read + Send> = if from_stdout {
        Box::new(child.stdout.take().context("stdout")?)
    } else {
        Box::new(child.stderr.take().context("stderr")?)
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let marker = marker.to_owned();
    std::thread::spawn(move || {
        let mut seen = false;
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if !seen && line.contains(&marker) {
                seen = true;
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .map_err(|_| anyhow::anyhow!("peer did not start"))
}

fn start(cond: Condition, agent: &PathBuf) -> Result<Peer> {
    let child = match cond {
        Condition::Baseline => None,
        Condition::Trafficmap | Condition::TrafficmapCounters => {
            let attach = if cond == Condition::Trafficmap {
                "auto"
            } else {
                "counters"
            };
            let mut c = Command::new(agent)
                .args(["--interval", "60s", "--listen", "off", "--imds", "off"])
                .args(["--attach", attach])
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .context("starting trafficmap-agent")?;
            wait_marker(&mut c, "agent running", false)?;
            Some(c)
        }
        Condition::Tcpdump => {
            let mut c = Command::new("tcpdump")
                .args(["-i", "lo", "-w", "/dev/null", "-n"])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .context("starting tcpdump (cargo xtask setup --level bench)")?;
            wait_marker(&mut c, "listening on lo", false)?;
            Some(c)
        }
        Condition::Bpftrace => {
            let mut c = Command::new("bpftrace")
                .args(["-e", BPFTRACE_SCRIPT])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("starting bpftrace (cargo xtask setup --level bench)")?;
            wait_marker(&mut c, "Attaching", true)?;
            // bpftrace prints before it has attached every probe.
            std::thread::sleep(Duration::from_millis(500));
            Some(c)
        }
    };
    Ok(Peer { child })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Run time and run count summed over the eBPF programs a process holds (from fdinfo; counted
/// only while `kernel.bpf_stats_enabled` is 1).
fn prog_stats(pid: u32) -> Result<(u64, u64)> {
    let (mut ns, mut cnt) = (0u64, 0u64);
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let fd = fd?;
        let is_prog = std::fs::read_link(fd.path())
            .map(|t| t.to_string_lossy().contains("bpf-prog"))
            .unwrap_or(false);
        if !is_prog {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))?;
        for line in info.lines() {
            let mut kv = line.split(':');
            match (kv.next(), kv.next().map(str::trim)) {
                (Some("run_time_ns"), Some(v)) => ns += v.parse::<u64>().unwrap_or(0),
                (Some("run_cnt"), Some(v)) => cnt += v.parse::<u64>().unwrap_or(0),
                _ => {}
            }
        }
    }
    Ok((ns, cnt))
}

/// Turns on the kernel's per-program run-time statistics; restores the old value on drop.
struct BpfStats(String);

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> Result<BpfStats> {
        let old = std::fs::read_to_string(BPF_STATS)
            .context("reading kernel.bpf_stats_enabled")?
            .trim()
            .to_owned();
        std::fs::write(BPF_STATS, "1").context("enabling kernel.bpf_stats_enabled")?;
        Ok(BpfStats(old))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(BPF_STATS, &self.0);
    }
}

pub struct Options {
    pub reps: usize,
    pub rr_count: usize,
    pub stream_bytes: usize,
    /// Connections of the short-connection workload.
    pub short_count: usize,
    /// Connections held open for the drain-cost case (each is two sockets in the table).
    pub drain_connections: usize,
    /// Only the drain-cost case (about a minute), not the overhead workloads.
    pub only_drain: bool,
}

/// One peer's results for one workload.
#[derive(Default)]
struct PeerResult {
    walls: Vec<f64>,
    cpus: Vec<f64>,
    /// Ratio to the mean of the baseline runs just before and just after.
    wall_ratios: Vec<f64>,
    cpu_ratios: Vec<f64>,
    /// In-kernel program time (ns), runs, and the workload's CPU time (ns) of the accounting run.
    kernel: Option<(u64, u64, u64)>,
}

pub fn bench(opts: &Options) -> Result<String> {
    if !crate::util::is_root() {
        bail!("the probe benchmark loads eBPF and captures packets: run it as root");
    }
    let agent = crate::util::release_agent("bench probe")?;
    type Workload<'a> = Box<dyn Fn() -> Result<Cost> + 'a>;
    let workloads: [(&str, Workload); 3] = [
        (
            "request/response",
            Box::new(|| request_response(opts.rr_count, 64)),
        ),
        ("stream", Box::new(|| stream(opts.stream_bytes, 64 << 10))),
        (
            "short connections",
            Box::new(|| short_connections(opts.short_count)),
        ),
    ];
    const PEERS: [Condition; 4] = [
        Condition::Trafficmap,
        Condition::TrafficmapCounters,
        Condition::Tcpdump,
        Condition::Bpftrace,
    ];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut out = String::new();
    let workloads: &[(&str, Workload)] = if opts.only_drain { &[] } else { &workloads };
    for (wname, work) in workloads {
        step(format!(
            "bench probe: {wname}, {} repetitions of: baseline, then each peer followed by a baseline",
            opts.reps
        ));
        // Warm-up, not recorded.
        work()?;
        let mut base: Vec<f64> = Vec::new();
        let mut base_cpu: Vec<f64> = Vec::new();
        let mut res: Vec<PeerResult> = PEERS.iter().map(|_| PeerResult::default()).collect();
        for rep in 0..opts.reps {
            let mut before = work()?;
            base.push(ms(before.wall));
            base_cpu.push(ms(before.cpu));
            for (i, &cond) in PEERS.iter().enumerate() {
                let peer = start(cond, &agent)?;
                let x = work()?;
                drop(peer);
                let after = work()?;
                base.push(ms(after.wall));
                base_cpu.push(ms(after.cpu));
                let r = &mut res[i];
                r.walls.push(ms(x.wall));
                r.cpus.push(ms(x.cpu));
                r.wall_ratios
                    .push(ms(x.wall) / ((ms(before.wall) + ms(after.wall)) / 2.0));
                r.cpu_ratios
                    .push(ms(x.cpu) / ((ms(before.cpu) + ms(after.cpu)) / 2.0));
                note(format!(
                    "rep {}: {:<30} wall {:>9.1} ms (baselines {:.1} / {:.1})  cpu {:>9.1} ms",
                    rep + 1,
                    cond.name(),
                    ms(x.wall),
                    ms(before.wall),
                    ms(after.wall),
                    ms(x.cpu),
                ));
                before = after;
            }
        }
        // One more run per eBPF peer with the kernel's program statistics on: the time spent
        // inside the programs themselves, exact where wall clocks on a shared VM are not.
        // (Not during the timed runs: the statistics cost two clock reads per event.)
        {
            let _stats = BpfStats::enable()?;
            for (i, &cond) in PEERS.iter().enumerate() {
                if cond == Condition::Tcpdump {
                    continue;
                }
                let peer = start(cond, &agent)?;
                let pid = peer.child.as_ref().map(|c| c.id()).context("peer pid")?;
                let (ns0, n0) = prog_stats(pid)?;
                let x = work()?;
                let (ns1, n1) = prog_stats(pid)?;
                drop(peer);
                res[i].kernel = Some((ns1 - ns0, n1 - n0, x.cpu.as_nanos() as u64));
            }
        }
        let unit = match *wname {
            "request/response" => format!("{} round trips of 64 B", opts.rr_count),
            "short connections" => format!(
                "{} connections, 100 B each way, one after the other",
                opts.short_count
            ),
            _ => format!("{} MiB in 64 KiB writes", opts.stream_bytes >> 20),
        };
        let pct = |r: f64| (r - 1.0) * 100.0;
        let spread = |v: &[f64]| {
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            format!("{:+.1} … {:+.1}", pct(lo), pct(hi))
        };
        out.push_str(&format!(
            "\n### {wname} ({unit}; {} repetitions, medians)\n\n\
             | condition | wall | CPU | wall overhead (range) | CPU overhead | in-kernel program time |\n\
             | --- | ---: | ---: | ---: | ---: | ---: |\n",
            opts.reps
        ));
        out.push_str(&format!(
            "| {} | {:.1} ms | {:.1} ms | | | |\n",
            Condition::Baseline.name(),
            median(base.clone()),
            median(base_cpu.clone()),
        ));
        let mut wall_ov = Vec::new();
        for (cond, r) in PEERS.iter().zip(&res) {
            let kernel = match r.kernel {
                Some((ns, n, cpu)) if n > 0 => format!(
                    "{:.0} ns × {n} runs = {:.2} % of the workload's CPU",
                    ns as f64 / n as f64,
                    ns as f64 / cpu.max(1) as f64 * 100.0
                ),
                Some(_) => "no runs".into(),
                None => "n/a (not eBPF)".into(),
            };
            let w = pct(median(r.wall_ratios.clone()));
            wall_ov.push(w);
            out.push_str(&format!(
                "| {} | {:.1} ms | {:.1} ms | {:+.1} % ({}) | {:+.1} % | {} |\n",
                cond.name(),
                median(r.walls.clone()),
                median(r.cpus.clone()),
                w,
                spread(&r.wall_ratios),
                pct(median(r.cpu_ratios.clone())),
                kernel,
            ));
        }
        let tcpdump = PEERS
            .iter()
            .position(|&c| c == Condition::Tcpdump)
            .map_or(0.0, |i| wall_ov[i]);
        for (i, cond) in PEERS.iter().enumerate() {
            if !matches!(cond, Condition::Trafficmap | Condition::TrafficmapCounters) {
                continue;
            }
            out.push_str(&format!(
                "\n{} wall overhead / tcpdump wall overhead = {}\n",
                cond.name(),
                if tcpdump > 0.0 {
                    format!("{:.2}", wall_ov[i] / tcpdump)
                } else {
                    "n/a (tcpdump showed no overhead)".into()
                }
            ));
        }
    }
    out.push_str(&drain_case(&agent, opts.drain_connections)?);
    Ok(out)
}

/// `ss -tin state established` over every socket, `runs` times: wall milliseconds of each
/// (median taken by the caller), and the lines it printed (two per socket with `-i`).
fn ss_peer(runs: usize) -> Result<(Vec<f64>, usize)> {
    let mut times = Vec::new();
    let mut lines = 0;
    for _ in 0..runs {
        let t0 = Instant::now();
        let out = Command::new("ss")
            .args(["-tinH", "state", "established"])
            .stderr(Stdio::null())
            .output()
            .context("running ss (iproute2)")?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
        if !out.status.success() {
            bail!("ss failed: {}", out.status);
        }
        lines = out.stdout.iter().filter(|&&b| b == b'\n').count();
    }
    Ok((times, lines))
}

/// The counters backend's drain reads every live connection through sock_diag: its cost at
/// scale, beside the per-call backend's drain of the same table and beside `ss -tin` reading
/// the same sockets (what the kernel's dump costs with a userspace reader that only prints).
fn drain_case(agent: &std::path::Path, n: usize) -> Result<String> {
    let mut out = format!(
        "\n### Drain of {} live sockets ({n} loopback connections, both ends)\n\n\
         | reader | time | agent RSS | peak RSS |\n| --- | ---: | ---: | ---: |\n",
        2 * n
    );
    let mut drains = Vec::new();
    let mut ss = (Vec::new(), 0);
    for attach in ["auto", "counters"] {
        step(format!(
            "bench probe: drain with {n} live connections, --attach {attach}"
        ));
        // `ss` reads the same sockets once the counters agent is stopped, before they close.
        let peer = || -> Result<()> {
            if attach == "counters" {
                ss = ss_peer(3)?;
            }
            Ok(())
        };
        let (ms, rss, hwm) = crate::bench_agent::drain_point_then(agent, n, attach, peer)?;
        note(format!(
            "drain {ms:.1} ms, rss {rss:.1} MiB (peak {hwm:.1})"
        ));
        out.push_str(&format!(
            "| agent drain, --attach {attach} | {ms:.1} ms | {rss:.1} MiB | {hwm:.1} MiB |\n"
        ));
        drains.push(ms);
    }
    let (ss_times, lines) = ss;
    // Two lines per socket with -i: fewer means ss did not see the connections.
    if lines < 4 * n {
        bail!("ss -tin printed {lines} lines, expected at least {}", 4 * n);
    }
    note(format!("ss -tin: {ss_times:.1?} ms, {lines} lines"));
    let ss_ms = median(ss_times.clone());
    out.push_str(&format!(
        "| `ss -tinH state established` (median of {}) | {ss_ms:.1} ms | | |\n",
        ss_times.len()
    ));
    let (auto, counters) = (drains[0], drains[1]);
    out.push_str(&format!(
        "\ncounters drain / per-call drain = {:.2}; counters drain / ss = {:.2}\n",
        counters / auto.max(f64::MIN_POSITIVE),
        counters / ss_ms.max(f64::MIN_POSITIVE),
    ));
    Ok(out)
}
