//! Device-side MQTT 3.1.1 over TLS: the listener and its connections.

mod auth;
mod connection;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::hub::Hub;

/// How long a client has to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

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
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = socket.set_nodelay(true);
                let (tls, hub, mut shutdown) = (tls.clone(), hub.clone(), shutdown.clone());
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(socket)).await {
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
                    tokio::select! {
                        result = connection::serve(hub, stream) => {
                            if let Err(error) = result {
                                tracing::info!(%peer, %error, "MQTT connection closed");
                            }
                        }
                        _ = shutdown.changed() => {}
                    }
                });
            }
            _ = shutdown.changed() => return,
        }
    }
}
