//! The traffic map: D3-style `nodes` and `links` for one view over one time range.
//!
//! Schema: `schema/map-v1.schema.json`, documented in `docs/map-format.md`; golden files under
//! `golden/maps/`. The collector writes it (daily files, `GET /api/v1/maps`), the viewer and the
//! CSV/DOT exports read it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Value of `schema` in every v1 map.
pub const MAP_SCHEMA: &str = "trafficmap.map/v1";

/// Which nodes the map is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum View {
    /// A node per host (agent or inventory/EC2 entry) or external address.
    Instances,
    /// A node per archdomain x env; links summed between clusters.
    Clusters,
    /// A node per security group; a host in several groups contributes to each.
    SecurityGroups,
    /// A node per Kubernetes workload (namespace x workload), per container without Kubernetes
    /// names, and per host for processes outside containers (issue 11).
    Workloads,
}

impl View {
    pub const ALL: [View; 4] = [
        View::Instances,
        View::Clusters,
        View::SecurityGroups,
        View::Workloads,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            View::Instances => "instances",
            View::Clusters => "clusters",
            View::SecurityGroups => "security-groups",
            View::Workloads => "workloads",
        }
    }

    /// Daily file name, e.g. `clusters-20261123.json`.
    pub fn file_name(self, day: chrono::NaiveDate) -> String {
        format!("{}-{}.json", self.as_str(), day.format("%Y%m%d"))
    }
}

impl std::str::FromStr for View {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        View::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown view `{s}`: expected instances, clusters, security-groups or workloads"
                )
            })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Map {
    /// Always [`MAP_SCHEMA`].
    pub schema: String,
    pub view: View,
    /// The half-open range `[from, to)` the map covers.
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub generated_at: DateTime<Utc>,
    pub nodes: Vec<Node>,
    pub links: Vec<Link>,
    pub totals: Totals,
    /// What the reader should know about how complete the map is (enrichment that failed,
    /// addresses claimed by several agents, ...). Empty when all is well.
    #[serde(default)]
    pub warnings: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// A host running an agent.
    Host,
    /// A known host (EC2 or inventory) without an agent: seen only from the other side.
    Unmonitored,
    /// An address outside the fleet (reverse DNS, foreign-address list or bare address).
    External,
    /// An archdomain x env cluster (clusters view).
    Cluster,
    /// A security group (security-groups view).
    SecurityGroup,
    /// A Kubernetes workload, or a container without Kubernetes names (workloads view).
    Workload,
}

/// At most this many entries in a node's `containers` and `hosts` (issue 11): a workload of
/// thousands of pods lists the first ones by id; `members` keeps the full count.
pub const MAX_NODE_CONTAINERS: usize = 100;
pub const MAX_NODE_HOSTS: usize = 100;
/// At most this many `service_addresses` on a link.
pub const MAX_LINK_SERVICE_ADDRESSES: usize = 32;

/// A container a node's traffic came from (issue 11), as the agents named it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerRef {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
}

/// Values of [`Node::price_source`]: the last spot price of the instance's type and zone
/// (EC2 `DescribeSpotPriceHistory`), the AWS Price List API, or the operator's price table.
pub const PRICE_SOURCES: [&str; 3] = ["spot-history", "price-list-api", "price-table"];

