//! `edgetwin-wire`: the pure, I/O-free wire contract shared by edgetwin's module client,
//! provisioning job and local IoT Hub emulator.
//!
//! Everything in this crate is deterministic string/JSON manipulation: connection strings,
//! SAS tokens, MQTT topic names and usernames, twin documents and their validation rules,
//! the service REST models and error envelopes, the IoT Edge module environment, and how an
//! edgetwin program words an error and its causes ([`report`]).
//! Nothing here opens sockets, reads files, reads the clock or reads the process environment.
//! It depends on no other edgetwin crate; every other crate depends on it (its optional `tls`
//! feature builds a rustls client configuration, still without I/O).

pub mod condition;
pub mod connection_string;
pub mod digital_twin;
pub mod dps;
pub mod edge;
pub mod ids;
pub mod job;
pub mod query;
pub mod report;
pub mod rest;
pub mod route;
pub mod sas;
pub mod secret;
#[cfg(feature = "tls")]
pub mod tls;
pub mod topic;
pub mod twin;
pub mod workload;

pub use secret::Secret;

/// The service (REST) api-version the Python `azure-iot-hub` 2.x SDK is pinned to.
pub const SERVICE_API_VERSION: &str = "2021-04-12";

/// The api-version used in the MQTT CONNECT username by device/module clients (direct-MQTT docs).
pub const DEVICE_API_VERSION: &str = "2021-04-12";
