//! Host health for the reports (issue 12 item 5): uptime, load averages, memory and online CPUs,
//! sampled once per report window from four small files:
//!
//! - `/proc/uptime`, `/proc/loadavg`, `/proc/meminfo` (`MemTotal`, `MemAvailable`), parsed by
//!   `procfs-core` (the maintained parsers of the `procfs` crate, without its I/O layer);
//! - `/sys/devices/system/cpu/online`, the kernel's list of online CPUs (`0-3,8`), parsed here
//!   (procfs-core has no sysfs parser; the format is one line of ranges).
//!
//! Why the sysfs list and not `sched_getaffinity`: the load averages count the whole host's
//! runnable tasks, so they are read against the whole host's CPUs; the agent's own affinity is
//! its cpuset (a container's, or a pinned unit's), which says nothing about the host.
//!
//! In a container: `uptime`, `loadavg` and `meminfo` are not namespaced by the kernel, so the
//! agent's own `/proc` shows the host's values whatever its PID namespace (the DaemonSet runs
//! with `hostPID` for the probe's process names anyway), unless something such as LXCFS mounts
//! per-container files over them, or a time namespace shifts the uptime. `/sys` is the host's
//! too. docs/agent.md, "Host health", says the same.
//!
//! A file that cannot be read or parsed never stops the agent: the report goes without
//! `host.stats`, the first failure is logged (at warn) and every omission counted
//! (`trafficmap_agent_report_fixes_total{reason="host_stats_omitted"}`).

use std::path::PathBuf;

use procfs_core::{FromBufRead as _, FromRead as _};
use trafficmap_model::report::HostStats;

/// Why a sample could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum HostStatsError {
    #[error("reading {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {file}: {message}")]
    Parse { file: &'static str, message: String },
    #[error("{0}")]
    Bounds(String),
}

fn parse_err(file: &'static str, message: impl std::fmt::Display) -> HostStatsError {
    HostStatsError::Parse {
        file,
        message: message.to_string(),
    }
}

/// Seconds since boot from `/proc/uptime` (`23317.37 10027.52`), rounded down.
pub fn parse_uptime(text: &[u8]) -> Result<u64, HostStatsError> {
    let u = procfs_core::Uptime::from_read(text).map_err(|e| parse_err("uptime", e))?;
    if !u.uptime.is_finite() || u.uptime < 0.0 {
        return Err(parse_err("uptime", format!("{} seconds", u.uptime)));
    }
    // `as` saturates; the model's bound refuses anything above 100 years.
    Ok(u.uptime as u64)
}

/// The 1, 5 and 15 minute load averages of `/proc/loadavg` (`17.34 9.03 4.37 20/189 23460`).
/// procfs-core reads them as `f32`; the kernel prints two decimals, which are kept exactly
/// (`0.52`, not `0.519999980926513`).
pub fn parse_loadavg(text: &[u8]) -> Result<[f64; 3], HostStatsError> {
    let l = procfs_core::LoadAverage::from_read(text).map_err(|e| parse_err("loadavg", e))?;
    Ok([l.one, l.five, l.fifteen].map(|v| (f64::from(v) * 100.0).round() / 100.0))
}

/// `MemTotal` and `MemAvailable` of `/proc/meminfo`, in bytes. `MemAvailable` exists since
/// Linux 3.14; without it there is no sample.
pub fn parse_meminfo(text: &[u8]) -> Result<(u64, u64), HostStatsError> {
    let m = procfs_core::Meminfo::from_buf_read(text).map_err(|e| parse_err("meminfo", e))?;
    let available = m
        .mem_available
        .ok_or_else(|| parse_err("meminfo", "no MemAvailable line (Linux < 3.14)"))?;
    Ok((m.mem_total, available))
}

