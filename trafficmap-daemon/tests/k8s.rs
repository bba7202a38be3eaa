//! The Kubernetes name source (`k8s.rs`) against recorded kubelet and API server responses
//! (tests/fixtures/k8s/, see its README) served by the test itself on 127.0.0.1: exact names per
//! container id, watch events applied, 410 answered by a re-list, RBAC 403 on ReplicaSets
//! answered by the ReplicaSet as workload, hostile responses refused with the cache kept.

use std::{
    collections::VecDeque,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{Request, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use tokio::sync::{Notify, watch};
use trafficmap_daemon::{
    k8s::{K8sMetrics, K8sSource, KubernetesConfig, KubernetesFile, Source},
    names::{NameSource, Names},
};
use trafficmap_model::report::ContainerRuntime;

const A: &str = "3f5d1c2a9b8e7f6a5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e";
const B: &str = "8a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";
const C: &str = "c0ffee0123456789abcdef0123456789abcdef0123456789abcdef0123456789";
const D: &str = "d41d8cd98f00b204e9800998ecf8427ed41d8cd98f00b204e9800998ecf8427e";
const E: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
const F: &str = "f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f00";
const G: &str = "0a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20212223242526272829";
const H: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
const I: &str = "1234567890abcdef1234567890abcdef1234567890abcdef1234567890abcdef";
const J: &str = "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8";

const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.recorded-test-token.sig";

fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/k8s")
            .join(name),
    )
    .unwrap()
}

fn names(
    name: &str,
    pod: &str,
    namespace: &str,
    workload_kind: &str,
    workload: &str,
) -> Option<Names> {
    Some(Names {
        name: Some(name.into()),
        pod: Some(pod.into()),
        namespace: Some(namespace.into()),
        workload_kind: Some(workload_kind.into()),
        workload: Some(workload.into()),
    })
}

/// One canned answer.
#[derive(Clone)]
enum Answer {
    Json(StatusCode, String),
    /// Waits for the gate, then answers.
    Gated(Arc<Notify>, Box<Answer>),
    /// Never answers.
    Hang,
}

/// The fake kubelet / API server: answers per route from queues (the last answer of a queue
/// repeats), logs every request as `METHOD path?query auth`.
#[derive(Default)]
struct Server {
    log: Mutex<Vec<String>>,
    kubelet_pods: Mutex<VecDeque<Answer>>,
    list: Mutex<VecDeque<Answer>>,
    watch: Mutex<VecDeque<Answer>>,
    replicasets: Mutex<VecDeque<Answer>>,
    jobs: Mutex<VecDeque<Answer>>,
}

fn ok(body: String) -> Answer {
    Answer::Json(StatusCode::OK, body)
}

fn next(q: &Mutex<VecDeque<Answer>>) -> Answer {
    let mut q = q.lock().unwrap();
    if q.len() > 1 {
        q.pop_front().unwrap()
    } else {
        q.front()
            .cloned()
            .unwrap_or(Answer::Json(StatusCode::NOT_FOUND, "{}".into()))
    }
}

async fn answer(a: Answer) -> Response {
    match a {
        Answer::Json(code, body) => {
            (code, [("content-type", "application/json")], body).into_response()
        }
        Answer::Gated(gate, a) => {
            gate.notified().await;
            Box::pin(answer(*a)).await
        }
        Answer::Hang => std::future::pending().await,
    }
}

async fn handle(State(s): State<Arc<Server>>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    s.log
        .lock()
        .unwrap()
        .push(format!("{} {path}?{query} {auth}", req.method()));
    let a = if path == "/pods" {
        next(&s.kubelet_pods)
    } else if path == "/api/v1/pods" && query.contains("watch=1") {
        next(&s.watch)
    } else if path == "/api/v1/pods" {
        next(&s.list)
    } else if path == "/apis/apps/v1/namespaces/shop/replicasets/web-7d4b9c8f6d" {
        next(&s.replicasets)
    } else if path == "/apis/batch/v1/namespaces/ops/jobs/backup-28867500" {
        next(&s.jobs)
    } else {
        Answer::Json(StatusCode::NOT_FOUND, fixture("forbidden.json"))
    };
    answer(a).await
}

struct Harness {
    server: Arc<Server>,
    source: Arc<K8sSource>,
    metrics: K8sMetrics,
    _stop: watch::Sender<bool>,
    _dir: PathBuf,
}

