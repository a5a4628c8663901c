//! MQTT over WebSockets, as the SDKs dial it (`websockets=True`): on the hub's HTTPS port, as on
//! IoT Hub's 443, a `GET /$iothub/websocket` with `Upgrade: websocket` and subprotocol `mqtt` is
//! upgraded and MQTT frames then travel inside binary messages (the same path with subprotocol
//! `AMQPWSB10` is AMQP's, [`crate::amqp`]). Every other request on that port is the service REST
//! API or the console.
//!
//! A WebSocket message carries MQTT packets, so none may be longer than the longest packet the
//! hub accepts ([`MAX_PACKET_SIZE`]), and a frame no longer than its message: a client that
//! streams a message without ending it is disconnected once past that, instead of being held
//! (tungstenite's defaults, 64 MiB messages and 16 MiB frames, let each unauthenticated client
//! make the hub hold ~60 MiB until the CONNECT timeout). With a small read buffer, what one
//! connection costs before its CONNECT is a few hundred KiB at most.
//!
//! Part of the MQTT door: depends on its connections and the shared upgrade
//! ([`crate::websocket`]); the front door ([`crate::https`]) calls it.

use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use bytes::Bytes;
use http_body_util::Full;

use super::frame::MAX_PACKET_SIZE;
use crate::websocket::{self, UpgradeRefused};
use crate::x509::ClientChain;

/// Longest WebSocket message (and frame) accepted: one MQTT packet of the longest size the hub
/// accepts, its fixed header (at most 5 bytes) included.
pub const MAX_MESSAGE_SIZE: usize = MAX_PACKET_SIZE + 5;
/// Bytes read from the socket at once: small, as most connections are idle most of the time.
const READ_BUFFER_SIZE: usize = 16 * 1024;

/// The WebSocket limits of MQTT over WebSockets (see the module's documentation).
fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_SIZE)
        .max_message_size(Some(MAX_MESSAGE_SIZE))
        .max_frame_size(Some(MAX_MESSAGE_SIZE))
}

/// The only path IoT Hub serves MQTT over WebSockets on (AMQP over WebSockets too, told apart by
/// its subprotocol).
pub const WEBSOCKET_PATH: &str = "/$iothub/websocket";

/// Answers an upgrade request with `101 Switching Protocols` (subprotocol `mqtt` when offered),
/// and returns the MQTT session to run over the upgraded connection once the response is out.
/// `chain` is what the client presented in its TLS handshake; `authenticated` runs once its
/// CONNECT is accepted.
pub fn upgrade(
    state: super::State,
    mut request: hyper::Request<hyper::body::Incoming>,
    chain: ClientChain,
    authenticated: impl FnOnce() + Send + 'static,
) -> Result<
    (
        hyper::Response<Full<Bytes>>,
        impl std::future::Future<Output = ()> + Send,
    ),
    UpgradeRefused,
> {
    let (response, upgraded) = websocket::upgrade(&mut request, "mqtt", config())?;
    let session = async move {
        let Some(stream) = upgraded.await else { return };
        if let Err(error) = super::connection::serve(state, stream, chain, authenticated).await {
            tracing::info!(%error, "MQTT over WebSockets connection closed");
        }
    };
    Ok((response, session))
}
