//! Golden maps: the fixture reports of `golden/reports/` (one day, four agents, unmonitored EC2
//! and inventory hosts, external addresses, both-sided and one-sided conversations, an unknown
//! role, a self-scrape, loopback), enriched from `golden/enrich/`, stored in SQLite and rendered
//! in the three views, must equal `golden/maps/*.json`. `UPDATE_GOLDEN=1` rewrites them.
//!
//! The viewer's tests load the same files, so they are checked against the JSON schema too, and
//! the numbers that matter are asserted here by hand (exact bytes, one edge per conversation).

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use trafficmap_collector::{
    config::Config,
    enrich::refresh::Enricher,
    ingest::Ingest,
    mapservice,
    store::{Retention, Store, sqlite::SqliteStore},
};
use trafficmap_model::{
    cloud::CloudSnapshot,
    map::{CostKind, Map, NodeKind, ObservedBy, View},
};

mod support;

use support::{golden_reports, root};

fn day() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 23).unwrap()
}

/// The day before: fewer hosts, a dependency that is gone on the 23rd (the viewer's diff).
fn previous_day() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 22).unwrap()
}

fn generated_at() -> DateTime<Utc> {
    "2026-11-24T00:10:00Z".parse().unwrap()
}

async fn golden_store(rollup: bool) -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::Sqlite(Arc::new(
        SqliteStore::open(dir.path(), Default::default()).unwrap(),
    ));
    for r in golden_reports() {
        store
            .ingest(vec![Arc::new(Ingest::from_report(&r))], generated_at())
            .await
            .unwrap();
    }
    if rollup {
        store
            .maintain(generated_at(), Retention::default())
            .await
            .unwrap();
    }
    (store, dir)
}

fn enricher() -> (Arc<Enricher>, Config) {
    let cfg = Config::from_file(&root().join("golden/enrich/collector.toml")).unwrap();
    cfg.validate().unwrap();
    let (e, _) = Enricher::new(&cfg.enrich).unwrap();
    let snap = std::fs::read(cfg.enrich.ec2.snapshot_file.as_ref().unwrap()).unwrap();
    e.set_cloud(CloudSnapshot::from_json(&snap).unwrap());
    (e, cfg)
}

async fn build(rollup: bool) -> Vec<Map> {
    build_day(rollup, day()).await
}

async fn build_day(rollup: bool, day: NaiveDate) -> Vec<Map> {
    let (store, _dir) = golden_store(rollup).await;
    let (e, cfg) = enricher();
    let (from, to) = mapservice::day_range(day);
    let built = mapservice::build(&store, &e, &cfg.cost, from, to, generated_at())
        .await
        .unwrap();
    View::ALL
        .into_iter()
        .map(|v| built.render(&e, v, generated_at()))
        .collect()
}

fn schema_errors(map: &Map) -> Vec<String> {
    let schema: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root().join("schema/map-v1.schema.json")).unwrap())
            .unwrap();
    let v = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&map.to_json_pretty()).unwrap();
    v.iter_errors(&doc)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect()
}

#[tokio::test]
async fn golden_maps() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    for d in [previous_day(), day()] {
        for map in &build_day(true, d).await {
            check_golden(map, d, update);
        }
    }
}

