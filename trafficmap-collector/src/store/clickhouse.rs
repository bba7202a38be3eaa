//! The fleet store: ClickHouse over its HTTP interface, `JSONEachRow` in and out, MergeTree
//! tables, using only what ClickHouse 18.16 (Debian's) already supports: no `DateTime64`, no
//! `IPv4`, no table TTL, no `LowCardinality`. Times are stored as epoch seconds (`UInt32`) or
//! milliseconds (`Int64`), so the server's time zone never matters.
//!
//! Several collectors may write to one database, and an agent may retry a report to another
//! collector. ClickHouse has no transactions, so exactness comes from idempotent data rather
//! than from checks:
//! - every minute row carries its `report_id`, and readers collapse rows of the same
//!   (minute, key, report id) to one (`any`) before summing: a report stored twice counts once;
//! - hour and day roll-ups are *recomputed* from those de-duplicated rows, never added to, and
//!   written with a version (`ReplacingMergeTree(version)`, readers take `argMax`), so any number
//!   of collectors may recompute the same period;
//! - ingest marks the hour and day it touched in `rollup_dirty` (with ClickHouse's own clock);
//!   a period is used by readers only when its last recomputation started after its last mark,
//!   otherwise readers fall back to finer rows.
//!
//! Host health (issue 12 item 5) follows the same rules: `host_minute` holds one row per report
//! (de-duplicated by report id when read), `host_hour` and `host_day` are recomputed from it
//! with the pair roll-ups (the last sample of the period and its largest `load1`), and periods
//! with samples are marked dirty like those with pairs.
//!
//! Reports older than the minute retention are refused at ingest (the HTTP layer), so a
//! recomputation always sees every minute row of its period.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::IpAddr,
    path::PathBuf,
    time::Duration,
};

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use trafficmap_model::{
    bounds::{COUNTER_MAX, sat_add},
    error_chain,
};

use super::{Grain, Maintenance, Outcome, Result, Retention, StoreError, day_start, plan};
use crate::{
    ingest::Ingest,
    period::{DAY, HOUR, floor},
    range::{Counters, RangeBuilder, RangeData},
};

/// Partitions of the roll-up and report tables span this many seconds (30 days).
const BUCKET: i64 = 30 * DAY;
/// The database's schema version (table `schema_version`, one row per version applied).
/// 1: 0.1.0 (which had no such table). 2: the host-health tables. 3: the container and service
/// columns of the `pair_*` tables (issue 11), part of their sorting key. A collector migrates an
/// earlier database in place and refuses a newer one.
pub const SCHEMA_VERSION: u32 = 3;
/// What turns version N into N+1 beyond the `IF NOT EXISTS` tables of `create`: (N,
/// statements). Several collectors may open one database at once, so every statement must be
/// idempotent (`ADD COLUMN IF NOT EXISTS`, ...).
const MIGRATIONS: &[(u32, &[&str])] = &[
    // 1 -> 2: new tables only (host_minute, host_hour, host_day).
    (1, &[]),
    // 2 -> 3: the container and service columns, added to the sorting key of the pair tables
    // (else ReplacingMergeTree would fold two containers' rows into one):
    // [`ClickHouseStore::add_ident_columns`], which checks before it alters.
    (2, &[]),
];
const _: () = {
    let mut i = 0;
    while i < MIGRATIONS.len() {
        assert!(MIGRATIONS[i].0 == i as u32 + 1);
        i += 1;
    }
    assert!(MIGRATIONS.len() as u32 == SCHEMA_VERSION - 1);
};
/// Recompute a closed period only after this long, so most late minute rows are in already.
const ROLLUP_GRACE: i64 = 120;

/// Where the database is: the store's own settings (the collector's configuration maps its
/// `[storage.clickhouse]` section into them, so the store does not depend on the server's
/// configuration).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClickHouseOptions {
    /// HTTP interface, `http://` or `https://`, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    pub database: String,
    pub user: String,
    /// File holding the password (first line); none for no password.
    pub password_file: Option<PathBuf>,
    /// Time limit of one HTTP request, its answer included.
    pub timeout: Duration,
}

impl Default for ClickHouseOptions {
    fn default() -> Self {
        ClickHouseOptions {
            url: "http://127.0.0.1:8123".into(),
            database: "trafficmap".into(),
            user: "default".into(),
            password_file: None,
            timeout: Duration::from_secs(60),
        }
    }
}

pub struct ClickHouseStore {
    client: reqwest::Client,
    /// `<url>/`, where every statement is posted.
    endpoint: reqwest::Url,
    /// The configured URL without a trailing `/`: how errors name the server.
    base: String,
    db: String,
    /// Sent with every request (HTTP basic): ClickHouse has no anonymous access, and no
    /// password file means the empty password (its `default` user's).
    user: String,
    password: String,
    timeout: Duration,
}

fn ch(msg: impl std::fmt::Display) -> StoreError {
    StoreError::ClickHouse(msg.to_string())
}

/// ClickHouse prints 64-bit integers as JSON strings by default; accept both.
fn num<'de, D: Deserializer<'de>, T: std::str::FromStr + TryFrom<i64> + TryFrom<u64>>(
    d: D,
) -> std::result::Result<T, D::Error> {
    let bad =
        |v: &dyn std::fmt::Display| serde::de::Error::custom(format!("not a number in range: {v}"));
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => {
            if let Some(v) = n.as_u64() {
                T::try_from(v).map_err(|_| bad(&n))
            } else if let Some(v) = n.as_i64() {
                T::try_from(v).map_err(|_| bad(&n))
            } else {
                Err(bad(&n))
            }
        }
        serde_json::Value::String(s) => s.parse().map_err(|_| bad(&s)),
        other => Err(bad(&other)),
    }
}

/// A string literal for a query (identifiers and values we build ourselves).
fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

const KEY: &str = "observer, local_ip, peer_ip, server_port, role, process, container_id, container_runtime, container_name, pod, namespace, workload_kind, workload, service_ip, service_port";
/// The key before schema 3, and the columns issue 11 appended to it (`''` and 0 for none).
const BASE_KEY: &str = "observer, local_ip, peer_ip, server_port, role, process";
const IDENT_KEY: &str = "container_id, container_runtime, container_name, pod, namespace, workload_kind, workload, service_ip, service_port";
const IDENT_COLS: &str = "container_id String, container_runtime String, container_name String, pod String, namespace String, workload_kind String, workload String, service_ip String, service_port UInt16";

/// The container and service columns of a row (issue 11), as stored.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct IdentCols {
    container_id: String,
    container_runtime: String,
    container_name: String,
    pod: String,
    namespace: String,
    workload_kind: String,
    workload: String,
    service_ip: String,
    #[serde(deserialize_with = "num")]
    service_port: u16,
}

