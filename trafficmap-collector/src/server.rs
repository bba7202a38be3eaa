//! The HTTP server: report ingestion, the map API, metrics, health and the embedded viewer.
//!
//! Ingestion is built so that a report is either stored whole or not at all, and its sender
//! always learns which: the token is checked before the body is read, the body is read within a
//! size and a time limit, parsed and validated completely, then handed to the batch writer, and
//! the answer waits for the store's commit. Store failures answer 503 (the agent keeps the report
//! and retries); a retry of a stored report answers 200 `duplicate` and adds nothing.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{Query, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use chrono::{DateTime, NaiveDate, Utc};
use http_body_util::BodyExt as _;
use hyper::body::Bytes;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use trafficmap_model::{
    map::{Map, View},
    report::{Report, ReportError},
};

use crate::{
    auth::{Auth, Denied},
    config::Config,
    enrich::refresh::Enricher,
    export::{self, Format},
    ingest::Ingest,
    mapservice::{MapError, MapSource, Served, Span},
    metrics::{MapBuild, Metrics},
    store::{Outcome, Store},
};

/// A report waiting for the batch writer.
pub struct Pending {
    pub ing: Arc<Ingest>,
    pub reply: oneshot::Sender<Result<Outcome, String>>,
}

pub struct App {
    pub cfg: Config,
    pub store: Store,
    pub enricher: Arc<Enricher>,
    pub metrics: Arc<Metrics>,
    pub auth: Auth,
    pub output_dir: PathBuf,
    pub ingest_tx: mpsc::Sender<Pending>,
    permits: Arc<Semaphore>,
    /// Addresses agents reported as their own (not worth a reverse lookup).
    agent_addrs: Mutex<HashSet<IpAddr>>,
}

impl App {
    pub fn new(
        cfg: Config,
        store: Store,
        enricher: Arc<Enricher>,
        metrics: Arc<Metrics>,
        auth: Auth,
        ingest_tx: mpsc::Sender<Pending>,
    ) -> App {
        let permits = Arc::new(Semaphore::new(cfg.ingest.max_concurrent));
        App {
            output_dir: cfg.output_dir(),
            cfg,
            store,
            enricher,
            metrics,
            auth,
            ingest_tx,
            permits,
            agent_addrs: Mutex::default(),
        }
    }
}

fn json_error(status: StatusCode, msg: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": msg.into() });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn json_ok(value: serde_json::Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        value.to_string(),
    )
        .into_response()
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/api/v1/reports", post(post_report))
        .route("/api/v1/days", get(get_days))
        .route("/api/v1/maps", get(get_map))
        .route("/api/v1/maps/export", get(get_export))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(crate::viewer::serve)
        .with_state(app)
}

/// The batch writer: takes every report waiting (up to `batch_max_pairs`, lingering
/// `batch_linger` for more), writes them in one store call, answers each. Runs until `stop`
/// fires, then writes what is still queued.
pub async fn batch_writer(
    store: Store,
    mut rx: mpsc::Receiver<Pending>,
    max_pairs: usize,
    linger: Duration,
    metrics: Arc<Metrics>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut stopping = false;
    loop {
        let first = if stopping {
            match rx.try_recv() {
                Ok(p) => p,
                Err(_) => return,
            }
        } else {
            tokio::select! {
                p = rx.recv() => match p { Some(p) => p, None => return },
                _ = &mut stop => { stopping = true; continue; }
            }
        };
        let mut pairs = first.ing.rows.len();
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + linger;
        while pairs < max_pairs {
            let next = if linger.is_zero() || stopping {
                rx.try_recv().ok()
            } else {
                tokio::select! {
                    p = rx.recv() => p,
                    _ = tokio::time::sleep_until(deadline) => None,
                }
            };
            let Some(p) = next else { break };
            pairs += p.ing.rows.len();
            batch.push(p);
        }
        let ings: Vec<Arc<Ingest>> = batch.iter().map(|p| p.ing.clone()).collect();
        match store.ingest(ings, Utc::now()).await {
            Ok(outcomes) => {
                for (p, o) in batch.into_iter().zip(outcomes) {
                    match o {
                        Outcome::Stored => {
                            metrics.reports_accepted.inc();
                            metrics.pairs_ingested.inc_by(p.ing.rows.len() as u64);
                        }
                        Outcome::Duplicate => {
                            metrics.reports_duplicate.inc();
                        }
                    }
                    let _ = p.reply.send(Ok(o));
                }
            }
            Err(e) => {
                metrics.store_error("ingest");
                tracing::error!(error = %e, reports = batch.len(), "storing a batch failed; the agents will retry");
                let msg = e.to_string();
                for p in batch {
                    let _ = p.reply.send(Err(msg.clone()));
                }
            }
        }
    }
}