fn check_golden(map: &Map, day: NaiveDate, update: bool) {
    map.validate().unwrap();
    assert_eq!(schema_errors(map), Vec::<String>::new(), "{:?}", map.view);
    let path = root().join("golden/maps").join(map.view.file_name(day));
    let text = map.to_json_pretty();
    if update {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let want = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert!(
        want == text,
        "{} differs from what the code builds now; review with UPDATE_GOLDEN=1 and git diff",
        path.display()
    );
}

/// A day served from its daily file is the map building the day gives (same `generated_at`):
/// the one shortcut of the map path answers what the path itself would.
#[tokio::test]
async fn a_daily_file_is_the_map_built_for_its_day() {
    let (store, _dir) = golden_store(true).await;
    let (e, cfg) = enricher();
    let files = tempfile::tempdir().unwrap();
    mapservice::write_day(
        &store,
        &e,
        &cfg.cost,
        files.path(),
        day(),
        generated_at(),
        None,
    )
    .await
    .unwrap();
    let source = mapservice::MapSource {
        store: &store,
        enricher: &e,
        rates: &cfg.cost,
        dir: files.path(),
    };
    let (from, to) = mapservice::day_range(day());
    for view in View::ALL {
        let file = match source
            .map(view, mapservice::Span::Day(day()), generated_at())
            .await
        {
            Ok(mapservice::Served::File(bytes)) => bytes,
            _ => panic!("{view:?}: the daily file is served"),
        };
        // Asked as the range from midnight to midnight, the day is the same question: its file.
        match source
            .map(view, mapservice::Span::Range(from, to), generated_at())
            .await
        {
            Ok(mapservice::Served::File(bytes)) => assert!(bytes == file),
            _ => panic!("{view:?}: the day's range is served from the daily file"),
        }
        // Built from the store, as every other range is: the same bytes.
        let built = mapservice::build(&store, &e, &cfg.cost, from, to, generated_at())
            .await
            .unwrap()
            .render(&e, view, generated_at())
            .to_json_pretty();
        assert!(file == built, "{view:?}: daily file and built map differ");
    }
}

/// The same maps whether the day is read from roll-ups or from minute rows.
#[tokio::test]
async fn rollups_do_not_change_the_answer() {
    assert_eq!(build(true).await, build(false).await);
}

/// The previous day: the partner API is there, batch-1 is not.
#[tokio::test]
async fn previous_day_by_hand() {
    let maps = build_day(true, previous_day()).await;
    let m = &maps[0];
    let l = link(m, "i-0a1b2c3d4e5f60719", "ip:198.51.100.7");
    assert_eq!(
        (l.bytes_to_target, l.bytes_to_source, l.observed_by),
        (30_000, 45_000, ObservedBy::Client)
    );
    assert!(m.nodes.iter().all(|n| n.id != "host:batch-1"));
    let l = link(m, "i-0a1b2c3d4e5f60718", "i-0d1b2c3d4e5f60721");
    assert_eq!(
        (l.bytes_to_target, l.bytes_to_source, l.disagreement_bytes),
        (700_000, 2_900_000, 0)
    );
}

/// Broken maps are refused by both the schema and the types.
#[tokio::test]
async fn schema_and_types_reject_the_same_breakage() {
    let maps = build(true).await;
    let good: serde_json::Value = serde_json::from_slice(&maps[0].to_json_pretty()).unwrap();
    let schema: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root().join("schema/map-v1.schema.json")).unwrap())
            .unwrap();
    let v = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap();
    type Breakage = Box<dyn Fn(&mut serde_json::Value)>;
    let breakages: Vec<Breakage> = vec![
        Box::new(|m| m["links"][0]["bytes_to_target"] = serde_json::json!(-1)),
        Box::new(|m| m["nodes"][0]["kind"] = serde_json::json!("router")),
        Box::new(|m| m["links"][0]["observed_by"] = serde_json::json!("nobody")),
        Box::new(|m| m["nodes"][0]["surprise"] = serde_json::json!(1)),
        Box::new(|m| m["view"] = serde_json::json!("pods")),
        Box::new(|m| {
            m.as_object_mut().unwrap().remove("totals");
        }),
        Box::new(|m| m["schema"] = serde_json::json!("trafficmap.map/v2")),
    ];
    for (i, b) in breakages.iter().enumerate() {
        let mut doc = good.clone();
        b(&mut doc);
        assert!(!v.is_valid(&doc), "schema accepted breakage {i}");
        assert!(
            Map::from_json(&serde_json::to_vec(&doc).unwrap()).is_err(),
            "types accepted breakage {i}"
        );
    }
}

fn node<'a>(m: &'a Map, id: &str) -> &'a trafficmap_model::map::Node {
    m.nodes
        .iter()
        .find(|n| n.id == id)
        .unwrap_or_else(|| panic!("no node {id}"))
}

