//! Collector benchmarks (`cargo xtask bench collector` runs this with the release build):
//!
//! - **ingest**: the real collector binary pinned to one core (`taskset -c 0`), `--agents`
//!   simulated agents (one keep-alive connection each, on the other core) posting reports of
//!   `--pairs` pairs as fast as they are acknowledged; pair records per second from the first
//!   request to the last commit, and the collector's peak memory (VmHWM).
//! - **map**: a day of `--hosts` agents with `--host-pairs` pairs each (half client, half
//!   server, peers are other agents, so every conversation is reported by both ends) in the
//!   embedded store; the time to build the day's three maps and the peak memory of this process.
//!
//! Output: one `RESULT name value unit` line per measurement (parsed by xtask).

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
    store::{Retention, Store, sqlite::SqliteStore},
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
async fn agent(addr: std::net::SocketAddr, bodies: Vec<Vec<u8>>) -> usize {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.set_nodelay(true).unwrap();
    let mut pairs = 0;
    let mut buf = vec![0u8; 4096];
    for body in bodies {
        let head = format!(
            "POST /api/v1/reports HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&body).await.unwrap();
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
    let mut child = std::process::Command::new("taskset")
        .args(["-c", "0", env!("CARGO_BIN_EXE_trafficmap-collector")])
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
    let work: Vec<Vec<Vec<u8>>> = (0..agents)
        .map(|a| {
            (0..reports)
                .map(|r| {
                    report_json(
                        &format!("bench-{a:06}-{r:06}-0000"),
                        a,
                        agents,
                        pairs,
                        base + TimeDelta::minutes(r as i64),
                    )
                    .into_bytes()
                })
                .collect()
        })
        .collect();
    let bytes: usize = work.iter().flatten().map(Vec::len).sum();
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
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(Instant::now() < deadline, "collector did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let start = Instant::now();
        let handles: Vec<_> = work
            .into_iter()
            .map(|w| tokio::spawn(agent(addr, w)))
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
        let store = Store::Sqlite(Arc::new(
            SqliteStore::open(&dir_path, Default::default()).unwrap(),
        ));
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
        // Again, with SQLite's cache and the allocator's memory warm.
        drop((built, rendered));
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
