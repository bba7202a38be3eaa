//! Plumbing of the hostile-client test (`tests/hostile.rs`): requests from a chosen source
//! address (127.0.0.x, so the per-address connection cap can be exercised without locking the
//! legitimate agent out), bodies that are declared but never sent, streamed chunked bodies, and
//! the collectors' files (tokens, read tokens, inventory, configuration).
//!
//! Included by `#[path]` from `tests/hostile.rs`, so `support/mod.rs` stays untouched.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    os::fd::FromRawFd as _,
    path::{Path, PathBuf},
    time::Duration,
};

use super::support::{Response, parse_response};

/// What a request carries after its headers.
#[derive(Clone, Debug)]
pub enum Body {
    /// Sent as is with its `Content-Length`.
    Bytes(Vec<u8>),
    /// `Content-Length: n` is declared, nothing of it is sent: a refusal must come from the
    /// header alone.
    DeclaredOnly(u64),
    /// `Transfer-Encoding: chunked`, `total` bytes of `fill` in chunks of 64 KiB, streamed
    /// until done or until the server stops reading (nothing is held in memory).
    Chunked { total: u64, fill: u8 },
}

/// One request of an attack.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: &'static str,
    pub path: String,
    /// Besides `Host` and the length headers.
    pub headers: Vec<(String, String)>,
    /// `Host` header; `None`: the address connected to (an allowed host on loopback).
    pub host: Option<String>,
    pub body: Body,
}

impl Req {
    pub fn get(path: impl Into<String>) -> Req {
        Req {
            method: "GET",
            path: path.into(),
            headers: Vec::new(),
            host: None,
            body: Body::Bytes(Vec::new()),
        }
    }

    pub fn post(path: impl Into<String>, body: Body) -> Req {
        Req {
            method: "POST",
            path: path.into(),
            headers: Vec::new(),
            host: None,
            body,
        }
    }

    pub fn header(mut self, k: &str, v: impl Into<String>) -> Req {
        self.headers.push((k.to_owned(), v.into()));
        self
    }

    pub fn bearer(self, token: &str) -> Req {
        self.header("Authorization", format!("Bearer {token}"))
    }

    pub fn host(mut self, h: &str) -> Req {
        self.host = Some(h.to_owned());
        self
    }
}

/// A TCP connection to `dst` from the source address `src` (any port), via libc because std
/// cannot bind before connecting.
pub fn connect_from(src: IpAddr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let (IpAddr::V4(s), SocketAddr::V4(d)) = (src, dst) else {
        return Err(std::io::Error::other("IPv4 only"));
    };
    let sin = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor we own; the sockaddr structs live on the stack
    // for the duration of each call; on success the descriptor moves into the TcpStream.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let a = sin(s, 0);
        if libc::bind(fd, (&raw const a).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let b = sin(*d.ip(), d.port());
        if libc::connect(fd, (&raw const b).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

/// Sends `req` on a fresh connection from `src` and reads the answer. The answer is read by a
/// second thread while the body is still being written, so a server that answers early (413)
/// and closes is heard even though the rest of the body could not be sent.
pub fn send(dst: SocketAddr, src: IpAddr, req: &Req) -> std::io::Result<Response> {
    let mut s = connect_from(src, dst)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.set_write_timeout(Some(Duration::from_secs(60)))?;
    let host = req.host.clone().unwrap_or_else(|| dst.to_string());
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n",
        req.method, req.path
    );
    for (k, v) in &req.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    match &req.body {
        Body::Bytes(b) => head.push_str(&format!("Content-Length: {}\r\n", b.len())),
        Body::DeclaredOnly(n) => head.push_str(&format!("Content-Length: {n}\r\n")),
        Body::Chunked { .. } => head.push_str("Transfer-Encoding: chunked\r\n"),
    }
    head.push_str("\r\n");
    let mut reader = s.try_clone()?;
    let read = std::thread::spawn(move || {
        let mut raw = Vec::new();
        // Whatever arrived before an error (a reset after the answer) is the answer.
        let mut buf = [0u8; 65536];
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
        raw
    });
    // Write errors are expected when the server answers early and closes: the answer decides.
    let _ = (|| -> std::io::Result<()> {
        s.write_all(head.as_bytes())?;
        match &req.body {
            Body::Bytes(b) => s.write_all(b)?,
            Body::DeclaredOnly(_) => {}
            Body::Chunked { total, fill } => {
                let chunk = vec![*fill; 64 << 10];
                let mut left = *total;
                while left > 0 {
                    let n = left.min(chunk.len() as u64) as usize;
                    s.write_all(format!("{n:x}\r\n").as_bytes())?;
                    s.write_all(&chunk[..n])?;
                    s.write_all(b"\r\n")?;
                    left -= n as u64;
                }
                s.write_all(b"0\r\n\r\n")?;
            }
        }
        Ok(())
    })();
    let raw = read.join().expect("reader thread");
    parse_response(&raw)
}

/// The collector's files for one run.
pub struct Files {
    pub tokens: PathBuf,
    pub read_tokens: PathBuf,
    pub inventory: PathBuf,
}

/// Writes the agent token file, the read token file and the inventory into `dir`.
pub fn write_files(
    dir: &Path,
    agent_lines: &[String],
    read_lines: &[String],
    inventory: &str,
) -> Files {
    let f = Files {
        tokens: dir.join("agent-tokens"),
        read_tokens: dir.join("read-tokens"),
        inventory: dir.join("inventory.toml"),
    };
    std::fs::write(&f.tokens, agent_lines.join("\n") + "\n").unwrap();
    std::fs::write(&f.read_tokens, read_lines.join("\n") + "\n").unwrap();
    std::fs::write(&f.inventory, inventory).unwrap();
    f
}
