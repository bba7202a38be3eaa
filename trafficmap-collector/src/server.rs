//! The HTTP server: report ingestion, the map API, metrics, health and the embedded viewer.
//!
//! Ingestion is built so that a report is either stored whole or not at all, and its sender
//! always learns which: the token is checked before the body is read, the body is read within a
//! size and a time limit, parsed and validated completely, then handed to the batch writer, and
//! the answer waits for the store's commit. Store failures answer 503 (the agent keeps the report
//! and retries); a retry of a stored report answers 200 `duplicate` and adds nothing.

use std::{
    borrow::Cow,
    collections::{BTreeSet, HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{ConnectInfo, Query, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::{self, Next},
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
    auth::{Auth, Denied, Grant, IdentityError},
    config::Config,
    enrich::refresh::Enricher,
    export::{self, Format},
    ingest::Ingest,
    mapbuilds::{BuildError, Key, MapBuilds, StoreVersion},
    mapservice::{MapError, MapSource, Served, Span},
    metrics::{MapBuild, Metrics},
    read_auth::{ReadAccess, Reader},
    store::{Outcome, Store},
};

/// A report waiting for the batch writer.
pub struct Pending {
    pub ing: Arc<Ingest>,
    pub reply: oneshot::Sender<Result<Outcome, String>>,
}

/// The read side's parts made at start (issue 8).
pub struct Reads {
    pub access: ReadAccess,
    /// Shared with the batch writer, which bumps it.
    pub version: StoreVersion,
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
    // Reads (issue 8): who may read, the store's version and the map build slots and cache.
    pub reads: ReadAccess,
    pub version: StoreVersion,
    maps: MapBuilds<Served>,
}

impl App {
    pub fn new(
        cfg: Config,
        store: Store,
        enricher: Arc<Enricher>,
        metrics: Arc<Metrics>,
        auth: Auth,
        ingest_tx: mpsc::Sender<Pending>,
        reads: Reads,
    ) -> App {
        let permits = Arc::new(Semaphore::new(cfg.ingest.max_concurrent));
        App {
            maps: MapBuilds::new(
                cfg.map_builds,
                crate::mapbuilds::SLOT_WAIT,
                crate::mapbuilds::CACHE_ENTRIES,
            ),
            reads: reads.access,
            version: reads.version,
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
    // Reads of data need a reader (read token or trusted proxy); the viewer's files and
    // /healthz carry none and stay open.
    let reads = Router::new()
        .route("/api/v1/days", get(get_days))
        .route("/api/v1/maps", get(get_map))
        .route("/api/v1/maps/export", get(get_export).post(post_export))
        .route("/api/v1/viewer-config", get(get_viewer_config))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(app.clone(), require_reader));
    Router::new()
        .route("/api/v1/reports", post(post_report))
        .merge(reads)
        .route("/healthz", get(healthz))
        .fallback(crate::viewer::serve)
        .layer(middleware::from_fn_with_state(app.clone(), check_host))
        .layer(middleware::from_fn(security_headers))
        .with_state(app)
}

/// The policy sent with every response: no inline script or style, nothing from elsewhere,
/// never framed.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; worker-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// CSP, frame and sniffing protection on every response, the viewer's and the API's.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// The Host check against DNS rebinding (403 `host: ...`). Reports are exempt: agents
/// authenticate with their token and may address the collector by any name.
async fn check_host(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    if req.uri().path() != "/api/v1/reports"
        && let Err(e) = app.reads.check_host(req.headers())
    {
        return json_error(StatusCode::FORBIDDEN, e.to_string());
    }
    next.run(req).await
}

/// A read needs a reader: 401 (with `WWW-Authenticate`) otherwise.
async fn require_reader(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    match app.reads.check(peer, req.headers()) {
        Ok(reader) => {
            if let Reader::Proxy(user) | Reader::Token(user) = &reader {
                tracing::debug!(%user, path = req.uri().path(), "read");
            }
            next.run(req).await
        }
        Err(e) => {
            let mut r = json_error(StatusCode::UNAUTHORIZED, e.to_string());
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"trafficmap reads\""),
            );
            r
        }
    }
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
    version: StoreVersion,
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
        let batch = fill_batch(&mut rx, first, max_pairs, linger, stopping).await;
        write_batch(&store, batch, &metrics, &version).await;
    }
}

