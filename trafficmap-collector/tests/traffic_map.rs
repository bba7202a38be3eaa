//! The move from the old traffic-map tool (docs/migrating.md): its files written for its viewer
//! and scripts (`export --format traffic-map`), and its inputs read as they are
//! (`tests/fixtures/old/`, written from its source), end to end through the binary, on the
//! golden fleet. `UPDATE_GOLDEN=1` rewrites `golden/old/`.

use std::{path::Path, process::Command, sync::Arc};

use chrono::{DateTime, Utc};
use serde_json::Value;
use trafficmap_collector::{
    ingest::Ingest,
    store::{Retention, Store, sqlite::SqliteStore},
    traffic_map,
};
use trafficmap_model::map::{Map, View};

mod support;

use support::{bin, golden_reports, root};

fn golden_instances_map() -> Map {
    let bytes = std::fs::read(root().join("golden/maps/instances-20261123.json")).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn check_golden(name: &str, text: &[u8]) {
    let path = root().join("golden/old").join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        return;
    }
    let want = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert!(
        want == text,
        "{} differs from what the code writes now; review with UPDATE_GOLDEN=1 and git diff",
        path.display()
    );
}

/// The golden day in the old format: exact files.
#[test]
fn golden_day_in_the_old_format() {
    let map = golden_instances_map();
    for view in [View::Instances, View::Clusters] {
        let name = traffic_map::file_name(view, map.from.date_naive()).unwrap();
        check_golden(&name, &traffic_map::render(view, &map).unwrap());
    }
}

fn num(v: &Value, what: &str) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("{what}: not a number: {v}"))
}

fn text<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: not a string: {v}"))
}

/// What the old `static/graph.js` reads of a file, path by path: `json.nodes[i]` (`env`,
/// `label`, `archdomain`, `traffic.toFixed`, `price.toFixed`, `instance_type`, `ips` or
/// `name`), `json.links[i]` (`source`/`target` as indices into `json.nodes`, `value`,
/// `ports.join`/`ports.map`, `source_name`/`target_name`).
fn graph_js_reads(doc: &Value, clusters: bool) {
    let nodes = doc["nodes"].as_array().expect("nodes");
    assert!(!nodes.is_empty());
    for n in nodes {
        for k in ["env", "label", "archdomain"] {
            text(&n[k], k);
        }
        num(&n["traffic"], "traffic");
        num(&n["price"], "price");
        if clusters {
            assert!(n["ips"].as_array().is_some_and(|a| !a.is_empty()), "{n}");
            assert!(n["instance_type"].is_array(), "{n}");
        } else {
            text(&n["name"], "name");
            text(&n["instance_type"], "instance_type");
            text(&n["ip_type"], "ip_type");
        }
    }
    let links = doc["links"].as_array().expect("links");
    assert!(!links.is_empty());
    for l in links {
        let s = &nodes[num(&l["source"], "source") as usize];
        let t = &nodes[num(&l["target"], "target") as usize];
        let key = if clusters { "label" } else { "name" };
        assert_eq!(l["source_name"], s[key], "{l}");
        assert_eq!(l["target_name"], t[key], "{l}");
        assert!(num(&l["value"], "value") >= 1.0, "{l}");
        let ports = l["ports"].as_array().expect("ports");
        assert!(ports.iter().all(|p| p.as_u64().is_some()), "{l}");
    }
}