impl IdentCols {
    fn of(r: &crate::ingest::Row) -> IdentCols {
        let text = |v: &Option<String>| v.clone().unwrap_or_default();
        let mut t = IdentCols::default();
        if let Some(c) = &r.container {
            t.container_id = c.id.clone();
            t.container_runtime = c.runtime.as_str().to_owned();
            t.container_name = text(&c.name);
            t.pod = text(&c.pod);
            t.namespace = text(&c.namespace);
            t.workload_kind = text(&c.workload_kind);
            t.workload = text(&c.workload);
        }
        if let Some((ip, port)) = r.service {
            t.service_ip = ip.to_string();
            t.service_port = port;
        }
        t
    }

    /// Back into a range's key, checked as a report's fields are (a corrupt row is an error).
    fn ident(
        self,
        b: &mut RangeBuilder,
        ip: &mut dyn FnMut(String) -> Result<IpAddr>,
    ) -> Result<crate::range::Ident> {
        use trafficmap_model::report::{Container, ContainerRuntime as R};
        let mut out = crate::range::Ident::default();
        if !self.container_id.is_empty() {
            let runtime = [R::Docker, R::Containerd, R::CriO, R::Podman, R::Oci]
                .into_iter()
                .find(|r| r.as_str() == self.container_runtime)
                .ok_or_else(|| ch(format!("corrupt runtime `{}`", self.container_runtime)))?;
            let opt = |v: String| (!v.is_empty()).then_some(v);
            let c = Container {
                id: self.container_id,
                runtime,
                name: opt(self.container_name),
                pod: opt(self.pod),
                namespace: opt(self.namespace),
                workload_kind: opt(self.workload_kind),
                workload: opt(self.workload),
            };
            c.check()
                .map_err(|e| ch(format!("corrupt container: {e}")))?;
            out.container = Some(b.container(&c));
        }
        if !self.service_ip.is_empty() {
            out.service = Some((ip(self.service_ip)?, self.service_port));
        }
        Ok(out)
    }
}

/// `JSONEachRow` lines, built before any `.await` (the rows borrow the batch).
fn each_row<T: Serialize>(rows: impl IntoIterator<Item = T>) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    for r in rows {
        serde_json::to_writer(&mut body, &r).map_err(ch)?;
        body.push(b'\n');
    }
    Ok(body)
}

#[derive(Serialize)]
struct MinuteRow<'a> {
    minute: i64,
    report_id: &'a str,
    observer: &'a str,
    local_ip: String,
    peer_ip: String,
    server_port: u16,
    role: &'static str,
    process: &'a str,
    bytes_sent: u64,
    bytes_received: u64,
    conns_opened: u64,
    conns_carried: u64,
    first_window_ms: i64,
    first_seen_ms: i64,
    last_seen_ms: i64,
    #[serde(flatten)]
    ident: IdentCols,
}

#[derive(Serialize)]
struct ReportRow<'a> {
    day: i64,
    report_id: &'a str,
    machine_id: &'a str,
    hostname: &'a str,
    ec2: String,
    agent_version: &'a str,
    backend: &'a str,
    kernel: &'a str,
    seq: u64,
    window_start_ms: i64,
    window_end_ms: i64,
    received_ms: i64,
    pairs: u64,
    probe_drops: u64,
    spool_dropped: u64,
}

#[derive(Serialize)]
struct AddressRow<'a> {
    day: i64,
    machine_id: &'a str,
    address: String,
}

#[derive(Deserialize)]
struct KeyRow {
    observer: String,
    local_ip: String,
    peer_ip: String,
    #[serde(deserialize_with = "num")]
    server_port: u16,
    role: String,
    process: String,
    #[serde(deserialize_with = "num")]
    bytes_sent: u64,
    #[serde(deserialize_with = "num")]
    bytes_received: u64,
    #[serde(deserialize_with = "num")]
    conns_opened: u64,
    #[serde(deserialize_with = "num")]
    conns_carried: u64,
    #[serde(deserialize_with = "num")]
    first_window_ms: i64,
    #[serde(deserialize_with = "num")]
    first_seen_ms: i64,
    #[serde(deserialize_with = "num")]
    last_seen_ms: i64,
    #[serde(flatten)]
    ident: IdentCols,
}

/// The counters of a key summed over a segment, from rows already de-duplicated.
/// (Inner queries name their columns `d_*`: ClickHouse aliases are global to a query, and an
/// alias equal to a column that another aggregate reads would nest aggregates.)
/// Sums saturate at `i64::MAX` (see [`sat_sum`]).
fn sums() -> String {
    format!(
        "{} AS bytes_sent, {} AS bytes_received, {} AS conns_opened,
        argMin(d_cc, d_fw) AS conns_carried, min(d_fw) AS first_window_ms,
        min(d_fs) AS first_seen_ms, max(d_ls) AS last_seen_ms",
        sat_sum("d_bs"),
        sat_sum("d_br"),
        sat_sum("d_co")
    )
}

/// `sum(col)` of a `UInt64` column, stopping at `i64::MAX` like every counter sum: ClickHouse's
/// `sum` wraps modulo 2^64. The high and low 32 bits are summed apart (neither half-sum can
/// wrap below 2^31 rows) and put together only when the result fits.
fn sat_sum(col: &str) -> String {
    let hi = format!("sum(intDiv({col}, 4294967296))");
    let lo = format!("sum({col} % 4294967296)");
    format!(
        "if({hi} >= 2147483648, toUInt64(9223372036854775807), least({hi} * 4294967296 + {lo}, toUInt64(9223372036854775807)))"
    )
}

/// Minute rows with one row per (minute, key, report id), whatever was stored twice.
fn dedup_minutes(db: &str, from: i64, to: i64) -> String {
    format!(
        "SELECT minute, {KEY}, report_id, any(bytes_sent) AS d_bs, any(bytes_received) AS d_br,
            any(conns_opened) AS d_co, any(conns_carried) AS d_cc,
            any(first_window_ms) AS d_fw, any(first_seen_ms) AS d_fs, any(last_seen_ms) AS d_ls
         FROM {db}.pair_minute WHERE minute >= {from} AND minute < {to}
         GROUP BY minute, {KEY}, report_id"
    )
}

/// Roll-up rows of the latest version per (period, key).
fn latest_rollups(db: &str, table: &str, from: i64, to: i64) -> String {
    format!(
        "SELECT period, {KEY},
            argMax((bytes_sent, bytes_received, conns_opened, conns_carried, first_window_ms, first_seen_ms, last_seen_ms), version) AS t,
            tupleElement(t, 1) AS d_bs, tupleElement(t, 2) AS d_br, tupleElement(t, 3) AS d_co,
            tupleElement(t, 4) AS d_cc, tupleElement(t, 5) AS d_fw, tupleElement(t, 6) AS d_fs,
            tupleElement(t, 7) AS d_ls
         FROM {db}.{table} WHERE period >= {from} AND period < {to}
         GROUP BY period, {KEY}"
    )
}

