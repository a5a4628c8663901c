//! Tokens put on `$cbs` hold a link only until they expire, as on IoT Hub and Event Hubs: a client
//! that never renews has its links closed, each with its door's error (the Event Hub-compatible
//! endpoint's `amqp:link:detach-forced` "Code: RenewToken", IoT Hub's own
//! `amqp:unauthorized-access` "Token Invalid."); a renewal for the same path keeps every link it
//! covers open, and one with a wrong signature or without the permission extends nothing. Judged
//! with `fe2o3-amqp`'s client, as a service SDK talks: SASL ANONYMOUS, then put-token requests on
//! `$cbs`. (The Python `azure-eventhub` consumer renewing on its own: tests/python/test_event_hub.py.)
//! A connection that puts no valid token within 20 seconds of its open is closed, as Service Bus
//! drops it.

use std::time::{Duration, Instant};

use edgetwin_wire::{sas, Secret};
use fe2o3_amqp::connection::{ConnectionHandle, Error as ConnectionError};
use fe2o3_amqp::link::{DetachError, LinkStateError, Receiver, RecvError, Sender};
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::definitions::{AmqpError, Error as AmqpErrorFrame, LinkError};
use fe2o3_amqp::types::messaging::{
    AmqpValue, ApplicationProperties, Body, Message, MessageId, Outcome, Properties,
};
use fe2o3_amqp::types::primitives::{SimpleValue, Value};
use fe2o3_amqp::{Connection, Session};
use serde_json::json;
use support::HubSetup;

use edgetwin_test_support as support;

/// How long a first token lives: the links must be closed soon after.
const SHORT: u64 = 2;

/// A key no policy has: its tokens are wrongly signed.
const WRONG_KEY: &str = "eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHg=";

/// The client's receivers' target: the `reply-to` of its `$cbs` requests.
const REPLY_TO: &str = "amqp-token-client";

/// A connection to the hub's AMQP port and its session, as the service SDKs open one.
struct Client {
    connection: ConnectionHandle<()>,
    session: SessionHandle<()>,
    /// The `$cbs` request link and its answers' receiver.
    cbs: (Sender, Receiver),
    /// The hub's host name: the `sr` of the policy tokens.
    host: String,
}

impl Client {
    async fn open(setup: &HubSetup) -> Client {
        let hub = &setup.hub;
        let host = hub.host_name().to_owned();
        let tls = support::tls_trusting(&hub.ca());
        let stream = support::tls_connect(hub.amqp_port(), tls, host.clone())
            .await
            .expect("TLS to the AMQP port");
        let mut connection = Connection::builder()
            .container_id("amqp-token-test")
            .hostname(host.as_str())
            .sasl_profile(SaslProfile::Anonymous)
            .open_with_stream(stream)
            .await
            .expect("AMQP open");
        let mut session = Session::begin(&mut connection).await.expect("a session");
        let cbs = (
            sender(&mut session, "$cbs").await,
            receiver(&mut session, "$cbs").await,
        );
        Client {
            connection,
            session,
            cbs,
            host,
        }
    }

    /// Puts a token of `policy` (key `key`) for the whole hub, expiring at `expiry`; returns the
    /// hub's `status-code`.
    async fn put_token(&mut self, policy: &str, key: &str, expiry: u64) -> i64 {
        let token = sas::generate_token(&Secret::new(key), &self.host, expiry, Some(policy))
            .expect("a token");
        let properties = ApplicationProperties::builder()
            .insert("operation", SimpleValue::String("put-token".into()))
            .insert(
                "type",
                SimpleValue::String("servicebus.windows.net:sastoken".into()),
            )
            .insert("name", SimpleValue::String(self.host.clone()))
            .build();
        let request = Message::builder()
            .properties(Properties {
                message_id: Some(MessageId::String(format!("put-{expiry}-{policy}"))),
                reply_to: Some(REPLY_TO.into()),
                ..Properties::default()
            })
            .application_properties(properties)
            .body(Body::Value(AmqpValue(Value::String(
                token.expose().to_owned(),
            ))))
            .build();
        let (sender, receiver) = &mut self.cbs;
        sender.send(request).await.expect("the put-token sent");
        let answer = receiver
            .recv::<Body<Value>>()
            .await
            .expect("the put-token answered");
        receiver.accept(&answer).await.unwrap();
        match answer
            .message()
            .application_properties
            .as_ref()
            .and_then(|p| p.0.get("status-code"))
        {
            Some(SimpleValue::Int(status)) => i64::from(*status),
            other => panic!("put-token answered with status {other:?}"),
        }
    }

