//! `edgetwin-edge`: the IoT Edge runtime for one device — what aziot-edged, aziot-identityd and
//! edgeAgent are to a Raspberry Pi, in one small process.
//!
//! It reads the device's aziot-style `config.toml` ([`config`]), registers through DPS when it
//! says so ([`dps`]), makes the deployment's module identities on the hub with the device's own
//! credentials and serves each module the workload API on its own socket ([`identity`], [`workload`]), connects as `$edgeAgent`, and deploys
//! what `$edgeAgent`'s desired properties say through the Docker Engine API ([`agent`] over
//! [`docker`]), reporting as edgeAgent reports ([`report`]).
//!
//! Pure and unit-tested with explicit time: [`config`], [`dps`]'s protocol, [`deployment`],
//! [`plan`], [`container`], [`report`]. I/O: [`docker`], [`dps`]'s registration and [`identity`]
//! over [`http`], [`workload`], [`agent`], [`run`]. May depend on `edgetwin-wire` and
//! `edgetwin-client`; never on the hub.

pub mod agent;
pub mod config;
pub mod container;
pub mod deployment;
pub mod docker;
pub mod dps;
pub mod http;
pub mod identity;
pub mod plan;
pub mod report;
pub mod run;
pub mod workload;

pub use run::{EdgeArgs, RunArgs, RunError};
