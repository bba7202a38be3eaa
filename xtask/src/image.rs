//! `cargo xtask image`: OCI images of the agent and the collector, assembled from the built
//! binaries with Debian's own tools (buildah, vfs storage, no daemon, no base image): the root
//! filesystem is the stripped binary, the shared libraries `ldd` names and the loader, the CA
//! bundle, and `/etc/passwd` + `/etc/group` with the non-root user 65532. No shell. Exported as
//! OCI archives named like the manifests' images (`ghcr.io/trafficmap/<name>:<version>`).

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use chrono::{DateTime, DurationRound as _, TimeDelta, Utc};
use serde_json::{Value, json};

use crate::util::{cmd, note, output, root, run, step};

/// Which binaries go into the images.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// Optimised binaries, as shipped (`cargo build --release`).
    Release,
    /// The debug binaries the `unit` stage builds (stripped): what the `images` stage tests.
    Dev,
}

/// The registry path the manifests name (deploy/kubernetes/*.yaml).
pub const REGISTRY: &str = "ghcr.io/trafficmap";
/// The non-root user and group of the collector's image (the manifests' runAsUser/runAsGroup).
pub const NONROOT: u32 = 65532;

/// One image: what goes in and how it runs.
pub struct Spec {
    pub name: &'static str,
    pub description: &'static str,
    /// `Some(uid)`: the image's user (uid:gid, same number). `None`: root (the agent, which needs
    /// capabilities to attach and drops them itself).
    pub user: Option<u32>,
}

pub const AGENT: Spec = Spec {
    name: "trafficmap-agent",
    description: "trafficmap agent: eBPF per-connection TCP byte counts, reported per minute",
    user: None,
};

pub const COLLECTOR: Spec = Spec {
    name: "trafficmap-collector",
    description: "trafficmap collector: stores agents' reports, serves maps and the viewer",
    user: Some(NONROOT),
};

/// A built image.
pub struct Built {
    pub name: &'static str,
    /// `ghcr.io/trafficmap/<name>:<version>`, also the archive's `ref.name`.
    pub reference: String,
    pub archive: PathBuf,
    /// Size of the archive (gzip-compressed layer) and of the root filesystem, in bytes.
    pub archive_bytes: u64,
    pub rootfs_bytes: u64,
}

