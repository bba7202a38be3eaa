//! The counters backend's live read: every TCP connection's own counters (`tcp_info`'s
//! `tcpi_bytes_acked` and `tcpi_bytes_received`) through netlink `sock_diag`, one socket per
//! network namespace counted, merged into the probe's connection records.
//!
//! Nothing runs on the send/receive path: the probe's lifecycle programs give each
//! connection's birth (role, addresses, process) and, at close, its final counters; this module
//! gives the counters of the connections still open at each drain. A `sock_diag` socket reads
//! the namespace it was created in, so one is opened per namespace while the agent may still
//! enter them (see [`open_sockets`]); it keeps working after capabilities are dropped.
//!
//! Pure parts (the payload formulas, [`Counting::merge`], [`Counting::finish`]) are unit-tested;
//! the socket parts are exercised by the privileged probe tests.

use std::{
    collections::{HashMap, HashSet},
    hash::BuildHasher as _,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};
use tracing::{debug, warn};
use trafficmap_common::{Conn, flags, role, tcp_state};

/// `struct tcp_info` (include/uapi/linux/tcp.h, append-only): `tcpi_bytes_acked` and
/// `tcpi_bytes_received` (both since Linux 4.1).
const TCPI_BYTES_ACKED: usize = 120;
const TCPI_BYTES_RECEIVED: usize = 128;
/// `tcpi_last_data_sent` and `tcpi_last_data_recv`: milliseconds since data last moved.
const TCPI_LAST_DATA_SENT: usize = 44;
const TCPI_LAST_DATA_RECV: usize = 52;

/// At most this many namespaces get a socket of their own (a bound for hostile hosts).
pub const MAX_NAMESPACES: usize = 4096;

/// One TCP socket as `sock_diag` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiagEntry {
    pub netns: u32,
    pub cookie: u64,
    pub family: u16,
    pub state: u8,
    /// IPv4 as IPv4-mapped IPv6, as in [`Conn`].
    pub saddr: [u8; 16],
    pub sport: u16,
    pub daddr: [u8; 16],
    pub dport: u16,
    pub bytes_acked: u64,
    pub bytes_received: u64,
    /// Milliseconds since data last moved either way.
    pub idle_ms: u32,
    pub inode: u32,
}

/// Why a dump failed.
#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    #[error("sock_diag socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("sock_diag answered with error {0}")]
    Kernel(i32),
    #[error("sock_diag answer does not parse: {0}")]
    Parse(String),
}

/// Payload the peer acknowledged, from a live socket's `bytes_acked` and state: an
/// acknowledged FIN counts one (`FIN_WAIT2`: our FIN was acknowledged and none arrived yet; in
/// `FIN_WAIT1`, `CLOSING`, `LAST_ACK` it is not acknowledged yet; `TIME_WAIT` sockets carry no
/// `tcp_info`). The SYN of an active open also counts one; that is the caller's (it knows the
/// role).
pub fn live_sent(e: &DiagEntry) -> u64 {
    e.bytes_acked
        .saturating_sub(u64::from(e.state == tcp_state::FIN_WAIT2))
}

/// Payload that arrived, from a live socket's `bytes_received` and state: a received FIN counts
/// one, and the peer's FIN has arrived exactly in `CLOSE_WAIT`, `LAST_ACK` and `CLOSING`.
pub fn live_received(e: &DiagEntry) -> u64 {
    let fin = matches!(
        e.state,
        tcp_state::CLOSE_WAIT | tcp_state::LAST_ACK | tcp_state::CLOSING
    );
    e.bytes_received.saturating_sub(u64::from(fin))
}

/// A netlink `sock_diag` socket of one network namespace.
pub struct DiagSocket {
    socket: Socket,
    netns: u32,
    buf: Vec<u8>,
    /// Whether the kernel takes the one-walk request (see [`DiagSocket::dump`]); cleared the
    /// first time it refuses it.
    one_walk: bool,
}

impl DiagSocket {
    /// A socket of the calling thread's current network namespace, whose inode is `netns`.
    pub fn open(netns: u32) -> std::io::Result<DiagSocket> {
        let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(DiagSocket {
            socket,
            netns,
            // Dumps come in datagrams of up to 32 KiB (the kernel's default for sock_diag).
            buf: vec![0; 64 << 10],
            one_walk: true,
        })
    }

    pub fn netns(&self) -> u32 {
        self.netns
    }

    /// Appends the TCP sockets of this namespace in `states` (both families) to `out`, at most
    /// `cap` in all.
    ///
    /// One request for both families where the kernel takes it: a `SOCK_DIAG_BY_FAMILY` dump
    /// names one family, and each walks every TCP socket of the host (the hash table is shared
    /// by all families and namespaces) to pick its own. The older `TCPDIAG_GETSOCK` request
    /// (still served by every kernel we test, it is what `ss` falls back to) dumps both
    /// families in one walk. Measured with 100,000 IPv4 sockets: the IPv6 walk that found
    /// nothing was a seventh of the dump. Should a kernel refuse it, two requests it is.
    pub fn dump(
        &mut self,
        states: StateFlags,
        out: &mut Vec<DiagEntry>,
        cap: usize,
    ) -> Result<(), DiagError> {
        if self.one_walk {
            let start = out.len();
            match self.request(&one_walk_request(&states), out, cap) {
                Err(DiagError::Kernel(code)) => {
                    debug!(
                        code,
                        "sock_diag refused the one-walk request: one request per family"
                    );
                    out.truncate(start);
                    self.one_walk = false;
                }
                done => return done,
            }
        }
        self.dump_per_family(states, out, cap)
    }

