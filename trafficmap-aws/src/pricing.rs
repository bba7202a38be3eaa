//! On-demand EC2 prices from the AWS Price List API (`GetProducts` of `AmazonEC2`), through
//! `aws-sdk-pricing` with the same credential chain as EC2.
//!
//! One call per (instance type, region): the filters select the shared-tenancy, no
//! pre-installed software, used-capacity product of one operating system, and the answer's
//! `OnDemand` term gives the USD price per hour. Parsing is a pure function ([`on_demand_usd`])
//! so it is tested on recorded documents.

use std::time::Duration;

use aws_config::{BehaviorVersion, Region, timeout::TimeoutConfig};
use aws_sdk_pricing::{
    Client,
    types::{Filter, FilterType},
};

/// The Price List API answers in a few regions only; us-east-1 serves every region's prices.
pub const PRICE_LIST_REGION: &str = "us-east-1";

/// Highest hourly price believed (the map's bound).
pub use trafficmap_model::map::MAX_PRICE_PER_HOUR as MAX_USD_PER_HOUR;

/// Products one question may match that we read (a filter set matches one product in practice;
/// a few when AWS splits a SKU); pages are not followed further.
const MAX_PRODUCTS: usize = 100;

/// How to reach the Price List API.
#[derive(Clone, Debug, Default)]
pub struct PriceListOptions {
    /// Overrides the endpoint (a proxy, or a local server in tests).
    pub endpoint_url: Option<String>,
    /// Time limit of one API call, retries included.
    pub call_timeout: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
#[error("GetProducts for {instance_type} in {region}: {message}")]
pub struct PriceListError {
    pub instance_type: String,
    pub region: String,
    pub message: String,
}

pub struct PriceListFetcher {
    client: Client,
}

/// The `TERM_MATCH` filters of one question, as (field, value).
pub fn filters(instance_type: &str, region: &str, operating_system: &str) -> Vec<(String, String)> {
    [
        ("instanceType", instance_type),
        ("regionCode", region),
        ("operatingSystem", operating_system),
        ("tenancy", "Shared"),
        ("preInstalledSw", "NA"),
        ("capacitystatus", "Used"),
    ]
    .into_iter()
    .map(|(f, v)| (f.to_owned(), v.to_owned()))
    .collect()
}

/// The on-demand USD price per hour in one price-list document (a JSON string of
/// `GetProducts`' `PriceList`): the first `OnDemand` term's price dimension billed in hours.
/// `None` when the document has none, or a price that is not a number in
/// `[0, MAX_USD_PER_HOUR]`.
pub fn on_demand_usd(document: &str) -> Option<f64> {
    let doc: serde_json::Value = serde_json::from_str(document).ok()?;
    let terms = doc.get("terms")?.get("OnDemand")?.as_object()?;
    terms
        .values()
        .filter_map(|t| t.get("priceDimensions")?.as_object())
        .flat_map(|dims| dims.values())
        .filter(|d| d.get("unit").and_then(|u| u.as_str()) == Some("Hrs"))
        .filter_map(|d| d.get("pricePerUnit")?.get("USD")?.as_str())
        .filter_map(|s| s.trim().parse::<f64>().ok())
        .find(|p| p.is_finite() && (0.0..=MAX_USD_PER_HOUR).contains(p))
}

impl PriceListFetcher {
    /// Loads credentials once (standard chain) and makes the client.
    pub async fn new(opts: &PriceListOptions) -> PriceListFetcher {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(t) = opts.call_timeout {
            loader = loader.timeout_config(TimeoutConfig::builder().operation_timeout(t).build());
        }
        let base = loader.load().await;
        let mut conf =
            aws_sdk_pricing::config::Builder::from(&base).region(Region::new(PRICE_LIST_REGION));
        if let Some(url) = &opts.endpoint_url {
            conf = conf.endpoint_url(url);
        }
        PriceListFetcher {
            client: Client::from_conf(conf.build()),
        }
    }

