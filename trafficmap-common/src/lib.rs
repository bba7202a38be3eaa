//! Types shared by the trafficmap eBPF probe (`trafficmap-ebpf`) and its userspace loader
//! (`trafficmap-daemon`).
//!
//! Every type that crosses the kernel/user boundary is `#[repr(C)]`, built from fixed-width
//! integers and byte arrays only (no `bool`, enum or `Option`), with padding spelled out as
//! `_pad` fields, so that both sides agree on the layout bit for bit. `const` assertions below pin
//! the sizes and offsets; the loader also checks them against the sizes of the loaded maps.
#![no_std]

/// Names of the maps and programs in the probe object, used by both sides.
pub mod names {
    /// Live connections: `HashMap<u64 /* struct sock * */, Conn>`.
    pub const CONNS: &str = "CONNS";
    /// Final records of destroyed connections: `RingBuf` of `Conn`.
    pub const CLOSED: &str = "CLOSED";
    /// In-flight kprobe calls: `HashMap<u64 /* pid_tgid */, Inflight>`, sends and receives.
    pub const INFLIGHT_SEND: &str = "INFLIGHT_SEND";
    pub const INFLIGHT_RECV: &str = "INFLIGHT_RECV";
    /// Error counters: `PerCpuArray<u64>` indexed by [`crate::ErrorReason`].
    pub const ERRORS: &str = "ERRORS";
    /// Owners of listening sockets: `HashMap<u64 /* netns << 32 | port */, Owner>`; a server
    /// connection is named after the process that listens on its port.
    pub const LISTENERS: &str = "LISTENERS";
    /// Settings userspace may change after load: `Array<u32>` indexed by [`crate::setting`].
    pub const SETTINGS: &str = "SETTINGS";

    pub const FEXIT_TCP_SENDMSG: &str = "fexit_tcp_sendmsg";
    pub const FEXIT_TCP_SENDPAGE: &str = "fexit_tcp_sendpage";
    pub const FEXIT_TCP_RECVMSG: &str = "fexit_tcp_recvmsg";
    pub const FEXIT_TCP_RECVMSG_NONBLOCK: &str = "fexit_tcp_recvmsg_nonblock";
    pub const KPROBE_TCP_SENDMSG: &str = "kprobe_tcp_sendmsg";
    pub const KPROBE_TCP_SENDPAGE: &str = "kprobe_tcp_sendpage";
    pub const KRETPROBE_TCP_SEND: &str = "kretprobe_tcp_send";
    pub const KPROBE_TCP_RECVMSG: &str = "kprobe_tcp_recvmsg";
    pub const KPROBE_TCP_RECVMSG_NONBLOCK: &str = "kprobe_tcp_recvmsg_nonblock";
    pub const KRETPROBE_TCP_RECVMSG: &str = "kretprobe_tcp_recvmsg";
    pub const TP_SOCK_SEND_LENGTH: &str = "tp_sock_send_length";
    pub const TP_SOCK_RECV_LENGTH: &str = "tp_sock_recv_length";
    pub const TP_INET_SOCK_SET_STATE: &str = "tp_inet_sock_set_state";
    pub const TP_TCP_DESTROY_SOCK: &str = "tp_tcp_destroy_sock";
    pub const RAW_SOCK_SEND_LENGTH: &str = "raw_sock_send_length";
    pub const RAW_SOCK_RECV_LENGTH: &str = "raw_sock_recv_length";
    pub const RAW_INET_SOCK_SET_STATE: &str = "raw_inet_sock_set_state";
    pub const RAW_TCP_DESTROY_SOCK: &str = "raw_tcp_destroy_sock";
}

/// Indexes of the `SETTINGS` array.
pub mod setting {
    /// 1 when the counters backend runs (no send/receive hook): the lifecycle programs then
    /// read the kernel's own byte counters at close, and create entries for older connections
    /// at their first state change. A map, not `.rodata`: backend selection runs after load.
    pub const COUNTERS: u32 = 0;
    pub const COUNT: u32 = 1;
}

