//! The whole system on one machine: five hosts as network namespaces on a private bridge (three
//! run `trafficmap-agent`, scoped with `--netns`; two do not), one real collector, TCP of known
//! sizes between them. The instances and clusters maps must come out exactly: bytes each way,
//! client and server roles, ports, processes, one edge per conversation although both ends
//! report it, peers without agents kept and marked.
//!
//! Needs root and the agent: run by `cargo xtask test --only collector-e2e` (which builds the
//! agent and sets `TRAFFICMAP_AGENT_BIN`).

mod support;

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use support::*;

/// Hosts: (name, address, runs an agent).
const HOSTS: [(&str, &str, bool); 5] = [
    ("a", "10.77.0.1", true),
    ("b", "10.77.0.2", true),
    ("c", "10.77.0.3", true),
    ("x", "10.77.0.9", false),
    ("y", "10.77.0.10", false),
];

/// Conversations: (client, server, port, bytes to server, bytes back, client process, server process).
const TRAFFIC: [(&str, &str, u16, usize, usize, &str, &str); 6] = [
    (
        "a",
        "b",
        5432,
        1_000_003,
        2_000_005,
        "api-client",
        "pg-server",
    ),
    (
        "c",
        "b",
        5432,
        300_007,
        700_011,
        "worker-client",
        "pg-server",
    ),
    ("a", "c", 8080, 50_021, 90_031, "api-client", "worker-http"),
    (
        "c",
        "x",
        9000,
        123_457,
        7_654,
        "worker-client",
        "legacy-srv",
    ),
    ("c", "y", 7000, 11_113, 222_227, "worker-client", "ext-srv"),
    ("x", "a", 443, 4_444, 55_555, "legacy-client", "api-tls"),
];

fn ip(args: &[&str]) {
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

/// Namespaces and the bridge between them; removed on drop.
struct Lab {
    prefix: String,
}

impl Lab {
    fn new() -> Lab {
        let prefix = format!("tmc{}", std::process::id() % 100_000);
        let lab = Lab { prefix };
        let sw = lab.ns("sw");
        ip(&["netns", "add", &sw]);
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &sw, "link", "set", "br0", "up"]);
        for (h, addr, _) in HOSTS {
            let ns = lab.ns(h);
            ip(&["netns", "add", &ns]);
            let port = format!("p{h}");
            ip(&[
                "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ]);
            ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        lab
    }

    fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    fn path(&self, host: &str) -> PathBuf {
        PathBuf::from("/run/netns").join(self.ns(host))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for h in HOSTS.iter().map(|h| h.0).chain(["sw"]) {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(h)])
                .status();
        }
    }
}

/// Runs `f` in a child process named `name` inside the namespace at `ns`: the agent names
/// connections after the process (its thread-group leader's `comm`), so each conversation end
/// needs a process of its own. A thread enters the namespace and forks; the child renames itself
/// (as the only thread it is the leader), runs `f` and sends back `f`'s result as JSON through a
/// pipe. `f` gets a `ready` function that signals the parent early (sent to `ready_tx`).
fn in_ns<T: serde::Serialize + serde::de::DeserializeOwned + Send + 'static>(
    ns: &Path,
    name: &str,
    ready_tx: Option<std::sync::mpsc::Sender<()>>,
    f: impl FnOnce(&dyn Fn()) -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let ns = ns.to_owned();
    let name = std::ffi::CString::new(name).unwrap();
    std::thread::spawn(move || {
        let f_ns = std::fs::File::open(&ns).unwrap();
        // SAFETY: setns on this thread only, with a valid namespace descriptor.
        let rc = unsafe { libc::setns(f_ns.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "setns {}: {}",
            ns.display(),
            std::io::Error::last_os_error()
        );
        let mut fds = [0; 2];
        // SAFETY: a valid two-element array for pipe2.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: the child renames itself, runs `f` (allocation is fork-safe in glibc), writes
        // to its end of the pipe and leaves with `_exit`, never returning into the harness.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: the write end is this child's own descriptor.
            let mut out = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[1]) };
            let ok = unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) } == 0
                && std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let out2 = out.try_clone().unwrap();
                    let ready = move || (&out2).write_all(b"R").unwrap();
                    let v = f(&ready);
                    out.write_all(b"J").unwrap();
                    out.write_all(&serde_json::to_vec(&v).unwrap()).unwrap();
                }))
                .is_ok();
            unsafe { libc::_exit(if ok { 0 } else { 101 }) };
        }
        // SAFETY: closing the parent's copy of the write end, a descriptor it owns.
        unsafe { libc::close(fds[1]) };
        // SAFETY: the read end is the parent's own descriptor.
        let mut input = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fds[0]) };
        let mut all = Vec::new();
        let mut byte = [0u8; 1];
        while input.read(&mut byte).unwrap() == 1 {
            if byte[0] == b'R' && all.is_empty() {
                if let Some(tx) = &ready_tx {
                    tx.send(()).unwrap();
                }
                continue;
            }
            all.push(byte[0]);
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "process {name:?} in {} failed: status {status}",
            ns.display()
        );
        assert_eq!(all.first(), Some(&b'J'), "no result from {name:?}");
        serde_json::from_slice(&all[1..]).unwrap()
    })
}

