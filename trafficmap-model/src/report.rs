//! The minute report: what one agent observed on one host during one window.
//!
//! Schema: `schema/report-v1.schema.json`; example: `schema/report-v1.example.json` (both
//! checked by tests against these types). Agents write it, the collector ingests it.

use std::{collections::BTreeMap, net::IpAddr};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::bounds::{self, has_control, per_window};

/// Value of `schema` in every v1 report.
pub const REPORT_SCHEMA: &str = "trafficmap.report/v1";
/// Most pairs one report may carry; agents split larger windows over several reports.
pub const MAX_PAIRS: usize = 200_000;

/// One agent's minute report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// Always [`REPORT_SCHEMA`] for this version.
    pub schema: String,
    /// Unique id (for idempotent ingestion): 16-64 characters of `[A-Za-z0-9_-]`.
    pub report_id: String,
    /// Per-agent sequence number, increasing across restarts.
    pub seq: u64,
    pub agent: Agent,
    pub host: Host,
    pub window: Window,
    pub health: Health,
    /// At most [`MAX_PAIRS`]; parsing keeps one more than that (so `validate` refuses the
    /// report) and skips the rest without keeping it.
    #[serde(deserialize_with = "capped::vec::<_, _, MAX_PAIRS>")]
    pub pairs: Vec<Pair>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    pub version: String,
    /// Byte-counting backend: `fexit`, `kprobe` or `tracepoint`.
    pub backend: String,
    /// Kernel release.
    pub kernel: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    pub hostname: String,
    /// `/etc/machine-id`, or a stable id of the agent's own when scoped to a network namespace.
    pub machine_id: String,
    /// Addresses of the host's interfaces (of its network namespace), loopback excluded; at
    /// most [`bounds::MAX_ADDRESSES`] (parsing stops keeping them one above).
    #[serde(deserialize_with = "capped::vec::<_, _, { bounds::MAX_ADDRESSES }>")]
    pub addresses: Vec<IpAddr>,
    /// Network namespace inode when the agent counts one namespace only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<u32>,
    /// Identity from EC2 instance metadata (IMDSv2), when enabled and available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ec2: Option<Ec2Identity>,
    /// Host health sampled once per report (issue 12 item 5); absent from older agents, and
    /// when the agent could not read `/proc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<HostStats>,
}

/// Uptime, load and memory of the host, read from `/proc` once per report window, and its
/// online CPUs. Bounds: [`bounds::MAX_LOAD`], [`bounds::MAX_CPUS`],
/// [`bounds::MAX_MEMORY_BYTES`], [`bounds::MAX_UPTIME_SECONDS`]; available <= total.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostStats {
    /// Seconds since boot (`/proc/uptime`, rounded down).
    pub uptime_seconds: u64,
    /// Load averages over 1, 5 and 15 minutes (`/proc/loadavg`).
    pub load1: f64,
    pub load5: f64,
    pub load15: f64,
    /// `MemTotal` and `MemAvailable` of `/proc/meminfo`, in bytes.
    pub memory_total_bytes: u64,
    pub memory_available_bytes: u64,
    /// Online CPUs (`/sys/devices/system/cpu/online`).
    pub cpus: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ec2Identity {
    pub instance_id: String,
    pub region: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
}

/// The half-open interval `[start, end)` the report covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

/// Probe and agent health during the window.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// Events the probe could not record during the window, by reason (`conns_full`, ...); at
    /// most [`bounds::MAX_DROP_KEYS`] reasons (parsing stops keeping them one above).
    #[serde(deserialize_with = "capped::map::<_, { bounds::MAX_DROP_KEYS }>")]
    pub drops: BTreeMap<String, u64>,
    /// Entries in the probe's live connection table at the end of the window.
    pub map_entries: u64,
    pub map_capacity: u64,
    /// Reports dropped from the agent's full spool since it started (oldest first).
    pub spool_dropped: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Client,
    Server,
    Unknown,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Client, Role::Server, Role::Unknown];

    /// The name in reports (the serde name), which stores keep too.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Server => "server",
            Role::Unknown => "unknown",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role `{s}`: expected client, server or unknown"))
    }
}

/// How the local role was established.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoleSource {
    /// The probe saw the connection open.
    Observed,
    /// Open before the probe loaded; the local port is or is not a listening port.
    Listeners,
    /// Open before the probe loaded, no listener table: the lower port taken as the server's.
    LowerPort,
}

/// Traffic between the local host and one peer on one server port, by one local process, in
/// one role: per-connection counters with the client's ephemeral port folded away.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pair {
    pub local_ip: IpAddr,
    pub peer_ip: IpAddr,
    /// The server's port: the peer's if the local side is the client, the local one otherwise.
    pub server_port: u16,
    pub role: Role,
    pub role_source: RoleSource,
    /// `comm` of the local process that last moved bytes (empty if none did).
    pub process: String,
    /// Payload bytes the local process wrote, during the window.
    pub bytes_sent: u64,
    /// Payload bytes the local process read, during the window.
    pub bytes_received: u64,
    pub connections_opened: u64,
    pub connections_closed: u64,
    /// Connections still open at the end of the window.
    pub connections_active: u64,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// The container of the local process (issue 11); absent for a process outside any
    /// container, or when the agent could not tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
    /// The address the local client connected to, when the connection's destination was
    /// translated on the way (conntrack's original tuple; a Kubernetes Service's ClusterIP, a
    /// load balancer, a published port): `peer_ip`/`server_port` are then the real server (the
    /// reply tuple), so both ends of the conversation merge. Set together with `service_port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_ip: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_port: Option<u16>,
}

