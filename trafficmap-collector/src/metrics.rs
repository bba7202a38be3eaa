//! The collector's own metrics (`GET /metrics`, OpenMetrics text). Label values come from small
//! fixed sets (reasons, operations, sources, views): no host, address or report id ever becomes a
//! label.

use std::sync::{Arc, OnceLock};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _},
    metrics::{
        MetricType, counter::ConstCounter, counter::Counter, family::Family, gauge::Gauge,
        histogram::Histogram,
    },
    registry::{Registry, Unit},
};

use crate::enrich::dns::DnsCache;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Operation {
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Refresh {
    pub source: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Source {
    pub source: &'static str,
}

/// Archive outcome of a day: `uploaded`, `unchanged` or `failed`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ArchiveResult {
    pub result: &'static str,
}

/// Daily report mails (issue 12, c2): `sent` or `failed`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MailResult {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Task {
    pub task: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapBuild {
    pub view: &'static str,
    /// `file` (a daily file served as is) or `store` (computed).
    pub from: &'static str,
}

pub struct Metrics {
    pub registry: Registry,
    pub reports_accepted: Counter,
    pub reports_duplicate: Counter,
    pub reports_rejected: Family<Reason, Counter>,
    pub pairs_ingested: Counter,
    pub ingest_seconds: Histogram,
    pub store_errors: Family<Operation, Counter>,
    pub enrichment_refreshes: Family<Refresh, Counter>,
    pub enrichment_last_success: Family<Source, Gauge>,
    pub maps_built: Family<MapBuild, Counter>,
    pub map_build_seconds: Histogram,
    pub daily_files_written: Counter,
    pub rolled_up: Counter,
    pub retention_deleted: Counter,
    pub ingest_waiting: Gauge,
    pub tokens_loaded: Gauge,
    // Identity, TLS and listener limits (issue 8, b2).
    /// Periodic work that panicked, by task (it runs again at its next tick).
    pub periodic_panics: Family<Task, Counter>,
    /// Connections closed at once, by reason (`max_connections`, `per_address`), or whose TLS
    /// handshake failed (`tls_handshake`).
    pub connections_refused: Family<Reason, Counter>,
    // Archive (issue 12).
    pub archive_days: Family<ArchiveResult, Counter>,
    pub archive_last_success: Gauge,
    // Daily reports by email (issue 12, c2).
    pub report_mails: Family<MailResult, Counter>,
    pub report_last_sent: Gauge,
    dns: Arc<OnceLock<Arc<DnsCache>>>,
}

struct DnsCollector(Arc<OnceLock<Arc<DnsCache>>>);

impl std::fmt::Debug for DnsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DnsCollector")
    }
}

