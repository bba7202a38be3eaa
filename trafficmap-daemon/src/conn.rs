//! Decoding of the probe's raw `Conn` records: addresses, role, process name.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use trafficmap_common::{AF_INET, AF_INET6, Conn, flags, role};

/// Identity of one connection: socket address plus the time the probe first saw it. The kernel
/// reuses socket memory, so `sk` alone could merge two connections; `born_ns` tells them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    pub sk: u64,
    pub born_ns: u64,
}

impl ConnId {
    pub fn of(c: &Conn) -> Self {
        ConnId {
            sk: c.sk,
            born_ns: c.born_ns,
        }
    }
}

/// Role of the local end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Client,
    Server,
    /// Opened before the probe loaded and not resolvable (see `RoleSource`).
    Unknown,
}

impl Role {
    pub fn from_raw(r: u8) -> Role {
        match r {
            role::CLIENT => Role::Client,
            role::SERVER => Role::Server,
            _ => Role::Unknown,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Server => "server",
            Role::Unknown => "unknown",
        }
    }
}

/// How the role was established.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RoleSource {
    /// Seen opening: `connect` (client) or accepted from a listener (server).
    Observed,
    /// Open before the probe loaded; the local port is (server) or is not (client) a listening
    /// port of the socket's network namespace.
    Listeners,
    /// Open before the probe loaded and no listener table was available: the lower port is
    /// taken as the server's. A guess, labelled as such.
    LowerPort,
}

/// Decodes a 16-byte address: IPv4-mapped addresses become IPv4, so that an IPv6 socket talking
/// to an IPv4 peer and the peer's own IPv4 socket name the same address.
pub fn decode_addr(raw: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(raw);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// `comm` as text: NUL-terminated, lossy UTF-8, control characters replaced by U+FFFD like
/// invalid bytes (any user names their processes: an escape must not reach a report, which the
/// collector would refuse, nor a terminal), within the report's process-name bound.
pub fn decode_comm(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let s = String::from_utf8_lossy(&raw[..end]);
    crate::sanitize::text(&s, trafficmap_model::bounds::MAX_PROCESS_LEN).into_owned()
}

/// Decoded view of a `Conn`.
pub trait ConnExt {
    fn id(&self) -> ConnId;
    fn local(&self) -> SocketAddr;
    fn remote(&self) -> SocketAddr;
    fn role(&self) -> Role;
    fn process(&self) -> String;
    fn is_destroyed(&self) -> bool;
    fn is_preexisting(&self) -> bool;
    fn has_addresses(&self) -> bool;
    /// An IPv6 socket whose addresses are IPv4-mapped.
    fn is_v4_mapped(&self) -> bool;
}

impl ConnExt for Conn {
    fn id(&self) -> ConnId {
        ConnId::of(self)
    }
    fn local(&self) -> SocketAddr {
        SocketAddr::new(decode_addr(self.saddr), self.sport)
    }
    fn remote(&self) -> SocketAddr {
        SocketAddr::new(decode_addr(self.daddr), self.dport)
    }
    fn role(&self) -> Role {
        Role::from_raw(self.role)
    }
    fn process(&self) -> String {
        decode_comm(&self.comm)
    }
    fn is_destroyed(&self) -> bool {
        self.flags & flags::DESTROYED != 0
    }
    fn is_preexisting(&self) -> bool {
        self.flags & flags::PREEXISTING != 0
    }
    fn has_addresses(&self) -> bool {
        self.family == AF_INET || self.family == AF_INET6
    }
    fn is_v4_mapped(&self) -> bool {
        self.family == AF_INET6 && Ipv6Addr::from(self.saddr).to_ipv4_mapped().is_some()
    }
}

/// An unspecified address of the right family, for records without addresses.
pub fn unspecified(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapped(a: [u8; 4]) -> [u8; 16] {
        [
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
        ]
    }

    #[test]
    fn decodes_ipv4_ipv6_and_mapped() {
        assert_eq!(
            decode_addr(mapped([10, 0, 0, 1])),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
        let v6: Ipv6Addr = "fd00::1".parse().unwrap();
        assert_eq!(decode_addr(v6.octets()), IpAddr::V6(v6));
        assert_eq!(decode_addr([0; 16]), "::".parse::<IpAddr>().unwrap());
        // ::1 is not an IPv4-mapped address.
        assert_eq!(
            decode_addr(Ipv6Addr::LOCALHOST.octets()),
            "::1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn decodes_conn() {
        let mut c = Conn::ZERO;
        c.family = AF_INET6;
        c.saddr = mapped([127, 0, 0, 1]);
        c.daddr = mapped([127, 0, 0, 2]);
        c.sport = 40000;
        c.dport = 8080;
        c.role = role::CLIENT;
        c.comm[..4].copy_from_slice(b"curl");
        c.flags = flags::PREEXISTING;
        assert_eq!(c.local(), "127.0.0.1:40000".parse().unwrap());
        assert_eq!(c.remote(), "127.0.0.2:8080".parse().unwrap());
        assert_eq!(c.role(), Role::Client);
        assert_eq!(c.process(), "curl");
        assert!(c.is_v4_mapped());
        assert!(c.is_preexisting());
        assert!(!c.is_destroyed());
        assert!(c.has_addresses());
        c.family = AF_INET;
        assert!(!c.is_v4_mapped());
    }

    #[test]
    fn comm_without_nul_and_invalid_utf8() {
        assert_eq!(decode_comm(&[b'a'; 16]), "a".repeat(16));
        let mut raw = [0u8; 16];
        raw[0] = 0xff;
        raw[1] = b'x';
        assert_eq!(decode_comm(&raw), "\u{fffd}x");
        // Control characters (ESC, DEL, a C1 code as UTF-8) become U+FFFD too.
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(b"\x1b[2Jx\x7f\xc2\x85");
        assert_eq!(decode_comm(&raw), "\u{fffd}[2Jx\u{fffd}\u{fffd}");
        // 16 control bytes: 16 replacements, 48 bytes, within the bound.
        assert_eq!(decode_comm(&[0x07; 16]), "\u{fffd}".repeat(16));
    }
}
