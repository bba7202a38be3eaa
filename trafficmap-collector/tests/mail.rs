//! The daily report mails (`src/dailyreport.rs`, `src/mail.rs`) against a real SMTP server:
//! Python's aiosmtpd (`support/smtpd.py`) on 127.0.0.1, STARTTLS with the test's own CA, AUTH
//! required. Asserted: the message received (envelope, From/To/Subject, the text and HTML
//! parts, the exact lists for the golden fleet), a wrong password (a clear error, nothing
//! recorded as sent), the record of mailed days (a restart mails nothing again, missed days go
//! out once), and the service's own schedule across a restart.
//!
//! Needs aiosmtpd in the xtask venv: `cargo xtask test --only mail` (which sets
//! TRAFFICMAP_SMTPD_PYTHON), or `cargo test -p trafficmap-collector --test mail --
//! --include-ignored` after `cargo xtask setup`.

mod support;

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{DateTime, NaiveDate, Utc};
use trafficmap_collector::{
    config::{Config, SmtpTls},
    dailyreport::{self, SentDays},
    enrich::refresh::Enricher,
    ingest::Ingest,
    metrics::Metrics,
    store::{Store, sqlite::SqliteStore},
};
use trafficmap_model::cloud::CloudSnapshot;

use support::{Collector, bin, free_port, golden_reports, pki::Pki, root};

const USER: &str = "reporter";
const PASSWORD: &str = "correct horse battery staple";

fn d(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

/// The Python with aiosmtpd: TRAFFICMAP_SMTPD_PYTHON, else the xtask venv's.
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("TRAFFICMAP_SMTPD_PYTHON") {
        return p.into();
    }
    let cache = std::env::var_os("TRAFFICMAP_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("trafficmap")))
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/trafficmap")
        });
    cache.join("venv/bin/python")
}

/// aiosmtpd on 127.0.0.1: STARTTLS (a certificate for 127.0.0.1 from the test's CA), then
/// AUTH as USER/PASSWORD. Stopped when dropped.
struct Smtpd {
    child: Child,
    port: u16,
    out: PathBuf,
    ca_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Smtpd {
    fn start() -> Smtpd {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new("trafficmap mail test CA");
        let (cert, key) = pki.leaf(&["127.0.0.1"]);
        let (cert_file, key_file, ca_file) = (
            dir.path().join("cert.pem"),
            dir.path().join("key.pem"),
            dir.path().join("ca.pem"),
        );
        std::fs::write(&cert_file, cert).unwrap();
        std::fs::write(&key_file, key).unwrap();
        std::fs::write(&ca_file, &pki.ca_pem).unwrap();
        let out = dir.path().join("received");
        std::fs::create_dir(&out).unwrap();
        let port = free_port();
        let py = python();
        let script = root().join("trafficmap-collector/tests/support/smtpd.py");
        let mut child = Command::new(&py)
            .arg(&script)
            .arg(port.to_string())
            .args([&cert_file, &key_file])
            .args([USER, PASSWORD])
            .arg(&out)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e}: aiosmtpd is needed: `cargo xtask setup` installs it into the venv (or: {} -m pip install aiosmtpd==1.4.6)",
                    py.display(),
                    py.display()
                )
            });
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        if line.trim() != "READY" {
            let _ = child.kill();
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            panic!(
                "aiosmtpd did not start ({}); `cargo xtask setup` installs it into the venv (or: {} -m pip install aiosmtpd==1.4.6):\n{err}",
                py.display(),
                py.display()
            );
        }
        Smtpd {
            child,
            port,
            out,
            ca_file,
            _dir: dir,
        }
    }

    /// The messages received so far, in order.
    fn received(&self) -> Vec<serde_json::Value> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.out)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|f| serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap())
            .collect()
    }

    /// Waits for the `n`th message.
    fn wait_for(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = self.received();
            if r.len() >= n {
                return r;
            }
            assert!(Instant::now() < deadline, "no message {n} within 60 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn auth_log(&self) -> String {
        std::fs::read_to_string(self.out.join("auth.log")).unwrap_or_default()
    }
}

impl Drop for Smtpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The golden fleet's allowed archdomains for these tests: one used exactly, one subtree, one
/// nobody uses.
const ALLOWED: &str =
    "# the master list\nonline/api\nonline/storage/\noffline/batch\nonline/search # planned\n";

async fn golden_store(dir: &Path) -> Store {
    let store = Store::Sqlite(Arc::new(
        SqliteStore::open(dir, Default::default()).unwrap(),
    ));
    for r in golden_reports() {
        store
            .ingest(
                vec![Arc::new(Ingest::from_report(&r))],
                at("2026-11-24T00:10:00Z"),
            )
            .await
            .unwrap();
    }
    store
}