    /// [`DiagSocket::dump`] with one `SOCK_DIAG_BY_FAMILY` request per family.
    fn dump_per_family(
        &mut self,
        states: StateFlags,
        out: &mut Vec<DiagEntry>,
        cap: usize,
    ) -> Result<(), DiagError> {
        for family in [AF_INET, AF_INET6] {
            self.dump_family(
                family,
                StateFlags::from_bits_retain(states.bits()),
                out,
                cap,
            )?;
        }
        Ok(())
    }

    fn dump_family(
        &mut self,
        family: u8,
        states: StateFlags,
        out: &mut Vec<DiagEntry>,
        cap: usize,
    ) -> Result<(), DiagError> {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let mut packet = NetlinkMessage::new(
            header,
            SockDiagMessage::InetRequest(InetRequest {
                family,
                protocol: IPPROTO_TCP,
                extensions: ExtensionFlags::INFO,
                states,
                socket_id: if family == AF_INET {
                    SocketId::new_v4()
                } else {
                    SocketId::new_v6()
                },
            })
            .into(),
        );
        packet.finalize();
        let mut req = vec![0; packet.buffer_len()];
        packet.serialize(&mut req);
        self.request(&req, out, cap)
    }

    /// Sends a dump request and reads its answer into `out`.
    fn request(
        &mut self,
        req: &[u8],
        out: &mut Vec<DiagEntry>,
        cap: usize,
    ) -> Result<(), DiagError> {
        self.socket.send(req, 0)?;
        loop {
            let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
            let datagram = self.buf.get(..n).unwrap_or_default();
            if datagram.is_empty() {
                return Err(DiagError::Parse("empty datagram".into()));
            }
            if parse_datagram(datagram, self.netns, out, cap)? {
                return Ok(());
            }
        }
    }
}

// The answer is read in place rather than through netlink-packet-sock-diag's deserialiser:
// measured with 100,000 live sockets, the crate's owned attribute vectors (every attribute
// copied, error contexts formatted eagerly) cost about a tenth of the whole dump, on top of
// the kernel's own cost, for the three fields used here. The crate still builds the request.
// Layouts: include/uapi/linux/netlink.h, inet_diag.h (both stable ABI), native byte order
// except the ports.

/// The one-walk dump request: `TCPDIAG_GETSOCK` with a `struct inet_diag_req`
/// (include/uapi/linux/inet_diag.h), which the kernel serves for both families at once
/// (inet_diag_dump_compat sets `AF_UNSPEC`). Built by hand: netlink-packet-sock-diag has only
/// the per-family request.
fn one_walk_request(states: &StateFlags) -> Vec<u8> {
    const REQ_LEN: usize = 60; // family, src_len, dst_len, ext, sockid (48), states, dbs
    let mut m = Vec::with_capacity(NLMSG_HDRLEN + REQ_LEN);
    m.extend_from_slice(&((NLMSG_HDRLEN + REQ_LEN) as u32).to_ne_bytes());
    m.extend_from_slice(&TCPDIAG_GETSOCK.to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    m.extend_from_slice(&[0; 8]); // sequence, port
    m.extend_from_slice(&[AF_INET, 0, 0, ExtensionFlags::INFO.bits()]);
    m.extend_from_slice(&[0; 48]); // any socket
    m.extend_from_slice(&states.bits().to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m
}

/// `struct nlmsghdr`: length, type, flags, sequence, port.
const NLMSG_HDRLEN: usize = 16;
/// The type of the one-walk request and of its answers.
const TCPDIAG_GETSOCK: u16 = 18;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// `SOCK_DIAG_BY_FAMILY`: the type of every `inet_diag_msg` answer.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `struct inet_diag_msg`.
const INET_DIAG_MSG_LEN: usize = 72;
/// `INET_DIAG_INFO`: the attribute carrying `struct tcp_info`.
const INET_DIAG_INFO: u16 = 2;
/// `nla_type` without `NLA_F_NESTED` and `NLA_F_NET_BYTEORDER`.
const NLA_TYPE_MASK: u16 = 0x3fff;

fn align4(n: usize) -> usize {
    n.saturating_add(3) & !3
}

fn array_at<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..at.checked_add(N)?)?.try_into().ok()
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    array_at(b, at).map(u16::from_ne_bytes)
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    array_at(b, at).map(u32::from_ne_bytes)
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    array_at(b, at).map(u64::from_ne_bytes)
}

/// Reads one datagram of a `sock_diag` dump into `out` (at most `cap` entries in all).
/// Returns whether it ended the dump. Every read is bounds-checked: a short or malformed
/// message is an error, never a panic or a read past the datagram.
fn parse_datagram(
    mut buf: &[u8],
    netns: u32,
    out: &mut Vec<DiagEntry>,
    cap: usize,
) -> Result<bool, DiagError> {
    while !buf.is_empty() {
        let (Some(len), Some(kind)) = (u32_at(buf, 0), u16_at(buf, 4)) else {
            return Err(DiagError::Parse(format!(
                "{} bytes left, short of a netlink header",
                buf.len()
            )));
        };
        let len = len as usize;
        let Some(payload) = buf.get(NLMSG_HDRLEN..len).filter(|_| len >= NLMSG_HDRLEN) else {
            return Err(DiagError::Parse(format!(
                "netlink message of length {len} in {} bytes",
                buf.len()
            )));
        };
        match kind {
            NLMSG_DONE => {
                // The dump's own status: negative when it ended early.
                return match u32_at(payload, 0).map(|c| c as i32) {
                    Some(code) if code < 0 => Err(DiagError::Kernel(code)),
                    _ => Ok(true),
                };
            }
            NLMSG_ERROR => {
                return Err(DiagError::Kernel(
                    u32_at(payload, 0).map_or(0, |c| c as i32),
                ));
            }
            SOCK_DIAG_BY_FAMILY | TCPDIAG_GETSOCK => {
                let e = parse_inet_msg(netns, payload)?;
                if out.len() < cap {
                    out.push(e);
                }
            }
            // NLMSG_NOOP and anything else carry no socket.
            _ => {}
        }
        buf = buf.get(align4(len)..).unwrap_or_default();
    }
    Ok(false)
}

