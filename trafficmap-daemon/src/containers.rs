//! Which container a process runs in (issue 11), from the cgroup id the probe records.
//!
//! Two parts:
//! - [`parse_cgroup_path`], pure: a cgroup v2 path to the container's runtime and id (and the
//!   Kubernetes pod UID where the path has one), for the systemd and cgroupfs layouts of
//!   Docker, containerd, CRI-O and podman, nested containers included.
//! - [`Resolver`]: cgroup id to cgroup path by walking the cgroup2 mount (a cgroup's id is the
//!   inode number of its directory there), with a bounded cache, a negative cache and rescans
//!   rate-limited on a miss; then names from each [`NameSource`] in turn.
//!
//! A process outside any container (a host process, a plain systemd service) has no container.

use std::{
    collections::HashMap,
    os::unix::fs::{DirEntryExt as _, MetadataExt as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};
use tracing::{debug, info, warn};
use trafficmap_model::{
    bounds,
    report::{Container, ContainerRuntime},
};

use crate::names::{NameSource, Names};

/// What a cgroup path says about its container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupContainer {
    pub runtime: ContainerRuntime,
    /// Full hex id, lowercase, within the report's container id bounds.
    pub id: String,
    /// Kubernetes pod UID (`kubepods...pod<uid>`), with dashes; for logs.
    pub pod_uid: Option<String>,
}

