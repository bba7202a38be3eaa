//! On-demand prices from the AWS Price List API (`[prices] price_list_api = true`) in the cost
//! report of the golden fleet, through the real SDK client (`aws-sdk-pricing`) and the real
//! collector binary (`report costs`).
//!
//! moto (5.2) does not emulate the Price List service, so a small HTTP server in the test serves
//! recorded-format `GetProducts` responses: the documents below follow the API's response format
//! (`FormatVersion`, `PriceList` of JSON strings with `product` and `terms.OnDemand`) with the
//! public us-east-1 Linux prices; they were written from that format, since this machine cannot
//! reach AWS. The server asserts every request's target and filters.
//!
//! Also: an endpoint that does not answer leaves the price table in charge, and the report says
//! so.

mod support;

use std::{
    path::Path,
    process::Command,
    sync::{Arc, Mutex},
};

use axum::{Router, extract::State, http::HeaderMap, routing::post};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use trafficmap_collector::{
    ingest::Ingest,
    store::{Store, sqlite::SqliteStore},
};

use support::{bin, free_port, golden_reports, root};

fn generated_at() -> DateTime<Utc> {
    "2026-11-24T00:10:00Z".parse().unwrap()
}

async fn golden_store(dir: &Path) {
    let store = Store::Sqlite(Arc::new(
        SqliteStore::open(dir, Default::default()).unwrap(),
    ));
    for r in golden_reports() {
        store
            .ingest(vec![Arc::new(Ingest::from_report(&r))], generated_at())
            .await
            .unwrap();
    }
}

/// A `PriceList` document of one product, in the API's format.
fn recorded_document(instance_type: &str, sku: &str, usd: &str) -> String {
    json!({
        "product": {
            "productFamily": "Compute Instance",
            "attributes": {
                "instanceType": instance_type,
                "regionCode": "us-east-1",
                "location": "US East (N. Virginia)",
                "operatingSystem": "Linux",
                "tenancy": "Shared",
                "preInstalledSw": "NA",
                "capacitystatus": "Used",
                "licenseModel": "No License required"
            },
            "sku": sku
        },
        "serviceCode": "AmazonEC2",
        "terms": {
            "OnDemand": {
                format!("{sku}.JRTCKXETXF"): {
                    "priceDimensions": {
                        format!("{sku}.JRTCKXETXF.6YS6EN2CT7"): {
                            "unit": "Hrs",
                            "endRange": "Inf",
                            "description": format!("${usd} per On Demand Linux {instance_type} Instance Hour"),
                            "appliesTo": [],
                            "rateCode": format!("{sku}.JRTCKXETXF.6YS6EN2CT7"),
                            "beginRange": "0",
                            "pricePerUnit": { "USD": usd }
                        }
                    },
                    "sku": sku,
                    "effectiveDate": "2026-11-01T00:00:00Z",
                    "offerTermCode": "JRTCKXETXF",
                    "termAttributes": {}
                }
            }
        },
        "version": "20261101000000",
        "publicationDate": "2026-11-01T00:00:00Z"
    })
    .to_string()
}

/// The recorded `GetProducts` response for an instance type: m5.large and r5.xlarge have a
/// product; r6g.large none (an empty `PriceList`, as for a filter set that matches nothing),
/// so it falls back to the price table.
fn recorded_response(instance_type: &str) -> Value {
    let docs = match instance_type {
        "m5.large" => vec![recorded_document(
            "m5.large",
            "8KTQAHWA58GUHDGC",
            "0.0960000000",
        )],
        "r5.xlarge" => vec![recorded_document(
            "r5.xlarge",
            "Y6E6YYCMQFWNWBQE",
            "0.2520000000",
        )],
        _ => vec![],
    };
    json!({ "FormatVersion": "aws_v1", "PriceList": docs })
}

type Seen = Arc<Mutex<Vec<(String, Value)>>>;

