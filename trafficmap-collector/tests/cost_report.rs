//! Cost reports (`report costs`, `costreport::build`) of the golden fleet (`golden/`): its
//! reports in SQLite, enriched from `golden/enrich/` (prices.csv for on-demand, the snapshot's
//! spot history for the spot instance), with exact dollar amounts for every dimension, in text
//! and JSON, from the library and from the command line.
//!
//! The fleet on 2026-11-23: api-1 m5.large on-demand $0.096, api-2 m5.large spot $0.0345,
//! db-1 r5.xlarge $0.252, cache-1 r6g.large $0.1008 (all prod), and two stage hosts without a
//! price (batch-1, an agent outside EC2; an inventory host in dc1).

use std::{process::Command, sync::Arc};

use chrono::{DateTime, NaiveDate, Utc};
use trafficmap_collector::{
    config::Config,
    costreport::{self, Dimension},
    enrich::refresh::Enricher,
    ingest::Ingest,
    mapservice,
    store::{Store, sqlite::SqliteStore},
};
use trafficmap_model::{
    cloud::CloudSnapshot,
    map::{Map, View},
};

mod support;

use support::{bin, golden_reports, root};

fn day() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 23).unwrap()
}

fn generated_at() -> DateTime<Utc> {
    "2026-11-24T00:10:00Z".parse().unwrap()
}

/// The golden reports in an SQLite store in `dir` (closed on return).
async fn golden_store(dir: &std::path::Path) {
    let store = Store::Sqlite(Arc::new(
        SqliteStore::open(dir, Default::default()).unwrap(),
    ));
    for r in golden_reports() {
        store
            .ingest(vec![Arc::new(Ingest::from_report(&r))], generated_at())
            .await
            .unwrap();
    }
}

async fn golden_instances_map() -> Map {
    let dir = tempfile::tempdir().unwrap();
    golden_store(dir.path()).await;
    let store = Store::Sqlite(Arc::new(
        SqliteStore::open(dir.path(), Default::default()).unwrap(),
    ));
    let cfg = Config::from_file(&root().join("golden/enrich/collector.toml")).unwrap();
    let (e, _) = Enricher::new(&cfg.enrich).unwrap();
    let snap = std::fs::read(cfg.enrich.ec2.snapshot_file.as_ref().unwrap()).unwrap();
    e.set_cloud(CloudSnapshot::from_json(&snap).unwrap());
    let (from, to) = mapservice::day_range(day());
    let built = mapservice::build(&store, &e, &cfg.cost, from, to, generated_at())
        .await
        .unwrap();
    built.render(&e, View::Instances, generated_at())
}

/// `[key, instances, no_price, usd_per_hour, usd_per_year]` of a row, as JSON.
fn row(r: &serde_json::Value) -> serde_json::Value {
    serde_json::json!([
        r["key"],
        r["instances"],
        r["no_price"],
        r["usd_per_hour"],
        r["usd_per_year"]
    ])
}

/// Every dimension's rows, exact: $/year = $/hour x 8760 to the micro-dollar.
fn check_json(report: &serde_json::Value) {
    use serde_json::json;
    assert_eq!(report["hours_per_year"], 8760);
    assert_eq!(
        row(&report["total"]),
        json!(["total", 6, 2, 0.4833, 4233.708])
    );
    let rows = |v: &serde_json::Value| -> Vec<serde_json::Value> {
        v.as_array().unwrap().iter().map(row).collect()
    };
    assert_eq!(
        rows(&report["by_source"]),
        [
            json!(["price-table", 3, 0, 0.4488, 3931.488]),
            json!(["spot-history", 1, 0, 0.0345, 302.22]),
        ]
    );
    let dims: Vec<(String, Vec<serde_json::Value>)> = report["dimensions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["dimension"].as_str().unwrap().to_owned(),
                rows(&d["rows"]),
            )
        })
        .collect();
    let want = |d: &str, r: Vec<serde_json::Value>| (d.to_owned(), r);
    assert_eq!(
        dims,
        [
            want(
                "env",
                vec![
                    json!(["prod", 4, 0, 0.4833, 4233.708]),
                    json!(["stage", 2, 2, null, null]),
                ]
            ),
            want(
                "archdomain",
                vec![
                    json!(["online/storage/postgres", 1, 0, 0.252, 2207.52]),
                    json!(["online/api", 2, 0, 0.1305, 1143.18]),
                    json!(["online/cache", 1, 0, 0.1008, 883.008]),
                    json!(["offline/batch", 1, 1, null, null]),
                    json!(["offline/storage", 1, 1, null, null]),
                ]
            ),
            want(
                "cluster",
                vec![
                    json!(["online/storage/postgres (prod)", 1, 0, 0.252, 2207.52]),
                    json!(["online/api (prod)", 2, 0, 0.1305, 1143.18]),
                    json!(["online/cache (prod)", 1, 0, 0.1008, 883.008]),
                    json!(["offline/batch (stage)", 1, 1, null, null]),
                    json!(["offline/storage (stage)", 1, 1, null, null]),
                ]
            ),
            want(
                "instance-type",
                vec![
                    json!(["r5.xlarge", 1, 0, 0.252, 2207.52]),
                    json!(["m5.large", 2, 0, 0.1305, 1143.18]),
                    json!(["r6g.large", 1, 0, 0.1008, 883.008]),
                    json!(["(none)", 2, 2, null, null]),
                ]
            ),
            want(
                "lifecycle",
                vec![
                    json!(["on-demand", 3, 0, 0.4488, 3931.488]),
                    json!(["spot", 1, 0, 0.0345, 302.22]),
                    json!(["(none)", 2, 2, null, null]),
                ]
            ),
        ]
    );
    let unpriced: Vec<&str> = report["unpriced"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap())
        .collect();
    assert_eq!(unpriced, ["host:batch-1", "ip:10.9.0.40"]);
}

