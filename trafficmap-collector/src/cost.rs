//! Estimated transfer cost of a conversation, from where its two ends are (zone, region,
//! internet) and a table of rates. Estimates: payload bytes only (TCP/IP headers add a few
//! percent), list prices, no tiers or private pricing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use trafficmap_model::{
    bounds::{COUNTER_MAX, sat_add},
    map::CostKind,
};

use crate::enrich::Identity;

/// USD per GiB (2^30 bytes, the unit AWS bills in). Cross-zone traffic is billed on both sides
/// ($0.01 out + $0.01 in), hence 0.02 for the conversation's bytes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CostRates {
    pub same_az_per_gib: f64,
    /// Also applied to traffic between two instances of one region through a public address.
    pub cross_az_per_gib: f64,
    pub cross_region_per_gib: f64,
    /// Bytes leaving the fleet for an address on the internet.
    pub internet_egress_per_gib: f64,
    /// Internet egress rate by region of the sending host, where it differs.
    pub internet_egress_by_region: BTreeMap<String, f64>,
}

impl Default for CostRates {
    fn default() -> Self {
        CostRates {
            same_az_per_gib: 0.0,
            cross_az_per_gib: 0.02,
            cross_region_per_gib: 0.02,
            internet_egress_per_gib: 0.09,
            internet_egress_by_region: BTreeMap::new(),
        }
    }
}

const GIB: f64 = 1_073_741_824.0;

impl CostRates {
    pub fn validate(&self) -> Result<(), String> {
        let all = [
            ("same_az_per_gib", self.same_az_per_gib),
            ("cross_az_per_gib", self.cross_az_per_gib),
            ("cross_region_per_gib", self.cross_region_per_gib),
            ("internet_egress_per_gib", self.internet_egress_per_gib),
        ];
        for (name, v) in all.into_iter().chain(
            self.internet_egress_by_region
                .values()
                .map(|v| ("internet_egress_by_region", *v)),
        ) {
            if !v.is_finite() || v < 0.0 {
                return Err(format!(
                    "cost.{name}: {v} is not a rate (USD per GiB, >= 0)"
                ));
            }
        }
        Ok(())
    }

    /// Cost in nano-dollars (integers add up the same in any order, so maps are reproducible)
    /// and its kind, for `to_server` bytes from `client` to `server` and `to_client` back.
    pub fn conversation(
        &self,
        client: &Identity,
        server: &Identity,
        client_ip: std::net::IpAddr,
        server_ip: std::net::IpAddr,
        to_server: u64,
        to_client: u64,
    ) -> (u64, CostKind) {
        // `as` saturates; the cap keeps sums of costs within `i64` like every counter.
        let nanos = |bytes: u64, rate: f64| -> u64 {
            ((bytes as f64 / GIB * rate * 1e9).round() as u64).min(COUNTER_MAX)
        };
        if client.internet != server.internet {
            // Egress is what our side sends to the internet; ingress is free.
            let (ours, egress) = if client.internet {
                (server, to_client)
            } else {
                (client, to_server)
            };
            let rate = ours
                .region
                .as_ref()
                .and_then(|r| self.internet_egress_by_region.get(r))
                .copied()
                .unwrap_or(self.internet_egress_per_gib);
            return (nanos(egress, rate), CostKind::Internet);
        }
        let total = sat_add(to_server, to_client);
        let (Some(rc), Some(rs)) = (&client.region, &server.region) else {
            return (0, CostKind::Unknown);
        };
        if client.internet {
            return (0, CostKind::Unknown);
        }
        if rc != rs {
            return (
                nanos(total, self.cross_region_per_gib),
                CostKind::CrossRegion,
            );
        }
        if client.public_ips.contains(&client_ip) || server.public_ips.contains(&server_ip) {
            return (nanos(total, self.cross_az_per_gib), CostKind::CrossAz);
        }
        match (&client.availability_zone, &server.availability_zone) {
            (Some(a), Some(b)) if a == b => (nanos(total, self.same_az_per_gib), CostKind::SameAz),
            (Some(_), Some(_)) => (nanos(total, self.cross_az_per_gib), CostKind::CrossAz),
            _ => (0, CostKind::Unknown),
        }
    }
}

/// USD from nano-dollars, rounded to the micro-dollar for display.
pub fn usd(nanos: u64) -> f64 {
    (nanos as f64 / 1_000.0).round() / 1e6
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn host(region: &str, az: &str) -> Identity {
        Identity {
            region: Some(region.into()),
            availability_zone: Some(az.into()),
            ..Identity::default()
        }
    }

    const G: u64 = 1 << 30;

    #[test]
    fn kinds_and_rates() {
        let r = CostRates::default();
        let (a, b) = (ip("10.0.0.1"), ip("10.0.0.2"));
        let east_a = host("us-east-1", "us-east-1a");
        let east_b = host("us-east-1", "us-east-1b");
        let west = host("us-west-2", "us-west-2a");
        assert_eq!(
            r.conversation(&east_a, &east_a, a, b, G, G),
            (0, CostKind::SameAz)
        );
        assert_eq!(
            r.conversation(&east_a, &east_b, a, b, G, G),
            (40_000_000, CostKind::CrossAz)
        );
        assert_eq!(
            r.conversation(&east_a, &west, a, b, G, 3 * G),
            (80_000_000, CostKind::CrossRegion)
        );
        let unknown = Identity::default();
        assert_eq!(
            r.conversation(&east_a, &unknown, a, b, G, G),
            (0, CostKind::Unknown)
        );
        // Same zone, but through the server's public address.
        let mut public = east_a.clone();
        public.public_ips.insert(ip("54.0.0.1"));
        assert_eq!(
            r.conversation(&east_a, &public, a, ip("54.0.0.1"), G, G),
            (40_000_000, CostKind::CrossAz)
        );
    }

    #[test]
    fn internet_egress_counts_only_what_leaves() {
        let mut r = CostRates::default();
        r.internet_egress_by_region
            .insert("ap-southeast-1".into(), 0.12);
        let net = Identity {
            internet: true,
            ..Identity::default()
        };
        let east = host("us-east-1", "us-east-1a");
        let sg = host("ap-southeast-1", "ap-southeast-1a");
        let (a, b) = (ip("10.0.0.1"), ip("52.0.0.1"));
        // We call out: requests (2 GiB) are egress, the 5 GiB download is free.
        assert_eq!(
            r.conversation(&east, &net, a, b, 2 * G, 5 * G),
            (180_000_000, CostKind::Internet)
        );
        // The internet calls us: responses are egress, at the region's own rate.
        assert_eq!(
            r.conversation(&net, &sg, b, a, 5 * G, G),
            (120_000_000, CostKind::Internet)
        );
        assert_eq!(usd(180_000_000), 0.18);
        assert_eq!(usd(1_499), 0.000001);
    }

    #[test]
    fn rejects_negative_rates() {
        let r = CostRates {
            cross_az_per_gib: -1.0,
            ..CostRates::default()
        };
        assert_eq!(
            r.validate().unwrap_err(),
            "cost.cross_az_per_gib: -1 is not a rate (USD per GiB, >= 0)"
        );
    }
}
