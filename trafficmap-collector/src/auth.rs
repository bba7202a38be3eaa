//! Bearer tokens for agents: a file with one token per line (an optional label after white
//! space names it in logs; `#` starts a comment). Several tokens at once allow rotation: add the
//! new one, roll it out, remove the old one. The file is re-read when it changes (checked every
//! few seconds and on SIGHUP); a file that became unreadable or empty keeps the previous tokens
//! and is reported, so a bad edit cannot lock every agent out.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::SystemTime,
};

/// One accepted token.
#[derive(Clone, Debug)]
struct Token {
    secret: Vec<u8>,
    label: String,
}

#[derive(Clone, Debug, Default)]
pub struct Tokens {
    tokens: Vec<Token>,
}

/// Constant-time comparison: how long it takes must not tell how much of a token matched.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Tokens {
    pub fn parse(text: &str, origin: &str) -> Result<Tokens, String> {
        let mut tokens = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let secret = parts.next().unwrap_or_default();
            if secret.len() < 16 {
                return Err(format!(
                    "{origin}:{}: token too short ({} characters, at least 16)",
                    n + 1,
                    secret.len()
                ));
            }
            let label = parts.collect::<Vec<_>>().join(" ");
            tokens.push(Token {
                secret: secret.as_bytes().to_vec(),
                label: if label.is_empty() {
                    format!("line {}", n + 1)
                } else {
                    label
                },
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

    /// The label of the matching token, if any. Every token is compared, matching or not.
    pub fn check(&self, presented: &[u8]) -> Option<&str> {
        let mut found = None;
        for t in &self.tokens {
            if same(&t.secret, presented) && found.is_none() {
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
    pub fn check(&self, header: Option<&[u8]>) -> Result<String, Denied> {
        let f = match self {
            Auth::Open => return Ok("unauthenticated".into()),
            Auth::Closed => return Err(Denied::NoTokens),
            Auth::File(f) => f,
        };
        let header = header.ok_or(Denied::Missing)?;
        let token = header
            .strip_prefix(b"Bearer ")
            .or_else(|| header.strip_prefix(b"bearer "))
            .ok_or(Denied::Malformed)?;
        let token = token.trim_ascii();
        let tokens = f.current();
        tokens
            .check(token)
            .map(str::to_owned)
            .ok_or(Denied::Unknown)
    }
}

/// The token file, re-read when its modification time or size changes.
pub struct TokenFile {
    path: PathBuf,
    state: RwLock<(Arc<Tokens>, Option<(SystemTime, u64)>)>,
}

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    Unchanged,
    Loaded(usize),
    /// The file is broken: previous tokens kept.
    Failed(String),
}

impl TokenFile {
    pub fn open(path: &Path) -> Result<TokenFile, String> {
        let tokens = Tokens::load(path)?;
        Ok(TokenFile {
            path: path.to_owned(),
            state: RwLock::new((Arc::new(tokens), stamp(path))),
        })
    }

    pub fn current(&self) -> Arc<Tokens> {
        self.state.read().expect("token lock").0.clone()
    }

    /// Re-reads the file if it changed (or always, with `force`).
    pub fn reload(&self, force: bool) -> Reload {
        let now = stamp(&self.path);
        if !force && now == self.state.read().expect("token lock").1 {
            return Reload::Unchanged;
        }
        match Tokens::load(&self.path) {
            Ok(t) => {
                let n = t.len();
                *self.state.write().expect("token lock") = (Arc::new(t), now);
                Reload::Loaded(n)
            }
            Err(e) => {
                // Remember the broken version so it is reported once, not every poll.
                self.state.write().expect("token lock").1 = now;
                Reload::Failed(e)
            }
        }
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_check_and_labels() {
        let t = Tokens::parse(
            "# agents\n0123456789abcdef  fleet-2026\n\nfedcba9876543210fedcba # old\n",
            "tokens",
        )
        .unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t.check(b"0123456789abcdef"), Some("fleet-2026"));
        assert_eq!(t.check(b"fedcba9876543210fedcba"), Some("line 4"));
        assert_eq!(t.check(b"0123456789abcdeX"), None);
        assert_eq!(t.check(b"0123456789abcde"), None);
        assert_eq!(
            Tokens::parse("short\n", "t").unwrap_err(),
            "t:1: token too short (5 characters, at least 16)"
        );
        assert_eq!(
            Tokens::parse("# nothing\n", "t").unwrap_err(),
            "t: no tokens"
        );
    }

    #[test]
    fn header_forms() {
        let dir = std::env::temp_dir().join(format!("tm-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens");
        std::fs::write(&path, "0123456789abcdef agent\n").unwrap();
        let auth = Auth::File(Arc::new(TokenFile::open(&path).unwrap()));
        assert_eq!(
            auth.check(Some(b"Bearer 0123456789abcdef")),
            Ok("agent".into())
        );
        assert_eq!(auth.check(None), Err(Denied::Missing));
        assert_eq!(auth.check(Some(b"Basic abc")), Err(Denied::Malformed));
        assert_eq!(
            auth.check(Some(b"Bearer nope-nope-nope-nope")),
            Err(Denied::Unknown)
        );
        assert_eq!(Auth::Open.check(None), Ok("unauthenticated".into()));
        assert_eq!(
            Auth::Closed.check(Some(b"Bearer 0123456789abcdef")),
            Err(Denied::NoTokens)
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn reload_on_change_and_keep_on_breakage() {
        let dir = std::env::temp_dir().join(format!("tm-auth-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokens");
        std::fs::write(&path, "aaaaaaaaaaaaaaaa\n").unwrap();
        let f = TokenFile::open(&path).unwrap();
        assert_eq!(f.reload(false), Reload::Unchanged);
        std::fs::write(&path, "aaaaaaaaaaaaaaaa\nbbbbbbbbbbbbbbbbbb\n").unwrap();
        assert_eq!(f.reload(false), Reload::Loaded(2));
        assert!(f.current().check(b"bbbbbbbbbbbbbbbbbb").is_some());
        // Emptied by mistake: the old tokens stay.
        std::fs::write(&path, "").unwrap();
        assert!(matches!(f.reload(false), Reload::Failed(m) if m.ends_with("no tokens")));
        assert!(f.current().check(b"aaaaaaaaaaaaaaaa").is_some());
        assert_eq!(f.reload(false), Reload::Unchanged);
        std::fs::write(&path, "cccccccccccccccc\n").unwrap();
        assert_eq!(f.reload(true), Reload::Loaded(1));
        assert!(f.current().check(b"aaaaaaaaaaaaaaaa").is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
