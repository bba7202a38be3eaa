//! The archive (`src/archive.rs`) against a local directory and against a real S3 API (moto's
//! server, `moto_server` from PyPI): the golden store's two days archived with their exact
//! object names and bytes; a second pass sends nothing; a late report re-sends only its day;
//! retention deletes exactly the old day; a day restored into an empty store gives back maps
//! byte-identical to the archived ones.
//!
//! The S3 test needs moto: `cargo xtask test --only archive` (which sets
//! TRAFFICMAP_MOTO_SERVER), or `cargo test -p trafficmap-collector --test archive -- --ignored`
//! with the xtask venv in place.

mod support;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{DateTime, NaiveDate, Utc};
use object_store::{ObjectStore, ObjectStoreExt as _, path::Path as ObjPath};
use trafficmap_collector::{
    archive::{self, Archive, DayOutcome},
    config::{self, Config},
    enrich::refresh::Enricher,
    ingest::Ingest,
    mapservice,
    metrics::Metrics,
    store::{Store, sqlite::SqliteStore},
};
use trafficmap_model::{cloud::CloudSnapshot, map::View, report::Report};

use support::{bin, free_port, golden_reports, require, root, try_request};

fn d22() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 22).unwrap()
}

fn d23() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 23).unwrap()
}

fn generated_at() -> DateTime<Utc> {
    "2026-11-24T00:10:00Z".parse().unwrap()
}

/// After the schedule (01:00) of the 24th: both days are due.
fn pass_time() -> DateTime<Utc> {
    "2026-11-24T02:00:00Z".parse().unwrap()
}

fn open_sqlite(dir: &Path) -> Store {
    Store::Sqlite(Arc::new(
        SqliteStore::open(dir, Default::default()).unwrap(),
    ))
}

async fn golden_store(dir: &Path) -> Store {
    let store = open_sqlite(dir);
    for r in golden_reports() {
        store
            .ingest(vec![Arc::new(Ingest::from_report(&r))], generated_at())
            .await
            .unwrap();
    }
    store
}

fn enricher() -> Arc<Enricher> {
    let cfg = Config::from_file(&root().join("golden/enrich/collector.toml")).unwrap();
    let (e, _) = Enricher::new(&cfg.enrich).unwrap();
    let snap = std::fs::read(cfg.enrich.ec2.snapshot_file.as_ref().unwrap()).unwrap();
    e.set_cloud(CloudSnapshot::from_json(&snap).unwrap());
    e
}

async fn write_maps(store: &Store, e: &Enricher, out: &Path, day: NaiveDate) {
    let rates = Config::default().cost;
    let written = mapservice::write_day(store, e, &rates, out, day, generated_at(), None)
        .await
        .unwrap();
    assert_eq!(written.len(), View::ALL.len());
}

/// Every object under the store's root: name → (bytes, ETag or last-modified).
async fn objects(os: &dyn ObjectStore) -> BTreeMap<String, (Vec<u8>, String)> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![None];
    while let Some(dir) = dirs.pop() {
        let l = os.list_with_delimiter(dir.as_ref()).await.unwrap();
        dirs.extend(l.common_prefixes.into_iter().map(Some));
        for o in l.objects {
            let body = os.get(&o.location).await.unwrap().bytes().await.unwrap();
            let stamp = format!("{:?} {}", o.e_tag, o.last_modified.to_rfc3339());
            out.insert(o.location.to_string(), (body.to_vec(), stamp));
        }
    }
    out
}

fn names(day: NaiveDate, prefix: &str) -> Vec<String> {
    let d = day.format("%Y-%m-%d");
    let c = day.format("%Y%m%d");
    let mut v: Vec<String> = [
        format!("clusters-{c}.json"),
        format!("instances-{c}.json"),
        "manifest.json".into(),
        format!("security-groups-{c}.json"),
        format!("store-{c}.jsonl.gz"),
        // Issue 11: the workloads view.
        format!("workloads-{c}.json"),
    ]
    .into_iter()
    .map(|n| format!("{prefix}{d}/{n}"))
    .collect();
    v.sort();
    v
}

