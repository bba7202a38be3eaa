//! Prometheus metrics of the agent (OpenMetrics through prometheus-client): per-pair byte
//! counters, bounded to the top K pairs plus one `other` series with idle series expiring, and
//! the agent's own health.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};
use trafficmap_model::report::Pair;

/// Labels of the per-pair series: no ephemeral ports, no PIDs (bounded by construction).
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct PairLabels {
    pub peer: String,
    pub server_port: String,
    pub role: String,
    pub process: String,
    /// Issue 11: the Kubernetes namespace and workload of the local process's container
    /// (empty when none), bounded by [`WorkloadCap`].
    pub namespace: String,
    pub workload: String,
}

impl PairLabels {
    /// Labels of `p`, its namespace and workload taken as they are (see [`WorkloadCap`]).
    pub fn of(p: &Pair) -> PairLabels {
        PairLabels {
            peer: p.peer_ip.to_string(),
            server_port: p.server_port.to_string(),
            role: match p.role {
                trafficmap_model::report::Role::Client => "client",
                trafficmap_model::report::Role::Server => "server",
                trafficmap_model::report::Role::Unknown => "unknown",
            }
            .into(),
            process: p.process.clone(),
            namespace: p
                .container
                .as_ref()
                .and_then(|c| c.namespace.clone())
                .unwrap_or_default(),
            workload: p
                .container
                .as_ref()
                .and_then(|c| c.workload.clone())
                .unwrap_or_default(),
        }
    }

    /// The series that sums every pair outside the top K.
    pub fn other() -> PairLabels {
        PairLabels {
            peer: "other".into(),
            server_port: "other".into(),
            role: "other".into(),
            process: "other".into(),
            namespace: "other".into(),
            workload: "other".into(),
        }
    }
}

/// Bounds the distinct `(namespace, workload)` label values of the pair series (issue 11): the
/// first `max` values seen keep their names while in use; a value idle for `expiry` frees its
/// place; any other value is exported as `namespace="other", workload="other"`. The empty
/// value (no container, or no Kubernetes names) is always allowed.
#[derive(Debug)]
pub struct WorkloadCap {
    max: usize,
    expiry: Duration,
    seen: HashMap<(String, String), Duration>,
}

impl WorkloadCap {
    pub fn new(max: usize, expiry: Duration) -> Self {
        WorkloadCap {
            max,
            expiry,
            seen: HashMap::new(),
        }
    }

    /// Replaces `l`'s namespace and workload by `other` if they do not fit. `now` is time
    /// since start.
    pub fn apply(&mut self, l: &mut PairLabels, now: Duration) {
        if l.namespace.is_empty() && l.workload.is_empty() {
            return;
        }
        let key = (
            std::mem::take(&mut l.namespace),
            std::mem::take(&mut l.workload),
        );
        if let Some(t) = self.seen.get_mut(&key) {
            *t = now;
        } else {
            if self.seen.len() >= self.max {
                let expiry = self.expiry;
                self.seen.retain(|_, t| now.saturating_sub(*t) < expiry);
            }
            if self.seen.len() >= self.max {
                l.namespace = "other".into();
                l.workload = "other".into();
                return;
            }
            self.seen.insert(key.clone(), now);
        }
        (l.namespace, l.workload) = key;
    }
}

/// Which pairs get a series of their own. A pair keeps its slot while it moves bytes; a slot
/// idle for `expiry` is freed. Free slots go to the pairs that moved the most bytes in the drain
/// that finds them. Every other pair's bytes go to `other` from then on, so each series only
/// ever grows and the sum over all series is the agent's total.
#[derive(Debug)]
pub struct TopK {
    k: usize,
    expiry: Duration,
    /// Tracked label sets and when they last moved bytes.
    tracked: HashMap<PairLabels, Duration>,
}

impl TopK {
    pub fn new(k: usize, expiry: Duration) -> Self {
        TopK {
            k,
            expiry,
            tracked: HashMap::new(),
        }
    }

