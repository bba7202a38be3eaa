//! The collector's configuration: a TOML file (`--config`, unknown keys rejected) under command
//! line flags (flags win), with defaults for everything, checked as a whole before anything
//! binds or opens. `collector.example.toml` lists every key; a test keeps it in sync.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    cost::CostRates,
    enrich::{TagKeys, TagRules},
    store::{Retention, clickhouse::ClickHouseOptions, sqlite::Sync},
};

/// Durations as humantime strings (`90s`, `5m`, `2d`).
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "`{s}` is not a duration ({e}); write e.g. 90s, 5m, 2h, 7d"
            ))
        })
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Sqlite,
    Clickhouse,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the HTTP server listens on (agents, viewer, API, metrics).
    pub listen: SocketAddr,
    /// Where the embedded database lives.
    pub data_dir: PathBuf,
    /// Where daily map files are written and read (default: `<data_dir>/maps`).
    pub output_dir: Option<PathBuf>,
    /// Bearer tokens agents must present, one per line (reloaded when the file changes).
    pub token_file: Option<PathBuf>,
    /// Accept reports without a token (only sensible on a loopback address). Without this and
    /// without a token file, reports are refused (401) and only maps are served.
    pub allow_unauthenticated: bool,
    /// Log filter (`info`, `debug`, `trafficmap_collector=debug,info`, ...).
    pub log: String,
    // --- Reads (issue 8): who may read maps, exports and metrics; bounds on map builds. ---
    /// Read-only bearer tokens, `<token> [label]` per line (reloaded when the file changes).
    /// When set (or `trusted_proxies` is), every read (API, exports, /metrics) needs one.
    pub read_token_file: Option<PathBuf>,
    /// Authenticating reverse proxies (CIDRs) whose `proxy_user_header` grants a read.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The header carrying the user a trusted proxy authenticated (e.g. `X-Forwarded-User`).
    pub proxy_user_header: Option<String>,
    /// Serve reads to anyone on a non-loopback address (otherwise a start-up error).
    pub allow_anonymous_reads: bool,
    /// Host names (no port) requests may address. Default on a loopback address: localhost,
    /// 127.0.0.1, [::1]; elsewhere: no check.
    pub allowed_hosts: Option<Vec<String>>,
    /// Map builds from the store at once; more wait up to 10 s, then 503.
    pub map_builds: usize,
    /// Longest range one map request may cover, days.
    pub max_range_days: u32,
    // --- end of reads ---
    pub ingest: Ingest,
    pub storage: Storage,
    pub retention: RetentionConfig,
    pub daily: Daily,
    pub enrich: Enrich,
    pub cost: CostRates,
    // --- Identity, TLS and listener limits (issue 8; helper b2) ---
    /// PEM certificate chain served over TLS (with `tls_key_file`); re-read on SIGHUP and when
    /// it changes. Without both: plain HTTP.
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// CA (PEM) of agents' client certificates (mutual TLS): with it, a report needs a client
    /// certificate from this CA naming its `host.machine_id` (a DNS name SAN), besides the token.
    pub tls_client_ca_file: Option<PathBuf>,
    /// Open connections from one client address at most (besides `ingest.max_connections`).
    pub max_connections_per_address: usize,
    /// A connection with no request in flight for this long is closed.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    // --- end b2 ---
    // ---- Archive (issue 12): see the `Archive` block below. ----
    pub archive: Archive,
    // ---- Viewer (issue 12, item 6): what `GET /api/v1/viewer-config` serves. ----
    pub viewer: Viewer,
    // ---- Service names (issue 12 item 4): see the `Services` block below. ----
    pub services: Services,
    // ---- Prices (issue 12, c1): see the `Prices` block below. ----
    pub prices: Prices,
    // ---- Daily reports by email (issue 12, c2): see the `Reports` block below. ----
    pub reports: Reports,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:9978".parse().expect("valid address"),
            data_dir: PathBuf::from("/var/lib/trafficmap/collector"),
            output_dir: None,
            token_file: None,
            allow_unauthenticated: false,
            log: "info".into(),
            // Reads (issue 8).
            read_token_file: None,
            trusted_proxies: Vec::new(),
            proxy_user_header: None,
            allow_anonymous_reads: false,
            allowed_hosts: None,
            map_builds: 2,
            max_range_days: 31,
            ingest: Ingest::default(),
            storage: Storage::default(),
            retention: RetentionConfig::default(),
            daily: Daily::default(),
            enrich: Enrich::default(),
            cost: CostRates::default(),
            // --- b2 ---
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            max_connections_per_address: 64,
            idle_timeout: Duration::from_secs(60),
            archive: Archive::default(),
            viewer: Viewer::default(),
            services: Services::default(),
            prices: Prices::default(),
            reports: Reports::default(),
        }
    }
}

// ---- Service names (issue 12 item 4): names for ports on the maps' links, in exports and in
// the command line's tables, over IANA's registry shipped in the binary
// (`trafficmap_model::services`). docs/collector.md, "Service names". ----

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Services {
    /// Names by TCP port, e.g. `names = { 8080 = "http-alt", 9978 = "trafficmap" }` (TOML keys
    /// are strings; each must be a port 1-65535). They win over `file` and over IANA's.
    pub names: std::collections::BTreeMap<String, String>,
    /// An `/etc/services`-format file whose TCP entries win over IANA's names.
    pub file: Option<PathBuf>,
}