/// Role of the local end of a connection, stored as `u8` in [`Conn::role`].
pub mod role {
    /// Seen first in mid-stream (open before the probe loaded); userspace resolves it.
    pub const UNKNOWN: u8 = 0;
    /// The local side opened actively (`connect`): `CLOSE -> SYN_SENT`.
    pub const CLIENT: u8 = 1;
    /// The local side accepted passively: `LISTEN -> SYN_RECV` of the child socket.
    pub const SERVER: u8 = 2;
}

/// Bits of [`Conn::flags`].
pub mod flags {
    /// First seen on a send or receive, not at its opening: the probe loaded while it was open.
    pub const PREEXISTING: u32 = 1 << 0;
    /// Reached `TCP_ESTABLISHED` while the probe watched.
    pub const ESTABLISHED: u32 = 1 << 1;
    /// The kernel destroyed the socket; this is the final record.
    pub const DESTROYED: u32 = 1 << 2;
    /// Addresses were read from the socket itself (not from a state-change event).
    pub const ADDR_FROM_SOCK: u32 = 1 << 3;
    /// The local side queued its FIN (`FIN_WAIT1` or `LAST_ACK` seen): once acknowledged, it
    /// counts one in the kernel's `bytes_acked`, and the counters backend takes it off.
    pub const FIN_SENT: u32 = 1 << 4;
    /// Counters backend: `bytes_sent`/`bytes_received` hold the socket's final counters, read
    /// from `struct tcp_sock` when it moved to `TCP_CLOSE`.
    pub const COUNTERS_FINAL: u32 = 1 << 5;
}

/// `AF_INET` / `AF_INET6` as stored in [`Conn::family`].
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Linux TCP states (`include/net/tcp_states.h`), as stored in [`Conn::state`].
pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
    pub const NEW_SYN_RECV: u8 = 12;
}

/// One TCP connection as the probe sees it. Value of `CONNS`, record of `CLOSED`.
///
/// Counters are cumulative since the probe first saw the socket and only ever grow (atomic adds),
/// so userspace computes deltas without ever resetting kernel state. A connection is identified by
/// `(sk, born_ns)`: the kernel reuses socket memory, but never at the same nanosecond.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conn {
    /// Payload bytes the local application wrote (sum of positive `tcp_sendmsg` returns).
    pub bytes_sent: u64,
    /// Payload bytes the local application read (sum of positive `tcp_recvmsg` returns,
    /// `MSG_PEEK` excluded).
    pub bytes_received: u64,
    /// Successful send calls.
    pub send_calls: u64,
    /// Successful receive calls.
    pub recv_calls: u64,
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the probe created this entry; the generation
    /// that tells two connections on one reused socket apart.
    pub born_ns: u64,
    /// Monotonic time of the active or passive open; 0 when opened before the probe loaded.
    pub opened_ns: u64,
    /// Monotonic time of the move to `TCP_CLOSE`; 0 while open.
    pub closed_ns: u64,
    /// Monotonic time of the last successful send or receive; 0 if none.
    pub last_ns: u64,
    /// Kernel address of the `struct sock` (key of `CONNS`).
    pub sk: u64,
    /// Local address, network byte order; IPv4 as IPv4-mapped IPv6 (`::ffff:a.b.c.d`).
    pub saddr: [u8; 16],
    /// Remote address, same encoding as `saddr`.
    pub daddr: [u8; 16],
    /// Local port, host byte order.
    pub sport: u16,
    /// Remote port, host byte order.
    pub dport: u16,
    /// `AF_INET` or `AF_INET6` (0 until known).
    pub family: u16,
    /// One of [`role`].
    pub role: u8,
    /// Last TCP state seen, one of [`tcp_state`] (0 until known).
    pub state: u8,
    /// Inode number of the socket's network namespace.
    pub netns: u32,
    /// Thread-group id (userspace PID) of the last process that sent or received.
    pub pid: u32,
    /// `comm` of that process's thread-group leader (the process name, not the thread's),
    /// NUL-padded.
    pub comm: [u8; 16],
    /// Bits of [`flags`].
    pub flags: u32,
    pub _pad: u32,
    /// Counters backend: the socket's cookie (`sk->sk_cookie`, what sock_diag reports as
    /// `idiag_cookie`) when its final counters were read; 0 if none was ever assigned.
    pub cookie: u64,
    /// cgroup v2 id (`bpf_get_current_cgroup_id()`: the inode number of the cgroup's directory
    /// in the cgroup2 mount) of the process in `pid`, taken with it; userspace resolves it to a
    /// container. 0 when unknown.
    pub cgroup_id: u64,
}

