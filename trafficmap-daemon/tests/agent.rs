//! Privileged end-to-end tests of `trafficmap-agent`: the real binary, the real probe, real TCP
//! in a private network namespace, and real peers (Prometheus from Debian, a recording HTTP
//! collector). Byte totals are asserted exactly.

mod support;

use std::{
    collections::{BTreeMap, HashSet},
    io::{Read as _, Write as _},
    net::{Shutdown, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use support::*;
use trafficmap_model::report::{ContainerRuntime, Report, Role};

const AGENT: &str = env!("CARGO_BIN_EXE_trafficmap-agent");

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tm-agent-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running agent; killed if the test fails before stopping it.
struct AgentProc {
    child: Child,
    log: PathBuf,
    metrics_port: u16,
}

impl AgentProc {
    fn spawn(dir: &Path, name: &str, args: &[String]) -> AgentProc {
        Self::spawn_with(dir, name, args, Command::new(AGENT))
    }

    /// `cmd` may set `RUST_LOG` itself (a test waiting for a debug line); `info` otherwise.
    fn spawn_with(dir: &Path, name: &str, args: &[String], mut cmd: Command) -> AgentProc {
        if !cmd.get_envs().any(|(k, _)| k == "RUST_LOG") {
            cmd.env("RUST_LOG", "info");
        }
        let metrics_port = free_port();
        let log = dir.join(format!("{name}.log"));
        let child = cmd
            .args(args)
            .args([
                "--listen",
                &format!("127.0.0.1:{metrics_port}"),
                "--imds",
                "off",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start trafficmap-agent");
        let mut a = AgentProc {
            child,
            log,
            metrics_port,
        };
        // Ready once /metrics is served, which happens after the probe is attached.
        let ready = wait_for(Duration::from_secs(30), || {
            if let Ok(Some(status)) = a.child.try_wait() {
                panic!("agent exited early ({status}): {}", a.log_text());
            }
            a.metrics()
                .filter(|m| m.contains("trafficmap_agent_info"))
                .map(|_| ())
        });
        assert!(ready.is_some(), "agent not ready: {}", a.log_text());
        a
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn metrics(&self) -> Option<String> {
        http_get(self.metrics_port, "/metrics")
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// BPF program ids the agent holds, from its file descriptors.
    fn program_ids(&self) -> Vec<u32> {
        let mut ids = Vec::new();
        for e in std::fs::read_dir(format!("/proc/{}/fdinfo", self.pid())).unwrap() {
            let text = std::fs::read_to_string(e.unwrap().path()).unwrap_or_default();
            for l in text.lines() {
                if let Some(id) = l.strip_prefix("prog_id:") {
                    ids.push(id.trim().parse().unwrap());
                }
            }
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    fn sigterm(&mut self) -> ExitStatus {
        unsafe { libc::kill(self.pid() as i32, libc::SIGTERM) };
        let status = wait_for(Duration::from_secs(30), || self.child.try_wait().unwrap());
        status.unwrap_or_else(|| panic!("agent did not stop on SIGTERM: {}", self.log_text()))
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A minimal HTTP/1.0 GET on loopback.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?;
    (status == "200").then(|| body.to_owned())
}

/// Serves a listener in the calling thread's namespace: reads each connection to EOF and answers
/// `reply(n)` bytes. Returns the server's port.
fn echo_server(n_conns: usize, reply: fn(usize) -> usize) -> (u16, std::thread::JoinHandle<u64>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let h = std::thread::Builder::new()
        .name("tm-e2e-server".into())
        .spawn(move || {
            let mut total = 0u64;
            for _ in 0..n_conns {
                let (mut s, _) = l.accept().unwrap();
                let mut buf = Vec::new();
                s.read_to_end(&mut buf).unwrap();
                total += buf.len() as u64;
                s.write_all(&vec![7u8; reply(buf.len())]).unwrap();
            }
            total
        })
        .unwrap();
    (port, h)
}

/// One client connection: sends `n` bytes, reads the reply to EOF.
fn client(port: u16, n: usize) -> usize {
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.write_all(&vec![1u8; n]).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    back.len()
}

/// [`client`] in a child process named `name` (a forked copy of this thread, renamed with
/// `PR_SET_NAME`: as the child's only thread it is its thread-group leader, so `name` is the
/// process name the probe records). Asserts the child read `expect_back` bytes.
fn client_in_process(name: &str, port: u16, n: usize, expect_back: usize) {
    let name = std::ffi::CString::new(name).unwrap();
    // SAFETY: the child only renames itself, runs the client (allocation is fork-safe in glibc)
    // and leaves with `_exit`, never returning into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let ok = unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) } == 0
            && client(port, n) == expect_back;
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut status = 0;
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "client process {name:?}: status {status}"
    );
}

fn ns_args(ns: &NetNs) -> Vec<String> {
    vec!["--netns".into(), ns.path().display().to_string()]
}

/// An agent counting `ns` with one window (1 h: written at SIGTERM) into the JSON-lines file
/// `out`, with the configuration file `config` if given.
fn one_window_args(ns: &NetNs, out: &Path, config: Option<&Path>) -> Vec<String> {
    let mut args = ns_args(ns);
    args.extend(strings(&["--interval", "1h", "--output"]));
    args.push(out.display().to_string());
    if let Some(c) = config {
        args.extend(["--config".to_owned(), c.display().to_string()]);
    }
    args
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Sums, over reports, the pairs on `port` in `role`: (sent, received, opened, closed).
fn sum_pairs(reports: &[Report], port: u16, role: Role) -> (u64, u64, u64, u64) {
    reports
        .iter()
        .flat_map(|r| &r.pairs)
        .filter(|p| p.server_port == port && p.role == role)
        .fold((0, 0, 0, 0), |a, p| {
            (
                a.0 + p.bytes_sent,
                a.1 + p.bytes_received,
                a.2 + p.connections_opened,
                a.3 + p.connections_closed,
            )
        })
}

fn read_jsonl(path: &Path) -> Vec<Report> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| Report::from_json(l.as_bytes()).expect("every output line is a valid report"))
        .collect()
}

#[test]
fn prometheus_scrape_equals_bytes_sent() {
    if !privileged() {
        return;
    }
    let prometheus = ["/usr/bin/prometheus"]
        .iter()
        .find(|p| Path::new(p).exists());
    let Some(prometheus) = prometheus else {
        if std::env::var_os("CI").is_some() {
            panic!("prometheus is not installed (cargo xtask setup installs it)");
        }
        eprintln!("SKIPPED: prometheus not installed");
        return;
    };
    let dir = temp_dir("prom");
    let ns = NetNs::new();
    let agent = AgentProc::spawn(
        &dir,
        "agent",
        &[ns_args(&ns), strings(&["--interval", "1s"])].concat(),
    );

    let (port, server) = echo_server(3, |n| n / 10);
    let sizes = [100_000usize, 250_001, 7];
    let received: usize = sizes.iter().map(|&n| client(port, n)).sum();
    assert_eq!(server.join().unwrap(), sizes.iter().sum::<usize>() as u64);
    let sent: u64 = sizes.iter().sum::<usize>() as u64;

    let prom_port = free_port();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             scrape_configs:\n  - job_name: trafficmap\n    static_configs: [{{targets: ['127.0.0.1:{}']}}]\n",
            agent.metrics_port
        ),
    )
    .unwrap();
    let mut prom = Command::new(prometheus)
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .unwrap();
    let query = |q: &str| -> Option<String> {
        let enc: String = q
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let body = http_get(prom_port, &format!("/api/v1/query?query={enc}"))?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"][0]["value"][1]
            .as_str()
            .map(str::to_owned)
    };
    let q_sent = format!(
        "sum(trafficmap_tcp_sent_bytes_total{{role=\"client\",server_port=\"{port}\",peer=\"127.0.0.1\"}})"
    );
    let q_recv = format!(
        "sum(trafficmap_tcp_received_bytes_total{{role=\"client\",server_port=\"{port}\",peer=\"127.0.0.1\"}})"
    );
    let q_server = format!(
        "sum(trafficmap_tcp_received_bytes_total{{role=\"server\",server_port=\"{port}\"}})"
    );
    let mut last = (None, None, None);
    let ok = wait_for(Duration::from_secs(60), || {
        last = (query(&q_sent), query(&q_recv), query(&q_server));
        (last.0.as_deref() == Some(&sent.to_string())
            && last.1.as_deref() == Some(&received.to_string())
            && last.2.as_deref() == Some(&sent.to_string()))
        .then_some(())
    });
    // Metadata: a counter, in bytes.
    let meta = http_get(
        prom_port,
        "/api/v1/metadata?metric=trafficmap_tcp_sent_bytes",
    );
    let _ = prom.kill();
    let _ = prom.wait();
    assert!(
        ok.is_some(),
        "Prometheus saw {last:?}, expected sent {sent}, received {received} (agent log: {})",
        agent.log_text()
    );
    let meta: serde_json::Value = serde_json::from_str(&meta.unwrap()).unwrap();
    let m = &meta["data"]["trafficmap_tcp_sent_bytes"][0];
    assert_eq!(
        (m["type"].as_str(), m["unit"].as_str()),
        (Some("counter"), Some("bytes"))
    );
}

/// The collector's answer to a stored report (the agent believes nothing else).
fn stored(r: &Report) -> String {
    format!(
        r#"{{"status":"stored","report_id":"{}","pairs":{}}}"#,
        r.report_id,
        r.pairs.len()
    )
}

/// A collector stand-in that records every report it accepts.
struct RecordingCollector {
    reports: Arc<Mutex<Vec<Report>>>,
    runtime: tokio::runtime::Runtime,
}

impl RecordingCollector {
    fn start(port: u16, token: &'static str) -> RecordingCollector {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let reports: Arc<Mutex<Vec<Report>>> = Arc::default();
        let r = reports.clone();
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .unwrap();
            let app = axum::Router::new().route(
                "/api/v1/reports",
                axum::routing::post(
                    move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                        let r = r.clone();
                        async move {
                            let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
                            if auth != Some(&format!("Bearer {token}")) {
                                return (axum::http::StatusCode::UNAUTHORIZED, String::new());
                            }
                            match Report::from_json(&body) {
                                Ok(report) => {
                                    let answer = stored(&report);
                                    r.lock().unwrap().push(report);
                                    (axum::http::StatusCode::OK, answer)
                                }
                                Err(_) => (axum::http::StatusCode::BAD_REQUEST, String::new()),
                            }
                        }
                    },
                ),
            );
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        });
        RecordingCollector { reports, runtime }
    }
}

#[test]
fn collector_outage_and_agent_restart_lose_and_repeat_nothing() {
    if !privileged() {
        return;
    }
    let dir = temp_dir("outage");
    let spool = dir.join("spool");
    let token_file = dir.join("token");
    std::fs::write(&token_file, "s3cret\n").unwrap();
    let collector_port = free_port();
    let ns = NetNs::new();
    let args = [
        ns_args(&ns),
        strings(&["--interval", "1s", "--collector"]),
        vec![format!("http://127.0.0.1:{collector_port}")],
        strings(&["--spool-dir"]),
        vec![spool.display().to_string()],
        strings(&["--token-file"]),
        vec![token_file.display().to_string()],
    ]
    .concat();
    let spooled = || {
        std::fs::read_dir(&spool)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                    .filter(|e| e.file_name() != "state.json")
                    .count()
            })
            .unwrap_or(0)
    };

    // Phase 1: collector down; the agent spools, then stops.
    let mut a = AgentProc::spawn(&dir, "agent-1", &args);
    let (port, server) = echo_server(5, |n| n * 2);
    let mut sent = 0u64;
    for n in [10_000usize, 20_001, 30_002] {
        client(port, n);
        sent += n as u64;
    }
    std::thread::sleep(Duration::from_millis(3500));
    assert!(a.sigterm().success(), "{}", a.log_text());
    let after_first = spooled();
    assert!(
        after_first >= 3,
        "reports spooled while the collector is down: {after_first}"
    );

    // Phase 2: restarted agent, collector still down.
    let mut b = AgentProc::spawn(&dir, "agent-2", &args);
    for n in [40_003usize, 50_004] {
        client(port, n);
        sent += n as u64;
    }
    assert_eq!(server.join().unwrap(), sent);
    std::thread::sleep(Duration::from_millis(2500));
    assert!(spooled() > after_first);

    // Phase 3: the collector comes up; the spool empties in order.
    let c = RecordingCollector::start(collector_port, "s3cret");
    let drained = wait_for(Duration::from_secs(60), || (spooled() == 0).then_some(()));
    assert!(drained.is_some(), "spool not drained: {}", b.log_text());
    assert!(b.sigterm().success(), "{}", b.log_text());
    let reports = c.reports.lock().unwrap().clone();
    drop(c.runtime);

    let ids: HashSet<&str> = reports.iter().map(|r| r.report_id.as_str()).collect();
    assert_eq!(ids.len(), reports.len(), "a report arrived twice");
    let seqs: Vec<u64> = reports.iter().map(|r| r.seq).collect();
    let first = seqs[0];
    assert_eq!(
        seqs,
        (first..first + seqs.len() as u64).collect::<Vec<_>>(),
        "reports arrive in order with no gap"
    );
    let (c_sent, c_recv, opened, closed) = sum_pairs(&reports, port, Role::Client);
    assert_eq!((c_sent, c_recv), (sent, 2 * sent));
    assert_eq!((opened, closed), (5, 5));
    assert_eq!(
        sum_pairs(&reports, port, Role::Server),
        (2 * sent, sent, 5, 5)
    );
    // Windows never overlap, within one agent run or across the restart.
    for w in reports.windows(2) {
        assert!(
            w[1].window.start >= w[0].window.end,
            "{:?} {:?}",
            w[0].window,
            w[1].window
        );
    }
}

