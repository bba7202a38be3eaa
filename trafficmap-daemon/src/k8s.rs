//! Kubernetes names of containers (issue 11): container id -> pod, namespace, container name
//! and owning workload, as a [`NameSource`].
//!
//! Two places know a node's pods:
//! - the **API server** (in-cluster service account): `GET /api/v1/pods?fieldSelector=
//!   spec.nodeName=<node>`, then a watch from that list's `resourceVersion` with bookmarks; a
//!   full re-list every `resync`, at once on `410 Gone`, after a backoff on any other error;
//! - the **kubelet** (`GET <kubelet>/pods`, the service account token or the read-only port),
//!   polled every `kubelet_poll`, and sooner (rate limited) when a lookup misses.
//!
//! Workloads come from the pod's controller `ownerReferences`: a ReplicaSet's or a Job's own
//! controller (Deployment, CronJob) is looked up once on the API server and cached (bounded);
//! without an API server, or when RBAC forbids the look-up, the ReplicaSet or Job itself is the
//! workload (said once). Nothing is guessed from names (no stripping of pod-template-hash).
//!
//! Every answer is hostile input: responses are size-capped, lists count-capped, requests
//! time out, every string that would fail the report's bounds is dropped (never emitted), and a
//! refused response leaves the cache as it was. Lookups ([`NameSource::names`]) only read the
//! cache; the refreshes run in one background task.
//!
//! HTTP is the tree's reqwest (rustls), with small serde structs for the dozen fields read:
//! kube-rs + k8s-openapi would add their own client stack and k8s-openapi's generated types
//! (one of the slowest crates to compile) for three GET endpoints.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    marker::PhantomData,
    path::PathBuf,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU8, Ordering},
    },
    time::{Duration, Instant},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use reqwest::{StatusCode, Url};
use serde::{
    Deserialize, Deserializer,
    de::{IgnoredAny, SeqAccess, Visitor},
};
use tokio::{sync::Notify, sync::watch};
use tracing::{debug, info, warn};
use trafficmap_model::{bounds, report::ContainerRuntime};

use crate::names::{NameSource, Names};

/// The service account's files in every pod that mounts its token.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Most pods kept per node (the kubelet's default `maxPods` is 110; 1024 leaves room for
/// large nodes). Pods beyond it are left out (and said once).
pub const MAX_PODS: usize = 1024;
/// Most containers read per pod and per status list (containers, init, ephemeral).
pub const MAX_CONTAINERS_PER_POD: usize = 64;
/// Most owner references read per object.
const MAX_OWNER_REFS: usize = 16;
/// Most cached owner look-ups (ReplicaSet -> Deployment, Job -> CronJob); the cache is emptied
/// when full (entries are cheap to look up again).
const MAX_OWNERS: usize = 4096;
/// Longest `resourceVersion` kept (it is opaque, but goes back into a URL).
const MAX_RESOURCE_VERSION_LEN: usize = 128;
/// Largest service account token read.
const MAX_TOKEN_BYTES: u64 = 64 << 10;
/// Projected tokens rotate (about hourly); the file is read again this often.
const TOKEN_REREAD: Duration = Duration::from_secs(60);
/// A forbidden owner look-up is not asked again for this long.
const FORBIDDEN_RETRY: Duration = Duration::from_secs(600);
/// After a failed owner look-up (timeout, 5xx), the others of its kind wait this long, so that
/// a list of a hundred pods does not wait for a hundred timeouts.
const OWNER_ERROR_RETRY: Duration = Duration::from_secs(30);

/// Where the names come from (`[kubernetes] source`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The API server if the in-cluster environment is there, else the kubelet if it answers,
    /// else off (said once).
    Auto,
    Kubelet,
    ApiServer,
    Off,
}

impl std::str::FromStr for Source {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Source::Auto),
            "kubelet" => Ok(Source::Kubelet),
            "apiserver" => Ok(Source::ApiServer),
            "off" => Ok(Source::Off),
            _ => Err(format!(
                "`{}` must be auto, kubelet, apiserver or off",
                crate::sanitize::text(s, 64)
            )),
        }
    }
}

/// Byte caps of the responses (not in the config file; tests lower them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// A pod list (API server or kubelet): ~110 pods of ~20 KiB each is ~2 MiB.
    pub max_list_bytes: usize,
    /// One ReplicaSet or Job object.
    pub max_object_bytes: usize,
    /// One line (event) of a watch stream.
    pub max_event_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_list_bytes: 32 << 20,
            max_object_bytes: 1 << 20,
            max_event_bytes: 1 << 20,
        }
    }
}

/// The validated `[kubernetes]` block.
#[derive(Clone, Debug, PartialEq)]
pub struct KubernetesConfig {
    pub source: Source,
    /// This node's name (`spec.nodeName` of its pods): `node_name`, else `$NODE_NAME`.
    pub node_name: Option<String>,
    /// The kubelet's base URL: `kubelet_url`, else `https://$HOST_IP:10250`, else
    /// `https://$NODE_NAME:10250`, else `https://127.0.0.1:10250`.
    pub kubelet_url: Url,
    /// CA of the kubelet's serving certificate (default: the service account's `ca.crt`).
    pub kubelet_ca_file: Option<PathBuf>,
    /// Accept any kubelet certificate: kubelets often serve a self-signed one. The token is
    /// then sent to whoever answers at `kubelet_url`.
    pub kubelet_insecure_skip_verify: bool,
    /// The API server: `apiserver_url`, else `https://$KUBERNETES_SERVICE_HOST:
    /// $KUBERNETES_SERVICE_PORT` (None: not in a cluster).
    pub apiserver_url: Option<Url>,
    pub token_file: PathBuf,
    pub ca_file: PathBuf,
    /// Full re-list of the API server's pods this often.
    pub resync: Duration,
    /// Kubelet poll interval.
    pub kubelet_poll: Duration,
    /// Earliest refresh after a lookup missed.
    pub miss_refresh: Duration,
    /// Timeout of every request (a watch: of its response headers and of each silence).
    pub timeout: Duration,
    pub limits: Limits,
}

/// The `[kubernetes]` block of the TOML file (every key optional).
#[derive(serde::Deserialize, serde::Serialize, Debug, Default, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KubernetesFile {
    pub source: Option<String>,
    pub node_name: Option<String>,
    pub kubelet_url: Option<String>,
    pub kubelet_ca_file: Option<PathBuf>,
    pub kubelet_insecure_skip_verify: Option<bool>,
    pub apiserver_url: Option<String>,
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub resync: Option<String>,
    pub kubelet_poll: Option<String>,
    pub timeout: Option<String>,
}