impl Services {
    /// The merged table: `names`, then `file`, then IANA's. Reads `file`.
    pub fn load(&self) -> Result<trafficmap_model::services::ServiceNames, String> {
        use std::io::Read as _;
        use trafficmap_model::services::{
            MAX_FILE_BYTES, ServiceNames, parse_port, parse_services_file,
        };
        let mut merged = std::collections::BTreeMap::new();
        if let Some(p) = &self.file {
            let at = |e: String| format!("services.file: {}: {e}", p.display());
            let mut text = String::new();
            // One byte past the bound, so a larger file is refused rather than cut.
            std::fs::File::open(p)
                .and_then(|f| f.take(MAX_FILE_BYTES as u64 + 1).read_to_string(&mut text))
                .map_err(|e| at(e.to_string()))?;
            merged = parse_services_file(&text).map_err(|e| at(e.to_string()))?;
        }
        for (port, name) in &self.names {
            let port = parse_port(port).map_err(|e| format!("services.names: {e}"))?;
            merged.insert(port, name.clone());
        }
        ServiceNames::with_overrides(merged).map_err(|e| format!("services.names: {e}"))
    }

    fn validate(&self) -> Result<(), String> {
        self.load().map(drop)
    }
}

// ---- Archive (issue 12): the daily maps and the day's store extract copied to object storage
// (S3, S3-compatible, a local directory) by `crate::archive`. docs/collector.md, "Archive". ----

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Archive {
    /// Archive finished days from the service's periodic task.
    pub enabled: bool,
    /// `s3://bucket/prefix` or `file:///absolute/path`.
    pub target: String,
    /// An S3-compatible endpoint instead of AWS (MinIO, moto, Ceph...).
    pub endpoint_url: Option<String>,
    /// The bucket's region (default: `AWS_REGION`/`AWS_DEFAULT_REGION`, else `us-east-1`).
    pub region: Option<String>,
    /// Allow a plain-http `endpoint_url` (a test server, a bucket on the same host).
    pub allow_http: bool,
    /// AWS shared-credentials file (INI; the `credentials_profile` section) instead of the
    /// standard chain (environment, web identity, ECS, instance profile).
    pub credentials_file: Option<PathBuf>,
    pub credentials_profile: String,
    /// Time of day (UTC, `HH:MM:SS`) after which yesterday is archived.
    pub schedule: chrono::NaiveTime,
    /// Archived days older than this are deleted from the archive (`0s`: never).
    #[serde(with = "duration")]
    pub retention: Duration,
    /// How many recent archived days are compared again (late reports change a day's map).
    pub lookback_days: u32,
    /// How often the service checks for days to archive.
    #[serde(with = "duration")]
    pub interval: Duration,
}

impl Default for Archive {
    fn default() -> Self {
        Archive {
            enabled: false,
            target: String::new(),
            endpoint_url: None,
            region: None,
            allow_http: false,
            credentials_file: None,
            credentials_profile: "default".into(),
            // After the daily maps (written 10 minutes after midnight) have settled.
            schedule: chrono::NaiveTime::from_hms_opt(1, 0, 0).unwrap_or_default(),
            retention: Duration::from_secs(400 * 86_400),
            lookback_days: 3,
            interval: Duration::from_secs(900),
        }
    }
}

impl Archive {
    fn validate(&self) -> Result<(), String> {
        if !self.enabled && self.target.is_empty() {
            return Ok(());
        }
        crate::archive::Target::parse(&self.target)
            .map_err(|e| format!("archive.target `{}`: {e}", self.target))?;
        if self.interval < Duration::from_secs(10) {
            return Err("archive.interval: at least 10s".into());
        }
        if let Some(u) = &self.endpoint_url {
            let scheme = reqwest::Url::parse(u).map(|u| u.scheme().to_owned());
            match scheme.as_deref() {
                Ok("https") => {}
                Ok("http") if self.allow_http => {}
                Ok("http") => {
                    return Err(format!(
                        "archive.endpoint_url `{u}`: plain http needs archive.allow_http = true"
                    ));
                }
                _ => return Err(format!("archive.endpoint_url `{u}`: an http(s) URL")),
            }
        }
        Ok(())
    }
}

// ---- Viewer (issue 12, item 6): settings the viewer reads from `GET /api/v1/viewer-config`.
// docs/collector.md, "Viewer". ----

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Viewer {
    /// Named suppressions offered in the viewer's "Preset" select (checked as the viewer checks
    /// its patterns: `crate::viewerapi::validate_presets`).
    pub suppression_presets: Vec<crate::viewerapi::SuppressionPreset>,
}

// ---- end Viewer ----
// ---- Prices (issue 12, c1): on-demand prices from the AWS Price List API, cached in data_dir,
// before the price table (`enrich.price_file`). docs/collector.md, "Cost reports". ----

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Prices {
    /// Ask the AWS Price List API (GetProducts) for the on-demand prices of the fleet's instance
    /// types. Off by default: no outbound call unless asked.
    pub price_list_api: bool,
    /// Another endpoint (a proxy; a local server in tests) instead of AWS's.
    pub price_list_endpoint: Option<String>,
    /// The `operatingSystem` of the products priced (`Linux`, `Windows`, `RHEL`, ...).
    pub operating_system: String,
    /// How long an answer (a price, or "no such product") is kept in the cache file.
    #[serde(with = "duration")]
    pub cache_ttl: Duration,
}

impl Default for Prices {
    fn default() -> Self {
        Prices {
            price_list_api: false,
            price_list_endpoint: None,
            operating_system: "Linux".into(),
            cache_ttl: Duration::from_secs(86_400),
        }
    }
}

