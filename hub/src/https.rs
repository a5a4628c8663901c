//! The HTTPS front door (IoT Hub's port 443): one listener whose requests go to the web console
//! (`/console`), to MQTT or AMQP over WebSockets (`GET /$iothub/websocket`, and
//! `/$servicebus/websocket` for AMQP, upgraded within the same connection) or to the service REST
//! API. The top of the HTTPS side: depends on the doors it routes to (rest, console, mqtt, amqp),
//! which never depend on it.

use std::convert::Infallible;
use std::sync::Arc;

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
use crate::{amqp, mqtt, rest};

/// What the front door hands requests to: each door's own handle.
#[derive(Clone)]
pub struct Doors {
    /// The service REST API.
    pub rest: rest::State,
    /// The web console's sessions and event streams.
    pub console: Arc<Console>,
    /// MQTT over WebSockets.
    pub mqtt: mqtt::State,
    /// AMQP over WebSockets.
    pub amqp: amqp::State,
}

/// Accepts HTTPS connections until `shutdown` turns true, within `limits`. A connection upgraded
/// to MQTT or AMQP over WebSockets goes on within the same connection task, so the listener's cap,
/// eviction of unauthenticated peers and `stop()` cover it too.
pub async fn serve(
    listener: TcpListener,
    tls: TlsAcceptor,
    doors: Doors,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
) {
    listener::serve_tls(
        listener,
        "HTTPS",
        tls,
        limits,
        shutdown,
        move |stream, peer, admission| {
            let doors = doors.clone();
            async move {
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
                            if path == mqtt::WEBSOCKET_PATH || amqp::is_amqp_upgrade(&request) {
                                let response = websocket(&doors, request, chain, admission, &slot);
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
                let session = upgraded.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(session) = session {
                    session.await;
                }
            }
        },
    )
    .await;
}

/// Where an upgrade leaves the MQTT or AMQP connection it starts, for the connection task to run.
type UpgradedSlot =
    Arc<std::sync::Mutex<Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>>>;

/// Upgrades to AMQP over WebSockets (subprotocol `AMQPWSB10`, or `/$servicebus/websocket`) or else
/// MQTT over WebSockets (the session is left in `slot`), or answers 400 naming what the upgrade
/// request lacks.
fn websocket(
    doors: &Doors,
    request: hyper::Request<Incoming>,
    chain: ClientChain,
    admission: Admission,
    slot: &UpgradedSlot,
) -> hyper::Response<Full<Bytes>> {
    let established = move || admission.established();
    let upgraded = if amqp::is_amqp_upgrade(&request) {
        amqp::upgrade_websocket(doors.amqp.clone(), request, established)
            .map(|(response, session)| (response, Box::pin(session) as _))
    } else {
        mqtt::upgrade_websocket(doors.mqtt.clone(), request, chain, established)
            .map(|(response, session)| (response, Box::pin(session) as _))
    };
    match upgraded {
        Ok((response, session)) => {
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(session);
            response
        }
        Err(refused) => {
            tracing::info!(reason = refused.0, "WebSocket upgrade refused");
            error_response(&ApiError::invalid(refused.0))
        }
    }
}