fn link<'a>(m: &'a Map, s: &str, t: &str) -> &'a trafficmap_model::map::Link {
    m.links
        .iter()
        .find(|l| l.source == s && l.target == t)
        .unwrap_or_else(|| panic!("no link {s} -> {t}"))
}

#[tokio::test]
async fn instances_numbers_by_hand() {
    let maps = build(true).await;
    let m = &maps[0];
    assert_eq!(m.view, View::Instances);
    let (api1, api2, db1) = (
        "i-0a1b2c3d4e5f60718",
        "i-0a1b2c3d4e5f60719",
        "i-0d1b2c3d4e5f60721",
    );
    // api-1 -> db-1: two windows, both sides, equal counts; one edge, not two.
    let l = link(m, api1, db1);
    assert_eq!(
        (l.bytes_to_target, l.bytes_to_source),
        (1_000_003, 4_200_512)
    );
    assert_eq!(
        (l.observed_by, l.disagreement_bytes, l.connections),
        (ObservedBy::Both, 0, 2)
    );
    assert_eq!((l.cost_kind, l.cost_usd), (CostKind::SameAz, 0.0));
    assert_eq!(l.client_processes, ["api-server"]);
    assert_eq!(l.server_processes, ["postgres"]);
    // api-2 -> db-1: the server's probe dropped events; the larger count wins, the gap shows.
    let l = link(m, api2, db1);
    assert_eq!(
        (l.bytes_to_target, l.bytes_to_source, l.disagreement_bytes),
        (2_000_000, 8_000_000, 1_000)
    );
    assert_eq!(l.cost_kind, CostKind::CrossAz);
    // 10,000,000 bytes at $0.02/GiB.
    assert_eq!(l.cost_usd, 0.000186);
    // Unknown roles on both sides meet: the lower address is the client.
    let l = link(m, api1, api2);
    assert_eq!(
        (l.bytes_to_target, l.bytes_to_source, l.observed_by),
        (7_000, 21_000, ObservedBy::Both)
    );
    // Self-scrape: one self-link, both sides from the same agent.
    let l = link(m, api1, api1);
    assert_eq!(
        (l.bytes_to_target, l.bytes_to_source, l.observed_by),
        (1_200, 48_000, ObservedBy::Both)
    );
    // One-sided: unmonitored EC2 cache, external client, AWS services, on-prem legacy db.
    let cache = node(m, "i-0c1b2c3d4e5f60731");
    assert_eq!(
        (cache.kind, cache.label.as_str()),
        (NodeKind::Unmonitored, "cache-1")
    );
    assert_eq!(
        link(m, api1, "i-0c1b2c3d4e5f60731").observed_by,
        ObservedBy::Client
    );
    let l = link(m, "ip:203.0.113.50", api1);
    assert_eq!(
        (l.observed_by, l.cost_kind, l.bytes_to_source),
        (ObservedBy::Server, CostKind::Internet, 3_000_000)
    );
    assert_eq!(node(m, "ip:52.94.133.131").label, "AWS services");
    let legacy = node(m, "ip:10.9.0.40");
    assert_eq!(
        (legacy.kind, legacy.label.as_str(), legacy.env.as_deref()),
        (NodeKind::Unmonitored, "legacy-db", Some("stage"))
    );
    // Cleaned tags, inventory for the on-prem agent, prices.
    let db = node(m, db1);
    assert_eq!(
        (db.archdomain.as_deref(), db.env.as_deref()),
        (Some("online/storage/postgres"), Some("prod"))
    );
    assert_eq!(db.price_per_hour, Some(0.252));
    assert_eq!(db.health.as_ref().unwrap().probe_drops, 7);
    assert_eq!(node(m, api2).price_per_hour, Some(0.0345));
    let batch = node(m, "host:batch-1");
    assert_eq!(
        (
            batch.kind,
            batch.archdomain.as_deref(),
            batch.env.as_deref()
        ),
        (NodeKind::Host, Some("offline/batch"), Some("stage"))
    );
    // Loopback left out; the total is exactly the sum of every conversation once.
    let want: u64 = [
        1_000_003 + 4_200_512, // api-1 -> db-1
        2_000_000 + 8_000_000, // api-2 -> db-1
        50_000 + 500_000,      // batch-1 -> db-1
        80_000 + 1_500_000,    // batch-1 -> legacy-db
        50_000 + 200_000,      // api-1 -> cache-1
        25_000 + 100_000,      // api-2 -> cache-1
        250_000 + 3_000_000,   // internet -> api-1
        12_000 + 90_000,       // api-1 -> AWS services
        300 + 900,             // db-1 -> AWS DNS
        7_000 + 21_000,        // api-1 -> api-2 (unknown roles)
        1_200 + 48_000,        // api-1 self-scrape
    ]
    .iter()
    .sum();
    assert_eq!(m.totals.bytes, want);
}

