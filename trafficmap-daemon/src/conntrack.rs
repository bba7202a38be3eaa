//! NAT undone (issue 11): the conntrack table of the agent's own network namespace, read over
//! netlink (ctnetlink: `NFNL_SUBSYS_CTNETLINK`, `IPCTNL_MSG_CT_GET` with `NLM_F_DUMP`, IPv4 and
//! IPv6 in one pass) once per drain, keeping only TCP entries whose status has `IPS_DST_NAT`.
//!
//! A client that connects to a virtual address (a Kubernetes Service's ClusterIP, a load
//! balancer, Docker's published port) keeps that address on its socket, while the server sees
//! the client's real address; the two ends would never merge at the collector. A DNAT entry's
//! original tuple is exactly the client socket's (local, peer) tuple, and its reply tuple's
//! source is the real server: [`NatTable::lookup`] maps one to the other, and the pairing step
//! reports the real server as the peer and keeps the virtual address as the pair's service.
//!
//! Why one dump per drain is enough: a connection is looked up while its conntrack entry lives.
//! A live connection's entry lives as long as it does; a closed TCP connection's entry stays in
//! `TIME_WAIT` for 120 s (`nf_conntrack_tcp_timeout_time_wait`), longer than a default window,
//! so the dump at the drain that follows the close still holds it (connections that closed
//! between drains are looked up at that drain, see `agent::Drainer`). An entry already gone (a
//! connection reset: `CLOSE` lasts 10 s; an interval above two minutes; a full table) leaves the
//! connection as the socket saw it, counted in `trafficmap_conntrack_untranslated_total`.
//!
//! Conntrack zones and marks are ignored: entries are keyed by their original tuple alone. Two
//! zones holding the same original tuple (overlapping address spaces behind one router) would
//! be ambiguous; the first entry read is kept.
//!
//! Reading the table needs `CAP_NET_ADMIN` (the kernel checks it for every ctnetlink request,
//! dumps included) and the `nf_conntrack` module; without them the agent says so once and
//! reports connections as their sockets saw them.
//!
//! The parsing goes through `netlink-packet-netfilter` (its `conntrack` module covers the
//! message, tuple and status attributes); the datagram walk is ours so that one entry the crate
//! cannot parse is skipped and counted instead of ending the dump.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd as _,
    time::Duration,
};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NetlinkBuffer, NetlinkHeader,
    NetlinkMessage, NetlinkPayload, ParseableParametrized as _,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
    conntrack::{
        ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Protocol, Status, Tuple,
    },
};
use netlink_sys::{Socket, SocketAddr as NlAddr, protocols::NETLINK_NETFILTER};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// Default cap on DNAT entries kept per dump: the kernel's own `nf_conntrack_max` on a large
/// node (262144), all of them DNAT'ed TCP at worst; about 100 bytes each.
pub const DEFAULT_MAX_ENTRIES: usize = 262_144;
/// Most DNAT entries a configuration may ask for.
pub const MAX_MAX_ENTRIES: usize = 4_194_304;
/// A dump that takes longer than this per datagram is abandoned (the drain must not hang).
const RECV_TIMEOUT: Duration = Duration::from_secs(5);
/// `NFNL_SUBSYS_CTNETLINK`: the high byte of a ctnetlink message type.
const SUBSYS_CTNETLINK: u16 = 1;

/// A connection's addresses as its socket holds them: (local, peer).
pub type Tuple4 = (SocketAddr, SocketAddr);

/// DNAT'ed TCP connections of one dump: original tuple -> the real destination.
#[derive(Debug, Default, Clone)]
pub struct NatTable {
    real: HashMap<Tuple4, SocketAddr>,
    /// Every translated destination seen, to tell "entry gone" from "never translated".
    virtuals: HashSet<SocketAddr>,
    max_entries: usize,
    /// Entries left out because the table was full.
    pub cut: u64,
    /// ctnetlink messages that did not parse (skipped).
    pub malformed: u64,
}

impl NatTable {
    pub fn new(max_entries: usize) -> NatTable {
        NatTable {
            max_entries,
            ..NatTable::default()
        }
    }

    pub fn len(&self) -> usize {
        self.real.len()
    }

    pub fn is_empty(&self) -> bool {
        self.real.is_empty()
    }

