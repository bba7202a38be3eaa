//! Collector benchmarks (`cargo xtask bench collector` runs this with the release build), each
//! with a floor measured in the same run, since absolute figures move with the machine:
//!
//! - **ingest**: the real collector binary pinned to one core (`taskset -c 0`), `--agents`
//!   simulated agents (one keep-alive connection each, on the other core) posting reports of
//!   `--pairs` pairs as fast as they are acknowledged; pair records per second from the first
//!   request to the last commit, and the collector's peak memory (VmHWM). Floors, on the same
//!   core with the same bodies: parsing them alone (serde into the model's `Report`), and
//!   SQLite's own bulk insert of the same rows (one prepared INSERT, one transaction, an
//!   equivalent table, the store's pragmas). Profile: the collector's own steps in this process
//!   (parse, validate, convert, store write); what the end-to-end time has beyond their sum is
//!   HTTP, scheduling and batching.
//! - **map**: a day of `--hosts` agents with `--host-pairs` pairs each (half client, half
//!   server, peers are other agents, so every conversation is reported by both ends) in the
//!   embedded store; the time to build the day's three maps and the peak memory of this
//!   process. Floor: one SQL `GROUP BY` over the same stored rows giving per-pair sums.
//!   Profile: store read, enrichment sources, prepare (merge, resolve, price), render, serialize.
//!
//! Output: one `RESULT name value unit` line per measurement (parsed by xtask, which computes
//! the ratios and checks the targets); `profile_*` results are the phases.

use std::{
    io::Write as _,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{DateTime, DurationRound as _, TimeDelta, Utc};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use trafficmap_collector::{
    config::Config,
    enrich::refresh::Enricher,
    ingest::Ingest,
    mapservice,
    store::{
        Retention, Store,
        sqlite::{SqliteStore, Sync},
    },
};
use trafficmap_model::{map::View, report::Report};

// The same allocator as the collector binary.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn has(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity on this process.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn ip(host: usize) -> String {
    format!(
        "10.{}.{}.{}",
        100 + host / 65536,
        (host / 256) % 256,
        host % 256
    )
}

/// A report of `pairs` pairs for agent `host`, in the minute `start`.
fn report_json(id: &str, host: usize, hosts: usize, pairs: usize, start: DateTime<Utc>) -> String {
    let t = |d: DateTime<Utc>| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (s, e) = (t(start), t(start + TimeDelta::minutes(1)));
    let mut out = String::with_capacity(pairs * 330 + 600);
    out.push_str(&format!(
        r#"{{"schema":"trafficmap.report/v1","report_id":"{id}","seq":1,"agent":{{"version":"0.1.0","backend":"fexit","kernel":"6.1.0"}},"host":{{"hostname":"host-{host}","machine_id":"machine-{host:08}","addresses":["{}"]}},"window":{{"start":"{s}","end":"{e}"}},"health":{{"drops":{{}},"map_entries":1,"map_capacity":65536,"spool_dropped":0}},"pairs":["#,
        ip(host)
    ));
    for p in 0..pairs {
        // Half as client to the next hosts, half as server for the previous ones: both ends
        // of every conversation are reported.
        let (role, peer, port) = if p % 2 == 0 {
            (
                "client",
                (host + 1 + p / 2) % hosts,
                5000 + (p / 2) as u16 % 50,
            )
        } else {
            (
                "server",
                (host + hosts - 1 - p / 2) % hosts,
                5000 + (p / 2) as u16 % 50,
            )
        };
        if p > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            r#"{{"local_ip":"{}","peer_ip":"{}","server_port":{port},"role":"{role}","role_source":"observed","process":"svc-{}","bytes_sent":{},"bytes_received":{},"connections_opened":1,"connections_closed":0,"connections_active":1,"first_seen":"{s}","last_seen":"{s}"}}"#,
            ip(host),
            ip(peer),
            p % 7,
            1000 + p * 3,
            2000 + p * 5
        ));
    }
    out.push_str("]}");
    out
}

