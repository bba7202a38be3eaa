//! The command-line questions: top flows, who calls what, cross-env traffic, archdomain
//! compliance, and map exports. They read the same store and use the same merge and enrichment
//! as the maps, so their numbers are the maps' numbers.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{IsTerminal as _, Write as _},
    net::IpAddr,
    sync::Arc,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use trafficmap_model::{
    bounds::sat_add,
    map::{NodeKind, View},
    services::{ServiceNames, port_label},
};

use crate::{
    cli::{
        ArchdomainArgs, CrossEnvArgs, ExportArgs, Filters, HostsArgs, Output, ProgressArgs,
        RangeArgs, Settings, SortBy, TopArgs, WhoCallsArgs,
    },
    config::Config,
    cost::usd,
    enrich::{
        Identity,
        dns::ReverseLookup,
        dns::SystemResolver,
        refresh::Enricher,
        rules::{AllowedList, AllowedPattern},
    },
    export::{Format, export, grouped},
    mapservice::{self, Built},
    render::{Priced, unnamed_addresses},
    store::Store,
    traffic_map,
};

/// Progress lines on standard error (when it is a terminal, or with `--progress`).
pub struct Progress {
    on: bool,
    start: Instant,
}

impl Progress {
    pub fn new(a: ProgressArgs) -> Progress {
        Progress {
            on: !a.quiet && (a.progress || std::io::stderr().is_terminal()),
            start: Instant::now(),
        }
    }

    pub fn step(&self, msg: impl std::fmt::Display) {
        if self.on {
            eprintln!("[{:>6.1}s] {msg}", self.start.elapsed().as_secs_f64());
        }
    }
}

pub fn resolve_range(r: &RangeArgs, now: DateTime<Utc>) -> Result<(DateTime<Utc>, DateTime<Utc>)> {
    if let Some(d) = r.day {
        return Ok(mapservice::day_range(d));
    }
    if let (Some(f), Some(t)) = (r.from, r.to) {
        let (f, t) = (f.with_timezone(&Utc), t.with_timezone(&Utc));
        if f >= t {
            bail!("--from {f} is not before --to {t}");
        }
        return Ok((f, t));
    }
    let last = r.last.unwrap_or(std::time::Duration::from_secs(86_400));
    let to = crate::period::minute_floor(now) + Duration::minutes(1);
    Ok((to - Duration::from_std(last)?, to))
}

/// Store, enrichment and the built range, with progress.
pub struct Loaded {
    pub cfg: Config,
    pub store: Store,
    pub enricher: Arc<Enricher>,
    pub built: Built,
}

impl Loaded {
    pub fn backend(&self) -> &'static str {
        self.store.backend()
    }
}

pub async fn load(settings: &Settings, range: &RangeArgs, p: &Progress) -> Result<Loaded> {
    let cfg = settings.config().map_err(anyhow::Error::msg)?;
    let store = Store::open(cfg.store_options()).await?;
    let (enricher, dns_rx) = Enricher::with_services(
        &cfg.enrich,
        cfg.services.load().map_err(anyhow::Error::msg)?,
    )
    .map_err(anyhow::Error::msg)?;
    let now = Utc::now();
    if let Some(path) = &cfg.enrich.ec2.snapshot_file {
        let bytes = std::fs::read(path).with_context(|| path.display().to_string())?;
        enricher.set_cloud(
            trafficmap_model::cloud::CloudSnapshot::from_json(&bytes)
                .map_err(anyhow::Error::msg)?,
        );
    } else if cfg.enrich.ec2.enabled {
        // The command line does not call AWS itself: it uses what the service last stored.
        if let Some(snap) = store.cloud(now.date_naive()).await? {
            p.step(format!("EC2 data as of {}", snap.fetched_at));
            enricher.set_cloud(snap);
        }
    }
    // On-demand prices from the Price List API ([prices]): the cache, and the API for what it
    // lacks (public prices, one question per type and region and TTL). A failure is in the
    // maps' warnings; the price table stands in.
    if let Some(pl) = crate::run::price_list(&cfg).await {
        enricher.set_price_list(pl, now);
        if let Some(r) = enricher.refresh_price_list(now).await {
            p.step(match r {
                Ok(n) => format!("AWS Price List API: {n} question(s)"),
                Err(e) => format!("AWS Price List API failed: {e}"),
            });
        }
    }
    let (from, to) = resolve_range(range, now)?;
    p.step(format!("reading {from} .. {to} from {}", store.backend()));
    let mut built = mapservice::build(&store, &enricher, &cfg.cost, from, to, now).await?;
    p.step(format!(
        "{} conversations, {} endpoints",
        grouped(built.prepared.conversations.len() as u64),
        grouped(built.prepared.identities.len() as u64)
    ));
    if let Some(rx) = dns_rx {
        let unnamed = unnamed_addresses(&built.prepared);
        if !unnamed.is_empty() {
            resolve_names(&enricher, rx, &unnamed, p).await;
            built = mapservice::build(&store, &enricher, &cfg.cost, from, to, now).await?;
        }
    }
    Ok(Loaded {
        cfg,
        store,
        enricher,
        built,
    })
}