/// Whether `s` is a container id the report accepts: lowercase hex, 12 to 128 characters.
fn is_id(s: &str) -> bool {
    (bounds::MIN_CONTAINER_ID_LEN..=bounds::MAX_CONTAINER_ID_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A bare directory name taken as a container id: exactly 64 hex characters (what Docker,
/// containerd, CRI-O and podman generate). Shorter hex names are too common to be evidence.
fn is_bare_id(s: &str) -> bool {
    s.len() == 64 && is_id(s)
}

/// Prefixes of container cgroups. Sources of the layouts:
/// - Docker: `docker-<id>.scope` (systemd driver), `/docker/<id>` (cgroupfs driver):
///   moby `daemon/oci_linux.go` (`getCgroupsPath`: "system.slice:docker:<id>" with systemd,
///   `/docker/<id>` otherwise) and docs.docker.com "Runtime metrics" (cgroup paths).
/// - containerd's CRI plugin: `cri-containerd-<id>.scope` (systemd driver): containerd
///   `internal/cri/server/container_create_linux.go` (`getCgroupsPath`, prefix
///   "cri-containerd"); with cgroupfs the container directory is the bare id under the pod.
/// - CRI-O: `crio-<id>.scope` and `crio-conmon-<id>.scope` (systemd), `crio-<id>` (cgroupfs):
///   cri-o `internal/config/cgmgr/systemd.go` / `cgroupfs.go` (`CrioPrefix = "crio"`).
/// - podman: `libpod-<id>.scope` and `libpod-conmon-<id>.scope` under `machine.slice`
///   (systemd), `/libpod_parent/libpod-<id>` (cgroupfs): podman
///   `libpod/runtime_ctr.go` and docs/source/markdown/options/cgroup-parent.md.
/// - Kubernetes pods: `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid with _>.slice`
///   (systemd) and `/kubepods/<qos>/pod<uid>` (cgroupfs): kubernetes
///   `pkg/kubelet/cm/cgroup_manager_linux.go` (`ToSystemd`, `escapeSystemdCgroupName`).
const PREFIXES: &[(&str, ContainerRuntime)] = &[
    ("docker-", ContainerRuntime::Docker),
    ("cri-containerd-", ContainerRuntime::Containerd),
    ("crio-", ContainerRuntime::CriO),
    ("libpod-", ContainerRuntime::Podman),
];

/// Helper processes with a cgroup of their own next to their container: not containers.
const NOT_CONTAINERS: &[&str] = &["crio-conmon-", "libpod-conmon-"];

/// The container a single path component names, if any. `parent` is the component above it.
fn component(c: &str, parent: Option<&str>) -> Option<(ContainerRuntime, String)> {
    if NOT_CONTAINERS.iter().any(|p| c.starts_with(p)) {
        return None;
    }
    let base = c.strip_suffix(".scope").unwrap_or(c);
    for &(prefix, runtime) in PREFIXES {
        if let Some(rest) = base.strip_prefix(prefix) {
            // podman's `--cgroups=split` names the payload `libpod-payload-<id>`.
            let rest = rest.strip_prefix("payload-").unwrap_or(rest);
            return is_id(rest).then(|| (runtime, rest.to_owned()));
        }
    }
    if is_bare_id(c) {
        // `/docker/<id>`: Docker's cgroupfs driver. Elsewhere (`/kubepods/<qos>/pod<uid>/<id>`
        // with containerd or Docker under cgroupfs, `/<namespace>/<id>` of plain containerd)
        // the path does not tell the manager.
        let runtime = if parent == Some("docker") {
            ContainerRuntime::Docker
        } else {
            ContainerRuntime::Oci
        };
        return Some((runtime, c.to_owned()));
    }
    None
}

/// The Kubernetes pod UID a component names: `pod<uid>` (cgroupfs) or
/// `kubepods[-<qos>]-pod<uid with _ for ->.slice` (systemd).
fn pod_uid(c: &str) -> Option<String> {
    let raw = if let Some(slice) = c.strip_suffix(".slice") {
        let at = slice.rfind("-pod")?;
        if !slice.starts_with("kubepods") {
            return None;
        }
        &slice[at + 4..]
    } else {
        c.strip_prefix("pod")?
    };
    let uid = raw.replace('_', "-");
    // UUIDs (36 with dashes); static pods use a 32-hex config hash.
    ((32..=36).contains(&uid.len())
        && uid
            .bytes()
            .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then_some(uid)
}

/// The container of a process whose cgroup v2 path (as in `/proc/<pid>/cgroup`'s `0::` line)
/// is `path`: the innermost container-like component wins (a container inside a container;
/// sub-cgroups a container makes for itself, such as podman's `container` with
/// `--cgroups=split` or systemd's `init.scope` inside a container, belong to it).
pub fn parse_cgroup_path(path: &str) -> Option<CgroupContainer> {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty())
        .take(256)
        .collect();
    for i in (0..parts.len()).rev() {
        let parent = i.checked_sub(1).map(|j| parts[j]);
        if let Some((runtime, id)) = component(parts[i], parent) {
            let pod_uid = parts[..i].iter().rev().find_map(|p| pod_uid(p));
            return Some(CgroupContainer {
                runtime,
                id,
                pod_uid,
            });
        }
    }
    None
}

/// Mount point of the cgroup2 hierarchy and the hierarchy path it shows (`/` unless the
/// mount is of a sub-tree, as inside a cgroup namespace), from `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupMount {
    pub root: String,
    pub mount_point: PathBuf,
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|d| (b'0'..=b'7').contains(d))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The first cgroup2 mount listed in a mountinfo text.
pub fn cgroup2_mount(mountinfo: &str) -> Option<CgroupMount> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split(' ').next()? != "cgroup2" {
            return None;
        }
        let f: Vec<&str> = left.split(' ').collect();
        Some(CgroupMount {
            root: unescape(f.get(3)?),
            mount_point: PathBuf::from(unescape(f.get(4)?)),
        })
    })
}

/// The cgroup2 mount of this machine (`override_root` replaces the mount point found).
pub fn find_cgroup2(override_root: Option<&Path>) -> Option<CgroupMount> {
    if let Some(p) = override_root {
        return Some(CgroupMount {
            root: "/".into(),
            mount_point: p.to_owned(),
        });
    }
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    cgroup2_mount(&text)
}

/// The cgroup v2 path of process `pid` (`0::<path>` in `/proc/<pid>/cgroup`).
fn cgroup_path_of(cgroup_file: &str) -> Option<&str> {
    cgroup_file.lines().find_map(|l| l.strip_prefix("0::"))
}

/// Directory of hierarchy path `path` under mount `m`.
fn dir_of(m: &CgroupMount, path: &str) -> Option<PathBuf> {
    let rel = if m.root == "/" {
        path
    } else {
        path.strip_prefix(m.root.as_str())?
    };
    let rel = rel.trim_start_matches('/');
    if rel.split('/').any(|p| p == "..") {
        return None;
    }
    Some(m.mount_point.join(rel))
}

