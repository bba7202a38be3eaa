//! Command line: `trafficmap-collector [serve]` runs the service; `query`, `export`, `rollup`
//! and `check-config` work on the same store and configuration.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;

use crate::{
    config::{Backend, Config},
    export::Format,
};

#[derive(Parser, Debug)]
#[command(
    name = "trafficmap-collector",
    version,
    about = "Merges trafficmap agents' reports, enriches them, keeps history and serves the daily TCP traffic maps",
    after_help = "Without a command, `serve` runs. Settings come from --config (TOML), overridden by flags."
)]
pub struct Cli {
    #[command(flatten)]
    pub settings: Settings,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Settings that override the configuration file.
#[derive(Args, Debug, Default, Clone)]
pub struct Settings {
    /// Configuration file (TOML); see collector.example.toml.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on (port 0: any free port, printed at start).
    #[arg(long, global = true, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Directory of the embedded database.
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Directory of the daily map files.
    #[arg(long, global = true, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// Agents' bearer tokens, one per line.
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Accept reports without a token (only on a loopback address).
    #[arg(long, global = true)]
    pub allow_unauthenticated: bool,
    // Reads (issue 8).
    /// Read-only bearer tokens (`<token> [label]` per line) required for every read.
    #[arg(long, global = true, value_name = "FILE")]
    pub read_token_file: Option<PathBuf>,
    /// Serve reads to anyone on a non-loopback address.
    #[arg(long, global = true)]
    pub allow_anonymous_reads: bool,
    /// PEM certificate chain to serve over TLS (with --tls-key-file).
    #[arg(long, global = true, value_name = "FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of the TLS certificate (a systemd credential, a Kubernetes Secret).
    #[arg(long, global = true, value_name = "FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// Storage backend.
    #[arg(long, global = true, value_enum)]
    pub storage: Option<Backend>,
    /// ClickHouse HTTP interface (implies --storage clickhouse).
    #[arg(long, global = true, value_name = "URL")]
    pub clickhouse_url: Option<String>,
    #[arg(long, global = true, value_name = "NAME")]
    pub clickhouse_database: Option<String>,
    /// Ask EC2 for instances, security groups and spot prices.
    #[arg(long, global = true)]
    pub ec2: bool,
    /// EC2 regions (repeat or comma-separate).
    #[arg(
        long = "ec2-region",
        global = true,
        value_delimiter = ',',
        value_name = "REGION"
    )]
    pub ec2_regions: Vec<String>,
    #[arg(long, global = true, value_name = "URL")]
    pub ec2_endpoint: Option<String>,
    /// EC2 data from a snapshot file instead of the API.
    #[arg(long, global = true, value_name = "FILE")]
    pub ec2_snapshot: Option<PathBuf>,
    /// Static inventory (TOML).
    #[arg(long, global = true, value_name = "FILE")]
    pub inventory: Option<PathBuf>,
    /// Well-known foreign addresses.
    #[arg(long, global = true, value_name = "FILE")]
    pub foreign_list: Option<PathBuf>,
    /// On-demand price table (CSV).
    #[arg(long, global = true, value_name = "FILE")]
    pub price_table: Option<PathBuf>,
    /// No reverse DNS.
    #[arg(long, global = true)]
    pub no_dns: bool,
    #[arg(long, global = true, value_name = "BYTES")]
    pub max_body_bytes: Option<u64>,
    #[arg(long, global = true, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub request_timeout: Option<Duration>,
    /// Log filter (info, debug, ...).
    #[arg(long, global = true, value_name = "FILTER")]
    pub log: Option<String>,
}

