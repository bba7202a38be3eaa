//! Loads the eBPF probe into the running kernel, attaches one byte-counting backend plus the
//! lifecycle tracepoints, and reads the probe's maps. Dropping a [`Probe`] detaches and unloads
//! everything (aya closes the links and program file descriptors).

use std::{
    fmt,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{Map, MapData, MapError, PerCpuArray, RingBuf},
    programs::{FExit, KProbe, KProbeError, ProgramError, RawTracePoint, TracePoint},
};
use tracing::{debug, info, warn};
use trafficmap_common::{
    Conn, ErrorReason, Offsets, Owner, ProbeConfig, TRACEPOINT_FIELDS, flags,
    names::{self, CLOSED, CONNS, ERRORS},
    setting,
};

use crate::{
    backend::{AttachMode, Backend, SelectError, Selection, select},
    btf::{Btf, BtfError},
    diag::{self, Counting, DiagEntry, DiagError, DiagSocket},
    error::{chain, has_errno},
    kretprobe::{self, TracefsKretprobe},
    tracefs,
};

/// The kernel-internal `ENOTSUPP` (include/linux/errno.h), not userspace's `ENOTSUP` (95): BPF
/// syscalls return it for operations a map or kernel lacks. libc does not define it.
const ENOTSUPP: i32 = 524;

/// The kprobe PMU's type number; aya reads it before attaching a kprobe, so failing to read it
/// means the kernel has no kprobe PMU.
const KPROBE_PMU_TYPE: &str = "/sys/bus/event_source/devices/kprobe/type";

/// The probe object, built by build.rs from `trafficmap-ebpf`.
static PROBE_ELF: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/trafficmap"));

/// Which sockets to count.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NetnsScope {
    /// Every network namespace of the machine.
    #[default]
    All,
    /// Only the namespace behind this path (`/proc/<pid>/ns/net`, `/run/netns/<name>`).
    Path(PathBuf),
}

impl std::str::FromStr for NetnsScope {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(if s == "all" {
            NetnsScope::All
        } else {
            NetnsScope::Path(s.into())
        })
    }
}

impl std::fmt::Display for NetnsScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NetnsScope::All => f.write_str("all"),
            NetnsScope::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Inode number of a network namespace file, as the kernel's `net->ns.inum`.
pub fn netns_inode(path: &Path) -> std::io::Result<u32> {
    use std::os::unix::fs::MetadataExt as _;
    let ino = std::fs::metadata(path)?.ino();
    u32::try_from(ino).map_err(|_| std::io::Error::other(format!("inode {ino} out of range")))
}

/// Probe settings.
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    pub attach: AttachMode,
    pub netns: NetnsScope,
    /// Capacity of the live connection table.
    pub max_connections: u32,
    /// Size of the ring buffer of final records, in bytes (a power of two, >= one page).
    pub closed_buffer_bytes: u32,
    /// Thread group whose traffic is not counted (the agent's own); 0 = none.
    pub ignore_tgid: u32,
    /// Use classic tracepoints even where raw ones work (to test the fallback).
    pub classic_tracepoints: bool,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions {
            attach: AttachMode::Auto,
            netns: NetnsScope::All,
            max_connections: 65_536,
            closed_buffer_bytes: 4 << 20,
            ignore_tgid: 0,
            classic_tracepoints: false,
        }
    }
}

/// Why the probe could not be loaded. Each message says what is missing and what to do.
///
/// Variants that embed their cause's chain in the message do not also mark it `#[source]`:
/// `{:#}` (anyhow, in the agent's last line) would print it twice.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "this kernel has no BTF (/sys/kernel/btf/vmlinux: {0}); trafficmap needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    )]
    NoBtf(std::io::Error),
    #[error("kernel BTF cannot be used: {0}")]
    Btf(#[from] BtfError),
    #[error("tracefs is not mounted; mount it with `mount -t tracefs nodev /sys/kernel/tracing`")]
    NoTracefs,
    #[error("the tracepoint {0} does not exist on this kernel (it needs Linux >= 4.16)")]
    TracepointMissing(&'static str),
    #[error("unexpected tracepoint layout, the probe would read wrong fields: {}", .0.join("; "))]
    TracepointLayout(Vec<String>),
    #[error(
        "permission denied loading eBPF ({0}); run as root, or with CAP_BPF, CAP_PERFMON and CAP_DAC_READ_SEARCH (Linux >= 5.8), see README \"Privileges\""
    )]
    Permission(Denied),
    #[error(
        "cannot open network namespace {path}: {source}; pass a path such as /proc/<pid>/ns/net or /run/netns/<name>, or `all`"
    )]
    Netns {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid --closed-buffer-bytes {0}: must be a power of two of at least 4096")]
    BadRingSize(u32),
    #[error("loading the probe failed: {}", chain(.0))]
    AyaBtf(aya::BtfError),
    #[error("loading the probe failed: {}", chain(.0))]
    Load(Box<EbpfError>),
    #[error("loading the probe failed: no {0} map")]
    MissingMap(&'static str),
    #[error("loading the probe failed: {0} is not a hash map")]
    NotHashMap(&'static str),
    #[error(
        "loading the probe failed: {map} layout mismatch: key {key} value {value} bytes, userspace expects 8 and {expected}"
    )]
    MapLayout {
        map: &'static str,
        key: u32,
        value: u32,
        expected: usize,
    },
    #[error("attaching the lifecycle tracepoint {event} failed: {reason}")]
    Lifecycle {
        event: &'static str,
        reason: AttachError,
    },
    #[error(transparent)]
    Backend(#[from] SelectError),
    #[error("reading probe map {map}: {source}")]
    Map { map: &'static str, source: MapError },
    #[error("counters backend: reading live connections: {0}")]
    Diag(#[from] DiagError),
}

/// What the kernel refused to let the agent do (the cause in [`ProbeError::Permission`]).
#[derive(Debug, thiserror::Error)]
pub enum Denied {
    #[error("reading tracefs at {}", .0.display())]
    Tracefs(PathBuf),
    #[error("{}", chain(.0))]
    Load(Box<EbpfError>),
    #[error("{0}")]
    Attach(AttachError),
}

/// One step of loading or attaching a program, for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Load {
        prog: &'static str,
    },
    AttachTracepoint {
        category: &'static str,
        event: &'static str,
    },
    AttachRawTracepoint {
        event: &'static str,
    },
    LoadFexit {
        target: &'static str,
    },
    AttachFexit {
        target: &'static str,
    },
    AttachKprobe {
        prog: &'static str,
        target: &'static str,
    },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Load { prog } => write!(f, "loading {prog}"),
            Step::AttachTracepoint { category, event } => {
                write!(f, "attaching {category}:{event}")
            }
            Step::AttachRawTracepoint { event } => write!(f, "attaching raw tracepoint {event}"),
            Step::LoadFexit { target } => write!(f, "loading fexit on {target}"),
            Step::AttachFexit { target } => write!(f, "attaching fexit on {target}"),
            Step::AttachKprobe { prog, target } => write!(f, "attaching {prog} to {target}"),
        }
    }
}

