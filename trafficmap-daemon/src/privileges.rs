//! Dropping privileges once the probe is loaded and attached (security review, finding 12).
//!
//! Loading and attaching needs CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN (or root) and more; what the
//! agent does afterwards does not: reading and deleting map entries and reading the ring buffer
//! go through file descriptors it already holds, `/proc/<pid>/net/tcp*` is world-readable, the
//! host identity was resolved at start. So after attaching, every thread of the agent sets
//! `no_new_privs`, empties its bounding set (when it holds CAP_SETPCAP) and ambient set, and
//! keeps in its permitted and effective sets only [`needed`] (usually nothing; see
//! docs/agent.md, "Privileges").
//!
//! Capabilities are a property of each thread, not of the process: `capset(2)` changes the
//! calling thread only, and the async runtime's threads already exist. So the change is
//! broadcast: every other thread gets a real-time signal whose handler makes the same
//! system calls (as libpsx and Go's `AllThreadsSyscall` do), and the result is verified in
//! `/proc/self/task/*/status`. The `caps` crate only changes the calling thread, so raw system
//! calls are used here.

use std::{
    collections::HashSet,
    sync::atomic::{AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use thiserror::Error;
use tracing::{info, warn};

pub const CAP_DAC_OVERRIDE: u32 = 1;
pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_SETPCAP: u32 = 8;
pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

#[derive(Debug, Error)]
pub enum PrivError {
    #[error("reading {what}: {source}")]
    Read {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{what} failed: {source}")]
    Syscall {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("thread {tid} still holds capabilities {found:#x} after dropping to {want:#x}")]
    Kept { tid: i32, found: u64, want: u64 },
    #[error("{0} threads did not answer the capability drop")]
    NoAnswer(usize),
}

/// The capability sets of a thread, from `/proc/.../status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapSets {
    pub effective: u64,
    pub permitted: u64,
    pub bounding: u64,
    pub ambient: u64,
    pub no_new_privs: bool,
}

/// Parses the `Cap*:` and `NoNewPrivs:` lines of a `/proc/<pid>/status` file.
pub fn parse_status(status: &str) -> Option<CapSets> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    let hex = |name: &str| u64::from_str_radix(field(name)?, 16).ok();
    Some(CapSets {
        effective: hex("CapEff:")?,
        permitted: hex("CapPrm:")?,
        bounding: hex("CapBnd:")?,
        ambient: hex("CapAmb:").unwrap_or(0),
        no_new_privs: field("NoNewPrivs:") == Some("1"),
    })
}

fn own_status(path: &str) -> Result<CapSets, PrivError> {
    let text = std::fs::read_to_string(path).map_err(|source| PrivError::Read {
        what: "thread status",
        source,
    })?;
    parse_status(&text).ok_or_else(|| PrivError::Read {
        what: "thread status",
        source: std::io::Error::other("no Cap lines"),
    })
}

/// The capabilities kept after attaching, from the capabilities held now:
/// - CAP_BPF (or CAP_SYS_ADMIN where the agent has no CAP_BPF) only if `map_ops_need_cap`:
///   before Linux 6.5, with `kernel.unprivileged_bpf_disabled` set (the default), every `bpf()`
///   call, even a lookup through an open map fd, needs it;
/// - for the kretprobe backend run by a non-root user: CAP_DAC_OVERRIDE and
///   CAP_DAC_READ_SEARCH, to read `kprobe_profile` and remove its kprobe events from tracefs at
///   exit (root owns tracefs, so uid 0 needs no capability for that);
/// - CAP_NET_ADMIN if `nat` (`[nat] enable`): the kernel checks it at every conntrack dump
///   (issue 11, NAT undone; see `conntrack`).
pub fn needed(held: u64, map_ops_need_cap: bool, kretprobe: bool, uid: u32, nat: bool) -> u64 {
    let bit = |c: u32| 1u64 << c;
    let mut keep = 0;
    if map_ops_need_cap {
        keep |= if held & bit(CAP_BPF) != 0 {
            bit(CAP_BPF)
        } else {
            bit(CAP_SYS_ADMIN)
        };
    }
    if kretprobe && uid != 0 {
        keep |= bit(CAP_DAC_OVERRIDE) | bit(CAP_DAC_READ_SEARCH);
    }
    if nat {
        keep |= bit(CAP_NET_ADMIN);
    }
    keep & held
}

// What every thread applies; set before the signals are sent.
static KEEP: AtomicU64 = AtomicU64::new(0);
static LAST_CAP: AtomicU32 = AtomicU32::new(40);
static DONE: AtomicUsize = AtomicUsize::new(0);
/// The first errno a thread met (0: none).
static ERRNO: AtomicI32 = AtomicI32::new(0);

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
}