/// Reverse DNS for the addresses nothing names, with bounded concurrency and progress.
async fn resolve_names(
    enricher: &Arc<Enricher>,
    rx: tokio::sync::mpsc::Receiver<IpAddr>,
    ips: &[IpAddr],
    p: &Progress,
) {
    let Some(dns) = enricher.dns.clone() else {
        return;
    };
    let resolver: Arc<dyn ReverseLookup> = Arc::new(SystemResolver);
    let worker = tokio::spawn(dns.clone().run(rx, resolver));
    enricher.request_dns(ips.iter().copied());
    let total = ips.len();
    loop {
        let left = dns.pending();
        p.step(format!(
            "reverse DNS: {}/{total} addresses",
            total - left.min(total)
        ));
        if left == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    worker.abort();
}

fn matches_host(id: &Identity, pattern: &str) -> bool {
    id.id == pattern
        || id.label == pattern
        || id.addresses.iter().any(|a| a.to_string() == pattern)
        || id.instance_id.as_deref() == Some(pattern)
}

fn keep(f: &Filters, c: &Priced, ids: &[Identity]) -> bool {
    let (a, b) = (&ids[c.client], &ids[c.server]);
    let k = &c.conv.key;
    if !f.subnet.is_empty()
        && !f
            .subnet
            .iter()
            .any(|n| n.contains(&k.client_ip) || n.contains(&k.server_ip))
    {
        return false;
    }
    if !f.host.is_empty()
        && !f
            .host
            .iter()
            .any(|h| matches_host(a, h) || matches_host(b, h))
    {
        return false;
    }
    if !f.port.is_empty() && !f.port.contains(&k.port) {
        return false;
    }
    if !f.env.is_empty()
        && !f
            .env
            .iter()
            .any(|e| a.env.as_deref() == Some(e) || b.env.as_deref() == Some(e))
    {
        return false;
    }
    !f.exclude
        .iter()
        .any(|h| matches_host(a, h) || matches_host(b, h))
}

#[derive(Serialize, Clone)]
pub struct FlowRow {
    pub client: String,
    pub client_ip: String,
    pub server: String,
    pub server_ip: String,
    pub port: u16,
    /// The port's service name (`[services]`, else IANA's), filled by `top`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub bytes_to_server: u64,
    pub bytes_to_client: u64,
    pub bytes: u64,
    pub connections: u64,
    pub observed_by: String,
    pub cost_usd: f64,
}

/// A cell of a printed table: counts are grouped for people (`4,200,512`) and plain in CSV
/// (`4200512`), so a spreadsheet reads them as numbers.
pub(crate) enum Cell {
    Text(String),
    Count(u64),
    /// USD shown with this many decimals (grouped), in full in CSV; `None`: `-` (no price).
    Usd(Option<f64>, usize),
    /// Seconds: `3d 04:05:06` for people, the number of seconds in CSV (issue 12 item 5).
    Uptime(u64),
}

impl Cell {
    pub(crate) fn for_people(&self) -> String {
        match self {
            // Names come from reports, EC2 tags and DNS: no terminal escapes reach the screen.
            Cell::Text(s) => s
                .chars()
                .map(|c| if c.is_control() { '\u{fffd}' } else { c })
                .collect(),
            Cell::Count(n) => grouped(*n),
            Cell::Usd(None, _) => "-".into(),
            Cell::Usd(Some(v), decimals) => {
                let s = format!("{v:.decimals$}");
                let (int, frac) = s.split_once('.').unwrap_or((s.as_str(), ""));
                let int = int.parse::<u64>().map_or_else(|_| int.to_owned(), grouped);
                if frac.is_empty() {
                    int
                } else {
                    format!("{int}.{frac}")
                }
            }
            Cell::Uptime(s) => uptime_text(*s),
        }
    }

    fn for_csv(&self) -> String {
        match self {
            // Neutralised for spreadsheets (formula injection); numbers stay numbers.
            Cell::Text(s) => crate::export::safe_cell(s).into_owned(),
            Cell::Count(n) | Cell::Uptime(n) => n.to_string(),
            Cell::Usd(v, _) => v.map(|v| v.to_string()).unwrap_or_default(),
        }
    }
}

impl From<String> for Cell {
    fn from(s: String) -> Cell {
        Cell::Text(s)
    }
}

impl From<u64> for Cell {
    fn from(n: u64) -> Cell {
        Cell::Count(n)
    }
}

/// A table printed as aligned text, CSV or JSON.
pub(crate) struct Table {
    pub(crate) headers: Vec<&'static str>,
    pub(crate) rows: Vec<Vec<Cell>>,
    /// Columns aligned right (numbers).
    pub(crate) right: Vec<bool>,
}

impl Table {
    /// Columns two spaces apart, no borders, no trailing blanks.
    pub(crate) fn print(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        use comfy_table::{CellAlignment, presets::NOTHING};
        let mut t = comfy_table::Table::new();
        t.load_preset(NOTHING).set_header(self.headers.clone());
        for r in &self.rows {
            t.add_row(r.iter().map(Cell::for_people));
        }
        for (i, col) in t.column_iter_mut().enumerate() {
            col.set_padding((if i == 0 { 0 } else { 2 }, 0));
            if self.right[i] {
                col.set_cell_alignment(CellAlignment::Right);
            }
        }
        for line in t.lines() {
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }

    pub(crate) fn csv(&self, out: impl std::io::Write) -> csv::Result<()> {
        let mut w = csv_writer(out);
        w.write_record(&self.headers)?;
        for r in &self.rows {
            w.write_record(r.iter().map(Cell::for_csv))?;
        }
        w.flush()?;
        Ok(())
    }
}

/// CSV with `\n` line ends, like the rest of the output (the crate's default is `\r\n`).
fn csv_writer<W: std::io::Write>(out: W) -> csv::Writer<W> {
    csv::WriterBuilder::new()
        .terminator(csv::Terminator::Any(b'\n'))
        .from_writer(out)
}

fn emit<T: Serialize>(output: Output, table: Table, json: &T) -> Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match output {
        Output::Table => table.print(&mut out)?,
        Output::Csv => table.csv(&mut out)?,
        Output::Json => {
            serde_json::to_writer_pretty(&mut out, json)?;
            writeln!(out)?;
        }
    }
    Ok(())
}

fn observed(c: &Priced) -> String {
    format!("{:?}", c.conv.observed_by()).to_lowercase()
}

pub fn top_rows(b: &Built, f: &Filters, by: SortBy, limit: usize) -> Vec<FlowRow> {
    let ids = &b.prepared.identities;
    let mut rows: Vec<(FlowRow, u64)> = b
        .prepared
        .conversations
        .iter()
        .filter(|c| keep(f, c, ids))
        .map(|c| {
            let k = &c.conv.key;
            (
                FlowRow {
                    client: ids[c.client].label.clone(),
                    client_ip: k.client_ip.to_string(),
                    server: ids[c.server].label.clone(),
                    server_ip: k.server_ip.to_string(),
                    port: k.port,
                    service: None,
                    bytes_to_server: c.conv.bytes_to_server(),
                    bytes_to_client: c.conv.bytes_to_client(),
                    bytes: c.conv.bytes_to_server() + c.conv.bytes_to_client(),
                    connections: c.conv.connections(),
                    observed_by: observed(c),
                    cost_usd: usd(c.cost_nanos),
                },
                c.cost_nanos,
            )
        })
        .collect();
    let key = |r: &(FlowRow, u64)| -> u64 {
        match by {
            SortBy::Bytes => r.0.bytes,
            SortBy::ToServer => r.0.bytes_to_server,
            SortBy::ToClient => r.0.bytes_to_client,
            SortBy::Connections => r.0.connections,
            SortBy::Cost => r.1,
        }
    };
    rows.sort_by(|a, b| {
        key(b).cmp(&key(a)).then_with(|| {
            (&a.0.client_ip, &a.0.server_ip, a.0.port).cmp(&(
                &b.0.client_ip,
                &b.0.server_ip,
                b.0.port,
            ))
        })
    });
    rows.truncate(limit);
    rows.into_iter().map(|(r, _)| r).collect()
}

#[derive(Serialize, Clone)]
pub struct PortRow {
    pub port: u16,
    /// The port's service name (`[services]`, else IANA's), filled by `top`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub flows: u64,
    pub servers: u64,
    pub bytes_to_server: u64,
    pub bytes_to_client: u64,
    pub bytes: u64,
    pub connections: u64,
    pub cost_usd: f64,
}

/// Flows summed per server port (the seed's `GROUP BY l4_dst_port`).
pub fn port_rows(b: &Built, f: &Filters, by: SortBy, limit: usize) -> Vec<PortRow> {
    let ids = &b.prepared.identities;
    let mut acc: BTreeMap<u16, (PortRow, u64, BTreeSet<usize>)> = BTreeMap::new();
    for c in b.prepared.conversations.iter().filter(|c| keep(f, c, ids)) {
        let port = c.conv.key.port;
        let e = acc.entry(port).or_insert_with(|| {
            (
                PortRow {
                    port,
                    service: None,
                    flows: 0,
                    servers: 0,
                    bytes_to_server: 0,
                    bytes_to_client: 0,
                    bytes: 0,
                    connections: 0,
                    cost_usd: 0.0,
                },
                0,
                BTreeSet::new(),
            )
        });
        e.0.flows += 1;
        e.0.bytes_to_server = sat_add(e.0.bytes_to_server, c.conv.bytes_to_server());
        e.0.bytes_to_client = sat_add(e.0.bytes_to_client, c.conv.bytes_to_client());
        e.0.bytes = sat_add(
            e.0.bytes,
            sat_add(c.conv.bytes_to_server(), c.conv.bytes_to_client()),
        );
        e.0.connections = sat_add(e.0.connections, c.conv.connections());
        e.1 = sat_add(e.1, c.cost_nanos);
        e.2.insert(c.server);
    }
    let mut rows: Vec<(PortRow, u64)> = acc
        .into_values()
        .map(|(mut r, nanos, servers)| {
            r.servers = servers.len() as u64;
            r.cost_usd = usd(nanos);
            (r, nanos)
        })
        .collect();
    let key = |r: &(PortRow, u64)| -> u64 {
        match by {
            SortBy::Bytes => r.0.bytes,
            SortBy::ToServer => r.0.bytes_to_server,
            SortBy::ToClient => r.0.bytes_to_client,
            SortBy::Connections => r.0.connections,
            SortBy::Cost => r.1,
        }
    };
    rows.sort_by(|a, b| key(b).cmp(&key(a)).then(a.0.port.cmp(&b.0.port)));
    rows.truncate(limit);
    rows.into_iter().map(|(r, _)| r).collect()
}

pub async fn top(settings: &Settings, a: &TopArgs) -> Result<()> {
    let p = Progress::new(a.progress);
    let l = load(settings, &a.range, &p).await?;
    let names = &l.enricher.services;
    if a.by_port {
        let mut rows = port_rows(&l.built, &a.filters, a.by, a.limit);
        for r in &mut rows {
            r.service = names.name(r.port).map(str::to_owned);
        }
        return emit(a.output, port_table(&rows), &rows);
    }
    let mut rows = top_rows(&l.built, &a.filters, a.by, a.limit);
    for r in &mut rows {
        r.service = names.name(r.port).map(str::to_owned);
    }
    emit(a.output, flow_table(&rows), &rows)
}

/// Ports as the tables show them (issue 12 item 4): `5432/postgresql 8080/http-alt`.
fn port_labels(names: &ServiceNames, ports: &[u16]) -> String {
    ports
        .iter()
        .map(|p| names.label(*p))
        .collect::<Vec<_>>()
        .join(" ")
}

fn port_table(rows: &[PortRow]) -> Table {
    Table {
        headers: vec![
            "PORT",
            "FLOWS",
            "SERVERS",
            "TO SERVER",
            "TO CLIENT",
            "BYTES",
            "CONNS",
            "COST USD",
        ],
        right: vec![true; 8],
        rows: rows
            .iter()
            .map(|r| {
                vec![
                    port_label(r.port, r.service.as_deref()).into(),
                    r.flows.into(),
                    r.servers.into(),
                    r.bytes_to_server.into(),
                    r.bytes_to_client.into(),
                    r.bytes.into(),
                    r.connections.into(),
                    format!("{:.6}", r.cost_usd).into(),
                ]
            })
            .collect(),
    }
}

fn flow_table(rows: &[FlowRow]) -> Table {
    Table {
        headers: vec![
            "CLIENT",
            "CLIENT IP",
            "SERVER",
            "SERVER IP",
            "PORT",
            "TO SERVER",
            "TO CLIENT",
            "BYTES",
            "CONNS",
            "SEEN BY",
            "COST USD",
        ],
        right: vec![
            false, false, false, false, true, true, true, true, true, false, true,
        ],
        rows: rows
            .iter()
            .map(|r| {
                vec![
                    r.client.clone().into(),
                    r.client_ip.clone().into(),
                    r.server.clone().into(),
                    r.server_ip.clone().into(),
                    port_label(r.port, r.service.as_deref()).into(),
                    r.bytes_to_server.into(),
                    r.bytes_to_client.into(),
                    r.bytes.into(),
                    r.connections.into(),
                    r.observed_by.clone().into(),
                    format!("{:.6}", r.cost_usd).into(),
                ]
            })
            .collect(),
    }
}

#[derive(Serialize)]
pub struct CallerRow {
    pub client: String,
    pub client_id: String,
    pub env: Option<String>,
    pub archdomain: Option<String>,
    pub ports: Vec<u16>,
    /// Service names of `ports`, as a map link's `services` (left out when none has one).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    pub processes: Vec<String>,
    pub bytes_to_server: u64,
    pub bytes_to_client: u64,
    pub connections: u64,
}

/// `NAME`, `NAME:PORT` or `[v6]:PORT`.
fn split_target(t: &str) -> (String, Option<u16>) {
    if let Some(rest) = t.strip_prefix('[')
        && let Some((addr, port)) = rest.split_once("]:")
        && let Ok(p) = port.parse()
    {
        return (addr.to_owned(), Some(p));
    }
    match t.rsplit_once(':') {
        Some((name, port))
            if !name.contains(':')
                || name.starts_with("cluster:")
                || name.starts_with("host:")
                || name.starts_with("ip:")
                || name.starts_with("sg:") =>
        {
            match port.parse() {
                Ok(p) if !name.is_empty() && !["ip", "host", "cluster", "sg"].contains(&name) => {
                    (name.to_owned(), Some(p))
                }
                _ => (t.to_owned(), None),
            }
        }
        _ => (t.to_owned(), None),
    }
}

fn matches_target(id: &Identity, t: &str) -> bool {
    if matches_host(id, t) {
        return true;
    }
    let cluster = format!(
        "cluster:{}|{}",
        id.archdomain.as_deref().unwrap_or_default(),
        id.env.as_deref().unwrap_or_default()
    );
    if cluster == t {
        return true;
    }
    let prefix = t.trim_end_matches('/');
    id.archdomain
        .as_deref()
        .is_some_and(|a| a == prefix || a.starts_with(&format!("{prefix}/")))
}

pub fn callers(b: &Built, target: &str, limit: usize) -> Vec<CallerRow> {
    let (name, port) = split_target(target);
    let ids = &b.prepared.identities;
    let mut by_client: BTreeMap<usize, (CallerRow, BTreeSet<u16>, BTreeSet<u32>)> = BTreeMap::new();
    for c in &b.prepared.conversations {
        if !matches_target(&ids[c.server], &name) || port.is_some_and(|p| p != c.conv.key.port) {
            continue;
        }
        let id = &ids[c.client];
        let e = by_client.entry(c.client).or_insert_with(|| {
            (
                CallerRow {
                    client: id.label.clone(),
                    client_id: id.id.clone(),
                    env: id.env.clone(),
                    archdomain: id.archdomain.clone(),
                    ports: vec![],
                    services: vec![],
                    processes: vec![],
                    bytes_to_server: 0,
                    bytes_to_client: 0,
                    connections: 0,
                },
                BTreeSet::new(),
                BTreeSet::new(),
            )
        });
        e.0.bytes_to_server = sat_add(e.0.bytes_to_server, c.conv.bytes_to_server());
        e.0.bytes_to_client = sat_add(e.0.bytes_to_client, c.conv.bytes_to_client());
        e.0.connections = sat_add(e.0.connections, c.conv.connections());
        e.1.insert(c.conv.key.port);
        if let Some(s) = &c.conv.client_side {
            e.2.extend(s.processes.iter());
        }
    }
    let mut rows: Vec<CallerRow> = by_client
        .into_values()
        .map(|(mut r, ports, procs)| {
            r.ports = ports.into_iter().collect();
            let mut names: Vec<String> = procs
                .iter()
                .map(|p| b.prepared.processes[*p as usize].clone())
                .collect();
            names.sort();
            names.dedup();
            r.processes = names;
            r
        })
        .collect();
    rows.sort_by(|a, b| {
        (b.bytes_to_server + b.bytes_to_client)
            .cmp(&(a.bytes_to_server + a.bytes_to_client))
            .then(a.client_id.cmp(&b.client_id))
    });
    rows.truncate(limit);
    rows
}

pub async fn who_calls(settings: &Settings, a: &WhoCallsArgs) -> Result<()> {
    let p = Progress::new(a.progress);
    let l = load(settings, &a.range, &p).await?;
    let mut rows = callers(&l.built, &a.target, a.limit);
    for r in &mut rows {
        r.services = l.enricher.services.names_for(&r.ports);
    }
    if rows.is_empty() && a.output == Output::Table {
        eprintln!("nobody called {} in that range", a.target);
    }
    let table = Table {
        headers: vec![
            "CLIENT",
            "ID",
            "ENV",
            "ARCHDOMAIN",
            "PORTS",
            "PROCESSES",
            "TO SERVER",
            "TO CLIENT",
            "CONNS",
        ],
        right: vec![false, false, false, false, false, false, true, true, true],
        rows: rows
            .iter()
            .map(|r| {
                vec![
                    r.client.clone().into(),
                    r.client_id.clone().into(),
                    r.env.clone().unwrap_or_else(|| "-".into()).into(),
                    r.archdomain.clone().unwrap_or_else(|| "-".into()).into(),
                    port_labels(&l.enricher.services, &r.ports).into(),
                    r.processes.join(" ").into(),
                    r.bytes_to_server.into(),
                    r.bytes_to_client.into(),
                    r.connections.into(),
                ]
            })
            .collect(),
    };
    emit(a.output, table, &rows)
}

#[derive(Serialize)]
pub struct EnvPair {
    pub client_env: String,
    pub server_env: String,
    pub bytes: u64,
    pub flows: u64,
    pub cost_usd: f64,
    pub top: Vec<ClusterPair>,
}

#[derive(Serialize)]
pub struct ClusterPair {
    pub client: String,
    pub server: String,
    pub ports: Vec<u16>,
    /// Service names of `ports`, as a map link's `services` (left out when none has one).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    pub bytes: u64,
}

pub fn cross_env_pairs(b: &Built, limit: usize) -> Vec<EnvPair> {
    let ids = &b.prepared.identities;
    type Acc = (
        u64,
        u64,
        u64,
        BTreeMap<(String, String), (u64, BTreeSet<u16>)>,
    );
    let mut pairs: BTreeMap<(String, String), Acc> = BTreeMap::new();
    let cluster = |i: &Identity| {
        format!(
            "{} ({})",
            i.archdomain.as_deref().unwrap_or("untagged"),
            i.env.as_deref().unwrap_or("-")
        )
    };
    for c in &b.prepared.conversations {
        let (a, s) = (&ids[c.client], &ids[c.server]);
        let (Some(ea), Some(es)) = (&a.env, &s.env) else {
            continue;
        };
        if ea == es {
            continue;
        }
        let bytes = sat_add(c.conv.bytes_to_server(), c.conv.bytes_to_client());
        let e = pairs.entry((ea.clone(), es.clone())).or_default();
        e.0 = sat_add(e.0, bytes);
        e.1 += 1;
        e.2 = sat_add(e.2, c.cost_nanos);
        let cp = e.3.entry((cluster(a), cluster(s))).or_default();
        cp.0 = sat_add(cp.0, bytes);
        cp.1.insert(c.conv.key.port);
    }
    let mut out: Vec<EnvPair> = pairs
        .into_iter()
        .map(|((ce, se), (bytes, flows, nanos, clusters))| {
            let mut top: Vec<ClusterPair> = clusters
                .into_iter()
                .map(|((c, s), (bytes, ports))| ClusterPair {
                    client: c,
                    server: s,
                    ports: ports.into_iter().collect(),
                    services: Vec::new(),
                    bytes,
                })
                .collect();
            top.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.client.cmp(&b.client)));
            top.truncate(limit);
            EnvPair {
                client_env: ce,
                server_env: se,
                bytes,
                flows,
                cost_usd: usd(nanos),
                top,
            }
        })
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.bytes));
    out
}

