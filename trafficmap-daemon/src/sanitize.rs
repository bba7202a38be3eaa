//! Keeps every report the agent emits within the model's bounds (`trafficmap_model::bounds`,
//! checked by `Report::validate`, the function the collector runs): the collector refuses a
//! report that breaks one with 400 and the agent then sets it aside for good, so nothing a
//! local user or the machine controls (a process name, the host name, the number of interface
//! addresses, a suspend, map churn) may make it break one.
//!
//! Choices (see docs/agent.md, "Report bounds"):
//! - A control character (Unicode Cc) becomes U+FFFD, the character `decode_comm` already
//!   puts for bytes that are not UTF-8: one marker for "this byte was not printable text".
//! - Strings too long are cut at the last character boundary within the bound.
//! - Addresses: sorted, duplicates removed, the lowest [`bounds::MAX_ADDRESSES`] kept (the
//!   same ones at every start, whatever order the kernel lists them in).
//! - A window longer than [`bounds::MAX_WINDOW`] (a drain failed, the machine slept) keeps its
//!   end and moves its start to `end - MAX_WINDOW`; its bytes are all kept, and first/last
//!   seen are clamped into the shortened window.
//! - Counters above their per-window bound are clamped to it (impossible on a real host: a
//!   probe bug, so [`Fixes::counters`] is logged at error).

use std::borrow::Cow;

use trafficmap_model::{
    bounds::{self, per_window},
    report::{Host, Pair, Report},
};

/// What replaces a control character.
pub const REPLACEMENT: char = '\u{FFFD}';
/// What stands for a required string that is empty after sanitising.
pub const UNKNOWN: &str = "unknown";

/// `s` with each control character replaced by [`REPLACEMENT`], cut to at most `max` bytes on
/// a character boundary. Borrowed when nothing changes.
pub fn text(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max && !bounds::has_control(s) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len().min(max));
    for c in s.chars() {
        let c = if c.is_control() { REPLACEMENT } else { c };
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    Cow::Owned(out)
}

/// [`text`] for a field that must not be empty: an empty result becomes [`UNKNOWN`].
fn required(s: &str, max: usize) -> Cow<'_, str> {
    match text(s, max) {
        t if t.is_empty() => Cow::Borrowed(UNKNOWN),
        t => t,
    }
}

/// Replaces `s` by `f(s)` if that differs; returns whether it did.
fn fix(s: &mut String, f: impl FnOnce(&str) -> Cow<'_, str>) -> bool {
    match f(s) {
        Cow::Borrowed(b) if b == s.as_str() => false,
        t => {
            *s = t.into_owned();
            true
        }
    }
}

/// The host id `base` + `suffix` (the namespace suffix, `-netns-<inode>`) within
/// [`bounds::MAX_MACHINE_ID_LEN`]: the base is cut, never the suffix, so agents of several
/// namespaces of one machine keep distinct ids.
pub fn machine_id(base: &str, suffix: &str) -> String {
    let room = bounds::MAX_MACHINE_ID_LEN.saturating_sub(suffix.len());
    format!("{}{suffix}", required(base, room))
}

/// What [`host`] changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HostFixes {
    /// Strings (hostname, machine id, EC2 fields) replaced or cut.
    pub strings: u64,
    /// Interface addresses left out (duplicates and those beyond the cap).
    pub addresses_omitted: u64,
}

/// Brings a host identity within the bounds (see the module's choices). EC2 fields that are
/// empty after sanitising: an optional one is dropped, a required one drops the EC2 identity.
pub fn host(h: &mut Host) -> HostFixes {
    let mut f = HostFixes::default();
    f.strings += u64::from(fix(&mut h.hostname, |s| {
        required(s, bounds::MAX_HOSTNAME_LEN)
    }));
    f.strings += u64::from(fix(&mut h.machine_id, |s| {
        required(s, bounds::MAX_MACHINE_ID_LEN)
    }));
    let before = h.addresses.len();
    let mut seen = std::collections::HashSet::with_capacity(before);
    // Within the bounds, the kernel's order is kept; otherwise the lowest, in order.
    if before > bounds::MAX_ADDRESSES || !h.addresses.iter().all(|a| seen.insert(*a)) {
        h.addresses.sort_unstable();
        h.addresses.dedup();
        h.addresses.truncate(bounds::MAX_ADDRESSES);
    }
    f.addresses_omitted = (before - h.addresses.len()) as u64;
    if let Some(ec2) = &mut h.ec2 {
        let max = bounds::MAX_EC2_FIELD_LEN;
        let mut n = 0u64;
        n += u64::from(fix(&mut ec2.instance_id, |s| text(s, max)));
        n += u64::from(fix(&mut ec2.region, |s| text(s, max)));
        for opt in [&mut ec2.availability_zone, &mut ec2.instance_type] {
            if let Some(v) = opt {
                n += u64::from(fix(v, |s| text(s, max)));
                if v.is_empty() {
                    *opt = None;
                    n += 1;
                }
            }
        }
        if ec2.instance_id.is_empty() || ec2.region.is_empty() {
            h.ec2 = None;
            n += 1;
        }
        f.strings += n;
    }
    f
}

