//! The operator's files: the static inventory (hosts outside AWS, or overrides of EC2), the list
//! of well-known foreign addresses, and the on-demand price table. Each parser names the file
//! and line of the first error.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    path::Path,
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// One inventory entry: an address or a CIDR block and what is known about it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryEntry {
    /// `10.9.0.15` or `10.9.0.0/24`.
    pub address: String,
    pub name: Option<String>,
    pub env: Option<String>,
    pub archdomain: Option<String>,
    /// Region or data centre, for transfer cost (same region, cross region).
    pub region: Option<String>,
    pub availability_zone: Option<String>,
    /// Not one of ours (a partner, a SaaS): shown as external, transfer to it is internet egress
    /// when its address is public.
    #[serde(default)]
    pub external: bool,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct InventoryFile {
    #[serde(default)]
    host: Vec<InventoryEntry>,
}

/// A parsed inventory with its entries indexed by address and prefix.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    exact: HashMap<IpAddr, usize>,
    /// Blocks, longest prefix first.
    blocks: Vec<(IpNet, usize)>,
    entries: Vec<InventoryEntry>,
}

impl Inventory {
    /// Parses the TOML inventory (`[[host]]` tables).
    pub fn parse(text: &str, origin: &str) -> Result<Inventory, String> {
        let file: InventoryFile =
            toml::from_str(text).map_err(|e| format!("{origin}: {}", e.to_string().trim()))?;
        let mut inv = Inventory::default();
        for (i, e) in file.host.into_iter().enumerate() {
            let net = parse_net(&e.address)
                .map_err(|m| format!("{origin}: host[{i}].address `{}`: {m}", e.address))?;
            let idx = inv.entries.len();
            if net.prefix_len() == net.max_prefix_len() {
                if inv.exact.insert(net.addr(), idx).is_some() {
                    return Err(format!(
                        "{origin}: host[{i}]: address {} is listed twice",
                        net.addr()
                    ));
                }
            } else {
                inv.blocks.push((net, idx));
            }
            inv.entries.push(e);
        }
        inv.blocks
            .sort_by(|a, b| b.0.prefix_len().cmp(&a.0.prefix_len()).then(a.1.cmp(&b.1)));
        Ok(inv)
    }

    pub fn load(path: &Path) -> Result<Inventory, String> {
        let text = read(path)?;
        Inventory::parse(&text, &path.display().to_string())
    }

