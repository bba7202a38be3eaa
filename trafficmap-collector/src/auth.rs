//! Bearer tokens for agents, each bound to the identities it may report as.
//!
//! The token file has one token per line, `#` starting a comment:
//!
//! ```text
//! <secret> <label> <identity> [<identity> ...]
//! ```
//!
//! An identity is `machine-id=<id>`, `hostname=<glob>`, `instance-id=<i-...>`,
//! `addresses=<cidr>` (or a bare address), or the single word `*` (any identity, only because the
//! operator wrote it). A report is accepted from a token only when the token covers everything
//! the report claims (see [`Scope::covers`]); anything else is 403 and nothing is stored.
//!
//! Several tokens at once allow rotation: add the new one, roll it out, remove the old one. The
//! file is re-read when it changes (checked every few seconds and on SIGHUP); a file that became
//! unreadable, empty or invalid keeps the previous tokens and is reported, so a bad edit cannot
//! lock every agent out.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::SystemTime,
};

use ipnet::IpNet;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use trafficmap_model::report::Report;

/// Shortest secret accepted: guessing 16 random characters is out of reach.
pub const MIN_SECRET_LEN: usize = 16;
/// Longest machine id and instance id an identity may name (the report's own bounds).
const MAX_ID_LEN: usize = 128;

/// What a token may report as.
#[derive(Clone, Debug, PartialEq)]
pub enum Scope {
    /// `*`: any identity (the operator's explicit choice).
    Any,
    Limited(Limits),
}

/// The identities of a token line other than `*`.
///
/// The collector keys a host by `host.machine_id`, so every such line names at least one
/// machine id: a token without one could write under any host. The other kinds narrow what the
/// host may claim about itself:
/// - `hostname=` globs: the hostname must match one, if any is given (a hostname is only a
///   label: nothing is looked up by it);
/// - `instance-id=`: a report carrying `host.ec2` must name one of them; with none, a report
///   claiming any EC2 instance is refused (the instance id selects the EC2 data of the node);
/// - `addresses=`: every non-loopback address the report claims as the host's own
///   (`host.addresses` and every pair's `local_ip`) must lie in one of them; with none, only
///   loopback addresses may be claimed (addresses decide which node a peer's traffic lands on).
///   `addresses=0.0.0.0/0 addresses=::/0` allows any address, when the operator writes it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Limits {
    pub machine_ids: Vec<String>,
    pub hostnames: Vec<glob::Pattern>,
    pub instance_ids: Vec<String>,
    pub addresses: Vec<IpNet>,
}

/// Why a report's claimed identity is not covered; the message (after `identity: `) is the
/// 403's body, and starts with the JSON path of the claim.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("identity: {0}")]
pub struct IdentityError(pub String);

impl Scope {
    /// Whether the token may send this report: every identity it claims is covered.
    pub fn covers(&self, r: &Report) -> Result<(), IdentityError> {
        let Scope::Limited(l) = self else {
            return Ok(());
        };
        let host = &r.host;
        if !l.machine_ids.contains(&host.machine_id) {
            return Err(IdentityError(format!(
                "host.machine_id {:?} is not one this token may report as",
                host.machine_id
            )));
        }
        let glob_opts = glob::MatchOptions {
            case_sensitive: false,
            require_literal_separator: false,
            require_literal_leading_dot: false,
        };
        if !l.hostnames.is_empty()
            && !l
                .hostnames
                .iter()
                .any(|g| g.matches_with(&host.hostname, glob_opts))
        {
            return Err(IdentityError(format!(
                "host.hostname {:?} matches no hostname pattern of this token",
                host.hostname
            )));
        }
        if let Some(ec2) = &host.ec2
            && !l.instance_ids.contains(&ec2.instance_id)
        {
            return Err(IdentityError(format!(
                "host.ec2.instance_id {:?} is not one this token may report as",
                ec2.instance_id
            )));
        }
        for (i, a) in host.addresses.iter().enumerate() {
            if !l.allows_address(*a) {
                return Err(IdentityError(format!(
                    "host.addresses[{i}] {a} is outside the addresses of this token"
                )));
            }
        }
        for (i, p) in r.pairs.iter().enumerate() {
            if !l.allows_address(p.local_ip) {
                return Err(IdentityError(format!(
                    "pairs[{i}].local_ip {} is outside the addresses of this token",
                    p.local_ip
                )));
            }
        }
        Ok(())
    }
}