#[test]
fn sigterm_flushes_the_last_window_and_detaches() {
    if !privileged() {
        return;
    }
    let dir = temp_dir("sigterm");
    let out = dir.join("reports.jsonl");
    let ns = NetNs::new();
    let mut a = AgentProc::spawn(&dir, "agent", &one_window_args(&ns, &out, None));
    let ids = a.program_ids();
    assert!(ids.len() >= 4, "programs held by the agent: {ids:?}");
    let (port, server) = echo_server(2, |n| n + 1);
    client(port, 123_456);
    client(port, 654_321);
    server.join().unwrap();
    assert!(a.sigterm().success(), "{}", a.log_text());

    let reports = read_jsonl(&out);
    assert_eq!(reports.len(), 1, "one window, written at shutdown");
    assert_eq!(
        sum_pairs(&reports, port, Role::Client),
        (777_777, 777_779, 2, 2)
    );
    assert_eq!(
        sum_pairs(&reports, port, Role::Server),
        (777_779, 777_777, 2, 2)
    );
    let gone = wait_for(Duration::from_secs(5), || {
        let live: Vec<u32> = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .map(|p| p.id())
            .filter(|id| ids.contains(id))
            .collect();
        live.is_empty().then_some(())
    });
    assert!(
        gone.is_some(),
        "programs still loaded after the agent stopped"
    );
    // No kprobe event of this agent left in tracefs either.
    let events = std::fs::read_to_string("/sys/kernel/tracing/kprobe_events").unwrap_or_default();
    assert!(
        !events.contains(&format!("trafficmap_{}_", a.pid())),
        "{events}"
    );
}

/// Any local user names their processes: one named with terminal escapes is reported with
/// U+FFFD in their place, in a report the collector's own check accepts (`read_jsonl` parses
/// with `Report::from_json`), with its bytes counted exactly.
#[test]
fn a_process_named_with_escapes_is_reported_sanitised() {
    if !privileged() {
        return;
    }
    let dir = temp_dir("escapes");
    let out = dir.join("reports.jsonl");
    let ns = NetNs::new();
    let mut a = AgentProc::spawn(&dir, "agent", &one_window_args(&ns, &out, None));
    let (port, server) = echo_server(1, |n| n + 1);
    // A process's name is the `comm` the probe records for the bytes it moves.
    client_in_process("\u{1b}[31mevil\u{7}", port, 4242, 4243);
    assert_eq!(server.join().unwrap(), 4242);
    assert!(a.sigterm().success(), "{}", a.log_text());

    let reports = read_jsonl(&out);
    assert_eq!(reports.len(), 1, "one window, written at shutdown");
    let clients: Vec<_> = reports[0]
        .pairs
        .iter()
        .filter(|p| p.server_port == port && p.role == Role::Client)
        .map(|p| (p.process.as_str(), p.bytes_sent, p.bytes_received))
        .collect();
    assert_eq!(clients, vec![("\u{fffd}[31mevil\u{fffd}", 4242, 4243)]);
}