/// Why one program of the probe could not be loaded or attached. Its text is the skip reason
/// a backend's [`crate::backend::Attempt`] keeps.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("program {0} missing from the probe object")]
    MissingProgram(&'static str),
    /// The program has another type than the step needs, or has no descriptor.
    #[error("{}", chain(.0))]
    Program(#[source] Box<ProgramError>),
    #[error("{step}: {}", chain(.source))]
    Step {
        step: Step,
        #[source]
        source: Box<ProgramError>,
    },
    #[error(
        "kprobes are not available (no kprobe PMU: kernel built without CONFIG_KPROBES?): {}",
        chain(.0)
    )]
    NoKprobePmu(#[source] Box<ProgramError>),
    #[error("tracepoint {0} does not exist (added in Linux 6.3)")]
    NoSocketTracepoint(&'static str),
    #[error("{0}")]
    Tracepoints(Box<ProbeError>),
}

// aya's errors are boxed: they are large, and these travel through every `Result` of the loader.
impl AttachError {
    fn at(step: Step) -> impl FnOnce(ProgramError) -> AttachError {
        move |source| AttachError::Step {
            step,
            source: Box::new(source),
        }
    }

    fn program(e: ProgramError) -> AttachError {
        AttachError::Program(Box::new(e))
    }

    /// The kernel said EPERM somewhere along the way (lockdown, missing capabilities).
    fn is_permission(&self) -> bool {
        has_errno(self, libc::EPERM)
    }
}

/// aya could not read the kprobe PMU's files: the kernel has no kprobe PMU.
fn is_missing_kprobe_pmu(e: &ProgramError) -> bool {
    matches!(
        e,
        ProgramError::KProbeError(KProbeError::FileError { filename, .. })
            if filename == Path::new(KPROBE_PMU_TYPE)
    )
}

/// Entries of each kprobe in-flight map for a connection table of `max_connections`.
pub fn inflight_entries(max_connections: u32) -> u32 {
    (max_connections / 4).max(1024)
}

/// Facts about the kernel the probe was fitted to.
#[derive(Clone, Debug)]
pub struct KernelFacts {
    pub release: String,
    pub offsets: Offsets,
    /// `tcp_recvmsg` takes the pre-5.19 `nonblock` argument.
    pub recvmsg_nonblock: bool,
    /// `tcp_sendpage` exists (sendfile goes through it before 6.5).
    pub has_sendpage: bool,
    /// Every raw tracepoint the probe uses has the prototype it expects.
    pub raw_tracepoints: bool,
    /// BTF has the `tcp_sock` counters the counters backend reads at close.
    pub counters_offsets: bool,
}

/// Reads struct offsets and prototypes from kernel BTF.
pub fn kernel_facts(btf: &Btf) -> Result<KernelFacts, ProbeError> {
    let sc = |m| btf.member_offset("sock_common", m);
    // The probe adds these to a `struct sock *`; that is right only if sock_common comes first.
    let base = btf.member_offset("sock", "__sk_common")?;
    let offsets = Offsets {
        skc_family: base + sc("skc_family")?,
        skc_state: base + sc("skc_state")?,
        skc_num: base + sc("skc_num")?,
        skc_dport: base + sc("skc_dport")?,
        skc_rcv_saddr: base + sc("skc_rcv_saddr")?,
        skc_daddr: base + sc("skc_daddr")?,
        skc_v6_rcv_saddr: base + sc("skc_v6_rcv_saddr")?,
        skc_v6_daddr: base + sc("skc_v6_daddr")?,
        skc_net: base + sc("skc_net")?,
        net_ns_inum: btf.path_offset("net", "ns.inum")?,
        sk_protocol: btf.member_offset("sock", "sk_protocol")?,
        task_group_leader: btf.member_offset("task_struct", "group_leader")?,
        task_comm: btf.member_offset("task_struct", "comm")?,
        tcp_bytes_acked: 0,
        tcp_bytes_received: 0,
        tcp_snd_una: 0,
        tcp_write_seq: 0,
        sk_flags: 0,
        skc_cookie: 0,
    };
    // The counters backend's fields: optional, a kernel without them runs the other backends.
    // `struct tcp_sock` starts with `struct sock` (through inet_connection_sock and inet_sock),
    // so its offsets are offsets from the socket pointer too.
    let counters = (|| -> Result<_, BtfError> {
        if btf.member_offset("tcp_sock", "inet_conn")? != 0
            || btf.member_offset("inet_connection_sock", "icsk_inet")? != 0
            || btf.member_offset("inet_sock", "sk")? != 0
        {
            return Ok(None);
        }
        Ok(Some((
            btf.member_offset("tcp_sock", "bytes_acked")?,
            btf.member_offset("tcp_sock", "bytes_received")?,
            btf.member_offset("tcp_sock", "snd_una")?,
            btf.member_offset("tcp_sock", "write_seq")?,
            // `sk_flags` is `#define`d to `__sk_common.skc_flags`.
            base + sc("skc_flags")?,
            base + sc("skc_cookie")?,
        )))
    })();
    let mut offsets = offsets;
    let counters_offsets = match counters {
        Ok(Some((acked, received, una, write_seq, sk_flags, cookie))) => {
            offsets.tcp_bytes_acked = acked;
            offsets.tcp_bytes_received = received;
            offsets.tcp_snd_una = una;
            offsets.tcp_write_seq = write_seq;
            offsets.sk_flags = sk_flags;
            offsets.skc_cookie = cookie;
            true
        }
        Ok(None) => false,
        Err(e) => {
            debug!(error = %e, "no tcp_sock counters in BTF: the counters backend cannot run");
            false
        }
    };
    let recv_params = btf.function_params("tcp_recvmsg")?;
    btf.function_params("tcp_sendmsg")?;
    Ok(KernelFacts {
        release: kernel_release(),
        offsets,
        recvmsg_nonblock: recv_params >= 6,
        has_sendpage: btf.has_function("tcp_sendpage"),
        counters_offsets,
        raw_tracepoints: trafficmap_common::RAW_TRACEPOINT_ARITY
            .iter()
            .filter(|(tp, _)| !tp.starts_with("sock_") || btf.raw_tracepoint_arity(tp).is_some())
            .all(|&(tp, n)| btf.raw_tracepoint_arity(tp) == Some(n)),
    })
}

pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// The loaded, attached probe.
pub struct Probe {
    // Field order matters for Drop: maps first, then the object owning programs and links.
    conns: Map,
    closed: RingBuf<MapData>,
    errors: PerCpuArray<MapData, u64>,
    /// kretprobes attached through tracefs (kprobe backend); removed before the programs go.
    kretprobes: Vec<TracefsKretprobe>,
    ebpf: Ebpf,
    selection: Selection,
    facts: KernelFacts,
    tracepoints: TracepointKind,
    netns_inum: u32,
    max_connections: u32,
    batch_supported: bool,
    /// The counters backend's live read.
    counters: Option<LiveCounters>,
}

/// The counters backend's `sock_diag` sockets and baselines.
struct LiveCounters {
    sockets: Vec<DiagSocket>,
    counting: Counting,
    /// Reused between drains.
    entries: Vec<DiagEntry>,
}

impl LiveCounters {
    /// Dumps the connections of every namespace read live into `self.entries`.
    fn dump(&mut self, cap: usize) -> Result<(), DiagError> {
        self.entries.clear();
        for s in &mut self.sockets {
            s.dump(diag::conversation_states(), &mut self.entries, cap)?;
        }
        Ok(())
    }
}

/// Starts the counters backend once the lifecycle programs run: opens the `sock_diag` sockets,
/// switches the programs to counters mode, takes the baselines of the connections open now
/// and names the owners of the listeners open now.
fn start_counters(
    ebpf: &mut Ebpf,
    facts: &KernelFacts,
    scope: Option<(&Path, u32)>,
    cap: usize,
) -> Result<LiveCounters, String> {
    if !facts.counters_offsets {
        return Err(
            "kernel BTF lacks a field the counters backend reads (tcp_sock bytes_acked, \
             bytes_received, snd_una, write_seq; sock_common skc_flags, skc_cookie)"
                .into(),
        );
    }
    let sockets = diag::open_sockets(scope).map_err(|e| format!("netlink sock_diag: {e}"))?;
    let mut settings = aya::maps::Array::<&mut MapData, u32>::try_from(
        ebpf.map_mut(names::SETTINGS)
            .ok_or_else(|| "no SETTINGS map".to_owned())?,
    )
    .map_err(|e| e.to_string())?;
    settings
        .set(setting::COUNTERS, 1, 0)
        .map_err(|e| format!("switching the probe to counters mode: {e}"))?;
    let mut live = LiveCounters {
        sockets,
        counting: Counting::default(),
        entries: Vec::new(),
    };
    // Baselines after the switch: a connection that closes from now on has its final counters
    // read, and one open now counts from here.
    live.dump(cap).map_err(|e| e.to_string())?;
    let mut listeners = Vec::new();
    for s in &mut live.sockets {
        s.dump(
            netlink_packet_sock_diag::inet::StateFlags::LISTEN,
            &mut listeners,
            cap,
        )
        .map_err(|e| e.to_string())?;
    }
    let inodes = live
        .entries
        .iter()
        .chain(&listeners)
        .map(|e| e.inode)
        .filter(|&i| i != 0)
        .collect();
    let owners = diag::socket_owners(&inodes);
    live.counting.set_baselines(&live.entries, &owners, cap);
    let mut map = aya::maps::HashMap::<&mut MapData, u64, Owner>::try_from(
        ebpf.map_mut(names::LISTENERS)
            .ok_or_else(|| "no LISTENERS map".to_owned())?,
    )
    .map_err(|e| e.to_string())?;
    for l in &listeners {
        if let Some(o) = owners.get(&l.inode) {
            let key = (u64::from(l.netns) << 32) | u64::from(l.sport);
            let owner = Owner {
                pid: o.pid,
                comm: o.comm,
                cgroup_id: o.cgroup_id,
                ..Owner::ZERO
            };
            // BPF_NOEXIST: an owner the probe saw call `listen` since it loaded is fresher.
            let _ = map.insert(key, owner, 2);
        }
    }
    info!(
        namespaces = live.sockets.len(),
        older_connections = live.counting.baselines(),
        "counters backend: live connections read through sock_diag"
    );
    Ok(live)
}

/// (raw tracepoint program, classic tracepoint program, category, event).
const LIFECYCLE: [(&str, &str, &str, &str); 2] = [
    (
        names::RAW_INET_SOCK_SET_STATE,
        names::TP_INET_SOCK_SET_STATE,
        "sock",
        "inet_sock_set_state",
    ),
    (
        names::RAW_TCP_DESTROY_SOCK,
        names::TP_TCP_DESTROY_SOCK,
        "tcp",
        "tcp_destroy_sock",
    ),
];

/// How the probe's tracepoints are attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TracepointKind {
    /// `BPF_PROG_TYPE_RAW_TRACEPOINT`: the program gets the tracepoint's arguments directly;
    /// no trace record is filled, which makes each hit much cheaper.
    Raw,
    /// `BPF_PROG_TYPE_TRACEPOINT` through perf: a trace record is filled for every hit.
    Classic,
}

