//! `export --format traffic-map`: the old traffic-map tool's files, so its viewer
//! (`static/graph.js`) and `utils/make_cluster_spreadsheet.py` keep working during a move.
//!
//! - `instances-YYYY-MM-DD.json`, as `convert/convert-dat-to-json.py` wrote it: `nodes` (`name`,
//!   `label`, `env`, `ip_type`, `traffic`, `archdomain`, `instance_type`, `price`, `region`),
//!   `links` pointing at nodes by index (`source`, `target`, `source_name`, `target_name`,
//!   `value`, `ports`), one per direction of traffic, and `about`;
//! - `clusters-YYYY-MM-DD.json`, as `convert/coalesce-to-cluster.py` made it from the instances
//!   file: `envs`, `nested_links` (`"env|archdomain"` -> `"env|archdomain"` -> `value`, `ports`),
//!   `nodes` (clusters) and `links`, by the same arithmetic.
//!
//! What the old tool counted differently: `traffic` and `value` were `1 + int(log10(packets in
//! one minute))`; here they are `1 + floor(log10(payload bytes over the range))` (digits of the
//! byte count), so they run a few orders higher. docs/migrating.md lists the rest.

use std::collections::{BTreeSet, HashMap};

use serde::{Serialize, Serializer, ser::SerializeMap};
use trafficmap_model::map::{Map, Node, NodeKind, View};

/// The old `about` block: what the file covers and how it was made.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct About {
    pub generated_by: &'static str,
    pub from: String,
    pub to: String,
    pub generated_at: String,
    pub nnodes: usize,
    pub nlinks: usize,
    /// The map's warnings, and what the conversion changed (a `|` in a tag, ...).
    pub warnings: Vec<String>,
    /// `coalesce-to-cluster.py` set it on the clusters file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coalesced: Option<bool>,
}

/// A node of the old instances file.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OldNode {
    /// The address (the old key); the new id when the node has none or shares it.
    pub name: String,
    pub label: String,
    pub env: String,
    /// `internal` (ours), `aws` (AWS addresses outside the fleet) or `external`.
    pub ip_type: &'static str,
    pub traffic: u32,
    pub archdomain: String,
    pub instance_type: String,
    pub price: f64,
    pub region: Option<String>,
}

/// A link of the old instances file: bytes from `source` to `target`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OldLink {
    pub source: usize,
    pub target: usize,
    pub source_name: String,
    pub target_name: String,
    pub value: u32,
    pub ports: Vec<u16>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Instances {
    pub nodes: Vec<OldNode>,
    pub links: Vec<OldLink>,
    pub about: About,
}

