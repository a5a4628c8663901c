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
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::faults::Faults;
use crate::hub::Hub;
use crate::listener::{self, Admission, Deadlines, Limits};
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

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// Accepts MQTT connections until `shutdown` turns true, each in its own task, within `limits`.
pub async fn serve(
    listener: TcpListener,
    tls: TlsAcceptor,
    state: State,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
) {
    listener::serve(
        listener,
        "MQTT",
        limits,
        shutdown,
        move |socket, peer, admission| {
            serve_socket(socket, peer, tls.clone(), state.clone(), admission)
        },
    )
    .await;
}

async fn serve_socket(
    socket: Deadlines<TcpStream>,
    peer: SocketAddr,
    tls: TlsAcceptor,
    state: State,
    admission: Admission,
) {
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(socket)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            tracing::info!(%peer, %error, "MQTT TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "MQTT TLS handshake timed out");
            return;
        }
    };
    let chain = ClientChain::of(stream.get_ref().1);
    let result = connection::serve(state, stream, chain, || admission.established()).await;
    if let Err(error) = result {
        tracing::info!(%peer, %error, "MQTT connection closed");
    }
}
