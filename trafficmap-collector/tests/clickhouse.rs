//! The ClickHouse backend against a real ClickHouse (Debian's clickhouse-server 18.16, and the current engine: see support/clickhouse.rs): it answers exactly
//! what SQLite answers (the golden maps), before and after roll-ups and retention, with late
//! reports; several collectors share one database and a report retried to another collector
//! counts once, even when both store it at the same moment.
//!
//! Needs the server: run by `cargo xtask test --only clickhouse` (which installs it).

mod support;

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use support::{clickhouse::ClickHouse, *};
use trafficmap_collector::{
    config::Config,
    enrich::refresh::Enricher,
    ingest::Ingest,
    mapservice,
    store::{
        Outcome, Retention, Store,
        clickhouse::{ClickHouseOptions, ClickHouseStore},
        sqlite::SqliteStore,
    },
};
use trafficmap_model::{
    cloud::CloudSnapshot,
    map::{Map, View},
    report::Report,
};

fn golden_ingests() -> Vec<Arc<Ingest>> {
    golden_reports()
        .iter()
        .map(|r| Arc::new(Ingest::from_report(r)))
        .collect()
}

fn enricher() -> (Arc<Enricher>, Config) {
    let cfg = Config::from_file(&root().join("golden/enrich/collector.toml")).unwrap();
    let (e, _) = Enricher::new(&cfg.enrich).unwrap();
    let snap = std::fs::read(cfg.enrich.ec2.snapshot_file.as_ref().unwrap()).unwrap();
    e.set_cloud(CloudSnapshot::from_json(&snap).unwrap());
    (e, cfg)
}

fn generated_at() -> DateTime<Utc> {
    "2026-11-24T00:10:00Z".parse().unwrap()
}

async fn clickhouse_store(ch: &ClickHouse, db: &str) -> Store {
    Store::ClickHouse(Arc::new(
        ClickHouseStore::open(&ClickHouseOptions {
            url: ch.url.clone(),
            database: db.into(),
            ..ClickHouseOptions::default()
        })
        .await
        .unwrap(),
    ))
}

