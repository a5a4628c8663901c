//! edgetwin: build, test and ship Azure IoT Edge modules in Rust.
//!
//! This package is the operator CLI (`edgetwin`) only. The wire contract lives in `edgetwin-wire`,
//! the local IoT Hub in `edgetwin-hub`, the runtime in `edgetwin-edge`, and the module application
//! in its own crate, `edgetwin-module` (`modules/edgetwin/`), which the CLI never links: the
//! quickstart runs it as a separate process, as IoT Edge does. It may depend on every edgetwin
//! library crate (hub, edge, service, client, wire); no crate depends on it.

pub mod hub_banner;
pub mod manifest;
pub mod messaging;
pub mod provision;
pub mod quickstart;
pub mod scaffold;
pub mod signals;
pub mod solution;