impl Built {
    pub fn summary(&self) -> String {
        format!(
            "{} {:.1} MiB ({:.1} MiB unpacked)",
            self.name,
            mib(self.archive_bytes),
            mib(self.rootfs_bytes)
        )
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

pub fn reference(name: &str) -> String {
    format!("{REGISTRY}/{name}:{}", version())
}

/// `cargo xtask image`.
pub fn command(profile: Profile, out: Option<PathBuf>) -> Result<()> {
    let out = out.unwrap_or_else(|| root().join("target/images"));
    let built = build_all(profile, &out)?;
    step("images");
    for b in &built {
        note(format!("{}  {}", b.archive.display(), b.summary()));
    }
    for b in &built {
        note(format!(
            "push: skopeo copy oci-archive:{} docker://{}",
            b.archive.display(),
            b.reference
        ));
    }
    Ok(())
}

/// Builds the binaries of `profile` and both images into `out`.
pub fn build_all(profile: Profile, out: &Path) -> Result<Vec<Built>> {
    for tool in ["buildah", "strip", "ldd"] {
        if !crate::util::succeeds(cmd("which").arg(tool)) {
            bail!("{tool} is missing: cargo xtask setup (apt-get install buildah binutils)");
        }
    }
    let (agent, collector) = binaries(profile)?;
    std::fs::create_dir_all(out)?;
    let out = out
        .canonicalize()
        .with_context(|| format!("{}", out.display()))?;
    Ok(vec![
        build(&AGENT, &agent, &out)?,
        build(&COLLECTOR, &collector, &out)?,
    ])
}

fn binaries(profile: Profile) -> Result<(PathBuf, PathBuf)> {
    match profile {
        Profile::Dev => {
            // Never another feature set or package selection: that rebuilds half the tree.
            let bins = crate::util::workspace_bins(&["trafficmap-agent", "trafficmap-collector"])?;
            Ok((bins[0].clone(), bins[1].clone()))
        }
        Profile::Release => {
            step("image: building trafficmap-agent and trafficmap-collector (release)");
            run(crate::util::cargo().args([
                "build",
                "--release",
                "-p",
                "trafficmap-daemon",
                "-p",
                "trafficmap-collector",
                "--bin",
                "trafficmap-agent",
                "--bin",
                "trafficmap-collector",
            ]))?;
            let dir = root().join("target/release");
            Ok((
                dir.join("trafficmap-agent"),
                dir.join("trafficmap-collector"),
            ))
        }
    }
}

/// Shared libraries (and the loader) `ldd` names for `bin`: their paths as named.
pub fn libraries(bin: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    // A static binary: `ldd` says so and fails; it needs no library.
    if !out.status.success() {
        if text.contains("not a dynamic executable") || text.contains("statically linked") {
            return Ok(Vec::new());
        }
        bail!(
            "ldd {}: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or `/lib64/ld-linux... (0x...)`;
        // linux-vdso has no file.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.trim(),
            None => line,
        };
        let path = path.split(" (").next().unwrap_or_default().trim();
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        } else if line.contains("not found") {
            bail!("ldd {}: {line}", bin.display());
        }
    }
    Ok(libs)
}

const PASSWD: &str = "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin\n";
const GROUP: &str = "root:x:0:\nnonroot:x:65532:\n";
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Copies `src` (following symlinks) to `rootfs` + `dest` with `mode`.
fn put(rootfs: &Path, src: &Path, dest: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let target = rootfs.join(dest.strip_prefix("/").unwrap_or(dest));
    std::fs::create_dir_all(target.parent().context("no parent")?)?;
    std::fs::copy(src, &target)
        .with_context(|| format!("copying {} to {}", src.display(), target.display()))?;
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => n += dir_bytes(&e.path()),
                Ok(t) if t.is_file() => n += e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    n
}

/// Assembles the root filesystem of `spec` around `bin` and commits it as an OCI archive.
pub fn build(spec: &Spec, bin: &Path, out: &Path) -> Result<Built> {
    use std::os::unix::fs::PermissionsExt as _;
    step(format!("image {}: from {}", spec.name, bin.display()));
    let work = out.join(format!(".work-{}", spec.name));
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    let rootfs = work.join("rootfs");
    std::fs::create_dir_all(&rootfs)?;
    let entry = PathBuf::from(format!("/usr/bin/{}", spec.name));
    put(&rootfs, bin, &entry, 0o755)?;
    let staged = rootfs.join(entry.strip_prefix("/")?);
    // Debug information is most of a binary's size and nothing a container needs.
    run(cmd("strip").arg(&staged))?;
    for lib in libraries(bin)? {
        put(&rootfs, &lib, &lib, 0o755)?;
    }
    put(&rootfs, Path::new(CA_BUNDLE), Path::new(CA_BUNDLE), 0o644)?;
    std::fs::write(rootfs.join("etc/passwd"), PASSWD)?;
    std::fs::write(rootfs.join("etc/group"), GROUP)?;
    // /tmp for SQLite's temporary files when a runtime mounts a tmpfs there; mount points of
    // the manifests' volumes exist so a read-only root needs no directory created at run time.
    for (d, mode) in [
        ("tmp", 0o1777),
        ("var/lib/trafficmap", 0o755),
        ("etc/trafficmap", 0o755),
    ] {
        std::fs::create_dir_all(rootfs.join(d))?;
        std::fs::set_permissions(rootfs.join(d), std::fs::Permissions::from_mode(mode))?;
    }
    let rootfs_bytes = dir_bytes(&rootfs);

    let storage = work.join("storage");
    let buildah = || {
        let mut c = cmd("buildah");
        c.arg("--root")
            .arg(storage.join("root"))
            .arg("--runroot")
            .arg(storage.join("run"))
            .args(["--storage-driver", "vfs"]);
        c
    };
    let ctr = output(buildah().args(["from", "scratch"]))?
        .trim()
        .to_owned();
    run(buildah()
        .args(["copy", "--quiet", "--chown", "0:0", &ctr])
        .arg(format!("{}/", rootfs.display()))
        .arg("/"))?;
    let revision = output(cmd("git").current_dir(root()).args(["rev-parse", "HEAD"]))?
        .trim()
        .to_owned();
    let created = output(cmd("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"]))?
        .trim()
        .to_owned();
    let labels = [
        ("title", spec.name.to_owned()),
        ("description", spec.description.to_owned()),
        ("version", version().to_owned()),
        ("source", env!("CARGO_PKG_REPOSITORY").to_owned()),
        ("revision", revision),
        ("licenses", env!("CARGO_PKG_LICENSE").to_owned()),
        ("created", created),
    ];
    let mut config = buildah();
    config
        .args(["config", "--entrypoint"])
        .arg(format!("[\"{}\"]", entry.display()))
        .args(["--cmd", "", "--workingdir", "/", "--env"])
        .arg("SSL_CERT_FILE=".to_owned() + CA_BUNDLE)
        .args(["--stop-signal", "SIGTERM"]);
    let user = spec.user.map_or("0:0".to_owned(), |u| format!("{u}:{u}"));
    config.args(["--user", &user]);
    for (k, v) in &labels {
        config
            .arg("--label")
            .arg(format!("org.opencontainers.image.{k}={v}"));
    }
    run(config.arg(&ctr))?;
    let reference = reference(spec.name);
    let archive = out.join(format!("{}-{}.oci.tar", spec.name, version()));
    let _ = std::fs::remove_file(&archive);
    run(buildah()
        .args([
            "commit",
            "--quiet",
            "--format",
            "oci",
            "--disable-compression=false",
            "--rm",
            &ctr,
        ])
        .arg(format!("oci-archive:{}:{reference}", archive.display())))?;
    // The storage only held this one image: the archive is the product.
    std::fs::remove_dir_all(&work)?;
    let archive_bytes = std::fs::metadata(&archive)?.len();
    let built = Built {
        name: spec.name,
        reference,
        archive,
        archive_bytes,
        rootfs_bytes,
    };
    note(built.summary());
    Ok(built)
}