/// What `utils/make_cluster_spreadsheet.py` reads and prints, step by step: `nested_links`
/// made symmetric (`diagonalize_links`), keys split on the one `|` into env and archdomain,
/// one row per cluster (its filters left open), a target in the same env by archdomain only.
fn spreadsheet(doc: &Value) -> String {
    let nested = doc["nested_links"].as_object().expect("nested_links");
    let mut d: std::collections::BTreeMap<&str, std::collections::BTreeSet<&str>> =
        Default::default();
    for (from, tos) in nested {
        for to in tos.as_object().expect("targets").keys() {
            d.entry(from).or_default().insert(to);
            d.entry(to).or_default().insert(from);
        }
    }
    let split = |name: &str| -> (String, String) {
        let parts: Vec<&str> = name.split('|').collect();
        assert_eq!(
            parts.len(),
            2,
            "`{name}`: from_env,from_archdomain = name.split('|')"
        );
        (parts[0].to_owned(), parts[1].to_owned())
    };
    let mut out = String::from("env\tfrom\tto\n");
    for (from, tos) in &d {
        let (env, arch) = split(from);
        out.push_str(&format!("{env}\t{arch}\t"));
        for to in tos {
            let (to_env, to_arch) = split(to);
            out.push_str(if to_env == env { &to_arch } else { to });
            out.push('\t');
        }
        out.push('\n');
    }
    out
}

#[test]
fn the_old_viewer_and_spreadsheet_find_what_they_read() {
    let map = golden_instances_map();
    let inst: Value =
        serde_json::from_slice(&traffic_map::render(View::Instances, &map).unwrap()).unwrap();
    graph_js_reads(&inst, false);
    let clusters: Value =
        serde_json::from_slice(&traffic_map::render(View::Clusters, &map).unwrap()).unwrap();
    graph_js_reads(&clusters, true);
    // What the real script printed on golden/old/clusters-2026-11-23.json (run by hand with
    // `main(fn, skip_env='^$x', keep_archdomain='', skip_archdomain='^$x')`).
    assert_eq!(
        spreadsheet(&clusters),
        "env\tfrom\tto\n\
         external\texternal\tprod|online/api\tprod|online/storage/postgres\t\n\
         prod\tonline/api\texternal|external\tonline/api\tonline/cache\tonline/storage/postgres\t\n\
         prod\tonline/cache\tonline/api\t\n\
         prod\tonline/storage/postgres\texternal|external\tonline/api\tstage|offline/batch\t\n\
         stage\toffline/batch\tprod|online/storage/postgres\toffline/storage\t\n\
         stage\toffline/storage\toffline/batch\t\n"
    );
}

fn generated_at() -> DateTime<Utc> {
    "2026-11-24T00:10:00Z".parse().unwrap()
}

/// A data directory holding the golden reports, as `serve` would have stored them.
async fn golden_data_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::Sqlite(Arc::new(
        SqliteStore::open(dir.path(), Default::default()).unwrap(),
    ));
    for r in golden_reports() {
        store
            .ingest(vec![Arc::new(Ingest::from_report(&r))], generated_at())
            .await
            .unwrap();
    }
    store
        .maintain(generated_at(), Retention::default())
        .await
        .unwrap();
    dir
}

fn collector(data: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .arg("--config")
        .arg(root().join("golden/enrich/collector.toml"))
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .output()
        .unwrap()
}

/// The file written by the command equals the golden one but for `about.generated_at`.
fn without_generated_at(bytes: &[u8]) -> Value {
    let mut v: Value = serde_json::from_slice(bytes).unwrap();
    v["about"]["generated_at"] = Value::Null;
    v
}

#[tokio::test]
async fn export_writes_the_old_files_under_their_old_names() {
    let data = golden_data_dir().await;
    let out = tempfile::tempdir().unwrap();
    for view in ["instances", "clusters"] {
        let o = collector(
            data.path(),
            &[
                "export",
                "--format",
                "traffic-map",
                "--view",
                view,
                "--day",
                "2026-11-23",
                "--quiet",
                "-o",
                out.path().to_str().unwrap(),
            ],
        );
        assert_eq!(o.status.code(), Some(0), "{o:?}");
        let name = format!("{view}-2026-11-23.json");
        let got = std::fs::read(out.path().join(&name)).unwrap();
        let want = std::fs::read(root().join("golden/old").join(&name)).unwrap();
        assert_eq!(
            without_generated_at(&got),
            without_generated_at(&want),
            "{name}"
        );
    }
    let mut names: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["clusters-2026-11-23.json", "instances-2026-11-23.json"]
    );
    // The old tool had no security-groups traffic map: refused, nothing written.
    let o = collector(
        data.path(),
        &[
            "export",
            "--format",
            "traffic-map",
            "--view",
            "security-groups",
            "--day",
            "2026-11-23",
            "-o",
            out.path().to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "trafficmap-collector: the traffic-map format has instances and clusters files: the old \
         tool's security-groups file was the EC2 listing, not a traffic map (use --format json \
         for the security-groups view)\n"
    );
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 2);
}

