//! Mail out of the collector: the daily report as a `multipart/alternative` message (plain text
//! and HTML) sent over SMTP by `lettre`, with STARTTLS or implicit TLS (rustls with the
//! aws-lc-rs provider, like the rest of the tree; the system's roots plus `ca_file`) and AUTH
//! PLAIN or LOGIN. The configuration is `[reports.smtp]` (`config::Smtp`).

use std::{net::IpAddr, path::PathBuf};

use lettre::{
    AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor,
    message::{Mailbox, MultiPart, header::ContentType},
    transport::smtp::{
        authentication::{Credentials, Mechanism},
        client::{Certificate, Tls, TlsParameters},
    },
};

use crate::config::{Smtp, SmtpTls};

/// Recipients of one message at most (a mistyped list, not a mailing list).
pub const MAX_RECIPIENTS: usize = 100;
/// A password file larger than this is not a password file.
const MAX_PASSWORD_FILE_BYTES: u64 = 4096;
/// A CA file larger than this is not a CA file.
const MAX_CA_FILE_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("`{addr}` is not a mail address: {why}")]
    Address { addr: String, why: String },
    #[error("reports.smtp.password_file {}: {why}", .path.display())]
    PasswordFile { path: PathBuf, why: String },
    #[error("reports.smtp.ca_file {}: {why}", .path.display())]
    CaFile { path: PathBuf, why: String },
    #[error("building the message: {0}")]
    Message(String),
    #[error("SMTP server {server}: TLS setup: {why}")]
    Tls { server: String, why: String },
    #[error(
        "SMTP server {server} refused the login of `{user}` ({why}): check reports.smtp.username and the password in reports.smtp.password_file"
    )]
    LoginRefused {
        server: String,
        user: String,
        why: String,
    },
    #[error("SMTP server {server}: sending failed: {why}")]
    Send { server: String, why: String },
}

/// Parses one address (`addr@example.com` or `Name <addr@example.com>`).
pub fn mailbox(s: &str) -> Result<Mailbox, MailError> {
    s.parse::<Mailbox>().map_err(|e| MailError::Address {
        addr: s.to_owned(),
        why: e.to_string(),
    })
}

/// Whether `host` is a loopback address (or `localhost`): the only place a clear-text SMTP
/// connection may go.
pub fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost") || h.parse::<IpAddr>().is_ok_and(|a| a.is_loopback())
}

/// A `multipart/alternative` message: `text` first, `html` second (mail readers show the last
/// part they can display).
pub fn message(
    from: &str,
    to: &[String],
    subject: &str,
    text: String,
    html: String,
) -> Result<Message, MailError> {
    let mut b = Message::builder().from(mailbox(from)?).subject(subject);
    for t in to.iter().take(MAX_RECIPIENTS) {
        b = b.to(mailbox(t)?);
    }
    b.multipart(
        MultiPart::alternative()
            .singlepart(
                lettre::message::SinglePart::builder()
                    .header(ContentType::TEXT_PLAIN)
                    .body(text),
            )
            .singlepart(
                lettre::message::SinglePart::builder()
                    .header(ContentType::TEXT_HTML)
                    .body(html),
            ),
    )
    .map_err(|e| MailError::Message(e.to_string()))
}

/// An SMTP client for `[reports.smtp]`. Built per send (once a day): a password or CA file
/// replaced in between is read again.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    server: String,
    user: Option<String>,
}

impl Mailer {
    pub fn new(cfg: &Smtp) -> Result<Mailer, MailError> {
        let server = format!("{}:{}", cfg.host, cfg.port);
        let tls_err = |why: String| MailError::Tls {
            server: server.clone(),
            why,
        };
        let params = || -> Result<TlsParameters, MailError> {
            // The certificate must name `host` (a DNS name or an IP address SAN).
            let domain = cfg
                .host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let mut b = TlsParameters::builder(domain);
            if let Some(path) = &cfg.ca_file {
                for c in ca_certificates(path)? {
                    b = b.add_root_certificate(c);
                }
            }
            b.build_rustls().map_err(|e| tls_err(e.to_string()))
        };
        let tls = match cfg.tls {
            SmtpTls::Starttls => Tls::Required(params()?),
            SmtpTls::Tls => Tls::Wrapper(params()?),
            // Config validation keeps this to loopback addresses.
            SmtpTls::None => Tls::None,
        };
        // `builder_dangerous`: the host, port and TLS are all set here, explicitly.
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(cfg.host.as_str())
            .port(cfg.port)
            .tls(tls)
            .timeout(Some(cfg.timeout));
        if let (Some(user), Some(path)) = (&cfg.username, &cfg.password_file) {
            b = b
                .credentials(Credentials::new(user.clone(), read_password(path)?))
                .authentication(vec![Mechanism::Plain, Mechanism::Login]);
        }
        Ok(Mailer {
            transport: b.build(),
            server,
            user: cfg.username.clone(),
        })
    }