    /// Records a DNAT entry: `src -> dst` was sent to `real`. Returns false if the table is
    /// full (counted in `cut`). An entry that translates nothing (`real == dst`) is not kept,
    /// and the first entry of a tuple wins (zones are ignored; see the module docs).
    pub fn insert(&mut self, src: SocketAddr, dst: SocketAddr, real: SocketAddr) -> bool {
        let (src, dst, real) = (canonical(src), canonical(dst), canonical(real));
        if real == dst || self.real.contains_key(&(src, dst)) {
            return true;
        }
        if self.real.len() >= self.max_entries {
            self.cut = self.cut.saturating_add(1);
            return false;
        }
        self.real.insert((src, dst), real);
        // Bounded by the same cap: at most one virtual address per entry.
        self.virtuals.insert(dst);
        true
    }

    /// The real destination of a client connection from `local` to `peer`, if its destination
    /// was translated.
    pub fn lookup(&self, local: SocketAddr, peer: SocketAddr) -> Option<SocketAddr> {
        self.real.get(&(canonical(local), canonical(peer))).copied()
    }

    /// Whether some entry of this dump translated connections to `peer`: a client connection to
    /// it without an entry of its own had its entry expire (or cut) before the dump.
    pub fn is_virtual(&self, peer: SocketAddr) -> bool {
        self.virtuals.contains(&canonical(peer))
    }
}

/// IPv4-mapped IPv6 as plain IPv4, as sockets and reports name them.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// The addresses of one conntrack tuple.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Addrs {
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    sport: Option<u16>,
    dport: Option<u16>,
    proto: Option<u8>,
}

