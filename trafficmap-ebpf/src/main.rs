//! The trafficmap kernel probe: exact TCP payload byte counts per connection.
//!
//! Three interchangeable byte-counting backends feed one connection table (`CONNS`); the loader
//! attaches exactly one of them:
//! - fexit on `tcp_sendmsg` / `tcp_recvmsg` (and `tcp_sendpage` where it exists),
//! - kprobe + kretprobe on the same functions,
//! - the `sock:sock_send_length` / `sock:sock_recv_length` tracepoints (Linux >= 6.3).
//!
//! In every mode `sock:inet_sock_set_state` gives the lifecycle (role, addresses, close) and
//! `tcp:tcp_destroy_sock` hands the final record of a connection to userspace through the
//! `CLOSED` ring buffer before its entry leaves `CONNS`, so no byte is lost between two drains.
//!
//! The probe never panics (the panic handler is an infinite loop, which the verifier rejects if
//! reachable) and every failure it cannot avoid is counted in `ERRORS`.
#![no_std]
#![no_main]
// `core::sync::atomic` has no read-modify-write ops for the BPF target; the intrinsic lowers to
// BPF's atomic add (as aya's own integration probes do).
#![feature(core_intrinsics)]
#![allow(internal_features)]
// Every `unsafe` here says why it holds; the workspace lints do not enable this one because the
// integration tests and xtask do not document their libc calls.
#![warn(clippy::undocumented_unsafe_blocks)]

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_ANY, BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_ktime_get_ns, generated,
    },
    macros::{fexit, kprobe, kretprobe, map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::{
        FExitContext, ProbeContext, RawTracePointContext, RetProbeContext, TracePointContext,
    },
};
use trafficmap_common::{
    AF_INET, AF_INET6, Conn, ErrorReason, IPPROTO_TCP, Inflight, MSG_PEEK, Owner, ProbeConfig,
    SOCK_DONE_BIT, TpInetSockSetState, TpSockLength, TpTcpDestroySock, flags, role, setting,
    tcp_state,
};

/// Written by the loader before load; read-only afterwards, so the verifier sees constants.
#[unsafe(no_mangle)]
static CONFIG: ProbeConfig = ProbeConfig::ZERO;

/// Live connections by `struct sock *`. Sized by the loader (`--max-connections`).
#[map(name = "CONNS")]
static CONNS: HashMap<u64, Conn> = HashMap::with_max_entries(65536, 0);

/// Final records of destroyed connections, consumed continuously by userspace.
#[map(name = "CLOSED")]
static CLOSED: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// kprobe mode: arguments saved at entry for the matching kretprobe, by `pid_tgid`. Sends and
/// receives use separate maps so that one thread's calls never overwrite each other.
#[map(name = "INFLIGHT_SEND")]
static INFLIGHT_SEND: HashMap<u64, Inflight> = HashMap::with_max_entries(16384, 0);
#[map(name = "INFLIGHT_RECV")]
static INFLIGHT_RECV: HashMap<u64, Inflight> = HashMap::with_max_entries(16384, 0);

/// Owners of listening sockets by `netns << 32 | port`, written when a socket starts listening
/// (`listen` runs in its owner's context) and by the loader for listeners older than the probe.
/// A server connection is named after its listener's owner: its birth runs in softirq context,
/// where the current task is whoever the packet interrupted.
#[map(name = "LISTENERS")]
static LISTENERS: HashMap<u64, Owner> = HashMap::with_max_entries(16384, 0);

/// Settings written by userspace after load, indexed by `setting`.
#[map(name = "SETTINGS")]
static SETTINGS: Array<u32> = Array::with_max_entries(setting::COUNT, 0);

/// Per-CPU scratch space to build a `Conn` (too large for the 512-byte BPF stack together with
/// the helpers' frames). Slot 0 for the send/receive path, slot 1 for lifecycle events, which can
/// interrupt the former on the same CPU (softirq during an fexit program).
#[map(name = "SCRATCH")]
static SCRATCH: PerCpuArray<Conn> = PerCpuArray::with_max_entries(2, 0);
const SCRATCH_HOT: u32 = 0;
const SCRATCH_LIFECYCLE: u32 = 1;

/// Counters of what could not be recorded, indexed by `ErrorReason`.
#[map(name = "ERRORS")]
static ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(ErrorReason::COUNT, 0);

// errno values (include/uapi/asm-generic/errno-base.h): aya_ebpf::bindings has no errno.
const EEXIST: i32 = 17;
const E2BIG: i32 = 7;
const ENOMEM: i32 = 12;

