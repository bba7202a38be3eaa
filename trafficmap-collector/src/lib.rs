//! trafficmap's collector: ingests the agents' minute reports, merges both ends of every
//! conversation, enriches endpoints (EC2, inventory, reverse DNS), keeps history (SQLite or
//! ClickHouse) and builds the daily D3 maps. See `docs/architecture-collector.md`.

pub mod auth;
pub mod config;
pub mod cost;
pub mod enrich;
pub mod mapbuild;
pub mod maps;
pub mod merge;
pub mod metrics;
pub mod obs;
pub mod store;