/// A report's host-health sample as stored (issue 12 item 5).
#[derive(Serialize)]
struct HostRow<'a> {
    period: i64,
    machine_id: &'a str,
    report_id: &'a str,
    sampled_ms: i64,
    uptime_seconds: u64,
    load1: f64,
    load5: f64,
    load15: f64,
    memory_total_bytes: u64,
    memory_available_bytes: u64,
    cpus: u32,
    load1_max: f64,
}

/// The host-health columns after `period, machine_id`, with their types.
const HOST_COLS: &str =
    "sampled_ms Int64, uptime_seconds UInt64, load1 Float64, load5 Float64, load15 Float64,
    memory_total_bytes UInt64, memory_available_bytes UInt64, cpus UInt32, load1_max Float64";

/// Host samples per (period, machine) in `d_*` columns: minute rows de-duplicated by report
/// id, or roll-up rows of their latest version.
fn host_periods(db: &str, grain: Grain, from: i64, to: i64) -> String {
    let cols = |f: &dyn Fn(&str) -> String| {
        [
            ("sampled_ms", "d_sm"),
            ("uptime_seconds", "d_up"),
            ("load1", "d_l1"),
            ("load5", "d_l5"),
            ("load15", "d_l15"),
            ("memory_total_bytes", "d_mt"),
            ("memory_available_bytes", "d_ma"),
            ("cpus", "d_cpu"),
            ("load1_max", "d_lm"),
        ]
        .iter()
        .map(|(c, d)| format!("{} AS {d}", f(c)))
        .collect::<Vec<_>>()
        .join(", ")
    };
    match grain {
        Grain::Minute => format!(
            "SELECT period, machine_id, report_id, {} FROM {db}.host_minute
             WHERE period >= {from} AND period < {to} GROUP BY period, machine_id, report_id",
            cols(&|c| format!("any({c})"))
        ),
        Grain::Hour | Grain::Day => format!(
            "SELECT period, machine_id, {} FROM {db}.{} WHERE period >= {from} AND period < {to}
             GROUP BY period, machine_id",
            cols(&|c| format!("argMax({c}, version)")),
            host_table(grain)
        ),
    }
}

/// The last sample and the largest load1 per machine over [`host_periods`] rows.
fn host_last(source: &str) -> String {
    format!(
        "SELECT machine_id, max(d_sm) AS sampled_ms, argMax(d_up, d_sm) AS uptime_seconds,
            argMax(d_l1, d_sm) AS load1, argMax(d_l5, d_sm) AS load5, argMax(d_l15, d_sm) AS load15,
            argMax(d_mt, d_sm) AS memory_total_bytes, argMax(d_ma, d_sm) AS memory_available_bytes,
            argMax(d_cpu, d_sm) AS cpus, max(d_lm) AS load1_max
         FROM ({source}) GROUP BY machine_id"
    )
}

fn host_table(g: Grain) -> &'static str {
    match g {
        Grain::Minute => "host_minute",
        Grain::Hour => "host_hour",
        Grain::Day => "host_day",
    }
}

/// A row of [`host_last`].
#[derive(Deserialize)]
struct HostLast {
    machine_id: String,
    #[serde(deserialize_with = "num")]
    sampled_ms: i64,
    #[serde(deserialize_with = "num")]
    uptime_seconds: u64,
    load1: f64,
    load5: f64,
    load15: f64,
    #[serde(deserialize_with = "num")]
    memory_total_bytes: u64,
    #[serde(deserialize_with = "num")]
    memory_available_bytes: u64,
    #[serde(deserialize_with = "num")]
    cpus: u32,
    load1_max: f64,
}

/// Roll-up state of periods: when each was last marked dirty and last recomputed.
#[derive(Default)]
struct RollupState {
    marked: HashMap<(Grain, i64), i64>,
    started: HashMap<(Grain, i64), i64>,
}

impl RollupState {
    fn clean(&self, g: Grain, p: i64) -> bool {
        match (self.marked.get(&(g, p)), self.started.get(&(g, p))) {
            (Some(m), Some(s)) => s > m,
            // Never marked: no data was ever stored for it.
            (None, _) => true,
            (Some(_), None) => false,
        }
    }
    fn usable(&self, g: Grain, p: i64) -> bool {
        self.started.contains_key(&(g, p)) && self.clean(g, p)
    }
}

fn grain_name(g: Grain) -> &'static str {
    match g {
        Grain::Minute => "minute",
        Grain::Hour => "hour",
        Grain::Day => "day",
    }
}

fn grain_of(s: &str) -> Option<Grain> {
    match s {
        "hour" => Some(Grain::Hour),
        "day" => Some(Grain::Day),
        _ => None,
    }
}

impl ClickHouseStore {
    /// Connects and creates the database and tables if they are missing.
    pub async fn open(opts: &ClickHouseOptions) -> Result<ClickHouseStore> {
        let store = ClickHouseStore::new(opts)?;
        store.create().await?;
        store.migrate().await?;
        Ok(store)
    }

    /// The schema version the database holds (0: none recorded, a new database or one of
    /// version 1), refusing a newer one; then the steps up to [`SCHEMA_VERSION`].
    async fn migrate(&self) -> Result<()> {
        let db = &self.db;
        let found: u32 = String::from_utf8_lossy(
            &self
                .query(&format!(
                    "SELECT max(version) FROM {db}.schema_version FORMAT TabSeparated"
                ))
                .await?,
        )
        .trim()
        .parse()
        .map_err(|_| ch(format!("{db}.schema_version: not a version")))?;
        if found > SCHEMA_VERSION {
            return Err(ch(format!(
                "database {db} has schema version {found}, written by a newer collector; this one knows versions up to {SCHEMA_VERSION} (run the newer collector)"
            )));
        }
        if found == SCHEMA_VERSION {
            return Ok(());
        }
        for (step_from, statements) in MIGRATIONS.iter().filter(|(v, _)| *v >= found.max(1)) {
            for q in *statements {
                self.query(&q.replace("{db}", db)).await?;
            }
            if *step_from == 2 {
                self.add_ident_columns().await?;
            }
            tracing::info!(
                database = %db,
                "store schema migrated from version {step_from} to {}",
                step_from + 1
            );
        }
        let now = chrono::Utc::now().timestamp();
        self.query(&format!(
            "INSERT INTO {db}.schema_version (version, applied_at) VALUES ({SCHEMA_VERSION}, {now})"
        ))
        .await
        .map(drop)
    }

