//! trafficmap's data contracts, shared by the agent, the collector and the tests: the minute
//! [`report`] an agent ships, and the [`map`] the collector builds for the viewer. Pure types and
//! validation; no I/O.

pub mod cloud;
pub mod map;
pub mod report;
