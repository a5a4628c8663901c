//! One device or module connection: CONNECT, then a loop over packets from the client, publishes
//! from the hub, the keep-alive deadline and the token's expiry. Everything on `$iothub/` is
//! scoped to the connection's identity.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use edgetwin_wire::rest::ErrorCode;
use edgetwin_wire::topic::{self, Feature, Inbound};
use rumqttc::mqttbytes::v4::{
    ConnAck, ConnectReturnCode, Packet, PubAck, Publish, SubAck, SubscribeReasonCode, UnsubAck,
};
use rumqttc::mqttbytes::QoS;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::ApiError;
use crate::hub::Hub;
use crate::ids;
use crate::live::Outgoing;
use crate::messages::Message;
use crate::methods::MethodResponse;
use crate::routing::{self, RoutedMessage};
use crate::store::IdentityKey;
use crate::twins;

use super::auth::{authenticate, Authenticated};

/// Largest packet accepted: IoT Hub's 256 KiB message limit plus topic and header room.
pub const MAX_PACKET_SIZE: usize = 256 * 1024 + 4096;
/// How long a client has to send CONNECT after TLS is up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest keep-alive the hub honours (Azure's load-balancer idle limit).
const MAX_KEEP_ALIVE: Duration = Duration::from_secs(1767);

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionEnd {
    /// The socket failed or closed.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// The client sent bytes that are not MQTT 3.1.1.
    #[error("malformed packet: {0}")]
    Malformed(rumqttc::mqttbytes::Error),
    /// The client broke a rule of IoT Hub's MQTT dialect.
    #[error("protocol violation: {0}")]
    Violation(String),
    /// The client was too quiet for its keep-alive, or never sent CONNECT.
    #[error("keep-alive or CONNECT timeout")]
    Timeout,
}

/// Reads MQTT packets from a byte stream.
struct PacketReader<R> {
    /// The stream.
    reader: R,
    /// Bytes read but not yet parsed.
    buffer: BytesMut,
}

impl<R: AsyncRead + Unpin> PacketReader<R> {
    async fn next(&mut self) -> Result<Option<Packet>, ConnectionEnd> {
        loop {
            match Packet::read(&mut self.buffer, MAX_PACKET_SIZE) {
                Ok(packet) => return Ok(Some(packet)),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => return Err(ConnectionEnd::Malformed(e)),
            }
            if self.reader.read_buf(&mut self.buffer).await? == 0 {
                return Ok(None);
            }
        }
    }
}

async fn write_packet<W: AsyncWrite + Unpin>(
    writer: &mut W,
    packet: Packet,
) -> Result<(), ConnectionEnd> {
    let mut out = BytesMut::with_capacity(packet.size() + 8);
    packet
        .write(&mut out, usize::MAX)
        .map_err(|e| ConnectionEnd::Violation(format!("cannot encode packet: {e}")))?;
    writer.write_all(&out).await?;
    writer.flush().await?;
    Ok(())
}

/// Serves one client until it disconnects, misbehaves, is replaced or its token expires.
pub async fn serve<S>(hub: Arc<Hub>, stream: S) -> Result<(), ConnectionEnd>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (reader, mut writer) = tokio::io::split(stream);
    let mut reader = PacketReader {
        reader,
        buffer: BytesMut::with_capacity(4096),
    };
    let connect = match tokio::time::timeout(CONNECT_TIMEOUT, reader.next()).await {
        Err(_) => return Err(ConnectionEnd::Timeout),
        Ok(Ok(Some(Packet::Connect(connect)))) => connect,
        Ok(Ok(None)) => return Ok(()),
        Ok(Ok(Some(_))) => {
            return Err(ConnectionEnd::Violation(
                "first packet is not CONNECT".into(),
            ))
        }
        Ok(Err(e)) => return Err(e),
    };
    if connect.protocol != rumqttc::mqttbytes::Protocol::V4 {
        write_packet(
            &mut writer,
            Packet::ConnAck(ConnAck::new(
                ConnectReturnCode::RefusedProtocolVersion,
                false,
            )),
        )
        .await?;
        return Err(ConnectionEnd::Violation(
            "only MQTT 3.1.1 is supported".into(),
        ));
    }
    if hub.faults.refuses_connects() {
        write_packet(
            &mut writer,
            Packet::ConnAck(ConnAck::new(ConnectReturnCode::ServiceUnavailable, false)),
        )
        .await?;
        return Ok(());
    }
    let Authenticated { key, expiry } = match authenticate(&hub, &connect) {
        Ok(ok) => ok,
        Err(code) => {
            write_packet(&mut writer, Packet::ConnAck(ConnAck::new(code, false))).await?;
            return Ok(());
        }
    };
    let client_id = key.client_id();
    let stored = restore_session(&hub, &client_id, connect.clean_session)?;
    let session_present = stored.is_some();
    let filters: Vec<String> = stored.unwrap_or_default();
    let features = features_of(&filters, &key);
    let mut registration = hub.live.register(&client_id, features);
    tracing::info!(
        client_id,
        clean_session = connect.clean_session,
        "client connected"
    );
    let mut session = Session {
        hub: hub.clone(),
        key,
        client_id: client_id.clone(),
        connection_id: registration.id,
        persistent: !connect.clean_session,
        filters,
        next_pkid: 0,
    };
    let result = async {
        write_packet(&mut writer, Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, session_present))).await?;
        let keep_alive = match connect.keep_alive {
            0 => None,
            secs => Some(Duration::from_millis(u64::from(secs) * 1500).min(MAX_KEEP_ALIVE)),
        };
        let expires_in = hub
            .faults
            .connection_life(Duration::from_secs(expiry.saturating_sub(ids::now_unix())));
        let token_expiry = tokio::time::sleep(expires_in);
        tokio::pin!(token_expiry);
        loop {
            let quiet = async {
                match keep_alive {
                    Some(limit) => tokio::time::sleep(limit).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                packet = reader.next() => match packet? {
                    None => return Ok(()),
                    Some(Packet::Disconnect) => return Ok(()),
                    Some(packet) => {
                        for reply in session.handle(packet).await? {
                            write_packet(&mut writer, reply).await?;
                        }
                    }
                },
                Some(message) = registration.outgoing.recv() => {
                    let packet = session.outgoing_publish(message);
                    write_packet(&mut writer, packet).await?;
                }
                () = registration.kick.notified() => {
                    return Err(ConnectionEnd::Violation("replaced by a newer connection or disconnected by the hub".into()));
                }
                () = &mut token_expiry => {
                    tracing::info!(client_id = %session.client_id, "SAS token expired: closing the connection");
                    return Ok(());
                }
                () = quiet => return Err(ConnectionEnd::Timeout),
            }
        }
    }
    .await;
    hub.live.unregister(&client_id, registration.id);
    let _ = writer.shutdown().await;
    result
}

