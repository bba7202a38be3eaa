//! From merged conversations to the D3 maps of the three views.
//!
//! [`prepare`] resolves every endpoint to an instance-level identity and prices every
//! conversation once; [`render`] groups them for a view: one node per host or address
//! (`instances`), per archdomain x env (`clusters`) or per security group (`security-groups`),
//! with links summed per (client node, server node). Node ids are stable and readable:
//! `i-...` (EC2), `host:<hostname>` (`host:<hostname>@<machine-id prefix>` when hostnames
//! repeat), `ip:<address>`, `cluster:<archdomain>|<env>`, `sg:<group-id>`, `sg:none`,
//! `external`; in the `workloads` view (issue 11) also `workload:<namespace>/<workload>` for a
//! Kubernetes workload and `container:<runtime>/<name>` for a container without Kubernetes
//! names, whose members are the conversation ends their containers' agents reported.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use rustc_hash::FxHashMap as HashMap;

use chrono::{DateTime, Utc};
use trafficmap_model::{
    bounds::sat_add,
    map::{
        ContainerRef, CostKind, Link, MAP_SCHEMA, MAX_LINK_SERVICE_ADDRESSES, MAX_NODE_CONTAINERS,
        MAX_NODE_HOSTS, Map, Node, NodeHealth, NodeKind, ObservedBy, Totals, View,
    },
    report::Container,
};

use crate::{
    cost::{CostRates, usd},
    enrich::{Directory, Identity},
    few::Few,
    merge::{Conversation, Endpoint, Merged, SERVICES_KEPT, merge},
    period::from_ms,
    range::RangeData,
    slots::{Keyed, Slots},
};

/// A conversation with its endpoints resolved and priced.
#[derive(Clone, Debug)]
pub struct Priced {
    pub conv: Conversation,
    /// Indexes into [`Prepared::identities`].
    pub client: usize,
    pub server: usize,
    pub cost_nanos: u64,
    pub cost_kind: CostKind,
}

/// Everything the views are made from.
#[derive(Clone, Debug)]
pub struct Prepared {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub identities: Vec<Identity>,
    pub processes: Vec<String>,
    /// Containers the conversations' sides name (issue 11).
    pub containers: Vec<Container>,
    pub conversations: Vec<Priced>,
    pub warnings: Vec<String>,
    pub loopback_bytes: u64,
}

/// Resolves and prices a range's conversations.
pub fn prepare(data: &RangeData, dir: &Directory<'_>, rates: &CostRates) -> Prepared {
    let Merged {
        conversations,
        warnings: merge_warnings,
        loopback_bytes,
    } = merge(data, dir);

    // Agents first: every agent that reported is on the map, with or without traffic.
    let mut identities: Vec<Identity> = data
        .agents
        .iter()
        .map(|a| dir.agent(a, String::new()))
        .collect();
    assign_agent_ids(data, &mut identities);
    let mut index: HashMap<Endpoint, usize> = (0..data.agents.len())
        .map(|i| (Endpoint::Agent(i as u32), i))
        .collect();
    let mut resolve = |e: Endpoint, identities: &mut Vec<Identity>| -> usize {
        *index.entry(e).or_insert_with(|| {
            identities.push(match e {
                Endpoint::Agent(_) => unreachable!("agents are indexed up front"),
                Endpoint::Instance(i) => dir.instance(i),
                Endpoint::Addr(ip) => dir.address(ip),
            });
            identities.len() - 1
        })
    };
    let mut priced = Vec::with_capacity(conversations.len());
    for conv in conversations {
        let client = resolve(conv.key.client, &mut identities);
        let server = resolve(conv.key.server, &mut identities);
        let (cost_nanos, cost_kind) = rates.conversation(
            &identities[client],
            &identities[server],
            conv.key.client_ip,
            conv.key.server_ip,
            conv.bytes_to_server(),
            conv.bytes_to_client(),
        );
        priced.push(Priced {
            conv,
            client,
            server,
            cost_nanos,
            cost_kind,
        });
    }
    let mut warnings = dir.sources.warnings.clone();
    warnings.extend(merge_warnings);
    Prepared {
        from: data.from,
        to: data.to,
        identities,
        processes: data.processes.clone(),
        containers: data.containers.clone(),
        conversations: priced,
        warnings,
        loopback_bytes,
    }
}

/// Node ids of agents: the EC2 instance id when it is theirs alone, else `host:<hostname>`,
/// disambiguated by a machine-id prefix when several agents share a hostname.
fn assign_agent_ids(data: &RangeData, identities: &mut [Identity]) {
    let mut by_instance: HashMap<&str, usize> = HashMap::default();
    let mut by_host: HashMap<&str, usize> = HashMap::default();
    for (a, id) in data.agents.iter().zip(identities.iter()) {
        if let Some(i) = &id.instance_id {
            *by_instance.entry(i.as_str()).or_default() += 1;
        }
        *by_host.entry(a.hostname.as_str()).or_default() += 1;
    }
    let ids: Vec<String> = data
        .agents
        .iter()
        .zip(identities.iter())
        .map(|(a, id)| match &id.instance_id {
            Some(i) if by_instance[i.as_str()] == 1 => i.clone(),
            _ if by_host[a.hostname.as_str()] == 1 => format!("host:{}", a.hostname),
            _ => format!(
                "host:{}@{}",
                a.hostname,
                a.machine_id.chars().take(8).collect::<String>()
            ),
        })
        .collect();
    for (id, new) in identities.iter_mut().zip(ids) {
        id.id = new;
    }
}

/// Addresses shown bare because nothing names them (candidates for reverse DNS).
pub fn unnamed_addresses(p: &Prepared) -> Vec<IpAddr> {
    p.identities
        .iter()
        .filter(|i| i.kind == Some(NodeKind::External) && i.addresses.len() == 1)
        .filter_map(|i| {
            let ip = *i.addresses.iter().next()?;
            (i.label == ip.to_string()).then_some(ip)
        })
        .collect()
}

/// A value shared by all members, or none.
#[derive(Clone, Debug, Default)]
enum Same<T> {
    #[default]
    Empty,
    One(T),
    Mixed,
}

