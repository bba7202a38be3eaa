//! Aggregation of per-connection deltas into report pairs: (local address, peer address, server
//! port, role, local process), with the client's ephemeral port folded away. Pure: time comes in
//! as arguments.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

use chrono::{DateTime, Utc};
use trafficmap_model::report::{self, Pair};

use crate::{
    conn::{ConnExt as _, Role, RoleSource},
    delta::ConnDelta,
};

/// Converts the probe's monotonic nanoseconds to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// A monotonic reading and the wall time taken at the same moment.
    pub mono_ns: u64,
    pub wall: DateTime<Utc>,
}

impl Clock {
    pub fn now() -> Clock {
        Clock {
            mono_ns: monotonic_ns(),
            wall: Utc::now(),
        }
    }

    pub fn wall(&self, mono_ns: u64) -> DateTime<Utc> {
        let delta = mono_ns as i128 - self.mono_ns as i128;
        self.wall
            + chrono::Duration::nanoseconds(delta.clamp(i64::MIN as i128, i64::MAX as i128) as i64)
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// A connection's delta with its resolved role.
#[derive(Clone, Debug)]
pub struct Attributed<'a> {
    pub delta: &'a ConnDelta,
    pub role: Role,
    pub role_source: RoleSource,
    /// Issue 11, NAT undone: the real server of a client connection whose destination was
    /// translated (conntrack's reply source); the socket's destination becomes the service.
    pub nat: Option<SocketAddr>,
}

/// Pair identity within a report. The process is kept as the kernel's fixed-size `comm`, so
/// adding a connection allocates nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PairKey {
    pub local_ip: IpAddr,
    pub peer_ip: IpAddr,
    pub server_port: u16,
    pub role: Role,
    pub comm: [u8; 16],
    /// cgroup v2 id of the local process (issue 11): resolved to its container when the
    /// window closes; two cgroups of one container become one pair then.
    pub cgroup_id: u64,
    /// The address a client's socket connected to when its destination was translated.
    pub service: Option<(IpAddr, u16)>,
}

impl PairKey {
    pub fn of(a: &Attributed<'_>) -> PairKey {
        let c = &a.delta.conn;
        let (local, remote) = (c.local(), c.remote());
        let (peer, server_port, service) = match (a.role, a.nat) {
            // The real server is the peer; the virtual address the socket saw is the service.
            (Role::Client, Some(real)) => {
                (real.ip(), real.port(), Some((remote.ip(), remote.port())))
            }
            (Role::Client, None) => (remote.ip(), remote.port(), None),
            (Role::Server | Role::Unknown, _) => (remote.ip(), local.port(), None),
        };
        PairKey {
            local_ip: local.ip(),
            peer_ip: peer,
            server_port,
            role: a.role,
            comm: c.comm,
            cgroup_id: c.cgroup_id,
            service,
        }
    }
}

fn report_role(r: Role) -> report::Role {
    match r {
        Role::Client => report::Role::Client,
        Role::Server => report::Role::Server,
        Role::Unknown => report::Role::Unknown,
    }
}

fn report_role_source(r: RoleSource) -> report::RoleSource {
    match r {
        RoleSource::Observed => report::RoleSource::Observed,
        RoleSource::Listeners => report::RoleSource::Listeners,
        RoleSource::LowerPort => report::RoleSource::LowerPort,
    }
}

/// Running sums of one pair within the current window.
#[derive(Clone, Debug)]
struct Acc {
    role_source: RoleSource,
    bytes_sent: u64,
    bytes_received: u64,
    opened: u64,
    closed: u64,
    active: u64,
    /// `None` means "since the window start" (no open seen in this window).
    first: Option<DateTime<Utc>>,
    last: Option<DateTime<Utc>>,
}

/// Pairs of the current window, built up as deltas arrive (final records between drains, live
/// ones at the drain), so memory follows the number of pairs, not of connections.
#[derive(Debug, Default)]
pub struct Accumulator {
    pairs: HashMap<PairKey, Acc>,
}