impl Limits {
    fn allows_address(&self, a: IpAddr) -> bool {
        // `::ffff:10.0.0.1` is 10.0.0.1: checked as such, so the mapped form cannot slip past
        // an IPv4 range.
        let a = a.to_canonical();
        a.is_loopback() || self.addresses.iter().any(|n| n.contains(&a))
    }
}

/// A bearer secret, kept only as its SHA-256 digest: comparing digests of a fixed size, in
/// constant time, tells nothing through timing about how much of a secret matched or how long
/// it is. Both token files (agents', readers') compare secrets this one way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Secret([u8; 32]);

impl Secret {
    pub fn new(secret: &[u8]) -> Secret {
        Secret(Sha256::digest(secret).into())
    }

    /// Constant-time equality.
    pub fn matches(&self, other: &Secret) -> bool {
        bool::from(self.0[..].ct_eq(&other.0[..]))
    }
}

/// One accepted token.
#[derive(Clone, Debug)]
struct Token {
    digest: Secret,
    label: String,
    scope: Arc<Scope>,
}

/// What a good token grants: its label (for logs) and what it may report as.
#[derive(Clone, Debug, PartialEq)]
pub struct Grant {
    pub label: String,
    pub scope: Arc<Scope>,
}

#[derive(Clone, Debug, Default)]
pub struct Tokens {
    tokens: Vec<Token>,
}

/// One identity word of a token line.
fn identity(word: &str, limits: &mut Limits) -> Result<(), String> {
    let (kind, value) = word.split_once('=').ok_or_else(|| {
        format!(
            "`{word}` is not an identity (machine-id=, hostname=, instance-id=, addresses= or *)"
        )
    })?;
    if value.is_empty() {
        return Err(format!("`{word}`: empty value"));
    }
    match kind {
        "machine-id" | "instance-id" if value.len() > MAX_ID_LEN => {
            return Err(format!("`{kind}=`: at most {MAX_ID_LEN} characters"));
        }
        "machine-id" => limits.machine_ids.push(value.to_owned()),
        "instance-id" => limits.instance_ids.push(value.to_owned()),
        "hostname" => limits.hostnames.push(
            glob::Pattern::new(value).map_err(|e| format!("`{word}`: not a glob pattern ({e})"))?,
        ),
        "addresses" => limits.addresses.push(
            value
                .parse::<IpNet>()
                .or_else(|_| value.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("`{word}`: not an address or CIDR block"))?,
        ),
        _ => {
            return Err(format!(
                "`{kind}=` is not an identity kind (machine-id, hostname, instance-id, addresses)"
            ));
        }
    }
    Ok(())
}

/// A line's label and identities (everything after the secret).
fn grant<'a>(mut words: impl Iterator<Item = &'a str>) -> Result<(String, Scope), String> {
    let label = words
        .next()
        .ok_or("no label and no identity: write `<secret> <label> <identity>...`")?;
    if label == "*" || label.contains('=') {
        return Err(format!(
            "`{label}` stands where the label goes: write `<secret> <label> <identity>...`"
        ));
    }
    let words: Vec<&str> = words.collect();
    if words.is_empty() {
        return Err(format!(
            "token `{label}` names no identity (machine-id=..., or * for any)"
        ));
    }
    if words.contains(&"*") {
        if words.len() > 1 {
            return Err(format!("token `{label}`: `*` (any identity) stands alone"));
        }
        return Ok((label.to_owned(), Scope::Any));
    }
    let mut limits = Limits::default();
    for w in words {
        identity(w, &mut limits).map_err(|e| format!("token `{label}`: {e}"))?;
    }
    if limits.machine_ids.is_empty() {
        return Err(format!(
            "token `{label}` names no machine-id= (hosts are keyed by machine id; `*` allows any)"
        ));
    }
    Ok((label.to_owned(), Scope::Limited(limits)))
}