/// One `inet_diag_msg` and its attributes as a [`DiagEntry`] of namespace `netns`; a missing
/// or short `tcp_info` reads as zero counters.
fn parse_inet_msg(netns: u32, msg: &[u8]) -> Result<DiagEntry, DiagError> {
    let short = || DiagError::Parse(format!("inet_diag_msg of {} bytes", msg.len()));
    let h: [u8; INET_DIAG_MSG_LEN] = array_at(msg, 0).ok_or_else(short)?;
    let [family, state, ..] = h;
    let addr = |at: usize| -> Result<[u8; 16], DiagError> {
        let raw: [u8; 16] = array_at(&h, at).ok_or_else(short)?;
        match family {
            AF_INET => {
                let v4: [u8; 4] = array_at(&raw, 0).ok_or_else(short)?;
                Ok(std::net::Ipv4Addr::from(v4).to_ipv6_mapped().octets())
            }
            AF_INET6 => Ok(raw),
            f => Err(DiagError::Parse(format!("address family {f}"))),
        }
    };
    let be16 = |at: usize| array_at(&h, at).map_or(0, u16::from_be_bytes);
    let (mut acked, mut received, mut idle_ms) = (0, 0, 0);
    let mut attrs = msg.get(INET_DIAG_MSG_LEN..).unwrap_or_default();
    // Trailing bytes shorter than an attribute header are padding.
    while let (Some(len), Some(kind)) = (u16_at(attrs, 0), u16_at(attrs, 2)) {
        let len = usize::from(len);
        let Some(value) = attrs.get(4..len).filter(|_| len >= 4) else {
            return Err(DiagError::Parse(format!(
                "attribute of length {len} in {} bytes",
                attrs.len()
            )));
        };
        if kind & NLA_TYPE_MASK == INET_DIAG_INFO
            && let (Some(a), Some(b)) = (
                u64_at(value, TCPI_BYTES_ACKED),
                u64_at(value, TCPI_BYTES_RECEIVED),
            )
        {
            acked = a;
            received = b;
            let ms = |at| u32_at(value, at).unwrap_or(0);
            idle_ms = ms(TCPI_LAST_DATA_SENT).min(ms(TCPI_LAST_DATA_RECV));
        }
        attrs = attrs.get(align4(len)..).unwrap_or_default();
    }
    Ok(DiagEntry {
        netns,
        // idiag_cookie[2]: two native-endian u32, low word first.
        cookie: u64::from(u32_at(&h, 44).unwrap_or(0))
            | (u64::from(u32_at(&h, 48).unwrap_or(0)) << 32),
        family: u16::from(family),
        state,
        saddr: addr(8)?,
        sport: be16(4),
        daddr: addr(24)?,
        dport: be16(6),
        bytes_acked: acked,
        bytes_received: received,
        idle_ms,
        inode: u32_at(&h, 68).unwrap_or(0),
    })
}

/// Inode of the calling thread's network namespace.
fn own_netns() -> std::io::Result<u32> {
    crate::probe::netns_inode(Path::new("/proc/thread-self/ns/net"))
}

/// Opens a `sock_diag` socket inside the namespace at `path`: on a short-lived thread that
/// enters it (`setns`, which needs `CAP_SYS_ADMIN`), unless it is the caller's own.
fn open_at(path: &Path, netns: u32) -> std::io::Result<DiagSocket> {
    if own_netns().ok() == Some(netns) {
        return DiagSocket::open(netns);
    }
    let path = path.to_owned();
    std::thread::scope(|s| {
        s.spawn(move || {
            let f = std::fs::File::open(&path)?;
            // SAFETY: setns on this thread only (it ends right after), with a valid descriptor.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            DiagSocket::open(netns)
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("namespace thread panicked")))
    })
}

/// One `sock_diag` socket per network namespace counted: the namespace at `scope` (a path), or,
/// for all namespaces, the agent's own plus every namespace a process of the machine is in.
/// Namespaces that cannot be entered (no `CAP_SYS_ADMIN`) are logged and left to the close-time
/// read: their connections are counted when they close.
pub fn open_sockets(scope: Option<(&Path, u32)>) -> std::io::Result<Vec<DiagSocket>> {
    if let Some((path, netns)) = scope {
        return Ok(vec![open_at(path, netns)?]);
    }
    let own = own_netns()?;
    let mut out = vec![DiagSocket::open(own)?];
    let mut seen: HashSet<u32> = HashSet::from([own]);
    let mut denied = 0usize;
    for (pid, _) in proc_pids() {
        if seen.len() >= MAX_NAMESPACES {
            warn!(
                max = MAX_NAMESPACES,
                "more network namespaces than the counters backend reads live"
            );
            break;
        }
        let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
        let Ok(ino) = crate::probe::netns_inode(&path) else {
            continue;
        };
        if !seen.insert(ino) {
            continue;
        }
        match open_at(&path, ino) {
            Ok(s) => out.push(s),
            Err(e) => {
                denied += 1;
                debug!(netns = ino, error = %e, "cannot read this namespace's sockets live");
            }
        }
    }
    if denied > 0 {
        warn!(
            namespaces = denied,
            "counters backend: namespaces not readable live (entering them needs CAP_SYS_ADMIN); \
             their connections are counted when they close"
        );
    }
    Ok(out)
}

