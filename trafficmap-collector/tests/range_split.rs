//! One range computation: any split of a range into day pieces, each read from the store and
//! then merged ([`RangeData::merge`]), gives the map of the whole range as the API builds it,
//! byte for byte, in every view. Generated reports cover both ends of a conversation that
//! disagree, one-sided and `unknown` roles, connections carried in from before the range,
//! several reports per agent and day, hostnames that change from one day to the next, host
//! health (last sample, largest load), and data outside the range; the store is read from
//! roll-ups or from minute rows.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc};

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use proptest::{
    prelude::*,
    test_runner::{Config as RunnerConfig, RngAlgorithm, TestRng, TestRunner},
};
use trafficmap_collector::{
    config::Config,
    cost::CostRates,
    enrich::refresh::Enricher,
    ingest::Ingest,
    mapservice::{self, MapSource, Served, Span},
    range::RangeData,
    store::{Retention, Store, sqlite::SqliteStore},
};
use trafficmap_model::{cloud::CloudSnapshot, map::View, report::Report};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The golden fixtures' enrichment: EC2 instances, inventory hosts, foreign ranges, prices.
fn enricher() -> (Arc<Enricher>, Config) {
    let cfg = Config::from_file(&root().join("golden/enrich/collector.toml")).unwrap();
    cfg.validate().unwrap();
    let (e, _) = Enricher::new(&cfg.enrich).unwrap();
    let snap = std::fs::read(cfg.enrich.ec2.snapshot_file.as_ref().unwrap()).unwrap();
    e.set_cloud(CloudSnapshot::from_json(&snap).unwrap());
    (e, cfg)
}

/// Agents (hostname, machine id, address); the first is an EC2 instance of the snapshot.
const AGENTS: [(&str, &str, &str); 3] = [
    ("api-1", "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1", "10.0.1.11"),
    ("api-2", "a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2a2", "10.0.1.12"),
    ("db-1", "d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1", "10.0.2.21"),
];

/// Peers: the agents, an EC2 instance without agent, inventory hosts, a foreign range, an
/// address nothing names.
const PEERS: [&str; 8] = [
    "10.0.1.11",
    "10.0.1.12",
    "10.0.2.21",
    "10.0.3.31",
    "10.9.0.40",
    "10.9.0.7",
    "52.94.1.1",
    "203.0.113.9",
];

const DAYS: i64 = 5;
const MINUTES: [i64; 4] = [0, 1, 719, 1439];
const PORTS: [u16; 2] = [443, 5432];
const ROLES: [&str; 3] = ["client", "server", "unknown"];
const PROCESSES: [&str; 3] = ["app", "postgres", ""];

fn first_day() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 20).unwrap()
}

fn now() -> DateTime<Utc> {
    mapservice::day_range(first_day()).0 + TimeDelta::days(DAYS) + TimeDelta::minutes(10)
}

#[derive(Clone, Debug)]
struct PairSpec {
    peer: usize,
    port: usize,
    role: usize,
    process: usize,
    sent: u64,
    received: u64,
    opened: u64,
    closed: u64,
    active: u64,
}

#[derive(Clone, Debug)]
struct ReportSpec {
    agent: usize,
    day: i64,
    minute: usize,
    renamed: bool,
    probe_drops: u64,
    spool_dropped: u64,
    pairs: Vec<PairSpec>,
}

#[derive(Clone, Debug)]
struct Case {
    reports: Vec<ReportSpec>,
    /// The range: whole days `[start, start + len)` of the generated days.
    start: i64,
    len: i64,
    /// Where the range is cut: after its day `i` if `cuts[i]`.
    cuts: Vec<bool>,
    rollup: bool,
}

fn pair() -> impl Strategy<Value = PairSpec> {
    (
        (
            0..PEERS.len(),
            0..PORTS.len(),
            0..ROLES.len(),
            0..PROCESSES.len(),
        ),
        (0u64..5_000, 0u64..5_000, 0u64..3, 0u64..3, 0u64..4),
    )
        .prop_map(
            |((peer, port, role, process), (sent, received, opened, closed, active))| PairSpec {
                peer,
                port,
                role,
                process,
                sent,
                received,
                opened,
                closed,
                active,
            },
        )
}