/// The number of CPUs in a kernel CPU list (`0-3,8-11,16`, one line): ranges summed. Capped at
/// [`trafficmap_model::bounds::MAX_CPUS`] + 1 (the model refuses that), so a hostile or broken
/// list cannot overflow.
pub fn parse_cpu_list(text: &[u8]) -> Result<u32, HostStatsError> {
    let bad = |m: String| parse_err("cpu/online", m);
    let text = std::str::from_utf8(text)
        .map_err(|e| bad(e.to_string()))?
        .trim();
    if text.is_empty() {
        return Err(bad("empty list".into()));
    }
    let cap = u64::from(trafficmap_model::bounds::MAX_CPUS) + 1;
    let mut n: u64 = 0;
    for part in text.split(',') {
        let num = |s: &str| {
            s.parse::<u64>()
                .map_err(|_| bad(format!("`{}` is not a CPU number", s.escape_debug())))
        };
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => {
                let v = num(part)?;
                (v, v)
            }
        };
        if hi < lo {
            return Err(bad(format!("range {lo}-{hi} runs backwards")));
        }
        n = n.saturating_add((hi - lo).saturating_add(1)).min(cap);
    }
    Ok(u32::try_from(n).unwrap_or(u32::MAX))
}

/// Where the four files are: `/proc` and `/sys/devices/system/cpu/online` unless a test says
/// otherwise.
#[derive(Clone, Debug)]
pub struct HostStatsReader {
    proc_root: PathBuf,
    cpu_online: PathBuf,
    /// Whether a failure was logged already (the first one is; the rest are only counted).
    logged: bool,
}

impl Default for HostStatsReader {
    fn default() -> Self {
        HostStatsReader::new("/proc", "/sys/devices/system/cpu/online")
    }
}

impl HostStatsReader {
    pub fn new(proc_root: impl Into<PathBuf>, cpu_online: impl Into<PathBuf>) -> Self {
        HostStatsReader {
            proc_root: proc_root.into(),
            cpu_online: cpu_online.into(),
            logged: false,
        }
    }

    /// Reads and checks one sample (the model's bounds: what is emitted is what the collector
    /// accepts).
    pub fn read(&self) -> Result<HostStats, HostStatsError> {
        let file = |path: PathBuf| {
            std::fs::read(&path).map_err(|source| HostStatsError::Read { path, source })
        };
        let uptime_seconds = parse_uptime(&file(self.proc_root.join("uptime"))?)?;
        let [load1, load5, load15] = parse_loadavg(&file(self.proc_root.join("loadavg"))?)?;
        let (memory_total_bytes, memory_available_bytes) =
            parse_meminfo(&file(self.proc_root.join("meminfo"))?)?;
        let cpus = parse_cpu_list(&file(self.cpu_online.clone())?)?;
        let stats = HostStats {
            uptime_seconds,
            load1,
            load5,
            load15,
            memory_total_bytes,
            memory_available_bytes,
            cpus,
        };
        stats
            .validate()
            .map_err(|e| HostStatsError::Bounds(e.to_string()))?;
        Ok(stats)
    }

