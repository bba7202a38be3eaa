//! Who may read: read-only bearer tokens, a trusted authenticating proxy's user header, and the
//! Host allowlist that keeps DNS rebinding away from a loopback-bound collector.
//!
//! Read tokens live in their own file (`read_token_file`), one per line: `<secret> [label]`, `#`
//! comments, like the agents' token file but without identities: a read token speaks for no
//! host, so a line with more than a label is refused. Agent tokens never grant reads and read
//! tokens never grant reports. The file is re-read when it changes (same poll and SIGHUP as the
//! agents' file); a broken edit keeps the previous tokens.
//!
//! This module is separate from `auth.rs` (the agents' tokens and identities) on purpose: the two
//! files have different line formats and different holders.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use axum::http::{HeaderMap, HeaderName, header};
use ipnet::IpNet;

use crate::auth::{FileContent, Secret, TokenLine, WatchedFile, token_lines};

/// Most tokens in a read token file (a bound on the work of one check).
const MAX_TOKENS: usize = 4096;
/// Longest label kept (labels go to logs).
const MAX_LABEL: usize = 128;

#[derive(Clone, Debug)]
struct ReadToken {
    secret: Secret,
    label: String,
}

/// The parsed read token file.
#[derive(Clone, Debug, Default)]
pub struct ReadTokens {
    tokens: Vec<ReadToken>,
}

impl ReadTokens {
    pub fn parse(text: &str, origin: &str) -> Result<ReadTokens, String> {
        let mut tokens = Vec::new();
        for line in token_lines(text, origin) {
            let TokenLine {
                number,
                secret,
                rest: mut parts,
            } = line?;
            let label = parts.next();
            if parts.next().is_some() {
                return Err(format!(
                    "{origin}:{}: a read token line is `<token> [label]`: identities are not allowed in a read token file",
                    number
                ));
            }
            if label.is_some_and(|l| l.len() > MAX_LABEL) {
                return Err(format!(
                    "{origin}:{}: label longer than {MAX_LABEL} bytes",
                    number
                ));
            }
            if tokens.len() == MAX_TOKENS {
                return Err(format!("{origin}: more than {MAX_TOKENS} tokens"));
            }
            tokens.push(ReadToken {
                secret: Secret::new(secret.as_bytes()),
                label: label.map_or_else(|| format!("line {number}"), str::to_owned),
            });
        }
        if tokens.is_empty() {
            return Err(format!("{origin}: no tokens"));
        }
        Ok(ReadTokens { tokens })
    }

    pub fn load(path: &Path) -> Result<ReadTokens, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        ReadTokens::parse(&text, &path.display().to_string())
    }

    /// The label of the matching token. Every token is compared, matching or not.
    pub fn check(&self, presented: &[u8]) -> Option<&str> {
        let want = Secret::new(presented);
        let mut found = None;
        for t in &self.tokens {
            if t.secret.matches(&want) && found.is_none() {
                found = Some(t.label.as_str());
            }
        }
        found
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }
}

/// The read token file, watched like the agents' (same poll and SIGHUP).
pub type ReadTokenFile = WatchedFile<ReadTokens>;

impl FileContent for ReadTokens {
    const SOURCE: &'static str = "read_tokens";
    type Paths = PathBuf;

    fn files(path: &PathBuf) -> Vec<&Path> {
        vec![path]
    }

    fn load(path: &PathBuf) -> Result<ReadTokens, String> {
        ReadTokens::load(path)
    }

    fn entries(&self) -> usize {
        self.len()
    }
}

/// Why a read was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadDenied {
    #[error("host: `{0}` is not an allowed host name for this collector (see allowed_hosts)")]
    Host(String),
    #[error("host: missing Host header")]
    NoHost,
    #[error("missing `Authorization: Bearer <read token>` header")]
    Missing,
    #[error("the Authorization header must be `Bearer <read token>`")]
    Malformed,
    #[error("unknown read token")]
    Unknown,
}

/// Who is reading, once allowed (for the logs).
#[derive(Debug, PartialEq, Eq)]
pub enum Reader {
    /// No read protection configured (loopback, or `allow_anonymous_reads`).
    Anonymous,
    Token(String),
    Proxy(String),
}

/// The read policy, built once from the configuration.
pub struct ReadAccess {
    pub tokens: Option<Arc<ReadTokenFile>>,
    pub proxies: Vec<IpNet>,
    pub user_header: Option<HeaderName>,
    /// Host names (without port, lower case) a request may address; `None`: no check.
    pub hosts: Option<Vec<String>>,
}

