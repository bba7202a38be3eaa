//! Per-connection deltas between two reads of the probe's cumulative counters.
//!
//! The kernel never resets a counter; userspace remembers the last value it saw per connection
//! and reports the difference. This is the only place deltas are computed: `/metrics` and the
//! minute reports both consume its output, so they cannot disagree.

use std::collections::HashMap;

use trafficmap_common::{Conn, flags};

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
    /// The connection is a real conversation: it reached ESTABLISHED, moved bytes, or was open
    /// before the probe loaded. Half-open attempts (refused connects, children dropped on a
    /// full accept queue) are not, and are left out of pairs.
    pub established: bool,
    /// Its establishment after an observed open is reported in this delta (once per connection;
    /// not for connections that predate the probe).
    pub opened: bool,
    /// Its close (`TCP_CLOSE`) after establishment is reported in this delta (once).
    pub closed: bool,
    /// The kernel destroyed the socket: this is the connection's last delta.
    pub finished: bool,
}

/// What the probe handed over: live entries, and final records from the ring buffer.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub live: Vec<Conn>,
    pub closed: Vec<Conn>,
}

#[derive(Clone, Copy, Debug)]
struct Prev {
    counters: Counters,
    established: bool,
    closed_seen: bool,
    /// Drain number at which a final record was read from the live table (the ring buffer was
    /// full at destroy time). Kept for a grace period: the same record may still arrive through
    /// the ring, and must not count twice.
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

/// Remembers the last counters of each live connection. Final records from the ring buffer
/// are folded in as they arrive ([`Tracker::apply`]), so memory follows the number of live
/// connections, not the number that came and went in a window.
#[derive(Debug)]
pub struct Tracker {
    prev: HashMap<ConnId, Prev>,
    drain: u64,
    /// Drains a connection finished from the live table is remembered for.
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

fn is_established(c: &Conn) -> bool {
    c.flags & (flags::ESTABLISHED | flags::PREEXISTING) != 0
        || c.bytes_sent != 0
        || c.bytes_received != 0
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

    /// One delta per connection in `snap`, sorted by connection: a connection found both live
    /// and among the final records yields one delta up to its final counters.
    pub fn apply(&mut self, snap: &Snapshot) -> Vec<ConnDelta> {
        let mut out = Vec::with_capacity(snap.live.len() + snap.closed.len());
        self.apply_with(snap, |d| out.push(d));
        out.sort_by_key(|d| d.conn.id());
        out
    }

    /// Like [`Tracker::apply`], handing each delta to `f` as it is computed (no intermediate
    /// collection: a drain of 100,000 connections must stay fast and small).
    pub fn apply_with(&mut self, snap: &Snapshot, mut f: impl FnMut(ConnDelta)) {
        // Final records supersede live reads of the same connection (destroyed in between);
        // there are few of them per drain.
        let mut finals: HashMap<ConnId, Conn> = HashMap::with_capacity(snap.closed.len());
        for c in &snap.closed {
            finals
                .entry(c.id())
                .and_modify(|old| {
                    if Counters::of(c)
                        .bytes_sent
                        .saturating_add(Counters::of(c).bytes_received)
                        >= old.bytes_sent.saturating_add(old.bytes_received)
                    {
                        *old = *c;
                    }
                })
                .or_insert(*c);
        }
        for c in &snap.live {
            if let Some(fin) = finals.get_mut(&c.id()) {
                // Keep the larger counters (the final record is never behind the live one).
                let lc = Counters::of(c);
                let fc = Counters::of(fin).max(lc);
                fin.bytes_sent = fc.bytes_sent;
                fin.bytes_received = fc.bytes_received;
                fin.send_calls = fc.send_calls;
                fin.recv_calls = fc.recv_calls;
                continue;
            }
            if let Some(d) = self.observe(c, false) {
                f(d);
            }
        }
        for c in finals.into_values() {
            if let Some(d) = self.observe(&c, true) {
                f(d);
            }
        }
    }

    /// Updates the memory of one connection and returns what it did since.
    fn observe(&mut self, conn: &Conn, from_ring: bool) -> Option<ConnDelta> {
        let drain = self.drain;
        let id = conn.id();
        let counters = Counters::of(conn);
        let finished = conn.is_destroyed();
        let established_now = is_established(conn);
        let closed_now = conn.closed_ns != 0 || finished;
        let prev = self.prev.get(&id).copied();
        let (delta, was_established, was_closed, dup) = match prev {
            Some(p) => (
                counters.since(p.counters),
                p.established,
                p.closed_seen,
                p.finished_at.is_some(),
            ),
            None => (counters, false, false, false),
        };
        let established = established_now || was_established;
        let opened = established && !was_established && conn.opened_ns != 0;
        let closed = established && closed_now && !was_closed;
        if finished && from_ring {
            // The last record this connection will ever have.
            self.prev.remove(&id);
        } else {
            let finished_at = match prev.and_then(|p| p.finished_at) {
                Some(at) => Some(at),
                None => finished.then_some(drain),
            };
            self.prev.insert(
                id,
                Prev {
                    counters: prev.map_or(counters, |p| p.counters.max(counters)),
                    established,
                    closed_seen: (was_closed || closed_now) && established,
                    finished_at,
                    last_seen: drain,
                },
            );
        }
        if dup && delta.is_zero() {
            // A second final record of a connection already finished: nothing new.
            return None;
        }
        Some(ConnDelta {
            conn: *conn,
            delta,
            established,
            opened,
            closed,
            finished: finished && !dup,
        })
    }

    /// Closes a drain: forgets finished connections after their grace period and connections
    /// no longer seen at all (counted: that should not happen).
    pub fn end_drain(&mut self) {
        self.drain = self.drain.saturating_add(1);
        let drain = self.drain;
        let (grace, stale_after) = (self.grace, self.stale_after);
        let mut vanished = 0u64;
        self.prev.retain(|_, p| match p.finished_at {
            Some(at) => drain.saturating_sub(at) < grace,
            None => {
                let keep = drain.saturating_sub(p.last_seen) < stale_after;
                if !keep {
                    vanished = vanished.saturating_add(1);
                }
                keep
            }
        });
        self.vanished_total = self.vanished_total.saturating_add(vanished);
    }

    /// `apply` and `end_drain` in one step, for a drain that reads everything at once.
    pub fn diff(&mut self, snap: &Snapshot) -> Vec<ConnDelta> {
        let out = self.apply(snap);
        self.end_drain();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(sk: u64, born: u64, sent: u64, recv: u64) -> Conn {
        let mut c = Conn::ZERO;
        c.sk = sk;
        c.born_ns = born;
        c.opened_ns = born;
        c.flags = flags::ESTABLISHED;
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
        // Its memory is freed at once: the ring hands a connection over exactly once.
        assert_eq!(t.stats().tracked, 0);
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
    fn final_records_free_memory_at_once_live_finals_after_grace() {
        let mut t = Tracker::new();
        // From the ring: forgotten immediately.
        t.diff(&snap(
            vec![conn(1, 1, 1, 0)],
            vec![destroyed(conn(2, 1, 1, 0))],
        ));
        assert_eq!(t.stats().tracked, 1);
        // Destroyed but read from the live table (ring was full): kept for the grace period,
        // so the record arriving later through the ring adds nothing.
        t.diff(&snap(
            vec![conn(1, 1, 1, 0), destroyed(conn(3, 1, 9, 0))],
            vec![],
        ));
        assert_eq!(t.stats().tracked, 2);
        let d = t.diff(&snap(
            vec![conn(1, 1, 1, 0)],
            vec![destroyed(conn(3, 1, 9, 0))],
        ));
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].conn.sk, 1);
    }

    #[test]
    fn half_open_attempts_are_not_conversations() {
        let mut t = Tracker::new();
        let mut c = conn(4, 1, 0, 0);
        c.flags = 0;
        let d = t.diff(&snap(vec![], vec![destroyed(c)]));
        assert!(!d[0].established && !d[0].opened && !d[0].closed && d[0].finished);
        // Opened counts when establishment is first seen, even a drain after the open.
        let mut c = conn(5, 1, 0, 0);
        c.flags = 0;
        assert!(!t.diff(&snap(vec![c], vec![]))[0].opened);
        c.flags = flags::ESTABLISHED;
        let d = t.diff(&snap(vec![c], vec![]));
        assert!(d[0].opened && d[0].established);
        assert!(!t.diff(&snap(vec![c], vec![]))[0].opened);
    }

    #[test]
    fn forgets_unseen_and_counts_vanished() {
        let mut t = Tracker::new();
        t.diff(&snap(vec![conn(1, 1, 1, 0)], vec![]));
        assert_eq!(t.stats().tracked, 1);
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
