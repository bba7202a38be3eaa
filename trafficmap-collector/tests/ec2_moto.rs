//! EC2 enrichment against moto's EC2 emulator (`moto_server`, from PyPI): the test seeds tagged
//! instances (on-demand and spot) and security groups in two regions with aws-sdk-ec2, then
//! checks what `trafficmap-aws` fetches, and what the real collector binary makes of it: labels,
//! cleaned tags from configurable keys, types, zones, regions, lifecycles, prices, security
//! groups and transfer costs on the maps.
//!
//! Needs moto: run by `cargo xtask test --only ec2-moto` (which installs it and sets
//! `TRAFFICMAP_MOTO_SERVER`).

mod support;

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use support::*;
use trafficmap_aws::aws_sdk_ec2::{
    Client,
    config::{BehaviorVersion, Credentials, Region},
    types::{
        InstanceMarketOptionsRequest, InstanceType, MarketType, Placement, ResourceType, Tag,
        TagSpecification,
    },
};
use trafficmap_aws::{Ec2Fetcher, Ec2Options};
use trafficmap_model::cloud::Lifecycle;

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

fn moto_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("TRAFFICMAP_MOTO_SERVER") {
        return Some(PathBuf::from(p));
    }
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()));
    [home.join(".cache/trafficmap/venv/bin/moto_server")]
        .into_iter()
        .find(|p| p.exists())
}

