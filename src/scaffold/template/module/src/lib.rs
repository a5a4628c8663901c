//! {{module}}: acknowledges desired properties IoT Plug and Play style, echoes input `input1` to
//! output `output1`, and answers the `ping` direct method with how many messages it echoed.
//!
//! [`run`] is the whole module, so that the tests drive it against an in-process hub exactly as
//! `main` runs it against edgeHub. It logs each step at info (`tracing`); the client logs the
//! connection coming and going, and each failed attempt with when the next one is.

use std::future::Future;
use std::time::Duration;

use edgetwin_client::{DesiredUpdate, Event, ModuleClient};
use serde_json::{json, Map, Value};
use tracing::{info, warn};

/// The input echoed.
pub const INPUT: &str = "input1";
/// Where echoes go.
pub const OUTPUT: &str = "output1";

/// The acknowledgement of each desired property `update` changed: `{"value", "ac", "av", "ad"}`
/// (IoT Plug and Play's writable-property convention). Deleted properties are acknowledged as
/// `null`.
pub fn acknowledgements(update: &DesiredUpdate) -> Map<String, Value> {
    let changed = update.patch.as_ref().unwrap_or(&update.desired);
    changed
        .iter()
        .filter(|(name, _)| !name.starts_with('$'))
        .map(|(name, value)| {
            let ack = match value {
                Value::Null => Value::Null,
                value => json!({"value": value, "ac": 200, "av": update.version, "ad": "applied"}),
            };
            (name.clone(), ack)
        })
        .collect()
}

/// Runs the module until `stop` completes or the session ends, then flushes what is pending
/// (within five seconds) and disconnects.
pub async fn run(mut client: ModuleClient, stop: impl Future<Output = ()>) {
    let mut echoed: u64 = 0;
    tokio::pin!(stop);
    loop {
        let event = tokio::select! {
            event = client.next_event() => match event {
                Some(event) => event,
                None => return,
            },
            () = &mut stop => break,
        };
        match event {
            Event::Desired(update) => {
                match &update.patch {
                    None => {
                        let properties: Vec<&String> = update.desired.keys().collect();
                        info!(version = update.version, ?properties, "twin received");
                    }
                    Some(patch) => {
                        let patch = Value::Object(patch.clone());
                        info!(version = update.version, %patch, "desired patch");
                    }
                }
                let acks = acknowledgements(&update);
                if !acks.is_empty() {
                    client.report(acks).await;
                }
            }
            Event::Input { input, message } if input == INPUT => {
                match client.send_output(OUTPUT, message) {
                    Ok(()) => {
                        echoed += 1;
                        info!(echoed, "{INPUT} sent on {OUTPUT}");
                    }
                    Err(error) => warn!("{OUTPUT}: {error}"),
                }
            }
            Event::Method(call) => match call.name() {
                "ping" => {
                    info!("method ping");
                    call.respond(200, &json!({"pong": true, "echoed": echoed}))
                        .await
                }
                name => {
                    let message = format!("unknown method `{name}`");
                    warn!("{message}");
                    call.respond(404, &json!({"message": message})).await;
                }
            },
            _ => {}
        }
    }
    client.shutdown(Duration::from_secs(5)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_changed_property_is_acknowledged_with_the_desired_version() {
        let update = DesiredUpdate {
            desired: json!({"a": 1, "b": 2}).as_object().unwrap().clone(),
            patch: Some(json!({"b": 2, "gone": null}).as_object().unwrap().clone()),
            version: 7,
        };
        let acks = acknowledgements(&update);
        assert_eq!(
            acks["b"],
            json!({"value": 2, "ac": 200, "av": 7, "ad": "applied"})
        );
        assert_eq!(acks["gone"], Value::Null);
        assert!(!acks.contains_key("a"));
    }
}
