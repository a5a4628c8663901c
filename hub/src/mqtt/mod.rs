//! Device-side MQTT 3.1.1 over TLS, directly (port 8883, this listener) or inside WebSockets
//! (`/$iothub/websocket` on the HTTPS port, upgraded by the REST server): the connections.

mod auth;
mod connection;
mod websocket;

pub use websocket::{upgrade as upgrade_websocket, WEBSOCKET_PATH};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::hub::Hub;

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// Accepts MQTT connections until `shutdown` turns true; each connection runs in its own task.
pub async fn serve(
    listener: TcpListener,
    tls: TlsAcceptor,
    hub: Arc<Hub>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (socket, peer) = match accepted {
                    Ok(ok) => ok,
                    Err(error) => {
                        tracing::warn!(%error, "MQTT accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = socket.set_nodelay(true);
                let (tls, hub, mut shutdown) = (tls.clone(), hub.clone(), shutdown.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        () = serve_socket(socket, peer, tls, hub) => {}
                        _ = shutdown.changed() => {}
                    }
                });
            }
            _ = shutdown.changed() => return,
        }
    }
}

async fn serve_socket(socket: TcpStream, peer: SocketAddr, tls: TlsAcceptor, hub: Arc<Hub>) {
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
    let result = connection::serve(hub, stream).await;
    if let Err(error) = result {
        tracing::info!(%peer, %error, "MQTT connection closed");
    }
}