/// Reads one field of `CONFIG`. The volatile read keeps the compiler from folding the zero
/// initialiser into the code; the loader overwrites it in `.rodata`.
macro_rules! conf {
    ($($field:tt)+) => {
        // SAFETY: CONFIG is a static, so the pointer is valid and aligned for the whole run;
        // the loader writes it before load and nothing writes it afterwards.
        unsafe { core::ptr::read_volatile(&raw const CONFIG.$($field)+) }
    };
}

#[inline(always)]
fn count_error(reason: ErrorReason) {
    if let Some(slot) = ERRORS.get_ptr_mut(reason as u32) {
        // Per-CPU slot: no other CPU writes it, and BPF programs do not preempt each other on
        // one CPU for these hooks, so a plain add is exact.
        // SAFETY: `get_ptr_mut` returned a non-null pointer to this CPU's u64 in the map, valid
        // while the program runs.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn count_update_error(err: i32) {
    if err == -E2BIG || err == -ENOMEM {
        count_error(ErrorReason::ConnsFull);
    } else {
        count_error(ErrorReason::UpdateFailed);
    }
}

/// Copies `len` bytes of kernel memory at `addr` to `dst`. Reads go straight into their final
/// place (a map value or an initialised local): the 5.10 verifier rejects code that LLVM
/// generates around `Option<T>` temporaries, which reads stack slots a failed read left unset.
#[inline(always)]
fn read_raw(addr: u64, dst: *mut u8, len: u32) -> bool {
    // SAFETY: callers pass a `dst` writable for `len` bytes (a `&mut T` of that size, or four
    // bytes inside a 16-byte address); a bad kernel `addr` makes the helper fail, not fault.
    let ret = unsafe { generated::bpf_probe_read_kernel(dst.cast(), len, addr as *const _) };
    if ret != 0 {
        count_error(ErrorReason::ReadFailed);
    }
    ret == 0
}

#[inline(always)]
fn read_into<T>(addr: u64, dst: &mut T) -> bool {
    read_raw(addr, (dst as *mut T).cast(), size_of::<T>() as u32)
}

/// The name of the current process: the `comm` of the thread-group leader
/// (`current->group_leader->comm`), which is what `ps` and `/proc/<pid>/comm` show. Worker
/// threads of tokio, Java or nginx carry their own names; the calling thread's `comm` would
/// name the thread. Falls back to the thread's `comm` if the task cannot be read.
#[inline(always)]
fn process_comm(dst: &mut [u8; 16]) {
    // SAFETY: a helper without arguments or preconditions; the result is only read through
    // `bpf_probe_read_kernel`, which fails instead of faulting on a bad address.
    let task = unsafe { generated::bpf_get_current_task() };
    let mut leader: u64 = 0;
    if task != 0
        && read_into(task + conf!(offsets.task_group_leader) as u64, &mut leader)
        && leader != 0
        && read_into(leader + conf!(offsets.task_comm) as u64, dst)
    {
        return;
    }
    if let Ok(comm) = bpf_get_current_comm() {
        *dst = comm;
    }
}

/// cgroup v2 id of the current task: userspace resolves it to a container (issue 11).
/// `bpf_get_current_cgroup_id` is offered to every program type this probe loads since 4.18:
/// kprobe, tracepoint and raw tracepoint programs get it from `bpf_tracing_func_proto`
/// (kernel/trace/bpf_trace.c, `case BPF_FUNC_get_current_cgroup_id` under CONFIG_CGROUPS),
/// fexit (`BPF_PROG_TYPE_TRACING`) falls back to the raw tracepoint set, which includes it.
/// It reads the task's cgroup on the default (v2) hierarchy: on a v1-only host it is the root's
/// id, which userspace treats as "no container".
#[inline(always)]
fn current_cgroup_id() -> u64 {
    // SAFETY: a helper without arguments or preconditions.
    unsafe { bpf_get_current_cgroup_id() }
}

/// Network namespace inode of a socket: `sk->__sk_common.skc_net.net->ns.inum`.
#[inline(always)]
fn netns_of(sk: u64) -> Option<u32> {
    let mut net: u64 = 0;
    if !read_into(sk + conf!(offsets.skc_net) as u64, &mut net) {
        return None;
    }
    if net == 0 {
        return Some(0);
    }
    let mut inum: u32 = 0;
    read_into(net + conf!(offsets.net_ns_inum) as u64, &mut inum).then_some(inum)
}

/// Whether the loader asked to count only one network namespace and this is another one.
#[inline(always)]
fn out_of_scope(netns: u32) -> bool {
    let want = conf!(netns_inum);
    want != 0 && netns != want
}

/// Copies family, state, ports and addresses from `struct sock_common` into `c`.
#[inline(always)]
fn fill_from_sock(sk: u64, c: &mut Conn) {
    let mut family: u16 = 0;
    if !read_into(sk + conf!(offsets.skc_family) as u64, &mut family) {
        return;
    }
    read_into(sk + conf!(offsets.skc_state) as u64, &mut c.state);
    read_into(sk + conf!(offsets.skc_num) as u64, &mut c.sport);
    let mut dport: u16 = 0;
    if read_into(sk + conf!(offsets.skc_dport) as u64, &mut dport) {
        c.dport = u16::from_be(dport);
    }
    let ok = if family == AF_INET {
        c.saddr = V4_MAPPED_PREFIX;
        c.daddr = V4_MAPPED_PREFIX;
        read_raw(
            sk + conf!(offsets.skc_rcv_saddr) as u64,
            // SAFETY: offset 12 of a 16-byte array leaves the 4 bytes read in bounds.
            unsafe { c.saddr.as_mut_ptr().add(12) },
            4,
        ) && read_raw(
            sk + conf!(offsets.skc_daddr) as u64,
            // SAFETY: as above.
            unsafe { c.daddr.as_mut_ptr().add(12) },
            4,
        )
    } else if family == AF_INET6 {
        read_into(sk + conf!(offsets.skc_v6_rcv_saddr) as u64, &mut c.saddr)
            && read_into(sk + conf!(offsets.skc_v6_daddr) as u64, &mut c.daddr)
    } else {
        false
    };
    if ok {
        c.family = family;
        c.flags |= flags::ADDR_FROM_SOCK;
    }
}

/// Key of `LISTENERS`.
#[inline(always)]
fn listener_key(netns: u32, port: u16) -> u64 {
    ((netns as u64) << 32) | port as u64
}

/// Whether the counters backend runs.
#[inline(always)]
fn counters_mode() -> bool {
    SETTINGS.get(setting::COUNTERS).is_some_and(|v| *v != 0)
}

/// Counters backend: reads the kernel's own counters of `sk` into `c` as payload bytes.
/// `bytes_acked` counts the SYN of an active open and an acknowledged FIN (one sequence
/// number each); `bytes_received` counts a received FIN. They are taken off so that the result
/// is the payload the peer acknowledged, and the payload that arrived.
#[inline(always)]
fn read_final_counters(sk: u64, c: &mut Conn) {
    let mut acked: u64 = 0;
    let mut received: u64 = 0;
    let mut snd_una: u32 = 0;
    let mut write_seq: u32 = 0;
    let mut sk_flags: u64 = 0;
    let mut cookie: u64 = 0;
    if !(read_into(sk + conf!(offsets.tcp_bytes_acked) as u64, &mut acked)
        && read_into(sk + conf!(offsets.tcp_bytes_received) as u64, &mut received)
        && read_into(sk + conf!(offsets.tcp_snd_una) as u64, &mut snd_una)
        && read_into(sk + conf!(offsets.tcp_write_seq) as u64, &mut write_seq)
        && read_into(sk + conf!(offsets.sk_flags) as u64, &mut sk_flags))
    {
        return;
    }
    // 0 when no one (sock_diag, a BPF helper) ever asked for it.
    read_into(sk + conf!(offsets.skc_cookie) as u64, &mut cookie);
    if c.role == role::CLIENT && c.flags & flags::ESTABLISHED != 0 {
        acked = acked.saturating_sub(1);
    }
    // The FIN is the last sequence number queued: acknowledged once snd_una reached write_seq.
    if c.flags & flags::FIN_SENT != 0 && snd_una == write_seq {
        acked = acked.saturating_sub(1);
    }
    if sk_flags & (1 << SOCK_DONE_BIT) != 0 {
        received = received.saturating_sub(1);
    }
    c.bytes_sent = acked;
    c.bytes_received = received;
    if (acked != 0 || received != 0) && c.last_ns == 0 {
        // No per-call hook records when data last moved; the close is the last activity seen.
        // SAFETY: a helper without arguments or preconditions.
        c.last_ns = unsafe { bpf_ktime_get_ns() };
    }
    c.cookie = cookie;
    c.flags |= flags::COUNTERS_FINAL;
}

/// `::ffff:0.0.0.0`: IPv4 addresses are stored IPv4-mapped.
const V4_MAPPED_PREFIX: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0];