fn unauthorized(d: Denied) -> Response {
    let msg = match d {
        Denied::NoTokens => {
            "this collector has no token file and accepts no reports (start it with --token-file)"
        }
        Denied::Missing => "missing `Authorization: Bearer <token>` header",
        Denied::Malformed => "the Authorization header must be `Bearer <token>`",
        Denied::Unknown => "unknown token",
    };
    let mut r = json_error(StatusCode::UNAUTHORIZED, msg);
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"trafficmap\""),
    );
    r
}

fn gunzip(body: &[u8], max: u64) -> Result<Vec<u8>, Box<Response>> {
    use std::io::Read as _;
    let mut out = Vec::new();
    let mut dec = flate2::read::GzDecoder::new(body).take(max + 1);
    dec.read_to_end(&mut out).map_err(|e| {
        json_error(
            StatusCode::BAD_REQUEST,
            format!("body is not valid gzip: {e}"),
        )
    })?;
    if out.len() as u64 > max {
        return Err(Box::new(json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("decompressed body over the limit of {max} bytes"),
        )));
    }
    Ok(out)
}

async fn post_report(State(app): State<Arc<App>>, req: Request) -> Response {
    let start = Instant::now();
    let (parts, body) = req.into_parts();
    let m = &app.metrics;
    let agent = match app.auth.check(
        parts
            .headers
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes()),
    ) {
        Ok(label) => label,
        Err(d) => {
            m.reject("unauthorized");
            return unauthorized(d);
        }
    };
    let max = app.cfg.ingest.max_body_bytes;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        m.reject("too_large");
        return json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "body of {} bytes over the limit of {max} bytes",
                declared.unwrap_or_default()
            ),
        );
    }
    let deadline = start + app.cfg.ingest.request_timeout;
    m.ingest_waiting.inc();
    let permit =
        tokio::time::timeout_at(deadline.into(), app.permits.clone().acquire_owned()).await;
    m.ingest_waiting.dec();
    let Ok(Ok(_permit)) = permit else {
        m.reject("store_unavailable");
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "collector busy: too many reports in flight; retry later",
        );
    };
    let limited = http_body_util::Limited::new(body, max as usize);
    let bytes: Bytes = match tokio::time::timeout_at(deadline.into(), limited.collect()).await {
        Err(_) => {
            m.reject("timeout");
            let mut r = json_error(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {}",
                    humantime::format_duration(app.cfg.ingest.request_timeout)
                ),
            );
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return r;
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            m.reject("too_large");
            return json_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body over the limit of {max} bytes"),
            );
        }
        Ok(Err(e)) => {
            m.reject("malformed");
            return json_error(StatusCode::BAD_REQUEST, format!("reading the body: {e}"));
        }
        Ok(Ok(c)) => c.to_bytes(),
    };
    let decoded;
    let json: &[u8] = match parts
        .headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.as_bytes())
    {
        None | Some(b"identity") => &bytes,
        Some(b"gzip") => match gunzip(&bytes, max) {
            Ok(v) => {
                decoded = v;
                &decoded
            }
            Err(r) => {
                m.reject(if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    "too_large"
                } else {
                    "malformed"
                });
                return *r;
            }
        },
        Some(other) => {
            m.reject("malformed");
            return json_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "Content-Encoding `{}`: send gzip or nothing",
                    String::from_utf8_lossy(other)
                ),
            );
        }
    };
    let report = match Report::from_json(json) {
        Ok(r) => r,
        Err(e) => {
            m.reject(match e {
                ReportError::Json { .. } => "malformed",
                ReportError::UnsupportedSchema(_) => "schema",
                ReportError::Invalid(_) => "invalid",
            });
            return json_error(StatusCode::BAD_REQUEST, e.to_string());
        }
    };
    let now = Utc::now();
    let oldest = now - chrono::Duration::from_std(app.cfg.retention.minutes).unwrap_or_default();
    if report.window.start < oldest {
        m.reject("too_old");
        return json_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "report window starts at {}, before the minute retention ({} ago): it can no longer be stored exactly",
                report.window.start,
                humantime::format_duration(app.cfg.retention.minutes)
            ),
        );
    }
    let skew = chrono::Duration::from_std(app.cfg.ingest.max_clock_skew).unwrap_or_default();
    if report.window.start > now + skew {
        m.reject("clock_skew");
        return json_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "report window starts at {}, more than {} ahead of the collector's clock ({now}): check the agent's clock",
                report.window.start,
                humantime::format_duration(app.cfg.ingest.max_clock_skew)
            ),
        );
    }
    let ing = Arc::new(Ingest::from_report(&report));
    drop(report);
    hint_dns(&app, &ing);
    let (reply, answer) = oneshot::channel();
    let pairs = ing.rows.len();
    let id = ing.report_id.clone();
    if app.ingest_tx.send(Pending { ing, reply }).await.is_err() {
        m.reject("store_unavailable");
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "collector shutting down; retry later",
        );
    }
    let result = answer.await;
    m.ingest_seconds.observe(start.elapsed().as_secs_f64());
    match result {
        Ok(Ok(Outcome::Stored)) => {
            tracing::debug!(report_id = %id, pairs, agent = %agent, "report stored");
            json_ok(serde_json::json!({ "status": "stored", "report_id": id, "pairs": pairs }))
        }
        Ok(Ok(Outcome::Duplicate)) => {
            json_ok(serde_json::json!({ "status": "duplicate", "report_id": id, "pairs": 0 }))
        }
        Ok(Err(e)) => {
            m.reject("store_unavailable");
            let mut r = json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("store unavailable: {e}"),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
            r
        }
        Err(_) => {
            m.reject("store_unavailable");
            json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "collector shutting down; retry later",
            )
        }
    }
}

