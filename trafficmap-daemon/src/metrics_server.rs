//! The agent's `/metrics` and `/healthz` endpoint, bounded against a hostile network: it may
//! listen on every address of a node (the DaemonSet does), so a client must not be able to hold
//! it, or the agent's memory and file descriptors, with slow or idle connections.
//!
//! axum's `serve` has no header timeout or connection cap, so connections are served with
//! hyper's HTTP/1 builder directly (as the collector does): a header read timeout, a cap on
//! open connections (a new connection beyond it is closed at once), and a lifetime after which
//! an idle keep-alive connection is closed.

use std::{sync::Arc, time::Duration};

use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::sync::{Semaphore, watch};
use tracing::warn;

/// How long a client may take to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; Prometheus needs one or two.
pub const MAX_CONNECTIONS: usize = 32;
/// After this long a connection is asked to close (in-flight request finished first, then at
/// most [`HEADER_READ_TIMEOUT`] more): bounds idle keep-alive connections.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Serves `router` on `listener` until `stop` changes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    mut stop: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // A flood must not flood the log too: at most one line per LOG_EVERY, with a count.
    let mut refused = RateLimitedLog::default();
    let mut failed = RateLimitedLog::default();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((s, _)) => s,
                    Err(e) => {
                        // Out of file descriptors and the like: wait rather than spin.
                        if let Some(n) = failed.hit() {
                            warn!(error = %e, failures = n, "metrics endpoint: accept failed");
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    // Closed at once: the socket is dropped here.
                    if let Some(n) = refused.hit() {
                        warn!(max = MAX_CONNECTIONS, closed = n, "metrics endpoint: connection limit reached; closing new connections");
                    }
                    continue;
                };
                let svc = TowerToHyperService::new(router.clone());
                tokio::spawn(async move {
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_READ_TIMEOUT)
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), svc);
                    let mut conn = std::pin::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = tokio::time::sleep(CONNECTION_LIFETIME) => {
                            conn.as_mut().graceful_shutdown();
                            let _ = tokio::time::timeout(HEADER_READ_TIMEOUT, conn).await;
                        }
                    }
                    drop(permit);
                });
            }
            _ = stop.changed() => break,
        }
    }
}

/// How often a repeated warning is logged at most.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Counts events; says when to log (the first, then at most once per [`LOG_EVERY`]) and how many
/// happened since the last line.
#[derive(Default)]
struct RateLimitedLog {
    last: Option<std::time::Instant>,
    count: u64,
}

impl RateLimitedLog {
    fn hit(&mut self) -> Option<u64> {
        self.count = self.count.saturating_add(1);
        let now = std::time::Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_warnings_are_counted_not_repeated() {
        let mut r = RateLimitedLog::default();
        assert_eq!(r.hit(), Some(1));
        for _ in 0..4999 {
            assert_eq!(r.hit(), None);
        }
        r.last = Some(std::time::Instant::now() - LOG_EVERY);
        assert_eq!(r.hit(), Some(5000));
    }
}