#[derive(Clone, Copy)]
enum Dir {
    Send,
    Recv,
}

/// Whether `sk` is a TCP socket (raw tracepoints fire for every protocol).
#[inline(always)]
fn is_tcp(sk: u64) -> bool {
    let mut proto: u16 = 0;
    read_into(sk + conf!(offsets.sk_protocol) as u64, &mut proto) && proto == IPPROTO_TCP
}

/// The hot path: add `bytes` moved by the current task on socket `sk`. With `check_tcp`, a
/// socket without entry is first checked to be TCP (the lookup comes first so that known TCP
/// connections pay nothing for it).
#[inline(always)]
fn record(sk: u64, bytes: i64, dir: Dir, check_tcp: bool) {
    if bytes <= 0 || sk == 0 {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let ignore = conf!(ignore_tgid);
    if ignore != 0 && tgid == ignore {
        return;
    }
    // SAFETY: a helper without arguments or preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let conn = match CONNS.get_ptr_mut(sk) {
        Some(c) => c,
        None if check_tcp && !is_tcp(sk) => return,
        None => match first_sight(sk, now) {
            Some(c) => c,
            None => return,
        },
    };
    // Atomic adds: several CPUs may move bytes on one socket at once (a sender and a receiver
    // thread); a plain `+=` would lose updates. The fetched value is unused, so this compiles to
    // the BPF_XADD form every supported kernel accepts.
    // SAFETY: `conn` points at a CONNS value (a lookup or `first_sight`), which the kernel keeps
    // allocated while the program runs even if another CPU deletes the entry; its u64 fields are
    // 8-byte aligned, as the atomic add needs.
    unsafe {
        let (b, n) = match dir {
            Dir::Send => (&raw mut (*conn).bytes_sent, &raw mut (*conn).send_calls),
            Dir::Recv => (&raw mut (*conn).bytes_received, &raw mut (*conn).recv_calls),
        };
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(b, bytes as u64);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(n, 1);
        (*conn).last_ns = now;
        // Attribution follows the last process that used the socket (sockets can be inherited
        // or passed). Comparing the pid first keeps the comm copy off the common path.
        if (*conn).pid != tgid {
            (*conn).pid = tgid;
            process_comm(&mut (*conn).comm);
            (*conn).cgroup_id = current_cgroup_id();
        }
    }
}

