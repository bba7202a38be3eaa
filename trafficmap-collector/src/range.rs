//! Observations over a range: what the stores hand back for `[from, to)` ([`RangeData`]: every
//! observation key summed over the range, and the agents that reported in it), how stores build
//! it ([`RangeBuilder`]) and how pieces of a range add up ([`RangeData::merge`]).

use std::{collections::BTreeSet, net::IpAddr};

use chrono::{DateTime, Utc};
use trafficmap_model::{
    bounds::sat_add,
    map::HostStats,
    report::{Container, Ec2Identity, Role},
};

/// Counters of one observation key over some period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Connections opened during the period.
    pub conns_opened: u64,
    /// Connections already open when the period's first window began (so that long-lived
    /// connections count in a range even if they were opened before it).
    pub conns_carried: u64,
    /// Start of the earliest window that contributed (milliseconds since the epoch); decides
    /// whose `conns_carried` wins when periods are added.
    pub first_window_ms: i64,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
}

impl Counters {
    /// Adds a later or earlier period of the same key.
    pub fn add(&mut self, o: &Counters) {
        // Saturating: a sum never wraps to a small number nor panics (see `bounds`).
        self.bytes_sent = sat_add(self.bytes_sent, o.bytes_sent);
        self.bytes_received = sat_add(self.bytes_received, o.bytes_received);
        self.conns_opened = sat_add(self.conns_opened, o.conns_opened);
        if o.first_window_ms < self.first_window_ms {
            self.first_window_ms = o.first_window_ms;
            self.conns_carried = o.conns_carried;
        }
        self.first_seen_ms = self.first_seen_ms.min(o.first_seen_ms);
        self.last_seen_ms = self.last_seen_ms.max(o.last_seen_ms);
    }

    /// Distinct connections over the period: those open at its start plus those opened in it.
    pub fn connections(&self) -> u64 {
        sat_add(self.conns_carried, self.conns_opened)
    }
}

/// An agent as seen over a range: identity and health summed over its reports.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AgentInfo {
    pub machine_id: String,
    pub hostname: String,
    pub addresses: BTreeSet<IpAddr>,
    pub ec2: Option<Ec2Identity>,
    pub reports: u64,
    pub probe_drops: u64,
    pub spool_dropped: u64,
    /// Host health over the range (issue 12 item 5): the last sample and the largest load1.
    pub host: Option<HostStats>,
}

/// Adds a host-health sample (or a period's summary) to what a range holds: the later sample
/// wins (on a tie, the one added last), `load1_max` is the largest of both. Order-independent
/// but for ties, so pieces of a range add up to the whole range.
pub fn fold_host(acc: &mut Option<HostStats>, s: HostStats) {
    *acc = Some(match *acc {
        None => s,
        Some(a) => {
            let load1_max = a.load1_max.max(s.load1_max);
            let mut last = if s.sampled_at >= a.sampled_at { s } else { a };
            last.load1_max = load1_max;
            last
        }
    });
}

/// One observation key summed over a range, with interned observer and process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Obs {
    /// Index into [`RangeData::agents`].
    pub agent: u32,
    pub local_ip: IpAddr,
    pub peer_ip: IpAddr,
    pub server_port: u16,
    pub role: Role,
    /// Index into [`RangeData::processes`].
    pub process: u32,
    /// Issue 11: the local process's container (index into [`RangeData::containers`]) and
    /// the translated address a client connected to.
    pub container: Option<u32>,
    pub service: Option<(IpAddr, u16)>,
    pub c: Counters,
}

/// The issue-11 parts of an observation key, as [`RangeBuilder::add_with`] takes them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ident {
    pub container: Option<u32>,
    pub service: Option<(IpAddr, u16)>,
}

/// What a store returns for a range: every observation key summed over the range, and the
/// agents that reported in it.
#[derive(Clone, Debug, Default)]
pub struct RangeData {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub agents: Vec<AgentInfo>,
    pub processes: Vec<String>,
    /// Containers the observations name (issue 11), each once.
    pub containers: Vec<Container>,
    pub obs: Vec<Obs>,
}

/// Why pieces of a range cannot be added up into one range.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RangeMergeError {
    #[error("no pieces to merge")]
    Empty,
    #[error("pieces are not consecutive: one ends at {end}, the next starts at {start}")]
    NotConsecutive {
        end: DateTime<Utc>,
        start: DateTime<Utc>,
    },
}

