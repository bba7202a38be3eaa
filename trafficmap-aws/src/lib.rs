//! EC2 inventory for trafficmap's collector: instances (addresses, tags, type, placement,
//! lifecycle, security groups), security groups and the latest spot prices, over several
//! regions, through `aws-sdk-ec2` with the standard credential chain of `aws-config`; and
//! on-demand prices from the Price List API ([`pricing`], `aws-sdk-pricing`).
//!
//! This crate only fetches; what the tags mean (archdomain, env, name) is the collector's
//! business. It lives apart because the SDK is expensive to compile, and so the collector's pure
//! logic can be tested without it.
//!
//! The endpoint follows the SDK's usual precedence (`AWS_ENDPOINT_URL_EC2`, `AWS_ENDPOINT_URL`,
//! the shared config), unless [`Ec2Options::endpoint_url`] sets one explicitly; tests point it
//! at a local `moto_server`.

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

// Re-exported for tests that seed an emulator with the same SDK (so that their crates need no
// AWS dependency of their own, and builds without EC2 compile none of it).
pub use aws_config;
pub use aws_sdk_ec2;

pub mod pricing;
pub use pricing::{PriceListError, PriceListFetcher, PriceListOptions};

use aws_config::{BehaviorVersion, Region, timeout::TimeoutConfig};
use aws_sdk_ec2::{
    Client,
    types::{Filter, InstanceLifecycleType, InstanceType, Tag},
};
use chrono::{DateTime, TimeZone as _, Utc};
use trafficmap_model::cloud::{CloudSnapshot, Instance, Lifecycle, SecurityGroup, SpotPrice};

/// How to reach EC2.
#[derive(Clone, Debug, Default)]
pub struct Ec2Options {
    /// Regions to list; empty means the region of the default chain (`AWS_REGION`, profile,
    /// instance metadata).
    pub regions: Vec<String>,
    /// Overrides the endpoint for every region (a proxy, or a local emulator in tests).
    pub endpoint_url: Option<String>,
    /// Time limit of one API call, retries included.
    pub call_timeout: Option<Duration>,
}

/// One EC2 client per region.
pub struct Ec2Fetcher {
    clients: Vec<(String, Client)>,
}

/// Pages of one paginated call we are willing to read; a runaway `NextToken` stops here.
const MAX_PAGES: usize = 10_000;
/// Spot prices older than this are not "current".
const SPOT_LOOKBACK_SECS: i64 = 6 * 3600;

#[derive(Debug, thiserror::Error)]
#[error("{call} in {region}: {message}")]
struct CallError {
    call: &'static str,
    region: String,
    message: String,
}

fn call_error(call: &'static str, region: &str, e: impl std::error::Error + 'static) -> CallError {
    // The SDK's Display is terse ("service error"); the source chain says what happened.
    CallError {
        call,
        region: region.to_owned(),
        message: trafficmap_model::error_chain(&e),
    }
}

impl Ec2Fetcher {
    /// Loads credentials and region settings once (standard chain) and makes a client per
    /// region.
    pub async fn new(opts: &Ec2Options) -> Ec2Fetcher {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(t) = opts.call_timeout {
            loader = loader.timeout_config(TimeoutConfig::builder().operation_timeout(t).build());
        }
        let base = loader.load().await;
        let regions: Vec<String> = if opts.regions.is_empty() {
            base.region()
                .map(|r| vec![r.to_string()])
                .unwrap_or_default()
        } else {
            opts.regions.clone()
        };
        let clients = regions
            .into_iter()
            .map(|region| {
                let mut conf =
                    aws_sdk_ec2::config::Builder::from(&base).region(Region::new(region.clone()));
                if let Some(url) = &opts.endpoint_url {
                    conf = conf.endpoint_url(url);
                }
                (region, Client::from_conf(conf.build()))
            })
            .collect();
        Ec2Fetcher { clients }
    }

    pub fn regions(&self) -> Vec<String> {
        self.clients.iter().map(|(r, _)| r.clone()).collect()
    }

