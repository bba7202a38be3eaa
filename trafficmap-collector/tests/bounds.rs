//! The review's finding 3 against the real collector binary: counters no link can move are
//! refused with 400 naming the field, nothing of them is stored, and the day's maps and exports
//! still answer with exactly the legitimate traffic.

mod support;

use support::*;

fn serve(dir: &std::path::Path) -> Collector {
    let tokens = write_tokens(dir);
    let data = dir.join("data");
    Collector::start(&[
        "--data-dir",
        data.to_str().unwrap(),
        "--token-file",
        tokens.to_str().unwrap(),
        "--no-dns",
    ])
}

#[test]
fn counters_beyond_the_bounds_are_refused_and_the_day_still_maps() {
    let dir = tempfile::tempdir().unwrap();
    let c = serve(dir.path());
    let start = recent_minute(3);
    let day = start.date_naive();
    let good = report(
        "bounds-good-00000001",
        "a",
        "10.1.0.1",
        start,
        &[(
            "10.1.0.1", "10.1.0.2", 443, "client", "curl", 1_000_003, 4_200_512,
        )],
    );
    let r = c.post_report(&serde_json::to_vec(&good).unwrap());
    assert_eq!(r.status, 200, "{}", r.text());

    // The review's reproduction: drops of u64::MAX, twice (the second used to overflow the
    // day's sum into a REAL). serde_json's Value holds u64::MAX exactly.
    for n in 1..=2 {
        let mut v = report(
            &format!("bounds-ovf-0000000{n}"),
            "ovf",
            "10.1.0.9",
            start,
            &[],
        );
        v["health"]["drops"] = serde_json::json!({ "x": u64::MAX });
        let body = serde_json::to_vec(&v).unwrap();
        assert!(
            String::from_utf8_lossy(&body).contains("\"x\":18446744073709551615"),
            "the body carries the review's number"
        );
        let r = c.post_report(&body);
        assert_eq!(r.status, 400, "{}", r.text());
        assert_eq!(
            r.json(),
            serde_json::json!({
                "error": "health.drops.x: 18446744073709551615 exceeds 60000000000 (probe events in this window at 1e9 per second)"
            })
        );
    }
    // A pair's bytes no link moves in a minute.
    let mut v = report(
        "bounds-bytes-0000001",
        "ovf",
        "10.1.0.9",
        start,
        &[("10.1.0.9", "10.1.0.2", 443, "client", "x", u64::MAX, 1)],
    );
    let r = c.post_report(&serde_json::to_vec(&v).unwrap());
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        r.json()["error"],
        "pairs[0].bytes_sent: 18446744073709551615 exceeds 3000000000000 (bytes a 400 Gbit/s link moves in this window)"
    );
    // A million drop reasons: refused by count, the same way.
    v["pairs"] = serde_json::json!([]);
    v["health"]["drops"] = (0..1_000_000)
        .map(|i| (format!("{i:x}"), serde_json::json!(0)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    let r = c.post_report(&serde_json::to_vec(&v).unwrap());
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"], "health.drops: more than 32 reasons");

    // Nothing of them was stored; every map and export of the day answers with the good
    // report's bytes, exactly.
    let d = day.format("%Y-%m-%d");
    for view in ["instances", "clusters", "security-groups"] {
        let r = c.get(&format!("/api/v1/maps?view={view}&day={d}"));
        assert_eq!(r.status, 200, "{view}: {}", r.text());
        let m = r.json();
        assert_eq!(m["totals"]["bytes"], 5_200_515, "{view}");
        let labels = m["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["label"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>();
        assert!(
            !labels.iter().any(|l| l.contains("ovf")),
            "{view}: {labels:?}"
        );
        for format in ["csv", "drawio", "dot", "json"] {
            let r = c.get(&format!(
                "/api/v1/maps/export?view={view}&day={d}&format={format}"
            ));
            assert_eq!(r.status, 200, "{view} {format}: {}", r.text());
        }
    }
    let r = c.get("/api/v1/days");
    assert_eq!(r.json()["days"], serde_json::json!([d.to_string()]));
    let text = c.get("/metrics").text();
    assert!(
        text.lines()
            .any(|l| l == "trafficmap_collector_reports_rejected_total{reason=\"invalid\"} 4"),
        "{text}"
    );
}

/// Issue 12 item 5: hostile host health is refused with 400 naming the field, nothing of the
/// report is stored, and the map shows exactly the accepted sample.
#[test]
fn host_stats_beyond_the_bounds_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = serve(dir.path());
    let start = recent_minute(3);
    let stats = serde_json::json!({
        "uptime_seconds": 86_400, "load1": 2.5, "load5": 1.25, "load15": 0.75,
        "memory_total_bytes": 4_000_000_000u64, "memory_available_bytes": 1_000_000_000u64,
        "cpus": 8
    });
    let mut good = report("hoststats-good-00001", "h", "10.1.0.1", start, &[]);
    good["host"]["stats"] = stats.clone();
    let r = c.post_report(&serde_json::to_vec(&good).unwrap());
    assert_eq!(r.status, 200, "{}", r.text());
    // The same host a minute later, each with one hostile value.
    let later = start + chrono::TimeDelta::minutes(1);
    let cases: [(&str, serde_json::Value, &str); 6] = [
        (
            "memory_available_bytes",
            serde_json::json!(4_000_000_001u64),
            "host.stats.memory_available_bytes: 4000000001 exceeds 4000000000 (memory_total_bytes)",
        ),
        (
            "load1",
            serde_json::json!(-1.0),
            "host.stats.load1: -1.0 is not within 0 to 1000000",
        ),
        (
            "load15",
            serde_json::json!(1e300),
            "host.stats.load15: 1e+300 is not within 0 to 1000000",
        ),
        (
            "cpus",
            serde_json::json!(0),
            "host.stats.cpus: 0 is not within 1 to 65536",
        ),
        (
            "uptime_seconds",
            serde_json::json!(u64::MAX),
            "host.stats.uptime_seconds: 18446744073709551615 exceeds 3155760000 (100 years)",
        ),
        (
            "memory_total_bytes",
            serde_json::json!((1u64 << 50) + 1),
            "host.stats.memory_total_bytes: 1125899906842625 exceeds 1125899906842624 (2^50 bytes)",
        ),
    ];
    for (i, (field, value, message)) in cases.into_iter().enumerate() {
        let mut v = report(
            &format!("hoststats-bad-0000{i}"),
            "h",
            "10.1.0.1",
            later,
            &[],
        );
        v["host"]["stats"] = stats.clone();
        v["host"]["stats"][field] = value;
        if field == "memory_total_bytes" {
            v["host"]["stats"]["memory_available_bytes"] = serde_json::json!(0);
        }
        let r = c.post_report(&serde_json::to_vec(&v).unwrap());
        assert_eq!(r.status, 400, "{field}: {}", r.text());
        assert_eq!(r.json(), serde_json::json!({ "error": message }), "{field}");
    }
    // Only the good sample is in the map (its window's end is when it was taken).
    let r = c.get(&format!(
        "/api/v1/maps?view=instances&from={}&to={}",
        start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        (start + chrono::TimeDelta::minutes(3)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    let m = r.json();
    let hosts: Vec<&serde_json::Value> = m["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n.get("host"))
        .collect();
    let mut want = stats;
    want["sampled_at"] =
        serde_json::json!(later.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    want["load1_max"] = serde_json::json!(2.5);
    assert_eq!(hosts, [&want]);
}