impl RangeData {
    /// Adds up consecutive pieces of a range (in time order, e.g. its days) into the data of
    /// the whole range, as a store reading the whole range at once returns it: counters summed
    /// by key through [`Counters::add`] (so carried-in connections come from the earliest
    /// piece), agents' reports and probe drops summed, spool drops the largest (a count since
    /// the agent started), identity (hostname, EC2) from the latest piece and addresses from
    /// all. This is the sum a multi-day map is made of; `tests/range_split.rs` checks that
    /// every split of a range, merged, gives the map of the whole range.
    pub fn merge(pieces: Vec<RangeData>) -> Result<RangeData, RangeMergeError> {
        let (Some(first), Some(last)) = (pieces.first(), pieces.last()) else {
            return Err(RangeMergeError::Empty);
        };
        let (from, to) = (first.from, last.to);
        for w in pieces.windows(2) {
            if w[0].to != w[1].from {
                return Err(RangeMergeError::NotConsecutive {
                    end: w[0].to,
                    start: w[1].from,
                });
            }
        }
        let mut b = RangeBuilder::default();
        for piece in pieces {
            let agents: Vec<u32> = piece
                .agents
                .into_iter()
                .map(|a| {
                    let i = b.agent(&a.machine_id);
                    let acc = &mut b.agents[i as usize];
                    acc.hostname = a.hostname;
                    acc.ec2 = a.ec2;
                    acc.addresses.extend(a.addresses);
                    acc.reports = sat_add(acc.reports, a.reports);
                    acc.probe_drops = sat_add(acc.probe_drops, a.probe_drops);
                    acc.spool_dropped = acc.spool_dropped.max(a.spool_dropped);
                    if let Some(h) = a.host {
                        fold_host(&mut acc.host, h);
                    }
                    i
                })
                .collect();
            let processes: Vec<u32> = piece.processes.iter().map(|p| b.process(p)).collect();
            let containers: Vec<u32> = piece.containers.iter().map(|c| b.container(c)).collect();
            // Keys are unique within a piece; a second piece with rows makes the builder sum.
            b.begin_read(true);
            for o in &piece.obs {
                b.add_with(
                    agents[o.agent as usize],
                    o.local_ip,
                    o.peer_ip,
                    o.server_port,
                    o.role,
                    processes[o.process as usize],
                    Ident {
                        container: o.container.map(|c| containers[c as usize]),
                        service: o.service,
                    },
                    &o.c,
                );
            }
        }
        Ok(b.finish(from, to))
    }
}

/// Builds a [`RangeData`], interning agents, processes and addresses, and summing rows of the
/// same key (stores read several granularities for one range). Fast hashing: keys come from
/// authenticated agents, and a day of a large fleet is millions of rows.
#[derive(Default)]
pub struct RangeBuilder {
    agents: Vec<AgentInfo>,
    agent_idx: rustc_hash::FxHashMap<String, u32>,
    processes: Vec<String>,
    process_idx: rustc_hash::FxHashMap<String, u32>,
    containers: Vec<Container>,
    container_idx: rustc_hash::FxHashMap<Container, u32>,
    ips: rustc_hash::FxHashMap<String, IpAddr>,
    rows: Vec<Obs>,
    /// Whether rows may repeat a key (several reads with rows, or a read of minute rows): then
    /// they are summed by key at the end; a single read of a roll-up table needs no such pass.
    overlapping: bool,
    /// Whether the current read has rows yet, and whether its keys are unique.
    read_has_rows: bool,
    read_unique: bool,
    reads_with_rows: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ObsKey {
    agent: u32,
    local_ip: IpAddr,
    peer_ip: IpAddr,
    server_port: u16,
    role: Role,
    process: u32,
    ident: Ident,
}

impl RangeBuilder {
    /// The index of an agent, creating a bare entry if the agent was not seen yet.
    pub fn agent(&mut self, machine_id: &str) -> u32 {
        if let Some(&i) = self.agent_idx.get(machine_id) {
            return i;
        }
        let i = self.agents.len() as u32;
        self.agents.push(AgentInfo {
            machine_id: machine_id.to_owned(),
            hostname: machine_id.to_owned(),
            ..AgentInfo::default()
        });
        self.agent_idx.insert(machine_id.to_owned(), i);
        i
    }

    /// An address from its text form, parsed once per distinct address.
    pub fn ip(&mut self, text: &str) -> Option<IpAddr> {
        if let Some(ip) = self.ips.get(text) {
            return Some(*ip);
        }
        let ip: IpAddr = text.parse().ok()?;
        self.ips.insert(text.to_owned(), ip);
        Some(ip)
    }

    pub fn has_agent(&self, machine_id: &str) -> bool {
        self.agent_idx.contains_key(machine_id)
    }

    pub fn agent_mut(&mut self, machine_id: &str) -> &mut AgentInfo {
        let i = self.agent(machine_id);
        &mut self.agents[i as usize]
    }

    pub fn process(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.process_idx.get(name) {
            return i;
        }
        let i = self.processes.len() as u32;
        self.processes.push(name.to_owned());
        self.process_idx.insert(name.to_owned(), i);
        i
    }

    /// The index of a container (issue 11), interned like process names.
    pub fn container(&mut self, c: &Container) -> u32 {
        if let Some(&i) = self.container_idx.get(c) {
            return i;
        }
        let i = self.containers.len() as u32;
        self.containers.push(c.clone());
        self.container_idx.insert(c.clone(), i);
        i
    }

