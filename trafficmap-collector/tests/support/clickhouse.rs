//! A private ClickHouse for a test: its own directory and free ports on 127.0.0.1, a non-UTC
//! server time zone (the store must not depend on it), stopped on drop. The engine is Debian's
//! clickhouse-server 18.16, or with `TRAFFICMAP_CLICKHOUSE_ENGINE=chdb` the current engine
//! (PyPI's chdb-core, 26.x) behind `chdb_http.py`, a small HTTP bridge of this harness
//! (`TRAFFICMAP_CHDB_PYTHON`: the Python that has chdb-core; default the xtask venv's).

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub struct ClickHouse {
    pub url: String,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

fn binary() -> Option<PathBuf> {
    ["/usr/sbin/clickhouse-server", "/usr/bin/clickhouse-server"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// Waits until `GET /ping` on 127.0.0.1:`http` answers 200 (60 s at most); `exited` says why
/// the engine's process is gone, if it is.
fn wait_for_ping(http: u16, what: &str, mut exited: impl FnMut() -> Option<String>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = super::try_request(
            format!("127.0.0.1:{http}").parse().unwrap(),
            "GET",
            "/ping",
            &[],
            b"",
        ) && r.status == 200
        {
            return;
        }
        if let Some(why) = exited() {
            panic!("{why}");
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not answer /ping within 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl ClickHouse {
    /// `None` outside CI when the engine is not installed (the caller says so).
    pub fn start() -> Option<ClickHouse> {
        let (ch, engine) = match std::env::var("TRAFFICMAP_CLICKHOUSE_ENGINE").as_deref() {
            Ok("chdb") => (Self::start_chdb()?, "chdb"),
            Ok("server") | Err(_) => (Self::start_server()?, "clickhouse-server"),
            Ok(other) => panic!("TRAFFICMAP_CLICKHOUSE_ENGINE={other}: server or chdb"),
        };
        // Which engine a run used, in its output (the stage shows it).
        let version = ch.query("SELECT version()");
        eprintln!("TRAFFICMAP_CLICKHOUSE {engine} {}", version.trim());
        Some(ch)
    }

    fn start_chdb() -> Option<ClickHouse> {
        let python = std::env::var_os("TRAFFICMAP_CHDB_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                    .join(".cache/trafficmap/venv/bin/python")
            });
        let has_chdb = python.exists()
            && Command::new(&python)
                .args(["-c", "import chdb"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        if !super::require(
            "chdb-core in the test venv (cargo xtask setup installs it)",
            has_chdb,
        ) {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let http = super::free_port();
        let script = super::root().join("trafficmap-collector/tests/support/chdb_http.py");
        let mut child = Command::new(&python)
            .arg(&script)
            .arg(http.to_string())
            .arg(dir.path().join("data"))
            .env("TZ", "Asia/Kolkata")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the chdb bridge");
        wait_for_ping(http, "the chdb bridge", || {
            child
                .try_wait()
                .unwrap()
                .map(|s| format!("the chdb bridge exited ({s})"))
        });
        Some(ClickHouse {
            url: format!("http://127.0.0.1:{http}"),
            child: Some(child),
            _dir: dir,
        })
    }

    fn start_server() -> Option<ClickHouse> {
        let bin = binary();
        if !super::require(
            "clickhouse-server (Debian package clickhouse-server)",
            bin.is_some(),
        ) {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let (http, tcp, inter) = (super::free_port(), super::free_port(), super::free_port());
        let base = std::fs::read_to_string("/etc/clickhouse-server/config.xml")
            .expect("/etc/clickhouse-server/config.xml from the clickhouse-server package");
        let mut cfg = base
            .replace("/var/log/clickhouse-server/", &format!("{d}/log/"))
            .replace("/var/lib/clickhouse/", &format!("{d}/data/"))
            .replace(
                "<http_port>8123</http_port>",
                &format!("<http_port>{http}</http_port>"),
            )
            .replace(
                "<tcp_port>9000</tcp_port>",
                &format!("<tcp_port>{tcp}</tcp_port>"),
            )
            .replace(
                "<interserver_http_port>9009</interserver_http_port>",
                &format!("<interserver_http_port>{inter}</interserver_http_port>"),
            )
            .replace("<listen_host>::1</listen_host>", "");
        if !cfg.contains("<timezone>") || cfg.contains("<!-- <timezone>") {
            cfg = cfg.replacen(
                "<http_port>",
                "<timezone>Asia/Kolkata</timezone>\n    <http_port>",
                1,
            );
        }
        std::fs::create_dir_all(format!("{d}/log")).unwrap();
        std::fs::create_dir_all(format!("{d}/data")).unwrap();
        std::fs::write(format!("{d}/config.xml"), cfg).unwrap();
        std::fs::copy("/etc/clickhouse-server/users.xml", format!("{d}/users.xml")).unwrap();
        let child = Command::new(bin.unwrap())
            .arg(format!("--config-file={d}/config.xml"))
            .current_dir(&d)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting clickhouse-server");
        let mut ch = ClickHouse {
            url: format!("http://127.0.0.1:{http}"),
            child: Some(child),
            _dir: dir,
        };
        wait_for_ping(http, "clickhouse-server", || {
            let s = ch.child.as_mut().unwrap().try_wait().unwrap()?;
            let log = std::fs::read_to_string(format!("{d}/log/clickhouse-server.err.log"))
                .unwrap_or_default();
            Some(format!("clickhouse-server exited ({s}):\n{log}"))
        });
        Some(ch)
    }

    /// Runs a query, returns the body.
    pub fn query(&self, sql: &str) -> String {
        let addr = self.url.trim_start_matches("http://").parse().unwrap();
        let r = super::request(addr, "POST", "/", &[], sql.as_bytes());
        assert_eq!(r.status, 200, "{sql}: {}", r.text());
        r.text()
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(15);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
