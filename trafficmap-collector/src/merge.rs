//! Merging both ends of every conversation.
//!
//! A conversation is (client endpoint, server endpoint, client address, server address, server
//! port). The client's agent reports it as a `client` pair (local = client, peer = server), the
//! server's agent as a `server` pair (local = server, peer = client), each with bytes from its own
//! side. When both reported, the two observations become **one** conversation with both sides
//! kept; [`Conversation`] then derives one set of numbers:
//!
//! - bytes client -> server = max(client's `bytes_sent`, server's `bytes_received`), and the same
//!   for the other direction. Both agents count payload bytes the applications wrote or read, so
//!   neither can see bytes that did not move; each can only miss some (probe drops, an agent that
//!   started late or was down, bytes in flight at the edge of the range). The larger count is the
//!   better estimate, per direction, and is never a sum of the two.
//! - `disagreement_bytes` = |client sent - server received| + |client received - server sent|:
//!   0 on a healthy fleet over whole days; it measures how much the two sides differ.
//! - connections = max of the two sides' counts.
//!
//! Pairs whose peer runs no agent stay one-sided (`observed_by` client or server), their peer
//! resolved to an EC2 instance, an inventory host or an external address.
//!
//! `unknown` roles (the probe could not tell, e.g. both ports equal): the pair joins a
//! conversation the other side reported with a known role, taking the complementary role; when
//! no such conversation exists, the lower address (then the lower endpoint) is taken as the
//! client, so that two `unknown` sides of one conversation still meet.
//!
//! Loopback traffic never leaves a host and is left out of maps (it stays in the store).

use std::{collections::BTreeSet, net::IpAddr};

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use trafficmap_model::{
    bounds::sat_add,
    map::{MAX_LINK_SERVICE_ADDRESSES, ObservedBy},
    report::Role,
};

use crate::{
    enrich::{Directory, Target},
    few::Few,
    range::{Obs, RangeData},
    slots::{Keyed, Slots},
};

/// One end of a conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    /// A host running an agent (index into [`RangeData::agents`]).
    Agent(u32),
    /// An EC2 instance without an agent (index into the cloud snapshot).
    Instance(usize),
    /// An address nobody claims.
    Addr(IpAddr),
}

/// How many service addresses (the smallest) a side or a link keeps: one more than a link
/// lists, so the map can say a list was cut. Hostile reports could otherwise name any number
/// (every pair a new service port). Bytes are summed regardless.
pub const SERVICES_KEPT: usize = MAX_LINK_SERVICE_ADDRESSES + 1;

/// One side's observation of a conversation, summed over its pairs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Side {
    pub sent: u64,
    pub received: u64,
    pub connections: u64,
    /// Process names (indexes into [`RangeData::processes`]).
    pub processes: Few<u32>,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// Issue 11: the containers of this side's processes (indexes into
    /// [`RangeData::containers`]), and the translated addresses the client connected to (the
    /// client's side only: the agent already put the real server in `peer_ip`, so the two
    /// sides meet in one conversation and the address is kept here).
    pub containers: Few<u32>,
    pub services: Few<(IpAddr, u16)>,
}