impl Probe {
    /// Loads and attaches the probe; on error nothing stays attached.
    pub fn load(opts: &ProbeOptions) -> Result<Probe, ProbeError> {
        if opts.closed_buffer_bytes < 4096 || !opts.closed_buffer_bytes.is_power_of_two() {
            return Err(ProbeError::BadRingSize(opts.closed_buffer_bytes));
        }
        let netns_inum = match &opts.netns {
            NetnsScope::All => 0,
            NetnsScope::Path(p) => netns_inode(p).map_err(|source| ProbeError::Netns {
                path: p.clone(),
                source,
            })?,
        };
        let raw_btf = std::fs::read("/sys/kernel/btf/vmlinux").map_err(ProbeError::NoBtf)?;
        // Our reader first, dropped before aya parses the same data: only one decoded copy of
        // vmlinux BTF lives at a time.
        let facts = kernel_facts(&Btf::parse(&raw_btf)?)?;
        let tracefs = tracefs::mount_point().map_err(|e| match e {
            tracefs::Unavailable::NotMounted => ProbeError::NoTracefs,
            tracefs::Unavailable::PermissionDenied(p) => ProbeError::Permission(Denied::Tracefs(p)),
        })?;
        check_tracepoints(
            &tracefs,
            &["sock/inet_sock_set_state", "tcp/tcp_destroy_sock"],
        )?;

        let config = ProbeConfig {
            offsets: facts.offsets,
            netns_inum,
            ignore_tgid: opts.ignore_tgid,
            ring_wakeup_bytes: opts.closed_buffer_bytes / 4,
            _pad: 0,
        };
        let aya_btf =
            aya::Btf::parse(&raw_btf, aya::Endianness::default()).map_err(ProbeError::AyaBtf)?;
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&aya_btf))
            .override_global("CONFIG", &config, true)
            .map_max_entries(CONNS, opts.max_connections)
            // kprobe mode: calls in flight at once, at most one per thread; sized with the
            // connection table.
            .map_max_entries(names::INFLIGHT_SEND, inflight_entries(opts.max_connections))
            .map_max_entries(names::INFLIGHT_RECV, inflight_entries(opts.max_connections))
            .map_max_entries(CLOSED, opts.closed_buffer_bytes)
            .load(PROBE_ELF)
            .map_err(|e| {
                if has_errno(&e, libc::EPERM) {
                    ProbeError::Permission(Denied::Load(Box::new(e)))
                } else {
                    ProbeError::Load(Box::new(e))
                }
            })?;

        let try_raw = facts.raw_tracepoints && !opts.classic_tracepoints;
        let mut tracepoints = TracepointKind::Classic;
        for (raw, classic, category, event) in LIFECYCLE {
            tracepoints =
                attach_tp(&mut ebpf, raw, classic, category, event, try_raw).map_err(|reason| {
                    if reason.is_permission() {
                        ProbeError::Permission(Denied::Attach(reason))
                    } else {
                        ProbeError::Lifecycle { event, reason }
                    }
                })?;
        }

        let mut kretprobes = Vec::new();
        let mut counters = None;
        let scope = match &opts.netns {
            NetnsScope::All => None,
            NetnsScope::Path(p) => Some((p.as_path(), netns_inum)),
        };
        let cap = (opts.max_connections as usize).saturating_mul(2);
        let selection = select(opts.attach, |backend| {
            if backend == Backend::Counters {
                counters = Some(start_counters(&mut ebpf, &facts, scope, cap)?);
                return Ok(());
            }
            let result = attach_backend(
                &mut ebpf,
                backend,
                &facts,
                &aya_btf,
                &tracefs,
                &mut kretprobes,
                try_raw,
            );
            // The reason is kept as text: it is what logs, tests and `--attach` errors show.
            result.map_err(|reason| {
                debug!(%backend, %reason, "backend unavailable");
                reason.to_string()
            })
        })?;
        for (backend, reason) in selection.skipped() {
            info!(%backend, %reason, "byte-counting backend unavailable on this kernel");
        }
        info!(
            backend = %selection.chosen,
            tracepoints = ?tracepoints,
            kernel = %facts.release,
            netns = netns_inum,
            "probe attached"
        );

        let conns = ebpf.take_map(CONNS).ok_or(ProbeError::MissingMap(CONNS))?;
        let closed = RingBuf::try_from(
            ebpf.take_map(CLOSED)
                .ok_or(ProbeError::MissingMap(CLOSED))?,
        )
        .map_err(|source| ProbeError::Map {
            map: CLOSED,
            source,
        })?;
        let errors = PerCpuArray::try_from(
            ebpf.take_map(ERRORS)
                .ok_or(ProbeError::MissingMap(ERRORS))?,
        )
        .map_err(|source| ProbeError::Map {
            map: ERRORS,
            source,
        })?;
        check_value_size(&conns, size_of::<Conn>())?;

        Ok(Probe {
            conns,
            closed,
            errors,
            kretprobes,
            ebpf,
            selection,
            facts,
            tracepoints,
            netns_inum,
            max_connections: opts.max_connections,
            batch_supported: true,
            counters,
        })
    }

    pub fn backend(&self) -> Backend {
        self.selection.chosen
    }

    pub fn selection(&self) -> &Selection {
        &self.selection
    }

    pub fn kernel(&self) -> &KernelFacts {
        &self.facts
    }

    /// Raw or classic tracepoints (lifecycle, and bytes in the tracepoint backend).
    pub fn tracepoint_kind(&self) -> TracepointKind {
        self.tracepoints
    }

    /// Inode of the namespace counted, 0 for all.
    pub fn netns_inum(&self) -> u32 {
        self.netns_inum
    }

    pub fn max_connections(&self) -> u32 {
        self.max_connections
    }

    /// Names of the programs attached (for tests and logs).
    pub fn program_names(&self) -> Vec<String> {
        self.ebpf
            .programs()
            .filter(|(_, p)| p.fd().is_ok())
            .map(|(n, _)| n.to_owned())
            .collect()
    }

    /// Kernel ids of the loaded programs: once the probe is dropped none of them may exist.
    pub fn program_ids(&self) -> Vec<u32> {
        self.ebpf
            .programs()
            .filter_map(|(_, p)| p.info().ok().map(|i| i.id()))
            .collect()
    }

    fn conns_fd(&self) -> BorrowedFd<'_> {
        match &self.conns {
            Map::HashMap(m) => m.fd().as_fd(),
            _ => unreachable!("CONNS is a hash map (checked at load)"),
        }
    }

    /// Appends every live connection to `out`. With the counters backend, each gets its
    /// counters from `sock_diag`, and connections older than the probe are added.
    pub fn read_live(&mut self, out: &mut Vec<Conn>) -> Result<(), ProbeError> {
        let cap = (self.max_connections as usize).saturating_mul(2);
        if self.counters.is_some() {
            // The dump first: a connection born after it is simply read at the next drain,
            // while one read from the table but missing from the dump would be taken for a
            // connection older than the probe.
            let t0 = std::time::Instant::now();
            if let Some(live) = &mut self.counters {
                live.dump(cap)?;
            }
            let t1 = std::time::Instant::now();
            // Straight into `out` and merged in place: no second copy of the table.
            let start = out.len();
            if let Err(e) = self.read_table(out) {
                out.truncate(start);
                return Err(e);
            }
            let t2 = std::time::Instant::now();
            if let Some(LiveCounters {
                counting, entries, ..
            }) = &mut self.counters
            {
                counting.merge(out, start, entries, crate::pairs::monotonic_ns());
                debug!(
                    sockets = entries.len(),
                    records = out.len().saturating_sub(start),
                    dump = ?t1 - t0,
                    table = ?t2 - t1,
                    merge = ?t2.elapsed(),
                    "counters backend: live read"
                );
            }
            return Ok(());
        }
        self.read_table(out)
    }

    fn read_table(&mut self, out: &mut Vec<Conn>) -> Result<(), ProbeError> {
        if self.batch_supported {
            match lookup_batch(self.conns_fd(), out) {
                Ok(()) => return Ok(()),
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINVAL | libc::ENOTSUP | ENOTSUPP)
                    ) =>
                {
                    // Batch ops arrived in 5.6; fall back to key-by-key iteration.
                    warn!(error = %e, "BPF_MAP_LOOKUP_BATCH unsupported, iterating keys");
                    self.batch_supported = false;
                }
                Err(e) => {
                    return Err(ProbeError::Map {
                        map: CONNS,
                        source: MapError::SyscallError(aya::sys::SyscallError {
                            call: "bpf_map_lookup_batch",
                            io_error: e,
                        }),
                    });
                }
            }
        }
        let map = aya::maps::HashMap::<&MapData, u64, Conn>::try_from(&self.conns)
            .map_err(|source| ProbeError::Map { map: CONNS, source })?;
        for item in map.iter() {
            match item {
                Ok((_, c)) => out.push(c),
                // Destroyed between key and value look-up: its final record is in the ring.
                Err(MapError::KeyNotFound) => {}
                Err(source) => return Err(ProbeError::Map { map: CONNS, source }),
            }
        }
        Ok(())
    }

    /// Appends every final record waiting in the ring buffer to `out`; returns how many.
    pub fn read_closed(&mut self, out: &mut Vec<Conn>) -> usize {
        let mut n = 0;
        while let Some(item) = self.closed.next() {
            if item.len() >= size_of::<Conn>() {
                // SAFETY: the probe writes whole `Conn`s; read_unaligned copes with any alignment.
                let mut c = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Conn>()) };
                if let Some(live) = &mut self.counters
                    && c.flags & flags::PREEXISTING != 0
                {
                    let cookie = c.cookie;
                    live.counting.finish(&mut c);
                    live.counting.forget(cookie);
                }
                out.push(c);
                n += 1;
            }
        }
        n
    }

    /// File descriptor that becomes readable when final records are waiting.
    pub fn closed_fd(&self) -> BorrowedFd<'_> {
        self.closed.as_fd()
    }

    /// Error counters summed over CPUs, indexed by `ErrorReason`.
    pub fn errors(&self) -> Result<[u64; ErrorReason::COUNT as usize], ProbeError> {
        let mut out = [0u64; ErrorReason::COUNT as usize];
        for reason in ErrorReason::ALL {
            let values =
                self.errors
                    .get(&(reason as u32), 0)
                    .map_err(|source| ProbeError::Map {
                        map: ERRORS,
                        source,
                    })?;
            // Per-CPU counts; saturating so a corrupt value cannot wrap the total.
            out[reason as usize] = values.iter().fold(0u64, |a, &v| a.saturating_add(v));
        }
        Ok(out)
    }

    /// Kernel error counters by name, plus returns the kretprobes missed (kprobe backend):
    /// everything the probe could not record, for metrics and reports.
    pub fn drops(&self) -> Result<std::collections::BTreeMap<&'static str, u64>, ProbeError> {
        let mut out: std::collections::BTreeMap<&'static str, u64> = ErrorReason::ALL
            .iter()
            .zip(self.errors()?)
            .map(|(r, n)| (r.as_str(), n))
            .collect();
        if self.selection.chosen == Backend::Kprobe {
            out.insert(
                "kretprobe_missed",
                TracefsKretprobe::misses(&self.kretprobes),
            );
        }
        Ok(out)
    }

    /// Removes destroyed entries that stayed in `CONNS` because the ring buffer was full, once
    /// userspace has read them. The entry is re-read first so that a socket reborn at the same
    /// address is left alone.
    pub fn forget_destroyed(&mut self, destroyed: &[Conn]) -> Result<usize, ProbeError> {
        let mut map = aya::maps::HashMap::<&mut MapData, u64, Conn>::try_from(&mut self.conns)
            .map_err(|source| ProbeError::Map { map: CONNS, source })?;
        let mut removed = 0;
        for c in destroyed {
            match map.get(&c.sk, 0) {
                Ok(cur) if cur.born_ns == c.born_ns && map.remove(&c.sk).is_ok() => {
                    removed += 1;
                }
                _ => {}
            }
        }
        Ok(removed)
    }
}