    /// A receiver of partition 0 of the Event Hub-compatible endpoint, from its end.
    async fn events(&mut self) -> Receiver {
        let name = self.host.split('.').next().unwrap();
        let partition = format!("{name}/ConsumerGroups/$Default/Partitions/0");
        receiver(&mut self.session, &partition).await
    }

    /// A cloud-to-device sender.
    async fn devicebound(&mut self) -> Sender {
        sender(&mut self.session, "/messages/devicebound").await
    }

    /// A feedback receiver.
    async fn feedback(&mut self) -> Receiver {
        receiver(&mut self.session, "/messages/serviceBound/feedback").await
    }

    async fn close(mut self) {
        let _ = self.session.end().await;
        let _ = self.connection.close().await;
    }
}

/// A sender attached to `address`.
async fn sender(session: &mut SessionHandle<()>, address: &str) -> Sender {
    Sender::attach(session, format!("{address}-sender"), address)
        .await
        .unwrap_or_else(|e| panic!("a sender to {address}: {e}"))
}

/// A receiver attached to `address`, its target [`REPLY_TO`] (where `$cbs` answers go).
async fn receiver(session: &mut SessionHandle<()>, address: &str) -> Receiver {
    Receiver::builder()
        .name(format!("{address}-receiver"))
        .source(address)
        .target(REPLY_TO)
        .attach(session)
        .await
        .unwrap_or_else(|e| panic!("a receiver from {address}: {e}"))
}

fn now() -> u64 {
    support::unix_now() as u64
}