/// What [`report`] changed. All zero/false for every report of a healthy agent on a host
/// within the bounds.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Fixes {
    /// The window was longer than [`bounds::MAX_WINDOW`]; its start was moved.
    pub window_shortened: bool,
    /// Strings replaced or cut (agent fields, host, process names).
    pub strings: u64,
    /// Interface addresses left out.
    pub addresses_omitted: u64,
    /// Pairs merged into another because sanitising their process names made them equal.
    pub pairs_merged: u64,
    /// `map_entries` above `map_capacity` (the key-by-key map walk counted churn twice).
    pub map_entries_clamped: bool,
    /// Counters clamped to their per-window bound (a probe bug).
    pub counters: u64,
}

/// Brings a report within every bound [`Report::validate`] checks that the agent's inputs can
/// break (see the module's choices). Idempotent.
pub fn report(r: &mut Report) -> Fixes {
    let mut f = Fixes::default();
    let w = &mut r.window;
    if w.end - w.start > bounds::MAX_WINDOW {
        w.start = w.end - bounds::MAX_WINDOW;
        f.window_shortened = true;
    }
    let (start, end) = (w.start, w.end);
    let len = end - start;

    let max = bounds::MAX_AGENT_FIELD_LEN;
    for s in [
        &mut r.agent.version,
        &mut r.agent.backend,
        &mut r.agent.kernel,
    ] {
        f.strings += u64::from(fix(s, |s| required(s, max)));
    }
    let h = host(&mut r.host);
    f.strings += h.strings;
    f.addresses_omitted = h.addresses_omitted;

    let health = &mut r.health;
    let events = per_window(bounds::MAX_EVENTS_PER_SEC, len);
    for v in health.drops.values_mut() {
        f.counters += u64::from(clamp(v, events));
    }
    f.counters += u64::from(clamp(&mut health.map_capacity, bounds::MAX_MAP_CAPACITY));
    f.map_entries_clamped = clamp(&mut health.map_entries, health.map_capacity);
    f.counters += u64::from(clamp(&mut health.spool_dropped, bounds::MAX_SPOOL_DROPPED));

    let mut renamed = false;
    for p in &mut r.pairs {
        if fix(&mut p.process, |s| text(s, bounds::MAX_PROCESS_LEN)) {
            renamed = true;
            f.strings += 1;
        }
        p.first_seen = p.first_seen.clamp(start, end);
        p.last_seen = p.last_seen.clamp(p.first_seen, end);
    }
    if renamed {
        f.pairs_merged = merge_duplicates(&mut r.pairs);
    }
    let bytes = per_window(bounds::MAX_LINK_BYTES_PER_SEC, len);
    let conns = per_window(bounds::MAX_CONNS_PER_SEC, len);
    for p in &mut r.pairs {
        f.counters += u64::from(clamp(&mut p.bytes_sent, bytes))
            + u64::from(clamp(&mut p.bytes_received, bytes))
            + u64::from(clamp(&mut p.connections_opened, conns))
            + u64::from(clamp(&mut p.connections_closed, conns))
            + u64::from(clamp(&mut p.connections_active, bounds::MAX_ACTIVE));
    }
    f
}

/// `*v = min(*v, max)`; whether it changed.
fn clamp(v: &mut u64, max: u64) -> bool {
    let over = *v > max;
    if over {
        *v = max;
    }
    over
}