impl KubernetesConfig {
    /// Validates the block; `source_flag` is `--kubernetes`, `env` reads the environment
    /// (`NODE_NAME`, `HOST_IP`, `KUBERNETES_SERVICE_HOST`, `KUBERNETES_SERVICE_PORT`). The
    /// error is one line naming the key.
    pub fn from_file(
        f: &KubernetesFile,
        source_flag: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<KubernetesConfig, String> {
        let source: Source = source_flag
            .or(f.source.as_deref())
            .unwrap_or("auto")
            .parse()
            .map_err(|e| format!("kubernetes.source: {e}"))?;
        let env = |k: &str| env(k).filter(|v| !v.is_empty());
        let node_name = f.node_name.clone().or_else(|| env("NODE_NAME"));
        if let Some(n) = &node_name
            && (n.len() > bounds::MAX_K8S_NAME_LEN || !is_dns_subdomain(n))
        {
            return Err(format!(
                "kubernetes.node_name: `{}` is not a Kubernetes node name (a DNS subdomain of at most 253 characters)",
                crate::sanitize::text(n, 64)
            ));
        }
        let url = |key: &str, s: &str| -> Result<Url, String> {
            let u = Url::parse(s).map_err(|e| {
                format!(
                    "kubernetes.{key}: `{}` is not a URL ({e})",
                    crate::sanitize::text(s, 64)
                )
            })?;
            if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
                return Err(format!(
                    "kubernetes.{key}: `{}` must be an http:// or https:// URL",
                    crate::sanitize::text(s, 64)
                ));
            }
            Ok(u)
        };
        let kubelet_url = match &f.kubelet_url {
            Some(s) => url("kubelet_url", s)?,
            None => {
                let host = env("HOST_IP")
                    .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
                    .map(|ip| match ip {
                        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
                        v4 => v4.to_string(),
                    })
                    .or_else(|| node_name.clone())
                    .unwrap_or_else(|| "127.0.0.1".into());
                url("kubelet_url", &format!("https://{host}:10250"))?
            }
        };
        let apiserver_url = match &f.apiserver_url {
            Some(s) => Some(url("apiserver_url", s)?),
            None => match (
                env("KUBERNETES_SERVICE_HOST"),
                env("KUBERNETES_SERVICE_PORT"),
            ) {
                (Some(h), Some(p)) => {
                    let h = if h.contains(':') { format!("[{h}]") } else { h };
                    Some(url("apiserver_url", &format!("https://{h}:{p}"))?)
                }
                _ => None,
            },
        };
        let sa = PathBuf::from(SERVICE_ACCOUNT_DIR);
        let token_file = f.token_file.clone().unwrap_or_else(|| sa.join("token"));
        let ca_file = f.ca_file.clone().unwrap_or_else(|| sa.join("ca.crt"));
        // An explicitly named CA must be usable; the defaults may be absent (not in a pod).
        for (key, p) in [
            ("ca_file", f.ca_file.as_ref()),
            ("kubelet_ca_file", f.kubelet_ca_file.as_ref()),
        ] {
            if let Some(p) = p {
                let pem = std::fs::read(p)
                    .map_err(|e| format!("kubernetes.{key}: {}: {e}", p.display()))?;
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                    format!(
                        "kubernetes.{key}: {} has no usable PEM certificate ({e})",
                        p.display()
                    )
                })?;
            }
        }
        let dur = |key: &str, v: &Option<String>, default: &str, min: Duration, max: Duration| {
            let s = v.as_deref().unwrap_or(default);
            let d = humantime::parse_duration(s).map_err(|e| {
                format!(
                    "kubernetes.{key}: `{}` is not a duration ({e}); use e.g. 30s, 5m",
                    crate::sanitize::text(s, 64)
                )
            })?;
            if d < min || d > max {
                return Err(format!(
                    "kubernetes.{key}: {d:?} is out of range ({} to {})",
                    humantime::format_duration(min),
                    humantime::format_duration(max)
                ));
            }
            Ok(d)
        };
        let resync = dur(
            "resync",
            &f.resync,
            "10m",
            Duration::from_secs(60),
            Duration::from_secs(24 * 3600),
        )?;
        let kubelet_poll = dur(
            "kubelet_poll",
            &f.kubelet_poll,
            "30s",
            Duration::from_secs(5),
            Duration::from_secs(3600),
        )?;
        let timeout = dur(
            "timeout",
            &f.timeout,
            "10s",
            Duration::from_secs(1),
            Duration::from_secs(300),
        )?;
        if source == Source::ApiServer {
            if apiserver_url.is_none() {
                return Err("kubernetes.source = apiserver: no API server (set kubernetes.apiserver_url, or run in a pod where KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are set)".into());
            }
            if node_name.is_none() {
                return Err("kubernetes.source = apiserver: no node name (set kubernetes.node_name, or NODE_NAME from the downward API: fieldRef spec.nodeName)".into());
            }
        }
        Ok(KubernetesConfig {
            source,
            node_name,
            kubelet_url,
            kubelet_ca_file: f.kubelet_ca_file.clone(),
            kubelet_insecure_skip_verify: f.kubelet_insecure_skip_verify.unwrap_or(false),
            apiserver_url,
            token_file,
            ca_file,
            resync,
            kubelet_poll,
            miss_refresh: Duration::from_secs(10),
            timeout,
            limits: Limits::default(),
        })
    }
}

/// A DNS subdomain (RFC 1123): lowercase alphanumerics, `-` and `.`, alphanumeric at both ends.
fn is_dns_subdomain(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'.')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

// ---------------------------------------------------------------------------------------------
// Metrics

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct K8sLabels {
    /// `kubelet` or `apiserver`.
    pub source: String,
    /// `ok`, `forbidden` (401/403), `not_found`, `gone` (410), `status` (another HTTP status),
    /// `too_large`, `malformed`, `unreachable` (connection, TLS, timeout).
    pub result: String,
}

/// `trafficmap_k8s_requests_total{source,result}` and `trafficmap_k8s_pods`.
#[derive(Clone, Debug, Default)]
pub struct K8sMetrics {
    pub requests: Family<K8sLabels, Counter>,
    pub pods: Gauge,
}

impl K8sMetrics {
    pub fn register(registry: &mut Registry) -> K8sMetrics {
        let m = K8sMetrics::default();
        registry.register(
            "k8s_requests",
            "Requests to the kubelet or the API server for pod names, by source and result (ok, forbidden, not_found, gone, status, too_large, malformed, unreachable); watch events count as requests too",
            m.requests.clone(),
        );
        registry.register(
            "k8s_pods",
            "Pods of this node whose containers the agent can name",
            m.pods.clone(),
        );
        m
    }

    /// The count of one `{source,result}` (tests).
    pub fn count(&self, source: &str, result: &str) -> u64 {
        self.requests
            .get_or_create(&K8sLabels {
                source: source.into(),
                result: result.into(),
            })
            .get()
    }
}

// ---------------------------------------------------------------------------------------------
// Errors

#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    #[error("{0}")]
    Unreachable(String),
    #[error("HTTP {0}")]
    Status(u16),
    #[error("HTTP {0}: forbidden (RBAC)")]
    Forbidden(u16),
    #[error("not found")]
    NotFound,
    #[error("410 Gone: resourceVersion too old")]
    Gone,
    #[error("response over {0} bytes")]
    TooLarge(usize),
    #[error("malformed response: {0}")]
    Malformed(String),
}