/// The golden EC2 snapshot plus one instance without an archdomain tag (`scratch-1`, no
/// traffic), written into `dir`: the golden fleet has no untagged host of its own.
fn snapshot_with_untagged(dir: &Path) -> PathBuf {
    let mut snap: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root().join("golden/enrich/ec2-snapshot.json")).unwrap(),
    )
    .unwrap();
    let instances = snap["instances"].as_array_mut().unwrap();
    let mut scratch = instances[3].clone();
    scratch["instance_id"] = "i-0e1b2c3d4e5f60741".into();
    scratch["private_ips"] = serde_json::json!(["10.0.4.41"]);
    scratch["tags"] = serde_json::json!({"Name": "scratch-1", "env": "prod"});
    instances.push(scratch);
    let path = dir.join("ec2-snapshot.json");
    std::fs::write(&path, serde_json::to_vec(&snap).unwrap()).unwrap();
    path
}

/// The golden configuration, mailing to `smtpd` with `password`, state in `data_dir`.
fn config(smtpd: &Smtpd, data_dir: &Path, password: &str) -> Config {
    let mut c = Config::from_file(&root().join("golden/enrich/collector.toml")).unwrap();
    c.data_dir = data_dir.to_owned();
    c.enrich.ec2.snapshot_file = Some(snapshot_with_untagged(data_dir));
    let allowed = data_dir.join("allowed-archdomains.txt");
    std::fs::write(&allowed, ALLOWED).unwrap();
    let pw = data_dir.join("smtp-password");
    std::fs::write(&pw, format!("{password}\n")).unwrap();
    let r = &mut c.reports;
    r.to = vec![
        "ops@example.com".into(),
        "Security <sec@example.com>".into(),
    ];
    r.from = "trafficmap <trafficmap@example.com>".into();
    r.allowed_archdomains_file = Some(allowed);
    // The compliance section alone: its text is compared whole (the cost section is compared
    // with `report costs` in the service test).
    r.costs = false;
    r.smtp.host = "127.0.0.1".into();
    r.smtp.port = smtpd.port;
    r.smtp.tls = SmtpTls::Starttls;
    r.smtp.username = Some(USER.into());
    r.smtp.password_file = Some(pw);
    r.smtp.ca_file = Some(smtpd.ca_file.clone());
    r.smtp.timeout = Duration::from_secs(10);
    c.validate().unwrap();
    c
}

fn enricher(cfg: &Config) -> Arc<Enricher> {
    let (e, _) = Enricher::new(&cfg.enrich).unwrap();
    let snap = std::fs::read(cfg.enrich.ec2.snapshot_file.as_ref().unwrap()).unwrap();
    e.set_cloud(CloudSnapshot::from_json(&snap).unwrap());
    e
}

fn metric_line(m: &Metrics, result: &str) -> String {
    let want = format!("trafficmap_collector_report_mails_total{{result=\"{result}\"}} ");
    m.encode()
        .lines()
        .find(|l| l.starts_with(&want))
        .unwrap_or(&want)
        .to_owned()
}