/// One agent: a keep-alive connection, `reports` reports posted one after the other.
async fn agent(addr: std::net::SocketAddr, bodies: Vec<Arc<Vec<u8>>>) -> usize {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).unwrap();
    let mut pairs = 0;
    let mut buf = vec![0u8; 4096];
    for body in &bodies {
        let head = format!(
            "POST /api/v1/reports HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(body).await.unwrap();
        // Read one response (headers + Content-Length body).
        let mut got = Vec::new();
        loop {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "collector closed the connection");
            got.extend_from_slice(&buf[..n]);
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if got.len() >= end + 4 + len {
                    assert!(
                        head.starts_with("http/1.1 200"),
                        "{}",
                        String::from_utf8_lossy(&got)
                    );
                    let text = String::from_utf8_lossy(&got[end + 4..end + 4 + len]).into_owned();
                    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                    pairs += v["pairs"].as_u64().unwrap() as usize;
                    break;
                }
            }
        }
    }
    pairs
}

fn bench_ingest(agents: usize, reports: usize, pairs: usize) {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // The simulated agents all connect from 127.0.0.1, where a real fleet has one address per
    // host: the per-address connection cap is raised to their number.
    let config = dir.path().join("bench.toml");
    std::fs::write(
        &config,
        format!("max_connections_per_address = {}\n", agents.max(1)),
    )
    .unwrap();
    let mut child = std::process::Command::new("taskset")
        .args(["-c", "0", env!("CARGO_BIN_EXE_trafficmap-collector")])
        .arg("--config")
        .arg(&config)
        .args([
            "--listen",
            &addr.to_string(),
            "--allow-unauthenticated",
            "--no-dns",
            "--log",
            "warn",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("taskset (util-linux) and the collector");
    pin_to(1);
    // Bodies prepared before the clock starts: the generator must not be the bottleneck.
    let base = Utc::now().duration_trunc(TimeDelta::minutes(1)).unwrap()
        - TimeDelta::minutes(reports as i64 + 5);
    let t = Instant::now();
    // Shared: the floors and the profile below use the same bodies.
    let work: Vec<Vec<Arc<Vec<u8>>>> = (0..agents)
        .map(|a| {
            (0..reports)
                .map(|r| {
                    Arc::new(
                        report_json(
                            &format!("bench-{a:06}-{r:06}-0000"),
                            a,
                            agents,
                            pairs,
                            base + TimeDelta::minutes(r as i64),
                        )
                        .into_bytes(),
                    )
                })
                .collect()
        })
        .collect();
    let bytes: usize = work.iter().flatten().map(|b| b.len()).sum();
    eprintln!(
        "prepared {} reports, {} MB of JSON in {:.1?}",
        agents * reports,
        bytes / 1_000_000,
        t.elapsed()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let wall = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(Instant::now() < deadline, "collector did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let start = Instant::now();
        let handles: Vec<_> = work
            .iter()
            .map(|w| tokio::spawn(agent(addr, w.clone())))
            .collect();
        let mut total = 0;
        for h in handles {
            total += h.await.unwrap();
        }
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(
            total,
            agents * reports * pairs,
            "every pair acknowledged as stored"
        );
        println!(
            "RESULT ingest_pairs_per_second {:.0} pairs/s",
            total as f64 / secs
        );
        println!(
            "RESULT ingest_reports_per_second {:.0} reports/s",
            (agents * reports) as f64 / secs
        );
        println!("RESULT ingest_wall {secs:.2} s");
        println!(
            "RESULT ingest_collector_peak_rss {} MiB",
            vm_hwm_kib(child.id()) / 1024
        );
        secs
    });
    // SIGKILL, not SIGTERM: a clean stop rolls everything up, and the roll-up is measured
    // next. Every acknowledged report is committed, so nothing is lost.
    child.kill().unwrap();
    child.wait().unwrap();
    // The roll-up of everything just ingested, on the same core.
    let t = Instant::now();
    let out = std::process::Command::new("taskset")
        .args([
            "-c",
            "0",
            env!("CARGO_BIN_EXE_trafficmap-collector"),
            "--log",
            "warn",
            "--data-dir",
        ])
        .arg(dir.path())
        .arg("rollup")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = (agents * reports * pairs) as f64;
    println!(
        "RESULT rollup_rows_per_second {:.0} rows/s",
        rows / t.elapsed().as_secs_f64()
    );
    println!(
        "RESULT sqlite_bytes_per_pair {:.0} bytes",
        dir_size(dir.path()) as f64 / rows
    );
    drop(dir);
    // The floors and the profile on the core the collector had, one thread like its work.
    pin_to(0);
    let bodies: Vec<Arc<Vec<u8>>> = work.into_iter().flatten().collect();
    ingest_floors_and_profile(&bodies, agents * reports * pairs, wall);
    pin_to(1);
}

/// Parsing alone, the collector's own steps one by one, and SQLite's bulk insert of the
/// same rows, all on the current core.
fn ingest_floors_and_profile(bodies: &[Arc<Vec<u8>>], pairs: usize, wall: f64) {
    let rate = |secs: f64| pairs as f64 / secs;

    // Floor (a): serde into the model's `Report`, nothing else.
    let t = Instant::now();
    for b in bodies {
        let r: Report = serde_json::from_slice(b).expect("a generated report parses");
        std::hint::black_box(r);
    }
    let parse_floor = t.elapsed().as_secs_f64();
    println!(
        "RESULT parse_pairs_per_second {:.0} pairs/s",
        rate(parse_floor)
    );

    // The collector's steps as its ingest handler runs them: `from_json` (parse with error
    // paths, then validate), validation alone to split the two, conversion to rows.
    let (mut from_json, mut validate, mut convert) = (0.0, 0.0, 0.0);
    let mut ings = Vec::with_capacity(bodies.len());
    for b in bodies {
        let t = Instant::now();
        let r = Report::from_json(b).expect("a generated report is valid");
        from_json += t.elapsed().as_secs_f64();
        let t = Instant::now();
        r.validate().expect("a generated report is valid");
        validate += t.elapsed().as_secs_f64();
        let t = Instant::now();
        ings.push(Arc::new(Ingest::from_report(&r)));
        convert += t.elapsed().as_secs_f64();
    }
    // The store's write in batches as large as the server queues (its channel holds
    // `max_concurrent` parsed reports), into a fresh store with the collector's defaults.
    let cfg = Config::default();
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path(), cfg.storage.sqlite_sync).unwrap();
    let t = Instant::now();
    for batch in ings.chunks(cfg.ingest.max_concurrent.max(1)) {
        store.ingest(batch, Utc::now()).unwrap();
    }
    let write = t.elapsed().as_secs_f64();
    drop(store);
    let parse = (from_json - validate).max(0.0);
    println!("RESULT profile_ingest_parse {parse:.3} s");
    println!("RESULT profile_ingest_validate {validate:.3} s");
    println!("RESULT profile_ingest_convert {convert:.3} s");
    println!("RESULT profile_ingest_write {write:.3} s");
    println!(
        "RESULT profile_ingest_http_and_rest {:.3} s",
        (wall - parse - validate - convert - write).max(0.0)
    );

    // Floor (b): the same rows, already as SQL values, into an equivalent table.
    let rows = sql_rows(&ings);
    drop(ings);
    let dir = tempfile::tempdir().unwrap();
    let secs = bulk_insert(&dir.path().join("bulk.db"), &rows, cfg.storage.sqlite_sync);
    println!(
        "RESULT bulk_insert_pairs_per_second {:.0} pairs/s",
        rate(secs)
    );
}

/// A `pair_minute` row as the store binds it: names as ids, addresses as text.
type SqlRow = (i64, i64, String, String, i64, i64, i64, [i64; 7]);

fn sql_rows(ings: &[Arc<Ingest>]) -> Vec<SqlRow> {
    let mut names: std::collections::HashMap<String, i64> = Default::default();
    let mut id = |n: &str| {
        let next = names.len() as i64 + 1;
        *names.entry(n.to_owned()).or_insert(next)
    };
    let mut out = Vec::new();
    for ing in ings {
        let observer = id(&ing.machine_id);
        for r in &ing.rows {
            let c = &r.c;
            out.push((
                r.minute,
                observer,
                r.local_ip.to_string(),
                r.peer_ip.to_string(),
                i64::from(r.server_port),
                r.role as i64,
                id(&r.process),
                [
                    c.bytes_sent as i64,
                    c.bytes_received as i64,
                    c.conns_opened as i64,
                    c.conns_carried as i64,
                    c.first_window_ms,
                    c.first_seen_ms,
                    c.last_seen_ms,
                ],
            ));
        }
    }
    out
}

/// SQLite's own speed for these rows: the store's pragmas, the `pair_minute` table and its
/// index, one prepared INSERT in one transaction. Returns seconds, commit included.
fn bulk_insert(path: &Path, rows: &[SqlRow], sync: Sync) -> f64 {
    let mut conn = rusqlite::Connection::open(path).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    let sync = match sync {
        Sync::Full => "FULL",
        Sync::Normal => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", sync).unwrap();
    conn.pragma_update(None, "cache_size", -65_536).unwrap();
    conn.pragma_update(None, "temp_store", "MEMORY").unwrap();
    conn.execute_batch(
        "CREATE TABLE pair_minute (
            minute INTEGER NOT NULL, observer INTEGER NOT NULL, local_ip TEXT NOT NULL,
            peer_ip TEXT NOT NULL, server_port INTEGER NOT NULL, role INTEGER NOT NULL,
            process INTEGER NOT NULL, bytes_sent INTEGER NOT NULL, bytes_received INTEGER NOT NULL,
            conns_opened INTEGER NOT NULL, conns_carried INTEGER NOT NULL,
            first_window_ms INTEGER NOT NULL, first_seen_ms INTEGER NOT NULL,
            last_seen_ms INTEGER NOT NULL);
         CREATE INDEX pair_minute_minute ON pair_minute (minute);",
    )
    .unwrap();
    let t = Instant::now();
    let tx = conn.transaction().unwrap();
    {
        let mut st = tx
            .prepare("INSERT INTO pair_minute VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)")
            .unwrap();
        for (minute, observer, local, peer, port, role, process, c) in rows {
            st.execute(rusqlite::params![
                minute, observer, local, peer, port, role, process, c[0], c[1], c[2], c[3], c[4],
                c[5], c[6]
            ])
            .unwrap();
        }
    }
    tx.commit().unwrap();
    t.elapsed().as_secs_f64()
}

fn dir_size(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn bench_map(hosts: usize, host_pairs: usize) {
    // `--data DIR` keeps the generated store for another run (profiling the map alone).
    let kept = std::env::args()
        .skip_while(|a| a != "--data")
        .nth(1)
        .map(std::path::PathBuf::from);
    let temp = tempfile::tempdir().unwrap();
    let dir_path = kept.clone().unwrap_or_else(|| temp.path().to_owned());
    let reuse = dir_path.join("trafficmap.db").exists();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // A fixed day: a kept store stays valid.
    let day = chrono::NaiveDate::from_ymd_opt(2026, 11, 20).expect("a date");
    let (from, to) = mapservice::day_range(day);
    rt.block_on(async {
        let sqlite = Arc::new(SqliteStore::open(&dir_path, Default::default()).unwrap());
        let db = sqlite.path().to_owned();
        let store = Store::Sqlite(sqlite);
        let t = Instant::now();
        let mut batch = Vec::new();
        for h in 0..(if reuse { 0 } else { hosts }) {
            let json = report_json(
                &format!("mapbench-{h:08}-0000"),
                h,
                hosts,
                host_pairs,
                from + TimeDelta::hours(12),
            );
            batch.push(Arc::new(Ingest::from_report(
                &Report::from_json(json.as_bytes()).unwrap(),
            )));
            if batch.len() == 500 {
                store
                    .ingest(std::mem::take(&mut batch), Utc::now())
                    .await
                    .unwrap();
            }
        }
        store.ingest(batch, Utc::now()).await.unwrap();
        store
            .maintain(Utc::now(), Retention::default())
            .await
            .unwrap();
        eprintln!(
            "stored {} pair rows for {day} in {:.1?}",
            hosts * host_pairs,
            t.elapsed()
        );
        let cfg = Config::default();
        let (enricher, _) = Enricher::new(&cfg.enrich).unwrap();
        let before = vm_hwm_kib(std::process::id());
        let t = Instant::now();
        let built = mapservice::build(&store, &enricher, &cfg.cost, from, to, Utc::now())
            .await
            .unwrap();
        let read = t.elapsed();
        let mut links = 0;
        let tv = Instant::now();
        let rendered = built.render_all(&enricher, Utc::now());
        eprintln!("three views rendered in parallel: {:.2?}", tv.elapsed());
        for m in &rendered {
            links += m.links.len();
            if m.view == View::Instances {
                assert_eq!(m.nodes.len(), hosts);
                assert_eq!(m.totals.links as usize, hosts * host_pairs / 2);
            }
        }
        let total = t.elapsed();
        println!("RESULT map_day_read_and_merge {:.2} s", read.as_secs_f64());
        println!("RESULT map_day_three_views {:.2} s", total.as_secs_f64());
        println!(
            "RESULT map_conversations {} conversations",
            built.prepared.conversations.len()
        );
        println!("RESULT map_links_all_views {links} links");
        println!(
            "RESULT map_peak_rss {} MiB",
            vm_hwm_kib(std::process::id()).max(before) / 1024
        );
        drop((built, rendered));
        // The floor, on a fresh connection like the build above (both find the file in the
        // page cache, written just now); after it, so that the first build keeps a fresh
        // allocator.
        let (sql_secs, sql_pairs) = sql_aggregation(&db, from.timestamp(), to.timestamp());
        println!("RESULT sql_aggregation {sql_secs:.2} s");
        println!("RESULT sql_aggregation_pairs {sql_pairs} pairs");
        map_profile(&store, &enricher, &cfg, day).await;
        // Again, with SQLite's cache and the allocator's memory warm.
        let t = Instant::now();
        let built = mapservice::build(&store, &enricher, &cfg.cost, from, to, Utc::now())
            .await
            .unwrap();
        let _ = built.render_all(&enricher, Utc::now());
        println!(
            "RESULT map_day_three_views_again {:.2} s",
            t.elapsed().as_secs_f64()
        );
    });
}

/// The floor of the map: one `GROUP BY` over the day's rolled-up rows (the rows the map
/// reads), both ends of a conversation in one group, bytes per direction summed. Returns the
/// seconds to run it and collect its rows, and how many pairs it gave.
fn sql_aggregation(db: &Path, from: i64, to: i64) -> (f64, usize) {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    // The store's reader settings.
    conn.pragma_update(None, "cache_size", -65_536).unwrap();
    let t = Instant::now();
    let mut st = conn
        .prepare(
            "SELECT CASE role WHEN 1 THEN peer_ip ELSE local_ip END AS client,
                    CASE role WHEN 1 THEN local_ip ELSE peer_ip END AS server,
                    server_port,
                    SUM(CASE role WHEN 1 THEN bytes_received ELSE bytes_sent END),
                    SUM(CASE role WHEN 1 THEN bytes_sent ELSE bytes_received END),
                    SUM(conns_opened), SUM(conns_carried),
                    MIN(first_seen_ms), MAX(last_seen_ms), COUNT(*)
             FROM pair_day WHERE period >= ?1 AND period < ?2
             GROUP BY client, server, server_port",
        )
        .unwrap();
    let rows: Vec<(String, String, i64, [i64; 7])> = st
        .query_map([from, to], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                [
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                    r.get(9)?,
                ],
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    (t.elapsed().as_secs_f64(), std::hint::black_box(rows).len())
}

/// Where a day's map spends its time, phase by phase on the caller's threads: the store read,
/// the enrichment sources, the rest of `mapservice::build` (merge both ends, resolve every endpoint,
/// price), each view rendered, and each serialized as the daily files are.
async fn map_profile(store: &Store, enricher: &Enricher, cfg: &Config, day: chrono::NaiveDate) {
    let (from, to) = mapservice::day_range(day);
    let now = Utc::now();
    let t = Instant::now();
    drop(store.range(from, to).await.unwrap());
    let read = t.elapsed().as_secs_f64();
    let t = Instant::now();
    drop(enricher.sources_for_day(store, day, now.date_naive()).await);
    let enrich = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let built = mapservice::build(store, enricher, &cfg.cost, from, to, now)
        .await
        .unwrap();
    let prepare = (t.elapsed().as_secs_f64() - read - enrich).max(0.0);
    let (mut render, mut serialize) = (0.0, 0.0);
    for view in View::ALL {
        let t = Instant::now();
        let map = built.render(enricher, view, now);
        render += t.elapsed().as_secs_f64();
        let t = Instant::now();
        std::hint::black_box(map.to_json_pretty());
        serialize += t.elapsed().as_secs_f64();
    }
    println!("RESULT profile_map_read {read:.3} s");
    println!("RESULT profile_map_enrich {enrich:.3} s");
    println!("RESULT profile_map_prepare {prepare:.3} s");
    println!("RESULT profile_map_render {render:.3} s");
    println!("RESULT profile_map_serialize {serialize:.3} s");
}

fn main() {
    trafficmap_collector::tune_allocator();
    // `cargo bench` passes --bench; anything else selects the part.
    let only_ingest = has("--ingest");
    let only_map = has("--map");
    if !only_map {
        bench_ingest(
            arg("--agents", 1000),
            arg("--reports", 5),
            arg("--pairs", 200),
        );
    }
    if !only_ingest {
        bench_map(arg("--hosts", 10_000), arg("--host-pairs", 200));
    }
    std::io::stdout().flush().unwrap();
}