/// cgroup v2 id of process `pid` (what `bpf_get_current_cgroup_id` returns in its context),
/// for connections older than the probe; `None` if it cannot be read.
pub fn cgroup_id_of_pid(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = cgroup_path_of(&text)?;
    // Read once: called for every older socket's owner at start.
    static MOUNT: std::sync::OnceLock<Option<CgroupMount>> = std::sync::OnceLock::new();
    let m = MOUNT.get_or_init(|| find_cgroup2(None)).as_ref()?;
    Some(std::fs::metadata(dir_of(m, path)?).ok()?.ino())
}

/// Limits of the walk of the cgroup tree: a hostile or huge tree costs at most this much.
const MAX_WALK_DEPTH: usize = 32;
const MAX_WALK_DIRS: usize = 200_000;

/// What one walk of the cgroup tree found.
#[derive(Debug, Default)]
pub struct Walk {
    /// Container cgroups by id (the directory's inode number), at most `cap`.
    pub containers: HashMap<u64, Arc<CgroupContainer>>,
    /// Ids of the other cgroups (no container), at most `cap`.
    pub others: Vec<u64>,
}

/// Walks the cgroup2 tree under `m`.
pub fn walk(m: &CgroupMount, cap: usize) -> Walk {
    let mut out = Walk::default();
    if let Ok(meta) = std::fs::metadata(&m.mount_point) {
        out.others.push(meta.ino());
    }
    // (directory, hierarchy path, depth)
    let base = if m.root == "/" {
        String::new()
    } else {
        m.root.trim_end_matches('/').to_owned()
    };
    let mut stack: Vec<(PathBuf, String, usize)> = vec![(m.mount_point.clone(), base, 0)];
    let mut visited = 0usize;
    while let Some((dir, path, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.filter_map(Result::ok) {
            // cgroup directories only; kernfs gives the type in readdir, so no stat per entry.
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            visited += 1;
            if visited > MAX_WALK_DIRS {
                warn!(
                    limit = MAX_WALK_DIRS,
                    "cgroup tree larger than the walk limit: the rest is not searched"
                );
                return out;
            }
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            let child = format!("{path}/{name}");
            match parse_cgroup_path(&child) {
                Some(c) if out.containers.len() < cap => {
                    out.containers.insert(e.ino(), Arc::new(c));
                }
                Some(_) => {}
                None if out.others.len() < cap => out.others.push(e.ino()),
                None => {}
            }
            if depth + 1 < MAX_WALK_DEPTH {
                stack.push((e.path(), child, depth + 1));
            }
        }
    }
    out
}

/// How long an id a walk did not find as a container stays known as "no container".
pub const NEGATIVE_TTL: Duration = Duration::from_secs(300);

/// Settings of the resolver (the agent's `[containers]` block).
#[derive(Clone, Debug, PartialEq)]
pub struct ResolverOptions {
    /// Cgroup2 mount to walk; `None`: found in /proc/self/mountinfo.
    pub cgroup_root: Option<PathBuf>,
    /// Most container cgroups remembered (and most ids remembered as "no container").
    pub cache_size: usize,
    /// At most one walk of the cgroup tree per this, however many misses.
    pub rescan_interval: Duration,
    /// An id not found by a walk is not searched again for this long (it belonged to a cgroup
    /// already removed, or outside the tree this agent sees).
    pub negative_ttl: Duration,
}

/// Labels of `trafficmap_container_names_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NameLabels {
    pub source: String,
    pub result: String,
}

/// Container of a cgroup id, with names. Owned by the drain (no locking inside).
pub struct Resolver {
    opts: ResolverOptions,
    mount: Option<CgroupMount>,
    cache: HashMap<u64, Arc<CgroupContainer>>,
    negative: HashMap<u64, Instant>,
    last_scan: Option<Instant>,
    sources: Vec<Arc<dyn NameSource>>,
    lookups: Option<Family<NameLabels, Counter>>,
}

impl Resolver {
    /// A resolver over this machine's cgroup2 mount; without one it resolves nothing and says
    /// so once.
    pub fn new(opts: ResolverOptions, sources: Vec<Arc<dyn NameSource>>) -> Resolver {
        let mount = find_cgroup2(opts.cgroup_root.as_deref());
        match &mount {
            Some(m) => {
                info!(mount = %m.mount_point.display(), root = %m.root, "containers: cgroup2 hierarchy")
            }
            None => {
                info!("containers: no cgroup2 mount (cgroup v1 only?): pairs carry no container")
            }
        }
        Resolver::with_mount(opts, mount, sources)
    }

