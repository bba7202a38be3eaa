//! Reverse DNS for addresses nobody else can name: cached with a TTL (negative answers too),
//! resolved in the background with bounded concurrency and a time limit per lookup, so that
//! neither ingestion nor map building ever waits on a resolver.
//!
//! Peer addresses come from agents' reports, so an agent (or whoever holds its token) chooses
//! them: only addresses inside the configured networks are looked up (private ranges by default,
//! so a report cannot make the collector query a resolver of the attacker's choosing), and a
//! lookup keeps its concurrency slot until the blocking call really returns, so a resolver that
//! hangs holds at most `concurrency` threads of the blocking pool the stores also use.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    net::IpAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::mpsc, time::Instant};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One reverse lookup: `Ok(None)` when the address has no name.
pub trait ReverseLookup: Send + Sync + 'static {
    fn lookup(&self, ip: IpAddr) -> BoxFuture<'static, std::io::Result<Option<String>>>;
}

/// The system resolver (`getnameinfo` with `NI_NAMEREQD`: /etc/hosts, then DNS, as configured
/// in nsswitch), on tokio's blocking pool.
pub struct SystemResolver;

impl ReverseLookup for SystemResolver {
    fn lookup(&self, ip: IpAddr) -> BoxFuture<'static, std::io::Result<Option<String>>> {
        Box::pin(async move {
            tokio::task::spawn_blocking(move || getnameinfo(ip))
                .await
                .map_err(std::io::Error::other)?
        })
    }
}

fn getnameinfo(ip: IpAddr) -> std::io::Result<Option<String>> {
    let sa: socket2_like::SockAddr = ip.into();
    let mut host = [0 as libc::c_char; 1025];
    // SAFETY: `sa` is a valid sockaddr of the given length; `host` is writable for its length.
    let rc = unsafe {
        libc::getnameinfo(
            sa.as_ptr(),
            sa.len(),
            host.as_mut_ptr(),
            host.len() as libc::socklen_t,
            std::ptr::null_mut(),
            0,
            libc::NI_NAMEREQD,
        )
    };
    match rc {
        0 => {
            // SAFETY: getnameinfo NUL-terminates `host` on success.
            let name = unsafe { std::ffi::CStr::from_ptr(host.as_ptr()) }
                .to_string_lossy()
                .trim_end_matches('.')
                .to_owned();
            Ok((!name.is_empty()).then_some(name))
        }
        libc::EAI_NONAME => Ok(None),
        libc::EAI_AGAIN => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "temporary failure in name resolution",
        )),
        rc => {
            // SAFETY: gai_strerror returns a static string.
            let msg = unsafe { std::ffi::CStr::from_ptr(libc::gai_strerror(rc)) };
            Err(std::io::Error::other(msg.to_string_lossy().into_owned()))
        }
    }
}

mod socket2_like {
    use std::net::IpAddr;

    /// A `sockaddr_in`/`sockaddr_in6` for an address (port 0).
    pub struct SockAddr {
        storage: libc::sockaddr_storage,
        len: libc::socklen_t,
    }

    impl SockAddr {
        pub fn as_ptr(&self) -> *const libc::sockaddr {
            (&raw const self.storage).cast()
        }
        pub fn len(&self) -> libc::socklen_t {
            self.len
        }
    }

    impl From<IpAddr> for SockAddr {
        fn from(ip: IpAddr) -> Self {
            // SAFETY: all-zero is a valid sockaddr_storage.
            let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            let len = match ip {
                IpAddr::V4(v4) => {
                    let sin = libc::sockaddr_in {
                        sin_family: libc::AF_INET as libc::sa_family_t,
                        sin_port: 0,
                        sin_addr: libc::in_addr {
                            s_addr: u32::from_ne_bytes(v4.octets()),
                        },
                        sin_zero: [0; 8],
                    };
                    // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
                    unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
                    size_of::<libc::sockaddr_in>()
                }
                IpAddr::V6(v6) => {
                    let sin6 = libc::sockaddr_in6 {
                        sin6_family: libc::AF_INET6 as libc::sa_family_t,
                        sin6_port: 0,
                        sin6_flowinfo: 0,
                        sin6_addr: libc::in6_addr {
                            s6_addr: v6.octets(),
                        },
                        sin6_scope_id: 0,
                    };
                    // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
                    unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
                    size_of::<libc::sockaddr_in6>()
                }
            };
            SockAddr {
                storage,
                len: len as libc::socklen_t,
            }
        }
    }
}

/// Reverse DNS settings.
#[derive(Clone, Debug)]
pub struct DnsSettings {
    pub ttl: Duration,
    pub negative_ttl: Duration,
    pub timeout: Duration,
    pub concurrency: usize,
    pub max_entries: usize,
    /// Addresses waiting for a lookup; requests beyond are dropped (and counted).
    pub queue: usize,
    /// Only addresses inside these networks are looked up.
    pub networks: Vec<ipnet::IpNet>,
}

