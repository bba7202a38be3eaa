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
    net::IpAddr,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags, nlas::Nla},
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
}

fn mapped(a: IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
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
        })
    }

    pub fn netns(&self) -> u32 {
        self.netns
    }

    /// Appends the TCP sockets of this namespace in `states` (both families) to `out`, at most
    /// `cap` in all.
    pub fn dump(
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
        self.socket.send(&req, 0)?;
        loop {
            let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
            let mut off = 0;
            while off < n {
                let msg = <NetlinkMessage<SockDiagMessage>>::deserialize(&self.buf[off..n])
                    .map_err(|e| DiagError::Parse(e.to_string()))?;
                let len = msg.header.length as usize;
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(e) => {
                        return Err(DiagError::Kernel(e.code.map_or(0, |c| c.get())));
                    }
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r))
                        if out.len() < cap =>
                    {
                        out.push(entry_of(self.netns, &r));
                    }
                    _ => {}
                }
                if len == 0 {
                    break;
                }
                off += len;
            }
        }
    }
}

/// A `sock_diag` answer as a [`DiagEntry`] of namespace `netns`; a missing or short `tcp_info`
/// reads as zero counters.
fn entry_of(netns: u32, r: &InetResponse) -> DiagEntry {
    let id = &r.header.socket_id;
    let lo = u32::from_ne_bytes(id.cookie[0..4].try_into().unwrap_or([0; 4]));
    let hi = u32::from_ne_bytes(id.cookie[4..8].try_into().unwrap_or([0; 4]));
    let (mut acked, mut received, mut idle_ms) = (0, 0, 0);
    for nla in &r.nlas {
        if let Nla::TcpInfo(info) = nla
            && let (Some(a), Some(b)) = (
                info.get(TCPI_BYTES_ACKED..TCPI_BYTES_ACKED + 8),
                info.get(TCPI_BYTES_RECEIVED..TCPI_BYTES_RECEIVED + 8),
            )
        {
            acked = u64::from_ne_bytes(a.try_into().unwrap_or([0; 8]));
            received = u64::from_ne_bytes(b.try_into().unwrap_or([0; 8]));
            let ms = |at: usize| {
                info.get(at..at + 4)
                    .and_then(|v| v.try_into().ok())
                    .map_or(0, u32::from_ne_bytes)
            };
            idle_ms = ms(TCPI_LAST_DATA_SENT).min(ms(TCPI_LAST_DATA_RECV));
        }
    }
    DiagEntry {
        netns,
        cookie: u64::from(lo) | (u64::from(hi) << 32),
        family: u16::from(r.header.family),
        state: r.header.state,
        saddr: mapped(id.source_address),
        sport: id.source_port,
        daddr: mapped(id.destination_address),
        dport: id.destination_port,
        bytes_acked: acked,
        bytes_received: received,
        idle_ms,
        inode: r.header.inode,
    }
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

    /// Gives the live entries of the probe's table (`conns`) their counters from `entries` (a
    /// dump taken just before the table was read), and appends one record per connection older
    /// than the probe. A connection closing between the dump and the table read keeps its
    /// counters from the kernel's final read. `now_ns` is CLOCK_MONOTONIC (the probe's clock):
    /// a connection that moved bytes gets the time data last moved as `last_ns`.
    pub fn merge(&self, conns: &mut Vec<Conn>, entries: &[DiagEntry], now_ns: u64) {
        let last = |e: &DiagEntry, opened: u64| {
            now_ns
                .saturating_sub(u64::from(e.idle_ms).saturating_mul(1_000_000))
                .max(opened)
        };
        let by_key: HashMap<Key, &DiagEntry> =
            entries.iter().map(|e| (key_of_entry(e), e)).collect();
        let mut used: HashSet<u64> = HashSet::new();
        conns.retain_mut(|c| {
            if c.flags & flags::PREEXISTING != 0 {
                // Created at a state change of an older connection: the diag entry below stands
                // for it while it lives, its final record once it is destroyed.
                if c.flags & flags::DESTROYED != 0 {
                    self.finish(c);
                    return true;
                }
                return false;
            }
            if c.flags & flags::COUNTERS_FINAL != 0 {
                return true;
            }
            if let Some(e) = by_key.get(&key_of_conn(c)) {
                used.insert(e.cookie);
                let syn = u64::from(c.role == role::CLIENT && e.state != tcp_state::SYN_SENT);
                c.bytes_sent = live_sent(e).saturating_sub(syn);
                c.bytes_received = live_received(e);
                if c.bytes_sent != 0 || c.bytes_received != 0 {
                    c.last_ns = last(e, c.opened_ns);
                }
            }
            true
        });
        for e in entries {
            if used.contains(&e.cookie) {
                continue;
            }
            let Some(b) = self.baselines.get(&e.cookie) else {
                continue;
            };
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
    use super::*;

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
        counting.merge(&mut conns, &[born_e, now_old], 1_000_000_000);
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
        let counting = Counting::default();
        let mut pre = Conn::ZERO;
        pre.flags = flags::PREEXISTING | flags::ESTABLISHED;
        let mut conns = vec![pre];
        // A socket neither born under the probe nor seen at load: nothing to say about it.
        counting.merge(&mut conns, &[entry(tcp_state::ESTABLISHED, 10, 10)], 5);
        assert!(conns.is_empty());
    }
}