    /// The most specific entry for an address, and whether it names exactly this address.
    pub fn lookup(&self, ip: IpAddr) -> Option<(&InventoryEntry, bool)> {
        if let Some(&i) = self.exact.get(&ip) {
            return Some((&self.entries[i], true));
        }
        self.blocks
            .iter()
            .find(|(net, _)| net.contains(&ip))
            .map(|(_, i)| (&self.entries[*i], false))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn parse_net(s: &str) -> Result<IpNet, String> {
    if s.contains('/') {
        s.parse::<IpNet>()
            .map(|n| n.trunc())
            .map_err(|e| e.to_string())
    } else {
        s.parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|e| e.to_string())
    }
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Well-known foreign addresses: `ADDRESS-OR-CIDR NAME...` per line, `#` comments (the format
/// of the old tool's `foreign-ips.txt`, with CIDR blocks allowed).
#[derive(Clone, Debug, Default)]
pub struct ForeignList {
    exact: HashMap<IpAddr, String>,
    blocks: Vec<(IpNet, String)>,
}

impl ForeignList {
    pub fn parse(text: &str, origin: &str) -> Result<ForeignList, String> {
        let mut list = ForeignList::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let (addr, name) = line
                .split_once(char::is_whitespace)
                .map(|(a, n)| (a, n.trim()))
                .ok_or_else(|| format!("{origin}:{}: expected `ADDRESS NAME`", n + 1))?;
            let net = parse_net(addr).map_err(|m| format!("{origin}:{}: `{addr}`: {m}", n + 1))?;
            if net.prefix_len() == net.max_prefix_len() {
                list.exact.insert(net.addr(), name.to_owned());
            } else {
                list.blocks.push((net, name.to_owned()));
            }
        }
        list.blocks
            .sort_by_key(|b| std::cmp::Reverse(b.0.prefix_len()));
        Ok(list)
    }

    pub fn load(path: &Path) -> Result<ForeignList, String> {
        let text = read(path)?;
        ForeignList::parse(&text, &path.display().to_string())
    }

    pub fn lookup(&self, ip: IpAddr) -> Option<&str> {
        self.exact.get(&ip).map(String::as_str).or_else(|| {
            self.blocks
                .iter()
                .find(|(net, _)| net.contains(&ip))
                .map(|(_, n)| n.as_str())
        })
    }

    pub fn len(&self) -> usize {
        self.exact.len() + self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// On-demand hourly prices: CSV `instance_type,region,usd_per_hour`; region `*` matches any
/// region without an entry of its own. A header line and `#` comments are allowed. A price is
/// a number in `[0, MAX_PRICE_PER_HOUR]` (sums of prices stay finite).
#[derive(Clone, Debug, Default)]
pub struct PriceTable {
    prices: HashMap<(String, String), f64>,
}

impl PriceTable {
    pub fn parse(text: &str, origin: &str) -> Result<PriceTable, String> {
        let mut table = PriceTable::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() || (n == 0 && line.starts_with("instance_type")) {
                continue;
            }
            let cols: Vec<&str> = line.split(',').map(str::trim).collect();
            let [itype, region, price] = cols[..] else {
                return Err(format!(
                    "{origin}:{}: expected `instance_type,region,usd_per_hour`",
                    n + 1
                ));
            };
            let price: f64 = price
                .parse()
                .ok()
                .filter(|p: &f64| {
                    p.is_finite() && (0.0..=trafficmap_model::map::MAX_PRICE_PER_HOUR).contains(p)
                })
                .ok_or_else(|| format!("{origin}:{}: `{price}` is not a price", n + 1))?;
            table
                .prices
                .insert((itype.to_owned(), region.to_owned()), price);
        }
        Ok(table)
    }

    pub fn load(path: &Path) -> Result<PriceTable, String> {
        let text = read(path)?;
        PriceTable::parse(&text, &path.display().to_string())
    }

    pub fn on_demand(&self, instance_type: &str, region: Option<&str>) -> Option<f64> {
        region
            .and_then(|r| self.prices.get(&(instance_type.to_owned(), r.to_owned())))
            .or_else(|| self.prices.get(&(instance_type.to_owned(), "*".to_owned())))
            .copied()
    }

    pub fn len(&self) -> usize {
        self.prices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prices.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn inventory_prefers_exact_then_longest_prefix() {
        let inv = Inventory::parse(
            r#"
            [[host]]
            address = "10.9.0.0/16"
            name = "dc1"
            env = "prod"
            [[host]]
            address = "10.9.1.7/24"
            name = "dc1-db"
            archdomain = "online/storage"
            labels = { owner = "dba" }
            [[host]]
            address = "10.9.1.9"
            name = "dc1-db-primary"
            "#,
            "inv.toml",
        )
        .unwrap();
        assert_eq!(inv.len(), 3);
        let (e, exact) = inv.lookup(ip("10.9.1.9")).unwrap();
        assert_eq!((e.name.as_deref(), exact), (Some("dc1-db-primary"), true));
        let (e, exact) = inv.lookup(ip("10.9.1.200")).unwrap();
        assert_eq!((e.name.as_deref(), exact), (Some("dc1-db"), false));
        assert_eq!(e.labels["owner"], "dba");
        assert_eq!(
            inv.lookup(ip("10.9.200.1")).unwrap().0.name.as_deref(),
            Some("dc1")
        );
        assert!(inv.lookup(ip("10.10.0.1")).is_none());
    }

    #[test]
    fn inventory_errors_name_file_and_entry() {
        let err = Inventory::parse("[[host]]\naddress = \"10.0.0.300\"\n", "inv.toml").unwrap_err();
        assert!(
            err.starts_with("inv.toml: host[0].address `10.0.0.300`:"),
            "{err}"
        );
        let err = Inventory::parse("[[host]]\naddres = \"10.0.0.3\"\n", "inv.toml").unwrap_err();
        assert!(err.contains("unknown field `addres`"), "{err}");
        let err = Inventory::parse(
            "[[host]]\naddress = \"10.0.0.3\"\n[[host]]\naddress = \"10.0.0.3/32\"\n",
            "inv.toml",
        )
        .unwrap_err();
        assert!(err.contains("listed twice"), "{err}");
    }

    #[test]
    fn foreign_list() {
        let list = ForeignList::parse(
            "# well-known\n169.254.169.253 AWS DNS\n52.94.0.0/16   AWS services # comment\n\n",
            "foreign.txt",
        )
        .unwrap();
        assert_eq!(list.lookup(ip("169.254.169.253")), Some("AWS DNS"));
        assert_eq!(list.lookup(ip("52.94.7.1")), Some("AWS services"));
        assert_eq!(list.lookup(ip("8.8.8.8")), None);
        let err = ForeignList::parse("8.8.8.8\n", "foreign.txt").unwrap_err();
        assert_eq!(err, "foreign.txt:1: expected `ADDRESS NAME`");
    }

    #[test]
    fn price_table_with_region_fallback() {
        let t = PriceTable::parse(
            "instance_type,region,usd_per_hour\nm5.large,us-east-1,0.096\nm5.large,*,0.107\n",
            "prices.csv",
        )
        .unwrap();
        assert_eq!(t.on_demand("m5.large", Some("us-east-1")), Some(0.096));
        assert_eq!(t.on_demand("m5.large", Some("eu-west-1")), Some(0.107));
        assert_eq!(t.on_demand("m5.large", None), Some(0.107));
        assert_eq!(t.on_demand("c5.xlarge", Some("us-east-1")), None);
        let err = PriceTable::parse("m5.large,us-east-1,cheap\n", "prices.csv").unwrap_err();
        assert_eq!(err, "prices.csv:1: `cheap` is not a price");
        for bad in ["NaN", "inf", "-0.1", "1e300", "10000.5"] {
            let err = PriceTable::parse(&format!("m5.large,*,{bad}\n"), "prices.csv").unwrap_err();
            assert_eq!(err, format!("prices.csv:1: `{bad}` is not a price"));
        }
    }
}