// ---------------------------------------------------------------------------------------------
// The `images` test stage: both images built (dev profile), then run under runc the way the
// manifests run them.

/// The DaemonSet's capabilities (deploy/kubernetes/trafficmap-agent.yaml), as the runtime names
/// them.
const AGENT_CAPS: [&str; 5] = [
    "CAP_BPF",
    "CAP_PERFMON",
    "CAP_DAC_READ_SEARCH",
    "CAP_DAC_OVERRIDE",
    "CAP_NET_ADMIN",
];
/// The agent's window in the test: short, so a full window closes within seconds.
const AGENT_INTERVAL_S: i64 = 3;
/// The other "container": a network namespace joined to the host by a veth pair.
const HOST_ADDR: &str = "10.231.7.1";
const PEER_ADDR: &str = "10.231.7.2";

pub fn stage() -> Result<String> {
    let start = Instant::now();
    for tool in ["umoci", "runc", "skopeo", "curl", "ip"] {
        if !crate::util::succeeds(cmd("which").arg(tool)) {
            bail!(
                "{tool} is missing: cargo xtask setup (apt-get install umoci runc skopeo curl iproute2)"
            );
        }
    }
    let out = root().join("target/images/dev");
    let built = build_all(Profile::Dev, &out)?;
    let build_time = start.elapsed();
    check_images(&built)?;
    let podman = podman_run(&built[1], &out)?;
    let agent = run_agent(&built[0], &out)?;
    let collector = run_collector(&built[1], &out)?;
    Ok(format!(
        "{}, {} (dev, stripped; built in {:.0?}); manifests name them; {podman}; {agent}; {collector}",
        built[0].summary(),
        built[1].summary(),
        build_time
    ))
}

/// The manifests name the images built; labels, user and entrypoint are as documented; no shell.
fn check_images(built: &[Built]) -> Result<()> {
    step("images: names, labels, users");
    let mut named = Vec::new();
    for e in std::fs::read_dir(root().join("deploy/kubernetes"))? {
        let text = std::fs::read_to_string(e?.path())?;
        for l in text.lines() {
            if let Some(img) = l.trim().strip_prefix("image:") {
                named.push(img.trim().trim_matches('"').to_owned());
            }
        }
    }
    if named.is_empty() {
        bail!("no `image:` in deploy/kubernetes");
    }
    for n in &named {
        if !built.iter().any(|b| &b.reference == n) {
            bail!("a manifest names image {n}, which `cargo xtask image` does not build");
        }
    }
    for b in built {
        if !named.contains(&b.reference) {
            bail!("no manifest uses {}", b.reference);
        }
    }
    let revision = output(cmd("git").current_dir(root()).args(["rev-parse", "HEAD"]))?;
    for b in built {
        let cfg: Value = serde_json::from_str(&output(
            cmd("skopeo")
                .args(["inspect", "--config"])
                .arg(format!("oci-archive:{}", b.archive.display())),
        )?)?;
        let c = &cfg["config"];
        let label = |k: &str| {
            c["Labels"][format!("org.opencontainers.image.{k}")]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        };
        let want = [
            ("title", b.name.to_owned()),
            ("version", version().to_owned()),
            ("source", env!("CARGO_PKG_REPOSITORY").to_owned()),
            ("revision", revision.trim().to_owned()),
            ("licenses", env!("CARGO_PKG_LICENSE").to_owned()),
        ];
        for (k, v) in want {
            if label(k) != v {
                bail!("{}: label {k} is `{}`, expected `{v}`", b.name, label(k));
            }
        }
        for k in ["description", "created"] {
            if label(k).is_empty() {
                bail!("{}: label {k} is missing", b.name);
            }
        }
        let user = if b.name == COLLECTOR.name {
            format!("{NONROOT}:{NONROOT}")
        } else {
            "0:0".into()
        };
        if c["User"] != user.as_str() {
            bail!("{}: user {}, expected {user}", b.name, c["User"]);
        }
        if c["Entrypoint"] != json!([format!("/usr/bin/{}", b.name)]) {
            bail!("{}: entrypoint {}", b.name, c["Entrypoint"]);
        }
    }
    Ok(())
}

