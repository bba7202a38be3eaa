#![no_std]
//! Empty: the probe is the `trafficmap` binary target. This library target exists so that
//! `trafficmap-daemon` can list the crate as a build-dependency (see its Cargo.toml).
