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
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((s, _)) => s,
                    Err(e) => {
                        // Out of file descriptors and the like: wait rather than spin.
                        warn!(error = %e, "metrics endpoint: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    // Closed at once: the socket is dropped here.
                    warn!(max = MAX_CONNECTIONS, "metrics endpoint: connection limit reached; closing a new connection");
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
