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

/// The AWS Price List API (`[prices]`), through `trafficmap-aws`.
pub struct PriceListApi {
    fetcher: trafficmap_aws::PriceListFetcher,
    operating_system: String,
}

impl PriceListApi {
    pub async fn new(prices: &config::Prices, timeout: std::time::Duration) -> PriceListApi {
        PriceListApi {
            fetcher: trafficmap_aws::PriceListFetcher::new(&trafficmap_aws::PriceListOptions {
                endpoint_url: prices.price_list_endpoint.clone(),
                call_timeout: Some(timeout),
            })
            .await,
            operating_system: prices.operating_system.clone(),
        }
    }
}

impl crate::enrich::pricelist::PriceListSource for PriceListApi {
    fn on_demand<'a>(
        &'a self,
        instance_type: &'a str,
        region: &'a str,
    ) -> BoxFuture<'a, Result<Option<f64>, String>> {
        Box::pin(async move {
            self.fetcher
                .on_demand(instance_type, region, &self.operating_system)
                .await
                .map_err(|e| e.to_string())
        })
    }
}