    /// Fetches every region concurrently. A region that fails is reported in
    /// [`CloudSnapshot::errors`]; the others are still returned.
    pub async fn fetch(&self, now: DateTime<Utc>) -> CloudSnapshot {
        let mut snap = CloudSnapshot {
            fetched_at: now,
            ..CloudSnapshot::default()
        };
        if self.clients.is_empty() {
            snap.errors.push(
                "no region configured and none found in the default chain (AWS_REGION, profile, instance metadata)"
                    .into(),
            );
            return snap;
        }
        // Regions are independent; poll them together without spawning (no 'static needed).
        let results = join_all(
            self.clients
                .iter()
                .map(|(region, client)| fetch_region(region, client, now))
                .collect(),
        )
        .await;
        for (region, result) in self.clients.iter().map(|(r, _)| r).zip(results) {
            match result {
                Ok(part) => {
                    snap.regions.push(region.clone());
                    snap.instances.extend(part.instances);
                    snap.security_groups.extend(part.security_groups);
                    snap.spot_prices.extend(part.spot_prices);
                    snap.errors.extend(part.errors);
                }
                Err(e) => snap.errors.push(e.to_string()),
            }
        }
        snap.instances
            .sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        snap.security_groups
            .sort_by(|a, b| a.group_id.cmp(&b.group_id));
        snap
    }
}

/// A minimal join of futures of the same type, polled together.
async fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    use std::{pin::Pin, task::Poll};
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, out) in futures.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *out = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|o| o.expect("polled to completion"))
        .collect()
}

async fn fetch_region(
    region: &str,
    client: &Client,
    now: DateTime<Utc>,
) -> Result<CloudSnapshot, CallError> {
    let instances = describe_instances(region, client).await?;
    let mut errors = Vec::new();
    // Security groups and spot prices complete the picture; without them the instances are
    // still worth having, so their failures are reported, not fatal.
    let security_groups = describe_security_groups(region, client)
        .await
        .unwrap_or_else(|e| {
            errors.push(e.to_string());
            Vec::new()
        });
    let spot_types: Vec<String> = {
        let mut t: Vec<String> = instances
            .iter()
            .filter(|i| i.lifecycle == Lifecycle::Spot)
            .filter_map(|i| i.instance_type.clone())
            .collect();
        t.sort();
        t.dedup();
        t
    };
    let spot_prices = if spot_types.is_empty() {
        Vec::new()
    } else {
        describe_spot_prices(region, client, &spot_types, now)
            .await
            .unwrap_or_else(|e| {
                errors.push(e.to_string());
                Vec::new()
            })
    };
    Ok(CloudSnapshot {
        fetched_at: now,
        regions: vec![region.to_owned()],
        instances,
        security_groups,
        spot_prices,
        errors,
    })
}

fn tags(tags: &[Tag]) -> BTreeMap<String, String> {
    tags.iter()
        .filter_map(|t| {
            Some((
                t.key()?.to_owned(),
                t.value().unwrap_or_default().to_owned(),
            ))
        })
        .collect()
}

fn to_chrono(t: &aws_sdk_ec2::primitives::DateTime) -> Option<DateTime<Utc>> {
    Utc.timestamp_opt(t.secs(), t.subsec_nanos()).single()
}

fn push_ip(list: &mut Vec<IpAddr>, s: Option<&str>) {
    if let Some(ip) = s.and_then(|s| s.parse::<IpAddr>().ok())
        && !list.contains(&ip)
    {
        list.push(ip);
    }
}

