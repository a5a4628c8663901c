//! A Device Provisioning Service session on the hub's MQTT port (and inside WebSockets): a
//! CONNECT whose username is `{idScope}/registrations/{registrationId}/api-version=…` is a
//! device registering, not an IoT Hub client (Microsoft Learn, "Communicate with DPS using the
//! MQTT protocol"): client id = registration id, password a SAS token for
//! `{idScope}/registrations/{registrationId}` (`skn=registration` for a group-derived key), or no
//! password and the TLS client certificate for X.509 attestation ([`crate::dps_x509`]). The
//! device subscribes to `$dps/registrations/res/#`, publishes `iotdps-register`, then polls
//! `iotdps-get-operationstatus`; each answer is published on
//! `$dps/registrations/res/{status}/?$rid=…[&retry-after=…]`. DPS keeps no sessions.
//!
//! Part of the MQTT door: depends on the hub; never on another door.

use std::time::Duration;

use bytes::Bytes;
use edgetwin_wire::dps::{self, DeviceRegistration, DpsError, Request, Username};
use edgetwin_wire::sas::SasToken;
use rumqttc::mqttbytes::v4::{
    ConnAck, Connect, ConnectReturnCode, Packet, PubAck, Publish, SubAck, SubscribeReasonCode,
    UnsubAck,
};
use rumqttc::mqttbytes::QoS;
use tokio::io::{AsyncRead, AsyncWrite};

use super::frame::{write_packet, ConnectionEnd, PacketReader, MAX_KEEP_ALIVE};
use crate::dps::Attested;
use crate::hub::Hub;
use crate::x509::ClientChain;

/// Serves a registering device whose CONNECT named `username` until it disconnects; a CONNECT
/// that does not attest is answered CONNACK 5 (not authorized), as DPS answers it.
pub(super) async fn serve<R, W>(
    hub: &Hub,
    connect: &Connect,
    username: Username,
    chain: &ClientChain,
    reader: &mut PacketReader<R>,
    writer: &mut W,
    authenticated: impl FnOnce(),
) -> Result<(), ConnectionEnd>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let attested = match attest(hub, connect, &username, chain) {
        Ok(attested) => attested,
        Err(code) => {
            write_packet(writer, Packet::ConnAck(ConnAck::new(code, false))).await?;
            return Ok(());
        }
    };
    authenticated();
    write_packet(
        writer,
        Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false)),
    )
    .await?;
    tracing::info!(
        registration_id = attested.registration_id,
        "DPS client connected"
    );
    let keep_alive = match connect.keep_alive {
        0 => MAX_KEEP_ALIVE,
        secs => Duration::from_millis(u64::from(secs) * 1500).min(MAX_KEEP_ALIVE),
    };
    loop {
        let packet = match tokio::time::timeout(keep_alive, reader.next()).await {
            Err(_) => return Err(ConnectionEnd::Timeout),
            Ok(packet) => packet?,
        };
        let reply = match packet {
            None | Some(Packet::Disconnect) => return Ok(()),
            Some(Packet::PingReq) => vec![Packet::PingResp],
            Some(Packet::Subscribe(subscribe)) => {
                let codes = subscribe
                    .filters
                    .iter()
                    .map(|f| match f.path == dps::RESPONSE_FILTER {
                        true => SubscribeReasonCode::Success(match f.qos {
                            QoS::AtMostOnce => QoS::AtMostOnce,
                            _ => QoS::AtLeastOnce,
                        }),
                        false => SubscribeReasonCode::Failure,
                    })
                    .collect();
                vec![Packet::SubAck(SubAck::new(subscribe.pkid, codes))]
            }
            Some(Packet::Unsubscribe(unsubscribe)) => {
                vec![Packet::UnsubAck(UnsubAck::new(unsubscribe.pkid))]
            }
            Some(Packet::Publish(publish)) => {
                let mut out = Vec::new();
                if publish.qos != QoS::AtMostOnce {
                    out.push(Packet::PubAck(PubAck::new(publish.pkid)));
                }
                let topic = publish.topic.clone();
                match dps::parse_request(&topic) {
                    Some(request) => {
                        out.push(answer(hub, &attested, request, &publish.payload).await)
                    }
                    None => {
                        return Err(ConnectionEnd::Violation(format!(
                            "'{topic}' is not a DPS request topic"
                        )))
                    }
                }
                out
            }
            Some(Packet::PubAck(_)) => Vec::new(),
            Some(other) => {
                return Err(ConnectionEnd::Violation(format!(
                    "unexpected packet from a DPS client: {other:?}"
                )))
            }
        };
        for packet in reply {
            write_packet(writer, packet).await?;
        }
    }
}