/// The whole scenario against `cfg.target`; `raw` lists the target independently of the
/// archive's own client. `prefix` is the object-name prefix `raw` sees (with a trailing `/`).
async fn scenario(cfg: config::Archive, raw: Arc<dyn ObjectStore>, prefix: &str) {
    let data = tempfile::tempdir().unwrap();
    let out = data.path().join("maps");
    let store = golden_store(data.path()).await;
    let e = enricher();
    write_maps(&store, &e, &out, d22()).await;
    write_maps(&store, &e, &out, d23()).await;
    let metrics = Metrics::new();
    let a = Archive::open(&cfg).unwrap();

    // First pass: both days, every file, exactly these names.
    assert_eq!(
        a.due(&cfg, &store, pass_time()).await.unwrap(),
        [d22(), d23()]
    );
    let s = a.pass(&cfg, &store, &out, &metrics, pass_time()).await;
    assert_eq!((s.uploaded, s.unchanged, s.failed), (2, 0, 0));
    let first = objects(raw.as_ref()).await;
    let mut want = names(d22(), prefix);
    want.extend(names(d23(), prefix));
    assert_eq!(first.keys().cloned().collect::<Vec<_>>(), want);
    for day in [d22(), d23()] {
        for v in View::ALL {
            let local = std::fs::read(out.join(v.file_name(day))).unwrap();
            let key = format!("{prefix}{}/{}", day.format("%Y-%m-%d"), v.file_name(day));
            assert_eq!(first[&key].0, local, "{key}");
        }
        let m = a.manifest(day).await.unwrap().unwrap();
        // One per view (four with issue 11's workloads) and the store extract.
        assert_eq!(m.files.len(), 5);
        for f in &m.files {
            let key = format!("{prefix}{}/{}", day.format("%Y-%m-%d"), f.name);
            assert_eq!(f.sha256, archive::sha256(&first[&key].0));
            assert_eq!(f.bytes, first[&key].0.len() as u64);
        }
    }
    assert_eq!(a.days().await.unwrap(), [d22(), d23()]);
    let text = metrics.encode();
    for line in [
        "trafficmap_collector_archive_days_total{result=\"uploaded\"} 2".to_owned(),
        format!(
            "trafficmap_collector_archive_last_success_timestamp_seconds {}",
            pass_time().timestamp()
        ),
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
    }

    // Later stamps can only differ if something was written again (1 s: S3's resolution).
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // Second pass: nothing changed, nothing sent.
    let s = a.pass(&cfg, &store, &out, &metrics, pass_time()).await;
    assert_eq!((s.uploaded, s.unchanged, s.failed), (0, 2, 0));
    assert_eq!(objects(raw.as_ref()).await, first);
    assert_eq!(metric(&metrics, "unchanged"), 2);

    // An upload interrupted before its manifest (files there, no manifest.json): the day is
    // not archived, and the next pass sends it whole again.
    let m22 = ObjPath::from(format!("{prefix}2026-11-22/manifest.json"));
    raw.delete(&m22).await.unwrap();
    assert_eq!(a.days().await.unwrap(), [d23()]);
    assert_eq!(
        a.due(&cfg, &store, pass_time()).await.unwrap(),
        [d22(), d23()]
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let s = a.pass(&cfg, &store, &out, &metrics, pass_time()).await;
    assert_eq!((s.uploaded, s.unchanged, s.failed), (1, 1, 0));
    let again = objects(raw.as_ref()).await;
    assert_eq!(
        again.keys().collect::<Vec<_>>(),
        first.keys().collect::<Vec<_>>()
    );
    for (k, (bytes, stamp)) in &again {
        assert_eq!(bytes, &first[k].0, "{k}");
        // The 22nd's files were written again; the 23rd's were not touched.
        assert_eq!(stamp == &first[k].1, k.contains("2026-11-23"), "{k}");
    }
    let first = again;

    // A late report for the 23rd: its maps are rewritten, and only its changed files go.
    let mut late = Report::from_json(
        &std::fs::read(root().join("golden/reports/20261123-api-1-1000.json")).unwrap(),
    )
    .unwrap();
    late.report_id = "late-report-for-the-23rd".into();
    late.window.start += chrono::TimeDelta::hours(5);
    late.window.end += chrono::TimeDelta::hours(5);
    store
        .ingest(vec![Arc::new(Ingest::from_report(&late))], pass_time())
        .await
        .unwrap();
    write_maps(&store, &e, &out, d23()).await;
    let outcome = a
        .archive_day(&store, &out, d23(), pass_time())
        .await
        .unwrap();
    let third = objects(raw.as_ref()).await;
    let changed: Vec<String> = third
        .iter()
        .filter(|(k, v)| first[*k].0 != v.0)
        .map(|(k, _)| k.clone())
        .collect();
    let DayOutcome::Uploaded(sent) = outcome else {
        panic!("the 23rd changed but nothing was sent")
    };
    // Every file sent differs (plus the manifest), every file that differs was sent, and the
    // 22nd is untouched, bytes and stamps.
    let mut sent_keys: Vec<String> = sent
        .iter()
        .map(|n| format!("{prefix}2026-11-23/{n}"))
        .chain([format!("{prefix}2026-11-23/manifest.json")])
        .collect();
    sent_keys.sort();
    assert_eq!(changed, sent_keys);
    assert!(sent.contains(&"store-20261123.jsonl.gz".to_owned()));
    for k in names(d22(), prefix) {
        assert_eq!(third[&k], first[&k], "{k}");
    }
    for k in names(d23(), prefix) {
        if !changed.contains(&k) {
            assert_eq!(third[&k], first[&k], "{k}");
        }
    }

    // Restore the (changed) 23rd into an empty data directory: the archived maps come back,
    // and maps built from the restored store are byte-identical to them.
    let fresh = tempfile::tempdir().unwrap();
    let restored_store = open_sqlite(fresh.path());
    let rout = fresh.path().join("maps");
    let files = a
        .restore(d23(), &restored_store, &rout, pass_time())
        .await
        .unwrap();
    // The four views' maps (issue 11 added workloads) and the store extract.
    assert_eq!(files.len(), 5);
    let rebuilt = tempfile::tempdir().unwrap();
    write_maps(&restored_store, &e, rebuilt.path(), d23()).await;
    for v in View::ALL {
        let original = std::fs::read(out.join(v.file_name(d23()))).unwrap();
        assert_eq!(
            std::fs::read(rout.join(v.file_name(d23()))).unwrap(),
            original
        );
        let again = std::fs::read(rebuilt.path().join(v.file_name(d23()))).unwrap();
        assert!(
            again == original,
            "{} rebuilt from the restored store differs",
            v.file_name(d23())
        );
    }
    // The restored store's extract is the archived one, and a second restore is refused.
    let ex = archive::extract::write(&restored_store, d23())
        .await
        .unwrap();
    let key = format!("{prefix}2026-11-23/store-20261123.jsonl.gz");
    assert_eq!(ex, third[&key].0);
    assert!(matches!(
        a.restore(d23(), &restored_store, &rout, pass_time()).await,
        Err(archive::ArchiveError::DayInStore { .. })
    ));

    // Retention of 2 days on the 25th keeps the 23rd on: exactly the 22nd goes.
    let short = config::Archive {
        retention: Duration::from_secs(2 * 86_400),
        ..cfg.clone()
    };
    let later: DateTime<Utc> = "2026-11-25T02:00:00Z".parse().unwrap();
    let s = a.pass(&short, &store, &out, &metrics, later).await;
    assert_eq!((s.uploaded, s.unchanged, s.failed), (0, 1, 0));
    let fourth = objects(raw.as_ref()).await;
    assert_eq!(
        fourth.keys().cloned().collect::<Vec<_>>(),
        names(d23(), prefix)
    );
    assert_eq!(a.days().await.unwrap(), [d23()]);
}

fn metric(m: &Metrics, result: &'static str) -> u64 {
    m.archive_days
        .get_or_create(&trafficmap_collector::metrics::ArchiveResult { result })
        .get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_to_a_local_directory() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("archive");
    let cfg = config::Archive {
        enabled: true,
        target: format!("file://{}/daily", target.display()),
        ..Default::default()
    };
    std::fs::create_dir_all(&target).unwrap();
    let raw = object_store::local::LocalFileSystem::new_with_prefix(&target).unwrap();
    scenario(cfg, Arc::new(raw), "daily/").await;
}

/// Runs the collector's command line; returns its standard output (it must succeed).
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

/// `archive run`, `list` and `restore` as an operator types them, on the golden store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archive_commands() {
    let data = tempfile::tempdir().unwrap();
    let store = golden_store(data.path()).await;
    let e = enricher();
    let maps = data.path().join("maps");
    write_maps(&store, &e, &maps, d22()).await;
    write_maps(&store, &e, &maps, d23()).await;
    drop(store);
    let target = data.path().join("archive");
    let config = data.path().join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[archive]\ntarget = \"file://{}\"\n",
            data.path().display(),
            target.display()
        ),
    )
    .unwrap();
    let files = |c: &str| {
        format!(
            "instances-{c}.json clusters-{c}.json security-groups-{c}.json workloads-{c}.json store-{c}.jsonl.gz"
        )
    };
    assert_eq!(
        cli(&config, &["archive", "run"]),
        format!(
            "2026-11-22\tuploaded {}\n2026-11-23\tuploaded {}\n",
            files("20261122"),
            files("20261123")
        )
    );
    // Both days are older than lookback_days: a pass leaves them; one day on demand is
    // compared again and is unchanged.
    assert_eq!(cli(&config, &["archive", "run"]), "");
    assert_eq!(
        cli(&config, &["archive", "run", "--day", "2026-11-23"]),
        "2026-11-23\tunchanged\n"
    );
    let listed = cli(&config, &["archive", "list"]);
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 2, "{listed}");
    for (line, (day, c)) in lines
        .iter()
        .zip([("2026-11-22", "20261122"), ("2026-11-23", "20261123")])
    {
        let bytes: u64 = files(c)
            .split(' ')
            .map(|f| std::fs::metadata(target.join(day).join(f)).unwrap().len())
            .sum();
        let want = format!("{day}\t5 files\t{bytes} bytes\tarchived ");
        assert!(line.starts_with(&want), "{line} (want {want}...)");
    }
    let fresh = tempfile::tempdir().unwrap();
    let into = fresh.path().join("restored");
    let into_s = into.display().to_string();
    assert_eq!(
        cli(
            &config,
            &[
                "archive",
                "restore",
                "--day",
                "2026-11-23",
                "--into",
                &into_s
            ]
        ),
        format!(
            "2026-11-23\trestored {} into {into_s}/maps\n",
            files("20261123")
        )
    );
    let restored = open_sqlite(&into);
    let rebuilt = tempfile::tempdir().unwrap();
    write_maps(&restored, &e, rebuilt.path(), d23()).await;
    for v in View::ALL {
        let original = std::fs::read(maps.join(v.file_name(d23()))).unwrap();
        assert!(std::fs::read(into.join("maps").join(v.file_name(d23()))).unwrap() == original);
        assert!(
            std::fs::read(rebuilt.path().join(v.file_name(d23()))).unwrap() == original,
            "{} rebuilt from the restored store differs",
            v.file_name(d23())
        );
    }
}