/// One line of a token file (the agents' or the readers'): its number (from 1), the secret and
/// the words after it. Comments (`#`) and blank lines are skipped; a secret shorter than
/// [`MIN_SECRET_LEN`] is refused, naming the line.
pub struct TokenLine<'a> {
    pub number: usize,
    pub secret: &'a str,
    pub rest: std::str::SplitWhitespace<'a>,
}

pub fn token_lines<'a>(
    text: &'a str,
    origin: &'a str,
) -> impl Iterator<Item = Result<TokenLine<'a>, String>> + 'a {
    text.lines().enumerate().filter_map(move |(n, line)| {
        let line = line.split('#').next().unwrap_or_default().trim();
        let mut words = line.split_whitespace();
        let secret = words.next()?;
        if secret.len() < MIN_SECRET_LEN {
            return Some(Err(format!(
                "{origin}:{}: token too short ({} characters, at least {MIN_SECRET_LEN})",
                n + 1,
                secret.len()
            )));
        }
        Some(Ok(TokenLine {
            number: n + 1,
            secret,
            rest: words,
        }))
    })
}

impl Tokens {
    pub fn parse(text: &str, origin: &str) -> Result<Tokens, String> {
        let mut tokens: Vec<Token> = Vec::new();
        for line in token_lines(text, origin) {
            let TokenLine {
                number,
                secret,
                rest: words,
            } = line?;
            let at = |e: String| format!("{origin}:{number}: {e}");
            let (label, scope) = grant(words).map_err(at)?;
            let digest = Secret::new(secret.as_bytes());
            if tokens.iter().any(|t| t.digest == digest) {
                // Two scopes for one secret: which one applies would depend on the order.
                return Err(at(format!(
                    "token `{label}` repeats the secret of an earlier line"
                )));
            }
            tokens.push(Token {
                digest,
                label,
                scope: Arc::new(scope),
            });
        }
        if tokens.is_empty() {
            return Err(format!("{origin}: no tokens"));
        }
        Ok(Tokens { tokens })
    }

    pub fn load(path: &Path) -> Result<Tokens, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Tokens::parse(&text, &path.display().to_string())
    }

    /// The matching token's grant, if any. Every token is compared, matching or not, in
    /// constant time over fixed-size digests.
    pub fn check(&self, presented: &[u8]) -> Option<Grant> {
        let want = Secret::new(presented);
        let mut found = None;
        for t in &self.tokens {
            if t.digest.matches(&want) && found.is_none() {
                found = Some(Grant {
                    label: t.label.clone(),
                    scope: t.scope.clone(),
                });
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

/// What the HTTP layer asks: is this `Authorization` header good?
pub enum Auth {
    /// `--allow-unauthenticated`.
    Open,
    /// No token file: every report is refused (a collector that only serves maps).
    Closed,
    File(Arc<TokenFile>),
}

#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    NoTokens,
    Missing,
    Malformed,
    Unknown,
}

impl Auth {
    pub fn check(&self, header: Option<&[u8]>) -> Result<Grant, Denied> {
        let f = match self {
            Auth::Open => {
                return Ok(Grant {
                    label: "unauthenticated".into(),
                    scope: Arc::new(Scope::Any),
                });
            }
            Auth::Closed => return Err(Denied::NoTokens),
            Auth::File(f) => f,
        };
        let header = header.ok_or(Denied::Missing)?;
        let token = header
            .strip_prefix(b"Bearer ")
            .or_else(|| header.strip_prefix(b"bearer "))
            .ok_or(Denied::Malformed)?;
        let token = token.trim_ascii();
        f.current().check(token).ok_or(Denied::Unknown)
    }
}

/// Modification time and size of a file, to notice changes.
pub type Stamp = Option<(SystemTime, u64)>;

/// What a [`WatchedFile`] holds: where it is read from, how it is loaded, and how many entries
/// it has (for the log). The agents' and the readers' token files and the TLS certificate are
/// all watched this one way.
pub trait FileContent: Sized + Send + Sync + 'static {
    /// The `source` label of the refresh metrics, and the log's name for the file.
    const SOURCE: &'static str;
    /// The file's path (or paths, when one content is read from several files).
    type Paths: Send + Sync;
    fn files(paths: &Self::Paths) -> Vec<&Path>;
    fn load(paths: &Self::Paths) -> Result<Self, String>;
    fn entries(&self) -> usize;
}

/// A file re-read when the modification time or size of any of its files changes; a broken new
/// version keeps the previous content, so a bad edit cannot lock everyone out.
pub struct WatchedFile<T: FileContent> {
    paths: T::Paths,
    state: RwLock<(Arc<T>, Vec<Stamp>)>,
}

/// The agents' token file.
pub type TokenFile = WatchedFile<Tokens>;

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    Unchanged,
    Loaded(usize),
    /// The file is broken: the previous content is kept.
    Failed(String),
}