#[test]
fn ten_thousand_short_connections_in_one_interval() {
    if !privileged() {
        return;
    }
    const N: usize = 10_000;
    let dir = temp_dir("10k");
    let out = dir.join("reports.jsonl");
    let ns = NetNs::new();
    let mut a = AgentProc::spawn(&dir, "agent", &one_window_args(&ns, &out, None));
    let (port, server) = echo_server(N, |n| n % 97);
    let start = Instant::now();
    let mut sent = 0u64;
    let mut back = 0u64;
    for i in 0..N {
        let n = 1 + i % 500;
        back += client(port, n) as u64;
        sent += n as u64;
    }
    assert_eq!(server.join().unwrap(), sent);
    let took = start.elapsed();
    assert!(a.sigterm().success(), "{}", a.log_text());
    let reports = read_jsonl(&out);
    assert_eq!(
        sum_pairs(&reports, port, Role::Client),
        (sent, back, N as u64, N as u64),
        "{N} connections in {took:?}"
    );
    assert_eq!(
        sum_pairs(&reports, port, Role::Server),
        (back, sent, N as u64, N as u64)
    );
    let drops: BTreeMap<String, u64> = reports[0].health.drops.clone();
    assert!(drops.values().all(|&d| d == 0), "{drops:?}");
}

#[test]
fn bad_configuration_exits_64_with_one_line() {
    let dir = temp_dir("badcfg");
    let bad_toml = dir.join("bad.toml");
    std::fs::write(&bad_toml, "interval = \"1s\"\nmetrics_top = 5\n").unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            strings(&["--attach", "ebpf"]),
            "attach: unknown attach mode `ebpf`",
        ),
        (
            strings(&["--interval", "sometimes"]),
            "interval: `sometimes` is not a duration",
        ),
        (
            strings(&["--netns", "/no/such/ns"]),
            "netns: /no/such/ns does not exist",
        ),
        (strings(&["--collector", "localhost:80"]), "collector:"),
        (
            vec!["--config".into(), bad_toml.display().to_string()],
            "unknown field `metrics_top`",
        ),
        (
            strings(&["--config", "/no/such/file.toml"]),
            "config file /no/such/file.toml",
        ),
        // Control characters are not echoed: the message stays one printable line.
        (
            strings(&["--host-name", "web\u{1b}[2J"]),
            "host_name: `web\u{fffd}[2J` (7 bytes) must be 1 to 253 bytes without control characters",
        ),
        (
            strings(&["--host-id", "a\nb"]),
            "host_id: `a\u{fffd}b` (3 bytes) must be 1 to 128 bytes without control characters",
        ),
    ];
    for (args, want) in cases {
        let out = Command::new(AGENT).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("trafficmap-agent: invalid configuration: ")
                && stderr.contains(want),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn runs_with_capabilities_alone() {
    if !privileged() {
        return;
    }
    // As user `nobody` with only CAP_BPF, CAP_PERFMON and CAP_DAC_READ_SEARCH (tracefs is
    // root-only), counting the host namespace.
    let dir = temp_dir("caps");
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    unsafe {
        libc::chown(
            std::ffi::CString::new(out.display().to_string())
                .unwrap()
                .as_ptr(),
            65534,
            65534,
        )
    };
    let caps = "-all,+bpf,+perfmon,+dac_read_search";
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        &format!("--inh-caps={caps}"),
        &format!("--ambient-caps={caps}"),
        &format!("--bounding-set={caps}"),
        "--",
        AGENT,
    ]);
    let report_file = out.join("r.jsonl");
    let mut a = AgentProc::spawn_with(
        &dir,
        "agent",
        &strings(&[
            "--interval",
            "1h",
            "--output",
            &report_file.display().to_string(),
        ]),
        cmd,
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", a.pid())).unwrap();
    // setpriv exec'd the agent: its uid is nobody and it has no CAP_SYS_ADMIN (bit 21).
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line.split_whitespace().nth(2) == Some("65534"),
        "{uid_line}"
    );
    let eff = status.lines().find(|l| l.starts_with("CapEff:")).unwrap();
    let caps = u64::from_str_radix(eff.split_whitespace().nth(1).unwrap(), 16).unwrap();
    assert_eq!(caps & (1 << 21), 0, "CAP_SYS_ADMIN must not be held");
    // Started with CAP_BPF, CAP_PERFMON and CAP_DAC_READ_SEARCH; once attached, every thread
    // keeps only the documented set. Without CAP_SETPCAP the bounding set stays as setpriv
    // left it; no_new_privs stops an exec from gaining anything.
    let started_with = (1 << 39) | (1 << 38) | (1 << 2);
    // Never more than it started with (no CAP_NET_ADMIN here: `[nat]` says so once and reports
    // connections as their sockets saw them).
    let keep = documented_kept_caps() & started_with;
    for t in thread_caps(a.pid()) {
        assert_eq!(t, (keep, keep, started_with, 0, true), "{}", a.log_text());
    }

    // Traffic in the host namespace from a process with a unique name, to find it among the
    // host's other connections.
    let (port, server) = echo_server(1, |_| 11);
    client_in_process("tm-caps-client", port, 31_337, 11);
    server.join().unwrap();
    assert!(a.sigterm().success(), "{}", a.log_text());
    let reports = read_jsonl(&report_file);
    let mine: Vec<_> = reports
        .iter()
        .flat_map(|r| &r.pairs)
        .filter(|p| p.process == "tm-caps-client" && p.server_port == port)
        .collect();
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert_eq!((mine[0].bytes_sent, mine[0].bytes_received), (31_337, 11));
}

/// A collector stand-in over HTTPS with a self-signed certificate; accepts only `token`,
/// which the test can change.
struct TlsCollector {
    reports: Arc<Mutex<Vec<Report>>>,
    token: Arc<Mutex<String>>,
    _runtime: tokio::runtime::Runtime,
}

impl TlsCollector {
    fn start(port: u16, ca_pem: &Path, token: &str) -> TlsCollector {
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap();
        std::fs::write(ca_pem, cert.cert.pem()).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let reports: Arc<Mutex<Vec<Report>>> = Arc::default();
        let token = Arc::new(Mutex::new(token.to_owned()));
        let (r, t) = (reports.clone(), token.clone());
        let app = axum::Router::new().route(
            "/api/v1/reports",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let (r, t) = (r.clone(), t.clone());
                    async move {
                        let want = format!("Bearer {}", t.lock().unwrap());
                        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&want)
                        {
                            return (axum::http::StatusCode::UNAUTHORIZED, String::new());
                        }
                        let report = Report::from_json(&body).unwrap();
                        let answer = stored(&report);
                        r.lock().unwrap().push(report);
                        (axum::http::StatusCode::OK, answer)
                    }
                },
            ),
        );
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let app = app.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let mut app = app.clone();
                            async move {
                                tower_service::Service::call(
                                    &mut app,
                                    req.map(axum::body::Body::new),
                                )
                                .await
                            }
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
                });
            }
        });
        TlsCollector {
            reports,
            token,
            _runtime: runtime,
        }
    }
}

#[test]
fn https_collector_token_reload_and_own_traffic_not_counted() {
    if !privileged() {
        return;
    }
    let dir = temp_dir("tls");
    let ca = dir.join("ca.pem");
    let token_file = dir.join("token");
    std::fs::write(&token_file, "first-token\n").unwrap();
    let port = free_port();
    let collector = TlsCollector::start(port, &ca, "first-token");
    // Counting every namespace of the host, where the agent's own connection to the collector
    // (on loopback) happens.
    let mut a = AgentProc::spawn(
        &dir,
        "agent",
        &strings(&[
            "--interval",
            "1s",
            "--collector",
            &format!("https://127.0.0.1:{port}"),
            "--ca-file",
            &ca.display().to_string(),
            "--token-file",
            &token_file.display().to_string(),
            "--spool-dir",
            &dir.join("spool").display().to_string(),
        ]),
    );
    let got = |n: usize| {
        wait_for(Duration::from_secs(30), || {
            (collector.reports.lock().unwrap().len() >= n).then_some(())
        })
    };
    assert!(got(2).is_some(), "no report over HTTPS: {}", a.log_text());

    // Rotate the token: the collector switches, the agent is told with SIGHUP.
    *collector.token.lock().unwrap() = "second-token".into();
    std::fs::write(&token_file, "second-token\n").unwrap();
    let before_hup = collector.reports.lock().unwrap().len();
    unsafe { libc::kill(a.pid() as i32, libc::SIGHUP) };
    assert!(
        got(before_hup + 3).is_some(),
        "no report after the token reload: {}",
        a.log_text()
    );
    assert!(
        a.log_text().contains("SIGHUP: reloaded"),
        "{}",
        a.log_text()
    );
    // A connection of known size from another process is counted exactly meanwhile: the
    // agent counts, it only leaves out its own connections.
    let (control, server) = echo_server(1, |n| n + 1);
    client(control, 54_321);
    server.join().unwrap();
    assert!(a.sigterm().success());

    let reports = collector.reports.lock().unwrap().clone();
    let ids: HashSet<&str> = reports.iter().map(|r| r.report_id.as_str()).collect();
    assert_eq!(ids.len(), reports.len(), "a report arrived twice");
    // The agent's own client connections to the collector are not in its reports.
    let own: Vec<_> = reports
        .iter()
        .flat_map(|r| &r.pairs)
        .filter(|p| p.role == Role::Client && p.server_port == port)
        .collect();
    assert!(own.is_empty(), "the agent counted its own traffic: {own:?}");
    assert_eq!(
        sum_pairs(&reports, control, Role::Client),
        (54_321, 54_322, 1, 1)
    );
    // Reports refused during the switch (token changed before SIGHUP) were retried, not lost:
    // sequence numbers have no gap.
    let mut seqs: Vec<u64> = reports.iter().map(|r| r.seq).collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (seqs[0]..seqs[0] + seqs.len() as u64).collect::<Vec<_>>()
    );
}