impl Conn {
    pub const ZERO: Conn = Conn {
        bytes_sent: 0,
        bytes_received: 0,
        send_calls: 0,
        recv_calls: 0,
        born_ns: 0,
        opened_ns: 0,
        closed_ns: 0,
        last_ns: 0,
        sk: 0,
        saddr: [0; 16],
        daddr: [0; 16],
        sport: 0,
        dport: 0,
        family: 0,
        role: role::UNKNOWN,
        state: 0,
        netns: 0,
        pid: 0,
        comm: [0; 16],
        flags: 0,
        _pad: 0,
        cookie: 0,
        cgroup_id: 0,
    };
}

/// The process that owns a listening socket: value of `LISTENERS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    /// Thread-group id.
    pub pid: u32,
    pub _pad: u32,
    /// The thread-group leader's `comm`, NUL-padded.
    pub comm: [u8; 16],
    /// cgroup v2 id of the process (see [`Conn::cgroup_id`]); 0 when unknown.
    pub cgroup_id: u64,
}

impl Owner {
    pub const ZERO: Owner = Owner {
        pid: 0,
        _pad: 0,
        comm: [0; 16],
        cgroup_id: 0,
    };
}

/// `SOCK_DONE` in `enum sock_flags` (include/net/sock.h, unchanged since 2.6): set on a TCP
/// socket only by `tcp_fin`, i.e. when the peer's FIN arrived (and counted one in
/// `bytes_received`).
pub const SOCK_DONE_BIT: u32 = 1;

/// Arguments a kprobe saves at function entry for its kretprobe: value of `INFLIGHT_SEND` and `INFLIGHT_RECV`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inflight {
    /// `struct sock *` argument.
    pub sk: u64,
    /// `flags` argument of `tcp_recvmsg` (0 for sends).
    pub flags: u32,
    pub _pad: u32,
}

/// Why the probe could not record something. Index into the `ERRORS` per-CPU array; userspace
/// exposes each as `trafficmap_probe_errors_total{reason}`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorReason {
    /// `CONNS` was full: a connection's bytes could not be recorded.
    ConnsFull = 0,
    /// `CLOSED` ring buffer was full: a destroyed connection's final record stays in `CONNS`
    /// flagged destroyed, and is handed over later.
    ClosedFull = 1,
    /// An in-flight map was full: one kprobe-mode call could not be matched with its return.
    InflightFull = 2,
    /// A `bpf_probe_read_kernel` of a socket field failed.
    ReadFailed = 3,
    /// A destroyed connection's entry was overwritten by a new socket at the same address before
    /// userspace read its final record.
    EvictedUnread = 4,
    /// A map update other than "full" failed.
    UpdateFailed = 5,
}

impl ErrorReason {
    /// Number of reasons: size of the `ERRORS` array.
    pub const COUNT: u32 = 6;
    pub const ALL: [ErrorReason; Self::COUNT as usize] = [
        ErrorReason::ConnsFull,
        ErrorReason::ClosedFull,
        ErrorReason::InflightFull,
        ErrorReason::ReadFailed,
        ErrorReason::EvictedUnread,
        ErrorReason::UpdateFailed,
    ];