fn report() -> impl Strategy<Value = ReportSpec> {
    (
        (0..AGENTS.len(), 0..DAYS, 0..MINUTES.len(), any::<bool>()),
        (0u64..3, 0u64..4),
        prop::collection::vec(pair(), 1..5),
    )
        .prop_map(
            |((agent, day, minute, renamed), (probe_drops, spool_dropped), pairs)| ReportSpec {
                agent,
                day,
                minute,
                renamed,
                probe_drops,
                spool_dropped,
                pairs,
            },
        )
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(report(), 1..14),
        (0..DAYS).prop_flat_map(|start| (Just(start), 1..=DAYS - start)),
        prop::collection::vec(any::<bool>(), (DAYS - 1) as usize),
        any::<bool>(),
    )
        .prop_map(|(reports, (start, len), cuts, rollup)| Case {
            reports,
            start,
            len,
            cuts,
            rollup,
        })
}

fn to_report(i: usize, r: &ReportSpec) -> Report {
    let (host, machine, addr) = AGENTS[r.agent];
    let start = mapservice::day_range(first_day()).0
        + TimeDelta::days(r.day)
        + TimeDelta::minutes(MINUTES[r.minute]);
    let t = |d: DateTime<Utc>| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    // One pair per key in a report (the model refuses repeats).
    let mut pairs = BTreeMap::new();
    for (k, p) in r.pairs.iter().enumerate() {
        let key = (p.peer, p.port, p.role, p.process);
        let first = start + TimeDelta::seconds(k as i64);
        pairs.entry(key).or_insert_with(|| {
            serde_json::json!({
                "local_ip": addr, "peer_ip": PEERS[p.peer], "server_port": PORTS[p.port],
                "role": ROLES[p.role], "role_source": "observed", "process": PROCESSES[p.process],
                "bytes_sent": p.sent, "bytes_received": p.received,
                "connections_opened": p.opened, "connections_closed": p.closed,
                "connections_active": p.active,
                "first_seen": t(first), "last_seen": t(first + TimeDelta::seconds(30)),
            })
        });
    }
    let mut host = serde_json::json!({
        "hostname": if r.renamed { format!("{host}-new") } else { host.to_owned() },
        "machine_id": machine,
        "addresses": [addr],
    });
    // Host health (issue 12 item 5) on most reports, derived from the report (the generated
    // cases stay those of before): the last sample and the largest load must merge too.
    if r.spool_dropped != 3 {
        host["stats"] = serde_json::json!({
            "uptime_seconds": r.day * 86_400 + MINUTES[r.minute] * 60,
            "load1": ((i * 7) % 13) as f64 * 0.25, "load5": 1.5, "load15": 0.75,
            "memory_total_bytes": 8_000_000_000u64,
            "memory_available_bytes": 1_000_000_000u64 * (i as u64 % 5),
            "cpus": 2 + r.agent,
        });
    }
    if r.agent == 0 {
        host["ec2"] = serde_json::json!({
            "instance_id": "i-0a1b2c3d4e5f60718", "region": "us-east-1",
            "availability_zone": "us-east-1a", "instance_type": "m5.large",
        });
    }
    let doc = serde_json::json!({
        "schema": "trafficmap.report/v1",
        "report_id": format!("range-split-{i:08}"),
        "seq": i + 1,
        "agent": { "version": "0.1.0", "backend": "tracepoint", "kernel": "6.18.0" },
        "host": host,
        "window": { "start": t(start), "end": t(start + TimeDelta::minutes(1)) },
        "health": {
            "drops": { "conns_full": r.probe_drops }, "map_entries": 1, "map_capacity": 1024,
            "spool_dropped": r.spool_dropped,
        },
        "pairs": pairs.into_values().collect::<Vec<_>>(),
    });
    Report::from_json(&serde_json::to_vec(&doc).unwrap()).unwrap()
}

