//! Frames written with every field of their performative. AMQP lets a sender leave out trailing
//! null fields, and `fe2o3-amqp` does; the Python Event Hubs client (`azure-eventhub`'s pyamqp,
//! `_decode.decode_frame` and the `_incoming_*` handlers) indexes every field (`frame[9]` of an
//! open, `frame[13]` of an attach, `frame[2]` of a detach, the payload at `frame[11]` of a
//! transfer) and reads a `list0` body as a `list8`, because Azure's services always send them
//! whole. So every frame the hub writes passes through [`Padded`], which appends the missing
//! nulls (and turns `list0` into `list8`).
//!
//! The other way, uamqp (the Azure CLI's monitor-events) sends its connection properties with
//! string keys where AMQP's `fields` type has symbols, which `fe2o3-amqp` refuses to decode (the
//! open fails); [`Padded`] turns those keys into symbols (same layout, another constructor) in
//! the properties of every open, begin, attach and flow it reads. Pure byte rewriting, tested
//! below.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes held for the peer before writes wait for it.
const MAX_PENDING: usize = 256 * 1024;

/// How many fields a performative (or SASL frame) has, by its descriptor code.
fn field_count(code: u8) -> Option<usize> {
    Some(match code {
        0x10 => 10,       // open
        0x11 => 8,        // begin
        0x12 => 14,       // attach
        0x13 => 11,       // flow
        0x14 => 11,       // transfer
        0x15 => 6,        // disposition
        0x16 => 3,        // detach
        0x17 | 0x18 => 1, // end, close
        0x40 => 1,        // sasl-mechanisms
        0x44 => 2,        // sasl-outcome
        _ => return None,
    })
}

/// Largest frame held back whole to be rewritten (the hub offers 256 KiB frames); a bigger or
/// malformed size passes through as it came, for the AMQP layer to refuse.
const MAX_HELD_FRAME: usize = 1024 * 1024;

/// Whether `bytes` starts with a frame size no frame can have (below 8, above
/// [`MAX_HELD_FRAME`]).
fn malformed_size(bytes: &[u8]) -> bool {
    if bytes.starts_with(b"AMQP") {
        return false;
    }
    match bytes.get(..4) {
        Some(size) => {
            let size = u32::from_be_bytes([size[0], size[1], size[2], size[3]]);
            !(8..=MAX_HELD_FRAME as u32).contains(&size)
        }
        None => false,
    }
}

/// The length of the protocol header or frame at the start of `bytes`, once it is all there.
fn unit_length(bytes: &[u8]) -> Option<usize> {
    if bytes.starts_with(b"AMQP") {
        return (bytes.len() >= 8).then_some(8);
    }
    let size = usize::try_from(u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?)).ok()?;
    (size >= 8 && bytes.len() >= size).then_some(size)
}

/// A frame with its performative's list padded to every field; anything else (a protocol
/// header, an empty frame, an unknown body) unchanged.
#[cfg(test)]
fn pad(unit: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(unit.len() + 16);
    pad_into(unit, &mut out);
    out
}

/// Appends [`pad`]`(unit)` to `out`, without a copy of its own.
fn pad_into(unit: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    if padded(unit, out).is_none() {
        out.truncate(start);
        out.extend_from_slice(unit);
    }
}

/// Whether a frame (or protocol header) is a transfer.
fn is_transfer(unit: &[u8]) -> bool {
    let body_start = unit
        .get(4)
        .map_or(usize::MAX, |doff| usize::from(*doff) * 4);
    matches!(
        unit.get(body_start..body_start.saturating_add(3)),
        Some([0x00, 0x53, 0x14])
    )
}