/// `first` and the reports queued behind it, up to `max_pairs` pairs; waits up to `linger`
/// for more unless stopping (then only what is already queued).
async fn fill_batch(
    rx: &mut mpsc::Receiver<Pending>,
    first: Pending,
    max_pairs: usize,
    linger: Duration,
    stopping: bool,
) -> Vec<Pending> {
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
    batch
}

/// Stores a batch in one call and answers each of its reports.
async fn write_batch(
    store: &Store,
    batch: Vec<Pending>,
    metrics: &Metrics,
    version: &StoreVersion,
) {
    let ings: Vec<Arc<Ingest>> = batch.iter().map(|p| p.ing.clone()).collect();
    match store.ingest(ings, Utc::now()).await {
        Ok(outcomes) => {
            // Committed: cached maps of the old version are stale. Bumped before anyone is
            // answered, so an agent's next read sees its own report.
            version.bump();
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

/// Why a report was refused. Each variant renders its own answer (status, `{"error": ...}`
/// body, headers) and names its `reason` label in `reports_rejected_total`, so a refusal is one
/// `?` in `post_report`.
#[derive(Debug, thiserror::Error)]
enum IngestError {
    #[error("{}", denied_message(.0))]
    Unauthorized(Denied),
    /// Refused by the declared `Content-Length`, before reading anything.
    #[error("body of {declared} bytes over the limit of {max} bytes")]
    DeclaredTooLarge { declared: u64, max: u64 },
    #[error("collector busy: too many reports in flight; retry later")]
    Busy,
    #[error("the request body did not arrive within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// A body without `Content-Length` (chunked) that grew over the limit.
    #[error("body over the limit of {max} bytes")]
    BodyTooLarge { max: u64 },
    #[error("reading the body: {0}")]
    Body(Box<dyn std::error::Error + Send + Sync>),
    #[error("body is not valid gzip: {0}")]
    NotGzip(std::io::Error),
    /// A gzip body that inflates over the limit (a gzip bomb).
    #[error("decompressed body over the limit of {max} bytes")]
    InflatedTooLarge { max: u64 },
    #[error("Content-Encoding `{0}`: send gzip or nothing")]
    Encoding(String),
    #[error(transparent)]
    Report(#[from] ReportError),
    /// The report claims an identity its token does not cover.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(
        "report window starts at {start}, before the minute retention ({} ago): it can no longer be stored exactly",
        humantime::format_duration(*.retention)
    )]
    TooOld {
        start: DateTime<Utc>,
        retention: Duration,
    },
    #[error(
        "report window starts at {start}, more than {} ahead of the collector's clock ({now}): check the agent's clock",
        humantime::format_duration(*.skew)
    )]
    ClockSkew {
        start: DateTime<Utc>,
        skew: Duration,
        now: DateTime<Utc>,
    },
    #[error("collector shutting down; retry later")]
    ShuttingDown,
    /// The batch writer's store call failed: the agent keeps the report and retries. The
    /// store's error is logged by the writer, never sent (it may carry paths and driver details).
    #[error("store unavailable")]
    Store(String),
}

fn denied_message(d: &Denied) -> &'static str {
    match d {
        Denied::NoTokens => {
            "this collector has no token file and accepts no reports (start it with --token-file)"
        }
        Denied::Missing => "missing `Authorization: Bearer <token>` header",
        Denied::Malformed => "the Authorization header must be `Bearer <token>`",
        Denied::Unknown => "unknown token",
    }
}