impl<T: FileContent> WatchedFile<T> {
    pub fn open(paths: T::Paths) -> Result<WatchedFile<T>, String> {
        // Stamped before reading: a change while loading is seen at the next poll.
        let stamps = Self::stamps(&paths);
        let content = T::load(&paths)?;
        Ok(WatchedFile {
            paths,
            state: RwLock::new((Arc::new(content), stamps)),
        })
    }

    fn stamps(paths: &T::Paths) -> Vec<Stamp> {
        T::files(paths).into_iter().map(stamp).collect()
    }

    pub fn current(&self) -> Arc<T> {
        // A poisoned lock still holds a whole value (it is only ever replaced whole).
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0
            .clone()
    }

    /// Re-reads the file if it changed (or always, with `force`).
    pub fn reload(&self, force: bool) -> Reload {
        let now = Self::stamps(&self.paths);
        if !force
            && now
                == self
                    .state
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .1
        {
            return Reload::Unchanged;
        }
        match T::load(&self.paths) {
            Ok(t) => {
                let n = t.entries();
                *self
                    .state
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = (Arc::new(t), now);
                Reload::Loaded(n)
            }
            Err(e) => {
                // Remember the broken version so it is reported once, not every poll. (A
                // certificate and key replaced one after the other load at the second write.)
                self.state
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .1 = now;
                Reload::Failed(e)
            }
        }
    }
}

impl FileContent for Tokens {
    const SOURCE: &'static str = "tokens";
    type Paths = PathBuf;

    fn files(path: &PathBuf) -> Vec<&Path> {
        vec![path]
    }

    fn load(path: &PathBuf) -> Result<Tokens, String> {
        Tokens::load(path)
    }

    fn entries(&self) -> usize {
        self.len()
    }
}