impl K8sError {
    fn result(&self) -> &'static str {
        match self {
            K8sError::Unreachable(_) => "unreachable",
            K8sError::Status(_) => "status",
            K8sError::Forbidden(_) => "forbidden",
            K8sError::NotFound => "not_found",
            K8sError::Gone => "gone",
            K8sError::TooLarge(_) => "too_large",
            K8sError::Malformed(_) => "malformed",
        }
    }
}

fn unreachable(e: reqwest::Error) -> K8sError {
    // reqwest's Display omits the cause (connection refused, certificate); keep the chain.
    let mut s = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    K8sError::Unreachable(crate::sanitize::text(&s, 300).into_owned())
}

// ---------------------------------------------------------------------------------------------
// Wire types: only the fields read; every list capped while parsing.

/// A sequence of which the first `N` elements are kept and the rest skipped without being
/// built (so a list of a million `{}` costs its bytes, not a million structs).
#[derive(Debug)]
struct Capped<T, const N: usize> {
    items: Vec<T>,
    dropped: usize,
}

impl<T, const N: usize> Default for Capped<T, N> {
    fn default() -> Self {
        Capped {
            items: Vec::new(),
            dropped: 0,
        }
    }
}

impl<'de, T: Deserialize<'de>, const N: usize> Deserialize<'de> for Capped<T, N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T, const N: usize>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>, const N: usize> Visitor<'de> for V<T, N> {
            type Value = Capped<T, N>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list (or null)")
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Capped::default())
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(Capped::default())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Capped::<T, N>::default();
                while out.items.len() < N {
                    match seq.next_element()? {
                        Some(v) => out.items.push(v),
                        None => return Ok(out),
                    }
                }
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    out.dropped += 1;
                }
                Ok(out)
            }
        }
        d.deserialize_any(V::<T, N>(PhantomData))
    }
}

/// `null` as the default (Kubernetes omits empty fields, but a hostile server may send null).
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de> + Default>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Deserialize, Default, Debug)]
#[serde(default)]
struct PodList {
    /// `PodList`: anything else (`[]`, `{}`, a Status) is not a list, and must not empty the
    /// cache.
    kind: Option<String>,
    #[serde(deserialize_with = "nullable")]
    metadata: ListMeta,
    #[serde(deserialize_with = "nullable")]
    items: Capped<Pod, MAX_PODS>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(default, rename_all = "camelCase")]
struct ListMeta {
    resource_version: Option<String>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(default)]
struct Pod {
    #[serde(deserialize_with = "nullable")]
    metadata: ObjectMeta,
    #[serde(deserialize_with = "nullable")]
    status: PodStatus,
}

#[derive(Deserialize, Default, Debug)]
#[serde(default, rename_all = "camelCase")]
struct ObjectMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    #[serde(deserialize_with = "nullable")]
    owner_references: Capped<OwnerRef, MAX_OWNER_REFS>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(default)]
struct OwnerRef {
    kind: Option<String>,
    name: Option<String>,
    controller: Option<bool>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(default, rename_all = "camelCase")]
struct PodStatus {
    #[serde(deserialize_with = "nullable")]
    container_statuses: Capped<ContainerStatus, MAX_CONTAINERS_PER_POD>,
    #[serde(deserialize_with = "nullable")]
    init_container_statuses: Capped<ContainerStatus, MAX_CONTAINERS_PER_POD>,
    #[serde(deserialize_with = "nullable")]
    ephemeral_container_statuses: Capped<ContainerStatus, MAX_CONTAINERS_PER_POD>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(default)]
struct ContainerStatus {
    name: Option<String>,
    #[serde(rename = "containerID")]
    container_id: Option<String>,
}

/// An object read only for its owner (ReplicaSet, Job).
#[derive(Deserialize, Default, Debug)]
#[serde(default)]
struct Owned {
    kind: Option<String>,
    #[serde(deserialize_with = "nullable")]
    metadata: ObjectMeta,
}

/// An object that names its kind.
trait Kinded {
    fn kind(&self) -> Option<&str>;
}

impl Kinded for PodList {
    fn kind(&self) -> Option<&str> {
        self.kind.as_deref()
    }
}

impl Kinded for Owned {
    fn kind(&self) -> Option<&str> {
        self.kind.as_deref()
    }
}

/// One line of a watch stream.
#[derive(Deserialize, Debug)]
struct WatchEvent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    object: serde_json::Value,
}

// ---------------------------------------------------------------------------------------------
// From pods to names (pure)