impl IngestError {
    fn status(&self) -> StatusCode {
        use IngestError::*;
        match self {
            Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Identity(_) => StatusCode::FORBIDDEN,
            DeclaredTooLarge { .. } | BodyTooLarge { .. } | InflatedTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Busy | ShuttingDown | Store(_) => StatusCode::SERVICE_UNAVAILABLE,
            Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            Body(_) | NotGzip(_) | Report(_) => StatusCode::BAD_REQUEST,
            Encoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            TooOld { .. } | ClockSkew { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }

    /// The `reason` label of `trafficmap_collector_reports_rejected_total`.
    fn reason(&self) -> &'static str {
        use IngestError::*;
        match self {
            Unauthorized(_) => "unauthorized",
            Identity(_) => "identity",
            DeclaredTooLarge { .. } | BodyTooLarge { .. } | InflatedTooLarge { .. } => "too_large",
            Busy | ShuttingDown | Store(_) => "store_unavailable",
            Timeout(_) => "timeout",
            Body(_) | NotGzip(_) | Encoding(_) => "malformed",
            Report(ReportError::Json { .. }) => "malformed",
            Report(ReportError::UnsupportedSchema(_)) => "schema",
            Report(ReportError::Invalid(_)) => "invalid",
            TooOld { .. } => "too_old",
            ClockSkew { .. } => "clock_skew",
        }
    }
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let mut r = json_error(self.status(), self.to_string());
        let extra = match self {
            IngestError::Unauthorized(_) => Some((
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"trafficmap\""),
            )),
            // The rest of a slow body is not worth reading: drop the connection.
            IngestError::Timeout(_) => {
                Some((header::CONNECTION, HeaderValue::from_static("close")))
            }
            IngestError::Store(_) => Some((header::RETRY_AFTER, HeaderValue::from_static("10"))),
            _ => None,
        };
        if let Some((name, value)) = extra {
            r.headers_mut().insert(name, value);
        }
        r
    }
}

async fn post_report(State(app): State<Arc<App>>, req: Request) -> Response {
    match ingest(&app, req).await {
        Ok(r) => r,
        Err(e) => {
            app.metrics.reject(e.reason());
            e.into_response()
        }
    }
}

/// The steps of ingestion, in order; the first refusal answers.
async fn ingest(app: &App, req: Request) -> Result<Response, IngestError> {
    let start = Instant::now();
    let limits = &app.cfg.ingest;
    let (parts, body) = req.into_parts();
    let grant = app
        .auth
        .check(
            parts
                .headers
                .get(header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
        )
        .map_err(IngestError::Unauthorized)?;
    check_declared_length(&parts.headers, limits.max_body_bytes)?;
    let deadline = start + limits.request_timeout;
    let _permit = acquire_permit(app, deadline).await?;
    let bytes = read_body(
        body,
        limits.max_body_bytes,
        deadline,
        limits.request_timeout,
    )
    .await?;
    let json = decode(&parts.headers, &bytes, limits.max_body_bytes)?;
    let report = Report::from_json(&json)?;
    check_identity(&grant, &report)?;
    check_client_cert(app, parts.extensions.get::<ClientCert>(), &report)?;
    check_window(&report, &app.cfg, Utc::now())?;
    let ing = Arc::new(Ingest::from_report(&report));
    drop(report);
    hint_dns(app, &ing);
    let pairs = ing.rows.len();
    let id = ing.report_id.clone();
    Ok(match submit(app, ing, start).await? {
        Outcome::Stored => {
            tracing::debug!(report_id = %id, pairs, agent = %grant.label, "report stored");
            json_ok(serde_json::json!({ "status": "stored", "report_id": id, "pairs": pairs }))
        }
        Outcome::Duplicate => {
            json_ok(serde_json::json!({ "status": "duplicate", "report_id": id, "pairs": 0 }))
        }
    })
}

/// Refuses a report claiming a host identity its token does not cover (403), before anything
/// of it is stored or remembered.
fn check_identity(grant: &Grant, report: &Report) -> Result<(), IdentityError> {
    grant.scope.covers(report).inspect_err(|e| {
        tracing::warn!(token = %grant.label, error = %e, "report refused: identity not covered by its token");
    })
}

/// With mutual TLS (`tls_client_ca_file`), a report needs the connection's client certificate
/// (verified against that CA at the handshake), and the certificate must name the report's
/// `host.machine_id` as a DNS name in its subject alternative names.
fn check_client_cert(
    app: &App,
    cert: Option<&ClientCert>,
    report: &Report,
) -> Result<(), IdentityError> {
    if app.cfg.tls_client_ca_file.is_none() {
        return Ok(());
    }
    let id = &report.host.machine_id;
    let Some(cert) = cert else {
        return Err(IdentityError(format!(
            "host.machine_id {id:?}: this collector needs a client certificate naming it (mutual TLS)"
        )));
    };
    if names_machine_id(&cert.0, id) {
        Ok(())
    } else {
        tracing::warn!(machine_id = %id, "report refused: the client certificate does not name its machine id");
        Err(IdentityError(format!(
            "host.machine_id {id:?} is not named by the client certificate"
        )))
    }
}

/// Whether a certificate's subject alternative names hold `id` as a DNS name (ASCII case
/// ignored, otherwise exact: no wildcards, and a machine id need not be a valid host name).
fn names_machine_id(der: &[u8], id: &str) -> bool {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return false;
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    san.value
        .general_names
        .iter()
        .any(|n| matches!(n, GeneralName::DNSName(d) if d.eq_ignore_ascii_case(id)))
}

/// Refuses a body whose declared length is over the limit, before reading any of it.
fn check_declared_length(headers: &HeaderMap, max: u64) -> Result<(), IngestError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(declared) if declared > max => Err(IngestError::DeclaredTooLarge { declared, max }),
        _ => Ok(()),
    }
}