/// Appends the padded `frame` to `out` (`None`: it needs no padding or is not a performative;
/// `out` may then hold part of it).
fn padded(frame: &[u8], out: &mut Vec<u8>) -> Option<()> {
    let body_start = usize::from(*frame.get(4)?) * 4;
    let body = frame.get(body_start..)?;
    let [0x00, 0x53, code, constructor, ..] = *body else {
        return None;
    };
    let fields = field_count(code)?;
    let (count, items, after) = match constructor {
        0x45 => (0, &body[4..4], &body[4..]),
        0xc0 => {
            let size = usize::from(*body.get(4)?);
            let count = usize::from(*body.get(5)?);
            let end = 5 + size;
            (count, body.get(6..end)?, body.get(end..)?)
        }
        0xd0 => {
            let size =
                usize::try_from(u32::from_be_bytes(body.get(4..8)?.try_into().ok()?)).ok()?;
            let count =
                usize::try_from(u32::from_be_bytes(body.get(8..12)?.try_into().ok()?)).ok()?;
            let end = 8 + size;
            (count, body.get(12..end)?, body.get(end..)?)
        }
        _ => return None,
    };
    if count >= fields && constructor != 0x45 {
        return None;
    }
    let missing = fields.saturating_sub(count);
    let count = count.max(fields);
    let items_len = items.len() + missing;
    let start = out.len();
    out.reserve(frame.len() + missing + 8);
    out.extend_from_slice(&frame[..body_start]);
    out.extend_from_slice(&[0x00, 0x53, code]);
    match (u8::try_from(items_len + 1), u8::try_from(count)) {
        (Ok(size), Ok(count)) => out.extend_from_slice(&[0xc0, size, count]),
        _ => {
            out.push(0xd0);
            out.extend_from_slice(&u32::try_from(items_len + 4).ok()?.to_be_bytes());
            out.extend_from_slice(&u32::try_from(count).ok()?.to_be_bytes());
        }
    }
    out.extend_from_slice(items);
    out.resize(out.len() + missing, 0x40);
    out.extend_from_slice(after);
    let size = u32::try_from(out.len() - start).ok()?;
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
    Some(())
}

/// Which field of a performative is its `properties` (`fields`), by descriptor code.
fn properties_field(code: u8) -> Option<usize> {
    Some(match code {
        0x10 => 9,  // open
        0x11 => 7,  // begin
        0x12 => 13, // attach
        0x13 => 10, // flow
        _ => return None,
    })
}

/// The encoded length of the AMQP value at the start of `bytes` (constructor included).
fn value_length(bytes: &[u8]) -> Option<usize> {
    let width = |n: usize| -> Option<usize> {
        Some(match n {
            1 => usize::from(*bytes.get(1)?),
            _ => usize::try_from(u32::from_be_bytes(bytes.get(1..5)?.try_into().ok()?)).ok()?,
        })
    };
    Some(match *bytes.first()? {
        0x00 => {
            let descriptor = value_length(bytes.get(1..)?)?;
            1 + descriptor + value_length(bytes.get(1 + descriptor..)?)?
        }
        0x40..=0x45 => 1,
        0x50..=0x56 => 2,
        0x60..=0x61 => 3,
        0x70..=0x74 => 5,
        0x80..=0x84 => 9,
        0x94 | 0x98 => 17,
        0xa0..=0xa3 | 0xc0 | 0xc1 | 0xe0 => 2 + width(1)?,
        0xb0..=0xb3 | 0xd0 | 0xd1 | 0xf0 => 5 + width(4)?,
        _ => return None,
    })
}

/// Turns the string keys of a received performative's `properties` map into symbols, in place.
pub fn symbolize_properties(frame: &mut [u8]) {
    let _ = symbolized(frame);
}

fn symbolized(frame: &mut [u8]) -> Option<()> {
    let body_start = usize::from(*frame.get(4)?) * 4;
    let body = frame.get_mut(body_start..)?;
    let [0x00, 0x53, code, constructor, ..] = *body else {
        return None;
    };
    let field = properties_field(code)?;
    let (count, mut at) = match constructor {
        0xc0 => (usize::from(*body.get(5)?), 6),
        0xd0 => (
            usize::try_from(u32::from_be_bytes(body.get(8..12)?.try_into().ok()?)).ok()?,
            12,
        ),
        _ => return None,
    };
    if count <= field {
        return None;
    }
    for _ in 0..field {
        at += value_length(body.get(at..)?)?;
    }
    let (pairs, mut key) = match *body.get(at)? {
        0xc1 => (usize::from(*body.get(at + 2)?) / 2, at + 3),
        0xd1 => (
            usize::try_from(u32::from_be_bytes(
                body.get(at + 5..at + 9)?.try_into().ok()?,
            ))
            .ok()?
                / 2,
            at + 9,
        ),
        _ => return None,
    };
    for _ in 0..pairs {
        match body.get(key)? {
            0xa1 => body[key] = 0xa3,
            0xb1 => body[key] = 0xb3,
            _ => {}
        }
        key += value_length(body.get(key..)?)?;
        key += value_length(body.get(key..)?)?;
    }
    Some(())
}

