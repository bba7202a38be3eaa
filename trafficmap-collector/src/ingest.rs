//! What the collector keeps of a report: one [`Row`] per report pair, stored as observed, one
//! side at a time; the two sides of a conversation are merged only when a map or query is built
//! ([`crate::merge`]), because the other side's report may arrive later, or at another
//! collector.

use std::{collections::BTreeSet, net::IpAddr};

use chrono::{DateTime, Utc};
use trafficmap_model::{
    bounds::{SatSum as _, sat_add},
    report::{Container, Ec2Identity, HostStats, Report, Role},
};

use crate::{
    period::{DAY, MINUTE, floor, ms},
    range::Counters,
};

/// A report pair as stored: the observer is the agent's `machine_id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub minute: i64,
    pub local_ip: IpAddr,
    pub peer_ip: IpAddr,
    pub server_port: u16,
    pub role: Role,
    pub process: String,
    /// Issue 11: the local process's container and the address a client connected to before
    /// translation; both part of the stored key.
    pub container: Option<Container>,
    pub service: Option<(IpAddr, u16)>,
    pub c: Counters,
}

/// Everything a store keeps from one accepted report.
#[derive(Clone, Debug, PartialEq)]
pub struct Ingest {
    pub report_id: String,
    pub seq: u64,
    pub machine_id: String,
    pub hostname: String,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    /// UTC day (seconds since the epoch at midnight) the window starts in.
    pub day: i64,
    /// The host's addresses: reported interface addresses plus the local side of every pair
    /// (loopback excluded).
    pub addresses: BTreeSet<IpAddr>,
    pub ec2: Option<Ec2Identity>,
    pub agent_version: String,
    pub backend: String,
    pub kernel: String,
    pub probe_drops: u64,
    pub spool_dropped: u64,
    /// Host health the report carried (issue 12 item 5) as one sample taken at `window_end`
    /// (its own `load1` the largest). Stores keep it in the period `window_start` falls in; an
    /// archive restore puts a whole day's summary here (last sample, the day's `load1_max`).
    pub host: Option<trafficmap_model::map::HostStats>,
    pub rows: Vec<Row>,
}

impl Ingest {
    /// Turns a validated report into what is stored.
    pub fn from_report(r: &Report) -> Ingest {
        let start = r.window.start;
        let minute = floor(start.timestamp(), MINUTE);
        let mut addresses: BTreeSet<IpAddr> = r
            .host
            .addresses
            .iter()
            .copied()
            .filter(|a| !a.is_loopback())
            .collect();
        let rows = r
            .pairs
            .iter()
            .map(|p| {
                if !p.local_ip.is_loopback() {
                    addresses.insert(p.local_ip);
                }
                // Open at the window's start = open at its end + closed - opened, as counted by
                // the agent for this window.
                let carried = sat_add(p.connections_active, p.connections_closed)
                    .saturating_sub(p.connections_opened);
                Row {
                    minute,
                    local_ip: p.local_ip,
                    peer_ip: p.peer_ip,
                    server_port: p.server_port,
                    role: p.role,
                    process: p.process.clone(),
                    container: p.container.clone(),
                    service: p.service_ip.zip(p.service_port),
                    c: Counters {
                        bytes_sent: p.bytes_sent,
                        bytes_received: p.bytes_received,
                        conns_opened: p.connections_opened,
                        conns_carried: carried,
                        first_window_ms: ms(start),
                        first_seen_ms: ms(p.first_seen),
                        last_seen_ms: ms(p.last_seen),
                    },
                }
            })
            .collect();
        Ingest {
            report_id: r.report_id.clone(),
            seq: r.seq,
            machine_id: r.host.machine_id.clone(),
            hostname: r.host.hostname.clone(),
            window_start: start,
            window_end: r.window.end,
            day: floor(start.timestamp(), DAY),
            addresses,
            ec2: r.host.ec2.clone(),
            agent_version: r.agent.version.clone(),
            backend: r.agent.backend.clone(),
            kernel: r.agent.kernel.clone(),
            probe_drops: r.health.drops.values().copied().sat_sum(),
            spool_dropped: r.health.spool_dropped,
            host: r.host.stats.map(|s| host_sample(&s, r.window.end)),
            rows,
        }
    }
}

/// One sample of a report's `host.stats`, as maps and stores keep it.
pub fn host_sample(s: &HostStats, at: DateTime<Utc>) -> trafficmap_model::map::HostStats {
    trafficmap_model::map::HostStats {
        sampled_at: at,
        uptime_seconds: s.uptime_seconds,
        load1: s.load1,
        load5: s.load5,
        load15: s.load15,
        memory_total_bytes: s.memory_total_bytes,
        memory_available_bytes: s.memory_available_bytes,
        cpus: s.cpus,
        load1_max: s.load1,
    }
}

/// The bounds of a report's `host.stats` for a stored sample (an archive extract is read as
/// hostile as a report), and `load1 <= load1_max <= MAX_LOAD`.
pub fn check_host_sample(
    h: &trafficmap_model::map::HostStats,
) -> Result<(), trafficmap_model::report::ReportError> {
    HostStats {
        uptime_seconds: h.uptime_seconds,
        load1: h.load1,
        load5: h.load5,
        load15: h.load15,
        memory_total_bytes: h.memory_total_bytes,
        memory_available_bytes: h.memory_available_bytes,
        cpus: h.cpus,
    }
    .validate()?;
    if !(h.load1..=trafficmap_model::bounds::MAX_LOAD).contains(&h.load1_max) {
        return Err(trafficmap_model::report::ReportError::Invalid(format!(
            "host.load1_max: {} is not within load1 {} to {}",
            h.load1_max,
            h.load1,
            trafficmap_model::bounds::MAX_LOAD
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_becomes_rows_and_addresses() {
        let r = Report::from_json(include_bytes!("../../schema/report-v1.example.json")).unwrap();
        let i = Ingest::from_report(&r);
        assert_eq!(i.rows.len(), 3);
        let ten: DateTime<Utc> = "2026-11-23T10:00:00Z".parse().unwrap();
        assert_eq!(i.rows[0].minute, ten.timestamp());
        assert_eq!(i.day, floor(i.window_start.timestamp(), DAY));
        // 8 active at the end + 2 closed - 3 opened = 7 open when the window began.
        assert_eq!(i.rows[0].c.conns_carried, 7);
        assert_eq!(i.rows[0].c.connections(), 10);
        assert_eq!(
            i.addresses
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["10.0.1.11", "fd00:1::11"]
        );
    }
}
