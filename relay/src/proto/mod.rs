//! The PostgreSQL wire protocol (v3) as the relay speaks it, both as a server to downstream
//! replicas and as a client of its upstream. Sans-IO: functions here turn bytes into messages and
//! messages into bytes; sockets live in `wire`, `upstream` and `downstream`.
//!
//! Invariant: nothing here panics on input. Every decoder checks lengths and returns
//! [`ProtocolError`] for malformed bytes; `Ok(None)` means "need more bytes".

pub mod backend;
pub mod command;
pub mod error;
pub mod frontend;
pub mod replication;

use bytes::{Buf, Bytes, BytesMut};

/// Largest message accepted from a peer. PostgreSQL's own limit for most messages is 1 GB
/// (`PQ_LARGE_MESSAGE_LIMIT`); replication traffic never comes close.
pub const MAX_MESSAGE_LEN: usize = 64 << 20;
/// Largest startup packet (`MAX_STARTUP_PACKET_LENGTH` in PostgreSQL).
pub const MAX_STARTUP_PACKET_LEN: usize = 10000;

/// Bytes that do not form a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("invalid message length {0}")]
    BadLength(i64),
    #[error("invalid startup packet length")]
    BadStartupLength,
    #[error("invalid startup packet layout: expected terminator as last byte")]
    StartupLayout,
    #[error("unsupported frontend protocol {major}.{minor}")]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("invalid {0} message format")]
    Malformed(&'static str),
    #[error("invalid frontend message type {0}")]
    UnexpectedType(u8),
}

/// One typed message: its tag byte and its body (length word removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    pub tag: u8,
    pub body: Bytes,
}

/// Splits one typed message (`tag`, `int32 len`, body) off the front of `buf`.
pub fn split_message(buf: &mut BytesMut) -> Result<Option<RawMessage>, ProtocolError> {
    split_message_max(buf, MAX_MESSAGE_LEN)
}

/// [`split_message`] with a smaller limit on the announced length (`len` word included), for a
/// side that only ever gets small messages.
pub fn split_message_max(
    buf: &mut BytesMut,
    max_len: usize,
) -> Result<Option<RawMessage>, ProtocolError> {
    let Some(&[tag, l0, l1, l2, l3]) = buf.first_chunk::<5>() else {
        return Ok(None);
    };
    let len = i32::from_be_bytes([l0, l1, l2, l3]);
    if len < 4 || len as usize > max_len.min(MAX_MESSAGE_LEN) {
        return Err(ProtocolError::BadLength(len as i64));
    }
    let total = 1 + len as usize;
    // No reserve for the announced length here: the caller's buffer grows with the bytes that
    // arrive (crate::wire::read), so a peer cannot make the relay allocate by announcing.
    if buf.len() < total {
        return Ok(None);
    }
    let mut msg = buf.split_to(total);
    msg.advance(5);
    Ok(Some(RawMessage {
        tag,
        body: msg.freeze(),
    }))
}

/// Splits one untagged startup-phase packet (`int32 len`, body) off the front of `buf`.
pub fn split_startup_packet(buf: &mut BytesMut) -> Result<Option<Bytes>, ProtocolError> {
    let Some(&len) = buf.first_chunk::<4>() else {
        return Ok(None);
    };
    let len = i32::from_be_bytes(len);
    if len < 8 || len as usize > MAX_STARTUP_PACKET_LEN {
        return Err(ProtocolError::BadStartupLength);
    }
    let len = len as usize;
    if buf.len() < len {
        return Ok(None);
    }
    let mut pkt = buf.split_to(len);
    pkt.advance(4);
    Ok(Some(pkt.freeze()))
}