impl Addrs {
    fn of(tuples: &[Tuple]) -> Addrs {
        let mut a = Addrs::default();
        for t in tuples {
            match t {
                Tuple::Ip(ips) => {
                    for ip in ips {
                        match ip {
                            IPTuple::SourceAddress(x) => a.src = Some(*x),
                            IPTuple::DestinationAddress(x) => a.dst = Some(*x),
                            _ => {}
                        }
                    }
                }
                Tuple::Proto(ps) => {
                    for p in ps {
                        match p {
                            ProtoTuple::Protocol(x) => a.proto = Some(u8::from(*x)),
                            ProtoTuple::SourcePort(x) => a.sport = Some(*x),
                            ProtoTuple::DestinationPort(x) => a.dport = Some(*x),
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        a
    }

    fn src(&self) -> Option<SocketAddr> {
        Some(SocketAddr::new(self.src?, self.sport?))
    }

    fn dst(&self) -> Option<SocketAddr> {
        Some(SocketAddr::new(self.dst?, self.dport?))
    }
}

/// The DNAT'ed TCP entry of one conntrack message: (original source, original destination,
/// reply source = the real destination); `None` for every other entry.
pub fn dnat_entry(attrs: &[ConntrackAttribute]) -> Option<(SocketAddr, SocketAddr, SocketAddr)> {
    let (mut orig, mut reply, mut status) = (None, None, Status::empty());
    for a in attrs {
        match a {
            ConntrackAttribute::CtaTupleOrig(t) => orig = Some(Addrs::of(t)),
            ConntrackAttribute::CtaTupleReply(t) => reply = Some(Addrs::of(t)),
            ConntrackAttribute::CtaStatus(s) => status = *s,
            _ => {}
        }
    }
    if !status.contains(Status::DstNat) {
        return None;
    }
    let (orig, reply) = (orig?, reply?);
    let tcp = u8::from(Protocol::Tcp);
    if orig.proto != Some(tcp) || reply.proto != Some(tcp) {
        return None;
    }
    Some((orig.src()?, orig.dst()?, reply.src()?))
}

/// What one datagram of a dump said.
#[derive(Debug, PartialEq, Eq)]
pub enum Datagram {
    /// More datagrams follow.
    More,
    /// `NLMSG_DONE`: the dump of this family is complete.
    Done,
}

/// Why a dump failed.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    #[error("netlink socket: {0}")]
    Io(#[from] std::io::Error),
    /// The kernel refused the request: `EPERM` without `CAP_NET_ADMIN`, `EOPNOTSUPP` or
    /// `ENOENT` without `nf_conntrack`/`nf_conntrack_netlink`, ...
    #[error("the kernel refused the conntrack dump: {0}")]
    Kernel(std::io::Error),
    #[error("conntrack answer does not parse: {0}")]
    Parse(String),
}

impl ConntrackError {
    /// The `result` label of `trafficmap_conntrack_dumps_total`.
    pub fn label(&self) -> &'static str {
        match self {
            ConntrackError::Kernel(e) if e.raw_os_error() == Some(libc::EPERM) => "denied",
            ConntrackError::Kernel(_) => "refused",
            ConntrackError::Io(e) if e.kind() == std::io::ErrorKind::WouldBlock => "timeout",
            ConntrackError::Io(_) => "error",
            ConntrackError::Parse(_) => "malformed",
        }
    }
}

/// Walks the netlink messages of one datagram of a ctnetlink dump into `table`. Every length is
/// checked; a ctnetlink message that does not parse is skipped and counted in
/// `table.malformed`; a broken netlink header ends the datagram with an error. Never panics.
///
/// Only messages of the request `seq` count: anything else (the tail of an earlier dump that
/// ended early, its `NLMSG_DONE` or error) is skipped, so it can neither end this dump nor
/// put stale entries in its table.
pub fn parse_datagram(
    buf: &[u8],
    seq: u32,
    table: &mut NatTable,
) -> Result<Datagram, ConntrackError> {
    let mut off = 0;
    while off < buf.len() {
        let msg = NetlinkBuffer::new_checked(&buf[off..])
            .map_err(|e| ConntrackError::Parse(e.to_string()))?;
        let len = msg.length() as usize;
        // Messages are 4-byte aligned; `len` >= 16 was checked by `new_checked`.
        let next = off.saturating_add((len + 3) & !3);
        if msg.sequence_number() != seq {
            off = next;
            continue;
        }
        let kind = msg.message_type();
        match kind {
            NLMSG_DONE => return Ok(Datagram::Done),
            NLMSG_ERROR => {
                // struct nlmsgerr: a negative errno (0 is an acknowledgement), then the request.
                let p = msg.payload();
                let code = p
                    .get(..4)
                    .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                    .ok_or_else(|| ConntrackError::Parse("short NLMSG_ERROR".into()))?;
                if code != 0 {
                    return Err(ConntrackError::Kernel(std::io::Error::from_raw_os_error(
                        code.saturating_neg(),
                    )));
                }
            }
            k if k >> 8 == SUBSYS_CTNETLINK => {
                match NetfilterMessage::parse_with_param(msg.payload(), kind) {
                    Ok(NetfilterMessage {
                        inner:
                            NetfilterMessageInner::Conntrack(
                                ConntrackMessage::New(attrs) | ConntrackMessage::Get(attrs),
                            ),
                        ..
                    }) => {
                        if let Some((src, dst, real)) = dnat_entry(&attrs) {
                            table.insert(src, dst, real);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => table.malformed = table.malformed.saturating_add(1),
                }
            }
            // NLMSG_NOOP, NLMSG_OVERRUN and anything else: not an entry.
            _ => {}
        }
        off = next;
    }
    Ok(Datagram::More)
}

/// A ctnetlink socket of the network namespace it was opened in (the agent's own).
pub struct ConntrackSocket {
    socket: Socket,
    buf: Vec<u8>,
    seq: u32,
}

impl ConntrackSocket {
    /// Opening needs no privilege; dumping needs `CAP_NET_ADMIN` at the time of the dump.
    pub fn open() -> std::io::Result<ConntrackSocket> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        socket.connect(&NlAddr::new(0, 0))?;
        let tv = libc::timeval {
            tv_sec: RECV_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: a valid timeval for SO_RCVTIMEO on a socket we own.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(ConntrackSocket {
            socket,
            // Dump datagrams are at most a page or 16-32 KiB; a larger buffer loses nothing.
            buf: vec![0; 64 << 10],
            seq: 0,
        })
    }

    /// Dumps the namespace's conntrack table (IPv4 and IPv6 entries) into a table of at most
    /// `max_entries` DNAT'ed TCP entries.
    ///
    /// One dump with `NFPROTO_UNSPEC` rather than one per family: the kernel's conntrack hash
    /// is shared by all namespaces and a dump walks every bucket of it whatever its family
    /// filter (262144 buckets take about 35 ms here even when this namespace has no entry), so
    /// a single pass halves the cost of a drain.
    pub fn dump(&mut self, max_entries: usize) -> Result<NatTable, ConntrackError> {
        let mut table = NatTable::new(max_entries);
        self.dump_family(NetfilterProtoFamily::Unspec, &mut table)?;
        Ok(table)
    }

    fn dump_family(
        &mut self,
        family: NetfilterProtoFamily,
        table: &mut NatTable,
    ) -> Result<(), ConntrackError> {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        self.seq = self.seq.wrapping_add(1);
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(
            header,
            NetlinkPayload::from(NetfilterMessage::new(
                NetfilterHeader::new(family, 0, 0),
                ConntrackMessage::Get(Vec::new()),
            )),
        );
        packet.finalize();
        let mut req = vec![0; packet.buffer_len()];
        packet.serialize(&mut req);
        self.socket.send(&req, 0)?;
        loop {
            let n = match self.socket.recv(&mut &mut self.buf[..], 0) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            if parse_datagram(&self.buf[..n.min(self.buf.len())], self.seq, table)?
                == Datagram::Done
            {
                return Ok(());
            }
        }
    }
}

/// What to do with a client connection at a given moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Its destination was translated: this is the real server.
    Real(SocketAddr),
    /// The table may predate the connection: look it up again at the drain's dump.
    Wait,
    /// Report it as the socket saw it.
    AsIs,
}

/// Where the agent stands with its conntrack table.
#[derive(Debug)]
enum State {
    /// No dump yet (before the first drain): connections wait for it.
    Pending,
    /// The last dump worked.
    Ready { table: NatTable, mono_ns: u64 },
    /// The last dump failed (or the socket could not be opened): nothing is translated.
    Unavailable,
}

/// A connection opened this close to a dump may have no entry in it yet (the entry is
/// confirmed when its first packet leaves the host, just after the socket's `connect`).
const FRESH_MARGIN_NS: u64 = 1_000_000_000;

/// The agent's NAT state: the socket, the table of the last dump, the metrics, and the one
/// warning about missing access.
pub struct Nat {
    socket: Option<ConntrackSocket>,
    max_entries: usize,
    state: State,
    warned: bool,
    metrics: ConntrackMetrics,
}

impl Nat {
    /// Opens the socket in the calling thread's network namespace (the agent's own).
    pub fn new(max_entries: usize, metrics: ConntrackMetrics) -> Nat {
        let mut warned = false;
        let socket = match ConntrackSocket::open() {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "NAT: cannot open a netfilter netlink socket; connections to translated addresses (Services, DNAT) are reported as their sockets saw them");
                warned = true;
                None
            }
        };
        Nat {
            state: if socket.is_some() {
                State::Pending
            } else {
                State::Unavailable
            },
            socket,
            max_entries,
            warned,
            metrics,
        }
    }

    /// Dumps the table (at each drain); says once when it cannot, and when it can again.
    pub fn refresh(&mut self, mono_ns: u64) {
        if self.socket.is_none() {
            // Dropped after a failed dump (or never opened): try a fresh one at each drain.
            match ConntrackSocket::open() {
                Ok(s) => self.socket = Some(s),
                Err(e) => {
                    tracing::debug!(error = %e, "NAT: cannot reopen the netfilter netlink socket")
                }
            }
        }
        let Some(socket) = &mut self.socket else {
            self.metrics.dump_result("error");
            self.metrics.entries.set(0);
            self.state = State::Unavailable;
            return;
        };
        match socket.dump(self.max_entries) {
            Ok(table) => {
                if self.warned {
                    tracing::info!("NAT: the conntrack table is readable again");
                    self.warned = false;
                }
                self.metrics.dump_result("ok");
                self.metrics
                    .entries
                    .set(i64::try_from(table.len()).unwrap_or(i64::MAX));
                self.metrics.cut.inc_by(table.cut);
                self.metrics.malformed.inc_by(table.malformed);
                if table.cut > 0 {
                    tracing::debug!(
                        cut = table.cut,
                        kept = table.len(),
                        "NAT: conntrack entries beyond [nat] max_entries left out"
                    );
                }
                self.state = State::Ready { table, mono_ns };
            }
            Err(e) => {
                // A dump that ended early (timeout, parse error) may still be running in the
                // kernel on this socket: the next request would get EBUSY or its leftover
                // datagrams. Closing the socket ends it; the next drain opens a fresh one.
                self.socket = None;
                self.metrics.dump_result(e.label());
                self.metrics.entries.set(0);
                if !self.warned {
                    let hint = match e.label() {
                        "denied" => " (the agent needs CAP_NET_ADMIN for it)",
                        "refused" => " (is nf_conntrack loaded?)",
                        _ => "",
                    };
                    tracing::warn!(error = %e, "NAT: cannot read the conntrack table{hint}; connections to translated addresses (Services, DNAT) are reported as their sockets saw them");
                    self.warned = true;
                } else {
                    tracing::debug!(error = %e, "NAT: conntrack dump failed again");
                }
                self.state = State::Unavailable;
            }
        }
    }

    /// A client connection from `local` to `peer`, opened at `opened_ns` (0: before the probe
    /// started). `may_wait`: between drains, a connection the table may not know yet waits for
    /// the next dump; at a drain (fresh table) nothing waits.
    pub fn resolve(
        &self,
        local: SocketAddr,
        peer: SocketAddr,
        opened_ns: u64,
        may_wait: bool,
    ) -> Lookup {
        match &self.state {
            State::Unavailable => Lookup::AsIs,
            State::Pending if may_wait => Lookup::Wait,
            State::Pending => Lookup::AsIs,
            State::Ready { table, mono_ns } => {
                if let Some(real) = table.lookup(local, peer) {
                    self.metrics.translated.inc();
                    return Lookup::Real(real);
                }
                if may_wait
                    && opened_ns != 0
                    && opened_ns.saturating_add(FRESH_MARGIN_NS) >= *mono_ns
                {
                    return Lookup::Wait;
                }
                if table.is_virtual(peer) {
                    self.metrics.untranslated("entry_gone");
                }
                Lookup::AsIs
            }
        }
    }

    /// A state without a socket, for tests of [`Nat::resolve`].
    #[cfg(test)]
    fn with(table: Option<(NatTable, u64)>, metrics: ConntrackMetrics) -> Nat {
        Nat {
            socket: None,
            max_entries: 0,
            state: match table {
                Some((table, mono_ns)) => State::Ready { table, mono_ns },
                None => State::Pending,
            },
            warned: false,
            metrics,
        }
    }

    /// Counts a connection that could not wait for the drain (too many waited already).
    pub fn could_not_wait(&self) {
        self.metrics.untranslated("parking_full");
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// The `trafficmap_conntrack_*` series.
#[derive(Clone, Debug, Default)]
pub struct ConntrackMetrics {
    pub entries: Gauge,
    pub dumps: Family<ResultLabels, Counter>,
    pub cut: Counter,
    pub malformed: Counter,
    pub translated: Counter,
    pub untranslated: Family<ReasonLabels, Counter>,
}

impl ConntrackMetrics {
    pub fn register(registry: &mut Registry) -> ConntrackMetrics {
        let m = ConntrackMetrics::default();
        registry.register(
            "conntrack_entries",
            "DNAT'ed TCP entries of the agent's network namespace in the last conntrack dump",
            m.entries.clone(),
        );
        registry.register(
            "conntrack_dumps",
            "Conntrack dumps at drains, by result (ok, denied: no CAP_NET_ADMIN, refused: no nf_conntrack or other kernel error, timeout, error, malformed)",
            m.dumps.clone(),
        );
        registry.register(
            "conntrack_entries_cut",
            "DNAT entries left out of a dump because [nat] max_entries was reached",
            m.cut.clone(),
        );
        registry.register(
            "conntrack_malformed_messages",
            "Conntrack messages that did not parse (skipped)",
            m.malformed.clone(),
        );
        registry.register(
            "conntrack_translated",
            "Client connection records reported with their real server and the address their socket saw as service (a connection counts once per window it is in)",
            m.translated.clone(),
        );
        registry.register(
            "conntrack_untranslated",
            "Client connection records to a translated address reported as their socket saw them, by reason (entry_gone: its conntrack entry expired before the drain; parking_full: too many closed connections waited for the drain)",
            m.untranslated.clone(),
        );
        m
    }

    pub fn dump_result(&self, result: &str) {
        self.dumps
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
    }

    pub fn untranslated(&self, reason: &str) {
        self.untranslated
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::{NetlinkMessage, NetlinkPayload};

    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn tuple(src: SocketAddr, dst: SocketAddr, proto: Protocol) -> Vec<Tuple> {
        vec![
            Tuple::Ip(vec![
                IPTuple::SourceAddress(src.ip()),
                IPTuple::DestinationAddress(dst.ip()),
            ]),
            Tuple::Proto(vec![
                ProtoTuple::Protocol(proto),
                ProtoTuple::SourcePort(src.port()),
                ProtoTuple::DestinationPort(dst.port()),
            ]),
        ]
    }

    /// One ctnetlink dump message (`IPCTNL_MSG_CT_NEW`, as the kernel sends entries), framed.
    fn entry_msg(
        orig: (SocketAddr, SocketAddr),
        reply: (SocketAddr, SocketAddr),
        status: Status,
        proto: Protocol,
    ) -> Vec<u8> {
        let mut m = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::from(NetfilterMessage::new(
                NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0),
                ConntrackMessage::New(vec![
                    ConntrackAttribute::CtaTupleOrig(tuple(orig.0, orig.1, proto)),
                    ConntrackAttribute::CtaTupleReply(tuple(reply.0, reply.1, proto)),
                    ConntrackAttribute::CtaStatus(status),
                    ConntrackAttribute::CtaMark(7),
                ]),
            )),
        );
        m.finalize();
        let mut out = vec![0; m.buffer_len()];
        m.serialize(&mut out);
        out
    }

    fn done() -> Vec<u8> {
        let mut m = NetlinkMessage::<NetfilterMessage>::new(
            NetlinkHeader::default(),
            NetlinkPayload::Done(netlink_packet_core::DoneMessage::default()),
        );
        m.finalize();
        let mut out = vec![0; m.buffer_len()];
        m.serialize(&mut out);
        out
    }

    fn dnat() -> Status {
        Status::DstNat | Status::DstNatDone | Status::Confirmed | Status::SeenReply
    }

    #[test]
    fn a_dnat_entry_maps_the_socket_tuple_to_the_real_server() {
        let client = sa("10.250.1.2:40000");
        let virt = sa("10.250.99.10:80");
        let real = sa("10.250.2.2:8080");
        let mut dg = entry_msg((client, virt), (real, client), dnat(), Protocol::Tcp);
        // Not DNAT'ed, not TCP, SNAT only: all left out.
        let other = sa("10.250.1.2:40001");
        dg.extend(entry_msg(
            (other, real),
            (real, other),
            Status::Confirmed,
            Protocol::Tcp,
        ));
        dg.extend(entry_msg(
            (other, virt),
            (real, other),
            dnat(),
            Protocol::Udp,
        ));
        dg.extend(entry_msg(
            (other, virt),
            (real, sa("10.250.1.1:50000")),
            Status::SrcNat,
            Protocol::Tcp,
        ));
        let mut t = NatTable::new(16);
        assert_eq!(parse_datagram(&dg, 0, &mut t).unwrap(), Datagram::More);
        assert_eq!(t.len(), 1);
        assert_eq!(t.lookup(client, virt), Some(real));
        assert_eq!(t.lookup(other, virt), None);
        assert!(t.is_virtual(virt));
        assert!(!t.is_virtual(real));
        assert_eq!(parse_datagram(&done(), 0, &mut t).unwrap(), Datagram::Done);
        assert_eq!((t.cut, t.malformed), (0, 0));
    }

    #[test]
    fn ipv4_mapped_sockets_find_ipv4_entries() {
        let mut t = NatTable::new(4);
        t.insert(
            sa("10.0.0.1:1000"),
            sa("10.96.0.1:443"),
            sa("10.0.5.5:6443"),
        );
        assert_eq!(
            t.lookup(sa("[::ffff:10.0.0.1]:1000"), sa("[::ffff:10.96.0.1]:443")),
            Some(sa("10.0.5.5:6443"))
        );
        // IPv6 entries work the same way.
        t.insert(
            sa("[fd00::1]:1000"),
            sa("[fd00:96::1]:80"),
            sa("[fd00::9]:8080"),
        );
        assert_eq!(
            t.lookup(sa("[fd00::1]:1000"), sa("[fd00:96::1]:80")),
            Some(sa("[fd00::9]:8080"))
        );
    }

    #[test]
    fn the_table_is_capped_and_counts_what_it_cut() {
        let mut t = NatTable::new(2);
        let virt = sa("10.96.0.10:53");
        for port in 1..=5u16 {
            t.insert(
                SocketAddr::new([10, 0, 0, 1].into(), port),
                virt,
                sa("10.0.0.9:53"),
            );
        }
        assert_eq!((t.len(), t.cut), (2, 3));
        // A translation to the same address is not a translation; a tuple seen twice (another
        // zone) keeps its first entry.
        let mut t = NatTable::new(8);
        assert!(t.insert(sa("10.0.0.1:1"), virt, virt));
        assert!(t.is_empty());
        t.insert(sa("10.0.0.1:1"), virt, sa("10.0.0.2:53"));
        t.insert(sa("10.0.0.1:1"), virt, sa("10.0.0.3:53"));
        assert_eq!(t.lookup(sa("10.0.0.1:1"), virt), Some(sa("10.0.0.2:53")));
    }

    #[test]
    fn kernel_errors_are_reported_with_their_errno() {
        let mut m = NetlinkMessage::<NetfilterMessage>::new(
            NetlinkHeader::default(),
            NetlinkPayload::Error({
                let mut e = netlink_packet_core::ErrorMessage::default();
                e.code = std::num::NonZeroI32::new(-libc::EPERM);
                e
            }),
        );
        m.finalize();
        let mut out = vec![0; m.buffer_len()];
        m.serialize(&mut out);
        let err = parse_datagram(&out, 0, &mut NatTable::new(4)).unwrap_err();
        assert_eq!(err.label(), "denied", "{err}");
    }

    #[test]
    fn a_malformed_entry_is_skipped_and_counted() {
        let client = sa("10.250.1.2:40000");
        let virt = sa("10.250.99.10:80");
        let real = sa("10.250.2.2:8080");
        let good = entry_msg((client, virt), (real, client), dnat(), Protocol::Tcp);
        let mut bad = good.clone();
        // CTA_STATUS's 4-byte value cut to 3 (its length field), message length unchanged:
        // the attribute walk fails inside a well-framed netlink message.
        let status_at = bad
            .windows(4)
            .position(|w| w == [8, 0, 3, 0])
            .expect("CTA_STATUS attribute");
        bad[status_at] = 7;
        let mut dg = bad;
        dg.extend(&good);
        let mut t = NatTable::new(4);
        assert_eq!(parse_datagram(&dg, 0, &mut t).unwrap(), Datagram::More);
        assert_eq!((t.len(), t.malformed), (1, 1));
        // A broken netlink header (length beyond the datagram) ends it with an error.
        let mut cut = good.clone();
        cut.truncate(good.len() - 1);
        assert!(parse_datagram(&cut, 0, &mut NatTable::new(4)).is_err());
    }

    /// One framed message with its netlink sequence number set (`nlmsg_seq`, bytes 8..12).
    fn with_seq(mut m: Vec<u8>, seq: u32) -> Vec<u8> {
        m[8..12].copy_from_slice(&seq.to_ne_bytes());
        m
    }

    /// The tail of an earlier dump that ended early (its entries, its error, its DONE) is
    /// skipped: it neither ends the current dump nor adds to its table.
    #[test]
    fn messages_of_another_dump_are_skipped() {
        let client = sa("10.250.1.2:40000");
        let virt = sa("10.250.99.10:80");
        let real = sa("10.250.2.2:8080");
        let stale_client = sa("10.250.1.3:40001");
        let stale = entry_msg(
            (stale_client, virt),
            (real, stale_client),
            dnat(),
            Protocol::Tcp,
        );
        let current = entry_msg((client, virt), (real, client), dnat(), Protocol::Tcp);
        let mut err = NetlinkMessage::<NetfilterMessage>::new(
            NetlinkHeader::default(),
            NetlinkPayload::Error({
                let mut e = netlink_packet_core::ErrorMessage::default();
                e.code = std::num::NonZeroI32::new(-libc::EBUSY);
                e
            }),
        );
        err.finalize();
        let mut err_bytes = vec![0; err.buffer_len()];
        err.serialize(&mut err_bytes);

        let mut dg = with_seq(stale.clone(), 6);
        dg.extend(with_seq(err_bytes, 6));
        dg.extend(with_seq(done(), 6));
        dg.extend(with_seq(current, 7));
        let mut t = NatTable::new(4);
        assert_eq!(parse_datagram(&dg, 7, &mut t).unwrap(), Datagram::More);
        assert_eq!(t.len(), 1);
        assert_eq!(t.lookup(client, virt), Some(real));
        assert_eq!(t.lookup(stale_client, virt), None);
        // The current dump's own DONE ends it; the same bytes under another sequence do not.
        let mut end = with_seq(stale, 6);
        end.extend(with_seq(done(), 7));
        let mut t = NatTable::new(4);
        assert_eq!(parse_datagram(&end, 7, &mut t).unwrap(), Datagram::Done);
        assert_eq!(t.len(), 0);
        assert_eq!(
            parse_datagram(&with_seq(done(), 7), 8, &mut t).unwrap(),
            Datagram::More
        );
    }

    /// Hostile bytes: random datagrams, and valid ones with random bytes flipped or cut, never
    /// panic and never grow the table past its cap.
    #[test]
    fn random_bytes_never_panic() {
        let client = sa("10.250.1.2:40000");
        let virt = sa("10.250.99.10:80");
        let real = sa("10.250.2.2:8080");
        let mut valid = entry_msg((client, virt), (real, client), dnat(), Protocol::Tcp);
        valid.extend(entry_msg(
            (client, virt),
            (real, client),
            dnat(),
            Protocol::Tcp,
        ));
        valid.extend(done());
        let mut rng = fastrand::Rng::with_seed(0x11_4a7);
        for i in 0..20_000 {
            let dg: Vec<u8> = if i % 2 == 0 {
                let n = rng.usize(0..512);
                let mut v: Vec<u8> = (0..n).map(|_| rng.u8(..)).collect();
                // A plausible netlink header now and then, so the walk goes deeper.
                if v.len() >= 16 && rng.bool() {
                    let n = v.len() as u32;
                    v[..4].copy_from_slice(&n.to_ne_bytes());
                    v[4..6].copy_from_slice(&0x0100u16.to_ne_bytes());
                }
                v
            } else {
                let mut v = valid.clone();
                for _ in 0..rng.usize(1..8) {
                    let at = rng.usize(..v.len());
                    v[at] = rng.u8(..);
                }
                v.truncate(rng.usize(..=v.len()));
                v
            };
            let mut t = NatTable::new(1);
            let _ = parse_datagram(&dg, 0, &mut t);
            assert!(t.len() <= 1);
        }
    }

    /// When a client connection is translated, waits for the drain's dump, or is reported as
    /// its socket saw it; and what is counted.
    #[test]
    fn resolve_waits_only_for_connections_the_table_may_not_know() {
        let (local, virt, real) = (
            sa("10.0.0.1:40000"),
            sa("10.96.0.40:5432"),
            sa("10.244.1.7:5432"),
        );
        let m = ConntrackMetrics::default();
        // Before the first dump: wait between drains, as is at a drain.
        let pending = Nat::with(None, m.clone());
        assert_eq!(pending.resolve(local, virt, 5, true), Lookup::Wait);
        assert_eq!(pending.resolve(local, virt, 5, false), Lookup::AsIs);
        let mut t = NatTable::new(8);
        t.insert(local, virt, real);
        let dumped = 100 * FRESH_MARGIN_NS;
        let nat = Nat::with(Some((t, dumped)), m.clone());
        assert_eq!(nat.resolve(local, virt, 0, true), Lookup::Real(real));
        assert_eq!(m.translated.get(), 1);
        // Another client of the same virtual address, not in the table: opened after the dump
        // (or just before it) it waits; older, or at a drain, its entry is gone.
        let other = sa("10.0.0.1:40001");
        assert_eq!(nat.resolve(other, virt, dumped + 1, true), Lookup::Wait);
        assert_eq!(
            nat.resolve(other, virt, dumped - FRESH_MARGIN_NS / 2, true),
            Lookup::Wait
        );
        assert_eq!(nat.resolve(other, virt, 1, true), Lookup::AsIs);
        assert_eq!(nat.resolve(other, virt, dumped + 1, false), Lookup::AsIs);
        // Before the probe started (0): older than any dump.
        assert_eq!(nat.resolve(other, virt, 0, true), Lookup::AsIs);
        let gone = m
            .untranslated
            .get_or_create(&ReasonLabels {
                reason: "entry_gone".into(),
            })
            .get();
        assert_eq!(gone, 3);
        // A destination no entry names: not counted as gone.
        assert_eq!(nat.resolve(other, real, 0, false), Lookup::AsIs);
        assert_eq!(
            m.untranslated
                .get_or_create(&ReasonLabels {
                    reason: "entry_gone".into(),
                })
                .get(),
            3
        );
        assert_eq!(m.translated.get(), 1);
    }
}
