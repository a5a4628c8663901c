//! edgetwin: build, test and ship Azure IoT Edge modules in Rust.
//!
//! This package holds the operator CLI (`edgetwin`). The wire contract lives in `edgetwin-wire`,
//! the local IoT Hub in `edgetwin-hub` (behind the default `hub` feature).

#[cfg(feature = "hub")]
pub mod hub_banner;
pub mod log_writer;
pub mod manifest;
pub mod module;
pub mod provision;
#[cfg(feature = "hub")]
pub mod quickstart;
pub mod scaffold;
pub mod solution;
