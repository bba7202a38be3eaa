//! Agent configuration: command-line flags over an optional TOML file over defaults, validated
//! into one typed [`Config`] before anything is loaded or bound.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
use serde::{Deserialize, Serialize};

use crate::{backend::AttachMode, probe::NetnsScope};

/// Exit code for bad configuration (`EX_USAGE`).
pub const EXIT_CONFIG: i32 = 64;

/// trafficmap-agent: counts TCP bytes per connection with eBPF, exports per-pair counters to
/// Prometheus and ships minute reports to a trafficmap collector.
#[derive(Parser, Debug, Default, Clone)]
#[command(name = "trafficmap-agent", version, about)]
pub struct Cli {
    /// TOML configuration file; flags given here override its values.
    #[arg(long, short = 'c', env = "TRAFFICMAP_AGENT_CONFIG")]
    pub config: Option<PathBuf>,

    /// How often to drain the probe and write a report (e.g. `60s`, `1m`, `500ms`).
    #[arg(long)]
    pub interval: Option<String>,
    /// Byte-counting backend: auto, fexit, kprobe, tracepoint or counters (no per-call hook;
    /// counts acknowledged and arrived bytes, see docs/agent.md).
    #[arg(long)]
    pub attach: Option<String>,
    /// Count only this network namespace (`/proc/<pid>/ns/net`, `/run/netns/<name>`) or `all`.
    #[arg(long)]
    pub netns: Option<String>,
    /// Capacity of the probe's live connection table.
    #[arg(long)]
    pub max_connections: Option<u32>,
    /// Size in bytes of the probe's ring buffer of closed connections (power of two).
    #[arg(long)]
    pub closed_buffer_bytes: Option<u32>,

    /// Collector base URL (e.g. `https://collector:9978`); reports are POSTed to
    /// `<URL>/api/v1/reports`.
    #[arg(long)]
    pub collector: Option<String>,
    /// File holding the bearer token for the collector (else `$TRAFFICMAP_TOKEN`).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// PEM file of CA certificates to trust for the collector, in addition to the system's.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// PEM file holding this agent's client certificate (chain) and its private key, for a
    /// collector that requires mutual TLS (the certificate names the host's machine id).
    #[arg(long)]
    pub client_cert_file: Option<PathBuf>,
    /// Directory of reports not yet accepted by the collector (survives restarts).
    #[arg(long)]
    pub spool_dir: Option<PathBuf>,
    /// Most bytes the spool may hold; when full the oldest report is dropped (and counted).
    #[arg(long)]
    pub spool_max_bytes: Option<u64>,

    /// Also append every report as one JSON line to this file (rotated daily).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Days of rotated output files to keep.
    #[arg(long)]
    pub output_keep_days: Option<u32>,

    /// Address of the `/metrics` endpoint (`off` to disable).
    #[arg(long)]
    pub listen: Option<String>,
    /// Most pair series exported to Prometheus; the rest are summed in one `other` series.
    #[arg(long)]
    pub metrics_top_k: Option<usize>,
    /// Pair series idle this long are removed from `/metrics` (e.g. `10m`).
    #[arg(long)]
    pub metrics_idle_expiry: Option<String>,

    /// Host name to report (default: the system's).
    #[arg(long)]
    pub host_name: Option<String>,
    /// Stable host id to report (default: /etc/machine-id, suffixed with the namespace inode
    /// when counting one namespace).
    #[arg(long)]
    pub host_id: Option<String>,
    /// Read the EC2 instance identity from IMDSv2: on, off or auto (try briefly at start).
    #[arg(long)]
    pub imds: Option<String>,
    /// IMDS base URL (for tests and unusual networks).
    #[arg(long)]
    pub imds_endpoint: Option<String>,

    /// Log filter (`info`, `debug`, `trafficmap_daemon=debug`, ...); `RUST_LOG` also works.
    #[arg(long)]
    pub log_level: Option<String>,

    // Kubernetes names (issue 11, k11-k8s): the rest of the block is `[kubernetes]` in the file.
    /// Where pod names come from: auto, kubelet, apiserver or off (`[kubernetes] source`).
    #[arg(long)]
    pub kubernetes: Option<String>,
}