/// Capabilities the agent keeps after attaching, as docs/agent.md ("Privileges") says: none,
/// except CAP_BPF where every `bpf()` call needs it (Linux before 6.5 with
/// `kernel.unprivileged_bpf_disabled` set).
fn documented_kept_caps() -> u64 {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut v = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let (major, minor) = (v.next().unwrap(), v.next().unwrap());
    let disabled = std::fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled")
        .map(|s| s.trim() != "0")
        .unwrap_or(true);
    let bpf = if (major, minor) < (6, 5) && disabled {
        1 << 39
    } else {
        0
    };
    // CAP_NET_ADMIN for the conntrack dumps of `[nat]` (issue 11), enabled by default; kept only
    // where held.
    bpf | 1 << 12
}

/// (CapEff, CapPrm, CapBnd, CapAmb, NoNewPrivs) of every thread of `pid`.
fn thread_caps(pid: u32) -> Vec<(u64, u64, u64, u64, bool)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let Ok(status) = std::fs::read_to_string(t.unwrap().path().join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap()
                .trim()
                .to_owned()
        };
        let hex = |name: &str| u64::from_str_radix(&field(name), 16).unwrap();
        out.push((
            hex("CapEff:"),
            hex("CapPrm:"),
            hex("CapBnd:"),
            hex("CapAmb:"),
            field("NoNewPrivs:") == "1",
        ));
    }
    assert!(!out.is_empty());
    out
}

#[test]
fn root_agent_drops_its_capabilities_after_attaching_and_still_counts() {
    if !privileged() {
        return;
    }
    let dir = temp_dir("dropcaps");
    let out = dir.join("reports.jsonl");
    let ns = NetNs::new();
    let mut a = AgentProc::spawn(&dir, "agent", &one_window_args(&ns, &out, None));
    let keep = documented_kept_caps();
    // Every thread: only the documented set, empty bounding set (root holds CAP_SETPCAP),
    // nothing ambient, no_new_privs.
    let threads = thread_caps(a.pid());
    assert!(threads.len() >= 3, "{threads:?}");
    for t in &threads {
        assert_eq!(*t, (keep, keep, keep, 0, true), "{}", a.log_text());
    }
    assert!(
        a.log_text()
            .contains("capabilities dropped after attaching")
    );
    // Still counting exactly, still detaching at exit.
    let (port, server) = echo_server(2, |n| n + 3);
    assert_eq!(client(port, 123_457), 123_460);
    assert_eq!(client(port, 65_536), 65_539);
    assert_eq!(server.join().unwrap(), 123_457 + 65_536);
    assert!(!a.program_ids().is_empty());
    assert!(a.sigterm().success(), "{}", a.log_text());
    let reports = read_jsonl(&out);
    assert_eq!(
        sum_pairs(&reports, port, Role::Client),
        (123_457 + 65_536, 123_460 + 65_539, 2, 2)
    );
    assert_eq!(
        sum_pairs(&reports, port, Role::Server),
        (123_460 + 65_539, 123_457 + 65_536, 2, 2)
    );
    assert!(
        a.log_text().contains("probe detached; stopped"),
        "{}",
        a.log_text()
    );
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .parse()
        .unwrap()
}

#[test]
fn metrics_endpoint_survives_a_flood_of_partial_headers() {
    if !privileged() {
        return;
    }
    let dir = temp_dir("flood");
    let ns = NetNs::new();
    let a = AgentProc::spawn(
        &dir,
        "agent",
        &[ns_args(&ns), strings(&["--interval", "1h"])].concat(),
    );
    let (fds_before, rss_before) = (fd_count(a.pid()), rss_kib(a.pid()));
    // Ten times the connection cap (32), each sending half a request header and holding on.
    let started = Instant::now();
    let mut held = Vec::new();
    for _ in 0..320 {
        let mut s = TcpStream::connect(("127.0.0.1", a.metrics_port)).unwrap();
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ");
        held.push(s);
    }
    std::thread::sleep(Duration::from_millis(500));
    // The agent holds at most the cap: connections beyond it were closed at once.
    let fds_during = fd_count(a.pid());
    assert!(
        fds_during <= fds_before + 32,
        "{fds_before} fds before, {fds_during} during the flood"
    );
    // Closed by the agent: EOF, or a reset because the half header was never read.
    let closed = |s: &TcpStream| {
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        match s.peek(&mut [0u8; 1]) {
            Ok(0) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            Ok(_) => panic!("the agent answered a request it did not fully receive"),
        }
    };
    let closed_at_once = held.iter().filter(|s| closed(s)).count();
    assert_eq!(
        closed_at_once,
        320 - 32,
        "connections beyond the cap are closed at once"
    );
    // All slots held: a scrape now is closed too...
    assert_eq!(a.metrics(), None);
    // ...until the header timeout (10 s) closes the held ones; then /metrics answers again.
    let answered = wait_for(Duration::from_secs(20), || {
        a.metrics().filter(|m| m.contains("trafficmap_agent_info"))
    });
    assert!(answered.is_some(), "{}", a.log_text());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(15),
        "{waited:?}"
    );
    assert_eq!(held.iter().filter(|s| closed(s)).count(), 320);
    // Hundreds of refused connections, one log line per 10 s.
    let lines = a
        .log_text()
        .lines()
        .filter(|l| l.contains("connection limit reached"))
        .count();
    assert!((1..=2).contains(&lines), "{lines} lines: {}", a.log_text());
    drop(held);
    let settled = wait_for(Duration::from_secs(5), || {
        (fd_count(a.pid()) <= fds_before).then_some(())
    });
    assert!(settled.is_some(), "{} fds", fd_count(a.pid()));
    let rss_after = rss_kib(a.pid());
    assert!(
        rss_after < rss_before + 16 * 1024,
        "RSS {rss_before} KiB before, {rss_after} KiB after the flood"
    );
}

/// A collector stand-in that answers each request with the next scripted answer (status, body)
/// and, once the script is done, stores reports like the collector. Records the report id of
/// every attempt.
struct ScriptedCollector {
    reports: Arc<Mutex<Vec<Report>>>,
    attempts: Arc<Mutex<Vec<String>>>,
    _runtime: tokio::runtime::Runtime,
}

impl ScriptedCollector {
    fn start(port: u16, script: Vec<(u16, String)>) -> ScriptedCollector {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let reports: Arc<Mutex<Vec<Report>>> = Arc::default();
        let attempts: Arc<Mutex<Vec<String>>> = Arc::default();
        let script = Arc::new(Mutex::new(std::collections::VecDeque::from(script)));
        let (r, at) = (reports.clone(), attempts.clone());
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .unwrap();
            let app = axum::Router::new().route(
                "/api/v1/reports",
                axum::routing::post(move |body: axum::body::Bytes| {
                    let (r, at, script) = (r.clone(), at.clone(), script.clone());
                    async move {
                        let report = Report::from_json(&body).unwrap();
                        at.lock().unwrap().push(report.report_id.clone());
                        if let Some((status, text)) = script.lock().unwrap().pop_front() {
                            return (axum::http::StatusCode::from_u16(status).unwrap(), text);
                        }
                        let answer = stored(&report);
                        r.lock().unwrap().push(report);
                        (axum::http::StatusCode::OK, answer)
                    }
                }),
            );
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        });
        ScriptedCollector {
            reports,
            attempts,
            _runtime: runtime,
        }
    }
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}