/// The default networks for reverse lookups: private, shared (CGNAT), link-local, loopback and
/// unique-local ranges, where the names are the operator's own.
pub fn private_networks() -> Vec<ipnet::IpNet> {
    [
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "127.0.0.0/8",
        "fc00::/7",
        "fe80::/10",
        "::1/128",
    ]
    .iter()
    .map(|n| n.parse().expect("constant network"))
    .collect()
}

/// Longest name kept (RFC 1035's limit for a whole name in text form).
const MAX_NAME: usize = 253;

/// A resolver's answer as a label: at most [`MAX_NAME`] bytes of printable characters; anything
/// else is treated as no name (a PTR record is whatever its zone's owner wrote).
fn clean_name(name: &str) -> Option<String> {
    let name = name.trim_end_matches('.');
    (!name.is_empty() && name.len() <= MAX_NAME && !name.chars().any(char::is_control))
        .then(|| name.to_owned())
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            ttl: Duration::from_secs(3600),
            negative_ttl: Duration::from_secs(600),
            timeout: Duration::from_secs(2),
            concurrency: 16,
            max_entries: 100_000,
            queue: 10_000,
            networks: private_networks(),
        }
    }
}

#[derive(Clone, Debug)]
struct Entry {
    name: Option<String>,
    expires: Instant,
}

/// Counters for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsStats {
    pub resolved: u64,
    pub not_found: u64,
    pub failed: u64,
    pub timed_out: u64,
    pub dropped: u64,
}

/// The cache and its request queue. [`DnsCache::run`] does the lookups.
pub struct DnsCache {
    settings: DnsSettings,
    entries: Mutex<HashMap<IpAddr, Entry>>,
    pending: Mutex<HashSet<IpAddr>>,
    tx: mpsc::Sender<IpAddr>,
    stats: Mutex<DnsStats>,
}

impl DnsCache {
    pub fn new(settings: DnsSettings) -> (Arc<DnsCache>, mpsc::Receiver<IpAddr>) {
        let (tx, rx) = mpsc::channel(settings.queue.max(1));
        (
            Arc::new(DnsCache {
                settings,
                entries: Mutex::default(),
                pending: Mutex::default(),
                tx,
                stats: Mutex::default(),
            }),
            rx,
        )
    }

    /// Names known now (expired names are kept until a fresh answer replaces them: an old name
    /// is more useful on a map than none).
    pub fn names(&self) -> HashMap<IpAddr, String> {
        self.entries
            .lock()
            .expect("dns cache lock")
            .iter()
            .filter_map(|(ip, e)| e.name.clone().map(|n| (*ip, n)))
            .collect()
    }

    pub fn stats(&self) -> DnsStats {
        *self.stats.lock().expect("dns stats lock")
    }

    /// Asks for lookups of addresses without a fresh entry; never waits.
    pub fn request(&self, ips: impl IntoIterator<Item = IpAddr>) {
        let now = Instant::now();
        let entries = self.entries.lock().expect("dns cache lock");
        let mut pending = self.pending.lock().expect("dns pending lock");
        let mut dropped = 0;
        for ip in ips {
            if !self.settings.networks.iter().any(|n| n.contains(&ip)) {
                continue;
            }
            if entries.get(&ip).is_some_and(|e| e.expires > now) || pending.contains(&ip) {
                continue;
            }
            match self.tx.try_send(ip) {
                Ok(()) => {
                    pending.insert(ip);
                }
                Err(_) => dropped += 1,
            }
        }
        drop((entries, pending));
        if dropped > 0 {
            self.stats.lock().expect("dns stats lock").dropped += dropped;
        }
    }

    /// Addresses queued or being looked up.
    pub fn pending(&self) -> usize {
        self.pending.lock().expect("dns pending lock").len()
    }

    /// Whether nothing is queued or being looked up.
    pub fn idle(&self) -> bool {
        self.pending.lock().expect("dns pending lock").is_empty()
    }