/// One of `max_concurrent` slots for reading and parsing a body (bounds memory), waiting at
/// most until `deadline`.
async fn acquire_permit(
    app: &App,
    deadline: Instant,
) -> Result<tokio::sync::OwnedSemaphorePermit, IngestError> {
    app.metrics.ingest_waiting.inc();
    let permit =
        tokio::time::timeout_at(deadline.into(), app.permits.clone().acquire_owned()).await;
    app.metrics.ingest_waiting.dec();
    match permit {
        Ok(Ok(p)) => Ok(p),
        _ => Err(IngestError::Busy),
    }
}

/// The whole body, within `max` bytes and by `deadline`.
async fn read_body(
    body: axum::body::Body,
    max: u64,
    deadline: Instant,
    timeout: Duration,
) -> Result<Bytes, IngestError> {
    let limited = http_body_util::Limited::new(body, max as usize);
    match tokio::time::timeout_at(deadline.into(), limited.collect()).await {
        Err(_) => Err(IngestError::Timeout(timeout)),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(IngestError::BodyTooLarge { max })
        }
        Ok(Err(e)) => Err(IngestError::Body(e)),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

/// The report's JSON: the body as sent, or inflated when it is gzip.
fn decode<'a>(headers: &HeaderMap, body: &'a [u8], max: u64) -> Result<Cow<'a, [u8]>, IngestError> {
    match headers.get(header::CONTENT_ENCODING).map(|v| v.as_bytes()) {
        None | Some(b"identity") => Ok(Cow::Borrowed(body)),
        Some(b"gzip") => gunzip(body, max).map(Cow::Owned),
        Some(other) => Err(IngestError::Encoding(
            String::from_utf8_lossy(other).into_owned(),
        )),
    }
}

fn gunzip(body: &[u8], max: u64) -> Result<Vec<u8>, IngestError> {
    use std::io::Read as _;
    let mut out = Vec::new();
    // One byte over the limit is enough to know it is over.
    let mut dec = flate2::read::GzDecoder::new(body).take(max + 1);
    dec.read_to_end(&mut out).map_err(IngestError::NotGzip)?;
    if out.len() as u64 > max {
        return Err(IngestError::InflatedTooLarge { max });
    }
    Ok(out)
}

/// Refuses windows the store can no longer keep exactly (older than the minute retention) and
/// windows from a clock too far ahead.
fn check_window(report: &Report, cfg: &Config, now: DateTime<Utc>) -> Result<(), IngestError> {
    let start = report.window.start;
    let retention = cfg.retention.minutes;
    if start < now - chrono::Duration::from_std(retention).unwrap_or_default() {
        return Err(IngestError::TooOld { start, retention });
    }
    let skew = cfg.ingest.max_clock_skew;
    if start > now + chrono::Duration::from_std(skew).unwrap_or_default() {
        return Err(IngestError::ClockSkew { start, skew, now });
    }
    Ok(())
}