fn check_value_size(map: &Map, expected: usize) -> Result<(), ProbeError> {
    let Map::HashMap(data) = map else {
        return Err(ProbeError::NotHashMap(CONNS));
    };
    let info = data
        .info()
        .map_err(|source| ProbeError::Map { map: CONNS, source })?;
    if info.value_size() as usize != expected || info.key_size() as usize != size_of::<u64>() {
        return Err(ProbeError::MapLayout {
            map: CONNS,
            key: info.key_size(),
            value: info.value_size(),
            expected,
        });
    }
    Ok(())
}

fn check_tracepoints(tracefs: &Path, events: &[&'static str]) -> Result<(), ProbeError> {
    let mut problems = Vec::new();
    for &event in events {
        let fields =
            tracefs::read_format(tracefs, event).ok_or(ProbeError::TracepointMissing(event))?;
        let expected: Vec<(&str, usize, usize)> = TRACEPOINT_FIELDS
            .iter()
            .filter(|(e, ..)| *e == event)
            .map(|&(_, name, off, size)| (name, off, size))
            .collect();
        problems.extend(tracefs::check_fields(event, &fields, &expected));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ProbeError::TracepointLayout(problems))
    }
}

fn attach_classic(
    ebpf: &mut Ebpf,
    prog: &'static str,
    category: &'static str,
    event: &'static str,
) -> Result<(), AttachError> {
    let p: &mut TracePoint = ebpf
        .program_mut(prog)
        .ok_or(AttachError::MissingProgram(prog))?
        .try_into()
        .map_err(AttachError::program)?;
    p.load().map_err(AttachError::at(Step::Load { prog }))?;
    p.attach(category, event)
        .map_err(AttachError::at(Step::AttachTracepoint { category, event }))?;
    Ok(())
}