/// Host names a loopback collector answers to when `allowed_hosts` is not set.
pub const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

impl ReadAccess {
    /// From the configuration's read settings (`tokens` already opened).
    pub fn new(cfg: &crate::config::Config, tokens: Option<Arc<ReadTokenFile>>) -> ReadAccess {
        let hosts = match &cfg.allowed_hosts {
            Some(h) => Some(h.iter().map(|h| h.to_ascii_lowercase()).collect()),
            None if cfg.listen.ip().is_loopback() => {
                Some(LOOPBACK_HOSTS.iter().map(|h| (*h).to_owned()).collect())
            }
            None => None,
        };
        ReadAccess {
            tokens,
            proxies: cfg.trusted_proxies.clone(),
            user_header: cfg
                .proxy_user_header
                .as_deref()
                .and_then(|h| HeaderName::try_from(h).ok()),
            hosts,
        }
    }

    /// The Host check (DNS rebinding): the request's host name, port removed, must be listed.
    pub fn check_host(&self, headers: &HeaderMap) -> Result<(), ReadDenied> {
        let Some(allowed) = &self.hosts else {
            return Ok(());
        };
        let raw = headers.get(header::HOST).ok_or(ReadDenied::NoHost)?;
        let host = raw.to_str().map(host_name).unwrap_or_default();
        if !host.is_empty() && allowed.iter().any(|a| a.eq_ignore_ascii_case(host)) {
            return Ok(());
        }
        // Shown to the client: cut and made printable so the message cannot carry junk.
        let shown: String = String::from_utf8_lossy(raw.as_bytes())
            .chars()
            .take(100)
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        Err(ReadDenied::Host(shown))
    }

    /// Whether reads need a credential at all.
    pub fn protected(&self) -> bool {
        self.tokens.is_some() || !self.proxies.is_empty()
    }

    /// A read from `peer` with these headers: a read token, or a trusted proxy's user header.
    /// The user header from any other address is ignored.
    pub fn check(&self, peer: Option<IpAddr>, headers: &HeaderMap) -> Result<Reader, ReadDenied> {
        if !self.protected() {
            return Ok(Reader::Anonymous);
        }
        if let (Some(peer), Some(name)) = (peer, &self.user_header)
            && self.proxies.iter().any(|n| n.contains(&canonical(peer)))
            && let Some(user) = headers.get(name).and_then(|v| v.to_str().ok())
            && !user.trim().is_empty()
        {
            return Ok(Reader::Proxy(user.trim().chars().take(128).collect()));
        }
        let header = headers
            .get(header::AUTHORIZATION)
            .ok_or(ReadDenied::Missing)?
            .as_bytes();
        let token = header
            .strip_prefix(b"Bearer ")
            .or_else(|| header.strip_prefix(b"bearer "))
            .ok_or(ReadDenied::Malformed)?
            .trim_ascii();
        let tokens = self.tokens.as_ref().ok_or(ReadDenied::Unknown)?.current();
        tokens
            .check(token)
            .map(|l| Reader::Token(l.to_owned()))
            .ok_or(ReadDenied::Unknown)
    }
}

