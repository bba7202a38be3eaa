//! Sending spooled reports to the collector, oldest first, with exponential backoff. A report
//! leaves the spool only when the collector accepted it (or says it already has it); the
//! collector ignores a report id it stored before, so a retry after a lost reply is harmless.
//!
//! A 2xx is only believed when its body is the collector's own answer for this very report
//! (`{"status":"stored"|"duplicate","report_id":<id sent>}`): a proxy or captive portal that
//! answers 200 must not empty the spool. 401 and 403 keep the report (a token being rolled or an
//! identity being fixed must lose nothing); a 422 for clock skew is retried (the clock gets
//! fixed, the report stays good); only answers that can never change set a report aside.

use std::{
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result};
use tokio::sync::{Notify, watch};
use tracing::{debug, error, info, warn};

use crate::{config::Config, error::chain, metrics::Metrics, spool::Spool};

/// What the collector said.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    /// Retry later (network error, 5xx, 429, 401/403 until the token is fixed, clock skew, a
    /// 2xx that is not the collector's answer).
    Retry(Failure),
    /// The collector refused this report for good (400, 413, 422 too old): set it aside.
    Refused(Failure),
}

/// At most this much of a response body is read: the collector's answers are a few hundred
/// bytes; anything bigger is not one of them.
pub const MAX_REPLY_BYTES: usize = 16 * 1024;

/// The collector's answer to an accepted report (extra fields are ignored).
#[derive(serde::Deserialize)]
struct Stored {
    status: String,
    report_id: String,
}

/// Only the id of a spooled report (the rest of the body is skipped while parsing).
#[derive(serde::Deserialize)]
struct ReportId {
    report_id: String,
}

/// The report id of a spooled body, or `None` if the body is not a report (corrupt file).
pub fn report_id_of(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<ReportId>(body)
        .ok()
        .map(|r| r.report_id)
}

/// The collector's 422 for a window ahead of its clock (`server.rs`, `IngestError::ClockSkew`).
fn is_clock_skew(body: &str) -> bool {
    body.contains("ahead of the collector's clock")
}

/// Why a send did not succeed: its kind as data (the metric label), and a detail for logs.
#[derive(Debug, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    /// The HTTP status and response body, or the transport error's chain.
    pub detail: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// The collector answered with this status.
    Status(reqwest::StatusCode),
    /// No connection (refused, unreachable, DNS, TLS handshake).
    Connect,
    /// The request or the connection attempt took too long.
    Timeout,
    /// Any other transport error.
    Io,
    /// A 2xx whose body is not `{"status":"stored"|"duplicate","report_id":<id sent>}`.
    BadReply,
    /// A 422 saying the report's window is ahead of the collector's clock.
    ClockSkew,
}

impl FailureKind {
    fn of(e: &reqwest::Error) -> FailureKind {
        // A connect timeout is both; it counts as a connection failure.
        if e.is_connect() {
            FailureKind::Connect
        } else if e.is_timeout() {
            FailureKind::Timeout
        } else {
            FailureKind::Io
        }
    }

    /// Bounded label value for `reports_failed`: the status code or the error kind.
    pub fn label(self) -> String {
        match self {
            FailureKind::Status(s) => s.as_u16().to_string(),
            FailureKind::Connect => "connect".into(),
            FailureKind::Timeout => "timeout".into(),
            FailureKind::Io => "io".into(),
            FailureKind::BadReply => "bad_reply".into(),
            FailureKind::ClockSkew => "clock_skew".into(),
        }
    }
}

/// HTTP client for `POST /api/v1/reports`.
#[derive(Clone)]
pub struct Collector {
    client: reqwest::Client,
    url: reqwest::Url,
    token: Arc<Mutex<Option<String>>>,
}