    /// A resolver over the given mount (tests).
    pub fn with_mount(
        opts: ResolverOptions,
        mount: Option<CgroupMount>,
        sources: Vec<Arc<dyn NameSource>>,
    ) -> Resolver {
        Resolver {
            opts,
            mount,
            cache: HashMap::new(),
            negative: HashMap::new(),
            last_scan: None,
            sources,
            lookups: None,
        }
    }

    /// Counts name lookups per source and result (`hit`, `miss`) into `family`.
    pub fn set_metrics(&mut self, family: Family<NameLabels, Counter>) {
        self.lookups = Some(family);
    }

    /// The container of cgroup `id` as the cgroup path tells it, without names.
    pub fn cgroup(&mut self, id: u64, now: Instant) -> Option<Arc<CgroupContainer>> {
        if id == 0 {
            return None;
        }
        if let Some(c) = self.cache.get(&id) {
            return Some(c.clone());
        }
        if let Some(&at) = self.negative.get(&id) {
            if now.saturating_duration_since(at) < self.opts.negative_ttl {
                return None;
            }
            self.negative.remove(&id);
        }
        let mount = self.mount.as_ref()?;
        if self
            .last_scan
            .is_some_and(|t| now.saturating_duration_since(t) < self.opts.rescan_interval)
        {
            // Rate-limited: asked again at the next drain.
            return None;
        }
        self.last_scan = Some(now);
        let t0 = Instant::now();
        let Walk {
            containers: found,
            others,
        } = walk(mount, self.opts.cache_size);
        if self.negative.len().saturating_add(others.len()) > self.opts.cache_size {
            self.negative.clear();
        }
        for o in others {
            if self.negative.len() >= self.opts.cache_size {
                break;
            }
            self.negative.insert(o, now);
        }
        // Keep what the previous walks found while there is room: a container that exited
        // since still has final records to come.
        let mut old = std::mem::replace(&mut self.cache, found);
        for (k, v) in old.drain() {
            if self.cache.len() >= self.opts.cache_size {
                break;
            }
            self.cache.entry(k).or_insert(v);
        }
        debug!(containers = self.cache.len(), took = ?t0.elapsed(), "containers: cgroup tree walked");
        match self.cache.get(&id) {
            Some(c) => {
                debug!(cgroup_id = id, runtime = c.runtime.as_str(), id = %c.id, pod_uid = ?c.pod_uid, "containers: new container");
                Some(c.clone())
            }
            None => {
                if self.negative.len() >= self.opts.cache_size {
                    self.negative.clear();
                }
                self.negative.insert(id, now);
                None
            }
        }
    }

    /// The container of cgroup `id`, with the names the sources know, within the report's
    /// bounds.
    pub fn resolve(&mut self, id: u64, now: Instant) -> Option<Container> {
        let c = self.cgroup(id, now)?;
        let mut names = Names::default();
        for s in &self.sources {
            let got = s.names(c.runtime, &c.id);
            if let Some(f) = &self.lookups {
                f.get_or_create(&NameLabels {
                    source: s.kind().to_owned(),
                    result: if got.is_some() { "hit" } else { "miss" }.to_owned(),
                })
                .inc();
            }
            if let Some(n) = got {
                names.fill_from(n);
            }
        }
        Some(container_of(&c, names))
    }
}