#[tokio::test]
async fn clusters_sum_instances() {
    let maps = build(true).await;
    let (inst, clusters) = (&maps[0], &maps[1]);
    assert_eq!(clusters.totals.bytes, inst.totals.bytes);
    assert_eq!(
        clusters.totals.disagreement_bytes,
        inst.totals.disagreement_bytes
    );
    let api = node(clusters, "cluster:online/api|prod");
    assert_eq!(
        (api.kind, api.members, api.label.as_str()),
        (NodeKind::Cluster, 2, "online/api (prod)")
    );
    // Both api hosts' traffic to the database cluster, summed.
    let l = link(
        clusters,
        "cluster:online/api|prod",
        "cluster:online/storage/postgres|prod",
    );
    assert_eq!(
        (l.bytes_to_target, l.bytes_to_source),
        (3_000_003, 12_200_512)
    );
    assert_eq!(l.server_ports, [5432]);
    // Named from IANA's registry shipped in the binary (issue 12 item 4).
    assert_eq!(l.services, ["postgresql"]);
    // Cross-env: stage batch to prod database.
    let l = link(
        clusters,
        "cluster:offline/batch|stage",
        "cluster:online/storage/postgres|prod",
    );
    assert_eq!((l.bytes_to_target, l.bytes_to_source), (50_000, 500_000));
    // api-1 <-> api-2 and the self-scrape stay inside the api cluster.
    let l = link(
        clusters,
        "cluster:online/api|prod",
        "cluster:online/api|prod",
    );
    assert_eq!(
        l.bytes_to_target + l.bytes_to_source,
        7_000 + 21_000 + 1_200 + 48_000
    );
    assert_eq!(node(clusters, "external").members, 3);
}