    /// One sample for a report, or `None` (the report goes without it): the first failure is
    /// logged, the caller counts each.
    pub fn sample(&mut self) -> Option<HostStats> {
        match self.read() {
            Ok(s) => Some(s),
            Err(e) => {
                if !self.logged {
                    self.logged = true;
                    tracing::warn!(
                        error = %e,
                        "host health unavailable: reports go without host.stats (logged once; counted in trafficmap_agent_report_fixes_total{{reason=\"host_stats_omitted\"}})"
                    );
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// A reader of the fixture directory `name` (its sysfs file is `cpu-online`).
    fn fixture(name: &str) -> HostStatsReader {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/hoststats")
            .join(name);
        HostStatsReader::new(&dir, dir.join("cpu-online"))
    }

    /// Files copied from this build machine's /proc and /sys (2 CPUs, 24 GiB).
    #[test]
    fn this_machine() {
        assert_eq!(
            fixture("this-machine").read().unwrap(),
            HostStats {
                uptime_seconds: 23_317,
                load1: 17.34,
                load5: 9.03,
                load15: 4.37,
                memory_total_bytes: 24_684_092 * 1024,
                memory_available_bytes: 21_706_908 * 1024,
                cpus: 2,
            }
        );
    }

    #[test]
    fn one_cpu() {
        assert_eq!(
            fixture("one-cpu").read().unwrap(),
            HostStats {
                uptime_seconds: 412,
                load1: 1.0,
                load5: 0.75,
                load15: 0.5,
                memory_total_bytes: 1_014_584 * 1024,
                memory_available_bytes: 612_340 * 1024,
                cpus: 1,
            }
        );
    }

    /// 24 TiB, 448 CPUs, a year up, a load of hundreds.
    #[test]
    fn big_memory() {
        assert_eq!(
            fixture("big-memory").read().unwrap(),
            HostStats {
                uptime_seconds: 31_557_600,
                load1: 312.47,
                load5: 298.1,
                load15: 250.0,
                memory_total_bytes: 25_769_803_776 * 1024,
                memory_available_bytes: 21_474_836_480 * 1024,
                cpus: 448,
            }
        );
    }

    /// The live files of this machine: what must hold whatever the moment.
    #[test]
    fn live_read_holds_its_invariants() {
        let s = HostStatsReader::default().read().unwrap();
        assert!(s.memory_available_bytes <= s.memory_total_bytes);
        let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
        assert_eq!(s.cpus, parse_cpu_list(online.as_bytes()).unwrap());
        // The same count the kernel gives by another way: one `cpuN` directory per online CPU
        // has `online` 1 (cpu0 often has no such file: it cannot go offline).
        let dirs = std::fs::read_dir("/sys/devices/system/cpu")
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.strip_prefix("cpu")
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                    && std::fs::read_to_string(e.path().join("online"))
                        .map_or(true, |v| v.trim() == "1")
            })
            .count();
        assert_eq!(s.cpus as usize, dirs);
        let uptime = std::fs::read_to_string("/proc/uptime").unwrap();
        let now: f64 = uptime.split(' ').next().unwrap().parse().unwrap();
        assert!(s.uptime_seconds <= now as u64);
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list(b"0\n").unwrap(), 1);
        assert_eq!(parse_cpu_list(b"0-1\n").unwrap(), 2);
        assert_eq!(parse_cpu_list(b"0-3,8-11,16\n").unwrap(), 9);
        // Capped one above the model's bound: the bound refuses it, nothing overflows.
        assert_eq!(parse_cpu_list(b"0-18446744073709551615").unwrap(), 65_537);
        for bad in [&b""[..], b"\n", b"a", b"3-1", b"0-", b"1,,2", b"\xff"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn broken_files_give_no_sample() {
        assert!(parse_uptime(b"").is_err());
        assert!(parse_uptime(b"abc 1.0").is_err());
        assert!(parse_uptime(b"-5.0 1.0").is_err());
        assert!(parse_loadavg(b"0.1 0.2").is_err());
        assert!(parse_meminfo(b"MemTotal: 1 kB\n").is_err());
        // A kernel before 3.14: no MemAvailable.
        let old = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/hoststats/this-machine/meminfo"),
        )
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("MemAvailable:"))
        .collect::<Vec<_>>()
        .join("\n");
        assert_eq!(
            parse_meminfo(old.as_bytes()).unwrap_err().to_string(),
            "parsing meminfo: no MemAvailable line (Linux < 3.14)"
        );
        // A missing file: the error names it, and `sample` returns none (and only logs once).
        let mut r = HostStatsReader::new("/nonexistent-proc", "/sys/devices/system/cpu/online");
        let e = r.read().unwrap_err().to_string();
        assert!(e.starts_with("reading /nonexistent-proc/uptime: "), "{e}");
        assert_eq!(r.sample(), None);
        assert!(r.logged);
        assert_eq!(r.sample(), None);
    }

    /// Values the files can hold but the report bounds refuse: no sample.
    #[test]
    fn out_of_bounds_gives_no_sample() {
        assert_eq!(
            fixture("too-many-cpus").read().unwrap_err().to_string(),
            "host.stats.cpus: 65537 is not within 1 to 65536"
        );
    }
}