/// The key that identifies a pair within a report.
pub type PairKey<'a> = (
    IpAddr,
    IpAddr,
    u16,
    Role,
    &'a str,
    Option<&'a str>,
    Option<(IpAddr, u16)>,
);

impl Pair {
    /// The fields that identify a pair within a report: two containers running the same
    /// program, or one client reaching the same server directly and through a Service, are
    /// different pairs.
    pub fn key(&self) -> PairKey<'_> {
        (
            self.local_ip,
            self.peer_ip,
            self.server_port,
            self.role,
            self.process.as_str(),
            self.container.as_ref().map(|c| c.id.as_str()),
            self.service_ip.zip(self.service_port),
        )
    }
}

/// Where a local process runs (issue 11): its container and, on Kubernetes, its pod and the
/// workload that owns the pod. Every name is optional: the container id and runtime come from
/// the process's cgroup; names from the runtime's API or the kubelet/API server when reachable.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Container {
    /// The runtime's container id: 12 to 128 characters of `0-9 a-f` (64 for Docker,
    /// containerd, CRI-O and podman).
    pub id: String,
    pub runtime: ContainerRuntime,
    /// Container name (the runtime's, or the Kubernetes container name in its pod).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Kubernetes pod name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Kubernetes namespace of the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Kind of the workload that owns the pod (`Deployment`, `StatefulSet`, `DaemonSet`, `Job`,
    /// `CronJob`, a custom controller's kind, or `Pod` for a pod nobody owns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_kind: Option<String>,
    /// Name of that workload (a Deployment's, not its ReplicaSet's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
}

/// The container runtime that created a container, told by its cgroup path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContainerRuntime {
    Docker,
    Containerd,
    #[serde(rename = "cri-o")]
    CriO,
    Podman,
    /// A plain OCI runtime (runc, crun) or an unrecognised manager.
    Oci,
}

impl ContainerRuntime {
    pub const fn as_str(self) -> &'static str {
        match self {
            ContainerRuntime::Docker => "docker",
            ContainerRuntime::Containerd => "containerd",
            ContainerRuntime::CriO => "cri-o",
            ContainerRuntime::Podman => "podman",
            ContainerRuntime::Oci => "oci",
        }
    }
}

/// Why a report was rejected. Messages name the offending field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReportError {
    #[error("malformed report at `{path}`: {message}")]
    Json { path: String, message: String },
    #[error("unsupported report schema `{0}`: this collector accepts `{REPORT_SCHEMA}`")]
    UnsupportedSchema(String),
    /// A bound or rule the types cannot express; the message starts with the field's JSON path.
    #[error("{0}")]
    Invalid(String),
}

/// Just the `schema` field, to tell a wrong version from a malformed document.
#[derive(Deserialize)]
struct SchemaOnly {
    schema: Option<serde_json::Value>,
}

impl Report {
    /// Parses and validates a report.
    pub fn from_json(bytes: &[u8]) -> Result<Report, ReportError> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        let report: Report = serde_path_to_error::deserialize(de).map_err(|e| {
            // Only a document that does not parse is looked at again, for its `schema`: a
            // report of another version is told apart from a malformed one. (One that parses
            // has its schema checked by `validate`.)
            if let Ok(SchemaOnly {
                schema: Some(schema),
            }) = serde_json::from_slice::<SchemaOnly>(bytes)
                && schema != REPORT_SCHEMA
            {
                let found = schema
                    .as_str()
                    .map_or_else(|| schema.to_string(), str::to_owned);
                return ReportError::UnsupportedSchema(found);
            }
            ReportError::Json {
                path: e.path().to_string(),
                message: e.inner().to_string(),
            }
        })?;
        report.validate()?;
        Ok(report)
    }

    /// Checks what the types alone cannot: every bound of [`crate::bounds`]. The message of a
    /// refusal starts with the JSON path of the offending field (`pairs[3].bytes_sent: ...`).
    pub fn validate(&self) -> Result<(), ReportError> {
        if self.schema != REPORT_SCHEMA {
            return Err(ReportError::UnsupportedSchema(self.schema.clone()));
        }
        if !(16..=64).contains(&self.report_id.len())
            || !self
                .report_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return invalid(
                "report_id",
                format!(
                    "`{}` must be 16-64 characters of A-Z a-z 0-9 - _",
                    self.report_id.escape_debug()
                ),
            );
        }
        self.agent.validate()?;
        self.host.validate()?;
        let window = self.window.validate()?;
        self.health.validate(window)?;
        if self.pairs.len() > MAX_PAIRS {
            // Parsing keeps at most one more than the cap: the count is not known.
            return invalid(
                "pairs",
                format!("more than {MAX_PAIRS} pairs in one report"),
            );
        }
        let mut keys = std::collections::HashSet::with_capacity(self.pairs.len());
        for (i, p) in self.pairs.iter().enumerate() {
            p.validate(i, &self.window, window)?;
            if !keys.insert(p.key()) {
                return invalid(
                    &format!("pairs[{i}]"),
                    format!(
                        "duplicate pair {} -> {} port {} ({:?}, `{}`, container {:?}, service {:?})",
                        p.local_ip,
                        p.peer_ip,
                        p.server_port,
                        p.role,
                        p.process.escape_debug(),
                        p.container.as_ref().map(|c| c.id.as_str()),
                        p.service_ip.zip(p.service_port),
                    ),
                );
            }
        }
        Ok(())
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a report always serialises")
    }
}

/// A field's JSON path, spelled out only when a refusal needs it: the checks run for every pair
/// of every report, and formatting each path up front cost ten times the checks themselves.
trait FieldPath {
    fn spell(&self) -> String;
}

