//! MQTT 3.1.1 rules the packet parser (rumqttc's) does not enforce and a server must: the fixed
//! header's reserved flag bits (§2.2.2), CONNECT's reserved flag (§3.1.2.3) and no `#` wildcard in a PUBLISH topic (§3.3.2.1; `+` is
//! left alone: SDKs may send it form-encoded in property bags). A client that breaks them is
//! disconnected, as the specification requires. Packets are read and written here, for IoT
//! Hub sessions and provisioning sessions alike.
//!
//! A leaf of the MQTT door: depends on nothing else of the hub.

use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::Packet;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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
    /// A message the client sent could not be stored: it is left unacknowledged.
    #[error("a message was not stored: {0}")]
    NotStored(String),
}

/// Checks the first byte of a packet: a known type with the flags its type requires.
pub fn check_fixed_header(first: u8) -> Result<(), String> {
    let (kind, flags) = (first >> 4, first & 0x0f);
    let required = match kind {
        3 => {
            return if flags & 0b0110 == 0b0110 {
                Err("PUBLISH with QoS 3".into())
            } else {
                Ok(())
            }
        }
        6 | 8 | 10 => 0b0010,
        1 | 2 | 4 | 5 | 7 | 9 | 11..=14 => 0,
        _ => return Err(format!("reserved packet type {kind}")),
    };
    if flags == required {
        Ok(())
    } else {
        Err(format!(
            "packet type {kind} with flags {flags:#06b} (must be {required:#06b})"
        ))
    }
}

/// Checks the CONNECT flags of `packet` (bytes that start with a CONNECT's fixed header): the
/// reserved bit must be 0, and a server must disconnect a client that sets it (MQTT-3.1.2-3).
/// Bytes that do not reach the flags yet pass (the parser reads the rest).
pub fn check_connect_flags(packet: &[u8]) -> Result<(), String> {
    // The remaining length: 1 to 4 bytes, each with a continuation bit.
    let Some(length_bytes) = packet.iter().skip(1).take(4).position(|b| b & 0x80 == 0) else {
        return Ok(());
    };
    let variable_header = 1 + length_bytes + 1;
    let name_length = match packet.get(variable_header..variable_header + 2) {
        Some(&[high, low]) => usize::from(u16::from_be_bytes([high, low])),
        _ => return Ok(()),
    };
    // The protocol name, then the protocol level, then the flags.
    match packet.get(variable_header + 2 + name_length + 1) {
        Some(flags) if flags & 0x01 != 0 => {
            Err("CONNECT with its reserved flag set (MQTT-3.1.2-3)".into())
        }
        _ => Ok(()),
    }
}

/// Refuses a PUBLISH topic that holds the wildcard `#` outside the connected identity's own
/// `devices/{d}/[modules/{m}/]` prefix: `#` is a legal id character (a device `a#b` publishes to
/// `devices/a#b/messages/events/`), so only the rest of the topic is checked.
pub fn check_publish_topic(
    topic: &str,
    device_id: &str,
    module_id: Option<&str>,
) -> Result<(), ConnectionEnd> {
    let own = match module_id {
        Some(module_id) => format!("devices/{device_id}/modules/{module_id}/"),
        None => format!("devices/{device_id}/"),
    };
    let rest = topic.strip_prefix(own.as_str()).unwrap_or(topic);
    if rest.contains('#') {
        return Err(ConnectionEnd::Violation(format!(
            "PUBLISH topic '{topic}' contains the wildcard #"
        )));
    }
    Ok(())
}

/// Largest packet accepted: IoT Hub's 256 KiB message limit plus topic and header room.
pub const MAX_PACKET_SIZE: usize = 256 * 1024 + 4096;
/// The longest keep-alive the hub honours (Azure's load-balancer idle limit).
pub const MAX_KEEP_ALIVE: Duration = Duration::from_secs(1767);

/// Reads MQTT packets from a byte stream.
pub struct PacketReader<R> {
    /// The stream.
    reader: R,
    /// Bytes read but not yet parsed.
    buffer: BytesMut,
}

impl<R: AsyncRead + Unpin> PacketReader<R> {
    /// Reads packets from `reader`.
    pub fn new(reader: R) -> Self {
        Self {
            reader,
            buffer: BytesMut::with_capacity(4096),
        }
    }

    /// The next packet; `None` once the peer closed the stream.
    pub async fn next(&mut self) -> Result<Option<Packet>, ConnectionEnd> {
        loop {
            if let Some(&first) = self.buffer.first() {
                check_fixed_header(first).map_err(ConnectionEnd::Violation)?;
                if first >> 4 == 1 {
                    check_connect_flags(&self.buffer).map_err(ConnectionEnd::Violation)?;
                }
            }
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

/// Writes one packet and flushes.
pub async fn write_packet<W: AsyncWrite + Unpin>(
    writer: &mut W,
    packet: Packet,
) -> Result<(), ConnectionEnd> {
    write_packets(writer, vec![packet]).await
}

/// Writes packets with one write and one flush.
pub async fn write_packets<W: AsyncWrite + Unpin>(
    writer: &mut W,
    packets: Vec<Packet>,
) -> Result<(), ConnectionEnd> {
    let mut out = BytesMut::with_capacity(packets.iter().map(|p| p.size() + 8).sum());
    for packet in packets {
        packet
            .write(&mut out, usize::MAX)
            .map_err(|e| ConnectionEnd::Violation(format!("cannot encode packet: {e}")))?;
    }
    writer.write_all(&out).await?;
    writer.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_flag_bits_must_be_as_the_packet_type_requires() {
        assert!(check_fixed_header(0x10).is_ok(), "CONNECT");
        assert!(check_fixed_header(0x82).is_ok(), "SUBSCRIBE");
        assert!(
            check_fixed_header(0x80).is_err(),
            "SUBSCRIBE without its 0010"
        );
        assert!(check_fixed_header(0xC1).is_err(), "PINGREQ with a flag");
        assert!(check_fixed_header(0x3B).is_ok(), "PUBLISH DUP QoS 1 RETAIN");
        assert!(check_fixed_header(0x36).is_err(), "PUBLISH QoS 3");
        assert!(check_fixed_header(0x00).is_err() && check_fixed_header(0xF0).is_err());
    }

    #[test]
    fn a_connect_with_its_reserved_flag_set_is_refused() {
        let connect = |flags: u8| {
            [
                0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, flags, 0, 60, 0, 0,
            ]
        };
        assert!(check_connect_flags(&connect(0xC2)).is_ok());
        assert!(check_connect_flags(&connect(0xC3)).is_err());
        assert!(
            check_connect_flags(&connect(0xC3)[..9]).is_ok(),
            "not there yet"
        );
        let mut long = vec![0x10, 0x80 | 12, 1, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x03];
        assert!(check_connect_flags(&long).is_err(), "two length bytes");
        long[10] = 0x02;
        assert!(check_connect_flags(&long).is_ok());
    }

    #[test]
    fn a_publish_topic_with_a_wildcard_is_a_violation_but_an_id_with_hash_is_not() {
        let check = |topic: &str, module| check_publish_topic(topic, "a#b", module).is_ok();
        assert!(check("devices/a#b/messages/events/", None));
        assert!(check("devices/a#b/modules/m/messages/events/", Some("m")));
        assert!(!check("devices/a#b/messages/events/#", None));
        assert!(!check("devices/other#/messages/events/", None));
        assert!(!check("$iothub/twin/PATCH/properties/reported/#", None));
        assert!(check("$iothub/twin/GET/?$rid=1", None));
    }
}
