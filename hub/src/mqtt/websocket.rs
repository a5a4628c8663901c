//! MQTT over WebSockets, as the SDKs dial it (`websockets=True`): TLS, then an HTTP upgrade on
//! `/$iothub/websocket` with subprotocol `mqtt`, then MQTT frames inside binary messages.

use async_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use async_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use ws_stream_tungstenite::WsStream;

/// The only path IoT Hub serves MQTT over WebSockets on.
pub const WEBSOCKET_PATH: &str = "/$iothub/websocket";

/// Completes the WebSocket upgrade and returns a byte stream carrying MQTT.
// The handshake callback's `Result<Response, ErrorResponse>` is fixed by tungstenite's `Callback`.
#[allow(clippy::result_large_err)]
pub async fn accept<S>(stream: S) -> Result<impl AsyncRead + AsyncWrite + Unpin, std::io::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let check = |request: &Request, mut response: Response| -> Result<Response, ErrorResponse> {
        if request.uri().path() != WEBSOCKET_PATH {
            let mut refusal = ErrorResponse::new(Some(format!(
                "MQTT over WebSockets is served on {WEBSOCKET_PATH}"
            )));
            *refusal.status_mut() = StatusCode::NOT_FOUND;
            return Err(refusal);
        }
        let offers_mqtt = request
            .headers()
            .get_all("Sec-WebSocket-Protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim().eq_ignore_ascii_case("mqtt"));
        if offers_mqtt {
            response
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
        }
        Ok(response)
    };
    let socket = async_tungstenite::tokio::accept_hdr_async(stream, check)
        .await
        .map_err(std::io::Error::other)?;
    Ok(WsStream::new(socket))
}