/// Queues reverse lookups for peers no agent claims and no file or EC2 names (never waits).
fn hint_dns(app: &App, ing: &Ingest) {
    if app.enricher.dns.is_none() {
        return;
    }
    let unknown: BTreeSet<IpAddr> = {
        let mut known = app.agent_addrs.lock().expect("agent addresses");
        if known.len() > 1_000_000 {
            known.clear();
        }
        known.extend(ing.addresses.iter().copied());
        let sources = app.enricher.sources();
        ing.rows
            .iter()
            .map(|r| r.peer_ip)
            .filter(|ip| {
                !ip.is_loopback()
                    && !ip.is_unspecified()
                    && !known.contains(ip)
                    && sources.cloud.by_ip(*ip).is_none()
                    && sources.inventory.lookup(*ip).is_none()
                    && sources.foreign.lookup(*ip).is_none()
            })
            .collect()
    };
    app.enricher.request_dns(unknown);
}

fn parse_want(q: &HashMap<String, String>) -> Result<(View, Span), String> {
    let view: View = q
        .get("view")
        .ok_or("view: required (instances, clusters or security-groups)")?
        .parse()
        .map_err(|e| format!("view: {e}"))?;
    let want = match (q.get("day"), q.get("from"), q.get("to")) {
        (Some(d), None, None) => Span::Day(
            NaiveDate::parse_from_str(d, "%Y-%m-%d")
                .map_err(|_| format!("day `{d}`: expected YYYY-MM-DD"))?,
        ),
        (None, Some(f), Some(t)) => {
            let p = |name: &str, s: &str| {
                DateTime::parse_from_rfc3339(s)
                    .map(|d| d.with_timezone(&Utc))
                    .map_err(|e| format!("{name} `{s}`: expected an RFC 3339 time ({e})"))
            };
            let (f, t) = (p("from", f)?, p("to", t)?);
            if f >= t {
                return Err(format!("from {f} is not before to {t}"));
            }
            if t - f > chrono::Duration::days(400) {
                return Err("from/to: at most 400 days at once".into());
            }
            Span::Range(f, t)
        }
        _ => return Err("give either day=YYYY-MM-DD or both from= and to= (RFC 3339)".into()),
    };
    Ok((view, want))
}