    /// Schema 2 -> 3 (issue 11): the container and service columns, appended to the sorting
    /// key of each pair table (ClickHouse 18.16 allows that in the `ALTER` that adds them, and
    /// only without a default: a `String` is `''` and a `UInt16` 0 on every old row). A table
    /// that has them already (another collector migrated it) is left alone; an `ALTER` that
    /// failed because a collector did it at the same moment is fine if the column is there.
    async fn add_ident_columns(&self) -> Result<()> {
        let db = &self.db;
        for (table, order) in [
            (
                "pair_minute",
                format!("minute, {BASE_KEY}, report_id, {IDENT_KEY}"),
            ),
            ("pair_hour", format!("period, {KEY}")),
            ("pair_day", format!("period, {KEY}")),
        ] {
            let has = || async {
                let n = self
                    .query(&format!(
                        "SELECT count() FROM system.columns WHERE database = {} AND table = {} AND name = 'container_id' FORMAT TabSeparated",
                        lit(db),
                        lit(table)
                    ))
                    .await?;
                Ok::<bool, StoreError>(String::from_utf8_lossy(&n).trim() == "1")
            };
            if has().await? {
                continue;
            }
            let add: Vec<String> = IDENT_COLS
                .split(", ")
                .map(|c| format!("ADD COLUMN {c}"))
                .collect();
            let alter = self
                .query(&format!(
                    "ALTER TABLE {db}.{table} {}, MODIFY ORDER BY ({order})",
                    add.join(", ")
                ))
                .await;
            if let Err(e) = alter
                && !has().await?
            {
                return Err(e);
            }
        }
        Ok(())
    }

