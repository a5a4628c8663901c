//! Device-side MQTT 3.1.1 over TLS, directly (port 8883, this listener) or inside WebSockets
//! (`/$iothub/websocket` on the HTTPS port, upgraded by the front door, [`crate::https`]): the
//! connections. A door: depends on the hub and its own handle ([`State`]), never on another door.

mod auth;
mod connection;
mod dps;
mod frame;
mod websocket;

pub use websocket::{upgrade as upgrade_websocket, WEBSOCKET_PATH};

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::faults::Faults;
use crate::hub::Hub;
use crate::listener::{self, Admission, Limits, TlsStream};
use crate::x509::{ClientChain, DeviceCas};

/// What MQTT connections reach: the hub, and the faults injected through `/edgetwin/faults`
/// (refused CONNECTs, short token lifetimes, failed operations).
#[derive(Clone)]
pub struct State {
    /// The hub's core.
    pub hub: Arc<Hub>,
    /// Faults injected through the REST API.
    pub faults: Arc<Faults>,
    /// The CAs `certificateAuthority` identities' certificates must chain to.
    pub device_cas: Arc<DeviceCas>,
}

/// Accepts MQTT connections until `shutdown` turns true, each in its own task, within `limits`.
pub async fn serve(
    listener: TcpListener,
    tls: TlsAcceptor,
    state: State,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
) {
    listener::serve_tls(
        listener,
        "MQTT",
        tls,
        limits,
        shutdown,
        move |stream, peer, admission| serve_socket(stream, peer, state.clone(), admission),
    )
    .await;
}

async fn serve_socket(stream: TlsStream, peer: SocketAddr, state: State, admission: Admission) {
    let chain = ClientChain::of(stream.get_ref().1);
    let result = connection::serve(state, stream, chain, || admission.established()).await;
    if let Err(error) = result {
        tracing::info!(%peer, %error, "MQTT connection closed");
    }
}