impl App {
    fn map_source(&self) -> MapSource<'_> {
        MapSource {
            store: &self.store,
            enricher: &self.enricher,
            rates: &self.cfg.cost,
            dir: &self.output_dir,
        }
    }
}

/// The map for a request (see [`crate::mapservice`] for where it comes from), counted in the metrics; errors
/// as the response to send.
pub async fn find_map(app: &App, view: View, span: Span) -> Result<Served, Response> {
    let t = Instant::now();
    let served = app
        .map_source()
        .map(view, span, Utc::now())
        .await
        .map_err(|e| {
            let status = match &e {
                MapError::NoData(_) => StatusCode::NOT_FOUND,
                MapError::Store(_) => {
                    app.metrics.store_error("read");
                    StatusCode::SERVICE_UNAVAILABLE
                }
                MapError::File { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            };
            json_error(status, e.to_string())
        })?;
    let from = match &served {
        Served::File(_) => "file",
        Served::Built(_) => {
            app.metrics
                .map_build_seconds
                .observe(t.elapsed().as_secs_f64());
            "store"
        }
    };
    app.metrics
        .maps_built
        .get_or_create(&MapBuild {
            view: view.as_str(),
            from,
        })
        .inc();
    Ok(served)
}

async fn get_map(
    State(app): State<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (view, want) = match parse_want(&q) {
        Ok(v) => v,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, e),
    };
    match find_map(&app, view, want).await {
        Ok(Served::File(bytes)) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            bytes,
        )
            .into_response(),
        Ok(Served::Built(map)) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_vec(&*map).expect("a map serialises"),
        )
            .into_response(),
        Err(r) => r,
    }
}

async fn get_export(
    State(app): State<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (view, want) = match parse_want(&q) {
        Ok(v) => v,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, e),
    };
    let format = match q.get("format").map(|f| Format::parse(f)) {
        Some(Ok(f)) => f,
        Some(Err(e)) => return json_error(StatusCode::BAD_REQUEST, format!("format: {e}")),
        None => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "format: required (csv, drawio, dot or json)",
            );
        }
    };
    let map = match find_map(&app, view, want).await {
        Ok(Served::File(bytes)) => match Map::from_json(&bytes) {
            Ok(m) => m,
            Err(e) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        Ok(Served::Built(m)) => *m,
        Err(r) => return r,
    };
    let name = match want {
        Span::Day(d) => format!(
            "{}-{}.{}",
            view.as_str(),
            d.format("%Y%m%d"),
            format.extension()
        ),
        Span::Range(f, t) => format!(
            "{}-{}-{}.{}",
            view.as_str(),
            f.format("%Y%m%dT%H%M"),
            t.format("%Y%m%dT%H%M"),
            format.extension()
        ),
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    (StatusCode::OK, headers, export::export(&map, format)).into_response()
}

async fn get_days(State(app): State<Arc<App>>) -> Response {
    let days = match app.map_source().days().await {
        Ok(d) => d,
        Err(e) => {
            app.metrics.store_error("read");
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("store unavailable: {e}"),
            );
        }
    };
    let list: Vec<String> = days
        .iter()
        .rev()
        .map(|d| d.format("%Y-%m-%d").to_string())
        .collect();
    json_ok(serde_json::json!({ "days": list }))
}

async fn healthz(State(app): State<Arc<App>>) -> Response {
    match app.store.ping().await {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(e) => {
            app.metrics.store_error("ping");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("store unavailable: {e}\n"),
            )
                .into_response()
        }
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.encode(),
    )
        .into_response()
}

/// Accepts connections until `shutdown` fires, then lets open requests finish (for at most
/// `grace`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    header_timeout: Duration,
    max_connections: usize,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    use hyper_util::{
        rt::{TokioIo, TokioTimer},
        server::graceful::GracefulShutdown,
        service::TowerToHyperService,
    };
    let graceful = GracefulShutdown::new();
    let limit = Arc::new(Semaphore::new(max_connections));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a little rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    tracing::warn!(max_connections, "connection limit reached; closing a new connection");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let svc = TowerToHyperService::new(router.clone());
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), svc);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                    drop(permit);
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "connections still open after the grace period; closing them"
        );
    }
}