impl Accumulator {
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Adds one connection's delta. Half-open attempts are not conversations and are skipped.
    pub fn add(&mut self, a: &Attributed<'_>, clock: &Clock) {
        let d = a.delta;
        if !d.established {
            return;
        }
        let c = &d.conn;
        let first = (d.opened && c.opened_ns != 0).then(|| clock.wall(c.opened_ns));
        let last_ns = c.last_ns.max(c.closed_ns).max(c.opened_ns);
        let last = (last_ns != 0).then(|| clock.wall(last_ns));
        let active = !d.finished && c.closed_ns == 0;
        let acc = self.pairs.entry(PairKey::of(a)).or_insert_with(|| Acc {
            role_source: a.role_source,
            bytes_sent: 0,
            bytes_received: 0,
            opened: 0,
            closed: 0,
            active: 0,
            first,
            last,
        });
        // Saturating: a hostile or broken probe value must not wrap a pair's sum to a small one.
        acc.bytes_sent = acc.bytes_sent.saturating_add(d.delta.bytes_sent);
        acc.bytes_received = acc.bytes_received.saturating_add(d.delta.bytes_received);
        acc.opened = acc.opened.saturating_add(u64::from(d.opened));
        acc.closed = acc.closed.saturating_add(u64::from(d.closed));
        acc.active = acc.active.saturating_add(u64::from(active));
        // A connection not opened in this window was there since its start.
        acc.first = match (acc.first, first) {
            (Some(x), Some(y)) => Some(x.min(y)),
            _ => None,
        };
        acc.last = acc.last.max(last);
        // Keep the weakest role source seen, so a reader knows part of the pair was inferred.
        if a.role_source != RoleSource::Observed {
            acc.role_source = a.role_source;
        }
    }

    /// The pairs of the window `[start, end)`, sorted by key; the accumulator starts afresh.
    /// `container_of` names the container of a cgroup id (`None`: no container or unknown);
    /// pairs that differ only by cgroup but resolve to the same container (or to none) merge.
    pub fn finish(
        &mut self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
        container_of: &mut dyn FnMut(u64) -> Option<report::Container>,
    ) -> Vec<Pair> {
        let clamp = |t: DateTime<Utc>| t.clamp(start, end);
        let mut containers: HashMap<u64, Option<report::Container>> = HashMap::new();
        let mut out: Vec<Pair> = self
            .pairs
            .drain()
            .map(|(key, a)| {
                let first = a.first.map_or(start, clamp);
                let last = a.last.map_or(first, clamp).max(first);
                let container = containers
                    .entry(key.cgroup_id)
                    .or_insert_with(|| container_of(key.cgroup_id))
                    .clone();
                Pair {
                    local_ip: key.local_ip,
                    peer_ip: key.peer_ip,
                    server_port: key.server_port,
                    role: report_role(key.role),
                    role_source: report_role_source(a.role_source),
                    process: crate::conn::decode_comm(&key.comm),
                    bytes_sent: a.bytes_sent,
                    bytes_received: a.bytes_received,
                    connections_opened: a.opened,
                    connections_closed: a.closed,
                    connections_active: a.active,
                    first_seen: first,
                    last_seen: last,
                    container,
                    service_ip: key.service.map(|s| s.0),
                    service_port: key.service.map(|s| s.1),
                }
            })
            .collect();
        out.sort_by(|a, b| a.key().cmp(&b.key()));
        merge_equal_keys(&mut out);
        out
    }
}

/// Merges adjacent pairs (sorted by key) with the same report key: sums saturate, the earliest
/// first and latest last seen are kept, and the weaker role source.
fn merge_equal_keys(pairs: &mut Vec<Pair>) {
    pairs.dedup_by(|b, a| {
        if a.key() != b.key() {
            return false;
        }
        let add = |x: &mut u64, y: u64| *x = x.saturating_add(y);
        add(&mut a.bytes_sent, b.bytes_sent);
        add(&mut a.bytes_received, b.bytes_received);
        add(&mut a.connections_opened, b.connections_opened);
        add(&mut a.connections_closed, b.connections_closed);
        add(&mut a.connections_active, b.connections_active);
        a.first_seen = a.first_seen.min(b.first_seen);
        a.last_seen = a.last_seen.max(b.last_seen);
        if b.role_source != report::RoleSource::Observed {
            a.role_source = b.role_source;
        }
        true
    });
}