/// An IPv4-mapped IPv6 peer (a dual-stack socket) as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The host name of a Host header value: `name`, `name:port`, `[v6]` or `[v6]:port`.
fn host_name(value: &str) -> &str {
    if value.starts_with('[') {
        return match value.find(']') {
            Some(end) => &value[..=end],
            None => "",
        };
    }
    match value.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Reload;

    fn access(hosts: Option<&[&str]>, proxies: &[&str], tokens: Option<&Path>) -> ReadAccess {
        ReadAccess {
            tokens: tokens.map(|p| Arc::new(ReadTokenFile::open(p.to_owned()).unwrap())),
            proxies: proxies.iter().map(|p| p.parse().unwrap()).collect(),
            user_header: Some(HeaderName::from_static("x-forwarded-user")),
            hosts: hosts.map(|h| h.iter().map(|s| (*s).to_owned()).collect()),
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn parse_label_only() {
        let t = ReadTokens::parse(
            "# readers\n0123456789abcdef alice\nfedcba9876543210 # x\n",
            "r",
        )
        .unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t.check(b"0123456789abcdef"), Some("alice"));
        assert_eq!(t.check(b"fedcba9876543210"), Some("line 3"));
        assert_eq!(t.check(b"0123456789abcdeX"), None);
        assert_eq!(t.check(b"0123456789abcde"), None);
        assert_eq!(t.check(b"0123456789abcdef0"), None);
        assert_eq!(t.check(b""), None);
        assert_eq!(
            ReadTokens::parse("0123456789abcdef bob machine-id=x\n", "r").unwrap_err(),
            "r:1: a read token line is `<token> [label]`: identities are not allowed in a read token file"
        );
        assert_eq!(
            ReadTokens::parse("short\n", "r").unwrap_err(),
            "r:1: token too short (5 characters, at least 16)"
        );
        assert_eq!(ReadTokens::parse("\n#\n", "r").unwrap_err(), "r: no tokens");
    }

    #[test]
    fn host_names() {
        assert_eq!(host_name("localhost:9978"), "localhost");
        assert_eq!(host_name("127.0.0.1"), "127.0.0.1");
        assert_eq!(host_name("[::1]:80"), "[::1]");
        assert_eq!(host_name("[::1"), "");
        assert_eq!(host_name("evil.test:x"), "evil.test:x");
        let a = access(Some(&LOOPBACK_HOSTS), &[], None);
        assert_eq!(
            a.check_host(&headers(&[("host", "127.0.0.1:9978")])),
            Ok(())
        );
        assert_eq!(a.check_host(&headers(&[("host", "LOCALHOST")])), Ok(()));
        assert_eq!(a.check_host(&headers(&[("host", "[::1]:1")])), Ok(()));
        assert_eq!(
            a.check_host(&headers(&[("host", "evil.test:9978")])),
            Err(ReadDenied::Host("evil.test:9978".into()))
        );
        assert_eq!(a.check_host(&HeaderMap::new()), Err(ReadDenied::NoHost));
        assert_eq!(
            access(None, &[], None).check_host(&headers(&[("host", "evil.test")])),
            Ok(())
        );
    }

    #[test]
    fn tokens_and_proxies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("read");
        std::fs::write(&path, "0123456789abcdef viewer\n").unwrap();
        let a = access(None, &["127.0.0.1/32"], Some(&path));
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let user = headers(&[("x-forwarded-user", "carol")]);
        assert_eq!(a.check(Some(lo), &user), Ok(Reader::Proxy("carol".into())));
        assert_eq!(
            a.check(Some(mapped), &user),
            Ok(Reader::Proxy("carol".into()))
        );
        assert_eq!(a.check(Some(other), &user), Err(ReadDenied::Missing));
        assert_eq!(a.check(None, &user), Err(ReadDenied::Missing));
        assert_eq!(
            a.check(Some(lo), &headers(&[("x-forwarded-user", " ")])),
            Err(ReadDenied::Missing)
        );
        let bearer = headers(&[("authorization", "Bearer 0123456789abcdef")]);
        assert_eq!(
            a.check(Some(other), &bearer),
            Ok(Reader::Token("viewer".into()))
        );
        assert_eq!(
            a.check(
                Some(other),
                &headers(&[("authorization", "Bearer nope-nope-nope-nope")])
            ),
            Err(ReadDenied::Unknown)
        );
        assert_eq!(
            a.check(Some(other), &headers(&[("authorization", "Basic x")])),
            Err(ReadDenied::Malformed)
        );
        // Proxies only: a bearer token is unknown (there are no read tokens).
        let p = access(None, &["10.0.0.0/8"], None);
        assert_eq!(p.check(Some(lo), &bearer), Err(ReadDenied::Unknown));
        // Nothing configured: open.
        let open = access(None, &[], None);
        assert_eq!(open.check(None, &HeaderMap::new()), Ok(Reader::Anonymous));
    }

    #[test]
    fn reload_keeps_tokens_on_breakage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("read");
        std::fs::write(&path, "aaaaaaaaaaaaaaaa\n").unwrap();
        let f = ReadTokenFile::open(path.clone()).unwrap();
        assert_eq!(f.reload(false), Reload::Unchanged);
        std::fs::write(&path, "aaaaaaaaaaaaaaaa\nbbbbbbbbbbbbbbbbbb\n").unwrap();
        assert_eq!(f.reload(false), Reload::Loaded(2));
        std::fs::write(&path, "").unwrap();
        assert!(matches!(f.reload(false), Reload::Failed(m) if m.ends_with("no tokens")));
        assert!(f.current().check(b"bbbbbbbbbbbbbbbbbb").is_some());
    }
}
