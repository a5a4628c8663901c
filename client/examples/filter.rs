//! A filter module: reads JSON messages on input `input1` and forwards those whose
//! `temperature` exceeds the desired property `threshold` (default 25) to output `output1`.
//!
//! ```text
//! eval "$(edgetwin edge-env --device d --module filter --ca-file ...)"
//! cargo run -p edgetwin-client --example filter
//! ```

use edgetwin_client::{Event, ModuleClient};
use serde_json::{json, Value};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut client = ModuleClient::from_environment()?;
    let mut threshold = 25.0;
    while let Some(event) = client.next_event().await {
        match event {
            Event::Desired(update) => {
                if let Some(value) = update.desired.get("threshold").and_then(Value::as_f64) {
                    threshold = value;
                    let ack =
                        json!({"threshold": {"value": value, "ac": 200, "av": update.version}});
                    client
                        .report(ack.as_object().cloned().unwrap_or_default())
                        .await;
                }
            }
            Event::Input { input, message } if input == "input1" => {
                let reading: Value = serde_json::from_slice(message.body()).unwrap_or_default();
                if reading["temperature"]
                    .as_f64()
                    .is_some_and(|t| t > threshold)
                {
                    if let Err(full) = client.send_output("output1", message) {
                        eprintln!("dropped: {full}");
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}