pub async fn cross_env(settings: &Settings, a: &CrossEnvArgs) -> Result<()> {
    let p = Progress::new(a.progress);
    let l = load(settings, &a.range, &p).await?;
    let mut pairs = cross_env_pairs(&l.built, a.limit);
    for c in pairs.iter_mut().flat_map(|e| e.top.iter_mut()) {
        c.services = l.enricher.services.names_for(&c.ports);
    }
    let mut rows = Vec::new();
    for e in &pairs {
        for c in &e.top {
            rows.push(vec![
                format!("{} -> {}", e.client_env, e.server_env).into(),
                e.bytes.into(),
                c.client.clone().into(),
                c.server.clone().into(),
                port_labels(&l.enricher.services, &c.ports).into(),
                c.bytes.into(),
            ]);
        }
    }
    let table = Table {
        headers: vec![
            "ENVS",
            "ENV BYTES",
            "CLIENT CLUSTER",
            "SERVER CLUSTER",
            "PORTS",
            "BYTES",
        ],
        right: vec![false, true, false, false, false, true],
        rows,
    };
    emit(a.output, table, &pairs)
}

#[derive(Serialize, Default)]
pub struct Compliance {
    /// Allowed and seen: archdomain -> hosts.
    pub allowed: BTreeMap<String, Vec<String>>,
    /// Seen but not allowed: archdomain -> hosts.
    pub not_allowed: BTreeMap<String, Vec<String>>,
    /// Allowed but seen on no host.
    pub unused: Vec<String>,
    /// Fleet hosts without an archdomain.
    pub untagged: Vec<String>,
}

