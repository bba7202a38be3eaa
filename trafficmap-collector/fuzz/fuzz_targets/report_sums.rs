//! Reports generated near every bound of `trafficmap_model::bounds`: whatever `validate`
//! accepts must go through every sum of the collector (ingest into a SQLite store, several
//! times, roll-up, range reads at each grain, merge, render of every view) without a panic,
//! and no number on the way may exceed `i64::MAX` (what SQLite holds as an integer).

#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use arbitrary::Arbitrary;
use chrono::{DateTime, TimeDelta, Utc};
use trafficmap_collector::{
    cost::CostRates,
    enrich::{Directory, Rules, Sources},
    ingest::Ingest,
    range::RangeData,
    render::{prepare, render},
    store::{
        Retention,
        sqlite::{SqliteStore, Sync},
    },
};
use trafficmap_model::{
    bounds::{self, COUNTER_MAX, per_window},
    map::View,
    report::{Agent, Health, Host, Pair, REPORT_SCHEMA, Report, Role, RoleSource, Window},
};

/// A number relative to its bound: at it, just above, below, or anything.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Num {
    At,
    Above(u8),
    Below(u64),
    Max,
    Zero,
    Any(u64),
}

impl Num {
    fn of(self, bound: u64) -> u64 {
        match self {
            Num::At => bound,
            Num::Above(k) => bound.saturating_add(1 + u64::from(k)),
            Num::Below(x) => bound - x % bound.saturating_add(1).max(1),
            Num::Max => u64::MAX,
            Num::Zero => 0,
            Num::Any(x) => x,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct PairIn {
    peer: u8,
    port: u8,
    role: u8,
    process: u8,
    sent: Num,
    received: Num,
    opened: Num,
    closed: Num,
    active: Num,
    first: Seen,
    last: Seen,
}

/// A time relative to the window: its ends, inside it, or anywhere near.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Seen {
    Start,
    End,
    Inside(u32),
    Any(i32),
}

impl Seen {
    fn at(self, start: DateTime<Utc>, len_ms: i64) -> DateTime<Utc> {
        let ms = match self {
            Seen::Start => 0,
            Seen::End => len_ms,
            Seen::Inside(x) => i64::from(x) % (len_ms + 1),
            Seen::Any(x) => i64::from(x),
        };
        start + TimeDelta::milliseconds(ms)
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// Window length: 1 ms to just over the 1-hour bound.
    window_ms: u32,
    /// Minute of the day the window starts at.
    minute: u16,
    pairs: Vec<PairIn>,
    drops: Vec<(u8, Num)>,
    map_entries: Num,
    map_capacity: Num,
    spool_dropped: Num,
    /// Copies of the report stored (different ids, one host): the store's sums add up.
    copies: u8,
    /// Also a second host, the other end of every pair.
    both_ends: bool,
}

const PROCESSES: [&str; 4] = ["", "app", "postgres", "a-very-long-process-name"];

fn report(input: &Input, id: usize, host: u8) -> Report {
    let day: DateTime<Utc> = "2026-11-23T00:00:00Z".parse().unwrap();
    let start = day + TimeDelta::minutes(i64::from(input.minute % 1440));
    let len_ms = i64::from(input.window_ms % 3_600_010) + 1;
    let end = start + TimeDelta::milliseconds(len_ms);
    let len = end - start;
    let bytes = per_window(bounds::MAX_LINK_BYTES_PER_SEC, len);
    let conns = per_window(bounds::MAX_CONNS_PER_SEC, len);
    let events = per_window(bounds::MAX_EVENTS_PER_SEC, len);
    let me = IpAddr::V4(Ipv4Addr::new(10, 0, 0, host));
    let mut seen = std::collections::HashSet::new();
    let pairs = input
        .pairs
        .iter()
        .take(16)
        .map(|p| {
            // Even: the other agent (both ends of a conversation report it); odd: a peer
            // without agent.
            let peer_ip = if p.peer % 2 == 0 {
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3 - host))
            } else {
                IpAddr::V4(Ipv4Addr::new(10, 0, 9, p.peer % 16))
            };
            Pair {
                local_ip: me,
                peer_ip,
                server_port: [80, 443, 5432, 0][usize::from(p.port % 4)],
                role: [Role::Client, Role::Server, Role::Unknown][usize::from(p.role % 3)],
                role_source: RoleSource::Observed,
                process: PROCESSES[usize::from(p.process % 4)].to_owned(),
                bytes_sent: p.sent.of(bytes),
                bytes_received: p.received.of(bytes),
                connections_opened: p.opened.of(conns),
                connections_closed: p.closed.of(conns),
                connections_active: p.active.of(bounds::MAX_ACTIVE),
                first_seen: p.first.at(start, len_ms),
                last_seen: p.last.at(start, len_ms),
                container: None,
                service_ip: None,
                service_port: None,
            }
        })
        .filter(|p| {
            seen.insert((
                p.local_ip,
                p.peer_ip,
                p.server_port,
                p.role,
                p.process.clone(),
            ))
        })
        .collect();
    let map_capacity = input.map_capacity.of(bounds::MAX_MAP_CAPACITY);
    Report {
        schema: REPORT_SCHEMA.to_owned(),
        report_id: format!("fuzz-{host}-{id:016}"),
        seq: id as u64,
        agent: Agent {
            version: "0".into(),
            backend: "tracepoint".into(),
            kernel: "6".into(),
        },
        host: Host {
            hostname: format!("host-{host}"),
            machine_id: format!("machine-{host}"),
            addresses: vec![me],
            netns: None,
            ec2: None,
            stats: None,
        },
        window: Window { start, end },
        health: Health {
            drops: input
                .drops
                .iter()
                .take(40)
                .map(|(k, n)| (format!("reason_{k}"), n.of(events)))
                .collect(),
            map_entries: input.map_entries.of(map_capacity),
            map_capacity,
            spool_dropped: input.spool_dropped.of(bounds::MAX_SPOOL_DROPPED),
        },
        pairs,
    }
}

fn check_range(d: &RangeData) {
    for a in &d.agents {
        assert!(a.reports <= COUNTER_MAX && a.probe_drops <= COUNTER_MAX);
        assert!(a.spool_dropped <= COUNTER_MAX);
    }
    for o in &d.obs {
        let c = &o.c;
        for v in [
            c.bytes_sent,
            c.bytes_received,
            c.conns_opened,
            c.conns_carried,
            c.connections(),
        ] {
            assert!(v <= COUNTER_MAX, "{c:?}");
        }
    }
}

/// Every integer in the map's JSON fits an `i64`.
fn check_json(v: &serde_json::Value) {
    match v {
        serde_json::Value::Number(n) => {
            assert!(n.as_u64().is_none_or(|u| u <= COUNTER_MAX), "{n}");
            assert!(n.as_f64().is_some_and(f64::is_finite), "{n}");
        }
        serde_json::Value::Array(a) => a.iter().for_each(check_json),
        serde_json::Value::Object(o) => o.values().for_each(check_json),
        _ => {}
    }
}

libfuzzer_sys::fuzz_target!(|input: Input| {
    let hosts: &[u8] = if input.both_ends { &[1, 2] } else { &[1] };
    let copies = usize::from(input.copies % 4) + 1;
    let mut batch = Vec::new();
    for &h in hosts {
        for id in 0..copies {
            let r = report(&input, id, h);
            if r.validate().is_err() {
                return;
            }
            // What a sender could put on the wire parses back to the same report.
            assert_eq!(Report::from_json(&r.to_json()).as_ref(), Ok(&r));
            batch.push(std::sync::Arc::new(Ingest::from_report(&r)));
        }
    }
    let dir = tempfile::tempdir_in(std::env::var_os("FUZZ_TMP").unwrap_or("/tmp".into())).unwrap();
    let store = SqliteStore::open(dir.path(), Sync::Normal).unwrap();
    let now: DateTime<Utc> = "2026-11-24T12:00:00Z".parse().unwrap();
    store.ingest(&batch, now).unwrap();
    let day = (
        "2026-11-23T00:00:00Z".parse::<DateTime<Utc>>().unwrap(),
        "2026-11-24T00:00:00Z".parse::<DateTime<Utc>>().unwrap(),
    );
    let part = (day.0 + TimeDelta::minutes(7), day.1 - TimeDelta::minutes(7));
    let mut datas = Vec::new();
    for rolled in [false, true] {
        if rolled {
            store.maintain(now, Retention::default()).unwrap();
        }
        for (from, to) in [day, part] {
            let d = store.range(from, to).unwrap();
            check_range(&d);
            datas.push(d);
        }
    }
    // Day pieces merged (what a multi-day map adds up).
    let mut halves = Vec::new();
    for (from, to) in [
        (day.0, day.0 + TimeDelta::hours(12)),
        (day.0 + TimeDelta::hours(12), day.1),
    ] {
        halves.push(store.range(from, to).unwrap());
    }
    let merged = RangeData::merge(halves).unwrap();
    check_range(&merged);
    datas.push(merged);
    let sources = Sources::default();
    let rules = Rules::default();
    let dir = Directory {
        sources: &sources,
        rules: &rules,
    };
    for d in &datas {
        let p = prepare(d, &dir, &CostRates::default());
        for view in View::ALL {
            let map = render(&p, view, &dir, now);
            check_json(&serde_json::to_value(&map).unwrap());
        }
    }
});
