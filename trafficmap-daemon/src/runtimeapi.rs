//! Container names from podman's and Docker's REST API over their unix sockets (issue 11): a
//! [`NameSource`] answered from a cache that a background task refreshes with
//! `GET /containers/json?all=true` (Docker's API; podman serves the same endpoint).
//!
//! Bounds (a local socket, but whatever answers on it is not trusted): a connect and request
//! timeout, a response size cap, at most `max_containers` names kept, ids that are not
//! container ids and names beyond the report bounds dropped or cut. The cache is replaced
//! whole by each successful listing, so it never grows beyond one listing. A miss wakes the
//! task for an early refresh, at most once per [`MIN_REFRESH_GAP`].
//!
//! HTTP is hyper's HTTP/1 client over `tokio::net::UnixStream` (hyper-util's `TokioIo`): no
//! hand-written HTTP.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use serde::Deserialize;
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};
use trafficmap_model::{bounds, report::ContainerRuntime};

use crate::names::{NameSource, Names};

/// Largest response accepted: a listing of thousands of containers stays far below it.
pub const MAX_RESPONSE_BYTES: usize = 16 << 20;
/// Early refreshes after misses are at most this frequent.
pub const MIN_REFRESH_GAP: Duration = Duration::from_secs(2);

/// Settings of one runtime API source.
#[derive(Clone, Debug)]
pub struct ApiOptions {
    pub socket: PathBuf,
    pub refresh: Duration,
    pub timeout: Duration,
    pub max_containers: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("connecting to {path}: {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("building the request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("status {0}")]
    Status(hyper::StatusCode),
    #[error("response body: {0}")]
    Body(String),
    #[error("response is not a container list: {0}")]
    Json(#[from] serde_json::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// One element of `/containers/json`; every other field is ignored.
#[derive(Deserialize)]
struct Listed {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "Names", default)]
    names: Vec<String>,
}

/// Container names by full id from a `/containers/json` body: entries whose id is not a
/// container id are skipped, names lose Docker's leading `/` and are kept within the report's
/// name bound; at most `max` entries.
pub fn parse_listing(body: &[u8], max: usize) -> Result<HashMap<String, String>, ApiError> {
    let listed: Vec<Listed> = serde_json::from_slice(body)?;
    let mut out = HashMap::new();
    for l in listed {
        if out.len() >= max {
            break;
        }
        let id = l.id.to_ascii_lowercase();
        let valid = (bounds::MIN_CONTAINER_ID_LEN..=bounds::MAX_CONTAINER_ID_LEN)
            .contains(&id.len())
            && id.bytes().all(|b| b.is_ascii_hexdigit());
        if !valid {
            continue;
        }
        let Some(name) = l.names.first() else {
            continue;
        };
        let name = name.strip_prefix('/').unwrap_or(name);
        let name = crate::sanitize::text(name, bounds::MAX_K8S_NAME_LEN).into_owned();
        if !name.is_empty() {
            out.insert(id, name);
        }
    }
    Ok(out)
}

/// `GET <path>` on the unix socket `socket`, the body capped at [`MAX_RESPONSE_BYTES`].
pub async fn get(socket: &Path, path: &str) -> Result<Bytes, ApiError> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|source| ApiError::Connect {
            path: socket.to_owned(),
            source,
        })?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, "localhost")
        .body(Empty::<Bytes>::new())?;
    let result = async {
        let resp = sender.send_request(req).await?;
        if !resp.status().is_success() {
            return Err(ApiError::Status(resp.status()));
        }
        let body = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| ApiError::Body(e.to_string()))?;
        Ok(body.to_bytes())
    }
    .await;
    driver.abort();
    result
}

/// A runtime API as a name source.
pub struct RuntimeApi {
    kind: &'static str,
    names: Mutex<HashMap<String, String>>,
    wake: Notify,
}

impl RuntimeApi {
    /// Starts the source `kind` (`podman`, `docker`) on `opts.socket`: a task lists the
    /// containers now and every `opts.refresh` until `stop` turns true.
    pub fn spawn(
        kind: &'static str,
        opts: ApiOptions,
        stop: watch::Receiver<bool>,
    ) -> Arc<RuntimeApi> {
        let me = Arc::new(RuntimeApi {
            kind,
            names: Mutex::new(HashMap::new()),
            wake: Notify::new(),
        });
        tokio::spawn(refresh_loop(me.clone(), opts, stop));
        me
    }

