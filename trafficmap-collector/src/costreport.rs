//! Cost reports, like the old tool's `*-costs`: what the fleet's instances cost per hour and per
//! year, by env, archdomain, cluster, instance type and lifecycle, with the source of every
//! price (spot history, AWS Price List API, price table) and the instances without one.
//!
//! Pure: an instances map in, a report out ([`build`]); printed as text, HTML, JSON or CSV. The
//! command line (`report costs`) and the daily mail use the same report. $/year is $/hour ×
//! 8760: the price of the day, all year round.
//!
//! Sums are in integer micro-dollars (the maps round prices to the micro-dollar), so they are
//! exact, independent of the order of the nodes, and saturate instead of overflowing; a price
//! that is not one (NaN, infinite, negative, above `MAX_PRICE_PER_HOUR`) counts as no price.

use std::{collections::BTreeMap, fmt::Write as _};

use chrono::{DateTime, Utc};
use serde::Serialize;
use trafficmap_model::map::{MAX_PRICE_PER_HOUR, Map, Node, NodeKind};

use crate::query::{Cell, Table};

/// Hours in the report's year.
pub const HOURS_PER_YEAR: u64 = 8760;
/// Instances without a price listed by name at most (all are counted).
pub const MAX_UNPRICED_LISTED: usize = 1_000;

/// What the costs are summed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Dimension {
    Env,
    Archdomain,
    /// archdomain × env, named like the clusters view (`online/api (prod)`).
    Cluster,
    InstanceType,
    /// `on-demand` or `spot`.
    Lifecycle,
}

impl Dimension {
    pub const ALL: [Dimension; 5] = [
        Dimension::Env,
        Dimension::Archdomain,
        Dimension::Cluster,
        Dimension::InstanceType,
        Dimension::Lifecycle,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Dimension::Env => "env",
            Dimension::Archdomain => "archdomain",
            Dimension::Cluster => "cluster",
            Dimension::InstanceType => "instance-type",
            Dimension::Lifecycle => "lifecycle",
        }
    }

    const fn header(self) -> &'static str {
        match self {
            Dimension::Env => "ENV",
            Dimension::Archdomain => "ARCHDOMAIN",
            Dimension::Cluster => "CLUSTER",
            Dimension::InstanceType => "INSTANCE TYPE",
            Dimension::Lifecycle => "LIFECYCLE",
        }
    }

    /// The node's key; `(none)` when it has no such attribute.
    fn key(self, n: &Node) -> String {
        let none = || "(none)".to_owned();
        match self {
            Dimension::Env => n.env.clone().unwrap_or_else(none),
            Dimension::Archdomain => n.archdomain.clone().unwrap_or_else(none),
            Dimension::Cluster => {
                crate::render::cluster_label(n.archdomain.as_deref(), n.env.as_deref())
            }
            Dimension::InstanceType => n.instance_type.clone().unwrap_or_else(none),
            Dimension::Lifecycle => n.lifecycle.clone().unwrap_or_else(none),
        }
    }
}

/// One group of instances.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    pub key: String,
    /// Instances in the group, priced or not.
    pub instances: u64,
    /// Of which without a price (not counted in the sums).
    pub no_price: u64,
    /// Sum over the priced instances; `None` when none is priced.
    pub usd_per_hour: Option<f64>,
    pub usd_per_year: Option<f64>,
}

/// The rows of one dimension, most expensive first.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DimensionRows {
    pub dimension: Dimension,
    pub rows: Vec<Row>,
}

/// An instance the report could not price.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Unpriced {
    pub id: String,
    pub label: String,
    pub instance_type: Option<String>,
    pub lifecycle: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CostReport {
    /// The map's range.
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// $/year = $/hour × this.
    pub hours_per_year: u64,
    /// Every instance (hosts with agents and known hosts without), priced and not.
    pub total: Row,
    /// Per price source (`spot-history`, `price-list-api`, `price-table`).
    pub by_source: Vec<Row>,
    pub dimensions: Vec<DimensionRows>,
    /// The instances without a price (the first [`MAX_UNPRICED_LISTED`]; `total.no_price`
    /// counts them all).
    pub unpriced: Vec<Unpriced>,
    /// The map's warnings (enrichment that failed, the Price List API not answering...).
    pub warnings: Vec<String>,
}

