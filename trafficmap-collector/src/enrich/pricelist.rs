//! On-demand prices from the AWS Price List API (`[prices]`), kept in a cache file in
//! `data_dir` for `cache_ttl`, so the service asks once a day per (instance type, region) and a
//! restarted collector or a command-line report asks only for what is missing. The API itself is
//! behind [`PriceListSource`] (`crate::aws` with the `ec2` feature; fakes in tests).
//!
//! Prices from here come before the price table; a type the API does not price, or every type
//! when the API does not answer, falls back to the table (and the map says so in a warning).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::Path,
    time::Duration,
};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use trafficmap_model::{cloud::CloudSnapshot, map::MAX_PRICE_PER_HOUR};

use super::dns::BoxFuture;

/// Cache entries kept at most (one per instance type and region: a fleet has a few hundred).
pub const MAX_ENTRIES: usize = 10_000;
/// Questions asked in one refresh at most; the rest wait for the next refresh.
pub const MAX_CALLS_PER_REFRESH: usize = 500;
/// Largest cache file read (10,000 entries are about 1.5 MB).
const MAX_CACHE_BYTES: u64 = 16 << 20;

/// The Price List API, one question at a time.
pub trait PriceListSource: Send + Sync + 'static {
    /// USD per hour of an on-demand `instance_type` in `region`; `Ok(None)`: no such product.
    fn on_demand<'a>(
        &'a self,
        instance_type: &'a str,
        region: &'a str,
    ) -> BoxFuture<'a, Result<Option<f64>, String>>;
}

/// The usable (fresh, bounded) prices, by (instance type, region).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PriceListPrices {
    prices: HashMap<(String, String), f64>,
}

impl PriceListPrices {
    pub fn on_demand(&self, instance_type: &str, region: &str) -> Option<f64> {
        self.prices
            .get(&(instance_type.to_owned(), region.to_owned()))
            .copied()
    }

    pub fn len(&self) -> usize {
        self.prices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prices.is_empty()
    }
}

/// One answer of the API, as cached.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheEntry {
    pub instance_type: String,
    pub region: String,
    pub operating_system: String,
    /// `None`: the API knows no such product (asked again after the TTL, not before).
    pub usd_per_hour: Option<f64>,
    pub fetched_at: DateTime<Utc>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheFile {
    entries: Vec<CacheEntry>,
}

type Key = (String, String, String);

fn usable(p: f64) -> bool {
    p.is_finite() && (0.0..=MAX_PRICE_PER_HOUR).contains(&p)
}

/// The cache file's entries (an unreadable or broken file is an empty cache, logged: it only
/// costs questions). Entries with a price out of bounds are dropped.
pub fn load_cache(path: &Path) -> BTreeMap<Key, CacheEntry> {
    let read = || -> Result<Vec<CacheEntry>, String> {
        let len = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
        if len > MAX_CACHE_BYTES {
            return Err(format!("{len} bytes, more than {MAX_CACHE_BYTES}"));
        }
        let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
        let f: CacheFile = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        Ok(f.entries)
    };
    let entries = match read() {
        Ok(e) => e,
        Err(e) => {
            if path.exists() {
                tracing::warn!(path = %path.display(), error = %e, "price list cache unusable; starting empty");
            }
            Vec::new()
        }
    };
    entries
        .into_iter()
        .filter(|e| e.usd_per_hour.is_none_or(usable))
        .take(MAX_ENTRIES)
        .map(|e| {
            (
                (
                    e.instance_type.clone(),
                    e.region.clone(),
                    e.operating_system.clone(),
                ),
                e,
            )
        })
        .collect()
}

fn fresh(e: &CacheEntry, ttl: Duration, now: DateTime<Utc>) -> bool {
    let age = now.signed_duration_since(e.fetched_at);
    // An entry from the future (clock stepped back) is not trusted either.
    age >= chrono::TimeDelta::zero() && age.to_std().is_ok_and(|a| a < ttl)
}