fn start_moto() -> Option<Moto> {
    let bin = moto_binary();
    if !require("moto_server (pip install 'moto[server]')", bin.is_some()) {
        return None;
    }
    let port = free_port();
    let child = Command::new(bin.unwrap())
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
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    while try_request(addr, "GET", "/moto-api/", &[], b"").is_err() {
        assert!(Instant::now() < deadline, "moto_server did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
    Some(moto)
}

async fn client(url: &str, region: &str) -> Client {
    let conf = trafficmap_aws::aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .endpoint_url(url)
        .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
        .load()
        .await;
    Client::new(&conf)
}

/// (instance id, private address, availability zone)
type Seeded = (String, String, String);

async fn run_instance(
    ec2: &Client,
    image: &str,
    itype: InstanceType,
    az: &str,
    sg: &str,
    tags: &[(&str, &str)],
    spot: bool,
) -> Seeded {
    let mut spec = TagSpecification::builder().resource_type(ResourceType::Instance);
    for (k, v) in tags {
        spec = spec.tags(Tag::builder().key(*k).value(*v).build());
    }
    let mut req = ec2
        .run_instances()
        .image_id(image)
        .instance_type(itype)
        .min_count(1)
        .max_count(1)
        .security_group_ids(sg)
        .placement(Placement::builder().availability_zone(az).build())
        .tag_specifications(spec.build());
    if spot {
        req = req.instance_market_options(
            InstanceMarketOptionsRequest::builder()
                .market_type(MarketType::Spot)
                .build(),
        );
    }
    let out = req.send().await.expect("RunInstances");
    let i = &out.instances()[0];
    (
        i.instance_id().unwrap().to_owned(),
        i.private_ip_address().unwrap().to_owned(),
        az.to_owned(),
    )
}

async fn image(ec2: &Client) -> String {
    let images = ec2
        .describe_images()
        .owners("amazon")
        .send()
        .await
        .expect("DescribeImages");
    images.images()[0].image_id().unwrap().to_owned()
}

async fn group(ec2: &Client, name: &str) -> String {
    ec2.create_security_group()
        .group_name(name)
        .description(format!("{name} servers"))
        .send()
        .await
        .expect("CreateSecurityGroup")
        .group_id()
        .unwrap()
        .to_owned()
}

#[test]
#[ignore = "needs moto_server: cargo xtask test --only ec2-moto"]
fn ec2_enrichment_through_moto() {
    let Some(moto) = start_moto() else { return };
    let home = tempfile::tempdir().unwrap();
    // The standard credential chain, as a deployed collector would use it, pointed at moto and
    // kept away from any developer's ~/.aws.
    let env = [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("HOME", home.path().to_str().unwrap()),
    ];
    for (k, v) in env {
        // SAFETY: this test binary runs this one test; no other thread reads the environment yet.
        unsafe { std::env::set_var(k, v) };
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (api, db, west, web_sg, db_sg, spot_price) = rt.block_on(async {
        let east = client(&moto.url, "us-east-1").await;
        let west = client(&moto.url, "us-west-2").await;
        let (img_e, img_w) = (image(&east).await, image(&west).await);
        let web_sg = group(&east, "web").await;
        let db_sg = group(&east, "db").await;
        let west_sg = group(&west, "edge").await;
        let api = run_instance(
            &east,
            &img_e,
            InstanceType::M5Large,
            "us-east-1a",
            &web_sg,
            &[
                ("Name", "api-1"),
                ("arch", " Online/API "),
                ("env", "Production"),
            ],
            false,
        )
        .await;
        let db = run_instance(
            &east,
            &img_e,
            InstanceType::R5Xlarge,
            "us-east-1b",
            &db_sg,
            &[
                ("Name", "db-1"),
                ("arch", "online/storage"),
                ("env", "prod"),
            ],
            true,
        )
        .await;
        let west_i = run_instance(
            &west,
            &img_w,
            InstanceType::T3Small,
            "us-west-2a",
            &west_sg,
            &[("Name", "edge-1"), ("arch", "online/edge"), ("env", "prod")],
            false,
        )
        .await;
        // What EC2 itself says the spot price of db-1's type and zone is.
        let history = east
            .describe_spot_price_history()
            .instance_types(InstanceType::R5Xlarge)
            .availability_zone("us-east-1b")
            .send()
            .await
            .expect("DescribeSpotPriceHistory");
        let spot: f64 = history
            .spot_price_history()
            .iter()
            .filter(|p| {
                p.instance_type() == Some(&InstanceType::R5Xlarge)
                    && p.availability_zone() == Some("us-east-1b")
            })
            .max_by_key(|p| p.timestamp().map(|t| t.secs()))
            .and_then(|p| p.spot_price())
            .expect("a spot price for r5.xlarge in us-east-1b")
            .parse()
            .unwrap();

        // What trafficmap-aws fetches.
        let fetcher = Ec2Fetcher::new(&Ec2Options {
            regions: vec!["us-east-1".into(), "us-west-2".into()],
            endpoint_url: Some(moto.url.clone()),
            call_timeout: Some(Duration::from_secs(30)),
        })
        .await;
        let snap = fetcher.fetch(chrono::Utc::now()).await;
        assert_eq!(snap.errors, Vec::<String>::new());
        assert_eq!(snap.regions, ["us-east-1", "us-west-2"]);
        assert_eq!(snap.instances.len(), 3);
        let find = |id: &str| snap.instances.iter().find(|i| i.instance_id == id).unwrap();
        let a = find(&api.0);
        assert_eq!(a.tags["Name"], "api-1");
        assert_eq!(a.tags["arch"], " Online/API ");
        assert_eq!(
            (a.instance_type.as_deref(), a.availability_zone.as_deref()),
            (Some("m5.large"), Some("us-east-1a"))
        );
        assert_eq!(
            (a.lifecycle, a.region.as_str()),
            (Lifecycle::OnDemand, "us-east-1")
        );
        assert_eq!(a.security_groups, std::slice::from_ref(&web_sg));
        assert_eq!(a.private_ips[0].to_string(), api.1);
        assert_eq!(
            a.public_ips.len(),
            1,
            "moto's default VPC gives a public address"
        );
        let d = find(&db.0);
        assert_eq!(d.lifecycle, Lifecycle::Spot);
        let w = find(&west_i.0);
        assert_eq!(
            (w.region.as_str(), w.instance_type.as_deref()),
            ("us-west-2", Some("t3.small"))
        );
        assert!(
            snap.security_groups
                .iter()
                .any(|g| g.group_id == web_sg && g.group_name == "web")
        );
        assert!(
            snap.security_groups
                .iter()
                .any(|g| g.region == "us-west-2" && g.group_name == "edge")
        );
        let p = snap
            .spot_prices
            .iter()
            .find(|p| p.instance_type == "r5.xlarge" && p.availability_zone == "us-east-1b")
            .expect("spot price fetched");
        assert_eq!(p.price, spot);
        (api, db, west_i, web_sg, db_sg, spot)
    });

    // The collector binary, with the standard chain and the endpoint flag.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("prices.csv"),
        "instance_type,region,usd_per_hour\nm5.large,us-east-1,0.096\nt3.small,*,0.0208\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("collector.toml"),
        "[enrich]\nprice_file = \"prices.csv\"\n[enrich.tags]\narchdomain = \"arch\"\n[enrich.env]\naliases = { \"production\" = \"prod\" }\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let c = Collector::start_with_env(
        &[
            "--config",
            dir.path().join("collector.toml").to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--allow-unauthenticated",
            "--no-dns",
            "--ec2",
            "--ec2-region",
            "us-east-1,us-west-2",
            "--ec2-endpoint",
            &moto.url,
        ],
        &env,
    );
    let minute = recent_minute(2);
    // An agent on api-1 without instance metadata: found by its address.
    let body = serde_json::to_vec(&report(
        "moto-report-000000001",
        "ip-10-api",
        &api.1,
        minute,
        &[
            (
                &api.1,
                &db.1,
                5432,
                "client",
                "api-server",
                1 << 30,
                3 << 30,
            ),
            (&api.1, &west.1, 443, "client", "api-server", 1 << 30, 0),
        ],
    ))
    .unwrap();
    assert_eq!(c.post_report(&body).json()["status"], "stored");
    let to = minute + chrono::TimeDelta::minutes(1);
    let q = |view: &str| {
        format!(
            "/api/v1/maps?view={view}&from={}&to={}",
            minute.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            to.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )
    };
    // The first refresh runs at start; wait for it to be visible.
    let deadline = Instant::now() + Duration::from_secs(60);
    let m = loop {
        let m = c.get(&q("instances")).json();
        if m["warnings"].as_array().is_some_and(|w| w.is_empty()) {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "EC2 data never loaded: {m}\n{}",
            c.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let node = |id: &str| {
        m["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["id"] == id)
            .unwrap_or_else(|| panic!("no node {id}: {m}"))
            .clone()
    };
    let a = node(&api.0);
    assert_eq!(a["kind"], "host");
    assert_eq!(a["label"], "api-1");
    assert_eq!(a["archdomain"], "online/api");
    assert_eq!(a["env"], "prod");
    assert_eq!(a["instance_type"], "m5.large");
    assert_eq!(a["availability_zone"], "us-east-1a");
    assert_eq!(a["region"], "us-east-1");
    assert_eq!(a["lifecycle"], "on-demand");
    assert_eq!(a["price_per_hour"], 0.096);
    assert_eq!(a["security_groups"], serde_json::json!([web_sg]));
    let d = node(&db.0);
    assert_eq!(
        (
            d["kind"].as_str(),
            d["label"].as_str(),
            d["lifecycle"].as_str()
        ),
        (Some("unmonitored"), Some("db-1"), Some("spot"))
    );
    assert_eq!(d["price_per_hour"].as_f64().unwrap(), spot_price);
    assert_eq!(d["availability_zone"], db.2);
    let w = node(&west.0);
    assert_eq!(
        (w["region"].as_str(), w["price_per_hour"].as_f64()),
        (Some("us-west-2"), Some(0.0208))
    );
    let link = |t: &str| {
        m["links"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["source"] == api.0.as_str() && l["target"] == t)
            .unwrap()
            .clone()
    };
    // 4 GiB across zones at $0.02/GiB, 1 GiB across regions at $0.02/GiB.
    let l = link(&db.0);
    assert_eq!(
        (l["cost_kind"].as_str(), l["cost_usd"].as_f64()),
        (Some("cross_az"), Some(0.08))
    );
    let l = link(&west.0);
    assert_eq!(
        (l["cost_kind"].as_str(), l["cost_usd"].as_f64()),
        (Some("cross_region"), Some(0.02))
    );
    // Security groups by name.
    let sgm = c.get(&q("security-groups")).json();
    let labels: Vec<(String, String)> = sgm["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap().to_owned(),
                n["label"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        labels.contains(&(format!("sg:{web_sg}"), "web".into())),
        "{labels:?}"
    );
    assert!(
        labels.contains(&(format!("sg:{db_sg}"), "db".into())),
        "{labels:?}"
    );
    let metrics = c.get("/metrics").text();
    assert!(
        metrics.lines().any(|l| l.starts_with(
            "trafficmap_collector_enrichment_refreshes_total{source=\"ec2\",result=\"ok\"}"
        )),
        "{metrics}"
    );
    assert_eq!(c.terminate().code(), Some(0));
}
