//! The service: opens the store, starts enrichment, the batch writer, the HTTP server and the
//! periodic work (roll-ups and retention, daily files, token reloads), and stops them in order on
//! SIGTERM or SIGINT: stop accepting, finish requests in flight, write what is queued, roll up,
//! exit 0.

use std::{sync::Arc, time::Duration};

use anyhow::Result;
use chrono::Utc;
use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    auth::{Auth, FileContent, Reload, TokenFile, WatchedFile},
    config::Config,
    enrich::{
        dns::{ReverseLookup, SystemResolver},
        refresh::{CloudSource, Enricher, SnapshotFile},
    },
    mapbuilds::StoreVersion,
    mapservice,
    metrics::Metrics,
    read_auth::{ReadAccess, ReadTokenFile},
    server::{self, App},
    store::Store,
};

/// Where EC2 data comes from, if anywhere.
pub async fn cloud_source(cfg: &Config) -> Option<Box<dyn CloudSource>> {
    if let Some(p) = &cfg.enrich.ec2.snapshot_file {
        return Some(Box::new(SnapshotFile(p.clone())));
    }
    if cfg.enrich.ec2.enabled {
        #[cfg(feature = "ec2")]
        return Some(Box::new(crate::aws::Ec2Source::new(&cfg.enrich.ec2).await));
    }
    None
}

/// The AWS Price List API and its cache, when `[prices] price_list_api` is on (validation
/// refuses it in a build without the `ec2` feature).
pub async fn price_list(cfg: &Config) -> Option<crate::enrich::refresh::PriceList> {
    if !cfg.prices.price_list_api {
        return None;
    }
    #[cfg(feature = "ec2")]
    return Some(crate::enrich::refresh::PriceList {
        source: Arc::new(crate::aws::PriceListApi::new(&cfg.prices, cfg.enrich.ec2.timeout).await),
        cache_file: crate::config::Prices::cache_file(&cfg.data_dir),
        operating_system: cfg.prices.operating_system.clone(),
        ttl: cfg.prices.cache_ttl,
    });
    #[cfg(not(feature = "ec2"))]
    None
}

/// Time a client has to send a request's headers (and to finish a TLS handshake); a shorter
/// `ingest.request_timeout` shortens it too.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

async fn signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// Runs until SIGTERM/SIGINT. `listener` is already bound (so bind errors come before anything
/// else starts).
pub async fn serve(cfg: Config, listener: tokio::net::TcpListener) -> Result<()> {
    let metrics = Arc::new(Metrics::new());
    let store = Store::open(cfg.store_options()).await?;
    let (enricher, dns_rx) = Enricher::with_services(
        &cfg.enrich,
        cfg.services.load().map_err(anyhow::Error::msg)?,
    )
    .map_err(anyhow::Error::msg)?;
    if let Some(d) = &enricher.dns {
        metrics.watch_dns(d.clone());
    }
    // A restarted collector starts with the EC2 data it had, until the first refresh.
    if enricher.cloud_configured()
        && let Ok(Some(snap)) = store.cloud(Utc::now().date_naive()).await
    {
        enricher.set_cloud(snap);
    }
    if let Some(pl) = price_list(&cfg).await {
        enricher.set_price_list(pl, Utc::now());
        // The first EC2 refresh asks for what the cache lacks.
    }
    let auth = auth(&cfg, &metrics)?;
    let token_file = match &auth {
        Auth::File(f) => Some(f.clone()),
        _ => None,
    };
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (ingest_tx, ingest_rx) = mpsc::channel(cfg.ingest.max_concurrent.max(1));
    let (stop_writer, writer_stop) = oneshot::channel();
    let version = StoreVersion::default();
    let writer = tokio::spawn(server::batch_writer(
        store.clone(),
        ingest_rx,
        cfg.ingest.batch_max_pairs,
        cfg.ingest.batch_linger,
        metrics.clone(),
        version.clone(),
        writer_stop,
    ));
    let cloud = cloud_source(&cfg).await;
    let resolver: Arc<dyn ReverseLookup> = Arc::new(SystemResolver);
    let enrich_task = tokio::spawn(enricher.clone().run(
        store.clone(),
        cloud,
        dns_rx,
        resolver,
        metrics.clone(),
        shutdown_rx.clone(),
    ));
    let app = Arc::new(App::new(
        cfg.clone(),
        store.clone(),
        enricher.clone(),
        metrics.clone(),
        auth,
        ingest_tx,
        server::Reads {
            access: read_access(&cfg)?,
            version,
        },
    ));
    let tls = match cfg.tls_paths().map_err(anyhow::Error::msg)? {
        Some(p) => Some(Arc::new(
            crate::tls::TlsFiles::open(p).map_err(|e| anyhow::anyhow!("tls: {e}"))?,
        )),
        None => None,
    };
    let mut watched: Vec<Arc<dyn Watched>> = Vec::new();
    if let Some(t) = token_file {
        watched.push(t);
    }
    if let Some(t) = &tls {
        watched.push(t.clone());
    }
    if let Some(t) = &app.reads.tokens {
        watched.push(t.clone());
    }
    let periodic = tokio::spawn(periodic(app.clone(), watched, shutdown_rx.clone()));

    let addr = listener.local_addr()?;
    tracing::info!(%addr, backend = store.backend(), output_dir = %app.output_dir.display(), "serving");
    // The one line a person starting it looks for (and tests parse).
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!(
        "trafficmap-collector listening on {scheme}://{addr}/ (viewer and API; reports: POST /api/v1/reports)"
    );

    let server = tokio::spawn(server::serve(
        listener,
        server::router(app.clone()),
        server::Listen {
            header_timeout: HEADER_READ_TIMEOUT.min(cfg.ingest.request_timeout),
            idle_timeout: cfg.idle_timeout,
            max_connections: cfg.ingest.max_connections,
            max_per_address: cfg.max_connections_per_address,
            tls,
            metrics: metrics.clone(),
        },
        shutdown_rx.clone(),
        cfg.ingest.request_timeout + Duration::from_secs(5),
    ));
    let which = signal().await;
    tracing::info!(
        signal = which,
        "stopping: no new connections, finishing requests in flight"
    );
    let _ = shutdown_tx.send(true);
    let _ = server.await;
    // Every request has been answered; write what is still queued, then stop the writer.
    let _ = stop_writer.send(());
    let _ = writer.await;
    let _ = periodic.await;
    let _ = enrich_task.await;
    final_rollup(&store, &cfg).await;
    drop(app);
    tracing::info!("stopped");
    Ok(())
}