/// Micro-dollars: exact sums.
#[derive(Default)]
struct Acc {
    instances: u64,
    no_price: u64,
    priced: u64,
    micros_per_hour: u64,
}

impl Acc {
    fn add(&mut self, micros: Option<u64>) {
        self.instances = self.instances.saturating_add(1);
        match micros {
            Some(m) => {
                self.priced = self.priced.saturating_add(1);
                self.micros_per_hour = self.micros_per_hour.saturating_add(m);
            }
            None => self.no_price = self.no_price.saturating_add(1),
        }
    }

    fn row(&self, key: String) -> Row {
        let usd = |m: u64| m as f64 / 1e6;
        let priced = self.priced > 0;
        Row {
            key,
            instances: self.instances,
            no_price: self.no_price,
            usd_per_hour: priced.then(|| usd(self.micros_per_hour)),
            usd_per_year: priced.then(|| usd(self.micros_per_hour.saturating_mul(HOURS_PER_YEAR))),
        }
    }
}

/// A node's price in micro-dollars, if it is a price.
fn micros(n: &Node) -> Option<u64> {
    let p = n.price_per_hour?;
    (p.is_finite() && (0.0..=MAX_PRICE_PER_HOUR).contains(&p)).then(|| (p * 1e6).round() as u64)
}

/// Whether a node is an instance: a host with an agent or a known host without one (not an
/// external address, nor a group of another view).
fn is_instance(n: &Node) -> bool {
    matches!(n.kind, NodeKind::Host | NodeKind::Unmonitored)
}

fn sorted(groups: BTreeMap<String, Acc>) -> Vec<Row> {
    let mut rows: Vec<Row> = groups.into_iter().map(|(k, a)| a.row(k)).collect();
    // Most expensive first; equal costs by key (the map's order is the key's).
    rows.sort_by(|a, b| {
        b.usd_per_year
            .unwrap_or(-1.0)
            .total_cmp(&a.usd_per_year.unwrap_or(-1.0))
            .then_with(|| a.key.cmp(&b.key))
    });
    rows
}

/// The cost report of an instances map, by the given dimensions (in that order, each once).
pub fn build(map: &Map, dims: &[Dimension]) -> CostReport {
    let mut dims_seen = Vec::new();
    for d in dims {
        if !dims_seen.contains(d) {
            dims_seen.push(*d);
        }
    }
    let mut total = Acc::default();
    let mut by_source: BTreeMap<String, Acc> = BTreeMap::new();
    let mut by_dim: Vec<BTreeMap<String, Acc>> =
        dims_seen.iter().map(|_| BTreeMap::new()).collect();
    let mut unpriced = Vec::new();
    for n in map.nodes.iter().filter(|n| is_instance(n)) {
        let m = micros(n);
        total.add(m);
        if m.is_some() {
            let source = n.price_source.clone().unwrap_or_else(|| "unknown".into());
            by_source.entry(source).or_default().add(m);
        } else if unpriced.len() < MAX_UNPRICED_LISTED {
            unpriced.push(Unpriced {
                id: n.id.clone(),
                label: n.label.clone(),
                instance_type: n.instance_type.clone(),
                lifecycle: n.lifecycle.clone(),
            });
        }
        for (d, groups) in dims_seen.iter().zip(by_dim.iter_mut()) {
            groups.entry(d.key(n)).or_default().add(m);
        }
    }
    CostReport {
        from: map.from,
        to: map.to,
        hours_per_year: HOURS_PER_YEAR,
        total: total.row("total".into()),
        by_source: sorted(by_source),
        dimensions: dims_seen
            .into_iter()
            .zip(by_dim)
            .map(|(dimension, groups)| DimensionRows {
                dimension,
                rows: sorted(groups),
            })
            .collect(),
        unpriced,
        warnings: map.warnings.clone(),
    }
}

/// `$0.4833/hour, $4,233.71/year` (4 and 2 decimals).
fn money(r: &Row) -> String {
    let show = |v: Option<f64>, d| Cell::Usd(v, d).for_people();
    format!(
        "${}/hour, ${}/year",
        show(r.usd_per_hour, 4),
        show(r.usd_per_year, 2)
    )
}