impl Prices {
    /// The cache of the Price List API's answers.
    pub fn cache_file(data_dir: &Path) -> PathBuf {
        data_dir.join("price-list-cache.json")
    }

    fn validate(&self) -> Result<(), String> {
        let os = &self.operating_system;
        if os.is_empty() || os.len() > 64 || os.chars().any(char::is_control) {
            return Err(format!(
                "prices.operating_system `{os}`: a Price List operatingSystem such as Linux (1-64 characters)"
            ));
        }
        if !(Duration::from_secs(60)..=Duration::from_secs(366 * 86_400)).contains(&self.cache_ttl)
        {
            return Err("prices.cache_ttl: between 1m and 366days".into());
        }
        if let Some(u) = &self.price_list_endpoint {
            let scheme = reqwest::Url::parse(u).map(|u| u.scheme().to_owned());
            if !matches!(scheme.as_deref(), Ok("http" | "https")) {
                return Err(format!("prices.price_list_endpoint `{u}`: an http(s) URL"));
            }
        }
        if self.price_list_api && !cfg!(feature = "ec2") {
            return Err(
                "prices.price_list_api: this collector was built without the `ec2` feature (AWS SDK)"
                    .into(),
            );
        }
        Ok(())
    }
}
// ---- end of prices ----

// ---- Daily reports by email (issue 12, c2): the compliance (and cost) report of the previous
// day mailed at `schedule` by `crate::dailyreport`, through `crate::mail`. docs/collector.md,
// "Daily reports by email". ----

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Reports {
    /// Time of day (UTC, `HH:MM`) at which the previous day's report is mailed.
    pub schedule: chrono::NaiveTime,
    /// Recipients; empty: the service mails nothing (`report compliance` still prints).
    pub to: Vec<String>,
    /// The sender (`Name <addr@example.com>` or `addr@example.com`).
    pub from: String,
    /// Put before every subject.
    pub subject_prefix: String,
    /// Include the archdomain compliance report.
    pub compliance: bool,
    /// Include the cost report.
    pub costs: bool,
    /// Allowed archdomains, one per line (the `query archdomains --allowed` file).
    pub allowed_archdomains_file: Option<PathBuf>,
    pub smtp: Smtp,
}

impl Default for Reports {
    fn default() -> Self {
        Reports {
            // After the daily maps (written 10 minutes after midnight) and the archive (01:00).
            schedule: chrono::NaiveTime::from_hms_opt(6, 0, 0).unwrap_or_default(),
            to: Vec::new(),
            from: String::new(),
            subject_prefix: "[trafficmap]".into(),
            compliance: true,
            costs: true,
            allowed_archdomains_file: None,
            smtp: Smtp::default(),
        }
    }
}

/// How the SMTP connection is secured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS, which the server must offer (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No TLS: only to a loopback address (a local relay).
    None,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Smtp {
    /// The server's host name (checked against its certificate) or address.
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    /// Login (AUTH PLAIN or LOGIN); without it, no authentication.
    pub username: Option<String>,
    /// File holding the password (its first line); never the password inline.
    pub password_file: Option<PathBuf>,
    /// Extra CA certificate(s) (PEM) trusted for the server, besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Connecting and each SMTP command time out after this.
    #[serde(with = "duration")]
    pub timeout: Duration,
}

impl Default for Smtp {
    fn default() -> Self {
        Smtp {
            host: String::new(),
            port: 587,
            tls: SmtpTls::Starttls,
            username: None,
            password_file: None,
            ca_file: None,
            timeout: Duration::from_secs(30),
        }
    }
}

impl Reports {
    /// Whether the service mails reports.
    pub fn mailing(&self) -> bool {
        !self.to.is_empty()
    }

    fn validate(&self) -> Result<(), String> {
        if self.compliance && self.mailing() && self.allowed_archdomains_file.is_none() {
            return Err(
                "reports.compliance needs reports.allowed_archdomains_file (the allowed archdomains, one per line)"
                    .into(),
            );
        }
        if !self.mailing() {
            return Ok(());
        }
        if self.to.len() > crate::mail::MAX_RECIPIENTS {
            return Err(format!(
                "reports.to: {} recipients, at most {}",
                self.to.len(),
                crate::mail::MAX_RECIPIENTS
            ));
        }
        crate::mail::mailbox(&self.from).map_err(|e| format!("reports.from: {e}"))?;
        for t in &self.to {
            crate::mail::mailbox(t).map_err(|e| format!("reports.to: {e}"))?;
        }
        if self.subject_prefix.chars().any(char::is_control) || self.subject_prefix.len() > 200 {
            return Err("reports.subject_prefix: one line of at most 200 bytes".into());
        }
        self.smtp.validate()
    }
}

