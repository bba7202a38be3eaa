//! Sending spooled reports to the collector, oldest first, with exponential backoff. A report
//! leaves the spool only when the collector accepted it (or says it already has it); the
//! collector ignores a report id it stored before, so a retry after a lost reply is harmless.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result};
use tokio::sync::{Notify, watch};
use tracing::{debug, error, info, warn};

use crate::{config::Config, metrics::Metrics, spool::Spool};

/// What the collector said.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    /// Retry later (network error, 5xx, 429, 401 until the token is fixed).
    Retry(String),
    /// The collector refused this report for good (400, 413): set it aside.
    Refused(String),
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
            Err(e) => Outcome::Retry(error_chain(&e)),
            Ok(resp) => {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                let detail = || format!("{status}: {}", text.trim());
                match status.as_u16() {
                    200..=299 => Outcome::Accepted,
                    400 | 413 | 422 => Outcome::Refused(detail()),
                    _ => Outcome::Retry(detail()),
                }
            }
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Backoff after `failures` consecutive failures: 1 s doubling to 60 s, with jitter so a fleet
/// does not retry in lockstep after a collector outage.
pub fn backoff(failures: u32) -> Duration {
    let base = Duration::from_secs(1 << failures.min(6)).min(Duration::from_secs(60));
    let jitter = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos()
        % 1000) as u64;
    base + Duration::from_millis(jitter * base.as_millis() as u64 / 4000)
}

fn reason(o: &str) -> String {
    // Bounded label values: the status code or the error kind.
    if o.starts_with(char::is_numeric) {
        o.split(':')
            .next()
            .unwrap_or("http")
            .split_whitespace()
            .next()
            .unwrap_or("http")
            .to_owned()
    } else if o.contains("onnect") {
        "connect".into()
    } else if o.contains("timed out") || o.contains("timeout") {
        "timeout".into()
    } else {
        "io".into()
    }
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
                        reason: reason(&why),
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
                        reason: reason(&why),
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
        assert_eq!(reason("503 Service Unavailable: busy"), "503");
        assert_eq!(
            reason("error sending request: client error (Connect): Connection refused"),
            "connect"
        );
        assert_eq!(reason("operation timed out"), "timeout");
    }
}