/// The service archives on its own: the first pass runs at start, and a SIGTERM stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_archives_finished_days() {
    let data = tempfile::tempdir().unwrap();
    let store = golden_store(data.path()).await;
    let e = enricher();
    let maps = data.path().join("maps");
    write_maps(&store, &e, &maps, d22()).await;
    write_maps(&store, &e, &maps, d23()).await;
    drop(store);
    let target = data.path().join("archive");
    let config = data.path().join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\n[enrich.dns]\nenabled = false\n[archive]\nenabled = true\ntarget = \"file://{}\"\ninterval = \"10s\"\n",
            data.path().display(),
            target.display()
        ),
    )
    .unwrap();
    let c = support::Collector::start(&["--config", config.to_str().unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !c.log().contains("archive pass done") {
        assert!(Instant::now() < deadline, "no archive pass:\n{}", c.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = c.log();
    assert!(
        log.lines().any(|l| l.contains("archive pass done")
            && l.contains("uploaded=2")
            && l.contains("failed=0")),
        "{log}"
    );
    assert!(c.terminate().success());
    for day in ["2026-11-22", "2026-11-23"] {
        let m: archive::Manifest =
            serde_json::from_slice(&std::fs::read(target.join(day).join("manifest.json")).unwrap())
                .unwrap();
        let compact = day.replace('-', "");
        for v in View::ALL {
            let name = format!("{}-{compact}.json", v.as_str());
            let local = std::fs::read(maps.join(&name)).unwrap();
            let f = m.files.iter().find(|f| f.name == name).unwrap();
            assert_eq!(f.sha256, archive::sha256(&local), "{name}");
            assert_eq!(std::fs::read(target.join(day).join(&name)).unwrap(), local);
        }
    }
}

struct Moto {
    child: Child,
    url: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_moto() -> Option<Moto> {
    let bin = std::env::var_os("TRAFFICMAP_MOTO_SERVER")
        .map(PathBuf::from)
        .or_else(|| {
            let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()));
            Some(home.join(".cache/trafficmap/venv/bin/moto_server")).filter(|p| p.exists())
        });
    if !require("moto_server (pip install 'moto[server]')", bin.is_some()) {
        return None;
    }
    let port = free_port();
    let child = Command::new(bin?)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting moto_server");
    let moto = Moto {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while try_request(addr, "GET", "/moto-api/", &[], b"").is_err() {
        assert!(Instant::now() < deadline, "moto_server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(moto)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs moto_server: cargo xtask test --only archive"]
async fn archive_to_s3_through_moto() {
    let Some(moto) = start_moto() else { return };
    // Credentials from a shared-credentials file, the `archive.credentials_file` way.
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("credentials");
    std::fs::write(
        &creds,
        "[archive]\naws_access_key_id = testing\naws_secret_access_key = testing\n",
    )
    .unwrap();
    let cfg = config::Archive {
        enabled: true,
        target: "s3://trafficmap-archive/collector/daily".into(),
        endpoint_url: Some(moto.url.clone()),
        region: Some("us-east-1".into()),
        allow_http: true,
        credentials_file: Some(creds),
        credentials_profile: "archive".into(),
        ..Default::default()
    };
    // No bucket yet: the pass fails, counts it, stores nothing and sets no success time.
    {
        let data = tempfile::tempdir().unwrap();
        let store = golden_store(data.path()).await;
        let out = data.path().join("maps");
        write_maps(&store, &enricher(), &out, d22()).await;
        let metrics = Metrics::new();
        let a = Archive::open(&cfg).unwrap();
        let s = a.pass(&cfg, &store, &out, &metrics, pass_time()).await;
        assert_eq!((s.uploaded, s.unchanged, s.failed), (0, 0, 1));
        let text = metrics.encode();
        for line in [
            "trafficmap_collector_archive_days_total{result=\"failed\"} 1",
            "trafficmap_collector_archive_last_success_timestamp_seconds 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
    }
    // The bucket, made as an operator would (moto accepts an unsigned request).
    let addr = moto.url.trim_start_matches("http://").parse().unwrap();
    let r = try_request(addr, "PUT", "/trafficmap-archive", &[], b"").unwrap();
    assert_eq!(r.status, 200, "creating the bucket");
    let raw = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name("trafficmap-archive")
        .with_endpoint(&moto.url)
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id("testing")
        .with_secret_access_key("testing")
        .build()
        .unwrap();
    scenario(cfg, Arc::new(raw), "collector/daily/").await;
    // Listed through the bucket's own root too: nothing outside the prefix.
    let raw: Arc<dyn ObjectStore> = Arc::new(
        object_store::aws::AmazonS3Builder::new()
            .with_bucket_name("trafficmap-archive")
            .with_endpoint(&moto.url)
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id("testing")
            .with_secret_access_key("testing")
            .build()
            .unwrap(),
    );
    let root_list = raw.list_with_delimiter(None).await.unwrap();
    assert_eq!(
        root_list.common_prefixes,
        [ObjPath::from("collector")],
        "only the archive's prefix in the bucket"
    );
    assert!(root_list.objects.is_empty());
}