impl Smtp {
    fn validate(&self) -> Result<(), String> {
        if self.host.is_empty() {
            return Err("reports.smtp.host: the SMTP server to send reports through".into());
        }
        if self.port == 0 {
            return Err("reports.smtp.port: 1 to 65535".into());
        }
        if self.tls == SmtpTls::None && !crate::mail::is_loopback(&self.host) {
            return Err(format!(
                "reports.smtp.tls = \"none\" would send the login and the reports in clear to `{}`: only allowed to a loopback address (127.0.0.1, ::1, localhost); use \"starttls\" or \"tls\"",
                self.host
            ));
        }
        if self.username.is_some() != self.password_file.is_some() {
            return Err("reports.smtp.username and reports.smtp.password_file go together".into());
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(600) {
            return Err("reports.smtp.timeout: more than 0s, at most 10m".into());
        }
        Ok(())
    }
}
// ---- end of reports ----

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ingest {
    /// Largest request body accepted (after gzip decoding), bytes.
    pub max_body_bytes: u64,
    /// Time a client has to send a whole request; slower ones get 408 and are disconnected.
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// Report bodies read and parsed at once; more wait (bounds memory).
    pub max_concurrent: usize,
    /// Open connections at most (agents keep theirs alive); more are closed at once.
    pub max_connections: usize,
    /// Reports whose window starts further in the future than this are refused (bad clock).
    #[serde(with = "duration")]
    pub max_clock_skew: Duration,
    /// Most pairs written in one store batch (reports are batched while the store is busy).
    pub batch_max_pairs: usize,
    /// How long a batch waits for more reports before it is written (ClickHouse prefers few
    /// large inserts; SQLite batches by itself while a commit runs).
    #[serde(with = "duration")]
    pub batch_linger: Duration,
}

impl Default for Ingest {
    fn default() -> Self {
        Ingest {
            max_body_bytes: 16 << 20,
            request_timeout: Duration::from_secs(30),
            max_concurrent: 64,
            max_connections: 4096,
            max_clock_skew: Duration::from_secs(3600),
            batch_max_pairs: 500_000,
            batch_linger: Duration::ZERO,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    pub backend: Backend,
    /// SQLite durability: `full` (survives power loss) or `normal` (survives crashes).
    pub sqlite_sync: Sync,
    pub clickhouse: ClickhouseConfig,
}

/// `[storage.clickhouse]`: the file's side of the store's [`ClickHouseOptions`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickhouseConfig {
    /// HTTP interface, `http://` or `https://`, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    pub database: String,
    pub user: String,
    /// File holding the password (first line); none for no password.
    pub password_file: Option<PathBuf>,
    /// Time limit of one HTTP request.
    #[serde(with = "duration")]
    pub timeout: Duration,
}

impl Default for ClickhouseConfig {
    fn default() -> Self {
        let o = ClickHouseOptions::default();
        ClickhouseConfig {
            url: o.url,
            database: o.database,
            user: o.user,
            password_file: o.password_file,
            timeout: o.timeout,
        }
    }
}

impl Config {
    /// The store this configuration names, in the store's own terms.
    pub fn store_options(&self) -> crate::store::Options {
        match self.storage.backend {
            Backend::Sqlite => crate::store::Options::Sqlite {
                dir: self.data_dir.clone(),
                sync: self.storage.sqlite_sync,
            },
            Backend::Clickhouse => {
                crate::store::Options::ClickHouse(self.storage.clickhouse.options())
            }
        }
    }
}

impl ClickhouseConfig {
    /// The store's settings.
    pub fn options(&self) -> ClickHouseOptions {
        ClickHouseOptions {
            url: self.url.clone(),
            database: self.database.clone(),
            user: self.user.clone(),
            password_file: self.password_file.clone(),
            timeout: self.timeout,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Minute rows; also how late a report may arrive.
    #[serde(with = "duration")]
    pub minutes: Duration,
    #[serde(with = "duration")]
    pub hours: Duration,
    #[serde(with = "duration")]
    pub days: Duration,
    /// How often roll-ups and retention run.
    #[serde(with = "duration")]
    pub interval: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        let r = Retention::default();
        RetentionConfig {
            minutes: r.minutes,
            hours: r.hours,
            days: r.days,
            interval: Duration::from_secs(60),
        }
    }
}

impl RetentionConfig {
    pub fn retention(&self) -> Retention {
        Retention {
            minutes: self.minutes,
            hours: self.hours,
            days: self.days,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Daily {
    /// Write `instances-`, `clusters-`, `security-groups-` and `workloads-YYYYMMDD.json` for finished days.
    pub enabled: bool,
    /// How long after midnight (UTC) a day's files are first written (late reports).
    #[serde(with = "duration")]
    pub delay: Duration,
    /// How many past days are checked for late reports (their files are rewritten).
    pub lookback_days: u32,
    #[serde(with = "duration")]
    pub interval: Duration,
}

impl Default for Daily {
    fn default() -> Self {
        Daily {
            enabled: true,
            delay: Duration::from_secs(600),
            lookback_days: 3,
            interval: Duration::from_secs(300),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Enrich {
    /// Static inventory (TOML `[[host]]` entries): hosts outside AWS, overrides of EC2.
    pub inventory_file: Option<PathBuf>,
    /// Well-known foreign addresses: `ADDRESS-OR-CIDR NAME` per line.
    pub foreign_file: Option<PathBuf>,
    /// On-demand prices: CSV `instance_type,region,usd_per_hour`.
    pub price_file: Option<PathBuf>,
    /// How often the files above are checked for changes.
    #[serde(with = "duration")]
    pub files_interval: Duration,
    pub tags: TagKeys,
    pub archdomain: TagRules,
    pub env: TagRules,
    pub ec2: Ec2,
    pub dns: Dns,
}

impl Default for Enrich {
    fn default() -> Self {
        Enrich {
            inventory_file: None,
            foreign_file: None,
            price_file: None,
            files_interval: Duration::from_secs(30),
            tags: TagKeys::default(),
            archdomain: TagRules::default(),
            env: TagRules::default(),
            ec2: Ec2::default(),
            dns: Dns::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ec2 {
    /// Ask EC2 (standard credential chain) for instances, security groups and spot prices.
    pub enabled: bool,
    /// Regions to list (empty: the default chain's region).
    pub regions: Vec<String>,
    /// Endpoint override for every region (a proxy; `AWS_ENDPOINT_URL_EC2` works too).
    pub endpoint_url: Option<String>,
    #[serde(with = "duration")]
    pub refresh: Duration,
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Instead of the API: a snapshot file in the stored JSON form (re-read when it changes).
    pub snapshot_file: Option<PathBuf>,
}

impl Default for Ec2 {
    fn default() -> Self {
        Ec2 {
            enabled: false,
            regions: Vec::new(),
            endpoint_url: None,
            refresh: Duration::from_secs(300),
            timeout: Duration::from_secs(60),
            snapshot_file: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dns {
    /// Reverse-resolve addresses nothing else names.
    pub enabled: bool,
    #[serde(with = "duration")]
    pub ttl: Duration,
    #[serde(with = "duration")]
    pub negative_ttl: Duration,
    #[serde(with = "duration")]
    pub timeout: Duration,
    pub concurrency: usize,
    pub max_entries: usize,
    /// Only peers inside these networks are looked up (agents choose peer addresses; the
    /// default private ranges keep a report from sending the resolver to an attacker's zone).
    pub networks: Vec<ipnet::IpNet>,
}

impl Default for Dns {
    fn default() -> Self {
        let d = crate::enrich::dns::DnsSettings::default();
        Dns {
            enabled: true,
            ttl: d.ttl,
            negative_ttl: d.negative_ttl,
            timeout: d.timeout,
            concurrency: d.concurrency,
            max_entries: d.max_entries,
            networks: d.networks,
        }
    }
}

impl Dns {
    pub fn settings(&self) -> crate::enrich::dns::DnsSettings {
        crate::enrich::dns::DnsSettings {
            ttl: self.ttl,
            negative_ttl: self.negative_ttl,
            timeout: self.timeout,
            concurrency: self.concurrency,
            max_entries: self.max_entries,
            networks: self.networks.clone(),
            ..Default::default()
        }
    }
}

impl Config {
    /// Reads a config file (defaults for what it leaves out).
    /// Relative paths in the file are relative to the file's directory.
    pub fn from_file(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut c = Config::from_toml(&text, &path.display().to_string())?;
        let base = path.parent().unwrap_or(Path::new("."));
        c.resolve_paths(base);
        Ok(c)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.data_dir);
        for p in [
            &mut self.output_dir,
            &mut self.token_file,
            &mut self.read_token_file,
            &mut self.enrich.inventory_file,
            &mut self.enrich.foreign_file,
            &mut self.enrich.price_file,
            &mut self.enrich.ec2.snapshot_file,
            &mut self.storage.clickhouse.password_file,
            &mut self.tls_cert_file,
            &mut self.tls_key_file,
            &mut self.tls_client_ca_file,
            &mut self.archive.credentials_file,
            &mut self.services.file,
            &mut self.reports.allowed_archdomains_file,
            &mut self.reports.smtp.password_file,
            &mut self.reports.smtp.ca_file,
        ]
        .into_iter()
        .flatten()
        {
            fix(p);
        }
    }

    pub fn from_toml(text: &str, origin: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| {
            // toml's message spans several lines with a source excerpt; keep it on one.
            let msg = e.message().to_owned();
            match e.span() {
                Some(span) => {
                    let line = text[..span.start].matches('\n').count() + 1;
                    format!("{origin}:{line}: {msg}")
                }
                None => format!("{origin}: {msg}"),
            }
        })
    }

    pub fn output_dir(&self) -> PathBuf {
        self.output_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("maps"))
    }

    /// Checks what types cannot; the first problem, in one line.
    pub fn validate(&self) -> Result<(), String> {
        self.cost.validate()?;
        self.validate_auth()?;
        self.validate_listener()?;
        self.validate_reads()?;
        self.validate_ingest()?;
        self.validate_periods()?;
        self.validate_enrich()?;
        self.archive.validate()?;
        crate::viewerapi::validate_presets(&self.viewer.suppression_presets)?;
        self.services.validate()?;
        self.prices.validate()?;
        self.reports.validate()?;
        if self.storage.backend == Backend::Clickhouse {
            // Parsed as the store's client will parse it; TLS comes with reqwest (rustls).
            let u = &self.storage.clickhouse.url;
            let scheme = reqwest::Url::parse(u).map(|u| u.scheme().to_owned());
            if !matches!(scheme.as_deref(), Ok("http" | "https")) {
                return Err(format!(
                    "storage.clickhouse.url `{u}`: an http:// or https:// URL of ClickHouse's HTTP interface"
                ));
            }
        }
        Ok(())
    }

    fn validate_auth(&self) -> Result<(), String> {
        if self.token_file.is_some() && self.allow_unauthenticated {
            return Err("token_file and allow_unauthenticated exclude each other".into());
        }
        if let Some(t) = &self.token_file {
            crate::auth::Tokens::load(t)?;
        }
        Ok(())
    }

    /// The TLS files, as a whole (loaded now: a bad file fails at start), and the listener's
    /// limits.
    pub fn tls_paths(&self) -> Result<Option<crate::tls::TlsPaths>, String> {
        match (&self.tls_cert_file, &self.tls_key_file) {
            (None, None) if self.tls_client_ca_file.is_some() => {
                Err("tls_client_ca_file needs tls_cert_file and tls_key_file".into())
            }
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => Ok(Some(crate::tls::TlsPaths {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca_file.clone(),
            })),
            _ => Err("tls_cert_file and tls_key_file go together".into()),
        }
    }

    fn validate_listener(&self) -> Result<(), String> {
        if let Some(p) = self.tls_paths()? {
            crate::tls::load(&p).map_err(|e| format!("tls: {e}"))?;
        }
        // (Above ingest.max_connections it is simply that cap.)
        if self.max_connections_per_address == 0 {
            return Err("max_connections_per_address must be at least 1".into());
        }
        if self.idle_timeout.is_zero() {
            return Err("idle_timeout must be more than 0".into());
        }
        Ok(())
    }

    /// Read protection (issue 8): off loopback, reads need a credential unless the operator
    /// says otherwise; the read token file is loaded now so a bad one fails at start.
    fn validate_reads(&self) -> Result<(), String> {
        if let Some(t) = &self.read_token_file {
            crate::read_auth::ReadTokens::load(t).map_err(|e| format!("read_token_file: {e}"))?;
        }
        match &self.proxy_user_header {
            Some(h) if axum::http::HeaderName::try_from(h.as_str()).is_err() => {
                return Err(format!("proxy_user_header `{h}`: not a valid header name"));
            }
            None if !self.trusted_proxies.is_empty() => {
                return Err(
                    "trusted_proxies needs proxy_user_header (e.g. \"X-Forwarded-User\")".into(),
                );
            }
            Some(_) if self.trusted_proxies.is_empty() => {
                return Err(
                    "proxy_user_header needs trusted_proxies (the proxies' addresses)".into(),
                );
            }
            _ => {}
        }
        if let Some(h) = &self.allowed_hosts
            && (h.is_empty()
                || h.iter()
                    .any(|h| h.is_empty() || h.contains(char::is_whitespace)))
        {
            return Err("allowed_hosts: a non-empty list of host names (no spaces)".into());
        }
        if self.map_builds == 0 || self.map_builds > 64 {
            return Err(format!("map_builds = {}: 1 to 64", self.map_builds));
        }
        if self.max_range_days == 0 || self.max_range_days > 400 {
            return Err(format!(
                "max_range_days = {}: 1 to 400",
                self.max_range_days
            ));
        }
        let protected = self.read_token_file.is_some() || !self.trusted_proxies.is_empty();
        if !self.listen.ip().is_loopback() && !protected && !self.allow_anonymous_reads {
            return Err(format!(
                "listen = {}: not a loopback address, and reads (maps, exports, /metrics) would be open to anyone; set read_token_file or trusted_proxies, or allow_anonymous_reads = true",
                self.listen
            ));
        }
        Ok(())
    }

    fn validate_ingest(&self) -> Result<(), String> {
        if self.ingest.max_body_bytes < 1024 {
            return Err(format!(
                "ingest.max_body_bytes = {}: at least 1024",
                self.ingest.max_body_bytes
            ));
        }
        if self.ingest.max_concurrent == 0 || self.ingest.batch_max_pairs == 0 {
            return Err(
                "ingest.max_concurrent and ingest.batch_max_pairs must be at least 1".into(),
            );
        }
        if self.ingest.request_timeout.is_zero() {
            return Err("ingest.request_timeout must be more than 0".into());
        }
        Ok(())
    }

    /// Retention and the intervals of periodic work.
    fn validate_periods(&self) -> Result<(), String> {
        let r = &self.retention;
        if r.minutes < Duration::from_secs(3600) {
            return Err("retention.minutes must be at least 1h".into());
        }
        if r.hours < r.minutes || r.days < r.hours {
            return Err(format!(
                "retention must grow with the grain: minutes {} <= hours {} <= days {}",
                humantime::format_duration(r.minutes),
                humantime::format_duration(r.hours),
                humantime::format_duration(r.days)
            ));
        }
        if r.interval.is_zero()
            || self.daily.interval.is_zero()
            || self.enrich.files_interval.is_zero()
        {
            return Err("intervals (retention.interval, daily.interval, enrich.files_interval) must be more than 0".into());
        }
        Ok(())
    }

    /// Enrichment settings, and the files they name (read now: a bad file fails at start).
    fn validate_enrich(&self) -> Result<(), String> {
        let en = &self.enrich;
        if en.ec2.refresh < Duration::from_secs(10) {
            return Err("enrich.ec2.refresh must be at least 10s".into());
        }
        if en.dns.concurrency == 0 {
            return Err("enrich.dns.concurrency must be at least 1".into());
        }
        type Load = fn(&Path) -> Result<(), String>;
        let files: [(&str, &Option<PathBuf>, Load); 3] = [
            ("enrich.inventory_file", &en.inventory_file, |p| {
                crate::enrich::Inventory::load(p).map(drop)
            }),
            ("enrich.foreign_file", &en.foreign_file, |p| {
                crate::enrich::ForeignList::load(p).map(drop)
            }),
            ("enrich.price_file", &en.price_file, |p| {
                crate::enrich::PriceTable::load(p).map(drop)
            }),
        ];
        for (what, path, load) in files {
            if let Some(p) = path {
                load(p).map_err(|e| format!("{what}: {e}"))?;
            }
        }
        if let Some(p) = &en.ec2.snapshot_file {
            let bytes = std::fs::read(p)
                .map_err(|e| format!("enrich.ec2.snapshot_file: {}: {e}", p.display()))?;
            trafficmap_model::cloud::CloudSnapshot::from_json(&bytes)
                .map_err(|e| format!("enrich.ec2.snapshot_file: {}: {e}", p.display()))?;
        }
        if en.ec2.enabled && en.ec2.snapshot_file.is_some() {
            return Err(
                "enrich.ec2: enabled (the API) and snapshot_file exclude each other".into(),
            );
        }
        if en.ec2.enabled && !cfg!(feature = "ec2") {
            return Err(
                "enrich.ec2.enabled: this collector was built without the `ec2` feature".into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../collector.example.toml");

    fn keys(v: &toml::Value, prefix: &str, out: &mut Vec<String>) {
        if let toml::Value::Table(t) = v {
            for (k, v) in t {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                out.push(path.clone());
                keys(v, &path, out);
            }
        }
    }

    /// Every key of a fully populated config appears in the example, and the example parses.
    #[test]
    fn example_config_is_complete_and_valid() {
        let example = Config::from_toml(EXAMPLE, "collector.example.toml").unwrap();
        let mut full = Config {
            output_dir: Some("/x".into()),
            token_file: Some("/x".into()),
            tls_cert_file: Some("/x".into()),
            tls_key_file: Some("/x".into()),
            tls_client_ca_file: Some("/x".into()),
            read_token_file: Some("/x".into()),
            proxy_user_header: Some("X-Forwarded-User".into()),
            allowed_hosts: Some(vec!["x".into()]),
            ..Config::default()
        };
        full.enrich.inventory_file = Some("/x".into());
        full.enrich.foreign_file = Some("/x".into());
        full.enrich.price_file = Some("/x".into());
        full.enrich.ec2.endpoint_url = Some("http://x".into());
        full.enrich.ec2.snapshot_file = Some("/x".into());
        full.storage.clickhouse.password_file = Some("/x".into());
        full.enrich
            .archdomain
            .rewrites
            .push(crate::enrich::rules::Rewrite {
                prefix: "a".into(),
                replace: "b".into(),
            });
        full.enrich.env.aliases.insert("a".into(), "b".into());
        full.cost.internet_egress_by_region.insert("r".into(), 0.1);
        full.archive.endpoint_url = Some("http://x".into());
        full.archive.region = Some("r".into());
        full.archive.credentials_file = Some("/x".into());
        full.services.file = Some("/x".into());
        full.services.names.insert("8080".into(), "http-alt".into());
        full.prices.price_list_endpoint = Some("http://x".into());
        full.reports.to = vec!["ops@example.com".into()];
        full.reports.allowed_archdomains_file = Some("/x".into());
        full.reports.smtp.username = Some("u".into());
        full.reports.smtp.password_file = Some("/x".into());
        full.reports.smtp.ca_file = Some("/x".into());
        let mut want = Vec::new();
        keys(&toml::Value::try_from(&full).unwrap(), "", &mut want);
        let mut have = Vec::new();
        keys(
            &toml::from_str::<toml::Value>(EXAMPLE).unwrap(),
            "",
            &mut have,
        );
        // Inside maps (aliases, per-region rates) the example's own keys are examples.
        let generic = |k: &String| {
            k.starts_with("enrich.env.aliases.")
                || k.starts_with("enrich.archdomain.aliases.")
                || k.starts_with("cost.internet_egress_by_region.")
                || k.starts_with("services.names.")
        };
        let missing: Vec<&String> = want
            .iter()
            .filter(|k| !generic(k) && !have.contains(k))
            .collect();
        assert!(
            missing.is_empty(),
            "collector.example.toml lacks {missing:?}"
        );
        // Its values are the defaults, except where it shows an example of a setting.
        assert_eq!(example.ingest, Ingest::default());
        assert_eq!(example.retention, RetentionConfig::default());
        assert_eq!(example.daily, Daily::default());
        assert_eq!(
            (example.max_connections_per_address, example.idle_timeout),
            (
                Config::default().max_connections_per_address,
                Config::default().idle_timeout
            )
        );
        assert_eq!(
            example.cost.cross_az_per_gib,
            CostRates::default().cross_az_per_gib
        );
    }

    /// `[services]` (issue 12 item 4): `names` over `file` over IANA's; bad entries stop the
    /// start with the port or the line.
    #[test]
    fn service_names_merge_configuration_over_file_over_iana() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("services");
        std::fs::write(
            &file,
            "kafka 9092/tcp\nfromfile 8080/tcp\nudponly 49990/udp\n",
        )
        .unwrap();
        let text = format!(
            "[services]\nnames = {{ 8080 = \"proxy\", 9978 = \"trafficmap\" }}\nfile = {:?}\n",
            file.display().to_string()
        );
        let cfg = Config::from_toml(&text, "c.toml").unwrap();
        cfg.validate().unwrap();
        let names = cfg.services.load().unwrap();
        assert_eq!(names.name(8080), Some("proxy"));
        assert_eq!(names.name(9092), Some("kafka"));
        assert_eq!(names.name(9978), Some("trafficmap"));
        assert_eq!(names.name(5432), Some("postgresql"));
        assert_eq!(names.name(49990), None, "udp entries name nothing");
        for (names, want) in [
            (
                "{ 0 = \"x\" }",
                "services.names: `0` is not a TCP port (1-65535)",
            ),
            (
                "{ http = \"x\" }",
                "services.names: `http` is not a TCP port (1-65535)",
            ),
            (
                "{ 80 = \"\" }",
                "services.names: port 80: empty service name",
            ),
            (
                "{ 80 = \"a\\u001b[31m\" }",
                "services.names: port 80: service name \"a\\u{1b}[31m\" holds the control character '\\u{1b}'",
            ),
        ] {
            let cfg =
                Config::from_toml(&format!("[services]\nnames = {names}\n"), "c.toml").unwrap();
            assert_eq!(cfg.validate().unwrap_err(), want);
        }
        std::fs::write(&file, "ok 1/tcp\nbad\n").unwrap();
        let cfg = Config {
            services: Services {
                file: Some(file.clone()),
                ..Services::default()
            },
            ..Config::default()
        };
        assert_eq!(
            cfg.validate().unwrap_err(),
            format!(
                "services.file: {}: line 2: expected `name port/protocol`",
                file.display()
            )
        );
        std::fs::write(
            &file,
            "#".repeat(trafficmap_model::services::MAX_FILE_BYTES + 1),
        )
        .unwrap();
        assert_eq!(
            cfg.validate().unwrap_err(),
            format!(
                "services.file: {}: larger than {} bytes",
                file.display(),
                trafficmap_model::services::MAX_FILE_BYTES
            )
        );
    }

    #[test]
    fn errors_are_one_line_with_position() {
        let err =
            Config::from_toml("listen = \"127.0.0.1:1\"\nlistne = 1\n", "c.toml").unwrap_err();
        assert!(err.starts_with("c.toml:2: unknown field `listne`"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        let err = Config::from_toml("[retention]\nminutes = \"soon\"\n", "c.toml").unwrap_err();
        assert!(
            err.starts_with("c.toml:2: `soon` is not a duration"),
            "{err}"
        );
    }

    /// The file's defaults are the store's, and every field reaches the store.
    #[test]
    fn clickhouse_section_maps_into_the_store_options() {
        assert_eq!(
            ClickhouseConfig::default().options(),
            ClickHouseOptions::default()
        );
        let c = Config::from_toml(
            "[storage.clickhouse]\nurl = \"http://ch:8123\"\ndatabase = \"d\"\nuser = \"u\"\npassword_file = \"/pw\"\ntimeout = \"5s\"\n",
            "c.toml",
        )
        .unwrap();
        assert_eq!(
            c.storage.clickhouse.options(),
            ClickHouseOptions {
                url: "http://ch:8123".into(),
                database: "d".into(),
                user: "u".into(),
                password_file: Some("/pw".into()),
                timeout: Duration::from_secs(5),
            }
        );
    }

    #[test]
    fn clickhouse_url_http_or_https() {
        let with_url = |url: &str| {
            let mut c = Config {
                allow_unauthenticated: true,
                ..Config::default()
            };
            c.storage.backend = Backend::Clickhouse;
            c.storage.clickhouse.url = url.into();
            c.validate()
        };
        assert_eq!(with_url("http://127.0.0.1:8123"), Ok(()));
        assert_eq!(with_url("https://clickhouse.example:8443/"), Ok(()));
        for bad in [
            "tcp://clickhouse:9000",
            "clickhouse:8123",
            "127.0.0.1:8123",
            "http://",
        ] {
            assert_eq!(
                with_url(bad),
                Err(format!(
                    "storage.clickhouse.url `{bad}`: an http:// or https:// URL of ClickHouse's HTTP interface"
                )),
            );
        }
    }

    #[test]
    fn reads_off_loopback_need_protection() {
        let mut c = Config {
            listen: "0.0.0.0:9978".parse().unwrap(),
            ..Config::default()
        };
        assert_eq!(
            c.validate().unwrap_err(),
            "listen = 0.0.0.0:9978: not a loopback address, and reads (maps, exports, /metrics) would be open to anyone; set read_token_file or trusted_proxies, or allow_anonymous_reads = true"
        );
        c.allow_anonymous_reads = true;
        assert_eq!(c.validate(), Ok(()));
        c.allow_anonymous_reads = false;
        c.trusted_proxies = vec!["10.0.0.5/32".parse().unwrap()];
        assert_eq!(
            c.validate().unwrap_err(),
            "trusted_proxies needs proxy_user_header (e.g. \"X-Forwarded-User\")"
        );
        c.proxy_user_header = Some("X-Forwarded-User".into());
        assert_eq!(c.validate(), Ok(()));
        c.proxy_user_header = Some("bad header".into());
        assert_eq!(
            c.validate().unwrap_err(),
            "proxy_user_header `bad header`: not a valid header name"
        );
        let mut c = Config {
            max_range_days: 401,
            ..Config::default()
        };
        assert_eq!(c.validate().unwrap_err(), "max_range_days = 401: 1 to 400");
        c.max_range_days = 31;
        c.map_builds = 0;
        assert_eq!(c.validate().unwrap_err(), "map_builds = 0: 1 to 64");
        c.map_builds = 2;
        c.allowed_hosts = Some(vec![]);
        assert_eq!(
            c.validate().unwrap_err(),
            "allowed_hosts: a non-empty list of host names (no spaces)"
        );
    }

    #[test]
    fn validation() {
        let mut c = Config {
            allow_unauthenticated: true,
            ..Config::default()
        };
        assert_eq!(c.validate(), Ok(()));
        c.retention.hours = Duration::from_secs(3600);
        assert!(c.validate().unwrap_err().starts_with("retention must grow"));
        // No tokens at all: valid, the collector serves maps and refuses reports.
        assert_eq!(Config::default().validate(), Ok(()));
        let mut c = Config {
            allow_unauthenticated: true,
            ..Config::default()
        };
        c.enrich.inventory_file = Some("/nonexistent/inv.toml".into());
        assert_eq!(
            c.validate().unwrap_err(),
            "enrich.inventory_file: /nonexistent/inv.toml: No such file or directory (os error 2)"
        );
    }
}