impl<T: PartialEq + Clone> Same<T> {
    fn add(&mut self, v: Option<&T>) {
        let Some(v) = v else {
            *self = Same::Mixed;
            return;
        };
        *self = match std::mem::take(self) {
            Same::Empty => Same::One(v.clone()),
            Same::One(x) if x == *v => Same::One(x),
            _ => Same::Mixed,
        };
    }
    fn get(self) -> Option<T> {
        match self {
            Same::One(v) => Some(v),
            _ => None,
        }
    }
}

#[derive(Default)]
struct NodeAcc {
    label: String,
    kind: Option<NodeKind>,
    env: Same<String>,
    archdomain: Same<String>,
    addresses: BTreeSet<IpAddr>,
    instance_id: Option<String>,
    instance_type: Same<String>,
    availability_zone: Same<String>,
    region: Same<String>,
    lifecycle: Same<String>,
    price: Option<f64>,
    /// Instances view only: a group's price mixes sources.
    price_source: Option<&'static str>,
    security_groups: BTreeSet<String>,
    processes: BTreeSet<u32>,
    server_ports: BTreeSet<u16>,
    members: BTreeSet<usize>,
    labels: BTreeMap<String, String>,
    health: Option<NodeHealth>,
    /// Instances view only (issue 12 item 5): clusters and groups show none.
    host: Option<trafficmap_model::map::HostStats>,
    bytes_in: u64,
    bytes_out: u64,
    connections: u64,
    cost_nanos: u64,
    // Issue 11: containers (indexes into `Prepared::containers`) and, for workload nodes,
    // their namespace, kind and hosts (identity indexes).
    containers: BTreeSet<u32>,
    namespace: Same<String>,
    workload_kind: Same<String>,
    hosts: BTreeSet<usize>,
}

/// A link's accumulator with its ends (group numbers), as [`Slots`] keeps it.
struct LinkSlot {
    ends: (u32, u32),
    acc: LinkAcc,
}

impl Keyed for LinkSlot {
    type Key = (u32, u32);
    fn key(&self) -> &(u32, u32) {
        &self.ends
    }
}

#[derive(Default)]
struct LinkAcc {
    to_target: u64,
    to_source: u64,
    connections: u64,
    ports: Few<u16>,
    client_processes: Few<u32>,
    server_processes: Few<u32>,
    observed: Same<ObservedBy>,
    disagreement: u64,
    cost_nanos: u64,
    cost_kind: Same<CostKind>,
    first_ms: Option<i64>,
    last_ms: Option<i64>,
    /// Issue 11: the translated addresses the clients connected to.
    services: Few<(IpAddr, u16)>,
}

fn cluster_id(id: &Identity) -> String {
    if id.kind == Some(NodeKind::External) && id.archdomain.is_none() && id.env.is_none() {
        return "external".into();
    }
    format!(
        "cluster:{}|{}",
        id.archdomain.as_deref().unwrap_or_default(),
        id.env.as_deref().unwrap_or_default()
    )
}

pub(crate) fn cluster_label(arch: Option<&str>, env: Option<&str>) -> String {
    match (arch, env) {
        (Some(a), Some(e)) => format!("{a} ({e})"),
        (Some(a), None) => a.to_owned(),
        (None, Some(e)) => format!("untagged ({e})"),
        (None, None) => "untagged".to_owned(),
    }
}

/// The nodes of `view` an instance-level identity belongs to.
fn groups(view: View, id: &Identity) -> Vec<String> {
    match view {
        // Workloads: identities stand for the hosts' processes outside containers, and for the
        // peers without agents; containers get their own groups ([`Groups::number`]).
        View::Instances | View::Workloads => vec![id.id.clone()],
        View::Clusters => vec![cluster_id(id)],
        View::SecurityGroups => {
            if !id.security_groups.is_empty() {
                id.security_groups
                    .iter()
                    .map(|g| format!("sg:{g}"))
                    .collect()
            } else if id.kind == Some(NodeKind::External) {
                vec!["external".into()]
            } else {
                vec!["sg:none".into()]
            }
        }
    }
}

/// Builds the map of one view, in steps: number the view's nodes ([`Groups`]), gather their
/// members, sum the links, add the links to their nodes, then name and sort both. Groups are
/// numbered while building, and named and sorted once at the end: a day of a large fleet is a
/// million conversations.
pub fn render(p: &Prepared, view: View, dir: &Directory<'_>, generated_at: DateTime<Utc>) -> Map {
    let groups = Groups::number(p, view);
    let mut nodes = member_nodes(p, view, &groups, dir);
    let links = sum_links(p, view, &groups, &mut nodes);
    add_links_to_nodes(&links, &mut nodes);
    // Links whose service addresses were cut to the list's cap (their sets keep one more).
    let cut_services = links
        .iter()
        .filter(|l| l.acc.services.len() > MAX_LINK_SERVICE_ADDRESSES)
        .count();
    let (order, rank) = node_order(&groups.names, &nodes);
    let nodes = output_nodes(p, &groups.names, nodes, &order);
    let (links, totals) = output_links(p, &groups.names, links, &rank, nodes.len());
    let mut warnings = p.warnings.clone();
    if groups.shared_ends > 0 {
        warnings.push(format!(
            "{} conversation end(s) came from containers of several workloads on one address (host network); each counted on the first of its workloads by container id",
            groups.shared_ends
        ));
    }
    if cut_services > 0 {
        warnings.push(format!(
            "{cut_services} link(s) went through more than {MAX_LINK_SERVICE_ADDRESSES} service addresses; the smallest {MAX_LINK_SERVICE_ADDRESSES} are listed"
        ));
    }
    Map {
        schema: MAP_SCHEMA.to_owned(),
        view,
        from: p.from,
        to: p.to,
        generated_at,
        nodes,
        links,
        totals,
        warnings,
    }
}

