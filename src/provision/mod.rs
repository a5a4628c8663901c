//! The provisioning job: the IoT Hub service REST client and what `edgetwin provision` and
//! `edgetwin twin` do with it.
//!
//! - [`client`]: the service client of [`edgetwin_service`] (HTTPS, service SAS tokens,
//!   retries, IoT Hub error envelopes: the only I/O), its errors with the CLI's hints.
//! - [`pacing`], [`settings`]: pure policy (request pacing, where the
//!   connection string and CA come from), unit-tested.
//! - [`identities`]: idempotent device and module creation, connection strings.
//! - [`deploy`]: a deployment manifest applied to one device or as an at-scale configuration.
//! - [`manifest`]: the manifest step (generate with [`crate::manifest`], refuse if invalid).
//! - [`fleet`]: many edge devices through bulk `POST /devices`, paced and resumable.
//! - [`twin`]: `twin get` / `twin update`.
//! - [`query`]: `edgetwin query`, every page of an IoT Hub query.
//! - [`cli`]: the clap arguments and the command runners used by the `edgetwin` binary.

pub mod cli;
pub mod client;
pub mod deploy;
pub mod dps;
pub mod edge_config;
pub mod error;
pub mod fleet;
pub mod identities;
pub mod manifest;
pub mod pacing;
pub mod query;
pub mod settings;
pub mod twin;

pub use client::{ClientOptions, ServiceClient};
pub use error::{ProvisionError, ServiceError};