impl FieldPath for str {
    fn spell(&self) -> String {
        self.to_owned()
    }
}

impl FieldPath for String {
    fn spell(&self) -> String {
        self.clone()
    }
}

/// `pairs[i].field`.
struct PairField {
    i: usize,
    field: &'static str,
}

impl FieldPath for PairField {
    fn spell(&self) -> String {
        format!("pairs[{}].{}", self.i, self.field)
    }
}

fn invalid<T, P: FieldPath + ?Sized>(path: &P, what: String) -> Result<T, ReportError> {
    Err(ReportError::Invalid(format!("{}: {what}", path.spell())))
}

/// A string of `min..=max` bytes without control characters.
fn check_str<P: FieldPath + ?Sized>(
    path: &P,
    s: &str,
    min: usize,
    max: usize,
) -> Result<(), ReportError> {
    if s.len() < min || s.len() > max {
        // The value is not echoed: it may be megabytes.
        return invalid(path, format!("{} bytes, expected {min} to {max}", s.len()));
    }
    if has_control(s) {
        return invalid(
            path,
            format!("`{}` holds a control character", s.escape_debug()),
        );
    }
    Ok(())
}

/// A counter at most `max`.
fn check_max<P: FieldPath + ?Sized>(
    path: &P,
    v: u64,
    max: u64,
    why: &str,
) -> Result<(), ReportError> {
    if v > max {
        return invalid(path, format!("{v} exceeds {max} ({why})"));
    }
    Ok(())
}

impl Agent {
    fn validate(&self) -> Result<(), ReportError> {
        let max = bounds::MAX_AGENT_FIELD_LEN;
        check_str("agent.version", &self.version, 1, max)?;
        check_str("agent.backend", &self.backend, 1, max)?;
        check_str("agent.kernel", &self.kernel, 1, max)
    }
}

impl Host {
    fn validate(&self) -> Result<(), ReportError> {
        check_str("host.hostname", &self.hostname, 1, bounds::MAX_HOSTNAME_LEN)?;
        check_str(
            "host.machine_id",
            &self.machine_id,
            1,
            bounds::MAX_MACHINE_ID_LEN,
        )?;
        if self.addresses.len() > bounds::MAX_ADDRESSES {
            return invalid(
                "host.addresses",
                format!("more than {} addresses", bounds::MAX_ADDRESSES),
            );
        }
        let mut seen = std::collections::HashSet::with_capacity(self.addresses.len());
        for (i, a) in self.addresses.iter().enumerate() {
            if !seen.insert(a) {
                return invalid(&format!("host.addresses[{i}]"), format!("duplicate {a}"));
            }
        }
        if let Some(ec2) = &self.ec2 {
            let max = bounds::MAX_EC2_FIELD_LEN;
            check_str("host.ec2.instance_id", &ec2.instance_id, 1, max)?;
            check_str("host.ec2.region", &ec2.region, 1, max)?;
            if let Some(az) = &ec2.availability_zone {
                check_str("host.ec2.availability_zone", az, 1, max)?;
            }
            if let Some(t) = &ec2.instance_type {
                check_str("host.ec2.instance_type", t, 1, max)?;
            }
        }
        if let Some(stats) = &self.stats {
            stats.validate()?;
        }
        Ok(())
    }
}

impl HostStats {
    /// Every bound of the host's health (issue 12 item 5); the message starts with the path.
    pub fn validate(&self) -> Result<(), ReportError> {
        check_max(
            "host.stats.uptime_seconds",
            self.uptime_seconds,
            bounds::MAX_UPTIME_SECONDS,
            "100 years",
        )?;
        for (path, v) in [
            ("host.stats.load1", self.load1),
            ("host.stats.load5", self.load5),
            ("host.stats.load15", self.load15),
        ] {
            // JSON has no NaN, but a caller of `validate` (the agent) may hold one: `contains`
            // is false for NaN.
            if !(0.0..=bounds::MAX_LOAD).contains(&v) {
                // As JSON writes it (`1e300`, not 300 digits); NaN has no JSON form.
                let shown = serde_json::Number::from_f64(v)
                    .map_or_else(|| v.to_string(), |n| n.to_string());
                return invalid(
                    path,
                    format!("{shown} is not within 0 to {}", bounds::MAX_LOAD),
                );
            }
        }
        check_max(
            "host.stats.memory_total_bytes",
            self.memory_total_bytes,
            bounds::MAX_MEMORY_BYTES,
            "2^50 bytes",
        )?;
        check_max(
            "host.stats.memory_available_bytes",
            self.memory_available_bytes,
            self.memory_total_bytes,
            "memory_total_bytes",
        )?;
        if !(1..=bounds::MAX_CPUS).contains(&self.cpus) {
            return invalid(
                "host.stats.cpus",
                format!("{} is not within 1 to {}", self.cpus, bounds::MAX_CPUS),
            );
        }
        Ok(())
    }
}

impl Window {
    /// The window's length, if it is a valid window: after its start, at most
    /// [`bounds::MAX_WINDOW`].
    fn validate(&self) -> Result<chrono::TimeDelta, ReportError> {
        let len = self.end - self.start;
        if len <= chrono::TimeDelta::zero() {
            return invalid(
                "window.end",
                format!(
                    "the window end {} is not after its start {}",
                    self.end, self.start
                ),
            );
        }
        if len > bounds::MAX_WINDOW {
            return invalid(
                "window.end",
                format!(
                    "the window {} to {} is longer than {} s",
                    self.start,
                    self.end,
                    bounds::MAX_WINDOW.num_seconds()
                ),
            );
        }
        Ok(len)
    }
}

