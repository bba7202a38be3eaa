//! trafficmap's collector: ingests the agents' minute reports, merges both ends of every
//! conversation, enriches endpoints (EC2, inventory, reverse DNS), keeps history (SQLite or
//! ClickHouse) and builds the daily D3 maps. See `docs/architecture-collector.md`.

pub mod archive;
pub mod auth;
#[cfg(feature = "ec2")]
pub mod aws;
pub mod cli;
pub mod config;
pub mod cost;
pub mod costreport;
pub mod dailyreport;
pub mod enrich;
pub mod export;
pub mod few;
pub mod ingest;
pub mod mail;
pub mod mapbuilds;
pub mod mapservice;
pub mod merge;
pub mod metrics;
pub mod period;
pub mod query;
pub mod range;
pub mod read_auth;
pub mod render;
pub mod run;
pub mod server;
pub mod slots;
pub mod store;
pub mod tls;
pub mod traffic_map;
pub mod viewer;
pub mod viewerapi;

/// Lets mimalloc back its memory with transparent huge pages. A 10,000-host day's map touches
/// about a gigabyte of fresh memory; in 4 KiB pages the page faults (on a VM each one also a
/// hypervisor fault) were a third of the build (BENCHMARKS.md). Call first thing in `main`.
pub fn tune_allocator() {
    // SAFETY: setting an option mimalloc reads when it next asks the OS for memory.
    unsafe { libmimalloc_sys::mi_option_set(libmimalloc_sys::mi_option_large_os_pages, 1) };
}
