//! Which byte-counting hooks to use: the decision, kept free of I/O so it is unit-tested.

use std::{fmt, str::FromStr};

/// A way of counting the bytes of `tcp_sendmsg` / `tcp_recvmsg`, cheapest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Backend {
    /// fexit programs on BPF trampolines (needs BTF and trampoline support, Linux >= 5.5).
    Fexit,
    /// kprobe + kretprobe (needs CONFIG_KPROBES).
    Kprobe,
    /// `sock:sock_send_length` / `sock:sock_recv_length` tracepoints (Linux >= 6.3).
    Tracepoint,
    /// Nothing on the send/receive path: the lifecycle tracepoints read the kernel's own
    /// counters (`tcp_sock.bytes_acked`/`bytes_received`) at close, netlink `sock_diag` reads
    /// them for live connections at every drain. Counts what TCP delivered, not what the
    /// application wrote and read (docs/agent.md).
    Counters,
}

impl Backend {
    /// The order `--attach auto` tries them in.
    ///
    /// The per-call backends first: they see connections of every network namespace live,
    /// including those created after the agent started (new containers), and count what
    /// applications wrote and read. `counters` costs nothing per call (BENCHMARKS.md, "Counters
    /// backend") but reads live connections only in namespaces it entered at start and counts
    /// acknowledged and arrived bytes, so users choose it for hosts without container churn;
    /// where none of the others loads it is what a kernel with only the lifecycle tracepoints
    /// (Linux 4.16 to 6.2 without kprobes) can count with.
    pub const AUTO_ORDER: [Backend; 4] = [
        Backend::Fexit,
        Backend::Kprobe,
        Backend::Tracepoint,
        Backend::Counters,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Backend::Fexit => "fexit",
            Backend::Kprobe => "kprobe",
            Backend::Tracepoint => "tracepoint",
            Backend::Counters => "counters",
        }
    }

    /// What the kernel must offer, for messages.
    pub const fn requirement(self) -> &'static str {
        match self {
            Backend::Fexit => {
                "BPF trampolines (fentry/fexit, Linux >= 5.5 with BTF, not blocked by lockdown)"
            }
            Backend::Kprobe => "kprobes (CONFIG_KPROBES) on tcp_sendmsg and tcp_recvmsg",
            Backend::Tracepoint => {
                "the sock:sock_send_length and sock:sock_recv_length tracepoints (Linux >= 6.3)"
            }
            Backend::Counters => {
                "struct tcp_sock's bytes_acked and bytes_received in kernel BTF (Linux >= 4.16) and netlink sock_diag"
            }
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `--attach auto|fexit|kprobe|tracepoint|counters`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AttachMode {
    #[default]
    Auto,
    Force(Backend),
}

impl FromStr for AttachMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(AttachMode::Auto),
            "fexit" => Ok(AttachMode::Force(Backend::Fexit)),
            "kprobe" => Ok(AttachMode::Force(Backend::Kprobe)),
            "tracepoint" => Ok(AttachMode::Force(Backend::Tracepoint)),
            "counters" => Ok(AttachMode::Force(Backend::Counters)),
            other => Err(format!(
                "unknown attach mode `{other}`: expected one of auto, fexit, kprobe, tracepoint, counters"
            )),
        }
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttachMode::Auto => f.write_str("auto"),
            AttachMode::Force(b) => b.fmt(f),
        }
    }
}

impl AttachMode {
    pub fn candidates(self) -> Vec<Backend> {
        match self {
            AttachMode::Auto => Backend::AUTO_ORDER.to_vec(),
            AttachMode::Force(b) => vec![b],
        }
    }
}

/// One backend tried, and why it failed if it did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    pub backend: Backend,
    pub failure: Option<String>,
}

/// The outcome of backend selection: the chosen backend and every attempt, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    pub mode: AttachMode,
    pub chosen: Backend,
    pub attempts: Vec<Attempt>,
}

impl Selection {
    /// Why earlier backends were passed over, as `backend: reason` items.
    pub fn skipped(&self) -> impl Iterator<Item = (Backend, &str)> {
        self.attempts
            .iter()
            .filter_map(|a| a.failure.as_deref().map(|f| (a.backend, f)))
    }
}

