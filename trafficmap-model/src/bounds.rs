//! The bounds of a report's numbers, strings and lists (checked by
//! [`crate::report::Report::validate`], documented in `schema/report-v1.schema.json`), and the
//! saturating sum every consumer of counters uses.
//!
//! The counter bounds are physical: what a 400 Gbit/s link moves, what a host can open, in the
//! window the report covers. They are far above anything real and far below `i64::MAX`, so that
//! sums of accepted reports over any retention stay exact integers in every store (SQLite keeps
//! `INTEGER` as `i64`); [`sat_add`] is the second line, should a sum ever get there.

use chrono::TimeDelta;

/// Longest window one report may cover (agents' `interval` is at most 1 h).
pub const MAX_WINDOW: TimeDelta = TimeDelta::hours(1);
/// Payload bytes one pair may move per direction per second of window: 400 Gbit/s.
pub const MAX_LINK_BYTES_PER_SEC: u64 = 50_000_000_000;
/// Connections one pair may open (or close) per second of window.
pub const MAX_CONNS_PER_SEC: u64 = 10_000_000;
/// Connections one pair may have open at the end of a window.
pub const MAX_ACTIVE: u64 = 16_777_216;
/// Probe events one drop counter may count per second of window.
pub const MAX_EVENTS_PER_SEC: u64 = 1_000_000_000;
/// Drop reasons per report, and the length of each (`[a-z0-9_]`).
pub const MAX_DROP_KEYS: usize = 32;
pub const MAX_DROP_KEY_LEN: usize = 32;
/// Largest probe connection table (`map_capacity`, and so `map_entries`).
pub const MAX_MAP_CAPACITY: u64 = 1 << 32;
/// Largest count of reports an agent's spool dropped since it started.
pub const MAX_SPOOL_DROPPED: u64 = 1 << 32;
/// Interface addresses per report.
pub const MAX_ADDRESSES: usize = 256;
/// String lengths in bytes (UTF-8), inclusive; strings hold no control characters.
pub const MAX_HOSTNAME_LEN: usize = 253;
pub const MAX_MACHINE_ID_LEN: usize = 128;
pub const MAX_PROCESS_LEN: usize = 255;
pub const MAX_AGENT_FIELD_LEN: usize = 128;
pub const MAX_EC2_FIELD_LEN: usize = 64;
/// Container identity of a pair (issue 11): runtime ids are hex (64 characters for Docker,
/// containerd, CRI-O and podman; 12 is Docker's short form); Kubernetes names are DNS
/// subdomains of at most 253 characters, namespaces DNS labels of at most 63; kinds are
/// CamelCase identifiers.
pub const MIN_CONTAINER_ID_LEN: usize = 12;
pub const MAX_CONTAINER_ID_LEN: usize = 128;
pub const MAX_K8S_NAME_LEN: usize = 253;
pub const MAX_K8S_NAMESPACE_LEN: usize = 63;
pub const MAX_K8S_KIND_LEN: usize = 63;

// Host health (issue 12 item 5): `host.stats`, sampled by the agent from `/proc` once per
// report. Physical bounds far above any real host, so a hostile value cannot skew the fleet's
// tables.
/// Largest load average accepted (1, 5 or 15 minutes): a million runnable tasks.
pub const MAX_LOAD: f64 = 1e6;
/// Most CPUs a host may report.
pub const MAX_CPUS: u32 = 65_536;
/// Largest memory a host may report: 2^50 bytes (1 PiB).
pub const MAX_MEMORY_BYTES: u64 = 1 << 50;
/// Longest uptime accepted: 100 years of 365.25 days, in seconds.
pub const MAX_UPTIME_SECONDS: u64 = 3_155_760_000;

/// Whether `s` is a workload kind a report accepts (`Deployment`, a custom controller's kind):
/// 1 to [`MAX_K8S_KIND_LEN`] characters of `A-Z a-z 0-9`.
pub fn is_workload_kind(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_K8S_KIND_LEN && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Where every counter sum stops: the largest value SQLite (and any `i64` column) holds.
pub const COUNTER_MAX: u64 = i64::MAX as u64;

/// `rate` per second over `window`, rounded down; 0 for an empty or negative window.
pub fn per_window(rate: u64, window: TimeDelta) -> u64 {
    let nanos = window.num_nanoseconds().unwrap_or(i64::MAX).max(0) as u128;
    let v = u128::from(rate) * nanos / 1_000_000_000;
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// `a + b`, stopping at [`COUNTER_MAX`]: sums of counters never wrap, never panic and always
/// fit an `i64` column.
pub fn sat_add(a: u64, b: u64) -> u64 {
    a.saturating_add(b).min(COUNTER_MAX)
}

/// [`sat_add`] over an iterator.
pub trait SatSum: Iterator<Item = u64> + Sized {
    fn sat_sum(self) -> u64 {
        self.fold(0, sat_add)
    }
}

impl<I: Iterator<Item = u64>> SatSum for I {}

/// Whether `s` holds a control character (Unicode category Cc: C0, DEL, C1), which could
/// inject terminal escapes into CLI tables or make an SVG invalid XML.
pub fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_window_rounds_down_and_never_overflows() {
        assert_eq!(
            per_window(MAX_LINK_BYTES_PER_SEC, TimeDelta::seconds(60)),
            3_000_000_000_000
        );
        assert_eq!(
            per_window(MAX_LINK_BYTES_PER_SEC, TimeDelta::milliseconds(100)),
            5_000_000_000
        );
        assert_eq!(per_window(3, TimeDelta::milliseconds(500)), 1);
        assert_eq!(per_window(MAX_EVENTS_PER_SEC, TimeDelta::seconds(-5)), 0);
        assert_eq!(per_window(u64::MAX, TimeDelta::MAX), u64::MAX);
        assert!(per_window(MAX_LINK_BYTES_PER_SEC, MAX_WINDOW) < COUNTER_MAX / 1000);
    }

    #[test]
    fn sums_stop_at_i64_max() {
        assert_eq!(sat_add(1, 2), 3);
        assert_eq!(sat_add(COUNTER_MAX, 1), COUNTER_MAX);
        assert_eq!(sat_add(u64::MAX, u64::MAX), COUNTER_MAX);
        assert_eq!(
            [1u64 << 62, 1 << 62, 1 << 62].into_iter().sat_sum(),
            COUNTER_MAX
        );
        assert_eq!([5u64, 6].into_iter().sat_sum(), 11);
    }

    #[test]
    fn control_characters_are_category_cc() {
        assert!(has_control("a\u{1b}[31m"));
        assert!(has_control("\u{7f}"));
        assert!(has_control("\u{85}"));
        assert!(!has_control("Zürich-ä ☃"));
    }
}