/// A stream whose written frames are [`pad`]ded and whose read frames get symbol keys in their
/// properties ([`symbolize_properties`]).
///
/// Transfers are corked: `fe2o3-amqp` flushes after every frame, which made one TLS record, one
/// system call and one TCP segment of each event sent. A flush of transfers alone is held for at
/// most [`CORK`] (or until [`CORK_BYTES`] are held), so that the events a receiver is sent in a
/// burst leave together; any other frame (open, attach, flow, disposition…) is written at once,
/// with whatever is held before it. What is held goes out when the time is up: the connection's
/// task always waits on its reads, and [`Padded`] writes there too.
#[derive(Debug)]
pub struct Padded<S> {
    /// The connection.
    inner: S,
    /// Bytes written that do not make a whole frame yet.
    incoming: Vec<u8>,
    /// Padded frames not yet written to `inner`.
    outgoing: Vec<u8>,
    /// Whether `outgoing` holds a frame other than a transfer (flushed at once).
    urgent: bool,
    /// When held transfers are written at the latest: set by a flush that was held back.
    corked: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Bytes read that do not make a whole frame yet.
    read: Vec<u8>,
    /// Whole frames read, rewritten, not yet handed to the reader.
    ready: Vec<u8>,
}

/// Longest a flush of transfers is held back.
const CORK: std::time::Duration = std::time::Duration::from_millis(1);
/// Held bytes that are written without waiting for [`CORK`].
const CORK_BYTES: usize = 32 * 1024;

impl<S> Padded<S> {
    /// Pads what is written to `inner`.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            incoming: Vec::new(),
            outgoing: Vec::new(),
            urgent: false,
            corked: None,
            read: Vec::new(),
            ready: Vec::new(),
        }
    }
}