impl Collector {
    pub fn new(config: &Config) -> Result<Option<Collector>> {
        let Some(base) = &config.collector else {
            return Ok(None);
        };
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("trafficmap-agent/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &config.ca_file {
            let pem = std::fs::read(ca).with_context(|| format!("ca_file {}", ca.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some(f) = &config.client_cert_file {
            let pem =
                std::fs::read(f).with_context(|| format!("client_cert_file {}", f.display()))?;
            builder = builder.identity(reqwest::Identity::from_pem(&pem)?);
        }
        let url = base
            .join("api/v1/reports")
            .context("collector URL cannot take a path")?;
        Ok(Some(Collector {
            client: builder.build()?,
            url,
            token: Arc::new(Mutex::new(config.token()?)),
        }))
    }

    pub fn set_token(&self, token: Option<String>) {
        *self.token.lock().unwrap() = token;
    }

    /// Sends one report; `report_id` is the id inside `body`, which a 2xx must echo.
    pub async fn send(&self, body: Vec<u8>, report_id: &str) -> Outcome {
        let mut req = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(t) = self.token.lock().unwrap().clone() {
            req = req.bearer_auth(t);
        }
        let mut resp = match req.send().await {
            Err(e) => {
                return Outcome::Retry(Failure {
                    kind: FailureKind::of(&e),
                    detail: chain(&e),
                });
            }
            Ok(resp) => resp,
        };
        let status = resp.status();
        let date = resp
            .headers()
            .get(reqwest::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| chrono::DateTime::parse_from_rfc2822(v).ok())
            .map(|d| d.with_timezone(&chrono::Utc));
        let text = match read_bounded(&mut resp).await {
            Ok(t) => t,
            Err(e) => {
                return Outcome::Retry(Failure {
                    kind: FailureKind::of(&e),
                    detail: format!("{status}: reading the answer: {}", chain(&e)),
                });
            }
        };
        classify(status, &text, report_id, date, chrono::Utc::now())
    }
}

/// Reads at most [`MAX_REPLY_BYTES`] of the body (lossy UTF-8); the rest is not read.
async fn read_bounded(resp: &mut reqwest::Response) -> Result<String, reqwest::Error> {
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        let room = MAX_REPLY_BYTES.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if buf.len() >= MAX_REPLY_BYTES {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// At most 512 bytes of an answer, for logs (cut on a character boundary).
fn excerpt(text: &str) -> &str {
    let mut end = text.len().min(512);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// What an HTTP answer means for the report `report_id`. `date` is the answer's `Date` header
/// (the collector's clock), used to say how far off the agent's clock (`now`) is.
fn classify(
    status: reqwest::StatusCode,
    text: &str,
    report_id: &str,
    date: Option<chrono::DateTime<chrono::Utc>>,
    now: chrono::DateTime<chrono::Utc>,
) -> Outcome {
    let failure = |kind| Failure {
        kind,
        detail: format!("{status}: {}", excerpt(text.trim())),
    };
    match status.as_u16() {
        200..=299 => match serde_json::from_str::<Stored>(text) {
            Ok(s)
                if (s.status == "stored" || s.status == "duplicate")
                    && s.report_id == report_id =>
            {
                Outcome::Accepted
            }
            _ => Outcome::Retry(failure(FailureKind::BadReply)),
        },
        422 if is_clock_skew(text) => {
            let mut f = failure(FailureKind::ClockSkew);
            if let Some(d) = date {
                // Positive: the agent's clock is ahead of the collector's.
                let skew = now.signed_duration_since(d).num_seconds();
                f.detail = format!("{} (agent clock - collector clock: {skew} s)", f.detail);
            }
            Outcome::Retry(f)
        }
        // 400: the report is invalid; 413: it is too large; 422 (too old): the window is past
        // the collector's minute retention and only gets older. None of these can change.
        400 | 413 | 422 => Outcome::Refused(failure(FailureKind::Status(status))),
        _ => Outcome::Retry(failure(FailureKind::Status(status))),
    }
}

/// Backoff after `failures` consecutive failures: 1 s doubling to 60 s, plus up to a quarter
/// more at random so a fleet does not retry in lockstep after a collector outage.
pub fn backoff(failures: u32) -> Duration {
    let base = Duration::from_secs(1 << failures.min(6)).min(Duration::from_secs(60));
    base + base.mul_f64(fastrand::f64() / 4.0)
}

/// Sends spooled reports until `stop` turns true and, if `drain_until_empty`, the spool is empty.
pub async fn run(
    collector: Collector,
    spool: Arc<Mutex<Spool>>,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    loop {
        if *stop.borrow() {
            return;
        }
        let next = {
            let s = spool.lock().unwrap();
            metrics.record_spool(&s);
            s.front().map(|seq| (seq, s.read(seq)))
        };
        let Some((seq, body)) = next else {
            tokio::select! {
                _ = wake.notified() => {}
                _ = stop.changed() => {}
            }
            continue;
        };
        let Some((body, id)) = readable(&spool, seq, body) else {
            continue;
        };
        match collector.send(body, &id).await {
            Outcome::Accepted => {
                if let Err(e) = spool.lock().unwrap().remove(seq) {
                    error!(seq, error = %format!("{e:#}"), "removing a shipped report from the spool");
                }
                metrics.reports_shipped.inc();
                if failures > 0 {
                    info!(seq, "collector reachable again");
                }
                failures = 0;
                debug!(seq, "report shipped");
            }
            Outcome::Refused(why) => {
                metrics
                    .reports_failed
                    .get_or_create(&crate::metrics::ReasonLabels {
                        reason: why.kind.label(),
                    })
                    .inc();
                match spool.lock().unwrap().reject(seq) {
                    Ok(path) => {
                        error!(seq, %why, path = %path.display(), "collector refused the report; set aside")
                    }
                    Err(e) => {
                        error!(seq, %why, error = %format!("{e:#}"), "collector refused the report")
                    }
                }
            }
            Outcome::Retry(why) => {
                metrics
                    .reports_failed
                    .get_or_create(&crate::metrics::ReasonLabels {
                        reason: why.kind.label(),
                    })
                    .inc();
                let wait = backoff(failures);
                failures = failures.saturating_add(1);
                if why.kind == FailureKind::ClockSkew {
                    error!(seq, %why, retry_in = ?wait, "the collector says this host's clock is ahead: fix the clock (NTP); the report stays in the spool and is retried");
                } else {
                    warn!(seq, %why, retry_in = ?wait, "sending report failed; it stays in the spool");
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }
}

/// A spooled report's body and id; a file that cannot be read or is not a report is moved to
/// `quarantine/` (logged) so it does not block the reports behind it.
fn readable(spool: &Mutex<Spool>, seq: u64, body: Result<Vec<u8>>) -> Option<(Vec<u8>, String)> {
    let why = match body {
        Ok(b) => match report_id_of(&b) {
            Some(id) => return Some((b, id)),
            None => "not a report".to_owned(),
        },
        Err(e) => format!("{e:#}"),
    };
    match spool.lock().unwrap().quarantine(seq) {
        Ok(path) => {
            warn!(seq, error = %why, path = %path.display(), "spooled report corrupt; quarantined")
        }
        Err(e) => {
            error!(seq, error = %why, quarantine = %format!("{e:#}"), "spooled report corrupt and not quarantined")
        }
    }
    None
}

/// On shutdown: tries to empty the spool within `deadline`; whatever remains is sent after the
/// next start.
pub async fn flush(
    collector: &Collector,
    spool: &Arc<Mutex<Spool>>,
    metrics: &Metrics,
    deadline: Duration,
) {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        let next = {
            let s = spool.lock().unwrap();
            s.front().map(|seq| (seq, s.read(seq)))
        };
        let Some((seq, body)) = next else { return };
        let Some((body, id)) = readable(spool, seq, body) else {
            continue;
        };
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, collector.send(body, &id)).await {
            Ok(Outcome::Accepted) => {
                let _ = spool.lock().unwrap().remove(seq);
                metrics.reports_shipped.inc();
            }
            Ok(Outcome::Refused(why)) => {
                error!(seq, %why, "collector refused the report; set aside");
                let _ = spool.lock().unwrap().reject(seq);
            }
            Ok(Outcome::Retry(why)) => {
                warn!(%why, remaining = spool.lock().unwrap().len(), "collector unreachable at shutdown; reports stay spooled");
                return;
            }
            Err(_) => {
                warn!(
                    remaining = spool.lock().unwrap().len(),
                    "shutdown deadline reached; reports stay spooled"
                );
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mutual-TLS server (rustls, client certificates verified against `ca`) answering one
    /// request per connection with the collector's acknowledgement; sends the DER of the
    /// client certificate each connection presented (if the handshake succeeded).
    async fn mtls_server(
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> (u16, tokio::sync::mpsc::UnboundedReceiver<Option<Vec<u8>>>) {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let mut tls = match acceptor.accept(tcp).await {
                    Ok(t) => t,
                    Err(_) => {
                        let _ = tx.send(None);
                        continue;
                    }
                };
                let presented = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.to_vec());
                let _ = tx.send(presented);
                // Headers, then the body by its length: enough HTTP for one request.
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let n = tls.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    req.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&req).to_ascii_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len: usize = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        if req.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                let body = r#"{"status":"stored","report_id":"mtls-report-0001","pairs":0}"#;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(answer.as_bytes()).await;
                let _ = tls.shutdown().await;
            }
        });
        (port, rx)
    }

    #[tokio::test]
    async fn client_certificate_is_presented_to_a_mutual_tls_collector() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let issue = |names: &[&str]| {
            let key = rcgen::KeyPair::generate().unwrap();
            let params = rcgen::CertificateParams::new(
                names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            )
            .unwrap();
            let cert = params.signed_by(&key, &ca).unwrap();
            (cert.pem(), cert.der().to_vec(), key.serialize_pem())
        };
        let (server_pem, _, server_key) = issue(&["127.0.0.1", "localhost"]);
        let (client_pem, client_der, client_key) = issue(&["machine-1"]);
        let (port, mut seen) = mtls_server(&ca.pem(), &server_pem, &server_key).await;

        let dir = std::env::temp_dir().join(format!("tm-mtls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let cert_file = dir.join("agent.pem");
        std::fs::write(&cert_file, format!("{client_pem}{client_key}")).unwrap();
        let cli = |with_cert: bool| crate::config::Cli {
            collector: Some(format!("https://127.0.0.1:{port}/")),
            ca_file: Some(ca_file.clone()),
            client_cert_file: with_cert.then(|| cert_file.clone()),
            ..Default::default()
        };
        let config = |with_cert| {
            Config::merge(&cli(with_cert), &crate::config::FileConfig::default()).unwrap()
        };

        // With the certificate: the handshake succeeds, the server saw exactly ours.
        let c = Collector::new(&config(true)).unwrap().unwrap();
        let outcome = c.send(b"{}".to_vec(), "mtls-report-0001").await;
        assert_eq!(kind(outcome), ("accepted", FailureKind::Io));
        assert_eq!(seen.recv().await.unwrap(), Some(client_der));

        // Without: the server refuses the handshake; the report stays to be retried.
        let c = Collector::new(&config(false)).unwrap().unwrap();
        let (what, _) = kind(c.send(b"{}".to_vec(), "mtls-report-0001").await);
        assert_eq!(what, "retry");
        assert_eq!(seen.recv().await.unwrap(), None);

        // A file without the key is one clear configuration error.
        std::fs::write(&cert_file, &client_pem).unwrap();
        let e = Config::merge(&cli(true), &crate::config::FileConfig::default()).unwrap_err();
        assert!(
            e.to_string().starts_with("client_cert_file: ")
                && e.to_string().contains("private key"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert!(backoff(0) >= Duration::from_secs(1) && backoff(0) < Duration::from_millis(1300));
        assert!(backoff(3) >= Duration::from_secs(8));
        assert!(backoff(20) >= Duration::from_secs(60) && backoff(20) <= Duration::from_secs(75));
    }

    #[test]
    fn bounded_reasons() {
        assert_eq!(
            FailureKind::Status(reqwest::StatusCode::SERVICE_UNAVAILABLE).label(),
            "503"
        );
        assert_eq!(FailureKind::Connect.label(), "connect");
        assert_eq!(FailureKind::Timeout.label(), "timeout");
    }

    fn at(s: &str) -> chrono::DateTime<chrono::Utc> {
        s.parse().unwrap()
    }

    fn kind(o: Outcome) -> (&'static str, FailureKind) {
        match o {
            Outcome::Accepted => ("accepted", FailureKind::Io),
            Outcome::Retry(f) => ("retry", f.kind),
            Outcome::Refused(f) => ("refused", f.kind),
        }
    }

    #[test]
    fn a_2xx_is_stored_only_with_the_collectors_answer_for_this_id() {
        use reqwest::StatusCode as S;
        let now = at("2026-11-29T12:00:00Z");
        let c = |status, text: &str| kind(classify(status, text, "abc", None, now));
        let accepted = ("accepted", FailureKind::Io);
        let bad = ("retry", FailureKind::BadReply);
        assert_eq!(
            c(S::OK, r#"{"status":"stored","report_id":"abc","pairs":3}"#),
            accepted
        );
        assert_eq!(
            c(
                S::OK,
                r#"{"status":"duplicate","report_id":"abc","pairs":0}"#
            ),
            accepted
        );
        assert_eq!(c(S::OK, r#"{"status":"stored","report_id":"abd"}"#), bad);
        assert_eq!(c(S::OK, r#"{"status":"queued","report_id":"abc"}"#), bad);
        assert_eq!(c(S::OK, ""), bad);
        assert_eq!(c(S::OK, "<html>captive portal</html>"), bad);
        assert_eq!(c(S::NO_CONTENT, ""), bad);
        assert_eq!(c(S::ACCEPTED, r#"{"report_id":"abc"}"#), bad);
        // Token roll-over and identity fixes: kept and retried.
        assert_eq!(
            c(S::UNAUTHORIZED, r#"{"error":"unknown token"}"#),
            ("retry", FailureKind::Status(S::UNAUTHORIZED))
        );
        assert_eq!(
            c(S::FORBIDDEN, r#"{"error":"identity: not covered"}"#),
            ("retry", FailureKind::Status(S::FORBIDDEN))
        );
        assert_eq!(
            c(
                S::BAD_REQUEST,
                r#"{"error":"pairs[0].bytes_sent: too big"}"#
            ),
            ("refused", FailureKind::Status(S::BAD_REQUEST))
        );
        assert_eq!(
            c(
                S::UNPROCESSABLE_ENTITY,
                r#"{"error":"report window starts at 2026-11-20T00:00:00Z, before the minute retention (7days ago): it can no longer be stored exactly"}"#
            ),
            ("refused", FailureKind::Status(S::UNPROCESSABLE_ENTITY))
        );
        assert_eq!(
            c(S::SERVICE_UNAVAILABLE, ""),
            ("retry", FailureKind::Status(S::SERVICE_UNAVAILABLE))
        );
    }

    #[test]
    fn clock_skew_is_retried_and_says_by_how_much() {
        // The collector's exact message (trafficmap-collector/src/server.rs, ClockSkew).
        let body = r#"{"error":"report window starts at 2026-11-29T14:00:00Z, more than 5m ahead of the collector's clock (2026-11-29T12:00:00Z): check the agent's clock"}"#;
        match classify(
            reqwest::StatusCode::UNPROCESSABLE_ENTITY,
            body,
            "abc",
            Some(at("2026-11-29T12:00:00Z")),
            at("2026-11-29T14:00:03Z"),
        ) {
            Outcome::Retry(f) => {
                assert_eq!(f.kind, FailureKind::ClockSkew);
                assert!(
                    f.detail
                        .ends_with("(agent clock - collector clock: 7203 s)"),
                    "{}",
                    f.detail
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(FailureKind::ClockSkew.label(), "clock_skew");
        assert_eq!(FailureKind::BadReply.label(), "bad_reply");
    }

    #[test]
    fn report_ids_of_spooled_bodies() {
        assert_eq!(
            report_id_of(br#"{"schema":"x","report_id":"r1","pairs":[{"a":1}]}"#).as_deref(),
            Some("r1")
        );
        assert_eq!(report_id_of(b"{"), None);
        assert_eq!(report_id_of(b"\0\0\0"), None);
    }

    #[test]
    fn a_corrupt_spooled_report_is_quarantined_not_sent() {
        let dir = std::env::temp_dir().join(format!("tm-ship-q-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let spool = Mutex::new(Spool::open(&dir, 1 << 20).unwrap());
        spool
            .lock()
            .unwrap()
            .push(0, b"{\"report_id\":\"r0\"}")
            .unwrap();
        spool.lock().unwrap().push(1, b"\0\0garbage").unwrap();
        let body = |seq| spool.lock().unwrap().read(seq);
        let (b, id) = readable(&spool, 0, body(0)).unwrap();
        assert_eq!((b.len(), id.as_str()), (18, "r0"));
        assert!(readable(&spool, 1, body(1)).is_none());
        let s = spool.lock().unwrap();
        assert_eq!((s.len(), s.front(), s.quarantined_total()), (1, Some(0), 1));
        let q: Vec<_> = std::fs::read_dir(dir.join("quarantine")).unwrap().collect();
        assert_eq!(q.len(), 1);
    }

    #[tokio::test]
    async fn refused_connection_is_a_connect_retry() {
        // A port nobody listens on: bind one, then free it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = Config {
            collector: Some(format!("http://127.0.0.1:{port}/").parse().unwrap()),
            ..crate::config::Config::merge(
                &crate::config::Cli::default(),
                &crate::config::FileConfig::default(),
            )
            .unwrap()
        };
        let collector = Collector::new(&config).unwrap().unwrap();
        match collector.send(b"{}".to_vec(), "x").await {
            Outcome::Retry(f) => assert_eq!(f.kind, FailureKind::Connect, "{f}"),
            other => panic!("{other:?}"),
        }
    }
}
