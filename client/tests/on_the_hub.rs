//! The client against the real hub in-process ([`edgetwin_hub::TestHub`], free ports, a temp
//! dir): outputs through dropped connections, routed inputs, desired properties and methods.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use edgetwin_client::{
    ConnectionChange, Event, Message, ModuleClient, Overflow, SendError, SessionConfig,
};
use edgetwin_hub::TestHub;
use serde_json::{json, Value};

const DEVICE: &str = "gateway";

fn config(hub: &TestHub) -> SessionConfig {
    SessionConfig {
        mqtt_port: hub.mqtt_port(),
        backoff_base: Duration::from_millis(20),
        backoff_cap: Duration::from_millis(200),
        outbox_capacity: 100_000,
        ..SessionConfig::default()
    }
}

async fn module(hub: &TestHub, module: &str) -> ModuleClient {
    let env = hub.create_edge_module(DEVICE, module).await.unwrap();
    ModuleClient::from_lookup(|name| env.get(name).cloned(), config(hub)).unwrap()
}

/// Waits for the event `pick` accepts, for at most `timeout`.
async fn wait_for<T>(
    client: &mut ModuleClient,
    timeout: Duration,
    mut pick: impl FnMut(Event) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let event = tokio::time::timeout_at(deadline, client.next_event())
            .await
            .expect("event in time")
            .expect("session running");
        if let Some(found) = pick(event) {
            return found;
        }
    }
}