/// Allowed list: one archdomain per line; a trailing `/` allows the whole subtree; `{x}` stands
/// for one part. The old tool's archdomain.csv is read too ([`AllowedList`]); its warnings are
/// logged here.
pub fn parse_allowed(text: &str) -> Vec<String> {
    parse_allowed_file(text, "allowed archdomains").unwrap_or_else(|e| {
        // Nothing allowed: every tag is reported, which is loud, not silent.
        tracing::error!("{e}");
        Vec::new()
    })
}

/// [`parse_allowed`] for a named file (`.csv` names are the old format): errors name the file.
pub fn parse_allowed_file(text: &str, origin: &str) -> Result<Vec<String>, String> {
    AllowedList::parse(text, origin).map(AllowedList::logged)
}

pub fn compliance(b: &Built, rules: &crate::enrich::Rules, allowed: &[String]) -> Compliance {
    let allowed_clean: Vec<AllowedPattern> = allowed
        .iter()
        .filter_map(|a| AllowedPattern::new(a, &rules.archdomain))
        .collect();
    let is_allowed = |a: &str| allowed_clean.iter().any(|p| p.matches(a));
    let mut c = Compliance::default();
    let mut hosts: BTreeMap<String, (String, Option<String>)> = BTreeMap::new();
    for id in &b.prepared.identities {
        if matches!(id.kind, Some(NodeKind::Host) | Some(NodeKind::Unmonitored)) {
            hosts.insert(id.id.clone(), (id.label.clone(), id.archdomain.clone()));
        }
    }
    // Every instance EC2 knows, with or without traffic: the tags are what is checked.
    for inst in &b.sources.cloud.snapshot.instances {
        hosts.entry(inst.instance_id.clone()).or_insert_with(|| {
            let arch = inst
                .tags
                .get(&rules.tags.archdomain)
                .and_then(|v| rules.archdomain.archdomain(v));
            let name = inst
                .tags
                .get(&rules.tags.name)
                .cloned()
                .unwrap_or_else(|| inst.instance_id.clone());
            (name, arch)
        });
    }
    let mut used = BTreeSet::new();
    for (id, (label, arch)) in hosts {
        let who = if label == id {
            id.clone()
        } else {
            format!("{label} ({id})")
        };
        match arch {
            None => c.untagged.push(who),
            Some(a) if is_allowed(&a) => {
                for p in allowed_clean.iter().filter(|p| p.matches(&a)) {
                    used.insert(p.name.clone());
                }
                c.allowed.entry(a).or_default().push(who);
            }
            Some(a) => c.not_allowed.entry(a).or_default().push(who),
        }
    }
    c.unused = allowed_clean
        .iter()
        .map(|p| p.name.clone())
        .filter(|x| !used.contains(x))
        .collect();
    c
}