    fn store(&self, ip: IpAddr, outcome: Result<std::io::Result<Option<String>>, ()>) {
        let now = Instant::now();
        let s = &self.settings;
        let mut stats = self.stats.lock().expect("dns stats lock");
        let entry = match outcome {
            Ok(Ok(Some(name))) if clean_name(&name).is_some() => {
                stats.resolved += 1;
                Some(Entry {
                    name: clean_name(&name),
                    expires: now + s.ttl,
                })
            }
            Ok(Ok(_)) => {
                stats.not_found += 1;
                Some(Entry {
                    name: None,
                    expires: now + s.negative_ttl,
                })
            }
            // A failure or timeout is cached as negative too, so a dead resolver is not asked
            // again for every report; an older name is kept.
            Ok(Err(_)) | Err(()) => {
                if outcome.is_err() {
                    stats.timed_out += 1;
                } else {
                    stats.failed += 1;
                }
                None
            }
        };
        drop(stats);
        let mut entries = self.entries.lock().expect("dns cache lock");
        match entry {
            Some(e) => {
                if entries.len() >= s.max_entries && !entries.contains_key(&ip) {
                    entries.retain(|_, e| e.expires > now);
                }
                if entries.len() < s.max_entries || entries.contains_key(&ip) {
                    entries.insert(ip, e);
                }
            }
            None => {
                let old = entries.get(&ip).and_then(|e| e.name.clone());
                if entries.len() < s.max_entries || entries.contains_key(&ip) {
                    entries.insert(
                        ip,
                        Entry {
                            name: old,
                            expires: now + s.negative_ttl,
                        },
                    );
                }
            }
        }
        drop(entries);
        self.pending.lock().expect("dns pending lock").remove(&ip);
    }

