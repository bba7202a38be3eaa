//! Reads against the real binary (issue 8): read tokens, the trusted proxy's user header (honoured
//! only from the proxy's address), the Host check, the security headers, the range limit, and the
//! start-up error for an unprotected non-loopback listener.

mod support;

use std::{io::Write as _, net::SocketAddr};

use support::*;

const READ_TOKEN: &str = "read-token-0123456789abcdef";
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; worker-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// A request written as given (its own Host header), answered on a fresh connection.
fn raw(addr: SocketAddr, head: &str) -> Response {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    read_response(&mut s).unwrap()
}

/// A GET from a client socket bound to `from` (another loopback address than the proxy's).
fn get_from(from: &str, addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Response {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stream = rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
        sock.connect(addr).await.unwrap()
    });
    let mut s = stream.into_std().unwrap();
    s.set_nonblocking(false).unwrap();
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    read_response(&mut s).unwrap()
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

fn assert_security_headers(r: &Response) {
    assert_eq!(r.header("content-security-policy"), Some(CSP));
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
}

#[test]
fn reads_need_a_read_token() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = write_tokens(dir.path());
    let reads = dir.path().join("read-tokens");
    std::fs::write(&reads, format!("{READ_TOKEN} dashboards\n")).unwrap();
    let data = dir.path().join("data");
    let c = Collector::start(&[
        "--data-dir",
        data.to_str().unwrap(),
        "--token-file",
        tokens.to_str().unwrap(),
        "--read-token-file",
        reads.to_str().unwrap(),
        "--no-dns",
    ]);
    let get = |path: &str, token: Option<&str>| {
        let auth = token.map(bearer);
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        request(c.addr, "GET", path, &headers, b"")
    };
    let day = recent_minute(0).format("%Y-%m-%d").to_string();
    for path in [
        "/api/v1/days".to_owned(),
        format!("/api/v1/maps?view=instances&day={day}"),
        format!("/api/v1/maps/export?view=instances&day={day}&format=csv"),
        "/metrics".to_owned(),
    ] {
        let r = get(&path, None);
        assert_eq!(r.status, 401, "{path}: {}", r.text());
        assert_eq!(
            r.json(),
            serde_json::json!({"error": "missing `Authorization: Bearer <read token>` header"}),
            "{path}"
        );
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"trafficmap reads\"")
        );
        assert_security_headers(&r);
        // An agent token does not grant reads.
        let r = get(&path, Some(TOKEN));
        assert_eq!(r.status, 401, "{path}: {}", r.text());
        assert_eq!(
            r.json(),
            serde_json::json!({"error": "unknown read token"}),
            "{path}"
        );
    }
    let r = get("/api/v1/days", Some(READ_TOKEN));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), serde_json::json!({"days": []}));
    assert_security_headers(&r);
    let r = get("/metrics", Some(READ_TOKEN));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text()
            .contains("trafficmap_collector_reports_accepted_total 0"),
        "{}",
        r.text()
    );
    // A read token does not grant reports.
    let r = request(
        c.addr,
        "POST",
        "/api/v1/reports",
        &[("Authorization", &bearer(READ_TOKEN))],
        b"{}",
    );
    assert_eq!(r.status, 401, "{}", r.text());
    // Health and the viewer's files stay open, with the headers.
    let r = get("/healthz", None);
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));
    assert_security_headers(&r);
    let r = get("/", None);
    assert_eq!(r.status, 200);
    assert!(r.text().contains("<title>trafficmap</title>"));
    assert_security_headers(&r);
    // A range over max_range_days (31) is refused before any build.
    let r = get(
        "/api/v1/maps?view=instances&from=2026-01-01T00:00:00Z&to=2026-02-01T00:01:00Z",
        Some(READ_TOKEN),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        r.json(),
        serde_json::json!({"error": "range: 2026-01-01 00:00:00 UTC to 2026-02-01 00:01:00 UTC is longer than max_range_days (31 days)"})
    );
    // 31 days exactly is within the limit (an empty map: nothing reported).
    let r = get(
        "/api/v1/maps?view=instances&from=2026-01-01T00:00:00Z&to=2026-02-01T00:00:00Z",
        Some(READ_TOKEN),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["nodes"], serde_json::json!([]));
    assert_eq!(c.terminate().code(), Some(0));
}

#[test]
fn loopback_checks_the_host_header() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let c = Collector::start(&["--data-dir", data.to_str().unwrap(), "--no-dns"]);
    let port = c.addr.port();
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "localhost".to_owned(),
        format!("[::1]:{port}"),
    ] {
        let r = raw(
            c.addr,
            &format!("GET /api/v1/days HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        );
        assert_eq!(r.status, 200, "{host}: {}", r.text());
    }
    for path in ["/api/v1/days", "/", "/healthz", "/metrics"] {
        let r = raw(
            c.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: evil.test:{port}\r\nConnection: close\r\n\r\n"),
        );
        assert_eq!(r.status, 403, "{path}: {}", r.text());
        assert_eq!(
            r.json(),
            serde_json::json!({"error": format!("host: `evil.test:{port}` is not an allowed host name for this collector (see allowed_hosts)")})
        );
        assert_security_headers(&r);
    }
    assert_eq!(c.terminate().code(), Some(0));
}

#[test]
fn proxy_user_header_only_from_a_trusted_address() {
    let dir = tempfile::tempdir().unwrap();
    let reads = dir.path().join("read-tokens");
    std::fs::write(&reads, format!("{READ_TOKEN}\n")).unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\nread_token_file = {:?}\ntrusted_proxies = [\"127.0.0.1/32\"]\nproxy_user_header = \"X-Forwarded-User\"\nallowed_hosts = [\"127.0.0.1\"]\n",
            dir.path().join("data"),
            reads
        ),
    )
    .unwrap();
    let c = Collector::start(&["--config", cfg.to_str().unwrap(), "--no-dns"]);
    let user = [("X-Forwarded-User", "alice")];
    // From the proxy's address (127.0.0.1): the header is a reader.
    let r = get_from("127.0.0.1", c.addr, "/api/v1/days", &user);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), serde_json::json!({"days": []}));
    // From another address: ignored.
    let r = get_from("127.0.0.2", c.addr, "/api/v1/days", &user);
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(
        r.json(),
        serde_json::json!({"error": "missing `Authorization: Bearer <read token>` header"})
    );
    // A read token still works from anywhere.
    let r = get_from(
        "127.0.0.2",
        c.addr,
        "/api/v1/days",
        &[("Authorization", &bearer(READ_TOKEN))],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // The proxy without the header is no reader either.
    let r = get_from("127.0.0.1", c.addr, "/api/v1/days", &[]);
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(c.terminate().code(), Some(0));
}

#[test]
fn non_loopback_without_read_protection_does_not_start() {
    let port = free_port();
    let listen = format!("0.0.0.0:{port}");
    let out = std::process::Command::new(bin())
        .args(["--listen", &listen, "--no-dns"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "trafficmap-collector: configuration: listen = {listen}: not a loopback address, and reads (maps, exports, /metrics) would be open to anyone; set read_token_file or trusted_proxies, or allow_anonymous_reads = true\n"
        )
    );
    // Nothing listened meanwhile.
    assert!(std::net::TcpListener::bind(("0.0.0.0", port)).is_ok());
    // Said explicitly, it is allowed.
    let out = std::process::Command::new(bin())
        .args([
            "--listen",
            &listen,
            "--allow-anonymous-reads",
            "check-config",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}