/// Numeric entries of /proc with their path.
fn proc_pids() -> impl Iterator<Item = (u32, PathBuf)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            Some((pid, e.path()))
        })
}

/// The process that holds a socket open, as the probe would have recorded it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcOwner {
    pub pid: u32,
    /// The thread-group leader's `comm`, NUL-padded.
    pub comm: [u8; 16],
    /// cgroup v2 id (what `bpf_get_current_cgroup_id` returns for it); 0 when unknown.
    pub cgroup_id: u64,
}

/// Owners of the given socket inodes: thread-group id, the process name (the leader's
/// `comm`) and cgroup id, from `/proc/<pid>/fd` (readable for other users' processes only with
/// ptrace rights, i.e. as root at start). At most one pass over /proc.
pub fn socket_owners(inodes: &HashSet<u32>) -> HashMap<u32, ProcOwner> {
    let mut out = HashMap::new();
    if inodes.is_empty() {
        return out;
    }
    for (pid, dir) in proc_pids() {
        let Ok(fds) = std::fs::read_dir(dir.join("fd")) else {
            continue;
        };
        let mut owner: Option<ProcOwner> = None;
        for fd in fds.filter_map(Result::ok) {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let Some(ino) = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u32>().ok())
            else {
                continue;
            };
            if inodes.contains(&ino) && !out.contains_key(&ino) {
                let o = *owner.get_or_insert_with(|| {
                    let mut raw = [0u8; 16];
                    if let Ok(text) = std::fs::read(dir.join("comm")) {
                        let text = text.strip_suffix(b"\n").unwrap_or(&text);
                        let n = text.len().min(15);
                        raw[..n].copy_from_slice(&text[..n]);
                    }
                    ProcOwner {
                        pid,
                        comm: raw,
                        cgroup_id: crate::containers::cgroup_id_of_pid(pid).unwrap_or(0),
                    }
                });
                out.insert(ino, o);
            }
        }
        if out.len() == inodes.len() {
            break;
        }
    }
    out
}

/// What a connection older than the probe held when the agent first saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Base {
    pub sent: u64,
    pub received: u64,
    pub pid: u32,
    pub comm: [u8; 16],
    pub cgroup_id: u64,
}

/// States whose sockets are connections with counters worth reading (not listeners, not
/// half-open: those have no payload yet, and their entry may not have its final addresses).
pub fn conversation_states() -> StateFlags {
    StateFlags::ESTABLISHED
        | StateFlags::FIN_WAIT1
        | StateFlags::FIN_WAIT2
        | StateFlags::CLOSE_WAIT
        | StateFlags::LAST_ACK
        | StateFlags::CLOSING
}

type Key = (u32, [u8; 16], u16, [u8; 16], u16);

fn key_of_conn(c: &Conn) -> Key {
    (c.netns, c.saddr, c.sport, c.daddr, c.dport)
}

fn key_of_entry(e: &DiagEntry) -> Key {
    (e.netns, e.saddr, e.sport, e.daddr, e.dport)
}

/// The counters backend's userspace state: baselines of connections older than the probe, by
/// cookie. Only connections seen at load get one (the map only shrinks afterwards), so it is
/// bounded by what was open then, capped at the connection table's size.
#[derive(Debug, Default)]
pub struct Counting {
    baselines: HashMap<u64, Base>,
    /// The last dump by address tuple: positions in it, hashed by the entry's tuple, and which
    /// of its entries a probe record took. Kept between drains so a drain of 100k connections
    /// allocates nothing. Positions only (not tuple-keyed map entries): the merge is bound by
    /// cache misses, and a table of positions stays in cache where one of 40-byte keys did
    /// not (measured: three misses per record, now one, the entry itself). foldhash rather
    /// than std's SipHash (a tenth of the drain's CPU in the profile); it is seeded per
    /// process, so ports and addresses chosen by peers cannot be aimed at collisions.
    index: hashbrown::HashTable<usize>,
    hasher: foldhash::fast::RandomState,
    used: Vec<bool>,
}

impl Counting {
    /// Remembers the connections open now (`entries`, from a dump right after the lifecycle
    /// programs were attached) as older than the probe: their counters count from here.
    pub fn set_baselines(
        &mut self,
        entries: &[DiagEntry],
        owners: &HashMap<u32, ProcOwner>,
        cap: usize,
    ) {
        for e in entries {
            if self.baselines.len() >= cap {
                break;
            }
            let state = StateFlags::from_bits_retain(1u32.checked_shl(e.state.into()).unwrap_or(0));
            if e.cookie == 0 || state.is_empty() || !conversation_states().contains(state) {
                continue;
            }
            let owner = owners.get(&e.inode).copied().unwrap_or_default();
            self.baselines.insert(
                e.cookie,
                Base {
                    sent: live_sent(e),
                    received: live_received(e),
                    pid: owner.pid,
                    comm: owner.comm,
                    cgroup_id: owner.cgroup_id,
                },
            );
        }
    }

    pub fn baselines(&self) -> usize {
        self.baselines.len()
    }