/// Rolls up what the last minutes added, so the store is complete at rest.
async fn final_rollup(store: &Store, cfg: &Config) {
    match store.maintain(Utc::now(), cfg.retention.retention()).await {
        Ok(m) => tracing::info!(rolled_up = m.rolled_up, "final roll-up done"),
        Err(e) => {
            tracing::error!(error = %e, "final roll-up failed (it runs again at the next start)")
        }
    }
}

/// Who may send reports: the token file's holders, anyone, or nobody.
fn auth(cfg: &Config, metrics: &Metrics) -> Result<Auth> {
    Ok(match &cfg.token_file {
        Some(p) => {
            let f = Arc::new(TokenFile::open(p.clone()).map_err(anyhow::Error::msg)?);
            metrics.tokens_loaded.set(f.current().len() as i64);
            Auth::File(f)
        }
        None if cfg.allow_unauthenticated => Auth::Open,
        None => {
            tracing::warn!("no token file: reports are refused (401); only maps are served");
            Auth::Closed
        }
    })
}

/// A file re-read when it changes (polled every 2 s) and on SIGHUP: the token file, the TLS
/// certificate and key. A reload that fails keeps what was loaded before.
pub trait Watched: Send + Sync {
    /// The `source` label of the refresh metrics, and the log's name for it.
    fn source(&self) -> &'static str;
    fn reload(&self, force: bool) -> Reload;
}

impl<T: FileContent> Watched for WatchedFile<T> {
    fn source(&self) -> &'static str {
        T::SOURCE
    }

    fn reload(&self, force: bool) -> Reload {
        WatchedFile::reload(self, force)
    }
}

/// Re-reads each watched file that changed (every one, with `force`).
fn reload_all(app: &App, watched: &[Arc<dyn Watched>], force: bool) {
    for w in watched {
        let source = w.source();
        match w.reload(force) {
            Reload::Unchanged => {}
            Reload::Loaded(n) => {
                tracing::info!(source, entries = n, "file reloaded");
                if source == "tokens" {
                    app.metrics.tokens_loaded.set(n as i64);
                }
                app.metrics.refreshed(source, true, Utc::now());
            }
            Reload::Failed(e) => {
                if source == "tokens" {
                    tracing::error!(error = %e, "token file unusable; the previous tokens stay in force");
                } else {
                    tracing::error!(source, error = %e, "file unusable; the previous one stays in force");
                }
                app.metrics.refreshed(source, false, Utc::now());
            }
        }
    }
}

/// Who may read (issue 8): the read token file's holders and the trusted proxies' users, or
/// anyone when neither is configured (loopback, or `allow_anonymous_reads`).
fn read_access(cfg: &Config) -> Result<ReadAccess> {
    let tokens = match &cfg.read_token_file {
        Some(p) => Some(Arc::new(
            ReadTokenFile::open(p.clone()).map_err(|e| anyhow::anyhow!("read_token_file: {e}"))?,
        )),
        None => None,
    };
    let access = ReadAccess::new(cfg, tokens);
    if !access.protected() {
        tracing::warn!(listen = %cfg.listen, "reads (maps, exports, /metrics) need no credential");
    }
    Ok(access)
}

/// Runs one tick's work in a task of its own, so that a panic in it is caught: logged loudly,
/// counted in `periodic_panics_total{task}`, and the work runs again at its next tick instead
/// of silently stopping with the loop.
async fn guarded(
    metrics: &Metrics,
    task: &'static str,
    work: impl std::future::Future<Output = ()> + Send + 'static,
) {
    if let Err(e) = tokio::spawn(work).await
        && e.is_panic()
    {
        let p = e.into_panic();
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        metrics.periodic_panic(task);
        tracing::error!(task, panic = %msg, "periodic work panicked; it runs again at its next tick");
    }
}

