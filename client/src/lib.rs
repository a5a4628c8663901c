//! `edgetwin-client`: write an Azure IoT Edge module (or an IoT Hub device) in Rust.
//!
//! A [`ModuleClient`] keeps the module twin in sync across reconnects and token renewals (a full
//! twin GET after every CONNACK, patches applied only in version order), renews SAS tokens early
//! with a controlled reconnect, paces reconnects with jittered backoff, answers direct methods,
//! delivers routed input messages and keeps outputs until the hub acknowledges them.
//!
//! It depends on `edgetwin-wire` only (the hub only for its own tests): what a module links
//! stays small.
//!
//! ```no_run
//! use edgetwin_client::{Event, Message, ModuleClient};
//! use serde_json::json;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let mut client = ModuleClient::from_environment()?;
//!     while let Some(event) = client.next_event().await {
//!         match event {
//!             // The reconciled desired document and its version.
//!             Event::Desired(update) => {
//!                 let ack = json!({"threshold": {"value": update.desired["threshold"],
//!                     "ac": 200, "av": update.version}});
//!                 client.report(ack.as_object().unwrap().clone()).await;
//!             }
//!             Event::Input { input, message } if input == "input1" => {
//!                 if let Err(full) = client.send_output("output1", message) {
//!                     eprintln!("dropped: {full}");
//!                 }
//!             }
//!             Event::Method(call) => call.respond(200, &json!({"pong": true})).await,
//!             _ => {}
//!         }
//!     }
//!     Ok(())
//! }
//! ```
//!
//! Protocol state is pure and unit-tested with explicit time: [`state`] (the connection phases
//! and their transitions) over [`backoff`], [`rid`], [`desired`] and [`reported`]; [`session`]
//! is the only place that touches the network. [`log_writer`] is a log destination for
//! `tracing-subscriber` that drops and counts lines it cannot write instead of taking the module
//! down (the edgetwin module and CLI log through it).

pub mod backoff;
mod client;
pub mod desired;
pub mod error;
pub mod identity;
pub mod log_writer;
pub mod message;
pub mod reported;
pub mod rid;
pub mod session;
pub mod state;
pub mod workload;

pub use client::{Connection, DeviceClient, ModuleClient};
pub use desired::DesiredUpdate;
pub use error::{ClientError, IdentityError};
pub use identity::{Identity, IdentitySource};
pub use message::Message;
pub use session::{
    spawn, ClientHandle, Event, MethodCall, Overflow, Receipt, ReportError, SendError,
    SessionConfig, SessionState,
};
pub use state::{ConnectionChange, DisconnectReason};

/// The default `DeviceClientType` sent in the CONNECT username (and the workload API user
/// agent); [`SessionConfig::client_type`] overrides the former.
pub fn client_type() -> String {
    format!("edgetwin-client/{}", env!("CARGO_PKG_VERSION"))
}