    /// Gives the live entries of the probe's table (`conns[start..]`) their counters from
    /// `entries` (a dump taken just before the table was read), and appends one record per
    /// connection older than the probe. A connection closing between the dump and the table
    /// read keeps its counters from the kernel's final read. `now_ns` is CLOCK_MONOTONIC (the
    /// probe's clock): a connection that moved bytes gets the time data last moved as
    /// `last_ns`.
    pub fn merge(
        &mut self,
        conns: &mut Vec<Conn>,
        start: usize,
        entries: &[DiagEntry],
        now_ns: u64,
    ) {
        let last = |e: &DiagEntry, opened: u64| {
            now_ns
                .saturating_sub(u64::from(e.idle_ms).saturating_mul(1_000_000))
                .max(opened)
        };
        let hasher = &self.hasher;
        let hash_at = |&i: &usize| {
            entries
                .get(i)
                .map_or(0, |e| hasher.hash_one(key_of_entry(e)))
        };
        // The last entry of a tuple wins, as it would in a map collected from the dump.
        self.index.clear();
        self.index.reserve(entries.len(), hash_at);
        for (i, e) in entries.iter().enumerate() {
            let key = key_of_entry(e);
            let same = |&j: &usize| entries.get(j).is_some_and(|o| key_of_entry(o) == key);
            match self.index.find_mut(hasher.hash_one(key), same) {
                Some(j) => *j = i,
                None => {
                    self.index.insert_unique(hasher.hash_one(key), i, hash_at);
                }
            }
        }
        let index = &self.index;
        let find = |key: Key| {
            index.find(hasher.hash_one(key), |&j: &usize| {
                entries.get(j).is_some_and(|o| key_of_entry(o) == key)
            })
        };
        self.used.clear();
        self.used.resize(entries.len(), false);
        // In-place retain over conns[start..] (records are Copy; nothing before start moves).
        let mut keep = start;
        for i in start..conns.len() {
            let Some(&c) = conns.get(i) else { break };
            let mut c = c;
            if c.flags & flags::PREEXISTING != 0 {
                // Created at a state change of an older connection: the diag entry below stands
                // for it while it lives, its final record once it is destroyed.
                if c.flags & flags::DESTROYED == 0 {
                    continue;
                }
                self.finish(&mut c);
            } else if c.flags & flags::COUNTERS_FINAL == 0
                && let Some(&at) = find(key_of_conn(&c))
                && let Some(e) = entries.get(at)
            {
                if let Some(u) = self.used.get_mut(at) {
                    *u = true;
                }
                let syn = u64::from(c.role == role::CLIENT && e.state != tcp_state::SYN_SENT);
                c.bytes_sent = live_sent(e).saturating_sub(syn);
                c.bytes_received = live_received(e);
                if c.bytes_sent != 0 || c.bytes_received != 0 {
                    c.last_ns = last(e, c.opened_ns);
                }
            }
            if let Some(slot) = conns.get_mut(keep) {
                *slot = c;
            }
            keep += 1;
        }
        conns.truncate(keep);
        for (i, e) in entries.iter().enumerate() {
            let Some(b) = self.baselines.get(&e.cookie) else {
                continue;
            };
            // Taken by a probe record, itself or a second copy of the same socket in the dump
            // (same tuple, same cookie: the index points at the last copy).
            let taken = |j: usize| self.used.get(j).copied().unwrap_or(false);
            if taken(i)
                || find(key_of_entry(e)).is_some_and(|&j| {
                    taken(j) && entries.get(j).is_some_and(|o| o.cookie == e.cookie)
                })
            {
                continue;
            }
            let mut c = Conn::ZERO;
            c.sk = e.cookie;
            c.born_ns = 0;
            c.cookie = e.cookie;
            c.netns = e.netns;
            c.family = e.family;
            c.saddr = e.saddr;
            c.daddr = e.daddr;
            c.sport = e.sport;
            c.dport = e.dport;
            c.state = e.state;
            c.flags = flags::PREEXISTING | flags::ADDR_FROM_SOCK;
            c.pid = b.pid;
            c.comm = b.comm;
            c.cgroup_id = b.cgroup_id;
            c.bytes_sent = live_sent(e).saturating_sub(b.sent);
            c.bytes_received = live_received(e).saturating_sub(b.received);
            if c.bytes_sent != 0 || c.bytes_received != 0 {
                c.last_ns = last(e, 0);
            }
            conns.push(c);
        }
    }

    /// A final record from the probe. One of a connection older than the probe becomes the
    /// same connection as its live records (identity by cookie) and counts from its baseline;
    /// without one (not seen at load: a namespace not readable then) it counts nothing, since
    /// what it held before the agent started is unknown.
    pub fn finish(&self, c: &mut Conn) {
        if c.flags & flags::PREEXISTING == 0 {
            return;
        }
        match self.baselines.get(&c.cookie).filter(|_| c.cookie != 0) {
            Some(b) => {
                c.sk = c.cookie;
                c.born_ns = 0;
                c.bytes_sent = c.bytes_sent.saturating_sub(b.sent);
                c.bytes_received = c.bytes_received.saturating_sub(b.received);
                if c.pid == 0 {
                    c.pid = b.pid;
                    c.comm = b.comm;
                    c.cgroup_id = b.cgroup_id;
                }
            }
            None => {
                c.bytes_sent = 0;
                c.bytes_received = 0;
            }
        }
    }

