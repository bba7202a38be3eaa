//! Helpers for tests that run the real collector binary: start and stop it, speak HTTP/1.1 over
//! plain sockets (so a test can also send half a request), build reports of known sizes.

#![allow(dead_code)]

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::{DateTime, DurationRound as _, TimeDelta, Utc};

pub mod pki;

pub const TOKEN: &str = "test-token-0123456789abcdef";

/// The golden reports (`golden/reports`, 9 files), parsed, in file-name order: the input of
/// every test that compares with the golden maps.
pub fn golden_reports() -> Vec<trafficmap_model::report::Report> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("golden/reports"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 9, "golden/reports");
    files
        .iter()
        .map(|f| trafficmap_model::report::Report::from_json(&std::fs::read(f).unwrap()).unwrap())
        .collect()
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_trafficmap-collector"))
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// A free port on 127.0.0.1 (bound and released; good enough for a restart on the same port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running collector; killed when dropped.
pub struct Collector {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: Arc<Mutex<String>>,
}

impl Collector {
    /// Starts the binary with `args` (plus `--listen` if not given) and waits for its
    /// "listening on" line.
    pub fn start(args: &[&str]) -> Collector {
        Collector::start_with_env(args, &[])
    }

    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Collector {
        let mut cmd = Command::new(bin());
        cmd.envs(env.iter().copied());
        if !args.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("starting the collector");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let l2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                l2.lock().unwrap().push_str(&line);
                l2.lock().unwrap().push('\n');
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let l3 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // `http://ADDR/`, or `https://ADDR/` with TLS on.
                let rest = line
                    .split("listening on http://")
                    .nth(1)
                    .or_else(|| line.split("listening on https://").nth(1));
                // Logged before the address is handed over: a test may look for the line at once.
                l3.lock().unwrap().push_str(&line);
                l3.lock().unwrap().push('\n');
                if let Some(rest) = rest {
                    let addr: SocketAddr = rest.split('/').next().unwrap().parse().unwrap();
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("the collector did not start:\n{}", log.lock().unwrap());
            }
        };
        Collector { child, addr, log }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn get(&self, path: &str) -> Response {
        request(self.addr, "GET", path, &[], b"")
    }

    pub fn post_report(&self, body: &[u8]) -> Response {
        post_report(self.addr, body)
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "the collector did not stop:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    try_request(addr, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

pub fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers.iter().any(|(k, _)| {
        k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding")
    }) {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    read_response(&mut s)
}

pub fn read_response(s: &mut TcpStream) -> std::io::Result<Response> {
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw)
}

/// A whole HTTP/1.1 response (head and body, chunked or not) as read from the socket.
pub fn parse_response(raw: &[u8]) -> std::io::Result<Response> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            std::io::Error::other(format!(
                "no HTTP response: {:?}",
                String::from_utf8_lossy(raw)
            ))
        })?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(pos) = b.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&b[..pos]).trim(), 16).unwrap_or(0);
        if size == 0 || b.len() < pos + 2 + size {
            break;
        }
        out.extend_from_slice(&b[pos + 2..pos + 2 + size]);
        b = b.get(pos + 2 + size + 2..).unwrap_or_default();
    }
    out
}

pub fn post_report(addr: SocketAddr, body: &[u8]) -> Response {
    request(
        addr,
        "POST",
        "/api/v1/reports",
        &[
            ("Authorization", &format!("Bearer {TOKEN}")),
            ("Content-Type", "application/json"),
        ],
        body,
    )
}

pub fn write_tokens(dir: &Path) -> PathBuf {
    let p = dir.join("tokens");
    std::fs::write(&p, format!("{TOKEN} test-agents *\n")).unwrap();
    p
}

/// A recent minute (reports must be within the minute retention).
pub fn recent_minute(minutes_ago: i64) -> DateTime<Utc> {
    (Utc::now() - TimeDelta::minutes(minutes_ago))
        .duration_trunc(TimeDelta::minutes(1))
        .unwrap()
}

/// One pair: (local, peer, port, role, process, sent, received).
pub type PairSpec<'a> = (&'a str, &'a str, u16, &'a str, &'a str, u64, u64);