/// No candidate could be attached.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    #[error(
        "the {backend} backend cannot run on this kernel: {reason}. It needs {}; use --attach auto to pick one that works",
        backend.requirement()
    )]
    ForcedUnavailable { backend: Backend, reason: String },
    #[error("no byte-counting backend works on this kernel: {}", summary(.attempts))]
    NoneAvailable { attempts: Vec<Attempt> },
}

fn summary(attempts: &[Attempt]) -> String {
    attempts
        .iter()
        .map(|a| format!("{}: {}", a.backend, a.failure.as_deref().unwrap_or("ok")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Tries each candidate of `mode` in order with `try_attach` and keeps the first that works.
/// `try_attach` must leave nothing attached when it fails.
pub fn select(
    mode: AttachMode,
    mut try_attach: impl FnMut(Backend) -> Result<(), String>,
) -> Result<Selection, SelectError> {
    let mut attempts = Vec::new();
    for backend in mode.candidates() {
        match try_attach(backend) {
            Ok(()) => {
                attempts.push(Attempt {
                    backend,
                    failure: None,
                });
                return Ok(Selection {
                    mode,
                    chosen: backend,
                    attempts,
                });
            }
            Err(reason) => {
                if let AttachMode::Force(_) = mode {
                    return Err(SelectError::ForcedUnavailable { backend, reason });
                }
                attempts.push(Attempt {
                    backend,
                    failure: Some(reason),
                });
            }
        }
    }
    Err(SelectError::NoneAvailable { attempts })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_modes() {
        assert_eq!("auto".parse(), Ok(AttachMode::Auto));
        assert_eq!("kprobe".parse(), Ok(AttachMode::Force(Backend::Kprobe)));
        assert_eq!(
            "xdp".parse::<AttachMode>().unwrap_err(),
            "unknown attach mode `xdp`: expected one of auto, fexit, kprobe, tracepoint, counters"
        );
        assert_eq!("counters".parse(), Ok(AttachMode::Force(Backend::Counters)));
    }

    #[test]
    fn auto_falls_back_in_order_and_keeps_reasons() {
        let mut tried = Vec::new();
        let sel = select(AttachMode::Auto, |b| {
            tried.push(b);
            match b {
                Backend::Fexit => Err("EPERM".into()),
                Backend::Kprobe => Err("no kprobe PMU".into()),
                Backend::Tracepoint => Ok(()),
                Backend::Counters => unreachable!("tracepoint comes first and works"),
            }
        })
        .unwrap();
        assert_eq!(tried, Backend::AUTO_ORDER[..3]);
        assert_eq!(sel.chosen, Backend::Tracepoint);
        assert_eq!(
            sel.skipped().collect::<Vec<_>>(),
            vec![
                (Backend::Fexit, "EPERM"),
                (Backend::Kprobe, "no kprobe PMU")
            ]
        );
    }

    #[test]
    fn auto_stops_at_first_success() {
        let mut tried = Vec::new();
        let sel = select(AttachMode::Auto, |b| {
            tried.push(b);
            Ok(())
        })
        .unwrap();
        assert_eq!(sel.chosen, Backend::Fexit);
        assert_eq!(tried, vec![Backend::Fexit]);
        assert_eq!(sel.skipped().count(), 0);
    }

    #[test]
    fn forced_backend_does_not_fall_back() {
        let mut tried = Vec::new();
        let err = select(AttachMode::Force(Backend::Fexit), |b| {
            tried.push(b);
            Err("BPF_PROG_LOAD: Operation not permitted".into())
        })
        .unwrap_err();
        assert_eq!(tried, vec![Backend::Fexit]);
        assert_eq!(
            err.to_string(),
            "the fexit backend cannot run on this kernel: BPF_PROG_LOAD: Operation not permitted. \
             It needs BPF trampolines (fentry/fexit, Linux >= 5.5 with BTF, not blocked by lockdown); \
             use --attach auto to pick one that works"
        );
    }

    #[test]
    fn nothing_works() {
        let err = select(AttachMode::Auto, |_| Err("no".into())).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no byte-counting backend works on this kernel: fexit: no; kprobe: no; tracepoint: no; counters: no"
        );
    }
}