/// A cluster (`coalesce-to-cluster.py::Cluster.to_dict`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OldCluster {
    pub env: String,
    pub regions: Vec<Option<String>>,
    pub archdomain: String,
    /// `env|archdomain`.
    pub label: String,
    pub ips: Vec<String>,
    pub price: f64,
    pub labels: Vec<String>,
    pub instance_type: Vec<String>,
    pub traffic: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NestedLink {
    /// The sum of the instance links' `value`s.
    pub value: u64,
    pub ports: BTreeSet<u16>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClusterLink {
    pub source_name: String,
    pub target_name: String,
    pub source: usize,
    pub target: usize,
    pub ports: BTreeSet<u16>,
    /// `1 + 10 * log10(nested value)`.
    pub value: f64,
}

/// An insertion-ordered JSON object (the old files kept Python's dict order).
#[derive(Clone, Debug, PartialEq)]
pub struct Ordered<T> {
    pub items: Vec<(String, T)>,
    index: HashMap<String, usize>,
}

impl<T> Default for Ordered<T> {
    fn default() -> Self {
        Ordered {
            items: Vec::new(),
            index: HashMap::new(),
        }
    }
}

impl<T> Ordered<T> {
    fn entry(&mut self, key: &str, new: impl FnOnce() -> T) -> &mut T {
        let i = match self.index.get(key) {
            Some(&i) => i,
            None => {
                self.items.push((key.to_owned(), new()));
                self.index.insert(key.to_owned(), self.items.len() - 1);
                self.items.len() - 1
            }
        };
        &mut self.items[i].1
    }
}

impl<T: Serialize> Serialize for Ordered<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.items.len()))?;
        for (k, v) in &self.items {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Clusters {
    pub envs: Ordered<Ordered<OldCluster>>,
    pub nested_links: Ordered<Ordered<NestedLink>>,
    pub about: About,
    pub nodes: Vec<OldCluster>,
    pub links: Vec<ClusterLink>,
}

/// `1 + int(log10(n))` for a count of at least 1 (digits of `n`); 1 for 0.
fn magnitude(n: u64) -> u32 {
    1 + n.max(1).ilog10()
}

/// A tag as the old files need it: lower case (as `read_ips` made it) and without `|`, which
/// separates env and archdomain in cluster names (`make_cluster_spreadsheet.py` splits on it).
fn old_tag(v: &str, changed: &mut BTreeSet<String>) -> String {
    let t = v.to_lowercase();
    if t.contains('|') {
        changed.insert(v.to_owned());
        t.replace('|', "_")
    } else {
        t
    }
}

fn is_fleet(n: &Node) -> bool {
    matches!(n.kind, NodeKind::Host | NodeKind::Unmonitored)
}

/// The instances file from an instances map. Other views give the same nodes they have, but
/// only the instances view is what the old tool wrote.
pub fn instances(map: &Map) -> Instances {
    let mut changed = BTreeSet::new();
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut by_id: HashMap<&str, usize> = HashMap::new();
    let mut nodes = Vec::with_capacity(map.nodes.len());
    for (i, n) in map.nodes.iter().enumerate() {
        let name = match n.addresses.first() {
            Some(a) if !names.contains_key(a.as_str()) => a.as_str(),
            _ => n.id.as_str(),
        };
        names.insert(name, i);
        by_id.insert(n.id.as_str(), i);
        // list-ec2-hosts-table.py wrote `unknown` for a missing tag; convert-dat-to-json.py
        // made every address it did not know `external`, and AWS ones `aws-external`.
        let (env, archdomain, ip_type) = if is_fleet(n) {
            let env = n
                .env
                .as_deref()
                .map_or("unknown".into(), |e| old_tag(e, &mut changed));
            let arch = n
                .archdomain
                .as_deref()
                .map_or("unknown".into(), |a| old_tag(a, &mut changed));
            (env, arch, "internal")
        } else if name.starts_with("10.") || n.label.ends_with("amazonaws.com") {
            ("aws-external".into(), "external".into(), "aws")
        } else {
            ("external".into(), "external".into(), "external")
        };
        // The old label of an instance was `archdomain/Name`.
        let label = if is_fleet(n) {
            format!("{archdomain}/{}", n.label.to_lowercase())
        } else {
            n.label.clone()
        };
        nodes.push(OldNode {
            name: name.to_owned(),
            label,
            env,
            ip_type,
            traffic: magnitude(n.bytes_in.saturating_add(n.bytes_out)),
            archdomain,
            instance_type: n.instance_type.clone().unwrap_or_else(|| "unknown".into()),
            price: n
                .price_per_hour
                .filter(|p| p.is_finite() && is_fleet(n))
                .unwrap_or(0.0),
            // An address outside the fleet had no region (nor price) in the old file.
            region: if is_fleet(n) { n.region.clone() } else { None },
        });
    }
    // One old link per direction with bytes (tcpdump saw packets both ways), the
    // client-to-server one always; both directions carry the server's port.
    let mut directed: HashMap<(usize, usize), (u64, BTreeSet<u16>)> = HashMap::new();
    for l in &map.links {
        let (Some(&s), Some(&t)) = (by_id.get(l.source.as_str()), by_id.get(l.target.as_str()))
        else {
            continue; // Map::validate refuses such links; nothing to point at.
        };
        let e = directed.entry((s, t)).or_default();
        e.0 = e.0.saturating_add(l.bytes_to_target);
        e.1.extend(&l.server_ports);
        if l.bytes_to_source > 0 {
            let e = directed.entry((t, s)).or_default();
            e.0 = e.0.saturating_add(l.bytes_to_source);
            e.1.extend(&l.server_ports);
        }
    }
    let mut links: Vec<OldLink> = directed
        .into_iter()
        .map(|((s, t), (bytes, ports))| OldLink {
            source: s,
            target: t,
            source_name: nodes[s].name.clone(),
            target_name: nodes[t].name.clone(),
            value: magnitude(bytes),
            ports: ports.into_iter().collect(),
        })
        .collect();
    // `build_links` went through sources, then targets, in sorted order.
    links.sort_by(|a, b| (&a.source_name, &a.target_name).cmp(&(&b.source_name, &b.target_name)));
    let mut warnings = map.warnings.clone();
    if !changed.is_empty() {
        warnings.push(format!(
            "`|` replaced by `_` in {} (it separates env and archdomain in cluster names)",
            changed
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    Instances {
        about: About {
            generated_by: "trafficmap-collector export --format traffic-map",
            from: map.from.to_rfc3339(),
            to: map.to.to_rfc3339(),
            generated_at: map.generated_at.to_rfc3339(),
            nnodes: nodes.len(),
            nlinks: links.len(),
            warnings,
            coalesced: None,
        },
        nodes,
        links,
    }
}

/// `coalesce-to-cluster.py` on an instances file: clusters by env and archdomain, links summed
/// between them.
pub fn clusters(inst: &Instances) -> Clusters {
    let mut envs: Ordered<Ordered<OldCluster>> = Ordered::default();
    for n in &inst.nodes {
        let c = envs
            .entry(&n.env, Ordered::default)
            .entry(&n.archdomain, || OldCluster {
                env: n.env.clone(),
                regions: Vec::new(),
                archdomain: n.archdomain.clone(),
                label: format!("{}|{}", n.env, n.archdomain),
                ips: Vec::new(),
                price: 0.0,
                labels: Vec::new(),
                instance_type: Vec::new(),
                traffic: 0.0,
            });
        // Sets in the old code; first-seen order here, duplicates removed below.
        c.regions.push(n.region.clone());
        c.labels.push(n.label.clone());
        c.ips.push(n.name.clone());
        c.price += n.price;
        c.instance_type.push(n.instance_type.clone());
        // `log10(10**(int(t)-1) + 10**(int(node.traffic)-1)) + 1`: magnitudes add as powers.
        c.traffic = (10f64.powi(c.traffic.trunc() as i32 - 1) + 10f64.powi(n.traffic as i32 - 1))
            .log10()
            + 1.0;
    }
    let mut nested: Ordered<Ordered<NestedLink>> = Ordered::default();
    for l in &inst.links {
        let (s, t) = (&inst.nodes[l.source], &inst.nodes[l.target]);
        let d = nested
            .entry(&format!("{}|{}", s.env, s.archdomain), Ordered::default)
            .entry(&format!("{}|{}", t.env, t.archdomain), || NestedLink {
                value: 0,
                ports: BTreeSet::new(),
            });
        d.value = d.value.saturating_add(u64::from(l.value));
        d.ports.extend(&l.ports);
    }
    for e in &mut envs.items {
        for (_, c) in &mut e.1.items {
            dedup_keep_order(&mut c.regions);
            dedup_keep_order(&mut c.labels);
            dedup_keep_order(&mut c.ips);
            dedup_keep_order(&mut c.instance_type);
        }
    }
    let nodes: Vec<OldCluster> = envs
        .items
        .iter()
        .flat_map(|(_, e)| e.items.iter().map(|(_, c)| c.clone()))
        .collect();
    let positions: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.label.as_str(), i))
        .collect();
    // Every nested key is some cluster's label (both are `env|archdomain` of the same nodes).
    let index = |label: &str| positions.get(label).copied().unwrap_or(0);
    let links: Vec<ClusterLink> = nested
        .items
        .iter()
        .flat_map(|(s, targets)| {
            targets.items.iter().map(|(t, d)| ClusterLink {
                source_name: s.clone(),
                target_name: t.clone(),
                source: index(s),
                target: index(t),
                ports: d.ports.clone(),
                value: 1.0 + 10.0 * (d.value as f64).log10(),
            })
        })
        .collect();
    // `about = original['about'].copy(); about['coalesced'] = True`: the instances' counts.
    let mut about = inst.about.clone();
    about.coalesced = Some(true);
    Clusters {
        envs,
        nested_links: nested,
        about,
        nodes,
        links,
    }
}

fn dedup_keep_order<T: Eq + std::hash::Hash + Clone>(v: &mut Vec<T>) {
    let mut seen = std::collections::HashSet::new();
    v.retain(|x| seen.insert(x.clone()));
}

/// The old file name: `instances-2026-11-23.json` (config.sh's `YMD`, `date +%Y-%m-%d`).
pub fn file_name(view: View, day: chrono::NaiveDate) -> Result<String, String> {
    match view {
        View::Instances | View::Clusters => {
            Ok(format!("{}-{}.json", view.as_str(), day.format("%Y-%m-%d")))
        }
        View::SecurityGroups => Err(security_groups_refusal()),
        View::Workloads => Err(workloads_refusal()),
    }
}

fn workloads_refusal() -> String {
    "the traffic-map format has instances and clusters files: the old tool knew no containers \
     (use --format json, csv, dot or drawio for the workloads view)"
        .into()
}

fn security_groups_refusal() -> String {
    "the traffic-map format has instances and clusters files: the old tool's security-groups \
     file was the EC2 listing, not a traffic map (use --format json for the security-groups view)"
        .into()
}

/// The old file for a view, from the instances map of the range (clusters are coalesced from
/// it, as the old tool did).
pub fn render(view: View, instances_map: &Map) -> Result<Vec<u8>, String> {
    let inst = instances(instances_map);
    let mut out = match view {
        View::Instances => serde_json::to_vec_pretty(&inst),
        View::Clusters => serde_json::to_vec_pretty(&clusters(&inst)),
        View::SecurityGroups => return Err(security_groups_refusal()),
        View::Workloads => return Err(workloads_refusal()),
    }
    .map_err(|e| e.to_string())?;
    out.push(b'\n');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use trafficmap_model::map::{CostKind, Link, ObservedBy};

    use super::*;

    fn node(id: &str, kind: NodeKind, addr: &str) -> Node {
        Node {
            id: id.into(),
            label: id.into(),
            kind,
            env: None,
            archdomain: None,
            addresses: vec![addr.into()],
            instance_id: None,
            instance_type: None,
            availability_zone: None,
            region: None,
            lifecycle: None,
            price_per_hour: None,
            security_groups: vec![],
            processes: vec![],
            server_ports: vec![],
            members: 1,
            bytes_in: 0,
            bytes_out: 0,
            connections: 0,
            cost_usd: 0.0,
            labels: Default::default(),
            health: None,
            host: None,
            price_source: None,
            namespace: None,
            workload_kind: None,
            containers: vec![],
            hosts: vec![],
        }
    }

    fn link(s: &str, t: &str, to_t: u64, to_s: u64, port: u16) -> Link {
        Link {
            source: s.into(),
            target: t.into(),
            bytes_to_target: to_t,
            bytes_to_source: to_s,
            connections: 1,
            server_ports: vec![port],
            services: vec![],
            client_processes: vec![],
            server_processes: vec![],
            observed_by: ObservedBy::Both,
            disagreement_bytes: 0,
            cost_usd: 0.0,
            cost_kind: CostKind::SameAz,
            first_seen: None,
            last_seen: None,
            service_addresses: vec![],
        }
    }

    fn sample() -> Map {
        let t = Utc.with_ymd_and_hms(2026, 11, 23, 0, 0, 0).unwrap();
        let mut api = node("i-1", NodeKind::Host, "10.0.0.1");
        api.label = "API-1".into();
        api.env = Some("prod".into());
        api.archdomain = Some("online/api".into());
        api.instance_type = Some("m5.large".into());
        api.region = Some("us-east-1".into());
        api.price_per_hour = Some(0.096);
        api.bytes_in = 999;
        api.bytes_out = 1;
        let mut api2 = api.clone();
        api2.id = "i-2".into();
        api2.label = "api-2".into();
        api2.addresses = vec!["10.0.0.2".into()];
        api2.price_per_hour = Some(0.5);
        api2.bytes_in = 99_999;
        api2.bytes_out = 0;
        let mut db = node("host:db", NodeKind::Unmonitored, "10.0.0.3");
        db.env = Some("prod|x".into());
        let mut ext = node("ip:10.1.2.3", NodeKind::External, "10.1.2.3");
        ext.label = "10.1.2.3".into();
        ext.region = Some("us-east-1".into());
        ext.price_per_hour = Some(9.0);
        let mut partner = node("ip:198.51.100.7", NodeKind::External, "198.51.100.7");
        partner.label = "partner".into();
        // Shares api's address: named by its id.
        let dup = node("host:dup", NodeKind::Host, "10.0.0.1");
        Map {
            schema: trafficmap_model::map::MAP_SCHEMA.into(),
            view: View::Instances,
            from: t,
            to: t + chrono::Duration::days(1),
            generated_at: t,
            nodes: vec![api, api2, db, ext, partner, dup],
            links: vec![
                link("i-1", "host:db", 1000, 10, 5432),
                link("i-2", "host:db", 100, 0, 5432),
                link("host:db", "i-1", 5, 5, 9100),
                link("i-1", "ip:198.51.100.7", 0, 0, 443),
                link("i-2", "ip:10.1.2.3", 10, 10_000, 443),
            ],
            totals: Default::default(),
            warnings: vec!["w".into()],
        }
    }

    #[test]
    fn instances_by_the_old_rules() {
        let inst = instances(&sample());
        let n: Vec<_> = inst
            .nodes
            .iter()
            .map(|n| {
                (
                    n.name.as_str(),
                    n.label.as_str(),
                    n.env.as_str(),
                    n.ip_type,
                    n.traffic,
                    n.archdomain.as_str(),
                    n.instance_type.as_str(),
                    n.price,
                    n.region.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            n,
            [
                (
                    "10.0.0.1",
                    "online/api/api-1",
                    "prod",
                    "internal",
                    4,
                    "online/api",
                    "m5.large",
                    0.096,
                    Some("us-east-1")
                ),
                (
                    "10.0.0.2",
                    "online/api/api-2",
                    "prod",
                    "internal",
                    5,
                    "online/api",
                    "m5.large",
                    0.5,
                    Some("us-east-1")
                ),
                (
                    "10.0.0.3",
                    "unknown/host:db",
                    "prod_x",
                    "internal",
                    1,
                    "unknown",
                    "unknown",
                    0.0,
                    None
                ),
                (
                    "10.1.2.3",
                    "10.1.2.3",
                    "aws-external",
                    "aws",
                    1,
                    "external",
                    "unknown",
                    0.0,
                    None
                ),
                (
                    "198.51.100.7",
                    "partner",
                    "external",
                    "external",
                    1,
                    "external",
                    "unknown",
                    0.0,
                    None
                ),
                (
                    "host:dup",
                    "unknown/host:dup",
                    "unknown",
                    "internal",
                    1,
                    "unknown",
                    "unknown",
                    0.0,
                    None
                ),
            ]
        );
        let l: Vec<_> = inst
            .links
            .iter()
            .map(|l| {
                (
                    l.source,
                    l.target,
                    l.source_name.as_str(),
                    l.target_name.as_str(),
                    l.value,
                    l.ports.clone(),
                )
            })
            .collect();
        assert_eq!(
            l,
            [
                // 1000 + 5 bytes api-1 -> db on 5432 and 9100 (db called api-1 back).
                (0, 2, "10.0.0.1", "10.0.0.3", 4, vec![5432, 9100]),
                // No payload either way: still one link, client to server.
                (0, 4, "10.0.0.1", "198.51.100.7", 1, vec![443]),
                (1, 2, "10.0.0.2", "10.0.0.3", 3, vec![5432]),
                (1, 3, "10.0.0.2", "10.1.2.3", 2, vec![443]),
                (2, 0, "10.0.0.3", "10.0.0.1", 2, vec![5432, 9100]),
                (3, 1, "10.1.2.3", "10.0.0.2", 5, vec![443]),
            ]
        );
        assert_eq!(
            (inst.about.nnodes, inst.about.nlinks, inst.about.coalesced),
            (6, 6, None)
        );
        assert_eq!(
            inst.about.warnings,
            [
                "w",
                "`|` replaced by `_` in `prod|x` (it separates env and archdomain in cluster names)"
            ]
        );
    }

    #[test]
    fn clusters_by_the_old_arithmetic() {
        let c = clusters(&instances(&sample()));
        let labels: Vec<_> = c.nodes.iter().map(|c| c.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "prod|online/api",
                "prod_x|unknown",
                "aws-external|external",
                "external|external",
                "unknown|unknown"
            ]
        );
        let api = &c.nodes[0];
        assert_eq!(api.ips, ["10.0.0.1", "10.0.0.2"]);
        assert_eq!(api.labels, ["online/api/api-1", "online/api/api-2"]);
        assert_eq!(api.instance_type, ["m5.large"]);
        assert_eq!(api.regions, [Some("us-east-1".to_owned())]);
        assert_eq!(api.price, 0.096 + 0.5);
        // log10(10**-1 + 10**3) + 1, then log10(10**(int(4.00004)-1) + 10**4) + 1.
        let first = (0.1f64 + 1000.0).log10() + 1.0;
        assert_eq!(first, 4.000043427276863);
        assert_eq!(api.traffic, (1000.0f64 + 10_000.0).log10() + 1.0);
        assert_eq!(api.traffic, 5.041392685158225);
        // The same cluster in the envs tree.
        assert_eq!(c.envs.items[0].0, "prod");
        assert_eq!(c.envs.items[0].1.items[0].1, *api);
        // nested_links: values summed, ports merged.
        let nested: Vec<_> = c
            .nested_links
            .items
            .iter()
            .flat_map(|(s, t)| {
                t.items
                    .iter()
                    .map(move |(t, d)| (s.as_str(), t.as_str(), d.value, d.ports.clone()))
            })
            .collect();
        assert_eq!(
            nested,
            [
                ("prod|online/api", "prod_x|unknown", 7, [5432, 9100].into()),
                ("prod|online/api", "external|external", 1, [443].into()),
                ("prod|online/api", "aws-external|external", 2, [443].into()),
                ("prod_x|unknown", "prod|online/api", 2, [5432, 9100].into()),
                ("aws-external|external", "prod|online/api", 5, [443].into()),
            ]
        );
        let links: Vec<_> = c
            .links
            .iter()
            .map(|l| (l.source, l.target, l.value))
            .collect();
        assert_eq!(
            links,
            [
                (0, 1, 1.0 + 10.0 * 7f64.log10()),
                (0, 3, 1.0),
                (0, 2, 1.0 + 10.0 * 2f64.log10()),
                (1, 0, 1.0 + 10.0 * 2f64.log10()),
                (2, 0, 1.0 + 10.0 * 5f64.log10()),
            ]
        );
        assert_eq!((c.about.nnodes, c.about.nlinks), (6, 6));
        assert_eq!(c.about.coalesced, Some(true));
    }

    #[test]
    fn old_file_names() {
        let d = chrono::NaiveDate::from_ymd_opt(2026, 11, 3).unwrap();
        assert_eq!(
            file_name(View::Instances, d).unwrap(),
            "instances-2026-11-03.json"
        );
        assert_eq!(
            file_name(View::Clusters, d).unwrap(),
            "clusters-2026-11-03.json"
        );
        assert!(
            file_name(View::SecurityGroups, d)
                .unwrap_err()
                .starts_with("the traffic-map format has instances and clusters files")
        );
        assert_eq!(
            render(View::SecurityGroups, &sample()).unwrap_err(),
            security_groups_refusal()
        );
    }
}