/// A socket moved bytes but has no entry: it was open before the probe loaded (or its entry was
/// lost to a full map). Create the entry from what the socket itself says.
#[inline(always)]
fn first_sight(sk: u64, now: u64) -> Option<*mut Conn> {
    let netns = netns_of(sk)?;
    if out_of_scope(netns) {
        return None;
    }
    // SAFETY: this CPU's scratch slot for the hot path: only the send/receive programs use it,
    // and they do not interrupt each other on one CPU, so this is the only reference.
    let c = unsafe { &mut *SCRATCH.get_ptr_mut(SCRATCH_HOT)? };
    *c = Conn::ZERO;
    c.sk = sk;
    c.born_ns = now;
    c.netns = netns;
    c.flags = flags::PREEXISTING;
    fill_from_sock(sk, c);
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "by value would copy the 160-byte Conn onto the 512-byte BPF stack"
    )]
    let inserted = CONNS.insert(sk, &*c, BPF_NOEXIST.into());
    if let Err(err) = inserted {
        // EEXIST: another CPU created it first; use theirs.
        if err != -EEXIST {
            count_update_error(err);
            return None;
        }
    }
    CONNS.get_ptr_mut(sk)
}

/// Hands a connection's final record to userspace. Returns false if the ring buffer was full.
#[inline(always)]
fn hand_over(conn: *const Conn) -> bool {
    match CLOSED.reserve::<Conn>(0) {
        Some(mut slot) => {
            // SAFETY: callers pass a pointer to a CONNS value, valid while the program runs.
            slot.write(unsafe { *conn });
            // Batch wakeups: userspace polls the ring on a timer and is woken early only when
            // it fills up.
            let flags = if CLOSED.query(BPF_RB_AVAIL_DATA.into()) >= conf!(ring_wakeup_bytes) as u64
            {
                BPF_RB_FORCE_WAKEUP
            } else {
                BPF_RB_NO_WAKEUP
            };
            slot.submit(flags.into());
            true
        }
        None => {
            count_error(ErrorReason::ClosedFull);
            false
        }
    }
}

