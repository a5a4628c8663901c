//! The HTTPS front door (IoT Hub's port 443): one listener whose requests go to the web console
//! (`/console`), to MQTT over WebSockets (`GET /$iothub/websocket`, upgraded within the same
//! connection) or to the service REST API. The top of the HTTPS side: depends on the doors it
//! routes to (rest, console, mqtt), which never depend on it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::console::{self, Console};
use crate::error::ApiError;
use crate::http::{error_response, http1_server};
use crate::listener::{self, Admission, Limits};
use crate::x509::ClientChain;
use crate::{mqtt, rest};

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// What the front door hands requests to: each door's own handle.
#[derive(Clone)]
pub struct Doors {
    /// The service REST API.
    pub rest: rest::State,
    /// The web console's sessions and event streams.
    pub console: Arc<Console>,
    /// MQTT over WebSockets.
    pub mqtt: mqtt::State,
}

/// Accepts HTTPS connections until `shutdown` turns true, within `limits`. A connection upgraded
/// to MQTT over WebSockets goes on within the same connection task, so the listener's cap,
/// eviction of unauthenticated peers and `stop()` cover it too.
pub async fn serve(
    listener: TcpListener,
    tls: TlsAcceptor,
    doors: Doors,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
) {
    listener::serve(
        listener,
        "HTTPS",
        limits,
        shutdown,
        move |socket, peer, admission| {
            let (tls, doors) = (tls.clone(), doors.clone());
            async move {
                let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(socket)).await
                {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => {
                        tracing::info!(%peer, %error, "HTTPS TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(%peer, "HTTPS TLS handshake timed out");
                        return;
                    }
                };
                // A client certificate is for MQTT over WebSockets (X.509 identities) and for
                // DPS registrations with X.509 attestation (a request extension).
                let chain = ClientChain::of(stream.get_ref().1);
                let upgraded: UpgradedSlot = Arc::default();
                let slot = upgraded.clone();
                let service =
                    hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                        let (doors, slot, admission, chain) = (
                            doors.clone(),
                            slot.clone(),
                            admission.clone(),
                            chain.clone(),
                        );
                        async move {
                            let path = request.uri().path();
                            if path == mqtt::WEBSOCKET_PATH {
                                let response =
                                    websocket(doors.mqtt, request, chain, admission, &slot);
                                return Ok::<_, Infallible>(response.map(BodyExt::boxed));
                            }
                            if console::serves(path) {
                                let response = console::handle(
                                    &doors.console,
                                    &doors.rest,
                                    request,
                                    peer.ip(),
                                )
                                .await;
                                return Ok(response);
                            }
                            request.extensions_mut().insert(chain);
                            let response = rest::handle(doors.rest, request).await;
                            // A client that authenticated is kept when the listener is full.
                            if rest::authenticated(&response) {
                                admission.established();
                            }
                            Ok(response.map(BodyExt::boxed))
                        }
                    });
                if let Err(error) = http1_server()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await
                {
                    tracing::debug!(%peer, %error, "HTTPS connection ended");
                }
                let mqtt = upgraded.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(mqtt) = mqtt {
                    mqtt.await;
                }
            }
        },
    )
    .await;
}

/// Where an upgrade leaves the MQTT connection it starts, for the connection task to run.
type UpgradedSlot =
    Arc<std::sync::Mutex<Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>>>;

/// Upgrades to MQTT over WebSockets (the MQTT session is left in `slot`), or answers 400 naming
/// what the upgrade request lacks.
fn websocket(
    mqtt: mqtt::State,
    request: hyper::Request<Incoming>,
    chain: ClientChain,
    admission: Admission,
    slot: &UpgradedSlot,
) -> hyper::Response<Full<Bytes>> {
    match mqtt::upgrade_websocket(mqtt, request, chain, move || admission.established()) {
        Ok((response, mqtt)) => {
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::pin(mqtt));
            response
        }
        Err(refused) => {
            tracing::info!(reason = refused.0, "WebSocket upgrade refused");
            error_response(&ApiError::invalid(refused.0))
        }
    }
}
