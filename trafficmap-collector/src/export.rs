//! Exports of a map for other tools: LucidChart's process-diagram CSV (a page row, shape rows,
//! then line rows — the manual SQL-to-LucidChart workflow, automated), draw.io's CSV import
//! (shapes with references to their targets), and Graphviz DOT (clustered by archdomain and
//! env in the instances view).

use std::{collections::BTreeMap, fmt::Write as _};

use trafficmap_model::{
    map::{Link, Map, Node, NodeKind, View},
    services::port_label,
};

/// Export formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// LucidChart process diagram CSV (Import Data > Process Diagram).
    Csv,
    /// draw.io CSV (Arrange > Insert > Advanced > CSV).
    Drawio,
    /// Graphviz DOT.
    Dot,
    /// The map itself.
    Json,
    /// The old traffic-map tool's instances/clusters JSON, named `<view>-YYYY-MM-DD.json`
    /// when the output is a directory (its viewer and scripts read it; see docs/migrating.md).
    /// Command line only: it needs the instances of the range even for the clusters file.
    TrafficMap,
}

impl Format {
    pub fn parse(s: &str) -> Result<Format, String> {
        match s {
            "csv" | "lucid" => Ok(Format::Csv),
            "drawio" => Ok(Format::Drawio),
            "dot" => Ok(Format::Dot),
            "json" => Ok(Format::Json),
            _ => Err(format!(
                "unknown format `{s}`: expected csv, drawio, dot or json"
            )),
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Csv | Format::Drawio => "text/csv; charset=utf-8",
            Format::Dot => "text/vnd.graphviz; charset=utf-8",
            Format::Json | Format::TrafficMap => "application/json",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Drawio => "drawio.csv",
            Format::Dot => "dot",
            Format::Json | Format::TrafficMap => "json",
        }
    }
}

pub fn export(map: &Map, format: Format) -> Vec<u8> {
    match format {
        Format::Csv => lucid_csv(map).into_bytes(),
        Format::Drawio => drawio_csv(map).into_bytes(),
        Format::Dot => dot(map).into_bytes(),
        Format::Json => map.to_json_pretty(),
        // The instances file of the map's nodes (`query::export_map` renders the instances view
        // for it and coalesces the clusters file); serialising these plain structs cannot fail.
        Format::TrafficMap => {
            serde_json::to_vec_pretty(&crate::traffic_map::instances(map)).unwrap_or_default()
        }
    }
}

/// Bytes for people: `1.2 GB` (decimal units, as network people count).
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Exact numbers with thousands separators: `4,200,512`.
pub fn grouped(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A CSV cell a spreadsheet would not evaluate (OWASP's advice on CSV injection): text starting
/// with `=`, `+`, `-`, `@`, TAB or CR gets a leading `'`. Numbers (`-12`, `3.5`) are left alone,
/// so a negative number stays a number. Names come from reports, EC2 tags and DNS: any of them
/// may be hostile.
pub fn safe_cell(cell: &str) -> std::borrow::Cow<'_, str> {
    let risky = matches!(
        cell.as_bytes().first(),
        Some(b'=' | b'+' | b'-' | b'@' | b'\t' | b'\r')
    );
    if risky && !is_number(cell) {
        std::borrow::Cow::Owned(format!("'{cell}"))
    } else {
        std::borrow::Cow::Borrowed(cell)
    }
}

/// `-?digits(.digits)?`: what our own numeric columns hold.
fn is_number(s: &str) -> bool {
    let s = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = s.split_once('.').unwrap_or((s, "0"));
    !int.is_empty()
        && !frac.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit())
}

/// One CSV record, every cell through [`safe_cell`].
fn safe_record<const N: usize>(
    w: &mut csv::Writer<&mut Vec<u8>>,
    cells: [&str; N],
) -> csv::Result<()> {
    w.write_record(cells.iter().map(|c| safe_cell(c).into_owned()))
}

