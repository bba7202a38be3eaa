//! Upgrades: a store written by the previous release (schema version 1, `fixtures/store-v1`)
//! is opened by this collector, migrated in place, and answers exactly the golden maps, on
//! SQLite and on ClickHouse; so does a SQLite store of schema version 2 (`fixtures/store-v2`,
//! host health, before issue 11's container and service columns), host health included; a store written by a newer collector is refused with one clear
//! error and left untouched.
//!
//! The ClickHouse half needs a server: `cargo xtask test --only clickhouse` runs it on both
//! engines.

mod support;

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use support::{clickhouse::ClickHouse, *};
use trafficmap_collector::{
    config::Config,
    enrich::refresh::Enricher,
    mapservice,
    store::{
        Store,
        clickhouse::{ClickHouseOptions, ClickHouseStore},
        sqlite::SqliteStore,
    },
};
use trafficmap_model::{cloud::CloudSnapshot, map::View};

fn fixture() -> std::path::PathBuf {
    root().join("trafficmap-collector/tests/fixtures/store-v1")
}

fn generated_at() -> DateTime<Utc> {
    "2026-11-24T00:10:00Z".parse().unwrap()
}

/// Every view of both golden days from `store` equals its golden file.
async fn answers_golden_maps(store: &Store) {
    answers_golden_maps_of(store, false).await
}

/// `with_host`: the store kept host health (schema 2 and later), so the maps carry it.
async fn answers_golden_maps_of(store: &Store, with_host: bool) {
    let cfg = Config::from_file(&root().join("golden/enrich/collector.toml")).unwrap();
    let (e, _) = Enricher::new(&cfg.enrich).unwrap();
    let snap = std::fs::read(cfg.enrich.ec2.snapshot_file.as_ref().unwrap()).unwrap();
    e.set_cloud(CloudSnapshot::from_json(&snap).unwrap());
    for d in ["2026-11-22", "2026-11-23"] {
        let day = NaiveDate::parse_from_str(d, "%Y-%m-%d").unwrap();
        let (from, to) = mapservice::day_range(day);
        let built = mapservice::build(store, &e, &cfg.cost, from, to, generated_at())
            .await
            .unwrap();
        for v in View::ALL {
            let m = built.render(&e, v, generated_at());
            let golden: serde_json::Value = serde_json::from_slice(
                &std::fs::read(root().join("golden/maps").join(v.file_name(day))).unwrap(),
            )
            .unwrap();
            let got: serde_json::Value = serde_json::from_slice(&m.to_json_pretty()).unwrap();
            if with_host {
                assert_eq!(got, golden, "{} {d} from a migrated store", v.as_str());
                continue;
            }
            // Schema 1 stored no host health (agents of that release sent none): the migrated
            // store answers the golden maps without it, and nothing else differs.
            for n in got["nodes"].as_array().unwrap() {
                assert!(n.get("host").is_none(), "{} {d}: {n}", v.as_str());
            }
            assert_eq!(
                got,
                without_host(golden),
                "{} {d} from a migrated store differs from the golden file",
                v.as_str()
            );
        }
    }
}

fn without_host(mut map: serde_json::Value) -> serde_json::Value {
    for n in map["nodes"].as_array_mut().unwrap() {
        n.as_object_mut().unwrap().remove("host");
    }
    map
}

fn sqlite_version(path: &std::path::Path) -> i64 {
    rusqlite::Connection::open(path)
        .unwrap()
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_store_of_the_previous_release_is_migrated_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("trafficmap.db");
    std::fs::copy(fixture().join("sqlite/trafficmap.db"), &db).unwrap();
    assert_eq!(sqlite_version(&db), 1);
    let store = Store::Sqlite(Arc::new(
        SqliteStore::open(dir.path(), Default::default()).unwrap(),
    ));
    assert_eq!(
        sqlite_version(&db),
        trafficmap_collector::store::sqlite::SCHEMA_VERSION
    );
    answers_golden_maps(&store).await;
    drop(store);
    // Opening again finds nothing to do.
    let store = Store::Sqlite(Arc::new(
        SqliteStore::open(dir.path(), Default::default()).unwrap(),
    ));
    answers_golden_maps(&store).await;
}

