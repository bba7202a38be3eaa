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

/// The old tool's line (`convert-dat-to-json.py::read_foreign_ips`): tab-separated, the name
/// first, then one or more addresses. A line without tabs is split at white space (a name with
/// spaces needs the tabs, as it did then).
fn parse_old_foreign_line(line: &str) -> Result<Vec<(IpNet, &str)>, String> {
    let fields: Vec<&str> = if line.contains('\t') {
        line.split('\t')
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .collect()
    } else {
        line.split_whitespace().collect()
    };
    let expected = "expected `ADDRESS NAME` or the old `NAME<TAB>ADDRESS...`";
    let Some((name, addresses)) = fields.split_first() else {
        return Err(expected.to_owned());
    };
    if addresses.is_empty() {
        return Err(format!("`{name}` is not an address: {expected}"));
    }
    addresses
        .iter()
        .map(|a| {
            parse_net(a)
                .map(|net| (net, *name))
                .map_err(|_| format!("neither `{name}` nor `{a}` is an address: {expected}"))
        })
        .collect()
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Well-known foreign addresses: `ADDRESS-OR-CIDR NAME...` per line, `#` comments, CIDR blocks
/// allowed. The old tool's order, `NAME<TAB>ADDRESS<TAB>ADDRESS...`, is read too: a line whose
/// first word is not an address is an old line (names are never addresses, so the two cannot be
/// confused), and one warning names the old lines.
#[derive(Clone, Debug, Default)]
pub struct ForeignList {
    exact: HashMap<IpAddr, String>,
    blocks: Vec<(IpNet, String)>,
    warnings: Vec<String>,
}

/// Line numbers quoted in one warning; the rest are counted.
const QUOTED_LINES: usize = 10;

/// `2, 3 and 5` style list of line numbers, at most [`QUOTED_LINES`] of them.
pub(crate) fn line_list(lines: &[usize]) -> String {
    let mut s = lines
        .iter()
        .take(QUOTED_LINES)
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if lines.len() > QUOTED_LINES {
        s.push_str(&format!(" and {} more", lines.len() - QUOTED_LINES));
    }
    s
}

impl ForeignList {
    pub fn parse(text: &str, origin: &str) -> Result<ForeignList, String> {
        let mut list = ForeignList::default();
        let mut old_lines = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let first = line.split_whitespace().next().unwrap_or_default();
            let entries: Vec<(IpNet, &str)> = if let Ok(net) = parse_net(first) {
                let name = line[first.len()..].trim();
                if name.is_empty() {
                    return Err(format!("{origin}:{}: expected `ADDRESS NAME`", n + 1));
                }
                vec![(net, name)]
            } else {
                old_lines.push(n + 1);
                parse_old_foreign_line(line).map_err(|m| format!("{origin}:{}: {m}", n + 1))?
            };
            for (net, name) in entries {
                if net.prefix_len() == net.max_prefix_len() {
                    list.exact.insert(net.addr(), name.to_owned());
                } else {
                    list.blocks.push((net, name.to_owned()));
                }
            }
        }
        list.blocks
            .sort_by_key(|b| std::cmp::Reverse(b.0.prefix_len()));
        if !old_lines.is_empty() {
            list.warnings.push(format!(
                "{origin}: line(s) {} use the old tool's order `NAME<TAB>ADDRESS...`: read as \
                 before; the current order is `ADDRESS NAME`, one address or CIDR block per line",
                line_list(&old_lines)
            ));
        }
        Ok(list)
    }

    /// Reads the file; the warnings about old constructs are logged here, once per load.
    pub fn load(path: &Path) -> Result<ForeignList, String> {
        let text = read(path)?;
        let list = ForeignList::parse(&text, &path.display().to_string())?;
        for w in &list.warnings {
            tracing::warn!("{w}");
        }
        Ok(list)
    }

    /// What changed meaning since the old tool (one line per construct), for the log and
    /// `check-config`.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
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

/// What the configured files hold in the old tool's formats (one line per construct whose
/// meaning changed), for `check-config`. Errors are the validation's business: none here.
pub fn old_format_warnings(cfg: &crate::config::Config) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(p) = &cfg.enrich.foreign_file
        && let Ok(list) = read(p).and_then(|t| ForeignList::parse(&t, &p.display().to_string()))
    {
        out.extend(list.warnings);
    }
    // The allowed archdomains of the daily compliance mail (an old archdomain.csv works).
    if let Some(p) = &cfg.reports.allowed_archdomains_file
        && let Ok(list) = read(p)
            .and_then(|t| crate::enrich::rules::AllowedList::parse(&t, &p.display().to_string()))
    {
        out.extend(list.warnings);
    }
    out
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

    /// The old tool's `NAME<TAB>ADDRESS...` lines (fixture written from
    /// `convert-dat-to-json.py::read_foreign_ips`), mixed with a line in the current order.
    #[test]
    fn foreign_list_reads_the_old_order_with_one_warning() {
        let list = ForeignList::parse(
            include_str!("../../tests/fixtures/old/foreign-ips.txt"),
            "foreign-ips.txt",
        )
        .unwrap();
        assert_eq!(list.lookup(ip("172.16.0.23")), Some("AWS-DNS-SERVER"));
        assert_eq!(list.lookup(ip("204.246.163.231")), Some("AWS-EC2-SERVICES"));
        assert_eq!(list.lookup(ip("52.94.1.2")), Some("AWS services"));
        assert_eq!(list.lookup(ip("198.51.100.7")), Some("PARTNER API"));
        assert_eq!(list.lookup(ip("198.51.100.8")), Some("PARTNER API"));
        assert_eq!(list.len(), 5);
        assert_eq!(
            list.warnings(),
            [
                "foreign-ips.txt: line(s) 2, 3, 6 use the old tool's order `NAME<TAB>ADDRESS...`: \
              read as before; the current order is `ADDRESS NAME`, one address or CIDR block per \
              line"
            ]
        );
        // The current order alone: no warning.
        let list = ForeignList::parse("10.0.0.2 dns\n", "f").unwrap();
        assert_eq!(list.warnings(), [] as [String; 0]);
        // Old lines without tabs split at white space; errors name the line.
        let list = ForeignList::parse("ntp-pool 192.0.2.1 192.0.2.2\n", "f").unwrap();
        assert_eq!(list.lookup(ip("192.0.2.2")), Some("ntp-pool"));
        assert_eq!(
            ForeignList::parse("# x\nAWS-DNS\n", "f").unwrap_err(),
            "f:2: `AWS-DNS` is not an address: expected `ADDRESS NAME` or the old \
             `NAME<TAB>ADDRESS...`"
        );
        assert_eq!(
            ForeignList::parse("10.0.0.300 dns\n", "f").unwrap_err(),
            "f:1: neither `10.0.0.300` nor `dns` is an address: expected `ADDRESS NAME` or the \
             old `NAME<TAB>ADDRESS...`"
        );
        assert_eq!(
            ForeignList::parse("AWS-DNS\t172.16.0.23\tnot-an-ip\n", "f").unwrap_err(),
            "f:1: neither `AWS-DNS` nor `not-an-ip` is an address: expected `ADDRESS NAME` or \
             the old `NAME<TAB>ADDRESS...`"
        );
        // Many old lines: ten quoted, the rest counted.
        let many: String = (0..12).map(|i| format!("n{i}\t10.0.0.{i}\n")).collect();
        let list = ForeignList::parse(&many, "f").unwrap();
        assert!(
            list.warnings()[0]
                .starts_with("f: line(s) 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 and 2 more use the old"),
            "{}",
            list.warnings()[0]
        );
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