/// The prices of the fresh entries for `operating_system`.
pub fn prices(
    cache: &BTreeMap<Key, CacheEntry>,
    operating_system: &str,
    ttl: Duration,
    now: DateTime<Utc>,
) -> PriceListPrices {
    PriceListPrices {
        prices: cache
            .values()
            .filter(|e| e.operating_system == operating_system && fresh(e, ttl, now))
            .filter_map(|e| Some(((e.instance_type.clone(), e.region.clone()), e.usd_per_hour?)))
            .collect(),
    }
}

/// The (instance type, region) pairs of the snapshot's on-demand instances.
pub fn wanted(snapshot: &CloudSnapshot) -> BTreeSet<(String, String)> {
    snapshot
        .instances
        .iter()
        .filter(|i| i.lifecycle == trafficmap_model::cloud::Lifecycle::OnDemand)
        .filter_map(|i| Some((i.instance_type.clone()?, i.region.clone())))
        .collect()
}

/// What a refresh did.
#[derive(Debug, Default)]
pub struct Refreshed {
    pub prices: PriceListPrices,
    /// Questions asked (and answered) this time.
    pub asked: usize,
    /// The first failure; no more questions were asked after it (an unreachable or refusing
    /// endpoint would fail them all).
    pub error: Option<String>,
}