/// A new connection starts on socket `sk` with the given role.
#[inline(always)]
fn birth(sk: u64, conn_role: u8, state: u8, check_tcp: bool) {
    if check_tcp && !is_tcp(sk) {
        return;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let ignore = conf!(ignore_tgid);
    // The agent's own client connections (to its collector) are not counted.
    if conn_role == role::CLIENT && ignore != 0 && tgid == ignore {
        return;
    }
    let Some(netns) = netns_of(sk) else { return };
    if out_of_scope(netns) {
        return;
    }
    // SAFETY: a helper without arguments or preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(old) = CONNS.get_ptr_mut(sk) {
        // Same socket memory, new conversation: either a destroyed socket whose final record is
        // still here (the ring buffer was full at destroy time), or a socket reconnected after a
        // failed connect. Hand the old record over first; never merge two connections.
        // SAFETY: `old` is a CONNS value from the lookup, valid while the program runs; lifecycle
        // events of one socket are serialised by the socket lock, so no other writer of these
        // fields runs at once.
        unsafe {
            (*old).flags |= flags::DESTROYED;
            if (*old).closed_ns == 0 {
                (*old).closed_ns = now;
            }
        }
        if !hand_over(old) {
            count_error(ErrorReason::EvictedUnread);
        }
    }
    let Some(c) = SCRATCH.get_ptr_mut(SCRATCH_LIFECYCLE) else {
        return;
    };
    // SAFETY: this CPU's lifecycle scratch slot, used only by lifecycle programs, which do not
    // interrupt each other on one CPU: the only reference.
    let c = unsafe { &mut *c };
    *c = Conn::ZERO;
    c.sk = sk;
    c.born_ns = now;
    c.opened_ns = now;
    c.netns = netns;
    c.role = conn_role;
    fill_from_sock(sk, c);
    c.state = state;
    if conn_role == role::CLIENT {
        // `connect` runs in the context of the process that opens the connection.
        c.pid = tgid;
        process_comm(&mut c.comm);
        c.cgroup_id = current_cgroup_id();
    } else {
        // SAFETY: a LISTENERS value, copied out at once.
        if let Some(owner) = unsafe { LISTENERS.get(listener_key(netns, c.sport)) } {
            c.pid = owner.pid;
            c.comm = owner.comm;
            c.cgroup_id = owner.cgroup_id;
        }
    }
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "by value would copy the 160-byte Conn onto the 512-byte BPF stack"
    )]
    let inserted = CONNS.insert(sk, &*c, BPF_ANY.into());
    if let Err(err) = inserted {
        count_update_error(err);
    }
}

// ---------------------------------------------------------------------------------------------
// Lifecycle, all backends.

/// A TCP state change of socket `sk`.
#[inline(always)]
fn on_state(sk: u64, old: u8, new: u8, check_tcp: bool) {
    if new == tcp_state::SYN_SENT && old == tcp_state::CLOSE {
        birth(sk, role::CLIENT, new, check_tcp);
    } else if new == tcp_state::SYN_RECV && old == tcp_state::LISTEN {
        // The child socket of a passive open, cloned from the listener.
        birth(sk, role::SERVER, new, check_tcp);
    } else if new == tcp_state::LISTEN || old == tcp_state::LISTEN {
        listener_change(sk, new == tcp_state::LISTEN, check_tcp);
    } else if let Some(c) = conn_for_state_change(sk, old, check_tcp) {
        // SAFETY: a CONNS value, valid while the program runs. The hot path only adds to the
        // byte counters atomically and sets pid/comm/last_ns, none of which this touches.
        let c = unsafe { &mut *c };
        // Ports and addresses are final once the handshake is done (the client's source port is
        // bound after SYN_SENT, the child's peer address after SYN_RECV), so re-read them until
        // then. Not after: moving to CLOSE releases the local port (`inet_num` becomes 0).
        if c.flags & flags::ESTABLISHED == 0 {
            fill_from_sock(sk, c);
        }
        c.state = new;
        if matches!(new, tcp_state::FIN_WAIT1 | tcp_state::LAST_ACK)
            || matches!(
                old,
                tcp_state::FIN_WAIT1
                    | tcp_state::FIN_WAIT2
                    | tcp_state::CLOSING
                    | tcp_state::LAST_ACK
            )
        {
            c.flags |= flags::FIN_SENT;
        }
        if new == tcp_state::ESTABLISHED {
            c.flags |= flags::ESTABLISHED;
        } else if new == tcp_state::CLOSE {
            if c.closed_ns == 0 {
                // SAFETY: a helper without arguments or preconditions.
                c.closed_ns = unsafe { bpf_ktime_get_ns() };
            }
            // No byte moves after CLOSE, and `tcp_disconnect` resets the counters right after
            // this event: read them now.
            if counters_mode() && c.flags & flags::COUNTERS_FINAL == 0 {
                read_final_counters(sk, c);
            }
        }
    }
}