fn attach_raw(ebpf: &mut Ebpf, prog: &'static str, event: &'static str) -> Result<(), AttachError> {
    let p: &mut RawTracePoint = ebpf
        .program_mut(prog)
        .ok_or(AttachError::MissingProgram(prog))?
        .try_into()
        .map_err(AttachError::program)?;
    p.load().map_err(AttachError::at(Step::Load { prog }))?;
    p.attach(event)
        .map_err(AttachError::at(Step::AttachRawTracepoint { event }))?;
    Ok(())
}

/// Attaches one tracepoint, raw if allowed and possible, else classic.
fn attach_tp(
    ebpf: &mut Ebpf,
    raw: &'static str,
    classic: &'static str,
    category: &'static str,
    event: &'static str,
    try_raw: bool,
) -> Result<TracepointKind, AttachError> {
    if try_raw {
        match attach_raw(ebpf, raw, event) {
            Ok(()) => return Ok(TracepointKind::Raw),
            Err(why) => {
                debug!(event, %why, "raw tracepoint refused; using the classic one");
                if let Some(p) = ebpf.program_mut(raw) {
                    let _ = unload(p);
                }
            }
        }
    }
    attach_classic(ebpf, classic, category, event)?;
    Ok(TracepointKind::Classic)
}

/// The raw tracepoint program of a classic one.
fn raw_twin(classic: &str) -> &'static str {
    match classic {
        names::TP_SOCK_SEND_LENGTH => names::RAW_SOCK_SEND_LENGTH,
        names::TP_SOCK_RECV_LENGTH => names::RAW_SOCK_RECV_LENGTH,
        _ => unreachable!("no raw twin for {classic}"),
    }
}