pub async fn archdomains(settings: &Settings, a: &ArchdomainArgs) -> Result<i32> {
    let p = Progress::new(a.progress);
    let allowed =
        std::fs::read_to_string(&a.allowed).with_context(|| a.allowed.display().to_string())?;
    let allowed = parse_allowed_file(&allowed, &a.allowed.display().to_string())
        .map_err(anyhow::Error::msg)?;
    let l = load(settings, &a.range, &p).await?;
    let c = compliance(&l.built, &l.enricher.rules, &allowed);
    match a.output {
        Output::Json => {
            serde_json::to_writer_pretty(std::io::stdout().lock(), &c)?;
            println!();
        }
        Output::Csv => compliance_csv(&c, std::io::stdout().lock())?,
        Output::Table => print_compliance(&c, l.built.prepared.from, l.built.prepared.to),
    }
    Ok(
        if a.fail_on_violation && (!c.not_allowed.is_empty() || !c.untagged.is_empty()) {
            1
        } else {
            0
        },
    )
}

/// `status,archdomain,host` rows: hosts allowed and not, archdomains unused, hosts untagged.
fn compliance_csv(c: &Compliance, out: impl std::io::Write) -> csv::Result<()> {
    let mut w = csv_writer(out);
    w.write_record(["status", "archdomain", "host"])?;
    for (status, map) in [("allowed", &c.allowed), ("not_allowed", &c.not_allowed)] {
        for (arch, hosts) in map {
            for h in hosts {
                w.write_record([status, arch, h])?;
            }
        }
    }
    for u in &c.unused {
        w.write_record(["unused", u, ""])?;
    }
    for h in &c.untagged {
        w.write_record(["untagged", "", h])?;
    }
    w.flush()?;
    Ok(())
}