#[tokio::test]
async fn golden_fleet_costs_json() {
    let map = golden_instances_map().await;
    let report = costreport::build(&map, &Dimension::ALL);
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    check_json(&json);
    assert_eq!(json["warnings"], serde_json::json!([]));
}

#[tokio::test]
async fn golden_fleet_costs_text() {
    let map = golden_instances_map().await;
    let text = costreport::build(&map, &[Dimension::Env, Dimension::InstanceType]).to_text();
    let want = "\
Instance costs, 2026-11-23 00:00 UTC .. 2026-11-24 00:00 UTC
$/year = $/hour x 8760 (the day's price all year round).
Total: 6 instances, 4 priced: $0.4833/hour, $4,233.71/year; no price: 2 instances.

By price source:
SOURCE        INSTANCES  NO PRICE  $/HOUR    $/YEAR
price-table           3         0  0.4488  3,931.49
spot-history          1         0  0.0345    302.22

By env:
ENV    INSTANCES  NO PRICE  $/HOUR    $/YEAR
prod           4         0  0.4833  4,233.71
stage          2         2       -         -

By instance-type:
INSTANCE TYPE  INSTANCES  NO PRICE  $/HOUR    $/YEAR
r5.xlarge              1         0  0.2520  2,207.52
m5.large               2         0  0.1305  1,143.18
r6g.large              1         0  0.1008    883.01
(none)                 2         2       -         -

No price (2 instances):
  batch-1 (host:batch-1): no instance type, no lifecycle
  legacy-db (ip:10.9.0.40): no instance type, no lifecycle
";
    assert_eq!(text, want);
}

/// The command line builds the day through the same path as `export` and `query`, and prints
/// the same report; CSV has one row per group with plain numbers.
#[tokio::test]
async fn cli_report_costs() {
    let dir = tempfile::tempdir().unwrap();
    golden_store(dir.path()).await;
    let run = |args: &[&str]| {
        let out = Command::new(bin())
            .args(["--config"])
            .arg(root().join("golden/enrich/collector.toml"))
            .arg("--data-dir")
            .arg(dir.path())
            .args(["report", "costs", "--day", "2026-11-23", "--quiet"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let json: serde_json::Value = serde_json::from_str(&run(&["--format", "json"])).unwrap();
    check_json(&json);
    let csv = run(&["--format", "csv", "--by", "lifecycle"]);
    assert_eq!(
        csv,
        "dimension,key,instances,no_price,usd_per_hour,usd_per_year\n\
         total,total,6,2,0.4833,4233.708\n\
         price-source,price-table,3,0,0.4488,3931.488\n\
         price-source,spot-history,1,0,0.0345,302.22\n\
         lifecycle,on-demand,3,0,0.4488,3931.488\n\
         lifecycle,spot,1,0,0.0345,302.22\n\
         lifecycle,(none),2,2,,\n"
    );
    let html = run(&["--format", "html", "--by", "env"]);
    assert!(
        html.contains("<tr><td>prod</td><td style=\"text-align:right\">4</td><td style=\"text-align:right\">0</td><td style=\"text-align:right\">0.4833</td><td style=\"text-align:right\">4,233.71</td></tr>"),
        "{html}"
    );
}