/// Highest hourly price (USD) believed from any source: the largest EC2 instances cost a few
/// hundred dollars an hour, so anything above is a wrong input, not a price (and every sum of
/// prices stays finite).
pub const MAX_PRICE_PER_HOUR: f64 = 10_000.0;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Stable id within the map: instance id, `host:<machine-id>`, `ip:<addr>`,
    /// `cluster:<archdomain>|<env>` or `sg:<group-id>`.
    pub id: String,
    /// Display name: EC2 Name tag, inventory name, hostname, reverse DNS or address.
    pub label: String,
    pub kind: NodeKind,
    pub env: Option<String>,
    /// Hierarchical, `/`-separated, no leading slash (e.g. `online/midtier/search`).
    pub archdomain: Option<String>,
    pub addresses: Vec<String>,
    pub instance_id: Option<String>,
    pub instance_type: Option<String>,
    pub availability_zone: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    /// `on-demand` or `spot`.
    pub lifecycle: Option<String>,
    /// Hourly price in USD (on-demand table or last spot price); summed for clusters.
    pub price_per_hour: Option<f64>,
    /// Where `price_per_hour` came from (instances view): [`PRICE_SOURCES`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_source: Option<String>,
    pub security_groups: Vec<String>,
    /// Local processes that moved bytes on this node.
    pub processes: Vec<String>,
    /// Ports this node served on.
    pub server_ports: Vec<u16>,
    /// Number of hosts a cluster or security-group node stands for (1 otherwise).
    pub members: u32,
    /// Payload bytes this node received from, and sent to, the other nodes of the map.
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub connections: u64,
    /// Estimated transfer cost of the node's links, USD.
    pub cost_usd: f64,
    /// Free-form labels from the static inventory.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// For nodes with agents: what their reports said about themselves over the range.
    #[serde(default)]
    pub health: Option<NodeHealth>,
    /// For nodes with agents that send host health (issue 12 item 5): the last sample of the
    /// range and the largest 1-minute load in it. Absent for other nodes and for clusters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostStats>,
    // Issue 11 (containers and Kubernetes): all absent in maps without containers.
    /// Kubernetes namespace of a workload node (workloads view).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Kind of the workload (`Deployment`, ...), when all its containers agree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_kind: Option<String>,
    /// Containers whose traffic the node carries, by id, at most [`MAX_NODE_CONTAINERS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<ContainerRef>,
    /// Workload nodes: the node ids of the hosts its containers ran on, at most
    /// [`MAX_NODE_HOSTS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
}

/// A host's health over a map's range: the last sample its agent sent (as in the report's
/// `host.stats`), when it was taken, and the largest 1-minute load of the range.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostStats {
    /// End of the window of the report that carried the last sample.
    pub sampled_at: DateTime<Utc>,
    pub uptime_seconds: u64,
    pub load1: f64,
    pub load5: f64,
    pub load15: f64,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    pub cpus: u32,
    /// The largest `load1` of the samples in the range.
    pub load1_max: f64,
}

impl HostStats {
    /// Memory in use (total - available) as a percentage of the total; `None` when the
    /// total is 0.
    pub fn memory_used_percent(&self) -> Option<f64> {
        (self.memory_total_bytes > 0).then(|| {
            let used = self
                .memory_total_bytes
                .saturating_sub(self.memory_available_bytes);
            used as f64 * 100.0 / self.memory_total_bytes as f64
        })
    }
}

/// The agents' own account of a node over the map's range.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeHealth {
    /// Reports received from the node's agent(s).
    pub reports: u64,
    /// Events the probe could not record (sum over reasons): its byte counts may be low.
    pub probe_drops: u64,
    /// Reports the agent dropped from its full spool: whole windows are missing.
    pub spool_dropped: u64,
}

/// Who observed a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObservedBy {
    /// Agents on both ends; the two observations were merged into one edge.
    Both,
    /// Only the client's agent (the server runs none).
    Client,
    /// Only the server's agent (the client runs none).
    Server,
    /// A cluster or security-group link summing links of several kinds.
    Mixed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CostKind {
    SameAz,
    CrossAz,
    CrossRegion,
    Internet,
    /// Mixed or unknown placement.
    Unknown,
}

/// Traffic between two nodes, oriented from client (`source`) to server (`target`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    pub source: String,
    pub target: String,
    /// Bytes the client side sent to the server side (requests, uploads).
    pub bytes_to_target: u64,
    /// Bytes the server side sent back (responses, downloads).
    pub bytes_to_source: u64,
    pub connections: u64,
    pub server_ports: Vec<u16>,
    /// Service names of `server_ports`, in the same order, `""` for a port without one
    /// (`crate::services`: the collector's `[services]` names, then IANA's). Left out when no
    /// port has a name, and in maps written before it existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    pub client_processes: Vec<String>,
    pub server_processes: Vec<String>,
    pub observed_by: ObservedBy,
    /// When both ends observed the link: the absolute difference of their byte counts (should
    /// be 0 on a healthy fleet; window edges and drops make it differ).
    pub disagreement_bytes: u64,
    pub cost_usd: f64,
    pub cost_kind: CostKind,
    /// First and last moment either end saw traffic on the link within the range.
    #[serde(default)]
    pub first_seen: Option<DateTime<Utc>>,
    #[serde(default)]
    pub last_seen: Option<DateTime<Utc>>,
    /// Addresses the clients connected to before translation (issue 11: a Kubernetes
    /// Service's ClusterIP and port, `10.96.0.40:5432`, `[fd00::1]:80`), sorted, at most
    /// [`MAX_LINK_SERVICE_ADDRESSES`]. Absent when no client went through a translation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_addresses: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Totals {
    pub nodes: u64,
    pub links: u64,
    pub bytes: u64,
    pub connections: u64,
    pub cost_usd: f64,
    /// Sum of the links' `disagreement_bytes`.
    #[serde(default)]
    pub disagreement_bytes: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MapError {
    #[error("malformed map at `{path}`: {message}")]
    Json { path: String, message: String },
    #[error("unsupported map schema `{0}`: expected `{MAP_SCHEMA}`")]
    UnsupportedSchema(String),
    #[error("invalid map: {0}")]
    Invalid(String),
}