/// The CONNECT's attestation, or the CONNACK code that refuses it: a SAS token in the password,
/// or, with no password (the SDKs send none for X.509), the client certificate `chain`.
fn attest(
    hub: &Hub,
    connect: &Connect,
    username: &Username,
    chain: &ClientChain,
) -> Result<Attested, ConnectReturnCode> {
    let refuse = |why: &str| {
        tracing::info!(client_id = %connect.client_id, reason = why, "DPS CONNECT refused");
        ConnectReturnCode::NotAuthorized
    };
    if connect.client_id != username.registration_id {
        return Err(refuse("client id is not the username's registration id"));
    }
    let password = connect
        .login
        .as_ref()
        .map(|l| l.password.as_str())
        .unwrap_or("");
    let attested = if password.is_empty() && chain.leaf().is_some() {
        hub.dps_attest_x509(&username.id_scope, &username.registration_id, chain)
    } else {
        let token = SasToken::parse(password).map_err(|_| refuse("password is not a SAS token"))?;
        hub.dps_attest(&username.id_scope, &username.registration_id, &token)
    };
    attested.map_err(|error| match error.http_status() {
        500.. => ConnectReturnCode::ServiceUnavailable,
        _ => ConnectReturnCode::NotAuthorized,
    })
}

/// The response to one request: a registration's `assigning` status (202, with `retry-after`),
/// or an operation's status (200 once finished), or an error (its status and DPS body).
async fn answer(hub: &Hub, attested: &Attested, request: Request, payload: &[u8]) -> Packet {
    let (rid, result) = match request {
        Request::Register { rid } => (rid, register(hub, attested, payload).await),
        Request::OperationStatus { rid, operation_id } => {
            let status = hub
                .dps()
                .operations()
                .get(&attested.registration_id, &operation_id)
                .ok_or_else(|| {
                    DpsError::new(404203, format!("operation '{operation_id}' not found"))
                });
            (rid, status)
        }
    };
    let (topic, body) = match result {
        Ok(status) if status.status == "assigning" => (
            dps::response_topic(202, &rid, Some(dps::RETRY_AFTER_SECS)),
            serde_json::to_vec(&status),
        ),
        Ok(status) => (
            dps::response_topic(200, &rid, None),
            serde_json::to_vec(&status),
        ),
        Err(error) => (
            dps::response_topic(error.http_status(), &rid, None),
            serde_json::to_vec(&error.body(&crate::ids::tracking_id(), &crate::ids::now_iso())),
        ),
    };
    Packet::Publish(Publish::from_bytes(
        topic,
        QoS::AtMostOnce,
        Bytes::from(body.unwrap_or_default()),
    ))
}

async fn register(
    hub: &Hub,
    attested: &Attested,
    payload: &[u8],
) -> Result<dps::RegistrationOperationStatus, DpsError> {
    let registration: DeviceRegistration = match payload.is_empty() {
        true => DeviceRegistration::default(),
        false => serde_json::from_slice(payload)
            .map_err(|e| DpsError::invalid(format!("the registration is not valid JSON: {e}")))?,
    };
    if let Some(id) = registration.registration_id.as_deref() {
        if id != attested.registration_id {
            return Err(DpsError::invalid(format!(
                "registrationId '{id}' is not the connection's '{}'",
                attested.registration_id
            )));
        }
    }
    hub.dps_register(attested.clone(), registration.payload)
        .await
}
