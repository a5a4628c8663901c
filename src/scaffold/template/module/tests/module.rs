//! {{module}} against an in-process IoT Hub (`edgetwin_hub::TestHub`: the real hub on free ports
//! in a temp dir): desired properties acknowledged, `input1` echoed to `output1` through a route,
//! `ping` answered with the count.

use std::time::{Duration, Instant};

use edgetwin_client::{Message, ModuleClient, SessionConfig};
use edgetwin_hub::TestHub;
use serde_json::{json, Value};

const DEVICE: &str = "gateway";
const MODULE: &str = "{{module}}";

async fn client(hub: &TestHub, module: &str) -> ModuleClient {
    let env = hub.create_edge_module(DEVICE, module).await.unwrap();
    let config = SessionConfig {
        mqtt_port: hub.mqtt_port(),
        ..SessionConfig::default()
    };
    ModuleClient::from_lookup(|name| env.get(name).cloned(), config).unwrap()
}

/// Polls `check` every 50 ms for up to 10 s.
async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_desired_property_is_acknowledged_an_input_is_echoed_and_ping_counts_it() {
    let hub = TestHub::start().await.unwrap();
    let module = client(&hub, MODULE).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn({{crate}}::run(module, async {
        let _ = stopped.await;
    }));

    let version = hub
        .patch_desired(DEVICE, MODULE, json!({"greeting": "hello"}))
        .await
        .unwrap();
    let ack = eventually("the desired property acknowledged", || async {
        let reported = hub.reported(DEVICE, MODULE).await.unwrap();
        (reported["greeting"]["av"] == json!(version)).then_some(reported)
    })
    .await;
    assert_eq!(ack["greeting"]["value"], "hello");
    assert_eq!(ack["greeting"]["ac"], 200);

    // Another module's output reaches input1 through a route, as edgeHub would deliver it; this
    // module's outputs go upstream, as deployment.template.json routes them, where `outputs` reads.
    let sender = client(&hub, "sender").await;
    let route = format!(
        "FROM /messages/modules/sender/outputs/out INTO BrokeredEndpoint(\"/modules/{MODULE}/inputs/input1\")"
    );
    let upstream = format!("FROM /messages/modules/{MODULE}/outputs/* INTO $upstream");
    hub.set_routes(
        DEVICE,
        json!({"senderTo{{crate}}": route, "{{crate}}ToIoTHub": upstream}),
    )
    .await
    .unwrap();
    // The route and both subscriptions are in place before the message goes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    sender
        .send_output("out", Message::json(&json!({"n": 1})))
        .unwrap();
    let echoes = eventually("the input echoed on output1", || async {
        let echoes = hub.outputs(DEVICE, MODULE, "output1").await.unwrap();
        (!echoes.is_empty()).then_some(echoes)
    })
    .await;
    assert_eq!(echoes[0]["body"], json!(r#"{"n":1}"#));

    let (status, answer) = hub
        .invoke(DEVICE, MODULE, "ping", Value::Null)
        .await
        .unwrap();
    assert_eq!((status, answer), (200, json!({"pong": true, "echoed": 1})));

    let _ = stop.send(());
    running.await.unwrap();
    sender.shutdown(Duration::from_secs(2)).await;
    hub.stop().await;
}