/// A report `Container` from what the cgroup and the sources said: names within their bounds
/// (control characters replaced, cut), empty ones dropped, a kind that is not an identifier
/// dropped.
pub fn container_of(c: &CgroupContainer, names: Names) -> Container {
    let clean = |v: Option<String>, max: usize| {
        v.map(|s| crate::sanitize::text(&s, max).into_owned())
            .filter(|s| !s.is_empty())
    };
    Container {
        id: c.id.clone(),
        runtime: c.runtime,
        name: clean(names.name, bounds::MAX_K8S_NAME_LEN),
        pod: clean(names.pod, bounds::MAX_K8S_NAME_LEN),
        namespace: clean(names.namespace, bounds::MAX_K8S_NAMESPACE_LEN),
        workload_kind: names.workload_kind.filter(|k| bounds::is_workload_kind(k)),
        workload: clean(names.workload, bounds::MAX_K8S_NAME_LEN),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f8a1c2b4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";
    const ID2: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn parsed(path: &str) -> Option<(ContainerRuntime, String, Option<String>)> {
        parse_cgroup_path(path).map(|c| (c.runtime, c.id, c.pod_uid))
    }

    fn some(rt: ContainerRuntime, id: &str) -> Option<(ContainerRuntime, String, Option<String>)> {
        Some((rt, id.to_owned(), None))
    }

    #[test]
    fn docker_systemd_and_cgroupfs() {
        // docs.docker.com/config/containers/runmetrics: /sys/fs/cgroup/system.slice/docker-<id>.scope
        // with the systemd driver, /sys/fs/cgroup/docker/<id> with cgroupfs.
        assert_eq!(
            parsed(&format!("/system.slice/docker-{ID}.scope")),
            some(ContainerRuntime::Docker, ID)
        );
        assert_eq!(
            parsed(&format!("/docker/{ID}")),
            some(ContainerRuntime::Docker, ID)
        );
        // systemd inside a Docker container puts its services below the container's scope.
        assert_eq!(
            parsed(&format!("/system.slice/docker-{ID}.scope/init.scope")),
            some(ContainerRuntime::Docker, ID)
        );
    }

    #[test]
    fn podman_systemd_cgroupfs_conmon_and_split() {
        // podman(1) --cgroup-parent / --cgroups: machine.slice/libpod-<id>.scope (systemd),
        // /libpod_parent/libpod-<id> (cgroupfs); conmon in libpod-conmon-<id>.scope.
        assert_eq!(
            parsed(&format!("/machine.slice/libpod-{ID}.scope")),
            some(ContainerRuntime::Podman, ID)
        );
        assert_eq!(
            parsed(&format!("/libpod_parent/libpod-{ID}")),
            some(ContainerRuntime::Podman, ID)
        );
        assert_eq!(
            parsed(&format!("/machine.slice/libpod-conmon-{ID}.scope")),
            None
        );
        // --cgroups=split: the payload in a `container` sub-cgroup of the container's.
        assert_eq!(
            parsed(&format!("/machine.slice/libpod-{ID}.scope/container")),
            some(ContainerRuntime::Podman, ID)
        );
        assert_eq!(
            parsed(&format!(
                "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container"
            )),
            some(ContainerRuntime::Podman, ID)
        );
        // A pod's containers under its slice.
        assert_eq!(
            parsed(&format!(
                "/machine.slice/machine-libpod_pod_{ID2}.slice/libpod-{ID}.scope"
            )),
            some(ContainerRuntime::Podman, ID)
        );
    }

    #[test]
    fn kubernetes_containerd_crio_docker_with_pod_uid() {
        let uid = "f1d3e5a7-0b2c-4d6e-8f01-23456789abcd";
        let uid_ = uid.replace('-', "_");
        // kubelet systemd driver + containerd (cri-containerd-<id>.scope).
        assert_eq!(
            parsed(&format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope"
            )),
            Some((ContainerRuntime::Containerd, ID.into(), Some(uid.into())))
        );
        // Guaranteed QoS has no QoS slice.
        assert_eq!(
            parsed(&format!(
                "/kubepods.slice/kubepods-pod{uid_}.slice/cri-containerd-{ID}.scope"
            )),
            Some((ContainerRuntime::Containerd, ID.into(), Some(uid.into())))
        );
        // CRI-O: crio-<id>.scope, and its conmon is not a container.
        assert_eq!(
            parsed(&format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/crio-{ID}.scope"
            )),
            Some((ContainerRuntime::CriO, ID.into(), Some(uid.into())))
        );
        assert_eq!(
            parsed(&format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/crio-conmon-{ID}.scope"
            )),
            None
        );
        // Docker (dockershim / cri-dockerd) under kubepods.
        assert_eq!(
            parsed(&format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/docker-{ID}.scope"
            )),
            Some((ContainerRuntime::Docker, ID.into(), Some(uid.into())))
        );
        // cgroupfs driver: the bare id under pod<uid>; the manager is not in the path.
        assert_eq!(
            parsed(&format!("/kubepods/besteffort/pod{uid}/{ID}")),
            Some((ContainerRuntime::Oci, ID.into(), Some(uid.into())))
        );
        assert_eq!(
            parsed(&format!("/kubepods/pod{uid}/crio-{ID}")),
            Some((ContainerRuntime::CriO, ID.into(), Some(uid.into())))
        );
        // The pod's own cgroup (no container yet) and the pause-less pod slice: none.
        assert_eq!(parsed(&format!("/kubepods/besteffort/pod{uid}")), None);
    }

    /// Paths measured on the build machine (Debian 12: podman 4.3.1 with its cgroupfs manager,
    /// runc 1.1.5, hybrid v1/v2 hierarchy; `cat /proc/self/cgroup` in a container, and
    /// `/proc/<conmon>/cgroup`): the container in `/libpod_parent/libpod-<id>`, conmon left in
    /// the root. And the cgroups the root tests create (`tests/agent.rs`, `tests/probe.rs`).
    #[test]
    fn real_paths_of_this_machine() {
        let id = "71b982a9d6473520fb4e2169ee1617d74c2b1ce76d75e17b098a76a61532d40d";
        assert_eq!(
            parsed(&format!("/libpod_parent/libpod-{id}")),
            some(ContainerRuntime::Podman, id)
        );
        assert_eq!(parsed("/"), None);
        assert_eq!(
            parsed(&format!("/tm-test-4242-agent/libpod-{}", "5e".repeat(32))),
            some(ContainerRuntime::Podman, &"5e".repeat(32))
        );
        assert_eq!(
            parsed(&format!(
                "/tm-test-4242-agent/docker-{}.scope",
                "c1".repeat(32)
            )),
            some(ContainerRuntime::Docker, &"c1".repeat(32))
        );
    }

    #[test]
    fn nested_takes_the_innermost() {
        assert_eq!(
            parsed(&format!("/docker/{ID2}/docker/{ID}")),
            some(ContainerRuntime::Docker, ID)
        );
        assert_eq!(
            parsed(&format!(
                "/system.slice/docker-{ID2}.scope/machine.slice/libpod-{ID}.scope"
            )),
            some(ContainerRuntime::Podman, ID)
        );
        // podman's conmon inside a Docker container belongs to the Docker container.
        assert_eq!(
            parsed(&format!(
                "/system.slice/docker-{ID2}.scope/machine.slice/libpod-conmon-{ID}.scope"
            )),
            some(ContainerRuntime::Docker, ID2)
        );
    }

    #[test]
    fn host_processes_and_lookalikes_are_not_containers() {
        for p in [
            "/",
            "",
            "/init.scope",
            "/system.slice/sshd.service",
            "/system.slice/docker.service",
            "/system.slice/containerd.service",
            "/user.slice/user-0.slice/session-1.scope",
            "/libpod_parent/conmon",
            "/system.slice/docker-notanid.scope",
            // Short hex as a bare name is too weak to be an id.
            "/deadbeef1234",
            // Uppercase hex is not what runtimes generate.
            &format!("/docker/{}", ID.to_uppercase()),
            &format!("/docker-{}.scope", "a".repeat(129)),
        ] {
            assert_eq!(parsed(p), None, "{p}");
        }
        // A short id in a prefixed form is still an id (within 12..=128).
        assert_eq!(
            parsed("/system.slice/docker-0123456789ab.scope"),
            some(ContainerRuntime::Docker, "0123456789ab")
        );
        // Bare 64-hex elsewhere: a container of an unknown manager.
        assert_eq!(
            parsed(&format!("/default/{ID}")),
            some(ContainerRuntime::Oci, ID)
        );
    }

    #[test]
    fn hostile_paths_are_bounded() {
        let deep = "/x".repeat(100_000);
        assert_eq!(parsed(&deep), None);
        assert_eq!(
            parsed(&format!("{deep}/docker-{ID}.scope")),
            None,
            "beyond 256 components"
        );
        assert_eq!(parsed("/\u{1b}[2J/docker-\u{0}.scope"), None);
    }

    #[test]
    fn mountinfo() {
        let text = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                    40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd\n\
                    41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(text),
            Some(CgroupMount {
                root: "/".into(),
                mount_point: "/sys/fs/cgroup/unified".into()
            })
        );
        let ns = "30 24 0:26 /kubepods/pod1 /host/sys\\040fs shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(ns),
            Some(CgroupMount {
                root: "/kubepods/pod1".into(),
                mount_point: "/host/sys fs".into()
            })
        );
        assert_eq!(cgroup2_mount("garbage\n - \n"), None);
        assert_eq!(
            cgroup_path_of("1:cpu:/\n0::/system.slice/x.service\n"),
            Some("/system.slice/x.service")
        );
        let m = CgroupMount {
            root: "/a".into(),
            mount_point: "/mnt".into(),
        };
        assert_eq!(dir_of(&m, "/a/b"), Some(PathBuf::from("/mnt/b")));
        assert_eq!(dir_of(&m, "/c"), None);
        assert_eq!(dir_of(&m, "/a/../../etc"), None);
    }

    struct Fixed(&'static str, Option<Names>);
    impl NameSource for Fixed {
        fn kind(&self) -> &'static str {
            self.0
        }
        fn names(&self, _: ContainerRuntime, _: &str) -> Option<Names> {
            self.1.clone()
        }
    }

    #[test]
    fn resolver_walks_caches_and_rate_limits() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join(format!("machine.slice/libpod-{ID}.scope"));
        let host = dir.path().join("system.slice/sshd.service");
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&host).unwrap();
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        let opts = ResolverOptions {
            cgroup_root: Some(dir.path().into()),
            cache_size: 16,
            rescan_interval: Duration::from_secs(10),
            negative_ttl: Duration::from_secs(300),
        };
        let sources: Vec<Arc<dyn NameSource>> = vec![
            Arc::new(Fixed("none", None)),
            Arc::new(Fixed(
                "podman",
                Some(Names {
                    name: Some("web\u{1b}".into()),
                    workload_kind: Some("Bad Kind".into()),
                    ..Names::default()
                }),
            )),
            Arc::new(Fixed(
                "later",
                Some(Names {
                    name: Some("ignored".into()),
                    namespace: Some("shop".into()),
                    ..Names::default()
                }),
            )),
        ];
        let mut r = Resolver::new(opts, sources);
        let family = Family::<NameLabels, Counter>::default();
        r.set_metrics(family.clone());
        let t0 = Instant::now();
        let c = r.resolve(ino(&a), t0).unwrap();
        assert_eq!(
            c,
            Container {
                id: ID.into(),
                runtime: ContainerRuntime::Podman,
                name: Some("web\u{fffd}".into()),
                pod: None,
                namespace: Some("shop".into()),
                workload_kind: None,
                workload: None,
            }
        );
        assert_eq!(
            family
                .get_or_create(&NameLabels {
                    source: "none".into(),
                    result: "miss".into()
                })
                .get(),
            1
        );
        // A host process: no container, remembered as such.
        assert_eq!(r.resolve(ino(&host), t0), None);
        assert!(r.negative.contains_key(&ino(&host)));
        assert_eq!(r.resolve(0, t0), None);
        // A container created after the walk: missed until the rescan interval has passed.
        let b = dir.path().join(format!("docker/{ID2}"));
        std::fs::create_dir_all(&b).unwrap();
        assert_eq!(r.cgroup(ino(&b), t0 + Duration::from_secs(5)), None);
        let got = r.cgroup(ino(&b), t0 + Duration::from_secs(10)).unwrap();
        assert_eq!(
            (got.runtime, got.id.as_str()),
            (ContainerRuntime::Docker, ID2)
        );
        // The first container is still known after its cgroup is gone (final records).
        let a_id = ino(&a);
        std::fs::remove_dir(&a).unwrap();
        // An unknown id walks again (the interval has passed): not found, negative from now.
        assert!(r.cgroup(1, t0 + Duration::from_secs(30)).is_none());
        assert_eq!(r.last_scan, Some(t0 + Duration::from_secs(30)));
        assert!(r.negative.contains_key(&1));
        assert_eq!(r.cgroup(a_id, t0 + Duration::from_secs(31)).unwrap().id, ID);
        assert_eq!(r.cache.len(), 2);
    }

    #[test]
    fn resolver_cache_is_capped() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..10u8 {
            std::fs::create_dir_all(dir.path().join(format!("docker/{:064x}", u64::from(i) + 1)))
                .unwrap();
        }
        let mut r = Resolver::with_mount(
            ResolverOptions {
                cgroup_root: None,
                cache_size: 4,
                rescan_interval: Duration::ZERO,
                negative_ttl: Duration::from_secs(300),
            },
            Some(CgroupMount {
                root: "/".into(),
                mount_point: dir.path().into(),
            }),
            Vec::new(),
        );
        for id in 1..20 {
            r.cgroup(id, Instant::now());
        }
        assert_eq!(r.cache.len(), 4);
        assert!(r.negative.len() <= 4);
    }
}