impl CostReport {
    fn range(&self) -> String {
        format!(
            "{} .. {}",
            self.from.format("%Y-%m-%d %H:%M UTC"),
            self.to.format("%Y-%m-%d %H:%M UTC")
        )
    }

    fn summary(&self) -> String {
        let t = &self.total;
        let priced = t.instances.saturating_sub(t.no_price);
        format!(
            "{} instances, {priced} priced: {}; no price: {} instances",
            t.instances,
            money(t),
            t.no_price
        )
    }

    /// (heading, table) of each section after the summary: sources, then the dimensions.
    fn tables(&self) -> Vec<(String, Table)> {
        let table = |first: &'static str, rows: &[Row]| Table {
            headers: vec![first, "INSTANCES", "NO PRICE", "$/HOUR", "$/YEAR"],
            right: vec![false, true, true, true, true],
            rows: rows
                .iter()
                .map(|r| {
                    vec![
                        Cell::Text(r.key.clone()),
                        Cell::Count(r.instances),
                        Cell::Count(r.no_price),
                        Cell::Usd(r.usd_per_hour, 4),
                        Cell::Usd(r.usd_per_year, 2),
                    ]
                })
                .collect(),
        };
        let mut out = vec![(
            "By price source".to_owned(),
            table("SOURCE", &self.by_source),
        )];
        for d in &self.dimensions {
            out.push((
                format!("By {}", d.dimension.as_str()),
                table(d.dimension.header(), &d.rows),
            ));
        }
        out
    }

    fn unpriced_line(u: &Unpriced) -> String {
        format!(
            "{} ({}): {}, {}",
            u.label,
            u.id,
            u.instance_type.as_deref().unwrap_or("no instance type"),
            u.lifecycle.as_deref().unwrap_or("no lifecycle")
        )
    }

    /// Plain text: aligned tables, no terminal escapes (names are sanitised like every CLI
    /// table).
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "Instance costs, {}", self.range());
        let _ = writeln!(
            s,
            "$/year = $/hour x {} (the day's price all year round).",
            self.hours_per_year
        );
        let _ = writeln!(s, "Total: {}.", self.summary());
        for (heading, table) in self.tables() {
            let _ = writeln!(s, "\n{heading}:");
            let mut buf = Vec::new();
            let _ = table.print(&mut buf);
            s.push_str(&String::from_utf8_lossy(&buf));
        }
        if self.total.no_price > 0 {
            let _ = writeln!(s, "\nNo price ({} instances):", self.total.no_price);
            for u in &self.unpriced {
                let line = Cell::Text(Self::unpriced_line(u)).for_people();
                let _ = writeln!(s, "  {line}");
            }
            let more = self
                .total
                .no_price
                .saturating_sub(self.unpriced.len() as u64);
            if more > 0 {
                let _ = writeln!(s, "  ... and {more} more");
            }
        }
        if !self.warnings.is_empty() {
            let _ = writeln!(s, "\nWarnings:");
            for w in &self.warnings {
                let _ = writeln!(s, "  {}", Cell::Text(w.clone()).for_people());
            }
        }
        s
    }

    /// An HTML fragment (for a mail body): every name escaped.
    pub fn to_html(&self) -> String {
        let e = |t: &str| html_escape::encode_text(t).into_owned();
        let mut s = String::new();
        let _ = writeln!(s, "<h2>Instance costs, {}</h2>", e(&self.range()));
        let _ = writeln!(
            s,
            "<p>$/year = $/hour &times; {} (the day's price all year round).</p>",
            self.hours_per_year
        );
        let _ = writeln!(s, "<p>Total: {}.</p>", e(&self.summary()));
        for (heading, table) in self.tables() {
            let _ = writeln!(s, "<h3>{}</h3>\n<table>\n<tr>", e(&heading));
            for h in &table.headers {
                let _ = write!(s, "<th>{}</th>", e(h));
            }
            let _ = writeln!(s, "</tr>");
            for r in &table.rows {
                s.push_str("<tr>");
                for (i, c) in r.iter().enumerate() {
                    let align = if table.right[i] {
                        " style=\"text-align:right\""
                    } else {
                        ""
                    };
                    let _ = write!(s, "<td{align}>{}</td>", e(&c.for_people()));
                }
                s.push_str("</tr>\n");
            }
            s.push_str("</table>\n");
        }
        if self.total.no_price > 0 {
            let _ = writeln!(
                s,
                "<h3>No price ({} instances)</h3>\n<ul>",
                self.total.no_price
            );
            for u in &self.unpriced {
                let _ = writeln!(s, "<li>{}</li>", e(&Self::unpriced_line(u)));
            }
            let more = self
                .total
                .no_price
                .saturating_sub(self.unpriced.len() as u64);
            if more > 0 {
                let _ = writeln!(s, "<li>... and {more} more</li>");
            }
            s.push_str("</ul>\n");
        }
        if !self.warnings.is_empty() {
            s.push_str("<h3>Warnings</h3>\n<ul>\n");
            for w in &self.warnings {
                let _ = writeln!(s, "<li>{}</li>", e(w));
            }
            s.push_str("</ul>\n");
        }
        s
    }

    /// One CSV table: `dimension,key,instances,no_price,usd_per_hour,usd_per_year`, the total
    /// first (dimension `total`), then the sources (`price-source`), then each dimension.
    /// Empty cells: no price. Text cells are neutralised for spreadsheets.
    pub fn to_csv(&self) -> String {
        let mut rows = Vec::new();
        let mut push = |dim: &str, r: &Row| {
            rows.push(vec![
                Cell::Text(dim.to_owned()),
                Cell::Text(r.key.clone()),
                Cell::Count(r.instances),
                Cell::Count(r.no_price),
                Cell::Usd(r.usd_per_hour, 4),
                Cell::Usd(r.usd_per_year, 2),
            ]);
        };
        push("total", &self.total);
        for r in &self.by_source {
            push("price-source", r);
        }
        for d in &self.dimensions {
            for r in &d.rows {
                push(d.dimension.as_str(), r);
            }
        }
        let table = Table {
            headers: vec![
                "dimension",
                "key",
                "instances",
                "no_price",
                "usd_per_hour",
                "usd_per_year",
            ],
            right: vec![false; 6],
            rows,
        };
        let mut buf = Vec::new();
        let _ = table.csv(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }
}

