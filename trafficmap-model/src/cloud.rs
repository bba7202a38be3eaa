//! What the collector knows about the fleet from the cloud provider: instances, security groups
//! and spot prices, as fetched by `trafficmap-aws` (EC2 `DescribeInstances`,
//! `DescribeSecurityGroups`, `DescribeSpotPriceHistory`) or loaded from a fixture in tests.
//!
//! Plain data: the collector decides what the tags mean (which keys hold archdomain, env and the
//! name are configurable), so tags are kept raw here. Snapshots are stored per day so that a past
//! day's map is enriched with that day's address assignments, not today's.

use std::{collections::BTreeMap, net::IpAddr};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Everything fetched in one refresh, over all configured regions.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudSnapshot {
    pub fetched_at: DateTime<Utc>,
    /// Regions that answered; a region that failed is absent and listed in `errors`.
    pub regions: Vec<String>,
    pub instances: Vec<Instance>,
    pub security_groups: Vec<SecurityGroup>,
    /// Most recent spot price per instance type and availability zone.
    pub spot_prices: Vec<SpotPrice>,
    /// One line per region or call that failed (the rest of the snapshot is still usable).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Lifecycle {
    OnDemand,
    Spot,
}

impl Lifecycle {
    pub const fn as_str(self) -> &'static str {
        match self {
            Lifecycle::OnDemand => "on-demand",
            Lifecycle::Spot => "spot",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    pub instance_id: String,
    pub region: String,
    pub availability_zone: Option<String>,
    pub instance_type: Option<String>,
    pub lifecycle: Lifecycle,
    /// `running`, `stopped`, ...
    pub state: Option<String>,
    /// Private addresses of all its network interfaces (primary first).
    pub private_ips: Vec<IpAddr>,
    /// Public (or Elastic) addresses.
    pub public_ips: Vec<IpAddr>,
    pub tags: BTreeMap<String, String>,
    /// Security group ids.
    pub security_groups: Vec<String>,
    pub vpc_id: Option<String>,
    pub launch_time: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityGroup {
    pub group_id: String,
    pub group_name: String,
    pub region: String,
    pub vpc_id: Option<String>,
    pub description: Option<String>,
    pub tags: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpotPrice {
    pub instance_type: String,
    pub availability_zone: String,
    /// USD per hour.
    pub price: f64,
    pub timestamp: DateTime<Utc>,
}

impl CloudSnapshot {
    /// Parses a snapshot (the stored form, or a fixture file).
    pub fn from_json(bytes: &[u8]) -> Result<CloudSnapshot, String> {
        let de = &mut serde_json::Deserializer::from_slice(bytes);
        serde_path_to_error::deserialize(de)
            .map_err(|e| format!("cloud snapshot at `{}`: {}", e.path(), e.inner()))
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a snapshot always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_names_bad_fields() {
        let snap = CloudSnapshot {
            fetched_at: "2026-11-23T10:00:00Z".parse().unwrap(),
            regions: vec!["us-east-1".into()],
            instances: vec![Instance {
                instance_id: "i-0123".into(),
                region: "us-east-1".into(),
                availability_zone: Some("us-east-1a".into()),
                instance_type: Some("m5.large".into()),
                lifecycle: Lifecycle::Spot,
                state: Some("running".into()),
                private_ips: vec!["10.0.1.11".parse().unwrap()],
                public_ips: vec![],
                tags: [("env".to_owned(), "prod".to_owned())].into(),
                security_groups: vec!["sg-1".into()],
                vpc_id: None,
                launch_time: None,
            }],
            security_groups: vec![],
            spot_prices: vec![SpotPrice {
                instance_type: "m5.large".into(),
                availability_zone: "us-east-1a".into(),
                price: 0.0412,
                timestamp: "2026-11-23T09:00:00Z".parse().unwrap(),
            }],
            errors: vec![],
        };
        assert_eq!(CloudSnapshot::from_json(&snap.to_json()).unwrap(), snap);
        let text = String::from_utf8(snap.to_json()).unwrap();
        assert!(text.contains("\"lifecycle\":\"spot\""), "{text}");
        let broken = text.replace("\"10.0.1.11\"", "\"10.0.1.300\"");
        let err = CloudSnapshot::from_json(broken.as_bytes()).unwrap_err();
        assert!(
            err.starts_with("cloud snapshot at `instances[0].private_ips[0]`"),
            "{err}"
        );
    }
}