    /// Label value used in metrics and reports.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorReason::ConnsFull => "conns_full",
            ErrorReason::ClosedFull => "closed_full",
            ErrorReason::InflightFull => "inflight_full",
            ErrorReason::ReadFailed => "read_failed",
            ErrorReason::EvictedUnread => "evicted_unread",
            ErrorReason::UpdateFailed => "update_failed",
        }
    }
}

/// Offsets of kernel struct fields, resolved by userspace from the running kernel's BTF and
/// written into the probe's read-only `.rodata` before load (aya-ebpf has no CO-RE relocations
/// for Rust structs). The verifier sees them as constants.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offsets {
    /// `struct sock_common` fields, from the start of `struct sock`.
    pub skc_family: u32,
    pub skc_state: u32,
    pub skc_num: u32,
    pub skc_dport: u32,
    pub skc_rcv_saddr: u32,
    pub skc_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    pub skc_v6_daddr: u32,
    /// `sock_common.skc_net` (a `possible_net_t`, whose first member is `struct net *`).
    pub skc_net: u32,
    /// `struct net.ns.inum`, from the start of `struct net`.
    pub net_ns_inum: u32,
    /// `struct sock.sk_protocol` (a `u16` since 5.6): raw tracepoints fire for every socket
    /// and carry no protocol, so births and unknown sockets are checked with it.
    pub sk_protocol: u32,
    /// `struct task_struct.group_leader` and `.comm`: the process is named after its
    /// thread-group leader, not after the thread that happened to move the bytes.
    pub task_group_leader: u32,
    pub task_comm: u32,
    /// Counters backend: `struct tcp_sock` fields (from the start of the socket) read at close,
    /// `struct sock.sk_flags` (bit `SOCK_DONE`: a FIN was received) and
    /// `sock_common.skc_cookie`.
    pub tcp_bytes_acked: u32,
    pub tcp_bytes_received: u32,
    pub tcp_snd_una: u32,
    pub tcp_write_seq: u32,
    pub sk_flags: u32,
    pub skc_cookie: u32,
}

impl Offsets {
    pub const ZERO: Offsets = Offsets {
        skc_family: 0,
        skc_state: 0,
        skc_num: 0,
        skc_dport: 0,
        skc_rcv_saddr: 0,
        skc_daddr: 0,
        skc_v6_rcv_saddr: 0,
        skc_v6_daddr: 0,
        skc_net: 0,
        net_ns_inum: 0,
        sk_protocol: 0,
        task_group_leader: 0,
        task_comm: 0,
        tcp_bytes_acked: 0,
        tcp_bytes_received: 0,
        tcp_snd_una: 0,
        tcp_write_seq: 0,
        sk_flags: 0,
        skc_cookie: 0,
    };
}

/// Probe configuration written into `.rodata` at load time (global `CONFIG`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeConfig {
    pub offsets: Offsets,
    /// Only count sockets of this network namespace (inode number); 0 = every namespace.
    pub netns_inum: u32,
    /// Do not count traffic of this thread group (the agent itself); 0 = count all.
    pub ignore_tgid: u32,
    /// Wake the ring-buffer reader only once this many bytes wait (it also polls on a timer):
    /// one wakeup per closed connection would cost more than the counting itself.
    pub ring_wakeup_bytes: u32,
    pub _pad: u32,
}

impl ProbeConfig {
    pub const ZERO: ProbeConfig = ProbeConfig {
        offsets: Offsets::ZERO,
        netns_inum: 0,
        ignore_tgid: 0,
        ring_wakeup_bytes: 0,
        _pad: 0,
    };
}

/// Leading fields of the `sock:sock_send_length` and `sock:sock_recv_length` records (Linux >= 6.3,
/// `include/trace/events/sock.h`). The loader compares every field's name, offset and size with
/// the running kernel's tracefs `format` file and refuses the tracepoint backend on a mismatch,
/// so the probe can read the record directly.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TpSockLength {
    pub common: u64,
    pub sk: u64,
    pub family: u16,
    pub protocol: u16,
    pub ret: i32,
    pub flags: i32,
}