/// The UTC day before `now`'s: the last complete day.
pub fn yesterday(now: DateTime<Utc>) -> chrono::NaiveDate {
    now.date_naive().pred_opt().unwrap_or(now.date_naive())
}

/// `report costs`: the day's instances map, built like `export` and `query` build it (same
/// store, enrichment and prices), then the report on standard output.
pub async fn command(
    settings: &crate::cli::Settings,
    a: &crate::cli::CostsArgs,
) -> anyhow::Result<()> {
    use std::io::Write as _;
    let p = crate::query::Progress::new(a.progress);
    let range = crate::cli::RangeArgs {
        day: Some(a.day.unwrap_or_else(|| yesterday(Utc::now()))),
        ..crate::cli::RangeArgs::default()
    };
    let l = crate::query::load(settings, &range, &p).await?;
    let map = l.built.render(
        &l.enricher,
        trafficmap_model::map::View::Instances,
        Utc::now(),
    );
    let dims = if a.by.is_empty() {
        &Dimension::ALL[..]
    } else {
        &a.by[..]
    };
    let report = build(&map, dims);
    let out = match a.format {
        crate::cli::CostFormat::Text => report.to_text(),
        crate::cli::CostFormat::Html => report.to_html(),
        crate::cli::CostFormat::Json => report.to_json(),
        crate::cli::CostFormat::Csv => report.to_csv(),
    };
    std::io::stdout().lock().write_all(out.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use trafficmap_model::map::{MAP_SCHEMA, Totals, View};

    fn node(id: &str, kind: NodeKind, env: &str, itype: &str, price: Option<f64>) -> Node {
        Node {
            id: id.into(),
            label: id.into(),
            kind,
            env: Some(env.into()),
            archdomain: None,
            addresses: vec![],
            instance_id: None,
            instance_type: Some(itype.into()),
            availability_zone: None,
            region: None,
            lifecycle: Some("on-demand".into()),
            price_per_hour: price,
            price_source: price.map(|_| "price-table".into()),
            security_groups: vec![],
            processes: vec![],
            server_ports: vec![],
            members: 1,
            bytes_in: 0,
            bytes_out: 0,
            connections: 0,
            cost_usd: 0.0,
            labels: BTreeMap::new(),
            health: None,
            host: None,
            namespace: None,
            workload_kind: None,
            containers: vec![],
            hosts: vec![],
        }
    }

    fn map(nodes: Vec<Node>) -> Map {
        let t = "2026-11-23T00:00:00Z".parse().unwrap();
        Map {
            schema: MAP_SCHEMA.into(),
            view: View::Instances,
            from: t,
            to: t + chrono::TimeDelta::days(1),
            generated_at: t,
            nodes,
            links: vec![],
            totals: Totals::default(),
            warnings: vec![],
        }
    }

    /// NaN, infinities, negative and absurd prices (a hostile map file) are no price, never a
    /// sum's NaN or infinity; external addresses are not instances.
    #[test]
    fn prices_that_are_not_prices_count_as_none() {
        let nodes = vec![
            node("a", NodeKind::Host, "prod", "m", Some(0.5)),
            node("b", NodeKind::Host, "prod", "m", Some(f64::NAN)),
            node("c", NodeKind::Host, "prod", "m", Some(f64::INFINITY)),
            node("d", NodeKind::Unmonitored, "prod", "m", Some(-1.0)),
            node("e", NodeKind::Host, "prod", "m", Some(1e300)),
            node("f", NodeKind::External, "prod", "m", Some(7.0)),
        ];
        let r = build(&map(nodes), &[Dimension::Env]);
        assert_eq!(
            r.total,
            Row {
                key: "total".into(),
                instances: 5,
                no_price: 4,
                usd_per_hour: Some(0.5),
                usd_per_year: Some(4380.0),
            }
        );
        assert_eq!(
            r.unpriced.iter().map(|u| u.id.as_str()).collect::<Vec<_>>(),
            ["b", "c", "d", "e"]
        );
    }

    /// The highest price on a thousand instances still sums to a finite, exact amount.
    #[test]
    fn sums_stay_exact_and_finite() {
        let nodes: Vec<Node> = (0..1000)
            .map(|i| {
                node(
                    &format!("n{i}"),
                    NodeKind::Host,
                    "prod",
                    "x",
                    Some(MAX_PRICE_PER_HOUR),
                )
            })
            .collect();
        let r = build(&map(nodes), &[]);
        assert_eq!(r.total.usd_per_hour, Some(10_000_000.0));
        assert_eq!(r.total.usd_per_year, Some(87_600_000_000.0));
        // Saturation, not wrap-around, at the limit of the accumulator.
        let mut acc = Acc::default();
        acc.add(Some(u64::MAX));
        acc.add(Some(1));
        assert_eq!(acc.micros_per_hour, u64::MAX);
        assert!(acc.row("x".into()).usd_per_year.unwrap().is_finite());
    }

    #[test]
    fn html_escapes_names_and_dimensions_come_once_in_order() {
        let mut n = node("<b>", NodeKind::Host, "a&b", "<script>", None);
        n.label = "<img src=x>".into();
        let mut m = map(vec![n]);
        m.warnings = vec!["<warn>".into()];
        let r = build(
            &m,
            &[
                Dimension::InstanceType,
                Dimension::Env,
                Dimension::InstanceType,
            ],
        );
        assert_eq!(
            r.dimensions.iter().map(|d| d.dimension).collect::<Vec<_>>(),
            [Dimension::InstanceType, Dimension::Env]
        );
        let html = r.to_html();
        for raw in ["<b>", "<script>", "<img", "a&b", "<warn>"] {
            assert!(!html.contains(raw), "{raw} unescaped in {html}");
        }
        assert!(html.contains("<td>&lt;script&gt;</td>"), "{html}");
        assert!(html.contains("<td>a&amp;b</td>"), "{html}");
        assert!(
            html.contains("<li>&lt;img src=x&gt; (&lt;b&gt;): &lt;script&gt;, on-demand</li>"),
            "{html}"
        );
    }

    #[test]
    fn yesterday_is_the_last_complete_day() {
        let now: DateTime<Utc> = "2026-11-24T00:30:00Z".parse().unwrap();
        assert_eq!(yesterday(now).to_string(), "2026-11-23");
    }
}