/// The test's Price List endpoint: records (X-Amz-Target, body) of every request.
async fn price_list_server() -> (String, Seen) {
    let seen: Seen = Arc::default();
    async fn get_products(
        State(seen): State<Seen>,
        headers: HeaderMap,
        body: String,
    ) -> ([(&'static str, &'static str); 1], String) {
        let target = headers
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let itype = body["Filters"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|f| f["Field"] == "instanceType")
            .and_then(|f| f["Value"].as_str())
            .unwrap_or_default()
            .to_owned();
        seen.lock().unwrap().push((target, body));
        (
            [("content-type", "application/x-amz-json-1.1")],
            recorded_response(&itype).to_string(),
        )
    }
    let app = Router::new()
        .route("/", post(get_products))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

/// The golden configuration (absolute paths) with `[prices]` pointing at `endpoint`.
fn config(dir: &Path, endpoint: &str) -> std::path::PathBuf {
    let g = root().join("golden/enrich");
    let text = format!(
        r#"allow_unauthenticated = true
[enrich]
inventory_file = "{g}/inventory.toml"
foreign_file = "{g}/foreign-ips.txt"
price_file = "{g}/prices.csv"
[enrich.ec2]
snapshot_file = "{g}/ec2-snapshot.json"
timeout = "20s"
[enrich.dns]
enabled = false
[enrich.env]
aliases = {{ "production" = "prod" }}
[prices]
price_list_api = true
price_list_endpoint = "{endpoint}"
"#,
        g = g.display()
    );
    let path = dir.join("collector.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `report costs --format json` of 2026-11-23 with that configuration.
fn report(config: &Path, data_dir: &Path) -> Value {
    let out = Command::new(bin())
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(data_dir)
        .args([
            "report",
            "costs",
            "--day",
            "2026-11-23",
            "--format",
            "json",
            "--quiet",
        ])
        // Signing needs credentials; no instance metadata lookups.
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn rows(v: &Value) -> Vec<Value> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            json!([
                r["key"],
                r["instances"],
                r["no_price"],
                r["usd_per_hour"],
                r["usd_per_year"]
            ])
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn recorded_get_products_responses_price_the_on_demand_instances() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    golden_store(&data).await;
    let (url, seen) = price_list_server().await;
    let cfg = config(dir.path(), &url);
    let r = report(&cfg, &data);
    // m5.large (api-1) and r5.xlarge (db-1) from the API; r6g.large (cache-1) from the table
    // (no product); api-2 is spot.
    assert_eq!(
        rows(&r["by_source"]),
        [
            json!(["price-list-api", 2, 0, 0.348, 3048.48]),
            json!(["price-table", 1, 0, 0.1008, 883.008]),
            json!(["spot-history", 1, 0, 0.0345, 302.22]),
        ]
    );
    assert_eq!(
        rows(&json!([r["total"]])),
        [json!(["total", 6, 2, 0.4833, 4233.708])]
    );
    assert_eq!(r["warnings"], json!([]));
    // One question per on-demand (type, region), sorted, each with exactly the six filters.
    let requests = seen.lock().unwrap().clone();
    let asked: Vec<&str> = requests
        .iter()
        .map(|(target, body)| {
            assert_eq!(target, "AWSPriceListService.GetProducts");
            assert_eq!(body["ServiceCode"], "AmazonEC2");
            assert_eq!(body["FormatVersion"], "aws_v1");
            let filters: Vec<(String, String, String)> = body["Filters"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| {
                    (
                        f["Type"].as_str().unwrap().to_owned(),
                        f["Field"].as_str().unwrap().to_owned(),
                        f["Value"].as_str().unwrap().to_owned(),
                    )
                })
                .collect();
            let itype = filters[0].2.clone();
            let want: Vec<(String, String, String)> = [
                ("instanceType", itype.as_str()),
                ("regionCode", "us-east-1"),
                ("operatingSystem", "Linux"),
                ("tenancy", "Shared"),
                ("preInstalledSw", "NA"),
                ("capacitystatus", "Used"),
            ]
            .iter()
            .map(|(f, v)| ("TERM_MATCH".to_owned(), (*f).to_owned(), (*v).to_owned()))
            .collect();
            assert_eq!(filters, want);
            body["Filters"][0]["Value"].as_str().unwrap()
        })
        .collect();
    assert_eq!(asked, ["m5.large", "r5.xlarge", "r6g.large"]);
    // The answers are cached in data_dir: a second report asks nothing and says the same.
    assert!(data.join("price-list-cache.json").exists());
    let again = report(&cfg, &data);
    assert_eq!(again["by_source"], r["by_source"]);
    assert_eq!(seen.lock().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_price_list_api_falls_back_to_the_table_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    golden_store(&data).await;
    // A port nothing listens on.
    let cfg = config(dir.path(), &format!("http://127.0.0.1:{}", free_port()));
    let r = report(&cfg, &data);
    assert_eq!(
        rows(&r["by_source"]),
        [
            json!(["price-table", 3, 0, 0.4488, 3931.488]),
            json!(["spot-history", 1, 0, 0.0345, 302.22]),
        ]
    );
    assert_eq!(
        r["warnings"],
        json!([
            "the AWS Price List API did not answer; on-demand prices it has not given before come from the price table (details in the collector's log)"
        ])
    );
    // Nothing was learnt, nothing cached.
    assert!(!data.join("price-list-cache.json").exists());
}