/// Sorts pairs by key and merges those with equal keys (sums saturate; the earliest first
/// seen, the latest last seen, the first one's role source). Returns how many were merged.
fn merge_duplicates(pairs: &mut Vec<Pair>) -> u64 {
    pairs.sort_by(|a, b| a.key().cmp(&b.key()));
    let before = pairs.len();
    pairs.dedup_by(|later, kept| {
        if later.key() != kept.key() {
            return false;
        }
        let add = bounds::sat_add;
        kept.bytes_sent = add(kept.bytes_sent, later.bytes_sent);
        kept.bytes_received = add(kept.bytes_received, later.bytes_received);
        kept.connections_opened = add(kept.connections_opened, later.connections_opened);
        kept.connections_closed = add(kept.connections_closed, later.connections_closed);
        kept.connections_active = add(kept.connections_active, later.connections_active);
        kept.first_seen = kept.first_seen.min(later.first_seen);
        kept.last_seen = kept.last_seen.max(later.last_seen);
        true
    });
    (before - pairs.len()) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_replaces_control_characters_and_cuts_on_a_char_boundary() {
        assert!(matches!(text("nginx", 255), Cow::Borrowed("nginx")));
        assert_eq!(
            text("a\u{1b}[31m\u{7f}\u{85}", 255),
            "a\u{fffd}[31m\u{fffd}\u{fffd}"
        );
        // At the bound: kept whole; one above: cut.
        let at = "x".repeat(255);
        assert!(matches!(text(&at, 255), Cow::Borrowed(_)));
        assert_eq!(text(&"x".repeat(256), 255), at);
        // A 3-byte character that would straddle the bound is left out whole.
        let s = format!("{}€", "x".repeat(253));
        assert_eq!(text(&s, 255), "x".repeat(253));
        assert_eq!(text(&format!("{}€", "x".repeat(252)), 255).len(), 255);
        // A replacement (3 bytes) counts against the bound too.
        assert_eq!(text(&"\u{1}".repeat(100), 255), "\u{fffd}".repeat(85));
        assert_eq!(text("", 0), "");
    }

    #[test]
    fn required_strings_are_never_empty() {
        assert_eq!(required("", 253), UNKNOWN);
        assert_eq!(required("\u{1b}", 2), UNKNOWN);
        assert_eq!(required("\u{1b}", 3), "\u{fffd}");
    }

    #[test]
    fn machine_id_keeps_the_namespace_suffix() {
        let suffix = "-netns-4026531840";
        let id = machine_id(&"m".repeat(300), suffix);
        assert_eq!(id.len(), bounds::MAX_MACHINE_ID_LEN);
        assert_eq!(id, format!("{}{suffix}", "m".repeat(128 - suffix.len())));
        assert_eq!(machine_id("abc", ""), "abc");
        assert_eq!(machine_id(&"m".repeat(128), ""), "m".repeat(128));
        assert_eq!(machine_id(&"m".repeat(129), ""), "m".repeat(128));
        assert_eq!(machine_id("", "-netns-1"), "unknown-netns-1");
    }

    fn host_with(addresses: Vec<std::net::IpAddr>) -> Host {
        Host {
            hostname: "h".into(),
            machine_id: "m".into(),
            addresses,
            netns: None,
            ec2: None,
            stats: None,
        }
    }

    fn ip(i: u32) -> std::net::IpAddr {
        std::net::Ipv4Addr::from(0x0a00_0000 + i).into()
    }

    #[test]
    fn addresses_at_the_cap_keep_their_order_above_it_the_lowest() {
        let at: Vec<_> = (0..256).rev().map(ip).collect();
        let mut h = host_with(at.clone());
        assert_eq!(host(&mut h), HostFixes::default());
        assert_eq!(h.addresses, at);

        let mut h = host_with((0..257).rev().map(ip).collect());
        assert_eq!(
            host(&mut h),
            HostFixes {
                strings: 0,
                addresses_omitted: 1
            }
        );
        assert_eq!(h.addresses, (0..256).map(ip).collect::<Vec<_>>());

        // Duplicates are removed even below the cap.
        let mut h = host_with(vec![ip(2), ip(1), ip(2)]);
        assert_eq!(host(&mut h).addresses_omitted, 1);
        assert_eq!(h.addresses, vec![ip(1), ip(2)]);
    }

    #[test]
    fn host_strings_and_ec2_fields() {
        use trafficmap_model::report::Ec2Identity;
        let mut h = host_with(vec![]);
        h.hostname = "x".repeat(254);
        h.machine_id = String::new();
        h.ec2 = Some(Ec2Identity {
            instance_id: "i-1\u{7}".into(),
            region: "r".repeat(64),
            availability_zone: Some("\u{0}".repeat(30)),
            instance_type: Some(String::new()),
        });
        assert_eq!(host(&mut h).strings, 5);
        assert_eq!(h.hostname, "x".repeat(253));
        assert_eq!(h.machine_id, UNKNOWN);
        assert_eq!(
            h.ec2,
            Some(Ec2Identity {
                instance_id: "i-1\u{fffd}".into(),
                region: "r".repeat(64),
                // 21 replacements fill 63 bytes of 64.
                availability_zone: Some("\u{fffd}".repeat(21)),
                instance_type: None,
            })
        );
        // A required EC2 field that is empty: no EC2 identity rather than a refused report.
        h.ec2.as_mut().unwrap().region = String::new();
        assert_eq!(host(&mut h).strings, 1);
        assert_eq!(h.ec2, None);
    }

    fn report_of(len: chrono::TimeDelta, pairs: Vec<Pair>) -> Report {
        let end: chrono::DateTime<chrono::Utc> = "2026-11-23T12:00:00Z".parse().unwrap();
        Report {
            schema: trafficmap_model::report::REPORT_SCHEMA.into(),
            report_id: "0123456789abcdef".into(),
            seq: 1,
            agent: trafficmap_model::report::Agent {
                version: "0".into(),
                backend: "fexit".into(),
                kernel: "6".into(),
            },
            host: host_with(vec![]),
            window: trafficmap_model::report::Window {
                start: end - len,
                end,
            },
            health: trafficmap_model::report::Health {
                drops: Default::default(),
                map_entries: 10,
                map_capacity: 10,
                spool_dropped: 0,
            },
            pairs,
        }
    }

    fn pair(r: &Report, sent: u64, opened: u64, active: u64) -> Pair {
        Pair {
            local_ip: ip(1),
            peer_ip: ip(2),
            server_port: 80,
            role: trafficmap_model::report::Role::Client,
            role_source: trafficmap_model::report::RoleSource::Observed,
            process: "p".into(),
            bytes_sent: sent,
            bytes_received: 0,
            connections_opened: opened,
            connections_closed: 0,
            connections_active: active,
            first_seen: r.window.start,
            last_seen: r.window.end,
            container: None,
            service_ip: None,
            service_port: None,
        }
    }

    #[test]
    fn reports_at_every_bound_are_left_alone() {
        let hour = bounds::MAX_WINDOW;
        let mut r = report_of(hour, vec![]);
        let p = pair(
            &r,
            per_window(bounds::MAX_LINK_BYTES_PER_SEC, hour),
            per_window(bounds::MAX_CONNS_PER_SEC, hour),
            bounds::MAX_ACTIVE,
        );
        r.pairs.push(p);
        r.pairs[0].process = "x".repeat(255);
        r.health.drops.insert(
            "ring_full".into(),
            per_window(bounds::MAX_EVENTS_PER_SEC, hour),
        );
        let before = r.clone();
        assert_eq!(report(&mut r), Fixes::default());
        assert_eq!(r, before);
        assert_eq!(r.validate(), Ok(()));
    }

    #[test]
    fn reports_above_every_bound_are_brought_to_it() {
        let len = bounds::MAX_WINDOW + chrono::TimeDelta::nanoseconds(1);
        let mut r = report_of(len, vec![]);
        let hour = bounds::MAX_WINDOW;
        let p = pair(
            &r,
            per_window(bounds::MAX_LINK_BYTES_PER_SEC, hour) + 1,
            per_window(bounds::MAX_CONNS_PER_SEC, hour) + 1,
            bounds::MAX_ACTIVE + 1,
        );
        r.pairs.push(p);
        r.pairs[0].process = "x".repeat(256);
        r.health.map_entries = 11;
        r.health.spool_dropped = bounds::MAX_SPOOL_DROPPED + 1;
        assert_eq!(
            report(&mut r),
            Fixes {
                window_shortened: true,
                strings: 1,
                addresses_omitted: 0,
                pairs_merged: 0,
                map_entries_clamped: true,
                counters: 4,
            }
        );
        assert_eq!(r.window.end - r.window.start, hour);
        let p = &r.pairs[0];
        assert_eq!(p.first_seen, r.window.start);
        assert_eq!(p.process, "x".repeat(255));
        assert_eq!(p.bytes_sent, 180_000_000_000_000);
        assert_eq!(p.connections_opened, 36_000_000_000);
        assert_eq!(p.connections_active, bounds::MAX_ACTIVE);
        assert_eq!(r.health.map_entries, 10);
        assert_eq!(r.health.spool_dropped, bounds::MAX_SPOOL_DROPPED);
        assert_eq!(r.validate(), Ok(()));
    }
}
