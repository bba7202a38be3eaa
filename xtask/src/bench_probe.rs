//! `cargo xtask bench probe`: the probe's overhead on real TCP, against peers measured in the
//! same run: no probe (baseline), trafficmap's agent, `tcpdump -i lo -w /dev/null`, and a
//! bpftrace script counting the same tracepoints. Two workloads over loopback: request/response
//! (64-byte messages, fixed count) and a bulk stream. Conditions are interleaved within each
//! repetition so drift on a shared machine hits them alike; medians are reported.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{Shutdown, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::util::{cargo, note, root, run, step};

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

/// What runs beside the workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    Baseline,
    Trafficmap,
    Tcpdump,
    Bpftrace,
}

impl Condition {
    pub const ALL: [Condition; 4] = [
        Condition::Baseline,
        Condition::Trafficmap,
        Condition::Tcpdump,
        Condition::Bpftrace,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Condition::Baseline => "no probe",
            Condition::Trafficmap => "trafficmap agent",
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
        Condition::Trafficmap => {
            let mut c = Command::new(agent)
                .args(["--interval", "60s", "--listen", "off", "--imds", "off"])
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

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub struct Options {
    pub reps: usize,
    pub rr_count: usize,
    pub stream_bytes: usize,
}

pub fn bench(opts: &Options) -> Result<String> {
    if !crate::util::is_root() {
        bail!("the probe benchmark loads eBPF and captures packets: run it as root");
    }
    step("bench probe: building trafficmap-agent (release)");
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "trafficmap-daemon",
        "--bin",
        "trafficmap-agent",
    ]))?;
    let agent = root().join("target/release/trafficmap-agent");
    type Workload<'a> = Box<dyn Fn() -> Result<Cost> + 'a>;
    let workloads: [(&str, Workload); 2] = [
        (
            "request/response",
            Box::new(|| request_response(opts.rr_count, 64)),
        ),
        ("stream", Box::new(|| stream(opts.stream_bytes, 64 << 10))),
    ];
    let mut out = String::new();
    for (wname, work) in &workloads {
        step(format!("bench probe: {wname}, {} repetitions", opts.reps));
        // Warm-up, not recorded.
        work()?;
        let mut walls: Vec<Vec<Duration>> = vec![Vec::new(); Condition::ALL.len()];
        let mut cpus: Vec<Vec<Duration>> = vec![Vec::new(); Condition::ALL.len()];
        for rep in 0..opts.reps {
            for (i, &cond) in Condition::ALL.iter().enumerate() {
                let peer = start(cond, &agent)?;
                let cost = work()?;
                drop(peer);
                note(format!(
                    "rep {}: {:<30} wall {:>9.3} ms  cpu {:>9.3} ms",
                    rep + 1,
                    cond.name(),
                    cost.wall.as_secs_f64() * 1e3,
                    cost.cpu.as_secs_f64() * 1e3
                ));
                walls[i].push(cost.wall);
                cpus[i].push(cost.cpu);
            }
        }
        let med_w: Vec<Duration> = walls.into_iter().map(median).collect();
        let med_c: Vec<Duration> = cpus.into_iter().map(median).collect();
        let unit = match *wname {
            "request/response" => format!("{} round trips of 64 B", opts.rr_count),
            _ => format!("{} MiB in 64 KiB writes", opts.stream_bytes >> 20),
        };
        out.push_str(&format!(
            "\n### {wname} ({unit}, median of {} runs)\n\n| condition | wall | CPU | wall overhead | CPU overhead |\n| --- | ---: | ---: | ---: | ---: |\n",
            opts.reps
        ));
        let ov = |x: Duration, base: Duration| (x.as_secs_f64() / base.as_secs_f64() - 1.0) * 100.0;
        for (i, cond) in Condition::ALL.iter().enumerate() {
            out.push_str(&format!(
                "| {} | {:.1} ms | {:.1} ms | {:+.1} % | {:+.1} % |\n",
                cond.name(),
                med_w[i].as_secs_f64() * 1e3,
                med_c[i].as_secs_f64() * 1e3,
                ov(med_w[i], med_w[0]),
                ov(med_c[i], med_c[0]),
            ));
        }
        let ours = ov(med_w[1], med_w[0]);
        let tcpdump = ov(med_w[2], med_w[0]);
        out.push_str(&format!(
            "\ntrafficmap wall overhead / tcpdump wall overhead = {}\n",
            if tcpdump > 0.0 {
                format!("{:.2}", ours / tcpdump)
            } else {
                "n/a (tcpdump showed no overhead)".into()
            }
        ));
    }
    Ok(out)
}