fn print_compliance(c: &Compliance, from: DateTime<Utc>, to: DateTime<Utc>) {
    println!("archdomain compliance, {from} .. {to}");
    println!();
    println!("not allowed ({}):", c.not_allowed.len());
    for (arch, hosts) in &c.not_allowed {
        println!("  {arch}: {}", hosts.join(", "));
    }
    println!("untagged hosts ({}):", c.untagged.len());
    for h in &c.untagged {
        println!("  {h}");
    }
    println!("allowed and seen ({}):", c.allowed.len());
    for (arch, hosts) in &c.allowed {
        println!("  {arch}: {} host(s)", hosts.len());
    }
    println!("allowed, not seen ({}):", c.unused.len());
    for u in &c.unused {
        println!("  {u}");
    }
}

/// One host of `query hosts` (issue 12 item 5): the last sample of the range and the largest
/// 1-minute load in it, from the instances map (so the names are the map's).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HostRow {
    /// The node's display name (EC2 Name tag, inventory name or the agent's hostname).
    pub host: String,
    pub instance_id: Option<String>,
    pub uptime_seconds: u64,
    pub load1: f64,
    pub load5: f64,
    pub load15: f64,
    pub load1_max: f64,
    /// (total - available) / total, in percent, one decimal.
    pub memory_used_percent: Option<f64>,
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    pub cpus: u32,
    pub sampled_at: DateTime<Utc>,
}