    /// Starts a read of rows whose keys are unique within it (a roll-up table's period range)
    /// or not (minute rows).
    pub fn begin_read(&mut self, unique_keys: bool) {
        self.read_has_rows = false;
        self.read_unique = unique_keys;
    }

    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        agent: u32,
        local_ip: IpAddr,
        peer_ip: IpAddr,
        server_port: u16,
        role: Role,
        process: u32,
        c: &Counters,
    ) {
        self.add_with(
            agent,
            local_ip,
            peer_ip,
            server_port,
            role,
            process,
            Ident::default(),
            c,
        );
    }

    /// [`Self::add`] of a key with a container or a service address (issue 11).
    #[allow(clippy::too_many_arguments)]
    pub fn add_with(
        &mut self,
        agent: u32,
        local_ip: IpAddr,
        peer_ip: IpAddr,
        server_port: u16,
        role: Role,
        process: u32,
        ident: Ident,
        c: &Counters,
    ) {
        if !self.read_has_rows {
            self.read_has_rows = true;
            self.reads_with_rows += 1;
            if self.reads_with_rows > 1 || !self.read_unique {
                self.overlapping = true;
            }
        }
        self.rows.push(Obs {
            agent,
            local_ip,
            peer_ip,
            server_port,
            role,
            process,
            container: ident.container,
            service: ident.service,
            c: *c,
        });
    }

    pub fn finish(self, from: DateTime<Utc>, to: DateTime<Utc>) -> RangeData {
        let mut obs = if self.overlapping {
            let mut sums: rustc_hash::FxHashMap<ObsKey, Counters> =
                rustc_hash::FxHashMap::default();
            sums.reserve(self.rows.len());
            for o in self.rows {
                let key = ObsKey {
                    agent: o.agent,
                    local_ip: o.local_ip,
                    peer_ip: o.peer_ip,
                    server_port: o.server_port,
                    role: o.role,
                    process: o.process,
                    ident: Ident {
                        container: o.container,
                        service: o.service,
                    },
                };
                match sums.entry(key) {
                    std::collections::hash_map::Entry::Occupied(mut e) => e.get_mut().add(&o.c),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        e.insert(o.c);
                    }
                }
            }
            sums.into_iter()
                .map(|(k, c)| Obs {
                    agent: k.agent,
                    local_ip: k.local_ip,
                    peer_ip: k.peer_ip,
                    server_port: k.server_port,
                    role: k.role,
                    process: k.process,
                    container: k.ident.container,
                    service: k.ident.service,
                    c,
                })
                .collect()
        } else {
            self.rows
        };
        // Agents numbered by machine id: what is built from the data does not depend on the
        // order rows came out of the store.
        let mut order: Vec<u32> = (0..self.agents.len() as u32).collect();
        order.sort_by(|&a, &b| {
            self.agents[a as usize]
                .machine_id
                .cmp(&self.agents[b as usize].machine_id)
        });
        let mut renumber = vec![0u32; order.len()];
        for (new, &old) in order.iter().enumerate() {
            renumber[old as usize] = new as u32;
        }
        for o in &mut obs {
            o.agent = renumber[o.agent as usize];
        }
        let mut agents = self.agents;
        agents.sort_by(|a, b| a.machine_id.cmp(&b.machine_id));
        RangeData {
            from,
            to,
            agents,
            processes: self.processes,
            containers: self.containers,
            obs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carried_in_connections_follow_the_earliest_period() {
        let mut a = Counters {
            bytes_sent: 10,
            bytes_received: 1,
            conns_opened: 2,
            conns_carried: 5,
            first_window_ms: 2_000,
            first_seen_ms: 2_100,
            last_seen_ms: 2_900,
        };
        let earlier = Counters {
            bytes_sent: 7,
            bytes_received: 3,
            conns_opened: 1,
            conns_carried: 4,
            first_window_ms: 1_000,
            first_seen_ms: 1_500,
            last_seen_ms: 1_600,
        };
        a.add(&earlier);
        assert_eq!(
            a,
            Counters {
                bytes_sent: 17,
                bytes_received: 4,
                conns_opened: 3,
                conns_carried: 4,
                first_window_ms: 1_000,
                first_seen_ms: 1_500,
                last_seen_ms: 2_900,
            }
        );
        assert_eq!(a.connections(), 7);
    }

    #[test]
    fn sums_saturate_at_i64_max() {
        use trafficmap_model::bounds::COUNTER_MAX;
        let big = Counters {
            bytes_sent: COUNTER_MAX,
            bytes_received: u64::MAX,
            conns_opened: COUNTER_MAX - 1,
            conns_carried: COUNTER_MAX,
            ..Counters::default()
        };
        let mut a = big;
        a.add(&big);
        assert_eq!(a.bytes_sent, COUNTER_MAX);
        assert_eq!(a.bytes_received, COUNTER_MAX);
        assert_eq!(a.conns_opened, COUNTER_MAX);
        assert_eq!(a.connections(), COUNTER_MAX);
    }
}
