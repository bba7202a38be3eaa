//! TLS on the collector's listener (rustls, aws-lc-rs): a PEM certificate chain and key, and
//! optionally a CA whose client certificates name the agents (mutual TLS). The files are re-read
//! on SIGHUP and when they change (the same poll as the token file); a new certificate that does
//! not load (unreadable, no certificate, a key that does not match) keeps the previous one in
//! service, and the failure is logged and counted.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use rustls::{
    RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
    server::WebPkiClientVerifier,
};

use crate::auth::{Reload, Stamp, stamp};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: {source}", path.display())]
    Pem {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{}: no certificate in it", .0.display())]
    NoCertificate(PathBuf),
    #[error("{}: {source}", path.display())]
    ClientCa {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("client CA {}: {source}", path.display())]
    Verifier {
        path: PathBuf,
        source: rustls::server::VerifierBuilderError,
    },
    #[error("certificate {} and key {}: {source}", cert.display(), key.display())]
    Key {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
}

/// Where the certificate, key and client CA come from (`tls_cert_file`, `tls_key_file`,
/// `tls_client_ca_file`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |source| TlsError::Pem {
        path: path.to_owned(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_owned()));
    }
    Ok(certs)
}

/// The server's rustls configuration from the files (HTTP/1.1 only, like the server).
pub fn load(p: &TlsPaths) -> Result<ServerConfig, TlsError> {
    let chain = certs(&p.cert)?;
    let key = PrivateKeyDer::from_pem_file(&p.key).map_err(|source| TlsError::Pem {
        path: p.key.clone(),
        source,
    })?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default protocol versions");
    let builder = match &p.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certs(ca)? {
                roots.add(c).map_err(|source| TlsError::ClientCa {
                    path: ca.clone(),
                    source,
                })?;
            }
            // Optional at the handshake: the viewer and the API are read without a client
            // certificate; a report needs one (checked per request, see `server.rs`).
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .allow_unauthenticated()
                .build()
                .map_err(|source| TlsError::Verifier {
                    path: ca.clone(),
                    source,
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    // `with_single_cert` refuses a key that does not match the certificate.
    let mut cfg = builder
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::Key {
            cert: p.cert.clone(),
            key: p.key.clone(),
            source,
        })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// The loaded configuration, replaced whole when the files change and load.
pub struct TlsFiles {
    paths: TlsPaths,
    state: RwLock<(Arc<ServerConfig>, Stamps)>,
}

type Stamps = [Stamp; 3];

fn stamps(p: &TlsPaths) -> Stamps {
    [
        stamp(&p.cert),
        stamp(&p.key),
        p.client_ca.as_deref().and_then(stamp),
    ]
}

impl TlsFiles {
    pub fn open(paths: TlsPaths) -> Result<TlsFiles, TlsError> {
        let before = stamps(&paths);
        let cfg = load(&paths)?;
        Ok(TlsFiles {
            state: RwLock::new((Arc::new(cfg), before)),
            paths,
        })
    }

    /// The configuration new connections use.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .0
            .clone()
    }

    pub fn reload(&self, force: bool) -> Reload {
        // Stamped before reading: a change while loading is seen at the next poll.
        let now = stamps(&self.paths);
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
        match load(&self.paths) {
            Ok(cfg) => {
                *self
                    .state
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = (Arc::new(cfg), now);
                Reload::Loaded(1)
            }
            Err(e) => {
                // Reported once per broken version, not at every poll. (A certificate and key
                // replaced one after the other load at the second write.)
                self.state
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .1 = now;
                Reload::Failed(e.to_string())
            }
        }
    }
}

impl crate::run::Watched for TlsFiles {
    fn source(&self) -> &'static str {
        "tls"
    }

    fn reload(&self, force: bool) -> Reload {
        TlsFiles::reload(self, force)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(name: &str) -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    #[test]
    fn configuration_checks() {
        use crate::config::Config;
        let mut c = Config {
            allow_unauthenticated: true,
            ..Config::default()
        };
        c.tls_cert_file = Some("/nonexistent/cert.pem".into());
        assert_eq!(
            c.validate(),
            Err("tls_cert_file and tls_key_file go together".into())
        );
        c.tls_key_file = Some("/nonexistent/key.pem".into());
        assert_eq!(
            c.validate(),
            Err(
                "tls: /nonexistent/cert.pem: I/O error: No such file or directory (os error 2)"
                    .into()
            )
        );
        c.tls_cert_file = None;
        c.tls_key_file = None;
        c.tls_client_ca_file = Some("/x".into());
        assert_eq!(
            c.validate(),
            Err("tls_client_ca_file needs tls_cert_file and tls_key_file".into())
        );
        c.tls_client_ca_file = None;
        c.max_connections_per_address = 0;
        assert_eq!(
            c.validate(),
            Err("max_connections_per_address must be at least 1".into())
        );
        c.max_connections_per_address = 1;
        c.idle_timeout = std::time::Duration::ZERO;
        assert_eq!(c.validate(), Err("idle_timeout must be more than 0".into()));
    }

    #[test]
    fn loads_refuses_and_keeps_the_old_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let paths = TlsPaths {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
            client_ca: None,
        };
        let (cert, key) = self_signed("one.test");
        std::fs::write(&paths.cert, &cert).unwrap();
        std::fs::write(&paths.key, &key).unwrap();
        let f = TlsFiles::open(paths.clone()).unwrap();
        let first = f.current();
        assert_eq!(first.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert_eq!(f.reload(false), Reload::Unchanged);
        // A certificate whose key is not the one in the key file: refused, the old one stays.
        let (cert2, key2) = self_signed("two.test");
        std::fs::write(&paths.cert, &cert2).unwrap();
        // (Forced: two certificates of one key type can have the same size and time stamp.)
        let Reload::Failed(e) = f.reload(true) else {
            panic!("a mismatched key loaded")
        };
        assert!(
            e.starts_with(&format!(
                "certificate {} and key {}: ",
                paths.cert.display(),
                paths.key.display()
            )),
            "{e}"
        );
        assert!(Arc::ptr_eq(&first, &f.current()));
        assert_eq!(f.reload(false), Reload::Unchanged);
        std::fs::write(&paths.key, &key2).unwrap();
        assert_eq!(f.reload(true), Reload::Loaded(1));
        assert!(!Arc::ptr_eq(&first, &f.current()));
        // A file without a certificate.
        std::fs::write(&paths.cert, "not pem\n").unwrap();
        assert_eq!(
            f.reload(true),
            Reload::Failed(format!("{}: no certificate in it", paths.cert.display()))
        );
        // Startup fails the same way.
        assert_eq!(
            TlsFiles::open(paths.clone()).err().unwrap().to_string(),
            format!("{}: no certificate in it", paths.cert.display())
        );
    }
}