    /// Resolves queued addresses until the queue closes, at most `concurrency` at a time.
    pub async fn run(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<IpAddr>,
        resolver: Arc<dyn ReverseLookup>,
    ) {
        let limit = Arc::new(tokio::sync::Semaphore::new(
            self.settings.concurrency.max(1),
        ));
        while let Some(ip) = rx.recv().await {
            let Ok(permit) = limit.clone().acquire_owned().await else {
                break;
            };
            let cache = self.clone();
            let resolver = resolver.clone();
            let timeout = self.settings.timeout;
            tokio::spawn(async move {
                // The lookup runs as its own task so that it goes on after a timeout: the slot is
                // only given back when it really ends (a blocking `getnameinfo` cannot be
                // cancelled, and giving the slot back early would let hung lookups pile up).
                let mut lookup = tokio::spawn(resolver.lookup(ip));
                match tokio::time::timeout(timeout, &mut lookup).await {
                    Ok(done) => cache.store(
                        ip,
                        Ok(done.unwrap_or_else(|e| Err(std::io::Error::other(e)))),
                    ),
                    Err(_) => {
                        cache.store(ip, Err(()));
                        let _ = lookup.await;
                    }
                }
                drop(permit);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Answers from a table after a delay, counting lookups and the most run at once.
    struct Fake {
        delay: Duration,
        calls: AtomicUsize,
        running: AtomicUsize,
        max_running: AtomicUsize,
    }

    impl ReverseLookup for Arc<Fake> {
        fn lookup(&self, ip: IpAddr) -> BoxFuture<'static, std::io::Result<Option<String>>> {
            let me = self.clone();
            Box::pin(async move {
                me.calls.fetch_add(1, Ordering::SeqCst);
                let now = me.running.fetch_add(1, Ordering::SeqCst) + 1;
                me.max_running.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(me.delay).await;
                me.running.fetch_sub(1, Ordering::SeqCst);
                Ok(match ip.to_string().as_str() {
                    "10.0.0.1" => Some("one.example.".into()),
                    "10.0.0.2" => Some("two.example".into()),
                    _ => None,
                })
            })
        }
    }

    fn fake(delay_ms: u64) -> Arc<Fake> {
        Arc::new(Fake {
            delay: Duration::from_millis(delay_ms),
            calls: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            max_running: AtomicUsize::new(0),
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    async fn settle(cache: &DnsCache) {
        while !cache.idle() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn caches_answers_and_bounds_concurrency() {
        let (cache, rx) = DnsCache::new(DnsSettings {
            concurrency: 3,
            ..DnsSettings::default()
        });
        let f = fake(100);
        tokio::spawn(cache.clone().run(rx, Arc::new(f.clone())));
        let ips: Vec<IpAddr> = (1..=20).map(|i| ip(&format!("10.0.0.{i}"))).collect();
        cache.request(ips.iter().copied());
        // Asking again while pending does not queue twice.
        cache.request(ips.iter().copied());
        settle(&cache).await;
        assert_eq!(f.calls.load(Ordering::SeqCst), 20);
        assert_eq!(f.max_running.load(Ordering::SeqCst), 3);
        let names = cache.names();
        assert_eq!(names.len(), 2);
        assert_eq!(names[&ip("10.0.0.1")], "one.example");
        // Fresh entries (positive and negative) are not looked up again.
        cache.request(ips.iter().copied());
        settle(&cache).await;
        assert_eq!(f.calls.load(Ordering::SeqCst), 20);
        // After the negative TTL only the unnamed ones are asked again; after the TTL all.
        tokio::time::advance(Duration::from_secs(601)).await;
        cache.request(ips.iter().copied());
        settle(&cache).await;
        assert_eq!(f.calls.load(Ordering::SeqCst), 38);
        tokio::time::advance(Duration::from_secs(3600)).await;
        cache.request(ips.iter().copied());
        settle(&cache).await;
        assert_eq!(f.calls.load(Ordering::SeqCst), 58);
        assert_eq!(
            cache.stats(),
            DnsStats {
                resolved: 4,
                not_found: 54,
                ..DnsStats::default()
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn slow_resolver_times_out_and_a_failure_keeps_the_old_name() {
        let (cache, rx) = DnsCache::new(DnsSettings {
            timeout: Duration::from_secs(2),
            ..DnsSettings::default()
        });
        let slow = fake(60_000);
        tokio::spawn(cache.clone().run(rx, Arc::new(slow.clone())));
        let start = Instant::now();
        cache.request([ip("10.0.0.1")]);
        settle(&cache).await;
        let took = start.elapsed();
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_millis(2100),
            "{took:?}"
        );
        assert_eq!(cache.stats().timed_out, 1);
        assert!(cache.names().is_empty());
        // A name learnt earlier survives a failed refresh.
        cache.store(ip("10.0.0.9"), Ok(Ok(Some("nine".into()))));
        cache.store(ip("10.0.0.9"), Ok(Err(std::io::Error::other("SERVFAIL"))));
        assert_eq!(cache.names()[&ip("10.0.0.9")], "nine");
        assert_eq!(cache.stats().failed, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn full_queue_drops_and_counts() {
        let (cache, _rx) = DnsCache::new(DnsSettings {
            queue: 2,
            ..DnsSettings::default()
        });
        cache.request((1..=5).map(|i| ip(&format!("10.1.0.{i}"))));
        assert_eq!(cache.stats().dropped, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_lookup_keeps_its_slot_until_it_really_ends() {
        let (cache, rx) = DnsCache::new(DnsSettings {
            timeout: Duration::from_secs(2),
            concurrency: 2,
            ..DnsSettings::default()
        });
        let hung = fake(60_000);
        tokio::spawn(cache.clone().run(rx, Arc::new(hung.clone())));
        cache.request((1..=6).map(|i| ip(&format!("10.2.0.{i}"))));
        tokio::time::sleep(Duration::from_secs(30)).await;
        // Two timed out after 2 s, but their lookups still run: nobody else was started.
        assert_eq!(hung.calls.load(Ordering::SeqCst), 2);
        assert_eq!(hung.max_running.load(Ordering::SeqCst), 2);
        assert_eq!(cache.stats().timed_out, 2);
        settle(&cache).await;
        assert_eq!(hung.calls.load(Ordering::SeqCst), 6);
        assert_eq!(hung.max_running.load(Ordering::SeqCst), 2);
        assert_eq!(cache.stats().timed_out, 6);
    }

    #[tokio::test(start_paused = true)]
    async fn only_addresses_inside_the_networks_are_looked_up() {
        let (cache, rx) = DnsCache::new(DnsSettings::default());
        let f = fake(10);
        tokio::spawn(cache.clone().run(rx, Arc::new(f.clone())));
        // Documentation and public addresses: an agent could name any; not asked by default.
        cache.request([
            ip("203.0.113.5"),
            ip("8.8.8.8"),
            ip("2001:db8::1"),
            ip("10.0.0.1"),
        ]);
        settle(&cache).await;
        assert_eq!(f.calls.load(Ordering::SeqCst), 1);
        assert_eq!(cache.names().len(), 1);
        let (cache, rx) = DnsCache::new(DnsSettings {
            networks: vec!["203.0.113.0/24".parse().unwrap()],
            ..DnsSettings::default()
        });
        tokio::spawn(cache.clone().run(rx, Arc::new(f.clone())));
        cache.request([ip("203.0.113.5"), ip("10.0.0.1")]);
        settle(&cache).await;
        assert_eq!(f.calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn names_with_control_characters_or_too_long_are_no_names() {
        assert_eq!(
            clean_name("db-1.internal.").as_deref(),
            Some("db-1.internal")
        );
        assert_eq!(clean_name("evil\x1b[31m.example"), None);
        assert_eq!(clean_name("a\nb"), None);
        assert_eq!(clean_name(&"a".repeat(253)).map(|n| n.len()), Some(253));
        assert_eq!(clean_name(&"a".repeat(254)), None);
        assert_eq!(clean_name("."), None);
    }

    #[test]
    fn system_resolver_answers_for_loopback_from_hosts_file() {
        // /etc/hosts maps 127.0.0.1 to localhost on every Debian system; no network involved.
        let name = getnameinfo(ip("127.0.0.1")).unwrap();
        assert_eq!(name.as_deref(), Some("localhost"));
    }
}