/// The nodes of a view, numbered in the order identities first name them.
struct Groups {
    /// Node id of each group number.
    names: Vec<String>,
    /// The groups each identity (by index into [`Prepared::identities`]) belongs to.
    of_identity: Vec<Vec<u32>>,
    /// Workloads view (issue 11): the (client, server) group of each conversation, by index
    /// into [`Prepared::conversations`]: a side with containers stands for their workload,
    /// else the end is its identity's group.
    of_conversation: Vec<[u32; 2]>,
    /// The group of each container (workloads view), by index into [`Prepared::containers`].
    of_container: Vec<u32>,
    /// Workloads view: the entry standing for each container's id, by index into
    /// [`Prepared::containers`] (see [`canonical_containers`]).
    canonical: Vec<u32>,
    /// Conversation ends whose containers (distinct ids) belong to several workloads.
    shared_ends: u64,
}

/// For each container entry, the index of the entry that stands for its id: the stores' keys
/// include the names, so one id can come back unnamed (windows before the Kubernetes source
/// knew the pod, or after it was deleted) and named. The most named entry (most `Some` fields;
/// ties to the greatest entry, for determinism) gives the id one workload, so its bytes do not
/// split between a `container:` node and its workload.
fn canonical_containers(containers: &[Container]) -> Vec<u32> {
    fn named(c: &Container) -> usize {
        [
            c.name.is_some(),
            c.pod.is_some(),
            c.namespace.is_some(),
            c.workload_kind.is_some(),
            c.workload.is_some(),
        ]
        .into_iter()
        .filter(|&b| b)
        .count()
    }
    let mut best: HashMap<&str, u32> = HashMap::default();
    for (i, c) in containers.iter().enumerate() {
        best.entry(c.id.as_str())
            .and_modify(|b| {
                let old = &containers[*b as usize];
                if (named(c), c) > (named(old), old) {
                    *b = i as u32;
                }
            })
            .or_insert(i as u32);
    }
    containers.iter().map(|c| best[c.id.as_str()]).collect()
}

/// The workloads-view group of a container: its Kubernetes workload (a pod nobody owns stands
/// for itself), else the container by runtime and name (or id).
fn workload_group(c: &Container) -> String {
    match &c.namespace {
        Some(ns) => {
            let w = c
                .workload
                .as_deref()
                .or(c.pod.as_deref())
                .or(c.name.as_deref())
                .unwrap_or(c.id.as_str());
            format!("workload:{ns}/{w}")
        }
        None => format!(
            "container:{}/{}",
            c.runtime.as_str(),
            c.name.as_deref().unwrap_or(c.id.as_str())
        ),
    }
}

fn workload_label(c: &Container) -> String {
    match &c.namespace {
        Some(ns) => format!(
            "{ns}/{}",
            c.workload
                .as_deref()
                .or(c.pod.as_deref())
                .or(c.name.as_deref())
                .unwrap_or(c.id.as_str())
        ),
        None => c
            .name
            .clone()
            .unwrap_or_else(|| c.id.chars().take(12).collect()),
    }
}

impl Groups {
    fn number(p: &Prepared, view: View) -> Groups {
        let mut names: Vec<String> = Vec::new();
        let mut index: HashMap<String, u32> = HashMap::default();
        let of_identity = p
            .identities
            .iter()
            .map(|i| {
                groups(view, i)
                    .into_iter()
                    .map(|g| {
                        *index.entry(g).or_insert_with_key(|g| {
                            names.push(g.clone());
                            (names.len() - 1) as u32
                        })
                    })
                    .collect()
            })
            .collect();
        let mut g = Groups {
            names,
            of_identity,
            of_conversation: Vec::new(),
            of_container: Vec::new(),
            canonical: Vec::new(),
            shared_ends: 0,
        };
        if view == View::Workloads {
            g.canonical = canonical_containers(&p.containers);
            g.of_container = g
                .canonical
                .iter()
                .map(|&k| {
                    let c = &p.containers[k as usize];
                    *index.entry(workload_group(c)).or_insert_with_key(|n| {
                        g.names.push(n.clone());
                        (g.names.len() - 1) as u32
                    })
                })
                .collect();
            let mut shared = 0u64;
            g.of_conversation = p
                .conversations
                .iter()
                .map(|c| {
                    let mut end = |side: &Option<crate::merge::Side>, identity: usize| -> u32 {
                        // The workload of the container with the smallest id: container
                        // indexes depend on the order the store returned rows in.
                        let ids = || side.iter().flat_map(|s| s.containers.iter());
                        let Some(first) =
                            ids().min_by_key(|&i| p.containers[i as usize].id.as_str())
                        else {
                            return g.of_identity[identity][0];
                        };
                        let group = g.of_container[first as usize];
                        if ids().any(|i| g.of_container[i as usize] != group) {
                            shared += 1;
                        }
                        group
                    };
                    [
                        end(&c.conv.client_side, c.client),
                        end(&c.conv.server_side, c.server),
                    ]
                })
                .collect();
            g.shared_ends = shared;
        }
        g
    }

    /// The groups of a conversation's client (`end` 0) or server (1).
    fn of_end(&self, p: &Prepared, conv: usize, end: usize) -> &[u32] {
        match self.of_conversation.get(conv) {
            Some(ends) => std::slice::from_ref(&ends[end]),
            None => {
                let c = &p.conversations[conv];
                &self.of_identity[if end == 0 { c.client } else { c.server }]
            }
        }
    }
}

/// A node's accumulator by group number; `None` for a group without members.
type NodeAccs = Vec<Option<NodeAcc>>;

/// The accumulator of group `g`, which has members by the time links are summed.
fn node(nodes: &mut [Option<NodeAcc>], g: u32) -> &mut NodeAcc {
    nodes[g as usize].as_mut().expect("member node")
}