    /// The on-demand price per hour (USD) of a type in a region; `Ok(None)` when the API knows
    /// no such product (or no usable price for it).
    pub async fn on_demand(
        &self,
        instance_type: &str,
        region: &str,
        operating_system: &str,
    ) -> Result<Option<f64>, PriceListError> {
        let err = |message: String| PriceListError {
            instance_type: instance_type.to_owned(),
            region: region.to_owned(),
            message,
        };
        let mut req = self
            .client
            .get_products()
            .service_code("AmazonEC2")
            .format_version("aws_v1")
            .max_results(MAX_PRODUCTS as i32);
        for (field, value) in filters(instance_type, region, operating_system) {
            let f = Filter::builder()
                .r#type(FilterType::TermMatch)
                .field(field)
                .value(value)
                .build()
                .map_err(|e| err(e.to_string()))?;
            req = req.filters(f);
        }
        let out = req
            .send()
            .await
            // The SDK's Display is terse ("dispatch failure"); the source chain says why.
            .map_err(|e| err(trafficmap_model::error_chain(&e)))?;
        Ok(out
            .price_list()
            .iter()
            .take(MAX_PRODUCTS)
            .find_map(|d| on_demand_usd(d)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A recorded `PriceList` document (m5.large, us-east-1, Linux), trimmed of attributes the
    /// parser does not read.
    const RECORDED: &str = r#"{"product":{"productFamily":"Compute Instance","attributes":{"instanceType":"m5.large","regionCode":"us-east-1","operatingSystem":"Linux","tenancy":"Shared","preInstalledSw":"NA","capacitystatus":"Used"},"sku":"8KTQAHWA58GUHDGC"},"serviceCode":"AmazonEC2","terms":{"OnDemand":{"8KTQAHWA58GUHDGC.JRTCKXETXF":{"priceDimensions":{"8KTQAHWA58GUHDGC.JRTCKXETXF.6YS6EN2CT7":{"unit":"Hrs","endRange":"Inf","description":"$0.096 per On Demand Linux m5.large Instance Hour","appliesTo":[],"rateCode":"8KTQAHWA58GUHDGC.JRTCKXETXF.6YS6EN2CT7","beginRange":"0","pricePerUnit":{"USD":"0.0960000000"}}},"sku":"8KTQAHWA58GUHDGC","effectiveDate":"2026-11-01T00:00:00Z","offerTermCode":"JRTCKXETXF","termAttributes":{}}}},"version":"20261101000000","publicationDate":"2026-11-01T00:00:00Z"}"#;

    #[test]
    fn parses_the_on_demand_hourly_usd_price() {
        assert_eq!(on_demand_usd(RECORDED), Some(0.096));
    }

    #[test]
    fn refuses_what_is_not_a_price() {
        for bad in ["-1", "NaN", "inf", "1e300", "10000.01", "cheap"] {
            let doc = RECORDED.replace("0.0960000000", bad);
            assert_eq!(on_demand_usd(&doc), None, "{bad}");
        }
        // Another unit (a reservation fee) is not an hourly price.
        assert_eq!(
            on_demand_usd(&RECORDED.replace("\"Hrs\"", "\"Quantity\"")),
            None
        );
        // No on-demand term (a reserved-only product), or no JSON at all.
        assert_eq!(
            on_demand_usd(&RECORDED.replace("OnDemand", "Reserved")),
            None
        );
        assert_eq!(on_demand_usd("not json"), None);
    }

    #[test]
    fn filters_select_one_product() {
        assert_eq!(
            filters("m5.large", "eu-west-1", "Linux"),
            [
                ("instanceType", "m5.large"),
                ("regionCode", "eu-west-1"),
                ("operatingSystem", "Linux"),
                ("tenancy", "Shared"),
                ("preInstalledSw", "NA"),
                ("capacitystatus", "Used"),
            ]
            .map(|(f, v)| (f.to_owned(), v.to_owned()))
        );
    }
}