fn part(msg: &serde_json::Value, content_type: &str) -> String {
    msg["parts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["content_type"] == content_type)
        .unwrap_or_else(|| panic!("no {content_type} part in {msg}"))["text"]
        .as_str()
        .unwrap()
        .replace("\r\n", "\n")
}

/// The text part for the golden fleet on 2026-11-23 (with `scratch-1`), against [`ALLOWED`]:
/// cache-1 (EC2, no traffic) and legacy-db (inventory, seen by batch-1) carry tags not
/// allowed; nobody is `online/search`; scratch-1 has no archdomain; batch-1 (stage) calling
/// db-1 (prod) on 5432 is the one cross-env edge, and the 22nd had no stage host at all;
/// db-1's ` Online/Storage/Postgres ` is allowed by the `online/storage/` subtree.
const GOLDEN_TEXT: &str = "\
trafficmap daily report for 2026-11-23 (UTC)

Archdomain compliance, 2026-11-23 00:00:00 UTC .. 2026-11-24 00:00:00 UTC

Tags seen that are not allowed (2):
  offline/storage: legacy-db (ip:10.9.0.40)
  online/cache: cache-1 (i-0c1b2c3d4e5f60731)

Allowed tags nobody uses (1):
  online/search

Hosts without tags (1):
  scratch-1 (i-0e1b2c3d4e5f60741)

Cross-env edges new today (1):
  offline/batch (stage) -> online/storage/postgres (prod)  port(s) 5432  550,000 bytes

Allowed tags in use (3):
  offline/batch: 1 host
  online/api: 2 hosts
  online/storage/postgres: 1 host
";

/// The HTML part's lists (the rest of it is the same page around them).
const GOLDEN_HTML_ITEMS: &[&str] = &[
    "<h3>Tags seen that are not allowed (2)</h3>\n<ul>\n<li>offline/storage: legacy-db (ip:10.9.0.40)</li>\n<li>online/cache: cache-1 (i-0c1b2c3d4e5f60731)</li>\n</ul>\n",
    "<h3>Allowed tags nobody uses (1)</h3>\n<ul>\n<li>online/search</li>\n</ul>\n",
    "<h3>Hosts without tags (1)</h3>\n<ul>\n<li>scratch-1 (i-0e1b2c3d4e5f60741)</li>\n</ul>\n",
    "<h3>Cross-env edges new today (1)</h3>\n<ul>\n<li>offline/batch (stage) -&gt; online/storage/postgres (prod)  port(s) 5432  550,000 bytes</li>\n</ul>\n",
];

#[tokio::test]
#[ignore = "needs aiosmtpd: cargo xtask test --only mail"]
async fn golden_report_mailed_once_over_starttls_with_auth() {
    let smtpd = Smtpd::start();
    let data = tempfile::tempdir().unwrap();
    let store = golden_store(data.path()).await;
    let cfg = config(&smtpd, data.path(), PASSWORD);
    let e = enricher(&cfg);
    let metrics = Metrics::new();

    // 06:00 on the 24th: the 23rd is due, and only it (nothing mailed before).
    let mut sent = SentDays::open(data.path()).unwrap();
    let s = dailyreport::pass(
        &cfg,
        &store,
        &e,
        &mut sent,
        &metrics,
        at("2026-11-24T06:00:00Z"),
    )
    .await;
    assert_eq!((s.sent, s.failed), (1, 0));
    let got = smtpd.wait_for(1);
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(m["login"], USER);
    assert_eq!(m["tls"], true);
    assert_eq!(m["mail_from"], "trafficmap@example.com");
    assert_eq!(
        m["rcpt_tos"],
        serde_json::json!(["ops@example.com", "sec@example.com"])
    );
    assert_eq!(m["from"], "trafficmap <trafficmap@example.com>");
    assert_eq!(m["to"], "ops@example.com, Security <sec@example.com>");
    assert_eq!(m["content_type"], "multipart/alternative");
    let text = part(m, "text/plain");
    let html = part(m, "text/html");
    assert_eq!(
        m["subject"],
        "[trafficmap] daily report 2026-11-23: 2 tags not allowed, 1 host untagged, 1 cross-env edge new"
    );
    assert_eq!(text, GOLDEN_TEXT);
    assert!(html.starts_with("<!DOCTYPE html>\n"), "{html}");
    for item in GOLDEN_HTML_ITEMS {
        assert!(html.contains(item), "no {item:?} in\n{html}");
    }
    assert_eq!(html.matches("<li>").count(), 8, "{html}");
    assert_eq!(
        metric_line(&metrics, "sent"),
        "trafficmap_collector_report_mails_total{result=\"sent\"} 1"
    );

    // A restart the same day mails nothing again.
    let mut sent = SentDays::open(data.path()).unwrap();
    assert_eq!(sent.days(), [d("2026-11-23")]);
    let s = dailyreport::pass(
        &cfg,
        &store,
        &e,
        &mut sent,
        &metrics,
        at("2026-11-24T18:00:00Z"),
    )
    .await;
    assert_eq!((s.sent, s.failed), (0, 0));
    // Down until the 26th at 07:00: the 24th and the 25th go out once each, in order.
    let s = dailyreport::pass(
        &cfg,
        &store,
        &e,
        &mut sent,
        &metrics,
        at("2026-11-26T07:00:00Z"),
    )
    .await;
    assert_eq!((s.sent, s.failed), (2, 0));
    let got = smtpd.wait_for(3);
    assert_eq!(got.len(), 3);
    let subjects: Vec<&str> = got.iter().map(|m| m["subject"].as_str().unwrap()).collect();
    assert!(
        subjects[1].starts_with("[trafficmap] daily report 2026-11-24: "),
        "{subjects:?}"
    );
    assert!(
        subjects[2].starts_with("[trafficmap] daily report 2026-11-25: "),
        "{subjects:?}"
    );
    assert_eq!(
        SentDays::open(data.path()).unwrap().days(),
        [d("2026-11-23"), d("2026-11-24"), d("2026-11-25")]
    );
    assert_eq!(
        metric_line(&metrics, "sent"),
        "trafficmap_collector_report_mails_total{result=\"sent\"} 3"
    );
    assert_eq!(
        smtpd
            .auth_log()
            .lines()
            .filter(|l| l.ends_with(" ok"))
            .count(),
        3
    );
}

#[tokio::test]
#[ignore = "needs aiosmtpd: cargo xtask test --only mail"]
async fn a_wrong_password_is_a_clear_error_and_nothing_is_recorded() {
    let smtpd = Smtpd::start();
    let data = tempfile::tempdir().unwrap();
    let store = golden_store(data.path()).await;
    let cfg = config(&smtpd, data.path(), "wrong password");
    let e = enricher(&cfg);
    let err = dailyreport::send_day(
        &cfg,
        &store,
        &e,
        d("2026-11-23"),
        at("2026-11-24T06:00:00Z"),
    )
    .await
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        format!(
            "SMTP server 127.0.0.1:{} refused the login of `reporter` (permanent error (535): 5.7.8 Authentication credentials invalid): check reports.smtp.username and the password in reports.smtp.password_file",
            smtpd.port
        )
    );
    let metrics = Metrics::new();
    let mut sent = SentDays::open(data.path()).unwrap();
    let s = dailyreport::pass(
        &cfg,
        &store,
        &e,
        &mut sent,
        &metrics,
        at("2026-11-24T06:00:00Z"),
    )
    .await;
    assert_eq!((s.sent, s.failed), (0, 1));
    assert_eq!(
        metric_line(&metrics, "failed"),
        "trafficmap_collector_report_mails_total{result=\"failed\"} 1"
    );
    assert!(!data.path().join(dailyreport::SENT_FILE).exists());
    assert_eq!(
        SentDays::open(data.path()).unwrap().days(),
        Vec::<NaiveDate>::new()
    );
    assert!(smtpd.received().is_empty());
    assert!(
        smtpd.auth_log().lines().all(|l| l.ends_with(" refused")),
        "{}",
        smtpd.auth_log()
    );
    assert!(!smtpd.auth_log().is_empty());
}