/// Sums the deltas of one window `[start, end)` into pairs, sorted by key.
pub fn aggregate(
    deltas: &[Attributed<'_>],
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    clock: &Clock,
) -> Vec<Pair> {
    let mut acc = Accumulator::default();
    for a in deltas {
        acc.add(a, clock);
    }
    acc.finish(start, end, &mut |_| None)
}

#[cfg(test)]
mod tests {
    use trafficmap_common::{AF_INET, Conn, flags, role};

    use super::*;
    use crate::delta::Counters;

    fn v4(a: [u8; 4]) -> [u8; 16] {
        [
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
        ]
    }

    struct Spec {
        lport: u16,
        rport: u16,
        role: u8,
        sent: u64,
        recv: u64,
        opened_ns: u64,
        closed_ns: u64,
        last_ns: u64,
        finished: bool,
        opened: bool,
    }

    fn delta(s: Spec) -> ConnDelta {
        let mut c = Conn::ZERO;
        c.family = AF_INET;
        c.saddr = v4([10, 0, 0, 1]);
        c.daddr = v4([10, 0, 0, 2]);
        c.sport = s.lport;
        c.dport = s.rport;
        c.role = s.role;
        c.opened_ns = s.opened_ns;
        c.closed_ns = s.closed_ns;
        c.last_ns = s.last_ns;
        c.comm[..3].copy_from_slice(b"app");
        if s.finished {
            c.flags |= flags::DESTROYED;
        }
        ConnDelta {
            conn: c,
            delta: Counters {
                bytes_sent: s.sent,
                bytes_received: s.recv,
                send_calls: 1,
                recv_calls: 1,
            },
            established: true,
            opened: s.opened,
            closed: s.closed_ns != 0,
            finished: s.finished,
        }
    }

    fn clock() -> Clock {
        Clock {
            mono_ns: 1_000_000_000_000,
            wall: "2026-11-23T10:00:30Z".parse().unwrap(),
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn folds_ephemeral_ports_and_counts_connections() {
        let base = 1_000_000_000_000;
        let ds = [
            // Two client connections to 10.0.0.2:5432 from different ephemeral ports.
            delta(Spec {
                lport: 40001,
                rport: 5432,
                role: role::CLIENT,
                sent: 100,
                recv: 10,
                opened_ns: base - 20 * SEC,
                closed_ns: base - 5 * SEC,
                last_ns: base - 6 * SEC,
                finished: true,
                opened: true,
            }),
            delta(Spec {
                lport: 40002,
                rport: 5432,
                role: role::CLIENT,
                sent: 50,
                recv: 5,
                opened_ns: 0,
                closed_ns: 0,
                last_ns: base + 10 * SEC,
                finished: false,
                opened: false,
            }),
            // One served connection on local port 8080.
            delta(Spec {
                lport: 8080,
                rport: 51000,
                role: role::SERVER,
                sent: 7,
                recv: 3,
                opened_ns: base - 10 * SEC,
                closed_ns: 0,
                last_ns: base,
                finished: false,
                opened: true,
            }),
        ];
        let attributed: Vec<Attributed> = ds
            .iter()
            .map(|d| Attributed {
                delta: d,
                role: d.conn.role(),
                role_source: RoleSource::Observed,
                nat: None,
            })
            .collect();
        let pairs = aggregate(
            &attributed,
            at("2026-11-23T10:00:00Z"),
            at("2026-11-23T10:01:00Z"),
            &clock(),
        );
        assert_eq!(pairs.len(), 2);
        let client = &pairs[0];
        assert_eq!(
            (client.server_port, client.role),
            (5432, report::Role::Client)
        );
        assert_eq!((client.bytes_sent, client.bytes_received), (150, 15));
        assert_eq!(
            (
                client.connections_opened,
                client.connections_closed,
                client.connections_active
            ),
            (1, 1, 1)
        );
        assert_eq!(client.first_seen, at("2026-11-23T10:00:00Z"));
        assert_eq!(client.last_seen, at("2026-11-23T10:00:40Z"));
        let server = &pairs[1];
        assert_eq!(
            (server.server_port, server.role),
            (8080, report::Role::Server)
        );
        assert_eq!((server.bytes_sent, server.bytes_received), (7, 3));
        assert_eq!(server.first_seen, at("2026-11-23T10:00:20Z"));
        assert_eq!(server.last_seen, at("2026-11-23T10:00:30Z"));
        assert_eq!(server.process, "app");
    }

    #[test]
    fn inferred_roles_are_labelled() {
        let d = delta(Spec {
            lport: 40001,
            rport: 443,
            role: role::UNKNOWN,
            sent: 1,
            recv: 1,
            opened_ns: 0,
            closed_ns: 0,
            last_ns: 0,
            finished: false,
            opened: false,
        });
        let a = [Attributed {
            delta: &d,
            role: Role::Client,
            role_source: RoleSource::LowerPort,
            nat: None,
        }];
        let pairs = aggregate(
            &a,
            at("2026-11-23T10:00:00Z"),
            at("2026-11-23T10:01:00Z"),
            &clock(),
        );
        assert_eq!(pairs[0].role_source, report::RoleSource::LowerPort);
        assert_eq!(pairs[0].server_port, 443);
        assert_eq!(pairs[0].first_seen, pairs[0].last_seen);
    }

    #[test]
    fn half_open_attempts_are_left_out() {
        let mut d = delta(Spec {
            lport: 40001,
            rport: 443,
            role: role::CLIENT,
            sent: 0,
            recv: 0,
            opened_ns: 5,
            closed_ns: 6,
            last_ns: 0,
            finished: true,
            opened: false,
        });
        d.established = false;
        let a = [Attributed {
            delta: &d,
            role: Role::Client,
            role_source: RoleSource::Observed,
            nat: None,
        }];
        assert!(
            aggregate(
                &a,
                at("2026-11-23T10:00:00Z"),
                at("2026-11-23T10:01:00Z"),
                &clock()
            )
            .is_empty()
        );
    }

    #[test]
    fn pairs_carry_their_container_and_cgroups_of_one_container_merge() {
        let spec = |sent| Spec {
            lport: 40001,
            rport: 443,
            role: role::CLIENT,
            sent,
            recv: 1,
            opened_ns: 0,
            closed_ns: 0,
            last_ns: 0,
            finished: false,
            opened: false,
        };
        // cgroups 10 and 11 are one container (podman's split sub-cgroup), 20 another, 1 and 2
        // host cgroups (no container).
        let ds: Vec<ConnDelta> = [(10, 100), (11, 20), (20, 3), (1, 4000), (2, 50000)]
            .into_iter()
            .map(|(cg, sent)| {
                let mut d = delta(spec(sent));
                d.conn.cgroup_id = cg;
                d
            })
            .collect();
        let mut acc = Accumulator::default();
        for d in &ds {
            acc.add(
                &Attributed {
                    delta: d,
                    role: Role::Client,
                    role_source: RoleSource::Observed,
                    nat: None,
                },
                &clock(),
            );
        }
        assert_eq!(acc.len(), 5);
        let c = |id: char| report::Container {
            id: id.to_string().repeat(64),
            runtime: report::ContainerRuntime::Podman,
            name: Some(format!("ctr-{id}")),
            pod: None,
            namespace: None,
            workload_kind: None,
            workload: None,
        };
        let mut asked = Vec::new();
        let pairs = acc.finish(
            at("2026-11-23T10:00:00Z"),
            at("2026-11-23T10:01:00Z"),
            &mut |cg| {
                asked.push(cg);
                match cg {
                    10 | 11 => Some(c('a')),
                    20 => Some(c('b')),
                    _ => None,
                }
            },
        );
        asked.sort();
        assert_eq!(asked, vec![1, 2, 10, 11, 20]);
        let got: Vec<(Option<String>, u64)> = pairs
            .iter()
            .map(|p| {
                (
                    p.container.as_ref().and_then(|c| c.name.clone()),
                    p.bytes_sent,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (None, 54000),
                (Some("ctr-a".into()), 120),
                (Some("ctr-b".into()), 3)
            ]
        );
    }

    /// Issue 11, NAT undone: a client connection whose destination was translated names the
    /// real server as its peer and keeps the virtual address as its service; server-role
    /// connections and untranslated clients are unchanged; connections to the same service
    /// from several ephemeral ports fold into one pair.
    #[test]
    fn translated_clients_name_the_real_server_and_keep_the_service() {
        let spec = |lport, rport, role, sent, recv| Spec {
            lport,
            rport,
            role,
            sent,
            recv,
            opened_ns: 0,
            closed_ns: 0,
            last_ns: 0,
            finished: false,
            opened: false,
        };
        let ds = [
            delta(spec(40001, 80, role::CLIENT, 1_000, 10)),
            delta(spec(40002, 80, role::CLIENT, 2_000, 20)),
            // Same virtual destination, not translated (no entry): kept as the socket saw it.
            delta(spec(40003, 80, role::CLIENT, 5, 6)),
            delta(spec(8080, 51000, role::SERVER, 7, 8)),
        ];
        let real: SocketAddr = "10.0.0.9:8080".parse().unwrap();
        let nats = [Some(real), Some(real), None, Some(real)];
        let attributed: Vec<Attributed> = ds
            .iter()
            .zip(nats)
            .map(|(d, nat)| Attributed {
                delta: d,
                role: d.conn.role(),
                role_source: RoleSource::Observed,
                nat,
            })
            .collect();
        let pairs = aggregate(
            &attributed,
            at("2026-11-23T10:00:00Z"),
            at("2026-11-23T10:01:00Z"),
            &clock(),
        );
        let got: Vec<_> = pairs
            .iter()
            .map(|p| {
                (
                    p.role,
                    p.peer_ip.to_string(),
                    p.server_port,
                    p.service_ip.map(|i| i.to_string()),
                    p.service_port,
                    p.bytes_sent,
                    p.bytes_received,
                )
            })
            .collect();
        let mut want = vec![
            (
                report::Role::Client,
                "10.0.0.9".to_owned(),
                8080,
                Some("10.0.0.2".to_owned()),
                Some(80),
                3_000,
                30,
            ),
            (
                report::Role::Client,
                "10.0.0.2".to_owned(),
                80,
                None,
                None,
                5,
                6,
            ),
            // The server's nat is ignored: it sees the client's real address already.
            (
                report::Role::Server,
                "10.0.0.2".to_owned(),
                8080,
                None,
                None,
                7,
                8,
            ),
        ];
        let mut got = got;
        got.sort();
        want.sort();
        assert_eq!(got, want);
    }
}