/// The same settings in the TOML file (`deploy/agent.example.toml` lists them all).
#[derive(Deserialize, Serialize, Debug, Default, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub interval: Option<String>,
    pub attach: Option<String>,
    pub netns: Option<String>,
    pub max_connections: Option<u32>,
    pub closed_buffer_bytes: Option<u32>,
    pub collector: Option<String>,
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub spool_dir: Option<PathBuf>,
    pub spool_max_bytes: Option<u64>,
    pub output: Option<PathBuf>,
    pub output_keep_days: Option<u32>,
    pub listen: Option<String>,
    pub metrics_top_k: Option<usize>,
    pub metrics_idle_expiry: Option<String>,
    pub host_name: Option<String>,
    pub host_id: Option<String>,
    pub imds: Option<String>,
    pub imds_endpoint: Option<String>,
    pub log_level: Option<String>,
    // Issue 11, containers (k11-probe): the `[containers]` table.
    pub containers: Option<ContainersFile>,
    // Kubernetes names (issue 11, k11-k8s).
    pub kubernetes: Option<crate::k8s::KubernetesFile>,
    // Issue 11, NAT undone (k11-nat): the `[nat]` table.
    pub nat: Option<NatFile>,
}

// Issue 11, NAT undone (k11-nat): `[nat]` settings (docs/agent.md, "NAT and Services").
/// The `[nat]` table of the file.
#[derive(Deserialize, Serialize, Debug, Default, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NatFile {
    /// Read the conntrack table at each drain and report DNAT'ed connections' real servers.
    pub enable: Option<bool>,
    /// Most DNAT entries kept per dump; the rest are counted and left out.
    pub max_entries: Option<usize>,
}

/// Validated `[nat]` settings.
#[derive(Clone, Debug, PartialEq)]
pub struct NatConfig {
    pub enable: bool,
    pub max_entries: usize,
}

impl NatConfig {
    fn from_file(f: Option<&NatFile>) -> Result<NatConfig, ConfigError> {
        let f = f.cloned().unwrap_or_default();
        let max_entries = f
            .max_entries
            .unwrap_or(crate::conntrack::DEFAULT_MAX_ENTRIES);
        if !(1..=crate::conntrack::MAX_MAX_ENTRIES).contains(&max_entries) {
            return Err(ConfigError(format!(
                "nat.max_entries: {max_entries} is out of range (1 to {})",
                crate::conntrack::MAX_MAX_ENTRIES
            )));
        }
        Ok(NatConfig {
            enable: f.enable.unwrap_or(true),
            max_entries,
        })
    }
}

// ---- Issue 11, containers (k11-probe) ------------------------------------------------------

/// `[containers]`: which container each pair's process runs in (docs/agent.md, "Containers").
#[derive(Deserialize, Serialize, Debug, Default, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ContainersFile {
    pub enable: Option<bool>,
    /// cgroup2 mount to walk, or `auto` (found in /proc/self/mountinfo).
    pub cgroup_root: Option<String>,
    /// podman's API socket; `""` turns the source off.
    pub podman_socket: Option<String>,
    /// Docker's API socket; `""` turns the source off.
    pub docker_socket: Option<String>,
    /// Most container cgroups (and non-container cgroup ids) remembered.
    pub cache_size: Option<usize>,
    /// At most one walk of the cgroup tree per this.
    pub rescan_interval: Option<String>,
    /// How often the runtime API sources list their containers.
    pub api_refresh: Option<String>,
    /// Timeout of one runtime API request.
    pub api_timeout: Option<String>,
    /// Most containers a runtime API source remembers.
    pub api_max_containers: Option<usize>,
    /// Most distinct (namespace, workload) label values on /metrics; the rest are `other`.
    pub metrics_max_workloads: Option<usize>,
}

/// Validated `[containers]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainersConfig {
    pub enable: bool,
    pub cgroup_root: Option<PathBuf>,
    pub podman_socket: Option<PathBuf>,
    pub docker_socket: Option<PathBuf>,
    pub cache_size: usize,
    pub rescan_interval: Duration,
    pub api_refresh: Duration,
    pub api_timeout: Duration,
    pub api_max_containers: usize,
    pub metrics_max_workloads: usize,
}