/// Asks the API for the wanted pairs without a fresh cache entry, saves the cache, and returns
/// the prices to use.
pub async fn refresh(
    source: &dyn PriceListSource,
    cache_path: &Path,
    operating_system: &str,
    ttl: Duration,
    wanted: &BTreeSet<(String, String)>,
    now: DateTime<Utc>,
) -> Refreshed {
    let mut cache = load_cache(cache_path);
    // Expired entries go; the answers below replace them.
    cache.retain(|_, e| fresh(e, ttl, now));
    let mut out = Refreshed::default();
    let missing: Vec<&(String, String)> = wanted
        .iter()
        .filter(|(t, r)| !cache.contains_key(&(t.clone(), r.clone(), operating_system.to_owned())))
        .take(MAX_CALLS_PER_REFRESH)
        .collect();
    for (t, r) in missing {
        if cache.len() >= MAX_ENTRIES {
            break;
        }
        match source.on_demand(t, r).await {
            Ok(p) => {
                out.asked += 1;
                cache.insert(
                    (t.clone(), r.clone(), operating_system.to_owned()),
                    CacheEntry {
                        instance_type: t.clone(),
                        region: r.clone(),
                        operating_system: operating_system.to_owned(),
                        usd_per_hour: p.filter(|p| usable(*p)),
                        fetched_at: now,
                    },
                );
            }
            Err(e) => {
                out.error = Some(e);
                break;
            }
        }
    }
    if out.asked > 0 {
        let file = CacheFile {
            entries: cache.values().cloned().collect(),
        };
        let bytes = serde_json::to_vec_pretty(&file).unwrap_or_default();
        if let Some(dir) = cache_path.parent()
            && let Err(e) = std::fs::create_dir_all(dir)
                .and_then(|()| crate::mapservice::write_atomic(cache_path, &bytes))
        {
            tracing::warn!(path = %cache_path.display(), error = %e, "could not save the price list cache");
        }
    }
    out.prices = prices(&cache, operating_system, ttl, now);
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Answers from a table; counts questions; fails from the `fail_from`-th question on.
    struct Fake {
        answers: BTreeMap<(String, String), Option<f64>>,
        asked: Mutex<Vec<(String, String)>>,
        fail_from: usize,
    }

    impl PriceListSource for Fake {
        fn on_demand<'a>(
            &'a self,
            t: &'a str,
            r: &'a str,
        ) -> BoxFuture<'a, Result<Option<f64>, String>> {
            Box::pin(async move {
                let mut asked = self.asked.lock().unwrap();
                asked.push((t.to_owned(), r.to_owned()));
                if asked.len() > self.fail_from {
                    return Err("connection refused".into());
                }
                Ok(self
                    .answers
                    .get(&(t.to_owned(), r.to_owned()))
                    .copied()
                    .flatten())
            })
        }
    }

    fn pair(t: &str, r: &str) -> (String, String) {
        (t.to_owned(), r.to_owned())
    }

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[tokio::test]
    async fn asks_once_per_ttl_and_caches_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.json");
        let fake = Fake {
            answers: [
                (pair("m5.large", "us-east-1"), Some(0.096)),
                (pair("x9.huge", "us-east-1"), Some(f64::NAN)),
                (pair("r5.xlarge", "us-east-1"), Some(1e300)),
            ]
            .into(),
            asked: Mutex::default(),
            fail_from: usize::MAX,
        };
        let wanted: BTreeSet<_> = [
            pair("m5.large", "us-east-1"),
            pair("x9.huge", "us-east-1"),
            pair("r5.xlarge", "us-east-1"),
            pair("c5.large", "eu-west-1"),
        ]
        .into();
        let now = at("2026-11-23T10:00:00Z");
        let r = refresh(&fake, &path, "Linux", DAY, &wanted, now).await;
        assert_eq!((r.asked, r.error), (4, None));
        // NaN and 1e300 are not prices; c5.large has no product.
        assert_eq!(r.prices.len(), 1);
        assert_eq!(r.prices.on_demand("m5.large", "us-east-1"), Some(0.096));
        // Within the TTL nothing is asked again, the disk cache answers.
        let r = refresh(
            &fake,
            &path,
            "Linux",
            DAY,
            &wanted,
            at("2026-11-24T09:59:59Z"),
        )
        .await;
        assert_eq!((r.asked, r.prices.len()), (0, 1));
        assert_eq!(fake.asked.lock().unwrap().len(), 4);
        // Another operating system is another question.
        let r = refresh(
            &fake,
            &path,
            "Windows",
            DAY,
            &[pair("m5.large", "us-east-1")].into(),
            now,
        )
        .await;
        assert_eq!(r.asked, 1);
        // After the TTL everything is asked again.
        let r = refresh(
            &fake,
            &path,
            "Linux",
            DAY,
            &wanted,
            at("2026-11-24T10:00:00Z"),
        )
        .await;
        assert_eq!(r.asked, 4);
        assert_eq!(fake.asked.lock().unwrap().len(), 9);
    }

    #[tokio::test]
    async fn stops_at_the_first_failure_and_keeps_what_it_has() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.json");
        let fake = Fake {
            answers: [
                (pair("a.large", "r"), Some(0.5)),
                (pair("b.large", "r"), Some(0.25)),
            ]
            .into(),
            asked: Mutex::default(),
            fail_from: 1,
        };
        let wanted: BTreeSet<_> = [
            pair("a.large", "r"),
            pair("b.large", "r"),
            pair("c.large", "r"),
        ]
        .into();
        let r = refresh(
            &fake,
            &path,
            "Linux",
            DAY,
            &wanted,
            at("2026-11-23T10:00:00Z"),
        )
        .await;
        assert_eq!(r.asked, 1);
        assert_eq!(r.error.as_deref(), Some("connection refused"));
        // One question after the failure at most: the second one failed, the third was not asked.
        assert_eq!(fake.asked.lock().unwrap().len(), 2);
        assert_eq!(r.prices.on_demand("a.large", "r"), Some(0.5));
        assert_eq!(r.prices.on_demand("b.large", "r"), None);
    }

    #[test]
    fn hostile_cache_files_are_empty_caches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.json");
        std::fs::write(&path, b"{not json").unwrap();
        assert!(load_cache(&path).is_empty());
        std::fs::write(
            &path,
            br#"{"entries":[{"instance_type":"m","region":"r","operating_system":"Linux","usd_per_hour":-1.0,"fetched_at":"2026-11-23T10:00:00Z"},{"instance_type":"n","region":"r","operating_system":"Linux","usd_per_hour":0.5,"fetched_at":"2026-11-23T10:00:00Z"}]}"#,
        )
        .unwrap();
        let c = load_cache(&path);
        assert_eq!(c.len(), 1);
        let p = prices(&c, "Linux", DAY, at("2026-11-23T11:00:00Z"));
        assert_eq!(
            (p.on_demand("m", "r"), p.on_demand("n", "r")),
            (None, Some(0.5))
        );
        // An entry from the future (clock stepped back) is not fresh.
        assert!(prices(&c, "Linux", DAY, at("2026-11-23T09:00:00Z")).is_empty());
    }
}