/// `podman run` of the collector image (loaded from its archive into a private vfs store), with
/// the limits this process holds (`--ulimit`, which it can set itself): it prints the version,
/// or fails exactly as measured on the build machine, where the container's init may not set any
/// rlimit even at the current values (so the stage runs the images with runc on a spec without
/// rlimits). Any other outcome fails.
fn podman_run(b: &Built, out: &Path) -> Result<String> {
    step("images: podman run");
    let store = out.join("podman");
    if store.exists() {
        std::fs::remove_dir_all(&store)?;
    }
    let podman = || {
        let mut c = cmd("podman");
        c.arg("--root")
            .arg(store.join("root"))
            .arg("--runroot")
            .arg(store.join("run"))
            .args(["--storage-driver", "vfs"]);
        c
    };
    run(podman()
        .args(["load", "--quiet", "--input"])
        .arg(&b.archive))?;
    let limit = |r| {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct it is given.
        unsafe { libc::getrlimit(r, &mut l) };
        format!("{}:{}", l.rlim_cur, l.rlim_max)
    };
    let res = podman()
        .args(["run", "--rm", "--network", "host", "--ulimit"])
        .arg(format!("nofile={}", limit(libc::RLIMIT_NOFILE)))
        .arg("--ulimit")
        .arg(format!("nproc={}", limit(libc::RLIMIT_NPROC)))
        .args([&b.reference, "--version"])
        .output()
        .context("running podman")?;
    let _ = std::fs::remove_dir_all(&store);
    let stdout = String::from_utf8_lossy(&res.stdout);
    let stderr = String::from_utf8_lossy(&res.stderr);
    let want = format!("{} {}", b.name, version());
    if res.status.success() && stdout.trim() == want {
        return Ok("podman run works".into());
    }
    if !res.status.success()
        && stderr.contains("error setting rlimit type")
        && stderr.contains("operation not permitted")
    {
        note(format!("podman run refused here: {}", stderr.trim()));
        return Ok(
            "podman run refused here as measured (the runtime may not set rlimits, even the current ones)"
                .into(),
        );
    }
    bail!(
        "podman run {} --version: {} (stdout `{}`, stderr `{}`): neither `{want}` nor the known rlimit refusal",
        b.reference,
        res.status,
        stdout.trim(),
        stderr.trim()
    )
}

/// Unpacks `b` into a runtime bundle (`<dir>/bundle`: config.json + rootfs) with umoci.
fn unpack(b: &Built, dir: &Path) -> Result<PathBuf> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    let layout = dir.join("layout");
    std::fs::create_dir_all(&layout)?;
    run(cmd("tar").arg("xf").arg(&b.archive).arg("-C").arg(&layout))?;
    let bundle = dir.join("bundle");
    run(cmd("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:{}", layout.display(), b.reference))
        .arg(&bundle))?;
    // No shell in the image: nothing a `kubectl exec` could start but the binary itself.
    for sh in ["bin/sh", "usr/bin/sh", "bin/bash", "bin/busybox"] {
        if bundle.join("rootfs").join(sh).exists() {
            bail!("{}: the image has /{sh}", b.name);
        }
    }
    Ok(bundle)
}

fn bind(dest: &str, source: &Path, rw: bool) -> Value {
    json!({
        "destination": dest, "type": "bind", "source": source,
        "options": ["rbind", if rw { "rw" } else { "ro" }, "nosuid", "nodev"],
    })
}

/// Patches umoci's runtime spec: `args` after the entrypoint, the given capabilities (bounding,
/// effective, permitted; none inheritable or ambient, as a kubelet sets them), a read-only root,
/// no network namespace (host network) and, for `host_pid`, no PID namespace; `mounts` added.
/// Rlimits removed: this machine refuses setrlimit even at the current values (podman's
/// `setrlimit RLIMIT_NPROC: Operation not permitted`).
fn patch_spec(
    bundle: &Path,
    args: &[&str],
    caps: &[&str],
    host_pid: bool,
    mounts: Vec<Value>,
) -> Result<Value> {
    let path = bundle.join("config.json");
    let mut spec: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let p = &mut spec["process"];
    p["terminal"] = json!(false);
    p["args"]
        .as_array_mut()
        .context("spec without process.args")?
        .extend(args.iter().map(|a| json!(a)));
    p.as_object_mut().context("process")?.remove("rlimits");
    p["capabilities"] = json!({ "bounding": caps, "effective": caps, "permitted": caps });
    // allowPrivilegeEscalation: false.
    p["noNewPrivileges"] = json!(true);
    spec["root"]["readonly"] = json!(true);
    let ns = spec["linux"]["namespaces"]
        .as_array_mut()
        .context("spec without linux.namespaces")?;
    ns.retain(|n| n["type"] != "network" && !(host_pid && n["type"] == "pid"));
    spec["mounts"]
        .as_array_mut()
        .context("spec without mounts")?
        .extend(mounts);
    std::fs::write(&path, serde_json::to_vec_pretty(&spec)?)?;
    Ok(spec)
}

/// A container run by `runc run` in the foreground (runc deletes it when its process exits).
struct Container {
    id: String,
    child: Child,
    log: PathBuf,
}