/// Schema 2 -> 3 (issue 11): the roll-up tables are rebuilt with the container and service
/// columns in their key; every row, minute, hour and day, is kept with the same numbers.
#[tokio::test(flavor = "multi_thread")]
async fn sqlite_store_of_schema_2_is_migrated_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("trafficmap.db");
    std::fs::copy(
        root().join("trafficmap-collector/tests/fixtures/store-v2/sqlite/trafficmap.db"),
        &db,
    )
    .unwrap();
    assert_eq!(sqlite_version(&db), 2);
    // Every number of every pair table before the migration.
    let sums = |db: &std::path::Path| -> Vec<(String, i64, i64, i64, i64, i64)> {
        let c = rusqlite::Connection::open(db).unwrap();
        ["pair_minute", "pair_hour", "pair_day"]
            .iter()
            .map(|t| {
                c.query_row(
                    &format!(
                        "SELECT COUNT(*), SUM(bytes_sent), SUM(bytes_received), SUM(conns_opened), SUM(conns_carried) FROM {t}"
                    ),
                    [],
                    |r| Ok((t.to_string(), r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
                .unwrap()
            })
            .collect()
    };
    let before = sums(&db);
    // The fixture holds rows in all three tables (27 minute rows rolled into 27 hour and 24
    // day rows).
    assert_eq!(before.iter().map(|r| r.1).collect::<Vec<_>>(), [27, 27, 24]);
    let store = Store::Sqlite(Arc::new(
        SqliteStore::open(dir.path(), Default::default()).unwrap(),
    ));
    assert_eq!(sqlite_version(&db), 3);
    assert_eq!(sums(&db), before);
    // The new columns exist, empty on every old row.
    let c = rusqlite::Connection::open(&db).unwrap();
    for t in ["pair_minute", "pair_hour", "pair_day"] {
        let n: i64 = c
            .query_row(
                &format!("SELECT COUNT(*) FROM {t} WHERE container_id = '' AND container_runtime = '' AND container_name = '' AND pod = '' AND namespace = '' AND workload_kind = '' AND workload = '' AND service_ip = '' AND service_port = 0"),
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, before.iter().find(|r| r.0 == t).unwrap().1, "{t}");
    }
    // The views for people at the sqlite3 prompt read the new tables.
    let named: i64 = c
        .query_row("SELECT COUNT(*) FROM pair_day_named", [], |r| r.get(0))
        .unwrap();
    assert_eq!(named, 24);
    drop(c);
    answers_golden_maps_of(&store, true).await;
    drop(store);
    let store = Store::Sqlite(Arc::new(
        SqliteStore::open(dir.path(), Default::default()).unwrap(),
    ));
    answers_golden_maps_of(&store, true).await;
}

#[test]
fn sqlite_store_of_a_newer_collector_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("trafficmap.db");
    std::fs::copy(fixture().join("sqlite/trafficmap.db"), &db).unwrap();
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute(
            "UPDATE meta SET value = 99 WHERE key = 'schema_version'",
            [],
        )
        .unwrap();
    let before = std::fs::read(&db).unwrap();
    let err = SqliteStore::open(dir.path(), Default::default())
        .err()
        .expect("a newer schema is refused")
        .to_string();
    assert!(
        err.contains("schema version 99") && err.contains("newer collector"),
        "{err}"
    );
    assert_eq!(sqlite_version(&db), 99);
    // Nothing written to the database (its tables, its version) by the refused open.
    let after = std::fs::read(&db).unwrap();
    assert!(
        before == after,
        "the refused open changed the database file"
    );
}

/// Loads the fixture's tables (18.16's own DDL) and rows into `database`.
fn load_clickhouse_fixture(ch: &ClickHouse, database: &str) {
    ch.query(&format!("CREATE DATABASE {database}"));
    let dir = fixture().join("clickhouse");
    let mut tables: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    tables.sort();
    assert!(tables.len() >= 8, "{tables:?}");
    for ddl in tables {
        let name = ddl.file_stem().unwrap().to_string_lossy().into_owned();
        let sql = std::fs::read_to_string(&ddl)
            .unwrap()
            .replace("trafficmap.", &format!("{database}."));
        ch.query(&sql);
        let rows = std::fs::read_to_string(dir.join(format!("{name}.jsonl"))).unwrap();
        if !rows.trim().is_empty() {
            ch.query(&format!(
                "INSERT INTO {database}.{name} FORMAT JSONEachRow\n{rows}"
            ));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs ClickHouse: cargo xtask test --only clickhouse"]
async fn clickhouse_store_of_the_previous_release_is_migrated_in_place() {
    let Some(ch) = ClickHouse::start() else {
        return;
    };
    load_clickhouse_fixture(&ch, "upgraded");
    let open = || async {
        Store::ClickHouse(Arc::new(
            ClickHouseStore::open(&ClickHouseOptions {
                url: ch.url.clone(),
                database: "upgraded".into(),
                ..ClickHouseOptions::default()
            })
            .await
            .unwrap(),
        ))
    };
    let store = open().await;
    let version = ch.query("SELECT max(version) FROM upgraded.schema_version FORMAT TabSeparated");
    assert_eq!(
        version.trim(),
        trafficmap_collector::store::clickhouse::SCHEMA_VERSION.to_string()
    );
    answers_golden_maps(&store).await;
    // A second collector opening the same database (several share one) changes nothing.
    let again = open().await;
    answers_golden_maps(&again).await;
    // A newer collector's database is refused.
    ch.query("INSERT INTO upgraded.schema_version (version, applied_at) VALUES (99, 0)");
    let err = ClickHouseStore::open(&ClickHouseOptions {
        url: ch.url.clone(),
        database: "upgraded".into(),
        ..ClickHouseOptions::default()
    })
    .await
    .err()
    .expect("a newer schema is refused")
    .to_string();
    assert!(
        err.contains("schema version 99") && err.contains("newer collector"),
        "{err}"
    );
}
