//! Roles of connections that were open before the probe loaded.
//!
//! The probe sees a connection's role only when it watches it open. For older connections the
//! local port is looked up among the listening sockets of the connection's network namespace
//! (`/proc/<pid>/net/tcp{,6}` of a process in that namespace): a listening port means server.
//! Only when no process of that namespace is left is the lower port taken as the server's, and
//! the result says so.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use trafficmap_common::Conn;

use crate::conn::{ConnExt as _, Role, RoleSource};

/// Listening sockets of one network namespace: (address, port); unspecified = any address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listeners(HashSet<(IpAddr, u16)>);

impl Listeners {
    pub fn new(entries: impl IntoIterator<Item = (IpAddr, u16)>) -> Self {
        Listeners(entries.into_iter().collect())
    }

    /// Whether a socket bound to `addr:port` would be one this namespace's listeners accepted.
    pub fn accepts(&self, addr: IpAddr, port: u16) -> bool {
        let any4 = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let any6 = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
        self.0.contains(&(addr, port))
            || self.0.contains(&(any6, port))
            || (addr.is_ipv4() && self.0.contains(&(any4, port)))
    }
}

/// Parses `/proc/net/tcp` or `/proc/net/tcp6` and keeps the sockets in state LISTEN (0A).
///
/// Not `procfs`: it decodes every column of every socket into an owned entry (a `Vec` as long
/// as the table) before one could filter, and this runs at every drain on hosts with tens of
/// thousands of connections; here two columns are split and only listeners are decoded.
pub fn parse_proc_net_tcp(text: &str) -> Vec<(IpAddr, u16)> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let local = cols.nth(1)?;
            let state = cols.nth(1)?;
            if state != "0A" {
                return None;
            }
            let (addr, port) = local.split_once(':')?;
            let port = u16::from_str_radix(port, 16).ok()?;
            Some((parse_hex_addr(addr)?, port))
        })
        .collect()
}

/// `/proc/net/tcp*` prints addresses as 32-bit words in host byte order.
fn parse_hex_addr(hex: &str) -> Option<IpAddr> {
    let words: Option<Vec<u32>> = (0..hex.len() / 8)
        .map(|i| u32::from_str_radix(&hex[i * 8..i * 8 + 8], 16).ok())
        .collect();
    let bytes: Vec<u8> = words?.into_iter().flat_map(u32::to_ne_bytes).collect();
    let addr = match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        16 => {
            let raw: [u8; 16] = bytes.try_into().ok()?;
            crate::conn::decode_addr(raw)
        }
        _ => return None,
    };
    Some(addr)
}

/// Role of a connection given its namespace's listeners, or the lower-port guess without them.
pub fn resolve(conn: &Conn, listeners: Option<&Listeners>) -> (Role, RoleSource) {
    let known = conn.role();
    if known != Role::Unknown {
        return (known, RoleSource::Observed);
    }
    let (local, remote) = (conn.local(), conn.remote());
    match listeners {
        Some(l) => {
            if l.accepts(local.ip(), local.port()) {
                (Role::Server, RoleSource::Listeners)
            } else {
                (Role::Client, RoleSource::Listeners)
            }
        }
        None if local.port() < remote.port() => (Role::Server, RoleSource::LowerPort),
        None if local.port() > remote.port() => (Role::Client, RoleSource::LowerPort),
        None => (Role::Unknown, RoleSource::LowerPort),
    }
}

/// Reads listening sockets per network namespace from `/proc`, once per namespace per drain.
pub struct ListenerCache {
    proc_root: std::path::PathBuf,
    by_netns: HashMap<u32, Option<Listeners>>,
}

impl Default for ListenerCache {
    fn default() -> Self {
        Self::new("/proc")
    }
}

impl ListenerCache {
    pub fn new(proc_root: impl AsRef<Path>) -> Self {
        ListenerCache {
            proc_root: proc_root.as_ref().to_owned(),
            by_netns: HashMap::new(),
        }
    }

    /// Forgets what was read (call once per drain: listeners come and go).
    pub fn clear(&mut self) {
        self.by_netns.clear();
    }

    /// Listeners of `conn`'s namespace, read through the process that last used it, or through
    /// this process if it lives in the same namespace.
    pub fn for_conn(&mut self, conn: &Conn) -> Option<&Listeners> {
        let root = &self.proc_root;
        self.by_netns
            .entry(conn.netns)
            .or_insert_with(|| {
                [conn.pid.to_string(), "self".to_owned()]
                    .iter()
                    .find_map(|pid| read_listeners_of_process(&root.join(pid), conn.netns))
            })
            .as_ref()
    }
}

