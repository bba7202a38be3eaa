//! The real collector binary: tokens bound to identities (403 and nothing stored for another
//! host's identity), `token issue`, TLS with a CA made here (the agent's client settings,
//! plain HTTP refused, certificates replaced on SIGHUP), mutual TLS, and the listener's
//! per-address connection cap.

mod support;

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    time::{Duration, Instant},
};

use support::{pki::Pki, *};

/// The machine id `support::report` gives `host`.
fn machine_id(host: &str) -> String {
    format!(
        "{:0>32}",
        host.bytes().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

fn metric(c: &Collector, line: &str) -> Option<u64> {
    c.get("/metrics")
        .text()
        .lines()
        .find(|l| l.starts_with(line))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn post_as(addr: SocketAddr, token: &str, body: &serde_json::Value) -> Response {
    request(
        addr,
        "POST",
        "/api/v1/reports",
        &[("Authorization", &format!("Bearer {token}"))],
        &serde_json::to_vec(body).unwrap(),
    )
}

#[test]
fn a_token_reports_only_as_its_own_host() {
    let dir = tempfile::tempdir().unwrap();
    let web = "web1-secret-0123456789abcdef";
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        format!(
            "# one host\n{web} web-1 machine-id={} hostname=web-* addresses=10.1.0.0/24\n",
            machine_id("web-1")
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let c = Collector::start(&[
        "--data-dir",
        data.to_str().unwrap(),
        "--token-file",
        tokens.to_str().unwrap(),
        "--no-dns",
    ]);
    let start = recent_minute(3);
    let pair = ("10.1.0.5", "10.9.0.1", 5432, "client", "psql", 100, 200);
    let refused = [
        // Another host's key (the victim's machine id).
        (
            report("id-victim-0000000001", "db-1", "10.1.0.5", start, &[pair]),
            format!(
                "identity: host.machine_id \"{}\" is not one this token may report as",
                machine_id("db-1")
            ),
        ),
        // Its own key, another hostname.
        (
            {
                let mut r = report("id-hostname-00000001", "web-1", "10.1.0.5", start, &[pair]);
                r["host"]["hostname"] = "db-1".into();
                r
            },
            "identity: host.hostname \"db-1\" matches no hostname pattern of this token".into(),
        ),
        // Its own key, claiming the victim's address as its own.
        (
            report("id-address-00000001", "web-1", "10.2.0.7", start, &[pair]),
            "identity: host.addresses[0] 10.2.0.7 is outside the addresses of this token".into(),
        ),
        (
            report(
                "id-localip-00000001",
                "web-1",
                "10.1.0.5",
                start,
                &[pair, ("10.2.0.7", "10.9.0.1", 5432, "client", "psql", 1, 2)],
            ),
            "identity: pairs[1].local_ip 10.2.0.7 is outside the addresses of this token".into(),
        ),
        // An EC2 instance the token does not name.
        (
            {
                let mut r = report("id-ec2-000000000001", "web-1", "10.1.0.5", start, &[pair]);
                r["host"]["ec2"] =
                    serde_json::json!({ "instance_id": "i-0victim", "region": "us-east-1" });
                r
            },
            "identity: host.ec2.instance_id \"i-0victim\" is not one this token may report as"
                .into(),
        ),
    ];
    for (body, message) in &refused {
        let r = post_as(c.addr, web, body);
        assert_eq!(r.status, 403, "{}", r.text());
        assert_eq!(r.json(), serde_json::json!({ "error": message }));
    }
    // Nothing of them was stored.
    assert_eq!(c.get("/api/v1/days").json()["days"], serde_json::json!([]));
    assert_eq!(
        metric(&c, "trafficmap_collector_reports_accepted_total"),
        Some(0)
    );
    assert_eq!(
        metric(
            &c,
            "trafficmap_collector_reports_rejected_total{reason=\"identity\"}"
        ),
        Some(refused.len() as u64)
    );
    // Its own identity: stored, and the bytes are what was sent.
    let good = report("id-good-00000000001", "web-1", "10.1.0.5", start, &[pair]);
    let r = post_as(c.addr, web, &good);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "stored");
    assert_eq!(
        total_bytes(&c, start, start + chrono::TimeDelta::minutes(1)),
        300
    );
    assert!(c.log().contains("identity not covered by its token"));
    assert_eq!(c.terminate().code(), Some(0));
}

/// `token issue` prints one line, and nothing else; the collector accepts the line and its
/// secret.
#[test]
fn token_issue_prints_a_line_the_collector_accepts() {
    let issue = |args: &[&str]| {
        std::process::Command::new(bin())
            .args(["token", "issue"])
            .args(args)
            .output()
            .unwrap()
    };
    let out = issue(&[
        "--label",
        "web-1",
        "--machine-id",
        &machine_id("web-1"),
        "--addresses",
        "10.1.0.0/24",
        "--hostname",
        "web-*",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let line = stdout.strip_suffix('\n').unwrap();
    assert!(!line.contains('\n'), "{stdout:?}");
    let (secret, rest) = line.split_once(' ').unwrap();
    assert_eq!(secret.len(), 64);
    assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()), "{secret}");
    assert_eq!(
        rest,
        format!(
            "web-1 machine-id={} hostname=web-* addresses=10.1.0.0/24",
            machine_id("web-1")
        )
    );
    // A second run, another secret.
    let again = issue(&["--label", "web-1", "--machine-id", "m"]);
    assert_ne!(
        String::from_utf8_lossy(&again.stdout).split(' ').next(),
        Some(secret)
    );
    // `--any` stands for `*`; without a machine id (or --any), it is a usage error.
    let any = issue(&["--label", "fleet", "--any"]);
    assert!(
        String::from_utf8_lossy(&any.stdout).ends_with(" fleet *\n"),
        "{any:?}"
    );
    let bad = issue(&["--label", "x", "--hostname", "web-*"]);
    assert_eq!(bad.status.code(), Some(2));
    assert_eq!(bad.stdout, b"");
    let bad = issue(&[
        "--label",
        "x",
        "--machine-id",
        "m",
        "--addresses",
        "10.0.0.0/99",
    ]);
    assert_eq!(bad.status.code(), Some(64));
    assert_eq!(
        String::from_utf8_lossy(&bad.stderr),
        "trafficmap-collector: token issue: token `x`: `addresses=10.0.0.0/99`: not an address or CIDR block\n"
    );

    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, &stdout).unwrap();
    let data = dir.path().join("data");
    let c = Collector::start(&[
        "--data-dir",
        data.to_str().unwrap(),
        "--token-file",
        tokens.to_str().unwrap(),
        "--no-dns",
    ]);
    let body = report(
        "issued-000000000001",
        "web-1",
        "10.1.0.5",
        recent_minute(2),
        &[],
    );
    assert_eq!(post_as(c.addr, secret, &body).status, 200);
    let other = report(
        "issued-000000000002",
        "web-2",
        "10.1.0.6",
        recent_minute(2),
        &[],
    );
    assert_eq!(post_as(c.addr, secret, &other).status, 403);
    assert_eq!(c.terminate().code(), Some(0));
}

/// The agent's HTTP client (trafficmap-daemon's `ship.rs`): reqwest with rustls, trusting the
/// certificates of `ca_file` besides the system's.
fn agent_client(ca_pem: &str, identity: Option<(&str, &str)>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(5));
    for cert in reqwest::Certificate::from_pem_bundle(ca_pem.as_bytes()).unwrap() {
        b = b.add_root_certificate(cert);
    }
    if let Some((cert, key)) = identity {
        b = b.identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
    }
    b.build().unwrap()
}

fn tls_config(dir: &Path, port: u16, tokens: &Path, client_ca: Option<&Path>) -> String {
    let mut text = format!(
        "listen = \"127.0.0.1:{port}\"\ndata_dir = \"data\"\ntoken_file = \"{}\"\ntls_cert_file = \"cert.pem\"\ntls_key_file = \"key.pem\"\n",
        tokens.display()
    );
    if let Some(ca) = client_ca {
        text.push_str(&format!("tls_client_ca_file = \"{}\"\n", ca.display()));
    }
    text.push_str("[enrich.dns]\nenabled = false\n");
    let p = dir.join("collector.toml");
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_owned()
}

async fn post_tls(
    client: &reqwest::Client,
    addr: SocketAddr,
    body: &serde_json::Value,
) -> Result<(u16, String), reqwest::Error> {
    let r = client
        .post(format!("https://localhost:{}/api/v1/reports", addr.port()))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(body).unwrap())
        .send()
        .await?;
    Ok((r.status().as_u16(), r.text().await?))
}