impl Health {
    fn validate(&self, window: chrono::TimeDelta) -> Result<(), ReportError> {
        // Parsing keeps at most one more than the cap.
        if self.drops.len() > bounds::MAX_DROP_KEYS {
            return invalid(
                "health.drops",
                format!("more than {} reasons", bounds::MAX_DROP_KEYS),
            );
        }
        let max = per_window(bounds::MAX_EVENTS_PER_SEC, window);
        for (k, &v) in &self.drops {
            if k.is_empty()
                || k.len() > bounds::MAX_DROP_KEY_LEN
                || !k
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return invalid(
                    "health.drops",
                    format!(
                        "reason `{}` must be 1-{} characters of a-z 0-9 _",
                        k.escape_debug(),
                        bounds::MAX_DROP_KEY_LEN
                    ),
                );
            }
            check_max(
                &format!("health.drops.{k}"),
                v,
                max,
                "probe events in this window at 1e9 per second",
            )?;
        }
        check_max(
            "health.map_capacity",
            self.map_capacity,
            bounds::MAX_MAP_CAPACITY,
            "2^32 entries",
        )?;
        check_max(
            "health.map_entries",
            self.map_entries,
            self.map_capacity,
            "map_capacity",
        )?;
        check_max(
            "health.spool_dropped",
            self.spool_dropped,
            bounds::MAX_SPOOL_DROPPED,
            "2^32 reports",
        )
    }
}

impl Pair {
    fn validate(&self, i: usize, w: &Window, len: chrono::TimeDelta) -> Result<(), ReportError> {
        let path = |field| PairField { i, field };
        check_str(&path("process"), &self.process, 0, bounds::MAX_PROCESS_LEN)?;
        let bytes = per_window(bounds::MAX_LINK_BYTES_PER_SEC, len);
        let link = "bytes a 400 Gbit/s link moves in this window";
        check_max(&path("bytes_sent"), self.bytes_sent, bytes, link)?;
        check_max(&path("bytes_received"), self.bytes_received, bytes, link)?;
        let conns = per_window(bounds::MAX_CONNS_PER_SEC, len);
        let rate = "connections in this window at 1e7 per second";
        check_max(
            &path("connections_opened"),
            self.connections_opened,
            conns,
            rate,
        )?;
        check_max(
            &path("connections_closed"),
            self.connections_closed,
            conns,
            rate,
        )?;
        check_max(
            &path("connections_active"),
            self.connections_active,
            bounds::MAX_ACTIVE,
            "open connections per pair",
        )?;
        // Agents clamp both times into the window, ends included (a connection carried in
        // from an earlier window is first seen at the window's start).
        for (field, t) in [
            ("first_seen", self.first_seen),
            ("last_seen", self.last_seen),
        ] {
            if t < w.start || t > w.end {
                return invalid(
                    &path(field),
                    format!("{t} is outside the window {} to {}", w.start, w.end),
                );
            }
        }
        if self.last_seen < self.first_seen {
            return invalid(
                &path("last_seen"),
                format!(
                    "last_seen {} is before first_seen {}",
                    self.last_seen, self.first_seen
                ),
            );
        }
        if self.service_ip.is_some() != self.service_port.is_some() {
            return invalid(
                &path("service_port"),
                "service_ip and service_port come together or not at all".to_owned(),
            );
        }
        if let Some(c) = &self.container {
            c.validate(i)?;
        }
        Ok(())
    }
}

impl Container {
    /// The bounds a report's container meets, for a container read from elsewhere (an archive
    /// extract, read as hostile as a report).
    pub fn check(&self) -> Result<(), ReportError> {
        self.validate(0)
    }

    fn validate(&self, i: usize) -> Result<(), ReportError> {
        let path = |field| PairField { i, field };
        if !(bounds::MIN_CONTAINER_ID_LEN..=bounds::MAX_CONTAINER_ID_LEN).contains(&self.id.len())
            || !self
                .id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return invalid(
                &path("container.id"),
                format!(
                    "{} bytes, expected {} to {} characters of 0-9 a-f",
                    self.id.len(),
                    bounds::MIN_CONTAINER_ID_LEN,
                    bounds::MAX_CONTAINER_ID_LEN
                ),
            );
        }
        for (field, v, max) in [
            ("container.name", &self.name, bounds::MAX_K8S_NAME_LEN),
            ("container.pod", &self.pod, bounds::MAX_K8S_NAME_LEN),
            (
                "container.namespace",
                &self.namespace,
                bounds::MAX_K8S_NAMESPACE_LEN,
            ),
            (
                "container.workload",
                &self.workload,
                bounds::MAX_K8S_NAME_LEN,
            ),
        ] {
            if let Some(v) = v {
                check_str(&path(field), v, 1, max)?;
            }
        }
        if let Some(kind) = &self.workload_kind
            && !bounds::is_workload_kind(kind)
        {
            return invalid(
                &path("container.workload_kind"),
                format!(
                    "expected 1 to {} characters of A-Z a-z 0-9",
                    bounds::MAX_K8S_KIND_LEN
                ),
            );
        }
        Ok(())
    }
}

/// Deserialisers that keep at most one element above a cap and skip the rest without keeping
/// it: the cap is enforced by `validate` (with the field's path in the message), and a body of
/// a million drop reasons or addresses costs no more memory than its bytes. (serde has no
/// such limit of its own.)
mod capped {
    use std::{collections::BTreeMap, fmt, marker::PhantomData};