/// A socket starts (`listen`) or stops listening: remember or forget its owner.
#[inline(always)]
fn listener_change(sk: u64, listening: bool, check_tcp: bool) {
    if check_tcp && !is_tcp(sk) {
        return;
    }
    let Some(netns) = netns_of(sk) else { return };
    if out_of_scope(netns) {
        return;
    }
    let mut port: u16 = 0;
    if !read_into(sk + conf!(offsets.skc_num) as u64, &mut port) {
        return;
    }
    let key = listener_key(netns, port);
    if listening {
        let mut owner = Owner {
            pid: (bpf_get_current_pid_tgid() >> 32) as u32,
            _pad: 0,
            comm: [0; 16],
            cgroup_id: current_cgroup_id(),
        };
        process_comm(&mut owner.comm);
        if LISTENERS.insert(key, owner, BPF_ANY.into()).is_err() {
            count_error(ErrorReason::UpdateFailed);
        }
    } else {
        let _ = LISTENERS.remove(key);
    }
}

/// The entry of a socket whose state changes. The counters backend has no send/receive hook to
/// notice connections older than the probe, so it creates their entry at their first state
/// change (every connection changes state before it is destroyed): their final counters must
/// reach userspace, which subtracts what they held when it first saw them.
#[inline(always)]
fn conn_for_state_change(sk: u64, old: u8, check_tcp: bool) -> Option<*mut Conn> {
    if let Some(c) = CONNS.get_ptr_mut(sk) {
        return Some(c);
    }
    if !counters_mode()
        || !matches!(
            old,
            tcp_state::ESTABLISHED
                | tcp_state::FIN_WAIT1
                | tcp_state::FIN_WAIT2
                | tcp_state::CLOSE_WAIT
                | tcp_state::LAST_ACK
                | tcp_state::CLOSING
        )
        || (check_tcp && !is_tcp(sk))
    {
        return None;
    }
    let netns = netns_of(sk)?;
    if out_of_scope(netns) {
        return None;
    }
    // SAFETY: this CPU's lifecycle scratch slot, used only by lifecycle programs, which do not
    // interrupt each other on one CPU: the only reference.
    let c = unsafe { &mut *SCRATCH.get_ptr_mut(SCRATCH_LIFECYCLE)? };
    *c = Conn::ZERO;
    c.sk = sk;
    // SAFETY: a helper without arguments or preconditions.
    c.born_ns = unsafe { bpf_ktime_get_ns() };
    c.netns = netns;
    c.flags = flags::PREEXISTING | flags::ESTABLISHED;
    fill_from_sock(sk, c);
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "by value would copy the Conn onto the 512-byte BPF stack"
    )]
    let inserted = CONNS.insert(sk, &*c, BPF_NOEXIST.into());
    if let Err(err) = inserted
        && err != -EEXIST
    {
        count_update_error(err);
        return None;
    }
    CONNS.get_ptr_mut(sk)
}

/// Socket `sk` is being freed: no send or receive can follow. Hand the final record over and
/// free the entry; if the ring buffer is full, keep it flagged so userspace still reads it.
#[inline(always)]
fn on_destroy(sk: u64) {
    let Some(c) = CONNS.get_ptr_mut(sk) else {
        return;
    };
    // SAFETY: a CONNS value from the lookup, valid while the program runs; the socket is being
    // freed, so no send, receive or state change of it runs at once.
    unsafe {
        (*c).flags |= flags::DESTROYED;
        if (*c).closed_ns == 0 {
            (*c).closed_ns = bpf_ktime_get_ns();
        }
        (*c).state = tcp_state::CLOSE;
        if counters_mode() && (*c).flags & flags::COUNTERS_FINAL == 0 {
            read_final_counters(sk, &mut *c);
        }
    }
    if hand_over(c) {
        let _ = CONNS.remove(sk);
    }
}

// Lifecycle, all backends: raw tracepoints (no trace record to fill: cheaper), or the classic
// ones where raw tracepoints are refused or their prototype differs.

/// match-proto:v4.16..latest:include/trace/events/sock.h:TRACE_EVENT(inet_sock_set_state, TP_PROTO(const struct sock *sk, const int oldstate, const int newstate))
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn raw_inet_sock_set_state(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    on_state(sk, old as u8, new as u8, true);
    0
}

/// match-proto:v4.16..latest:include/trace/events/tcp.h:DEFINE_EVENT(tcp_event_sk, tcp_destroy_sock, TP_PROTO(struct sock *sk))
#[raw_tracepoint(tracepoint = "tcp_destroy_sock")]
pub fn raw_tcp_destroy_sock(ctx: RawTracePointContext) -> i32 {
    on_destroy(ctx.arg(0));
    0
}