/// Programs of each backend: (program, kernel function or tracepoint).
fn backend_programs(backend: Backend, facts: &KernelFacts) -> Vec<(&'static str, &'static str)> {
    match backend {
        Backend::Fexit => {
            let mut v = vec![
                (names::FEXIT_TCP_SENDMSG, "tcp_sendmsg"),
                if facts.recvmsg_nonblock {
                    (names::FEXIT_TCP_RECVMSG_NONBLOCK, "tcp_recvmsg")
                } else {
                    (names::FEXIT_TCP_RECVMSG, "tcp_recvmsg")
                },
            ];
            if facts.has_sendpage {
                v.push((names::FEXIT_TCP_SENDPAGE, "tcp_sendpage"));
            }
            v
        }
        Backend::Kprobe => {
            let mut v = vec![
                (names::KPROBE_TCP_SENDMSG, "tcp_sendmsg"),
                (names::KRETPROBE_TCP_SEND, "tcp_sendmsg"),
                if facts.recvmsg_nonblock {
                    (names::KPROBE_TCP_RECVMSG_NONBLOCK, "tcp_recvmsg")
                } else {
                    (names::KPROBE_TCP_RECVMSG, "tcp_recvmsg")
                },
                (names::KRETPROBE_TCP_RECVMSG, "tcp_recvmsg"),
            ];
            if facts.has_sendpage {
                v.push((names::KPROBE_TCP_SENDPAGE, "tcp_sendpage"));
                v.push((names::KRETPROBE_TCP_SEND, "tcp_sendpage"));
            }
            v
        }
        Backend::Tracepoint => vec![
            (names::TP_SOCK_SEND_LENGTH, "sock_send_length"),
            (names::TP_SOCK_RECV_LENGTH, "sock_recv_length"),
        ],
        // The lifecycle programs only (attached for every backend).
        Backend::Counters => vec![],
    }
}

