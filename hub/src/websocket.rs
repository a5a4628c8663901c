//! WebSocket upgrades on the HTTPS port, for the protocols IoT Hub carries inside WebSockets on
//! its 443 (MQTT, AMQP): the RFC 6455 server handshake within an HTTP/1.1 request, and the byte
//! stream the protocol then runs over (each binary message's bytes in order, each write sent as
//! one binary message). The doors choose the subprotocol and the limits; the front door
//! ([`crate::https`]) routes the request.
//!
//! A leaf: depends on nothing else of the hub.

use async_tungstenite::tokio::TokioAdapter;
use async_tungstenite::tungstenite::handshake::derive_accept_key;
use async_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use async_tungstenite::WebSocketStream;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{
    HeaderName, HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_PROTOCOL, UPGRADE,
};
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use ws_stream_tungstenite::WsStream;

/// Why a request cannot be upgraded to a WebSocket.
#[derive(Debug, PartialEq, Eq)]
pub struct UpgradeRefused(pub &'static str);

/// An upgraded connection as a byte stream (tokio's `AsyncRead` + `AsyncWrite`).
pub type ByteStream = WsStream<TokioAdapter<TokioIo<hyper::upgrade::Upgraded>>>;

/// The `Sec-WebSocket-Accept` for a valid upgrade request, or why it is not one (RFC 6455
/// §4.2.1: GET, `Upgrade: websocket`, `Connection: upgrade`, version 13, a key).
pub fn accept_key<B>(request: &hyper::Request<B>) -> Result<String, UpgradeRefused> {
    let has = |name, token| lists_token(request, name, token);
    if request.method() != hyper::Method::GET {
        return Err(UpgradeRefused("a WebSocket upgrade must be a GET"));
    }
    if !has(UPGRADE, "websocket") || !has(CONNECTION, "upgrade") {
        return Err(UpgradeRefused(
            "a WebSocket upgrade needs `Upgrade: websocket` and `Connection: Upgrade`",
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

/// Whether the request offers `subprotocol` in `Sec-WebSocket-Protocol` (case-insensitive).
pub fn offers<B>(request: &hyper::Request<B>, subprotocol: &str) -> bool {
    lists_token(request, SEC_WEBSOCKET_PROTOCOL, subprotocol)
}

/// Whether the comma-separated header `name` lists `token` (case-insensitive).
fn lists_token<B>(request: &hyper::Request<B>, name: HeaderName, token: &str) -> bool {
    request
        .headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case(token))
}

/// Answers an upgrade request with `101 Switching Protocols` (naming `subprotocol` when the
/// client offered it), and returns the byte stream of the upgraded connection, ready once the
/// response is out (`None` if the upgrade failed), within `config`'s limits.
pub fn upgrade(
    request: &mut hyper::Request<hyper::body::Incoming>,
    subprotocol: &'static str,
    config: WebSocketConfig,
) -> Result<
    (
        hyper::Response<Full<Bytes>>,
        impl std::future::Future<Output = Option<ByteStream>> + Send,
    ),
    UpgradeRefused,
> {
    let accept = accept_key(request)?;
    let offered = offers(request, subprotocol);
    let upgrading = hyper::upgrade::on(request);
    let stream = async move {
        let upgraded = match upgrading.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                tracing::info!(%error, "WebSocket upgrade failed");
                return None;
            }
        };
        let socket = WebSocketStream::from_raw_socket(
            TokioAdapter::new(TokioIo::new(upgraded)),
            Role::Server,
            Some(config),
        )
        .await;
        Some(WsStream::new(socket))
    };
    let mut response = hyper::Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "Upgrade")
        .header(SEC_WEBSOCKET_ACCEPT, accept);
    if offered {
        response = response.header(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(subprotocol),
        );
    }
    let response = response
        .body(Full::new(Bytes::new()))
        .unwrap_or_else(|_| hyper::Response::new(Full::new(Bytes::new())));
    Ok((response, stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> hyper::Request<()> {
        let mut builder = hyper::Request::get("/$iothub/websocket");
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
            ("Sec-WebSocket-Protocol", "foo, AMQPWSB10"),
        ]);
        assert_eq!(accept_key(&r).unwrap(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert!(offers(&r, "amqpwsb10"));
        assert!(!offers(&r, "mqtt"));
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