    /// Sends `msg`; the error says which step failed in words an operator acts on.
    pub async fn send(&self, msg: Message) -> Result<(), MailError> {
        match self.transport.send(msg).await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.classify(&e)),
        }
    }

    fn classify(&self, e: &lettre::transport::smtp::Error) -> MailError {
        let why = error_chain(e);
        let server = self.server.clone();
        // 535: credentials invalid; 534: mechanism too weak; 530: authentication required.
        let login_code = e
            .status()
            .is_some_and(|c| matches!(c.to_string().as_str(), "530" | "534" | "535"));
        match (&self.user, login_code) {
            (Some(user), true) => MailError::LoginRefused {
                server,
                user: user.clone(),
                why,
            },
            _ if e.is_tls() => MailError::Tls { server, why },
            _ => MailError::Send { server, why },
        }
    }
}

/// `e` and its sources on one line (lettre's own message names only the kind of error).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut s = e.source();
    while let Some(x) = s {
        let t = x.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        s = x.source();
    }
    out.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The password: the file's first line, without its line end.
fn read_password(path: &std::path::Path) -> Result<String, MailError> {
    let bad = |why: String| MailError::PasswordFile {
        path: path.to_owned(),
        why,
    };
    let text = read_bounded(path, MAX_PASSWORD_FILE_BYTES).map_err(bad)?;
    let pw = text.lines().next().unwrap_or_default();
    if pw.is_empty() {
        return Err(bad("empty (the password is its first line)".into()));
    }
    Ok(pw.to_owned())
}

/// Every certificate of a PEM file.
fn ca_certificates(path: &std::path::Path) -> Result<Vec<Certificate>, MailError> {
    use rustls_pki_types::{CertificateDer, pem::PemObject as _};
    let bad = |why: String| MailError::CaFile {
        path: path.to_owned(),
        why,
    };
    let text = read_bounded(path, MAX_CA_FILE_BYTES).map_err(bad)?;
    let mut out = Vec::new();
    for c in CertificateDer::pem_slice_iter(text.as_bytes()) {
        let der = c.map_err(|e| bad(e.to_string()))?;
        out.push(Certificate::from_der(der.to_vec()).map_err(|e| bad(e.to_string()))?);
    }
    if out.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    Ok(out)
}

fn read_bounded(path: &std::path::Path, max: u64) -> Result<String, String> {
    use std::io::Read as _;
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut text = String::new();
    f.take(max + 1)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > max {
        return Err(format!("larger than {max} bytes"));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in ["127.0.0.1", "::1", "[::1]", "localhost", "127.3.4.5"] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["10.0.0.1", "smtp.example.com", "localhost.example.com", ""] {
            assert!(!is_loopback(h), "{h}");
        }
    }

    #[test]
    fn password_is_the_first_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "s3cret pass\nignored\n").unwrap();
        assert_eq!(read_password(&p).unwrap(), "s3cret pass");
        std::fs::write(&p, "\n").unwrap();
        assert_eq!(
            read_password(&p).unwrap_err().to_string(),
            format!(
                "reports.smtp.password_file {}: empty (the password is its first line)",
                p.display()
            )
        );
        std::fs::write(&p, vec![b'x'; 5000]).unwrap();
        assert_eq!(
            read_password(&p).unwrap_err().to_string(),
            format!(
                "reports.smtp.password_file {}: larger than 4096 bytes",
                p.display()
            )
        );
    }

    #[test]
    fn clear_text_only_to_loopback() {
        let with = |host: &str, tls: &str| {
            crate::config::Config::from_toml(
                &format!(
                    "[reports]\nto = [\"ops@example.com\"]\nfrom = \"tm@example.com\"\ncompliance = false\n[reports.smtp]\nhost = \"{host}\"\nport = 25\ntls = \"{tls}\"\n"
                ),
                "c.toml",
            )
            .unwrap()
            .validate()
        };
        assert_eq!(with("127.0.0.1", "none"), Ok(()));
        assert_eq!(with("::1", "none"), Ok(()));
        assert_eq!(with("smtp.example.com", "starttls"), Ok(()));
        assert_eq!(
            with("smtp.example.com", "none"),
            Err("reports.smtp.tls = \"none\" would send the login and the reports in clear to `smtp.example.com`: only allowed to a loopback address (127.0.0.1, ::1, localhost); use \"starttls\" or \"tls\"".into())
        );
        assert_eq!(
            with("10.0.0.25", "none"),
            Err("reports.smtp.tls = \"none\" would send the login and the reports in clear to `10.0.0.25`: only allowed to a loopback address (127.0.0.1, ::1, localhost); use \"starttls\" or \"tls\"".into())
        );
    }

    #[test]
    fn addresses() {
        assert_eq!(
            mailbox("Ops <ops@example.com>").unwrap().email.to_string(),
            "ops@example.com"
        );
        assert!(matches!(
            mailbox("not an address"),
            Err(MailError::Address { .. })
        ));
    }
}