/// `check-config` shows what an old foreign-ips.txt means now, once per construct.
#[test]
fn check_config_names_the_old_constructs() {
    let dir = tempfile::tempdir().unwrap();
    let foreign = root().join("trafficmap-collector/tests/fixtures/old/foreign-ips.txt");
    let cfg = dir.path().join("collector.toml");
    std::fs::write(
        &cfg,
        format!("[enrich]\nforeign_file = {:?}\n", foreign.to_str().unwrap()),
    )
    .unwrap();
    let o = Command::new(bin())
        .arg("--config")
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.path())
        .arg("check-config")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!(
            "warning: {}: line(s) 2, 3, 6 use the old tool's order `NAME<TAB>ADDRESS...`: read \
             as before; the current order is `ADDRESS NAME`, one address or CIDR block per \
             line\nconfiguration ok\n",
            foreign.display()
        )
    );
}

/// `query archdomains` with the old archdomain.csv on the golden day: the old meaning (subtree
/// without `/`, header skipped), and the warnings on standard error.
#[tokio::test]
async fn compliance_reads_the_old_archdomain_csv() {
    let data = golden_data_dir().await;
    let csv = root().join("trafficmap-collector/tests/fixtures/old/archdomain.csv");
    let o = collector(
        data.path(),
        &[
            "query",
            "archdomains",
            "--allowed",
            csv.to_str().unwrap(),
            "--day",
            "2026-11-23",
            "--output",
            "csv",
            "--quiet",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    // db-1's online/storage/postgres is allowed by `online/storage` (old subtree rule),
    // cache-1's online/cache by `online/cache/` (exact, as the old `x/` was).
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "status,archdomain,host\n\
         allowed,online/api,api-1 (i-0a1b2c3d4e5f60718)\n\
         allowed,online/api,api-2 (i-0a1b2c3d4e5f60719)\n\
         allowed,online/cache,cache-1 (i-0c1b2c3d4e5f60731)\n\
         allowed,online/storage/postgres,db-1 (i-0d1b2c3d4e5f60721)\n\
         not_allowed,offline/batch,batch-1 (host:batch-1)\n\
         not_allowed,offline/storage,legacy-db (ip:10.9.0.40)\n\
         unused,offline/{pipeline}/worker,\n\
         unused,online/search.v2,\n\
         unused,legacy,\n"
    );
    // The log's warnings, without their time stamp and target.
    let stderr = String::from_utf8_lossy(&o.stderr);
    let warnings: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.split_once(" WARN ").map(|(_, w)| w))
        .map(|w| w.split_once(": ").map_or(w, |(_, m)| m))
        .collect();
    let f = csv.display();
    assert_eq!(
        warnings,
        [
            format!(
                "{f}: old archdomain.csv: the first row is a header and is skipped, as the old \
                 tool did: `Archdomain Tag,Component Owner,Component UID`"
            ),
            format!(
                "{f}: only the first column is read (the archdomain); the other columns are \
                 ignored"
            ),
            format!(
                "{f}: `online/api`, `online/storage`, `offline/{{pipeline}}/worker`, \
                 `online/search.v2`, `legacy` also allow their subtree, as in the old tool; in \
                 the current one-per-line format that is written with a trailing `/`"
            ),
            format!(
                "{f}: `online/cache/` allow only that archdomain, as in the old tool; in the \
                 current one-per-line format a trailing `/` allows the subtree too"
            ),
            format!(
                "{f}: `online/search.v2` read as literal text; the old tool read each entry as \
                 a regular expression (`.` matched any character)"
            ),
        ]
    );
}