    pub fn set_limits(&mut self, k: usize, expiry: Duration) {
        self.k = k;
        self.expiry = expiry;
    }

    /// `now` is time since start. Returns the label sets that get their own series now, and
    /// the ones that expired (to remove from the registry).
    pub fn assign(
        &mut self,
        now: Duration,
        bytes: &HashMap<PairLabels, u64>,
    ) -> (HashSet<PairLabels>, Vec<PairLabels>) {
        let expiry = self.expiry;
        let mut expired = Vec::new();
        self.tracked.retain(|l, last| {
            let keep = now.saturating_sub(*last) < expiry || bytes.get(l).is_some_and(|&b| b > 0);
            if !keep {
                expired.push(l.clone());
            }
            keep
        });
        for (l, &b) in bytes {
            if b > 0
                && let Some(last) = self.tracked.get_mut(l)
            {
                *last = now;
            }
        }
        let mut candidates: Vec<(&PairLabels, u64)> = bytes
            .iter()
            .filter(|(l, b)| **b > 0 && !self.tracked.contains_key(*l))
            .map(|(l, b)| (l, *b))
            .collect();
        // Most bytes first; ties broken by label for determinism.
        candidates.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        for (l, _) in candidates {
            if self.tracked.len() >= self.k {
                break;
            }
            self.tracked.insert(l.clone(), now);
        }
        expired.sort();
        (self.tracked.keys().cloned().collect(), expired)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InfoLabels {
    pub version: String,
    pub backend: String,
    pub kernel: String,
}

/// Everything the agent exports.
pub struct Metrics {
    registry: Registry,
    pub sent: Family<PairLabels, Counter>,
    pub received: Family<PairLabels, Counter>,
    top_k: Mutex<TopK>,
    /// Issue 11: bound of the pair series' namespace/workload labels.
    workloads: Mutex<WorkloadCap>,
    /// Issue 11: `trafficmap_container_names_total{source,result}`.
    pub container_names: Family<crate::containers::NameLabels, Counter>,
    pub probe_drops: Family<ReasonLabels, Counter>,
    pub drains: Counter,
    pub drain_duration: Histogram,
    pub last_drain_duration: Gauge<f64, AtomicU64>,
    pub map_entries: Gauge,
    pub map_capacity: Gauge,
    pub tracked_connections: Gauge,
    pub vanished_connections: Counter,
    pub pair_series: Gauge,
    pub spool_reports: Gauge,
    pub spool_bytes: Gauge,
    pub spool_dropped: Counter,
    pub reports_shipped: Counter,
    pub reports_failed: Family<ReasonLabels, Counter>,
    last_spool_dropped: AtomicU64,
    // Issue 8 (an agent that keeps its data): rejected/, quarantine, reports held in memory.
    pub spool_rejected_bytes: Gauge,
    pub spool_rejected_dropped: Counter,
    last_rejected_dropped: AtomicU64,
    pub spool_quarantined: Counter,
    last_quarantined: AtomicU64,
    pub emit_failures: Counter,
    pub emit_pending: Gauge,
    pub emit_dropped: Counter,
    // Issue 8 (reports within the model's bounds, `sanitize`): what was fixed, what still broke.
    pub report_fixes: Family<ReasonLabels, Counter>,
    pub report_invalid: Counter,
    pub host_addresses_omitted: Gauge,
    // Kubernetes names (issue 11, k11-k8s): trafficmap_k8s_requests_total, trafficmap_k8s_pods.
    pub k8s: crate::k8s::K8sMetrics,
    // Issue 11, NAT undone (k11-nat): `trafficmap_conntrack_*`.
    pub conntrack: crate::conntrack::ConntrackMetrics,
}

impl Metrics {
    pub fn new(top_k: usize, expiry: Duration) -> Metrics {
        let mut registry = Registry::with_prefix("trafficmap");
        let sent = Family::<PairLabels, Counter>::default();
        let received = Family::<PairLabels, Counter>::default();
        registry.register_with_unit(
            "tcp_sent",
            "TCP payload bytes the local process sent to the peer (top pairs; the rest under peer=\"other\")",
            Unit::Bytes,
            sent.clone(),
        );
        registry.register_with_unit(
            "tcp_received",
            "TCP payload bytes the local process received from the peer (top pairs; the rest under peer=\"other\")",
            Unit::Bytes,
            received.clone(),
        );
        let container_names = Family::<crate::containers::NameLabels, Counter>::default();
        registry.register(
            "container_names",
            "Container name lookups per source (podman, docker, kubernetes) and result (hit, miss)",
            container_names.clone(),
        );
        let probe_drops = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "probe_errors",
            "Events the eBPF probe could not record, by reason (should stay 0)",
            probe_drops.clone(),
        );
        let drains = Counter::default();
        registry.register("drains", "Reads of the probe's maps", drains.clone());
        let drain_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register_with_unit(
            "drain_duration",
            "Time to read the probe and build a report",
            Unit::Seconds,
            drain_duration.clone(),
        );
        let last_drain_duration = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "last_drain_duration",
            "Time the most recent drain took",
            Unit::Seconds,
            last_drain_duration.clone(),
        );
        let map_entries = Gauge::default();
        registry.register(
            "probe_map_entries",
            "Entries in the probe's live connection table",
            map_entries.clone(),
        );
        let map_capacity = Gauge::default();
        registry.register(
            "probe_map_capacity",
            "Capacity of the probe's live connection table",
            map_capacity.clone(),
        );
        let tracked_connections = Gauge::default();
        registry.register(
            "tracked_connections",
            "Connections whose counters the agent follows",
            tracked_connections.clone(),
        );
        let vanished_connections = Counter::default();
        registry.register(
            "vanished_connections",
            "Connections that disappeared without a final record (should stay 0)",
            vanished_connections.clone(),
        );
        let pair_series = Gauge::default();
        registry.register(
            "pair_series",
            "Pairs exported with series of their own (at most metrics_top_k)",
            pair_series.clone(),
        );
        let spool_reports = Gauge::default();
        registry.register(
            "spool_reports",
            "Reports waiting in the spool for the collector",
            spool_reports.clone(),
        );
        let spool_bytes = Gauge::default();
        registry.register_with_unit(
            "spool",
            "Size of the reports waiting in the spool",
            Unit::Bytes,
            spool_bytes.clone(),
        );
        let spool_dropped = Counter::default();
        registry.register(
            "spool_dropped_reports",
            "Reports dropped because the spool was full (oldest first)",
            spool_dropped.clone(),
        );
        let reports_shipped = Counter::default();
        registry.register(
            "reports_shipped",
            "Reports the collector accepted",
            reports_shipped.clone(),
        );
        let reports_failed = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "report_send_failures",
            "Failed attempts to send a report, by reason",
            reports_failed.clone(),
        );
        let spool_rejected_bytes = Gauge::default();
        registry.register_with_unit(
            "agent_spool_rejected",
            "Size of the reports the collector refused for good (rejected/); counts against spool_max_bytes",
            Unit::Bytes,
            spool_rejected_bytes.clone(),
        );
        let spool_rejected_dropped = Counter::default();
        registry.register(
            "agent_spool_rejected_dropped_reports",
            "Rejected reports deleted to make room in the spool (oldest first)",
            spool_rejected_dropped.clone(),
        );
        let spool_quarantined = Counter::default();
        registry.register(
            "agent_spool_quarantined_files",
            "Corrupt spool files moved to quarantine/",
            spool_quarantined.clone(),
        );
        let emit_failures = Counter::default();
        registry.register(
            "agent_emit_failures",
            "Failed attempts to write a report to the spool or output file (disk full, I/O error); the report stays in memory and is retried",
            emit_failures.clone(),
        );
        let emit_pending = Gauge::default();
        registry.register(
            "agent_emit_pending_reports",
            "Reports held in memory because writing them failed",
            emit_pending.clone(),
        );
        let emit_dropped = Counter::default();
        registry.register(
            "agent_emit_dropped_reports",
            "Reports held in memory that were dropped (oldest first) because too many piled up",
            emit_dropped.clone(),
        );
        let report_fixes = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "agent_report_fixes",
            "Values brought within the report bounds before emitting, by reason (window_shortened, string, address_omitted, pair_merged, map_entries_clamped, counter_clamped; host_stats_omitted: the report went without host health, /proc unreadable)",
            report_fixes.clone(),
        );
        let report_invalid = Counter::default();
        registry.register(
            "agent_report_invalid",
            "Reports that still broke a report bound after sanitising (a bug: logged at error, spooled anyway)",
            report_invalid.clone(),
        );
        let host_addresses_omitted = Gauge::default();
        registry.register(
            "agent_host_addresses_omitted",
            "Interface addresses left out of reports (duplicates, or beyond the 256 lowest)",
            host_addresses_omitted.clone(),
        );
        let k8s = crate::k8s::K8sMetrics::register(&mut registry);
        let conntrack = crate::conntrack::ConntrackMetrics::register(&mut registry);
        Metrics {
            k8s,
            conntrack,
            report_fixes,
            report_invalid,
            host_addresses_omitted,
            spool_rejected_bytes,
            spool_rejected_dropped,
            last_rejected_dropped: AtomicU64::new(0),
            spool_quarantined,
            last_quarantined: AtomicU64::new(0),
            emit_failures,
            emit_pending,
            emit_dropped,
            registry,
            sent,
            received,
            top_k: Mutex::new(TopK::new(top_k, expiry)),
            workloads: Mutex::new(WorkloadCap::new(DEFAULT_MAX_WORKLOADS, expiry)),
            container_names,
            probe_drops,
            drains,
            drain_duration,
            last_drain_duration,
            map_entries,
            map_capacity,
            tracked_connections,
            vanished_connections,
            pair_series,
            spool_reports,
            spool_bytes,
            spool_dropped,
            reports_shipped,
            reports_failed,
            last_spool_dropped: AtomicU64::new(0),
        }
    }

    /// `trafficmap_agent_info{version,backend,kernel} 1`, once the probe is loaded.
    pub fn set_info(&mut self, labels: InfoLabels) {
        self.registry.register(
            "agent",
            "Agent version, probe backend and kernel",
            prometheus_client::metrics::info::Info::new(labels),
        );
    }

    pub fn set_limits(&self, k: usize, expiry: Duration) {
        self.top_k.lock().unwrap().set_limits(k, expiry);
        self.workloads.lock().unwrap().expiry = expiry;
    }

    /// Most distinct (namespace, workload) label values (`[containers] metrics_max_workloads`).
    pub fn set_max_workloads(&self, max: usize) {
        self.workloads.lock().unwrap().max = max;
    }

    /// Adds one drain's pairs to the per-pair counters.
    pub fn record_pairs(&self, now: Duration, pairs: &[Pair]) {
        let mut by_labels: HashMap<PairLabels, (u64, u64)> = HashMap::new();
        let mut workloads = self.workloads.lock().unwrap();
        for p in pairs {
            let mut l = PairLabels::of(p);
            workloads.apply(&mut l, now);
            let e = by_labels.entry(l).or_default();
            e.0 = e.0.saturating_add(p.bytes_sent);
            e.1 = e.1.saturating_add(p.bytes_received);
        }
        drop(workloads);
        let totals: HashMap<PairLabels, u64> = by_labels
            .iter()
            .map(|(l, (s, r))| (l.clone(), s.saturating_add(*r)))
            .collect();
        let (tracked, expired) = self.top_k.lock().unwrap().assign(now, &totals);
        for l in &expired {
            self.sent.remove(l);
            self.received.remove(l);
        }
        let (mut other_s, mut other_r) = (0u64, 0u64);
        for (l, (s, r)) in by_labels {
            if tracked.contains(&l) {
                inc_saturating(&self.sent.get_or_create(&l), s);
                inc_saturating(&self.received.get_or_create(&l), r);
            } else {
                other_s = other_s.saturating_add(s);
                other_r = other_r.saturating_add(r);
            }
        }
        if other_s > 0 || other_r > 0 {
            inc_saturating(&self.sent.get_or_create(&PairLabels::other()), other_s);
            inc_saturating(&self.received.get_or_create(&PairLabels::other()), other_r);
        }
        self.pair_series.set(tracked.len() as i64);
    }

    /// Adds one drain's drops (the report's `health.drops`) to the counters.
    pub fn record_drops(&self, drops: &std::collections::BTreeMap<String, u64>) {
        for (reason, &n) in drops {
            let c = self.probe_drops.get_or_create(&ReasonLabels {
                reason: reason.clone(),
            });
            inc_saturating(&c, n);
        }
    }

    pub fn record_spool(&self, spool: &crate::spool::Spool) {
        self.spool_reports.set(gauge(spool.len() as u64));
        self.spool_bytes.set(gauge(spool.bytes()));
        self.spool_rejected_bytes.set(gauge(spool.rejected_bytes()));
        for (total, last, counter) in [
            (
                spool.dropped_total(),
                &self.last_spool_dropped,
                &self.spool_dropped,
            ),
            (
                spool.rejected_dropped_total(),
                &self.last_rejected_dropped,
                &self.spool_rejected_dropped,
            ),
            (
                spool.quarantined_total(),
                &self.last_quarantined,
                &self.spool_quarantined,
            ),
        ] {
            let prev = last.swap(total, Ordering::Relaxed);
            inc_saturating(counter, total.saturating_sub(prev));
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("encoding to a String cannot fail");
        out
    }
}