/// Loads and attaches one backend; on failure unloads what it loaded, so nothing stays attached.
fn attach_backend(
    ebpf: &mut Ebpf,
    backend: Backend,
    facts: &KernelFacts,
    btf: &aya::Btf,
    tracefs: &Path,
    kretprobes: &mut Vec<TracefsKretprobe>,
    try_raw: bool,
) -> Result<(), AttachError> {
    let mut progs = backend_programs(backend, facts);
    if backend == Backend::Tracepoint {
        check_tracepoints(tracefs, &["sock/sock_send_length", "sock/sock_recv_length"]).map_err(
            |e| match e {
                ProbeError::TracepointMissing(ev) => AttachError::NoSocketTracepoint(ev),
                other => AttachError::Tracepoints(Box::new(other)),
            },
        )?;
    }
    if backend == Backend::Kprobe {
        kretprobe::remove_stale(tracefs);
    }
    let result = (|| -> Result<(), AttachError> {
        for &(prog, target) in &progs {
            let program = ebpf
                .program_mut(prog)
                .ok_or(AttachError::MissingProgram(prog))?;
            match backend {
                Backend::Fexit => {
                    let p: &mut FExit = program.try_into().map_err(AttachError::program)?;
                    p.load(target, btf)
                        .map_err(AttachError::at(Step::LoadFexit { target }))?;
                    p.attach()
                        .map_err(AttachError::at(Step::AttachFexit { target }))?;
                }
                Backend::Kprobe => {
                    let p: &mut KProbe = program.try_into().map_err(AttachError::program)?;
                    // The kretprobe program serves two functions; load it once.
                    if p.fd().is_err() {
                        p.load().map_err(AttachError::at(Step::Load { prog }))?;
                    }
                    if matches!(p.kind(), aya::programs::ProbeKind::Return) {
                        let fd = p.fd().map_err(AttachError::program)?.as_fd();
                        match TracefsKretprobe::attach(tracefs, fd, target, kretprobe::MAX_ACTIVE) {
                            Ok(k) => {
                                kretprobes.push(k);
                                continue;
                            }
                            Err(e) => warn!(
                                function = target,
                                error = %e,
                                "cannot create a kretprobe with maxactive {} through tracefs; \
                                 using the kernel default (2 x CPUs): returns beyond it are missed",
                                kretprobe::MAX_ACTIVE
                            ),
                        }
                    }
                    p.attach(target, 0).map_err(|e| {
                        if is_missing_kprobe_pmu(&e) {
                            AttachError::NoKprobePmu(Box::new(e))
                        } else {
                            AttachError::Step {
                                step: Step::AttachKprobe { prog, target },
                                source: Box::new(e),
                            }
                        }
                    })?;
                }
                Backend::Counters => {}
                Backend::Tracepoint => {
                    let raw = raw_twin(prog);
                    attach_tp(ebpf, raw, prog, "sock", target, try_raw)?;
                }
            }
        }
        Ok(())
    })();
    if result.is_err() {
        kretprobes.clear();
        if backend == Backend::Tracepoint {
            let raws: Vec<_> = progs.iter().map(|&(p, t)| (raw_twin(p), t)).collect();
            progs.extend(raws);
        }
        for &(prog, _) in &progs {
            if let Some(p) = ebpf.program_mut(prog) {
                let _ = unload(p);
            }
        }
    }
    result
}