/// The id part of a `containerID` (`containerd://<hex>`, `cri-o://<hex>`, `docker://<hex>`):
/// 12 to 128 characters of 0-9 a-f, as the report requires; anything else is dropped.
pub fn container_id(s: &str) -> Option<&str> {
    let (scheme, id) = s.split_once("://")?;
    let ok_scheme = !scheme.is_empty()
        && scheme.len() <= 32
        && scheme
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let ok_id = (bounds::MIN_CONTAINER_ID_LEN..=bounds::MAX_CONTAINER_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    (ok_scheme && ok_id).then_some(id)
}

/// `s` if the report would accept it as a name of at most `max` bytes.
fn bounded(s: Option<&str>, max: usize) -> Option<String> {
    s.filter(|s| !s.is_empty() && s.len() <= max && !bounds::has_control(s))
        .map(str::to_owned)
}

/// `s` if the report would accept it as a workload kind.
fn kind(s: Option<&str>) -> Option<String> {
    s.filter(|s| bounds::is_workload_kind(s)).map(str::to_owned)
}

/// The controller owner (kind, name) of an object, if both pass the bounds.
fn controller(meta: &ObjectMeta) -> Option<(String, String)> {
    let o = meta
        .owner_references
        .items
        .iter()
        .find(|o| o.controller == Some(true))?;
    Some((
        kind(o.kind.as_deref())?,
        bounded(o.name.as_deref(), bounds::MAX_K8S_NAME_LEN)?,
    ))
}

/// The cache key of a pod: its uid, else namespace/name.
fn pod_key(meta: &ObjectMeta) -> Option<String> {
    if let Some(uid) = bounded(meta.uid.as_deref(), 64) {
        return Some(uid);
    }
    Some(format!(
        "{}/{}",
        bounded(meta.namespace.as_deref(), bounds::MAX_K8S_NAMESPACE_LEN)?,
        bounded(meta.name.as_deref(), bounds::MAX_K8S_NAME_LEN)?
    ))
}

fn resource_version(s: Option<&str>) -> Option<String> {
    bounded(s, MAX_RESOURCE_VERSION_LEN)
}

/// Every container of a pod with a usable id -> its container name (None if out of bounds).
fn containers(pod: &Pod) -> Vec<(String, Option<String>)> {
    let s = &pod.status;
    s.container_statuses
        .items
        .iter()
        .chain(&s.init_container_statuses.items)
        .chain(&s.ephemeral_container_statuses.items)
        .filter_map(|c| {
            let id = container_id(c.container_id.as_deref()?)?;
            Some((
                id.to_owned(),
                bounded(c.name.as_deref(), bounds::MAX_K8S_NAME_LEN),
            ))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The source

#[derive(Default)]
struct Cache {
    /// Pod key -> its container ids.
    pods: HashMap<String, Vec<String>>,
    /// Container id -> names.
    containers: HashMap<String, Names>,
}

impl Cache {
    fn remove(&mut self, key: &str) {
        if let Some(ids) = self.pods.remove(key) {
            for id in ids {
                self.containers.remove(&id);
            }
        }
    }

    fn insert(&mut self, key: String, entries: Vec<(String, Names)>) {
        self.remove(&key);
        let ids = entries.iter().map(|(id, _)| id.clone()).collect();
        self.containers.extend(entries);
        self.pods.insert(key, ids);
    }
}

/// The workload of one owner object, as cached.
type OwnerKey = (String, &'static str, String);

const MODE_UNDECIDED: u8 = 0;
const MODE_KUBELET: u8 = 1;
const MODE_APISERVER: u8 = 2;
const MODE_OFF: u8 = 3;

/// Kubernetes names of this node's containers; see the module docs.
pub struct K8sSource {
    cfg: KubernetesConfig,
    metrics: K8sMetrics,
    cache: RwLock<Cache>,
    owners: Mutex<HashMap<OwnerKey, (String, String)>>,
    /// Owner kinds (`replicasets`, `jobs`) not asked until then (forbidden, or failing).
    paused: Mutex<HashMap<&'static str, Instant>>,
    mode: AtomicU8,
    refresh: Notify,
    last_miss: Mutex<Option<Instant>>,
    said: Mutex<HashSet<&'static str>>,
    token: Mutex<Option<(Option<String>, Instant)>>,
    api: Option<(Url, reqwest::Client)>,
    kubelet: Option<reqwest::Client>,
}

impl NameSource for K8sSource {
    fn kind(&self) -> &'static str {
        match self.mode.load(Ordering::Relaxed) {
            MODE_KUBELET => "kubelet",
            MODE_APISERVER => "apiserver",
            _ => "kubernetes",
        }
    }

    fn names(&self, _runtime: ContainerRuntime, id: &str) -> Option<Names> {
        // Keyed by id alone: ids are 64 random hex digits, and the cgroup parser's runtime and
        // the containerID's scheme do not always agree on a name (cri-containerd, cri-dockerd).
        let hit = self
            .cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .containers
            .get(id)
            .cloned();
        if hit.is_none() && self.mode.load(Ordering::Relaxed) == MODE_KUBELET {
            let mut last = self.last_miss.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_none_or(|t| t.elapsed() >= self.cfg.miss_refresh) {
                *last = Some(Instant::now());
                self.refresh.notify_one();
            }
        }
        hit
    }
}

fn client(
    cfg: &KubernetesConfig,
    ca: Option<&PathBuf>,
    insecure: bool,
) -> Result<reqwest::Client, String> {
    // No proxy: the kubelet and the in-cluster API server are reached directly.
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(cfg.timeout)
        .user_agent(concat!("trafficmap-agent/", env!("CARGO_PKG_VERSION")));
    if insecure {
        b = b.tls_danger_accept_invalid_certs(true);
    } else if let Some(ca) = ca {
        match std::fs::read(ca) {
            Ok(pem) => {
                let certs = reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| format!("{}: {e}", ca.display()))?;
                // The cluster's CA alone, not the system's: the server is the cluster's.
                b = b.tls_certs_only(certs);
            }
            Err(e) => return Err(format!("{}: {e}", ca.display())),
        }
    }
    b.build().map_err(|e| e.to_string())
}

impl K8sSource {
    /// Builds the source and starts its background task (until `stop`); None when
    /// `source = "off"`.
    pub fn start(
        cfg: KubernetesConfig,
        metrics: K8sMetrics,
        stop: watch::Receiver<bool>,
    ) -> Option<Arc<K8sSource>> {
        if cfg.source == Source::Off {
            info!("Kubernetes names: off (kubernetes.source = off)");
            return None;
        }
        // The API server's client: for the pod list (apiserver mode) and, in every mode, for
        // the owners of ReplicaSets and Jobs.
        let api = cfg.apiserver_url.as_ref().and_then(|u| {
            let ca = (u.scheme() == "https").then_some(&cfg.ca_file);
            match client(&cfg, ca, false) {
                Ok(c) => Some((u.clone(), c)),
                Err(e) => {
                    warn!(error = %e, "Kubernetes names: no API server client (its CA is unreadable)");
                    None
                }
            }
        });
        let kubelet_ca = cfg
            .kubelet_ca_file
            .clone()
            .or_else(|| cfg.ca_file.is_file().then(|| cfg.ca_file.clone()));
        let kubelet = match client(
            &cfg,
            kubelet_ca
                .as_ref()
                .filter(|_| cfg.kubelet_url.scheme() == "https"),
            cfg.kubelet_insecure_skip_verify,
        ) {
            Ok(c) => Some(c),
            Err(e) => {
                warn!(error = %e, "Kubernetes names: no kubelet client (its CA is unreadable)");
                None
            }
        };
        let me = Arc::new(K8sSource {
            cfg,
            metrics,
            cache: RwLock::default(),
            owners: Mutex::default(),
            paused: Mutex::default(),
            mode: AtomicU8::new(MODE_UNDECIDED),
            refresh: Notify::new(),
            last_miss: Mutex::default(),
            said: Mutex::default(),
            token: Mutex::default(),
            api,
            kubelet,
        });
        tokio::spawn(me.clone().run(stop));
        Some(me)
    }

    /// Pods in the cache.
    pub fn pods(&self) -> usize {
        self.cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .pods
            .len()
    }

    /// Whether `what` is said for the first time.
    fn once(&self, what: &'static str) -> bool {
        self.said
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(what)
    }

    async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mode = match self.cfg.source {
            Source::ApiServer => MODE_APISERVER,
            Source::Kubelet => MODE_KUBELET,
            Source::Off => MODE_OFF,
            Source::Auto => {
                if self.api.is_some() && self.cfg.node_name.is_some() {
                    MODE_APISERVER
                } else {
                    match self.kubelet_refresh().await {
                        Ok(()) => MODE_KUBELET,
                        Err(e) => {
                            info!(
                                kubelet = %self.cfg.kubelet_url,
                                error = %e,
                                "Kubernetes names: off (no in-cluster API server with NODE_NAME, no kubelet answering); containers keep their runtime names only"
                            );
                            MODE_OFF
                        }
                    }
                }
            }
        };
        self.mode.store(mode, Ordering::Relaxed);
        match mode {
            MODE_APISERVER => self.apiserver_loop(&mut stop).await,
            MODE_KUBELET => self.kubelet_loop(&mut stop).await,
            _ => {}
        }
    }

    /// Sleeps `d`; false if `stop` came first.
    async fn sleep(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = stop.changed() => false,
        }
    }

    fn count(&self, source: &'static str, result: &'static str) {
        self.metrics
            .requests
            .get_or_create(&K8sLabels {
                source: source.into(),
                result: result.into(),
            })
            .inc();
    }

    /// The service account token, read again every minute (projected tokens rotate); None
    /// when there is none (the kubelet's read-only port needs none).
    fn bearer(&self) -> Option<String> {
        let mut t = self.token.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((tok, at)) = &*t
            && at.elapsed() < TOKEN_REREAD
        {
            return tok.clone();
        }
        let read = || -> std::io::Result<String> {
            use std::io::Read;
            let mut s = String::new();
            std::fs::File::open(&self.cfg.token_file)?
                .take(MAX_TOKEN_BYTES)
                .read_to_string(&mut s)?;
            Ok(s.trim().to_owned())
        };
        let tok = match read() {
            Ok(s) if !s.is_empty() && !s.bytes().any(|b| b.is_ascii_control()) => Some(s),
            Ok(_) => None,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::NotFound && self.once("token") {
                    warn!(file = %self.cfg.token_file.display(), error = %e, "Kubernetes names: service account token unreadable; asking without it");
                }
                None
            }
        };
        *t = Some((tok.clone(), Instant::now()));
        tok
    }

    /// Sends `req` (with the token) and checks the status: the response to read.
    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        source: &'static str,
    ) -> Result<reqwest::Response, K8sError> {
        let mut req = req.header(reqwest::header::ACCEPT, "application/json");
        if let Some(t) = self.bearer() {
            req = req.bearer_auth(t);
        }
        let resp = match tokio::time::timeout(self.cfg.timeout, req.send()).await {
            Err(_) => Err(K8sError::Unreachable("timed out".into())),
            Ok(Err(e)) => Err(unreachable(e)),
            Ok(Ok(r)) => match r.status() {
                s if s.is_success() => Ok(r),
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    Err(K8sError::Forbidden(r.status().as_u16()))
                }
                StatusCode::NOT_FOUND => Err(K8sError::NotFound),
                StatusCode::GONE => Err(K8sError::Gone),
                s => Err(K8sError::Status(s.as_u16())),
            },
        };
        if let Err(e) = &resp {
            self.count(source, e.result());
        }
        resp
    }

    /// GETs `url` and parses its body of at most `cap` bytes as `T`, an object of `kind`;
    /// counts the result.
    async fn get_json<T: for<'de> Deserialize<'de> + Kinded>(
        &self,
        client: &reqwest::Client,
        url: Url,
        cap: usize,
        kind: &str,
        source: &'static str,
    ) -> Result<T, K8sError> {
        let mut resp = self
            .send(client.get(url).timeout(self.cfg.timeout), source)
            .await?;
        let body = async {
            if resp.content_length().is_some_and(|n| n > cap as u64) {
                return Err(K8sError::TooLarge(cap));
            }
            let mut buf = Vec::new();
            while let Some(c) = resp.chunk().await.map_err(unreachable)? {
                if buf.len() + c.len() > cap {
                    return Err(K8sError::TooLarge(cap));
                }
                buf.extend_from_slice(&c);
            }
            let v = serde_json::from_slice::<T>(&buf)
                .map_err(|e| K8sError::Malformed(e.to_string()))?;
            if v.kind() != Some(kind) {
                return Err(K8sError::Malformed(format!(
                    "expected a {kind}, got kind {:?}",
                    v.kind().map(|k| crate::sanitize::text(k, 64))
                )));
            }
            Ok(v)
        }
        .await;
        self.count(
            source,
            match &body {
                Ok(_) => "ok",
                Err(e) => e.result(),
            },
        );
        body
    }

    /// Names of every container of `pod`, its workload resolved; None for a pod without a
    /// usable key.
    async fn pod_names(&self, pod: &Pod) -> Option<(String, Vec<(String, Names)>)> {
        let key = pod_key(&pod.metadata)?;
        let ids = containers(pod);
        if pod.status.container_statuses.dropped
            + pod.status.init_container_statuses.dropped
            + pod.status.ephemeral_container_statuses.dropped
            > 0
            && self.once("containers_cap")
        {
            warn!(
                pod = %key,
                "Kubernetes names: a pod has more than {MAX_CONTAINERS_PER_POD} containers in one status list; the rest are not named"
            );
        }
        let name = bounded(pod.metadata.name.as_deref(), bounds::MAX_K8S_NAME_LEN);
        let namespace = bounded(
            pod.metadata.namespace.as_deref(),
            bounds::MAX_K8S_NAMESPACE_LEN,
        );
        let (workload_kind, workload) = match controller(&pod.metadata) {
            None if pod
                .metadata
                .owner_references
                .items
                .iter()
                .any(|o| o.controller == Some(true)) =>
            {
                // A controller whose kind or name breaks the bounds: no workload at all
                // rather than a wrong one.
                (None, None)
            }
            None => (name.clone().map(|_| "Pod".to_owned()), name.clone()),
            // Owners are looked up only under names Kubernetes could have given (they go into
            // a URL path); any other is its own workload.
            Some((k, n)) => match (k.as_str(), namespace.as_deref()) {
                ("ReplicaSet", Some(ns)) if is_dns_subdomain(ns) && is_dns_subdomain(&n) => {
                    self.owner(ns, "replicasets", k, n).await
                }
                ("Job", Some(ns)) if is_dns_subdomain(ns) && is_dns_subdomain(&n) => {
                    self.owner(ns, "jobs", k, n).await
                }
                _ => (Some(k), Some(n)),
            },
        };
        let names = Names {
            name: None,
            pod: name,
            namespace,
            workload_kind,
            workload,
        };
        Some((
            key,
            ids.into_iter()
                .map(|(id, cname)| {
                    (
                        id,
                        Names {
                            name: cname,
                            ..names.clone()
                        },
                    )
                })
                .collect(),
        ))
    }

    /// The workload of a ReplicaSet or Job `kind`/`name`: its controller (Deployment, CronJob),
    /// else itself.
    async fn owner(
        &self,
        ns: &str,
        resource: &'static str,
        kind: String,
        name: String,
    ) -> (Option<String>, Option<String>) {
        let itself = (Some(kind), Some(name.clone()));
        let key = (ns.to_owned(), resource, name);
        if let Some((k, n)) = self
            .owners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return (Some(k.clone()), Some(n.clone()));
        }
        let Some((base, client)) = &self.api else {
            if self.once("owners_no_api") {
                info!(
                    "Kubernetes names: no API server to ask for the owners of ReplicaSets and Jobs; they are reported as their own workloads"
                );
            }
            return itself;
        };
        if self
            .paused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(resource)
            .is_some_and(|until| Instant::now() < *until)
        {
            return itself;
        }
        let pause = |d: Duration| {
            self.paused
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(resource, Instant::now() + d);
        };
        let group = if resource == "jobs" {
            "apis/batch/v1"
        } else {
            "apis/apps/v1"
        };
        let mut url = base.clone();
        url.path_segments_mut()
            .map(|mut p| {
                p.pop_if_empty();
                p.extend(group.split('/'));
                p.extend(["namespaces", ns, resource, &key.2]);
            })
            .ok();
        let got = self
            .get_json::<Owned>(
                client,
                url,
                self.cfg.limits.max_object_bytes,
                if resource == "jobs" {
                    "Job"
                } else {
                    "ReplicaSet"
                },
                "apiserver",
            )
            .await;
        let workload = match got {
            Ok(o) => controller(&o.metadata).unwrap_or_else(|| {
                (
                    itself.0.clone().unwrap_or_default(),
                    itself.1.clone().unwrap_or_default(),
                )
            }),
            Err(K8sError::NotFound) => (
                itself.0.clone().unwrap_or_default(),
                itself.1.clone().unwrap_or_default(),
            ),
            Err(K8sError::Forbidden(code)) => {
                let what = if resource == "jobs" {
                    "forbidden_jobs"
                } else {
                    "forbidden_replicasets"
                };
                if self.once(what) {
                    warn!(
                        status = code,
                        resource,
                        "Kubernetes names: RBAC forbids reading {resource}; their pods' workload is the {} itself (grant get on {resource}, see docs/agent.md, \"Kubernetes\")",
                        itself.0.as_deref().unwrap_or("owner")
                    );
                }
                pause(FORBIDDEN_RETRY);
                return itself;
            }
            Err(e) => {
                debug!(error = %e, resource, "Kubernetes names: owner look-up failed; retried at a later refresh");
                pause(OWNER_ERROR_RETRY);
                return itself;
            }
        };
        let mut owners = self.owners.lock().unwrap_or_else(|e| e.into_inner());
        if owners.len() >= MAX_OWNERS {
            owners.clear();
        }
        owners.insert(key, workload.clone());
        (Some(workload.0), Some(workload.1))
    }

    /// Replaces the cache with `list`'s pods.
    async fn replace(&self, list: PodList, source: &'static str) {
        if list.items.dropped > 0 && self.once("pods_cap") {
            warn!(
                source,
                dropped = list.items.dropped,
                "Kubernetes names: more than {MAX_PODS} pods on this node; the rest are not named"
            );
        }
        let mut fresh = Cache::default();
        for pod in &list.items.items {
            if let Some((key, entries)) = self.pod_names(pod).await {
                fresh.insert(key, entries);
            }
        }
        let n = fresh.pods.len();
        *self.cache.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        self.metrics.pods.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    // ----- kubelet

    async fn kubelet_refresh(&self) -> Result<(), K8sError> {
        let Some(client) = &self.kubelet else {
            return Err(K8sError::Unreachable("no kubelet client".into()));
        };
        let mut url = self.cfg.kubelet_url.clone();
        url.path_segments_mut()
            .map(|mut p| {
                p.pop_if_empty();
                p.push("pods");
            })
            .ok();
        let list: PodList = self
            .get_json(
                client,
                url,
                self.cfg.limits.max_list_bytes,
                "PodList",
                "kubelet",
            )
            .await?;
        self.replace(list, "kubelet").await;
        Ok(())
    }

    async fn kubelet_loop(&self, stop: &mut watch::Receiver<bool>) {
        let mut failures = 0u32;
        loop {
            match self.kubelet_refresh().await {
                Ok(()) => {
                    if failures > 0 {
                        info!("Kubernetes names: the kubelet answers again");
                    }
                    failures = 0;
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    if failures == 1 {
                        warn!(kubelet = %self.cfg.kubelet_url, error = %e, "Kubernetes names: kubelet pod list refused; keeping the names known so far");
                    }
                }
            }
            let wait = if failures > 0 {
                crate::ship::backoff(failures).max(self.cfg.miss_refresh)
            } else {
                self.cfg.kubelet_poll
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                // A lookup missed: a new pod, maybe (rate limited in `names`).
                _ = self.refresh.notified(), if failures == 0 => {}
                _ = stop.changed() => return,
            }
        }
    }

    // ----- API server

    fn pods_url(&self, base: &Url) -> Url {
        let mut url = base.clone();
        url.path_segments_mut()
            .map(|mut p| {
                p.pop_if_empty();
                p.extend(["api", "v1", "pods"]);
            })
            .ok();
        url.query_pairs_mut().append_pair(
            "fieldSelector",
            &format!(
                "spec.nodeName={}",
                self.cfg.node_name.as_deref().unwrap_or_default()
            ),
        );
        url
    }

    async fn apiserver_loop(&self, stop: &mut watch::Receiver<bool>) {
        let Some((base, client)) = &self.api else {
            warn!("Kubernetes names: off (no API server client)");
            return;
        };
        let mut failures = 0u32;
        loop {
            // List, then watch from the list's version until the resync is due.
            let listed = self
                .get_json::<PodList>(
                    client,
                    self.pods_url(base),
                    self.cfg.limits.max_list_bytes,
                    "PodList",
                    "apiserver",
                )
                .await;
            let mut rv = match listed {
                Ok(list) => {
                    let rv = resource_version(list.metadata.resource_version.as_deref());
                    self.replace(list, "apiserver").await;
                    rv
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    if failures == 1 {
                        warn!(error = %e, "Kubernetes names: API server pod list refused; keeping the names known so far, retrying with backoff");
                    }
                    if !Self::sleep(stop, crate::ship::backoff(failures)).await {
                        return;
                    }
                    continue;
                }
            };
            let deadline = Instant::now() + self.cfg.resync;
            let mut error = None;
            while let Some(from) = rv.clone() {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let mut url = self.pods_url(base);
                url.query_pairs_mut()
                    .append_pair("watch", "1")
                    .append_pair("resourceVersion", &from)
                    .append_pair("allowWatchBookmarks", "true")
                    .append_pair("timeoutSeconds", &left.as_secs().max(1).to_string());
                let began = Instant::now();
                tokio::select! {
                    r = self.watch(client, url, &mut rv) => match r {
                        Ok(()) => {
                            // A server that ends every watch at once is not followed in a
                            // busy loop.
                            if began.elapsed() < Duration::from_secs(1)
                                && !Self::sleep(stop, Duration::from_secs(1)).await
                            {
                                return;
                            }
                            if failures > 0 {
                                info!("Kubernetes names: API server watch running again");
                            }
                            failures = 0;
                        }
                        Err(e) => {
                            error = Some(e);
                            break;
                        }
                    },
                    _ = stop.changed() => return,
                }
            }
            match error {
                // Too old a version: re-list at once.
                Some(K8sError::Gone) => debug!("Kubernetes names: watch expired (410); re-listing"),
                Some(e) => {
                    failures = failures.saturating_add(1);
                    if failures == 1 {
                        warn!(error = %e, "Kubernetes names: API server watch failed; keeping the names known so far, re-listing with backoff");
                    }
                    if !Self::sleep(stop, crate::ship::backoff(failures)).await {
                        return;
                    }
                }
                // No version to watch from: the next list after a resync period.
                None if rv.is_none() && !Self::sleep(stop, self.cfg.resync).await => return,
                // Resync due.
                None => {}
            }
        }
    }

    /// Follows one watch stream, applying its events to the cache and `rv`; Ok when the
    /// server ends it.
    async fn watch(
        &self,
        client: &reqwest::Client,
        url: Url,
        rv: &mut Option<String>,
    ) -> Result<(), K8sError> {
        let mut resp = self.send(client.get(url), "apiserver").await?;
        let max = self.cfg.limits.max_event_bytes;
        let mut lines = Lines::new(max);
        loop {
            // Bookmarks come about every minute; a longer silence is a dead connection.
            let chunk = match tokio::time::timeout(
                self.cfg.timeout.max(Duration::from_secs(90)),
                resp.chunk(),
            )
            .await
            {
                Err(_) => Err(K8sError::Unreachable("watch silent too long".into())),
                Ok(Err(e)) => Err(unreachable(e)),
                Ok(Ok(c)) => Ok(c),
            };
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    self.count("apiserver", e.result());
                    return Err(e);
                }
            };
            let Some(chunk) = chunk else {
                return Ok(());
            };
            lines.push(&chunk);
            loop {
                let line = match lines.next_line() {
                    Ok(Some(line)) => line,
                    Ok(None) => break,
                    Err(e) => {
                        self.count("apiserver", "too_large");
                        return Err(e);
                    }
                };
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let r = self.event(line, rv).await;
                self.count(
                    "apiserver",
                    match &r {
                        Ok(()) => "ok",
                        Err(e) => e.result(),
                    },
                );
                r?;
            }
            if let Err(e) = lines.check_rest() {
                self.count("apiserver", "too_large");
                return Err(e);
            }
        }
    }

    /// Applies one watch event.
    async fn event(&self, line: &[u8], rv: &mut Option<String>) -> Result<(), K8sError> {
        let ev: WatchEvent =
            serde_json::from_slice(line).map_err(|e| K8sError::Malformed(e.to_string()))?;
        if ev.kind == "ERROR" {
            let code = ev.object.get("code").and_then(serde_json::Value::as_u64);
            return Err(match code {
                Some(410) => K8sError::Gone,
                Some(c) => K8sError::Status(u16::try_from(c).unwrap_or(0)),
                None => K8sError::Malformed("ERROR event without a code".into()),
            });
        }
        let pod = Pod::deserialize(ev.object).map_err(|e| K8sError::Malformed(e.to_string()))?;
        let version = resource_version(pod.metadata.resource_version.as_deref());
        match ev.kind.as_str() {
            "ADDED" | "MODIFIED" => {
                if let Some((key, entries)) = self.pod_names(&pod).await {
                    let mut c = self.cache.write().unwrap_or_else(|e| e.into_inner());
                    if c.pods.len() >= MAX_PODS && !c.pods.contains_key(&key) {
                        if self.once("pods_cap") {
                            warn!(
                                "Kubernetes names: more than {MAX_PODS} pods on this node; the rest are not named"
                            );
                        }
                    } else {
                        c.insert(key, entries);
                    }
                    self.metrics
                        .pods
                        .set(i64::try_from(c.pods.len()).unwrap_or(i64::MAX));
                }
            }
            "DELETED" => {
                if let Some(key) = pod_key(&pod.metadata) {
                    let mut c = self.cache.write().unwrap_or_else(|e| e.into_inner());
                    c.remove(&key);
                    self.metrics
                        .pods
                        .set(i64::try_from(c.pods.len()).unwrap_or(i64::MAX));
                }
            }
            "BOOKMARK" => {}
            other => {
                debug!(kind = %crate::sanitize::text(other, 32), "Kubernetes names: unknown watch event ignored");
                return Ok(());
            }
        }
        if version.is_some() {
            *rv = version;
        }
        Ok(())
    }
}

