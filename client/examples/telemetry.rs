//! A telemetry module: sends a numbered JSON reading to output `telemetry` every
//! `interval` seconds (a desired property, default 5) and answers the `ping` method.
//!
//! ```text
//! eval "$(edgetwin edge-env --device d --module telemetry --ca-file ...)"
//! cargo run -p edgetwin-client --example telemetry
//! ```

use std::time::Duration;

use edgetwin_client::{Event, Message, ModuleClient};
use serde_json::{json, Value};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut client = ModuleClient::from_environment()?;
    let mut ticker = tokio::time::interval(Duration::from_secs(5));
    let mut sent: u64 = 0;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let reading = json!({"n": sent, "uptimeSeconds": sent * ticker.period().as_secs()});
                let message = Message::json(&reading).with_message_id(sent.to_string());
                match client.send_output("telemetry", message) {
                    Ok(()) => sent += 1,
                    Err(error) => eprintln!("telemetry: {error}"),
                }
            }
            event = client.next_event() => match event {
                Some(Event::Desired(update)) => {
                    if let Some(seconds) = update.desired.get("interval").and_then(Value::as_u64) {
                        ticker = tokio::time::interval(Duration::from_secs(seconds.max(1)));
                    }
                }
                Some(Event::Method(call)) if call.name() == "ping" => {
                    call.respond(200, &json!({"sent": sent})).await;
                }
                Some(_) => {}
                None => return Ok(()),
            },
        }
    }
}