impl Settings {
    /// The configuration file (or defaults) with these flags applied, validated.
    pub fn config(&self) -> Result<Config, String> {
        let mut c = match &self.config {
            Some(p) => Config::from_file(p)?,
            None => Config::default(),
        };
        if let Some(v) = self.listen {
            c.listen = v;
        }
        if let Some(v) = &self.data_dir {
            c.data_dir = v.clone();
        }
        if let Some(v) = &self.output_dir {
            c.output_dir = Some(v.clone());
        }
        if let Some(v) = &self.token_file {
            c.token_file = Some(v.clone());
        }
        if self.allow_unauthenticated {
            c.allow_unauthenticated = true;
        }
        if let Some(v) = &self.read_token_file {
            c.read_token_file = Some(v.clone());
        }
        if self.allow_anonymous_reads {
            c.allow_anonymous_reads = true;
        }
        if let Some(v) = &self.tls_cert_file {
            c.tls_cert_file = Some(v.clone());
        }
        if let Some(v) = &self.tls_key_file {
            c.tls_key_file = Some(v.clone());
        }
        if let Some(v) = self.storage {
            c.storage.backend = v;
        }
        if let Some(v) = &self.clickhouse_url {
            c.storage.backend = Backend::Clickhouse;
            c.storage.clickhouse.url = v.clone();
        }
        if let Some(v) = &self.clickhouse_database {
            c.storage.clickhouse.database = v.clone();
        }
        if self.ec2 {
            c.enrich.ec2.enabled = true;
        }
        if !self.ec2_regions.is_empty() {
            c.enrich.ec2.regions = self.ec2_regions.clone();
        }
        if let Some(v) = &self.ec2_endpoint {
            c.enrich.ec2.endpoint_url = Some(v.clone());
        }
        if let Some(v) = &self.ec2_snapshot {
            c.enrich.ec2.snapshot_file = Some(v.clone());
        }
        if let Some(v) = &self.inventory {
            c.enrich.inventory_file = Some(v.clone());
        }
        if let Some(v) = &self.foreign_list {
            c.enrich.foreign_file = Some(v.clone());
        }
        if let Some(v) = &self.price_table {
            c.enrich.price_file = Some(v.clone());
        }
        if self.no_dns {
            c.enrich.dns.enabled = false;
        }
        if let Some(v) = self.max_body_bytes {
            c.ingest.max_body_bytes = v;
        }
        if let Some(v) = self.request_timeout {
            c.ingest.request_timeout = v;
        }
        if let Some(v) = &self.log {
            c.log = v.clone();
        }
        c.validate()?;
        Ok(c)
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the collector (the default).
    Serve,
    /// Questions about the traffic in the store.
    #[command(subcommand)]
    Query(Query),
    /// Write a map as CSV (LucidChart), draw.io CSV, Graphviz DOT, JSON, or the old
    /// traffic-map tool's JSON.
    Export(ExportArgs),
    /// Run roll-ups and retention once.
    Rollup,
    /// Check the configuration (and the files it names) and exit.
    CheckConfig,
    /// Agent tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// The archive of daily maps and store extracts ([archive] in the configuration).
    #[command(subcommand)]
    Archive(ArchiveCommand),
    /// The daily reports: costs and compliance; print them, or mail them as `[reports]` says.
    #[command(subcommand)]
    Report(ReportCommand),
}

/// `report ...` (issue 12).
#[derive(Subcommand, Debug)]
pub enum ReportCommand {
    /// What the day's instances cost per hour and per year, by env, archdomain, cluster,
    /// instance type and lifecycle, with the source of each price.
    Costs(CostsArgs),
    /// The archdomain compliance report of a day: tags seen that are not allowed, allowed tags
    /// nobody uses, hosts without tags, cross-env edges new that day.
    Compliance(ReportComplianceArgs),
    /// Mail the daily report of a day as `[reports]` describes (or print the message).
    Send(ReportSendArgs),
}

/// `report costs`.
#[derive(Args, Debug)]
pub struct CostsArgs {
    /// The UTC day, YYYY-MM-DD (default: yesterday, the last complete day).
    #[arg(long)]
    pub day: Option<chrono::NaiveDate>,
    /// Sum by (repeatable; default: all of them, in this order).
    #[arg(long = "by", value_enum, value_name = "DIMENSION")]
    pub by: Vec<crate::costreport::Dimension>,
    #[arg(long, value_enum, default_value_t)]
    pub format: CostFormat,
    #[command(flatten)]
    pub progress: ProgressArgs,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum CostFormat {
    #[default]
    Text,
    Html,
    Json,
    Csv,
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Print one new line for the token file (a fresh random secret, the label, the
    /// identities) on standard output, and nothing else. Give the secret (the line's first
    /// word) to the agent; add the line to the collector's token file.
    Issue(IssueArgs),
}

/// What the new token may report as (see docs/collector.md, "Tokens and identities").
#[derive(Args, Debug)]
pub struct IssueArgs {
    /// Name of the token in logs (one word), e.g. the host's name.
    #[arg(long)]
    pub label: String,
    /// Machine id the agent reports (its /etc/machine-id or `host_id`); repeatable.
    #[arg(
        long = "machine-id",
        value_name = "ID",
        required_unless_present = "any"
    )]
    pub machine_ids: Vec<String>,
    /// Hostname pattern (`*`, `?`, `[...]`), e.g. `web-*`; repeatable. Without it: any hostname.
    #[arg(long = "hostname", value_name = "GLOB")]
    pub hostnames: Vec<String>,
    /// EC2 instance id the agent may claim; repeatable. Without it, reports claiming an EC2
    /// instance are refused.
    #[arg(long = "instance-id", value_name = "ID")]
    pub instance_ids: Vec<String>,
    /// Addresses (CIDR or address) the host may claim as its own; repeatable. Without it,
    /// only loopback addresses are accepted.
    #[arg(long = "addresses", value_name = "CIDR")]
    pub addresses: Vec<String>,
    /// Any identity (`*`): the token may report as any host.
    #[arg(long, conflicts_with_all = ["machine_ids", "hostnames", "instance_ids", "addresses"])]
    pub any: bool,
}

impl IssueArgs {
    /// The identity words of the token line.
    pub fn identities(&self) -> Vec<String> {
        if self.any {
            return vec!["*".into()];
        }
        let kinds: [(&str, &Vec<String>); 4] = [
            ("machine-id", &self.machine_ids),
            ("hostname", &self.hostnames),
            ("instance-id", &self.instance_ids),
            ("addresses", &self.addresses),
        ];
        kinds
            .iter()
            .flat_map(|(k, vs)| vs.iter().map(move |v| format!("{k}={v}")))
            .collect()
    }
}

/// `archive run|list|restore`.
#[derive(Subcommand, Debug)]
pub enum ArchiveCommand {
    /// Archive now: the finished days not archived yet and the recent ones (or one day).
    Run {
        /// Only this UTC day, YYYY-MM-DD (compared again even if archived).
        #[arg(long)]
        day: Option<chrono::NaiveDate>,
    },
    /// The archived days, with their file count, size and time of archiving.
    List,
    /// Restore a day's map files and its store extract.
    Restore {
        /// The UTC day, YYYY-MM-DD.
        #[arg(long)]
        day: chrono::NaiveDate,
        /// Into an SQLite store in this directory (maps in DIR/maps) instead of the configured
        /// store and output directory.
        #[arg(long, value_name = "DATA_DIR")]
        into: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    #[default]
    Text,
    Html,
    Json,
}

#[derive(Args, Debug)]
pub struct ReportComplianceArgs {
    /// The UTC day, YYYY-MM-DD (default: yesterday, the last complete day).
    #[arg(long)]
    pub day: Option<chrono::NaiveDate>,
    #[arg(long, value_enum, default_value_t)]
    pub format: ReportFormat,
    #[command(flatten)]
    pub progress: ProgressArgs,
}

#[derive(Args, Debug)]
pub struct ReportSendArgs {
    /// The UTC day, YYYY-MM-DD (default: yesterday, the last complete day).
    #[arg(long)]
    pub day: Option<chrono::NaiveDate>,
    /// Print the message (headers, text and HTML parts) instead of sending it.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub progress: ProgressArgs,
}

#[derive(Subcommand, Debug)]
pub enum Query {
    /// The largest flows (client, server, port), like `ORDER BY bytes DESC LIMIT n`.
    Top(TopArgs),
    /// Who calls a host, address, cluster or service (`NAME[:PORT]`).
    WhoCalls(WhoCallsArgs),
    /// Traffic between environments (prod <-> stage, ...).
    CrossEnv(CrossEnvArgs),
    /// Archdomain tags seen against the allowed list (the daily compliance report).
    Archdomains(ArchdomainArgs),
    /// Host health per agent host: uptime, load, memory, CPUs (issue 12 item 5).
    Hosts(HostsArgs),
}

/// `query hosts` (issue 12 item 5).
#[derive(Args, Debug)]
pub struct HostsArgs {
    #[command(flatten)]
    pub range: RangeArgs,
    /// Output format (`--output` also works, as in the other queries).
    #[arg(long = "format", visible_alias = "output", value_enum, default_value_t)]
    pub format: Output,
    #[command(flatten)]
    pub progress: ProgressArgs,
}

/// Which time range.
#[derive(Args, Debug, Clone, Default)]
pub struct RangeArgs {
    /// A UTC day, YYYY-MM-DD.
    #[arg(long, conflicts_with_all = ["from", "to", "last"])]
    pub day: Option<chrono::NaiveDate>,
    /// Start of the range (RFC 3339).
    #[arg(long, requires = "to")]
    pub from: Option<chrono::DateTime<chrono::FixedOffset>>,
    /// End of the range (RFC 3339, excluded).
    #[arg(long, requires = "from")]
    pub to: Option<chrono::DateTime<chrono::FixedOffset>>,
    /// The range ending now (default 24h).
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with_all = ["from", "to"])]
    pub last: Option<Duration>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Csv,
    Json,
}

