//! The store extract of a day: what the store answers for the day (`Store::range` over it, the
//! same read the daily maps are built from, and `Store::cloud`), as gzip-compressed JSON Lines,
//! portable between SQLite and ClickHouse and readable with `zcat | jq`.
//!
//! Format `trafficmap-store-extract`, version 1 (docs/collector.md, "Archive"). One JSON object
//! per line, told apart by `kind`; lines are sorted so the same data gives the same bytes (the
//! archive compares days by hash):
//!
//! - `header` (first line): `format`, `version`, `day` (YYYY-MM-DD);
//! - `agent`: `machine_id`, `hostname`, `addresses`, `ec2` (or null), `reports`,
//!   `probe_drops`, `spool_dropped` (summed over the day), and `host` when its agent sent host
//!   health (the day's last sample with the day's `load1_max`; issue 12 item 5; absent from
//!   older extracts);
//! - `pair`: one observation key summed over the day: `agent` (its `machine_id`), `local_ip`,
//!   `peer_ip`, `server_port`, `role`, `process`, and the counters `bytes_sent`,
//!   `bytes_received`, `conns_opened`, `conns_carried`, `first_window_ms`, `first_seen_ms`,
//!   `last_seen_ms`; and, when the pair had them (issue 11), `container` (as in a report) and
//!   `service_ip`/`service_port`;
//! - `cloud` (at most one): `snapshot`, the EC2 snapshot in force that day.
//!
//! Restoring stores each agent's day as reports of the archive's own (`report_id`
//! `archive:DAY:MACHINE_ID:N`): the first carries the agent's pairs at the day's first minute,
//! the others are empty, so the day's report count, sums and first/last times read back as they
//! were, and the day's maps built from the restored store equal the archived ones.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{BufRead as _, Read as _, Write as _},
    net::IpAddr,
    sync::Arc,
};

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use trafficmap_model::{
    cloud::CloudSnapshot,
    report::{Container, Ec2Identity, Role},
};

use crate::{
    ingest::{Ingest, Row},
    mapservice,
    range::Counters,
    store::{Store, StoreError, day_start},
};

pub const FORMAT: &str = "trafficmap-store-extract";
pub const VERSION: u32 = 1;
/// An extract that inflates beyond this is cut there, and its last line fails to parse (a day of
/// a large fleet is far smaller).
const MAX_INFLATED: u64 = 8 << 30;
/// Reports per agent and day a restore recreates at most (one a minute is 1,440).
const MAX_REPORTS: u64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("compression: {0}")]
    Io(#[from] std::io::Error),
    #[error("line {line}: {why}")]
    Line { line: usize, why: String },
    #[error("{0}")]
    Invalid(String),
}

pub fn file_name(day: NaiveDate) -> String {
    format!("store-{}.jsonl.gz", day.format("%Y%m%d"))
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Line {
    Header {
        format: String,
        version: u32,
        day: NaiveDate,
    },
    Agent {
        machine_id: String,
        hostname: String,
        addresses: BTreeSet<IpAddr>,
        ec2: Option<Ec2Identity>,
        reports: u64,
        probe_drops: u64,
        spool_dropped: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host: Option<trafficmap_model::map::HostStats>,
    },
    Pair {
        agent: String,
        local_ip: IpAddr,
        peer_ip: IpAddr,
        server_port: u16,
        role: Role,
        process: String,
        bytes_sent: u64,
        bytes_received: u64,
        conns_opened: u64,
        conns_carried: u64,
        first_window_ms: i64,
        first_seen_ms: i64,
        last_seen_ms: i64,
        // Issue 11; absent from older extracts.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        container: Option<Container>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service_ip: Option<IpAddr>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service_port: Option<u16>,
    },
    Cloud {
        snapshot: Box<CloudSnapshot>,
    },
}

/// The day's extract, gzip-compressed.
pub async fn write(store: &Store, day: NaiveDate) -> Result<Vec<u8>, ExtractError> {
    let (from, to) = mapservice::day_range(day);
    let data = store.range(from, to).await?;
    let cloud = store.cloud(day).await?;
    let mut lines = vec![Line::Header {
        format: FORMAT.into(),
        version: VERSION,
        day,
    }];
    let mut agents: Vec<Line> = data
        .agents
        .iter()
        .map(|a| Line::Agent {
            machine_id: a.machine_id.clone(),
            hostname: a.hostname.clone(),
            addresses: a.addresses.clone(),
            ec2: a.ec2.clone(),
            reports: a.reports,
            probe_drops: a.probe_drops,
            spool_dropped: a.spool_dropped,
            host: a.host,
        })
        .collect();
    agents.sort_by_key(key);
    lines.extend(agents);
    let mut pairs = Vec::with_capacity(data.obs.len());
    for o in &data.obs {
        let (Some(a), Some(p)) = (
            data.agents.get(o.agent as usize),
            data.processes.get(o.process as usize),
        ) else {
            return Err(ExtractError::Invalid(
                "the store returned a row of an unknown agent or process".into(),
            ));
        };
        let c = o.c;
        let container = match o.container {
            None => None,
            Some(i) => Some(data.containers.get(i as usize).cloned().ok_or_else(|| {
                ExtractError::Invalid("the store returned a row of an unknown container".into())
            })?),
        };
        pairs.push(Line::Pair {
            agent: a.machine_id.clone(),
            local_ip: o.local_ip,
            peer_ip: o.peer_ip,
            server_port: o.server_port,
            role: o.role,
            process: p.clone(),
            bytes_sent: c.bytes_sent,
            bytes_received: c.bytes_received,
            conns_opened: c.conns_opened,
            conns_carried: c.conns_carried,
            first_window_ms: c.first_window_ms,
            first_seen_ms: c.first_seen_ms,
            last_seen_ms: c.last_seen_ms,
            container,
            service_ip: o.service.map(|s| s.0),
            service_port: o.service.map(|s| s.1),
        });
    }
    pairs.sort_by_key(key);
    lines.extend(pairs);
    if let Some(snapshot) = cloud {
        lines.push(Line::Cloud {
            snapshot: Box::new(snapshot),
        });
    }
    // No file name or time in the gzip header (flate2's default): same lines, same bytes.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    for l in &lines {
        serde_json::to_writer(&mut gz, l).map_err(std::io::Error::from)?;
        gz.write_all(b"\n")?;
    }
    Ok(gz.finish()?)
}

