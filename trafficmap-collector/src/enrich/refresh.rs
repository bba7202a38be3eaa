//! Keeping the enrichment sources fresh, in the background: the operator's files are re-read when
//! they change, EC2 is asked every `refresh`, reverse DNS runs its own queue. Readers take the
//! current [`Sources`] (a cheap clone of `Arc`s) and never wait for a refresh; a failed refresh
//! keeps the last good data and says so in the maps' warnings.

use std::{
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
    time::SystemTime,
};

use chrono::{DateTime, Utc};
use trafficmap_model::cloud::CloudSnapshot;

use super::{
    CloudIndex, ForeignList, Inventory, PriceTable, Rules, Sources,
    dns::{BoxFuture, DnsCache},
    pricelist::{self, PriceListSource},
};
use crate::{config, metrics::Metrics, store::Store};

/// Where EC2 data comes from: the API (`trafficmap-aws`) or a snapshot file.
pub trait CloudSource: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn fetch(&self, now: DateTime<Utc>) -> BoxFuture<'_, CloudSnapshot>;
}

/// A snapshot in the collector's JSON form, re-read on every refresh.
pub struct SnapshotFile(pub PathBuf);

impl CloudSource for SnapshotFile {
    fn name(&self) -> &'static str {
        "ec2-snapshot-file"
    }

    fn fetch(&self, now: DateTime<Utc>) -> BoxFuture<'_, CloudSnapshot> {
        let path = self.0.clone();
        Box::pin(async move {
            let read = tokio::fs::read(&path).await;
            match read
                .map_err(|e| e.to_string())
                .and_then(|b| CloudSnapshot::from_json(&b))
            {
                Ok(s) => s,
                Err(e) => CloudSnapshot {
                    fetched_at: now,
                    errors: vec![format!("{}: {e}", path.display())],
                    ..CloudSnapshot::default()
                },
            }
        })
    }
}

/// The enrichment state shared by ingest, the map builders and the refresh tasks.
pub struct Enricher {
    cfg: config::Enrich,
    pub rules: Rules,
    base: RwLock<Sources>,
    file_stamps: Mutex<[Option<(SystemTime, u64)>; 3]>,
    file_errors: Mutex<[Option<String>; 3]>,
    cloud_error: Mutex<Option<String>>,
    cloud_loaded: Mutex<bool>,
    pub dns: Option<Arc<DnsCache>>,
    /// Service names for ports (issue 12 item 4): `[services]` over IANA's, for the maps'
    /// links, the exports and the command line's tables.
    pub services: trafficmap_model::services::ServiceNames,
    // Prices (issue 12, c1): the Price List API, when `[prices] price_list_api` is on.
    price_list: Mutex<Option<PriceList>>,
    /// The last Price List refresh's failure (logged once, when it starts failing).
    price_list_error: Mutex<Option<String>>,
}

/// The Price List API and its cache file (`[prices]`).
#[derive(Clone)]
pub struct PriceList {
    pub source: Arc<dyn PriceListSource>,
    pub cache_file: PathBuf,
    pub operating_system: String,
    pub ttl: std::time::Duration,
}