/// Issue 12 item 5: host health. db-1 sent two samples on the 23rd (10:00 with load1 3.5, 14:00
/// with 1.25), api-1 one (14:00); the other agents none, and older reports stay accepted. An
/// instance node carries the last sample of the range and the largest load1; clusters and
/// security groups carry none.
#[tokio::test]
async fn host_health_by_hand() {
    use trafficmap_model::map::HostStats;
    let at = |s: &str| -> DateTime<Utc> { s.parse().unwrap() };
    let db_last = HostStats {
        sampled_at: at("2026-11-23T14:01:00Z"),
        uptime_seconds: 878_400,
        load1: 1.25,
        load5: 1.5,
        load15: 1.6,
        memory_total_bytes: 33_286_156_288,
        memory_available_bytes: 24_964_617_216,
        cpus: 4,
        load1_max: 3.5,
    };
    let api = HostStats {
        sampled_at: at("2026-11-23T14:01:00Z"),
        uptime_seconds: 4_000_000,
        load1: 0.52,
        load5: 0.41,
        load15: 0.3,
        memory_total_bytes: 8_000_000_000,
        memory_available_bytes: 6_200_000_000,
        cpus: 2,
        load1_max: 0.52,
    };
    let maps = build(true).await;
    let m = &maps[0];
    assert_eq!(node(m, "i-0d1b2c3d4e5f60721").host, Some(db_last));
    assert_eq!(node(m, "i-0a1b2c3d4e5f60718").host, Some(api));
    assert_eq!(m.nodes.iter().filter(|n| n.host.is_some()).count(), 2);
    for other in &maps[1..] {
        assert!(
            other.nodes.iter().all(|n| n.host.is_none()),
            "{:?}",
            other.view
        );
    }
    assert_eq!(db_last.memory_used_percent(), Some(25.0));
    // The day before: no report carried stats.
    let before = build_day(true, previous_day()).await;
    assert!(before[0].nodes.iter().all(|n| n.host.is_none()));
    // A range that ends before 14:00: db-1's 10:00 sample is the last, api-1 has none. Read
    // once from hour roll-ups, once from minutes (10:00 to 10:30), the same answer.
    let (store, _dir) = golden_store(true).await;
    let (e, cfg) = enricher();
    let db_ten = HostStats {
        sampled_at: at("2026-11-23T10:01:00Z"),
        uptime_seconds: 864_000,
        load1: 3.5,
        load5: 2.25,
        load15: 1.75,
        memory_available_bytes: 16_643_078_144,
        ..db_last
    };
    for (from, to) in [
        ("2026-11-23T09:00:00Z", "2026-11-23T12:00:00Z"),
        ("2026-11-23T10:00:00Z", "2026-11-23T10:30:00Z"),
    ] {
        let m = mapservice::build(&store, &e, &cfg.cost, at(from), at(to), generated_at())
            .await
            .unwrap()
            .render(&e, View::Instances, generated_at());
        assert_eq!(node(&m, "i-0d1b2c3d4e5f60721").host, Some(db_ten), "{from}");
        assert_eq!(node(&m, "i-0a1b2c3d4e5f60718").host, None, "{from}");
    }
}

/// `trafficmap-collector query hosts` on the golden store, in its three formats, exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_hosts_command() {
    let data = tempfile::tempdir().unwrap();
    {
        let store = Store::Sqlite(Arc::new(
            SqliteStore::open(data.path(), Default::default()).unwrap(),
        ));
        for r in golden_reports() {
            store
                .ingest(vec![Arc::new(Ingest::from_report(&r))], generated_at())
                .await
                .unwrap();
        }
    }
    let run = |format: &str| {
        let out = std::process::Command::new(support::bin())
            .arg("--config")
            .arg(root().join("golden/enrich/collector.toml"))
            .arg("--data-dir")
            .arg(data.path())
            .args(["query", "hosts", "--day", "2026-11-23", "--format", format])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(
        run("csv"),
        "HOST,INSTANCE,UPTIME,LOAD1,LOAD5,LOAD15,LOAD1 MAX,MEM USED %,CPUS,SAMPLED AT\n\
         api-1,i-0a1b2c3d4e5f60718,4000000,0.52,0.41,0.30,0.52,22.5,2,2026-11-23T14:01:00Z\n\
         db-1,i-0d1b2c3d4e5f60721,878400,1.25,1.50,1.60,3.50,25.0,4,2026-11-23T14:01:00Z\n"
    );
    assert_eq!(
        run("table"),
        "HOST   INSTANCE                   UPTIME  LOAD1  LOAD5  LOAD15  LOAD1 MAX  MEM USED %  CPUS  SAMPLED AT\n\
         api-1  i-0a1b2c3d4e5f60718  46d 07:06:40   0.52   0.41    0.30       0.52        22.5     2  2026-11-23T14:01:00Z\n\
         db-1   i-0d1b2c3d4e5f60721  10d 04:00:00   1.25   1.50    1.60       3.50        25.0     4  2026-11-23T14:01:00Z\n"
    );
    let json: serde_json::Value = serde_json::from_str(&run("json")).unwrap();
    assert_eq!(
        json,
        serde_json::json!([
            {
                "host": "api-1", "instance_id": "i-0a1b2c3d4e5f60718", "uptime_seconds": 4_000_000,
                "load1": 0.52, "load5": 0.41, "load15": 0.3, "load1_max": 0.52,
                "memory_used_percent": 22.5, "memory_total_bytes": 8_000_000_000u64,
                "memory_available_bytes": 6_200_000_000u64, "cpus": 2,
                "sampled_at": "2026-11-23T14:01:00Z"
            },
            {
                "host": "db-1", "instance_id": "i-0d1b2c3d4e5f60721", "uptime_seconds": 878_400,
                "load1": 1.25, "load5": 1.5, "load15": 1.6, "load1_max": 3.5,
                "memory_used_percent": 25.0, "memory_total_bytes": 33_286_156_288u64,
                "memory_available_bytes": 24_964_617_216u64, "cpus": 4,
                "sampled_at": "2026-11-23T14:01:00Z"
            }
        ])
    );
}

