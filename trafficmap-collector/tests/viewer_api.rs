//! What the collector serves the viewer beyond maps (issue 12, item 6), against the real binary:
//! `GET /api/v1/viewer-config` (the `[viewer]` presets) and `POST /api/v1/maps/export` (an export
//! limited to what the viewer shows), both behind the read token like every read, and a bad
//! preset refusing the start.

mod support;

use std::process::Command;

use support::*;
use trafficmap_collector::{
    export::{Format, export},
    viewerapi::Subset,
};
use trafficmap_model::map::Map;

const READ_TOKEN: &str = "read-token-0123456789abcdef";
const DAY: &str = "2026-11-23";
const API: &str = "i-0a1b2c3d4e5f60718";
const DB: &str = "i-0d1b2c3d4e5f60721";

fn golden(name: &str) -> Vec<u8> {
    std::fs::read(root().join("golden/maps").join(name)).unwrap()
}

#[test]
fn viewer_config_and_subset_exports_need_a_read_token_and_answer_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let reads = dir.path().join("read-tokens");
    std::fs::write(&reads, format!("{READ_TOKEN} viewer\n")).unwrap();
    let out = dir.path().join("maps");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("instances-20261123.json"),
        golden("instances-20261123.json"),
    )
    .unwrap();
    let config = dir.path().join("collector.toml");
    std::fs::write(
        &config,
        "[[viewer.suppression_presets]]\nname = \"No external addresses\"\nenv = \"^external$\"\nhide_nodes = true\n\
         [[viewer.suppression_presets]]\nname = \"Monitoring links\"\narchdomain = \"^infrastructure\\\\/monitoring\"\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let c = Collector::start(&[
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--output-dir",
        out.to_str().unwrap(),
        "--read-token-file",
        reads.to_str().unwrap(),
        "--no-dns",
    ]);
    let auth = format!("Bearer {READ_TOKEN}");
    let json = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    let export_path = format!("/api/v1/maps/export?view=instances&day={DAY}&format=csv");
    let subset = format!(
        r#"{{"nodes":["{API}","{DB}","gone"],"links":[["{API}","{DB}"],["{DB}","{API}"]]}}"#
    );

    // Without a read token: 401, as every read.
    let r = request(c.addr, "GET", "/api/v1/viewer-config", &[], b"");
    assert_eq!(r.status, 401, "{}", r.text());
    let r = request(
        c.addr,
        "POST",
        &export_path,
        &[("Content-Type", "application/json")],
        subset.as_bytes(),
    );
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(
        r.json(),
        serde_json::json!({"error": "missing `Authorization: Bearer <read token>` header"})
    );

    // The presets, as configured.
    let r = request(c.addr, "GET", "/api/v1/viewer-config", &json[..1], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json(),
        serde_json::json!({"suppression_presets": [
            {"name": "No external addresses", "env": "^external$", "archdomain": "", "hide_nodes": true},
            {"name": "Monitoring links", "env": "", "archdomain": "^infrastructure\\/monitoring", "hide_nodes": false},
        ]})
    );

    // A subset export: the listed nodes and links of the day's map, by the export code itself.
    let map = Map::from_json(&golden("instances-20261123.json")).unwrap();
    let want_map = Subset::from_json(subset.as_bytes()).unwrap().apply(&map);
    for (fmt, format, name) in [
        ("csv", Format::Csv, "instances-20261123.csv"),
        ("drawio", Format::Drawio, "instances-20261123.drawio.csv"),
        ("dot", Format::Dot, "instances-20261123.dot"),
        ("json", Format::Json, "instances-20261123.json"),
    ] {
        let path = format!("/api/v1/maps/export?view=instances&day={DAY}&format={fmt}");
        let r = request(c.addr, "POST", &path, &json, subset.as_bytes());
        assert_eq!(r.status, 200, "{fmt}: {}", r.text());
        assert_eq!(r.body, export(&want_map, format), "{fmt}");
        assert_eq!(
            r.header("content-disposition"),
            Some(format!("attachment; filename=\"{name}\"").as_str()),
            "{fmt}"
        );
    }
    // Two shapes, one line: header, page, 2 nodes, 1 link.
    let r = request(c.addr, "POST", &export_path, &json, subset.as_bytes());
    let text = r.text();
    assert_eq!(text.lines().count(), 5, "{text}");
    assert_eq!(text.matches(",Flowchart Shapes,").count(), 2, "{text}");
    assert_eq!(text.matches(",Line,").count(), 1, "{text}");
    let part = Map::from_json(
        &request(
            c.addr,
            "POST",
            &format!("/api/v1/maps/export?view=instances&day={DAY}&format=json"),
            &json,
            subset.as_bytes(),
        )
        .body,
    )
    .unwrap();
    assert_eq!(
        (part.totals.nodes, part.totals.links, part.totals.bytes),
        (2, 1, 1_000_003 + 4_200_512)
    );

    // Refusals: not JSON, not a subset, no such format.
    let r = request(
        c.addr,
        "POST",
        &export_path,
        &[
            ("Authorization", auth.as_str()),
            ("Content-Type", "text/plain"),
        ],
        subset.as_bytes(),
    );
    assert_eq!(r.status, 415, "{}", r.text());
    assert_eq!(
        r.json(),
        serde_json::json!({"error": "content-type: application/json expected"})
    );
    let r = request(c.addr, "POST", &export_path, &json, br#"{"nodes":["a"]}"#);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        r.json(),
        serde_json::json!({"error": "not a subset: missing field `links` at line 1 column 15"})
    );
    let r = request(
        c.addr,
        "POST",
        &format!("/api/v1/maps/export?view=instances&day={DAY}&format=png"),
        &json,
        subset.as_bytes(),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(
        r.json(),
        serde_json::json!({"error": "format: unknown format `png`: expected csv, drawio, dot or json"})
    );
    // Over the body limit (64 MiB) by its declared length: refused before it is read.
    let r = request(
        c.addr,
        "POST",
        &export_path,
        &[
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
            ("Content-Length", "67108865"),
        ],
        b"",
    );
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(
        r.json(),
        serde_json::json!({"error": "body of 67108865 bytes over the limit of 67108864 bytes"})
    );
    // The whole map is still the GET.
    let r = request(c.addr, "GET", &export_path, &json[..1], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, export(&map, Format::Csv));
    assert_eq!(c.terminate().code(), Some(0));
}

#[test]
fn a_preset_the_viewer_would_refuse_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("collector.toml");
    std::fs::write(
        &config,
        "[[viewer.suppression_presets]]\nname = \"slow\"\narchdomain = \"(a+)+$\"\n",
    )
    .unwrap();
    let out = Command::new(bin())
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("viewer.suppression_presets[0].archdomain `(a+)+$`: a repeated group may not contain a repetition or an alternation"),
        "{stderr}"
    );
}
