//! Device-side MQTT 3.1.1 over TLS, directly (port 8883) or inside WebSockets
//! (`/$iothub/websocket`, port 443): the listeners and their connections.

mod auth;
mod connection;
mod frame;
mod websocket;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::hub::Hub;
use crate::listener::{self, Admission, Deadlines, Limits};

/// How long a client has to finish the TLS (and WebSocket) handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// How MQTT is carried on a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// MQTT straight over TLS.
    Tls,
    /// MQTT in WebSocket binary messages over TLS.
    WebSocket,
}

/// Accepts MQTT connections until `shutdown` turns true, each in its own task, within `limits`.
pub async fn serve(
    listener: TcpListener,
    tls: TlsAcceptor,
    transport: Transport,
    hub: Arc<Hub>,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
) {
    let name = match transport {
        Transport::Tls => "MQTT",
        Transport::WebSocket => "MQTT over WebSockets",
    };
    listener::serve(
        listener,
        name,
        limits,
        shutdown,
        move |socket, peer, admission| {
            serve_socket(socket, peer, tls.clone(), transport, hub.clone(), admission)
        },
    )
    .await;
}

async fn serve_socket(
    socket: Deadlines<TcpStream>,
    peer: SocketAddr,
    tls: TlsAcceptor,
    transport: Transport,
    hub: Arc<Hub>,
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
    let result = match transport {
        Transport::Tls => connection::serve(hub, stream, || admission.established()).await,
        Transport::WebSocket => {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, websocket::accept(stream)).await {
                Ok(Ok(stream)) => connection::serve(hub, stream, || admission.established()).await,
                Ok(Err(error)) => {
                    tracing::info!(%peer, %error, "WebSocket upgrade refused");
                    return;
                }
                Err(_) => {
                    tracing::info!(%peer, "WebSocket upgrade timed out");
                    return;
                }
            }
        }
    };
    if let Err(error) = result {
        tracing::info!(%peer, %error, "MQTT connection closed");
    }
}