/// Returns whether the range was cut, and whether its map has both-sides disagreement (so the
/// run can tell it tried what matters).
async fn check(case: &Case, e: &Enricher, rates: &CostRates) -> (bool, bool) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::Sqlite(Arc::new(
        SqliteStore::open(dir.path(), Default::default()).unwrap(),
    ));
    for (i, r) in case.reports.iter().enumerate() {
        let ing = Ingest::from_report(&to_report(i, r));
        store.ingest(vec![Arc::new(ing)], now()).await.unwrap();
    }
    if case.rollup {
        store.maintain(now(), Retention::default()).await.unwrap();
    }
    let day0 = mapservice::day_range(first_day()).0;
    let day = |d: i64| day0 + TimeDelta::days(d);
    let (from, to) = (day(case.start), day(case.start + case.len));

    // The whole range, as the API answers it (no daily files in this directory).
    let files = tempfile::tempdir().unwrap();
    let source = MapSource {
        store: &store,
        enricher: e,
        rates,
        dir: files.path(),
    };
    let mut whole = Vec::new();
    for view in View::ALL {
        match source.map(view, Span::Range(from, to), now()).await {
            Ok(Served::Built(m)) => whole.push(String::from_utf8(m.to_json_pretty()).unwrap()),
            Ok(Served::File(_)) => panic!("no daily files were written"),
            Err(err) => panic!("{err}"),
        }
    }

    // The same range read piece by piece, cut at the chosen day boundaries, then merged.
    let mut bounds = vec![case.start];
    bounds.extend((case.start + 1..case.start + case.len).filter(|d| case.cuts[(*d - 1) as usize]));
    bounds.push(case.start + case.len);
    let mut pieces: Vec<RangeData> = Vec::new();
    for w in bounds.windows(2) {
        pieces.push(store.range(day(w[0]), day(w[1])).await.unwrap());
    }
    let merged = RangeData::merge(pieces).unwrap();
    let built = mapservice::resolve(&store, e, rates, &merged, now()).await;
    for (view, want) in View::ALL.into_iter().zip(&whole) {
        let got = String::from_utf8(built.render(e, view, now()).to_json_pretty()).unwrap();
        assert_eq!(&got, want, "{view:?}, pieces {bounds:?}");
    }
    let instances: serde_json::Value = serde_json::from_str(&whole[0]).unwrap();
    let disagreement = instances["totals"]["disagreement_bytes"].as_u64().unwrap() > 0;
    (bounds.len() > 2, disagreement)
}

#[test]
fn any_split_into_days_merges_to_the_map_of_the_whole_range() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _in_runtime = rt.enter();
    let (e, cfg) = enricher();
    // A fixed seed: the same cases on every run (a failure is reproducible), shrunk on failure.
    let mut runner = TestRunner::new_with_rng(
        RunnerConfig {
            cases: 64,
            failure_persistence: None,
            ..RunnerConfig::default()
        },
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    // The runner takes an `Fn`: counts in cells.
    let (cut, disagreed) = (std::cell::Cell::new(0u32), std::cell::Cell::new(0u32));
    runner
        .run(&case(), |c| {
            let (was_cut, disagreement) = rt.block_on(check(&c, &e, &cfg.cost));
            cut.set(cut.get() + u32::from(was_cut));
            disagreed.set(disagreed.get() + u32::from(disagreement));
            Ok(())
        })
        .unwrap();
    let (cut, disagreed) = (cut.get(), disagreed.get());
    assert!(
        cut > 10 && disagreed > 10,
        "cut {cut}, disagreed {disagreed}"
    );
}

#[test]
fn pieces_must_be_consecutive() {
    let day0 = mapservice::day_range(first_day()).0;
    let piece = |a: i64, b: i64| RangeData {
        from: day0 + TimeDelta::days(a),
        to: day0 + TimeDelta::days(b),
        ..RangeData::default()
    };
    assert!(RangeData::merge(vec![]).is_err());
    assert!(RangeData::merge(vec![piece(0, 1), piece(2, 3)]).is_err());
    let m = RangeData::merge(vec![piece(0, 1), piece(1, 3)]).unwrap();
    assert_eq!((m.from, m.to), (piece(0, 3).from, piece(0, 3).to));
}