/// match-proto:v4.16..latest:include/trace/events/sock.h:TRACE_EVENT(inet_sock_set_state, TP_PROTO(const struct sock *sk, const int oldstate, const int newstate))
#[tracepoint]
pub fn tp_inet_sock_set_state(ctx: TracePointContext) -> u32 {
    // SAFETY: the context of a classic tracepoint program is its trace record, whose layout the
    // loader checked against the event's format file before attaching (TRACEPOINT_FIELDS).
    let args = unsafe { &*(ctx.as_ptr() as *const TpInetSockSetState) };
    if args.protocol == IPPROTO_TCP {
        on_state(args.skaddr, args.oldstate as u8, args.newstate as u8, false);
    }
    0
}

/// match-proto:v4.16..latest:include/trace/events/tcp.h:DEFINE_EVENT(tcp_event_sk, tcp_destroy_sock, TP_PROTO(struct sock *sk))
#[tracepoint]
pub fn tp_tcp_destroy_sock(ctx: TracePointContext) -> u32 {
    // SAFETY: the trace record of tcp_destroy_sock, layout checked by the loader (see above).
    let args = unsafe { &*(ctx.as_ptr() as *const TpTcpDestroySock) };
    on_destroy(args.skaddr);
    0
}

// ---------------------------------------------------------------------------------------------
// Backend 1: fexit (BTF trampolines). The return value sits after the last argument.

/// match-proto:v4.19..latest:net/ipv4/tcp.c:int tcp_sendmsg(struct sock *sk, struct msghdr *msg, size_t size)
#[fexit]
pub fn fexit_tcp_sendmsg(ctx: FExitContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let ret: i32 = ctx.arg(3);
    record(sk, ret as i64, Dir::Send, false);
    0
}

/// sendfile/splice before Linux 6.5; the loader attaches it only where the function exists.
/// match-proto:v4.19..v6.4:net/ipv4/tcp.c:int tcp_sendpage(struct sock *sk, struct page *page, int offset, size_t size, int flags)
#[fexit]
pub fn fexit_tcp_sendpage(ctx: FExitContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let ret: i32 = ctx.arg(5);
    record(sk, ret as i64, Dir::Send, false);
    0
}

/// match-proto:v5.19..latest:net/ipv4/tcp.c:int tcp_recvmsg(struct sock *sk, struct msghdr *msg, size_t len, int flags, int *addr_len)
#[fexit]
pub fn fexit_tcp_recvmsg(ctx: FExitContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let flags: i32 = ctx.arg(3);
    let ret: i32 = ctx.arg(5);
    if flags as u32 & MSG_PEEK == 0 {
        record(sk, ret as i64, Dir::Recv, false);
    }
    0
}

/// Before 5.19 `tcp_recvmsg` had a `nonblock` argument before `flags`, so `flags` and the return
/// value sit one slot later. The loader picks this program when BTF shows six parameters.
/// match-proto:v4.19..v5.18:net/ipv4/tcp.c:int tcp_recvmsg(struct sock *sk, struct msghdr *msg, size_t len, int nonblock, int flags, int *addr_len)
#[fexit]
pub fn fexit_tcp_recvmsg_nonblock(ctx: FExitContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let flags: i32 = ctx.arg(4);
    let ret: i32 = ctx.arg(6);
    if flags as u32 & MSG_PEEK == 0 {
        record(sk, ret as i64, Dir::Recv, false);
    }
    0
}

// ---------------------------------------------------------------------------------------------
// Backend 2: kprobe + kretprobe. Entry saves the arguments, return counts.

#[inline(always)]
fn save(map: &HashMap<u64, Inflight>, sk: u64, flags: u32) {
    let v = Inflight { sk, flags, _pad: 0 };
    if map
        .insert(bpf_get_current_pid_tgid(), v, BPF_ANY.into())
        .is_err()
    {
        count_error(ErrorReason::InflightFull);
    }
}

#[inline(always)]
fn take(map: &HashMap<u64, Inflight>) -> Option<Inflight> {
    let key = bpf_get_current_pid_tgid();
    // SAFETY: the entry is keyed by this thread's pid_tgid, so only this thread writes it, and
    // it is copied out at once.
    let v = unsafe { map.get(key) }.copied();
    if v.is_some() {
        let _ = map.remove(key);
    }
    v
}

/// match-proto:v4.19..latest:net/ipv4/tcp.c:int tcp_sendmsg(struct sock *sk, struct msghdr *msg, size_t size)
#[kprobe]
pub fn kprobe_tcp_sendmsg(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<u64>(0) {
        save(&INFLIGHT_SEND, sk, 0);
    }
    0
}

