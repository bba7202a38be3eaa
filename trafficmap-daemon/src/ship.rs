//! Sending spooled reports to the collector, oldest first, with exponential backoff. A report
//! leaves the spool only when the collector accepted it (or says it already has it); the
//! collector ignores a report id it stored before, so a retry after a lost reply is harmless.

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
    /// Retry later (network error, 5xx, 429, 401 until the token is fixed).
    Retry(Failure),
    /// The collector refused this report for good (400, 413, 422): set it aside.
    Refused(Failure),
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

    pub async fn send(&self, body: Vec<u8>) -> Outcome {
        let mut req = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(t) = self.token.lock().unwrap().clone() {
            req = req.bearer_auth(t);
        }
        match req.send().await {
            Err(e) => Outcome::Retry(Failure {
                kind: FailureKind::of(&e),
                detail: chain(&e),
            }),
            Ok(resp) => {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                let failure = || Failure {
                    kind: FailureKind::Status(status),
                    detail: format!("{status}: {}", text.trim()),
                };
                match status.as_u16() {
                    200..=299 => Outcome::Accepted,
                    400 | 413 | 422 => Outcome::Refused(failure()),
                    _ => Outcome::Retry(failure()),
                }
            }
        }
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
            metrics.record_spool(s.len(), s.bytes(), s.dropped_total());
            s.front().map(|seq| (seq, s.read(seq)))
        };
        let Some((seq, body)) = next else {
            tokio::select! {
                _ = wake.notified() => {}
                _ = stop.changed() => {}
            }
            continue;
        };
        let body = match body {
            Ok(b) => b,
            Err(e) => {
                error!(seq, error = %format!("{e:#}"), "spooled report unreadable; setting it aside");
                let _ = spool.lock().unwrap().reject(seq);
                continue;
            }
        };
        match collector.send(body).await {
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
                failures += 1;
                warn!(seq, %why, retry_in = ?wait, "sending report failed; it stays in the spool");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }
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
        let Some((seq, Ok(body))) = next else { return };
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, collector.send(body)).await {
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
        match collector.send(b"{}".to_vec()).await {
            Outcome::Retry(f) => assert_eq!(f.kind, FailureKind::Connect, "{f}"),
            other => panic!("{other:?}"),
        }
    }
}