impl Container {
    fn start(bundle: &Path, id: &str, log: &Path) -> Result<Container> {
        let _ = cmd("runc")
            .args(["delete", "--force", id])
            .stderr(Stdio::null())
            .status();
        let f = std::fs::File::create(log)?;
        let child = cmd("runc")
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .context("starting runc")?;
        note(format!("runc run --bundle {} {id}", bundle.display()));
        Ok(Container {
            id: id.to_owned(),
            child,
            log: log.to_owned(),
        })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `ready()` holds; fails if the container exits first or after 60 s.
    fn wait_ready(&mut self, what: &str, mut ready: impl FnMut() -> bool) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = self.child.try_wait()? {
                bail!("{} exited ({s}) before {what}:\n{}", self.id, self.log());
            }
            if ready() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{}: no {what} after 60 s:\n{}", self.id, self.log());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `runc kill <id> TERM`, as a kubelet stops a pod; the process must exit 0 within 30 s.
    fn terminate(mut self) -> Result<String> {
        run(cmd("runc").args(["kill", &self.id, "TERM"]))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait()? {
                if !s.success() {
                    bail!("{} exited with {s} after SIGTERM:\n{}", self.id, self.log());
                }
                return Ok(self.log());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} still running 30 s after SIGTERM:\n{}",
                    self.id,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = cmd("runc")
                .args(["kill", &self.id, "KILL"])
                .stderr(Stdio::null())
                .status();
            let _ = self.child.wait();
        }
        let _ = cmd("runc")
            .args(["delete", "--force", &self.id])
            .stderr(Stdio::null())
            .status();
    }
}

/// A port nobody listens on (bound and released).
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `curl`: (status, body). `body` is POSTed when given.
fn http(
    url: &str,
    token: Option<&str>,
    body: Option<&Path>,
    scratch: &Path,
) -> Result<(u16, String)> {
    let out_file = scratch.join("curl-body");
    let _ = std::fs::remove_file(&out_file);
    let mut c = cmd("curl");
    c.args(["-sS", "--max-time", "10", "-o"])
        .arg(&out_file)
        .args(["-w", "%{http_code}"]);
    if let Some(t) = token {
        c.arg("-H").arg(format!("Authorization: Bearer {t}"));
    }
    if let Some(b) = body {
        c.args(["-H", "Content-Type: application/json", "--data-binary"])
            .arg(format!("@{}", b.display()));
    }
    let code = output(c.arg(url))?;
    let status = code.trim().parse().unwrap_or(0);
    Ok((
        status,
        std::fs::read_to_string(&out_file).unwrap_or_default(),
    ))
}

/// The test's other "container": a network namespace with a veth pair to the host.
struct Peer {
    ns: String,
}

impl Peer {
    fn new() -> Result<Peer> {
        let n = std::process::id() % 100_000;
        let peer = Peer {
            ns: format!("tmimg{n}"),
        };
        let host_if = format!("tmi{n}h");
        // A namespace left by a killed run.
        let _ = cmd("ip")
            .args(["netns", "del", &peer.ns])
            .stderr(Stdio::null())
            .status();
        run(cmd("ip").args(["netns", "add", &peer.ns]))?;
        run(cmd("ip").args([
            "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &peer.ns,
        ]))?;
        run(cmd("ip").args(["addr", "add", &format!("{HOST_ADDR}/30"), "dev", &host_if]))?;
        run(cmd("ip").args(["link", "set", &host_if, "up"]))?;
        let n = |args: &[&str]| run(cmd("ip").args(["-n", &peer.ns]).args(args));
        n(&["addr", "add", &format!("{PEER_ADDR}/30"), "dev", "eth0"])?;
        n(&["link", "set", "eth0", "up"])?;
        n(&["link", "set", "lo", "up"])?;
        Ok(peer)
    }

    /// One TCP conversation: a server in the namespace (thread `img-server`) reads to EOF, then
    /// answers `back` bytes; the host's client (thread `img-client` of this process) sends `sent`.
    fn conversation(&self, port: u16, sent: usize, back: usize) -> Result<()> {
        let ns = PathBuf::from("/run/netns").join(&self.ns);
        let (tx, rx) = std::sync::mpsc::channel();
        let server = std::thread::Builder::new()
            .name("img-server".into())
            .spawn(move || -> Result<usize> {
                let f = std::fs::File::open(&ns)?;
                // SAFETY: setns on this thread only, with a valid namespace descriptor.
                if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    bail!("setns: {}", std::io::Error::last_os_error());
                }
                let l = TcpListener::bind((PEER_ADDR, port))?;
                tx.send(()).ok();
                let (mut s, _) = l.accept()?;
                let got = read_all(&mut s)?;
                s.write_all(&vec![b'b'; back])?;
                Ok(got)
            })?;
        rx.recv_timeout(Duration::from_secs(10))
            .context("the namespace's server did not start")?;
        let client = std::thread::Builder::new()
            .name("img-client".into())
            .spawn(move || -> Result<usize> {
                let mut s = TcpStream::connect((PEER_ADDR, port))?;
                s.write_all(&vec![b'a'; sent])?;
                s.shutdown(Shutdown::Write)?;
                read_all(&mut s)
            })?;
        let got_back = client.join().map_err(|_| anyhow::anyhow!("client"))??;
        let got = server.join().map_err(|_| anyhow::anyhow!("server"))??;
        if (got, got_back) != (sent, back) {
            bail!(
                "conversation on {port}: server got {got} (sent {sent}), client got {got_back} (sent {back})"
            );
        }
        Ok(())
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth end and with it the host's.
        let _ = cmd("ip").args(["netns", "del", &self.ns]).status();
    }
}