/// The sort key of a line (the store's row order is not stable).
type LineKey = (
    String,
    IpAddr,
    IpAddr,
    u16,
    Role,
    String,
    Option<Container>,
    Option<(IpAddr, u16)>,
);

fn key(l: &Line) -> LineKey {
    let unspecified = IpAddr::from([0, 0, 0, 0]);
    match l {
        Line::Agent { machine_id, .. } => (
            machine_id.clone(),
            unspecified,
            unspecified,
            0,
            Role::Unknown,
            String::new(),
            None,
            None,
        ),
        Line::Pair {
            agent,
            local_ip,
            peer_ip,
            server_port,
            role,
            process,
            container,
            service_ip,
            service_port,
            ..
        } => (
            agent.clone(),
            *local_ip,
            *peer_ip,
            *server_port,
            *role,
            process.clone(),
            container.clone(),
            service_ip.zip(*service_port),
        ),
        Line::Header { .. } | Line::Cloud { .. } => (
            String::new(),
            unspecified,
            unspecified,
            0,
            Role::Unknown,
            String::new(),
            None,
            None,
        ),
    }
}

struct AgentDay {
    hostname: String,
    addresses: BTreeSet<IpAddr>,
    ec2: Option<Ec2Identity>,
    reports: u64,
    probe_drops: u64,
    spool_dropped: u64,
    host: Option<trafficmap_model::map::HostStats>,
    rows: Vec<Row>,
}