/// Roll-ups and retention, daily files, reloads of watched files (poll and SIGHUP).
async fn periodic(
    app: Arc<App>,
    watched: Vec<Arc<dyn Watched>>,
    mut shutdown: watch::Receiver<bool>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let cfg = &app.cfg;
    let mut maintain = tokio::time::interval(cfg.retention.interval);
    maintain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut daily = tokio::time::interval(cfg.daily.interval);
    daily.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut poll = tokio::time::interval(Duration::from_secs(2));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    let watched: Arc<[Arc<dyn Watched>]> = watched.into();
    let reload = |force: bool| {
        let (app, watched) = (app.clone(), watched.clone());
        async move { reload_all(&app, &watched, force) }
    };
    // The archive runs beside this loop, on its own interval (crate::archive).
    let _archive = crate::archive::spawn(app.clone(), shutdown.clone());
    // So do the daily report mails (crate::dailyreport); awaited at shutdown so that a mail
    // being sent is finished (bounded by reports.smtp.timeout), not cut.
    let reports = crate::dailyreport::spawn(app.clone(), shutdown.clone());
    loop {
        tokio::select! {
            _ = maintain.tick() => guarded(&app.metrics, "maintain", maintain_once(app.clone())).await,
            _ = daily.tick(), if cfg.daily.enabled => {
                let a = app.clone();
                guarded(&app.metrics, "daily", async move { write_daily(&a).await }).await;
            }
            _ = poll.tick() => guarded(&app.metrics, "reload", reload(false)).await,
            _ = hup.recv() => guarded(&app.metrics, "reload", reload(true)).await,
            _ = shutdown.changed() => break,
        }
    }
    if let Some(r) = reports {
        let _ = r.await;
    }
}

/// Roll-ups and retention, once.
async fn maintain_once(app: Arc<App>) {
    match app
        .store
        .maintain(Utc::now(), app.cfg.retention.retention())
        .await
    {
        Ok(m) => {
            // Roll-ups and retention change what a map of the store shows.
            app.version.bump();
            app.metrics.rolled_up.inc_by(m.rolled_up);
            app.metrics.retention_deleted.inc_by(m.deleted_rows);
        }
        Err(e) => {
            app.metrics.store_error("maintain");
            tracing::error!(error = %e, "roll-up/retention failed; retrying at the next interval");
        }
    }
}

/// Writes the files of finished days that have none yet, or whose data changed since.
async fn write_daily(app: &App) {
    let cfg = &app.cfg;
    let now = Utc::now();
    let today = now.date_naive();
    for back in 1..=i64::from(cfg.daily.lookback_days.max(1)) {
        let day = today - chrono::Duration::days(back);
        let (_, end) = mapservice::day_range(day);
        if now < end + chrono::Duration::from_std(cfg.daily.delay).unwrap_or_default() {
            continue;
        }
        let changed = match app.store.day_changed_at(day).await {
            Ok(Some(t)) => t,
            Ok(None) => continue,
            Err(e) => {
                app.metrics.store_error("read");
                tracing::error!(error = %e, %day, "daily files: store unavailable");
                return;
            }
        };
        let oldest_file = trafficmap_model::map::View::ALL
            .iter()
            .map(|v| {
                std::fs::metadata(app.output_dir.join(v.file_name(day)))
                    .and_then(|m| m.modified())
                    .ok()
            })
            .min()
            .flatten();
        if oldest_file.is_some_and(|t| chrono::DateTime::<Utc>::from(t) > changed) {
            continue;
        }
        match mapservice::write_day(
            &app.store,
            &app.enricher,
            &cfg.cost,
            &app.output_dir,
            day,
            now,
            Some(cfg.enrich.dns.timeout * 3),
        )
        .await
        {
            Ok(paths) => {
                app.metrics.daily_files_written.inc_by(paths.len() as u64);
                tracing::info!(%day, files = paths.len(), dir = %app.output_dir.display(), "daily maps written");
            }
            Err(e) => {
                app.metrics.store_error("daily");
                tracing::error!(error = %e, %day, "writing the daily maps failed; retrying at the next interval");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A panicking tick is caught, counted and logged; the next tick runs.
    #[tokio::test]
    async fn a_panic_in_periodic_work_is_counted_and_the_work_goes_on() {
        let m = Metrics::new();
        guarded(&m, "daily", async { panic!("boom") }).await;
        guarded(&m, "daily", async {
            panic!("{}", String::from("boom again"))
        })
        .await;
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let r = ran.clone();
        guarded(&m, "daily", async move {
            r.store(true, std::sync::atomic::Ordering::SeqCst)
        })
        .await;
        assert!(ran.load(std::sync::atomic::Ordering::SeqCst));
        let text = m.encode();
        assert!(
            text.lines()
                .any(|l| l == "trafficmap_collector_periodic_panics_total{task=\"daily\"} 2"),
            "{text}"
        );
    }
}