#[test]
fn only_the_collectors_answer_empties_the_spool_and_clock_skew_is_retried() {
    if !privileged() {
        return;
    }
    let dir = temp_dir("answers");
    let spool = dir.join("spool");
    // A corrupt state file: quarantined, and the agent runs.
    std::fs::create_dir_all(&spool).unwrap();
    std::fs::write(spool.join("state.json"), b"{").unwrap();
    std::fs::write(spool.join(".00000000000000000003.json.x1y2"), b"half").unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, "s3cret\n").unwrap();
    let collector_port = free_port();
    let skew = r#"{"error":"report window starts at 2026-11-29T14:00:00Z, more than 5m ahead of the collector's clock (2026-11-29T12:00:00Z): check the agent's clock"}"#;
    let script = vec![
        // A proxy or portal answering 200 with something else, a megabyte of it.
        (200, "<html>".repeat(200_000)),
        (422, skew.to_owned()),
        // Token roll-over, identity not (yet) covered: kept and retried.
        (401, r#"{"error":"unknown token"}"#.to_owned()),
        (
            403,
            r#"{"error":"identity: machine-id not covered"}"#.to_owned(),
        ),
        // Invalid for good: set aside.
        (
            400,
            r#"{"error":"pairs[0].bytes_sent: too big"}"#.to_owned(),
        ),
    ];
    let ns = NetNs::new();
    let c = ScriptedCollector::start(collector_port, script);
    let mut a = AgentProc::spawn(
        &dir,
        "agent",
        &[
            ns_args(&ns),
            strings(&["--interval", "1s", "--collector"]),
            vec![format!("http://127.0.0.1:{collector_port}")],
            strings(&["--spool-dir"]),
            vec![spool.display().to_string()],
            strings(&["--token-file"]),
            vec![token_file.display().to_string()],
        ]
        .concat(),
    );
    let quarantined = files_in(&spool.join("quarantine"));
    assert_eq!(quarantined.len(), 1, "{quarantined:?}");
    assert!(!spool.join(".00000000000000000003.json.x1y2").exists());
    assert!(a.log_text().contains("spool state.json is corrupt"));
    // Traffic after the agent started: counted in some window.
    let (port, server) = echo_server(1, |n| n / 2);
    assert_eq!(client(port, 123_456), 61_728);
    assert_eq!(server.join().unwrap(), 123_456);
    // Five answers that do not store, with backoff 1+2+4+8 s (+ up to a quarter), then stored.
    let set_aside = wait_for(Duration::from_secs(40), || {
        let f = files_in(&spool.join("rejected"));
        (!f.is_empty()).then_some(f)
    })
    .unwrap_or_else(|| panic!("nothing set aside: {}", a.log_text()));
    assert_eq!(set_aside.len(), 1);
    let attempts = c.attempts.lock().unwrap().clone();
    assert!(attempts.len() >= 5);
    // The same report was retried through the bad 200, the skew, the 401 and the 403.
    assert!(
        attempts[..5].iter().all(|id| *id == attempts[0]),
        "{attempts:?}"
    );
    let rejected = Report::from_json(&std::fs::read(&set_aside[0]).unwrap()).unwrap();
    assert_eq!(rejected.report_id, attempts[0]);
    // Let a few more windows be shipped, then stop (the last one is flushed).
    std::thread::sleep(Duration::from_millis(2500));
    let m = a.metrics().unwrap();
    assert_eq!(
        metric(&m, "trafficmap_agent_spool_rejected_bytes"),
        Some(std::fs::metadata(&set_aside[0]).unwrap().len())
    );
    for (reason, n) in [
        ("bad_reply", 1),
        ("clock_skew", 1),
        ("401", 1),
        ("403", 1),
        ("400", 1),
    ] {
        assert_eq!(
            metric(
                &m,
                &format!("trafficmap_report_send_failures_total{{reason=\"{reason}\"}}")
            ),
            Some(n),
            "{reason}: {m}"
        );
    }
    assert!(a.sigterm().success(), "{}", a.log_text());
    let log = a.log_text();
    let skew_line = log
        .lines()
        .find(|l| l.contains("host's clock is ahead"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(skew_line.contains("ERROR"), "{skew_line}");
    assert!(
        skew_line.contains("agent clock - collector clock: "),
        "{skew_line}"
    );
    // Nothing lost: what the collector stored plus the one report set aside is every byte.
    let mut all = c.reports.lock().unwrap().clone();
    let ids: HashSet<&str> = all.iter().map(|r| r.report_id.as_str()).collect();
    assert_eq!(ids.len(), all.len(), "a report was stored twice");
    assert!(!ids.contains(rejected.report_id.as_str()));
    all.push(rejected);
    assert_eq!(sum_pairs(&all, port, Role::Client), (123_456, 61_728, 1, 1));
    // Sequence numbers after the rebuilt state come from the clock: above every earlier one.
    let min_seq = all.iter().map(|r| r.seq).min().unwrap();
    assert!(min_seq > 1_700_000_000_000_000, "{min_seq}");
    let left: Vec<PathBuf> = files_in(&spool)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json") && !p.ends_with("state.json"))
        .collect();
    assert_eq!(left, Vec::<PathBuf>::new());
}

/// A tmpfs mount for one test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn new(path: PathBuf, size: &str) -> Tmpfs {
        std::fs::create_dir_all(&path).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs");
        Tmpfs(path)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Fills the file system of `dir` until a write fails; returns the filler file.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    path
}

#[test]
fn a_full_disk_keeps_windows_in_memory_until_there_is_room() {
    if !privileged() {
        return;
    }
    let dir = temp_dir("diskfull");
    let fs = Tmpfs::new(dir.join("small"), "1m");
    let spool = fs.0.join("spool");
    let token_file = dir.join("token");
    std::fs::write(&token_file, "s3cret\n").unwrap();
    let collector_port = free_port();
    let ns = NetNs::new();
    let mut a = AgentProc::spawn(
        &dir,
        "agent",
        &[
            ns_args(&ns),
            strings(&["--interval", "1s", "--collector"]),
            vec![format!("http://127.0.0.1:{collector_port}")],
            strings(&["--spool-dir"]),
            vec![spool.display().to_string()],
            strings(&["--token-file"]),
            vec![token_file.display().to_string()],
        ]
        .concat(),
    );
    // Collector down, disk full: windows pile up in memory.
    let filler = fill(&fs.0);
    let (port, server) = echo_server(3, |n| n + 1);
    let mut sent = 0u64;
    for n in [10_001usize, 20_002, 30_003] {
        assert_eq!(client(port, n), n + 1);
        sent += n as u64;
        std::thread::sleep(Duration::from_millis(1100));
    }
    assert_eq!(server.join().unwrap(), sent);
    let failing = wait_for(Duration::from_secs(10), || {
        let m = a.metrics()?;
        let failures = metric(&m, "trafficmap_agent_emit_failures_total")?;
        let pending = metric(&m, "trafficmap_agent_emit_pending_reports")?;
        (failures >= 3 && pending >= 3).then_some((failures, pending))
    });
    assert!(failing.is_some(), "{}", a.log_text());
    // Room again: the windows held in memory are written at the next window, then shipped.
    std::fs::remove_file(&filler).unwrap();
    let c = RecordingCollector::start(collector_port, "s3cret");
    let written = wait_for(Duration::from_secs(10), || {
        let m = a.metrics()?;
        (metric(&m, "trafficmap_agent_emit_pending_reports")? == 0).then_some(m)
    })
    .unwrap_or_else(|| panic!("{}", a.log_text()));
    assert_eq!(
        metric(&written, "trafficmap_agent_emit_dropped_reports_total"),
        Some(0)
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(a.sigterm().success(), "{}", a.log_text());
    let reports = c.reports.lock().unwrap().clone();
    drop(c.runtime);
    assert_eq!(
        sum_pairs(&reports, port, Role::Client),
        (sent, sent + 3, 3, 3)
    );
    assert_eq!(
        sum_pairs(&reports, port, Role::Server),
        (sent + 3, sent, 3, 3)
    );
    let seqs: Vec<u64> = reports.iter().map(|r| r.seq).collect();
    assert_eq!(
        seqs,
        (seqs[0]..seqs[0] + seqs.len() as u64).collect::<Vec<_>>(),
        "in order, no gap"
    );
    for w in reports.windows(2) {
        assert!(w[1].window.start >= w[0].window.end);
    }
    drop(fs);
}

/// A pipe to tell the parent a child is ready: (read end, write end).
fn ready_pipe() -> (std::fs::File, std::fs::File) {
    use std::os::fd::FromRawFd as _;
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: two fresh descriptors from pipe(2), each owned once.
    unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    }
}

/// A server child in `server_cg` on `port` (reads to EOF, answers `reply` bytes) and a client
/// child in `client_cg` sending `request` bytes; both exit before this returns.
fn converse_in_cgroups(
    server_cg: &TestCgroup,
    client_cg: &TestCgroup,
    port: u16,
    request: usize,
    reply: usize,
) {
    let (mut ready_r, mut ready_w) = ready_pipe();
    let server = server_cg.fork(move || {
        let Ok(l) = TcpListener::bind(("127.0.0.1", port)) else {
            return false;
        };
        if ready_w.write_all(b"r").is_err() {
            return false;
        }
        let Ok((mut s, _)) = l.accept() else {
            return false;
        };
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).is_ok()
            && buf.len() == request
            && s.write_all(&vec![7u8; reply]).is_ok()
    });
    let mut b = [0u8; 1];
    ready_r.read_exact(&mut b).expect("server child ready");
    let client = client_cg.fork(move || {
        let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        let mut back = Vec::new();
        c.write_all(&vec![1u8; request]).is_ok()
            && c.shutdown(Shutdown::Write).is_ok()
            && c.read_to_end(&mut back).is_ok()
            && back.len() == reply
    });
    wait_child(client, "client child");
    wait_child(server, "server child");
}