/// Parses an extract and stores it as the day's data (see the module's comment).
pub async fn restore(
    store: &Store,
    day: NaiveDate,
    gz: &[u8],
    now: DateTime<Utc>,
) -> Result<(), ExtractError> {
    // Line by line: the inflated extract is never held whole in memory.
    let lines =
        std::io::BufReader::new(flate2::read::GzDecoder::new(gz).take(MAX_INFLATED)).lines();
    let start = day_start(day);
    let mut agents: BTreeMap<String, AgentDay> = BTreeMap::new();
    let mut cloud = None;
    let mut header = false;
    for (n, raw) in lines.enumerate() {
        let line = n + 1;
        let bad = |why: String| ExtractError::Line { line, why };
        let l: Line = serde_json::from_str(&raw?).map_err(|e| bad(e.to_string()))?;
        match l {
            Line::Header {
                format,
                version,
                day: d,
            } => {
                if line != 1 || format != FORMAT || version != VERSION || d != day {
                    return Err(bad(format!(
                        "header {format} version {version} of {d}: expected {FORMAT} version {VERSION} of {day} on line 1"
                    )));
                }
                header = true;
            }
            _ if !header => return Err(bad("no header line".into())),
            Line::Agent {
                machine_id,
                hostname,
                addresses,
                ec2,
                reports,
                probe_drops,
                spool_dropped,
                host,
            } => {
                if reports == 0 || reports > MAX_REPORTS {
                    return Err(bad(format!("{reports} reports: 1 to {MAX_REPORTS}")));
                }
                if let Some(h) = &host {
                    crate::ingest::check_host_sample(h).map_err(|e| bad(e.to_string()))?;
                }
                agents.insert(
                    machine_id,
                    AgentDay {
                        hostname,
                        addresses,
                        ec2,
                        reports,
                        probe_drops,
                        spool_dropped,
                        host,
                        rows: Vec::new(),
                    },
                );
            }
            Line::Pair {
                agent,
                local_ip,
                peer_ip,
                server_port,
                role,
                process,
                bytes_sent,
                bytes_received,
                conns_opened,
                conns_carried,
                first_window_ms,
                first_seen_ms,
                last_seen_ms,
                container,
                service_ip,
                service_port,
            } => {
                // Issue 11: the bounds of a report's pair.
                if let Some(c) = &container {
                    c.check().map_err(|e| bad(format!("container: {e}")))?;
                }
                if service_ip.is_some() != service_port.is_some() {
                    return Err(bad(
                        "service_ip and service_port come together or not at all".into(),
                    ));
                }
                let a = agents
                    .get_mut(&agent)
                    .ok_or_else(|| bad(format!("pair of agent {agent} before its agent line")))?;
                a.rows.push(Row {
                    minute: start,
                    local_ip,
                    peer_ip,
                    server_port,
                    role,
                    process,
                    container,
                    service: service_ip.zip(service_port),
                    c: Counters {
                        bytes_sent,
                        bytes_received,
                        conns_opened,
                        conns_carried,
                        first_window_ms,
                        first_seen_ms,
                        last_seen_ms,
                    },
                });
            }
            Line::Cloud { snapshot } => cloud = Some(snapshot),
        }
    }
    if !header {
        return Err(ExtractError::Invalid("empty extract".into()));
    }
    let window_start = crate::period::from_secs(start);
    let window_end = crate::period::from_secs(start + crate::period::MINUTE);
    for (machine_id, a) in agents {
        let mut batch = Vec::new();
        let mut rows = Some(a.rows);
        for n in 0..a.reports {
            let first = n == 0;
            batch.push(Arc::new(Ingest {
                report_id: format!("archive:{day}:{machine_id}:{n}"),
                seq: n,
                machine_id: machine_id.clone(),
                hostname: a.hostname.clone(),
                window_start,
                window_end,
                day: start,
                addresses: a.addresses.clone(),
                ec2: a.ec2.clone(),
                agent_version: "archive".into(),
                backend: "archive".into(),
                kernel: String::new(),
                // Summed over the day: all on the first report; the largest spool count is
                // the day's (a maximum), so every report may carry it.
                probe_drops: if first { a.probe_drops } else { 0 },
                spool_dropped: a.spool_dropped,
                // The day's summary, on the first report: the day reads back the same.
                host: if first { a.host } else { None },
                rows: if first {
                    rows.take().unwrap_or_default()
                } else {
                    Vec::new()
                },
            }));
        }
        store.ingest(batch, now).await?;
    }
    if let Some(snap) = cloud {
        store.save_cloud(day, &snap).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gz(text: &str) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(text.as_bytes()).unwrap();
        e.finish().unwrap()
    }

    /// A bad extract is refused whole: it is parsed to the end before anything is stored.
    #[tokio::test]
    async fn bad_extracts_store_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::Sqlite(Arc::new(
            crate::store::sqlite::SqliteStore::open(dir.path(), Default::default()).unwrap(),
        ));
        let day = NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
        let now = Utc::now();
        let header = r#"{"kind":"header","format":"trafficmap-store-extract","version":1,"day":"2026-11-23"}"#;
        let agent = r#"{"kind":"agent","machine_id":"m","hostname":"h","addresses":[],"ec2":null,"reports":1,"probe_drops":0,"spool_dropped":0}"#;
        let pair = r#"{"kind":"pair","agent":"m","local_ip":"10.0.0.1","peer_ip":"10.0.0.2","server_port":80,"role":"client","process":"curl","bytes_sent":1,"bytes_received":2,"conns_opened":1,"conns_carried":0,"first_window_ms":0,"first_seen_ms":0,"last_seen_ms":0}"#;
        let other_day = header.replace("2026-11-23", "2026-11-22");
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"not gzip".to_vec(), "compression"),
            (gz(""), "empty extract"),
            (gz(&format!("{agent}\n")), "line 1: no header line"),
            (gz(&format!("{other_day}\n")), "line 1: header"),
            (
                gz(&format!("{header}\n{pair}\n{agent}\n")),
                "line 2: pair of agent m before",
            ),
            (
                gz(&format!("{header}\n{agent}\n{pair}\n{{\"kind\":\"pair\"")),
                "line 4:",
            ),
            (
                gz(&format!(
                    "{header}\n{}\n",
                    agent.replace("\"reports\":1", "\"reports\":0")
                )),
                "line 2: 0 reports",
            ),
        ];
        for (body, want) in cases {
            let err = restore(&store, day, &body, now)
                .await
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(want), "`{err}` should start with `{want}`");
        }
        assert_eq!(store.days().await.unwrap(), Vec::<NaiveDate>::new());
        // The same lines, well formed, are stored.
        restore(
            &store,
            day,
            &gz(&format!("{header}\n{agent}\n{pair}\n")),
            now,
        )
        .await
        .unwrap();
        assert_eq!(store.days().await.unwrap(), [day]);
    }
}
