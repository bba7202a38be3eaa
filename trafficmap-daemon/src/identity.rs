//! Who this host is: name, stable id, interface addresses (of the counted network namespace),
//! and optionally the EC2 instance identity from IMDSv2.

use std::{net::IpAddr, os::fd::AsRawFd as _, path::Path, time::Duration};

use anyhow::{Context as _, Result, bail};
use trafficmap_model::report::{Ec2Identity, Host};

use crate::{
    config::{Config, Imds},
    probe::NetnsScope,
};

/// The system host name.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is writable for its length.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

pub fn machine_id() -> Option<String> {
    ["/etc/machine-id", "/var/lib/dbus/machine-id"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// Non-loopback, non-link-local addresses of the interfaces of the calling thread's network
/// namespace.
fn local_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list we walk and free.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return out;
    }
    let mut cur = ifap;
    while !cur.is_null() {
        // SAFETY: cur is a valid node of the list until freeifaddrs.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: the family tells which sockaddr type it is.
            let addr = unsafe {
                match i32::from((*ifa.ifa_addr).sa_family) {
                    libc::AF_INET => {
                        let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                        Some(IpAddr::from(u32::from_be(sa.sin_addr.s_addr).to_be_bytes()))
                    }
                    libc::AF_INET6 => {
                        let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                        Some(IpAddr::from(sa.sin6_addr.s6_addr))
                    }
                    _ => None,
                }
            };
            if let Some(a) = addr
                && !a.is_loopback()
                && !is_link_local(a)
                && !out.contains(&a)
            {
                out.push(a);
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: ifap came from getifaddrs.
    unsafe { libc::freeifaddrs(ifap) };
    out.sort();
    out
}

fn is_link_local(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// Interface addresses of a namespace, read from a thread that enters it (namespaces are per
/// thread, so the agent's other threads are unaffected).
pub fn addresses(scope: &NetnsScope) -> Result<Vec<IpAddr>> {
    match scope {
        NetnsScope::All => Ok(local_addresses()),
        NetnsScope::Path(p) => {
            let path = p.clone();
            std::thread::spawn(move || -> Result<Vec<IpAddr>> {
                let ns = std::fs::File::open(&path)
                    .with_context(|| format!("opening {}", path.display()))?;
                // SAFETY: a valid namespace fd; only this short-lived thread moves.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    bail!(
                        "entering network namespace {}: {}",
                        path.display(),
                        std::io::Error::last_os_error()
                    );
                }
                Ok(local_addresses())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("address reader thread panicked"))?
        }
    }
}

/// IMDSv2: a session token, then the metadata keys, each with a short timeout.
pub async fn ec2_identity(endpoint: &str, timeout: Duration) -> Result<Ec2Identity> {
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .no_proxy()
        .build()?;
    let base = endpoint.trim_end_matches('/');
    let token = client
        .put(format!("{base}/latest/api/token"))
        .header("X-aws-ec2-metadata-token-ttl-seconds", "300")
        .send()
        .await
        .context("IMDSv2 token request")?
        .error_for_status()
        .context("IMDSv2 token request")?
        .text()
        .await?;
    let get = |key: &'static str| {
        let client = client.clone();
        let token = token.clone();
        let url = format!("{base}/latest/meta-data/{key}");
        async move {
            let resp = client
                .get(&url)
                .header("X-aws-ec2-metadata-token", token)
                .send()
                .await
                .with_context(|| format!("IMDS {key}"))?;
            if resp.status() == reqwest::StatusCode::NOT_FOUND {
                return Ok::<_, anyhow::Error>(None);
            }
            Ok(Some(
                resp.error_for_status()
                    .with_context(|| format!("IMDS {key}"))?
                    .text()
                    .await?
                    .trim()
                    .to_owned(),
            ))
        }
    };
    let instance_id = get("instance-id")
        .await?
        .context("IMDS has no instance-id")?;
    let region = get("placement/region")
        .await?
        .context("IMDS has no region")?;
    Ok(Ec2Identity {
        instance_id,
        region,
        availability_zone: get("placement/availability-zone").await?,
        instance_type: get("instance-type").await?,
    })
}

/// The host part of every report.
pub async fn host(config: &Config, netns_inum: u32) -> Result<Host> {
    let hostname = config.host_name.clone().unwrap_or_else(hostname);
    let machine_id = match (&config.host_id, netns_inum) {
        (Some(id), _) => id.clone(),
        // Several agents on one machine, each counting one namespace, are several hosts. The
        // system's id (or name) is cut to the bound before the suffix, never the suffix.
        (None, 0) => {
            crate::sanitize::machine_id(&machine_id().unwrap_or_else(|| hostname.clone()), "")
        }
        (None, ns) => crate::sanitize::machine_id(
            &machine_id().unwrap_or_else(|| hostname.clone()),
            &format!("-netns-{ns}"),
        ),
    };
    let ec2 = match config.imds {
        Imds::Off => None,
        Imds::On => Some(
            ec2_identity(&config.imds_endpoint, Duration::from_secs(2))
                .await
                .context("EC2 instance identity (imds = on)")?,
        ),
        Imds::Auto => match ec2_identity(&config.imds_endpoint, Duration::from_millis(500)).await {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::debug!(error = %format!("{e:#}"), "no EC2 instance metadata");
                None
            }
        },
    };
    Ok(Host {
        hostname,
        machine_id,
        addresses: addresses(&config.netns)?,
        netns: (netns_inum != 0).then_some(netns_inum),
        ec2,
        stats: None,
    })
}