/// A policy's key from `hub.json`.
fn key(setup: &HubSetup, policy: &str) -> String {
    setup.hub.info["policies"][policy]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The error a receiver is closed with, waiting at most `within`.
async fn receiver_closed(receiver: &mut Receiver, within: Duration) -> AmqpErrorFrame {
    match tokio::time::timeout(within, receiver.recv::<Body<Value>>()).await {
        Ok(Err(RecvError::LinkStateError(
            LinkStateError::RemoteClosedWithError(error)
            | LinkStateError::RemoteDetachedWithError(error),
        ))) => error,
        Ok(other) => panic!("the receiver ended otherwise: {other:?}"),
        Err(_) => panic!("the receiver is still open after {within:?}"),
    }
}

/// The error a sender is closed with, waiting at most `within`.
async fn sender_closed(sender: &mut Sender, within: Duration) -> AmqpErrorFrame {
    match tokio::time::timeout(within, sender.on_detach()).await {
        Ok(
            DetachError::RemoteClosedWithError(error) | DetachError::RemoteDetachedWithError(error),
        ) => error,
        Ok(other) => panic!("the sender ended otherwise: {other:?}"),
        Err(_) => panic!("the sender is still open after {within:?}"),
    }
}

#[test]
fn links_whose_token_expires_unrenewed_are_closed_as_iot_hub_closes_them() {
    let setup = HubSetup::start("amqp-token-expiry", &[]);
    setup.runtime.block_on(async {
        let mut client = Client::open(&setup).await;
        let expiry = now() + SHORT;
        assert_eq!(
            client
                .put_token("service", &key(&setup, "service"), expiry)
                .await,
            200
        );
        let mut events = client.events().await;
        let mut devicebound = client.devicebound().await;
        let mut feedback = client.feedback().await;
        // neither a wrong signature nor a policy without ServiceConnect renews anything
        assert_eq!(
            client.put_token("service", WRONG_KEY, now() + 3600).await,
            401
        );
        let registry_read = key(&setup, "registryRead");
        assert_eq!(
            client
                .put_token("registryRead", &registry_read, now() + 3600)
                .await,
            200
        );

        let within = Duration::from_secs(SHORT + 4);
        let error = receiver_closed(&mut events, within).await;
        let closed_at = now();
        assert!(
            closed_at > expiry,
            "closed at {closed_at}, before its token expired ({expiry})"
        );
        assert_eq!(error.condition, LinkError::DetachForced.into(), "{error:?}");
        let description = error.description.unwrap_or_default();
        assert!(
            description.contains("is force detached. Code: RenewToken."),
            "{description}"
        );
        for error in [
            sender_closed(&mut devicebound, within).await,
            receiver_closed(&mut feedback, within).await,
        ] {
            assert_eq!(
                error.condition,
                AmqpError::UnauthorizedAccess.into(),
                "{error:?}"
            );
            assert!(error
                .description
                .unwrap_or_default()
                .starts_with("Token Invalid."));
        }
        client.close().await;
    });
}

#[test]
fn a_renewed_token_keeps_every_link_it_covers_open_past_the_first_ones_expiry() {
    let setup = HubSetup::start("amqp-token-renewed", &[]);
    let device = "renewed-device";
    let (status, _) = setup.owner(
        "PUT",
        &format!("/devices/{device}"),
        Some(json!({"deviceId": device})),
    );
    assert_eq!(status, 200);
    setup.runtime.block_on(async {
        let mut client = Client::open(&setup).await;
        let service = key(&setup, "service");
        let first = now() + SHORT;
        assert_eq!(client.put_token("service", &service, first).await, 200);
        let mut events = client.events().await;
        let mut devicebound = client.devicebound().await;
        assert_eq!(
            client.put_token("service", &service, now() + 3600).await,
            200
        );

        let past = Instant::now() + Duration::from_secs(SHORT + 2);
        assert!(
            tokio::time::timeout_at(past.into(), events.recv::<Body<Value>>())
                .await
                .is_err(),
            "the partition receiver ended before the renewed token expired"
        );
        assert!(now() > first);
        let message = Message::builder()
            .properties(Properties {
                to: Some(format!("/devices/{device}/messages/devicebound")),
                ..Properties::default()
            })
            .body(Body::Value(AmqpValue(Value::String("after".into()))))
            .build();
        let outcome = devicebound
            .send(message)
            .await
            .expect("sent after the first expiry");
        assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
        client.close().await;
    });
}

#[test]
fn a_connection_that_puts_no_valid_token_within_20_seconds_is_closed_and_one_that_did_stays() {
    let setup = HubSetup::start("amqp-token-deadline", &[]);
    setup.runtime.block_on(async {
        let opened = Instant::now();
        // SASL ANONYMOUS and the $cbs links, and then nothing but a wrongly signed token
        let mut silent = Client::open(&setup).await;
        assert_eq!(
            silent.put_token("service", WRONG_KEY, now() + 3600).await,
            401
        );
        let mut authenticated = Client::open(&setup).await;
        let service = key(&setup, "service");
        assert_eq!(
            authenticated
                .put_token("service", &service, now() + 3600)
                .await,
            200
        );

        let closed = tokio::time::timeout(Duration::from_secs(25), silent.connection.on_close())
            .await
            .expect("the connection without a valid token is still open 25 s after its open");
        let elapsed = opened.elapsed();
        assert!(
            elapsed >= Duration::from_secs(20),
            "closed {elapsed:?} after its open, before the 20 s Service Bus gives"
        );
        match closed {
            Err(ConnectionError::RemoteClosedWithError(error)) => {
                assert_eq!(
                    error.condition,
                    AmqpError::UnauthorizedAccess.into(),
                    "{error:?}"
                );
                let description = error.description.unwrap_or_default();
                assert!(description.contains("within 20 seconds"), "{description}");
            }
            other => panic!("the connection ended otherwise: {other:?}"),
        }
        assert_eq!(
            authenticated
                .put_token("service", &service, now() + 3600)
                .await,
            200,
            "the connection that put a token in time is still served"
        );
        authenticated.close().await;
    });
}