/// Leading fields of `sock:inet_sock_set_state` (Linux >= 4.16), checked like [`TpSockLength`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TpInetSockSetState {
    pub common: u64,
    pub skaddr: u64,
    pub oldstate: i32,
    pub newstate: i32,
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub protocol: u16,
}

/// Leading field of `tcp:tcp_destroy_sock` (Linux >= 4.16), checked like [`TpSockLength`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TpTcpDestroySock {
    pub common: u64,
    pub skaddr: u64,
}

/// Raw tracepoints the probe uses and the arity of their `TP_PROTO` plus the leading context
/// pointer, as kernel BTF shows it (`typedef void (*btf_trace_<name>)(void *, ...)`). The
/// loader uses a raw tracepoint only if BTF agrees, else the classic one.
pub const RAW_TRACEPOINT_ARITY: &[(&str, usize)] = &[
    // (struct sock *sk, int ret, int flags)
    ("sock_send_length", 4),
    ("sock_recv_length", 4),
    // (const struct sock *sk, const int oldstate, const int newstate)
    ("inet_sock_set_state", 4),
    // (struct sock *sk)
    ("tcp_destroy_sock", 2),
];

/// Each field the probe reads from a tracepoint record, as `(event, field, offset, size)`; the
/// loader checks them against tracefs before it attaches.
pub const TRACEPOINT_FIELDS: &[(&str, &str, usize, usize)] = &[
    ("sock/sock_send_length", "sk", 8, 8),
    ("sock/sock_send_length", "protocol", 18, 2),
    ("sock/sock_send_length", "ret", 20, 4),
    ("sock/sock_recv_length", "sk", 8, 8),
    ("sock/sock_recv_length", "protocol", 18, 2),
    ("sock/sock_recv_length", "ret", 20, 4),
    ("sock/sock_recv_length", "flags", 24, 4),
    ("sock/inet_sock_set_state", "skaddr", 8, 8),
    ("sock/inet_sock_set_state", "oldstate", 16, 4),
    ("sock/inet_sock_set_state", "newstate", 20, 4),
    ("sock/inet_sock_set_state", "protocol", 30, 2),
    ("tcp/tcp_destroy_sock", "skaddr", 8, 8),
];

/// `MSG_PEEK`: a receive that leaves data in the queue; it must not be counted.
pub const MSG_PEEK: u32 = 2;
/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: u16 = 6;

// Layout checks: a change here must be a deliberate change on both sides.
const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<Conn>() == 160);
    assert!(offset_of!(Conn, cookie) == 144);
    assert!(offset_of!(Conn, cgroup_id) == 152);
    assert!(size_of::<Owner>() == 32);
    assert!(offset_of!(Owner, comm) == 8);
    assert!(offset_of!(Owner, cgroup_id) == 24);
    assert!(offset_of!(Conn, sk) == 64);
    assert!(offset_of!(Conn, saddr) == 72);
    assert!(offset_of!(Conn, sport) == 104);
    assert!(offset_of!(Conn, role) == 110);
    assert!(offset_of!(Conn, netns) == 112);
    assert!(offset_of!(Conn, comm) == 120);
    assert!(offset_of!(Conn, flags) == 136);
    assert!(size_of::<Inflight>() == 16);
    assert!(size_of::<Offsets>() == 76);
    assert!(size_of::<ProbeConfig>() == 92);
    assert!(offset_of!(TpSockLength, sk) == 8);
    assert!(offset_of!(TpSockLength, flags) == 24);
    assert!(offset_of!(TpInetSockSetState, protocol) == 30);
    assert!(offset_of!(TpTcpDestroySock, skaddr) == 8);
};

#[cfg(feature = "user")]
mod user {
    // SAFETY: all four are `repr(C)`, made of integers and byte arrays with explicit padding,
    // so every bit pattern is a valid value and there are no uninitialised bytes.
    unsafe impl aya::Pod for super::Conn {}
    unsafe impl aya::Pod for super::Inflight {}
    unsafe impl aya::Pod for super::ProbeConfig {}
    unsafe impl aya::Pod for super::Owner {}
}
