//! Per-connection deltas between two reads of the probe's cumulative counters.
//!
//! The kernel never resets a counter; userspace remembers the last value it saw per connection
//! and reports the difference. This is the only place deltas are computed: `/metrics` and the
//! minute reports both consume its output, so they cannot disagree.

use std::collections::HashMap;

use trafficmap_common::Conn;

use crate::conn::{ConnExt as _, ConnId};

/// The four cumulative counters of a connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub send_calls: u64,
    pub recv_calls: u64,
}

impl Counters {
    pub fn of(c: &Conn) -> Self {
        Counters {
            bytes_sent: c.bytes_sent,
            bytes_received: c.bytes_received,
            send_calls: c.send_calls,
            recv_calls: c.recv_calls,
        }
    }

    fn max(self, o: Counters) -> Counters {
        Counters {
            bytes_sent: self.bytes_sent.max(o.bytes_sent),
            bytes_received: self.bytes_received.max(o.bytes_received),
            send_calls: self.send_calls.max(o.send_calls),
            recv_calls: self.recv_calls.max(o.recv_calls),
        }
    }

    /// `self - earlier`; counters only grow, saturating guards against a corrupt record.
    pub fn since(self, earlier: Counters) -> Counters {
        Counters {
            bytes_sent: self.bytes_sent.saturating_sub(earlier.bytes_sent),
            bytes_received: self.bytes_received.saturating_sub(earlier.bytes_received),
            send_calls: self.send_calls.saturating_sub(earlier.send_calls),
            recv_calls: self.recv_calls.saturating_sub(earlier.recv_calls),
        }
    }

    pub fn is_zero(&self) -> bool {
        *self == Counters::default()
    }
}

/// What one connection did since the previous drain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnDelta {
    /// The newest record of the connection (addresses, role, process, state, times).
    pub conn: Conn,
    pub delta: Counters,
    /// First seen in this window after an observed open (not a connection that predates the
    /// probe).
    pub opened: bool,
    /// Its close (`TCP_CLOSE`) was first seen in this window.
    pub closed: bool,
    /// The kernel destroyed the socket: this is the connection's last delta.
    pub finished: bool,
}

/// What the probe handed over in one drain: live entries, then every final record consumed from
/// the ring buffer since the previous drain.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub live: Vec<Conn>,
    pub closed: Vec<Conn>,
}

#[derive(Clone, Copy, Debug)]
struct Prev {
    counters: Counters,
    closed_seen: bool,
    /// Drain number of the final record, if seen; kept for a grace period so that a duplicate
    /// final record (possible when the ring buffer was full) cannot be counted twice.
    finished_at: Option<u64>,
    last_seen: u64,
}

/// Health of the tracker, exposed as metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackerStats {
    /// Connections being followed.
    pub tracked: usize,
    /// Connections that disappeared without a final record (should stay 0).
    pub vanished_total: u64,
}

/// Remembers the last counters of each connection across drains.
#[derive(Debug)]
pub struct Tracker {
    prev: HashMap<ConnId, Prev>,
    drain: u64,
    /// Drains a finished connection is remembered for.
    grace: u64,
    /// Drains after which an unfinished connection that is no longer seen is dropped.
    stale_after: u64,
    vanished_total: u64,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker::new()
    }
}

impl Tracker {
    pub fn new() -> Self {
        Tracker {
            prev: HashMap::new(),
            drain: 0,
            grace: 2,
            stale_after: 5,
            vanished_total: 0,
        }
    }

    pub fn stats(&self) -> TrackerStats {
        TrackerStats {
            tracked: self.prev.len(),
            vanished_total: self.vanished_total,
        }
    }

    /// Computes one delta per connection present in `snap`, newest record first: a connection
    /// found both live and in the closed records yields one delta up to its final counters.
    pub fn diff(&mut self, snap: &Snapshot) -> Vec<ConnDelta> {
        self.drain += 1;
        let drain = self.drain;

        // Newest view per connection: final records win over live reads.
        let mut newest: HashMap<ConnId, (Conn, Counters)> =
            HashMap::with_capacity(snap.live.len() + snap.closed.len());
        for c in snap.live.iter().chain(snap.closed.iter()) {
            let counters = Counters::of(c);
            newest
                .entry(c.id())
                .and_modify(|(old, oc)| {
                    *oc = oc.max(counters);
                    if c.is_destroyed() || !old.is_destroyed() {
                        *old = *c;
                    }
                })
                .or_insert((*c, counters));
        }

        let mut out = Vec::with_capacity(newest.len());
        for (id, (conn, counters)) in newest {
            let finished = conn.is_destroyed();
            let closed_now = conn.closed_ns != 0 || finished;
            match self.prev.get_mut(&id) {
                Some(p) => {
                    let delta = counters.since(p.counters);
                    let closed = closed_now && !p.closed_seen;
                    let newly_finished = finished && p.finished_at.is_none();
                    p.counters = p.counters.max(counters);
                    p.closed_seen |= closed_now;
                    p.last_seen = drain;
                    if newly_finished {
                        p.finished_at = Some(drain);
                    }
                    if p.finished_at.is_some() && !newly_finished && delta.is_zero() {
                        // A duplicate final record: nothing new.
                        continue;
                    }
                    out.push(ConnDelta {
                        conn,
                        delta,
                        opened: false,
                        closed,
                        finished: newly_finished,
                    });
                }
                None => {
                    self.prev.insert(
                        id,
                        Prev {
                            counters,
                            closed_seen: closed_now,
                            finished_at: finished.then_some(drain),
                            last_seen: drain,
                        },
                    );
                    out.push(ConnDelta {
                        conn,
                        delta: counters,
                        opened: conn.opened_ns != 0,
                        closed: closed_now,
                        finished,
                    });
                }
            }
        }

        let (grace, stale_after) = (self.grace, self.stale_after);
        let mut vanished = 0;
        self.prev.retain(|_, p| match p.finished_at {
            Some(at) => drain - at < grace,
            None => {
                let keep = drain - p.last_seen < stale_after;
                if !keep {
                    vanished += 1;
                }
                keep
            }
        });
        self.vanished_total += vanished;
        out.sort_by_key(|d| d.conn.id());
        out
    }
}

