//! The module client: identity, an MQTT session over rumqttc that keeps the module twin in
//! sync across reconnects and token renewals, direct methods and module outputs.
//!
//! Protocol state is kept in plain structs ([`backoff`], [`rid`], [`desired`], [`reported`])
//! with unit tests; [`session`] is the only place that touches the network.

pub mod backoff;
pub mod desired;
pub mod error;
pub mod identity;
pub mod message;
pub mod reported;
pub mod rid;
pub mod session;
pub mod state;
pub mod workload;

pub use desired::DesiredUpdate;
pub use error::{ClientError, IdentityError};
pub use identity::{Identity, IdentitySource};
pub use message::Message;
pub use session::{
    spawn, ClientHandle, ConnectionChange, Event, MethodCall, Overflow, SendError, SessionConfig,
    SessionState,
};
pub use state::DisconnectReason;

/// The `DeviceClientType` sent in the CONNECT username (and the workload API user agent).
pub fn client_type() -> String {
    format!("edgetwin-client/{}", env!("CARGO_PKG_VERSION"))
}