async fn describe_instances(region: &str, client: &Client) -> Result<Vec<Instance>, CallError> {
    // Terminated instances have given their addresses back; listing them would attach their
    // old addresses to the wrong host.
    let states = Filter::builder()
        .name("instance-state-name")
        .values("pending")
        .values("running")
        .values("stopping")
        .values("stopped")
        .build();
    let mut pages = client
        .describe_instances()
        .filters(states)
        .into_paginator()
        .send();
    let mut out = Vec::new();
    let mut n = 0;
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| call_error("DescribeInstances", region, e))?;
        n += 1;
        for res in page.reservations() {
            for i in res.instances() {
                let Some(id) = i.instance_id() else { continue };
                let mut private_ips = Vec::new();
                let mut public_ips = Vec::new();
                push_ip(&mut private_ips, i.private_ip_address());
                push_ip(&mut public_ips, i.public_ip_address());
                for ni in i.network_interfaces() {
                    push_ip(&mut private_ips, ni.private_ip_address());
                    for a in ni.private_ip_addresses() {
                        push_ip(&mut private_ips, a.private_ip_address());
                        push_ip(&mut public_ips, a.association().and_then(|a| a.public_ip()));
                    }
                    for a in ni.ipv6_addresses() {
                        push_ip(&mut private_ips, a.ipv6_address());
                    }
                    push_ip(
                        &mut public_ips,
                        ni.association().and_then(|a| a.public_ip()),
                    );
                }
                let lifecycle = match i.instance_lifecycle() {
                    Some(InstanceLifecycleType::Spot) => Lifecycle::Spot,
                    _ => Lifecycle::OnDemand,
                };
                out.push(Instance {
                    instance_id: id.to_owned(),
                    region: region.to_owned(),
                    availability_zone: i
                        .placement()
                        .and_then(|p| p.availability_zone())
                        .map(str::to_owned),
                    instance_type: i.instance_type().map(|t| t.as_str().to_owned()),
                    lifecycle,
                    state: i
                        .state()
                        .and_then(|s| s.name())
                        .map(|n| n.as_str().to_owned()),
                    private_ips,
                    public_ips,
                    tags: tags(i.tags()),
                    security_groups: i
                        .security_groups()
                        .iter()
                        .filter_map(|g| g.group_id().map(str::to_owned))
                        .collect(),
                    vpc_id: i.vpc_id().map(str::to_owned),
                    launch_time: i.launch_time().and_then(to_chrono),
                });
            }
        }
        if n >= MAX_PAGES {
            break;
        }
    }
    Ok(out)
}

async fn describe_security_groups(
    region: &str,
    client: &Client,
) -> Result<Vec<SecurityGroup>, CallError> {
    let mut pages = client.describe_security_groups().into_paginator().send();
    let mut out = Vec::new();
    let mut n = 0;
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| call_error("DescribeSecurityGroups", region, e))?;
        n += 1;
        for g in page.security_groups() {
            let Some(id) = g.group_id() else { continue };
            out.push(SecurityGroup {
                group_id: id.to_owned(),
                group_name: g.group_name().unwrap_or(id).to_owned(),
                region: region.to_owned(),
                vpc_id: g.vpc_id().map(str::to_owned),
                description: g.description().map(str::to_owned),
                tags: tags(g.tags()),
            });
        }
        if n >= MAX_PAGES {
            break;
        }
    }
    Ok(out)
}

async fn describe_spot_prices(
    region: &str,
    client: &Client,
    types: &[String],
    now: DateTime<Utc>,
) -> Result<Vec<SpotPrice>, CallError> {
    let start = aws_sdk_ec2::primitives::DateTime::from_secs(now.timestamp() - SPOT_LOOKBACK_SECS);
    let mut req = client
        .describe_spot_price_history()
        .start_time(start)
        .product_descriptions("Linux/UNIX");
    for t in types {
        req = req.instance_types(InstanceType::from(t.as_str()));
    }
    let mut pages = req.into_paginator().send();
    let mut latest: BTreeMap<(String, String), SpotPrice> = BTreeMap::new();
    let mut n = 0;
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| call_error("DescribeSpotPriceHistory", region, e))?;
        n += 1;
        for p in page.spot_price_history() {
            let (Some(t), Some(az), Some(price), Some(ts)) = (
                p.instance_type(),
                p.availability_zone(),
                p.spot_price().and_then(|s| s.parse::<f64>().ok()),
                p.timestamp().and_then(to_chrono),
            ) else {
                continue;
            };
            let key = (t.as_str().to_owned(), az.to_owned());
            if latest.get(&key).is_none_or(|old| old.timestamp < ts) {
                latest.insert(
                    key,
                    SpotPrice {
                        instance_type: t.as_str().to_owned(),
                        availability_zone: az.to_owned(),
                        price,
                        timestamp: ts,
                    },
                );
            }
        }
        // History is newest first; the first pages hold the current prices.
        if n >= 20 {
            break;
        }
    }
    Ok(latest.into_values().collect())
}
