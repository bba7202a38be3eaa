//! The real collector binary over real sockets: bad input of every kind is refused with the
//! right status and stores nothing while the service keeps serving; reports are idempotent;
//! tokens reload without a restart; SIGTERM finishes what is in flight; a configuration error
//! exits 64 before binding.

mod support;

use std::{
    io::Write as _,
    net::TcpStream,
    time::{Duration, Instant},
};

use support::*;

fn serve(dir: &std::path::Path, extra: &[&str]) -> Collector {
    let tokens = write_tokens(dir);
    let data = dir.join("data");
    let mut args = vec![
        "--data-dir",
        data.to_str().unwrap(),
        "--token-file",
        tokens.to_str().unwrap(),
        "--no-dns",
    ];
    args.extend_from_slice(extra);
    Collector::start(&args)
}

fn metric(c: &Collector, line_prefix: &str) -> u64 {
    let text = c.get("/metrics").text();
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn stored_nothing(c: &Collector) {
    assert_eq!(c.get("/api/v1/days").json()["days"], serde_json::json!([]));
    assert_eq!(metric(c, "trafficmap_collector_reports_accepted_total"), 0);
}

#[test]
fn bad_input_is_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let c = serve(
        dir.path(),
        &["--max-body-bytes", "65536", "--request-timeout", "2s"],
    );
    let start = recent_minute(5);
    let good = report(
        "bad-input-good-000001",
        "a",
        "10.1.0.1",
        start,
        &[("10.1.0.1", "10.1.0.2", 80, "client", "curl", 5, 7)],
    );

    // Malformed JSON: 400 saying where.
    let r = c.post_report(b"{\"schema\": \"trafficmap.report/v1\", ");
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .starts_with("malformed report at"),
        "{}",
        r.text()
    );
    // A field of the wrong type: 400 naming the field.
    let mut v = good.clone();
    v["pairs"][0]["bytes_sent"] = serde_json::json!("lots");
    let r = c.post_report(&serde_json::to_vec(&v).unwrap());
    assert_eq!(r.status, 400);
    assert!(r.text().contains("pairs[0].bytes_sent"), "{}", r.text());
    // Wrong schema version: 400 saying which one is accepted.
    let mut v = good.clone();
    v["schema"] = serde_json::json!("trafficmap.report/v9");
    let r = c.post_report(&serde_json::to_vec(&v).unwrap());
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error"],
        "unsupported report schema `trafficmap.report/v9`: this collector accepts `trafficmap.report/v1`"
    );
    // Semantically invalid: 400.
    let mut v = good.clone();
    v["window"]["end"] = v["window"]["start"].clone();
    let r = c.post_report(&serde_json::to_vec(&v).unwrap());
    assert_eq!(r.status, 400);
    assert!(r.text().contains("window end"), "{}", r.text());
    // Oversized: by Content-Length, and by the body itself when chunked.
    let big = vec![b' '; 70_000];
    let r = c.post_report(&big);
    assert_eq!(r.status, 413, "{}", r.text());
    let mut chunked = Vec::new();
    for _ in 0..20 {
        write!(chunked, "{:x}\r\n", 5000).unwrap();
        chunked.extend_from_slice(&[b' '; 5000]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let r = request(
        c.addr,
        "POST",
        "/api/v1/reports",
        &[
            ("Authorization", &format!("Bearer {TOKEN}")),
            ("Transfer-Encoding", "chunked"),
        ],
        &chunked,
    );
    assert_eq!(r.status, 413, "{}", r.text());
    // A gzip bomb: small on the wire, over the limit once inflated.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&vec![b' '; 1_000_000]).unwrap();
    let bomb = gz.finish().unwrap();
    let r = request(
        c.addr,
        "POST",
        "/api/v1/reports",
        &[
            ("Authorization", &format!("Bearer {TOKEN}")),
            ("Content-Encoding", "gzip"),
        ],
        &bomb,
    );
    assert_eq!(r.status, 413, "{}", r.text());
    // Tokens: missing, wrong, wrong scheme: 401 with a challenge.
    let body = serde_json::to_vec(&good).unwrap();
    for auth in [
        None,
        Some("Bearer wrong-token-wrong-token"),
        Some(&*format!("Basic {TOKEN}")),
    ] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        let r = request(c.addr, "POST", "/api/v1/reports", &headers, &body);
        assert_eq!(r.status, 401, "{auth:?}: {}", r.text());
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"trafficmap\"")
        );
    }
    // Too old and from the future: 422.
    let old = report(
        "bad-input-old-0000001",
        "a",
        "10.1.0.1",
        recent_minute(3 * 24 * 60),
        &[],
    );
    assert_eq!(
        c.post_report(&serde_json::to_vec(&old).unwrap()).status,
        422
    );
    let future = report(
        "bad-input-future-0001",
        "a",
        "10.1.0.1",
        recent_minute(-180),
        &[],
    );
    let r = c.post_report(&serde_json::to_vec(&future).unwrap());
    assert_eq!(r.status, 422);
    assert!(r.text().contains("check the agent's clock"), "{}", r.text());

    // A client that sends its headers and part of the body, then nothing: 408 after the
    // request timeout, while other clients are served meanwhile.
    let mut slow = TcpStream::connect(c.addr).unwrap();
    let head = format!(
        "POST /api/v1/reports HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    slow.write_all(head.as_bytes()).unwrap();
    slow.write_all(&body[..body.len() / 2]).unwrap();
    // And one that never finishes its headers.
    let mut stuck = TcpStream::connect(c.addr).unwrap();
    stuck
        .write_all(b"POST /api/v1/reports HTTP/1.1\r\nHost: x\r\nAuthor")
        .unwrap();
    let t = Instant::now();
    assert_eq!(
        c.get("/healthz").status,
        200,
        "served while two clients stall"
    );
    assert!(t.elapsed() < Duration::from_secs(1));
    let r = read_response(&mut slow).unwrap();
    assert_eq!(r.status, 408, "{}", r.text());
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    // The header-stalled connection is closed without an answer.
    stuck
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = Vec::new();
    let _ = std::io::Read::read_to_end(&mut stuck, &mut buf);
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "stalled headers were not cut off"
    );
    assert_eq!(
        String::from_utf8_lossy(&buf),
        "",
        "no answer to stalled headers"
    );

    stored_nothing(&c);
    let rejected = |reason: &str| {
        metric(
            &c,
            &format!("trafficmap_collector_reports_rejected_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(rejected("malformed"), 2);
    assert_eq!(rejected("schema"), 1);
    assert_eq!(rejected("invalid"), 1);
    assert_eq!(rejected("too_large"), 3);
    assert_eq!(rejected("unauthorized"), 3);
    assert_eq!(rejected("too_old"), 1);
    assert_eq!(rejected("clock_skew"), 1);
    assert_eq!(rejected("timeout"), 1);

    // Still up and taking good reports.
    let r = c.post_report(&body);
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (200, Some("stored")),
        "{}",
        r.text()
    );
    assert_eq!(
        total_bytes(&c, start, start + chrono::TimeDelta::minutes(1)),
        12
    );
    assert_eq!(c.terminate().code(), Some(0));
}

#[test]
fn reports_are_idempotent_and_gzip_works() {
    let dir = tempfile::tempdir().unwrap();
    let c = serve(dir.path(), &[]);
    let start = recent_minute(3);
    let r1 = report(
        "idem-000000000000001",
        "a",
        "10.1.0.1",
        start,
        &[(
            "10.1.0.1", "10.1.0.2", 5432, "client", "app", 1_000_003, 4_200_512,
        )],
    );
    let r2 = report(
        "idem-000000000000002",
        "b",
        "10.1.0.2",
        start,
        &[(
            "10.1.0.2", "10.1.0.1", 5432, "server", "postgres", 4_200_512, 1_000_003,
        )],
    );
    let body1 = serde_json::to_vec(&r1).unwrap();
    let r = c.post_report(&body1);
    assert_eq!(
        r.json(),
        serde_json::json!({"status": "stored", "report_id": "idem-000000000000001", "pairs": 1})
    );
    let r = c.post_report(&body1);
    assert_eq!(
        r.json(),
        serde_json::json!({"status": "duplicate", "report_id": "idem-000000000000001", "pairs": 0})
    );
    // The other end, gzipped.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&serde_json::to_vec(&r2).unwrap()).unwrap();
    let r = request(
        c.addr,
        "POST",
        "/api/v1/reports",
        &[
            ("Authorization", &format!("Bearer {TOKEN}")),
            ("Content-Encoding", "gzip"),
        ],
        &gz.finish().unwrap(),
    );
    assert_eq!(r.json()["status"], "stored", "{}", r.text());
    // One conversation, counted once although both ends reported it and one report came twice.
    let to = start + chrono::TimeDelta::minutes(1);
    let m = c.get(&format!(
        "/api/v1/maps?view=instances&from={}&to={}",
        start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        to.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    ));
    let m = m.json();
    assert_eq!(m["totals"]["bytes"], 5_200_515);
    assert_eq!(m["links"].as_array().unwrap().len(), 1);
    assert_eq!(m["links"][0]["observed_by"], "both");
    assert_eq!(m["links"][0]["source"], "host:a");
    assert_eq!(m["links"][0]["target"], "host:b");
    assert_eq!(
        metric(&c, "trafficmap_collector_reports_duplicate_total"),
        1
    );
    assert_eq!(metric(&c, "trafficmap_collector_pairs_ingested_total"), 2);
    // Today's map is computed from the store; a day without data is 404.
    let today = start.date_naive();
    assert_eq!(
        c.get(&format!("/api/v1/maps?view=clusters&day={today}"))
            .status,
        200
    );
    let r = c.get("/api/v1/maps?view=clusters&day=2001-01-01");
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (404, Some("no data for 2001-01-01"))
    );
    // Request errors name the parameter.
    let r = c.get("/api/v1/maps?view=pods&day=2026-11-23");
    assert_eq!(r.status, 400);
    assert!(
        r.text().contains("view: unknown view `pods`"),
        "{}",
        r.text()
    );
    let r = c.get("/api/v1/maps?view=clusters&day=yesterday");
    assert_eq!(r.json()["error"], "day `yesterday`: expected YYYY-MM-DD");
    assert_eq!(
        c.get("/api/v1/days").json()["days"],
        serde_json::json!([today.to_string()])
    );
    assert_eq!(c.terminate().code(), Some(0));
}