    use serde::{
        Deserialize, Deserializer,
        de::{IgnoredAny, MapAccess, SeqAccess, Visitor},
    };

    pub fn vec<'de, D, T, const CAP: usize>(d: D) -> Result<Vec<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        struct V<T, const CAP: usize>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>, const CAP: usize> Visitor<'de> for V<T, CAP> {
            type Value = Vec<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "an array of at most {CAP} elements")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
                let mut out = Vec::new();
                while out.len() <= CAP {
                    match seq.next_element()? {
                        Some(x) => out.push(x),
                        None => return Ok(out),
                    }
                }
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(out)
            }
        }
        d.deserialize_seq(V::<T, CAP>(PhantomData))
    }

    pub fn map<'de, D, const CAP: usize>(d: D) -> Result<BTreeMap<String, u64>, D::Error>
    where
        D: Deserializer<'de>,
    {
        struct V<const CAP: usize>;
        impl<'de, const CAP: usize> Visitor<'de> for V<CAP> {
            type Value = BTreeMap<String, u64>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "an object of at most {CAP} counters")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut out = BTreeMap::new();
                while out.len() <= CAP {
                    match m.next_entry::<String, u64>()? {
                        Some((k, v)) => {
                            out.insert(k, v);
                        }
                        None => return Ok(out),
                    }
                }
                while m.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(out)
            }
        }
        d.deserialize_map(V::<CAP>)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../schema/report-v1.example.json");
    const SCHEMA: &str = include_str!("../../schema/report-v1.schema.json");

    #[test]
    fn role_names_are_the_serde_names() {
        for r in Role::ALL {
            assert_eq!(
                serde_json::to_string(&r).unwrap(),
                format!("\"{}\"", r.as_str())
            );
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        }
        assert!("observer".parse::<Role>().is_err());
    }

    fn example() -> serde_json::Value {
        serde_json::from_str(EXAMPLE).unwrap()
    }

    fn parse(v: &serde_json::Value) -> Result<Report, ReportError> {
        Report::from_json(&serde_json::to_vec(v).unwrap())
    }

    #[test]
    fn golden_example_parses_and_round_trips() {
        let r = Report::from_json(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(r.pairs.len(), 3);
        assert_eq!(r.pairs[0].bytes_sent, 1_000_003);
        assert_eq!(
            r.host.stats,
            Some(HostStats {
                uptime_seconds: 1_234_567,
                load1: 0.52,
                load5: 0.41,
                load15: 0.3,
                memory_total_bytes: 8_226_271_232,
                memory_available_bytes: 6_442_450_944,
                cpus: 2,
            })
        );
        let again: serde_json::Value = serde_json::from_slice(&r.to_json()).unwrap();
        assert_eq!(again, example());
    }

    #[test]
    fn golden_example_matches_json_schema() {
        let schema: serde_json::Value = serde_json::from_str(SCHEMA).unwrap();
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
            .unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&example())
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{errors:?}");
        // The schema and the types reject the same broken documents.
        for broken in broken_reports() {
            assert!(!validator.is_valid(&broken), "schema accepted {broken}");
            assert!(parse(&broken).is_err(), "types accepted {broken}");
        }
    }

    fn broken_reports() -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        let mut v = example();
        v["pairs"][0]["bytes_sent"] = serde_json::json!(-1);
        out.push(v);
        let mut v = example();
        v["pairs"][0]["server_port"] = serde_json::json!(70000);
        out.push(v);
        let mut v = example();
        v["pairs"][0]["role"] = serde_json::json!("peer");
        out.push(v);
        let mut v = example();
        v["host"]["surprise"] = serde_json::json!(1);
        out.push(v);
        let mut v = example();
        v.as_object_mut().unwrap().remove("window");
        out.push(v);
        let mut v = example();
        v["report_id"] = serde_json::json!("short");
        out.push(v);
        let mut v = example();
        v["pairs"][1]["peer_ip"] = serde_json::json!("10.0.0.300");
        out.push(v);
        // Bounds the schema can state (its counter maxima are a 1-hour window's).
        let edits: Vec<(&str, serde_json::Value)> = vec![
            ("/pairs/0/bytes_sent", serde_json::json!(u64::MAX)),
            (
                "/pairs/0/connections_opened",
                serde_json::json!(36_000_000_001u64),
            ),
            ("/pairs/0/connections_active", serde_json::json!(16_777_217)),
            ("/pairs/0/process", serde_json::json!("p".repeat(256))),
            ("/pairs/0/process", serde_json::json!("a\u{1b}[2Jb")),
            ("/host/hostname", serde_json::json!("h".repeat(254))),
            ("/host/hostname", serde_json::json!("a\nb")),
            ("/host/machine_id", serde_json::json!("m".repeat(129))),
            ("/host/machine_id", serde_json::json!("")),
            (
                "/host/addresses",
                serde_json::json!(["10.0.0.1", "10.0.0.1"]),
            ),
            ("/host/ec2/region", serde_json::json!("r".repeat(65))),
            ("/host/ec2/instance_id", serde_json::json!("i-\u{85}")),
            ("/agent/kernel", serde_json::json!("")),
            ("/agent/version", serde_json::json!("v\u{7f}")),
            ("/health/drops", serde_json::json!({ "Conns": 1 })),
            (
                "/health/drops/conns_full",
                serde_json::json!(3_600_000_000_001u64),
            ),
            ("/health/map_capacity", serde_json::json!((1u64 << 32) + 1)),
            ("/health/spool_dropped", serde_json::json!((1u64 << 32) + 1)),
            ("/pairs/0/container/id", serde_json::json!("abc")),
            ("/pairs/0/container/id", serde_json::json!("A".repeat(64))),
            ("/pairs/0/container/id", serde_json::json!("a".repeat(129))),
            ("/pairs/0/container/runtime", serde_json::json!("lxc")),
            ("/pairs/0/container/name", serde_json::json!("")),
            ("/pairs/0/container/pod", serde_json::json!("p".repeat(254))),
            (
                "/pairs/0/container/namespace",
                serde_json::json!("n".repeat(64)),
            ),
            (
                "/pairs/0/container/workload",
                serde_json::json!("w\u{1b}[2J"),
            ),
            (
                "/pairs/0/container/workload_kind",
                serde_json::json!("Deploy ment"),
            ),
            ("/pairs/0/service_port", serde_json::json!(70000)),
        ];
        for (ptr, value) in edits {
            let mut v = example();
            *v.pointer_mut(ptr).unwrap_or_else(|| panic!("{ptr}")) = value;
            out.push(v);
        }
        let mut v = example();
        v["pairs"][0]["container"]["surprise"] = serde_json::json!(1);
        out.push(v);
        // A service address without its port (and the other way round) says nothing usable.
        let mut v = example();
        v["pairs"][0]
            .as_object_mut()
            .unwrap()
            .remove("service_port");
        out.push(v);
        let mut v = example();
        v["pairs"][0].as_object_mut().unwrap().remove("service_ip");
        out.push(v);
        let mut v = example();
        v["host"]["addresses"] = (0..257u32)
            .map(|i| serde_json::json!(std::net::Ipv4Addr::from(i).to_string()))
            .collect::<Vec<_>>()
            .into();
        out.push(v);
        let mut v = example();
        v["health"]["drops"] = (0..33)
            .map(|i| (format!("r{i}"), serde_json::json!(0)))
            .collect::<serde_json::Map<_, _>>()
            .into();
        out.push(v);
        out
    }

    #[test]
    fn errors_name_the_field() {
        let mut v = example();
        v["pairs"][1]["bytes_received"] = serde_json::json!("lots");
        let msg = parse(&v).unwrap_err().to_string();
        assert!(
            msg.starts_with(
                "malformed report at `pairs[1].bytes_received`: invalid type: string \"lots\", expected u64 at line 1 column "
            ),
            "{msg}"
        );
        let mut v = example();
        v["schema"] = serde_json::json!("trafficmap.report/v2");
        assert_eq!(
            parse(&v).unwrap_err(),
            ReportError::UnsupportedSchema("trafficmap.report/v2".into())
        );
        assert!(matches!(
            Report::from_json(b"{\"schema\": \"trafficmap.report/v1\", "),
            Err(ReportError::Json { .. })
        ));
        assert!(matches!(
            Report::from_json(b"not json"),
            Err(ReportError::Json { .. })
        ));
    }

    #[test]
    fn semantic_checks() {
        let mut v = example();
        v["window"]["end"] = v["window"]["start"].clone();
        assert!(parse(&v).unwrap_err().to_string().contains("window end"));
        let mut v = example();
        let dup = v["pairs"][0].clone();
        v["pairs"].as_array_mut().unwrap().push(dup);
        assert!(
            parse(&v)
                .unwrap_err()
                .to_string()
                .contains("pairs[3]: duplicate pair")
        );
        let mut v = example();
        v["pairs"][2]["last_seen"] = serde_json::json!("2026-11-23T09:00:00Z");
        assert!(parse(&v).unwrap_err().to_string().contains("last_seen"));
        let mut v = example();
        v["host"]["hostname"] = serde_json::json!("");
        assert!(parse(&v).unwrap_err().to_string().contains("hostname"));
    }
}