impl ContainersConfig {
    fn from_file(f: &ContainersFile) -> Result<ContainersConfig, ConfigError> {
        let socket = |v: &Option<String>, default: &str| match v.as_deref() {
            None => Some(PathBuf::from(default)),
            Some("") => None,
            Some(p) => Some(PathBuf::from(p)),
        };
        let bounded = |field: &str, v: Option<usize>, default: usize, max: usize| {
            let v = v.unwrap_or(default);
            if v == 0 || v > max {
                return Err(ConfigError(format!(
                    "containers.{field}: {v} is out of range (1 to {max})"
                )));
            }
            Ok(v)
        };
        let dur = |field: &str, v: &Option<String>, default: &str, min: Duration, max: Duration| {
            let d = duration(
                &format!("containers.{field}"),
                v.as_deref().unwrap_or(default),
            )?;
            if d < min || d > max {
                return Err(ConfigError(format!(
                    "containers.{field}: {d:?} is out of range ({min:?} to {max:?})"
                )));
            }
            Ok(d)
        };
        Ok(ContainersConfig {
            enable: f.enable.unwrap_or(true),
            cgroup_root: match f.cgroup_root.as_deref() {
                None | Some("auto") => None,
                Some("") => {
                    return Err(ConfigError(
                        "containers.cgroup_root: empty; give a path or `auto`".into(),
                    ));
                }
                Some(p) => Some(PathBuf::from(p)),
            },
            podman_socket: socket(&f.podman_socket, "/run/podman/podman.sock"),
            docker_socket: socket(&f.docker_socket, "/var/run/docker.sock"),
            cache_size: bounded("cache_size", f.cache_size, 16_384, 1 << 20)?,
            rescan_interval: dur(
                "rescan_interval",
                &f.rescan_interval,
                "10s",
                Duration::from_millis(100),
                Duration::from_secs(3600),
            )?,
            api_refresh: dur(
                "api_refresh",
                &f.api_refresh,
                "30s",
                Duration::from_millis(100),
                Duration::from_secs(3600),
            )?,
            api_timeout: dur(
                "api_timeout",
                &f.api_timeout,
                "2s",
                Duration::from_millis(10),
                Duration::from_secs(60),
            )?,
            api_max_containers: bounded(
                "api_max_containers",
                f.api_max_containers,
                16_384,
                1 << 20,
            )?,
            metrics_max_workloads: bounded(
                "metrics_max_workloads",
                f.metrics_max_workloads,
                100,
                10_000,
            )?,
        })
    }
}

// ---- end of issue 11, containers ------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Imds {
    On,
    Off,
    Auto,
}

/// Validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub interval: Duration,
    pub attach: AttachMode,
    pub netns: NetnsScope,
    pub max_connections: u32,
    pub closed_buffer_bytes: u32,
    pub collector: Option<reqwest::Url>,
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub spool_dir: PathBuf,
    pub spool_max_bytes: u64,
    pub output: Option<PathBuf>,
    pub output_keep_days: u32,
    pub listen: Option<SocketAddr>,
    pub metrics_top_k: usize,
    pub metrics_idle_expiry: Duration,
    pub host_name: Option<String>,
    pub host_id: Option<String>,
    pub imds: Imds,
    pub imds_endpoint: String,
    pub log_level: String,
    // Issue 11, containers (k11-probe).
    pub containers: ContainersConfig,
    // Issue 11, NAT undone (k11-nat).
    pub nat: NatConfig,
    /// Where the file settings came from, for SIGHUP reloads.
    pub config_file: Option<PathBuf>,
    // Kubernetes names (issue 11, k11-k8s).
    pub kubernetes: crate::k8s::KubernetesConfig,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9977";
pub const DEFAULT_SPOOL_DIR: &str = "/var/lib/trafficmap/spool";

/// A configuration error: one line saying what is wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn duration(field: &str, v: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(v).map_err(|e| {
        ConfigError(format!(
            "{field}: `{v}` is not a duration ({e}); use e.g. 60s, 1m, 500ms"
        ))
    })
}