fn read_all(s: &mut TcpStream) -> usize {
    let mut buf = vec![0u8; 65536];
    let mut n = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return n,
            Ok(k) => n += k,
            Err(e) => panic!("read: {e}"),
        }
    }
}

struct Agent {
    child: Child,
    log: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// An agent counting the namespace at `netns` as host `host-<host>`, started from the calling
/// thread (so in its network namespace).
fn start_agent(
    bin: &Path,
    netns: &Path,
    host: &str,
    dir: &Path,
    collector: SocketAddr,
    token: &Path,
) -> Agent {
    let metrics = free_port();
    let log = dir.join(format!("agent-{host}.log"));
    let child = Command::new(bin)
        .args(["--netns", netns.to_str().unwrap()])
        .args(["--interval", "1s"])
        .args(["--collector", &format!("http://{collector}")])
        .args(["--token-file", token.to_str().unwrap()])
        .args([
            "--spool-dir",
            dir.join(format!("spool-{host}")).to_str().unwrap(),
        ])
        .args(["--listen", &format!("127.0.0.1:{metrics}")])
        .args([
            "--host-name",
            &format!("host-{host}"),
            "--host-id",
            &format!("host-{host}-id"),
            "--imds",
            "off",
        ])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("starting trafficmap-agent");
    let mut agent = Agent { child, log };
    // Ready when /metrics answers: the probe is attached by then.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = agent.child.try_wait().unwrap() {
            panic!("agent {host} exited ({s}):\n{}", agent.log());
        }
        if let Ok(r) = try_request(
            format!("127.0.0.1:{metrics}").parse().unwrap(),
            "GET",
            "/metrics",
            &[],
            b"",
        ) && r.text().contains("trafficmap_agent_info")
        {
            return agent;
        }
        assert!(
            Instant::now() < deadline,
            "agent {host} not ready:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn addr_of(host: &str) -> &'static str {
    HOSTS.iter().find(|h| h.0 == host).unwrap().1
}

#[test]
#[ignore = "needs root and trafficmap-agent: cargo xtask test --only collector-e2e"]
fn three_agents_one_collector_exact_maps() {
    // SAFETY: geteuid has no preconditions.
    let root_user = unsafe { libc::geteuid() } == 0;
    if !require("root (network namespaces, eBPF)", root_user) {
        return;
    }
    let agent_bin = std::env::var_os("TRAFFICMAP_AGENT_BIN").map(PathBuf::from);
    if !require(
        "TRAFFICMAP_AGENT_BIN (cargo build -p trafficmap-daemon)",
        agent_bin.as_ref().is_some_and(|p| p.exists()),
    ) {
        return;
    }
    let agent_bin = agent_bin.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let lab = Lab::new();

    // The collector, with an inventory naming the namespaces' hosts.
    let tokens = write_tokens(dir.path());
    let agent_token = dir.path().join("agent-token");
    std::fs::write(&agent_token, format!("{TOKEN}\n")).unwrap();
    std::fs::write(
        dir.path().join("inventory.toml"),
        r#"
[[host]]
address = "10.77.0.1"
env = "prod"
archdomain = "online/api"
[[host]]
address = "10.77.0.2"
env = "prod"
archdomain = "online/db"
[[host]]
address = "10.77.0.3"
env = "stage"
archdomain = "online/worker"
[[host]]
address = "10.77.0.9"
name = "legacy-box"
env = "stage"
archdomain = "offline/legacy"
"#,
    )
    .unwrap();
    let data = dir.path().join("data");
    let c = Collector::start(&[
        "--data-dir",
        data.to_str().unwrap(),
        "--token-file",
        tokens.to_str().unwrap(),
        "--inventory",
        dir.path().join("inventory.toml").to_str().unwrap(),
        "--no-dns",
    ]);
    let from = recent_minute(0);
    let agents: Vec<Agent> = HOSTS
        .iter()
        .filter(|h| h.2)
        .map(|h| {
            start_agent(
                &agent_bin,
                &lab.path(h.0),
                h.0,
                dir.path(),
                c.addr,
                &agent_token,
            )
        })
        .collect();

    // Servers first (one listener per host and port), then the clients.
    let mut servers = Vec::new();
    let mut listeners = std::collections::BTreeMap::new();
    for (_, server, port, _, _, _, sname) in TRAFFIC {
        let key = (server, port);
        let count = TRAFFIC.iter().filter(|t| (t.1, t.2) == key).count();
        if listeners.contains_key(&key) {
            continue;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let addr: SocketAddr = format!("{}:{port}", addr_of(server)).parse().unwrap();
        let backs: Vec<usize> = TRAFFIC
            .iter()
            .filter(|t| (t.1, t.2) == key)
            .map(|t| t.4)
            .collect();
        servers.push(in_ns(&lab.path(server), sname, Some(tx), move |ready| {
            let l = TcpListener::bind(addr).unwrap();
            ready();
            let mut got = Vec::new();
            for _ in 0..count {
                let (mut s, peer) = l.accept().unwrap();
                let n = read_all(&mut s);
                // Answer by the client's address: the traffic table says how much each gets.
                let who = HOSTS
                    .iter()
                    .find(|h| h.1 == peer.ip().to_string())
                    .unwrap()
                    .0;
                let back = TRAFFIC
                    .iter()
                    .find(|t| t.0 == who && (t.1, t.2) == key)
                    .unwrap()
                    .4;
                assert!(backs.contains(&back));
                s.write_all(&vec![b'r'; back]).unwrap();
                s.shutdown(Shutdown::Write).unwrap();
                let _ = read_all(&mut s);
                got.push((who.to_owned(), n));
            }
            got
        }));
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
        listeners.insert(key, ());
    }
    let mut clients = Vec::new();
    for (client, server, port, to_server, back, cname, _) in TRAFFIC {
        let addr: SocketAddr = format!("{}:{port}", addr_of(server)).parse().unwrap();
        clients.push(in_ns(&lab.path(client), cname, None, move |_| {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap();
            s.write_all(&vec![b'q'; to_server]).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            let n = read_all(&mut s);
            assert_eq!(n, back, "{client} -> {server}:{port}");
        }));
        // One at a time: the servers answer in order.
        clients.pop().unwrap().join().unwrap();
    }
    for s in servers {
        for (who, n) in s.join().unwrap() {
            assert!(
                TRAFFIC.iter().any(|t| t.0 == who && t.3 == n),
                "{who} sent {n}"
            );
        }
    }

    // Every byte once: wait until the maps add up, then a few report intervals more to see
    // that nothing else arrives.
    let expected: u64 = TRAFFIC.iter().map(|t| (t.3 + t.4) as u64).sum();
    let to = recent_minute(-2);
    let deadline = Instant::now() + Duration::from_secs(60);
    while total_bytes(&c, from, to) != expected {
        assert!(
            Instant::now() < deadline,
            "maps never reached {expected} bytes (now {}):\n{}",
            total_bytes(&c, from, to),
            agents.iter().map(Agent::log).collect::<Vec<_>>().join("\n")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(4));
    let q = |view: &str| {
        c.get(&format!(
            "/api/v1/maps?view={view}&from={}&to={}",
            from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            to.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ))
        .json()
    };
    let inst = q("instances");
    assert_eq!(inst["totals"]["bytes"], expected, "{inst}");

    // Instances: exactly these links.
    let id = |h: &str| match h {
        "x" => "ip:10.77.0.9".to_owned(),
        "y" => "ip:10.77.0.10".to_owned(),
        h => format!("host:host-{h}"),
    };
    let mut got: Vec<serde_json::Value> = inst["links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            serde_json::json!({
                "source": l["source"], "target": l["target"],
                "to_target": l["bytes_to_target"], "to_source": l["bytes_to_source"],
                "ports": l["server_ports"], "observed_by": l["observed_by"],
                "disagreement": l["disagreement_bytes"], "connections": l["connections"],
                "client_processes": l["client_processes"], "server_processes": l["server_processes"],
            })
        })
        .collect();
    let mut want: Vec<serde_json::Value> = TRAFFIC
        .iter()
        .map(|(cl, sv, port, ts, back, cname, sname)| {
            let observed = match (
                HOSTS.iter().find(|h| h.0 == *cl).unwrap().2,
                HOSTS.iter().find(|h| h.0 == *sv).unwrap().2,
            ) {
                (true, true) => "both",
                (true, false) => "client",
                _ => "server",
            };
            serde_json::json!({
                "source": id(cl), "target": id(sv),
                "to_target": ts, "to_source": back,
                "ports": [port], "observed_by": observed, "disagreement": 0, "connections": 1,
                "client_processes": if observed == "server" { vec![] } else { vec![*cname] },
                "server_processes": if observed == "client" { vec![] } else { vec![*sname] },
            })
        })
        .collect();
    let key = |v: &serde_json::Value| format!("{}>{}", v["source"], v["target"]);
    got.sort_by_key(key);
    want.sort_by_key(key);
    assert_eq!(got, want, "instances links\n{inst:#}");
    // Nodes: three agents, an inventory host without agent, an unknown address.
    let node = |nid: &str| {
        inst["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == nid)
            .unwrap_or_else(|| panic!("no node {nid}: {inst:#}"))
            .clone()
    };
    for h in ["a", "b", "c"] {
        let n = node(&id(h));
        assert_eq!(
            (n["kind"].as_str(), n["label"].as_str()),
            (Some("host"), Some(&*format!("host-{h}")))
        );
        assert!(n["health"]["reports"].as_u64().unwrap() >= 2, "{n}");
        assert_eq!(n["health"]["probe_drops"], 0, "{n}");
    }
    assert_eq!(
        node("host:host-b")["server_ports"],
        serde_json::json!([5432])
    );
    assert_eq!(
        node("host:host-a")["server_ports"],
        serde_json::json!([443])
    );
    let x = node("ip:10.77.0.9");
    assert_eq!(
        (x["kind"].as_str(), x["label"].as_str()),
        (Some("unmonitored"), Some("legacy-box"))
    );
    let y = node("ip:10.77.0.10");
    assert_eq!(
        (y["kind"].as_str(), y["label"].as_str()),
        (Some("external"), Some("10.77.0.10"))
    );
    assert_eq!(inst["nodes"].as_array().unwrap().len(), 5);

    // Clusters: summed per archdomain x env.
    let cl = q("clusters");
    assert_eq!(cl["totals"]["bytes"], expected);
    let link = |s: &str, t: &str| {
        cl["links"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["source"] == s && l["target"] == t)
            .unwrap_or_else(|| panic!("no cluster link {s} -> {t}: {cl:#}"))
            .clone()
    };
    let l = link("cluster:online/api|prod", "cluster:online/db|prod");
    assert_eq!(
        (l["bytes_to_target"].as_u64(), l["bytes_to_source"].as_u64()),
        (Some(1_000_003), Some(2_000_005))
    );
    let l = link("cluster:online/worker|stage", "cluster:online/db|prod");
    assert_eq!(
        (l["bytes_to_target"].as_u64(), l["bytes_to_source"].as_u64()),
        (Some(300_007), Some(700_011))
    );
    let l = link("cluster:online/worker|stage", "external");
    assert_eq!(
        (l["bytes_to_target"].as_u64(), l["observed_by"].as_str()),
        (Some(11_113), Some("client"))
    );
    let l = link("cluster:offline/legacy|stage", "cluster:online/api|prod");
    assert_eq!(
        (l["bytes_to_source"].as_u64(), l["observed_by"].as_str()),
        (Some(55_555), Some("server"))
    );
    assert_eq!(cl["links"].as_array().unwrap().len(), 6);
    assert_eq!(cl["nodes"].as_array().unwrap().len(), 5);

    for a in agents {
        drop(a);
    }
    assert_eq!(c.terminate().code(), Some(0));
}

/// Issue 11, NAT undone, at the collector: a client namespace, a router namespace with a
/// kube-proxy-like `nft` DNAT rule (10.250.99.10:80 -> 10.250.2.2:8080), a server namespace. The
/// client's agent runs in the router namespace (where the NAT happens, as a hostNetwork
/// DaemonSet does on a node) counting the client's namespace; the server's agent counts the
/// server's. The collector runs in the router namespace too, so both agents reach it on its
/// loopback (the test thread enters it). The two ends must merge into ONE edge with exact bytes
/// (not an edge to an unknown 10.250.99.10 plus a half-edge).
#[test]
#[ignore = "needs root and trafficmap-agent: cargo xtask test --only collector-e2e"]
fn a_service_behind_dnat_merges_into_one_edge() {
    // SAFETY: geteuid has no preconditions.
    let root_user = unsafe { libc::geteuid() } == 0;
    if !require("root (network namespaces, eBPF)", root_user) {
        return;
    }
    let agent_bin = std::env::var_os("TRAFFICMAP_AGENT_BIN").map(PathBuf::from);
    if !require(
        "TRAFFICMAP_AGENT_BIN (cargo build -p trafficmap-daemon)",
        agent_bin.as_ref().is_some_and(|p| p.exists()),
    ) {
        return;
    }
    assert!(
        Command::new("nft").arg("--version").output().is_ok(),
        "nft(8) is missing: install it as root: apt-get install nftables"
    );
    const SENT: usize = 400_009;
    const BACK: usize = 90_017;
    let agent_bin = agent_bin.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let lab = NatLab::new();
    let original = std::fs::File::open("/proc/thread-self/ns/net").unwrap();
    let router = std::fs::File::open(lab.path("r")).unwrap();
    // SAFETY: setns on this thread only, with a valid namespace descriptor.
    assert_eq!(
        unsafe { libc::setns(router.as_raw_fd(), libc::CLONE_NEWNET) },
        0
    );
    let tokens = write_tokens(dir.path());
    let agent_token = dir.path().join("agent-token");
    std::fs::write(&agent_token, format!("{TOKEN}\n")).unwrap();
    let data = dir.path().join("data");
    let c = Collector::start(&[
        "--data-dir",
        data.to_str().unwrap(),
        "--token-file",
        tokens.to_str().unwrap(),
        "--no-dns",
    ]);
    let from = recent_minute(0);
    let agents = [
        start_agent(
            &agent_bin,
            &lab.path("c"),
            "c",
            dir.path(),
            c.addr,
            &agent_token,
        ),
        start_agent(
            &agent_bin,
            &lab.path("s"),
            "s",
            dir.path(),
            c.addr,
            &agent_token,
        ),
    ];
    let (tx, rx) = std::sync::mpsc::channel();
    let server = in_ns(&lab.path("s"), "svc-server", Some(tx), |ready| {
        let l = TcpListener::bind("10.250.2.2:8080").unwrap();
        ready();
        let (mut s, peer) = l.accept().unwrap();
        let n = read_all(&mut s);
        s.write_all(&vec![b'r'; BACK]).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let _ = read_all(&mut s);
        // The server sees the client's real address.
        (peer.ip().to_string(), n)
    });
    rx.recv_timeout(Duration::from_secs(10)).unwrap();
    in_ns(&lab.path("c"), "svc-client", None, |_| {
        let addr: SocketAddr = "10.250.99.10:80".parse().unwrap();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap();
        s.write_all(&vec![b'q'; SENT]).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_all(&mut s), BACK);
    })
    .join()
    .unwrap();
    assert_eq!(server.join().unwrap(), ("10.250.1.2".to_owned(), SENT));