/// The calling thread's effective and permitted sets become `eff` and `prm`; inheritable is
/// emptied. Only a system call: safe in a signal handler.
fn capset(eff: u64, prm: u64) -> Result<(), i32> {
    let header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: eff as u32,
            permitted: prm as u32,
            inheritable: 0,
        },
        CapData {
            effective: (eff >> 32) as u32,
            permitted: (prm >> 32) as u32,
            inheritable: 0,
        },
    ];
    // SAFETY: header and a two-element data array of the v3 layout, as capset(2) requires.
    let r = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    if r == 0 { Ok(()) } else { Err(errno()) }
}

/// Applies the drop to the calling thread. Async-signal-safe: atomics and system calls only.
fn apply_here() -> Result<(), i32> {
    let keep = KEEP.load(Ordering::SeqCst);
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(errno());
    }
    // The bounding set can only shrink with CAP_SETPCAP; without it (the agent was started
    // with a few capabilities), no_new_privs already stops an exec from gaining any.
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_CAPBSET_READ, CAP_SETPCAP as libc::c_ulong, 0, 0, 0) } == 1
        && has_effective(CAP_SETPCAP)
    {
        for cap in 0..=LAST_CAP.load(Ordering::SeqCst) {
            if keep & (1 << cap) == 0 {
                // SAFETY: prctl with integer arguments.
                if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0
                {
                    return Err(errno());
                }
            }
        }
    }
    // SAFETY: prctl with integer arguments.
    if unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    } != 0
    {
        return Err(errno());
    }
    capset(keep, keep)
}

/// Whether the calling thread has `cap` in its effective set (capget; signal-safe).
fn has_effective(cap: u32) -> bool {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: header and a two-element data array of the v3 layout, as capget(2) requires.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    r == 0 && (data[(cap / 32) as usize].effective >> (cap % 32)) & 1 == 1
}

extern "C" fn on_signal(_: libc::c_int) {
    let saved = errno();
    if let Err(e) = apply_here() {
        let _ = ERRNO.compare_exchange(0, e, Ordering::SeqCst, Ordering::SeqCst);
    }
    DONE.fetch_add(1, Ordering::SeqCst);
    // Restore errno for the interrupted code.
    // SAFETY: __errno_location returns the calling thread's errno slot.
    unsafe { *libc::__errno_location() = saved };
}

fn gettid() -> i32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

fn thread_ids() -> Result<Vec<i32>, PrivError> {
    let dir = std::fs::read_dir("/proc/self/task").map_err(|source| PrivError::Read {
        what: "/proc/self/task",
        source,
    })?;
    Ok(dir
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect())
}

/// Whether a `bpf()` map operation still works on this thread with no capabilities in its
/// effective set: lowers the effective set (permitted stays, so this is undone), runs
/// `map_op`, restores.
pub fn map_ops_work_without_caps(map_op: impl FnOnce() -> bool) -> Result<bool, PrivError> {
    let before = own_status("/proc/thread-self/status")?;
    capset(0, before.permitted).map_err(|e| PrivError::Syscall {
        what: "capset (lowering the effective set)",
        source: std::io::Error::from_raw_os_error(e),
    })?;
    let ok = map_op();
    capset(before.effective, before.permitted).map_err(|e| PrivError::Syscall {
        what: "capset (restoring the effective set)",
        source: std::io::Error::from_raw_os_error(e),
    })?;
    Ok(ok)
}