impl Config {
    /// Reads the file named by `cli.config` (if any) and merges it under the flags.
    pub fn load(cli: &Cli) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))?;
                toml::from_str::<FileConfig>(&text).map_err(|e| {
                    ConfigError(format!(
                        "config file {}: {}",
                        path.display(),
                        e.to_string().replace('\n', " ").trim()
                    ))
                })?
            }
            None => FileConfig::default(),
        };
        Self::merge(cli, &file)
    }

    /// Flags over file over defaults, then validation.
    pub fn merge(cli: &Cli, f: &FileConfig) -> Result<Config, ConfigError> {
        macro_rules! pick {
            ($field:ident) => {
                cli.$field.clone().or_else(|| f.$field.clone())
            };
        }
        let interval = duration("interval", &pick!(interval).unwrap_or_else(|| "60s".into()))?;
        if interval < Duration::from_millis(100) || interval > Duration::from_secs(3600) {
            return Err(ConfigError(format!(
                "interval: {interval:?} is out of range (100ms to 1h)"
            )));
        }
        let attach = pick!(attach)
            .unwrap_or_else(|| "auto".into())
            .parse::<AttachMode>()
            .map_err(|e| ConfigError(format!("attach: {e}")))?;
        let netns: NetnsScope = pick!(netns)
            .unwrap_or_else(|| "all".into())
            .parse()
            .unwrap_or_default();
        if let NetnsScope::Path(p) = &netns
            && !p.exists()
        {
            return Err(ConfigError(format!(
                "netns: {} does not exist; give a network namespace file such as /proc/<pid>/ns/net or /run/netns/<name>, or `all`",
                p.display()
            )));
        }
        let max_connections = pick!(max_connections).unwrap_or(65_536);
        if !(64..=16_777_216).contains(&max_connections) {
            return Err(ConfigError(format!(
                "max_connections: {max_connections} is out of range (64 to 16777216)"
            )));
        }
        let closed_buffer_bytes = pick!(closed_buffer_bytes).unwrap_or(4 << 20);
        if closed_buffer_bytes < 4096 || !closed_buffer_bytes.is_power_of_two() {
            return Err(ConfigError(format!(
                "closed_buffer_bytes: {closed_buffer_bytes} must be a power of two of at least 4096"
            )));
        }
        let collector = match pick!(collector) {
            None => None,
            Some(s) => {
                let url = reqwest::Url::parse(&s)
                    .map_err(|e| ConfigError(format!("collector: `{s}` is not a URL ({e})")))?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(ConfigError(format!(
                        "collector: `{s}` must be an http:// or https:// URL"
                    )));
                }
                Some(url)
            }
        };
        let token_file = pick!(token_file);
        if let Some(t) = &token_file
            && !t.is_file()
        {
            return Err(ConfigError(format!(
                "token_file: {} is not a readable file",
                t.display()
            )));
        }
        let ca_file = pick!(ca_file);
        if let Some(ca) = &ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| ConfigError(format!("ca_file: {}: {e}", ca.display())))?;
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                ConfigError(format!(
                    "ca_file: {} has no usable PEM certificate ({e})",
                    ca.display()
                ))
            })?;
        }
        let client_cert_file = pick!(client_cert_file);
        if let Some(f) = &client_cert_file {
            let pem = std::fs::read(f)
                .map_err(|e| ConfigError(format!("client_cert_file: {}: {e}", f.display())))?;
            reqwest::Identity::from_pem(&pem).map_err(|e| {
                ConfigError(format!(
                    "client_cert_file: {} needs a PEM certificate and its private key ({e})",
                    f.display()
                ))
            })?;
        }
        let spool_max_bytes = pick!(spool_max_bytes).unwrap_or(256 << 20);
        if spool_max_bytes < 64 << 10 {
            return Err(ConfigError(format!(
                "spool_max_bytes: {spool_max_bytes} is too small (at least 65536)"
            )));
        }
        let listen = match pick!(listen).unwrap_or_else(|| DEFAULT_LISTEN.into()) {
            s if s == "off" => None,
            s => Some(s.parse::<SocketAddr>().map_err(|_| {
                ConfigError(format!("listen: `{s}` is not an address:port (or `off`)"))
            })?),
        };
        let metrics_top_k = pick!(metrics_top_k).unwrap_or(100);
        if metrics_top_k > 10_000 {
            return Err(ConfigError(format!(
                "metrics_top_k: {metrics_top_k} is too many series (at most 10000)"
            )));
        }
        let metrics_idle_expiry = duration(
            "metrics_idle_expiry",
            &pick!(metrics_idle_expiry).unwrap_or_else(|| "10m".into()),
        )?;
        let imds = match pick!(imds).as_deref().unwrap_or("auto") {
            "on" => Imds::On,
            "off" => Imds::Off,
            "auto" => Imds::Auto,
            other => {
                return Err(ConfigError(format!(
                    "imds: `{other}` must be on, off or auto"
                )));
            }
        };
        // Issue 8 (reports within the model's bounds): the configured identity is the
        // operator's, so a value the collector would refuse is a config error, not a silent fix.
        let host_name = pick!(host_name);
        let host_id = pick!(host_id);
        for (field, v, max) in [
            (
                "host_name",
                &host_name,
                trafficmap_model::bounds::MAX_HOSTNAME_LEN,
            ),
            (
                "host_id",
                &host_id,
                trafficmap_model::bounds::MAX_MACHINE_ID_LEN,
            ),
        ] {
            if let Some(v) = v
                && (v.is_empty() || v.len() > max || trafficmap_model::bounds::has_control(v))
            {
                return Err(ConfigError(format!(
                    "{field}: `{}` ({} bytes) must be 1 to {max} bytes without control characters",
                    crate::sanitize::text(v, 64),
                    v.len()
                )));
            }
        }
        let log_level = pick!(log_level).unwrap_or_else(|| "info".into());
        tracing_subscriber::EnvFilter::try_new(&log_level)
            .map_err(|e| ConfigError(format!("log_level: `{log_level}`: {e}")))?;
        // Kubernetes names (issue 11, k11-k8s).
        let kubernetes = crate::k8s::KubernetesConfig::from_file(
            &f.kubernetes.clone().unwrap_or_default(),
            cli.kubernetes.as_deref(),
            &|k| std::env::var(k).ok(),
        )
        .map_err(ConfigError)?;
        Ok(Config {
            interval,
            attach,
            netns,
            max_connections,
            closed_buffer_bytes,
            collector,
            token_file,
            ca_file,
            client_cert_file,
            spool_dir: pick!(spool_dir).unwrap_or_else(|| DEFAULT_SPOOL_DIR.into()),
            spool_max_bytes,
            output: pick!(output),
            output_keep_days: pick!(output_keep_days).unwrap_or(7),
            listen,
            metrics_top_k,
            metrics_idle_expiry,
            host_name,
            host_id,
            imds,
            imds_endpoint: pick!(imds_endpoint).unwrap_or_else(|| "http://169.254.169.254".into()),
            log_level,
            // Issue 11, containers (k11-probe).
            containers: ContainersConfig::from_file(&f.containers.clone().unwrap_or_default())?,
            nat: NatConfig::from_file(f.nat.as_ref())?,
            config_file: cli.config.clone(),
            kubernetes,
        })
    }

    /// The collector's bearer token: the token file, else `$TRAFFICMAP_TOKEN`.
    pub fn token(&self) -> Result<Option<String>, ConfigError> {
        if let Some(path) = &self.token_file {
            let t = std::fs::read_to_string(path)
                .map_err(|e| ConfigError(format!("token_file: {}: {e}", path.display())))?;
            let t = t.trim().to_owned();
            if t.is_empty() {
                return Err(ConfigError(format!(
                    "token_file: {} is empty",
                    path.display()
                )));
            }
            return Ok(Some(t));
        }
        Ok(std::env::var("TRAFFICMAP_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../deploy/agent.example.toml");

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("trafficmap-agent").chain(args.iter().copied()))
            .unwrap()
    }

    #[test]
    fn defaults() {
        let c = Config::merge(&Cli::default(), &FileConfig::default()).unwrap();
        assert_eq!(c.interval, Duration::from_secs(60));
        assert_eq!(c.attach, AttachMode::Auto);
        assert_eq!(c.netns, NetnsScope::All);
        assert_eq!(c.listen, Some(DEFAULT_LISTEN.parse().unwrap()));
        assert_eq!(c.metrics_top_k, 100);
        assert_eq!(c.imds, Imds::Auto);
        assert!(c.collector.is_none());
    }

    #[test]
    fn flags_override_file() {
        let file: FileConfig = toml::from_str("interval = \"30s\"\nmetrics_top_k = 5\n").unwrap();
        let c = Config::merge(&cli(&["--interval", "2s"]), &file).unwrap();
        assert_eq!(c.interval, Duration::from_secs(2));
        assert_eq!(c.metrics_top_k, 5);
    }

    #[test]
    fn example_file_lists_every_setting_and_parses() {
        let file: FileConfig = toml::from_str(EXAMPLE).expect("example config parses");
        // Every field is present (uncommented) in the example, so it documents all of them.
        let table: toml::Table = toml::from_str(EXAMPLE).unwrap();
        let all = toml::Table::try_from(FileConfig {
            interval: Some(String::new()),
            attach: Some(String::new()),
            netns: Some(String::new()),
            max_connections: Some(0),
            closed_buffer_bytes: Some(0),
            collector: Some(String::new()),
            token_file: Some(PathBuf::new()),
            ca_file: Some(PathBuf::new()),
            client_cert_file: Some(PathBuf::new()),
            spool_dir: Some(PathBuf::new()),
            spool_max_bytes: Some(0),
            output: Some(PathBuf::new()),
            output_keep_days: Some(0),
            listen: Some(String::new()),
            metrics_top_k: Some(0),
            metrics_idle_expiry: Some(String::new()),
            host_name: Some(String::new()),
            host_id: Some(String::new()),
            imds: Some(String::new()),
            imds_endpoint: Some(String::new()),
            log_level: Some(String::new()),
            containers: Some(ContainersFile::default()),
            kubernetes: Some(crate::k8s::KubernetesFile::default()),
            nat: Some(NatFile::default()),
        })
        .unwrap();
        let missing: Vec<&String> = all.keys().filter(|k| !table.contains_key(*k)).collect();
        assert!(missing.is_empty(), "example config lacks {missing:?}");
        // And its values validate (paths that must exist are not checked against this machine).
        let mut f = file;
        f.token_file = None;
        f.ca_file = None;
        f.client_cert_file = None;
        f.netns = Some("all".into());
        // Kubernetes names (issue 11, k11-k8s): every key of the block is in the example too.
        let k8s = table["kubernetes"].as_table().expect("[kubernetes] table");
        let all_k8s = toml::Table::try_from(crate::k8s::KubernetesFile {
            source: Some(String::new()),
            node_name: Some(String::new()),
            kubelet_url: Some(String::new()),
            kubelet_ca_file: Some(PathBuf::new()),
            kubelet_insecure_skip_verify: Some(false),
            apiserver_url: Some(String::new()),
            token_file: Some(PathBuf::new()),
            ca_file: Some(PathBuf::new()),
            resync: Some(String::new()),
            kubelet_poll: Some(String::new()),
            timeout: Some(String::new()),
        })
        .unwrap();
        let missing: Vec<&String> = all_k8s.keys().filter(|k| !k8s.contains_key(*k)).collect();
        assert!(missing.is_empty(), "example [kubernetes] lacks {missing:?}");
        if let Some(k) = &mut f.kubernetes {
            k.ca_file = None;
            k.kubelet_ca_file = None;
        }
        Config::merge(&Cli::default(), &f).unwrap();
    }

    /// The DaemonSet's agent.toml (deploy/kubernetes) is a valid configuration, with the
    /// Kubernetes names on (issue 11).
    #[test]
    fn kubernetes_manifest_config_is_valid() {
        let yaml = include_str!("../../deploy/kubernetes/trafficmap-agent.yaml");
        let mut lines = yaml
            .lines()
            .skip_while(|l| l.trim() != "agent.toml: |")
            .skip(1);
        let mut toml = String::new();
        for l in lines.by_ref() {
            if !l.starts_with("    ") {
                break;
            }
            toml.push_str(&l[4..]);
            toml.push('\n');
        }
        let mut f: FileConfig = toml::from_str(&toml).expect("agent.toml parses");
        // Mounted in the pod, not here.
        f.ca_file = None;
        let c = Config::merge(&Cli::default(), &f).unwrap();
        assert_eq!(c.kubernetes.source, crate::k8s::Source::Auto);
        assert_eq!(
            c.kubernetes.token_file,
            PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token")
        );
    }

    static HOST_254: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| "x".repeat(254));
    static ID_129: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| "y".repeat(129));

    #[test]
    fn host_identity_at_the_bounds_is_accepted() {
        let c = Config::merge(
            &cli(&[
                "--host-name",
                &"x".repeat(253),
                "--host-id",
                &"y".repeat(128),
            ]),
            &FileConfig::default(),
        )
        .unwrap();
        assert_eq!(c.host_name.as_deref(), Some("x".repeat(253).as_str()));
        assert_eq!(c.host_id.as_deref(), Some("y".repeat(128).as_str()));
    }

    #[test]
    fn one_clear_line_per_error() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["--interval", "soon"],
                "interval: `soon` is not a duration",
            ),
            (&["--interval", "1ms"], "interval: 1ms is out of range"),
            (&["--attach", "xdp"], "attach: unknown attach mode `xdp`"),
            (
                &["--netns", "/nonexistent/ns"],
                "netns: /nonexistent/ns does not exist",
            ),
            (
                &["--collector", "ftp://x"],
                "collector: `ftp://x` must be an http",
            ),
            (&["--collector", "::"], "collector: `::` is not a URL"),
            (
                &["--listen", "localhost"],
                "listen: `localhost` is not an address:port",
            ),
            (
                &["--closed-buffer-bytes", "5000"],
                "closed_buffer_bytes: 5000 must be a power of two",
            ),
            (
                &["--token-file", "/nonexistent"],
                "token_file: /nonexistent is not a readable file",
            ),
            (
                &["--imds", "maybe"],
                "imds: `maybe` must be on, off or auto",
            ),
            (
                &["--max-connections", "1"],
                "max_connections: 1 is out of range",
            ),
            (
                &["--host-name", ""],
                "host_name: `` (0 bytes) must be 1 to 253 bytes without control characters",
            ),
            (
                &["--host-name", HOST_254.as_str()],
                "host_name: `xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx` (254 bytes) must be 1 to 253",
            ),
            (
                &["--host-name", "web\u{1b}[31m"],
                "host_name: `web\u{fffd}[31m` (8 bytes) must be 1 to 253 bytes without control characters",
            ),
            (
                &["--host-id", ID_129.as_str()],
                "host_id: `yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy` (129 bytes) must be 1 to 128",
            ),
            (
                &["--host-id", "a\nb"],
                "host_id: `a\u{fffd}b` (3 bytes) must be 1 to 128",
            ),
        ];
        for (args, want) in cases {
            let err = Config::merge(&cli(args), &FileConfig::default()).unwrap_err();
            assert!(err.0.starts_with(want), "{args:?}: got `{}`", err.0);
            assert!(!err.0.contains('\n'));
        }
    }

    #[test]
    fn bad_file() {
        let dir = std::env::temp_dir().join(format!("tm-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("bad.toml");
        std::fs::write(&p, "intervall = \"1s\"\n").unwrap();
        let mut c = Cli {
            config: Some(p.clone()),
            ..Default::default()
        };
        let err = Config::load(&c).unwrap_err().0;
        assert!(
            err.starts_with(&format!("config file {}:", p.display())),
            "{err}"
        );
        assert!(err.contains("unknown field `intervall`"), "{err}");
        assert!(!err.contains('\n'));
        std::fs::write(&p, "interval = 5\n").unwrap();
        assert!(Config::load(&c).unwrap_err().0.contains("invalid type"));
        c.config = Some(dir.join("missing.toml"));
        assert!(Config::load(&c).unwrap_err().0.contains("No such file"));
    }

    #[test]
    fn containers_block() {
        let d = Config::merge(&Cli::default(), &FileConfig::default()).unwrap();
        assert_eq!(
            d.containers,
            ContainersConfig {
                enable: true,
                cgroup_root: None,
                podman_socket: Some("/run/podman/podman.sock".into()),
                docker_socket: Some("/var/run/docker.sock".into()),
                cache_size: 16_384,
                rescan_interval: Duration::from_secs(10),
                api_refresh: Duration::from_secs(30),
                api_timeout: Duration::from_secs(2),
                api_max_containers: 16_384,
                metrics_max_workloads: 100,
            }
        );
        let f: FileConfig = toml::from_str(
            "[containers]\nenable = false\ncgroup_root = \"/host/sys/fs/cgroup\"\ndocker_socket = \"\"\n",
        )
        .unwrap();
        let c = Config::merge(&Cli::default(), &f).unwrap().containers;
        assert!(!c.enable);
        assert_eq!(c.cgroup_root, Some("/host/sys/fs/cgroup".into()));
        assert_eq!(c.docker_socket, None);
        for (text, err) in [
            (
                "cache_size = 0",
                "containers.cache_size: 0 is out of range (1 to 1048576)",
            ),
            (
                "metrics_max_workloads = 10001",
                "containers.metrics_max_workloads: 10001 is out of range (1 to 10000)",
            ),
            (
                "api_timeout = \"5m\"",
                "containers.api_timeout: 300s is out of range (10ms to 60s)",
            ),
            (
                "cgroup_root = \"\"",
                "containers.cgroup_root: empty; give a path or `auto`",
            ),
        ] {
            let f: FileConfig = toml::from_str(&format!("[containers]\n{text}\n")).unwrap();
            assert_eq!(
                Config::merge(&Cli::default(), &f).unwrap_err().0,
                err,
                "{text}"
            );
        }
        assert!(toml::from_str::<FileConfig>("[containers]\nsurprise = 1\n").is_err());
    }
}