/// Filters on either end of a flow.
#[derive(Args, Debug, Clone, Default)]
pub struct Filters {
    /// Keep flows with an end in this subnet (repeatable), like `LIKE "192.168.1.%"`.
    #[arg(long, value_name = "CIDR")]
    pub subnet: Vec<IpNet>,
    /// Keep flows with an end matching this host: id, label or address (repeatable).
    #[arg(long, value_name = "HOST")]
    pub host: Vec<String>,
    /// Keep flows on this server port (repeatable).
    #[arg(long, value_name = "PORT")]
    pub port: Vec<u16>,
    /// Keep flows with an end in this env (repeatable).
    #[arg(long, value_name = "ENV")]
    pub env: Vec<String>,
    /// Drop flows with an end matching this host: id, label or address (repeatable), like
    /// `!= "192.168.1.151"`.
    #[arg(long, value_name = "HOST")]
    pub exclude: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum SortBy {
    /// Both directions.
    #[default]
    Bytes,
    /// Client to server.
    ToServer,
    /// Server to client.
    ToClient,
    Connections,
    Cost,
}

#[derive(Args, Debug)]
pub struct TopArgs {
    #[command(flatten)]
    pub range: RangeArgs,
    #[command(flatten)]
    pub filters: Filters,
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    #[arg(long, value_enum, default_value_t)]
    pub by: SortBy,
    /// One row per server port summed over clients (like `GROUP BY l4_dst_port`).
    #[arg(long)]
    pub by_port: bool,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
    #[command(flatten)]
    pub progress: ProgressArgs,
}

#[derive(Args, Debug)]
pub struct WhoCallsArgs {
    /// Host id, label or address, `cluster:<archdomain>|<env>`, an archdomain prefix, with an
    /// optional `:PORT`.
    pub target: String,
    #[command(flatten)]
    pub range: RangeArgs,
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
    #[command(flatten)]
    pub progress: ProgressArgs,
}

#[derive(Args, Debug)]
pub struct CrossEnvArgs {
    #[command(flatten)]
    pub range: RangeArgs,
    /// Cluster pairs listed per env pair.
    #[arg(long, default_value_t = 10)]
    pub limit: usize,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
    #[command(flatten)]
    pub progress: ProgressArgs,
}

#[derive(Args, Debug)]
pub struct ArchdomainArgs {
    #[command(flatten)]
    pub range: RangeArgs,
    /// Allowed archdomains, one per line (`#` comments); a line ending in `/` allows the subtree;
    /// `{name}` stands for one part. The old tool's archdomain.csv is read as it is (header row,
    /// first column, its subtree rule), with a warning per construct that changed meaning.
    #[arg(long, value_name = "FILE")]
    pub allowed: PathBuf,
    /// Exit with status 1 when a host carries an archdomain that is not allowed, or none.
    #[arg(long)]
    pub fail_on_violation: bool,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
    #[command(flatten)]
    pub progress: ProgressArgs,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[arg(long, value_parser = parse_view)]
    pub view: trafficmap_model::map::View,
    #[command(flatten)]
    pub range: RangeArgs,
    #[arg(long, value_enum, default_value = "csv")]
    pub format: Format,
    /// Output file (default: standard output); with `--format traffic-map`, a directory gets
    /// the old name, `<view>-YYYY-MM-DD.json`.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub progress: ProgressArgs,
}

fn parse_view(s: &str) -> Result<trafficmap_model::map::View, String> {
    s.parse()
}

#[derive(Args, Debug, Clone, Copy, Default)]
pub struct ProgressArgs {
    /// Report progress on standard error even when it is not a terminal.
    #[arg(long)]
    pub progress: bool,
    /// Never report progress.
    #[arg(long, conflicts_with = "progress")]
    pub quiet: bool,
}