fn unload(p: &mut aya::programs::Program) -> Result<(), aya::programs::ProgramError> {
    use aya::programs::Program;
    match p {
        Program::FExit(p) => p.unload(),
        Program::KProbe(p) => p.unload(),
        Program::TracePoint(p) => p.unload(),
        Program::RawTracePoint(p) => p.unload(),
        _ => Ok(()),
    }
}

/// `BPF_MAP_LOOKUP_BATCH` over the whole map: a few syscalls instead of two per entry, and no
/// restart-from-the-beginning when an entry is deleted mid-walk (as `get_next_key` does).
fn lookup_batch(fd: BorrowedFd<'_>, out: &mut Vec<Conn>) -> std::io::Result<()> {
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    #[repr(C)]
    #[derive(Default)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    let mut chunk = 4096usize;
    let mut keys = vec![0u64; chunk];
    let mut values = vec![Conn::ZERO; chunk];
    // Hash maps use a u32 bucket index as the batch token.
    let mut token_in = 0u32;
    let mut token_out = 0u32;
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &raw const token_in as u64 },
            out_batch: &raw mut token_out as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: attr points at buffers of `count` keys and values that outlive the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>() as u32,
            )
        };
        let err = (ret < 0).then(std::io::Error::last_os_error);
        let n = attr.count as usize;
        match err.as_ref().and_then(std::io::Error::raw_os_error) {
            None | Some(libc::ENOENT) => {
                out.extend_from_slice(&values[..n.min(chunk)]);
                if err.is_some() {
                    return Ok(());
                }
            }
            // One bucket holds more entries than the buffer: grow it and retry.
            Some(libc::ENOSPC) => {
                chunk *= 2;
                keys.resize(chunk, 0);
                values.resize(chunk, Conn::ZERO);
                continue;
            }
            Some(_) => return Err(err.unwrap_or_else(std::io::Error::last_os_error)),
        }
        first = false;
        token_in = token_out;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(errno: i32) -> std::io::Error {
        std::io::Error::from_raw_os_error(errno)
    }

    #[test]
    fn missing_kprobe_pmu_is_told_by_the_file_aya_could_not_read() {
        let e = ProgramError::KProbeError(KProbeError::FileError {
            filename: KPROBE_PMU_TYPE.into(),
            io_error: os(libc::ENOENT),
        });
        assert!(is_missing_kprobe_pmu(&e));
        assert!(
            AttachError::NoKprobePmu(Box::new(e))
                .to_string()
                .starts_with("kprobes are not available (no kprobe PMU")
        );
        let other = ProgramError::KProbeError(KProbeError::FileError {
            filename: "/sys/kernel/tracing/kprobe_events".into(),
            io_error: os(libc::ENOENT),
        });
        assert!(!is_missing_kprobe_pmu(&other));
    }

    #[test]
    fn eperm_in_the_chain_is_a_permission_error_and_the_text_names_the_step() {
        let e = AttachError::Step {
            step: Step::AttachTracepoint {
                category: "sock",
                event: "inet_sock_set_state",
            },
            source: Box::new(ProgramError::SyscallError(aya::sys::SyscallError {
                call: "perf_event_open",
                io_error: os(libc::EPERM),
            })),
        };
        assert!(e.is_permission());
        assert_eq!(
            e.to_string(),
            "attaching sock:inet_sock_set_state: `perf_event_open` failed: Operation not permitted (os error 1)"
        );
        let not = AttachError::Step {
            step: Step::Load { prog: "x" },
            source: Box::new(ProgramError::SyscallError(aya::sys::SyscallError {
                call: "bpf_prog_load",
                io_error: os(libc::EINVAL),
            })),
        };
        assert!(!not.is_permission());
    }
}