/// Drops, on every thread of the process, every capability but `keep`, empties the bounding
/// (if possible) and ambient sets and sets `no_new_privs`; then checks every thread. Called
/// once, after the probe is attached.
pub fn drop_all_but(keep: u64) -> Result<(), PrivError> {
    let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40u32)
        .min(63);
    LAST_CAP.store(last_cap, Ordering::SeqCst);
    KEEP.store(keep, Ordering::SeqCst);
    let signo = libc::SIGRTMIN() + 4;
    // SAFETY: a zeroed sigaction is valid; the handler only makes system calls and touches
    // atomics (async-signal-safe). SA_RESTART: interrupted system calls resume.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(signo, &sa, std::ptr::null_mut()) != 0 {
            return Err(PrivError::Syscall {
                what: "sigaction",
                source: std::io::Error::last_os_error(),
            });
        }
    }
    let me = gettid();
    // SAFETY: getpid cannot fail.
    let pid = unsafe { libc::getpid() };
    let mut done: HashSet<i32> = HashSet::from([me]);
    apply_here().map_err(|e| PrivError::Syscall {
        what: "dropping capabilities",
        source: std::io::Error::from_raw_os_error(e),
    })?;
    // Threads created meanwhile by a thread not yet changed would keep the old sets: repeat
    // until a round finds no new thread.
    for _ in 0..20 {
        let mut sent = 0usize;
        DONE.store(0, Ordering::SeqCst);
        for tid in thread_ids()? {
            if done.insert(tid) {
                // SAFETY: tgkill with our own pid; a thread that has exited gives ESRCH.
                if unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, signo) } == 0 {
                    sent += 1;
                }
            }
        }
        if sent == 0 {
            break;
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while DONE.load(Ordering::SeqCst) < sent {
            if Instant::now() > deadline {
                return Err(PrivError::NoAnswer(
                    sent.saturating_sub(DONE.load(Ordering::SeqCst)),
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let e = ERRNO.load(Ordering::SeqCst);
    if e != 0 {
        return Err(PrivError::Syscall {
            what: "dropping capabilities on a thread",
            source: std::io::Error::from_raw_os_error(e),
        });
    }
    for tid in thread_ids()? {
        let Ok(s) = own_status(&format!("/proc/self/task/{tid}/status")) else {
            continue; // exited
        };
        if s.effective != keep || s.permitted != keep || s.ambient != 0 || !s.no_new_privs {
            return Err(PrivError::Kept {
                tid,
                found: s.effective | s.permitted | s.ambient,
                want: keep,
            });
        }
    }
    Ok(())
}

/// Names of the capabilities in `set`, for logs and docs.
pub fn names(set: u64) -> Vec<&'static str> {
    [
        (CAP_DAC_OVERRIDE, "cap_dac_override"),
        (CAP_DAC_READ_SEARCH, "cap_dac_read_search"),
        (CAP_NET_ADMIN, "cap_net_admin"),
        (CAP_SYS_ADMIN, "cap_sys_admin"),
        (CAP_BPF, "cap_bpf"),
    ]
    .into_iter()
    .filter(|(c, _)| set & (1 << c) != 0)
    .map(|(_, n)| n)
    .collect()
}

/// Logs what happened; a failure is logged, not fatal: the agent keeps counting.
pub fn report(result: &Result<(), PrivError>, keep: u64) {
    match result {
        Ok(()) => info!(kept = ?names(keep), "capabilities dropped after attaching"),
        Err(e) => warn!(error = %e, "could not drop capabilities; running with the ones held"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        let s = "Name:\tx\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t0000008000000000\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\n";
        assert_eq!(
            parse_status(s),
            Some(CapSets {
                effective: 1 << CAP_BPF,
                permitted: 0x1ff_ffff_ffff,
                bounding: 0x1ff_ffff_ffff,
                ambient: 0,
                no_new_privs: true,
            })
        );
        assert_eq!(parse_status("Name:\tx\n"), None);
    }

    #[test]
    fn what_stays() {
        let all = u64::MAX >> 23;
        assert_eq!(needed(all, false, false, 0, false), 0);
        assert_eq!(needed(all, true, false, 0, false), 1 << CAP_BPF);
        assert_eq!(
            needed(1 << CAP_SYS_ADMIN, true, false, 0, false),
            1 << CAP_SYS_ADMIN
        );
        assert_eq!(needed(all, false, true, 0, false), 0);
        assert_eq!(
            needed(all, false, true, 65534, false),
            (1 << CAP_DAC_OVERRIDE) | (1 << CAP_DAC_READ_SEARCH)
        );
        // Never more than held.
        assert_eq!(
            needed(1 << CAP_DAC_READ_SEARCH, false, true, 65534, false),
            1 << CAP_DAC_READ_SEARCH
        );
        // [nat] enable keeps CAP_NET_ADMIN, if held.
        assert_eq!(needed(all, false, false, 0, true), 1 << CAP_NET_ADMIN);
        assert_eq!(needed(1 << CAP_BPF, false, false, 65534, true), 0);
        assert_eq!(
            names((1 << CAP_BPF) | 1 << CAP_NET_ADMIN),
            vec!["cap_net_admin", "cap_bpf"]
        );
        assert_eq!(
            names((1 << CAP_BPF) | 1 << CAP_DAC_OVERRIDE),
            vec!["cap_dac_override", "cap_bpf"]
        );
    }
}