/// A configuration file for the binary: the golden enrichment (absolute paths), the store in
/// `data_dir`, mailing to `smtpd` at 00:00 UTC (so yesterday is always due).
fn config_file(smtpd: &Smtpd, data_dir: &Path) -> PathBuf {
    let g = root().join("golden/enrich");
    let snapshot = snapshot_with_untagged(data_dir);
    std::fs::write(data_dir.join("allowed-archdomains.txt"), ALLOWED).unwrap();
    std::fs::write(data_dir.join("smtp-password"), format!("{PASSWORD}\n")).unwrap();
    let text = format!(
        r#"allow_unauthenticated = true
data_dir = "{data}"

[daily]
enabled = false

[enrich]
inventory_file = "{g}/inventory.toml"
foreign_file = "{g}/foreign-ips.txt"
price_file = "{g}/prices.csv"

[enrich.ec2]
snapshot_file = "{snapshot}"

[enrich.dns]
enabled = false

[enrich.env]
aliases = {{ "production" = "prod" }}

[reports]
schedule = "00:00"
to = ["ops@example.com"]
from = "trafficmap <trafficmap@example.com>"
allowed_archdomains_file = "{data}/allowed-archdomains.txt"

[reports.smtp]
host = "127.0.0.1"
port = {port}
username = "{USER}"
password_file = "{data}/smtp-password"
ca_file = "{ca}"
timeout = "10s"
"#,
        data = data_dir.display(),
        g = g.display(),
        port = smtpd.port,
        ca = smtpd.ca_file.display(),
        snapshot = snapshot.display(),
    );
    let path = data_dir.join("collector.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn cli(config: &Path, args: &[&str]) -> String {
    let out = Command::new(bin())
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `report compliance` prints what the mail says; `report send --dry-run` prints the message
/// and sends nothing.
#[tokio::test]
#[ignore = "needs aiosmtpd: cargo xtask test --only mail"]
async fn the_command_line_prints_the_same_report() {
    let smtpd = Smtpd::start();
    let data = tempfile::tempdir().unwrap();
    drop(golden_store(data.path()).await);
    let config = config_file(&smtpd, data.path());
    assert_eq!(
        cli(&config, &["report", "compliance", "--day", "2026-11-23"]),
        GOLDEN_TEXT
    );
    let json: serde_json::Value = serde_json::from_str(&cli(
        &config,
        &[
            "report",
            "compliance",
            "--day",
            "2026-11-23",
            "--format",
            "json",
        ],
    ))
    .unwrap();
    assert_eq!(json["day"], "2026-11-23");
    let c = &json["compliance"];
    assert_eq!(
        c["not_allowed"],
        serde_json::json!({
            "offline/storage": ["legacy-db (ip:10.9.0.40)"],
            "online/cache": ["cache-1 (i-0c1b2c3d4e5f60731)"],
        })
    );
    assert_eq!(c["unused"], serde_json::json!(["online/search"]));
    assert_eq!(
        c["untagged"],
        serde_json::json!(["scratch-1 (i-0e1b2c3d4e5f60741)"])
    );
    assert_eq!(
        c["new_cross_env"],
        serde_json::json!([{
            "client_env": "stage",
            "server_env": "prod",
            "client": "offline/batch (stage)",
            "server": "online/storage/postgres (prod)",
            "ports": [5432],
            "bytes": 550000,
        }])
    );
    let msg = cli(
        &config,
        &["report", "send", "--day", "2026-11-23", "--dry-run"],
    );
    let headers: Vec<&str> = msg.split("\r\n\r\n").next().unwrap().lines().collect();
    for h in [
        "From: trafficmap <trafficmap@example.com>",
        "To: ops@example.com",
        "MIME-Version: 1.0",
    ] {
        assert!(headers.contains(&h), "no `{h}` in {headers:?}");
    }
    assert!(
        headers
            .iter()
            .any(|h| h.starts_with("Content-Type: multipart/alternative;")),
        "{headers:?}"
    );
    assert!(
        msg.contains("Content-Type: text/plain; charset=utf-8"),
        "{msg}"
    );
    assert!(
        msg.contains("Content-Type: text/html; charset=utf-8"),
        "{msg}"
    );
    assert!(smtpd.received().is_empty());
    assert!(!data.path().join(dailyreport::SENT_FILE).exists());
}

/// The service mails yesterday once, records it, and after a restart (SIGTERM, start again)
/// mails nothing more.
#[tokio::test]
#[ignore = "needs aiosmtpd: cargo xtask test --only mail"]
async fn the_service_mails_yesterday_once_across_a_restart() {
    let smtpd = Smtpd::start();
    let data = tempfile::tempdir().unwrap();
    let config = config_file(&smtpd, data.path());
    let config = config.to_str().unwrap();
    let yesterday = Utc::now().date_naive() - chrono::Days::new(1);
    let c = Collector::start(&["--config", config]);
    let got = smtpd.wait_for(1);
    assert_eq!(got.len(), 1);
    let subject = got[0]["subject"].as_str().unwrap();
    assert!(
        subject.starts_with(&format!("[trafficmap] daily report {yesterday}: ")),
        "{subject}"
    );
    // The mail ends with the cost report, exactly as `report costs` prints it.
    let day = yesterday.to_string();
    let costs = cli(Path::new(config), &["report", "costs", "--day", &day]);
    assert!(costs.starts_with("Instance costs, "), "{costs}");
    let text = part(&got[0], "text/plain");
    assert!(
        text.ends_with(&format!("\n\n{costs}")),
        "{text}\n---\n{costs}"
    );
    assert!(part(&got[0], "text/html").contains("<h2>Instance costs, "));
    // Made once the EC2 data was loaded: the snapshot's untagged instance is there.
    assert!(
        text.contains("\nHosts without tags (1):\n  scratch-1 (i-0e1b2c3d4e5f60741)\n"),
        "{text}"
    );
    let sent_line = "trafficmap_collector_report_mails_total{result=\"sent\"} 1";
    let deadline = Instant::now() + Duration::from_secs(30);
    while !c.get("/metrics").text().lines().any(|l| l == sent_line) {
        assert!(Instant::now() < deadline, "{}", c.get("/metrics").text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(SentDays::open(data.path()).unwrap().days(), [yesterday]);
    assert!(c.terminate().success());

    let c = Collector::start(&["--config", config]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !c.log().contains("reports: daily mail scheduled") {
        assert!(Instant::now() < deadline, "{}", c.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    // The pass right after that line finds nothing due; give it ample time to be wrong.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(smtpd.received().len(), 1);
    assert!(
        !c.get("/metrics")
            .text()
            .contains("trafficmap_collector_report_mails_total"),
        "{}",
        c.get("/metrics").text()
    );
    assert!(c.terminate().success());
    assert_eq!(SentDays::open(data.path()).unwrap().days(), [yesterday]);
}