#[cfg(test)]
mod bound_tests {
    //! Each bound: accepted at the bound, refused one above with a message that starts with
    //! the field's path. The example's window is 60 s.
    use serde_json::{Value, json};

    use super::*;

    fn example() -> Value {
        serde_json::from_str(include_str!("../../schema/report-v1.example.json")).unwrap()
    }

    fn check(v: &Value) -> Result<Report, String> {
        Report::from_json(&serde_json::to_vec(v).unwrap()).map_err(|e| e.to_string())
    }

    /// `set(v, at)` writes the bound value (ok) and `set(v, above)` a value one above it
    /// (refused, message starting with `path: `).
    fn bound(path: &str, set: impl Fn(&mut Value, Value), at: Value, above: Value) {
        let mut v = example();
        set(&mut v, at.clone());
        if let Err(e) = check(&v) {
            panic!("{path} = {at} refused: {e}");
        }
        let mut v = example();
        set(&mut v, above.clone());
        let e = check(&v).expect_err(&format!("{path} = {above} accepted"));
        assert!(e.starts_with(&format!("{path}: ")), "{path}: {e}");
    }

    #[test]
    fn pair_counters() {
        for (field, max) in [
            ("bytes_sent", 3_000_000_000_000u64),
            ("bytes_received", 3_000_000_000_000),
            ("connections_opened", 600_000_000),
            ("connections_closed", 600_000_000),
            ("connections_active", 16_777_216),
        ] {
            bound(
                &format!("pairs[1].{field}"),
                |v, x| v["pairs"][1][field] = x,
                json!(max),
                json!(max + 1),
            );
        }
        // The review's value: refused, never stored.
        let mut v = example();
        v["pairs"][2]["bytes_sent"] = json!(u64::MAX);
        assert_eq!(
            check(&v).unwrap_err(),
            "pairs[2].bytes_sent: 18446744073709551615 exceeds 3000000000000 (bytes a 400 Gbit/s link moves in this window)"
        );
    }

