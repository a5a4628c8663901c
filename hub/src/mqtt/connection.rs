//! One device or module connection: CONNECT, then a loop over packets from the client, publishes
//! from the hub, the keep-alive deadline and the token's expiry. Everything on `$iothub/` is
//! scoped to the connection's identity.
//!
//! Part of the MQTT door: depends on the hub and the domain modules below it; never on another
//! door.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use edgetwin_wire::rest::ErrorCode;
use edgetwin_wire::topic::{self, Feature, Inbound};
use rumqttc::mqttbytes::v4::{
    ConnAck, ConnectReturnCode, Packet, PubAck, Publish, SubAck, SubscribeReasonCode, UnsubAck,
};
use rumqttc::mqttbytes::QoS;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::error::ApiError;
use crate::events::AuthMethod;
use crate::faults::Faults;
use crate::hub::Hub;
use crate::ids;
use crate::live::Outgoing;
use crate::methods::MethodResponse;
use crate::routing::{self, RoutedMessage};
use crate::store::{IdentityKey, SessionFilter};
use crate::twins;
use crate::writer::Committing;
use crate::{c2d, c2d_queue};

use super::auth::{authenticate, Authenticated};
use super::frame::{write_packet, write_packets, ConnectionEnd, PacketReader, MAX_KEEP_ALIVE};
use crate::x509::ClientChain;

/// How long a client has to send CONNECT after TLS is up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Most distinct subscription filters one session holds: IoT Hub serves five kinds of topic, and
/// the SDKs subscribe to one filter each.
const MAX_FILTERS: usize = 16;
/// Reported patches of one connection that may wait for their group commit at once; past this
/// the connection stops reading until the oldest is answered.
const MAX_PIPELINED: usize = 64;