/// Issue 11 with real parts: two processes moved into cgroups named as podman and Docker name
/// theirs talk through the real probe; the agent's report names each end's container (id and
/// runtime from the cgroup path, exactly), with exact bytes, and a host process's pair has no
/// container.
#[test]
fn pairs_carry_the_container_of_each_end() {
    if !privileged() {
        return;
    }
    let dir = temp_dir("containers");
    let out = dir.join("reports.jsonl");
    let conf = dir.join("agent.toml");
    // No runtime API here: ids and runtimes come from the cgroup paths alone.
    std::fs::write(
        &conf,
        "[containers]\npodman_socket = \"\"\ndocker_socket = \"\"\nrescan_interval = \"100ms\"\n",
    )
    .unwrap();
    let ns = NetNs::new();
    let mut a = AgentProc::spawn(&dir, "agent", &one_window_args(&ns, &out, Some(&conf)));
    let server_id = "5e".repeat(32);
    let client_id = "c1".repeat(32);
    let server_cg = TestCgroup::new("agent", &format!("libpod-{server_id}"));
    let client_cg = TestCgroup::new("agent", &format!("docker-{client_id}.scope"));
    const PORT: u16 = 4712;
    converse_in_cgroups(&server_cg, &client_cg, PORT, 100_003, 2_001);
    // A host process (this test) on another port.
    let (host_port, host_server) = echo_server(1, |n| n + 5);
    assert_eq!(client(host_port, 999), 1004);
    assert_eq!(host_server.join().unwrap(), 999);
    // Both containers exit before the window closes, as a short Job's pod does: their cgroups
    // are removed once the agent has folded the closed connections (the ring buffer is read
    // as soon as it has records; 3 s is ample), and the drain still names them.
    std::thread::sleep(Duration::from_secs(3));
    let (server_dir, client_dir) = (server_cg.path.clone(), client_cg.path.clone());
    drop(server_cg);
    drop(client_cg);
    assert!(
        !server_dir.exists() && !client_dir.exists(),
        "cgroups removed"
    );
    assert!(a.sigterm().success(), "{}", a.log_text());

    let reports = read_jsonl(&out);
    assert_eq!(reports.len(), 1, "one window, written at shutdown");
    type Row = (u16, Role, Option<(String, ContainerRuntime)>, u64, u64);
    let mut got: Vec<Row> = reports[0]
        .pairs
        .iter()
        .filter(|p| p.server_port == PORT || p.server_port == host_port)
        .map(|p| {
            (
                p.server_port,
                p.role,
                p.container.as_ref().map(|c| {
                    assert_eq!(
                        (&c.name, &c.pod, &c.namespace, &c.workload),
                        (&None, &None, &None, &None),
                        "no name source configured"
                    );
                    (c.id.clone(), c.runtime)
                }),
                p.bytes_sent,
                p.bytes_received,
            )
        })
        .collect();
    got.sort_by_key(|g| (g.0, g.1 == Role::Server));
    let mut want = vec![
        (
            PORT,
            Role::Client,
            Some((client_id, ContainerRuntime::Docker)),
            100_003,
            2_001,
        ),
        (
            PORT,
            Role::Server,
            Some((server_id, ContainerRuntime::Podman)),
            2_001,
            100_003,
        ),
        (host_port, Role::Client, None, 999, 1004),
        (host_port, Role::Server, None, 1004, 999),
    ];
    want.sort_by_key(|g| (g.0, g.1 == Role::Server));
    assert_eq!(got, want, "{}", a.log_text());
}

/// The OCI runtime the podman test gives podman: podman always writes `process.rlimits` into
/// the bundle's config.json, which runc applies and this kind of machine refuses (no
/// CAP_SYS_RESOURCE, see the environment notes); the wrapper deletes them, then runs runc.
const RUNTIME_WRAPPER: &str = r#"#!/bin/sh
bundle=""
prev=""
for a in "$@"; do
  case "$prev" in --bundle|-b) bundle="$a";; esac
  case "$a" in --bundle=*) bundle="${a#--bundle=}";; esac
  prev="$a"
done
if [ -n "$bundle" ] && [ -f "$bundle/config.json" ]; then
  jq 'del(.process.rlimits)' "$bundle/config.json" > "$bundle/config.json.tm" &&
    mv "$bundle/config.json.tm" "$bundle/config.json" || exit 1
fi
exec runc "$@"
"#;

/// podman with storage, runtime and cgroup manager of the test's own (vfs under `dir`).
struct Podman {
    dir: PathBuf,
}

impl Podman {
    fn global(&self) -> Vec<String> {
        vec![
            "--storage-driver".into(),
            "vfs".into(),
            "--root".into(),
            self.dir.join("root").display().to_string(),
            "--runroot".into(),
            self.dir.join("runroot").display().to_string(),
        ]
    }

    fn podman(&self) -> Command {
        let mut c = Command::new("podman");
        c.args(self.global()).args([
            "--runtime",
            &self.dir.join("runtime.sh").display().to_string(),
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
        ]);
        c
    }

    fn run(&self, what: &str, cmd: &mut Command) -> String {
        let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(
            out.status.success(),
            "{what}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A `localhost/tm-busybox` image built from scratch with Debian's static busybox: no
    /// registry involved.
    fn build_image(&self) -> String {
        let buildah = || {
            let mut c = Command::new("buildah");
            c.args(self.global());
            c
        };
        let ctr = self.run("buildah from", buildah().args(["from", "scratch"]));
        let mnt = PathBuf::from(self.run("buildah mount", buildah().args(["mount", &ctr])));
        std::fs::create_dir_all(mnt.join("bin")).unwrap();
        std::fs::copy("/usr/bin/busybox", mnt.join("bin/busybox")).unwrap();
        for applet in ["sh", "head", "cat", "nc", "sleep", "echo"] {
            std::os::unix::fs::symlink("busybox", mnt.join("bin").join(applet)).unwrap();
        }
        self.run("buildah umount", buildah().args(["umount", &ctr]));
        let image = "localhost/tm-busybox:test";
        self.run(
            "buildah commit",
            buildah().args(["commit", "-q", &ctr, image]),
        );
        self.run("buildah rm", buildah().args(["rm", &ctr]));
        image.into()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self
            .podman()
            .args(["rm", "-f", "-t", "0", "tm-server", "tm-client"])
            .output();
    }
}

/// Removes a test's directory when dropped; a failure to remove it fails the test (unless the
/// test is already failing, where a second panic would abort the run).
///
/// Waits first until no process names the directory in its command line: conmon runs
/// `podman --root <dir>/root container cleanup` after a container exits, possibly after
/// `podman rm` returned, and that recreated an empty storage under a directory removed too
/// early.
struct RemoveDir(PathBuf);

/// Processes whose command line contains `needle`.
fn processes_naming(needle: &[u8]) -> Vec<String> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| {
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            cmd.windows(needle.len())
                .any(|w| w == needle)
                .then(|| String::from_utf8_lossy(&cmd).replace('\0', " "))
        })
        .collect()
}

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let needle = self.0.as_os_str().as_encoded_bytes();
        let idle = wait_for(Duration::from_secs(30), || {
            processes_naming(needle).is_empty().then_some(())
        });
        let removed = match idle {
            Some(()) => std::fs::remove_dir_all(&self.0).map_err(|e| e.to_string()),
            None => Err(format!("still in use by {:?}", processes_naming(needle))),
        };
        if let Err(e) = removed {
            let msg = format!("cannot remove {}: {e}", self.0.display());
            if std::thread::panicking() {
                eprintln!("{msg}");
            } else {
                panic!("{msg}");
            }
        }
    }
}

/// `podman system service` on a socket of the test: the real podman API the agent reads.
struct PodmanService(Child);

