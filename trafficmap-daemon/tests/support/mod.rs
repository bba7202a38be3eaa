//! Helpers for the privileged probe tests: a private network namespace per test thread, the
//! backend under test, explicit skips, and reading everything the probe holds.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    fs::File,
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use trafficmap_common::Conn;
use trafficmap_daemon::{
    backend::{AttachMode, Backend},
    conn::{ConnExt as _, ConnId},
    probe::{NetnsScope, Probe, ProbeOptions},
};

/// Whether privileged tests can run. Without root they are skipped with a message, unless `CI`
/// is set: in CI a skip would hide a failure, so it fails instead.
pub fn privileged() -> bool {
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("privileged probe tests need root, and CI is set: refusing to skip");
    }
    eprintln!("SKIPPED: needs root to load eBPF (run `sudo -E cargo test` or `cargo xtask test`)");
    false
}

/// The attach mode under test: `TRAFFICMAP_TEST_BACKEND=auto|fexit|kprobe|tracepoint|counters`.
pub fn mode_under_test() -> AttachMode {
    std::env::var("TRAFFICMAP_TEST_BACKEND")
        .ok()
        .map(|s| s.parse().expect("TRAFFICMAP_TEST_BACKEND"))
        .unwrap_or(AttachMode::Auto)
}

/// A fresh network namespace for the calling thread (threads it spawns inherit it), with `lo`
/// up; the thread returns to its original namespace on drop. `!Send`: namespaces are per thread.
pub struct NetNs {
    original: File,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl NetNs {
    pub fn new() -> NetNs {
        let original = File::open("/proc/thread-self/ns/net").expect("open own netns");
        assert_eq!(
            unsafe { libc::unshare(libc::CLONE_NEWNET) },
            0,
            "unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        );
        set_up("lo");
        NetNs {
            original,
            _not_send: std::marker::PhantomData,
        }
    }

    /// Path naming this namespace for `--netns`.
    pub fn path(&self) -> std::path::PathBuf {
        // Valid from any thread while the creating thread lives.
        format!("/proc/{}/task/{}/ns/net", std::process::id(), unsafe {
            libc::gettid()
        })
        .into()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        unsafe { libc::setns(self.original.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}

fn set_up(ifname: &str) {
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in ifname.bytes().enumerate() {
            req.ifr_name[i] = b as libc::c_char;
        }
        assert_eq!(libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req), 0);
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        assert_eq!(
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &mut req),
            0,
            "bring {ifname} up: {}",
            std::io::Error::last_os_error()
        );
        libc::close(fd);
    }
}

/// Loads the probe for the backend under test, counting only `ns`.
pub fn load(ns: &NetNs) -> Probe {
    load_with(ns, mode_under_test())
}

/// `TRAFFICMAP_TEST_CLASSIC_TP=1`: classic tracepoints even where raw ones work.
pub fn classic_tracepoints() -> bool {
    std::env::var_os("TRAFFICMAP_TEST_CLASSIC_TP").is_some_and(|v| v == "1")
}

pub fn load_with(ns: &NetNs, attach: AttachMode) -> Probe {
    let opts = ProbeOptions {
        attach,
        netns: NetnsScope::Path(ns.path()),
        classic_tracepoints: classic_tracepoints(),
        ..ProbeOptions::default()
    };
    let probe = Probe::load(&opts).unwrap_or_else(|e| panic!("loading the probe ({attach}): {e}"));
    if let AttachMode::Force(b) = attach {
        assert_eq!(probe.backend(), b);
    }
    probe
}

/// Everything the probe holds now, newest record per connection (final records win).
pub fn collect(probe: &mut Probe) -> HashMap<ConnId, Conn> {
    let mut live = Vec::new();
    probe.read_live(&mut live).expect("read live connections");
    let mut closed = Vec::new();
    probe.read_closed(&mut closed);
    let mut out: HashMap<ConnId, Conn> = HashMap::new();
    for c in live.into_iter().chain(closed) {
        let e = out.entry(c.id()).or_insert(c);
        if c.is_destroyed() || c.bytes_sent + c.bytes_received >= e.bytes_sent + e.bytes_received {
            *e = c;
        }
    }
    out
}

/// The one connection with this local and remote port.
pub fn find(conns: &HashMap<ConnId, Conn>, local_port: u16, remote_port: u16) -> Conn {
    let found: Vec<&Conn> = conns
        .values()
        .filter(|c| c.sport == local_port && c.dport == remote_port)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one connection {local_port}->{remote_port}, found {found:?} among {:?}",
        conns
            .values()
            .map(|c| (c.sport, c.dport, c.flags, c.bytes_sent))
            .collect::<Vec<_>>()
    );
    *found[0]
}

/// Polls `f` until it returns `Some`, for up to `limit`.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Inode of this namespace.
pub fn inode(ns: &NetNs) -> u32 {
    trafficmap_daemon::probe::netns_inode(&ns.path()).unwrap()
}

/// Asserts the probe recorded no error of any kind.
pub fn assert_no_errors(probe: &Probe) {
    let named: Vec<_> = probe
        .drops()
        .unwrap()
        .into_iter()
        .filter(|(_, n)| *n != 0)
        .collect();
    assert!(named.is_empty(), "probe errors: {named:?}");
}

pub fn backend_name(b: Backend) -> &'static str {
    b.as_str()
}

/// A cgroup v2 directory the test creates (issue 11), named like a container's, under the
/// machine's cgroup2 mount; removed on drop (after its processes exited).
pub struct TestCgroup {
    pub path: std::path::PathBuf,
    /// Its path in the hierarchy, as `/proc/<pid>/cgroup` shows it.
    pub hierarchy_path: String,
}

impl TestCgroup {
    /// `/<test dir>/<name>` under the cgroup2 mount.
    pub fn new(test: &str, name: &str) -> TestCgroup {
        let m = trafficmap_daemon::containers::find_cgroup2(None)
            .expect("a cgroup2 mount in /proc/self/mountinfo");
        assert_eq!(
            m.root, "/",
            "the test expects the whole cgroup2 hierarchy mounted"
        );
        let rel = format!("tm-test-{}-{test}/{name}", std::process::id());
        let path = m.mount_point.join(&rel);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        TestCgroup {
            path,
            hierarchy_path: format!("/{rel}"),
        }
    }

    /// The cgroup id: what `bpf_get_current_cgroup_id()` returns for its processes.
    pub fn id(&self) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        std::fs::metadata(&self.path).unwrap().ino()
    }

    /// Runs `f` in a child process moved into this cgroup first (the calling thread's network
    /// namespace is inherited). Returns the child's pid; see [`wait_child`].
    pub fn fork(&self, f: impl FnOnce() -> bool) -> libc::pid_t {
        let procs = self.path.join("cgroup.procs");
        // SAFETY: the child moves itself, runs `f` (allocation is fork-safe in glibc) and leaves
        // with `_exit`, never returning into the test harness.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            let ok = std::fs::write(&procs, b"0").is_ok() && f();
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        pid
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.path);
        if let Some(parent) = self.path.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// Waits for child `pid` and asserts it exited with 0.
pub fn wait_child(pid: libc::pid_t, what: &str) {
    let mut status = 0;
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{what}: status {status}"
    );
}