/// A valid report from `host` (machine id derived from it) with the given pairs.
pub fn report(
    id: &str,
    host: &str,
    addr: &str,
    start: DateTime<Utc>,
    pairs: &[PairSpec<'_>],
) -> serde_json::Value {
    let end = start + TimeDelta::minutes(1);
    let t = |d: DateTime<Utc>| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    serde_json::json!({
        "schema": "trafficmap.report/v1",
        "report_id": id,
        "seq": 1,
        "agent": { "version": "0.1.0", "backend": "tracepoint", "kernel": "6.18.0" },
        "host": {
            "hostname": host,
            "machine_id": format!("{:0>32}", host.bytes().map(|b| format!("{b:02x}")).collect::<String>()),
            "addresses": [addr],
        },
        "window": { "start": t(start), "end": t(end) },
        "health": { "drops": {}, "map_entries": 1, "map_capacity": 1024, "spool_dropped": 0 },
        "pairs": pairs.iter().map(|(l, p, port, role, process, sent, received)| serde_json::json!({
            "local_ip": l, "peer_ip": p, "server_port": port, "role": role, "role_source": "observed",
            "process": process, "bytes_sent": sent, "bytes_received": received,
            "connections_opened": 1, "connections_closed": 1, "connections_active": 0,
            "first_seen": t(start), "last_seen": t(start + TimeDelta::seconds(30)),
        })).collect::<Vec<_>>(),
    })
}

/// Total bytes of the instances map over `[from, to)`.
pub fn total_bytes(c: &Collector, from: DateTime<Utc>, to: DateTime<Utc>) -> u64 {
    let r = c.get(&format!(
        "/api/v1/maps?view=instances&from={}&to={}",
        from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        to.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["totals"]["bytes"].as_u64().unwrap()
}

/// `Ok` in CI means: the tool must be there. Outside CI a missing tool skips, loudly.
pub fn require(what: &str, found: bool) -> bool {
    if found {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{what} is missing and CI is set: install it (cargo xtask setup)");
    }
    eprintln!("SKIPPED: {what} is missing (CI would fail here; cargo xtask setup installs it)");
    false
}
pub mod clickhouse;

/// The golden reports with containers and Service addresses (issue 11): every other pair in a
/// container of a Kubernetes workload, every third client pair through a Service in front of
/// its server, and a twin of each report's first pair (same addresses, port, role and process)
/// in another container, which a store must keep apart. Valid reports.
pub fn container_reports() -> Vec<trafficmap_model::report::Report> {
    use trafficmap_model::report::{Container, ContainerRuntime, Role};
    let k8s = |n: usize, workload: &str| Container {
        id: format!("{n:064x}"),
        runtime: ContainerRuntime::Containerd,
        name: Some("main".into()),
        pod: Some(format!("{workload}-{n}")),
        namespace: Some("shop".into()),
        workload_kind: Some("Deployment".into()),
        workload: Some(workload.into()),
    };
    golden_reports()
        .into_iter()
        .enumerate()
        .map(|(ri, mut r)| {
            for (i, p) in r.pairs.iter_mut().enumerate() {
                if i % 2 == 0 {
                    p.container = Some(k8s(ri * 100 + i + 1, &p.process.clone()));
                }
                if p.role == Role::Client && i % 3 == 0 {
                    p.service_ip = Some("10.96.0.40".parse().unwrap());
                    p.service_port = Some(p.server_port);
                }
            }
            if let Some(first) = r.pairs.first().cloned() {
                let mut twin = first;
                twin.container = Some(Container {
                    id: format!("{:064x}", ri * 100 + 99),
                    runtime: ContainerRuntime::Podman,
                    name: Some("sidecar".into()),
                    pod: None,
                    namespace: None,
                    workload_kind: None,
                    workload: None,
                });
                twin.bytes_sent = 7;
                twin.bytes_received = 11;
                r.pairs.push(twin);
            }
            r.validate().unwrap();
            r
        })
        .collect()
}

/// Bytes sent and received per (container id, service) over every pair of `reports`, as
/// stored (loopback included): what a store must give back, exactly.
pub fn bytes_by_ident(
    reports: &[trafficmap_model::report::Report],
) -> std::collections::BTreeMap<(Option<String>, Option<String>), (u64, u64)> {
    let mut out = std::collections::BTreeMap::new();
    for r in reports {
        for p in &r.pairs {
            let k = (
                p.container.as_ref().map(|c| c.id.clone()),
                p.service_ip
                    .zip(p.service_port)
                    .map(|(i, port)| format!("{i}:{port}")),
            );
            let e: &mut (u64, u64) = out.entry(k).or_default();
            e.0 += p.bytes_sent;
            e.1 += p.bytes_received;
        }
    }
    out
}

/// The same sums from what a store answers for a range.
pub fn range_bytes_by_ident(
    d: &trafficmap_collector::range::RangeData,
) -> std::collections::BTreeMap<(Option<String>, Option<String>), (u64, u64)> {
    let mut out = std::collections::BTreeMap::new();
    for o in &d.obs {
        let k = (
            o.container.map(|c| d.containers[c as usize].id.clone()),
            o.service.map(|(i, port)| format!("{i}:{port}")),
        );
        let e: &mut (u64, u64) = out.entry(k).or_default();
        e.0 += o.c.bytes_sent;
        e.1 += o.c.bytes_received;
    }
    out
}