impl Drop for PodmanService {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Issue 11 with real containers: two named podman containers (Debian's podman and runc, an
/// image built here from scratch) talk over TCP; the agent names both ends after the
/// containers, from the real podman API (`podman system service`), with the ids podman gave
/// them and exact bytes.
#[test]
fn podman_containers_are_named_from_the_podman_api() {
    if !privileged() {
        return;
    }
    for (tool, arg) in [
        ("podman", "--version"),
        ("buildah", "--version"),
        ("runc", "--version"),
        ("jq", "--version"),
        ("busybox", "--help"),
    ] {
        let ok = Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "{tool} is missing: apt-get install podman buildah runc jq busybox-static (or cargo xtask setup test)"
        );
    }
    let dir = temp_dir("podman");
    // Declared before the `Podman` and its service: dropped after them, it removes the vfs
    // storage the test leaves under /tmp.
    let _cleanup = RemoveDir(dir.clone());
    let runtime = dir.join("runtime.sh");
    std::fs::write(&runtime, RUNTIME_WRAPPER).unwrap();
    std::fs::set_permissions(
        &runtime,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let pm = Podman { dir: dir.clone() };
    let image = pm.build_image();

    // Containers, the API service and the agent all in this thread's network namespace
    // (`--network host` is the namespace podman runs in).
    let ns = NetNs::new();
    let sock = dir.join("podman.sock");
    let _service = PodmanService(
        pm.podman()
            .args([
                "system",
                "service",
                "--time=0",
                &format!("unix://{}", sock.display()),
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("service.log")).unwrap())
            .spawn()
            .expect("podman system service"),
    );
    assert!(
        wait_for(Duration::from_secs(30), || sock.exists().then_some(())).is_some(),
        "podman API socket: {}",
        std::fs::read_to_string(dir.join("service.log")).unwrap_or_default()
    );
    let out = dir.join("reports.jsonl");
    let conf = dir.join("agent.toml");
    std::fs::write(
        &conf,
        format!(
            "[containers]\npodman_socket = \"{}\"\ndocker_socket = \"\"\napi_refresh = \"300ms\"\napi_timeout = \"10s\"\nrescan_interval = \"100ms\"\n",
            sock.display()
        ),
    )
    .unwrap();
    // The runtime API's debug line (how many containers each listing returned) tells when the
    // agent knows both names; plain text, no colours, for the match.
    let mut cmd = Command::new(AGENT);
    cmd.env("RUST_LOG", "info,trafficmap_daemon::runtimeapi=debug")
        .env("NO_COLOR", "1");
    let mut a = AgentProc::spawn_with(&dir, "agent", &one_window_args(&ns, &out, Some(&conf)), cmd);
    const PORT: &str = "4714";
    let (request, reply) = (100_003u64, 2_001u64);
    // Both stay up after the conversation (sockets closed), so their cgroups still exist when
    // the agent drains.
    pm.run(
        "podman run tm-server",
        pm.podman().args([
            "run",
            "-d",
            "--name",
            "tm-server",
            "--network",
            "host",
            &image,
            "nc",
            "-l",
            "-p",
            PORT,
            "-e",
            "sh",
            "-c",
            &format!("cat >/dev/null; head -c {reply} /dev/zero; exec >&- <&-; sleep 600"),
        ]),
    );
    pm.run(
        "podman run tm-client",
        pm.podman().args([
            "run",
            "-d",
            "--name",
            "tm-client",
            "--network",
            "host",
            &image,
            "sh",
            "-c",
            &format!(
                "until head -c {request} /dev/zero | nc 127.0.0.1 {PORT} >/dev/null; do sleep 0.2; done; echo done; exec sleep 600"
            ),
        ]),
    );
    let done = wait_for(Duration::from_secs(60), || {
        let logs = pm.podman().args(["logs", "tm-client"]).output().ok()?;
        String::from_utf8_lossy(&logs.stdout)
            .contains("done")
            .then_some(())
    });
    assert!(done.is_some(), "tm-client did not finish");
    let id = |name: &str| {
        pm.run(
            "podman inspect",
            pm.podman().args(["inspect", "--format", "{{.Id}}", name]),
        )
    };
    let (server_id, client_id) = (id("tm-server"), id("tm-client"));
    // The agent's API source lists the containers every 300 ms; the storage is the test's own,
    // so a listing of two containers has both names. Only then the one drain (at SIGTERM).
    let known = wait_for(Duration::from_secs(60), || {
        a.log_text()
            .lines()
            .any(|l| {
                l.contains("container names refreshed")
                    && l.contains("podman")
                    && l.split_whitespace().any(|w| w == "containers=2")
            })
            .then_some(())
    });
    assert!(known.is_some(), "names never listed: {}", a.log_text());
    assert!(a.sigterm().success(), "{}", a.log_text());

    let reports = read_jsonl(&out);
    assert_eq!(reports.len(), 1, "one window, written at shutdown");
    let port: u16 = PORT.parse().unwrap();
    let mut got: Vec<_> = reports[0]
        .pairs
        .iter()
        .filter(|p| p.server_port == port)
        .map(|p| {
            let c = p.container.clone().expect("a container on both ends");
            (
                p.role == Role::Server,
                c.id,
                c.runtime,
                c.name,
                p.bytes_sent,
                p.bytes_received,
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (
                false,
                client_id,
                ContainerRuntime::Podman,
                Some("tm-client".to_owned()),
                request,
                reply
            ),
            (
                true,
                server_id,
                ContainerRuntime::Podman,
                Some("tm-server".to_owned()),
                reply,
                request
            ),
        ],
        "{}",
        a.log_text()
    );
    assert!(
        a.log_text().contains("runtime API reachable"),
        "{}",
        a.log_text()
    );
}

/// Issue 11, NAT undone: a client namespace, a router namespace with a kube-proxy-like `nft`
/// DNAT rule (`virt` -> the server), a server namespace, created by the test. The router is the
/// calling thread's own fresh namespace (the returned `NetNs`): the agent is started from this
/// thread, so it runs where the NAT happens, as a hostNetwork DaemonSet does on a node. With
/// `dnat` false the router only forwards (conntrack still active: a `ct state` rule).
struct NatLab {
    client_ns: String,
    server_ns: String,
}

impl NatLab {
    /// Addresses: client 10.`net`.1.2 and fd00:`net`:1::2, server 10.`net`.2.2 and
    /// fd00:`net`:2::2, router .1 (::1) on both sides. With `dnat`: 10.`net`.99.10:80 ->
    /// 10.`net`.2.2:8080 and [fd00:`net`:99::10]:80 -> [fd00:`net`:2::2]:8080.
    fn new(tag: &str, net: u8, dnat: bool) -> (NetNs, NatLab) {
        let nft_present = Command::new("nft").arg("--version").output().is_ok();
        assert!(
            nft_present,
            "nft(8) is missing: install it as root: apt-get install nftables"
        );
        let router = NetNs::new();
        let lab = NatLab {
            client_ns: format!("tmnat{}{tag}c", std::process::id() % 100_000),
            server_ns: format!("tmnat{}{tag}s", std::process::id() % 100_000),
        };
        for (ns, side) in [(&lab.client_ns, 1), (&lab.server_ns, 2)] {
            let veth = format!("v{side}");
            let gw = format!("10.{net}.{side}.1");
            nat_ip(&["netns", "add", ns]);
            // Run from this thread: the router end stays in its namespace.
            nat_ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ]);
            nat_ip(&["addr", "add", &format!("{gw}/24"), "dev", &veth]);
            nat_ip(&["link", "set", &veth, "up"]);
            nat_ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("10.{net}.{side}.2/24"),
                "dev",
                "eth0",
            ]);
            nat_ip(&["-n", ns, "link", "set", "eth0", "up"]);
            nat_ip(&["-n", ns, "link", "set", "lo", "up"]);
            nat_ip(&["-n", ns, "route", "add", "default", "via", &gw]);
            let gw6 = format!("fd00:{net}:{side}::1");
            nat_ip(&["addr", "add", &format!("{gw6}/64"), "dev", &veth, "nodad"]);
            nat_ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("fd00:{net}:{side}::2/64"),
                "dev",
                "eth0",
                "nodad",
            ]);
            nat_ip(&["-n", ns, "-6", "route", "add", "default", "via", &gw6]);
        }
        // /proc/sys/net is the opening thread's namespace: the router's.
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").unwrap();
        std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1").unwrap();
        let mut rules = String::from(
            "table inet tmnat {\n chain forward { type filter hook forward priority filter; policy accept; ct state established,related accept; }\n",
        );
        if dnat {
            rules.push_str(&format!(
                " chain prerouting {{ type nat hook prerouting priority dstnat; policy accept;\n  ip daddr 10.{net}.99.10 tcp dport 80 dnat ip to 10.{net}.2.2:8080;\n  ip6 daddr fd00:{net}:99::10 tcp dport 80 dnat ip6 to [fd00:{net}:2::2]:8080; }}\n"
            ));
        }
        rules.push_str("}\n");
        let mut nft = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        nft.stdin
            .take()
            .unwrap()
            .write_all(rules.as_bytes())
            .unwrap();
        let out = nft.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "nft -f: {}\n{rules}",
            String::from_utf8_lossy(&out.stderr)
        );
        (router, lab)
    }

    /// Serves one connection in the server namespace on `addr`: reads to EOF, answers `reply`
    /// bytes. Returns once listening; the handle gives the bytes read.
    fn server(&self, addr: &str, reply: usize) -> std::thread::JoinHandle<u64> {
        let (ns, addr) = (self.server_ns.clone(), addr.to_owned());
        let (tx, rx) = std::sync::mpsc::channel();
        let h = std::thread::spawn(move || {
            enter_named_ns(&ns);
            let l = TcpListener::bind(&addr).unwrap();
            tx.send(()).unwrap();
            let (mut s, _) = l.accept().unwrap();
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).unwrap();
            s.write_all(&vec![7u8; reply]).unwrap();
            buf.len() as u64
        });
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
        h
    }

    /// One connection from the client namespace to `addr`: sends `n` bytes, reads to EOF.
    fn client(&self, addr: &str, n: usize) -> u64 {
        let (ns, addr) = (self.client_ns.clone(), addr.to_owned());
        std::thread::spawn(move || {
            enter_named_ns(&ns);
            let addr: std::net::SocketAddr = addr.parse().unwrap();
            let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap();
            c.write_all(&vec![1u8; n]).unwrap();
            c.shutdown(Shutdown::Write).unwrap();
            let mut back = Vec::new();
            c.read_to_end(&mut back).unwrap();
            back.len() as u64
        })
        .join()
        .unwrap()
    }
}

