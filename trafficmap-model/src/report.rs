//! The minute report: what one agent observed on one host during one window.
//!
//! Schema: `schema/report-v1.schema.json`; example: `schema/report-v1.example.json` (both
//! checked by tests against these types). Agents write it, the collector ingests it.

use std::{collections::BTreeMap, net::IpAddr};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    pub hostname: String,
    /// `/etc/machine-id`, or a stable id of the agent's own when scoped to a network namespace.
    pub machine_id: String,
    /// Addresses of the host's interfaces (of its network namespace), loopback excluded.
    pub addresses: Vec<IpAddr>,
    /// Network namespace inode when the agent counts one namespace only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<u32>,
    /// Identity from EC2 instance metadata (IMDSv2), when enabled and available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ec2: Option<Ec2Identity>,
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
    /// Events the probe could not record during the window, by reason (`conns_full`, ...).
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
}

impl Pair {
    /// The fields that identify a pair within a report.
    pub fn key(&self) -> (IpAddr, IpAddr, u16, Role, &str) {
        (
            self.local_ip,
            self.peer_ip,
            self.server_port,
            self.role,
            self.process.as_str(),
        )
    }
}

/// Why a report was rejected. Messages name the offending field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReportError {
    #[error("malformed report at `{path}`: {message}")]
    Json { path: String, message: String },
    #[error("unsupported report schema `{0}`: this collector accepts `{REPORT_SCHEMA}`")]
    UnsupportedSchema(String),
    #[error("invalid report: {0}")]
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

    /// Checks what the types alone cannot.
    pub fn validate(&self) -> Result<(), ReportError> {
        let invalid = |m: String| Err(ReportError::Invalid(m));
        if self.schema != REPORT_SCHEMA {
            return Err(ReportError::UnsupportedSchema(self.schema.clone()));
        }
        if !(16..=64).contains(&self.report_id.len())
            || !self
                .report_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return invalid(format!(
                "report_id `{}` must be 16-64 characters of A-Z a-z 0-9 - _",
                self.report_id
            ));
        }
        if self.window.end <= self.window.start {
            return invalid(format!(
                "window end {} is not after its start {}",
                self.window.end, self.window.start
            ));
        }
        if self.host.hostname.is_empty() {
            return invalid("host.hostname is empty".into());
        }
        if self.host.machine_id.is_empty() {
            return invalid("host.machine_id is empty".into());
        }
        if self.pairs.len() > MAX_PAIRS {
            return invalid(format!(
                "{} pairs, at most {MAX_PAIRS} per report",
                self.pairs.len()
            ));
        }
        let mut keys = std::collections::HashSet::with_capacity(self.pairs.len());
        for (i, p) in self.pairs.iter().enumerate() {
            if p.last_seen < p.first_seen {
                return invalid(format!("pairs[{i}]: last_seen is before first_seen"));
            }
            if !keys.insert(p.key()) {
                return invalid(format!(
                    "pairs[{i}]: duplicate pair {} -> {} port {} ({:?}, `{}`)",
                    p.local_ip, p.peer_ip, p.server_port, p.role, p.process
                ));
            }
        }
        Ok(())
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a report always serialises")
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