/// Serves one client, which presented `chain` in its TLS handshake, until it disconnects,
/// misbehaves, is replaced or its token expires; `authenticated` is called once its CONNECT is
/// accepted.
pub async fn serve<S>(
    state: super::State,
    stream: S,
    chain: ClientChain,
    authenticated: impl FnOnce(),
) -> Result<(), ConnectionEnd>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let super::State {
        hub,
        faults,
        device_cas,
    } = state;
    let (reader, mut writer) = tokio::io::split(stream);
    let mut reader = PacketReader::new(reader);
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
    if faults.refuses_connects() {
        write_packet(
            &mut writer,
            Packet::ConnAck(ConnAck::new(ConnectReturnCode::ServiceUnavailable, false)),
        )
        .await?;
        return Ok(());
    }
    // A device registering with the provisioning service, which shares the hub's ports.
    if let Some(username) = connect
        .login
        .as_ref()
        .and_then(|login| edgetwin_wire::dps::parse_username(&login.username))
    {
        return super::dps::serve(
            &hub,
            &connect,
            username,
            &chain,
            &mut reader,
            &mut writer,
            authenticated,
        )
        .await;
    }
    let Authenticated {
        key,
        expiry,
        model_id,
        versioned,
        auth,
    } = match authenticate(&hub, &device_cas, &connect, &chain) {
        Ok(ok) => ok,
        Err(code) => {
            write_packet(&mut writer, Packet::ConnAck(ConnAck::new(code, false))).await?;
            return Ok(());
        }
    };
    // An IoT Plug and Play device announces its model in the username; the twin's `modelId`
    // and the digital twin's `$metadata.$model` show it ("IoT Plug and Play conventions",
    // "Identify the model").
    if let Some(model_id) = model_id {
        let announced = key.clone();
        if let Err(error) = hub
            .write(move |tx| twins::announce_model(tx, &announced, &model_id))
            .await
        {
            tracing::warn!(client_id = %connect.client_id, %error, "could not record the model id");
            let refused = ConnAck::new(ConnectReturnCode::ServiceUnavailable, false);
            write_packet(&mut writer, Packet::ConnAck(refused)).await?;
            return Ok(());
        }
    }
    authenticated();
    let client_id = key.client_id();
    let stored = restore_session(&hub, &client_id, connect.clean_session).await?;
    let session_present = stored.is_some();
    let filters: Vec<SessionFilter> = stored.unwrap_or_default();
    let grants = grants_of(&filters, &key);
    let mut registration = hub
        .live()
        .register(&client_id, grants.keys().copied().collect());
    tracing::info!(
        client_id,
        clean_session = connect.clean_session,
        "client connected"
    );
    let mut session = Session {
        hub: hub.clone(),
        faults,
        key,
        client_id: client_id.clone(),
        connection_id: registration.id,
        persistent: !connect.clean_session,
        filters,
        grants,
        next_pkid: 0,
        versioned,
        auth,
        cloud_to_device: registration.cloud_to_device.clone(),
        c2d_in_flight: HashMap::new(),
    };
    // a client that kept its session gets what was queued for it (and not completed) meanwhile
    registration.cloud_to_device.notify_one();
    let result = async {
        write_packet(&mut writer, Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, session_present))).await?;
        let keep_alive = match connect.keep_alive {
            0 => None,
            secs => Some(Duration::from_millis(u64::from(secs) * 1500).min(MAX_KEEP_ALIVE)),
        };
        let expires_in = session
            .faults
            .connection_life(Duration::from_secs(expiry.saturating_sub(ids::now_unix())));
        let token_expiry = tokio::time::sleep(expires_in);
        tokio::pin!(token_expiry);
        // Reported patches submitted to the group commit and not yet answered, oldest first.
        // Only reported patches are pipelined; any other packet first waits for these to be
        // answered, so every reply goes out in the order of the packets, and a twin GET sees
        // every patch sent before it.
        let mut pipelined: VecDeque<InFlight> = VecDeque::new();
        // Keep-alive counts only what the client sends, not what the hub sends it.
        let mut last_heard = tokio::time::Instant::now();
        loop {
            let quiet = async {
                match keep_alive {
                    Some(limit) => tokio::time::sleep_until(last_heard + limit).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                packet = reader.next(), if pipelined.len() < MAX_PIPELINED => match packet.inspect(|_| last_heard = tokio::time::Instant::now())? {
                    None | Some(Packet::Disconnect) => {
                        session.answer_all(&mut pipelined, &mut writer).await?;
                        return Ok(());
                    }
                    // The topic is parsed once: reported patches join the pipeline, any other
                    // PUBLISH waits for it to drain.
                    Some(Packet::Publish(publish)) => match session.parse_publish(&publish) {
                        Ok(Inbound::ReportedPatch { rid }) => {
                            pipelined.push_back(session.submit_reported(publish, rid).await?);
                        }
                        Ok(Inbound::Telemetry { output, properties }) => {
                            pipelined.push_back(session.submit_telemetry(publish, output, properties).await);
                        }
                        inbound => {
                            session.answer_all(&mut pipelined, &mut writer).await?;
                            for reply in session.on_publish(publish, inbound?)? {
                                write_packet(&mut writer, reply).await?;
                            }
                        }
                    },
                    Some(packet) => {
                        session.answer_all(&mut pipelined, &mut writer).await?;
                        for reply in session.handle(packet).await? {
                            write_packet(&mut writer, reply).await?;
                        }
                    }
                },
                result = next_outcome(&mut pipelined), if !pipelined.is_empty() => {
                    // Answer this patch and every later one already committed, in one write.
                    let mut replies = Vec::new();
                    let mut result = Some(result);
                    while let Some(result) = result.take().or_else(|| ready_outcome(&mut pipelined)) {
                        let Some(done) = pipelined.pop_front() else { break };
                        match session.answer_reported(done, result) {
                            Ok(more) => replies.extend(more),
                            Err(end) => {
                                write_packets(&mut writer, replies).await?;
                                return Err(end);
                            }
                        }
                    }
                    write_packets(&mut writer, replies).await?;
                }
                () = registration.cloud_to_device.notified() => {
                    session.answer_all(&mut pipelined, &mut writer).await?;
                    let packets = session.deliver_cloud_to_device().await?;
                    write_packets(&mut writer, packets).await?;
                }
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
    hub.live().unregister(&client_id, registration.id);
    let _ = writer.shutdown().await;
    result
}

async fn restore_session(
    hub: &Hub,
    client_id: &str,
    clean: bool,
) -> Result<Option<Vec<SessionFilter>>, ConnectionEnd> {
    let error = |e: ApiError| ConnectionEnd::Violation(format!("session store: {e}"));
    // read first, so that a clean CONNECT without a stored session never waits for the writer
    let stored = hub.read(|tx| Ok(tx.session(client_id)?)).map_err(error)?;
    if !clean {
        return Ok(stored);
    }
    if stored.is_some() {
        let client_id = client_id.to_owned();
        hub.write(move |tx| Ok(tx.delete_session(&client_id)?))
            .await
            .map_err(error)?;
    }
    Ok(None)
}

/// The highest QoS granted for each feature the filters subscribe to.
fn grants_of(filters: &[SessionFilter], key: &IdentityKey) -> HashMap<Feature, u8> {
    let mut grants = HashMap::new();
    for f in filters {
        if let Some(feature) =
            topic::classify_filter(&f.filter, &key.device_id, key.module_id.as_deref())
        {
            let qos = grants.entry(feature).or_insert(f.qos);
            *qos = (*qos).max(f.qos);
        }
    }
    grants
}

/// The state of one connected client.
struct Session {
    /// Shared hub state.
    hub: Arc<Hub>,
    /// Faults injected through the REST API.
    faults: Arc<Faults>,
    /// Who is connected.
    key: IdentityKey,
    /// `key.client_id()`, kept for logs and lookups.
    client_id: String,
    /// This connection's id in the live table.
    connection_id: u64,
    /// CleanSession=0: subscriptions are persisted.
    persistent: bool,
    /// Accepted subscription filters with their granted QoS.
    filters: Vec<SessionFilter>,
    /// `filters` by feature with the highest QoS granted, kept so that publishing does not
    /// classify filters again.
    grants: HashMap<Feature, u8>,
    /// Last packet id used for a QoS 1 publish to the client.
    next_pkid: u16,
    /// Whether the CONNECT username named an `api-version`: without one IoT Hub answers
    /// reported-property patches 400 ("If api-version isn't specified, twin 'reported'
    /// properties return 400 bad requests", andriyadi/AzureIoTHubMQTTClient#5, which added it
    /// to that client's username for this reason).
    versioned: bool,
    /// How the client authenticated, kept with its telemetry.
    auth: AuthMethod,
    /// Notified when a cloud-to-device message was queued for the device (or it subscribed).
    cloud_to_device: Arc<tokio::sync::Notify>,
    /// Cloud-to-device messages published at QoS 1 and not yet acknowledged: packet id to the
    /// message's sequence number. A PUBACK completes the message; one never acknowledged stays
    /// queued and is delivered again on the next connection.
    c2d_in_flight: HashMap<u16, i64>,
}

/// A reported patch read from the client and not yet answered.
struct InFlight {
    /// The PUBLISH packet id to acknowledge (QoS 1).
    puback: Option<u16>,
    /// The request id to answer on `$iothub/twin/res/`, if the client gave one.
    rid: Option<String>,
    /// The patch's way to its outcome.
    outcome: Outcome,
}

/// How a pipelined reported patch ends.
enum Outcome {
    /// Waiting for the group commit.
    Committing(Committing<i64>),
    /// Already decided (throttled by an injected fault, or the writer is gone).
    Decided(Option<Result<i64, ApiError>>),
}

/// The outcome of the oldest pipelined patch (pending forever if there is none).
async fn next_outcome(pipelined: &mut VecDeque<InFlight>) -> Result<i64, ApiError> {
    match pipelined.front_mut().map(|f| &mut f.outcome) {
        Some(Outcome::Committing(committing)) => committing.outcome().await,
        Some(Outcome::Decided(decided)) => decided.take().unwrap_or_else(|| {
            Err(ApiError::new(
                ErrorCode::ServerError,
                "outcome already taken",
            ))
        }),
        None => std::future::pending().await,
    }
}

/// The outcome of the oldest pipelined patch if it is already decided.
fn ready_outcome(pipelined: &mut VecDeque<InFlight>) -> Option<Result<i64, ApiError>> {
    match &mut pipelined.front_mut()?.outcome {
        Outcome::Committing(committing) => committing.try_outcome(),
        Outcome::Decided(decided) => decided.take(),
    }
}

impl Session {
    /// What a PUBLISH from the client asks for (QoS 0 or 1, on its own identity's topics).
    fn parse_publish(&self, publish: &Publish) -> Result<Inbound, ConnectionEnd> {
        if publish.qos == QoS::ExactlyOnce {
            return Err(ConnectionEnd::Violation(
                "QoS 2 is not supported by IoT Hub".into(),
            ));
        }
        super::frame::check_publish_topic(
            &publish.topic,
            &self.key.device_id,
            self.key.module_id.as_deref(),
        )?;
        topic::parse_inbound(
            &publish.topic,
            &self.key.device_id,
            self.key.module_id.as_deref(),
        )
        .map_err(|e| ConnectionEnd::Violation(format!("publish to unsupported topic: {e}")))
    }

    /// Hands a reported patch (`rid`: its `$rid`, if any) to the group commit without waiting
    /// for the commit.
    async fn submit_reported(
        &mut self,
        publish: Publish,
        rid: Option<String>,
    ) -> Result<InFlight, ConnectionEnd> {
        let puback = (publish.qos == QoS::AtLeastOnce).then_some(publish.pkid);
        let injected = rid
            .as_ref()
            .and_then(|_| self.injected(&inbound_operation(&publish.topic)));
        let outcome = if let Some(error) = injected {
            Outcome::Decided(Some(Err(error)))
        } else if !self.versioned {
            Outcome::Decided(Some(Err(ApiError::invalid(
                "reported properties need an api-version in the CONNECT username",
            ))))
        } else {
            match self
                .hub
                .submit_reported(self.key.clone(), publish.payload)
                .await
            {
                Ok(committing) => Outcome::Committing(committing),
                Err(error) => Outcome::Decided(Some(Err(error))),
            }
        };
        Ok(InFlight {
            puback,
            rid,
            outcome,
        })
    }

    /// The replies to a reported patch or a telemetry message once it is decided: PUBACK (QoS 1),
    /// then the twin response (if it had a `$rid`). A message the hub failed to store or was
    /// throttled (a server error or 429, with no `$rid` to answer it on) gets no PUBACK: the
    /// connection ends, and the client publishes it again after reconnecting instead of losing
    /// it.
    fn answer_reported(
        &mut self,
        done: InFlight,
        result: Result<i64, ApiError>,
    ) -> Result<Vec<Packet>, ConnectionEnd> {
        if let (None, Err(error)) = (&done.rid, &result) {
            let status = error.code.http_status();
            if status >= 500 || status == 429 {
                tracing::warn!(client_id = %self.client_id, %error, "a message was not stored: closing the connection unacknowledged");
                return Err(ConnectionEnd::NotStored(error.message.clone()));
            }
        }
        let mut replies = Vec::new();
        if let Some(pkid) = done.puback {
            replies.push(Packet::PubAck(PubAck::new(pkid)));
        }
        if let Some(rid) = done.rid {
            replies.extend(match result {
                Ok(version) => self.twin_response(204, &rid, Some(version), Bytes::new()),
                Err(error) => self.twin_error(&rid, &error),
            });
        }
        Ok(replies)
    }

    /// Waits for every pipelined patch, oldest first, and writes its replies.
    async fn answer_all<W: AsyncWrite + Unpin>(
        &mut self,
        pipelined: &mut VecDeque<InFlight>,
        writer: &mut W,
    ) -> Result<(), ConnectionEnd> {
        while !pipelined.is_empty() {
            let result = next_outcome(pipelined).await;
            if let Some(done) = pipelined.pop_front() {
                for reply in self.answer_reported(done, result)? {
                    write_packet(writer, reply).await?;
                }
            }
        }
        Ok(())
    }

    /// Any packet but PUBLISH (see [`Self::on_publish`]) and DISCONNECT.
    async fn handle(&mut self, packet: Packet) -> Result<Vec<Packet>, ConnectionEnd> {
        match packet {
            Packet::Subscribe(subscribe) => {
                let before = self.filters.clone();
                let codes = subscribe
                    .filters
                    .iter()
                    .map(|f| self.subscribe(&f.path, f.qos))
                    .collect();
                if self.filters != before {
                    self.save_filters().await?;
                    if self.grants.contains_key(&Feature::CloudToDevice) {
                        self.cloud_to_device.notify_one();
                    }
                }
                Ok(vec![Packet::SubAck(SubAck::new(subscribe.pkid, codes))])
            }
            Packet::Unsubscribe(unsubscribe) => {
                self.filters
                    .retain(|f| !unsubscribe.topics.contains(&f.filter));
                self.save_filters().await?;
                Ok(vec![Packet::UnsubAck(UnsubAck::new(unsubscribe.pkid))])
            }
            Packet::PingReq => Ok(vec![Packet::PingResp]),
            Packet::PubAck(ack) => {
                if let Some(sequence) = self.c2d_in_flight.remove(&ack.pkid) {
                    self.complete_cloud_to_device(vec![sequence]).await?;
                }
                Ok(vec![])
            }
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
        if self.filters.len() >= MAX_FILTERS && !self.filters.iter().any(|f| f.filter == filter) {
            tracing::info!(client_id = %self.client_id, filter, "refusing subscription: too many filters");
            return SubscribeReasonCode::Failure;
        }
        // IoT Hub grants QoS 0 or 1 (it has no QoS 2); a repeated filter takes the new QoS
        let granted = if qos == QoS::AtMostOnce {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        let qos = u8::from(granted == QoS::AtLeastOnce);
        match self.filters.iter_mut().find(|f| f.filter == filter) {
            Some(existing) => existing.qos = qos,
            None => self.filters.push(SessionFilter {
                filter: filter.to_owned(),
                qos,
            }),
        }
        SubscribeReasonCode::Success(granted)
    }

    /// Whether a message on `topic` may go at QoS 1: only if a subscription it is delivered
    /// through was granted QoS 1 (MQTT 3.1.1 §3.8.4: never above the granted QoS).
    fn granted_at_least_once(&self, topic: &str) -> bool {
        topic::feature_of_outgoing(topic).and_then(|f| self.grants.get(&f)) == Some(&1)
    }

    async fn save_filters(&mut self) -> Result<(), ConnectionEnd> {
        self.grants = grants_of(&self.filters, &self.key);
        self.hub.live().set_features(
            &self.client_id,
            self.connection_id,
            self.grants.keys().copied().collect(),
        );
        if self.persistent {
            let (client_id, filters) = (self.client_id.clone(), self.filters.clone());
            self.hub
                .write(move |tx| Ok(tx.put_session(&client_id, &filters)?))
                .await
                .map_err(|e| ConnectionEnd::Violation(format!("session store: {e}")))?;
        }
        Ok(())
    }

    /// A PUBLISH other than a reported patch (those are pipelined: [`Self::submit_reported`]).
    fn on_publish(
        &mut self,
        publish: Publish,
        inbound: Inbound,
    ) -> Result<Vec<Packet>, ConnectionEnd> {
        let mut replies = Vec::new();
        match inbound {
            Inbound::Telemetry { .. } => {
                return Err(ConnectionEnd::Violation(
                    "telemetry outside the group-commit pipeline".into(),
                ));
            }
            Inbound::TwinGet { rid } => {
                let result = match self.injected(&inbound_operation(&publish.topic)) {
                    Some(error) => Err(error),
                    None => self.hub.read(|tx| twins::device_view(tx, &self.key)),
                };
                replies.extend(match result {
                    Ok(view) => self.twin_response(200, &rid, None, Bytes::from(view.to_string())),
                    Err(error) => self.twin_error(&rid, &error),
                });
            }
            Inbound::ReportedPatch { .. } => {
                return Err(ConnectionEnd::Violation(
                    "reported patch outside the group-commit pipeline".into(),
                ));
            }
            Inbound::MethodResponse { status, rid } => {
                let response = MethodResponse {
                    status,
                    payload: publish.payload.clone(),
                };
                if !self.hub.methods().complete(&self.client_id, &rid, response) {
                    tracing::info!(client_id = %self.client_id, rid, "method response for no waiting call (late or unknown $rid)");
                }
            }
        }
        if publish.qos == QoS::AtLeastOnce {
            replies.insert(0, Packet::PubAck(PubAck::new(publish.pkid)));
        }
        Ok(replies)
    }

    /// Hands the device the cloud-to-device messages queued for it and not already in flight, if
    /// it subscribed to `devices/{id}/messages/devicebound/#`: each counts as a delivery. At the
    /// granted QoS 1 each waits for its PUBACK; at QoS 0 it is completed as it is sent.
    async fn deliver_cloud_to_device(&mut self) -> Result<Vec<Packet>, ConnectionEnd> {
        if !self.grants.contains_key(&Feature::CloudToDevice) {
            return Ok(Vec::new());
        }
        let device_id = self.key.device_id.clone();
        // read first, so that a device with nothing queued never waits for the writer
        let queued = self.hub.read(|tx| Ok(tx.c2d_queue(&device_id)?.len()));
        if queued.is_ok_and(|queued| queued <= self.c2d_in_flight.len()) {
            return Ok(Vec::new());
        }
        let in_flight: Vec<i64> = self.c2d_in_flight.values().copied().collect();
        let messages = self
            .hub
            .write(move |tx| c2d_queue::deliver(tx, &device_id, &in_flight, ids::now_unix_ms()))
            .await
            .map_err(|e| ConnectionEnd::Violation(format!("cloud-to-device queue: {e}")))?;
        let mut packets = Vec::new();
        let mut sent_at_most_once = Vec::new();
        for message in messages {
            let properties = c2d::topic_properties(&self.key.device_id, &message);
            let topic = topic::c2d_topic(&self.key.device_id, &properties);
            let packet = self.publish(topic, Bytes::from(message.body), true);
            match &packet {
                Packet::Publish(p) if p.qos == QoS::AtLeastOnce => {
                    self.c2d_in_flight.insert(p.pkid, message.sequence);
                }
                _ => sent_at_most_once.push(message.sequence),
            }
            packets.push(packet);
        }
        if !sent_at_most_once.is_empty() {
            self.complete_cloud_to_device(sent_at_most_once).await?;
        }
        Ok(packets)
    }

    /// Completes the device's cloud-to-device messages `sequences`.
    async fn complete_cloud_to_device(&self, sequences: Vec<i64>) -> Result<(), ConnectionEnd> {
        let device_id = self.key.device_id.clone();
        self.hub
            .write(move |tx| {
                let now_ms = ids::now_unix_ms();
                for sequence in sequences {
                    c2d_queue::complete(tx, &device_id, sequence, now_ms)?;
                }
                Ok(())
            })
            .await
            .map_err(|e| ConnectionEnd::Violation(format!("cloud-to-device queue: {e}")))
    }

    /// The error an injected fault (429, 500, 503) answers `operation` with, if any.
    fn injected(&self, operation: &str) -> Option<ApiError> {
        self.faults.take(operation).map(|fault| fault.error())
    }

    /// Routes a telemetry message or module output, and hands what goes upstream to the
    /// group commit for its Event Hub-compatible partition without waiting: the PUBACK (QoS 1)
    /// goes out once it is stored (at once for a module message no route sends upstream), in the
    /// order of the packets.
    async fn submit_telemetry(
        &mut self,
        publish: Publish,
        output: Option<String>,
        mut properties: topic::PropertyBag,
    ) -> InFlight {
        let puback = (publish.qos == QoS::AtLeastOnce).then_some(publish.pkid);
        if let Some(error) = self.injected(TELEMETRY_OPERATION) {
            return InFlight {
                puback,
                rid: None,
                outcome: Outcome::Decided(Some(Err(error))),
            };
        }
        if publish.retain {
            // "If a device sends a message with the RETAIN flag set to 1, IoT Hub adds
            // the mqtt-retain application property to the message" (IoT Hub MQTT doc,
            // "Sending device-to-cloud messages"); nothing is retained
            properties
                .0
                .push(("mqtt-retain".to_owned(), Some("true".to_owned())));
        }
        let payload = &publish.payload;
        let upstream = self.key.module_id.is_none()
            || routing::route(
                &self.hub,
                &RoutedMessage {
                    device_id: &self.key.device_id,
                    module_id: self.key.module_id.as_deref(),
                    output: output.as_deref(),
                    properties: &properties,
                    payload,
                },
            )
            .upstream;
        let accepted = self
            .hub
            .accept_telemetry(&self.key, properties.0, payload, upstream, self.auth)
            .await;
        let outcome = match accepted {
            Ok(Some(committing)) => Outcome::Committing(committing),
            // a module's message that stays on the edge: nothing to store, acknowledged at once
            Ok(None) => Outcome::Decided(Some(Ok(0))),
            Err(error) => Outcome::Decided(Some(Err(error))),
        };
        InFlight {
            puback,
            rid: None,
            outcome,
        }
    }

    /// The answer to a twin request, if the client can receive it: IoT Hub answers only a client
    /// subscribed to `$iothub/twin/res/#` (the request is still carried out).
    fn twin_response(
        &mut self,
        status: u16,
        rid: &str,
        version: Option<i64>,
        body: Bytes,
    ) -> Option<Packet> {
        if !self.grants.contains_key(&Feature::TwinResponses) {
            tracing::debug!(
                client_id = %self.client_id,
                rid,
                "twin response not sent: not subscribed to $iothub/twin/res/#, as IoT Hub sends none"
            );
            return None;
        }
        Some(self.publish(topic::twin_response_topic(status, rid, version), body, true))
    }

    fn twin_error(&mut self, rid: &str, error: &ApiError) -> Option<Packet> {
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
        let at_least_once = at_least_once && self.granted_at_least_once(&topic);
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
/// The operation name of telemetry and module outputs, for injected faults.
const TELEMETRY_OPERATION: &str = "MQTT messages/events";

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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use edgetwin_wire::rest::{AuthenticationMechanism, Device, SymmetricKey};
    use edgetwin_wire::Secret;
    use rumqttc::mqttbytes::v4::Connect;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    async fn next<R: AsyncRead + Unpin>(reader: &mut PacketReader<R>) -> Packet {
        tokio::time::timeout(Duration::from_secs(10), reader.next())
            .await
            .expect("an answer in time")
            .unwrap()
            .expect("a packet")
    }

    fn encode(packets: Vec<Packet>) -> BytesMut {
        let mut out = BytesMut::new();
        for packet in packets {
            packet.write(&mut out, usize::MAX).unwrap();
        }
        out
    }

    /// The two ends of a scripted client: the hub's answers, and the write half that keeps the
    /// connection open until dropped.
    type Scripted = (
        PacketReader<tokio::io::ReadHalf<tokio::io::DuplexStream>>,
        tokio::io::WriteHalf<tokio::io::DuplexStream>,
    );

    /// Serves a client that sends `packets` in one write.
    async fn scripted(hub: super::super::State, packets: Vec<Packet>) -> Scripted {
        let (client, server) = tokio::io::duplex(1 << 20);
        tokio::spawn(serve(hub, server, ClientChain::default(), || {}));
        let (read_half, mut write_half) = tokio::io::split(client);
        write_half.write_all(&encode(packets)).await.unwrap();
        let reader = PacketReader::new(read_half);
        (reader, write_half)
    }

    /// A hub in a fresh directory named after `tag` (returned, for the caller to remove), with
    /// device `d1` whose keys are [`KEY`], and a CONNECT for it.
    async fn hub_with_device(tag: &str) -> (super::super::State, Connect, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("edgetwin-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let database = crate::hub::Database::open(&dir, true).unwrap();
        let hub = Arc::new(Hub::start(database, "localhost".into(), |_| {}).unwrap());
        let key = Secret::new(KEY);
        let device_key = key.clone();
        hub.write(move |tx| {
            let key = device_key;
            crate::registry::create_device(
                tx,
                "d1",
                Device {
                    authentication: Some(AuthenticationMechanism {
                        auth_type: Some("sas".into()),
                        symmetric_key: Some(SymmetricKey {
                            primary_key: Some(key.clone()),
                            secondary_key: Some(key.clone()),
                        }),
                        x509_thumbprint: None,
                    }),
                    ..Device::default()
                },
            )
        })
        .await
        .unwrap();
        let token = edgetwin_wire::sas::generate_token(
            &key,
            "localhost/devices/d1",
            ids::now_unix() + 3600,
            None,
        )
        .unwrap();
        let mut connect = Connect::new("d1");
        connect.set_login("localhost/d1/?api-version=2021-04-12", token.expose());
        let ca = rcgen::CertificateParams::default()
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let state = super::super::State {
            hub,
            faults: Arc::default(),
            device_cas: Arc::new(crate::x509::DeviceCas::new(vec![ca.der().clone()]).unwrap()),
        };
        (state, connect, dir)
    }

    #[tokio::test]
    async fn a_twin_get_is_answered_only_once_the_client_subscribed_to_twin_responses() {
        let (hub, connect, dir) = hub_with_device("twin-res").await;
        let get = |rid: &str| {
            Packet::Publish(Publish::new(
                topic::twin_get_topic(rid),
                QoS::AtMostOnce,
                Vec::new(),
            ))
        };
        let subscribe =
            rumqttc::mqttbytes::v4::Subscribe::new("$iothub/twin/res/#", QoS::AtLeastOnce);
        let (mut reader, _writer) = scripted(
            hub,
            vec![
                Packet::Connect(connect),
                get("unsubscribed"),
                Packet::PingReq,
                Packet::Subscribe(subscribe),
                get("subscribed"),
            ],
        )
        .await;
        assert!(matches!(next(&mut reader).await, Packet::ConnAck(_)));
        assert!(matches!(next(&mut reader).await, Packet::PingResp));
        assert!(matches!(next(&mut reader).await, Packet::SubAck(_)));
        let Packet::Publish(answer) = next(&mut reader).await else {
            panic!("no twin response after subscribing")
        };
        assert!(
            answer
                .topic
                .starts_with("$iothub/twin/res/200/?$rid=subscribed"),
            "{}",
            answer.topic
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_cloud_to_device_message_is_delivered_again_until_acknowledged_then_completed() {
        let (hub, connect, dir) = hub_with_device("c2d").await;
        let message = c2d::C2dMessage {
            message_id: Some("m1".into()),
            ack: Some("full".into()),
            expiry_ms: ids::now_unix_ms() + 60_000,
            properties: vec![("k".into(), "v w".into())],
            body: b"hello".to_vec(),
            ..c2d::C2dMessage::default()
        };
        hub.hub
            .write_with_effects(move |tx| c2d_queue::enqueue(tx, "d1", message, ids::now_unix_ms()))
            .await
            .unwrap();
        let mut persistent = connect.clone();
        persistent.clean_session = false;
        let subscribe = rumqttc::mqttbytes::v4::Subscribe::new(
            "devices/d1/messages/devicebound/#",
            QoS::AtLeastOnce,
        );
        let expected = "devices/d1/messages/devicebound/%24.mid=m1\
                        &%24.to=%2Fdevices%2Fd1%2Fmessages%2FdeviceBound&iothub-ack=full&k=v%20w";
        // first connection: delivered, never acknowledged
        let (mut reader, writer) = scripted(
            hub.clone(),
            vec![
                Packet::Connect(persistent.clone()),
                Packet::Subscribe(subscribe),
            ],
        )
        .await;
        assert!(matches!(next(&mut reader).await, Packet::ConnAck(_)));
        assert!(matches!(next(&mut reader).await, Packet::SubAck(_)));
        let Packet::Publish(first) = next(&mut reader).await else {
            panic!("no cloud-to-device message")
        };
        assert_eq!(
            (first.topic.as_str(), first.qos),
            (expected, QoS::AtLeastOnce)
        );
        assert_eq!(&first.payload[..], b"hello");
        drop((reader, writer));
        // the session kept its subscription: delivered again on reconnect, then acknowledged
        let (mut reader, mut writer) =
            scripted(hub.clone(), vec![Packet::Connect(persistent.clone())]).await;
        assert!(matches!(next(&mut reader).await, Packet::ConnAck(_)));
        let Packet::Publish(again) = next(&mut reader).await else {
            panic!("not delivered again")
        };
        assert_eq!(again.topic, expected);
        writer
            .write_all(&encode(vec![
                Packet::PubAck(PubAck::new(again.pkid)),
                Packet::PingReq,
            ]))
            .await
            .unwrap();
        assert!(matches!(next(&mut reader).await, Packet::PingResp));
        let queue = hub.hub.read(|tx| Ok(tx.c2d_queue("d1")?)).unwrap();
        assert!(queue.is_empty(), "completed on PUBACK: {queue:?}");
        drop((reader, writer));
        let (mut reader, _writer) =
            scripted(hub, vec![Packet::Connect(persistent), Packet::PingReq]).await;
        assert!(matches!(next(&mut reader).await, Packet::ConnAck(_)));
        assert!(matches!(next(&mut reader).await, Packet::PingResp));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_session_holds_a_bounded_number_of_subscription_filters() {
        let (hub, connect, dir) = hub_with_device("filters").await;
        let filters: Vec<_> = (0..MAX_FILTERS + 4)
            .map(|i| {
                rumqttc::mqttbytes::v4::SubscribeFilter::new(
                    format!("$iothub/methods/POST/m{i}"),
                    QoS::AtMostOnce,
                )
            })
            .collect();
        let subscribe = rumqttc::mqttbytes::v4::Subscribe::new_many(filters);
        let (mut reader, _writer) = scripted(
            hub,
            vec![Packet::Connect(connect), Packet::Subscribe(subscribe)],
        )
        .await;
        assert!(matches!(next(&mut reader).await, Packet::ConnAck(_)));
        let Packet::SubAck(suback) = next(&mut reader).await else {
            panic!("no SUBACK")
        };
        let refused = suback
            .return_codes
            .iter()
            .filter(|c| **c == SubscribeReasonCode::Failure)
            .count();
        assert_eq!(refused, 4);
        assert_eq!(suback.return_codes.len(), MAX_FILTERS + 4);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn pipelined_reported_patches_are_answered_in_order_at_the_granted_qos_and_a_later_get_sees_them_all(
    ) {
        let (hub, connect, dir) = hub_with_device("pipeline").await;
        let (client, server) = tokio::io::duplex(1 << 20);
        let serving = tokio::spawn(serve(hub.clone(), server, ClientChain::default(), || {}));

        // CONNECT, 40 reported patches (QoS 1, then QoS 0, all with $rid), then a twin GET:
        // all in one write, so the hub has them all before it answers any.
        // twin responses subscribed at QoS 0: the hub must not publish them above it (§3.8.4)
        let subscribe =
            rumqttc::mqttbytes::v4::Subscribe::new("$iothub/twin/res/#", QoS::AtMostOnce);
        let mut packets = vec![Packet::Connect(connect), Packet::Subscribe(subscribe)];
        for i in 1..=40u16 {
            let qos = if i <= 20 {
                QoS::AtLeastOnce
            } else {
                QoS::AtMostOnce
            };
            let mut publish = Publish::new(
                topic::reported_patch_topic(&i.to_string()),
                qos,
                format!(r#"{{"n":{i},"k{i}":true}}"#),
            );
            publish.pkid = if qos == QoS::AtLeastOnce { i } else { 0 };
            packets.push(Packet::Publish(publish));
        }
        packets.push(Packet::Publish(Publish::new(
            topic::twin_get_topic("get"),
            QoS::AtMostOnce,
            Vec::new(),
        )));
        let (read_half, mut write_half) = tokio::io::split(client);
        write_half.write_all(&encode(packets)).await.unwrap();
        let mut reader = PacketReader::new(read_half);
        assert!(
            matches!(next(&mut reader).await, Packet::ConnAck(a) if a.code == ConnectReturnCode::Success)
        );
        assert!(matches!(next(&mut reader).await, Packet::SubAck(_)));
        let mut last_version = 0;
        for i in 1..=40u16 {
            if i <= 20 {
                assert!(
                    matches!(next(&mut reader).await, Packet::PubAck(a) if a.pkid == i),
                    "PUBACK {i}"
                );
            }
            let Packet::Publish(response) = next(&mut reader).await else {
                panic!("twin response {i}")
            };
            assert_eq!(
                (response.qos, response.pkid),
                (QoS::AtMostOnce, 0),
                "answer {i} at the granted QoS 0"
            );
            let prefix = format!("$iothub/twin/res/204/?$rid={i}&$version=");
            let version: i64 = response
                .topic
                .strip_prefix(&prefix)
                .unwrap_or_else(|| panic!("{} is not the answer to {i}", response.topic))
                .parse()
                .unwrap();
            assert!(version > last_version);
            last_version = version;
        }
        let Packet::Publish(get) = next(&mut reader).await else {
            panic!("GET response")
        };
        assert!(
            get.topic.starts_with("$iothub/twin/res/200/?$rid=get"),
            "{}",
            get.topic
        );
        let view: serde_json::Value = serde_json::from_slice(&get.payload).unwrap();
        assert_eq!(view["reported"]["n"], 40);
        assert_eq!(view["reported"]["k1"], true);
        assert_eq!(view["reported"]["$version"], last_version);
        drop(write_half);
        drop(reader);
        let _ = tokio::time::timeout(Duration::from_secs(5), serving).await;
        std::fs::remove_dir_all(dir).unwrap();
    }
}