    /// The store without a word to the server yet: settings read and checked.
    fn new(opts: &ClickHouseOptions) -> Result<ClickHouseStore> {
        let password = match &opts.password_file {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| ch(format!("{}: {e}", p.display())))?
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
            None => String::new(),
        };
        if !opts
            .database
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
            || opts.database.is_empty()
        {
            return Err(ch(format!(
                "database name `{}`: use letters, digits and _",
                opts.database
            )));
        }
        let base = opts.url.trim_end_matches('/').to_owned();
        let endpoint = reqwest::Url::parse(&format!("{base}/"))
            .map_err(|e| ch(format!("request to {base}/: {e}")))?;
        // reqwest's total timeout runs until the answer's body is read, as the limit did when
        // it wrapped request and body. No proxy from the environment: the server is named by
        // the configuration alone. No compression (reqwest's gzip feature is off), HTTP/1.
        let client = reqwest::Client::builder()
            .timeout(opts.timeout)
            .no_proxy()
            .build()
            .map_err(|e| ch(format!("{base}: {}", error_chain(&e))))?;
        Ok(ClickHouseStore {
            client,
            endpoint,
            base,
            db: opts.database.clone(),
            user: opts.user.clone(),
            password,
            timeout: opts.timeout,
        })
    }

    /// A POST of `body` to the server: the statement itself, or its data when the statement
    /// goes in the URL (`query_in_url`, for `INSERT ... FORMAT`).
    fn request(&self, query_in_url: Option<&str>, body: Vec<u8>) -> reqwest::RequestBuilder {
        let req = self
            .client
            .post(self.endpoint.clone())
            .basic_auth(&self.user, Some(&self.password))
            .body(body);
        match query_in_url {
            Some(q) => req.query(&[("query", q)]),
            None => req,
        }
    }

    /// Sends a request; the answer's body, or an error naming the server (with ClickHouse's
    /// own message when it answered with an error status).
    async fn exec(&self, query_in_url: Option<&str>, body: Vec<u8>) -> Result<Vec<u8>> {
        let resp = self
            .request(query_in_url, body)
            .send()
            .await
            .map_err(|e| self.http_error(e, ""))?;
        let status = resp.status();
        let body: Vec<u8> = resp
            .bytes()
            .await
            .map_err(|e| self.http_error(e, "reading the answer: "))?
            .into();
        if !status.is_success() {
            return Err(ch(format!(
                "{}: HTTP {status}: {}",
                self.base,
                String::from_utf8_lossy(&body).trim()
            )));
        }
        Ok(body)
    }

    fn http_error(&self, e: reqwest::Error, doing: &str) -> StoreError {
        if e.is_timeout() {
            ch(format!(
                "{}: no answer within {:?}",
                self.base, self.timeout
            ))
        } else {
            // reqwest's own message is generic ("error sending request"); the cause (refused,
            // reset, TLS) is further down the chain.
            // The URL is left out: the server is named first, the rest is the statement.
            ch(format!(
                "{}: {doing}{}",
                self.base,
                error_chain(&e.without_url())
            ))
        }
    }

    async fn query(&self, sql: &str) -> Result<Vec<u8>> {
        self.exec(None, sql.as_bytes().to_vec()).await
    }

    async fn rows<T: for<'de> Deserialize<'de>>(&self, sql: &str) -> Result<Vec<T>> {
        let body = self.query(&format!("{sql} FORMAT JSONEachRow")).await?;
        body.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                serde_json::from_slice(l).map_err(|e| {
                    ch(format!(
                        "unexpected row `{}`: {e}",
                        String::from_utf8_lossy(l)
                    ))
                })
            })
            .collect()
    }

    /// Inserts `JSONEachRow` lines (see [`each_row`]).
    async fn insert(&self, table: &str, body: Vec<u8>) -> Result<()> {
        if body.is_empty() {
            return Ok(());
        }
        let q = format!("INSERT INTO {}.{table} FORMAT JSONEachRow", self.db);
        self.exec(Some(&q), body).await.map(drop)
    }

    async fn create(&self) -> Result<()> {
        let db = &self.db;
        let counters =
            "bytes_sent UInt64, bytes_received UInt64, conns_opened UInt64, conns_carried UInt64,
            first_window_ms Int64, first_seen_ms Int64, last_seen_ms Int64";
        let key_cols = format!(
            "observer String, local_ip String, peer_ip String, server_port UInt16, role String, process String, {IDENT_COLS}"
        );
        let ddl = [
            format!("CREATE DATABASE IF NOT EXISTS {db}"),
            format!(
                "CREATE TABLE IF NOT EXISTS {db}.pair_minute (minute UInt32, report_id String, {key_cols}, {counters})
                 ENGINE = ReplacingMergeTree() PARTITION BY intDiv(minute, 86400)
                 ORDER BY (minute, {BASE_KEY}, report_id, {IDENT_KEY})"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {db}.pair_hour (period UInt32, {key_cols}, {counters}, version UInt64)
                 ENGINE = ReplacingMergeTree(version) PARTITION BY intDiv(period, {BUCKET})
                 ORDER BY (period, {KEY})"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {db}.pair_day (period UInt32, {key_cols}, {counters}, version UInt64)
                 ENGINE = ReplacingMergeTree(version) PARTITION BY intDiv(period, {BUCKET})
                 ORDER BY (period, {KEY})"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {db}.reports (day UInt32, report_id String, machine_id String, hostname String,
                    ec2 String, agent_version String, backend String, kernel String, seq UInt64,
                    window_start_ms Int64, window_end_ms Int64, received_ms Int64, pairs UInt64,
                    probe_drops UInt64, spool_dropped UInt64)
                 ENGINE = ReplacingMergeTree() PARTITION BY intDiv(day, {BUCKET}) ORDER BY (day, report_id)"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {db}.agent_addresses (day UInt32, machine_id String, address String)
                 ENGINE = ReplacingMergeTree() PARTITION BY intDiv(day, {BUCKET}) ORDER BY (day, machine_id, address)"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {db}.rollup_dirty (grain String, period UInt32, marked_at UInt32)
                 ENGINE = ReplacingMergeTree(marked_at) ORDER BY (grain, period)"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {db}.rollup_done (grain String, period UInt32, started_at UInt32, version UInt64)
                 ENGINE = ReplacingMergeTree(version) ORDER BY (grain, period)"
            ),
            // Host health (issue 12 item 5): minute rows per report, roll-ups per version.
            format!(
                "CREATE TABLE IF NOT EXISTS {db}.host_minute (period UInt32, machine_id String, report_id String, {HOST_COLS})
                 ENGINE = ReplacingMergeTree() PARTITION BY intDiv(period, 86400)
                 ORDER BY (period, machine_id, report_id)"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {db}.host_hour (period UInt32, machine_id String, {HOST_COLS}, version UInt64)
                 ENGINE = ReplacingMergeTree(version) PARTITION BY intDiv(period, {BUCKET})
                 ORDER BY (period, machine_id)"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {db}.host_day (period UInt32, machine_id String, {HOST_COLS}, version UInt64)
                 ENGINE = ReplacingMergeTree(version) PARTITION BY intDiv(period, {BUCKET})
                 ORDER BY (period, machine_id)"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {db}.cloud_snapshots (day UInt32, taken_ms Int64, body String)
                 ENGINE = ReplacingMergeTree(taken_ms) ORDER BY day"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {db}.schema_version (version UInt32, applied_at Int64)
                 ENGINE = ReplacingMergeTree() ORDER BY version"
            ),
        ];
        for q in ddl {
            self.query(&q).await?;
        }
        Ok(())
    }

    pub async fn ping(&self) -> Result<()> {
        self.query("SELECT 1").await.map(drop)
    }

    async fn server_now(&self) -> Result<i64> {
        #[derive(Deserialize)]
        struct Now {
            #[serde(deserialize_with = "num")]
            now: i64,
        }
        let rows: Vec<Now> = self.rows("SELECT toUInt32(now()) AS now").await?;
        rows.first()
            .map(|r| r.now)
            .ok_or_else(|| ch("no answer to SELECT now()"))
    }

    pub async fn ingest(
        &self,
        batch: &[std::sync::Arc<Ingest>],
        now: DateTime<Utc>,
    ) -> Result<Vec<Outcome>> {
        // Ids already stored (by this or another collector). A race with a concurrent insert of
        // the same report is harmless: readers collapse duplicates.
        let mut known: HashSet<String> = HashSet::new();
        if !batch.is_empty() {
            #[derive(Deserialize)]
            struct Id {
                report_id: String,
            }
            let days: BTreeSet<i64> = batch.iter().map(|i| i.day).collect();
            let ids: Vec<String> = batch.iter().map(|i| lit(&i.report_id)).collect();
            let q = format!(
                "SELECT DISTINCT report_id FROM {}.reports WHERE day IN ({}) AND report_id IN ({})",
                self.db,
                days.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                ids.join(",")
            );
            known = self
                .rows::<Id>(&q)
                .await?
                .into_iter()
                .map(|r| r.report_id)
                .collect();
        }
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut fresh = Vec::new();
        let mut seen: HashSet<&str> = HashSet::new();
        for ing in batch {
            if known.contains(&ing.report_id) || !seen.insert(&ing.report_id) {
                outcomes.push(Outcome::Duplicate);
            } else {
                outcomes.push(Outcome::Stored);
                fresh.push(ing.clone());
            }
        }
        if !fresh.is_empty() {
            self.ingest_unchecked(&fresh, now).await?;
        }
        Ok(outcomes)
    }

    /// Writes reports without looking for their ids first: what two collectors storing the same
    /// report at the same moment end up doing (readers collapse the copies). [`Self::ingest`]
    /// calls it for the reports it did not find.
    pub async fn ingest_unchecked(
        &self,
        fresh: &[std::sync::Arc<Ingest>],
        now: DateTime<Utc>,
    ) -> Result<()> {
        let minutes = each_row(fresh.iter().flat_map(|ing| {
            ing.rows.iter().map(|r| MinuteRow {
                minute: r.minute,
                report_id: &ing.report_id,
                observer: &ing.machine_id,
                local_ip: r.local_ip.to_string(),
                peer_ip: r.peer_ip.to_string(),
                server_port: r.server_port,
                role: r.role.as_str(),
                process: &r.process,
                // Clamped like SQLite's `i()`: each value fits an `i64`, sums saturate.
                bytes_sent: r.c.bytes_sent.min(COUNTER_MAX),
                bytes_received: r.c.bytes_received.min(COUNTER_MAX),
                conns_opened: r.c.conns_opened.min(COUNTER_MAX),
                conns_carried: r.c.conns_carried.min(COUNTER_MAX),
                first_window_ms: r.c.first_window_ms,
                first_seen_ms: r.c.first_seen_ms,
                last_seen_ms: r.c.last_seen_ms,
                ident: IdentCols::of(r),
            })
        }))?;
        let addresses = each_row(fresh.iter().flat_map(|ing| {
            ing.addresses.iter().map(|a| AddressRow {
                day: ing.day,
                machine_id: &ing.machine_id,
                address: a.to_string(),
            })
        }))?;
        let hosts = each_row(fresh.iter().filter_map(|ing| {
            let h = ing.host.as_ref()?;
            Some(HostRow {
                period: floor(ing.window_start.timestamp(), 60),
                machine_id: &ing.machine_id,
                report_id: &ing.report_id,
                sampled_ms: h.sampled_at.timestamp_millis(),
                uptime_seconds: h.uptime_seconds,
                load1: h.load1,
                load5: h.load5,
                load15: h.load15,
                memory_total_bytes: h.memory_total_bytes,
                memory_available_bytes: h.memory_available_bytes,
                cpus: h.cpus,
                load1_max: h.load1_max,
            })
        }))?;
        let mut periods: BTreeSet<(Grain, i64)> = BTreeSet::new();
        for ing in fresh {
            let minutes = ing.rows.iter().map(|r| r.minute);
            // A host sample makes its periods dirty too: their host roll-ups must be redone.
            let sample = ing
                .host
                .as_ref()
                .map(|_| floor(ing.window_start.timestamp(), 60));
            for minute in minutes.chain(sample) {
                periods.insert((Grain::Hour, floor(minute, HOUR)));
                periods.insert((Grain::Day, floor(minute, DAY)));
            }
        }
        let received = now.timestamp_millis();
        let reports = each_row(fresh.iter().map(|ing| {
            ReportRow {
                day: ing.day,
                report_id: &ing.report_id,
                machine_id: &ing.machine_id,
                hostname: &ing.hostname,
                ec2: ing
                    .ec2
                    .as_ref()
                    .map(|e| serde_json::to_string(e).expect("ec2 identity serialises"))
                    .unwrap_or_default(),
                agent_version: &ing.agent_version,
                backend: &ing.backend,
                kernel: &ing.kernel,
                seq: ing.seq,
                window_start_ms: ing.window_start.timestamp_millis(),
                window_end_ms: ing.window_end.timestamp_millis(),
                received_ms: received,
                pairs: ing.rows.len() as u64,
                probe_drops: ing.probe_drops.min(COUNTER_MAX),
                spool_dropped: ing.spool_dropped.min(COUNTER_MAX),
            }
        }))?;
        self.insert("pair_minute", minutes).await?;
        self.insert("agent_addresses", addresses).await?;
        self.insert("host_minute", hosts).await?;
        // Dirty marks after the rows, stamped by ClickHouse's clock (see the module doc).
        if !periods.is_empty() {
            let values: Vec<String> = periods
                .iter()
                .map(|(g, p)| format!("({}, {p}, toUInt32(now()))", lit(grain_name(*g))))
                .collect();
            self.query(&format!(
                "INSERT INTO {}.rollup_dirty (grain, period, marked_at) VALUES {}",
                self.db,
                values.join(", ")
            ))
            .await?;
        }
        // The report rows last: once an id is listed, a retry is answered "duplicate".
        self.insert("reports", reports).await
    }

    async fn rollup_state(&self, from: i64, to: i64) -> Result<RollupState> {
        #[derive(Deserialize)]
        struct Mark {
            grain: String,
            #[serde(deserialize_with = "num")]
            period: i64,
            #[serde(deserialize_with = "num")]
            at: i64,
        }
        let db = &self.db;
        let mut st = RollupState::default();
        let marks: Vec<Mark> = self
            .rows(&format!(
                "SELECT grain, period, max(marked_at) AS at FROM {db}.rollup_dirty
                 WHERE period >= {from} AND period < {to} GROUP BY grain, period"
            ))
            .await?;
        for m in marks {
            if let Some(g) = grain_of(&m.grain) {
                st.marked.insert((g, m.period), m.at);
            }
        }
        let done: Vec<Mark> = self
            .rows(&format!(
                "SELECT grain, period, argMax(started_at, version) AS at FROM {db}.rollup_done
                 WHERE period >= {from} AND period < {to} GROUP BY grain, period"
            ))
            .await?;
        for d in done {
            if let Some(g) = grain_of(&d.grain) {
                st.started.insert((g, d.period), d.at);
            }
        }
        Ok(st)
    }

    pub async fn range(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Result<RangeData> {
        let (f, t) = (floor(from.timestamp(), 60), floor(to.timestamp() + 59, 60));
        let db = &self.db;
        let state = self.rollup_state(floor(f, DAY), t).await?;
        let segments = plan(f, t, &|g, p| state.usable(g, p));
        let mut b = RangeBuilder::default();
        let mut ips: HashMap<String, IpAddr> = HashMap::new();
        for (grain, s, e) in &segments {
            let inner = match grain {
                Grain::Minute => dedup_minutes(db, *s, *e),
                Grain::Hour | Grain::Day => latest_rollups(db, grain.table(), *s, *e),
            };
            // Grouped by key: unique within the read.
            b.begin_read(true);
            let rows: Vec<KeyRow> = self
                .rows(&format!(
                    "SELECT {KEY}, {sums} FROM ({inner}) GROUP BY {KEY}",
                    sums = sums()
                ))
                .await?;
            for r in rows {
                let mut ip = |s: String| -> Result<IpAddr> {
                    if let Some(v) = ips.get(&s) {
                        return Ok(*v);
                    }
                    let v: IpAddr = s
                        .parse()
                        .map_err(|_| ch(format!("corrupt address `{s}`")))?;
                    ips.insert(s, v);
                    Ok(v)
                };
                let agent = b.agent(&r.observer);
                let process = b.process(&r.process);
                let role: trafficmap_model::report::Role = r
                    .role
                    .parse()
                    .map_err(|_| ch(format!("corrupt role `{}`", r.role)))?;
                let local = ip(r.local_ip)?;
                let peer = ip(r.peer_ip)?;
                let ident = r.ident.ident(&mut b, &mut ip)?;
                b.add_with(
                    agent,
                    local,
                    peer,
                    r.server_port,
                    role,
                    process,
                    ident,
                    &Counters {
                        // A value an older collector stored above `i64::MAX` reads clamped.
                        bytes_sent: r.bytes_sent.min(COUNTER_MAX),
                        bytes_received: r.bytes_received.min(COUNTER_MAX),
                        conns_opened: r.conns_opened.min(COUNTER_MAX),
                        conns_carried: r.conns_carried.min(COUNTER_MAX),
                        first_window_ms: r.first_window_ms,
                        first_seen_ms: r.first_seen_ms,
                        last_seen_ms: r.last_seen_ms,
                    },
                );
            }
        }
        // Health from the (de-duplicated) reports of the range, identity from the days it
        // touches (latest report wins).
        #[derive(Deserialize)]
        struct Health {
            machine_id: String,
            #[serde(deserialize_with = "num")]
            reports: u64,
            #[serde(deserialize_with = "num")]
            probe_drops: u64,
            #[serde(deserialize_with = "num")]
            spool_dropped: u64,
        }
        let dedup_reports = |where_: String| {
            format!(
                "SELECT report_id, any(machine_id) AS machine_id, any(hostname) AS hostname, any(ec2) AS ec2,
                    any(window_start_ms) AS window_start_ms, any(probe_drops) AS d_pd, any(spool_dropped) AS spool_dropped
                 FROM {db}.reports WHERE {where_} GROUP BY report_id"
            )
        };
        let (d0, d1) = (floor(f, DAY), floor(t - 1, DAY) + DAY);
        let health: Vec<Health> = self
            .rows(&format!(
                "SELECT machine_id, count() AS reports, {} AS probe_drops, max(spool_dropped) AS spool_dropped
                 FROM ({}) WHERE window_start_ms >= {} AND window_start_ms < {} GROUP BY machine_id",
                sat_sum("d_pd"),
                dedup_reports(format!("day >= {d0} AND day < {d1}")),
                f * 1000,
                t * 1000
            ))
            .await?;
        for h in health {
            let a = b.agent_mut(&h.machine_id);
            a.reports = sat_add(a.reports, h.reports);
            a.probe_drops = sat_add(a.probe_drops, h.probe_drops);
            a.spool_dropped = a.spool_dropped.max(h.spool_dropped);
        }
        #[derive(Deserialize)]
        struct Ident {
            machine_id: String,
            hostname: String,
            ec2: String,
        }
        let idents: Vec<Ident> = self
            .rows(&format!(
                "SELECT machine_id, argMax(hostname, window_start_ms) AS hostname, argMax(ec2, window_start_ms) AS ec2
                 FROM ({}) GROUP BY machine_id",
                dedup_reports(format!("day >= {d0} AND day < {d1}"))
            ))
            .await?;
        #[derive(Deserialize)]
        struct Addr {
            machine_id: String,
            address: String,
        }
        let addrs: Vec<Addr> = self
            .rows(&format!(
                "SELECT DISTINCT machine_id, address FROM {db}.agent_addresses WHERE day >= {d0} AND day < {d1}"
            ))
            .await?;
        let mut by_agent: HashMap<String, BTreeSet<IpAddr>> = HashMap::new();
        for a in addrs {
            by_agent.entry(a.machine_id).or_default().insert(
                a.address
                    .parse()
                    .map_err(|_| ch(format!("corrupt address `{}`", a.address)))?,
            );
        }
        for i in idents {
            if !b.has_agent(&i.machine_id) {
                continue;
            }
            let a = b.agent_mut(&i.machine_id);
            a.hostname = i.hostname;
            a.ec2 = if i.ec2.is_empty() {
                None
            } else {
                Some(
                    serde_json::from_str(&i.ec2)
                        .map_err(|e| ch(format!("corrupt ec2 identity: {e}")))?,
                )
            };
            a.addresses = by_agent.remove(&i.machine_id).unwrap_or_default();
        }
        // Host health (issue 12 item 5), per segment from the table of its grain.
        for (grain, s, e) in &segments {
            let rows: Vec<HostLast> = self
                .rows(&host_last(&host_periods(db, *grain, *s, *e)))
                .await?;
            for h in rows {
                if !b.has_agent(&h.machine_id) {
                    continue;
                }
                let sample = trafficmap_model::map::HostStats {
                    sampled_at: crate::period::from_ms(h.sampled_ms),
                    uptime_seconds: h.uptime_seconds,
                    load1: h.load1,
                    load5: h.load5,
                    load15: h.load15,
                    memory_total_bytes: h.memory_total_bytes,
                    memory_available_bytes: h.memory_available_bytes,
                    cpus: h.cpus,
                    load1_max: h.load1_max,
                };
                crate::range::fold_host(&mut b.agent_mut(&h.machine_id).host, sample);
            }
        }
        Ok(b.finish(from, to))
    }

    pub async fn days(&self) -> Result<Vec<NaiveDate>> {
        #[derive(Deserialize)]
        struct D {
            #[serde(deserialize_with = "num")]
            day: i64,
        }
        let db = &self.db;
        let rows: Vec<D> = self
            .rows(&format!(
                "SELECT day FROM (SELECT DISTINCT day FROM {db}.reports UNION ALL SELECT DISTINCT intDiv(period, 86400) * 86400 AS day FROM {db}.pair_day)
                 GROUP BY day ORDER BY day DESC"
            ))
            .await?;
        Ok(rows.into_iter().map(|d| super::day_of(d.day)).collect())
    }

    pub async fn day_changed_at(&self, day: NaiveDate) -> Result<Option<DateTime<Utc>>> {
        #[derive(Deserialize)]
        struct M {
            #[serde(deserialize_with = "num")]
            n: u64,
            #[serde(deserialize_with = "num")]
            at: i64,
        }
        let rows: Vec<M> = self
            .rows(&format!(
                "SELECT count() AS n, max(received_ms) AS at FROM {}.reports WHERE day = {}",
                self.db,
                day_start(day)
            ))
            .await?;
        Ok(rows
            .first()
            .filter(|m| m.n > 0)
            .map(|m| crate::period::from_ms(m.at)))
    }

    pub async fn save_cloud(
        &self,
        day: NaiveDate,
        taken: DateTime<Utc>,
        body: &[u8],
    ) -> Result<()> {
        #[derive(Serialize)]
        struct Row<'a> {
            day: i64,
            taken_ms: i64,
            body: &'a str,
        }
        let body = std::str::from_utf8(body).map_err(ch)?;
        let body = each_row([Row {
            day: day_start(day),
            taken_ms: taken.timestamp_millis(),
            body,
        }])?;
        self.insert("cloud_snapshots", body).await
    }

    pub async fn cloud(&self, day: NaiveDate) -> Result<Option<Vec<u8>>> {
        #[derive(Deserialize)]
        struct B {
            body: String,
        }
        let rows: Vec<B> = self
            .rows(&format!(
                "SELECT body FROM {}.cloud_snapshots WHERE day <= {} ORDER BY day DESC, taken_ms DESC LIMIT 1",
                self.db,
                day_start(day)
            ))
            .await?;
        Ok(rows.into_iter().next().map(|b| b.body.into_bytes()))
    }

    /// Recomputes closed periods marked dirty since their last recomputation (hours from
    /// minutes, then days from clean hours), then drops partitions past retention.
    pub async fn maintain(&self, now: DateTime<Utc>, retention: Retention) -> Result<Maintenance> {
        let db = &self.db;
        let mut m = Maintenance::default();
        let state = self.rollup_state(0, i64::from(u32::MAX)).await?;
        let mut pending: Vec<(Grain, i64)> = state
            .marked
            .keys()
            // Closed periods only (by the caller's clock): an open hour would be recomputed at
            // every pass; readers use its minutes meanwhile.
            .filter(|(g, p)| p + g.secs() + ROLLUP_GRACE <= now.timestamp() && !state.clean(*g, *p))
            .copied()
            .collect();
        pending.sort();
        // Hours first (Grain::Hour < Grain::Day), so that days are summed from fresh hours.
        let mut recomputed_hours: HashSet<i64> = HashSet::new();
        for (g, p) in pending {
            let started = self.server_now().await?;
            let version = (now.timestamp_millis().max(0) as u64) * 1000 + (p as u64 % 997);
            let source = match g {
                Grain::Hour => dedup_minutes(db, p, p + HOUR),
                Grain::Day => {
                    let hours_clean = (0..24).all(|h| {
                        let hp = p + h * HOUR;
                        recomputed_hours.contains(&hp) || state.clean(Grain::Hour, hp)
                    });
                    if !hours_clean {
                        continue;
                    }
                    latest_rollups(db, "pair_hour", p, p + DAY)
                }
                Grain::Minute => continue,
            };
            self.query(&format!(
                "INSERT INTO {db}.{table} (period, {KEY}, bytes_sent, bytes_received, conns_opened, conns_carried, first_window_ms, first_seen_ms, last_seen_ms, version)
                 SELECT toUInt32({p}) AS period, {KEY}, {sums}, toUInt64({version}) AS version FROM ({source}) GROUP BY {KEY}",
                sums = sums(),
                table = g.table()
            ))
            .await?;
            // Host health of the period: from the same finer grain as the pairs.
            let finer = if g == Grain::Hour {
                Grain::Minute
            } else {
                Grain::Hour
            };
            self.query(&format!(
                "INSERT INTO {db}.{table} (period, machine_id, sampled_ms, uptime_seconds, load1, load5, load15,
                    memory_total_bytes, memory_available_bytes, cpus, load1_max, version)
                 SELECT toUInt32({p}) AS period, machine_id, sampled_ms, uptime_seconds, load1, load5, load15,
                    memory_total_bytes, memory_available_bytes, cpus, load1_max, toUInt64({version}) AS version
                 FROM ({last})",
                table = host_table(g),
                last = host_last(&host_periods(db, finer, p, p + g.secs())),
            ))
            .await?;
            self.query(&format!(
                "INSERT INTO {db}.rollup_done (grain, period, started_at, version) VALUES ({}, {p}, {started}, {version})",
                lit(grain_name(g))
            ))
            .await?;
            if g == Grain::Hour {
                recomputed_hours.insert(p);
            }
            m.rolled_up += 1;
        }
        // Retention: whole partitions only (no TTL in 18.16, and mutations are heavy).
        let now_s = now.timestamp();
        let cut = |d: Duration| now_s - d.as_secs() as i64;
        let state = self.rollup_state(0, i64::from(u32::MAX)).await?;
        #[derive(Deserialize)]
        struct Part {
            table: String,
            partition: String,
        }
        let parts: Vec<Part> = self
            .rows(&format!(
                "SELECT DISTINCT table, partition FROM system.parts WHERE database = {} AND active",
                lit(db)
            ))
            .await?;
        for part in parts {
            let Ok(id) = part.partition.trim_matches('\'').parse::<i64>() else {
                continue;
            };
            let drop = match part.table.as_str() {
                "pair_minute" | "host_minute" => {
                    let day = id * DAY;
                    // Only days whose roll-ups are complete and clean lose their minutes.
                    day + DAY <= cut(retention.minutes)
                        && state.clean(Grain::Day, day)
                        && (0..24).all(|h| state.clean(Grain::Hour, day + h * HOUR))
                }
                "pair_hour" | "reports" | "host_hour" => (id + 1) * BUCKET <= cut(retention.hours),
                "pair_day" | "agent_addresses" | "host_day" => {
                    (id + 1) * BUCKET <= cut(retention.days)
                }
                _ => false,
            };
            if drop {
                self.query(&format!(
                    "ALTER TABLE {db}.{} DROP PARTITION {id}",
                    part.table
                ))
                .await?;
                m.deleted_rows += 1;
            }
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Credentials and the statement in the URL as the server receives them.
    #[test]
    fn encodings() {
        let store = ClickHouseStore::new(&ClickHouseOptions::default()).unwrap();
        let req = store.request(None, b"SELECT 1".to_vec()).build().unwrap();
        assert_eq!(req.headers()["authorization"], "Basic ZGVmYXVsdDo=");
        assert_eq!(req.url().as_str(), "http://127.0.0.1:8123/");
        let req = store
            .request(Some("SELECT 1 -- a'b"), Vec::new())
            .build()
            .unwrap();
        // Form encoding (`+` for a space), which ClickHouse's URL parameters accept.
        assert_eq!(
            req.url().as_str(),
            "http://127.0.0.1:8123/?query=SELECT+1+--+a%27b"
        );
        assert_eq!(lit("it's\\"), "'it\\'s\\\\'");
    }

    #[test]
    fn password_from_the_first_line_of_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\nsecond line\n").unwrap();
        let store = ClickHouseStore::new(&ClickHouseOptions {
            url: "https://ch.example:8443/".into(),
            password_file: Some(file),
            ..ClickHouseOptions::default()
        })
        .unwrap();
        let req = store.request(None, Vec::new()).build().unwrap();
        assert_eq!(req.headers()["authorization"], "Basic ZGVmYXVsdDpzM2NyZXQ=");
        assert_eq!(req.url().as_str(), "https://ch.example:8443/");
    }

    #[test]
    fn bad_settings_are_refused_before_any_request() {
        let err = |opts: ClickHouseOptions| ClickHouseStore::new(&opts).err().unwrap().to_string();
        assert_eq!(
            err(ClickHouseOptions {
                database: "a-b".into(),
                ..ClickHouseOptions::default()
            }),
            "clickhouse: database name `a-b`: use letters, digits and _"
        );
        assert!(
            err(ClickHouseOptions {
                password_file: Some("/nonexistent/pw".into()),
                ..ClickHouseOptions::default()
            })
            .starts_with("clickhouse: /nonexistent/pw: No such file")
        );
    }

    /// A local server that answers every request with `answer` (or never, for `None`).
    async fn fake_server(answer: Option<&'static [u8]>) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                match answer {
                    Some(a) => conn.write_all(a).await.unwrap(),
                    None => held.push(conn),
                }
            }
        });
        url
    }

    fn store_at(url: &str, timeout: Duration) -> ClickHouseStore {
        ClickHouseStore::new(&ClickHouseOptions {
            url: url.into(),
            timeout,
            ..ClickHouseOptions::default()
        })
        .unwrap()
    }

    /// Errors name the server first; ClickHouse's own message comes through whole.
    #[tokio::test]
    async fn errors_name_the_server() {
        let url = fake_server(Some(
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 42\r\nConnection: close\r\n\r\nCode: 60, e.displayText() = DB::Exception\n",
        ))
        .await;
        let err = store_at(&url, Duration::from_secs(5))
            .ping()
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "clickhouse: {url}: HTTP 500 Internal Server Error: Code: 60, e.displayText() = DB::Exception"
            )
        );
        let url = fake_server(None).await;
        let err = store_at(&url, Duration::from_millis(300))
            .ping()
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("clickhouse: {url}: no answer within 300ms")
        );
        // Nobody listening: the cause is in the message, not only "error sending request".
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let err = store_at(&url, Duration::from_secs(5))
            .ping()
            .await
            .unwrap_err()
            .to_string();
        assert!(err.starts_with(&format!("clickhouse: {url}: ")), "{err}");
        assert!(err.contains("onnection refused"), "{err}");
    }

    #[test]
    fn numbers_quoted_or_not() {
        #[derive(Deserialize)]
        struct R {
            #[serde(deserialize_with = "num")]
            a: u64,
            #[serde(deserialize_with = "num")]
            b: i64,
        }
        let r: R = serde_json::from_str(r#"{"a":"18446744073709551615","b":-5}"#).unwrap();
        assert_eq!((r.a, r.b), (u64::MAX, -5));
        assert!(serde_json::from_str::<R>(r#"{"a":"x","b":1}"#).is_err());
    }

    #[test]
    fn rollup_state_usability() {
        let mut s = RollupState::default();
        s.marked.insert((Grain::Hour, 0), 100);
        assert!(!s.usable(Grain::Hour, 0));
        s.started.insert((Grain::Hour, 0), 100);
        // Marked in the same second the recomputation started: not trusted.
        assert!(!s.usable(Grain::Hour, 0));
        s.started.insert((Grain::Hour, 0), 101);
        assert!(s.usable(Grain::Hour, 0));
        // Never marked, never computed: nothing there, but nothing to read from it either.
        assert!(s.clean(Grain::Hour, 3600));
        assert!(!s.usable(Grain::Hour, 3600));
    }
}
