//! `edgetwin-module`: the edgetwin IoT Edge module application (gateway health): start-up
//! configuration, desired settings with Plug and Play acknowledgements, telemetry and alerts,
//! direct methods and logging. The binary (`src/main.rs`) is the container's entrypoint.
//!
//! Laid out as `edgetwin new` lays out a module (`modules/<name>/` with `Cargo.toml`, `src/`,
//! `module.json`); the images' Dockerfiles stay at the repository's top level.
//!
//! It may depend on `edgetwin-client` (the session: identity, twin, methods, outputs, logging
//! destination) and `edgetwin-wire` (twin documents), never on the CLI (`edgetwin`), the hub or
//! the runtime: the image carries no SQLite, no clap and no hub code.

pub mod app;
pub mod config;
pub mod logging;
pub mod metrics;
pub mod prometheus;
pub mod settings;

pub use app::run;
pub use config::ModuleConfig;
