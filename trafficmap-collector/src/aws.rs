//! EC2 through `trafficmap-aws` (feature `ec2`).

use chrono::{DateTime, Utc};
use trafficmap_aws::{Ec2Fetcher, Ec2Options};
use trafficmap_model::cloud::CloudSnapshot;

use crate::{
    config,
    enrich::{dns::BoxFuture, refresh::CloudSource},
};

pub struct Ec2Source(Ec2Fetcher);

impl Ec2Source {
    pub async fn new(cfg: &config::Ec2) -> Ec2Source {
        Ec2Source(
            Ec2Fetcher::new(&Ec2Options {
                regions: cfg.regions.clone(),
                endpoint_url: cfg.endpoint_url.clone(),
                call_timeout: Some(cfg.timeout),
            })
            .await,
        )
    }
}

impl CloudSource for Ec2Source {
    fn name(&self) -> &'static str {
        "ec2-api"
    }

    fn fetch(&self, now: DateTime<Utc>) -> BoxFuture<'_, CloudSnapshot> {
        Box::pin(self.0.fetch(now))
    }
}
