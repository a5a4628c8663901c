//! AMQP over WebSockets on the HTTPS port, as IoT Hub and Event Hubs serve it on 443: a
//! WebSocket upgrade with subprotocol `AMQPWSB10`, then AMQP's bytes inside binary messages,
//! the same connection as on 5671 from the protocol header on (SASL, CBS, the padding rewrites).
//!
//! Two paths, as the SDKs dial them: IoT Hub's `/$iothub/websocket` (azure-iot-sdk-node
//! `azure-iothub` `AmqpWs._getConnectionUri`: `wss://{host}:443/$iothub/websocket`; the C SDK's
//! `DEFAULT_WS_RELATIVE_PATH`), shared with MQTT over WebSockets and told apart by the
//! subprotocol; and Service Bus' `/$servicebus/websocket` (azure-eventhub 5.15
//! `_configuration.py`: `hostname += "/$servicebus/websocket"`; @azure/event-hubs 6
//! `connectionContext.js`: `webSocketEndpointPath = "$servicebus/websocket"`; both offer
//! `AMQPWSB10`).
//!
//! Part of the AMQP door: depends on its connections and the shared upgrade
//! ([`crate::websocket`]); the front door ([`crate::https`]) calls it.

use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use bytes::Bytes;
use http_body_util::Full;

use crate::websocket::{self, UpgradeRefused};

/// The WebSocket subprotocol of AMQP 1.0 (Service Bus' name for it, which every Azure SDK offers).
pub const SUBPROTOCOL: &str = "AMQPWSB10";

/// The path Event Hubs clients dial AMQP over WebSockets on.
const SERVICE_BUS_WEBSOCKET_PATH: &str = "/$servicebus/websocket";

/// IoT Hub's WebSocket path, where AMQP is the upgrade that offers [`SUBPROTOCOL`].
const IOT_HUB_WEBSOCKET_PATH: &str = "/$iothub/websocket";

/// Longest WebSocket message (and frame) accepted: IoT Hub's and Event Hubs' largest message
/// (1 MiB, Event Hubs premium) with room for the AMQP framing around it. Clients split what they
/// write into messages of their own choosing, which the byte stream joins again.
const MAX_MESSAGE_SIZE: usize = 1024 * 1024 + 64 * 1024;
/// Bytes read from the socket at once.
const READ_BUFFER_SIZE: usize = 16 * 1024;

/// Whether a request on the HTTPS port is an AMQP-over-WebSockets upgrade: any request on
/// [`SERVICE_BUS_WEBSOCKET_PATH`] (with or without a trailing slash), and one on
/// `/$iothub/websocket` that offers [`SUBPROTOCOL`].
pub fn is_amqp_upgrade<B>(request: &hyper::Request<B>) -> bool {
    match request.uri().path().trim_end_matches('/') {
        SERVICE_BUS_WEBSOCKET_PATH => true,
        IOT_HUB_WEBSOCKET_PATH => websocket::offers(request, SUBPROTOCOL),
        _ => false,
    }
}

/// Answers an upgrade request with `101 Switching Protocols` (subprotocol `AMQPWSB10`) and
/// returns the AMQP connection to run over the upgraded connection once the response is out;
/// `opened` runs once the AMQP connection is open.
pub fn upgrade(
    state: super::State,
    mut request: hyper::Request<hyper::body::Incoming>,
    opened: impl FnOnce() + Send + 'static,
) -> Result<
    (
        hyper::Response<Full<Bytes>>,
        impl std::future::Future<Output = ()> + Send,
    ),
    UpgradeRefused,
> {
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_SIZE)
        .max_message_size(Some(MAX_MESSAGE_SIZE))
        .max_frame_size(Some(MAX_MESSAGE_SIZE));
    let (response, upgraded) = websocket::upgrade(&mut request, SUBPROTOCOL, config)?;
    let connection = async move {
        if let Some(stream) = upgraded.await {
            super::serve_stream(stream, "WebSocket".into(), state, opened).await;
        }
    };
    Ok((response, connection))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str, protocols: &str) -> hyper::Request<()> {
        hyper::Request::get(path)
            .header("Sec-WebSocket-Protocol", protocols)
            .body(())
            .unwrap()
    }

    #[test]
    fn amqp_is_the_service_bus_path_or_iot_hubs_with_the_amqp_subprotocol() {
        assert!(is_amqp_upgrade(&request(
            "/$servicebus/websocket",
            "AMQPWSB10"
        )));
        assert!(is_amqp_upgrade(&request("/$servicebus/websocket/", "")));
        assert!(is_amqp_upgrade(&request("/$iothub/websocket", "AMQPWSB10")));
        assert!(!is_amqp_upgrade(&request("/$iothub/websocket", "mqtt")));
        assert!(!is_amqp_upgrade(&request("/devices", "AMQPWSB10")));
    }
}
