//! trafficmap's per-host side: the eBPF probe loader and the agent built on it.
//!
//! Pure logic (backend decision, BTF and tracefs parsing, address decoding, deltas) lives in
//! modules that touch neither the kernel nor the network, so `cargo test` covers it without root;
//! [`probe`] is the only module that talks to the kernel's BPF subsystem.
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod agent;
pub mod backend;
pub mod btf;
pub mod config;
pub mod conn;
pub mod conntrack;
pub mod containers;
pub mod delta;
pub mod diag;
pub mod error;
pub mod hoststats;
pub mod identity;
pub mod k8s;
pub mod kretprobe;
pub mod metrics;
pub mod metrics_server;
pub mod names;
pub mod output;
pub mod pairs;
pub mod privileges;
pub mod probe;
pub mod roles;
pub mod runtimeapi;
pub mod sanitize;
pub mod ship;
pub mod spool;
pub mod tracefs;