impl Collector for DnsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(cache) = self.0.get() else {
            return Ok(());
        };
        let s = cache.stats();
        let mut m = encoder.encode_descriptor(
            "dns_lookups",
            "Reverse DNS lookups by outcome (dropped: the lookup queue was full).",
            None,
            MetricType::Counter,
        )?;
        for (result, v) in [
            ("resolved", s.resolved),
            ("not_found", s.not_found),
            ("failed", s.failed),
            ("timed_out", s.timed_out),
            ("dropped", s.dropped),
        ] {
            let labels = [("result", result)];
            ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("trafficmap_collector");
        let m = Metrics {
            reports_accepted: Counter::default(),
            reports_duplicate: Counter::default(),
            reports_rejected: Family::default(),
            pairs_ingested: Counter::default(),
            ingest_seconds: Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            store_errors: Family::default(),
            enrichment_refreshes: Family::default(),
            enrichment_last_success: Family::default(),
            maps_built: Family::default(),
            map_build_seconds: Histogram::new([
                0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            daily_files_written: Counter::default(),
            rolled_up: Counter::default(),
            retention_deleted: Counter::default(),
            ingest_waiting: Gauge::default(),
            tokens_loaded: Gauge::default(),
            periodic_panics: Family::default(),
            connections_refused: Family::default(),
            archive_days: Family::default(),
            archive_last_success: Gauge::default(),
            report_mails: Family::default(),
            report_last_sent: Gauge::default(),
            dns: Arc::default(),
            registry: Registry::default(),
        };
        registry.register(
            "reports_accepted",
            "Reports stored.",
            m.reports_accepted.clone(),
        );
        registry.register(
            "reports_duplicate",
            "Reports whose id was already stored (answered 200, nothing added).",
            m.reports_duplicate.clone(),
        );
        registry.register(
            "reports_rejected",
            "Reports refused, by reason (malformed, schema, invalid, unauthorized, identity, too_large, too_old, clock_skew, timeout, store_unavailable).",
            m.reports_rejected.clone(),
        );
        registry.register(
            "pairs_ingested",
            "Pair records stored.",
            m.pairs_ingested.clone(),
        );
        registry.register_with_unit(
            "ingest_duration",
            "Time from a report's arrival to its commit in the store.",
            Unit::Seconds,
            m.ingest_seconds.clone(),
        );
        registry.register(
            "store_errors",
            "Store operations that failed, by operation.",
            m.store_errors.clone(),
        );
        registry.register(
            "enrichment_refreshes",
            "Refreshes of enrichment sources, by source and result.",
            m.enrichment_refreshes.clone(),
        );
        registry.register_with_unit(
            "enrichment_last_success_timestamp",
            "When each enrichment source last refreshed successfully (Unix time).",
            Unit::Seconds,
            m.enrichment_last_success.clone(),
        );
        registry.register(
            "maps_built",
            "Maps served or written, by view and origin.",
            m.maps_built.clone(),
        );
        registry.register_with_unit(
            "map_build_duration",
            "Time to compute a map from the store.",
            Unit::Seconds,
            m.map_build_seconds.clone(),
        );
        registry.register(
            "daily_files_written",
            "Daily map files written to the output directory.",
            m.daily_files_written.clone(),
        );
        registry.register(
            "rollup_rows",
            "Minute rows folded into hours and days, or periods recomputed (ClickHouse).",
            m.rolled_up.clone(),
        );
        registry.register(
            "retention_deleted",
            "Rows (SQLite) or partitions (ClickHouse) removed by retention.",
            m.retention_deleted.clone(),
        );
        registry.register(
            "ingest_waiting",
            "Reports waiting to be read or written.",
            m.ingest_waiting.clone(),
        );
        registry.register(
            "tokens_loaded",
            "Agent tokens currently accepted.",
            m.tokens_loaded.clone(),
        );
        registry.register(
            "periodic_panics",
            "Periodic work (maintain, daily, reload) that panicked; it runs again at its next tick.",
            m.periodic_panics.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed without serving them, by reason (max_connections, per_address, tls_handshake).",
            m.connections_refused.clone(),
        );
        registry.register(
            "archive_days",
            "Days checked by the archive, by result (uploaded, unchanged, failed).",
            m.archive_days.clone(),
        );
        registry.register_with_unit(
            "archive_last_success_timestamp",
            "When an archive pass last finished without a failure (Unix time).",
            Unit::Seconds,
            m.archive_last_success.clone(),
        );
        registry.register(
            "report_mails",
            "Daily report mails, by result (sent, failed).",
            m.report_mails.clone(),
        );
        registry.register_with_unit(
            "report_last_sent_timestamp",
            "When a daily report mail was last accepted by the SMTP server (Unix time).",
            Unit::Seconds,
            m.report_last_sent.clone(),
        );
        registry.register_collector(Box::new(DnsCollector(m.dns.clone())));
        Metrics { registry, ..m }
    }

    pub fn watch_dns(&self, cache: Arc<DnsCache>) {
        let _ = self.dns.set(cache);
    }

    pub fn reject(&self, reason: &'static str) {
        self.reports_rejected
            .get_or_create(&Reason { reason })
            .inc();
    }

    pub fn periodic_panic(&self, task: &'static str) {
        self.periodic_panics.get_or_create(&Task { task }).inc();
    }

    pub fn refuse_connection(&self, reason: &'static str) {
        self.connections_refused
            .get_or_create(&Reason { reason })
            .inc();
    }

    pub fn store_error(&self, operation: &'static str) {
        self.store_errors
            .get_or_create(&Operation { operation })
            .inc();
    }

    pub fn refreshed(&self, source: &'static str, ok: bool, now: chrono::DateTime<chrono::Utc>) {
        self.enrichment_refreshes
            .get_or_create(&Refresh {
                source,
                result: if ok { "ok" } else { "error" },
            })
            .inc();
        if ok {
            self.enrichment_last_success
                .get_or_create(&Source { source })
                .set(now.timestamp());
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels() {
        let m = Metrics::new();
        m.reject("malformed");
        m.reject("malformed");
        m.reports_accepted.inc();
        m.pairs_ingested.inc_by(3);
        m.ingest_seconds.observe(0.002);
        m.refreshed(
            "ec2",
            true,
            chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        );
        let text = m.encode();
        for line in [
            "trafficmap_collector_reports_rejected_total{reason=\"malformed\"} 2",
            "trafficmap_collector_reports_accepted_total 1",
            "trafficmap_collector_pairs_ingested_total 3",
            "trafficmap_collector_ingest_duration_seconds_count 1",
            "trafficmap_collector_enrichment_refreshes_total{source=\"ec2\",result=\"ok\"} 1",
            "trafficmap_collector_enrichment_last_success_timestamp_seconds{source=\"ec2\"} 1700000000",
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in\n{text}"
            );
        }
    }
}