fn read_all(s: &mut TcpStream) -> Result<usize> {
    let mut buf = vec![0u8; 65536];
    let mut n = 0;
    loop {
        match s.read(&mut buf)? {
            0 => return Ok(n),
            k => n += k,
        }
    }
}

/// The agent's reports so far (its `output` file, one JSON report per line).
fn reports(file: &Path) -> Result<Vec<Value>> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).context("a report line that is not JSON"))
        .collect()
}

/// (bytes_sent, bytes_received, process) of the pair `local -> peer:port` with `role` in `r`.
fn pair(r: &Value, local: &str, peer: &str, port: u16, role: &str) -> Option<(u64, u64, String)> {
    r["pairs"].as_array()?.iter().find_map(|p| {
        (p["local_ip"] == local
            && p["peer_ip"] == peer
            && p["server_port"] == port
            && p["role"] == role)
            .then(|| {
                (
                    p["bytes_sent"].as_u64().unwrap_or(0),
                    p["bytes_received"].as_u64().unwrap_or(0),
                    p["process"].as_str().unwrap_or_default().to_owned(),
                )
            })
    })
}

/// Both ends of the conversation on `port`, summed over `rs`: (client sent, client received,
/// server sent, server received).
fn both_ends(rs: &[Value], port: u16) -> (u64, u64, u64, u64) {
    let mut t = (0, 0, 0, 0);
    for r in rs {
        if let Some((s, rcv, _)) = pair(r, HOST_ADDR, PEER_ADDR, port, "client") {
            t.0 += s;
            t.1 += rcv;
        }
        if let Some((s, rcv, _)) = pair(r, PEER_ADDR, HOST_ADDR, port, "server") {
            t.2 += s;
            t.3 += rcv;
        }
    }
    t
}

fn window(r: &Value) -> Result<(DateTime<Utc>, DateTime<Utc>)> {
    let t = |k: &str| -> Result<DateTime<Utc>> {
        Ok(r["window"][k]
            .as_str()
            .context("window without start/end")?
            .parse()?)
    };
    Ok((t("start")?, t("end")?))
}