/// Serves `app` over TLS with a certificate for 127.0.0.1 signed by itself, written to
/// `ca_pem` (what a kubelet's self-signed certificate or a test cluster CA looks like).
fn serve_tls(listener: tokio::net::TcpListener, app: Router, ca_pem: &std::path::Path) {
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    std::fs::write(ca_pem, cert.cert.pem()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(
                        hyper_util::rt::TokioIo::new(tls),
                        hyper_util::service::TowerToHyperService::new(app),
                    )
                    .await;
            });
        }
    });
}

impl Harness {
    async fn start(
        server: Server,
        source: Source,
        tweak: impl FnOnce(&mut KubernetesConfig),
    ) -> Self {
        Self::start_with(server, source, false, |c, _| tweak(c)).await
    }

    /// `tls`: the server speaks HTTPS with a self-signed certificate, whose PEM file `tweak`
    /// gets.
    async fn start_with(
        server: Server,
        source: Source,
        tls: bool,
        tweak: impl FnOnce(&mut KubernetesConfig, &std::path::Path),
    ) -> Self {
        let server = Arc::new(server);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().fallback(handle).with_state(server.clone());
        let dir = std::env::temp_dir().join(format!(
            "tm-k8s-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
        let ca_pem = dir.join("server-ca.pem");
        let base = if tls {
            serve_tls(listener, app, &ca_pem);
            format!("https://{addr}")
        } else {
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
            format!("http://{addr}")
        };
        let file = KubernetesFile {
            source: Some(
                match source {
                    Source::Auto => "auto",
                    Source::Kubelet => "kubelet",
                    Source::ApiServer => "apiserver",
                    Source::Off => "off",
                }
                .into(),
            ),
            node_name: Some("node-1".into()),
            kubelet_url: Some(base.clone()),
            apiserver_url: Some(base),
            token_file: Some(dir.join("token")),
            timeout: Some("2s".into()),
            ..KubernetesFile::default()
        };
        let mut cfg = KubernetesConfig::from_file(&file, None, &|_| None).unwrap();
        // Not this machine's service account CA, if it has one.
        cfg.ca_file = dir.join("absent-ca.crt");
        cfg.miss_refresh = Duration::ZERO;
        tweak(&mut cfg, &ca_pem);
        let metrics = K8sMetrics::default();
        let (stop, stop_rx) = watch::channel(false);
        let source = K8sSource::start(cfg, metrics.clone(), stop_rx).unwrap();
        Harness {
            server,
            source,
            metrics,
            _stop: stop,
            _dir: dir,
        }
    }

    fn log(&self) -> Vec<String> {
        self.server.log.lock().unwrap().clone()
    }

    /// Waits (at most 20 s) until `ok` holds.
    async fn until(&self, what: &str, ok: impl Fn(&Self) -> bool) {
        self.until_within(what, Duration::from_secs(20), ok).await;
    }

    /// [`Harness::until`] with its own deadline, for waits that sit through backoffs.
    async fn until_within(&self, what: &str, limit: Duration, ok: impl Fn(&Self) -> bool) {
        let t = Instant::now();
        while !ok(self) {
            assert!(
                t.elapsed() < limit,
                "timed out waiting for {what}; requests: {:#?}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn names(&self, id: &str) -> Option<Names> {
        self.source.names(ContainerRuntime::Containerd, id)
    }

    fn requests(&self, prefix: &str) -> usize {
        self.log().iter().filter(|l| l.starts_with(prefix)).count()
    }
}

/// The names of every container of `kubelet-pods.json` / `apiserver-pods.json`.
fn assert_recorded_pods(h: &Harness, deployment: (&str, &str)) {
    let web = |c| {
        names(
            c,
            "web-7d4b9c8f6d-x2k9p",
            "shop",
            deployment.0,
            deployment.1,
        )
    };
    assert_eq!(h.names(A), web("web"));
    assert_eq!(h.names(B), web("envoy"));
    assert_eq!(h.names(C), web("migrate"), "init container");
    assert_eq!(
        h.names(D),
        names("postgres", "db-0", "shop", "StatefulSet", "db"),
        "cri-o id"
    );
    assert_eq!(
        h.source.names(ContainerRuntime::CriO, D),
        names("postgres", "db-0", "shop", "StatefulSet", "db")
    );
    assert_eq!(
        h.names(E),
        names(
            "kube-proxy",
            "kube-proxy-7xkzq",
            "kube-system",
            "DaemonSet",
            "kube-proxy"
        )
    );
    assert_eq!(
        h.names(F),
        names(
            "backup",
            "backup-28867500-q7w4m",
            "ops",
            "CronJob",
            "backup"
        )
    );
    assert_eq!(
        h.names(G),
        names("shell", "debug", "default", "Pod", "debug")
    );
    assert_eq!(
        h.names(H),
        names("debugger", "debug", "default", "Pod", "debug"),
        "ephemeral container"
    );
    // Six pods, the pending one without container ids.
    assert_eq!(h.source.pods(), 6);
    assert_eq!(h.metrics.pods.get(), 6);
}

/// The recorded owners the pods of both pod lists point at: the Deployment's ReplicaSet and
/// the CronJob's Job.
fn with_recorded_owners(s: Server) -> Server {
    s.replicasets
        .lock()
        .unwrap()
        .push_back(ok(fixture("replicaset-web.json")));
    s.jobs
        .lock()
        .unwrap()
        .push_back(ok(fixture("job-backup.json")));
    s
}

fn kubelet_server() -> Server {
    let s = Server::default();
    s.kubelet_pods
        .lock()
        .unwrap()
        .push_back(ok(fixture("kubelet-pods.json")));
    with_recorded_owners(s)
}

/// The API server's recorded pod list, answered once, and the owners.
fn apiserver_server() -> Server {
    let s = Server::default();
    s.list
        .lock()
        .unwrap()
        .push_back(ok(fixture("apiserver-pods.json")));
    with_recorded_owners(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_kubelet_pod_list_names_every_container() {
    let h = Harness::start(kubelet_server(), Source::Kubelet, |c| {
        c.kubelet_poll = Duration::from_secs(3600);
    })
    .await;
    h.until("the pod list", |h| h.source.pods() == 6).await;
    assert_eq!(h.source.kind(), "kubelet");
    assert_recorded_pods(&h, ("Deployment", "web"));
    // A miss asks the kubelet again (rate limited; here no minimum); owners come from the
    // cache, not from a second look-up.
    assert_eq!(h.names(&"0".repeat(64)), None);
    h.until("a second pod list", |h| h.requests("GET /pods") == 2)
        .await;
    h.until("its metrics", |h| h.metrics.count("kubelet", "ok") == 2)
        .await;
    assert_recorded_pods(&h, ("Deployment", "web"));
    let log = h.log();
    assert_eq!(
        log.iter()
            .filter(|l| l.contains("/replicasets/") || l.contains("/jobs/"))
            .cloned()
            .collect::<Vec<_>>(),
        [
            format!("GET /apis/apps/v1/namespaces/shop/replicasets/web-7d4b9c8f6d? Bearer {TOKEN}"),
            format!("GET /apis/batch/v1/namespaces/ops/jobs/backup-28867500? Bearer {TOKEN}"),
        ]
    );
    assert_eq!(log[0], format!("GET /pods? Bearer {TOKEN}"));
    assert_eq!(h.metrics.count("apiserver", "ok"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_replicaset_forbidden_falls_back_to_the_replicaset() {
    let s = kubelet_server();
    *s.replicasets.lock().unwrap() = [Answer::Json(
        StatusCode::FORBIDDEN,
        fixture("forbidden.json"),
    )]
    .into();
    let h = Harness::start(s, Source::Kubelet, |c| {
        c.kubelet_poll = Duration::from_secs(3600);
    })
    .await;
    h.until("the pod list", |h| h.source.pods() == 6).await;
    // The ReplicaSet itself, never a name guessed by cutting its pod-template-hash.
    assert_recorded_pods(&h, ("ReplicaSet", "web-7d4b9c8f6d"));
    assert_eq!(h.metrics.count("apiserver", "forbidden"), 1);
    // Not asked again at the next refresh (forbidden for a while), Jobs still resolved.
    assert_eq!(h.names(&"0".repeat(64)), None);
    h.until("a second pod list", |h| {
        h.metrics.count("kubelet", "ok") == 2
    })
    .await;
    assert_recorded_pods(&h, ("ReplicaSet", "web-7d4b9c8f6d"));
    assert_eq!(
        h.requests("GET /apis/apps/v1/namespaces/shop/replicasets/"),
        1
    );
    assert_eq!(h.metrics.count("apiserver", "forbidden"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_apiserver_list_watch_delete_and_410_relist() {
    let s = apiserver_server();
    let gate = Arc::new(Notify::new());
    *s.watch.lock().unwrap() = [
        ok(fixture("watch-events.jsonl")),
        Answer::Gated(gate.clone(), Box::new(ok(fixture("watch-gone.jsonl")))),
        Answer::Hang,
    ]
    .into();
    let h = Harness::start(s, Source::ApiServer, |_| {}).await;

    // List, first watch applied, second watch waiting at the gate.
    h.until("the second watch", |h| h.requests("GET /api/v1/pods?") == 3)
        .await;
    assert_eq!(h.source.kind(), "apiserver");
    let web = |c| names(c, "web-7d4b9c8f6d-x2k9p", "shop", "Deployment", "web");
    // MODIFIED: `web` restarted under a new id; the old one is gone.
    assert_eq!(h.names(J), web("web"));
    assert_eq!(h.names(A), None);
    assert_eq!(h.names(B), web("envoy"));
    assert_eq!(h.names(C), web("migrate"));
    // ADDED.
    assert_eq!(
        h.names(I),
        names("redis", "cache-0", "shop", "StatefulSet", "cache")
    );
    // DELETED: the bare pod and its ephemeral container.
    assert_eq!(h.names(G), None);
    assert_eq!(h.names(H), None);
    assert_eq!(
        h.names(F),
        names(
            "backup",
            "backup-28867500-q7w4m",
            "ops",
            "CronJob",
            "backup"
        )
    );
    assert_eq!(h.source.pods(), 6);
    assert_eq!(h.metrics.pods.get(), 6);

    // 410 on the second watch: a re-list (which replaces the cache: cache-0 is not in it, the
    // deleted pod is), then a watch from the new list's version.
    gate.notify_one();
    h.until("the re-list and its watch", |h| {
        h.requests("GET /api/v1/pods?") >= 5
    })
    .await;
    h.until("the re-listed pods", |h| h.names(A).is_some())
        .await;
    assert_recorded_pods(&h, ("Deployment", "web"));
    assert_eq!(h.names(I), None);
    assert_eq!(h.names(J), None);
    assert_eq!(h.metrics.count("apiserver", "gone"), 1);

    let sel = "fieldSelector=spec.nodeName%3Dnode-1";
    let auth = format!("Bearer {TOKEN}");
    // The watches' timeoutSeconds is what is left of the 10 minutes until the resync.
    let mut timeouts = Vec::new();
    let pods: Vec<String> = h
        .log()
        .into_iter()
        .filter(|l| l.starts_with("GET /api/v1/pods?"))
        .take(5)
        .map(|l| match l.split_once("&timeoutSeconds=") {
            Some((head, tail)) => {
                let (n, rest) = tail.split_once(' ').unwrap();
                timeouts.push(n.parse::<u64>().unwrap());
                format!("{head}&timeoutSeconds=T {rest}")
            }
            None => l,
        })
        .collect();
    assert_eq!(timeouts.len(), 3);
    assert!(
        timeouts.iter().all(|t| (580..=600).contains(t)),
        "{timeouts:?}"
    );
    assert_eq!(
        pods,
        [
            format!("GET /api/v1/pods?{sel} {auth}"),
            format!(
                "GET /api/v1/pods?{sel}&watch=1&resourceVersion=1000&allowWatchBookmarks=true&timeoutSeconds=T {auth}"
            ),
            format!(
                "GET /api/v1/pods?{sel}&watch=1&resourceVersion=1500&allowWatchBookmarks=true&timeoutSeconds=T {auth}"
            ),
            format!("GET /api/v1/pods?{sel} {auth}"),
            format!(
                "GET /api/v1/pods?{sel}&watch=1&resourceVersion=1000&allowWatchBookmarks=true&timeoutSeconds=T {auth}"
            ),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_pod_list_kept_when_later_answers_are_hostile() {
    let good = fixture("kubelet-pods.json");
    let s = kubelet_server();
    let big = format!(
        "{{\"kind\":\"PodList\",\"items\":[],\"pad\":\"{}\"}}",
        "x".repeat(64 << 10)
    );
    *s.kubelet_pods.lock().unwrap() = [
        ok(good.clone()),
        ok(big),
        ok(good.clone()),
        ok(good[..good.len() / 2].to_owned()),
        ok(good.clone()),
        ok("{}".into()),
        ok(good.clone()),
        ok("[]".into()),
        ok(good.clone()),
        Answer::Json(StatusCode::INTERNAL_SERVER_ERROR, "oops".into()),
        ok(r#"{"kind":"PodList","items":[{"metadata":{"ownerReferences":"x"}}]}"#.into()),
        Answer::Hang,
    ]
    .into();
    let h = Harness::start(s, Source::Kubelet, |c| {
        c.kubelet_poll = Duration::from_millis(50);
        c.limits.max_list_bytes = 32 << 10;
    })
    .await;
    // Each refused answer backs off 2-5 s before the next poll: ten of them take most of the
    // usual 20 s even on an idle machine, so this wait gets room for a loaded CI runner.
    h.until_within("every answer", Duration::from_secs(60), |h| {
        h.requests("GET /pods") == 12
    })
    .await;
    // The last refused answer left the names of the last good list.
    assert_recorded_pods(&h, ("Deployment", "web"));
    assert_eq!(h.metrics.count("kubelet", "ok"), 5);
    assert_eq!(h.metrics.count("kubelet", "too_large"), 1);
    assert_eq!(h.metrics.count("kubelet", "malformed"), 4);
    assert_eq!(h.metrics.count("kubelet", "status"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_watch_event_over_the_cap_is_refused_keeping_the_cache() {
    let s = apiserver_server();
    // One event line of 40 KiB (the cap is 16 KiB), then a malformed one.
    let big = format!(
        "{{\"type\":\"ADDED\",\"object\":{{\"metadata\":{{\"name\":\"{}\"}}}}}}\n",
        "p".repeat(40 << 10)
    );
    *s.watch.lock().unwrap() = [
        ok(big),
        ok("{\"type\":\"DELETED\",\"object\":\n".into()),
        Answer::Hang,
    ]
    .into();
    let h = Harness::start(s, Source::ApiServer, |c| {
        c.limits.max_event_bytes = 16 << 10;
    })
    .await;
    h.until("both watches and their re-lists", |h| {
        h.requests("GET /api/v1/pods?") >= 5
    })
    .await;
    assert_recorded_pods(&h, ("Deployment", "web"));
    assert_eq!(h.metrics.count("apiserver", "too_large"), 1);
    assert_eq!(h.metrics.count("apiserver", "malformed"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_apiserver_over_tls_trusts_its_ca_file() {
    let s = apiserver_server();
    s.watch.lock().unwrap().push_back(Answer::Hang);
    let h = Harness::start_with(s, Source::ApiServer, true, |c, ca| {
        c.ca_file = ca.to_owned();
    })
    .await;
    h.until("the pod list", |h| h.source.pods() == 6).await;
    assert_recorded_pods(&h, ("Deployment", "web"));
    assert_eq!(h.metrics.count("apiserver", "unreachable"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_kubelet_self_signed_needs_its_ca_or_the_insecure_switch() {
    // Without its CA: refused (TLS), nothing named.
    let h = Harness::start_with(kubelet_server(), Source::Kubelet, true, |_, _| {}).await;
    h.until("a refused kubelet", |h| {
        h.metrics.count("kubelet", "unreachable") == 1
    })
    .await;
    assert_eq!(h.source.pods(), 0);
    assert_eq!(h.names(A), None);
    // Its CA given: named.
    let h = Harness::start_with(kubelet_server(), Source::Kubelet, true, |c, ca| {
        c.kubelet_ca_file = Some(ca.to_owned());
    })
    .await;
    h.until("the pod list", |h| h.source.pods() == 6).await;
    // The insecure switch: named although the kubelet CA given is another one (the API
    // server, for the owners, is verified with its CA).
    let h = Harness::start_with(kubelet_server(), Source::Kubelet, true, |c, ca| {
        let other = ca.with_file_name("other-ca.pem");
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        std::fs::write(&other, cert.cert.pem()).unwrap();
        c.kubelet_ca_file = Some(other);
        c.ca_file = ca.to_owned();
        c.kubelet_insecure_skip_verify = true;
    })
    .await;
    h.until("the pod list", |h| h.source.pods() == 6).await;
    assert_recorded_pods(&h, ("Deployment", "web"));
}