fn restore_session(
    hub: &Hub,
    client_id: &str,
    clean: bool,
) -> Result<Option<Vec<String>>, ConnectionEnd> {
    hub.transact(|tx| {
        if clean {
            tx.delete_session(client_id)?;
            Ok(None)
        } else {
            Ok(tx.session(client_id)?)
        }
    })
    .map_err(|e| ConnectionEnd::Violation(format!("session store: {e}")))
}

fn features_of(filters: &[String], key: &IdentityKey) -> HashSet<Feature> {
    filters
        .iter()
        .filter_map(|f| topic::classify_filter(f, &key.device_id, key.module_id.as_deref()))
        .collect()
}

/// The state of one connected client.
struct Session {
    /// Shared hub state.
    hub: Arc<Hub>,
    /// Who is connected.
    key: IdentityKey,
    /// `key.client_id()`, kept for logs and lookups.
    client_id: String,
    /// This connection's id in the live table.
    connection_id: u64,
    /// CleanSession=0: subscriptions are persisted.
    persistent: bool,
    /// Accepted subscription filters.
    filters: Vec<String>,
    /// Last packet id used for a QoS 1 publish to the client.
    next_pkid: u16,
}

impl Session {
    async fn handle(&mut self, packet: Packet) -> Result<Vec<Packet>, ConnectionEnd> {
        match packet {
            Packet::Publish(publish) => self.on_publish(publish).await,
            Packet::Subscribe(subscribe) => {
                let codes = subscribe
                    .filters
                    .iter()
                    .map(|f| self.subscribe(&f.path, f.qos))
                    .collect();
                self.save_filters()?;
                Ok(vec![Packet::SubAck(SubAck::new(subscribe.pkid, codes))])
            }
            Packet::Unsubscribe(unsubscribe) => {
                self.filters.retain(|f| !unsubscribe.topics.contains(f));
                self.save_filters()?;
                Ok(vec![Packet::UnsubAck(UnsubAck::new(unsubscribe.pkid))])
            }
            Packet::PingReq => Ok(vec![Packet::PingResp]),
            Packet::PubAck(_) => Ok(vec![]),
            Packet::Connect(_) => Err(ConnectionEnd::Violation("second CONNECT".into())),
            other => Err(ConnectionEnd::Violation(format!(
                "unexpected packet {:?}",
                packet_name(&other)
            ))),
        }
    }

    fn subscribe(&mut self, filter: &str, qos: QoS) -> SubscribeReasonCode {
        if topic::classify_filter(filter, &self.key.device_id, self.key.module_id.as_deref())
            .is_none()
        {
            tracing::info!(client_id = %self.client_id, filter, "refusing unknown subscription");
            return SubscribeReasonCode::Failure;
        }
        if !self.filters.iter().any(|f| f == filter) {
            self.filters.push(filter.to_owned());
        }
        SubscribeReasonCode::Success(if qos == QoS::AtMostOnce {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        })
    }

    fn save_filters(&self) -> Result<(), ConnectionEnd> {
        self.hub.live.set_features(
            &self.client_id,
            self.connection_id,
            features_of(&self.filters, &self.key),
        );
        if self.persistent {
            self.hub
                .transact(|tx| Ok(tx.put_session(&self.client_id, &self.filters)?))
                .map_err(|e| ConnectionEnd::Violation(format!("session store: {e}")))?;
        }
        Ok(())
    }

