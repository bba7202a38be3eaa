//! The embedded store: one SQLite database (`<data-dir>/trafficmap.db`, WAL).
//!
//! Schema (documented in `docs/collector.md`):
//! - `pair_minute`: append-only observation rows, one per report pair, keyed by the minute the
//!   report's window started in. Its `rowid` orders arrivals.
//! - `pair_hour`, `pair_day`: the same keys summed per hour and per day. Roll-up is
//!   incremental: every minute row with a `rowid` above the `rollup_watermark` (table `meta`) is
//!   added to both, in one transaction with the new watermark. A late report thus lands in the
//!   right hour and day whenever it arrives, and a reader adds the not-yet-rolled rows itself
//!   (same snapshot), so answers never depend on when the roll-up ran.
//! - `reports`: one row per stored report id; the idempotency check and per-report health.
//! - `agents_day`, `agent_addresses`: each agent's identity and addresses per day (addresses
//!   move between hosts over time; a past day is mapped with that day's).
//! - `cloud_snapshots`: the last EC2 snapshot of each day.
//! - `host_minute`, `host_hour`, `host_day` (issue 12 item 5): each agent's host health per
//!   period: the last sample (by `sampled_ms`, the end of the report's window) and the largest
//!   1-minute load. Written to all three at ingest (last and max need no watermark: applying a
//!   sample twice changes nothing), kept as long as the `pair_*` table of the same grain.
//!
//! One writer connection behind a mutex (ingest batches, roll-up, retention); readers open their
//! own connections and read in one transaction, so they see one consistent snapshot.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
};

use chrono::{DateTime, NaiveDate, Utc};
use rusqlite::{Connection, OpenFlags, OptionalExtension as _, params};
use trafficmap_model::bounds::sat_add;

use super::{Grain, Maintenance, Outcome, Result, Retention, StoreError, day_start, plan};
use crate::{
    ingest::Ingest,
    period::{DAY, HOUR, floor},
    range::{Counters, RangeBuilder, RangeData},
};

/// A roll-up table (`pair_hour`, `pair_day`): one row per period and key. The key holds the
/// container and service columns (issue 11; `''` and 0 when the pair had none: SQLite treats
/// NULLs in a key as distinct, which would break the upsert).
macro_rules! rollup_table {
    ($name:literal) => {
        concat!(
            "CREATE TABLE IF NOT EXISTS ",
            $name,
            " (
    period          INTEGER NOT NULL,
    observer        INTEGER NOT NULL,
    local_ip        TEXT NOT NULL,
    peer_ip         TEXT NOT NULL,
    server_port     INTEGER NOT NULL,
    role            INTEGER NOT NULL,
    process         INTEGER NOT NULL,
    bytes_sent      INTEGER NOT NULL,
    bytes_received  INTEGER NOT NULL,
    conns_opened    INTEGER NOT NULL,
    conns_carried   INTEGER NOT NULL,
    first_window_ms INTEGER NOT NULL,
    first_seen_ms   INTEGER NOT NULL,
    last_seen_ms    INTEGER NOT NULL,
    container_id      TEXT NOT NULL DEFAULT '',
    container_runtime TEXT NOT NULL DEFAULT '',
    container_name    TEXT NOT NULL DEFAULT '',
    pod               TEXT NOT NULL DEFAULT '',
    namespace         TEXT NOT NULL DEFAULT '',
    workload_kind     TEXT NOT NULL DEFAULT '',
    workload          TEXT NOT NULL DEFAULT '',
    service_ip        TEXT NOT NULL DEFAULT '',
    service_port      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (period, observer, local_ip, peer_ip, server_port, role, process, container_id, container_runtime, container_name, pod, namespace, workload_kind, workload, service_ip, service_port)
) WITHOUT ROWID;
"
        )
    };
}

/// The same rows with names, for people at the sqlite3 prompt.
macro_rules! pair_views {
    () => {
        "
CREATE VIEW IF NOT EXISTS pair_minute_named AS
    SELECT minute, o.name AS observer, local_ip, peer_ip, server_port,
           CASE role WHEN 0 THEN 'client' WHEN 1 THEN 'server' ELSE 'unknown' END AS role,
           p.name AS process, bytes_sent, bytes_received, conns_opened, conns_carried,
           first_window_ms, first_seen_ms, last_seen_ms, container_id, container_runtime,
           container_name, pod, namespace, workload_kind, workload, service_ip, service_port
    FROM pair_minute JOIN names o ON o.id = observer JOIN names p ON p.id = process;
CREATE VIEW IF NOT EXISTS pair_hour_named AS
    SELECT period, o.name AS observer, local_ip, peer_ip, server_port,
           CASE role WHEN 0 THEN 'client' WHEN 1 THEN 'server' ELSE 'unknown' END AS role,
           p.name AS process, bytes_sent, bytes_received, conns_opened, conns_carried,
           first_window_ms, first_seen_ms, last_seen_ms, container_id, container_runtime,
           container_name, pod, namespace, workload_kind, workload, service_ip, service_port
    FROM pair_hour JOIN names o ON o.id = observer JOIN names p ON p.id = process;
CREATE VIEW IF NOT EXISTS pair_day_named AS
    SELECT period, o.name AS observer, local_ip, peer_ip, server_port,
           CASE role WHEN 0 THEN 'client' WHEN 1 THEN 'server' ELSE 'unknown' END AS role,
           p.name AS process, bytes_sent, bytes_received, conns_opened, conns_carried,
           first_window_ms, first_seen_ms, last_seen_ms, container_id, container_runtime,
           container_name, pod, namespace, workload_kind, workload, service_ip, service_port
    FROM pair_day JOIN names o ON o.id = observer JOIN names p ON p.id = process;
"
    };
}

/// The database's schema version (table `meta`). 1: 0.1.0. 2: the host-health tables. 3: the
/// container and service columns of the `pair_*` tables (issue 11), part of the roll-up key.
/// A collector opens databases of every earlier version and migrates them in place; it refuses
/// a newer one (written by a newer collector) without writing to it.
pub const SCHEMA_VERSION: i64 = 3;
/// What turns version N into N+1 beyond the `IF NOT EXISTS` tables of `SCHEMA`, which appear on
/// their own: (N, statements). Each step runs in one transaction with its version bump.
const MIGRATIONS: &[(i64, &str)] = &[
    // 1 -> 2: new tables only (host_minute, host_hour, host_day).
    (1, ""),
    // 2 -> 3: the container and service columns (issue 11); every existing row has neither.
    // The roll-up tables' primary key grows, which SQLite cannot alter: they are copied into
    // new tables (the views that read them are dropped first and made again).
    (
        2,
        concat!(
            "DROP VIEW IF EXISTS pair_minute_named;
            DROP VIEW IF EXISTS pair_hour_named;
            DROP VIEW IF EXISTS pair_day_named;
            ALTER TABLE pair_minute ADD COLUMN container_id TEXT NOT NULL DEFAULT '';
            ALTER TABLE pair_minute ADD COLUMN container_runtime TEXT NOT NULL DEFAULT '';
            ALTER TABLE pair_minute ADD COLUMN container_name TEXT NOT NULL DEFAULT '';
            ALTER TABLE pair_minute ADD COLUMN pod TEXT NOT NULL DEFAULT '';
            ALTER TABLE pair_minute ADD COLUMN namespace TEXT NOT NULL DEFAULT '';
            ALTER TABLE pair_minute ADD COLUMN workload_kind TEXT NOT NULL DEFAULT '';
            ALTER TABLE pair_minute ADD COLUMN workload TEXT NOT NULL DEFAULT '';
            ALTER TABLE pair_minute ADD COLUMN service_ip TEXT NOT NULL DEFAULT '';
            ALTER TABLE pair_minute ADD COLUMN service_port INTEGER NOT NULL DEFAULT 0;",
            rollup_table!("pair_hour_v3"),
            "INSERT INTO pair_hour_v3 (period, observer, local_ip, peer_ip, server_port, role, process, bytes_sent, bytes_received, conns_opened, conns_carried, first_window_ms, first_seen_ms, last_seen_ms)
                SELECT period, observer, local_ip, peer_ip, server_port, role, process, bytes_sent, bytes_received, conns_opened, conns_carried, first_window_ms, first_seen_ms, last_seen_ms FROM pair_hour;
            DROP TABLE pair_hour;
            ALTER TABLE pair_hour_v3 RENAME TO pair_hour;",
            rollup_table!("pair_day_v3"),
            "INSERT INTO pair_day_v3 (period, observer, local_ip, peer_ip, server_port, role, process, bytes_sent, bytes_received, conns_opened, conns_carried, first_window_ms, first_seen_ms, last_seen_ms)
                SELECT period, observer, local_ip, peer_ip, server_port, role, process, bytes_sent, bytes_received, conns_opened, conns_carried, first_window_ms, first_seen_ms, last_seen_ms FROM pair_day;
            DROP TABLE pair_day;
            ALTER TABLE pair_day_v3 RENAME TO pair_day;",
            pair_views!(),
        ),
    ),
];
/// Minute rows folded per roll-up transaction (bounds memory and how long ingest waits).
const ROLLUP_CHUNK: i64 = 100_000;
/// Rows deleted per retention transaction.
const DELETE_CHUNK: i64 = 50_000;
/// Names (per kind) the writer keeps the ids of; when full it forgets them all and looks
/// them up again as they come. (A forgetful map rather than an LRU crate: a miss costs one
/// indexed look-up, and agents' names repeat from one minute to the next.)
const NAME_CACHE: usize = 100_000;