/// The nodes with their members: agents always, other identities only if some conversation
/// uses them.
fn member_nodes(p: &Prepared, view: View, groups: &Groups, dir: &Directory<'_>) -> NodeAccs {
    let mut nodes: NodeAccs = (0..groups.names.len()).map(|_| None).collect();
    let mut used: Vec<bool> = p
        .identities
        .iter()
        .map(|i| i.kind == Some(NodeKind::Host))
        .collect();
    for c in &p.conversations {
        used[c.client] = true;
        used[c.server] = true;
    }
    for (i, id) in p.identities.iter().enumerate() {
        if !used[i] {
            continue;
        }
        for &g in &groups.of_identity[i] {
            let n = nodes[g as usize].get_or_insert_default();
            add_member(n, view, &groups.names[g as usize], i, id, dir);
        }
    }
    // Issue 11: containers on the nodes of their ends; in the workloads view, the workload
    // nodes' members (their containers, hosts and addresses).
    for (ci, c) in p.conversations.iter().enumerate() {
        for (end, side, identity, ip) in [
            (0, &c.conv.client_side, c.client, c.conv.key.client_ip),
            (1, &c.conv.server_side, c.server, c.conv.key.server_ip),
        ] {
            let Some(side) = side else { continue };
            if side.containers.is_empty() {
                continue;
            }
            for &g in groups.of_end(p, ci, end) {
                let n = nodes[g as usize].get_or_insert_default();
                match view {
                    View::Instances => n.containers.extend(side.containers.iter()),
                    // Only the containers of this workload (a shared end has others).
                    View::Workloads if groups.of_identity[identity][0] != g => {
                        // By the entries standing for their ids (one per id).
                        let mut mine: Vec<u32> = side
                            .containers
                            .iter()
                            .map(|c| groups.canonical[c as usize])
                            .filter(|&c| groups.of_container[c as usize] == g)
                            .collect();
                        mine.sort_unstable();
                        mine.dedup();
                        add_workload_member(n, p, &mine, identity, ip);
                        n.containers.extend(mine);
                    }
                    _ => {}
                }
            }
        }
    }
    nodes
}

/// Adds a conversation end to a workload node: its containers' names, its host and address.
fn add_workload_member(
    n: &mut NodeAcc,
    p: &Prepared,
    containers: &[u32],
    identity: usize,
    ip: IpAddr,
) {
    let id = &p.identities[identity];
    if n.kind.is_none() {
        n.kind = Some(NodeKind::Workload);
        if let Some(&first) = containers.first() {
            n.label = workload_label(&p.containers[first as usize]);
        }
    }
    for &c in containers {
        let c = &p.containers[c as usize];
        n.namespace.add(c.namespace.as_ref());
        n.workload_kind.add(c.workload_kind.as_ref());
    }
    n.hosts.insert(identity);
    n.addresses.insert(ip);
    n.env.add(id.env.as_ref());
    n.archdomain.add(id.archdomain.as_ref());
    n.availability_zone.add(id.availability_zone.as_ref());
    n.region.add(id.region.as_ref());
}

/// Sums the conversations into links per (client group, server group), and notes the
/// processes and server ports of their nodes on the way.
fn sum_links(
    p: &Prepared,
    view: View,
    groups: &Groups,
    nodes: &mut [Option<NodeAcc>],
) -> Slots<LinkSlot> {
    // Instances have about one link per conversation; groups far fewer.
    let cap = if view == View::Instances {
        p.conversations.len()
    } else {
        p.conversations.len().min(1 << 16)
    };
    let mut links: Slots<LinkSlot> = Slots::with_capacity(cap);
    for (ci, c) in p.conversations.iter().enumerate() {
        let conv = &c.conv;
        let (to_server, to_client) = (conv.bytes_to_server(), conv.bytes_to_client());
        let observed = conv.observed_by();
        let (first, last) = (conv.first_seen_ms(), conv.last_seen_ms());
        for &gs in groups.of_end(p, ci, 0) {
            if let Some(side) = &conv.client_side {
                node(nodes, gs).processes.extend(side.processes.iter());
            }
            for &gt in groups.of_end(p, ci, 1) {
                let l = &mut links
                    .get_or_insert_with((gs, gt), |ends| LinkSlot {
                        ends,
                        acc: LinkAcc::default(),
                    })
                    .acc;
                l.to_target = sat_add(l.to_target, to_server);
                l.to_source = sat_add(l.to_source, to_client);
                l.connections = sat_add(l.connections, conv.connections());
                l.ports.insert(conv.key.port);
                if let Some(s) = &conv.client_side {
                    l.client_processes.extend(&s.processes);
                    l.services.extend_capped(&s.services, SERVICES_KEPT);
                }
                if let Some(s) = &conv.server_side {
                    l.server_processes.extend(&s.processes);
                }
                l.observed.add(Some(&observed));
                l.disagreement = sat_add(l.disagreement, conv.disagreement());
                l.cost_nanos = sat_add(l.cost_nanos, c.cost_nanos);
                l.cost_kind.add(Some(&c.cost_kind));
                l.first_ms = Some(l.first_ms.map_or(first, |x| x.min(first)));
                l.last_ms = Some(l.last_ms.map_or(last, |x| x.max(last)));
            }
        }
        for &gt in groups.of_end(p, ci, 1) {
            let n = node(nodes, gt);
            n.server_ports.insert(conv.key.port);
            if let Some(side) = &conv.server_side {
                n.processes.extend(side.processes.iter());
            }
        }
    }
    links
}

/// Adds every link's bytes, connections and cost to its two nodes; a link within one node adds
/// its connections and cost once, and no bytes in or out.
fn add_links_to_nodes(links: &Slots<LinkSlot>, nodes: &mut [Option<NodeAcc>]) {
    for LinkSlot {
        ends: (s, t),
        acc: l,
    } in links.iter()
    {
        let (s, t) = (*s, *t);
        let (conns, cost) = (l.connections, l.cost_nanos);
        if s == t {
            let n = node(nodes, s);
            n.connections = sat_add(n.connections, conns);
            n.cost_nanos = sat_add(n.cost_nanos, cost);
            continue;
        }
        let src = node(nodes, s);
        src.bytes_out = sat_add(src.bytes_out, l.to_target);
        src.bytes_in = sat_add(src.bytes_in, l.to_source);
        src.connections = sat_add(src.connections, conns);
        src.cost_nanos = sat_add(src.cost_nanos, cost);
        let dst = node(nodes, t);
        dst.bytes_in = sat_add(dst.bytes_in, l.to_target);
        dst.bytes_out = sat_add(dst.bytes_out, l.to_source);
        dst.connections = sat_add(dst.connections, conns);
        dst.cost_nanos = sat_add(dst.cost_nanos, cost);
    }
}

