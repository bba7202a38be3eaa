//! Enrichment: who an address is. Pure: every source is a snapshot handed in, refreshed by the
//! background tasks of [`refresh`], so building a map never waits on the network and tests use
//! fixtures.
//!
//! Precedence, most trusted first (documented in `docs/collector.md`):
//! 1. the agents' own reports (a host that runs an agent is a `host` node, its hostname the
//!    fallback label, its EC2 identity from instance metadata);
//! 2. the static inventory (name, env, archdomain, region, zone, labels) completes **and
//!    overrides** EC2, so an operator can correct a wrong tag without touching AWS;
//! 3. EC2 (`DescribeInstances`): Name/archdomain/env tags (keys configurable), type, zone,
//!    lifecycle, security groups, addresses; prices from the spot history or the price table;
//! 4. the well-known foreign addresses list, for names of addresses outside the fleet;
//! 5. reverse DNS, for names of addresses nobody else knows;
//! 6. the bare address.
//!
//! Archdomain and env values from every source go through the same clean-up rules.

pub mod dns;
pub mod files;
pub mod pricelist;
pub mod refresh;
pub mod rules;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
};

use serde::{Deserialize, Serialize};
use trafficmap_model::{
    cloud::{CloudSnapshot, Instance, Lifecycle},
    map::{MAX_PRICE_PER_HOUR, NodeHealth, NodeKind},
};

use crate::range::AgentInfo;
pub use files::{ForeignList, Inventory, PriceTable};
pub use pricelist::PriceListPrices;
pub use rules::TagRules;

/// Which EC2 tags hold what.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TagKeys {
    pub archdomain: String,
    pub env: String,
    pub name: String,
}

impl Default for TagKeys {
    fn default() -> Self {
        TagKeys {
            archdomain: "archdomain".into(),
            env: "env".into(),
            name: "Name".into(),
        }
    }
}

/// How raw values become node attributes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rules {
    pub tags: TagKeys,
    pub archdomain: TagRules,
    pub env: TagRules,
}

/// The EC2 snapshot, indexed.
#[derive(Clone, Debug, Default)]
pub struct CloudIndex {
    pub snapshot: CloudSnapshot,
    by_ip: HashMap<IpAddr, usize>,
    by_id: HashMap<String, usize>,
    groups: HashMap<String, usize>,
    spot: HashMap<(String, String), f64>,
    /// Addresses claimed by more than one instance (overlapping VPCs): not resolved by address.
    pub ambiguous: BTreeSet<IpAddr>,
}

impl CloudIndex {
    pub fn new(snapshot: CloudSnapshot) -> CloudIndex {
        let mut idx = CloudIndex::default();
        for (i, inst) in snapshot.instances.iter().enumerate() {
            idx.by_id.insert(inst.instance_id.clone(), i);
            for ip in inst.private_ips.iter().chain(&inst.public_ips) {
                if let Some(prev) = idx.by_ip.insert(*ip, i)
                    && prev != i
                {
                    idx.ambiguous.insert(*ip);
                }
            }
        }
        for ip in &idx.ambiguous {
            idx.by_ip.remove(ip);
        }
        for (i, g) in snapshot.security_groups.iter().enumerate() {
            idx.groups.insert(g.group_id.clone(), i);
        }
        for p in &snapshot.spot_prices {
            idx.spot.insert(
                (p.instance_type.clone(), p.availability_zone.clone()),
                p.price,
            );
        }
        idx.snapshot = snapshot;
        idx
    }

    pub fn instance(&self, i: usize) -> &Instance {
        &self.snapshot.instances[i]
    }

    pub fn by_ip(&self, ip: IpAddr) -> Option<usize> {
        self.by_ip.get(&ip).copied()
    }

    pub fn by_id(&self, id: &str) -> Option<usize> {
        self.by_id.get(id).copied()
    }

    pub fn group_name(&self, id: &str) -> Option<&str> {
        self.groups
            .get(id)
            .map(|&i| self.snapshot.security_groups[i].group_name.as_str())
    }