/// A cursor over a message body whose getters fail instead of panicking.
pub struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, what }
    }

    fn err(&self) -> ProtocolError {
        ProtocolError::Malformed(self.what)
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if self.buf.len() < n {
            return Err(self.err());
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// The next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtocolError> {
        let Some((head, tail)) = self.buf.split_first_chunk::<N>() else {
            return Err(self.err());
        };
        self.buf = tail;
        Ok(*head)
    }

    pub fn u8(&mut self) -> Result<u8, ProtocolError> {
        let [b] = self.array::<1>()?;
        Ok(b)
    }

    pub fn i16(&mut self) -> Result<i16, ProtocolError> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    pub fn i32(&mut self) -> Result<i32, ProtocolError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    pub fn u32(&mut self) -> Result<u32, ProtocolError> {
        Ok(self.i32()? as u32)
    }

    pub fn i64(&mut self) -> Result<i64, ProtocolError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64, ProtocolError> {
        Ok(self.i64()? as u64)
    }

    /// A NUL-terminated string (lossy UTF-8).
    pub fn cstr(&mut self) -> Result<String, ProtocolError> {
        let end = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.err())?;
        let (head, tail) = self.buf.split_at(end);
        let s = String::from_utf8_lossy(head).into_owned();
        // `tail` starts with the NUL that `position` found.
        self.buf = tail.get(1..).unwrap_or_default();
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_waits_for_whole_message() {
        let mut b = BytesMut::from(&b"Q\0\0\0\x08abc"[..]);
        assert_eq!(split_message(&mut b).unwrap(), None);
        b.extend_from_slice(b"\0");
        let m = split_message(&mut b).unwrap().unwrap();
        assert_eq!(m.tag, b'Q');
        assert_eq!(&m.body[..], b"abc\0");
        assert!(b.is_empty());
    }

    #[test]
    fn split_rejects_bad_lengths() {
        let mut b = BytesMut::from(&b"Q\0\0\0\x02"[..]);
        assert!(split_message(&mut b).is_err());
        let mut b = BytesMut::from(&b"Q\x7f\xff\xff\xff"[..]);
        assert!(split_message(&mut b).is_err());
        let mut b = BytesMut::from(&b"\xff\xff\xff\xff"[..]);
        assert!(split_startup_packet(&mut b).is_err());
    }

    #[test]
    fn reader_never_panics() {
        let mut r = Reader::new(b"\x01\x02", "test");
        assert!(r.i32().is_err());
        assert_eq!(r.i16().unwrap(), 0x0102);
        assert!(r.u8().is_err());
        let mut r = Reader::new(b"abc", "test");
        assert!(r.cstr().is_err());
    }

    mod props {
        use super::*;
        use crate::proto::backend;
        use proptest::prelude::*;

        /// One backend message the relay writes: (tag, body) as it should split back.
        fn message() -> impl Strategy<Value = (u8, Vec<u8>)> {
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..200).prop_map(|p| (b'd', p)),
                "[a-zA-Z_ ]{0,20}".prop_map(|t| {
                    let mut b = t.into_bytes();
                    b.push(0);
                    (b'C', b)
                }),
                ("[a-z_]{1,20}", "[^\\x00]{0,20}").prop_map(|(n, v)| {
                    let mut b = n.into_bytes();
                    b.push(0);
                    b.extend_from_slice(v.as_bytes());
                    b.push(0);
                    (b'S', b)
                }),
                Just((b'c', Vec::new())),
                Just((b'Z', b"I".to_vec())),
            ]
        }

        fn encode(out: &mut BytesMut, tag: u8, body: &[u8]) {
            match tag {
                b'd' => backend::copy_data(out, body),
                b'c' => backend::copy_done(out),
                b'Z' => backend::ready_for_query(out),
                b'C' => {
                    let tag = std::str::from_utf8(&body[..body.len() - 1]).unwrap();
                    backend::command_complete(out, tag);
                }
                b'S' => {
                    let s = std::str::from_utf8(body).unwrap();
                    let mut parts = s.split('\0');
                    let (n, v) = (parts.next().unwrap(), parts.next().unwrap());
                    backend::parameter_status(out, n, v);
                }
                _ => unreachable!(),
            }
        }

        proptest! {
            /// A stream of encoded messages, arriving in pieces cut anywhere, splits back
            /// into the same messages in order: nothing is returned before it is whole, and
            /// nothing is left over.
            #[test]
            fn split_round_trip(
                msgs in proptest::collection::vec(message(), 0..12),
                cuts in proptest::collection::vec(1usize..64, 1..8),
            ) {
                let mut wire = BytesMut::new();
                for (tag, body) in &msgs {
                    encode(&mut wire, *tag, body);
                }
                let wire = wire.freeze();
                let mut buf = BytesMut::new();
                let mut got = Vec::new();
                let mut at = 0;
                let mut i = 0;
                while at < wire.len() {
                    let n = cuts[i % cuts.len()].min(wire.len() - at);
                    buf.extend_from_slice(&wire[at..at + n]);
                    at += n;
                    i += 1;
                    while let Some(m) = split_message(&mut buf).unwrap() {
                        got.push((m.tag, m.body.to_vec()));
                    }
                }
                prop_assert!(buf.is_empty());
                prop_assert_eq!(got, msgs);
            }
        }
    }
}