#[cfg(test)]
mod tests {
    use trafficmap_common::flags;

    use super::*;

    fn conn(sk: u64, born: u64, sent: u64, recv: u64) -> Conn {
        let mut c = Conn::ZERO;
        c.sk = sk;
        c.born_ns = born;
        c.opened_ns = born;
        c.bytes_sent = sent;
        c.bytes_received = recv;
        c.send_calls = sent.min(1);
        c.recv_calls = recv.min(1);
        c
    }

    fn destroyed(mut c: Conn) -> Conn {
        c.flags |= flags::DESTROYED;
        c.closed_ns = c.born_ns + 1;
        c
    }

    fn snap(live: Vec<Conn>, closed: Vec<Conn>) -> Snapshot {
        Snapshot { live, closed }
    }

    fn sent(d: &[ConnDelta]) -> Vec<(u64, u64)> {
        d.iter().map(|d| (d.conn.sk, d.delta.bytes_sent)).collect()
    }

    #[test]
    fn deltas_between_drains() {
        let mut t = Tracker::new();
        let d = t.diff(&snap(vec![conn(1, 10, 100, 5)], vec![]));
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].delta.bytes_sent, 100);
        assert_eq!(d[0].delta.bytes_received, 5);
        assert!(d[0].opened);
        let d = t.diff(&snap(vec![conn(1, 10, 250, 5)], vec![]));
        assert_eq!(d[0].delta.bytes_sent, 150);
        assert_eq!(d[0].delta.bytes_received, 0);
        assert!(!d[0].opened);
    }

    #[test]
    fn short_connection_between_two_drains_is_counted_once() {
        let mut t = Tracker::new();
        let d = t.diff(&snap(vec![], vec![destroyed(conn(7, 1, 42, 24))]));
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].delta.bytes_sent, d[0].delta.bytes_received), (42, 24));
        assert!(d[0].opened && d[0].closed && d[0].finished);
        // A duplicate final record (ring buffer was full, handed over again later) adds nothing.
        let d = t.diff(&snap(vec![], vec![destroyed(conn(7, 1, 42, 24))]));
        assert!(d.is_empty(), "{d:?}");
    }

    #[test]
    fn seen_live_then_final() {
        let mut t = Tracker::new();
        t.diff(&snap(vec![conn(1, 10, 100, 0)], vec![]));
        // Destroyed after the live read: the final record carries the rest.
        let d = t.diff(&snap(
            vec![conn(1, 10, 150, 0)],
            vec![destroyed(conn(1, 10, 175, 0))],
        ));
        assert_eq!(sent(&d), vec![(1, 75)]);
        assert!(d[0].finished && d[0].closed && !d[0].opened);
    }

    #[test]
    fn reused_socket_is_a_new_connection() {
        let mut t = Tracker::new();
        t.diff(&snap(vec![conn(1, 10, 100, 0)], vec![]));
        let d = t.diff(&snap(
            vec![conn(1, 20, 30, 0)],
            vec![destroyed(conn(1, 10, 120, 0))],
        ));
        assert_eq!(
            d.iter()
                .map(|d| (d.conn.born_ns, d.delta.bytes_sent, d.opened, d.finished))
                .collect::<Vec<_>>(),
            vec![(10, 20, false, true), (20, 30, true, false)]
        );
    }

    #[test]
    fn preexisting_connection_is_not_an_open() {
        let mut t = Tracker::new();
        let mut c = conn(3, 5, 10, 0);
        c.opened_ns = 0;
        c.flags = flags::PREEXISTING;
        let d = t.diff(&snap(vec![c], vec![]));
        assert!(!d[0].opened);
        assert_eq!(d[0].delta.bytes_sent, 10);
    }

    #[test]
    fn close_is_reported_once() {
        let mut t = Tracker::new();
        let mut c = conn(1, 10, 1, 0);
        t.diff(&snap(vec![c], vec![]));
        c.closed_ns = 99;
        assert!(t.diff(&snap(vec![c], vec![]))[0].closed);
        assert!(!t.diff(&snap(vec![c], vec![]))[0].closed);
    }

    #[test]
    fn forgets_finished_after_grace_and_counts_vanished() {
        let mut t = Tracker::new();
        t.diff(&snap(
            vec![conn(1, 1, 1, 0)],
            vec![destroyed(conn(2, 1, 1, 0))],
        ));
        assert_eq!(t.stats().tracked, 2);
        for _ in 0..5 {
            t.diff(&Snapshot::default());
        }
        assert_eq!(
            t.stats(),
            TrackerStats {
                tracked: 0,
                vanished_total: 1
            }
        );
    }
}