/// Output order: the groups with members, by node id; and each group's rank in it.
fn node_order(names: &[String], nodes: &[Option<NodeAcc>]) -> (Vec<u32>, Vec<u32>) {
    let mut order: Vec<u32> = (0..names.len() as u32)
        .filter(|g| nodes[*g as usize].is_some())
        .collect();
    order.sort_unstable_by(|a, b| names[*a as usize].cmp(&names[*b as usize]));
    let mut rank = vec![u32::MAX; names.len()];
    for (r, g) in order.iter().enumerate() {
        rank[*g as usize] = r as u32;
    }
    (order, rank)
}

/// Process names of a set of process indexes, sorted, each once.
fn process_names(p: &Prepared, set: impl Iterator<Item = u32>) -> Vec<String> {
    let mut v: Vec<String> = set.map(|i| p.processes[i as usize].clone()).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The map's nodes, in output order.
fn output_nodes(p: &Prepared, names: &[String], mut nodes: NodeAccs, order: &[u32]) -> Vec<Node> {
    order
        .iter()
        .map(|&g| {
            let n = nodes[g as usize].take().expect("ordered nodes exist");
            Node {
                id: names[g as usize].clone(),
                label: n.label,
                kind: n.kind.unwrap_or(NodeKind::External),
                env: n.env.get(),
                archdomain: n.archdomain.get(),
                addresses: n.addresses.iter().map(ToString::to_string).collect(),
                instance_id: n.instance_id,
                instance_type: n.instance_type.get(),
                availability_zone: n.availability_zone.get(),
                region: n.region.get(),
                lifecycle: n.lifecycle.get(),
                price_per_hour: n.price.map(|v| (v * 1e6).round() / 1e6),
                price_source: n.price_source.map(str::to_owned),
                security_groups: n.security_groups.into_iter().collect(),
                processes: process_names(p, n.processes.iter().copied()),
                server_ports: n.server_ports.into_iter().collect(),
                bytes_in: n.bytes_in,
                bytes_out: n.bytes_out,
                connections: n.connections,
                cost_usd: usd(n.cost_nanos),
                labels: n.labels,
                health: n.health,
                host: n.host,
                members: if n.kind == Some(NodeKind::Workload) {
                    workload_members(p, &n.containers)
                } else {
                    n.members.len() as u32
                },
                namespace: n.namespace.get(),
                workload_kind: n.workload_kind.get(),
                containers: container_refs(p, &n.containers),
                hosts: n
                    .hosts
                    .iter()
                    .map(|&i| p.identities[i].id.clone())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .take(MAX_NODE_HOSTS)
                    .collect(),
            }
        })
        .collect()
}

/// The map's links, ordered by the ranks of their (source, target) nodes, and the map's totals.
fn output_links(
    p: &Prepared,
    names: &[String],
    links: Slots<LinkSlot>,
    rank: &[u32],
    node_count: usize,
) -> (Vec<Link>, Totals) {
    let mut links = links.into_vec();
    links.sort_unstable_by_key(|l| (rank[l.ends.0 as usize], rank[l.ends.1 as usize]));
    let mut totals = Totals {
        nodes: node_count as u64,
        ..Totals::default()
    };
    let mut total_cost = 0u64;
    let out: Vec<Link> = links
        .into_iter()
        .map(
            |LinkSlot {
                 ends: (s, t),
                 acc: l,
             }| {
                totals.links += 1;
                totals.bytes = sat_add(totals.bytes, sat_add(l.to_target, l.to_source));
                totals.connections = sat_add(totals.connections, l.connections);
                totals.disagreement_bytes = sat_add(totals.disagreement_bytes, l.disagreement);
                total_cost = sat_add(total_cost, l.cost_nanos);
                Link {
                    source: names[s as usize].clone(),
                    target: names[t as usize].clone(),
                    bytes_to_target: l.to_target,
                    bytes_to_source: l.to_source,
                    connections: l.connections,
                    server_ports: l.ports.iter().collect(),
                    // Named by `Built::render` from the collector's service table.
                    services: Vec::new(),
                    client_processes: process_names(p, l.client_processes.iter()),
                    server_processes: process_names(p, l.server_processes.iter()),
                    observed_by: match l.observed {
                        Same::One(o) => o,
                        _ => ObservedBy::Mixed,
                    },
                    disagreement_bytes: l.disagreement,
                    cost_usd: usd(l.cost_nanos),
                    cost_kind: l.cost_kind.get().unwrap_or(CostKind::Unknown),
                    first_seen: l.first_ms.map(from_ms),
                    last_seen: l.last_ms.map(from_ms),
                    // Sorted by address then port (`Few` keeps them so), capped.
                    service_addresses: l
                        .services
                        .iter()
                        .take(MAX_LINK_SERVICE_ADDRESSES)
                        .map(|(ip, port)| std::net::SocketAddr::new(ip, port).to_string())
                        .collect(),
                }
            },
        )
        .collect();
    totals.cost_usd = usd(total_cost);
    (out, totals)
}

/// A workload node's members: its pods (a container outside any pod counts as one).
fn workload_members(p: &Prepared, set: &BTreeSet<u32>) -> u32 {
    let pods: BTreeSet<(Option<&str>, &str)> = set
        .iter()
        .map(|&i| {
            let c = &p.containers[i as usize];
            match &c.pod {
                Some(pod) => (c.namespace.as_deref(), pod.as_str()),
                None => (None, c.id.as_str()),
            }
        })
        .collect();
    u32::try_from(pods.len()).unwrap_or(u32::MAX)
}

/// A node's containers, one entry per id (the most named of its entries: names may have come
/// later than the id), sorted by id, at most [`MAX_NODE_CONTAINERS`].
fn container_refs(p: &Prepared, set: &BTreeSet<u32>) -> Vec<ContainerRef> {
    let mut all: Vec<&Container> = set.iter().map(|&i| &p.containers[i as usize]).collect();
    all.sort();
    let mut out: Vec<ContainerRef> = Vec::new();
    for c in all {
        let r = ContainerRef {
            id: c.id.clone(),
            name: c.name.clone(),
            pod: c.pod.clone(),
            namespace: c.namespace.clone(),
            workload: c.workload.clone(),
        };
        // Sorted: entries of one id are adjacent, the later the more named (`None` first).
        let full = out.len() == MAX_NODE_CONTAINERS;
        match out.last_mut() {
            Some(last) if last.id == r.id => *last = r,
            _ if full => break,
            _ => out.push(r),
        }
    }
    out
}

fn add_member(
    n: &mut NodeAcc,
    view: View,
    group: &str,
    i: usize,
    id: &Identity,
    dir: &Directory<'_>,
) {
    let first = n.members.is_empty();
    n.members.insert(i);
    n.env.add(id.env.as_ref());
    n.archdomain.add(id.archdomain.as_ref());
    n.addresses.extend(id.addresses.iter().copied());
    n.instance_type.add(id.instance_type.as_ref());
    n.availability_zone.add(id.availability_zone.as_ref());
    n.region.add(id.region.as_ref());
    n.lifecycle.add(id.lifecycle.as_ref());
    if let Some(p) = id.price_per_hour {
        n.price = Some(n.price.unwrap_or(0.0) + p);
    }
    n.security_groups.extend(id.security_groups.iter().cloned());
    if let Some(h) = &id.health {
        let acc = n.health.get_or_insert_default();
        acc.reports = sat_add(acc.reports, h.reports);
        acc.probe_drops = sat_add(acc.probe_drops, h.probe_drops);
        acc.spool_dropped = sat_add(acc.spool_dropped, h.spool_dropped);
    }
    match view {
        View::Instances | View::Workloads => {
            n.label = id.label.clone();
            n.kind = id.kind;
            n.instance_id = id.instance_id.clone();
            n.labels = id.labels.clone();
            n.price_source = id.price_source;
            // Host health on the instances view only (issue 12 item 5).
            if view == View::Instances
                && let Some(h) = id.host
            {
                crate::range::fold_host(&mut n.host, h);
            }
        }
        View::Clusters | View::SecurityGroups if group == "external" => {
            n.label = "external".into();
            n.kind = Some(NodeKind::External);
        }
        View::Clusters => {
            if first {
                n.kind = Some(NodeKind::Cluster);
                n.label = cluster_label(id.archdomain.as_deref(), id.env.as_deref());
            }
        }
        View::SecurityGroups => {
            if first {
                n.kind = Some(NodeKind::SecurityGroup);
                n.label = match group.strip_prefix("sg:") {
                    Some("none") | None => "no security group".into(),
                    Some(g) => dir.group_name(g),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use trafficmap_model::report::{ContainerRuntime, Role};

    use super::*;
    use crate::{
        cost::CostRates,
        enrich::{Rules, Sources},
        range::{Counters, Ident, RangeBuilder},
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

    fn k8s(n: u8, ns: &str, kind: &str, workload: &str, pod: &str) -> Container {
        Container {
            id: format!("{n:02x}").repeat(32),
            runtime: ContainerRuntime::Containerd,
            name: Some("main".into()),
            pod: Some(pod.into()),
            namespace: Some(ns.into()),
            workload_kind: Some(kind.into()),
            workload: Some(workload.into()),
        }
    }

    type RowSpec<'a> = (
        &'a str,
        &'a str,
        &'a str,
        u16,
        Role,
        &'a str,
        Option<Container>,
        Option<(&'a str, u16)>,
        Counters,
    );

    fn build(view: View, rows: &[RowSpec<'_>]) -> Map {
        let mut b = RangeBuilder::default();
        for (m, addrs) in [
            ("node-a", &["10.0.0.1", "10.244.1.5", "10.244.1.6"][..]),
            ("node-b", &["10.0.0.2", "10.244.2.7"][..]),
        ] {
            let a = b.agent_mut(m);
            a.addresses = addrs.iter().map(|s| ip(s)).collect();
            a.hostname = m.into();
            a.reports = 1;
        }
        for (m, l, p, port, role, process, container, svc, counters) in rows {
            let a = b.agent(m);
            let pr = b.process(process);
            let container = container.as_ref().map(|c| b.container(c));
            let service = svc.map(|(i, p)| (ip(i), p));
            b.add_with(
                a,
                ip(l),
                ip(p),
                *port,
                *role,
                pr,
                Ident { container, service },
                counters,
            );
        }
        let data = b.finish(chrono::DateTime::UNIX_EPOCH, chrono::DateTime::UNIX_EPOCH);
        let sources = Sources::default();
        let rules = Rules::default();
        let dir = Directory {
            sources: &sources,
            rules: &rules,
        };
        let p = prepare(&data, &dir, &CostRates::default());
        let m = render(&p, view, &dir, chrono::DateTime::UNIX_EPOCH);
        m.validate().unwrap();
        m
    }

    fn node<'a>(m: &'a Map, id: &str) -> &'a Node {
        m.nodes
            .iter()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    fn link<'a>(m: &'a Map, s: &str, t: &str) -> &'a Link {
        m.links
            .iter()
            .find(|l| l.source == s && l.target == t)
            .unwrap_or_else(|| panic!("no link {s} -> {t}"))
    }

    /// Two api pods (on two nodes) reach postgres through its Service; the client's agent
    /// reported the real server (the NAT undone) and kept the Service address, so each client
    /// report merges with the server's into one conversation, and the workloads view sums them
    /// into one link api -> postgres holding the Service address. A process outside containers
    /// stays on its host node.
    #[test]
    fn workloads_merge_a_service_client_with_its_server_and_sum_exactly() {
        let api1 = k8s(1, "shop", "Deployment", "api", "api-7d4-x1");
        let api2 = k8s(2, "shop", "Deployment", "api", "api-7d4-x2");
        let pg = k8s(3, "data", "StatefulSet", "postgres", "postgres-0");
        let svc = Some(("10.96.0.40", 5432));
        let rows: Vec<RowSpec<'_>> = vec![
            // api-1 on node-a -> postgres-0 on node-b, via the Service.
            (
                "node-a",
                "10.244.1.5",
                "10.244.2.7",
                5432,
                Role::Client,
                "api",
                Some(api1.clone()),
                svc,
                c(1_000, 7_000, 2),
            ),
            (
                "node-b",
                "10.244.2.7",
                "10.244.1.5",
                5432,
                Role::Server,
                "postgres",
                Some(pg.clone()),
                None,
                c(7_000, 990, 2),
            ),
            // api-2 on node-a -> postgres-0 via the Service.
            (
                "node-a",
                "10.244.1.6",
                "10.244.2.7",
                5432,
                Role::Client,
                "api",
                Some(api2.clone()),
                svc,
                c(300, 400, 1),
            ),
            (
                "node-b",
                "10.244.2.7",
                "10.244.1.6",
                5432,
                Role::Server,
                "postgres",
                Some(pg.clone()),
                None,
                c(400, 300, 1),
            ),
            // A host process on node-a scrapes node-b's exporter (no containers).
            (
                "node-a",
                "10.0.0.1",
                "10.0.0.2",
                9100,
                Role::Client,
                "prometheus",
                None,
                None,
                c(50, 60, 1),
            ),
        ];
        let m = build(View::Workloads, &rows);
        let ids: Vec<&str> = m.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "host:node-a",
                "host:node-b",
                "workload:data/postgres",
                "workload:shop/api"
            ]
        );
        assert_eq!(m.links.len(), 2);
        let l = link(&m, "workload:shop/api", "workload:data/postgres");
        // max(client sent, server received) per conversation: 1000 + 300; back 7000 + 400.
        assert_eq!(
            (
                l.bytes_to_target,
                l.bytes_to_source,
                l.connections,
                l.disagreement_bytes,
                l.observed_by
            ),
            (1_300, 7_400, 3, 10, ObservedBy::Both)
        );
        assert_eq!(l.service_addresses, ["10.96.0.40:5432"]);
        assert_eq!(l.server_ports, [5432]);
        assert_eq!(l.client_processes, ["api"]);
        assert_eq!(l.server_processes, ["postgres"]);
        let host = link(&m, "host:node-a", "host:node-b");
        assert_eq!((host.bytes_to_target, host.bytes_to_source), (50, 60));
        assert!(host.service_addresses.is_empty());
        let api = node(&m, "workload:shop/api");
        assert_eq!(api.kind, NodeKind::Workload);
        assert_eq!(api.label, "shop/api");
        assert_eq!(api.namespace.as_deref(), Some("shop"));
        assert_eq!(api.workload_kind.as_deref(), Some("Deployment"));
        assert_eq!(api.members, 2);
        assert_eq!(api.hosts, ["host:node-a"]);
        assert_eq!(api.addresses, ["10.244.1.5", "10.244.1.6"]);
        assert_eq!(
            api.containers
                .iter()
                .map(|c| (c.id.as_str(), c.pod.as_deref()))
                .collect::<Vec<_>>(),
            [
                (api1.id.as_str(), Some("api-7d4-x1")),
                (api2.id.as_str(), Some("api-7d4-x2"))
            ]
        );
        assert_eq!((api.bytes_out, api.bytes_in), (1_300, 7_400));
        let pgn = node(&m, "workload:data/postgres");
        assert_eq!((pgn.bytes_in, pgn.bytes_out), (1_300, 7_400));
        assert_eq!(pgn.members, 1);
        assert_eq!(pgn.hosts, ["host:node-b"]);
        assert_eq!(pgn.server_ports, [5432]);
        assert_eq!(pgn.workload_kind.as_deref(), Some("StatefulSet"));
        // The map's totals are the links' exact sums.
        assert_eq!(m.totals.bytes, 1_300 + 7_400 + 50 + 60);
        assert!(m.warnings.is_empty(), "{:?}", m.warnings);

        // The instances view: the same conversations, on the hosts; each host node lists its
        // containers, and the link keeps the Service address.
        let m = build(View::Instances, &rows);
        let a = node(&m, "host:node-a");
        assert_eq!(
            a.containers
                .iter()
                .map(|c| c.id.as_str())
                .collect::<Vec<_>>(),
            [api1.id.as_str(), api2.id.as_str()]
        );
        assert_eq!(
            node(&m, "host:node-b")
                .containers
                .iter()
                .map(|c| c.workload.as_deref())
                .collect::<Vec<_>>(),
            [Some("postgres")]
        );
        let l = link(&m, "host:node-a", "host:node-b");
        assert_eq!((l.bytes_to_target, l.bytes_to_source), (1_350, 7_460));
        assert_eq!(l.service_addresses, ["10.96.0.40:5432"]);
        assert!(a.namespace.is_none() && a.hosts.is_empty());
    }

    /// A container without Kubernetes names is a node of its own (runtime and name); a node's
    /// container list and a link's service addresses are capped, the counts exact.
    #[test]
    fn bare_containers_and_caps() {
        let many = MAX_NODE_CONTAINERS + 5;
        let mut rows: Vec<RowSpec<'_>> = Vec::new();
        let ports: Vec<u16> = (0..many as u16).collect();
        for (i, port) in ports.iter().enumerate() {
            rows.push((
                "node-a",
                "10.244.1.5",
                "10.244.2.7",
                80,
                Role::Client,
                "curl",
                Some(k8s(
                    (i % 250) as u8,
                    "load",
                    "Job",
                    "bench",
                    &format!("bench-{i}"),
                ))
                .map(|mut c| {
                    // Ids beyond 250 differ in their last characters.
                    c.id = format!("{:064x}", i + 1);
                    c
                }),
                Some(("10.96.0.1", 1000 + *port)),
                c(1, 2, 1),
            ));
        }
        rows.push((
            "node-b",
            "10.244.2.7",
            "10.244.1.5",
            80,
            Role::Server,
            "nginx",
            Some(Container {
                id: "ab".repeat(32),
                runtime: ContainerRuntime::Podman,
                name: Some("web".into()),
                pod: None,
                namespace: None,
                workload_kind: None,
                workload: None,
            }),
            None,
            c(2 * many as u64, many as u64, many as u64),
        ));
        let m = build(View::Workloads, &rows);
        let bench = node(&m, "workload:load/bench");
        assert_eq!(bench.members, many as u32);
        assert_eq!(bench.containers.len(), MAX_NODE_CONTAINERS);
        assert_eq!(bench.containers[0].id, format!("{:064x}", 1));
        let web = node(&m, "container:podman/web");
        assert_eq!(
            (
                web.kind,
                web.label.as_str(),
                web.members,
                web.namespace.as_deref()
            ),
            (NodeKind::Workload, "web", 1, None)
        );
        let l = link(&m, "workload:load/bench", "container:podman/web");
        assert_eq!(
            (l.bytes_to_target, l.bytes_to_source, l.connections),
            (many as u64, 2 * many as u64, many as u64)
        );
        assert_eq!(l.service_addresses.len(), MAX_LINK_SERVICE_ADDRESSES);
        assert_eq!(l.service_addresses[0], "10.96.0.1:1000");
        assert_eq!(l.service_addresses[1], "10.96.0.1:1001");
    }

    /// Containers of two workloads sharing one address and peer (host network): the end is
    /// counted once, on the first workload by container id, and the map says so.
    #[test]
    fn shared_address_ends_are_counted_once_with_a_warning() {
        let a = k8s(1, "ops", "DaemonSet", "agent", "agent-x");
        let b = k8s(2, "ops", "DaemonSet", "exporter", "exporter-y");
        let rows: Vec<RowSpec<'_>> = vec![
            (
                "node-a",
                "10.0.0.1",
                "10.0.0.2",
                443,
                Role::Client,
                "agent",
                Some(a),
                None,
                c(10, 20, 1),
            ),
            (
                "node-a",
                "10.0.0.1",
                "10.0.0.2",
                443,
                Role::Client,
                "exporter",
                Some(b),
                None,
                c(30, 40, 1),
            ),
        ];
        let m = build(View::Workloads, &rows);
        let l = link(&m, "workload:ops/agent", "host:node-b");
        assert_eq!((l.bytes_to_target, l.bytes_to_source), (40, 60));
        assert_eq!(m.links.len(), 1);
        assert_eq!(m.warnings.len(), 1);
        assert!(
            m.warnings[0].starts_with("1 conversation end(s)"),
            "{:?}",
            m.warnings
        );
    }
    /// One container id in the store twice: unnamed (a window before the Kubernetes source
    /// knew its pod) and named. Both entries stand for the workload: all its bytes land on
    /// the workload node, and it is not an end shared by several workloads.
    #[test]
    fn an_unnamed_entry_of_a_named_container_joins_its_workload() {
        let named = k8s(7, "shop", "Deployment", "cart", "cart-1");
        let bare = Container {
            name: None,
            pod: None,
            namespace: None,
            workload_kind: None,
            workload: None,
            ..named.clone()
        };
        let rows: Vec<RowSpec<'_>> = vec![
            // The unnamed entry first: it gets the smaller container index.
            (
                "node-a",
                "10.244.1.5",
                "10.244.2.7",
                80,
                Role::Client,
                "cart",
                Some(bare),
                None,
                c(10, 20, 1),
            ),
            (
                "node-a",
                "10.244.1.5",
                "10.244.2.7",
                80,
                Role::Client,
                "cart",
                Some(named),
                None,
                c(30, 40, 2),
            ),
        ];
        let m = build(View::Workloads, &rows);
        assert!(m.warnings.is_empty(), "{:?}", m.warnings);
        let l = link(&m, "workload:shop/cart", "host:node-b");
        assert_eq!(
            (l.bytes_to_target, l.bytes_to_source, l.connections),
            (40, 60, 3)
        );
        assert_eq!(m.links.len(), 1);
        let cart = node(&m, "workload:shop/cart");
        assert_eq!(
            (
                cart.containers.len(),
                cart.namespace.as_deref(),
                cart.label.as_str()
            ),
            (1, Some("shop"), "shop/cart")
        );
        assert_eq!(cart.containers[0].pod.as_deref(), Some("cart-1"));
    }
    /// A client that went through more service addresses than a link lists (every pair a new
    /// service port, in descending order): the link lists exactly the cap, the smallest, the
    /// map says the list was cut, and the bytes are exact.
    #[test]
    fn service_addresses_beyond_the_cap_are_cut_and_bytes_stay_exact() {
        let many = 4 * MAX_LINK_SERVICE_ADDRESSES as u16;
        let mut rows: Vec<RowSpec<'_>> = (0..many)
            .rev()
            .map(|i| {
                (
                    "node-a",
                    "10.0.0.1",
                    "10.0.0.2",
                    443,
                    Role::Client,
                    "curl",
                    None,
                    Some(("10.96.0.1", 2000 + i)),
                    c(3, 5, 1),
                )
            })
            .collect();
        rows.push((
            "node-b",
            "10.0.0.2",
            "10.0.0.1",
            443,
            Role::Server,
            "nginx",
            None,
            None,
            c(5 * many as u64, 3 * many as u64, many as u64),
        ));
        for view in [View::Instances, View::Workloads] {
            let m = build(view, &rows);
            let l = link(&m, "host:node-a", "host:node-b");
            assert_eq!(
                (l.bytes_to_target, l.bytes_to_source, l.connections),
                (3 * many as u64, 5 * many as u64, many as u64)
            );
            let want: Vec<String> = (0..MAX_LINK_SERVICE_ADDRESSES as u16)
                .map(|i| format!("10.96.0.1:{}", 2000 + i))
                .collect();
            assert_eq!(l.service_addresses, want);
            assert_eq!(
                m.warnings,
                [format!(
                    "1 link(s) went through more than {MAX_LINK_SERVICE_ADDRESSES} service addresses; the smallest {MAX_LINK_SERVICE_ADDRESSES} are listed"
                )]
            );
        }
    }
}