/// Adds `n` to a counter, stopping at u64::MAX instead of wrapping to a small value (each
/// counter has one writer, so reading then adding does not race).
pub fn inc_saturating(c: &Counter, n: u64) {
    c.inc_by(n.min(u64::MAX - c.get()));
}

/// A u64 as a gauge value (gauges are i64), saturating.
pub fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Default of `[containers] metrics_max_workloads`.
pub const DEFAULT_MAX_WORKLOADS: usize = 100;

/// Content type of OpenMetrics text; with `text/plain` Prometheus would use its classic parser.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    fn l(peer: &str) -> PairLabels {
        PairLabels {
            peer: peer.into(),
            server_port: "443".into(),
            role: "client".into(),
            process: "curl".into(),
            namespace: String::new(),
            workload: String::new(),
        }
    }

    fn bytes(v: &[(&str, u64)]) -> HashMap<PairLabels, u64> {
        v.iter().map(|(p, b)| (l(p), *b)).collect()
    }

    #[test]
    fn top_k_keeps_slots_and_expires_idle() {
        let mut t = TopK::new(2, Duration::from_secs(60));
        let (tracked, expired) =
            t.assign(Duration::ZERO, &bytes(&[("a", 10), ("b", 30), ("c", 20)]));
        assert_eq!(tracked, [l("b"), l("c")].into_iter().collect());
        assert!(expired.is_empty());
        // `a` now moves the most, but slots are kept by pairs still moving bytes.
        let (tracked, _) = t.assign(Duration::from_secs(30), &bytes(&[("a", 1000), ("b", 1)]));
        assert_eq!(tracked, [l("b"), l("c")].into_iter().collect());
        // `c` idle for 60 s: expires, and `a` takes its slot.
        let (tracked, expired) = t.assign(Duration::from_secs(60), &bytes(&[("a", 5), ("b", 1)]));
        assert_eq!(expired, vec![l("c")]);
        assert_eq!(tracked, [l("a"), l("b")].into_iter().collect());
    }

    fn pair(peer: &str, sent: u64, recv: u64) -> Pair {
        let t = "2026-11-23T10:00:00Z".parse().unwrap();
        Pair {
            local_ip: "10.0.0.1".parse().unwrap(),
            peer_ip: peer.parse().unwrap(),
            server_port: 443,
            role: trafficmap_model::report::Role::Client,
            role_source: trafficmap_model::report::RoleSource::Observed,
            process: "curl".into(),
            bytes_sent: sent,
            bytes_received: recv,
            connections_opened: 1,
            connections_closed: 0,
            connections_active: 1,
            first_seen: t,
            last_seen: t,
            container: None,
            service_ip: None,
            service_port: None,
        }
    }

    #[test]
    fn other_series_sums_the_rest_and_totals_match() {
        let m = Metrics::new(1, Duration::from_secs(600));
        m.record_pairs(
            Duration::ZERO,
            &[
                pair("10.0.0.2", 100, 1),
                pair("10.0.0.3", 10, 2),
                pair("10.0.0.4", 5, 3),
            ],
        );
        let text = m.encode();
        assert!(text.contains(
            "trafficmap_tcp_sent_bytes_total{peer=\"10.0.0.2\",server_port=\"443\",role=\"client\",process=\"curl\",namespace=\"\",workload=\"\"} 100\n"
        ), "{text}");
        assert!(text.contains(
            "trafficmap_tcp_sent_bytes_total{peer=\"other\",server_port=\"other\",role=\"other\",process=\"other\",namespace=\"other\",workload=\"other\"} 15\n"
        ), "{text}");
        assert!(text.contains(
            "trafficmap_tcp_received_bytes_total{peer=\"other\",server_port=\"other\",role=\"other\",process=\"other\",namespace=\"other\",workload=\"other\"} 5\n"
        ), "{text}");
        assert!(text.contains("# TYPE trafficmap_tcp_sent_bytes counter\n"));
        assert!(text.contains("# UNIT trafficmap_tcp_sent_bytes bytes\n"));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn drops_of_each_drain_add_up() {
        let m = Metrics::new(10, Duration::from_secs(600));
        m.record_drops(&[("conns_full".to_owned(), 3)].into_iter().collect());
        m.record_drops(&[("conns_full".to_owned(), 2)].into_iter().collect());
        assert!(
            m.encode()
                .contains("trafficmap_probe_errors_total{reason=\"conns_full\"} 5\n")
        );
    }

    #[test]
    fn workload_labels_are_capped_and_freed_when_idle() {
        let m = Metrics::new(100, Duration::from_secs(600));
        m.set_max_workloads(2);
        let with = |peer: &str, ns: &str, wl: &str| {
            let mut p = pair(peer, 10, 0);
            p.container = Some(trafficmap_model::report::Container {
                id: "a".repeat(64),
                runtime: trafficmap_model::report::ContainerRuntime::Containerd,
                name: None,
                pod: None,
                namespace: Some(ns.into()),
                workload_kind: Some("Deployment".into()),
                workload: Some(wl.into()),
            });
            p
        };
        m.record_pairs(
            Duration::ZERO,
            &[
                with("10.0.0.2", "shop", "web"),
                with("10.0.0.3", "shop", "db"),
                with("10.0.0.4", "ops", "cron"),
                pair("10.0.0.5", 10, 0),
            ],
        );
        let text = m.encode();
        let line = |peer: &str, ns: &str, wl: &str| {
            format!(
                "trafficmap_tcp_sent_bytes_total{{peer=\"{peer}\",server_port=\"443\",role=\"client\",process=\"curl\",namespace=\"{ns}\",workload=\"{wl}\"}} 10\n"
            )
        };
        for l in [
            line("10.0.0.2", "shop", "web"),
            line("10.0.0.3", "shop", "db"),
            line("10.0.0.4", "other", "other"),
            line("10.0.0.5", "", ""),
        ] {
            assert!(text.contains(&l), "{l} not in {text}");
        }
        // 600 s later `shop/db` was idle (only web moved at 300 s): `ops/cron` takes its place.
        m.record_pairs(Duration::from_secs(300), &[with("10.0.0.2", "shop", "web")]);
        m.record_pairs(Duration::from_secs(700), &[with("10.0.0.4", "ops", "cron")]);
        assert!(m.encode().contains(&line("10.0.0.4", "ops", "cron")));
    }
}