/// Whether `p` names a network namespace file (as opposed to any file).
pub fn is_netns_file(p: &Path) -> bool {
    std::fs::File::open(p).is_ok_and(|f| {
        const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
        // SAFETY: NS_GET_NSTYPE takes no argument and only reads the fd `f` owns; on any other
        // file it fails with an error, not undefined behaviour.
        unsafe { libc::ioctl(f.as_raw_fd(), NS_GET_NSTYPE) == libc::CLONE_NEWNET }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_local_detection() {
        assert!(is_link_local("fe80::1".parse().unwrap()));
        assert!(is_link_local("169.254.1.1".parse().unwrap()));
        assert!(!is_link_local("10.0.0.1".parse().unwrap()));
        assert!(!is_link_local("fd00::1".parse().unwrap()));
    }

    #[test]
    fn own_addresses_exclude_loopback() {
        assert!(local_addresses().iter().all(|a| !a.is_loopback()));
        assert_eq!(
            hostname(),
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap()
                .trim()
        );
    }

    #[tokio::test]
    async fn imds_v2_token_then_keys() {
        use axum::{
            Router,
            http::{HeaderMap, StatusCode},
            routing::{get, put},
        };
        let app = Router::new()
            .route(
                "/latest/api/token",
                put(|h: HeaderMap| async move {
                    if h.contains_key("x-aws-ec2-metadata-token-ttl-seconds") {
                        (StatusCode::OK, "tok-1".to_owned())
                    } else {
                        (StatusCode::BAD_REQUEST, String::new())
                    }
                }),
            )
            .route(
                "/latest/meta-data/{*key}",
                get(|axum::extract::Path(key): axum::extract::Path<String>, h: HeaderMap| async move {
                    if h.get("x-aws-ec2-metadata-token").and_then(|v| v.to_str().ok()) != Some("tok-1") {
                        return (StatusCode::UNAUTHORIZED, String::new());
                    }
                    match key.as_str() {
                        "instance-id" => (StatusCode::OK, "i-0123456789abcdef0".into()),
                        "placement/region" => (StatusCode::OK, "eu-west-1".into()),
                        "placement/availability-zone" => (StatusCode::OK, "eu-west-1b".into()),
                        _ => (StatusCode::NOT_FOUND, String::new()),
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let id = ec2_identity(&format!("http://{addr}"), Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(
            id,
            Ec2Identity {
                instance_id: "i-0123456789abcdef0".into(),
                region: "eu-west-1".into(),
                availability_zone: Some("eu-west-1b".into()),
                instance_type: None,
            }
        );
        // Nothing listening: a quick, clear error.
        let err = ec2_identity("http://127.0.0.1:1", Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("IMDSv2 token request"));
    }
}