    pub fn spot_price(&self, instance_type: &str, az: &str) -> Option<f64> {
        self.spot
            .get(&(instance_type.to_owned(), az.to_owned()))
            .copied()
    }
}

/// Every enrichment source at one moment.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    pub cloud: Arc<CloudIndex>,
    pub inventory: Arc<Inventory>,
    pub foreign: Arc<ForeignList>,
    pub prices: Arc<PriceTable>,
    /// On-demand prices from the AWS Price List API (fresh cache entries); before the table.
    pub price_list: Arc<PriceListPrices>,
    pub dns: Arc<HashMap<IpAddr, String>>,
    /// Problems with the sources the map's reader should know about.
    pub warnings: Vec<String>,
}

/// Resolved attributes of an instance-level node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Identity {
    pub kind: Option<NodeKind>,
    pub id: String,
    pub label: String,
    pub env: Option<String>,
    pub archdomain: Option<String>,
    pub addresses: BTreeSet<IpAddr>,
    pub instance_id: Option<String>,
    pub instance_type: Option<String>,
    pub availability_zone: Option<String>,
    pub region: Option<String>,
    pub lifecycle: Option<String>,
    pub price_per_hour: Option<f64>,
    /// Where the price came from: one of `trafficmap_model::map::PRICE_SOURCES`.
    pub price_source: Option<&'static str>,
    /// Security group ids.
    pub security_groups: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// The node's public addresses (traffic to them leaves the private network).
    pub public_ips: BTreeSet<IpAddr>,
    /// An address on the public internet that is not ours: transfer to it is egress.
    pub internet: bool,
    pub health: Option<NodeHealth>,
    /// Host health over the range, for hosts whose agents send it (issue 12 item 5).
    pub host: Option<trafficmap_model::map::HostStats>,
}

/// Whether an address is routed on the public internet (not private, loopback, link-local,
/// shared or multicast space).
pub fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_unspecified()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_global(IpAddr::V4(v4));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80)
        }
    }
}

/// What a peer address stands for, before attributes are resolved.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// An EC2 instance (index into the snapshot).
    Instance(usize),
    /// Nothing but the address.
    Addr(IpAddr),
}

/// How an inventory entry's name applies to a node.
#[derive(Clone, Copy)]
enum NameUse {
    Exact,
    Block(IpAddr),
    Ignore,
}

/// Enrichment sources plus rules: answers "who is this".
pub struct Directory<'a> {
    pub sources: &'a Sources,
    pub rules: &'a Rules,
}