    /// How many names the source holds.
    pub fn len(&self) -> usize {
        self.names.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl NameSource for RuntimeApi {
    fn kind(&self) -> &'static str {
        self.kind
    }

    /// Answers for any runtime: ids are unique, and the cgroup path does not always tell the
    /// manager (`oci`).
    fn names(&self, _runtime: ContainerRuntime, id: &str) -> Option<Names> {
        let name = self
            .names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned();
        match name {
            Some(name) => Some(Names {
                name: Some(name),
                ..Names::default()
            }),
            None => {
                // A container started since the last listing: list again soon.
                self.wake.notify_one();
                None
            }
        }
    }
}

/// The runtime API sources `[containers]` names: podman's, then Docker's.
pub fn sources(
    c: &crate::config::ContainersConfig,
    stop: &watch::Receiver<bool>,
) -> Vec<Arc<dyn NameSource>> {
    let mut out: Vec<Arc<dyn NameSource>> = Vec::new();
    for (kind, socket) in [("podman", &c.podman_socket), ("docker", &c.docker_socket)] {
        if let Some(socket) = socket {
            out.push(RuntimeApi::spawn(
                kind,
                ApiOptions {
                    socket: socket.clone(),
                    refresh: c.api_refresh,
                    timeout: c.api_timeout,
                    max_containers: c.api_max_containers,
                },
                stop.clone(),
            ));
        }
    }
    out
}

async fn refresh_loop(api: Arc<RuntimeApi>, opts: ApiOptions, mut stop: watch::Receiver<bool>) {
    let mut was_ok: Option<bool> = None;
    loop {
        let listing =
            tokio::time::timeout(opts.timeout, get(&opts.socket, "/containers/json?all=true"))
                .await
                .unwrap_or(Err(ApiError::Timeout(opts.timeout)))
                .and_then(|body| parse_listing(&body, opts.max_containers));
        match listing {
            Ok(names) => {
                if was_ok != Some(true) {
                    info!(source = api.kind, socket = %opts.socket.display(), containers = names.len(), "container names: runtime API reachable");
                }
                debug!(
                    source = api.kind,
                    containers = names.len(),
                    "container names refreshed"
                );
                *api.names.lock().unwrap_or_else(|e| e.into_inner()) = names;
                was_ok = Some(true);
            }
            Err(e) => {
                // Said once per change, not at every refresh: an absent runtime is normal.
                if was_ok != Some(false) {
                    match &e {
                        ApiError::Connect { source, .. }
                            if matches!(
                                source.kind(),
                                std::io::ErrorKind::NotFound
                                    | std::io::ErrorKind::ConnectionRefused
                            ) =>
                        {
                            info!(source = api.kind, socket = %opts.socket.display(), "container names: no runtime API on this socket; pairs of its containers carry ids without names")
                        }
                        _ => {
                            warn!(source = api.kind, socket = %opts.socket.display(), error = %e, "container names: runtime API failed; retrying")
                        }
                    }
                }
                was_ok = Some(false);
            }
        }
        // Next listing at the interval, or soon after a miss (not sooner than the gap).
        tokio::select! {
            _ = tokio::time::sleep(opts.refresh) => {}
            _ = api.wake.notified() => {
                tokio::select! {
                    _ = tokio::time::sleep(MIN_REFRESH_GAP.min(opts.refresh)) => {}
                    _ = stop.changed() => return,
                }
            }
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f8a1c2b4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";

    #[test]
    fn listing_is_parsed_and_bounded() {
        let body = format!(
            r#"[{{"Id":"{ID}","Names":["/web"],"Image":"x","Labels":{{"a":"b"}}}},
               {{"Id":"not-hex","Names":["/bad"]}},
               {{"Id":"{}","Names":[]}},
               {{"Id":"{}","Names":["/\u001b{}"]}}]"#,
            "a".repeat(64),
            "b".repeat(64),
            "n".repeat(300)
        );
        let got = parse_listing(body.as_bytes(), 10).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[ID], "web");
        let long = &got[&"b".repeat(64)];
        assert_eq!(long.len(), bounds::MAX_K8S_NAME_LEN);
        assert!(long.starts_with('\u{fffd}'));
        // The cap.
        assert_eq!(parse_listing(body.as_bytes(), 1).unwrap().len(), 1);
        // Not a list.
        assert!(parse_listing(br#"{"message":"page not found"}"#, 10).is_err());
        assert!(parse_listing(b"[1,2", 10).is_err());
    }

    /// A stand-in runtime API on a unix socket: one canned response per connection.
    async fn serve(path: PathBuf, status: u16, body: Vec<u8>) {
        let l = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else { return };
                let body = body.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let body = body.clone();
                            async move {
                                assert_eq!(req.uri(), "/containers/json?all=true");
                                Ok::<_, std::convert::Infallible>(
                                    hyper::Response::builder()
                                        .status(status)
                                        .body(http_body_util::Full::new(Bytes::from(body)))
                                        .unwrap(),
                                )
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
    }

    fn opts(socket: PathBuf) -> ApiOptions {
        ApiOptions {
            socket,
            refresh: Duration::from_secs(3600),
            timeout: Duration::from_secs(2),
            max_containers: 100,
        }
    }

    #[tokio::test]
    async fn names_come_from_the_socket_and_misses_refresh() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        serve(
            sock.clone(),
            200,
            format!(r#"[{{"Id":"{ID}","Names":["/tm-server"]}}]"#).into_bytes(),
        )
        .await;
        let (_tx, rx) = watch::channel(false);
        let api = RuntimeApi::spawn("podman", opts(sock), rx);
        for _ in 0..100 {
            if !api.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            api.names(ContainerRuntime::Podman, ID),
            Some(Names {
                name: Some("tm-server".into()),
                ..Names::default()
            })
        );
        assert_eq!(api.names(ContainerRuntime::Podman, &"c".repeat(64)), None);
    }

    #[tokio::test]
    async fn absent_socket_errors_and_oversized_bodies_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            get(&dir.path().join("none.sock"), "/containers/json?all=true").await,
            Err(ApiError::Connect { .. })
        ));
        let big = dir.path().join("big.sock");
        serve(big.clone(), 200, vec![b' '; MAX_RESPONSE_BYTES + 1]).await;
        assert!(matches!(
            get(&big, "/containers/json?all=true").await,
            Err(ApiError::Body(_))
        ));
        let err = dir.path().join("err.sock");
        serve(err.clone(), 500, b"[]".to_vec()).await;
        assert!(matches!(
            get(&err, "/containers/json?all=true").await,
            Err(ApiError::Status(s)) if s == 500
        ));
        // A source on an absent socket keeps answering (nothing) without blocking.
        let (_tx, rx) = watch::channel(false);
        let api = RuntimeApi::spawn("docker", opts(dir.path().join("none.sock")), rx);
        assert_eq!(api.names(ContainerRuntime::Docker, ID), None);
    }
}