/// The hosts of an instances map that carry host health, by name.
pub fn host_rows(map: &trafficmap_model::map::Map) -> Vec<HostRow> {
    let mut rows: Vec<HostRow> = map
        .nodes
        .iter()
        .filter_map(|n| {
            let h = n.host?;
            Some(HostRow {
                host: n.label.clone(),
                instance_id: n.instance_id.clone(),
                uptime_seconds: h.uptime_seconds,
                load1: h.load1,
                load5: h.load5,
                load15: h.load15,
                load1_max: h.load1_max,
                memory_used_percent: h.memory_used_percent().map(|p| (p * 10.0).round() / 10.0),
                memory_total_bytes: h.memory_total_bytes,
                memory_available_bytes: h.memory_available_bytes,
                cpus: h.cpus,
                sampled_at: h.sampled_at,
            })
        })
        .collect();
    rows.sort_by(|a, b| (&a.host, &a.instance_id).cmp(&(&b.host, &b.instance_id)));
    rows
}

/// Uptime for people: `3d 04:05:06`, or `04:05:06` under a day.
fn uptime_text(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h:02}:{m:02}:{s:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}")
    }
}

fn hosts_table(rows: &[HostRow]) -> Table {
    let load = |v: f64| Cell::Text(format!("{v:.2}"));
    Table {
        headers: vec![
            "HOST",
            "INSTANCE",
            "UPTIME",
            "LOAD1",
            "LOAD5",
            "LOAD15",
            "LOAD1 MAX",
            "MEM USED %",
            "CPUS",
            "SAMPLED AT",
        ],
        right: vec![
            false, false, true, true, true, true, true, true, true, false,
        ],
        rows: rows
            .iter()
            .map(|r| {
                vec![
                    r.host.clone().into(),
                    r.instance_id.clone().unwrap_or_default().into(),
                    Cell::Uptime(r.uptime_seconds),
                    load(r.load1),
                    load(r.load5),
                    load(r.load15),
                    load(r.load1_max),
                    r.memory_used_percent
                        .map_or_else(String::new, |p| format!("{p:.1}"))
                        .into(),
                    u64::from(r.cpus).into(),
                    r.sampled_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                        .into(),
                ]
            })
            .collect(),
    }
}

/// `query hosts`: host health of every agent host over the range.
pub async fn hosts(settings: &Settings, a: &HostsArgs) -> Result<()> {
    let p = Progress::new(a.progress);
    let l = load(settings, &a.range, &p).await?;
    let map = l.built.render(
        &l.enricher,
        trafficmap_model::map::View::Instances,
        Utc::now(),
    );
    let rows = host_rows(&map);
    emit(a.format, hosts_table(&rows), &rows)
}