impl Drop for NatLab {
    fn drop(&mut self) {
        for ns in [&self.client_ns, &self.server_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn nat_ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip(8) from iproute2");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn enter_named_ns(name: &str) {
    let f = std::fs::File::open(format!("/run/netns/{name}")).unwrap();
    use std::os::fd::AsRawFd as _;
    assert_eq!(
        unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) },
        0,
        "setns {name}: {}",
        std::io::Error::last_os_error()
    );
}

/// Waits until the agent has drained `n` more times than now.
fn wait_drains(a: &AgentProc, n: u64) {
    let now = metric(&a.metrics().unwrap(), "trafficmap_drains_total").unwrap_or(0);
    let done = wait_for(Duration::from_secs(20), || {
        (metric(&a.metrics()?, "trafficmap_drains_total")? >= now + n).then_some(())
    });
    assert!(done.is_some(), "no drains: {}", a.log_text());
}

/// Issue 11, NAT undone: a client of a virtual address (kube-proxy-like DNAT in the router
/// namespace, where the agent runs) is reported with the real server as its peer and the
/// virtual address as its service; the server's pair names the client's real address; bytes
/// exact both ends; IPv4 and IPv6.
#[test]
fn dnat_clients_name_the_real_server_and_keep_the_service() {
    if !privileged() {
        return;
    }
    // (client, virtual address, server, real address, bytes to the server, bytes back)
    let cases = [
        (
            "10.250.1.2",
            "10.250.99.10:80",
            "10.250.2.2",
            "10.250.2.2:8080",
            300_007usize,
            70_001usize,
        ),
        (
            "fd00:250:1::2",
            "[fd00:250:99::10]:80",
            "fd00:250:2::2",
            "[fd00:250:2::2]:8080",
            200_003,
            50_009,
        ),
    ];
    let (_router, lab) = NatLab::new("d", 250, true);
    let dir = temp_dir("nat");
    let out = dir.join("reports.jsonl");
    let mut a = AgentProc::spawn(
        &dir,
        "agent",
        &strings(&[
            "--netns",
            "all",
            "--interval",
            "1s",
            "--output",
            &out.display().to_string(),
        ]),
    );
    for (_, virt, _, real, sent, back) in cases {
        let server = lab.server(real, back);
        assert_eq!(lab.client(virt, sent), back as u64);
        assert_eq!(server.join().unwrap(), sent as u64);
    }
    // Two drains after the close: the final records were read and looked up.
    wait_drains(&a, 2);
    let m = a.metrics().unwrap();
    let translated = metric(&m, "trafficmap_conntrack_translated_total").unwrap();
    // The router's table holds exactly these connections' entries (TIME_WAIT: 120 s).
    assert_eq!(metric(&m, "trafficmap_conntrack_entries"), Some(2), "{m}");
    assert!(a.sigterm().success(), "{}", a.log_text());
    assert!(!a.log_text().contains("NAT: cannot"), "{}", a.log_text());
    let reports = read_jsonl(&out);
    let pairs: Vec<_> = reports.iter().flat_map(|r| &r.pairs).collect();
    let sum = |ps: &[&&trafficmap_model::report::Pair]| {
        ps.iter().fold((0, 0, 0), |s, p| {
            (
                s.0 + p.bytes_sent,
                s.1 + p.bytes_received,
                s.2 + p.connections_opened,
            )
        })
    };
    let mut client_records = 0;
    for (client_ip, virt, server_ip, real, sent, back) in cases {
        let (virt, real): (std::net::SocketAddr, std::net::SocketAddr) =
            (virt.parse().unwrap(), real.parse().unwrap());
        let client: Vec<_> = pairs
            .iter()
            .filter(|p| p.role == Role::Client && p.local_ip.to_string() == client_ip)
            .collect();
        assert!(!client.is_empty(), "{pairs:#?}");
        for p in &client {
            assert_eq!(
                (p.peer_ip, p.server_port, p.service_ip, p.service_port),
                (real.ip(), real.port(), Some(virt.ip()), Some(virt.port())),
                "{p:?}"
            );
        }
        assert_eq!(sum(&client), (sent as u64, back as u64, 1), "{client_ip}");
        client_records += client.len() as u64;
        let server: Vec<_> = pairs
            .iter()
            .filter(|p| p.role == Role::Server && p.local_ip.to_string() == server_ip)
            .collect();
        assert!(!server.is_empty(), "{pairs:#?}");
        for p in &server {
            assert_eq!(
                (
                    p.peer_ip.to_string(),
                    p.server_port,
                    p.service_ip,
                    p.service_port
                ),
                (client_ip.to_owned(), real.port(), None, None),
                "{p:?}"
            );
        }
        assert_eq!(sum(&server), (back as u64, sent as u64, 1), "{server_ip}");
    }
    // One translation per window each connection was in (each window's pair is one record).
    assert_eq!(translated, client_records);
}

/// The negative of the above: the same namespaces, conntrack active in the router, no DNAT
/// rule; the client connects to the server directly and nothing is rewritten.
#[test]
fn without_dnat_nothing_is_rewritten() {
    if !privileged() {
        return;
    }
    const SENT: usize = 12_345;
    const BACK: usize = 678;
    let (_router, lab) = NatLab::new("n", 251, false);
    let dir = temp_dir("nonat");
    let out = dir.join("reports.jsonl");
    let mut a = AgentProc::spawn(
        &dir,
        "agent",
        &strings(&[
            "--netns",
            "all",
            "--interval",
            "1s",
            "--output",
            &out.display().to_string(),
        ]),
    );
    let server = lab.server("10.251.2.2:8081", BACK);
    assert_eq!(lab.client("10.251.2.2:8081", SENT), BACK as u64);
    assert_eq!(server.join().unwrap(), SENT as u64);
    wait_drains(&a, 2);
    let m = a.metrics().unwrap();
    // The dumps worked and found no DNAT entry: nothing to translate.
    assert!(
        metric(&m, "trafficmap_conntrack_dumps_total{result=\"ok\"}").unwrap_or(0) >= 2,
        "{m}"
    );
    assert_eq!(metric(&m, "trafficmap_conntrack_entries"), Some(0), "{m}");
    assert_eq!(
        metric(&m, "trafficmap_conntrack_translated_total"),
        Some(0),
        "{m}"
    );
    assert!(a.sigterm().success(), "{}", a.log_text());
    let reports = read_jsonl(&out);
    let client: Vec<_> = reports
        .iter()
        .flat_map(|r| &r.pairs)
        .filter(|p| p.role == Role::Client && p.local_ip.to_string() == "10.251.1.2")
        .collect();
    assert!(!client.is_empty());
    for p in &client {
        assert_eq!(
            (
                p.peer_ip.to_string(),
                p.server_port,
                p.service_ip,
                p.service_port
            ),
            ("10.251.2.2".to_owned(), 8081, None, None),
            "{p:?}"
        );
    }
    let sent: u64 = client.iter().map(|p| p.bytes_sent).sum();
    let back: u64 = client.iter().map(|p| p.bytes_received).sum();
    assert_eq!((sent, back), (SENT as u64, BACK as u64));
}