    async fn on_publish(&mut self, publish: Publish) -> Result<Vec<Packet>, ConnectionEnd> {
        if publish.qos == QoS::ExactlyOnce {
            return Err(ConnectionEnd::Violation(
                "QoS 2 is not supported by IoT Hub".into(),
            ));
        }
        let inbound = topic::parse_inbound(
            &publish.topic,
            &self.key.device_id,
            self.key.module_id.as_deref(),
        )
        .map_err(|e| ConnectionEnd::Violation(format!("publish to unsupported topic: {e}")))?;
        let mut replies = Vec::new();
        match inbound {
            Inbound::Telemetry { output, properties } => {
                self.on_telemetry(output, properties, &publish.payload)
            }
            Inbound::TwinGet { rid } | Inbound::ReportedPatch { rid: Some(rid) }
                if self.throttled(&inbound_operation(&publish.topic)) =>
            {
                replies.push(self.twin_error(
                    &rid,
                    &ApiError::new(ErrorCode::ThrottlingException, "throttled (injected fault)"),
                ));
            }
            Inbound::TwinGet { rid } => {
                let result = self.hub.transact(|tx| twins::device_view(tx, &self.key));
                replies.push(match result {
                    Ok(view) => self.twin_response(200, &rid, None, Bytes::from(view.to_string())),
                    Err(error) => self.twin_error(&rid, &error),
                });
            }
            Inbound::ReportedPatch { rid } => {
                let result = self
                    .hub
                    .reported
                    .patch(self.key.clone(), publish.payload.clone())
                    .await;
                if let Some(rid) = rid {
                    replies.push(match result {
                        Ok(version) => self.twin_response(204, &rid, Some(version), Bytes::new()),
                        Err(error) => self.twin_error(&rid, &error),
                    });
                }
            }
            Inbound::MethodResponse { status, rid } => {
                let response = MethodResponse {
                    status,
                    payload: publish.payload.clone(),
                };
                if !self.hub.methods.complete(&self.client_id, &rid, response) {
                    tracing::info!(client_id = %self.client_id, rid, "method response for no waiting call (late or unknown $rid)");
                }
            }
        }
        if publish.qos == QoS::AtLeastOnce {
            replies.insert(0, Packet::PubAck(PubAck::new(publish.pkid)));
        }
        Ok(replies)
    }

    fn throttled(&self, operation: &str) -> bool {
        self.hub.faults.take_throttle(operation).is_some()
    }

    fn on_telemetry(
        &self,
        output: Option<String>,
        properties: topic::PropertyBag,
        payload: &Bytes,
    ) {
        if self.key.module_id.is_some() {
            routing::route(
                &self.hub,
                &RoutedMessage {
                    device_id: &self.key.device_id,
                    module_id: self.key.module_id.as_deref(),
                    output: output.as_deref(),
                    properties: &properties,
                    payload,
                },
            );
        }
        let properties: BTreeMap<String, Option<String>> = properties.0.into_iter().collect();
        self.hub.messages.push(Message {
            sequence: 0,
            device_id: self.key.device_id.clone(),
            module_id: self.key.module_id.clone(),
            output,
            properties,
            body: String::from_utf8_lossy(payload).into_owned(),
            enqueued_time_utc: ids::now_iso(),
        });
    }

    fn twin_response(
        &mut self,
        status: u16,
        rid: &str,
        version: Option<i64>,
        body: Bytes,
    ) -> Packet {
        self.publish(topic::twin_response_topic(status, rid, version), body, true)
    }

    fn twin_error(&mut self, rid: &str, error: &ApiError) -> Packet {
        let status = error.code.http_status();
        let body = serde_json::json!({
            "errorCode": error.code.number(),
            "trackingId": ids::tracking_id(),
            "message": error.message,
            "timestampUtc": ids::now_iso(),
        });
        tracing::info!(client_id = %self.client_id, status, message = %error.message, "twin request refused");
        self.twin_response(status, rid, None, Bytes::from(body.to_string()))
    }

    fn outgoing_publish(&mut self, message: Outgoing) -> Packet {
        self.publish(message.topic, message.payload, message.at_least_once)
    }

    fn publish(&mut self, topic: String, payload: Bytes, at_least_once: bool) -> Packet {
        let mut publish = Publish::from_bytes(
            topic,
            if at_least_once {
                QoS::AtLeastOnce
            } else {
                QoS::AtMostOnce
            },
            payload,
        );
        if at_least_once {
            self.next_pkid = self.next_pkid.checked_add(1).unwrap_or(1);
            publish.pkid = self.next_pkid;
        }
        Packet::Publish(publish)
    }
}

/// The fault-injection name of a twin operation: `MQTT twin/GET` or `MQTT twin/PATCH`.
fn inbound_operation(topic: &str) -> String {
    let operation = topic
        .strip_prefix("$iothub/twin/")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("");
    format!("MQTT twin/{operation}")
}

fn packet_name(packet: &Packet) -> &'static str {
    match packet {
        Packet::ConnAck(_) => "CONNACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::SubAck(_) => "SUBACK",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingResp => "PINGRESP",
        _ => "packet",
    }
}