    let expected = (SENT + BACK) as u64;
    let to = recent_minute(-2);
    let deadline = Instant::now() + Duration::from_secs(60);
    // Both ends report the conversation; merged, it counts once.
    while total_bytes(&c, from, to) != expected {
        assert!(
            Instant::now() < deadline,
            "map never reached {expected} bytes (now {}):\n{}",
            total_bytes(&c, from, to),
            agents.iter().map(Agent::log).collect::<Vec<_>>().join("\n")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(3));
    // The instances and the workloads map (processes outside containers stay on their hosts'
    // nodes there) both hold the one merged edge, and it keeps the Service's address.
    let mut inst = serde_json::Value::Null;
    for view in ["workloads", "instances"] {
        inst = c
            .get(&format!(
                "/api/v1/maps?view={view}&from={}&to={}",
                from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                to.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ))
            .json();
        assert_eq!(inst["totals"]["bytes"], expected, "{view}: {inst:#}");
        let links: Vec<serde_json::Value> = inst["links"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                serde_json::json!({
                    "source": l["source"], "target": l["target"],
                    "to_target": l["bytes_to_target"], "to_source": l["bytes_to_source"],
                    "ports": l["server_ports"], "observed_by": l["observed_by"],
                    "disagreement": l["disagreement_bytes"], "connections": l["connections"],
                    "client_processes": l["client_processes"], "server_processes": l["server_processes"],
                    "service_addresses": l["service_addresses"],
                })
            })
            .collect();
        assert_eq!(
            links,
            vec![serde_json::json!({
                "source": "host:host-c", "target": "host:host-s",
                "to_target": SENT, "to_source": BACK,
                "ports": [8080], "observed_by": "both", "disagreement": 0, "connections": 1,
                "client_processes": ["svc-client"], "server_processes": ["svc-server"],
                "service_addresses": ["10.250.99.10:80"],
            })],
            "{view}: one merged edge\n{inst:#}"
        );
    }
    // Two hosts, no node for the virtual address.
    let mut nodes: Vec<&str> = inst["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    nodes.sort_unstable();
    assert_eq!(nodes, ["host:host-c", "host:host-s"], "{inst:#}");
    for a in agents {
        drop(a);
    }
    assert_eq!(c.terminate().code(), Some(0));
    // SAFETY: back to the thread's original namespace, a valid descriptor.
    unsafe { libc::setns(original.as_raw_fd(), libc::CLONE_NEWNET) };
}

/// The namespaces of [`a_service_behind_dnat_merges_into_one_edge`]: `c` (10.250.1.2), `r` (the
/// router, .1 on both sides, nft DNAT), `s` (10.250.2.2); removed on drop.
struct NatLab {
    prefix: String,
}

impl NatLab {
    fn new() -> NatLab {
        let lab = NatLab {
            prefix: format!("tmcn{}", std::process::id() % 100_000),
        };
        let r = lab.ns("r");
        ip(&["netns", "add", &r]);
        ip(&["-n", &r, "link", "set", "lo", "up"]);
        for (h, side) in [("c", 1), ("s", 2)] {
            let ns = lab.ns(h);
            let gw = format!("10.250.{side}.1");
            ip(&["netns", "add", &ns]);
            ip(&[
                "-n", &r, "link", "add", h, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ]);
            ip(&["-n", &r, "addr", "add", &format!("{gw}/24"), "dev", h]);
            ip(&["-n", &r, "link", "set", h, "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.250.{side}.2/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&["-n", &ns, "route", "add", "default", "via", &gw]);
        }
        let run = |args: &[&str], stdin: &str| {
            let mut child = Command::new("ip")
                .args(["netns", "exec", &r])
                .args(args)
                .stdin(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(stdin.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"], "");
        run(
            &["nft", "-f", "-"],
            "table ip tmnat {\n chain prerouting { type nat hook prerouting priority dstnat; policy accept; ip daddr 10.250.99.10 tcp dport 80 dnat to 10.250.2.2:8080; }\n}\n",
        );
        lab
    }

    fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    fn path(&self, host: &str) -> PathBuf {
        PathBuf::from("/run/netns").join(self.ns(host))
    }
}

impl Drop for NatLab {
    fn drop(&mut self) {
        for h in ["c", "s", "r"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(h)])
                .status();
        }
    }
}