/// The agent image as the DaemonSet runs it: exact bytes for host <-> container traffic in a
/// full window, and the last partial window written on the runtime's SIGTERM.
fn run_agent(b: &Built, out: &Path) -> Result<String> {
    step("images: the agent under runc, as the DaemonSet runs it");
    let dir = out.join("run-agent");
    let bundle = unpack(b, &dir)?;
    let config = dir.join("config");
    let state = dir.join("state");
    std::fs::create_dir_all(&config)?;
    std::fs::create_dir_all(&state)?;
    let metrics = free_port()?;
    std::fs::write(
        config.join("agent.toml"),
        format!(
            "# The DaemonSet's agent.toml, but a short interval, the reports in a file instead of a\n\
             # collector, and /metrics on loopback.\n\
             interval = \"{AGENT_INTERVAL_S}s\"\nattach = \"auto\"\nnetns = \"all\"\n\
             spool_dir = \"/var/lib/trafficmap/spool\"\noutput = \"/var/lib/trafficmap/reports.jsonl\"\n\
             listen = \"127.0.0.1:{metrics}\"\nhost_name = \"image-test\"\nhost_id = \"image-test-id\"\n\
             imds = \"off\"\n"
        ),
    )?;
    if !Path::new("/sys/kernel/tracing/events").is_dir() {
        crate::setup::tracefs()?;
    }
    patch_spec(
        &bundle,
        &["--config", "/etc/trafficmap/agent.toml"],
        &AGENT_CAPS,
        true,
        vec![
            bind("/etc/trafficmap", &config, false),
            bind("/sys/kernel/btf", Path::new("/sys/kernel/btf"), false),
            bind(
                "/sys/kernel/tracing",
                Path::new("/sys/kernel/tracing"),
                true,
            ),
            bind("/var/lib/trafficmap", &state, true),
        ],
    )?;
    let peer = Peer::new()?;
    let id = format!("trafficmap-agent-test-{}", std::process::id());
    let mut agent = Container::start(&bundle, &id, &dir.join("agent.log"))?;
    // Ready when /metrics answers: the probe is attached by then.
    let url = format!("http://127.0.0.1:{metrics}/metrics");
    let scratch = dir.clone();
    agent.wait_ready("/metrics", || {
        http(&url, None, None, &scratch)
            .is_ok_and(|(s, body)| s == 200 && body.contains("trafficmap_agent_info"))
    })?;
    let file = state.join("reports.jsonl");

    // A full window: the closed connection's bytes arrive in the windows that follow.
    let (sent, back) = (1_000_003, 2_000_005);
    peer.conversation(7101, sent, back)?;
    let want = (sent as u64, back as u64, back as u64, sent as u64);
    let deadline = Instant::now() + Duration::from_secs(20);
    while both_ends(&reports(&file)?, 7101) != want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
    }
    let got = both_ends(&reports(&file)?, 7101);
    if got != want {
        bail!(
            "port 7101: (client sent, client received, server sent, server received) = {got:?}, expected {want:?}\n{}",
            agent.log()
        );
    }
    let process = reports(&file)?
        .iter()
        .find_map(|r| pair(r, HOST_ADDR, PEER_ADDR, 7101, "client"))
        .map(|p| p.2)
        .unwrap_or_default();
    // The client runs on a thread named `img-client` of this process: the agent names the
    // process (the thread-group leader's comm), never the thread (issue 9).
    if process != "xtask" {
        bail!(
            "port 7101: process `{process}`, expected `xtask` (the process, not its thread `img-client`)"
        );
    }

    // The last window: right after a window closes (a new report line), a conversation, then
    // SIGTERM from the runtime long before the window's end.
    let lines = reports(&file)?.len();
    let deadline = Instant::now() + Duration::from_secs(3 * AGENT_INTERVAL_S as u64);
    while reports(&file)?.len() == lines {
        if Instant::now() > deadline {
            bail!(
                "no window closed in {}s:\n{}",
                3 * AGENT_INTERVAL_S,
                agent.log()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (sent2, back2) = (300_007, 700_011);
    peer.conversation(7102, sent2, back2)?;
    let term_at = Utc::now();
    let log = agent.terminate()?;
    let rs = reports(&file)?;
    let last = rs.last().context("no report")?;
    let (start, end) = window(last)?;
    let interval = TimeDelta::seconds(AGENT_INTERVAL_S);
    if end - start >= interval || end < term_at || end.timestamp_subsec_nanos() == 0 {
        bail!(
            "the last report's window {start}..{end} is not the partial window ended by SIGTERM at {term_at}"
        );
    }
    let want2 = (sent2 as u64, back2 as u64, back2 as u64, sent2 as u64);
    let in_last = both_ends(std::slice::from_ref(last), 7102);
    let in_all = both_ends(&rs, 7102);
    if in_last != want2 || in_all != want2 {
        bail!(
            "port 7102: in the last window {in_last:?}, in all {in_all:?}, expected {want2:?} in the last window only\n{log}"
        );
    }
    if !log.contains("SIGTERM") {
        bail!("the agent's log does not mention SIGTERM:\n{log}");
    }
    Ok(format!(
        "agent under runc (host PID and network, 5 capabilities, read-only root, BTF/tracefs/spool/config mounts): exact bytes both ends in a full window and in the SIGTERM-flushed partial window ({} reports)",
        rs.len()
    ))
}

const AGENT_TOKEN: &str = "image-test-agent-token-0123456789";
const READ_TOKEN: &str = "image-test-read-token-0123456789";

/// A report in the golden reports' form from `host` with one pair.
fn golden_style_report(
    id: &str,
    host: &str,
    addr: &str,
    start: DateTime<Utc>,
    pair: (&str, u16, &str, &str, u64, u64),
) -> Value {
    let t = |d: DateTime<Utc>| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (peer, port, role, process, sent, received) = pair;
    json!({
        "schema": "trafficmap.report/v1",
        "report_id": id,
        "seq": 1,
        "agent": { "version": version(), "backend": "tracepoint", "kernel": "6.18.0" },
        "host": {
            "hostname": host,
            "machine_id": format!("{:0>32}", host.bytes().map(|b| format!("{b:02x}")).collect::<String>()),
            "addresses": [addr],
        },
        "window": { "start": t(start), "end": t(start + TimeDelta::minutes(1)) },
        "health": { "drops": { "conns_full": 0, "read_failed": 0 }, "map_entries": 1, "map_capacity": 65536, "spool_dropped": 0 },
        "pairs": [{
            "local_ip": addr, "peer_ip": peer, "server_port": port, "role": role,
            "role_source": "observed", "process": process,
            "bytes_sent": sent, "bytes_received": received,
            "connections_opened": 1, "connections_closed": 1, "connections_active": 0,
            "first_seen": t(start), "last_seen": t(start + TimeDelta::seconds(30)),
        }],
    })
}

/// The collector image under runc with a volume owned by its user: reports in, a map out,
/// SIGTERM, a new container on the same volume serves the same map and knows the reports.
fn run_collector(b: &Built, out: &Path) -> Result<String> {
    use std::os::unix::fs::{PermissionsExt as _, chown};
    step("images: the collector under runc, data on a volume");
    let dir = out.join("run-collector");
    let bundle = unpack(b, &dir)?;
    let data = dir.join("data");
    let secrets = dir.join("secrets");
    let config = dir.join("collector.toml");
    std::fs::create_dir_all(&data)?;
    std::fs::create_dir_all(&secrets)?;
    // The StatefulSet's fsGroup makes the volume the user's; here it is chowned.
    chown(&data, Some(NONROOT), Some(NONROOT))?;
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))?;
    for (f, text) in [
        ("tokens", format!("{AGENT_TOKEN} image-test *\n")),
        ("read-tokens", format!("{READ_TOKEN} viewer\n")),
    ] {
        let p = secrets.join(f);
        std::fs::write(&p, text)?;
        chown(&p, Some(NONROOT), Some(NONROOT))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
    }
    let port = free_port()?;
    std::fs::write(
        &config,
        format!(
            "# The StatefulSet's collector.toml, on loopback over plain HTTP (no TLS secret here).\n\
             listen = \"127.0.0.1:{port}\"\ndata_dir = \"/var/lib/trafficmap/collector\"\n\
             token_file = \"/etc/trafficmap/secrets/tokens\"\n\
             read_token_file = \"/etc/trafficmap/secrets/read-tokens\"\n"
        ),
    )?;
    let spec = patch_spec(
        &bundle,
        &["--config", "/etc/trafficmap/collector.toml", "--no-dns"],
        &[],
        false,
        vec![
            bind("/etc/trafficmap/collector.toml", &config, false),
            bind("/etc/trafficmap/secrets", &secrets, false),
            bind("/var/lib/trafficmap/collector", &data, true),
        ],
    )?;
    if spec["process"]["user"]["uid"] != NONROOT || spec["process"]["user"]["gid"] != NONROOT {
        bail!("the collector's bundle runs as {}", spec["process"]["user"]);
    }
    let base = format!("http://127.0.0.1:{port}");
    let start_one = |n: u32| -> Result<Container> {
        let id = format!("trafficmap-collector-test-{}-{n}", std::process::id());
        let mut c = Container::start(&bundle, &id, &dir.join(format!("collector-{n}.log")))?;
        let url = format!("{base}/healthz");
        c.wait_ready("/healthz", || {
            http(&url, None, None, &dir).is_ok_and(|(s, _)| s == 200)
        })?;
        Ok(c)
    };

    let minute = (Utc::now() - TimeDelta::minutes(1)).duration_trunc(TimeDelta::minutes(1))?;
    let reports = [
        golden_style_report(
            "IMAGETESTapi10000000000001",
            "img-api-1",
            "10.0.1.11",
            minute,
            (
                "10.0.2.21",
                5432,
                "client",
                "api-server",
                1_000_003,
                2_000_005,
            ),
        ),
        golden_style_report(
            "IMAGETESTweb10000000000001",
            "img-web-1",
            "10.0.1.31",
            minute,
            ("203.0.113.50", 443, "server", "nginx", 4_444, 55_555),
        ),
    ];
    let total: u64 = 1_000_003 + 2_000_005 + 4_444 + 55_555;
    let files: Vec<PathBuf> = reports
        .iter()
        .enumerate()
        .map(|(i, r)| -> Result<PathBuf> {
            let p = dir.join(format!("report-{i}.json"));
            std::fs::write(&p, serde_json::to_vec(r)?)?;
            Ok(p)
        })
        .collect::<Result<_>>()?;
    let map_url = format!(
        "{base}/api/v1/maps?view=instances&from={}&to={}",
        minute.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        (minute + TimeDelta::minutes(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    let post_all = |want: &str| -> Result<()> {
        for (f, r) in files.iter().zip(&reports) {
            let (s, body) = http(
                &format!("{base}/api/v1/reports"),
                Some(AGENT_TOKEN),
                Some(f),
                &dir,
            )?;
            let v: Value = serde_json::from_str(&body).unwrap_or_default();
            if !(200..300).contains(&s) || v["status"] != want || v["report_id"] != r["report_id"] {
                bail!(
                    "POST {}: {s} {body}, expected status `{want}`",
                    r["report_id"]
                );
            }
        }
        Ok(())
    };
    let map = || -> Result<Value> {
        let (s, body) = http(&map_url, Some(READ_TOKEN), None, &dir)?;
        if s != 200 {
            bail!("GET map: {s} {body}");
        }
        let mut v: Value = serde_json::from_str(&body)?;
        // When it was built, not what it holds.
        v.as_object_mut()
            .context("a map that is not an object")?
            .remove("generated_at");
        Ok(v)
    };

    let first = start_one(1)?;
    post_all("stored")?;
    let before = map()?;
    if before["totals"]["bytes"] != total {
        bail!(
            "map totals.bytes {}, expected {total}:\n{before}",
            before["totals"]["bytes"]
        );
    }
    first.terminate()?;
    let second = start_one(2)?;
    let after = map()?;
    if after != before {
        bail!(
            "after a restart on the same volume the map differs:\nbefore {before}\nafter {after}"
        );
    }
    // The reports' ids survived too: the same reports again are duplicates, and the map is unchanged.
    post_all("duplicate")?;
    if map()? != before {
        bail!("re-posted reports changed the map");
    }
    second.terminate()?;
    Ok(format!(
        "collector under runc as {NONROOT}:{NONROOT} (read-only root, no capability): {total} bytes in, same map and duplicates recognised after SIGTERM and a new container on the volume"
    ))
}