    #[test]
    fn bytes_bound_follows_the_window() {
        // A 100 ms window moves at most 5e9 bytes.
        let mut base = example();
        base["window"]["end"] = json!("2026-11-23T10:00:00.100Z");
        for p in base["pairs"].as_array_mut().unwrap() {
            p["first_seen"] = json!("2026-11-23T10:00:00Z");
            p["last_seen"] = json!("2026-11-23T10:00:00.100Z");
        }
        let mut v = base.clone();
        v["pairs"][0]["bytes_sent"] = json!(5_000_000_000u64);
        check(&v).unwrap();
        v["pairs"][0]["bytes_sent"] = json!(5_000_000_001u64);
        assert!(check(&v).unwrap_err().starts_with("pairs[0].bytes_sent: "));
    }

    #[test]
    fn health() {
        bound(
            "health.drops.conns_full",
            |v, x| v["health"]["drops"]["conns_full"] = x,
            json!(60_000_000_000u64),
            json!(60_000_000_001u64),
        );
        bound(
            "health.map_capacity",
            |v, x| v["health"]["map_capacity"] = x,
            json!(1u64 << 32),
            json!((1u64 << 32) + 1),
        );
        bound(
            "health.map_entries",
            |v, x| v["health"]["map_entries"] = x,
            json!(65536),
            json!(65537),
        );
        bound(
            "health.spool_dropped",
            |v, x| v["health"]["spool_dropped"] = x,
            json!(1u64 << 32),
            json!((1u64 << 32) + 1),
        );
        let keys = |n: usize| -> Value {
            (0..n)
                .map(|i| (format!("reason_{i}"), json!(0)))
                .collect::<serde_json::Map<_, _>>()
                .into()
        };
        bound(
            "health.drops",
            |v, x| v["health"]["drops"] = x,
            keys(32),
            keys(33),
        );
        // A hundred thousand reasons: refused the same way, without keeping them.
        let mut v = example();
        v["health"]["drops"] = keys(100_000);
        assert_eq!(check(&v).unwrap_err(), "health.drops: more than 32 reasons");
        let long = "a".repeat(32);
        bound(
            "health.drops",
            |v, x| v["health"]["drops"] = json!({ x.as_str().unwrap(): 1 }),
            json!(long),
            json!(format!("{long}b")),
        );
        for bad in ["", "Conns", "a-b", "a\u{1b}"] {
            let mut v = example();
            v["health"]["drops"] = json!({ bad: 1 });
            assert!(
                check(&v).unwrap_err().starts_with("health.drops: "),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn window() {
        bound(
            "window.end",
            |v, x| v["window"]["end"] = x,
            json!("2026-11-23T11:00:00Z"),
            json!("2026-11-23T11:00:00.001Z"),
        );
        let mut v = example();
        v["window"]["end"] = json!("2026-11-23T09:59:00Z");
        assert!(check(&v).unwrap_err().starts_with("window.end: "));
        // Seen times: inside the window, both ends included (what the agent writes for
        // connections carried in, and for the last moment of the window).
        for (field, at, above) in [
            (
                "first_seen",
                "2026-11-23T10:00:00Z",
                "2026-11-23T09:59:59.999Z",
            ),
            (
                "last_seen",
                "2026-11-23T10:01:00Z",
                "2026-11-23T10:01:00.001Z",
            ),
        ] {
            bound(
                &format!("pairs[0].{field}"),
                |v, x| v["pairs"][0][field] = x,
                json!(at),
                json!(above),
            );
        }
        let mut v = example();
        v["pairs"][2]["first_seen"] = json!("2026-11-23T10:00:40Z");
        assert!(
            check(&v)
                .unwrap_err()
                .starts_with("pairs[2].last_seen: last_seen 2026-11-23 10:00:30 UTC is before")
        );
    }

    #[test]
    fn strings() {
        let s = |n: usize| json!("x".repeat(n));
        for (path, min, max) in [
            ("host.hostname", 1, 253),
            ("host.machine_id", 1, 128),
            ("agent.version", 1, 128),
            ("agent.backend", 1, 128),
            ("agent.kernel", 1, 128),
            ("host.ec2.instance_id", 1, 64),
            ("host.ec2.region", 1, 64),
            ("host.ec2.availability_zone", 1, 64),
            ("host.ec2.instance_type", 1, 64),
            ("pairs[1].process", 0, 255),
        ] {
            let set = |v: &mut Value, x: Value| *pointer(v, path) = x;
            bound(path, set, s(max), s(max + 1));
            if min == 1 {
                bound(path, set, s(1), s(0));
            } else {
                let mut v = example();
                set(&mut v, s(0));
                check(&v).unwrap();
            }
            for c in ["\n", "\u{1b}[2J", "\u{7f}", "\u{9b}", "\0"] {
                let mut v = example();
                set(&mut v, json!(format!("a{c}b")));
                let e = check(&v).unwrap_err();
                assert!(e.starts_with(&format!("{path}: ")), "{e}");
                assert!(e.ends_with("holds a control character"), "{e}");
            }
        }
        // Bytes, not characters: 84 three-byte characters are 252 bytes, 85 are 255.
        let mut v = example();
        v["host"]["hostname"] = json!("€".repeat(84));
        check(&v).unwrap();
        v["host"]["hostname"] = json!("€".repeat(85));
        assert_eq!(
            check(&v).unwrap_err(),
            "host.hostname: 255 bytes, expected 1 to 253"
        );
    }

    /// The value at a dotted path like `host.ec2.region` or `pairs[1].process`.
    fn pointer<'a>(v: &'a mut Value, path: &str) -> &'a mut Value {
        let ptr = format!("/{}", path.replace(['.', '['], "/").replace(']', ""));
        v.pointer_mut(&ptr).unwrap()
    }

    /// Issue 12 item 5: every bound of `host.stats`, and reports without it still accepted.
    #[test]
    fn host_stats() {
        fn stats(v: &mut Value) -> &mut Value {
            &mut v["host"]["stats"]
        }
        bound(
            "host.stats.uptime_seconds",
            |v, x| stats(v)["uptime_seconds"] = x,
            json!(3_155_760_000u64),
            json!(3_155_760_001u64),
        );
        for field in ["load1", "load5", "load15"] {
            bound(
                &format!("host.stats.{field}"),
                |v, x| stats(v)[field] = x,
                json!(1e6),
                json!(1_000_000.01),
            );
            bound(
                &format!("host.stats.{field}"),
                |v, x| stats(v)[field] = x,
                json!(0.0),
                json!(-0.01),
            );
            // Larger than any f64: a parse error at the field, not a panic.
            let mut v = example();
            stats(&mut v)[field] = json!(1e308);
            let text = serde_json::to_string(&v)
                .unwrap()
                .replace("1e+308", "1e400");
            let e = Report::from_json(text.as_bytes()).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("malformed report at `host.stats.{field}`")),
                "{e}"
            );
        }
        bound(
            "host.stats.memory_total_bytes",
            |v, x| {
                stats(v)["memory_total_bytes"] = x;
                stats(v)["memory_available_bytes"] = json!(0);
            },
            json!(1u64 << 50),
            json!((1u64 << 50) + 1),
        );
        bound(
            "host.stats.memory_available_bytes",
            |v, x| stats(v)["memory_available_bytes"] = x,
            json!(8_226_271_232u64),
            json!(8_226_271_233u64),
        );
        bound(
            "host.stats.cpus",
            |v, x| stats(v)["cpus"] = x,
            json!(65_536),
            json!(65_537),
        );
        bound(
            "host.stats.cpus",
            |v, x| stats(v)["cpus"] = x,
            json!(1),
            json!(0),
        );
        let mut v = example();
        stats(&mut v)["memory_available_bytes"] = json!(8_226_271_233u64);
        assert_eq!(
            check(&v).unwrap_err(),
            "host.stats.memory_available_bytes: 8226271233 exceeds 8226271232 (memory_total_bytes)"
        );
        // A NaN cannot come from JSON; the agent validates what it read before spooling.
        let mut r = Report::from_json(&serde_json::to_vec(&example()).unwrap()).unwrap();
        r.host.stats.as_mut().unwrap().load5 = f64::NAN;
        assert_eq!(
            r.validate().unwrap_err().to_string(),
            "host.stats.load5: NaN is not within 0 to 1000000"
        );
        // Unknown fields refused; a missing field is a parse error with its path.
        let mut v = example();
        stats(&mut v)["swap"] = json!(1);
        let e = check(&v).unwrap_err();
        assert!(
            e.starts_with("malformed report at `host.stats.swap`: unknown field `swap`"),
            "{e}"
        );
        let mut v = example();
        stats(&mut v).as_object_mut().unwrap().remove("cpus");
        let e = check(&v).unwrap_err();
        assert!(
            e.starts_with("malformed report at `host.stats`: missing field `cpus`"),
            "{e}"
        );
        // Older agents: no `stats` at all, accepted and round-tripped without it.
        let mut v = example();
        v["host"].as_object_mut().unwrap().remove("stats");
        let r = check(&v).unwrap();
        assert_eq!(r.host.stats, None);
        assert!(
            !String::from_utf8(r.to_json())
                .unwrap()
                .contains("\"stats\"")
        );
    }

    #[test]
    fn addresses() {
        let addrs = |n: u32| -> Value {
            (0..n)
                .map(|i| json!(std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string()))
                .collect::<Vec<_>>()
                .into()
        };
        bound(
            "host.addresses",
            |v, x| v["host"]["addresses"] = x,
            addrs(256),
            addrs(257),
        );
        let mut v = example();
        v["host"]["addresses"] = addrs(100_000);
        assert_eq!(
            check(&v).unwrap_err(),
            "host.addresses: more than 256 addresses"
        );
        let mut v = example();
        v["host"]["addresses"] = json!(["10.0.0.1", "10.0.0.2", "10.0.0.1"]);
        assert_eq!(
            check(&v).unwrap_err(),
            "host.addresses[2]: duplicate 10.0.0.1"
        );
    }

    #[test]
    fn pairs_cap() {
        let mut v = example();
        let p = v["pairs"][0].clone();
        let pairs: Vec<Value> = (0..=MAX_PAIRS as u32)
            .map(|i| {
                let mut p = p.clone();
                p["peer_ip"] = json!(std::net::Ipv4Addr::from(i).to_string());
                p
            })
            .collect();
        v["pairs"] = pairs.into();
        assert_eq!(
            check(&v).unwrap_err(),
            "pairs: more than 200000 pairs in one report"
        );
        v["pairs"].as_array_mut().unwrap().pop();
        assert_eq!(check(&v).unwrap().pairs.len(), MAX_PAIRS);
    }

    #[test]
    fn capped_lists_round_trip_below_the_cap() {
        let r = check(&example()).unwrap();
        assert_eq!(r.host.addresses.len(), 2);
        assert_eq!(r.health.drops.len(), 6);
        assert_eq!(r.pairs.len(), 3);
    }
}