/// Hands the report to the batch writer and waits for the store's commit.
async fn submit(app: &App, ing: Arc<Ingest>, start: Instant) -> Result<Outcome, IngestError> {
    let (reply, answer) = oneshot::channel();
    if app.ingest_tx.send(Pending { ing, reply }).await.is_err() {
        return Err(IngestError::ShuttingDown);
    }
    let result = answer.await;
    app.metrics
        .ingest_seconds
        .observe(start.elapsed().as_secs_f64());
    match result {
        Ok(Ok(outcome)) => Ok(outcome),
        Ok(Err(e)) => Err(IngestError::Store(e)),
        // The writer stopped without answering.
        Err(_) => Err(IngestError::ShuttingDown),
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

fn parse_want(q: &HashMap<String, String>, max_days: u32) -> Result<(View, Span), String> {
    let view: View = q
        .get("view")
        .ok_or("view: required (instances, clusters, security-groups or workloads)")?
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
            if t - f > chrono::Duration::days(i64::from(max_days)) {
                return Err(format!(
                    "range: {f} to {t} is longer than max_range_days ({max_days} days)"
                ));
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

/// The map for a request (see [`crate::mapservice`] for where it comes from), counted in the
/// metrics; errors as the response to send. Built on the blocking pool, at most `map_builds` at
/// once, cached by (view, range, store version) (see [`crate::mapbuilds`]).
pub async fn find_map(app: &Arc<App>, view: View, span: Span) -> Result<Arc<Served>, Response> {
    let t = Instant::now();
    let key = Key {
        view,
        span,
        version: app.version.get(),
    };
    let runtime = tokio::runtime::Handle::current();
    let a = app.clone();
    let served = app
        .maps
        .get(key, move || {
            runtime.block_on(a.map_source().map(view, span, Utc::now()))
        })
        .await
        .map_err(|e| map_error_response(app, e))?;
    let from = match &*served {
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

/// The answer to a failed map request. Store and file errors are logged, not sent (finding 17).
fn map_error_response(app: &App, e: BuildError<MapError>) -> Response {
    match e {
        BuildError::Busy => {
            let mut r = json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "map builds busy; retry later",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
            r
        }
        BuildError::Aborted => {
            tracing::error!("a map build panicked or was cancelled");
            json_error(StatusCode::INTERNAL_SERVER_ERROR, "map build failed")
        }
        BuildError::Build(e @ MapError::NoData(_)) => {
            json_error(StatusCode::NOT_FOUND, e.to_string())
        }
        BuildError::Build(MapError::Store(e)) => {
            app.metrics.store_error("read");
            tracing::error!(error = %e, "map: store unavailable");
            json_error(StatusCode::SERVICE_UNAVAILABLE, "store unavailable")
        }
        BuildError::Build(e @ MapError::File { .. }) => {
            tracing::error!(error = %e, "map: reading the daily file failed");
            json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "reading the daily map failed",
            )
        }
    }
}

async fn get_map(
    State(app): State<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (view, want) = match parse_want(&q, app.cfg.max_range_days) {
        Ok(v) => v,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, e),
    };
    let served = match find_map(&app, view, want).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let bytes = match &*served {
        Served::File(bytes) => bytes.clone(),
        Served::Built(map) => match serde_json::to_vec(&**map) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "serialising a map failed");
                return json_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "serialising the map failed",
                );
            }
        },
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        bytes,
    )
        .into_response()
}

async fn get_export(
    State(app): State<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    export_response(&app, &q, None).await
}

/// The export of a part of the map (issue 12, item 6): what the viewer shows, as
/// `{"nodes": [...], "links": [[source, target], ...]}` ([`crate::viewerapi::Subset`]), in the
/// same formats and by the same code as the whole map. Nothing is stored.
async fn post_export(
    State(app): State<Arc<App>>,
    Query(q): Query<HashMap<String, String>>,
    req: Request,
) -> Response {
    use crate::viewerapi::{MAX_SUBSET_BODY, Subset};
    let (parts, body) = req.into_parts();
    // JSON only: a cross-site form cannot send it without a CORS preflight.
    let json = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(';').next().unwrap_or("").trim() == "application/json");
    if !json {
        return json_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content-type: application/json expected",
        );
    }
    if let Err(e) = check_declared_length(&parts.headers, MAX_SUBSET_BODY) {
        return e.into_response();
    }
    let timeout = app.cfg.ingest.request_timeout;
    let bytes = match read_body(body, MAX_SUBSET_BODY, Instant::now() + timeout, timeout).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let subset = match Subset::from_json(&bytes) {
        Ok(s) => s,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    export_response(&app, &q, Some(subset)).await
}