    /// Forgets the baseline of a connection whose last record was handed to the tracker.
    pub fn forget(&mut self, cookie: u64) {
        self.baselines.remove(&cookie);
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    fn mapped(a: IpAddr) -> [u8; 16] {
        match a {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        }
    }

    fn entry(state: u8, acked: u64, received: u64) -> DiagEntry {
        DiagEntry {
            netns: 7,
            cookie: 42,
            family: 2,
            state,
            saddr: mapped("127.0.0.1".parse().unwrap()),
            sport: 40000,
            daddr: mapped("127.0.0.1".parse().unwrap()),
            dport: 80,
            bytes_acked: acked,
            bytes_received: received,
            idle_ms: 3,
            inode: 9,
        }
    }

    #[test]
    fn fin_and_syn_are_not_payload() {
        // Measured with `ss -ti` on Linux 6.18: a client that sent 1000 and received 77 shows
        // bytes_acked 1001 (SYN) while established, 1002 in FIN_WAIT2 (its FIN acknowledged);
        // the server shows bytes_received 1001 in CLOSE_WAIT (the FIN).
        assert_eq!(live_sent(&entry(tcp_state::ESTABLISHED, 1001, 77)), 1001);
        assert_eq!(live_sent(&entry(tcp_state::FIN_WAIT2, 1002, 77)), 1001);
        assert_eq!(live_received(&entry(tcp_state::CLOSE_WAIT, 77, 1001)), 1000);
        assert_eq!(
            live_received(&entry(tcp_state::ESTABLISHED, 77, 1000)),
            1000
        );
        assert_eq!(live_sent(&entry(tcp_state::FIN_WAIT2, 0, 0)), 0);
    }

    #[test]
    fn merge_fills_live_counts_and_carries_older_connections() {
        let mut counting = Counting::default();
        let old = entry(tcp_state::ESTABLISHED, 1001, 500);
        counting.set_baselines(
            &[old],
            &HashMap::from([(
                9,
                ProcOwner {
                    pid: 1234,
                    comm: *b"srv\0\0\0\0\0\0\0\0\0\0\0\0\0",
                    cgroup_id: 77,
                },
            )]),
            10,
        );
        assert_eq!(counting.baselines(), 1);
        // A client born under the probe, and the older connection, both live.
        let mut born = Conn::ZERO;
        born.sk = 0xffff_0000;
        born.born_ns = 5;
        born.netns = 7;
        born.role = role::CLIENT;
        born.saddr = old.saddr;
        born.daddr = old.daddr;
        born.sport = 40001;
        born.dport = 80;
        let mut born_e = entry(tcp_state::ESTABLISHED, 301, 20);
        born_e.cookie = 43;
        born_e.sport = 40001;
        let now_old = entry(tcp_state::ESTABLISHED, 1101, 550);
        let mut conns = vec![born];
        counting.merge(&mut conns, 0, &[born_e, now_old], 1_000_000_000);
        assert_eq!(conns.len(), 2);
        assert_eq!((conns[0].bytes_sent, conns[0].bytes_received), (300, 20));
        // Data last moved 3 ms before the read.
        assert_eq!(conns[0].last_ns, 997_000_000);
        let o = conns[1];
        assert_eq!(
            (o.sk, o.born_ns, o.bytes_sent, o.bytes_received),
            (42, 0, 100, 50)
        );
        assert_eq!((o.pid, &o.comm[..3], o.cgroup_id), (1234, &b"srv"[..], 77));
        assert!(o.flags & flags::PREEXISTING != 0);
        // Its final record (created by the probe at a state change) joins the same identity.
        let mut fin = Conn::ZERO;
        fin.sk = 0xffff_1000;
        fin.born_ns = 99;
        fin.cookie = 42;
        fin.flags = flags::PREEXISTING | flags::DESTROYED | flags::COUNTERS_FINAL;
        // The probe leaves the SYN in for a connection it did not see open, as the baseline has
        // it: 1001 + 200.
        fin.bytes_sent = 1201;
        fin.bytes_received = 600;
        counting.finish(&mut fin);
        assert_eq!(
            (fin.sk, fin.born_ns, fin.bytes_sent, fin.bytes_received),
            (42, 0, 200, 100)
        );
        // Without a baseline, nothing of an older connection is counted.
        let mut unknown = fin;
        unknown.cookie = 77;
        unknown.bytes_sent = 5;
        counting.finish(&mut unknown);
        assert_eq!((unknown.bytes_sent, unknown.bytes_received), (0, 0));
    }

    #[test]
    fn a_live_entry_of_an_older_connection_is_replaced_and_new_unknown_sockets_ignored() {
        let mut counting = Counting::default();
        let mut pre = Conn::ZERO;
        pre.flags = flags::PREEXISTING | flags::ESTABLISHED;
        let mut conns = vec![pre];
        // A socket neither born under the probe nor seen at load: nothing to say about it.
        counting.merge(&mut conns, 0, &[entry(tcp_state::ESTABLISHED, 10, 10)], 5);
        assert!(conns.is_empty());
    }

    /// A netlink message of `kind` around `payload`, padded to 4 bytes.
    fn nlmsg(kind: u16, payload: &[u8]) -> Vec<u8> {
        let len = (NLMSG_HDRLEN + payload.len()) as u32;
        let mut m = len.to_ne_bytes().to_vec();
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(payload);
        m.resize(align4(m.len()), 0);
        m
    }

    /// An `inet_diag_msg` as Linux writes it, with the attributes the kernel adds around
    /// `INET_DIAG_INFO` (a `tcp_info` of `info_len` bytes carrying the given counters).
    fn inet_msg(family: u8, info_len: usize, acked: u64, received: u64) -> Vec<u8> {
        let mut m = vec![family, tcp_state::FIN_WAIT2, 0, 0];
        m.extend_from_slice(&40000u16.to_be_bytes());
        m.extend_from_slice(&443u16.to_be_bytes());
        let (src, dst): ([u8; 16], [u8; 16]) = if family == AF_INET {
            let mut s = [0; 16];
            s[..4].copy_from_slice(&[10, 0, 0, 1]);
            let mut d = [0; 16];
            d[..4].copy_from_slice(&[10, 0, 0, 2]);
            (s, d)
        } else {
            (
                "2001:db8::1"
                    .parse::<std::net::Ipv6Addr>()
                    .unwrap()
                    .octets(),
                "2001:db8::2"
                    .parse::<std::net::Ipv6Addr>()
                    .unwrap()
                    .octets(),
            )
        };
        m.extend_from_slice(&src);
        m.extend_from_slice(&dst);
        m.extend_from_slice(&0u32.to_ne_bytes()); // if
        m.extend_from_slice(&0x1234_5678u32.to_ne_bytes()); // cookie, low word
        m.extend_from_slice(&0x9au32.to_ne_bytes()); // cookie, high word
        m.extend_from_slice(&[0; 16]); // expires, rqueue, wqueue, uid
        m.extend_from_slice(&4242u32.to_ne_bytes()); // inode
        assert_eq!(m.len(), INET_DIAG_MSG_LEN);
        let attr = |m: &mut Vec<u8>, kind: u16, value: &[u8]| {
            m.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
            m.extend_from_slice(&kind.to_ne_bytes());
            m.extend_from_slice(value);
            m.resize(align4(m.len()), 0);
        };
        attr(&mut m, 8, &[0]); // INET_DIAG_SHUTDOWN, one byte (padded)
        let mut info = vec![0u8; info_len];
        let mut put = |at: usize, v: &[u8]| {
            if let Some(d) = info.get_mut(at..at + v.len()) {
                d.copy_from_slice(v);
            }
        };
        put(TCPI_LAST_DATA_SENT, &5u32.to_ne_bytes());
        put(TCPI_LAST_DATA_RECV, &9u32.to_ne_bytes());
        put(TCPI_BYTES_ACKED, &acked.to_ne_bytes());
        put(TCPI_BYTES_RECEIVED, &received.to_ne_bytes());
        attr(&mut m, INET_DIAG_INFO, &info);
        attr(&mut m, 22, &0u64.to_ne_bytes()); // INET_DIAG_SOCKOPT and the like
        m
    }

    #[test]
    fn a_dump_datagram_reads_exactly() {
        let mut d = nlmsg(SOCK_DIAG_BY_FAMILY, &inet_msg(AF_INET, 248, 1_000_002, 77));
        d.extend(nlmsg(SOCK_DIAG_BY_FAMILY, &inet_msg(AF_INET6, 248, 5, 6)));
        // A tcp_info too short for the byte counters (kernels before 4.1) reads as zero.
        d.extend(nlmsg(SOCK_DIAG_BY_FAMILY, &inet_msg(AF_INET, 100, 8, 9)));
        let mut out = Vec::new();
        assert!(!parse_datagram(&d, 7, &mut out, 10).unwrap());
        assert_eq!(out.len(), 3);
        let v4 = mapped("10.0.0.1".parse().unwrap());
        assert_eq!(
            out[0],
            DiagEntry {
                netns: 7,
                cookie: 0x9a_1234_5678,
                family: u16::from(AF_INET),
                state: tcp_state::FIN_WAIT2,
                saddr: v4,
                sport: 40000,
                daddr: mapped("10.0.0.2".parse().unwrap()),
                dport: 443,
                bytes_acked: 1_000_002,
                bytes_received: 77,
                idle_ms: 5,
                inode: 4242,
            }
        );
        assert_eq!(
            (out[1].saddr, out[1].bytes_acked, out[1].bytes_received),
            (
                "2001:db8::1"
                    .parse::<std::net::Ipv6Addr>()
                    .unwrap()
                    .octets(),
                5,
                6
            )
        );
        assert_eq!(
            (out[2].bytes_acked, out[2].bytes_received, out[2].idle_ms),
            (0, 0, 0)
        );
        // The end of the dump, and the cap: entries past it are read and dropped.
        let mut end = nlmsg(SOCK_DIAG_BY_FAMILY, &inet_msg(AF_INET, 248, 1, 1));
        end.extend(nlmsg(NLMSG_DONE, &0u32.to_ne_bytes()));
        assert!(parse_datagram(&end, 7, &mut out, 3).unwrap());
        assert_eq!(out.len(), 3);
        // A dump that ended in error, and an error answer, are errors.
        for kind in [NLMSG_DONE, NLMSG_ERROR] {
            let e = parse_datagram(&nlmsg(kind, &(-4i32).to_ne_bytes()), 7, &mut out, 9);
            assert!(matches!(e, Err(DiagError::Kernel(-4))), "{kind}: {e:?}");
        }
    }

    #[test]
    fn truncated_or_garbage_datagrams_are_errors_not_panics() {
        let good = nlmsg(SOCK_DIAG_BY_FAMILY, &inet_msg(AF_INET6, 248, 5, 6));
        // Every truncation of a valid message: an error (or, cut exactly at a message's end,
        // nothing), never a panic or a read past the end.
        for n in 1..good.len() {
            let mut out = Vec::new();
            assert!(
                parse_datagram(&good[..n], 1, &mut out, 9).is_err(),
                "cut at {n}"
            );
        }
        // Lengths that lie: zero, shorter than a header, longer than the datagram.
        for len in [0u32, 4, 15, good.len() as u32 + 1, u32::MAX] {
            let mut bad = good.clone();
            bad[..4].copy_from_slice(&len.to_ne_bytes());
            assert!(
                parse_datagram(&bad, 1, &mut Vec::new(), 9).is_err(),
                "{len}"
            );
        }
        // An attribute whose length runs past its message, or is below its own header.
        for len in [0u16, 3, 4000] {
            let mut bad = good.clone();
            let at = NLMSG_HDRLEN + INET_DIAG_MSG_LEN;
            bad[at..at + 2].copy_from_slice(&len.to_ne_bytes());
            assert!(
                parse_datagram(&bad, 1, &mut Vec::new(), 9).is_err(),
                "{len}"
            );
        }
        // An address family sock_diag never answers for TCP.
        let mut bad = good.clone();
        bad[NLMSG_HDRLEN] = 1;
        assert!(parse_datagram(&bad, 1, &mut Vec::new(), 9).is_err());
        // Random bytes, and random corruptions of a valid datagram: whatever they parse to,
        // nothing panics.
        let mut rng = fastrand::Rng::with_seed(9);
        for _ in 0..20_000 {
            let mut d = if rng.bool() {
                (0..rng.usize(0..600))
                    .map(|_| rng.u8(..))
                    .collect::<Vec<u8>>()
            } else {
                let mut d = good.clone();
                for _ in 0..rng.usize(1..4) {
                    let i = rng.usize(..d.len());
                    d[i] = rng.u8(..);
                }
                d
            };
            if rng.bool() {
                d.truncate(rng.usize(..=d.len()));
            }
            let mut out = Vec::new();
            let _ = parse_datagram(&d, 1, &mut out, 4);
            assert!(out.len() <= 4);
        }
    }

    #[test]
    fn merge_takes_the_last_copy_of_a_tuple_and_leaves_earlier_records_alone() {
        let mut counting = Counting::default();
        let old = entry(tcp_state::ESTABLISHED, 1001, 500);
        counting.set_baselines(&[old], &HashMap::new(), 10);
        // A record already in the caller's Vec (before `start`) is neither matched nor moved.
        let mut before = Conn::ZERO;
        before.sk = 1;
        before.netns = old.netns;
        before.saddr = old.saddr;
        before.daddr = old.daddr;
        before.sport = old.sport;
        before.dport = old.dport;
        before.bytes_sent = 7;
        // A probe record on that tuple, and a dump holding the socket twice (same tuple, same
        // cookie): the last copy wins, and the other copy is not taken for a connection
        // older than the probe (it would count the socket twice).
        let mut born = before;
        born.sk = 2;
        born.bytes_sent = 0;
        let first = entry(tcp_state::ESTABLISHED, 50, 60);
        let last = entry(tcp_state::ESTABLISHED, 1101, 550);
        let mut conns = vec![before, born];
        counting.merge(&mut conns, 1, &[first, last], 1_000_000_000);
        assert_eq!(conns.len(), 2);
        assert_eq!((conns[0].sk, conns[0].bytes_sent), (1, 7));
        assert_eq!(
            (conns[1].sk, conns[1].bytes_sent, conns[1].bytes_received),
            (2, 1101, 550)
        );
        // A second drain reuses the index: the same answer.
        let mut again = vec![born];
        counting.merge(&mut again, 0, &[first, last], 1_000_000_000);
        assert_eq!((again.len(), again[0].bytes_sent), (1, 1101));
    }

    /// Unprivileged: sock_diag reads the caller's own namespace without capabilities.
    #[test]
    fn one_walk_and_per_family_dumps_read_the_same_sockets_exactly() {
        use std::io::{Read as _, Write as _};
        let mut conns = Vec::new();
        for (addr, sent) in [("127.0.0.1:0", 1000usize), ("[::1]:0", 3000)] {
            let l = std::net::TcpListener::bind(addr).unwrap();
            let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (mut s, _) = l.accept().unwrap();
            c.write_all(&vec![1u8; sent]).unwrap();
            s.read_exact(&mut vec![0u8; sent]).unwrap();
            s.write_all(b"ok").unwrap();
            c.read_exact(&mut [0u8; 2]).unwrap();
            conns.push((c.local_addr().unwrap().port(), sent, c, s));
        }
        let mut d = DiagSocket::open(0).unwrap();
        let ours = |out: &[DiagEntry], d_only: bool| -> Vec<(u16, u16, u64, u64)> {
            let mut v: Vec<_> = out
                .iter()
                .filter(|e| conns.iter().any(|c| c.0 == e.sport || c.0 == e.dport))
                .filter(|e| !d_only || e.family == u16::from(AF_INET6))
                .map(|e| (e.family, e.sport, e.bytes_acked, e.bytes_received))
                .collect();
            v.sort();
            v
        };
        // Poll until the kernel has acknowledged everything (loopback: at once, nearly).
        let mut one = Vec::new();
        for _ in 0..100 {
            one.clear();
            d.dump(conversation_states(), &mut one, usize::MAX).unwrap();
            if ours(&one, false)
                .iter()
                .all(|&(_, _, a, r)| a >= 2 && r >= 2)
                && ours(&one, false).len() == 4
            {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(d.one_walk, "this kernel refused the one-walk request");
        let mut two = Vec::new();
        d.dump_per_family(conversation_states(), &mut two, usize::MAX)
            .unwrap();
        assert_eq!(ours(&one, false), ours(&two, false));
        // Exact: each client sent `sent` bytes (+1: its SYN counts in bytes_acked) and
        // received 2; the server's side the other way round (its SYN-ACK does not count).
        for (port, sent, _, _) in &conns {
            let client = one.iter().find(|e| e.sport == *port).unwrap();
            assert_eq!(
                (client.bytes_acked, client.bytes_received),
                (*sent as u64 + 1, 2)
            );
            let server = one.iter().find(|e| e.dport == *port).unwrap();
            assert_eq!(
                (server.bytes_acked, server.bytes_received),
                (2, *sent as u64)
            );
        }
        assert_eq!(ours(&one, true).len(), 2);
    }
}