async fn views(store: &Store, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<Map> {
    let (e, cfg) = enricher();
    let built = mapservice::build(store, &e, &cfg.cost, from, to, generated_at())
        .await
        .unwrap();
    View::ALL
        .into_iter()
        .map(|v| built.render(&e, v, generated_at()))
        .collect()
}

fn t(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn ranges() -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
    let day = |d| mapservice::day_range(NaiveDate::parse_from_str(d, "%Y-%m-%d").unwrap());
    vec![
        day("2026-11-22"),
        day("2026-11-23"),
        (t("2026-11-22T00:00:00Z"), t("2026-11-24T00:00:00Z")),
        (t("2026-11-23T10:00:00Z"), t("2026-11-23T10:01:00Z")),
        (t("2026-11-23T09:30:00Z"), t("2026-11-23T14:30:00Z")),
        (t("2026-11-22T08:59:00Z"), t("2026-11-23T10:00:00Z")),
    ]
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs clickhouse-server: cargo xtask test --only clickhouse"]
async fn clickhouse_answers_like_sqlite() {
    let Some(ch) = ClickHouse::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::Sqlite(Arc::new(
        SqliteStore::open(dir.path(), Default::default()).unwrap(),
    ));
    let clickhouse = clickhouse_store(&ch, "conformance").await;
    let reports = golden_ingests();
    // One report per batch into SQLite; everything in two batches into ClickHouse.
    for r in &reports {
        sqlite
            .ingest(vec![r.clone()], generated_at())
            .await
            .unwrap();
    }
    let (a, b) = reports.split_at(4);
    assert!(
        clickhouse
            .ingest(a.to_vec(), generated_at())
            .await
            .unwrap()
            .iter()
            .all(|o| *o == Outcome::Stored)
    );
    assert!(
        clickhouse
            .ingest(b.to_vec(), generated_at())
            .await
            .unwrap()
            .iter()
            .all(|o| *o == Outcome::Stored)
    );
    // A retry of a stored report, and a batch holding one report twice.
    assert_eq!(
        clickhouse
            .ingest(vec![reports[0].clone()], generated_at())
            .await
            .unwrap(),
        [Outcome::Duplicate]
    );
    // The race a check cannot stop: another collector stores the same report at the same time.
    let other = clickhouse_store(&ch, "conformance").await;
    let (x, y) = tokio::join!(
        clickhouse.ingest(vec![reports[1].clone()], generated_at()),
        other.ingest(vec![reports[1].clone()], generated_at())
    );
    assert_eq!((x.unwrap().len(), y.unwrap().len()), (1, 1));
    if let Store::ClickHouse(c) = &other {
        // Force the duplicate rows the race can produce, whatever the timing was.
        // (And of a report with host health, issue 12 item 5: db-1 at 10:00 on the 23rd.)
        c.ingest_unchecked(&[reports[2].clone(), reports[7].clone()], generated_at())
            .await
            .unwrap();
    }
    sqlite
        .maintain(generated_at(), Retention::default())
        .await
        .unwrap();

    for (from, to) in ranges() {
        let want = views(&sqlite, from, to).await;
        assert_eq!(
            views(&clickhouse, from, to).await,
            want,
            "{from} .. {to} before roll-ups"
        );
    }
    // The golden files themselves.
    for d in ["2026-11-22", "2026-11-23"] {
        let day = NaiveDate::parse_from_str(d, "%Y-%m-%d").unwrap();
        let (from, to) = mapservice::day_range(day);
        for m in views(&clickhouse, from, to).await {
            let golden =
                std::fs::read(root().join("golden/maps").join(m.view.file_name(day))).unwrap();
            assert!(
                golden == m.to_json_pretty(),
                "{} {d} differs from the golden file",
                m.view.as_str()
            );
        }
    }
    // Roll-ups (every golden hour and day is closed "now" = a week later; retention long
    // enough to keep the minutes, which `late_reports_and_retention` covers), then the same.
    let later = t("2026-11-30T00:00:00Z");
    let keep = Retention {
        minutes: Duration::from_secs(30 * 86_400),
        hours: Duration::from_secs(60 * 86_400),
        days: Duration::from_secs(400 * 86_400),
    };
    // Marks and recomputations are compared at one-second resolution, equal meaning "dirty":
    // let a second pass so that the recomputation starts after the last mark.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let m = clickhouse.maintain(later, keep).await.unwrap();
    // Hours 22/09, 23/10, 23/14 and the two days.
    assert_eq!((m.rolled_up, m.deleted_rows), (5, 0));
    for (from, to) in ranges() {
        let want = views(&sqlite, from, to).await;
        assert_eq!(
            views(&clickhouse, from, to).await,
            want,
            "{from} .. {to} after roll-ups"
        );
    }
    // Host health rolled up with them (issue 12 item 5): db-1 at 10:00 and 14:00, api-1 at
    // 14:00 on the 23rd; one row per host and period in the answer.
    assert_eq!(
        ch.query("SELECT uniqExact(period, machine_id) FROM conformance.host_hour")
            .trim(),
        "3"
    );
    assert_eq!(
        ch.query("SELECT uniqExact(period, machine_id) FROM conformance.host_day")
            .trim(),
        "2"
    );
    // A second pass has nothing left to do.
    assert_eq!(clickhouse.maintain(later, keep).await.unwrap().rolled_up, 0);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs clickhouse-server: cargo xtask test --only clickhouse"]
async fn late_reports_and_retention() {
    let Some(ch) = ClickHouse::start() else {
        return;
    };
    let store = clickhouse_store(&ch, "late").await;
    let day = (Utc::now() - TimeDelta::days(1)).date_naive();
    let ten = mapservice::day_range(day).0 + TimeDelta::hours(10);
    let mk = |id: &str, sent: u64| {
        let v = report(
            id,
            "a",
            "10.3.0.1",
            ten,
            &[("10.3.0.1", "10.3.0.2", 443, "client", "app", sent, 1)],
        );
        Arc::new(Ingest::from_report(
            &Report::from_json(&serde_json::to_vec(&v).unwrap()).unwrap(),
        ))
    };
    let (from, to) = mapservice::day_range(day);
    let total = |s: Store| async move { views(&s, from, to).await[0].totals.bytes };
    store
        .ingest(vec![mk("late-000000000000001", 1000)], Utc::now())
        .await
        .unwrap();
    let m = store
        .maintain(Utc::now(), Retention::default())
        .await
        .unwrap();
    assert_eq!(m.rolled_up, 2, "yesterday's 10:00 hour and the day");
    assert_eq!(total(store.clone()).await, 1001);
    // A late report for the rolled-up hour: right at once (readers fall back to minutes) and
    // after the recomputation.
    store
        .ingest(vec![mk("late-000000000000002", 500)], Utc::now())
        .await
        .unwrap();
    assert_eq!(total(store.clone()).await, 1502);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        store
            .maintain(Utc::now(), Retention::default())
            .await
            .unwrap()
            .rolled_up,
        2
    );
    assert_eq!(total(store.clone()).await, 1502);
    // Retention: minute rows of days past it go, once their roll-ups are clean; answers stay.
    let short = Retention {
        minutes: Duration::from_secs(3600),
        ..Retention::default()
    };
    let in_two_days = Utc::now() + TimeDelta::days(2);
    let m = store.maintain(in_two_days, short).await.unwrap();
    assert_eq!(
        m.deleted_rows, 1,
        "one day partition of minute rows dropped: {m:?}"
    );
    assert_eq!(ch.query("SELECT count() FROM late.pair_minute").trim(), "0");
    assert_eq!(total(store.clone()).await, 1502);
    let (h0, h1) = (ten, ten + TimeDelta::hours(1));
    let (e, cfg) = enricher();
    let hour = mapservice::build(&store, &e, &cfg.cost, h0, h1, Utc::now())
        .await
        .unwrap();
    assert_eq!(
        hour.render(&e, View::Instances, Utc::now()).totals.bytes,
        1502,
        "the hour from its roll-up"
    );
}

#[test]
#[ignore = "needs clickhouse-server: cargo xtask test --only clickhouse"]
fn two_collectors_share_one_clickhouse() {
    let Some(ch) = ClickHouse::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tokens = write_tokens(dir.path());
    let start = |name: &str| {
        let data = dir.path().join(name);
        Collector::start(&[
            "--clickhouse-url",
            &ch.url,
            "--clickhouse-database",
            "shared",
            "--data-dir",
            data.to_str().unwrap(),
            "--token-file",
            tokens.to_str().unwrap(),
            "--no-dns",
        ])
    };
    let (a, b) = (start("a"), start("b"));
    let minute = recent_minute(10);
    let body = |id: &str, sent: u64| {
        serde_json::to_vec(&report(
            id,
            "web",
            "10.4.0.1",
            minute,
            &[("10.4.0.1", "10.4.0.2", 80, "client", "curl", sent, 10)],
        ))
        .unwrap()
    };
    // Stored by A; the agent retries to B (A's answer was lost): B says duplicate.
    assert_eq!(
        a.post_report(&body("shared-00000000000001", 100)).json()["status"],
        "stored"
    );
    assert_eq!(
        b.post_report(&body("shared-00000000000001", 100)).json()["status"],
        "duplicate"
    );
    // The same report to both at once, several times over: whatever each answers, it counts once.
    for i in 0..5 {
        let id = format!("shared-race-000000000{i}");
        let (ra, rb) = std::thread::scope(|s| {
            let ha = s.spawn(|| a.post_report(&body(&id, 1000)));
            let hb = s.spawn(|| b.post_report(&body(&id, 1000)));
            (ha.join().unwrap(), hb.join().unwrap())
        });
        assert_eq!((ra.status, rb.status), (200, 200));
    }
    let want = 110 + 5 * 1010;
    let to = minute + TimeDelta::minutes(1);
    assert_eq!(total_bytes(&a, minute, to), want);
    assert_eq!(total_bytes(&b, minute, to), want);
    assert_eq!(a.terminate().code(), Some(0));
    assert_eq!(b.terminate().code(), Some(0));
}

/// ClickHouse's `sum` of `UInt64` wraps modulo 2^64: three counters at the top of `i64` (what
/// the store clamps a larger one to) would add up to a small number. Sums stop at `i64::MAX`,
/// in the range reads of minute rows, in the roll-ups and in the health of the reports.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs clickhouse-server: cargo xtask test --only clickhouse"]
async fn huge_counters_saturate() {
    let Some(ch) = ClickHouse::start() else {
        return;
    };
    let store = clickhouse_store(&ch, "huge").await;
    let day = (Utc::now() - TimeDelta::days(1)).date_naive();
    let ten = mapservice::day_range(day).0 + TimeDelta::hours(10);
    let batch: Vec<Arc<Ingest>> = (0..3)
        .map(|n| {
            let v = report(
                &format!("huge-00000000000000{n}"),
                "a",
                "10.4.0.1",
                ten + TimeDelta::minutes(n),
                &[("10.4.0.1", "10.4.0.2", 443, "client", "app", 1, 1)],
            );
            let mut ing =
                Ingest::from_report(&Report::from_json(&serde_json::to_vec(&v).unwrap()).unwrap());
            // Past validation (an older collector's rows): the store's second line.
            ing.probe_drops = u64::MAX;
            ing.rows[0].c.bytes_sent = u64::MAX;
            Arc::new(ing)
        })
        .collect();
    store.ingest(batch, Utc::now()).await.unwrap();
    let max = trafficmap_model::bounds::COUNTER_MAX;
    let check = |s: Store, from: DateTime<Utc>, to: DateTime<Utc>| async move {
        let d = s.range(from, to).await.unwrap();
        assert_eq!(d.obs.len(), 1);
        assert_eq!(d.obs[0].c.bytes_sent, max, "{from}");
        assert_eq!(d.obs[0].c.bytes_received, 3, "{from}");
        assert_eq!(d.agents[0].probe_drops, max, "{from}");
        assert_eq!(d.agents[0].reports, 3, "{from}");
    };
    let (from, to) = mapservice::day_range(day);
    check(store.clone(), from, to).await;
    check(store.clone(), ten, ten + TimeDelta::minutes(5)).await;
    let m = store
        .maintain(Utc::now(), Retention::default())
        .await
        .unwrap();
    assert_eq!(m.rolled_up, 2, "the 10:00 hour and the day");
    assert_eq!(
        ch.query("SELECT bytes_sent FROM huge.pair_day").trim(),
        "9223372036854775807"
    );
    check(store.clone(), from, to).await;
    check(store.clone(), ten, ten + TimeDelta::hours(1)).await;
}

/// Issue 11: containers and Service addresses round-trip through a store exactly, minute rows
/// and roll-ups alike: the bytes per (container, service) that were sent come back, a pair's
/// twin in another container stays apart, and the workloads view has its workload nodes.
async fn containers_round_trip(store: &Store) -> Vec<Vec<Map>> {
    let reports = container_reports();
    for r in &reports {
        store
            .ingest(vec![Arc::new(Ingest::from_report(r))], generated_at())
            .await
            .unwrap();
    }
    let want = bytes_by_ident(&reports);
    // 9 twins plus containers and services on the others: many distinct keys.
    assert!(want.len() > 20, "{}", want.len());
    let whole = (t("2026-11-22T00:00:00Z"), t("2026-11-24T00:00:00Z"));
    let before = range_bytes_by_ident(&store.range(whole.0, whole.1).await.unwrap());
    assert_eq!(before, want, "minute rows");
    let mut out = vec![views(store, whole.0, whole.1).await];
    // Roll-ups (the days closed a week later; minutes kept), then the same answer.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let keep = Retention {
        minutes: Duration::from_secs(30 * 86_400),
        hours: Duration::from_secs(60 * 86_400),
        days: Duration::from_secs(400 * 86_400),
    };
    store
        .maintain(t("2026-11-30T00:00:00Z"), keep)
        .await
        .unwrap();
    let after = range_bytes_by_ident(&store.range(whole.0, whole.1).await.unwrap());
    assert_eq!(after, want, "roll-ups");
    for d in ["2026-11-22", "2026-11-23"] {
        let (from, to) = mapservice::day_range(NaiveDate::parse_from_str(d, "%Y-%m-%d").unwrap());
        let day = store.range(from, to).await.unwrap();
        // Exactly the containers that day's reports name, each once.
        let want: std::collections::BTreeSet<_> = reports
            .iter()
            .filter(|r| r.window.start.date_naive().to_string() == d)
            .flat_map(|r| r.pairs.iter().filter_map(|p| p.container.clone()))
            .collect();
        let got: std::collections::BTreeSet<_> = day.containers.iter().cloned().collect();
        assert_eq!(got.len(), day.containers.len(), "{d}: a container twice");
        assert_eq!(got, want, "{d}");
    }
    out.push(views(store, whole.0, whole.1).await);
    assert_eq!(out[0], out[1], "maps before and after roll-ups");
    let workloads = out[1].iter().find(|m| m.view == View::Workloads).unwrap();
    assert!(
        workloads
            .nodes
            .iter()
            .any(|n| n.id.starts_with("workload:shop/") && !n.containers.is_empty()),
        "{:?}",
        workloads.nodes.iter().map(|n| &n.id).collect::<Vec<_>>()
    );
    assert!(workloads.links.iter().any(|l| {
        l.service_addresses
            .iter()
            .any(|a| a.starts_with("10.96.0.40:"))
    }));
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn containers_round_trip_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::Sqlite(Arc::new(
        SqliteStore::open(dir.path(), Default::default()).unwrap(),
    ));
    containers_round_trip(&sqlite).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs clickhouse-server: cargo xtask test --only clickhouse"]
async fn containers_round_trip_clickhouse_like_sqlite() {
    let Some(ch) = ClickHouse::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::Sqlite(Arc::new(
        SqliteStore::open(dir.path(), Default::default()).unwrap(),
    ));
    let want = containers_round_trip(&sqlite).await;
    let clickhouse = clickhouse_store(&ch, "containers").await;
    assert_eq!(containers_round_trip(&clickhouse).await, want);
}