/// Namespaces are per thread: look at the process, then at each of its threads.
fn read_listeners_of_process(proc_pid: &Path, netns: u32) -> Option<Listeners> {
    read_listeners(proc_pid, netns).or_else(|| {
        std::fs::read_dir(proc_pid.join("task"))
            .ok()?
            .filter_map(Result::ok)
            .find_map(|task| read_listeners(&task.path(), netns))
    })
}

fn read_listeners(proc_pid: &Path, netns: u32) -> Option<Listeners> {
    use std::os::unix::fs::MetadataExt as _;
    match std::fs::metadata(proc_pid.join("ns/net")) {
        Ok(m) if m.ino() != u64::from(netns) => return None,
        Ok(_) => {}
        // Another user's (or a more privileged) process once the agent dropped its
        // capabilities: `ns/net` needs ptrace access, `net/tcp*` does not. The process is the one
        // the probe saw using the socket in that namespace, so its namespace is taken as is.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {}
        Err(_) => return None,
    }
    let mut all = Vec::new();
    for f in ["net/tcp", "net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(proc_pid.join(f)) {
            all.extend(parse_proc_net_tcp(&text));
        }
    }
    Some(Listeners::new(all))
}

#[cfg(test)]
mod tests {
    use trafficmap_common::{AF_INET, role};

    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1597 1 0000000000000000 100 0 0 10 0
   1: 0100007F:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1598 1 0000000000000000 100 0 0 10 0
   2: 0100007F:9C40 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 1599 1 0000000000000000 100 0 0 10 0
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st
   0: 00000000000000000000000000000000:1BB8 00000000000000000000000000000000:0000 0A 00000000:00000000
   1: 00000000000000000000000001000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000
";

    #[test]
    fn parses_listeners_only() {
        assert_eq!(
            parse_proc_net_tcp(TCP),
            vec![
                ("0.0.0.0".parse().unwrap(), 8080),
                ("127.0.0.1".parse().unwrap(), 80)
            ]
        );
        assert_eq!(
            parse_proc_net_tcp(TCP6),
            vec![("::".parse().unwrap(), 7096), ("::1".parse().unwrap(), 22)]
        );
    }

    fn conn(local: [u8; 4], lport: u16, remote: [u8; 4], rport: u16) -> Conn {
        let mut c = Conn::ZERO;
        c.family = AF_INET;
        c.saddr[10..12].copy_from_slice(&[0xff, 0xff]);
        c.saddr[12..].copy_from_slice(&local);
        c.daddr[10..12].copy_from_slice(&[0xff, 0xff]);
        c.daddr[12..].copy_from_slice(&remote);
        c.sport = lport;
        c.dport = rport;
        c
    }

    #[test]
    fn resolves_by_listeners_then_lower_port() {
        let l = Listeners::new(parse_proc_net_tcp(TCP));
        let server = conn([10, 0, 0, 1], 8080, [10, 0, 0, 2], 50000);
        let client = conn([127, 0, 0, 1], 40000, [127, 0, 0, 1], 8080);
        let bound_elsewhere = conn([10, 0, 0, 1], 80, [10, 0, 0, 2], 50000);
        assert_eq!(
            resolve(&server, Some(&l)),
            (Role::Server, RoleSource::Listeners)
        );
        assert_eq!(
            resolve(&client, Some(&l)),
            (Role::Client, RoleSource::Listeners)
        );
        // Port 80 listens on 127.0.0.1 only: a socket on 10.0.0.1:80 was not accepted there.
        assert_eq!(
            resolve(&bound_elsewhere, Some(&l)),
            (Role::Client, RoleSource::Listeners)
        );
        assert_eq!(
            resolve(&server, None),
            (Role::Server, RoleSource::LowerPort)
        );
        assert_eq!(
            resolve(&client, None),
            (Role::Client, RoleSource::LowerPort)
        );
        let mut observed = client;
        observed.role = role::SERVER;
        assert_eq!(
            resolve(&observed, None),
            (Role::Server, RoleSource::Observed)
        );
    }

    #[test]
    fn ipv6_wildcard_accepts_ipv4() {
        let l = Listeners::new(parse_proc_net_tcp(TCP6));
        assert!(l.accepts("10.1.1.1".parse().unwrap(), 7096));
        assert!(l.accepts("::1".parse().unwrap(), 22));
        assert!(!l.accepts("10.1.1.1".parse().unwrap(), 22));
    }
}