pub fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// A new token line for `token issue`: a fresh random secret (32 bytes from the OS, hex), the
/// label and the identities, checked by the same parser the collector uses.
pub fn issue(label: &str, identities: &[String]) -> Result<String, String> {
    // A space would split a word in two, a `#` would end the line there.
    if let Some(w) = std::iter::once(label)
        .chain(identities.iter().map(String::as_str))
        .find(|w| w.is_empty() || w.contains(|c: char| c.is_whitespace() || c == '#'))
    {
        return Err(format!(
            "`{w}`: labels and identities are single words without `#`"
        ));
    }
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| format!("no randomness from the OS: {e}"))?;
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let line = format!("{hex} {label} {}", identities.join(" "));
    // Whatever the collector would refuse to load is refused here, before anyone copies it.
    Tokens::parse(&line, "token").map_err(|e| e.trim_start_matches("token:1: ").to_owned())?;
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_check_and_labels() {
        let t = Tokens::parse(
            "# agents\n0123456789abcdef  fleet-2026 *\n\nfedcba9876543210fedcba web-1 machine-id=m1 # old\n",
            "tokens",
        )
        .unwrap();
        assert_eq!(t.len(), 2);
        let g = t.check(b"0123456789abcdef").unwrap();
        assert_eq!((g.label.as_str(), &*g.scope), ("fleet-2026", &Scope::Any));
        let g = t.check(b"fedcba9876543210fedcba").unwrap();
        assert_eq!(g.label, "web-1");
        assert_eq!(
            *g.scope,
            Scope::Limited(Limits {
                machine_ids: vec!["m1".into()],
                ..Limits::default()
            })
        );
        assert_eq!(t.check(b"0123456789abcdeX"), None);
        assert_eq!(t.check(b"0123456789abcde"), None);
        assert_eq!(t.check(b""), None);
    }

    #[test]
    fn load_errors_name_the_line() {
        let err = |text: &str| Tokens::parse(text, "t").unwrap_err();
        assert_eq!(
            err("short *\n"),
            "t:1: token too short (5 characters, at least 16)"
        );
        assert_eq!(err("# nothing\n"), "t: no tokens");
        assert_eq!(
            err("# c\naaaaaaaaaaaaaaaa\n"),
            "t:2: no label and no identity: write `<secret> <label> <identity>...`"
        );
        assert_eq!(
            err("aaaaaaaaaaaaaaaa old-label\n"),
            "t:1: token `old-label` names no identity (machine-id=..., or * for any)"
        );
        assert_eq!(
            err("aaaaaaaaaaaaaaaa *\n"),
            "t:1: `*` stands where the label goes: write `<secret> <label> <identity>...`"
        );
        assert_eq!(
            err("aaaaaaaaaaaaaaaa machine-id=m1\n"),
            "t:1: `machine-id=m1` stands where the label goes: write `<secret> <label> <identity>...`"
        );
        assert_eq!(
            err("aaaaaaaaaaaaaaaa a * machine-id=m1\n"),
            "t:1: token `a`: `*` (any identity) stands alone"
        );
        assert_eq!(
            err("aaaaaaaaaaaaaaaa a hostname=web-*\n"),
            "t:1: token `a` names no machine-id= (hosts are keyed by machine id; `*` allows any)"
        );
        assert_eq!(
            err("aaaaaaaaaaaaaaaa a machine-id=m addresses=10.0.0.0/33\n"),
            "t:1: token `a`: `addresses=10.0.0.0/33`: not an address or CIDR block"
        );
        assert_eq!(
            err("aaaaaaaaaaaaaaaa a machine-id=m color=red\n"),
            "t:1: token `a`: `color=` is not an identity kind (machine-id, hostname, instance-id, addresses)"
        );
        assert_eq!(
            err("aaaaaaaaaaaaaaaa a machine-id=m web-1\n"),
            "t:1: token `a`: `web-1` is not an identity (machine-id=, hostname=, instance-id=, addresses= or *)"
        );
        assert_eq!(
            err("aaaaaaaaaaaaaaaa a machine-id=\n"),
            "t:1: token `a`: `machine-id=`: empty value"
        );
        assert_eq!(
            err("aaaaaaaaaaaaaaaa a machine-id=m hostname=[\n"),
            "t:1: token `a`: `hostname=[`: not a glob pattern (Pattern syntax error near position 0: invalid range pattern)"
        );
        assert_eq!(
            err(&format!(
                "aaaaaaaaaaaaaaaa a machine-id={}\n",
                "m".repeat(129)
            )),
            "t:1: token `a`: `machine-id=`: at most 128 characters"
        );
        assert_eq!(
            err("aaaaaaaaaaaaaaaa a *\naaaaaaaaaaaaaaaa b machine-id=m\n"),
            "t:2: token `b` repeats the secret of an earlier line"
        );
    }

    fn report(machine_id: &str, hostname: &str, addresses: &[&str], locals: &[&str]) -> Report {
        let mut v: serde_json::Value =
            serde_json::from_str(include_str!("../../schema/report-v1.example.json")).unwrap();
        v["host"]["machine_id"] = machine_id.into();
        v["host"]["hostname"] = hostname.into();
        v["host"]["addresses"] = serde_json::json!(addresses);
        let pair = v["pairs"][0].clone();
        v["pairs"] = locals
            .iter()
            .map(|l| {
                let mut p = pair.clone();
                p["local_ip"] = (*l).into();
                p
            })
            .collect();
        serde_json::from_value(v).unwrap()
    }

    fn scope(line: &str) -> Arc<Scope> {
        Tokens::parse(&format!("aaaaaaaaaaaaaaaa t {line}\n"), "t")
            .unwrap()
            .check(b"aaaaaaaaaaaaaaaa")
            .unwrap()
            .scope
    }

    fn covers(line: &str, r: &Report) -> Result<(), String> {
        scope(line).covers(r).map_err(|e| e.to_string())
    }

    #[test]
    fn a_token_covers_only_its_identities() {
        let mut r = report("m1", "web-1", &["10.0.0.5"], &["10.0.0.5", "127.0.0.1"]);
        r.host.ec2 = None;
        let line = "machine-id=m1 machine-id=m2 hostname=web-* addresses=10.0.0.0/24";
        assert_eq!(covers(line, &r), Ok(()));
        assert_eq!(covers("*", &r), Ok(()));
        // Another host's key: refused, whatever else matches.
        r.host.machine_id = "victim".into();
        assert_eq!(
            covers(line, &r),
            Err("identity: host.machine_id \"victim\" is not one this token may report as".into())
        );
        r.host.machine_id = "m2".into();
        assert_eq!(covers(line, &r), Ok(()));
        // Hostname patterns, case-insensitive (DNS names are).
        r.host.hostname = "WEB-2".into();
        assert_eq!(covers(line, &r), Ok(()));
        r.host.hostname = "db-1".into();
        assert_eq!(
            covers(line, &r),
            Err(
                "identity: host.hostname \"db-1\" matches no hostname pattern of this token".into()
            )
        );
        // No hostname= at all: any hostname (a label only).
        assert_eq!(covers("machine-id=m2 addresses=10.0.0.0/24", &r), Ok(()));
    }

    #[test]
    fn addresses_must_lie_in_the_tokens_blocks() {
        let line = "machine-id=m1 addresses=10.0.0.0/24 addresses=fd00::1";
        let mut r = report("m1", "h", &["10.0.0.5", "fd00::1"], &["10.0.0.9", "::1"]);
        r.host.ec2 = None;
        assert_eq!(covers(line, &r), Ok(()));
        r.host.addresses.push("10.0.1.1".parse().unwrap());
        assert_eq!(
            covers(line, &r),
            Err(
                "identity: host.addresses[2] 10.0.1.1 is outside the addresses of this token"
                    .into()
            )
        );
        r.host.addresses.pop();
        // The victim's address as the local end of a pair.
        r.pairs[1].local_ip = "192.0.2.7".parse().unwrap();
        assert_eq!(
            covers(line, &r),
            Err(
                "identity: pairs[1].local_ip 192.0.2.7 is outside the addresses of this token"
                    .into()
            )
        );
        // The IPv4-mapped form of an outside address is outside too; of an inside one, inside.
        r.pairs[1].local_ip = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(
            covers(line, &r),
            Err("identity: pairs[1].local_ip ::ffff:192.0.2.7 is outside the addresses of this token".into())
        );
        r.pairs[1].local_ip = "::ffff:10.0.0.7".parse().unwrap();
        assert_eq!(covers(line, &r), Ok(()));
        // Without addresses=, only loopback may be claimed.
        assert_eq!(
            covers("machine-id=m1", &r),
            Err(
                "identity: host.addresses[0] 10.0.0.5 is outside the addresses of this token"
                    .into()
            )
        );
        let mut lo = report("m1", "h", &[], &["127.0.0.1", "::1"]);
        lo.host.ec2 = None;
        assert_eq!(covers("machine-id=m1", &lo), Ok(()));
        // Any address, when written so.
        assert_eq!(
            covers("machine-id=m1 addresses=0.0.0.0/0 addresses=::/0", &r),
            Ok(())
        );
    }

    #[test]
    fn an_ec2_claim_needs_its_instance_id() {
        let r = report("m1", "h", &["10.0.0.5"], &["10.0.0.5"]);
        let id = r.host.ec2.as_ref().unwrap().instance_id.clone();
        let base = "machine-id=m1 addresses=10.0.0.0/8";
        assert_eq!(
            covers(base, &r),
            Err(format!(
                "identity: host.ec2.instance_id {id:?} is not one this token may report as"
            ))
        );
        assert_eq!(
            covers(&format!("{base} instance-id=i-0other"), &r),
            Err(format!(
                "identity: host.ec2.instance_id {id:?} is not one this token may report as"
            ))
        );
        assert_eq!(covers(&format!("{base} instance-id={id}"), &r), Ok(()));
    }

    #[test]
    fn issued_lines_load_and_differ() {
        let ids = [
            "machine-id=abc".to_owned(),
            "addresses=10.0.0.7/32".to_owned(),
        ];
        let a = issue("web-1", &ids).unwrap();
        let b = issue("web-1", &ids).unwrap();
        assert_ne!(a, b);
        let secret = a.split(' ').next().unwrap();
        assert_eq!(secret.len(), 64);
        assert!(secret.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(&a[64..], " web-1 machine-id=abc addresses=10.0.0.7/32");
        let t = Tokens::parse(&a, "t").unwrap();
        assert_eq!(t.check(secret.as_bytes()).unwrap().label, "web-1");
        assert_eq!(
            issue("web 1", &ids).unwrap_err(),
            "`web 1`: labels and identities are single words without `#`"
        );
        assert_eq!(
            issue("web-1", &["machine-id=a#b".into()]).unwrap_err(),
            "`machine-id=a#b`: labels and identities are single words without `#`"
        );
        assert_eq!(
            issue("web-1", &["hostname=web-*".into()]).unwrap_err(),
            "token `web-1` names no machine-id= (hosts are keyed by machine id; `*` allows any)"
        );
    }

    #[test]
    fn header_forms() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "0123456789abcdef agent *\n").unwrap();
        let auth = Auth::File(Arc::new(TokenFile::open(path.clone()).unwrap()));
        assert_eq!(
            auth.check(Some(b"Bearer 0123456789abcdef"))
                .map(|g| g.label),
            Ok("agent".into())
        );
        assert_eq!(auth.check(None), Err(Denied::Missing));
        assert_eq!(auth.check(Some(b"Basic abc")), Err(Denied::Malformed));
        assert_eq!(
            auth.check(Some(b"Bearer nope-nope-nope-nope")),
            Err(Denied::Unknown)
        );
        assert_eq!(
            Auth::Open.check(None),
            Ok(Grant {
                label: "unauthenticated".into(),
                scope: Arc::new(Scope::Any)
            })
        );
        assert_eq!(
            Auth::Closed.check(Some(b"Bearer 0123456789abcdef")),
            Err(Denied::NoTokens)
        );
    }

    #[test]
    fn reload_on_change_and_keep_on_breakage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "aaaaaaaaaaaaaaaa a *\n").unwrap();
        let f = TokenFile::open(path.clone()).unwrap();
        assert_eq!(f.reload(false), Reload::Unchanged);
        std::fs::write(&path, "aaaaaaaaaaaaaaaa a *\nbbbbbbbbbbbbbbbbbb b *\n").unwrap();
        assert_eq!(f.reload(false), Reload::Loaded(2));
        assert!(f.current().check(b"bbbbbbbbbbbbbbbbbb").is_some());
        // Emptied by mistake: the old tokens stay.
        std::fs::write(&path, "").unwrap();
        assert!(matches!(f.reload(false), Reload::Failed(m) if m.ends_with("no tokens")));
        assert!(f.current().check(b"aaaaaaaaaaaaaaaa").is_some());
        assert_eq!(f.reload(false), Reload::Unchanged);
        // An old-format line (no identity) is an error too, and keeps the tokens.
        std::fs::write(&path, "aaaaaaaaaaaaaaaa a\n").unwrap();
        assert!(
            matches!(f.reload(false), Reload::Failed(m) if m.ends_with(":1: token `a` names no identity (machine-id=..., or * for any)"))
        );
        assert!(f.current().check(b"bbbbbbbbbbbbbbbbbb").is_some());
        std::fs::write(&path, "cccccccccccccccc c *\n").unwrap();
        assert_eq!(f.reload(true), Reload::Loaded(1));
        assert!(f.current().check(b"aaaaaaaaaaaaaaaa").is_none());
    }
}