fn stamp(p: &std::path::Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(p).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl Enricher {
    /// Loads the files (errors are fatal here: the configuration was validated before), with
    /// IANA's service names only.
    pub fn new(
        cfg: &config::Enrich,
    ) -> Result<(Arc<Enricher>, Option<tokio::sync::mpsc::Receiver<IpAddr>>), String> {
        Self::with_services(cfg, trafficmap_model::services::ServiceNames::iana())
    }

    /// [`Enricher::new`] with the configuration's service names (`config::Services::load`).
    pub fn with_services(
        cfg: &config::Enrich,
        services: trafficmap_model::services::ServiceNames,
    ) -> Result<(Arc<Enricher>, Option<tokio::sync::mpsc::Receiver<IpAddr>>), String> {
        let rules = Rules {
            tags: cfg.tags.clone(),
            archdomain: cfg.archdomain.clone(),
            env: cfg.env.clone(),
        };
        let mut base = Sources::default();
        if let Some(p) = &cfg.inventory_file {
            base.inventory = Arc::new(Inventory::load(p)?);
        }
        if let Some(p) = &cfg.foreign_file {
            base.foreign = Arc::new(ForeignList::load(p)?);
        }
        if let Some(p) = &cfg.price_file {
            base.prices = Arc::new(PriceTable::load(p)?);
        }
        let stamps = [&cfg.inventory_file, &cfg.foreign_file, &cfg.price_file]
            .map(|p| p.as_deref().and_then(stamp));
        let (dns, rx) = if cfg.dns.enabled {
            let (c, rx) = DnsCache::new(cfg.dns.settings());
            (Some(c), Some(rx))
        } else {
            (None, None)
        };
        Ok((
            Arc::new(Enricher {
                cfg: cfg.clone(),
                rules,
                base: RwLock::new(base),
                file_stamps: Mutex::new(stamps),
                file_errors: Mutex::default(),
                cloud_error: Mutex::default(),
                cloud_loaded: Mutex::new(false),
                dns,
                services,
                price_list: Mutex::default(),
                price_list_error: Mutex::default(),
            }),
            rx,
        ))
    }

    /// Whether EC2 data is expected (API or snapshot file).
    pub fn cloud_configured(&self) -> bool {
        self.cfg.ec2.enabled || self.cfg.ec2.snapshot_file.is_some()
    }

    /// EC2 data is loaded, or none is configured (the daily report mail waits for it: a report
    /// made before would list no instance; issue 12, c2).
    pub fn cloud_ready(&self) -> bool {
        !self.cloud_configured() || *self.cloud_loaded.lock().expect("lock")
    }

    /// The sources now, with reverse DNS names and current warnings.
    pub fn sources(&self) -> Sources {
        let mut s = self.base.read().expect("sources lock").clone();
        if let Some(dns) = &self.dns {
            s.dns = Arc::new(dns.names());
        }
        let mut warnings = Vec::new();
        // Maps are read by people who do not run the collector: the warnings name what is
        // wrong, never paths or errors (those are in the log, where the reload logged them).
        let names = ["inventory", "foreign-list", "price-table"];
        for (name, e) in names
            .iter()
            .zip(self.file_errors.lock().expect("lock").iter())
        {
            if e.is_some() {
                warnings.push(format!(
                    "the {name} file is unusable; the previous version is still used (details in the collector's log)"
                ));
            }
        }
        if self.cloud_configured() && !*self.cloud_loaded.lock().expect("lock") {
            warnings.push(
                "EC2 data not loaded yet: instances are shown without tags, types and prices"
                    .into(),
            );
        }
        if let Some(e) = &*self.cloud_error.lock().expect("lock") {
            warnings.push(e.clone());
        }
        if self.price_list_error.lock().expect("lock").is_some() {
            warnings.push(
                "the AWS Price List API did not answer; on-demand prices it has not given before come from the price table (details in the collector's log)"
                    .into(),
            );
        }
        s.warnings = warnings;
        s
    }

    /// The sources for a past day: that day's stored EC2 snapshot (addresses move between
    /// instances), the rest as now.
    pub async fn sources_for_day(
        &self,
        store: &Store,
        day: chrono::NaiveDate,
        today: chrono::NaiveDate,
    ) -> Sources {
        let mut s = self.sources();
        if day < today
            && let Ok(Some(snap)) = store.cloud(day).await
        {
            s.cloud = Arc::new(CloudIndex::new(snap));
        }
        s
    }

    /// Installs a cloud snapshot (used directly by tests and the CLI).
    pub fn set_cloud(&self, snap: CloudSnapshot) {
        self.base.write().expect("sources lock").cloud = Arc::new(CloudIndex::new(snap));
        *self.cloud_loaded.lock().expect("lock") = true;
    }

    /// Uses the Price List API from now on: the cache file's fresh prices at once, the API at
    /// every [`Enricher::refresh_price_list`].
    pub fn set_price_list(&self, pl: PriceList, now: DateTime<Utc>) {
        let cache = pricelist::load_cache(&pl.cache_file);
        self.base.write().expect("sources lock").price_list =
            Arc::new(pricelist::prices(&cache, &pl.operating_system, pl.ttl, now));
        *self.price_list.lock().expect("lock") = Some(pl);
    }

    /// Asks the Price List API for the on-demand types of the current EC2 data that the cache
    /// lacks (nothing when the API is not configured). Returns the questions asked, or the
    /// failure, which is logged once when the API starts failing, and warned about in the maps
    /// until it answers again.
    pub async fn refresh_price_list(&self, now: DateTime<Utc>) -> Option<Result<usize, String>> {
        let pl = self.price_list.lock().expect("lock").clone()?;
        let wanted = pricelist::wanted(&self.base.read().expect("sources lock").cloud.snapshot);
        let r = pricelist::refresh(
            pl.source.as_ref(),
            &pl.cache_file,
            &pl.operating_system,
            pl.ttl,
            &wanted,
            now,
        )
        .await;
        self.base.write().expect("sources lock").price_list = Arc::new(r.prices);
        let mut last = self.price_list_error.lock().expect("lock");
        match r.error {
            Some(e) => {
                if last.is_none() {
                    tracing::error!(error = %e, "AWS Price List API failed; on-demand prices from the price table until it answers");
                }
                *last = Some(e.clone());
                Some(Err(e))
            }
            None => {
                if last.take().is_some() {
                    tracing::info!("AWS Price List API answers again");
                }
                Some(Ok(r.asked))
            }
        }
    }

    /// Asks for reverse DNS of addresses (never waits).
    pub fn request_dns(&self, ips: impl IntoIterator<Item = IpAddr>) {
        if let Some(d) = &self.dns {
            d.request(ips);
        }
    }

    /// Re-reads the files that changed since the last look. Returns (source, ok) per reload.
    pub fn reload_files(&self) -> Vec<(&'static str, Result<(), String>)> {
        let paths = [
            ("inventory", &self.cfg.inventory_file),
            ("foreign-list", &self.cfg.foreign_file),
            ("price-table", &self.cfg.price_file),
        ];
        let mut out = Vec::new();
        for (i, (name, path)) in paths.into_iter().enumerate() {
            let Some(path) = path else { continue };
            let now = stamp(path);
            {
                let mut stamps = self.file_stamps.lock().expect("lock");
                if stamps[i] == now {
                    continue;
                }
                stamps[i] = now;
            }
            let result = match i {
                0 => Inventory::load(path)
                    .map(|v| self.base.write().expect("sources lock").inventory = Arc::new(v)),
                1 => ForeignList::load(path)
                    .map(|v| self.base.write().expect("sources lock").foreign = Arc::new(v)),
                _ => PriceTable::load(path)
                    .map(|v| self.base.write().expect("sources lock").prices = Arc::new(v)),
            };
            self.file_errors.lock().expect("lock")[i] = result.as_ref().err().cloned();
            out.push((name, result));
        }
        out
    }

    /// One EC2 refresh: a snapshot that reached no region keeps the previous one.
    pub async fn refresh_cloud(
        &self,
        source: &dyn CloudSource,
        store: &Store,
        now: DateTime<Utc>,
    ) -> Result<usize, String> {
        let snap = source.fetch(now).await;
        // The maps' warning says what happened and when; the EC2 errors themselves (accounts,
        // endpoints, request ids) go to the log only.
        if snap.regions.is_empty() && !snap.errors.is_empty() {
            *self.cloud_error.lock().expect("lock") = Some(format!(
                "EC2 refresh at {} failed; data from the last successful refresh is used (details in the collector's log)",
                now.format("%Y-%m-%d %H:%M:%SZ"),
            ));
            return Err(format!("no region answered: {}", snap.errors.join("; ")));
        }
        if !snap.errors.is_empty() {
            tracing::warn!(errors = %snap.errors.join("; "), "EC2 refresh incomplete");
        }
        *self.cloud_error.lock().expect("lock") = (!snap.errors.is_empty()).then(|| {
            format!(
                "EC2 refresh at {} incomplete: some regions did not answer (details in the collector's log)",
                now.format("%Y-%m-%d %H:%M:%SZ"),
            )
        });
        let n = snap.instances.len();
        if let Err(e) = store.save_cloud(now.date_naive(), &snap).await {
            tracing::warn!(error = %e, "could not keep the EC2 snapshot of the day");
        }
        self.set_cloud(snap);
        Ok(n)
    }

    /// Runs the refresh loops until `shutdown` fires.
    pub async fn run(
        self: Arc<Self>,
        store: Store,
        cloud: Option<Box<dyn CloudSource>>,
        dns_rx: Option<tokio::sync::mpsc::Receiver<IpAddr>>,
        resolver: Arc<dyn super::dns::ReverseLookup>,
        metrics: Arc<Metrics>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        if let (Some(dns), Some(rx)) = (self.dns.clone(), dns_rx) {
            tokio::spawn(dns.run(rx, resolver));
        }
        let mut files = tokio::time::interval(self.cfg.files_interval);
        files.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ec2 = tokio::time::interval(self.cfg.ec2.refresh);
        ec2.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = files.tick() => {
                    for (source, r) in self.reload_files() {
                        match &r {
                            Ok(()) => tracing::info!(source, "reloaded"),
                            Err(e) => tracing::error!(source, error = %e, "reload failed; keeping the previous version"),
                        }
                        metrics.refreshed(source, r.is_ok(), Utc::now());
                    }
                }
                _ = ec2.tick(), if cloud.is_some() => {
                    let source = cloud.as_deref().expect("guarded");
                    let now = Utc::now();
                    match self.refresh_cloud(source, &store, now).await {
                        Ok(n) => {
                            tracing::info!(source = source.name(), instances = n, "EC2 data refreshed");
                            metrics.refreshed("ec2", true, now);
                            // New instance types get their on-demand prices (failures are
                            // logged by the call, once).
                            if let Some(Ok(asked)) = self.refresh_price_list(now).await
                                && asked > 0
                            {
                                tracing::info!(asked, "on-demand prices from the AWS Price List API");
                            }
                        }
                        Err(e) => {
                            tracing::error!(source = source.name(), error = %e, "EC2 refresh failed");
                            metrics.refreshed("ec2", false, now);
                        }
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The maps' warnings say that the refresh failed, never the EC2 or file error itself
    /// (finding 17: endpoints, accounts and paths stay in the log).
    #[tokio::test]
    async fn failed_refresh_warns_without_details() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("secret-path/ec2-snapshot.json");
        let mut cfg = config::Enrich::default();
        cfg.dns.enabled = false;
        cfg.ec2.snapshot_file = Some(missing.clone());
        let (enricher, _) = Enricher::new(&cfg).unwrap();
        let store = Store::open(crate::store::Options::Sqlite {
            dir: dir.path().join("data"),
            sync: crate::store::sqlite::Sync::Normal,
        })
        .await
        .unwrap();
        let now = DateTime::parse_from_rfc3339("2026-11-23T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let err = enricher
            .refresh_cloud(&SnapshotFile(missing.clone()), &store, now)
            .await
            .unwrap_err();
        // The log gets the details.
        assert!(err.contains("secret-path"), "{err}");
        assert_eq!(
            enricher.sources().warnings,
            vec![
                "EC2 data not loaded yet: instances are shown without tags, types and prices"
                    .to_owned(),
                "EC2 refresh at 2026-11-23 10:00:00Z failed; data from the last successful refresh is used (details in the collector's log)".to_owned(),
            ]
        );
    }
}