/// Issue 11: a golden report set with containers and Service addresses
/// (`golden/containers/reports/`: the golden reports with every other pair in a Kubernetes
/// container, every third client pair through a Service, and a sidecar twin of each report's
/// first pair; `support::container_reports` made them) and its instances and workloads maps
/// (`golden/containers/maps/`). `UPDATE_GOLDEN=1` rewrites the maps (and the reports, from
/// `support::container_reports`).
#[tokio::test]
async fn golden_container_maps() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let dir = root().join("golden/containers");
    if update {
        std::fs::create_dir_all(dir.join("reports")).unwrap();
        std::fs::create_dir_all(dir.join("maps")).unwrap();
        for (i, r) in support::container_reports().iter().enumerate() {
            let mut text = serde_json::to_vec_pretty(r).unwrap();
            text.push(b'\n');
            std::fs::write(dir.join(format!("reports/{i:02}.json")), text).unwrap();
        }
    }
    let mut files: Vec<_> = std::fs::read_dir(dir.join("reports"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 9, "golden/containers/reports");
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::Sqlite(Arc::new(
        SqliteStore::open(store_dir.path(), Default::default()).unwrap(),
    ));
    for f in &files {
        let r = trafficmap_model::report::Report::from_json(&std::fs::read(f).unwrap()).unwrap();
        store
            .ingest(vec![Arc::new(Ingest::from_report(&r))], generated_at())
            .await
            .unwrap();
    }
    store
        .maintain(generated_at(), Retention::default())
        .await
        .unwrap();
    let (e, cfg) = enricher();
    let (from, to) = mapservice::day_range(day());
    let built = mapservice::build(&store, &e, &cfg.cost, from, to, generated_at())
        .await
        .unwrap();
    for view in [View::Instances, View::Workloads] {
        let map = built.render(&e, view, generated_at());
        map.validate().unwrap();
        assert_eq!(schema_errors(&map), Vec::<String>::new(), "{view:?}");
        let path = dir.join("maps").join(view.file_name(day()));
        let text = map.to_json_pretty();
        if update {
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        let want = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
        assert!(
            want == text,
            "{} differs from what the code builds now; review with UPDATE_GOLDEN=1 and git diff",
            path.display()
        );
    }
    // By hand: api-server's pods reach postgres through the Service 10.96.0.40:5432; the two
    // ends of each conversation merged into one link that keeps the Service address.
    let w = built.render(&e, View::Workloads, generated_at());
    let l = link(&w, "workload:shop/api-server", "workload:shop/postgres");
    assert_eq!(l.service_addresses, ["10.96.0.40:5432"]);
    assert_eq!(l.observed_by, ObservedBy::Both);
    let n = node(&w, "workload:shop/postgres");
    assert_eq!(n.kind, NodeKind::Workload);
    assert_eq!(n.namespace.as_deref(), Some("shop"));
    // Every byte of the instances view is on the workloads view: same conversations, grouped
    // otherwise.
    let i = built.render(&e, View::Instances, generated_at());
    assert_eq!(
        (w.totals.bytes, w.totals.connections),
        (i.totals.bytes, i.totals.connections)
    );
}