/// match-proto:v4.19..v6.4:net/ipv4/tcp.c:int tcp_sendpage(struct sock *sk, struct page *page, int offset, size_t size, int flags)
#[kprobe]
pub fn kprobe_tcp_sendpage(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<u64>(0) {
        save(&INFLIGHT_SEND, sk, 0);
    }
    0
}

/// Return of `tcp_sendmsg` and `tcp_sendpage` (both return the bytes queued, or -errno).
#[kretprobe]
pub fn kretprobe_tcp_send(ctx: RetProbeContext) -> u32 {
    if let Some(call) = take(&INFLIGHT_SEND) {
        let ret: i32 = ctx.ret();
        record(call.sk, ret as i64, Dir::Send, false);
    }
    0
}

/// match-proto:v5.19..latest:net/ipv4/tcp.c:int tcp_recvmsg(struct sock *sk, struct msghdr *msg, size_t len, int flags, int *addr_len)
#[kprobe]
pub fn kprobe_tcp_recvmsg(ctx: ProbeContext) -> u32 {
    if let (Some(sk), Some(flags)) = (ctx.arg::<u64>(0), ctx.arg::<u32>(3)) {
        save(&INFLIGHT_RECV, sk, flags);
    }
    0
}

/// match-proto:v4.19..v5.18:net/ipv4/tcp.c:int tcp_recvmsg(struct sock *sk, struct msghdr *msg, size_t len, int nonblock, int flags, int *addr_len)
#[kprobe]
pub fn kprobe_tcp_recvmsg_nonblock(ctx: ProbeContext) -> u32 {
    if let (Some(sk), Some(flags)) = (ctx.arg::<u64>(0), ctx.arg::<u32>(4)) {
        save(&INFLIGHT_RECV, sk, flags);
    }
    0
}

#[kretprobe]
pub fn kretprobe_tcp_recvmsg(ctx: RetProbeContext) -> u32 {
    if let Some(call) = take(&INFLIGHT_RECV)
        && call.flags & MSG_PEEK == 0
    {
        let ret: i32 = ctx.ret();
        record(call.sk, ret as i64, Dir::Recv, false);
    }
    0
}

// ---------------------------------------------------------------------------------------------
// Backend 3: socket-layer tracepoints (Linux >= 6.3). They fire in sock_sendmsg/sock_recvmsg for
// every protocol, with the protocol's return value.

/// match-proto:v6.3..latest:include/trace/events/sock.h:DEFINE_EVENT(sock_msg_length, sock_send_length, TP_PROTO(struct sock *sk, int ret, int flags))
#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn raw_sock_send_length(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let ret: i32 = ctx.arg(1);
    record(sk, ret as i64, Dir::Send, true);
    0
}

/// match-proto:v6.3..latest:include/trace/events/sock.h:DEFINE_EVENT(sock_msg_length, sock_recv_length, TP_PROTO(struct sock *sk, int ret, int flags))
#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn raw_sock_recv_length(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let ret: i32 = ctx.arg(1);
    let flags: i32 = ctx.arg(2);
    if flags as u32 & MSG_PEEK == 0 {
        record(sk, ret as i64, Dir::Recv, true);
    }
    0
}

/// match-proto:v6.3..latest:include/trace/events/sock.h:DEFINE_EVENT(sock_msg_length, sock_send_length, TP_PROTO(struct sock *sk, int ret, int flags))
#[tracepoint]
pub fn tp_sock_send_length(ctx: TracePointContext) -> u32 {
    // SAFETY: the trace record of sock_send_length, layout checked by the loader (see above).
    let args = unsafe { &*(ctx.as_ptr() as *const TpSockLength) };
    if args.protocol == IPPROTO_TCP {
        record(args.sk, args.ret as i64, Dir::Send, false);
    }
    0
}

/// match-proto:v6.3..latest:include/trace/events/sock.h:DEFINE_EVENT(sock_msg_length, sock_recv_length, TP_PROTO(struct sock *sk, int ret, int flags))
#[tracepoint]
pub fn tp_sock_recv_length(ctx: TracePointContext) -> u32 {
    // SAFETY: the trace record of sock_recv_length, layout checked by the loader (see above).
    let args = unsafe { &*(ctx.as_ptr() as *const TpSockLength) };
    if args.protocol == IPPROTO_TCP && args.flags as u32 & MSG_PEEK == 0 {
        record(args.sk, args.ret as i64, Dir::Recv, false);
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable by construction; if a panic path survived optimisation the verifier rejects the
    // program at load ("last insn is not an exit or jmp"), never at run time.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
