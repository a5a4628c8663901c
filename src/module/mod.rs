//! The edgetwin module application (gateway health): start-up configuration, desired settings
//! with Plug and Play acknowledgements, telemetry and alerts, direct methods and logging.

pub mod app;
pub mod config;
pub mod logging;
pub mod metrics;
pub mod prometheus;
pub mod settings;

pub use app::run;
pub use config::ModuleConfig;