/// The numbers in the bodies of `messages`.
fn numbers(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .filter_map(|m| m["body"].as_str()?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbered_outputs_sent_through_repeatedly_dropped_connections_all_arrive() {
    const COUNT: u64 = 5000;
    const DROPS: usize = 5;
    let hub = TestHub::start().await.unwrap();
    let mut client = module(&hub, "counter").await;
    wait_for(&mut client, Duration::from_secs(10), |e| match e {
        Event::Desired(_) => Some(()),
        _ => None,
    })
    .await;

    let handle = client.handle();
    let sender = tokio::spawn(async move {
        for n in 0..COUNT {
            let mut message = Message::new(n.to_string());
            loop {
                match handle.send_output("numbers", message) {
                    Ok(()) => break,
                    Err(SendError::Full(back)) => {
                        message = *back;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err(SendError::Closed(_)) => panic!("session closed"),
                }
            }
            if n % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    });
    let events = tokio::spawn(async move {
        let mut losses = 0;
        while let Some(event) = client.next_event().await {
            if let Event::Connection(ConnectionChange::Disconnected(_)) = event {
                losses += 1;
            }
            if losses == DROPS {
                break;
            }
        }
        client
    });
    for _ in 0..DROPS {
        tokio::time::sleep(Duration::from_millis(150)).await;
        // Each drop lands while outputs are flowing.
        assert!(
            !sender.is_finished(),
            "the sender finished before the drops"
        );
        hub.drop_connection(DEVICE, "counter").await.unwrap();
    }
    sender.await.unwrap();
    let client = events.await.unwrap();

    let started = Instant::now();
    let received = loop {
        let received = numbers(&hub.outputs(DEVICE, "counter", "numbers").await.unwrap());
        let distinct: BTreeSet<u64> = received.iter().copied().collect();
        if distinct.len() as u64 == COUNT {
            break received;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{} of {COUNT} numbers arrived",
            distinct.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut seen = BTreeMap::new();
    for n in &received {
        *seen.entry(*n).or_insert(0) += 1;
    }
    let duplicates: Vec<u64> = seen
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(n, _)| *n)
        .collect();
    // Only what was unacknowledged at a drop can come twice: one run of consecutive numbers
    // per drop at most, none longer than the window of unacknowledged publishes.
    let mut runs: Vec<Vec<u64>> = Vec::new();
    for n in &duplicates {
        match runs.last_mut() {
            Some(run) if run.last() == Some(&(n - 1)) => run.push(*n),
            _ => runs.push(vec![*n]),
        }
    }
    assert!(
        runs.len() <= DROPS,
        "duplicates away from the drops: {runs:?}"
    );
    assert!(
        runs.iter()
            .all(|run| run.len() <= edgetwin_client::state::MAX_IN_FLIGHT),
        "{runs:?}"
    );
    eprintln!(
        "{COUNT} numbered outputs through {DROPS} dropped connections: all arrived, {} duplicates \
         (at-least-once, around the drops): {duplicates:?}",
        duplicates.len()
    );
    assert!(client.shutdown(Duration::from_secs(5)).await);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_routed_by_edge_hub_arrives_on_the_other_module_input_with_its_properties() {
    let hub = TestHub::start().await.unwrap();
    let mut source = module(&hub, "source").await;
    let mut sink = module(&hub, "sink").await;
    hub.set_routes(
        DEVICE,
        json!({"echo": "FROM /messages/modules/source/outputs/out INTO BrokeredEndpoint(\"/modules/sink/inputs/input1\")"}),
    )
    .await
    .unwrap();
    for client in [&mut source, &mut sink] {
        wait_for(client, Duration::from_secs(10), |e| match e {
            Event::Desired(_) => Some(()),
            _ => None,
        })
        .await;
    }
    let message = Message::json(&json!({"n": 1}))
        .with_message_id("m-1")
        .with_correlation_id("c-1")
        .with_property("kind", "test");
    source.send_output("out", message).unwrap();
    let (input, got) = wait_for(&mut sink, Duration::from_secs(10), |e| match e {
        Event::Input { input, message } => Some((input, message)),
        _ => None,
    })
    .await;
    assert_eq!(input, "input1");
    assert_eq!(got.body(), br#"{"n":1}"#);
    assert_eq!(got.message_id(), Some("m-1"));
    assert_eq!(got.correlation_id(), Some("c-1"));
    assert_eq!(got.content_type(), Some("application/json"));
    assert_eq!(got.property("kind"), Some("test"));
    source.shutdown(Duration::from_secs(2)).await;
    sink.shutdown(Duration::from_secs(2)).await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn desired_changes_arrive_in_order_a_report_receipt_tells_the_new_version_and_methods_are_answered(
) {
    let hub = TestHub::start().await.unwrap();
    let mut client = module(&hub, "twin").await;
    let first = wait_for(&mut client, Duration::from_secs(10), |e| match e {
        Event::Desired(update) => Some(update),
        _ => None,
    })
    .await;
    let version = hub
        .patch_desired(DEVICE, "twin", json!({"limit": 3}))
        .await
        .unwrap();
    let update = wait_for(&mut client, Duration::from_secs(10), |e| match e {
        Event::Desired(update) => Some(update),
        _ => None,
    })
    .await;
    assert_eq!(update.version, version);
    assert_eq!(update.version, first.version + 1);
    assert_eq!(update.desired["limit"], json!(3));

    let ack = json!({"limit": {"value": 3, "ac": 200, "av": version}});
    let receipt = client.report(ack.as_object().unwrap().clone()).await;
    let reported_version = wait_for(&mut client, Duration::from_secs(10), |e| match e {
        Event::ReportedAcked { version, .. } => Some(version),
        _ => None,
    })
    .await;
    assert_eq!(receipt.delivered().await, Ok(reported_version));
    let reported = hub.reported(DEVICE, "twin").await.unwrap();
    assert_eq!(reported["limit"]["av"], json!(version));
    assert_eq!(reported_version, reported["$version"].as_i64());

    let answer = async {
        let call = wait_for(&mut client, Duration::from_secs(10), |e| match e {
            Event::Method(call) => Some(call),
            _ => None,
        })
        .await;
        assert_eq!((call.name(), call.payload()), ("ping", &json!({"x": 1})));
        call.respond(200, &json!({"pong": true})).await;
    };
    let (invoked, ()) = tokio::join!(hub.invoke(DEVICE, "twin", "ping", json!({"x": 1})), answer);
    assert_eq!(invoked.unwrap(), (200, json!({"pong": true})));
    client.shutdown(Duration::from_secs(2)).await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_outbox_hands_the_output_back_whole_and_takes_it_once_the_hub_acknowledged_room() {
    let hub = TestHub::start().await.unwrap();
    let env = hub.create_edge_module(DEVICE, "bounded").await.unwrap();
    hub.fault("refuseConnects", json!({"seconds": 2}))
        .await
        .unwrap();
    let bounded = SessionConfig {
        outbox_capacity: 2,
        overflow: Overflow::Reject,
        ..config(&hub)
    };
    let client = ModuleClient::from_lookup(|name| env.get(name).cloned(), bounded).unwrap();
    let handle = client.handle();
    for n in 0..2 {
        handle
            .send_output("out", Message::new(n.to_string()))
            .unwrap();
    }
    let third = Message::new("2").with_property("kept", "yes");
    let back = match handle.send_output("out", third) {
        Err(SendError::Full(back)) => back,
        other => panic!("a third output into an outbox of 2 was not refused: {other:?}"),
    };
    assert_eq!(back.body(), b"2");
    assert_eq!(handle.outputs_dropped(), 0, "Reject drops nothing");

    // once connected and acknowledged, there is room again
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut message = *back;
    loop {
        match handle.send_output("out", message) {
            Ok(()) => break,
            Err(SendError::Full(again)) if Instant::now() < deadline => {
                message = *again;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!("no room came: {other:?}"),
        }
    }
    let mut arrived = Vec::new();
    while arrived.len() < 3 && Instant::now() < deadline {
        arrived = hub.outputs(DEVICE, "bounded", "out").await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(numbers(&arrived), [0, 1, 2]);
    assert_eq!(arrived[2]["properties"]["kept"], "yes", "{arrived:?}");
    drop(client);
    hub.stop().await;
}
