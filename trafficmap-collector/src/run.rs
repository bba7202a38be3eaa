//! The service: opens the store, starts enrichment, the batch writer, the HTTP server and the
//! periodic work (roll-ups and retention, daily files, token reloads), and stops them in order on
//! SIGTERM or SIGINT: stop accepting, finish requests in flight, write what is queued, roll up,
//! exit 0.

use std::{sync::Arc, time::Duration};

use anyhow::Result;
use chrono::Utc;
use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    auth::{Auth, Reload, TokenFile},
    config::Config,
    enrich::{
        dns::{ReverseLookup, SystemResolver},
        refresh::{CloudSource, Enricher, SnapshotFile},
    },
    mapservice,
    metrics::Metrics,
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
    let (enricher, dns_rx) = Enricher::new(&cfg.enrich).map_err(anyhow::Error::msg)?;
    if let Some(d) = &enricher.dns {
        metrics.watch_dns(d.clone());
    }
    // A restarted collector starts with the EC2 data it had, until the first refresh.
    if enricher.cloud_configured()
        && let Ok(Some(snap)) = store.cloud(Utc::now().date_naive()).await
    {
        enricher.set_cloud(snap);
    }
    let auth = auth(&cfg, &metrics)?;
    let token_file = match &auth {
        Auth::File(f) => Some(f.clone()),
        _ => None,
    };
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (ingest_tx, ingest_rx) = mpsc::channel(cfg.ingest.max_concurrent.max(1));
    let (stop_writer, writer_stop) = oneshot::channel();
    let writer = tokio::spawn(server::batch_writer(
        store.clone(),
        ingest_rx,
        cfg.ingest.batch_max_pairs,
        cfg.ingest.batch_linger,
        metrics.clone(),
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
    ));
    let periodic = tokio::spawn(periodic(app.clone(), token_file, shutdown_rx.clone()));

    let addr = listener.local_addr()?;
    tracing::info!(%addr, backend = store.backend(), output_dir = %app.output_dir.display(), "serving");
    // The one line a person starting it looks for (and tests parse).
    println!(
        "trafficmap-collector listening on http://{addr}/ (viewer and API; reports: POST /api/v1/reports)"
    );

    let server = tokio::spawn(server::serve(
        listener,
        server::router(app.clone()),
        cfg.ingest.request_timeout,
        cfg.ingest.max_connections,
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
            let f = Arc::new(TokenFile::open(p).map_err(anyhow::Error::msg)?);
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

/// Roll-ups and retention, daily files, token reloads (poll and SIGHUP).
async fn periodic(
    app: Arc<App>,
    tokens: Option<Arc<TokenFile>>,
    mut shutdown: watch::Receiver<bool>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let cfg = &app.cfg;
    let mut maintain = tokio::time::interval(cfg.retention.interval);
    maintain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut daily = tokio::time::interval(cfg.daily.interval);
    daily.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut token_poll = tokio::time::interval(Duration::from_secs(2));
    token_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    let reload = |force: bool| {
        if let Some(t) = &tokens {
            match t.reload(force) {
                Reload::Unchanged => {}
                Reload::Loaded(n) => {
                    tracing::info!(tokens = n, "token file reloaded");
                    app.metrics.tokens_loaded.set(n as i64);
                    app.metrics.refreshed("tokens", true, Utc::now());
                }
                Reload::Failed(e) => {
                    tracing::error!(error = %e, "token file unusable; the previous tokens stay in force");
                    app.metrics.refreshed("tokens", false, Utc::now());
                }
            }
        }
    };
    // The archive runs beside this loop, on its own interval (crate::archive).
    let _archive = crate::archive::spawn(app.clone(), shutdown.clone());
    loop {
        tokio::select! {
            _ = maintain.tick() => {
                match app.store.maintain(Utc::now(), cfg.retention.retention()).await {
                    Ok(m) => {
                        app.metrics.rolled_up.inc_by(m.rolled_up);
                        app.metrics.retention_deleted.inc_by(m.deleted_rows);
                    }
                    Err(e) => {
                        app.metrics.store_error("maintain");
                        tracing::error!(error = %e, "roll-up/retention failed; retrying at the next interval");
                    }
                }
            }
            _ = daily.tick(), if cfg.daily.enabled => write_daily(&app).await,
            _ = token_poll.tick() => reload(false),
            _ = hup.recv() => reload(true),
            _ = shutdown.changed() => return,
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