impl Directory<'_> {
    fn tag<'t>(&self, inst: &'t Instance, key: &str) -> Option<&'t str> {
        inst.tags
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    /// The EC2 instance an agent runs on: by the instance id it reported, else by a unique
    /// address match.
    pub fn agent_instance(&self, agent: &AgentInfo) -> Option<usize> {
        let cloud = &self.sources.cloud;
        if let Some(e) = &agent.ec2 {
            return cloud.by_id(&e.instance_id);
        }
        let mut found: Option<usize> = None;
        for ip in &agent.addresses {
            if let Some(i) = cloud.by_ip(*ip) {
                if found.is_some_and(|f| f != i) {
                    return None;
                }
                found = Some(i);
            }
        }
        found
    }

    /// What a peer address is, when no agent claims it.
    pub fn target(&self, ip: IpAddr) -> Target {
        match self.sources.cloud.by_ip(ip) {
            Some(i) => Target::Instance(i),
            None => Target::Addr(ip),
        }
    }

    fn inventory_for<'a>(
        &self,
        addrs: impl IntoIterator<Item = &'a IpAddr>,
    ) -> Option<(&files::InventoryEntry, bool)> {
        addrs
            .into_iter()
            .filter_map(|ip| self.sources.inventory.lookup(*ip))
            // An entry for exactly this address beats a block.
            .min_by_key(|(_, exact)| !exact)
    }

    /// Fills EC2 attributes of an instance into `id`.
    fn apply_instance(&self, id: &mut Identity, inst: &Instance) {
        let r = self.rules;
        id.instance_id = Some(inst.instance_id.clone());
        id.instance_type = inst.instance_type.clone().or(id.instance_type.take());
        id.availability_zone = inst
            .availability_zone
            .clone()
            .or(id.availability_zone.take());
        id.region = Some(inst.region.clone());
        id.lifecycle = Some(inst.lifecycle.as_str().to_owned());
        (id.price_per_hour, id.price_source) = self.price(inst).unzip();
        id.security_groups = inst.security_groups.clone();
        id.addresses
            .extend(inst.private_ips.iter().chain(&inst.public_ips));
        id.public_ips.extend(inst.public_ips.iter().copied());
        if let Some(v) = self.tag(inst, &r.tags.env) {
            id.env = r.env.flat(v);
        }
        if let Some(v) = self.tag(inst, &r.tags.archdomain) {
            id.archdomain = r.archdomain.archdomain(v);
        }
        if let Some(v) = self.tag(inst, &r.tags.name) {
            id.label = v.trim().to_owned();
        }
    }

    /// The hourly price and its source: spot from the spot history; on-demand from the Price
    /// List API, else the table. A value that is not a price (NaN, infinite, negative, above
    /// [`MAX_PRICE_PER_HOUR`]: a hostile snapshot or table) is no price at all.
    fn price(&self, inst: &Instance) -> Option<(f64, &'static str)> {
        let t = inst.instance_type.as_deref()?;
        let usable = |p: &f64| p.is_finite() && (0.0..=MAX_PRICE_PER_HOUR).contains(p);
        match inst.lifecycle {
            Lifecycle::Spot => inst
                .availability_zone
                .as_deref()
                .and_then(|az| self.sources.cloud.spot_price(t, az))
                .filter(usable)
                .map(|p| (p, "spot-history")),
            Lifecycle::OnDemand => self
                .sources
                .price_list
                .on_demand(t, &inst.region)
                .filter(usable)
                .map(|p| (p, "price-list-api"))
                .or_else(|| {
                    self.sources
                        .prices
                        .on_demand(t, Some(&inst.region))
                        .filter(usable)
                        .map(|p| (p, "price-table"))
                }),
        }
    }

    /// Inventory values override what is already there. The entry's name becomes the label
    /// when it names exactly this host; a block's name is given to bare addresses only, with the
    /// address appended (one block, many nodes), never to a host that has a name of its own.
    /// The inventory entry of `addrs`, if any, applied to `id`: its name only when the entry is
    /// for one of those exact addresses (a CIDR names many hosts).
    fn apply_inventory_for<'a>(
        &self,
        id: &mut Identity,
        addrs: impl IntoIterator<Item = &'a IpAddr>,
    ) {
        if let Some((e, exact)) = self.inventory_for(addrs) {
            let name = if exact {
                NameUse::Exact
            } else {
                NameUse::Ignore
            };
            self.apply_inventory(id, e, name);
        }
    }

    fn apply_inventory(&self, id: &mut Identity, e: &files::InventoryEntry, name: NameUse) {
        let r = self.rules;
        if let Some(n) = e.name.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                NameUse::Exact => id.label = n.to_owned(),
                NameUse::Block(ip) => id.label = format!("{n} {ip}"),
                NameUse::Ignore => {}
            }
        }
        if let Some(v) = e.env.as_deref().and_then(|v| r.env.flat(v)) {
            id.env = Some(v);
        }
        if let Some(v) = e
            .archdomain
            .as_deref()
            .and_then(|v| r.archdomain.archdomain(v))
        {
            id.archdomain = Some(v);
        }
        if e.region.is_some() {
            id.region = e.region.clone();
        }
        if e.availability_zone.is_some() {
            id.availability_zone = e.availability_zone.clone();
        }
        id.labels
            .extend(e.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    }

    /// A host that runs an agent. `node_id` is chosen by the caller, which knows all agents
    /// (ids stay unique when hostnames repeat).
    pub fn agent(&self, agent: &AgentInfo, node_id: String) -> Identity {
        let mut id = Identity {
            kind: Some(NodeKind::Host),
            id: node_id,
            label: agent.hostname.clone(),
            addresses: agent.addresses.clone(),
            health: Some(NodeHealth {
                reports: agent.reports,
                probe_drops: agent.probe_drops,
                spool_dropped: agent.spool_dropped,
            }),
            host: agent.host,
            ..Identity::default()
        };
        if let Some(e) = &agent.ec2 {
            id.instance_id = Some(e.instance_id.clone());
            id.instance_type = e.instance_type.clone();
            id.availability_zone = e.availability_zone.clone();
            id.region = Some(e.region.clone());
        }
        if let Some(i) = self.agent_instance(agent) {
            let inst = self.sources.cloud.instance(i).clone();
            self.apply_instance(&mut id, &inst);
        }
        self.apply_inventory_for(&mut id, agent.addresses.iter());
        id
    }

    /// An EC2 instance without an agent.
    pub fn instance(&self, i: usize) -> Identity {
        let inst = self.sources.cloud.instance(i);
        let mut id = Identity {
            kind: Some(NodeKind::Unmonitored),
            id: inst.instance_id.clone(),
            label: inst.instance_id.clone(),
            ..Identity::default()
        };
        self.apply_instance(&mut id, inst);
        self.apply_inventory_for(&mut id, inst.private_ips.iter());
        id
    }

    /// An address nobody runs an agent on and EC2 does not know.
    pub fn address(&self, ip: IpAddr) -> Identity {
        let s = self.sources;
        let mut id = Identity {
            kind: Some(NodeKind::External),
            id: format!("ip:{ip}"),
            label: ip.to_string(),
            addresses: [ip].into(),
            internet: is_global(ip),
            ..Identity::default()
        };
        if let Some((e, exact)) = s.inventory.lookup(ip) {
            let e = e.clone();
            if !e.external {
                id.kind = Some(NodeKind::Unmonitored);
                id.internet = false;
            }
            self.apply_inventory(
                &mut id,
                &e,
                if exact {
                    NameUse::Exact
                } else {
                    NameUse::Block(ip)
                },
            );
            if e.name.is_some() {
                return id;
            }
        }
        if let Some(name) = s.foreign.lookup(ip) {
            id.label = name.to_owned();
        } else if let Some(name) = s.dns.get(&ip) {
            id.label = name.clone();
        }
        id
    }

    pub fn group_name(&self, group_id: &str) -> String {
        self.sources
            .cloud
            .group_name(group_id)
            .map_or_else(|| group_id.to_owned(), str::to_owned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trafficmap_model::cloud::{SecurityGroup, SpotPrice};
    use trafficmap_model::report::Ec2Identity;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn instance(id: &str, private: &str, tags: &[(&str, &str)]) -> Instance {
        Instance {
            instance_id: id.into(),
            region: "us-east-1".into(),
            availability_zone: Some("us-east-1a".into()),
            instance_type: Some("m5.large".into()),
            lifecycle: Lifecycle::OnDemand,
            state: Some("running".into()),
            private_ips: vec![ip(private)],
            public_ips: vec![],
            tags: tags
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            security_groups: vec!["sg-1".into()],
            vpc_id: None,
            launch_time: None,
        }
    }

    fn sources() -> Sources {
        let mut spot = instance("i-spot", "10.0.0.3", &[("Name", "batch-1")]);
        spot.lifecycle = Lifecycle::Spot;
        spot.public_ips = vec![ip("54.1.2.3")];
        let snap = CloudSnapshot {
            instances: vec![
                instance(
                    "i-api",
                    "10.0.0.1",
                    &[
                        ("Name", "api-1"),
                        ("archdomain", " Online/API "),
                        ("env", "PROD"),
                    ],
                ),
                instance(
                    "i-db",
                    "10.0.0.2",
                    &[("Name", "db-1"), ("arch", "online/storage")],
                ),
                spot,
            ],
            security_groups: vec![SecurityGroup {
                group_id: "sg-1".into(),
                group_name: "web".into(),
                region: "us-east-1".into(),
                vpc_id: None,
                description: None,
                tags: BTreeMap::new(),
            }],
            spot_prices: vec![SpotPrice {
                instance_type: "m5.large".into(),
                availability_zone: "us-east-1a".into(),
                price: 0.031,
                timestamp: chrono::DateTime::UNIX_EPOCH,
            }],
            ..CloudSnapshot::default()
        };
        Sources {
            cloud: Arc::new(CloudIndex::new(snap)),
            inventory: Arc::new(
                Inventory::parse(
                    r#"
                    [[host]]
                    address = "10.0.0.2"
                    env = "Stage"
                    [[host]]
                    address = "192.168.5.0/24"
                    name = "office"
                    archdomain = "corp/office"
                    [[host]]
                    address = "203.0.113.9"
                    name = "partner-api"
                    external = true
                    "#,
                    "inv",
                )
                .unwrap(),
            ),
            foreign: Arc::new(ForeignList::parse("169.254.169.253 AWS DNS\n", "f").unwrap()),
            prices: Arc::new(PriceTable::parse("m5.large,us-east-1,0.096\n", "p").unwrap()),
            price_list: Arc::default(),
            dns: Arc::new([(ip("8.8.8.8"), "dns.google".to_owned())].into()),
            warnings: vec![],
        }
    }

    #[test]
    fn agent_gets_ec2_tags_cleaned_and_on_demand_price() {
        let s = sources();
        let rules = Rules::default();
        let dir = Directory {
            sources: &s,
            rules: &rules,
        };
        let agent = AgentInfo {
            machine_id: "m1".into(),
            hostname: "ip-10-0-0-1".into(),
            addresses: [ip("10.0.0.1")].into(),
            ec2: Some(Ec2Identity {
                instance_id: "i-api".into(),
                region: "us-east-1".into(),
                availability_zone: None,
                instance_type: None,
            }),
            reports: 3,
            probe_drops: 1,
            spool_dropped: 0,
            host: None,
        };
        let id = dir.agent(&agent, "i-api".into());
        assert_eq!(id.kind, Some(NodeKind::Host));
        assert_eq!(id.label, "api-1");
        assert_eq!(id.archdomain.as_deref(), Some("online/api"));
        assert_eq!(id.env.as_deref(), Some("prod"));
        assert_eq!(id.price_per_hour, Some(0.096));
        assert_eq!(id.price_source, Some("price-table"));
        assert_eq!(id.lifecycle.as_deref(), Some("on-demand"));
        assert_eq!(id.availability_zone.as_deref(), Some("us-east-1a"));
        assert_eq!(id.health.as_ref().unwrap().probe_drops, 1);
        assert_eq!(dir.group_name("sg-1"), "web");
        assert_eq!(dir.group_name("sg-9"), "sg-9");
    }

    #[test]
    fn configurable_tag_keys_and_inventory_override() {
        let s = sources();
        let rules = Rules {
            tags: TagKeys {
                archdomain: "arch".into(),
                ..TagKeys::default()
            },
            ..Rules::default()
        };
        let dir = Directory {
            sources: &s,
            rules: &rules,
        };
        let Target::Instance(i) = dir.target(ip("10.0.0.2")) else {
            panic!("10.0.0.2 is an instance")
        };
        let id = dir.instance(i);
        assert_eq!(id.kind, Some(NodeKind::Unmonitored));
        assert_eq!(id.id, "i-db");
        assert_eq!(id.archdomain.as_deref(), Some("online/storage"));
        // The inventory's env overrides the (absent) EC2 tag, cleaned.
        assert_eq!(id.env.as_deref(), Some("stage"));
    }

    #[test]
    fn spot_price_and_public_addresses() {
        let s = sources();
        let rules = Rules::default();
        let dir = Directory {
            sources: &s,
            rules: &rules,
        };
        assert_eq!(dir.target(ip("54.1.2.3")), Target::Instance(2));
        let id = dir.instance(2);
        assert_eq!(id.price_per_hour, Some(0.031));
        assert_eq!(id.price_source, Some("spot-history"));
        assert_eq!(id.lifecycle.as_deref(), Some("spot"));
        assert!(id.public_ips.contains(&ip("54.1.2.3")));
        assert!(!id.internet);
    }

    #[test]
    fn addresses_by_inventory_foreign_list_dns_or_nothing() {
        let s = sources();
        let rules = Rules::default();
        let dir = Directory {
            sources: &s,
            rules: &rules,
        };
        let office = dir.address(ip("192.168.5.7"));
        assert_eq!(office.kind, Some(NodeKind::Unmonitored));
        assert_eq!(office.label, "office 192.168.5.7");
        assert_eq!(office.archdomain.as_deref(), Some("corp/office"));
        let partner = dir.address(ip("203.0.113.9"));
        assert_eq!(partner.kind, Some(NodeKind::External));
        assert_eq!(partner.label, "partner-api");
        assert!(partner.internet);
        let dns = dir.address(ip("169.254.169.253"));
        assert_eq!((dns.label.as_str(), dns.internet), ("AWS DNS", false));
        assert_eq!(dir.address(ip("8.8.8.8")).label, "dns.google");
        let bare = dir.address(ip("1.1.1.1"));
        assert_eq!(
            (bare.id.as_str(), bare.label.as_str()),
            ("ip:1.1.1.1", "1.1.1.1")
        );
    }

    #[test]
    fn global_addresses() {
        for a in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "127.0.0.1",
            "169.254.1.1",
            "100.64.0.1",
            "fd00::1",
            "fe80::1",
            "::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_global(ip(a)), "{a}");
        }
        for a in ["8.8.8.8", "54.1.2.3", "2600:1f18::1", "::ffff:8.8.8.8"] {
            assert!(is_global(ip(a)), "{a}");
        }
    }

    /// On-demand: the Price List API's price before the table; spot: the spot history. A
    /// price that is not one (a hostile snapshot) is no price, whatever its source.
    #[test]
    fn price_sources_and_bounds() {
        let mut s = sources();
        let rules = Rules::default();
        let cache = BTreeMap::from([(
            (
                "m5.large".to_owned(),
                "us-east-1".to_owned(),
                "Linux".to_owned(),
            ),
            pricelist::CacheEntry {
                instance_type: "m5.large".into(),
                region: "us-east-1".into(),
                operating_system: "Linux".into(),
                usd_per_hour: Some(0.0961),
                fetched_at: chrono::DateTime::UNIX_EPOCH,
            },
        )]);
        s.price_list = Arc::new(pricelist::prices(
            &cache,
            "Linux",
            std::time::Duration::from_secs(3600),
            chrono::DateTime::UNIX_EPOCH,
        ));
        let dir = Directory {
            sources: &s,
            rules: &rules,
        };
        let id = dir.instance(0);
        assert_eq!(
            (id.price_per_hour, id.price_source),
            (Some(0.0961), Some("price-list-api"))
        );
        // Another region: not in the API's answers, not in the table either.
        let mut snap = s.cloud.snapshot.clone();
        snap.instances[0].region = "eu-west-1".into();
        for p in [f64::NAN, f64::INFINITY, -0.5, 1e300] {
            snap.spot_prices[0].price = p;
            let hostile = Sources {
                cloud: Arc::new(CloudIndex::new(snap.clone())),
                ..s.clone()
            };
            let dir = Directory {
                sources: &hostile,
                rules: &rules,
            };
            let spot = dir.instance(2);
            assert_eq!(
                (spot.price_per_hour, spot.price_source),
                (None, None),
                "{p}"
            );
            let other = dir.instance(0);
            assert_eq!((other.price_per_hour, other.price_source), (None, None));
        }
    }

    #[test]
    fn overlapping_vpc_addresses_are_not_resolved_by_address() {
        let snap = CloudSnapshot {
            instances: vec![
                instance("i-a", "10.0.0.9", &[]),
                instance("i-b", "10.0.0.9", &[]),
            ],
            ..CloudSnapshot::default()
        };
        let idx = CloudIndex::new(snap);
        assert_eq!(idx.by_ip(ip("10.0.0.9")), None);
        assert!(idx.ambiguous.contains(&ip("10.0.0.9")));
        assert_eq!(idx.by_id("i-b"), Some(1));
    }
}
