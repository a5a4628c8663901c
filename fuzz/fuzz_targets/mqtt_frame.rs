//! An MQTT 3.1.1 frame as the hub reads it from a client, then every topic path in it through
//! the hub's topic parsers: PUBLISH topics (`parse_inbound`), CONNECT usernames
//! (`parse_username`) and SUBSCRIBE filters (`classify_filter`), for a device and a module.
#![no_main]

use bytes::BytesMut;
use edgetwin_wire::topic;
use libfuzzer_sys::fuzz_target;
use rumqttc::mqttbytes::v4::Packet;

/// The hub's limit (`hub/src/mqtt/connection.rs`: 256 KiB plus room for topic and header).
const MAX_PACKET_SIZE: usize = 256 * 1024 + 4096;

fn topics(path: &str) {
    for (device, module) in [("d1", None), ("d1", Some("m1")), ("", Some(""))] {
        let _ = topic::parse_inbound(path, device, module);
        let _ = topic::classify_filter(path, device, module);
    }
    let _ = topic::parse_username(path);
    let _ = topic::parse_outbound(path);
}

fuzz_target!(|data: &[u8]| {
    // As the connection does: parse packets off a buffer until it runs dry or fails.
    let mut buffer = BytesMut::from(data);
    for _ in 0..64 {
        let Ok(packet) = Packet::read(&mut buffer, MAX_PACKET_SIZE) else {
            break;
        };
        match packet {
            Packet::Connect(connect) => {
                topics(&connect.client_id);
                if let Some(login) = &connect.login {
                    topics(&login.username);
                    let _ = edgetwin_wire::sas::SasToken::parse(&login.password);
                }
            }
            Packet::Publish(publish) => topics(&publish.topic),
            Packet::Subscribe(subscribe) => {
                for filter in &subscribe.filters {
                    topics(&filter.path);
                }
            }
            Packet::Unsubscribe(unsubscribe) => {
                for filter in &unsubscribe.topics {
                    topics(filter);
                }
            }
            _ => {}
        }
    }
    // The raw bytes as a topic too, so the parsers see more than what MQTT framing lets through.
    if let Ok(text) = std::str::from_utf8(data) {
        topics(text);
    }
});