/// An export of the map a query names, whole or limited to `subset`.
async fn export_response(
    app: &Arc<App>,
    q: &HashMap<String, String>,
    subset: Option<crate::viewerapi::Subset>,
) -> Response {
    let (view, want) = match parse_want(q, app.cfg.max_range_days) {
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
    let served = match find_map(app, view, want).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let from_file;
    let map: &Map = match &*served {
        Served::File(bytes) => match Map::from_json(bytes) {
            Ok(mut m) => {
                // Ports named with the current names, also in files written before service
                // names existed (issue 12 item 4).
                app.enricher.services.annotate(&mut m);
                from_file = m;
                &from_file
            }
            Err(e) => {
                tracing::error!(error = %e, "a daily map file does not parse");
                return json_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "reading the daily map failed",
                );
            }
        },
        Served::Built(m) => m,
    };
    let part;
    let map = match &subset {
        Some(s) => {
            part = s.apply(map);
            &part
        }
        None => map,
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
    (StatusCode::OK, headers, export::export(map, format)).into_response()
}

/// The viewer's settings from `[viewer]` (validated at start).
async fn get_viewer_config(State(app): State<Arc<App>>) -> Response {
    json_ok(crate::viewerapi::viewer_config_json(
        &app.cfg.viewer.suppression_presets,
    ))
}

async fn get_days(State(app): State<Arc<App>>) -> Response {
    let days = match app.map_source().days().await {
        Ok(d) => d,
        Err(e) => {
            app.metrics.store_error("read");
            tracing::error!(error = %e, "days: store unavailable");
            return json_error(StatusCode::SERVICE_UNAVAILABLE, "store unavailable");
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
            // The store's error goes to the log only: /healthz is open to anyone.
            app.metrics.store_error("ping");
            tracing::error!(error = %e, "health check: store unavailable");
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable\n").into_response()
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

/// The listener's limits and TLS (see `run.rs`).
pub struct Listen {
    /// Time to send a request's headers (and to finish a TLS handshake).
    pub header_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_per_address: usize,
    pub tls: Option<Arc<crate::tls::TlsFiles>>,
    pub metrics: Arc<Metrics>,
}

/// The verified client certificate of a mutual-TLS connection, on each of its requests.
#[derive(Clone, Debug)]
pub struct ClientCert(pub rustls::pki_types::CertificateDer<'static>);

/// Connections open per client address; a slot is given back when dropped.
#[derive(Default)]
struct PerAddress(Mutex<HashMap<IpAddr, usize>>);

struct AddressSlot {
    table: Arc<PerAddress>,
    ip: IpAddr,
}

impl PerAddress {
    /// A slot for `ip`, unless it already has `max` connections open. The table holds only
    /// addresses with an open connection, so it is bounded by the global cap.
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<AddressSlot> {
        let mut t = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = t.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            table: self.clone(),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut t = self
            .table
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = t.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                t.remove(&self.ip);
            }
        }
    }
}

/// Accepts connections until `shutdown` fires, then lets open requests finish (for at most
/// `grace`). Each connection takes a slot of `max_connections` and one of its address's
/// `max_per_address`; a connection over either cap is closed at once.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: Listen,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
) {
    let limits = Arc::new(limits);
    let global = Arc::new(Semaphore::new(limits.max_connections));
    let per_address = Arc::new(PerAddress::default());
    let mut open = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: wait a little rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = global.clone().try_acquire_owned() else {
                    limits.metrics.refuse_connection("max_connections");
                    tracing::warn!(max_connections = limits.max_connections, "connection limit reached; closing a new connection");
                    continue;
                };
                let ip = peer.ip().to_canonical();
                let Some(slot) = per_address.take(ip, limits.max_per_address) else {
                    limits.metrics.refuse_connection("per_address");
                    tracing::debug!(%ip, max = limits.max_per_address, "per-address connection limit reached; closing a new connection");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let conn = connection(stream, peer, router.clone(), limits.clone(), shutdown.clone());
                open.spawn(async move {
                    conn.await;
                    drop((permit, slot));
                });
            }
            // Reap finished connections (the set would grow otherwise).
            Some(_) = open.join_next(), if !open.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    let drained =
        tokio::time::timeout(grace, async { while open.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!(
            ?grace,
            "connections still open after the grace period; closing them"
        );
        open.abort_all();
    }
}

/// One connection: the TLS handshake (within the header timeout) when TLS is on, then HTTP/1.1.
async fn connection(
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    router: Router,
    limits: Arc<Listen>,
    shutdown: watch::Receiver<bool>,
) {
    let Some(tls) = &limits.tls else {
        return serve_http(stream, peer, None, router, &limits, shutdown).await;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
    match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await {
        Ok(Ok(s)) => {
            let cert = s
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| ClientCert(c.clone().into_owned()));
            serve_http(s, peer, cert, router, &limits, shutdown).await
        }
        Ok(Err(e)) => {
            limits.metrics.refuse_connection("tls_handshake");
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
        }
        Err(_) => {
            limits.metrics.refuse_connection("tls_handshake");
            tracing::debug!(%peer, "TLS handshake timed out");
        }
    }
}

/// Requests in flight on a connection and when it last became idle, for the idle timeout.
struct Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    idle_since: Mutex<tokio::time::Instant>,
}

struct Busy(Arc<Activity>);

impl Activity {
    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Busy(self.clone())
    }

    /// When the connection may be closed as idle: `None` while a request is in flight.
    fn idle_deadline(&self, idle: Duration) -> Option<tokio::time::Instant> {
        if self.in_flight.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            return None;
        }
        Some(
            *self
                .idle_since
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                + idle,
        )
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        *self
            .0
            .idle_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = tokio::time::Instant::now();
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// HTTP/1.1 on one connection, with keep-alive, until the client closes it, it stays idle
/// for `idle_timeout`, or the server stops (then the request in flight is finished first).
/// Every request carries the peer's address (`ConnectInfo`) and, with mutual TLS, the
/// client's certificate ([`ClientCert`]).
async fn serve_http<I>(
    io: I,
    peer: std::net::SocketAddr,
    cert: Option<ClientCert>,
    router: Router,
    limits: &Listen,
    mut shutdown: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use hyper_util::{
        rt::{TokioIo, TokioTimer},
        service::TowerToHyperService,
    };
    use tower::ServiceExt as _;
    let activity = Arc::new(Activity {
        in_flight: 0.into(),
        idle_since: Mutex::new(tokio::time::Instant::now()),
    });
    let act = activity.clone();
    let svc = tower::service_fn(move |mut req: Request<hyper::body::Incoming>| {
        let busy = act.begin();
        let router = router.clone();
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        if let Some(c) = &cert {
            req.extensions_mut().insert(c.clone());
        }
        async move {
            let r = router.oneshot(req).await;
            drop(busy);
            r
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(svc));
    tokio::pin!(conn);
    let mut closing = false;
    if *shutdown.borrow_and_update() {
        conn.as_mut().graceful_shutdown();
        closing = true;
    }
    loop {
        let idle_at = activity
            .idle_deadline(limits.idle_timeout)
            .unwrap_or_else(|| tokio::time::Instant::now() + limits.idle_timeout);
        tokio::select! {
            _ = conn.as_mut() => return,
            // Stopping (or the server gone): finish the request in flight, then close.
            _ = shutdown.changed(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = tokio::time::sleep_until(idle_at), if !closing => {
                if activity
                    .idle_deadline(limits.idle_timeout)
                    .is_some_and(|d| d <= tokio::time::Instant::now())
                {
                    tracing::debug!(%peer, "closing an idle connection");
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}
