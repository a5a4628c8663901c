//! MQTT over WebSockets, as the SDKs dial it (`websockets=True`): on the hub's HTTPS port, as on
//! IoT Hub's 443, a `GET /$iothub/websocket` with `Upgrade: websocket` and subprotocol `mqtt` is
//! upgraded and MQTT frames then travel inside binary messages. Every other request on that port
//! is the service REST API.
//!
//! A WebSocket message carries MQTT packets, so none may be longer than the longest packet the
//! hub accepts ([`MAX_PACKET_SIZE`]), and a frame no longer than its message: a client that
//! streams a message without ending it is disconnected once past that, instead of being held
//! (tungstenite's defaults, 64 MiB messages and 16 MiB frames, let each unauthenticated client
//! make the hub hold ~60 MiB until the CONNECT timeout). With a small read buffer, what one
//! connection costs before its CONNECT is a few hundred KiB at most.
//!
//! Part of the MQTT door: depends on its connections only; the front door ([`crate::https`]) calls
//! it.

use async_tungstenite::tokio::TokioAdapter;
use async_tungstenite::tungstenite::handshake::derive_accept_key;
use async_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use async_tungstenite::WebSocketStream;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{
    HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_PROTOCOL, UPGRADE,
};
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use ws_stream_tungstenite::WsStream;

use super::frame::MAX_PACKET_SIZE;
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

/// The only path IoT Hub serves MQTT over WebSockets on.
pub const WEBSOCKET_PATH: &str = "/$iothub/websocket";

/// Why a request to [`WEBSOCKET_PATH`] cannot be upgraded.
#[derive(Debug, PartialEq, Eq)]
pub struct UpgradeRefused(pub &'static str);

/// The `Sec-WebSocket-Accept` for a valid MQTT-over-WebSockets upgrade request, or why it is not
/// one (RFC 6455 §4.2.1: GET, `Upgrade: websocket`, `Connection: upgrade`, version 13, a key).
pub fn accept_key<B>(request: &hyper::Request<B>) -> Result<String, UpgradeRefused> {
    let has = |name, token| lists_token(request, name, token);
    if request.method() != hyper::Method::GET {
        return Err(UpgradeRefused("a WebSocket upgrade must be a GET"));
    }
    if !has(UPGRADE, "websocket") || !has(CONNECTION, "upgrade") {
        return Err(UpgradeRefused(
            "MQTT over WebSockets needs `Upgrade: websocket` and `Connection: Upgrade`",
        ));
    }
    if !has(hyper::header::SEC_WEBSOCKET_VERSION, "13") {
        return Err(UpgradeRefused("Sec-WebSocket-Version must be 13"));
    }
    let key = request
        .headers()
        .get(hyper::header::SEC_WEBSOCKET_KEY)
        .ok_or(UpgradeRefused("Sec-WebSocket-Key is missing"))?;
    Ok(derive_accept_key(key.as_bytes()))
}

/// Whether the comma-separated header `name` lists `token` (case-insensitive).
fn lists_token<B>(
    request: &hyper::Request<B>,
    name: hyper::header::HeaderName,
    token: &str,
) -> bool {
    request
        .headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case(token))
}

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
    let accept = accept_key(&request)?;
    let offers_mqtt = lists_token(&request, SEC_WEBSOCKET_PROTOCOL, "mqtt");
    let upgrading = hyper::upgrade::on(&mut request);
    let session = async move {
        let upgraded = match upgrading.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                tracing::info!(%error, "WebSocket upgrade failed");
                return;
            }
        };
        let socket = WebSocketStream::from_raw_socket(
            TokioAdapter::new(TokioIo::new(upgraded)),
            Role::Server,
            Some(config()),
        )
        .await;
        if let Err(error) =
            super::connection::serve(state, WsStream::new(socket), chain, authenticated).await
        {
            tracing::info!(%error, "MQTT over WebSockets connection closed");
        }
    };
    let mut response = hyper::Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "Upgrade")
        .header(SEC_WEBSOCKET_ACCEPT, accept);
    if offers_mqtt {
        response = response.header(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static("mqtt"));
    }
    let response = response
        .body(Full::new(Bytes::new()))
        .unwrap_or_else(|_| hyper::Response::new(Full::new(Bytes::new())));
    Ok((response, session))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> hyper::Request<()> {
        let mut builder = hyper::Request::get(WEBSOCKET_PATH);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn a_valid_upgrade_gets_the_rfc_6455_accept_key() {
        let r = request(&[
            ("Upgrade", "websocket"),
            ("Connection", "keep-alive, Upgrade"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]);
        assert_eq!(accept_key(&r).unwrap(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn a_plain_get_on_the_websocket_path_is_refused_with_the_reason() {
        let refused = accept_key(&request(&[])).unwrap_err();
        assert!(refused.0.contains("Upgrade: websocket"), "{refused:?}");
        let no_key = request(&[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Version", "13"),
        ]);
        assert_eq!(
            accept_key(&no_key).unwrap_err(),
            UpgradeRefused("Sec-WebSocket-Key is missing")
        );
    }
}
