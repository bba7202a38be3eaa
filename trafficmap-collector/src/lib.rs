//! trafficmap's collector: ingests the agents' minute reports, merges both ends of every
//! conversation, enriches endpoints (EC2, inventory, reverse DNS), keeps history (SQLite or
//! ClickHouse) and builds the daily D3 maps. See `docs/architecture-collector.md`.

pub mod auth;
#[cfg(feature = "ec2")]
pub mod aws;
pub mod cli;
pub mod config;
pub mod cost;
pub mod enrich;
pub mod export;
pub mod mapbuild;
pub mod maps;
pub mod merge;
pub mod metrics;
pub mod obs;
pub mod query;
pub mod run;
pub mod server;
pub mod store;
pub mod viewer;