pub async fn export_map(settings: &Settings, a: &ExportArgs) -> Result<()> {
    let p = Progress::new(a.progress);
    if a.format == Format::TrafficMap {
        // Refused before the store is read: the old tool had no such file.
        traffic_map::file_name(a.view, Utc::now().date_naive()).map_err(anyhow::Error::msg)?;
    }
    let l = load(settings, &a.range, &p).await?;
    p.step(format!("rendering the {} view", a.view.as_str()));
    let (bytes, output) = if a.format == Format::TrafficMap {
        // The old clusters file was coalesced from the instances file: both start there.
        let map = l.built.render(&l.enricher, View::Instances, Utc::now());
        let bytes = traffic_map::render(a.view, &map).map_err(anyhow::Error::msg)?;
        // A directory gets the old name (`clusters-2026-11-23.json`): the day of the range.
        let output = match &a.output {
            Some(dir) if dir.is_dir() => Some(
                dir.join(
                    traffic_map::file_name(a.view, l.built.prepared.from.date_naive())
                        .map_err(anyhow::Error::msg)?,
                ),
            ),
            o => o.clone(),
        };
        (bytes, output)
    } else {
        let map = l.built.render(&l.enricher, a.view, Utc::now());
        (export(&map, a.format), a.output.clone())
    };
    match &output {
        Some(path) => {
            mapservice::write_atomic(path, &bytes).with_context(|| path.display().to_string())?;
            p.step(format!(
                "wrote {} ({} bytes)",
                path.display(),
                grouped(bytes.len() as u64)
            ));
        }
        None => std::io::stdout().lock().write_all(&bytes)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(split_target("db-1:5432"), ("db-1".into(), Some(5432)));
        assert_eq!(split_target("db-1"), ("db-1".into(), None));
        assert_eq!(split_target("10.0.0.1:80"), ("10.0.0.1".into(), Some(80)));
        assert_eq!(split_target("fd00::1"), ("fd00::1".into(), None));
        assert_eq!(split_target("[fd00::1]:443"), ("fd00::1".into(), Some(443)));
        assert_eq!(split_target("host:api-1"), ("host:api-1".into(), None));
        assert_eq!(
            split_target("host:api-1:8080"),
            ("host:api-1".into(), Some(8080))
        );
        assert_eq!(
            split_target("cluster:online/api|prod:443"),
            ("cluster:online/api|prod".into(), Some(443))
        );
    }

    fn sample_table() -> Table {
        Table {
            headers: vec!["NAME", "BYTES"],
            right: vec![false, true],
            rows: vec![
                vec!["db, \"primary\"".to_owned().into(), 4_200_512.into()],
                vec!["api".to_owned().into(), 7.into()],
            ],
        }
    }

    #[test]
    fn text_tables_align_columns_two_spaces_apart() {
        let mut out = Vec::new();
        sample_table().print(&mut out).unwrap();
        let want = [
            format!("{:<13}  {:>9}", "NAME", "BYTES"),
            format!("{:<13}  {:>9}", "db, \"primary\"", "4,200,512"),
            format!("{:<13}  {:>9}", "api", "7"),
        ];
        assert_eq!(String::from_utf8(out).unwrap(), want.join("\n") + "\n");
    }

    #[test]
    fn csv_quotes_text_and_keeps_counts_plain() {
        let mut out = Vec::new();
        sample_table().csv(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "NAME,BYTES\n\"db, \"\"primary\"\"\",4200512\napi,7\n"
        );
    }

    /// Tables show ports with their service names (issue 12 item 4); JSON keeps the number
    /// and adds the name.
    #[test]
    fn ports_are_shown_with_their_service_names() {
        let row = |port, service: Option<&str>| PortRow {
            port,
            service: service.map(str::to_owned),
            flows: 1,
            servers: 1,
            bytes_to_server: 10,
            bytes_to_client: 20,
            bytes: 30,
            connections: 1,
            cost_usd: 0.0,
        };
        let rows = [row(5432, Some("postgresql")), row(49999, None)];
        let mut out = Vec::new();
        port_table(&rows).csv(&mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "PORT,FLOWS,SERVERS,TO SERVER,TO CLIENT,BYTES,CONNS,COST USD\n\
             5432/postgresql,1,1,10,20,30,1,0.000000\n\
             49999,1,1,10,20,30,1,0.000000\n"
        );
        let json = serde_json::to_value(&rows).unwrap();
        assert_eq!(json[0]["port"], 5432);
        assert_eq!(json[0]["service"], "postgresql");
        assert!(json[1].get("service").is_none());
        let names =
            ServiceNames::with_overrides(BTreeMap::from([(9092, "kafka".to_owned())])).unwrap();
        assert_eq!(
            port_labels(&names, &[22, 9092, 49999]),
            "22/ssh 9092/kafka 49999"
        );
    }

    #[test]
    fn allowed_list() {
        assert_eq!(
            parse_allowed("# master\nonline/api\n\noffline/ # subtree\n"),
            ["online/api", "offline/"]
        );
    }
}