impl Map {
    /// Parses and validates a map file.
    pub fn from_json(bytes: &[u8]) -> Result<Map, MapError> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let map: Map = serde_path_to_error::deserialize(de).map_err(|e| MapError::Json {
            path: e.path().to_string(),
            message: e.inner().to_string(),
        })?;
        map.validate()?;
        Ok(map)
    }

    /// Links reference existing nodes, ids are unique, totals add up.
    pub fn validate(&self) -> Result<(), MapError> {
        if self.schema != MAP_SCHEMA {
            return Err(MapError::UnsupportedSchema(self.schema.clone()));
        }
        let mut ids = std::collections::HashSet::new();
        for n in &self.nodes {
            if !ids.insert(n.id.as_str()) {
                return Err(MapError::Invalid(format!("duplicate node id `{}`", n.id)));
            }
            // Issue 11: the lists a map file may carry are capped as the builder caps them.
            if n.containers.len() > MAX_NODE_CONTAINERS || n.hosts.len() > MAX_NODE_HOSTS {
                return Err(MapError::Invalid(format!(
                    "node `{}`: {} containers and {} hosts, at most {MAX_NODE_CONTAINERS} and {MAX_NODE_HOSTS}",
                    n.id,
                    n.containers.len(),
                    n.hosts.len()
                )));
            }
        }
        let mut bytes = 0u64;
        let mut disagreement = 0u64;
        for (i, l) in self.links.iter().enumerate() {
            for end in [&l.source, &l.target] {
                if !ids.contains(end.as_str()) {
                    return Err(MapError::Invalid(format!(
                        "links[{i}] references unknown node `{end}`"
                    )));
                }
            }
            // Service names (issue 12 item 4): parallel to the ports, or absent.
            if !l.services.is_empty() && l.services.len() != l.server_ports.len() {
                return Err(MapError::Invalid(format!(
                    "links[{i}]: {} services for {} server_ports",
                    l.services.len(),
                    l.server_ports.len()
                )));
            }
            if let Some(e) = l
                .services
                .iter()
                .filter(|n| !n.is_empty())
                .find_map(|n| crate::services::check_name(n).err())
            {
                return Err(MapError::Invalid(format!("links[{i}].services: {e}")));
            }
            if l.service_addresses.len() > MAX_LINK_SERVICE_ADDRESSES {
                return Err(MapError::Invalid(format!(
                    "links[{i}]: {} service_addresses, at most {MAX_LINK_SERVICE_ADDRESSES}",
                    l.service_addresses.len()
                )));
            }
            if let Some(bad) = l
                .service_addresses
                .iter()
                .find(|a| a.parse::<std::net::SocketAddr>().is_err())
            {
                return Err(MapError::Invalid(format!(
                    "links[{i}].service_addresses: `{}` is not an address:port",
                    bad.escape_debug()
                )));
            }
            bytes += l.bytes_to_target + l.bytes_to_source;
            disagreement += l.disagreement_bytes;
        }
        if self.totals.nodes != self.nodes.len() as u64
            || self.totals.links != self.links.len() as u64
            || self.totals.bytes != bytes
            || self.totals.disagreement_bytes != disagreement
        {
            return Err(MapError::Invalid(format!(
                "totals {:?} do not match {} nodes, {} links, {bytes} bytes, {disagreement} bytes of disagreement",
                self.totals,
                self.nodes.len(),
                self.links.len()
            )));
        }
        Ok(())
    }

    pub fn to_json_pretty(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("a map always serialises");
        v.push(b'\n');
        v
    }
}