fn sighup(c: &Collector) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(c.child.id() as i32, libc::SIGHUP) };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_the_agent_refuses_plain_http_and_reloads_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = write_tokens(dir.path());
    let one = Pki::new("trafficmap test CA one");
    let (cert, key) = one.leaf(&["localhost", "127.0.0.1"]);
    std::fs::write(dir.path().join("cert.pem"), &cert).unwrap();
    std::fs::write(dir.path().join("key.pem"), &key).unwrap();
    let config = tls_config(dir.path(), free_port(), &tokens, None);
    let c = tokio::task::block_in_place(|| Collector::start(&["--config", &config]));
    assert!(
        c.log()
            .contains(&format!("listening on https://{}/", c.addr)),
        "{}",
        c.log()
    );

    let trusts_one = agent_client(&one.ca_pem, None);
    let body = report(
        "tls-report-00000001",
        "a",
        "10.1.0.1",
        recent_minute(2),
        &[],
    );
    let (status, text) = post_tls(&trusts_one, c.addr, &body).await.unwrap();
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["status"],
        "stored"
    );

    // Plain HTTP to the TLS port: no HTTP answer, the connection is closed at once, and the
    // collector goes on serving.
    let t = Instant::now();
    let plain = tokio::task::block_in_place(|| try_request(c.addr, "GET", "/healthz", &[], b""));
    assert!(
        plain.is_err(),
        "plain HTTP was answered: {:?}",
        plain.map(|r| r.status)
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let health = trusts_one
        .get(format!("https://localhost:{}/healthz", c.addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    // A broken certificate file: logged, the old certificate stays in service.
    std::fs::write(
        dir.path().join("cert.pem"),
        "-----BEGIN CERTIFICATE-----\nbroken\n",
    )
    .unwrap();
    sighup(&c);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c
        .log()
        .contains("file unusable; the previous one stays in force")
    {
        assert!(Instant::now() < deadline, "no error logged:\n{}", c.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let body = report(
        "tls-report-00000002",
        "a",
        "10.1.0.1",
        recent_minute(2),
        &[],
    );
    assert_eq!(post_tls(&trusts_one, c.addr, &body).await.unwrap().0, 200);

    // A certificate from another CA, then SIGHUP: new connections get it.
    let two = Pki::new("trafficmap test CA two");
    let (cert, key) = two.leaf(&["localhost"]);
    std::fs::write(dir.path().join("key.pem"), &key).unwrap();
    std::fs::write(dir.path().join("cert.pem"), &cert).unwrap();
    sighup(&c);
    let trusts_two = agent_client(&two.ca_pem, None);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 3;
    loop {
        let body = report(
            &format!("tls-report-{n:08}"),
            "a",
            "10.1.0.1",
            recent_minute(2),
            &[],
        );
        n += 1;
        if let Ok((200, _)) = post_tls(&trusts_two, c.addr, &body).await {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new certificate not served:\n{}",
            c.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The old CA no longer verifies the server (fresh client: no pooled connection).
    let trusts_one = agent_client(&one.ca_pem, None);
    let body = report(
        "tls-report-99999999",
        "a",
        "10.1.0.1",
        recent_minute(2),
        &[],
    );
    let err = post_tls(&trusts_one, c.addr, &body).await.unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    let metrics = trusts_two
        .get(format!("https://localhost:{}/metrics", c.addr.port()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "trafficmap_collector_enrichment_refreshes_total{source=\"tls\",result=\"ok\"} 1",
        "trafficmap_collector_enrichment_refreshes_total{source=\"tls\",result=\"error\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no `{line}` in\n{metrics}"
        );
    }
    assert_eq!(
        tokio::task::block_in_place(|| c.terminate()).code(),
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_certificate_naming_the_machine_id() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = write_tokens(dir.path());
    let server = Pki::new("server CA");
    let (cert, key) = server.leaf(&["localhost"]);
    std::fs::write(dir.path().join("cert.pem"), &cert).unwrap();
    std::fs::write(dir.path().join("key.pem"), &key).unwrap();
    let agents = Pki::new("agents CA");
    let ca = dir.path().join("agents-ca.pem");
    std::fs::write(&ca, &agents.ca_pem).unwrap();
    let config = tls_config(dir.path(), free_port(), &tokens, Some(&ca));
    let c = tokio::task::block_in_place(|| Collector::start(&["--config", &config]));

    let (a_cert, a_key) = agents.leaf(&[&machine_id("a")]);
    let with_a = agent_client(&server.ca_pem, Some((&a_cert, &a_key)));
    let without = agent_client(&server.ca_pem, None);
    let start = recent_minute(2);
    let a = report("mtls-a-000000000001", "a", "10.1.0.1", start, &[]);
    let b = report("mtls-b-000000000001", "b", "10.1.0.2", start, &[]);
    let (status, text) = post_tls(&without, c.addr, &a).await.unwrap();
    assert_eq!(status, 403);
    assert_eq!(
        text,
        format!(
            "{{\"error\":\"identity: host.machine_id \\\"{}\\\": this collector needs a client certificate naming it (mutual TLS)\"}}",
            machine_id("a")
        )
    );
    let (status, text) = post_tls(&with_a, c.addr, &b).await.unwrap();
    assert_eq!(status, 403);
    assert_eq!(
        text,
        format!(
            "{{\"error\":\"identity: host.machine_id \\\"{}\\\" is not named by the client certificate\"}}",
            machine_id("b")
        )
    );
    assert_eq!(c.get_tls_days(&without).await, serde_json::json!([]));
    let (status, text) = post_tls(&with_a, c.addr, &a).await.unwrap();
    assert_eq!(status, 200, "{text}");
    // Reads need no client certificate.
    assert_eq!(
        c.get_tls_days(&without).await,
        serde_json::json!([start.date_naive().to_string()])
    );
    // A certificate from another CA fails the handshake.
    let (x_cert, x_key) = server.leaf(&[&machine_id("a")]);
    let stranger = agent_client(&server.ca_pem, Some((&x_cert, &x_key)));
    assert!(post_tls(&stranger, c.addr, &a).await.is_err());
    assert_eq!(
        tokio::task::block_in_place(|| c.terminate()).code(),
        Some(0)
    );
}

trait TlsDays {
    async fn get_tls_days(&self, client: &reqwest::Client) -> serde_json::Value;
}

impl TlsDays for Collector {
    async fn get_tls_days(&self, client: &reqwest::Client) -> serde_json::Value {
        let r = client
            .get(format!(
                "https://localhost:{}/api/v1/days",
                self.addr.port()
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        serde_json::from_str::<serde_json::Value>(&r.text().await.unwrap()).unwrap()["days"].clone()
    }
}

/// A connection from `source` to `addr` (the source bound first: 127.0.0.2 is another client
/// address on loopback).
fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(format!("{source}:0").parse().unwrap()).unwrap();
        let s = s.connect(addr).await.unwrap().into_std().unwrap();
        s.set_nonblocking(false).unwrap();
        s
    })
}

fn healthz_on(mut s: TcpStream) -> std::io::Result<Response> {
    s.set_nonblocking(false)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    read_response(&mut s)
}

#[test]
fn connections_per_address_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "max_connections_per_address = 64\nidle_timeout = \"1m\"\n",
    )
    .unwrap();
    let c = Collector::start(&[
        "--config",
        cfg.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--allow-unauthenticated",
        "--no-dns",
    ]);
    // 64 open connections from 127.0.0.1, each serving a request (so each was accepted and
    // counted), kept alive.
    let mut held = Vec::new();
    for _ in 0..64 {
        let mut s = connect_from("127.0.0.1", c.addr);
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200 OK\r\n"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
        held.push(s);
    }
    // The 65th from the same address is closed without an answer.
    let r = healthz_on(connect_from("127.0.0.1", c.addr));
    assert!(
        r.is_err(),
        "the 65th connection was served: {:?}",
        r.map(|r| r.status)
    );
    // Another address is served.
    let r = healthz_on(connect_from("127.0.0.2", c.addr)).unwrap();
    assert_eq!((r.status, r.text()), (200, "ok\n".into()));
    let mut s = connect_from("127.0.0.2", c.addr);
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let metrics = read_response(&mut s).unwrap().text();
    let line = "trafficmap_collector_connections_refused_total{reason=\"per_address\"} 1";
    assert!(
        metrics.lines().any(|l| l == line),
        "no `{line}` in\n{metrics}"
    );
    // Closing one gives its slot back.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(r) = healthz_on(connect_from("127.0.0.1", c.addr)) {
            assert_eq!(r.status, 200);
            break;
        }
        assert!(Instant::now() < deadline, "the slot was not given back");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(held);
    assert_eq!(c.terminate().code(), Some(0));
}

/// A kept-alive connection with no request in flight for `idle_timeout` is closed (hyper's
/// 10 s header timer would close it later anyway).
#[test]
fn idle_connections_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "idle_timeout = \"2s\"\n").unwrap();
    let c = Collector::start(&[
        "--config",
        cfg.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--allow-unauthenticated",
        "--no-dns",
    ]);
    let mut s = connect_from("127.0.0.1", c.addr);
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK\r\n"));
    let t = Instant::now();
    assert_eq!(s.read(&mut buf).unwrap(), 0, "closed without another byte");
    let idle = t.elapsed();
    assert!(
        idle >= Duration::from_millis(1900) && idle < Duration::from_secs(5),
        "closed after {idle:?}"
    );
    assert_eq!(c.terminate().code(), Some(0));
}