impl Side {
    fn add(&mut self, o: &Obs, empty_process: Option<u32>) {
        if self.sent == 0
            && self.received == 0
            && self.connections == 0
            && self.processes.is_empty()
        {
            self.first_seen_ms = o.c.first_seen_ms;
            self.last_seen_ms = o.c.last_seen_ms;
        }
        // Saturating (see `trafficmap_model::bounds`): never wraps, never panics.
        self.sent = sat_add(self.sent, o.c.bytes_sent);
        self.received = sat_add(self.received, o.c.bytes_received);
        self.connections = sat_add(self.connections, o.c.connections());
        if Some(o.process) != empty_process {
            self.processes.insert(o.process);
        }
        if let Some(c) = o.container {
            self.containers.insert(c);
        }
        if let Some(svc) = o.service {
            self.services.insert_capped(svc, SERVICES_KEPT);
        }
        self.first_seen_ms = self.first_seen_ms.min(o.c.first_seen_ms);
        self.last_seen_ms = self.last_seen_ms.max(o.c.last_seen_ms);
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConvKey {
    pub client: Endpoint,
    pub server: Endpoint,
    pub client_ip: IpAddr,
    pub server_ip: IpAddr,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conversation {
    pub key: ConvKey,
    pub client_side: Option<Side>,
    pub server_side: Option<Side>,
}

impl Keyed for Conversation {
    type Key = ConvKey;
    fn key(&self) -> &ConvKey {
        &self.key
    }
}

impl Conversation {
    pub fn observed_by(&self) -> ObservedBy {
        match (&self.client_side, &self.server_side) {
            (Some(_), Some(_)) => ObservedBy::Both,
            (Some(_), None) => ObservedBy::Client,
            _ => ObservedBy::Server,
        }
    }

    /// Payload bytes the client sent to the server.
    pub fn bytes_to_server(&self) -> u64 {
        let c = self.client_side.as_ref().map_or(0, |s| s.sent);
        let s = self.server_side.as_ref().map_or(0, |s| s.received);
        c.max(s)
    }

    /// Payload bytes the server sent to the client.
    pub fn bytes_to_client(&self) -> u64 {
        let c = self.client_side.as_ref().map_or(0, |s| s.received);
        let s = self.server_side.as_ref().map_or(0, |s| s.sent);
        c.max(s)
    }

    pub fn disagreement(&self) -> u64 {
        match (&self.client_side, &self.server_side) {
            (Some(c), Some(s)) => sat_add(c.sent.abs_diff(s.received), c.received.abs_diff(s.sent)),
            _ => 0,
        }
    }

    pub fn connections(&self) -> u64 {
        let c = self.client_side.as_ref().map_or(0, |s| s.connections);
        let s = self.server_side.as_ref().map_or(0, |s| s.connections);
        c.max(s)
    }

    pub fn first_seen_ms(&self) -> i64 {
        [&self.client_side, &self.server_side]
            .into_iter()
            .flatten()
            .map(|s| s.first_seen_ms)
            .min()
            .unwrap_or_default()
    }

    pub fn last_seen_ms(&self) -> i64 {
        [&self.client_side, &self.server_side]
            .into_iter()
            .flatten()
            .map(|s| s.last_seen_ms)
            .max()
            .unwrap_or_default()
    }
}

/// The conversations of a range.
#[derive(Clone, Debug, Default)]
pub struct Merged {
    pub conversations: Vec<Conversation>,
    pub warnings: Vec<String>,
    /// Loopback bytes left out.
    pub loopback_bytes: u64,
}

/// Which endpoint a peer address of an observation stands for.
struct Resolver<'a> {
    dir: &'a Directory<'a>,
    by_addr: HashMap<IpAddr, Vec<u32>>,
    by_instance: HashMap<usize, u32>,
    /// (agent, local, peer, port) of every observation, to pick among agents sharing an address.
    seen: Option<HashSet<(u32, IpAddr, IpAddr, u16)>>,
    ambiguous: BTreeSet<IpAddr>,
}

impl<'a> Resolver<'a> {
    fn new(data: &'a RangeData, dir: &'a Directory<'a>) -> Resolver<'a> {
        let mut by_addr: HashMap<IpAddr, Vec<u32>> = HashMap::default();
        let mut by_instance = HashMap::default();
        for (i, a) in data.agents.iter().enumerate() {
            for ip in &a.addresses {
                by_addr.entry(*ip).or_default().push(i as u32);
            }
            if let Some(inst) = dir.agent_instance(a) {
                by_instance.insert(inst, i as u32);
            }
        }
        let shared = by_addr.values().any(|v| v.len() > 1);
        let seen = shared.then(|| {
            data.obs
                .iter()
                .map(|o| (o.agent, o.local_ip, o.peer_ip, o.server_port))
                .collect()
        });
        Resolver {
            dir,
            by_addr,
            by_instance,
            seen,
            ambiguous: BTreeSet::new(),
        }
    }

    fn peer(&mut self, o: &Obs) -> Endpoint {
        match self.by_addr.get(&o.peer_ip).map(Vec::as_slice) {
            // Claimed by one agent (possibly the observer itself: traffic to its own address).
            Some([one]) => return Endpoint::Agent(*one),
            Some(many @ [first, ..]) => {
                if many.contains(&o.agent) {
                    return Endpoint::Agent(o.agent);
                }
                // Several agents claim the address (a shared bridge address, overlapping
                // networks): the one that reported the other side of this pair is the peer.
                let seen = self.seen.as_ref().expect("built when addresses are shared");
                let found = many
                    .iter()
                    .find(|c| seen.contains(&(**c, o.peer_ip, o.local_ip, o.server_port)));
                return match found {
                    Some(c) => Endpoint::Agent(*c),
                    None => {
                        self.ambiguous.insert(o.peer_ip);
                        Endpoint::Agent(*first)
                    }
                };
            }
            _ => {}
        }
        match self.dir.target(o.peer_ip) {
            Target::Instance(i) => match self.by_instance.get(&i) {
                Some(a) => Endpoint::Agent(*a),
                None => Endpoint::Instance(i),
            },
            Target::Addr(ip) => Endpoint::Addr(ip),
        }
    }
}

/// Merges a range's observations into conversations.
/// The client's or the server's side of the conversation `key`, created if new.
fn side(convs: &mut Slots<Conversation>, key: ConvKey, client: bool) -> &mut Side {
    let c = convs.get_or_insert_with(key, |key| Conversation {
        key,
        client_side: None,
        server_side: None,
    });
    if client {
        c.client_side.get_or_insert_default()
    } else {
        c.server_side.get_or_insert_default()
    }
}

pub fn merge(data: &RangeData, dir: &Directory<'_>) -> Merged {
    let mut r = Resolver::new(data, dir);
    let empty_process = data
        .processes
        .iter()
        .position(String::is_empty)
        .map(|i| i as u32);
    // Conversations are built in place in the output ([`Slots`]). Most are seen by both ends,
    // hence half the observations as the first guess.
    let mut convs: Slots<Conversation> = Slots::with_capacity(data.obs.len() / 2 + 1);
    let mut loopback_bytes = 0u64;
    let mut unknown = Vec::new();
    for o in &data.obs {
        if o.local_ip.is_loopback() || o.peer_ip.is_loopback() {
            loopback_bytes = sat_add(loopback_bytes, sat_add(o.c.bytes_sent, o.c.bytes_received));
            continue;
        }
        let local = Endpoint::Agent(o.agent);
        let peer = r.peer(o);
        match o.role {
            Role::Client => {
                let key = ConvKey {
                    client: local,
                    server: peer,
                    client_ip: o.local_ip,
                    server_ip: o.peer_ip,
                    port: o.server_port,
                };
                side(&mut convs, key, true).add(o, empty_process);
            }
            Role::Server => {
                let key = ConvKey {
                    client: peer,
                    server: local,
                    client_ip: o.peer_ip,
                    server_ip: o.local_ip,
                    port: o.server_port,
                };
                side(&mut convs, key, false).add(o, empty_process);
            }
            Role::Unknown => unknown.push((o, local, peer)),
        }
    }
    for (o, local, peer) in unknown {
        let as_client = ConvKey {
            client: local,
            server: peer,
            client_ip: o.local_ip,
            server_ip: o.peer_ip,
            port: o.server_port,
        };
        let as_server = ConvKey {
            client: peer,
            server: local,
            client_ip: o.peer_ip,
            server_ip: o.local_ip,
            port: o.server_port,
        };
        let sides = |k: &ConvKey| {
            convs
                .get(k)
                .map(|c| (c.client_side.is_some(), c.server_side.is_some()))
        };
        let client = match (sides(&as_client), sides(&as_server)) {
            (Some((false, true)), _) => true,
            (_, Some((true, false))) => false,
            _ => (o.local_ip, local) < (o.peer_ip, peer),
        };
        if client {
            side(&mut convs, as_client, true).add(o, empty_process);
        } else {
            side(&mut convs, as_server, false).add(o, empty_process);
        }
    }
    let mut warnings = Vec::new();
    if !r.ambiguous.is_empty() {
        let list: Vec<String> = r
            .ambiguous
            .iter()
            .take(10)
            .map(ToString::to_string)
            .collect();
        warnings.push(format!(
            "{} address(es) claimed by several agents could not be attributed by the other side's report ({}{}); attributed to the first agent by machine id",
            r.ambiguous.len(),
            list.join(", "),
            if r.ambiguous.len() > 10 { ", ..." } else { "" }
        ));
    }
    Merged {
        conversations: convs.into_vec(),
        warnings,
        loopback_bytes,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use trafficmap_model::cloud::{CloudSnapshot, Instance, Lifecycle};

    use super::*;
    use crate::{
        enrich::{CloudIndex, Rules, Sources},
        range::{Counters, RangeBuilder},
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn c(sent: u64, received: u64, opened: u64) -> Counters {
        Counters {
            bytes_sent: sent,
            bytes_received: received,
            conns_opened: opened,
            conns_carried: 0,
            first_window_ms: 1000,
            first_seen_ms: 1000,
            last_seen_ms: 2000,
        }
    }

    /// agents: (machine id, addresses); rows: (machine id, local, peer, port, role, process, counters).
    fn data(
        agents: &[(&str, &[&str])],
        rows: &[(&str, &str, &str, u16, Role, &str, Counters)],
    ) -> RangeData {
        let mut b = RangeBuilder::default();
        for (m, addrs) in agents {
            let a = b.agent_mut(m);
            a.addresses = addrs.iter().map(|s| ip(s)).collect();
            a.hostname = format!("{m}-host");
        }
        for (m, l, p, port, role, proc_, c) in rows {
            let a = b.agent(m);
            let pr = b.process(proc_);
            b.add(a, ip(l), ip(p), *port, *role, pr, c);
        }
        b.finish(chrono::DateTime::UNIX_EPOCH, chrono::DateTime::UNIX_EPOCH)
    }

    fn sources() -> Sources {
        Sources {
            cloud: Arc::new(CloudIndex::new(CloudSnapshot {
                instances: vec![Instance {
                    instance_id: "i-cache".into(),
                    region: "us-east-1".into(),
                    availability_zone: None,
                    instance_type: None,
                    lifecycle: Lifecycle::OnDemand,
                    state: None,
                    private_ips: vec![ip("10.0.0.9")],
                    public_ips: vec![],
                    tags: Default::default(),
                    security_groups: vec![],
                    vpc_id: None,
                    launch_time: None,
                }],
                ..CloudSnapshot::default()
            })),
            ..Sources::default()
        }
    }

    fn run(d: &RangeData) -> Merged {
        let s = sources();
        let rules = Rules::default();
        let dir = Directory {
            sources: &s,
            rules: &rules,
        };
        let mut m = merge(d, &dir);
        m.conversations.sort_by(|a, b| a.key.cmp(&b.key));
        m
    }

    #[test]
    fn both_ends_become_one_conversation_with_disagreement() {
        let d = data(
            &[("a", &["10.0.0.1"]), ("b", &["10.0.0.2"])],
            &[
                (
                    "a",
                    "10.0.0.1",
                    "10.0.0.2",
                    5432,
                    Role::Client,
                    "api",
                    c(1000, 5000, 2),
                ),
                // The server lost 10 bytes of what it received and counted one more connection.
                (
                    "b",
                    "10.0.0.2",
                    "10.0.0.1",
                    5432,
                    Role::Server,
                    "postgres",
                    c(5000, 990, 3),
                ),
            ],
        );
        let m = run(&d);
        assert_eq!(m.conversations.len(), 1);
        let conv = &m.conversations[0];
        assert_eq!(conv.key.client, Endpoint::Agent(0));
        assert_eq!(conv.key.server, Endpoint::Agent(1));
        assert_eq!(conv.observed_by(), ObservedBy::Both);
        assert_eq!(conv.bytes_to_server(), 1000);
        assert_eq!(conv.bytes_to_client(), 5000);
        assert_eq!(conv.disagreement(), 10);
        assert_eq!(conv.connections(), 3);
        let names = |s: &Option<Side>| -> Vec<&str> {
            s.as_ref()
                .unwrap()
                .processes
                .iter()
                .map(|p| d.processes[p as usize].as_str())
                .collect()
        };
        assert_eq!(names(&conv.client_side), ["api"]);
        assert_eq!(names(&conv.server_side), ["postgres"]);
    }

    #[test]
    fn one_sided_pairs_resolve_peer_to_instance_or_address() {
        let d = data(
            &[("a", &["10.0.0.1"])],
            &[
                (
                    "a",
                    "10.0.0.1",
                    "10.0.0.9",
                    6379,
                    Role::Client,
                    "api",
                    c(10, 20, 1),
                ),
                (
                    "a",
                    "10.0.0.1",
                    "52.1.2.3",
                    443,
                    Role::Client,
                    "api",
                    c(30, 40, 1),
                ),
                (
                    "a",
                    "10.0.0.1",
                    "203.0.113.5",
                    80,
                    Role::Server,
                    "nginx",
                    c(50, 60, 4),
                ),
                (
                    "a",
                    "127.0.0.1",
                    "127.0.0.1",
                    8080,
                    Role::Client,
                    "curl",
                    c(7, 8, 1),
                ),
            ],
        );
        let m = run(&d);
        assert_eq!(m.loopback_bytes, 15);
        let keys: Vec<(Endpoint, Endpoint, ObservedBy, u64, u64)> = m
            .conversations
            .iter()
            .map(|c| {
                (
                    c.key.client,
                    c.key.server,
                    c.observed_by(),
                    c.bytes_to_server(),
                    c.bytes_to_client(),
                )
            })
            .collect();
        assert_eq!(
            keys,
            vec![
                (
                    Endpoint::Agent(0),
                    Endpoint::Instance(0),
                    ObservedBy::Client,
                    10,
                    20
                ),
                (
                    Endpoint::Agent(0),
                    Endpoint::Addr(ip("52.1.2.3")),
                    ObservedBy::Client,
                    30,
                    40
                ),
                (
                    Endpoint::Addr(ip("203.0.113.5")),
                    Endpoint::Agent(0),
                    ObservedBy::Server,
                    60,
                    50
                ),
            ]
        );
    }

    #[test]
    fn unknown_roles_join_the_known_side_or_meet_by_address_order() {
        let d = data(
            &[
                ("a", &["10.0.0.1"]),
                ("b", &["10.0.0.2"]),
                ("c", &["10.0.0.3"]),
            ],
            &[
                // b knows it is the server; a could not tell.
                (
                    "a",
                    "10.0.0.1",
                    "10.0.0.2",
                    7000,
                    Role::Unknown,
                    "x",
                    c(100, 200, 1),
                ),
                (
                    "b",
                    "10.0.0.2",
                    "10.0.0.1",
                    7000,
                    Role::Server,
                    "y",
                    c(200, 100, 1),
                ),
                // Neither c nor b could tell: the lower address is the client.
                (
                    "c",
                    "10.0.0.3",
                    "10.0.0.2",
                    7001,
                    Role::Unknown,
                    "z",
                    c(5, 6, 1),
                ),
                (
                    "b",
                    "10.0.0.2",
                    "10.0.0.3",
                    7001,
                    Role::Unknown,
                    "w",
                    c(6, 5, 1),
                ),
            ],
        );
        let m = run(&d);
        assert_eq!(m.conversations.len(), 2);
        let first = &m.conversations[0];
        assert_eq!(
            (first.key.client, first.key.server),
            (Endpoint::Agent(0), Endpoint::Agent(1))
        );
        assert_eq!(
            (first.observed_by(), first.disagreement()),
            (ObservedBy::Both, 0)
        );
        let second = &m.conversations[1];
        assert_eq!(
            (second.key.client, second.key.server),
            (Endpoint::Agent(1), Endpoint::Agent(2))
        );
        assert_eq!(second.observed_by(), ObservedBy::Both);
        assert_eq!((second.bytes_to_server(), second.bytes_to_client()), (6, 5));
    }

    #[test]
    fn mutual_clients_on_the_same_port_stay_two_conversations() {
        let d = data(
            &[("a", &["10.0.0.1"]), ("b", &["10.0.0.2"])],
            &[
                (
                    "a",
                    "10.0.0.1",
                    "10.0.0.2",
                    9000,
                    Role::Client,
                    "p",
                    c(1, 2, 1),
                ),
                (
                    "b",
                    "10.0.0.2",
                    "10.0.0.1",
                    9000,
                    Role::Server,
                    "q",
                    c(2, 1, 1),
                ),
                (
                    "b",
                    "10.0.0.2",
                    "10.0.0.1",
                    9000,
                    Role::Client,
                    "q",
                    c(3, 4, 1),
                ),
                (
                    "a",
                    "10.0.0.1",
                    "10.0.0.2",
                    9000,
                    Role::Server,
                    "p",
                    c(4, 3, 1),
                ),
            ],
        );
        let m = run(&d);
        assert_eq!(m.conversations.len(), 2);
        assert!(
            m.conversations
                .iter()
                .all(|c| c.observed_by() == ObservedBy::Both && c.disagreement() == 0)
        );
        let total: u64 = m
            .conversations
            .iter()
            .map(|c| c.bytes_to_server() + c.bytes_to_client())
            .sum();
        assert_eq!(total, 10);
    }

    #[test]
    fn shared_address_is_attributed_by_the_other_sides_report() {
        // Both agents have 172.17.0.1 (a bridge); b's pair with a names a's real address.
        let d = data(
            &[
                ("a", &["10.0.0.1", "172.17.0.1"]),
                ("b", &["10.0.0.2", "172.17.0.1"]),
                ("c", &["10.0.0.3"]),
            ],
            &[
                (
                    "c",
                    "10.0.0.3",
                    "172.17.0.1",
                    80,
                    Role::Client,
                    "curl",
                    c(1, 2, 1),
                ),
                (
                    "b",
                    "172.17.0.1",
                    "10.0.0.3",
                    80,
                    Role::Server,
                    "web",
                    c(2, 1, 1),
                ),
                (
                    "c",
                    "10.0.0.3",
                    "172.17.0.1",
                    81,
                    Role::Client,
                    "curl",
                    c(1, 2, 1),
                ),
            ],
        );
        let m = run(&d);
        assert_eq!(m.conversations.len(), 2);
        let port = |p: u16| m.conversations.iter().find(|c| c.key.port == p).unwrap();
        assert_eq!(port(80).key.server, Endpoint::Agent(1));
        assert_eq!(port(80).observed_by(), ObservedBy::Both);
        // Port 81: nobody answered; the first agent by machine id gets it, with a warning.
        assert_eq!(port(81).key.server, Endpoint::Agent(0));
        assert_eq!(m.warnings.len(), 1, "{:?}", m.warnings);
        assert!(m.warnings[0].contains("172.17.0.1"));
    }

    #[test]
    fn agent_found_through_its_instance_address() {
        // The cache's agent reports instance i-cache (whose EC2 address is 10.0.0.9) but not
        // that address itself: a client of 10.0.0.9 still reaches the agent's node.
        let mut b = RangeBuilder::default();
        b.agent_mut("a").addresses = [ip("10.0.0.1")].into();
        let cache = b.agent_mut("cache");
        cache.addresses = [ip("10.9.9.9")].into();
        cache.ec2 = Some(trafficmap_model::report::Ec2Identity {
            instance_id: "i-cache".into(),
            region: "us-east-1".into(),
            availability_zone: None,
            instance_type: None,
        });
        let a = b.agent("a");
        let p = b.process("api");
        b.add(
            a,
            ip("10.0.0.1"),
            ip("10.0.0.9"),
            6379,
            Role::Client,
            p,
            &c(1, 1, 1),
        );
        let d = b.finish(chrono::DateTime::UNIX_EPOCH, chrono::DateTime::UNIX_EPOCH);
        let m = run(&d);
        assert_eq!(m.conversations[0].key.server, Endpoint::Agent(1));
        assert_eq!(d.agents[1].machine_id, "cache");
    }
}