#[test]
fn tokens_reload_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let c = serve(dir.path(), &[]);
    let body =
        |id: &str| serde_json::to_vec(&report(id, "a", "10.1.0.1", recent_minute(2), &[])).unwrap();
    let new = "rotated-token-9876543210fedcba";
    let post = |token: &str, id: &str| {
        request(
            c.addr,
            "POST",
            "/api/v1/reports",
            &[("Authorization", &format!("Bearer {token}"))],
            &body(id),
        )
        .status
    };
    assert_eq!(post(TOKEN, "reload-00000000000001"), 200);
    assert_eq!(post(new, "reload-00000000000002"), 401);
    // Both tokens during the rotation.
    std::fs::write(
        dir.path().join("tokens"),
        format!("{TOKEN} old *\n{new} new *\n"),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while post(new, "reload-00000000000003") != 200 {
        assert!(
            Instant::now() < deadline,
            "the new token was not picked up:\n{}",
            c.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(post(TOKEN, "reload-00000000000004"), 200);
    // The old one retired; an emptied file (a bad edit) keeps the tokens in force.
    std::fs::write(dir.path().join("tokens"), format!("{new} new *\n")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while post(TOKEN, "reload-00000000000005") != 401 {
        assert!(Instant::now() < deadline, "the old token stayed valid");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::fs::write(dir.path().join("tokens"), "").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(post(new, "reload-00000000000006"), 200);
    assert!(c.log().contains("token file unusable"), "{}", c.log());
    assert_eq!(c.terminate().code(), Some(0));
}

#[test]
fn configuration_errors_exit_64_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!("listen = \"127.0.0.1:{port}\"\n[retention]\nminutes = \"often\"\n"),
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "trafficmap-collector: configuration: {}:3: `often` is not a duration",
            cfg.display()
        )),
        "{err}"
    );
    // Nothing listened on the port meanwhile.
    assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
    let out = std::process::Command::new(bin())
        .args(["--token-file", "/nonexistent/tokens", "check-config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "trafficmap-collector: configuration: /nonexistent/tokens: No such file or directory (os error 2)\n"
    );
    // The example configuration is valid as shipped (paths aside).
    let example =
        std::fs::read_to_string(root().join("trafficmap-collector/collector.example.toml"))
            .unwrap();
    assert!(example.contains("[storage.clickhouse]"));
}

#[test]
fn sigterm_finishes_requests_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let c = serve(dir.path(), &["--request-timeout", "10s"]);
    let start = recent_minute(4);
    let body = serde_json::to_vec(&report(
        "sigterm-000000000001",
        "a",
        "10.1.0.1",
        start,
        &[("10.1.0.1", "10.1.0.9", 443, "client", "curl", 111, 222)],
    ))
    .unwrap();
    // Half a request in flight when SIGTERM arrives; the rest follows; it must be stored.
    let mut s = TcpStream::connect(c.addr).unwrap();
    let head = format!(
        "POST /api/v1/reports HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body[..10]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(c.child.id() as i32, libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(300));
    // No new connections are accepted now.
    assert!(try_request(c.addr, "GET", "/healthz", &[], b"").is_err());
    s.write_all(&body[10..]).unwrap();
    let r = read_response(&mut s).unwrap();
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (200, Some("stored")),
        "{}",
        r.text()
    );
    let addr = c.addr;
    assert_eq!(c.terminate().code(), Some(0));
    // Restarted on the same data: the report is there.
    let c = serve(dir.path(), &["--listen", &addr.to_string()]);
    assert_eq!(
        total_bytes(&c, start, start + chrono::TimeDelta::minutes(1)),
        333
    );
    assert_eq!(c.terminate().code(), Some(0));
}