/// Writes CSV rows through the `csv` crate into memory, after `head` (lines written as they
/// are, such as draw.io's `#` directives). Fields are quoted only where they need it, and
/// lines end in `\n` as these exports always have (the crate's default is `\r\n`).
fn csv_text(
    head: &str,
    rows: impl FnOnce(&mut csv::Writer<&mut Vec<u8>>) -> csv::Result<()>,
) -> String {
    let mut buf = head.as_bytes().to_vec();
    let mut w = csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(&mut buf);
    // Into memory, with rows of one length per export: the crate has no way to fail here.
    rows(&mut w)
        .and_then(|()| Ok(w.flush()?))
        .expect("CSV written to memory");
    drop(w);
    // Every field is a `&str`, so the bytes are UTF-8.
    String::from_utf8(buf).expect("CSV of UTF-8 fields")
}

/// The link's ports with the names the map gives them (issue 12 item 4): `5432/postgresql`,
/// a bare number for a port without one.
fn ports(l: &Link) -> String {
    l.server_ports
        .iter()
        .enumerate()
        .map(|(i, p)| port_label(*p, l.services.get(i).map(String::as_str)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The ports each node served, named as the map's links name them: draw.io's rows have no
/// link labels, so the node carries them (issue 12 item 4).
fn served_ports(map: &Map) -> BTreeMap<&str, String> {
    let mut names: BTreeMap<u16, &str> = BTreeMap::new();
    for l in &map.links {
        for (p, n) in l.server_ports.iter().zip(&l.services) {
            if !n.is_empty() {
                names.entry(*p).or_insert(n);
            }
        }
    }
    map.nodes
        .iter()
        .map(|n| {
            let ports = n
                .server_ports
                .iter()
                .map(|p| port_label(*p, names.get(p).copied()))
                .collect::<Vec<_>>()
                .join(" ");
            (n.id.as_str(), ports)
        })
        .collect()
}

fn node_details(n: &Node) -> String {
    let mut parts = Vec::new();
    match (&n.archdomain, &n.env) {
        (Some(a), Some(e)) => parts.push(format!("{a} ({e})")),
        (Some(a), None) => parts.push(a.clone()),
        (None, Some(e)) => parts.push(e.clone()),
        (None, None) => {}
    }
    if n.members > 1 {
        parts.push(format!("{} members", n.members));
    } else if let Some(a) = n.addresses.first() {
        parts.push(a.clone());
    }
    if let Some(t) = &n.instance_type {
        parts.push(t.clone());
    }
    // Issue 11: a workload's kind and namespace (absent on other nodes).
    if let Some(ns) = &n.namespace {
        parts.push(match &n.workload_kind {
            Some(k) => format!("{k} in {ns}"),
            None => format!("namespace {ns}"),
        });
    }
    parts.join(" | ")
}

fn link_text(l: &Link) -> String {
    let text = format!(
        "{} -> {} / <- {}",
        ports(l),
        human_bytes(l.bytes_to_target),
        human_bytes(l.bytes_to_source)
    );
    // Issue 11: the Service address the clients connected to.
    if l.service_addresses.is_empty() {
        text
    } else {
        format!("{text} via {}", l.service_addresses.join(", "))
    }
}

fn lucid_shape(kind: NodeKind) -> &'static str {
    match kind {
        NodeKind::Host | NodeKind::Cluster | NodeKind::SecurityGroup | NodeKind::Workload => {
            "Process"
        }
        NodeKind::Unmonitored => "Alternate Process",
        NodeKind::External => "Terminator",
    }
}

fn lucid_csv(map: &Map) -> String {
    let title = format!(
        "trafficmap {} {} to {}",
        map.view.as_str(),
        map.from.format("%Y-%m-%d %H:%M"),
        map.to.format("%Y-%m-%d %H:%M")
    );
    csv_text("", |w| {
        safe_record(
            w,
            [
                "Id",
                "Name",
                "Shape Library",
                "Page ID",
                "Contained By",
                "Line Source",
                "Line Destination",
                "Source Arrow",
                "Destination Arrow",
                "Text Area 1",
                "Text Area 2",
                "Text Area 3",
            ],
        )?;
        safe_record(w, ["1", "Page", "", "", "", "", "", "", "", &title, "", ""])?;
        let mut ids: BTreeMap<&str, usize> = BTreeMap::new();
        let mut next = 2;
        for n in &map.nodes {
            ids.insert(&n.id, next);
            safe_record(
                w,
                [
                    &next.to_string(),
                    lucid_shape(n.kind),
                    "Flowchart Shapes",
                    "1",
                    "",
                    "",
                    "",
                    "",
                    "",
                    &n.label,
                    &node_details(n),
                    &n.id,
                ],
            )?;
            next += 1;
        }
        for l in &map.links {
            let bytes = format!(
                "{} bytes to server, {} bytes back",
                grouped(l.bytes_to_target),
                grouped(l.bytes_to_source)
            );
            safe_record(
                w,
                [
                    &next.to_string(),
                    "Line",
                    "",
                    "1",
                    "",
                    &ids[l.source.as_str()].to_string(),
                    &ids[l.target.as_str()].to_string(),
                    "None",
                    "Arrow",
                    &link_text(l),
                    &bytes,
                    &format!("observed by {:?}", l.observed_by).to_lowercase(),
                ],
            )?;
            next += 1;
        }
        Ok(())
    })
}

/// draw.io's CSV import directives: labels, styles, how rows connect, the layout.
const DRAWIO_HEAD: &str = concat!(
    // Plain text labels (`html=0`): a name is shown as written, never interpreted as HTML.
    // The details stay a shape property (Edit Data).
    "# label: %name%\n",
    "# style: whiteSpace=wrap;html=0;rounded=1;fillColor=%fill%;strokeColor=#666666;\n",
    "# namespace: trafficmap-\n",
    "# connect: {\"from\": \"targets\", \"to\": \"id\", \"invert\": false, \"style\": \"curved=1;endArrow=blockThin;endFill=1;fontSize=11;\"}\n",
    "# width: auto\n# height: auto\n# padding: 12\n",
    "# ignore: id,targets,fill\n",
    "# nodespacing: 40\n# levelspacing: 120\n# edgespacing: 40\n",
    "# layout: horizontalflow\n",
);

fn drawio_csv(map: &Map) -> String {
    let mut targets: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for l in &map.links {
        if l.source != l.target {
            targets.entry(&l.source).or_default().push(&l.target);
        }
    }
    csv_text(DRAWIO_HEAD, |w| {
        safe_record(
            w,
            [
                "id",
                "name",
                "details",
                "fill",
                "bytes_in",
                "bytes_out",
                "serves",
                "targets",
            ],
        )?;
        let serves = served_ports(map);
        for n in &map.nodes {
            let fill = match n.kind {
                NodeKind::Host => "#dae8fc",
                NodeKind::Unmonitored => "#f5f5f5",
                NodeKind::External => "#fff2cc",
                NodeKind::Cluster => "#d5e8d4",
                NodeKind::SecurityGroup => "#e1d5e7",
                NodeKind::Workload => "#ffe6cc",
            };
            let t = targets
                .get(n.id.as_str())
                .map(|v| v.join(","))
                .unwrap_or_default();
            safe_record(
                w,
                [
                    &n.id,
                    &n.label,
                    &node_details(n),
                    fill,
                    &n.bytes_in.to_string(),
                    &n.bytes_out.to_string(),
                    serves.get(n.id.as_str()).map_or("", String::as_str),
                    &t,
                ],
            )?;
        }
        Ok(())
    })
}

fn dot_id(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn dot(map: &Map) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph trafficmap {{");
    let _ = writeln!(
        out,
        "  label={};\n  labelloc=t;\n  rankdir=LR;\n  node [fontname=\"Helvetica\", fontsize=10];\n  edge [fontname=\"Helvetica\", fontsize=9];",
        dot_id(&format!(
            "trafficmap {} {} to {}",
            map.view.as_str(),
            map.from.format("%Y-%m-%d %H:%M"),
            map.to.format("%Y-%m-%d %H:%M")
        ))
    );
    if map.view == View::Instances {
        dot_clustered_nodes(&mut out, map);
    } else {
        for n in &map.nodes {
            let _ = writeln!(out, "  {}", dot_node(n));
        }
    }
    for l in &map.links {
        let total = l.bytes_to_target.saturating_add(l.bytes_to_source);
        let width = 1.0 + (total.max(1) as f64).log10() / 2.0;
        let _ = writeln!(
            out,
            "  {} -> {} [label={}, penwidth={width:.1}{}];",
            dot_id(&l.source),
            dot_id(&l.target),
            dot_id(&link_text(l)),
            if l.observed_by == trafficmap_model::map::ObservedBy::Both {
                ""
            } else {
                ", style=dashed"
            }
        );
    }
    out.push_str("}\n");
    out
}

fn dot_node(n: &Node) -> String {
    let (shape, style) = match n.kind {
        NodeKind::Host => ("box", "rounded,filled\", fillcolor=\"#dae8fc"),
        NodeKind::Unmonitored => ("box", "rounded,dashed"),
        NodeKind::External => ("ellipse", "filled\", fillcolor=\"#fff2cc"),
        NodeKind::Cluster => ("box3d", "filled\", fillcolor=\"#d5e8d4"),
        NodeKind::SecurityGroup => ("component", "filled\", fillcolor=\"#e1d5e7"),
        NodeKind::Workload => ("box", "rounded,filled\", fillcolor=\"#ffe6cc"),
    };
    let details = node_details(n);
    let label = if details.is_empty() {
        n.label.clone()
    } else {
        format!("{}\n{}", n.label, details)
    };
    format!(
        "{} [label={}, shape={shape}, style=\"{style}\"];",
        dot_id(&n.id),
        dot_id(&label)
    )
}

/// Subgraphs per archdomain x env: the seed tool's grouping, in Graphviz. Nodes with neither
/// stay outside.
fn dot_clustered_nodes(out: &mut String, map: &Map) {
    let mut groups: BTreeMap<(String, String), Vec<&Node>> = BTreeMap::new();
    let mut loose = Vec::new();
    for n in &map.nodes {
        match (&n.archdomain, &n.env) {
            (None, None) => loose.push(n),
            (a, e) => groups
                .entry((a.clone().unwrap_or_default(), e.clone().unwrap_or_default()))
                .or_default()
                .push(n),
        }
    }
    for (i, ((a, e), nodes)) in groups.iter().enumerate() {
        let _ = writeln!(out, "  subgraph cluster_{i} {{");
        let label = match (a.is_empty(), e.is_empty()) {
            (false, false) => format!("{a} ({e})"),
            (false, true) => a.clone(),
            _ => e.clone(),
        };
        let _ = writeln!(
            out,
            "    label={};\n    style=\"rounded\";\n    color=\"#999999\";",
            dot_id(&label)
        );
        for n in nodes {
            let _ = writeln!(out, "    {}", dot_node(n));
        }
        let _ = writeln!(out, "  }}");
    }
    for n in loose {
        let _ = writeln!(out, "  {}", dot_node(n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> Map {
        Map::from_json(include_bytes!("../../golden/maps/instances-20261123.json")).unwrap()
    }

    #[test]
    fn numbers() {
        assert_eq!(grouped(4_200_512), "4,200,512");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1_000), "1,000");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(4_200_512), "4.2 MB");
    }

    #[test]
    fn lucid_csv_has_page_then_shapes_then_lines() {
        let m = map();
        let text = lucid_csv(&m);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1 + 1 + m.nodes.len() + m.links.len());
        assert!(lines[1].starts_with("1,Page,"));
        // Ids count up from 1, shapes before lines, lines refer to shape ids.
        for (i, l) in lines[1..].iter().enumerate() {
            assert!(l.starts_with(&format!("{},", i + 1)), "{l}");
        }
        let api = lines
            .iter()
            .position(|l| l.ends_with(",i-0a1b2c3d4e5f60718"))
            .unwrap();
        let db = lines
            .iter()
            .position(|l| l.ends_with(",i-0d1b2c3d4e5f60721"))
            .unwrap();
        let want = format!(
            ",Line,,1,,{api},{db},None,Arrow,5432/postgresql -> 1.0 MB / <- 4.2 MB,\"1,000,003 bytes to server, 4,200,512 bytes back\",observed by both"
        );
        assert!(text.contains(&want), "{text}");
    }

    #[test]
    fn cells_a_spreadsheet_would_evaluate_are_neutralised() {
        for (cell, want) in [
            ("=HYPERLINK(\"http://x/\")", "'=HYPERLINK(\"http://x/\")"),
            ("+1+1", "'+1+1"),
            ("-2+3", "'-2+3"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\tx", "'\tx"),
            ("\rx", "'\rx"),
            ("-12", "-12"),
            ("-0.5", "-0.5"),
            ("-", "'-"),
            ("-.5", "'-.5"),
            ("-inf", "'-inf"),
            ("api-1", "api-1"),
            ("", ""),
        ] {
            assert_eq!(safe_cell(cell), want, "{cell:?}");
        }
        let mut m = map();
        m.nodes[0].label = "=cmd|' /C calc'!A0".into();
        m.nodes[0].archdomain = Some("@evil".into());
        m.nodes[0].env = None;
        let lucid = lucid_csv(&m);
        assert!(
            lucid.contains(",'=cmd|' /C calc'!A0,'@evil | 10.9.0.5,host:batch-1\n"),
            "{lucid}"
        );
        let drawio = drawio_csv(&m);
        assert!(
            drawio.contains("host:batch-1,'=cmd|' /C calc'!A0,'@evil | 10.9.0.5,"),
            "{drawio}"
        );
        // draw.io shows labels as text.
        assert!(drawio.starts_with("# label: %name%\n# style: whiteSpace=wrap;html=0;"));
        assert!(!drawio.contains("html=1"));
    }

    #[test]
    fn drawio_rows_reference_targets() {
        let text = drawio_csv(&map());
        let row = text
            .lines()
            .find(|l| l.starts_with("host:batch-1,"))
            .unwrap();
        assert_eq!(
            row,
            "host:batch-1,batch-1,offline/batch (stage) | 10.9.0.5,#dae8fc,2000000,130000,,\"i-0d1b2c3d4e5f60721,ip:10.9.0.40\""
        );
    }

    /// Ports carry the names the map gives them (issue 12 item 4); a map without names (an
    /// older file) shows bare numbers.
    #[test]
    fn exports_show_ports_with_service_names() {
        let m = map();
        let drawio = drawio_csv(&m);
        assert!(
            drawio.contains("\nid,name,details,fill,bytes_in,bytes_out,serves,targets\n"),
            "{drawio}"
        );
        let api = drawio
            .lines()
            .find(|l| l.starts_with("i-0a1b2c3d4e5f60718,"))
            .unwrap();
        assert!(api.contains(",443/https 9100/hp-pdl-datastr,"), "{api}");
        let db = drawio
            .lines()
            .find(|l| l.starts_with("i-0d1b2c3d4e5f60721,"))
            .unwrap();
        assert!(db.contains(",5432/postgresql,"), "{db}");
        assert!(dot(&m).contains("[label=\"5432/postgresql -> 1.0 MB / <- 4.2 MB\""));
        let mut old = m.clone();
        for l in &mut old.links {
            l.services.clear();
        }
        assert!(lucid_csv(&old).contains(",Arrow,5432 -> 1.0 MB / <- 4.2 MB,"));
        assert!(
            drawio_csv(&old)
                .lines()
                .any(|l| l.starts_with("i-0d1b2c3d4e5f60721,") && l.contains(",5432,"))
        );
        // A port without a name next to one with a name.
        let mut mixed = m.clone();
        let l = mixed
            .links
            .iter_mut()
            .find(|l| l.server_ports == [5432])
            .unwrap();
        l.server_ports = vec![5432, 49999];
        l.services = vec!["postgresql".into(), String::new()];
        assert!(lucid_csv(&mixed).contains(",Arrow,5432/postgresql 49999 -> "));
    }

    #[test]
    fn csv_fields_are_quoted_only_where_needed() {
        let mut m = map();
        m.nodes[0].label = "db, \"primary\"\nsecond line".into();
        let text = drawio_csv(&m);
        let row = format!("{},\"db, \"\"primary\"\"\nsecond line\",", m.nodes[0].id);
        assert!(text.contains(&row), "{text}");
        assert!(!text.contains('\r'), "{text}");
    }

    #[test]
    fn dot_is_clustered_and_balanced() {
        let text = dot(&map());
        assert!(text.contains("subgraph cluster_"), "{text}");
        assert!(text.contains("label=\"online/api (prod)\""), "{text}");
        assert!(text.contains("\"ip:203.0.113.50\" -> \"i-0a1b2c3d4e5f60718\" [label=\"443/https -> 250.0 kB / <- 3.0 MB\""), "{text}");
        assert_eq!(text.matches('{').count(), text.matches('}').count());
    }
}