/// Splits a watch stream's chunks into lines of at most `max` bytes (newline included).
///
/// Only the bytes of a new chunk are searched (the rest is known to hold no newline), lines are
/// split by index, and the consumed ones are drained once per chunk: a large event in small
/// chunks, or a stream of newlines, costs linear time.
struct Lines {
    buf: Vec<u8>,
    /// Start of the first line not yet returned.
    start: usize,
    /// `buf[start..scanned]` holds no newline.
    scanned: usize,
    max: usize,
}

impl Lines {
    fn new(max: usize) -> Lines {
        Lines {
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            max,
        }
    }

    /// Appends a chunk, dropping the lines returned since the last one.
    fn push(&mut self, chunk: &[u8]) {
        self.buf.drain(..self.start);
        self.scanned = self.scanned.saturating_sub(self.start);
        self.start = 0;
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete line, newline included; `TooLarge` when it is over the cap.
    fn next_line(&mut self) -> Result<Option<&[u8]>, K8sError> {
        let Some(at) = self.buf[self.scanned..].iter().position(|b| *b == b'\n') else {
            self.scanned = self.buf.len();
            return Ok(None);
        };
        let (start, end) = (self.start, self.scanned + at + 1);
        self.start = end;
        self.scanned = end;
        if end - start > self.max {
            return Err(K8sError::TooLarge(self.max));
        }
        Ok(Some(&self.buf[start..end]))
    }

    /// `TooLarge` when the incomplete line is already over the cap.
    fn check_rest(&self) -> Result<(), K8sError> {
        if self.buf.len() - self.start > self.max {
            return Err(K8sError::TooLarge(self.max));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every line as `Lines` returns it from `stream` pushed in chunks of `n` bytes, and the
    /// first error (per-line or rest over the cap).
    fn split(stream: &[u8], n: usize, max: usize) -> (Vec<Vec<u8>>, Option<String>) {
        let mut lines = Lines::new(max);
        let mut out = Vec::new();
        for chunk in stream.chunks(n) {
            lines.push(chunk);
            loop {
                match lines.next_line() {
                    Ok(Some(l)) => out.push(l.to_vec()),
                    Ok(None) => break,
                    Err(e) => return (out, Some(e.to_string())),
                }
            }
            if let Err(e) = lines.check_rest() {
                return (out, Some(e.to_string()));
            }
        }
        (out, None)
    }

    /// Lines split across chunks of any size come out whole, newline included, blank ones
    /// too; a line over the cap is refused whether it is complete in a chunk or not.
    #[test]
    fn watch_lines_are_split_across_chunks_within_the_cap() {
        let event = format!("{{\"type\":\"ADDED\",\"pad\":\"{}\"}}\n", "x".repeat(1000));
        let stream = format!("a\n\n{event}\n\nbc\n");
        let want: Vec<Vec<u8>> = ["a\n", "\n", &event, "\n", "\n", "bc\n"]
            .iter()
            .map(|l| l.as_bytes().to_vec())
            .collect();
        for n in [1, 2, 3, 7, 64, 1000, 1024, stream.len()] {
            assert_eq!(
                split(stream.as_bytes(), n, event.len()),
                (want.clone(), None),
                "{n}"
            );
        }
        // One byte under: the event line is refused in any chunking, the lines before it kept.
        let too_large = K8sError::TooLarge(event.len() - 1).to_string();
        for n in [1, 5, 1000, stream.len()] {
            assert_eq!(
                split(stream.as_bytes(), n, event.len() - 1),
                (want[..2].to_vec(), Some(too_large.clone())),
                "{n}"
            );
        }
        // An incomplete line over the cap is refused before its newline comes.
        let (got, err) = split(&[b'x'; 100], 10, 50);
        assert!(got.is_empty());
        assert_eq!(err, Some(K8sError::TooLarge(50).to_string()));
        // A stream of newlines in one-byte chunks: one blank line each.
        let (got, err) = split(&[b'\n'; 10_000], 1, 16);
        assert_eq!((got.len(), err), (10_000, None));
    }

    #[test]
    fn metrics_names_as_documented() {
        let mut registry = Registry::with_prefix("trafficmap");
        let m = K8sMetrics::register(&mut registry);
        m.requests
            .get_or_create(&K8sLabels {
                source: "apiserver".into(),
                result: "gone".into(),
            })
            .inc();
        m.pods.set(6);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(
                "\ntrafficmap_k8s_requests_total{source=\"apiserver\",result=\"gone\"} 1\n"
            ),
            "{text}"
        );
        assert!(text.contains("\ntrafficmap_k8s_pods 6\n"), "{text}");
        assert_eq!(m.count("apiserver", "gone"), 1);
    }

    #[test]
    fn container_ids_of_each_runtime() {
        let hex = "3f5d1c2a9b8e7f6a5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e";
        for s in ["containerd", "cri-o", "docker"] {
            assert_eq!(container_id(&format!("{s}://{hex}")), Some(hex));
        }
        for bad in [
            hex.to_string(),
            format!("containerd://{}", hex.to_uppercase()),
            "containerd://abc".into(),
            format!("containerd://{}", "a".repeat(129)),
            format!("://{hex}"),
            format!("Containerd://{hex}"),
            format!("containerd://{hex}/x"),
            String::new(),
        ] {
            assert_eq!(container_id(&bad), None, "{bad}");
        }
        assert_eq!(
            container_id(&format!("containerd://{}", "a".repeat(128))).map(str::len),
            Some(128)
        );
    }

    #[test]
    fn out_of_bound_names_are_dropped_never_emitted() {
        assert_eq!(
            bounded(Some(&"p".repeat(253)), 253).map(|s| s.len()),
            Some(253)
        );
        assert_eq!(bounded(Some(&"p".repeat(254)), 253), None);
        assert_eq!(bounded(Some("a\u{1b}[31m"), 253), None);
        assert_eq!(bounded(Some(""), 253), None);
        // Owner look-ups (a URL path) only under Kubernetes' own name syntax.
        for ok in ["web-7d4b9c8f6d", "a.b", "0"] {
            assert!(is_dns_subdomain(ok), "{ok}");
        }
        for bad in ["..", ".", "a/b", "Web", "-a", "a-", "", "a%2F"] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
        assert_eq!(kind(Some("Deployment")), Some("Deployment".into()));
        assert_eq!(kind(Some("My-Kind")), None);
        assert_eq!(kind(Some(&"K".repeat(64))), None);
    }

    #[test]
    fn lists_are_capped_while_parsing() {
        let items = vec![serde_json::json!({}); MAX_PODS + 5];
        let list: PodList = serde_json::from_value(serde_json::json!({ "items": items })).unwrap();
        assert_eq!(list.items.items.len(), MAX_PODS);
        assert_eq!(list.items.dropped, 5);
        let list: PodList =
            serde_json::from_str(r#"{"kind":"PodList","items":null,"metadata":null}"#).unwrap();
        assert_eq!(list.items.items.len(), 0);
    }

    #[test]
    fn only_a_pod_list_is_a_pod_list() {
        for doc in ["[]", "{}", r#"{"kind":"Status","code":500}"#] {
            let l: PodList = serde_json::from_str(doc).unwrap();
            assert_ne!(l.kind(), Some("PodList"), "{doc}");
        }
    }

    #[test]
    fn hostile_json_is_an_error_not_a_panic() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        for doc in [
            "",
            "null",
            "{\"items\":{}}",
            "{\"items\":[1,2]}",
            "{\"items\":[{\"metadata\":{\"ownerReferences\":\"x\"}}]}",
            "{\"items\":[{\"status\":{\"containerStatuses\":[{\"containerID\":7}]}}]}",
            deep.as_str(),
            "\u{0}",
        ] {
            assert!(serde_json::from_str::<PodList>(doc).is_err(), "{doc:.40}");
        }
    }

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn config_defaults_from_the_in_cluster_environment() {
        let c = KubernetesConfig::from_file(
            &KubernetesFile::default(),
            None,
            &env(&[
                ("NODE_NAME", "node-1"),
                ("HOST_IP", "10.0.0.7"),
                ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
                ("KUBERNETES_SERVICE_PORT", "443"),
            ]),
        )
        .unwrap();
        assert_eq!(c.source, Source::Auto);
        assert_eq!(c.node_name.as_deref(), Some("node-1"));
        assert_eq!(c.kubelet_url.as_str(), "https://10.0.0.7:10250/");
        assert_eq!(
            c.apiserver_url.as_ref().map(Url::as_str),
            Some("https://10.96.0.1/")
        );
        assert_eq!(
            c.token_file,
            PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token")
        );
        assert_eq!(c.resync, Duration::from_secs(600));
        assert_eq!(c.kubelet_poll, Duration::from_secs(30));
        assert!(!c.kubelet_insecure_skip_verify);
        let c = KubernetesConfig::from_file(&KubernetesFile::default(), None, &env(&[])).unwrap();
        assert_eq!(c.kubelet_url.as_str(), "https://127.0.0.1:10250/");
        assert_eq!(c.apiserver_url, None);
        let c = KubernetesConfig::from_file(
            &KubernetesFile::default(),
            Some("off"),
            &env(&[("NODE_NAME", "node-2")]),
        )
        .unwrap();
        assert_eq!(c.source, Source::Off);
        assert_eq!(c.kubelet_url.as_str(), "https://node-2:10250/");
    }

    #[test]
    fn config_errors_are_one_line_naming_the_key() {
        let f = |toml: &str| toml::from_str::<KubernetesFile>(toml).unwrap();
        let cases = [
            (
                "source = \"yes\"",
                "kubernetes.source: `yes` must be auto, kubelet, apiserver or off",
            ),
            (
                "source = \"apiserver\"",
                "kubernetes.source = apiserver: no API server",
            ),
            (
                "source = \"apiserver\"\napiserver_url = \"https://10.96.0.1\"",
                "kubernetes.source = apiserver: no node name",
            ),
            (
                "node_name = \"Node_1\"",
                "kubernetes.node_name: `Node_1` is not a Kubernetes node name",
            ),
            (
                "kubelet_url = \"ftp://x\"",
                "kubernetes.kubelet_url: `ftp://x` must be an http",
            ),
            (
                "apiserver_url = \"::\"",
                "kubernetes.apiserver_url: `::` is not a URL",
            ),
            (
                "resync = \"1s\"",
                "kubernetes.resync: 1s is out of range (1m to 1day)",
            ),
            (
                "kubelet_poll = \"often\"",
                "kubernetes.kubelet_poll: `often` is not a duration",
            ),
            (
                "timeout = \"1h\"",
                "kubernetes.timeout: 3600s is out of range (1s to 5m)",
            ),
            (
                "ca_file = \"/nonexistent/ca.crt\"",
                "kubernetes.ca_file: /nonexistent/ca.crt: ",
            ),
        ];
        for (toml, want) in cases {
            let err = KubernetesConfig::from_file(&f(toml), None, &env(&[])).unwrap_err();
            assert!(err.starts_with(want), "{toml}: got `{err}`");
            assert!(!err.contains('\n'));
        }
        assert!(toml::from_str::<KubernetesFile>("sauce = \"auto\"").is_err());
    }
}
