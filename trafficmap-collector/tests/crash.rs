//! The collector killed (SIGKILL) while agents post concurrently, then restarted on the same
//! data: every report the agents send until acknowledged is stored exactly once, including those
//! whose acknowledgement was lost (they come back as duplicates), and both ends of every
//! conversation still count once.

mod support;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::TimeDelta;
use support::*;

const HOSTS: usize = 10;
const CONVERSATIONS: usize = 200;

#[test]
fn killed_mid_stream_loses_nothing_and_counts_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = write_tokens(dir.path());
    let data = dir.path().join("data");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let args = [
        "--listen",
        &listen,
        "--data-dir",
        data.to_str().unwrap(),
        "--token-file",
        tokens.to_str().unwrap(),
        "--no-dns",
    ];
    let c = Collector::start(&args);
    let addr = c.addr;

    // Each conversation: host i (client) -> host j (server), both agents report it with the
    // same counts; distinct minutes and sizes.
    let mut bodies = Vec::new();
    let mut expected = 0u64;
    let first = recent_minute(CONVERSATIONS as i64 + 5);
    for k in 0..CONVERSATIONS {
        let (i, j) = (k % HOSTS, (k * 7 + 3) % HOSTS);
        let j = if i == j { (j + 1) % HOSTS } else { j };
        let (ci, si) = (format!("10.2.0.{}", i + 1), format!("10.2.0.{}", j + 1));
        let (sent, received) = (1_000 + k as u64 * 13, 50_000 + k as u64 * 101);
        expected += sent + received;
        let start = first + TimeDelta::minutes(k as i64);
        let port = 8000 + (k % 5) as u16;
        bodies.push(
            serde_json::to_vec(&report(
                &format!("crash-{k:05}-client-0000"),
                &format!("h{i}"),
                &ci,
                start,
                &[(&ci, &si, port, "client", "app", sent, received)],
            ))
            .unwrap(),
        );
        bodies.push(
            serde_json::to_vec(&report(
                &format!("crash-{k:05}-server-0000"),
                &format!("h{j}"),
                &si,
                start,
                &[(&si, &ci, port, "server", "svc", received, sent)],
            ))
            .unwrap(),
        );
    }
    let bodies = Arc::new(bodies);
    let acked = Arc::new(AtomicUsize::new(0));
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(120);
    let senders: Vec<_> = (0..8)
        .map(|_| {
            let (bodies, acked, next, outcomes) = (
                bodies.clone(),
                acked.clone(),
                next.clone(),
                outcomes.clone(),
            );
            std::thread::spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= bodies.len() {
                        return;
                    }
                    // An agent: retry until the collector says stored or duplicate.
                    let mut tries = 0;
                    loop {
                        tries += 1;
                        assert!(
                            Instant::now() < deadline,
                            "report {i} never acknowledged after {tries} tries"
                        );
                        match try_request(
                            addr,
                            "POST",
                            "/api/v1/reports",
                            &[("Authorization", &format!("Bearer {TOKEN}"))],
                            &bodies[i],
                        ) {
                            Ok(r) if r.status == 200 => {
                                outcomes
                                    .lock()
                                    .unwrap()
                                    .push((i, r.json()["status"].as_str().unwrap().to_owned()));
                                acked.fetch_add(1, Ordering::SeqCst);
                                break;
                            }
                            Ok(r) => assert!(
                                matches!(r.status, 503),
                                "report {i}: {} {}",
                                r.status,
                                r.text()
                            ),
                            Err(_) => {}
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            })
        })
        .collect();
    // Kill it once a third is in, mid-stream; restart on the same port and data.
    while acked.load(Ordering::SeqCst) < bodies.len() / 3 {
        std::thread::sleep(Duration::from_millis(5));
    }
    c.kill();
    let at_kill = acked.load(Ordering::SeqCst);
    assert!(
        at_kill < bodies.len(),
        "all reports were in before the kill; the test proves nothing"
    );
    std::thread::sleep(Duration::from_millis(300));
    let c = Collector::start(&args);
    for s in senders {
        s.join().unwrap();
    }
    assert_eq!(acked.load(Ordering::SeqCst), bodies.len());
    // Acknowledgements lost on the wire: agents send again; nothing may be added.
    for i in (0..bodies.len()).step_by(17) {
        let r = c.post_report(&bodies[i]);
        assert_eq!(r.json()["status"], "duplicate", "report {i}");
    }
    let to = first + TimeDelta::minutes(CONVERSATIONS as i64);
    assert_eq!(total_bytes(&c, first, to), expected);
    let m = c.get(&format!(
        "/api/v1/maps?view=instances&from={}&to={}",
        first.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        to.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    ));
    let m = m.json();
    assert!(
        m["links"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["observed_by"] == "both" && l["disagreement_bytes"] == 0),
        "{m}"
    );
    assert_eq!(m["totals"]["nodes"], HOSTS as u64);
    eprintln!(
        "{} reports, {} acknowledged before the kill, {} answered duplicate",
        bodies.len(),
        at_kill,
        outcomes
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| s == "duplicate")
            .count()
    );
    assert_eq!(c.terminate().code(), Some(0));
}
