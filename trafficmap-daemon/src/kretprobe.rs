//! kretprobes with a large `maxactive`, created through tracefs.
//!
//! A kretprobe can follow only `maxactive` calls in flight at once; the kernel's default is
//! `max(10, 2 x CPUs)`. Every thread blocked in `tcp_recvmsg` holds one, so on a server with many
//! blocking readers the returns beyond that are silently missed, and their bytes with them (seen
//! on 5.10 with 16 threads reading at once). aya attaches kretprobes through the perf kprobe PMU,
//! which takes no `maxactive`; this module instead writes `r<maxactive>:...` to tracefs
//! `kprobe_events` and attaches the program to the resulting event with `perf_event_open` and
//! `PERF_EVENT_IOC_SET_BPF`. Misses stay visible in tracefs `kprobe_profile`.

use std::{
    fs::OpenOptions,
    io::Write as _,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

/// The kernel's upper limit for `maxactive` (`KRETPROBE_MAXACTIVE_MAX`).
pub const MAX_ACTIVE: u32 = 4096;

const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;

/// An attached tracefs kretprobe; dropping it detaches the program and removes the event.
#[derive(Debug)]
pub struct TracefsKretprobe {
    tracefs: PathBuf,
    name: String,
    perf: Option<OwnedFd>,
}

/// Event name for this process and function (tracefs accepts `[A-Za-z0-9_]`).
fn event_name(function: &str, pid: u32) -> String {
    format!("trafficmap_{pid}_{function}")
}

/// Parses `kprobe_profile` lines (`event hits misses`) for one event.
pub fn parse_misses(profile: &str, name: &str) -> Option<u64> {
    profile.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next()? == name).then(|| it.nth(1)?.parse().ok())?
    })
}

fn write_events(tracefs: &Path, line: &str) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .append(true)
        .open(tracefs.join("kprobe_events"))?;
    f.write_all(line.as_bytes())
}

/// Removes events left by agents that died without cleaning up (their pid is gone).
pub fn remove_stale(tracefs: &Path) {
    let Ok(list) = std::fs::read_to_string(tracefs.join("kprobe_events")) else {
        return;
    };
    for line in list.lines() {
        // r4096:kprobes/trafficmap_1234_tcp_recvmsg tcp_recvmsg
        let Some(event) = line
            .split_whitespace()
            .next()
            .and_then(|s| s.split_once(':'))
            .map(|(_, e)| e)
        else {
            continue;
        };
        let Some(name) = event.strip_prefix("kprobes/trafficmap_") else {
            continue;
        };
        let pid = name.split('_').next().and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = write_events(tracefs, &format!("-:{event}\n"));
        }
    }
}

impl TracefsKretprobe {
    /// Creates `r<maxactive>:kprobes/<name> <function>` and attaches `prog` (a loaded kprobe
    /// program) to it.
    pub fn attach(
        tracefs: &Path,
        prog: BorrowedFd<'_>,
        function: &str,
        maxactive: u32,
    ) -> std::io::Result<TracefsKretprobe> {
        let name = event_name(function, std::process::id());
        // A leftover of ours from a previous load in this process: remove it first.
        let _ = write_events(tracefs, &format!("-:kprobes/{name}\n"));
        write_events(
            tracefs,
            &format!("r{maxactive}:kprobes/{name} {function}\n"),
        )?;
        // From here on, Drop removes the event whatever fails next.
        let mut probe = TracefsKretprobe {
            tracefs: tracefs.to_owned(),
            name,
            perf: None,
        };
        let id: u64 =
            std::fs::read_to_string(tracefs.join("events/kprobes").join(&probe.name).join("id"))?
                .trim()
                .parse()
                .map_err(|e| std::io::Error::other(format!("kprobe event id: {e}")))?;

        // struct perf_event_attr, version 7 size; only type, size, config, sample_period set.
        let mut attr = [0u8; 128];
        attr[0..4].copy_from_slice(&PERF_TYPE_TRACEPOINT.to_ne_bytes());
        attr[4..8].copy_from_slice(&128u32.to_ne_bytes());
        attr[8..16].copy_from_slice(&id.to_ne_bytes());
        attr[16..24].copy_from_slice(&1u64.to_ne_bytes());
        // SAFETY: attr is a valid perf_event_attr of the size it declares. A BPF program on a
        // trace event runs on every CPU, whatever CPU the perf event is opened on.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                attr.as_ptr(),
                -1 as libc::pid_t,
                0 as libc::c_int,
                -1 as libc::c_int,
                PERF_FLAG_FD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a new fd we own.
        let perf = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // SAFETY: ioctls on our perf event fd.
        unsafe {
            if libc::ioctl(perf.as_raw_fd(), PERF_EVENT_IOC_SET_BPF, prog.as_raw_fd()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::ioctl(perf.as_raw_fd(), PERF_EVENT_IOC_ENABLE, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        probe.perf = Some(perf);
        Ok(probe)
    }

    /// Returns the kernel missed (maxactive exhausted), summed over `probes`: one read of
    /// `kprobe_profile`, which lists every kprobe event of the system.
    pub fn misses(probes: &[TracefsKretprobe]) -> u64 {
        let Some(first) = probes.first() else {
            return 0;
        };
        let Ok(profile) = std::fs::read_to_string(first.tracefs.join("kprobe_profile")) else {
            return 0;
        };
        probes
            .iter()
            .filter_map(|k| parse_misses(&profile, &k.name))
            .fold(0u64, u64::saturating_add)
    }
}

impl Drop for TracefsKretprobe {
    fn drop(&mut self) {
        // Close the perf event (detaching the program) before the event can be removed.
        drop(self.perf.take());
        let _ = write_events(&self.tracefs, &format!("-:kprobes/{}\n", self.name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misses_from_profile() {
        let profile =
            "  trafficmap_42_tcp_recvmsg                    1000               3\n  other 5 0\n";
        assert_eq!(parse_misses(profile, "trafficmap_42_tcp_recvmsg"), Some(3));
        assert_eq!(parse_misses(profile, "trafficmap_43_tcp_recvmsg"), None);
        assert_eq!(event_name("tcp_sendmsg", 7), "trafficmap_7_tcp_sendmsg");
    }
}