impl<S: AsyncWrite + Unpin> Padded<S> {
    /// Writes held frames to `inner` until none is left or it would block.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut written = 0;
        let result = loop {
            if written == self.outgoing.len() {
                break Poll::Ready(Ok(()));
            }
            match Pin::new(&mut self.inner).poll_write(cx, &self.outgoing[written..]) {
                Poll::Ready(Ok(0)) => break Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => written += n,
                Poll::Ready(Err(error)) => break Poll::Ready(Err(error)),
                Poll::Pending => break Poll::Pending,
            }
        };
        self.outgoing.drain(..written);
        if self.outgoing.is_empty() {
            self.urgent = false;
        }
        result
    }

    /// Writes everything held and flushes `inner`; the cork is lifted once that is done.
    fn flush_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.drain(cx) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        let flushed = Pin::new(&mut self.inner).poll_flush(cx);
        if flushed.is_ready() {
            self.corked = None;
        }
        flushed
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Padded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        // held transfers whose time is up go out here: the connection's task always polls its
        // reads (a write that would block is retried when the socket wakes the task)
        if this
            .corked
            .as_mut()
            .is_some_and(|due| due.as_mut().poll(cx).is_ready())
        {
            if let Poll::Ready(Err(error)) = this.flush_held(cx) {
                return Poll::Ready(Err(error));
            }
        }
        while this.ready.is_empty() {
            let mut chunk = [0u8; 16 * 1024];
            let mut chunk = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut chunk) {
                Poll::Ready(Ok(())) if chunk.filled().is_empty() => {
                    // end of stream: what is left (a partial frame) goes to the reader as is
                    this.ready.append(&mut this.read);
                    break;
                }
                Poll::Ready(Ok(())) => this.read.extend_from_slice(chunk.filled()),
                other => return other,
            }
            let mut start = 0;
            while let Some(length) = unit_length(&this.read[start..]) {
                let unit = &mut this.read[start..start + length];
                symbolize_properties(unit);
                start += length;
            }
            this.ready.extend(this.read.drain(..start));
            if malformed_size(&this.read) {
                this.ready.append(&mut this.read);
            }
        }
        let n = this.ready.len().min(buf.remaining());
        buf.put_slice(&this.ready[..n]);
        this.ready.drain(..n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Padded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.outgoing.len() >= MAX_PENDING {
            if let Poll::Ready(Err(error)) = this.drain(cx) {
                return Poll::Ready(Err(error));
            }
            if this.outgoing.len() >= MAX_PENDING {
                return Poll::Pending;
            }
        }
        this.incoming.extend_from_slice(buf);
        let mut start = 0;
        while let Some(length) = unit_length(&this.incoming[start..]) {
            let unit = &this.incoming[start..start + length];
            this.urgent |= !is_transfer(unit);
            pad_into(unit, &mut this.outgoing);
            start += length;
        }
        this.incoming.drain(..start);
        if this.outgoing.len() >= CORK_BYTES {
            if let Poll::Ready(Err(error)) = this.drain(cx) {
                return Poll::Ready(Err(error));
            }
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.urgent && !this.outgoing.is_empty() && this.outgoing.len() < CORK_BYTES {
            let due = this
                .corked
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(CORK)));
            if due.as_mut().poll(cx).is_pending() {
                return Poll::Ready(Ok(()));
            }
        }
        this.flush_held(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut self.inner).poll_shutdown(cx),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame of type AMQP on channel 0 around `body`.
    fn frame(body: &[u8]) -> Vec<u8> {
        let mut out = (u32::try_from(8 + body.len()).unwrap())
            .to_be_bytes()
            .to_vec();
        out.extend_from_slice(&[2, 0, 0, 0]);
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn a_close_without_error_gets_its_null_field_as_a_list8() {
        // close, list0
        let padded = pad(&frame(&[0x00, 0x53, 0x18, 0x45]));
        assert_eq!(padded, frame(&[0x00, 0x53, 0x18, 0xc0, 0x02, 0x01, 0x40]));
    }

    #[test]
    fn a_detach_gets_its_error_field_and_a_transfer_keeps_its_payload_after_the_list() {
        // detach: handle 0 (uint0 0x43), closed true (0x41)
        let padded = pad(&frame(&[0x00, 0x53, 0x16, 0xc0, 0x03, 0x02, 0x43, 0x41]));
        assert_eq!(
            padded,
            frame(&[0x00, 0x53, 0x16, 0xc0, 0x04, 0x03, 0x43, 0x41, 0x40])
        );
        // transfer: handle 0, then the payload b"xy"
        let padded = pad(&frame(&[
            0x00, 0x53, 0x14, 0xc0, 0x02, 0x01, 0x43, b'x', b'y',
        ]));
        let mut expected = vec![0x00, 0x53, 0x14, 0xc0, 0x0c, 0x0b, 0x43];
        expected.extend([0x40; 10]);
        expected.extend(b"xy");
        assert_eq!(padded, frame(&expected));
    }

    #[test]
    fn whole_frames_headers_and_empty_frames_pass_unchanged() {
        let header = b"AMQP\x03\x01\x00\x00".to_vec();
        assert_eq!(pad(&header), header);
        let empty = frame(&[]);
        assert_eq!(pad(&empty), empty);
        let mut whole = vec![0x00, 0x53, 0x17, 0xc0, 0x02, 0x01, 0x40];
        whole = frame(&whole);
        assert_eq!(pad(&whole), whole);
    }

    #[test]
    fn a_list_that_outgrows_list8_becomes_a_list32() {
        // attach with a 250-byte name (str8) only
        let mut body = vec![0x00, 0x53, 0x12, 0xc0, 253, 0x01, 0xa1, 250];
        body.extend([b'n'; 250]);
        let padded = pad(&frame(&body));
        let list = &padded[8 + 3..];
        assert_eq!(list[0], 0xd0);
        assert_eq!(u32::from_be_bytes(list[5..9].try_into().unwrap()), 14);
        assert_eq!(
            u32::from_be_bytes(list[1..5].try_into().unwrap()) as usize,
            4 + 252 + 13
        );
        assert_eq!(padded.len(), 8 + 3 + 9 + 252 + 13);
    }

    #[test]
    fn string_keys_of_an_opens_properties_become_symbols_and_nothing_else_changes() {
        // open: container id "c", hostname "h", max-frame-size 512 (uint 0x70), channel-max 1
        // (ushort), five nulls, properties {"k": "v"} (map8 with str8 key and value)
        let mut body = vec![0x00, 0x53, 0x10, 0xc0, 0, 10];
        body.extend([0xa1, 1, b'c', 0xa1, 1, b'h', 0x70, 0, 0, 2, 0, 0x60, 0, 1]);
        body.extend([0x40; 5]);
        body.extend([0xc1, 7, 2, 0xa1, 1, b'k', 0xa1, 1, b'v']);
        body[4] = u8::try_from(body.len() - 5).unwrap();
        let mut open = frame(&body);
        symbolize_properties(&mut open);
        let mut expected = body.clone();
        let key = expected.len() - 6;
        assert_eq!(expected[key], 0xa1);
        expected[key] = 0xa3;
        assert_eq!(open, frame(&expected));
        // a transfer is left alone
        let mut transfer = frame(&[0x00, 0x53, 0x14, 0xc0, 0x02, 0x01, 0x43, 0xa1]);
        let before = transfer.clone();
        symbolize_properties(&mut transfer);
        assert_eq!(transfer, before);
    }

    #[tokio::test]
    async fn frames_read_in_pieces_come_out_whole_with_symbol_keys() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (near, mut far) = tokio::io::duplex(1024);
        let mut padded = Padded::new(near);
        let mut body = vec![
            0x00, 0x53, 0x11, 0xc0, 0, 8, 0x40, 0x43, 0x43, 0x43, 0x40, 0x40, 0x40,
        ];
        body.extend([0xc1, 7, 2, 0xa1, 1, b'k', 0xa1, 1, b'v']);
        body[4] = u8::try_from(body.len() - 5).unwrap();
        let mut sent = b"AMQP\x00\x01\x00\x00".to_vec();
        sent.extend(frame(&body));
        for piece in sent.chunks(5) {
            far.write_all(piece).await.unwrap();
        }
        drop(far);
        let mut got = Vec::new();
        padded.read_to_end(&mut got).await.unwrap();
        let key = got.len() - 6;
        assert_eq!(got[key], 0xa3);
        assert_eq!(got.len(), sent.len());
    }

    #[test]
    fn sizes_no_frame_can_have_are_not_waited_for() {
        assert!(malformed_size(&[0, 0, 0, 4]));
        assert!(malformed_size(&[0xff, 0xff, 0xff, 0xff]));
        assert!(!malformed_size(&[0, 0, 0, 8]));
        assert!(!malformed_size(b"AMQP"));
        assert!(!malformed_size(&[0, 0]));
    }

    #[tokio::test]
    async fn frames_written_in_pieces_come_out_padded_and_whole() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (near, mut far) = tokio::io::duplex(1024);
        let mut padded = Padded::new(near);
        let close = frame(&[0x00, 0x53, 0x18, 0x45]);
        let mut bytes = b"AMQP\x00\x01\x00\x00".to_vec();
        bytes.extend(&close);
        for piece in bytes.chunks(3) {
            padded.write_all(piece).await.unwrap();
        }
        padded.flush().await.unwrap();
        drop(padded);
        let mut out = Vec::new();
        far.read_to_end(&mut out).await.unwrap();
        let mut expected = b"AMQP\x00\x01\x00\x00".to_vec();
        expected.extend(frame(&[0x00, 0x53, 0x18, 0xc0, 0x02, 0x01, 0x40]));
        assert_eq!(out, expected);
    }
}