const SCHEMA: &str = concat!(
    r"
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS reports (
    report_id       TEXT PRIMARY KEY,
    machine_id      TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    window_start_ms INTEGER NOT NULL,
    window_end_ms   INTEGER NOT NULL,
    received_ms     INTEGER NOT NULL,
    pairs           INTEGER NOT NULL,
    probe_drops     INTEGER NOT NULL,
    spool_dropped   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS reports_window ON reports (window_start_ms);

CREATE TABLE IF NOT EXISTS agents_day (
    day              INTEGER NOT NULL,
    machine_id       TEXT NOT NULL,
    hostname         TEXT NOT NULL,
    ec2              TEXT,
    agent_version    TEXT NOT NULL,
    backend          TEXT NOT NULL,
    kernel           TEXT NOT NULL,
    reports          INTEGER NOT NULL,
    probe_drops      INTEGER NOT NULL,
    spool_dropped    INTEGER NOT NULL,
    first_window_ms  INTEGER NOT NULL,
    last_window_ms   INTEGER NOT NULL,
    last_received_ms INTEGER NOT NULL,
    PRIMARY KEY (day, machine_id)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS agent_addresses (
    day        INTEGER NOT NULL,
    machine_id TEXT NOT NULL,
    address    TEXT NOT NULL,
    PRIMARY KEY (day, machine_id, address)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS names (
    id   INTEGER PRIMARY KEY,
    kind INTEGER NOT NULL,
    name TEXT NOT NULL,
    UNIQUE (kind, name)
);

CREATE TABLE IF NOT EXISTS pair_minute (
    minute          INTEGER NOT NULL,
    observer        INTEGER NOT NULL,
    local_ip        TEXT NOT NULL,
    peer_ip         TEXT NOT NULL,
    server_port     INTEGER NOT NULL,
    role            INTEGER NOT NULL,
    process         INTEGER NOT NULL,
    bytes_sent      INTEGER NOT NULL,
    bytes_received  INTEGER NOT NULL,
    conns_opened    INTEGER NOT NULL,
    conns_carried   INTEGER NOT NULL,
    first_window_ms INTEGER NOT NULL,
    first_seen_ms   INTEGER NOT NULL,
    last_seen_ms    INTEGER NOT NULL,
    container_id      TEXT NOT NULL DEFAULT '',
    container_runtime TEXT NOT NULL DEFAULT '',
    container_name    TEXT NOT NULL DEFAULT '',
    pod               TEXT NOT NULL DEFAULT '',
    namespace         TEXT NOT NULL DEFAULT '',
    workload_kind     TEXT NOT NULL DEFAULT '',
    workload          TEXT NOT NULL DEFAULT '',
    service_ip        TEXT NOT NULL DEFAULT '',
    service_port      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS pair_minute_minute ON pair_minute (minute);

",
    rollup_table!("pair_hour"),
    rollup_table!("pair_day"),
    pair_views!(),
    r"
CREATE TABLE IF NOT EXISTS cloud_snapshots (
    day      INTEGER PRIMARY KEY,
    taken_ms INTEGER NOT NULL,
    body     BLOB NOT NULL
);
"
);

/// The host-health tables by grain, and the columns after `period, machine_id`.
const HOST_TABLES: [(Grain, &str); 3] = [
    (Grain::Minute, "host_minute"),
    (Grain::Hour, "host_hour"),
    (Grain::Day, "host_day"),
];
/// The columns after `period, machine_id`, with their types.
const HOST_COLUMNS: [(&str, &str); 9] = [
    ("sampled_ms", "INTEGER"),
    ("uptime_seconds", "INTEGER"),
    ("load1", "REAL"),
    ("load5", "REAL"),
    ("load15", "REAL"),
    ("memory_total_bytes", "INTEGER"),
    ("memory_available_bytes", "INTEGER"),
    ("cpus", "INTEGER"),
    ("load1_max", "REAL"),
];

fn host_column_names() -> String {
    HOST_COLUMNS.map(|(c, _)| c).join(", ")
}

/// The host-health tables (issue 12 item 5): per agent and period, the last sample and the
/// largest load1. One definition for the three grains.
fn host_tables_ddl() -> String {
    let cols: String = HOST_COLUMNS
        .iter()
        .map(|(c, t)| format!("    {c} {t} NOT NULL,\n"))
        .collect();
    HOST_TABLES
        .iter()
        .map(|(_, table)| {
            format!(
                "CREATE TABLE IF NOT EXISTS {table} (\n    period INTEGER NOT NULL,\n    machine_id TEXT NOT NULL,\n{cols}    PRIMARY KEY (period, machine_id)\n) WITHOUT ROWID;\n"
            )
        })
        .collect()
}

/// The upsert of a host sample into one host table: the later sample's values win (on a tie
/// the one stored last), `load1_max` is the largest.
fn host_upsert(table: &str) -> String {
    let sets: Vec<String> = HOST_COLUMNS[..8]
        .iter()
        .map(|(c, _)| {
            format!(
                "{c} = CASE WHEN excluded.sampled_ms >= sampled_ms THEN excluded.{c} ELSE {c} END"
            )
        })
        .collect();
    format!(
        "INSERT INTO {table} (period, machine_id, {cols}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT (period, machine_id) DO UPDATE SET {sets}, load1_max = MAX(load1_max, excluded.load1_max)",
        cols = host_column_names(),
        sets = sets.join(", "),
    )
}

/// A host sample from `machine_id, sampled_ms, ...` at column `at`.
fn host_row(
    r: &rusqlite::Row<'_>,
    at: usize,
) -> rusqlite::Result<trafficmap_model::map::HostStats> {
    Ok(trafficmap_model::map::HostStats {
        sampled_at: crate::period::from_ms(r.get(at)?),
        uptime_seconds: u(r.get(at + 1)?),
        load1: r.get(at + 2)?,
        load5: r.get(at + 3)?,
        load15: r.get(at + 4)?,
        memory_total_bytes: u(r.get(at + 5)?),
        memory_available_bytes: u(r.get(at + 6)?),
        cpus: u32::try_from(r.get::<_, i64>(at + 7)?).unwrap_or(0),
        load1_max: r.get(at + 8)?,
    })
}

const COLUMNS: &str = "observer, local_ip, peer_ip, server_port, role, process, bytes_sent, bytes_received, conns_opened, conns_carried, first_window_ms, first_seen_ms, last_seen_ms, container_id, container_runtime, container_name, pod, namespace, workload_kind, workload, service_ip, service_port";
/// The key columns of a roll-up row (its primary key after `period`).
const KEY_COLUMNS: &str = "observer, local_ip, peer_ip, server_port, role, process, container_id, container_runtime, container_name, pod, namespace, workload_kind, workload, service_ip, service_port";
/// Where the container columns start in [`COLUMNS`].
const IDENT_AT: usize = 13;

/// The container and service columns of a row (issue 11), as stored: `''` and 0 for none.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
struct IdentText {
    container_id: String,
    runtime: String,
    name: String,
    pod: String,
    namespace: String,
    workload_kind: String,
    workload: String,
    service_ip: String,
    service_port: i64,
}

impl IdentText {
    fn of(c: Option<&trafficmap_model::report::Container>, svc: Option<(IpAddr, u16)>) -> Self {
        let text = |v: &Option<String>| v.clone().unwrap_or_default();
        let mut t = IdentText::default();
        if let Some(c) = c {
            t.container_id = c.id.clone();
            t.runtime = c.runtime.as_str().to_owned();
            t.name = text(&c.name);
            t.pod = text(&c.pod);
            t.namespace = text(&c.namespace);
            t.workload_kind = text(&c.workload_kind);
            t.workload = text(&c.workload);
        }
        if let Some((ip, port)) = svc {
            t.service_ip = ip.to_string();
            t.service_port = i64::from(port);
        }
        t
    }

    fn read(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Self> {
        Ok(IdentText {
            container_id: r.get(at)?,
            runtime: r.get(at + 1)?,
            name: r.get(at + 2)?,
            pod: r.get(at + 3)?,
            namespace: r.get(at + 4)?,
            workload_kind: r.get(at + 5)?,
            workload: r.get(at + 6)?,
            service_ip: r.get(at + 7)?,
            service_port: r.get(at + 8)?,
        })
    }
}

/// A container runtime from its stored name.
fn runtime_of(s: &str) -> Option<trafficmap_model::report::ContainerRuntime> {
    use trafficmap_model::report::ContainerRuntime as R;
    [R::Docker, R::Containerd, R::CriO, R::Podman, R::Oci]
        .into_iter()
        .find(|r| r.as_str() == s)
}

/// The container and service of a stored row, interned into the range being built. The
/// stored text is checked as a report's would be: a corrupt row is an error, not a panic.
fn read_ident(
    b: &mut RangeBuilder,
    r: &rusqlite::Row<'_>,
    at: usize,
) -> Result<crate::range::Ident> {
    let mut ident = crate::range::Ident::default();
    let id = r.get_ref(at)?.as_str().map_err(rusqlite::Error::from)?;
    if !id.is_empty() {
        let t = IdentText::read(r, at)?;
        let opt = |v: String| (!v.is_empty()).then_some(v);
        let c = trafficmap_model::report::Container {
            id: t.container_id,
            runtime: runtime_of(&t.runtime).ok_or_else(|| bad("container runtime", &t.runtime))?,
            name: opt(t.name),
            pod: opt(t.pod),
            namespace: opt(t.namespace),
            workload_kind: opt(t.workload_kind),
            workload: opt(t.workload),
        };
        c.check().map_err(|e| bad("container", &e.to_string()))?;
        ident.container = Some(b.container(&c));
    }
    let svc = r.get_ref(at + 7)?.as_str().map_err(rusqlite::Error::from)?;
    if !svc.is_empty() {
        let ip = b.ip(svc).ok_or_else(|| bad("service address", svc))?;
        let port: i64 = r.get(at + 8)?;
        let port = u16::try_from(port).map_err(|_| bad("service port", &port.to_string()))?;
        ident.service = Some((ip, port));
    }
    Ok(ident)
}

/// How hard SQLite syncs: `full` survives power loss, `normal` only process crashes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sync {
    #[default]
    Full,
    Normal,
}

/// The mutexes are taken back after a panic elsewhere (`PoisonError::into_inner`): the
/// writer's open transaction rolled back when it unwound, and its name cache only learns
/// committed ids, so the state is sound; refusing it would answer 503 until a restart.
pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<Writer>,
    readers: Mutex<Vec<Connection>>,
}

/// The writer connection and the ids of names it has seen committed.
struct Writer {
    conn: Connection,
    /// Per kind ([`OBSERVER`], [`PROCESS`]): name -> id in `names`.
    names: [HashMap<String, i64>; 2],
}

/// `names.kind` of agents' machine ids and of process names. Rows refer to names by id:
/// a machine id is 32 characters, repeated on every row otherwise.
const OBSERVER: usize = 0;
const PROCESS: usize = 1;

fn role_code(r: trafficmap_model::report::Role) -> i64 {
    use trafficmap_model::report::Role;
    match r {
        Role::Client => 0,
        Role::Server => 1,
        Role::Unknown => 2,
    }
}

fn role_of(code: i64) -> Option<trafficmap_model::report::Role> {
    use trafficmap_model::report::Role;
    match code {
        0 => Some(Role::Client),
        1 => Some(Role::Server),
        2 => Some(Role::Unknown),
        _ => None,
    }
}

/// The id of a name, creating it in the transaction if needed. New ids are collected in
/// `fresh` and only enter the cache once the transaction commits.
fn name_id(
    tx: &rusqlite::Transaction<'_>,
    cache: &[HashMap<String, i64>; 2],
    fresh: &mut [HashMap<String, i64>; 2],
    kind: usize,
    name: &str,
) -> Result<i64> {
    if let Some(id) = cache[kind].get(name).or_else(|| fresh[kind].get(name)) {
        return Ok(*id);
    }
    tx.prepare_cached(
        "INSERT INTO names (kind, name) VALUES (?1, ?2) ON CONFLICT (kind, name) DO NOTHING",
    )?
    .execute(params![kind as i64, name])?;
    let id: i64 = tx
        .prepare_cached("SELECT id FROM names WHERE kind = ?1 AND name = ?2")?
        .query_row(params![kind as i64, name], |r| r.get(0))?;
    fresh[kind].insert(name.to_owned(), id);
    Ok(id)
}

fn i(v: u64) -> i64 {
    // Counters above i64::MAX would need 9.2 EB in a minute; clamp rather than wrap.
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// SQL for `a + b` of two non-negative integers, stopping at `i64::MAX`. SQLite turns an
/// integer `+` that overflows into a REAL, which then breaks every read of the column (review
/// finding 3); `MIN(a + b, ...)` would be too late. `MAX - b` cannot overflow for `b >= 0`.
/// A REAL left by an older collector compares above the limit and is replaced by it.
fn sat_sum(a: &str, b: &str) -> String {
    format!("CASE WHEN {a} > 9223372036854775807 - {b} THEN 9223372036854775807 ELSE {a} + {b} END")
}

/// A counter column as a `u64`: an INTEGER as it is; a REAL (only an older collector's
/// overflowed sum holds one) saturated, so that such a store still answers.
fn counter(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<u64> {
    use rusqlite::types::ValueRef;
    match r.get_ref(at)? {
        ValueRef::Integer(v) => Ok(u(v)),
        // `as` saturates (NaN is 0).
        ValueRef::Real(v) => Ok((v as u64).min(trafficmap_model::bounds::COUNTER_MAX)),
        other => Err(rusqlite::Error::InvalidColumnType(
            at,
            r.as_ref().column_name(at).unwrap_or("?").to_owned(),
            other.data_type(),
        )),
    }
}

/// Two halves of a column summed by SQL (`SUM(x >> 32)`, `SUM(x & 0xFFFFFFFF)`), put back
/// together: exact and saturating, where `SUM(x)` raises "integer overflow" and `TOTAL(x)`
/// rounds above 2^53. Each half-sum fits an `i64` for up to 2^31 rows.
fn halves(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<u64> {
    let hi = u128::from(counter(r, at)?);
    let lo = u128::from(counter(r, at + 1)?);
    let v = (hi << 32) + lo;
    Ok(
        u64::try_from(v).map_or(trafficmap_model::bounds::COUNTER_MAX, |v| {
            v.min(trafficmap_model::bounds::COUNTER_MAX)
        }),
    )
}

fn bad(what: &str, v: &str) -> StoreError {
    StoreError::Other(format!("corrupt row: {what} `{v}`"))
}

/// Brings a database of an earlier schema `from` to [`SCHEMA_VERSION`], one step per
/// transaction (a crash between steps leaves a consistent database of the step's version).
fn migrate(conn: &mut Connection, path: &Path, from: i64) -> Result<()> {
    for (step_from, sql) in MIGRATIONS.iter().filter(|(v, _)| *v >= from) {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(sql)?;
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'schema_version'",
            [step_from + 1],
        )?;
        tx.commit()?;
        tracing::info!(
            database = %path.display(),
            "store schema migrated from version {step_from} to {}",
            step_from + 1
        );
    }
    Ok(())
}

// Every version below the current one has its step, in order.
const _: () = {
    let mut i = 0;
    while i < MIGRATIONS.len() {
        assert!(MIGRATIONS[i].0 == i as i64 + 1);
        i += 1;
    }
    assert!(MIGRATIONS.len() as i64 == SCHEMA_VERSION - 1);
};

impl SqliteStore {
    /// Opens (creating if needed) `<dir>/trafficmap.db`, migrating an earlier schema in place.
    pub fn open(dir: &Path, sync: Sync) -> Result<SqliteStore> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Other(format!("creating {}: {e}", dir.display())))?;
        let path = dir.join("trafficmap.db");
        let mut conn = Connection::open(&path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(
            None,
            "synchronous",
            match sync {
                Sync::Full => "FULL",
                Sync::Normal => "NORMAL",
            },
        )?;
        conn.pragma_update(None, "cache_size", -65_536)?;
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        // The version first: a newer collector's database is refused before anything (even
        // an `IF NOT EXISTS` table) is written to it.
        let has_meta: bool = conn.query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
            [],
            |r| r.get(0),
        )?;
        let version: Option<i64> = if has_meta {
            conn.query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .optional()?
        } else {
            None
        };
        if let Some(v) = version
            && v > SCHEMA_VERSION
        {
            return Err(StoreError::Other(format!(
                "{} has schema version {v}, written by a newer collector; this one knows versions up to {SCHEMA_VERSION} (run the newer collector, or restore a backup taken before the upgrade)",
                path.display()
            )));
        }
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(&host_tables_ddl())?;
        match version {
            None => {
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?1), ('rollup_watermark', 0)",
                    [SCHEMA_VERSION],
                )?;
            }
            Some(v) => migrate(&mut conn, &path, v)?,
        }
        Ok(SqliteStore {
            path,
            writer: Mutex::new(Writer {
                conn,
                names: Default::default(),
            }),
            readers: Mutex::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn reader(&self) -> Result<Connection> {
        if let Some(c) = self
            .readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
        {
            return Ok(c);
        }
        let c = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        c.busy_timeout(std::time::Duration::from_secs(10))?;
        c.pragma_update(None, "cache_size", -65_536)?;
        Ok(c)
    }

    /// Runs `f` on a pooled read connection, which goes back to the pool whatever `f` returns.
    fn with_reader<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        let mut c = self.reader()?;
        let out = f(&mut c);
        self.give_back(c);
        out
    }

    fn give_back(&self, c: Connection) {
        let mut pool = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
        if pool.len() < 4 {
            pool.push(c);
        }
    }

    pub fn ping(&self) -> Result<()> {
        self.with_reader(|c| {
            c.query_row(
                "SELECT value FROM meta WHERE key = 'schema_version'",
                [],
                |r| r.get::<_, i64>(0),
            )?;
            Ok(())
        })
    }

    pub fn ingest(
        &self,
        batch: &[std::sync::Arc<Ingest>],
        now: DateTime<Utc>,
    ) -> Result<Vec<Outcome>> {
        let mut w = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let Writer { conn, names } = &mut *w;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut out = Vec::with_capacity(batch.len());
        let mut fresh: [HashMap<String, i64>; 2] = Default::default();
        {
            let mut report = tx.prepare_cached(
                "INSERT INTO reports (report_id, machine_id, seq, window_start_ms, window_end_ms, received_ms, pairs, probe_drops, spool_dropped)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT (report_id) DO NOTHING",
            )?;
            let mut row = tx.prepare_cached(&format!(
                "INSERT INTO pair_minute (rowid, minute, {COLUMNS}) VALUES (?24, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23)"
            ))?;
            // Row ids must only grow: the roll-up and the readers take the rows above the
            // watermark as the new ones. SQLite's own choice (largest + 1) would reuse ids at
            // or below the watermark once retention has deleted every row (a quiet week), and
            // such rows would never be rolled up nor read from hour and day ranges.
            let mut rowid: i64 = tx.query_row(
                "SELECT MAX(COALESCE((SELECT MAX(rowid) FROM pair_minute), 0),
                            (SELECT value FROM meta WHERE key = 'rollup_watermark'))",
                [],
                |r| r.get(0),
            )?;
            let mut agent = tx.prepare_cached(&format!(
                "INSERT INTO agents_day (day, machine_id, hostname, ec2, agent_version, backend, kernel, reports, probe_drops, spool_dropped, first_window_ms, last_window_ms, last_received_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 1, ?8, ?9, ?10, ?10, ?11)
                 ON CONFLICT (day, machine_id) DO UPDATE SET
                    hostname = CASE WHEN excluded.last_window_ms >= last_window_ms THEN excluded.hostname ELSE hostname END,
                    ec2 = CASE WHEN excluded.last_window_ms >= last_window_ms OR ec2 IS NULL THEN COALESCE(excluded.ec2, ec2) ELSE ec2 END,
                    agent_version = excluded.agent_version, backend = excluded.backend, kernel = excluded.kernel,
                    reports = {reports},
                    probe_drops = {probe_drops},
                    spool_dropped = MAX(spool_dropped, excluded.spool_dropped),
                    first_window_ms = MIN(first_window_ms, excluded.first_window_ms),
                    last_window_ms = MAX(last_window_ms, excluded.last_window_ms),
                    last_received_ms = excluded.last_received_ms",
                reports = sat_sum("reports", "1"),
                probe_drops = sat_sum("probe_drops", "excluded.probe_drops"),
            ))?;
            let mut address = tx.prepare_cached(
                "INSERT INTO agent_addresses (day, machine_id, address) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
            )?;
            let mut hosts = HOST_TABLES
                .iter()
                .map(|(grain, table)| Ok((grain.secs(), tx.prepare_cached(&host_upsert(table))?)))
                .collect::<Result<Vec<_>>>()?;
            let received = now.timestamp_millis();
            for ing in batch {
                let start = ing.window_start.timestamp_millis();
                let n = report.execute(params![
                    ing.report_id,
                    ing.machine_id,
                    i(ing.seq),
                    start,
                    ing.window_end.timestamp_millis(),
                    received,
                    ing.rows.len() as i64,
                    i(ing.probe_drops),
                    i(ing.spool_dropped),
                ])?;
                if n == 0 {
                    out.push(Outcome::Duplicate);
                    continue;
                }
                let observer = name_id(&tx, names, &mut fresh, OBSERVER, &ing.machine_id)?;
                for r in &ing.rows {
                    let process = name_id(&tx, names, &mut fresh, PROCESS, &r.process)?;
                    rowid += 1;
                    let t = IdentText::of(r.container.as_ref(), r.service);
                    row.execute(params![
                        r.minute,
                        observer,
                        r.local_ip.to_string(),
                        r.peer_ip.to_string(),
                        r.server_port,
                        role_code(r.role),
                        process,
                        i(r.c.bytes_sent),
                        i(r.c.bytes_received),
                        i(r.c.conns_opened),
                        i(r.c.conns_carried),
                        r.c.first_window_ms,
                        r.c.first_seen_ms,
                        r.c.last_seen_ms,
                        t.container_id,
                        t.runtime,
                        t.name,
                        t.pod,
                        t.namespace,
                        t.workload_kind,
                        t.workload,
                        t.service_ip,
                        t.service_port,
                        rowid,
                    ])?;
                }
                let ec2 = ing
                    .ec2
                    .as_ref()
                    .map(|e| serde_json::to_string(e).expect("ec2 identity serialises"));
                agent.execute(params![
                    ing.day,
                    ing.machine_id,
                    ing.hostname,
                    ec2,
                    ing.agent_version,
                    ing.backend,
                    ing.kernel,
                    i(ing.probe_drops),
                    i(ing.spool_dropped),
                    start,
                    received,
                ])?;
                for a in &ing.addresses {
                    address.execute(params![ing.day, ing.machine_id, a.to_string()])?;
                }
                if let Some(h) = &ing.host {
                    for (secs, st) in &mut hosts {
                        st.execute(params![
                            floor(ing.window_start.timestamp(), *secs),
                            ing.machine_id,
                            h.sampled_at.timestamp_millis(),
                            i(h.uptime_seconds),
                            h.load1,
                            h.load5,
                            h.load15,
                            i(h.memory_total_bytes),
                            i(h.memory_available_bytes),
                            i64::from(h.cpus),
                            h.load1_max,
                        ])?;
                    }
                }
                out.push(Outcome::Stored);
            }
        }
        tx.commit()?;
        for (kind, new) in fresh.into_iter().enumerate() {
            if names[kind].len() + new.len() > NAME_CACHE {
                names[kind].clear();
            }
            if new.len() <= NAME_CACHE {
                names[kind].extend(new);
            }
        }
        Ok(out)
    }

    pub fn range(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Result<RangeData> {
        self.with_reader(|c| read_range(c, from, to))
    }

    pub fn days(&self) -> Result<Vec<NaiveDate>> {
        self.with_reader(|c| {
            let mut st = c.prepare("SELECT DISTINCT day FROM agents_day ORDER BY day DESC")?;
            let days = st
                .query_map([], |r| r.get::<_, i64>(0))?
                .map(|d| d.map(super::day_of))
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(days)
        })
    }

    pub fn day_changed_at(&self, day: NaiveDate) -> Result<Option<DateTime<Utc>>> {
        let v: Option<i64> = self.with_reader(|c| {
            Ok(c.query_row(
                "SELECT MAX(last_received_ms) FROM agents_day WHERE day = ?1",
                [day_start(day)],
                |r| r.get(0),
            )?)
        })?;
        Ok(v.map(crate::period::from_ms))
    }

    pub fn save_cloud(&self, day: NaiveDate, taken: DateTime<Utc>, body: &[u8]) -> Result<()> {
        let w = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        w.conn.execute(
            "INSERT INTO cloud_snapshots (day, taken_ms, body) VALUES (?1, ?2, ?3)
             ON CONFLICT (day) DO UPDATE SET taken_ms = excluded.taken_ms, body = excluded.body
             WHERE excluded.taken_ms >= taken_ms",
            params![day_start(day), taken.timestamp_millis(), compress(body)],
        )?;
        Ok(())
    }

    pub fn cloud(&self, day: NaiveDate) -> Result<Option<Vec<u8>>> {
        let body: Option<Vec<u8>> = self.with_reader(|c| {
            Ok(c.query_row(
                "SELECT body FROM cloud_snapshots WHERE day <= ?1 ORDER BY day DESC LIMIT 1",
                [day_start(day)],
                |r| r.get(0),
            )
            .optional()?)
        })?;
        body.map(|b| decompress(&b)).transpose()
    }

    /// Rolls up every minute row not rolled yet, then applies retention.
    pub fn maintain(&self, now: DateTime<Utc>, retention: Retention) -> Result<Maintenance> {
        let mut m = Maintenance::default();
        let mut w = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let Writer { conn, names } = &mut *w;
        loop {
            let n = rollup_chunk(conn)?;
            if n == 0 {
                break;
            }
            m.rolled_up += n;
        }
        let now_s = now.timestamp();
        let cut = |d: std::time::Duration, grain: i64| floor(now_s - d.as_secs() as i64, grain);
        let minute_cut = cut(retention.minutes, 60);
        let hour_cut = cut(retention.hours, HOUR);
        let day_cut = cut(retention.days, DAY);
        let watermark = watermark(conn)?;
        loop {
            // Only rows already rolled up may go (the watermark guards the hour and day sums).
            let n = conn.execute(
                "DELETE FROM pair_minute WHERE rowid IN (SELECT rowid FROM pair_minute WHERE minute < ?1 AND rowid <= ?2 LIMIT ?3)",
                params![minute_cut, watermark, DELETE_CHUNK],
            )?;
            m.deleted_rows += n as u64;
            if (n as i64) < DELETE_CHUNK {
                break;
            }
        }
        let day_rows_deleted = conn.execute("DELETE FROM pair_day WHERE period < ?1", [day_cut])?;
        m.deleted_rows += day_rows_deleted as u64;
        for (sql, cutoff) in [
            ("DELETE FROM pair_hour WHERE period < ?1", hour_cut),
            (
                "DELETE FROM reports WHERE window_start_ms < ?1 * 1000",
                hour_cut,
            ),
            ("DELETE FROM agents_day WHERE day < ?1", day_cut),
            ("DELETE FROM agent_addresses WHERE day < ?1", day_cut),
            ("DELETE FROM host_minute WHERE period < ?1", minute_cut),
            ("DELETE FROM host_hour WHERE period < ?1", hour_cut),
            ("DELETE FROM host_day WHERE period < ?1", day_cut),
            // The newest snapshot stays, whatever its age: it is today's best knowledge.
            (
                "DELETE FROM cloud_snapshots WHERE day < ?1 AND day < (SELECT MAX(day) FROM cloud_snapshots)",
                day_cut,
            ),
        ] {
            m.deleted_rows += conn.execute(sql, [cutoff])? as u64;
        }
        // Names no row refers to any more. Every minute row is rolled up (above, under the
        // same lock) into `pair_day`, whose retention is the longest (the configuration
        // checks minutes <= hours <= days), so the day rows hold every name in use, and a name
        // can only lose its last row when day rows go: prune then (about once a day), not on
        // every run (it reads every day row's ids). Minute rows above the watermark (none
        // after the roll-up; a cheap rowid range) are checked too, so a name is never lost.
        // The writer's cache forgets pruned ids.
        if day_rows_deleted > 0 {
            let n = conn.execute(
                "DELETE FROM names WHERE id NOT IN (
                    SELECT observer FROM pair_day UNION SELECT process FROM pair_day
                    UNION SELECT observer FROM pair_minute WHERE rowid > ?1
                    UNION SELECT process FROM pair_minute WHERE rowid > ?1)",
                [watermark],
            )?;
            m.deleted_rows += n as u64;
            *names = Default::default();
        }
        Ok(m)
    }
}

fn watermark(c: &Connection) -> Result<i64> {
    Ok(c.query_row(
        "SELECT value FROM meta WHERE key = 'rollup_watermark'",
        [],
        |r| r.get(0),
    )?)
}

/// A stored key, as it is in the row (addresses parsed only when a range is read).
#[derive(Clone, PartialEq, Eq, Hash)]
struct TextKey {
    observer: i64,
    local_ip: String,
    peer_ip: String,
    server_port: i64,
    role: i64,
    process: i64,
    ident: IdentText,
}

fn counters(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Counters> {
    Ok(Counters {
        bytes_sent: counter(r, at)?,
        bytes_received: counter(r, at + 1)?,
        conns_opened: counter(r, at + 2)?,
        conns_carried: counter(r, at + 3)?,
        first_window_ms: r.get(at + 4)?,
        first_seen_ms: r.get(at + 5)?,
        last_seen_ms: r.get(at + 6)?,
    })
}

fn text_key(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<TextKey> {
    Ok(TextKey {
        observer: r.get(at)?,
        local_ip: r.get(at + 1)?,
        peer_ip: r.get(at + 2)?,
        server_port: r.get(at + 3)?,
        role: r.get(at + 4)?,
        process: r.get(at + 5)?,
        ident: IdentText::read(r, at + IDENT_AT)?,
    })
}

/// Folds up to [`ROLLUP_CHUNK`] minute rows above the watermark into the hour and day tables.
fn rollup_chunk(conn: &mut Connection) -> Result<u64> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let from = watermark(&tx)?;
    let mut hours: HashMap<(i64, TextKey), Counters> = HashMap::new();
    let mut days: HashMap<(i64, TextKey), Counters> = HashMap::new();
    let mut last = from;
    let mut n = 0u64;
    {
        let mut st = tx.prepare_cached(&format!(
            "SELECT rowid, minute, {COLUMNS} FROM pair_minute WHERE rowid > ?1 ORDER BY rowid LIMIT ?2"
        ))?;
        let mut rows = st.query(params![from, ROLLUP_CHUNK])?;
        while let Some(r) = rows.next()? {
            last = r.get(0)?;
            let minute: i64 = r.get(1)?;
            let key = text_key(r, 2)?;
            let c = counters(r, 8)?;
            add(&mut hours, (floor(minute, HOUR), key.clone()), &c);
            add(&mut days, (floor(minute, DAY), key), &c);
            n += 1;
        }
    }
    if n == 0 {
        return Ok(0);
    }
    for (table, sums) in [("pair_hour", hours), ("pair_day", days)] {
        let mut st = tx.prepare_cached(&format!(
            "INSERT INTO {table} (period, {COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23)
             ON CONFLICT (period, {KEY_COLUMNS}) DO UPDATE SET
                bytes_sent = {bytes_sent},
                bytes_received = {bytes_received},
                conns_opened = {conns_opened},
                conns_carried = CASE WHEN excluded.first_window_ms < first_window_ms THEN excluded.conns_carried ELSE conns_carried END,
                first_window_ms = MIN(first_window_ms, excluded.first_window_ms),
                first_seen_ms = MIN(first_seen_ms, excluded.first_seen_ms),
                last_seen_ms = MAX(last_seen_ms, excluded.last_seen_ms)",
            bytes_sent = sat_sum("bytes_sent", "excluded.bytes_sent"),
            bytes_received = sat_sum("bytes_received", "excluded.bytes_received"),
            conns_opened = sat_sum("conns_opened", "excluded.conns_opened"),
        ))?;
        for ((period, k), c) in sums {
            st.execute(params![
                period,
                k.observer,
                k.local_ip,
                k.peer_ip,
                k.server_port,
                k.role,
                k.process,
                i(c.bytes_sent),
                i(c.bytes_received),
                i(c.conns_opened),
                i(c.conns_carried),
                c.first_window_ms,
                c.first_seen_ms,
                c.last_seen_ms,
                k.ident.container_id,
                k.ident.runtime,
                k.ident.name,
                k.ident.pod,
                k.ident.namespace,
                k.ident.workload_kind,
                k.ident.workload,
                k.ident.service_ip,
                k.ident.service_port,
            ])?;
        }
    }
    tx.execute(
        "UPDATE meta SET value = ?1 WHERE key = 'rollup_watermark'",
        [last],
    )?;
    tx.commit()?;
    Ok(n)
}

fn add<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Counters>, key: K, c: &Counters) {
    match map.entry(key) {
        std::collections::hash_map::Entry::Occupied(mut e) => e.get_mut().add(c),
        std::collections::hash_map::Entry::Vacant(e) => {
            e.insert(*c);
        }
    }
}

fn read_range(conn: &mut Connection, from: DateTime<Utc>, to: DateTime<Utc>) -> Result<RangeData> {
    let (f, t) = (floor(from.timestamp(), 60), floor(to.timestamp() + 59, 60));
    // One read transaction: roll-up tables, watermark and minute rows from the same snapshot.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Deferred)?;
    let watermark = watermark(&tx)?;
    let mut b = RangeBuilder::default();
    let segments = plan(f, t, &|_, _| true);
    // Names by id, looked up when first met in the range and interned into the builder (an
    // agent is in the range only if it has rows or reports there). Only the names the range
    // uses are read: the table holds every name of the retention.
    let mut ids: [rustc_hash::FxHashMap<i64, u32>; 2] = Default::default();
    let mut name_of = tx.prepare_cached("SELECT name FROM names WHERE id = ?1 AND kind = ?2")?;
    let mut intern = |b: &mut RangeBuilder, kind: usize, id: i64| -> Result<u32> {
        if let Some(&index) = ids[kind].get(&id) {
            return Ok(index);
        }
        let name: String = name_of
            .query_row(params![id, kind as i64], |r| r.get(0))
            .optional()?
            .ok_or_else(|| bad("name id", &id.to_string()))?;
        let index = if kind == OBSERVER {
            b.agent(&name)
        } else {
            b.process(&name)
        };
        ids[kind].insert(id, index);
        Ok(index)
    };
    // `unique`: whether keys are unique within the read. Roll-up tables have one row per key
    // and period, so a read of one period has unique keys; a read of several periods, or of
    // minute rows, repeats them and the builder must sum them (else each period's carried-in
    // connections would count again).
    let mut read = |sql: &str, args: &[i64], unique: bool, b: &mut RangeBuilder| -> Result<()> {
        b.begin_read(unique);
        let mut st = tx.prepare_cached(sql)?;
        let mut rows = st.query(rusqlite::params_from_iter(args))?;
        while let Some(r) = rows.next()? {
            let agent = intern(b, OBSERVER, r.get(0)?)?;
            // Addresses are borrowed from SQLite's row buffer and parsed once each.
            let local = r.get_ref(1)?.as_str().map_err(rusqlite::Error::from)?;
            let local = b.ip(local).ok_or_else(|| bad("address", local))?;
            let peer = r.get_ref(2)?.as_str().map_err(rusqlite::Error::from)?;
            let peer = b.ip(peer).ok_or_else(|| bad("address", peer))?;
            let port: i64 = r.get(3)?;
            let role: i64 = r.get(4)?;
            let role = role_of(role).ok_or_else(|| bad("role", &role.to_string()))?;
            let process = intern(b, PROCESS, r.get(5)?)?;
            let c = counters(r, 6)?;
            let ident = read_ident(b, r, IDENT_AT)?;
            b.add_with(
                agent,
                local,
                peer,
                u16::try_from(port).map_err(|_| bad("port", &port.to_string()))?,
                role,
                process,
                ident,
                &c,
            );
        }
        Ok(())
    };
    let mut health_days = Vec::new();
    let mut health_ranges = Vec::new();
    for (grain, s, e) in &segments {
        match grain {
            Grain::Minute => {
                read(
                    &format!(
                        "SELECT {COLUMNS} FROM pair_minute WHERE minute >= ?1 AND minute < ?2"
                    ),
                    &[*s, *e],
                    false,
                    &mut b,
                )?;
                health_ranges.push((*s, *e));
            }
            Grain::Hour | Grain::Day => {
                read(
                    &format!(
                        "SELECT {COLUMNS} FROM {} WHERE period >= ?1 AND period < ?2",
                        grain.table()
                    ),
                    &[*s, *e],
                    e - s == grain.secs(),
                    &mut b,
                )?;
                // Rows that arrived after the last roll-up.
                read(
                    &format!(
                        "SELECT {COLUMNS} FROM pair_minute WHERE minute >= ?1 AND minute < ?2 AND rowid > ?3"
                    ),
                    &[*s, *e, watermark],
                    false,
                    &mut b,
                )?;
                if *grain == Grain::Day {
                    health_days.push((*s, *e));
                } else {
                    health_ranges.push((*s, *e));
                }
            }
        }
    }
    // Health: whole days from the per-day summary, the rest from the reports themselves.
    for (s, e) in health_days {
        let mut st = tx.prepare_cached(
            "SELECT machine_id, reports, probe_drops, spool_dropped FROM agents_day WHERE day >= ?1 AND day < ?2",
        )?;
        let mut rows = st.query([s, e])?;
        while let Some(r) = rows.next()? {
            let m: String = r.get(0)?;
            let a = b.agent_mut(&m);
            a.reports = sat_add(a.reports, counter(r, 1)?);
            a.probe_drops = sat_add(a.probe_drops, counter(r, 2)?);
            a.spool_dropped = a.spool_dropped.max(counter(r, 3)?);
        }
    }
    for (s, e) in health_ranges {
        let mut st = tx.prepare_cached(
            "SELECT machine_id, COUNT(*), SUM(probe_drops >> 32), SUM(probe_drops & 4294967295), MAX(spool_dropped) FROM reports
             WHERE window_start_ms >= ?1 * 1000 AND window_start_ms < ?2 * 1000 GROUP BY machine_id",
        )?;
        let mut rows = st.query([s, e])?;
        while let Some(r) = rows.next()? {
            let m: String = r.get(0)?;
            let a = b.agent_mut(&m);
            a.reports = sat_add(a.reports, counter(r, 1)?);
            a.probe_drops = sat_add(a.probe_drops, halves(r, 2)?);
            a.spool_dropped = a.spool_dropped.max(counter(r, 4)?);
        }
    }
    // Host health (issue 12 item 5): each segment from the table of its grain.
    for (grain, s, e) in &segments {
        let table = HOST_TABLES
            .iter()
            .find(|(g, _)| g == grain)
            .map_or("host_minute", |(_, t)| t);
        let mut st = tx.prepare_cached(&format!(
            "SELECT machine_id, {} FROM {table} WHERE period >= ?1 AND period < ?2",
            host_column_names()
        ))?;
        let mut rows = st.query([s, e])?;
        while let Some(r) = rows.next()? {
            let m: String = r.get(0)?;
            // Only agents of the range (a sample always comes with its report).
            if b.has_agent(&m) {
                let h = host_row(r, 1)?;
                crate::range::fold_host(&mut b.agent_mut(&m).host, h);
            }
        }
    }
    // Identity of every agent seen, from the days the range touches (the latest day wins).
    {
        let (d0, d1) = (floor(f, DAY), floor(t - 1, DAY) + DAY);
        let mut st = tx.prepare_cached(
            "SELECT machine_id, hostname, ec2 FROM agents_day WHERE day >= ?1 AND day < ?2 ORDER BY day",
        )?;
        let mut rows = st.query([d0, d1])?;
        let mut ident: HashMap<String, (String, Option<String>)> = HashMap::new();
        while let Some(r) = rows.next()? {
            ident.insert(r.get(0)?, (r.get(1)?, r.get(2)?));
        }
        let mut st = tx.prepare_cached(
            "SELECT machine_id, address FROM agent_addresses WHERE day >= ?1 AND day < ?2",
        )?;
        let mut rows = st.query([d0, d1])?;
        let mut addrs: HashMap<String, BTreeSet<IpAddr>> = HashMap::new();
        while let Some(r) = rows.next()? {
            let m: String = r.get(0)?;
            let a: String = r.get(1)?;
            addrs
                .entry(m)
                .or_default()
                .insert(a.parse().map_err(|_| bad("address", &a))?);
        }
        for (m, (hostname, ec2)) in ident {
            // Only agents that reported in the range or appear in its rows.
            if !b.has_agent(&m) {
                continue;
            }
            let a = b.agent_mut(&m);
            a.hostname = hostname;
            a.ec2 = ec2
                .map(|e| serde_json::from_str(&e).map_err(|_| bad("ec2 identity", &e)))
                .transpose()?;
            a.addresses = addrs.remove(&m).unwrap_or_default();
        }
    }
    drop(name_of);
    drop(tx);
    Ok(b.finish(from, to))
}

fn compress(body: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(body).expect("writing to memory");
    enc.finish().expect("writing to memory")
}

fn decompress(body: &[u8]) -> Result<Vec<u8>> {
    use std::io::Read as _;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(body)
        .read_to_end(&mut out)
        .map_err(|e| StoreError::Other(format!("cloud snapshot: {e}")))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use trafficmap_model::{bounds::COUNTER_MAX, report::Role};

    use super::*;
    use crate::ingest::Row;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    /// One report of `machine` for the minute at `start`, with one row per process.
    fn ingest(
        id: &str,
        machine: &str,
        start: &str,
        drops: u64,
        rows: &[(&str, u64)],
    ) -> Arc<Ingest> {
        let start = at(start);
        let minute = floor(start.timestamp(), 60);
        Arc::new(Ingest {
            report_id: id.into(),
            seq: 1,
            machine_id: machine.into(),
            hostname: machine.into(),
            window_start: start,
            window_end: start + chrono::TimeDelta::minutes(1),
            day: floor(start.timestamp(), DAY),
            addresses: ["10.0.0.1".parse().unwrap()].into(),
            ec2: None,
            agent_version: "0".into(),
            backend: "tracepoint".into(),
            kernel: "6".into(),
            probe_drops: drops,
            spool_dropped: 0,
            host: None,
            rows: rows
                .iter()
                .map(|&(process, bytes)| Row {
                    minute,
                    local_ip: "10.0.0.1".parse().unwrap(),
                    peer_ip: "10.0.0.2".parse().unwrap(),
                    server_port: 80,
                    role: Role::Client,
                    process: process.into(),
                    container: None,
                    service: None,
                    c: Counters {
                        bytes_sent: bytes,
                        bytes_received: 1,
                        conns_opened: 1,
                        conns_carried: 0,
                        first_window_ms: start.timestamp_millis(),
                        first_seen_ms: start.timestamp_millis(),
                        last_seen_ms: start.timestamp_millis(),
                    },
                })
                .collect(),
        })
    }

    /// Issue 12 item 5: per period the last sample wins whatever the order of arrival, load1_max
    /// is the largest; minute, hour and day tables answer the same; retention drops each table
    /// with its grain.
    #[test]
    fn host_samples_keep_the_last_and_the_largest_load() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path(), Sync::Normal).unwrap();
        let sample = |start: &str, load1: f64, uptime: u64| {
            let mut i =
                (*ingest(&format!("host-{uptime:015}"), "h", start, 0, &[("p", 1)])).clone();
            i.host = Some(crate::ingest::host_sample(
                &trafficmap_model::report::HostStats {
                    uptime_seconds: uptime,
                    load1,
                    load5: 1.0,
                    load15: 0.5,
                    memory_total_bytes: 1000,
                    memory_available_bytes: 400,
                    cpus: 2,
                },
                i.window_end,
            ));
            Arc::new(i)
        };
        // The later sample first, then an earlier one with a higher load, then one a day later.
        let batch = [
            sample("2026-11-23T10:05:00Z", 0.5, 300),
            sample("2026-11-23T10:01:00Z", 7.25, 60),
            sample("2026-11-24T09:00:00Z", 0.25, 90_000),
        ];
        s.ingest(&batch, at("2026-11-24T10:00:00Z")).unwrap();
        let host = |from: &str, to: &str| s.range(at(from), at(to)).unwrap().agents[0].host;
        let want = trafficmap_model::map::HostStats {
            sampled_at: at("2026-11-23T10:06:00Z"),
            uptime_seconds: 300,
            load1: 0.5,
            load5: 1.0,
            load15: 0.5,
            memory_total_bytes: 1000,
            memory_available_bytes: 400,
            cpus: 2,
            load1_max: 7.25,
        };
        // Minutes, an hour, a day.
        assert_eq!(
            host("2026-11-23T10:00:00Z", "2026-11-23T10:30:00Z"),
            Some(want)
        );
        assert_eq!(
            host("2026-11-23T10:00:00Z", "2026-11-23T11:00:00Z"),
            Some(want)
        );
        assert_eq!(
            host("2026-11-23T00:00:00Z", "2026-11-24T00:00:00Z"),
            Some(want)
        );
        // Only the earlier minute: its own sample.
        assert_eq!(
            host("2026-11-23T10:01:00Z", "2026-11-23T10:02:00Z"),
            Some(trafficmap_model::map::HostStats {
                sampled_at: at("2026-11-23T10:02:00Z"),
                uptime_seconds: 60,
                load1: 7.25,
                load1_max: 7.25,
                ..want
            })
        );
        // Two days: the 24th's sample is the last, the 23rd's load the largest.
        let two = host("2026-11-23T00:00:00Z", "2026-11-25T00:00:00Z").unwrap();
        assert_eq!(
            (two.sampled_at, two.uptime_seconds, two.load1, two.load1_max),
            (at("2026-11-24T09:01:00Z"), 90_000, 0.25, 7.25)
        );
        // Retention (2 days of minutes, 35 of hours, 400 of days) a week later: the minute
        // rows are gone, hours and days stay.
        s.maintain(
            at("2026-11-30T12:00:00Z"),
            super::super::Retention::default(),
        )
        .unwrap();
        let c = Connection::open(s.path()).unwrap();
        let count = |t: &str| -> i64 {
            c.query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(
            (count("host_minute"), count("host_hour"), count("host_day")),
            (0, 2, 2)
        );
    }

    /// Review finding 3: two reports whose counters are at the top of `i64` (what `i()` makes
    /// of `u64::MAX`) made SQLite's `a + b` a REAL, and every read of the day failed. Sums now
    /// stop at `i64::MAX`, in the upserts, the roll-up and the reads of every grain.
    #[test]
    fn huge_counters_saturate_and_the_day_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path(), Sync::Normal).unwrap();
        let now = at("2026-11-23T12:00:00Z");
        let batch = [
            ingest(
                "ovf-0000000000000001",
                "ovf",
                "2026-11-23T10:00:00Z",
                u64::MAX,
                &[("p", u64::MAX)],
            ),
            ingest(
                "ovf-0000000000000002",
                "ovf",
                "2026-11-23T10:01:00Z",
                u64::MAX,
                &[("p", u64::MAX)],
            ),
        ];
        assert_eq!(
            s.ingest(&batch, now).unwrap(),
            [Outcome::Stored, Outcome::Stored]
        );
        let c = Connection::open(s.path()).unwrap();
        let kind: String = c
            .query_row("SELECT typeof(probe_drops) FROM agents_day", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(kind, "integer");
        // Read from minute rows and `reports` (before the roll-up), then from the roll-ups
        // and `agents_day` (after it); a whole day and a part of one.
        let check = |s: &SqliteStore, from: &str, to: &str| {
            let d = s.range(at(from), at(to)).unwrap();
            assert_eq!(d.agents.len(), 1, "{from}");
            assert_eq!(d.agents[0].probe_drops, COUNTER_MAX, "{from}");
            assert_eq!(d.agents[0].reports, 2, "{from}");
            assert_eq!(d.obs.len(), 1, "{from}");
            assert_eq!(d.obs[0].c.bytes_sent, COUNTER_MAX, "{from}");
            assert_eq!(d.obs[0].c.bytes_received, 2, "{from}");
        };
        let day = ("2026-11-23T00:00:00Z", "2026-11-24T00:00:00Z");
        let part = ("2026-11-23T09:59:00Z", "2026-11-23T10:30:00Z");
        check(&s, day.0, day.1);
        check(&s, part.0, part.1);
        let m = s.maintain(now, Retention::default()).unwrap();
        assert_eq!(m.rolled_up, 2);
        for table in ["pair_hour", "pair_day"] {
            let (kind, v): (String, i64) = c
                .query_row(
                    &format!("SELECT typeof(bytes_sent), bytes_sent FROM {table}"),
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap();
            assert_eq!((kind.as_str(), v), ("integer", i64::MAX), "{table}");
        }
        check(&s, day.0, day.1);
        check(&s, part.0, part.1);
        // A hour's worth of reports in `reports`, each at the top: the SUM does not overflow.
        let more: Vec<_> = (3..40)
            .map(|n| {
                ingest(
                    &format!("ovf-{n:016}"),
                    "ovf",
                    &format!("2026-11-23T10:{n:02}:00Z"),
                    u64::MAX,
                    &[],
                )
            })
            .collect();
        s.ingest(&more, now).unwrap();
        let d = s.range(at(part.0), at(part.1)).unwrap();
        assert_eq!(d.agents[0].probe_drops, COUNTER_MAX);
        assert_eq!(d.agents[0].reports, 29);
    }

    /// A store an older collector left with REAL sums still answers (saturated), and the next
    /// upsert turns the REAL back into an integer.
    #[test]
    fn real_left_by_an_older_collector_reads_saturated() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path(), Sync::Normal).unwrap();
        let now = at("2026-11-23T12:00:00Z");
        s.ingest(
            &[ingest(
                "old-0000000000000001",
                "old",
                "2026-11-23T10:00:00Z",
                5,
                &[("p", 7)],
            )],
            now,
        )
        .unwrap();
        let c = Connection::open(s.path()).unwrap();
        c.execute_batch(
            "UPDATE agents_day SET probe_drops = 1.8446744073709552e19;
             UPDATE reports SET probe_drops = 1.8446744073709552e19;
             UPDATE pair_minute SET bytes_sent = 1.8446744073709552e19;",
        )
        .unwrap();
        for (from, to) in [
            ("2026-11-23T00:00:00Z", "2026-11-24T00:00:00Z"),
            ("2026-11-23T10:00:00Z", "2026-11-23T10:05:00Z"),
        ] {
            let d = s.range(at(from), at(to)).unwrap();
            assert_eq!(d.agents[0].probe_drops, COUNTER_MAX, "{from}");
            assert_eq!(d.obs[0].c.bytes_sent, COUNTER_MAX, "{from}");
        }
        s.ingest(
            &[ingest(
                "old-0000000000000002",
                "old",
                "2026-11-23T10:01:00Z",
                5,
                &[],
            )],
            now,
        )
        .unwrap();
        let (kind, v): (String, i64) = c
            .query_row(
                "SELECT typeof(probe_drops), probe_drops FROM agents_day",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((kind.as_str(), v), ("integer", i64::MAX));
    }

    /// Review finding 4: names no row refers to any more go with the retention; the writer
    /// forgets their ids (a name coming back gets a new one); a range reads only its names.
    #[test]
    fn names_are_pruned_with_the_retention() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(dir.path(), Sync::Normal).unwrap();
        let names = |s: &SqliteStore| -> Vec<String> {
            let c = Connection::open(s.path()).unwrap();
            let mut st = c.prepare("SELECT name FROM names ORDER BY name").unwrap();
            st.query_map([], |r| r.get(0))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap()
        };
        let day1 = "2026-01-01T10:00:00Z";
        let day2 = "2026-03-01T10:00:00Z";
        s.ingest(
            &[
                ingest(
                    "n-00000000000000001",
                    "m-old",
                    day1,
                    0,
                    &[("gone", 1), ("kept", 1)],
                ),
                ingest(
                    "n-00000000000000002",
                    "m-new",
                    day2,
                    0,
                    &[("kept", 2), ("new", 2)],
                ),
            ],
            at(day2),
        )
        .unwrap();
        assert_eq!(names(&s), ["gone", "kept", "m-new", "m-old", "new"]);
        // Day 1 is older than 30 days of day retention on day 2 + 1.
        let retention = Retention {
            minutes: std::time::Duration::from_secs(3600),
            hours: std::time::Duration::from_secs(86_400),
            days: std::time::Duration::from_secs(30 * 86_400),
        };
        let m = s.maintain(at("2026-03-02T00:00:00Z"), retention).unwrap();
        assert_eq!(m.rolled_up, 4);
        assert_eq!(names(&s), ["kept", "m-new", "new"]);
        // Nothing more to prune: the names of rows still there stay, and a pruned name that
        // comes back is stored afresh (not with its old, deleted id).
        s.maintain(at("2026-03-02T00:01:00Z"), retention).unwrap();
        assert_eq!(names(&s), ["kept", "m-new", "new"]);
        s.ingest(
            &[ingest(
                "n-00000000000000003",
                "m-old",
                "2026-03-01T11:00:00Z",
                0,
                &[("gone", 3)],
            )],
            at(day2),
        )
        .unwrap();
        assert_eq!(names(&s), ["gone", "kept", "m-new", "m-old", "new"]);
        let d = s
            .range(at("2026-03-01T00:00:00Z"), at("2026-03-02T00:00:00Z"))
            .unwrap();
        let mut procs = d.processes.clone();
        procs.sort();
        assert_eq!(procs, ["gone", "kept", "new"]);
        let ids: Vec<&str> = d.agents.iter().map(|a| a.machine_id.as_str()).collect();
        assert_eq!(ids, ["m-new", "m-old"]);
        // A range of one host's hour reads only the names it uses.
        let d = s
            .range(at("2026-03-01T11:00:00Z"), at("2026-03-01T12:00:00Z"))
            .unwrap();
        assert_eq!(d.processes, ["gone"]);
    }
}
