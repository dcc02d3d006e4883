//! Cancel-safe message reading: a buffer owned across reads, filled from the transport and
//! split into messages by [`crate::proto`].
//!
//! Bytes read so far stay in [`ReadBuffer`], so a read can sit in a `tokio::select!` beside
//! timers and channels without losing data: the one await point is `read_buf` into the owned
//! buffer, and messages are split only from it.
//!
//! Memory follows what arrived, never what was announced: before each read the buffer keeps
//! room for one `chunk`, and it grows (amortised doubling) only as bytes come in. A peer that
//! announces a large message and sends nothing more costs one chunk, not the announced length.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::proto::{self, ProtocolError, RawMessage};

/// Why no message could be read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The peer closed the connection (end of stream).
    #[error("connection closed")]
    Closed,
    /// The bytes do not frame as a message (bad length).
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The read buffer of one connection.
#[derive(Debug)]
pub struct ReadBuffer {
    buf: BytesMut,
    chunk: usize,
    /// Longest message accepted (its length word included).
    max_message: usize,
}

impl ReadBuffer {
    /// A buffer that reads in steps of about `chunk` bytes (it starts with that capacity).
    pub fn new(chunk: usize) -> Self {
        ReadBuffer {
            buf: BytesMut::with_capacity(chunk),
            chunk,
            max_message: proto::MAX_MESSAGE_LEN,
        }
    }

    /// Refuses messages announcing more than `max` bytes (length word included) with
    /// [`ProtocolError::BadLength`], for a side whose peer only sends small ones.
    pub fn set_max_message(&mut self, max: usize) {
        self.max_message = max;
    }

    /// Bytes received but not consumed yet.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// One read from `r` into the buffer. Cancel-safe: `read_buf` either appended bytes or
    /// did nothing.
    async fn fill<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> Result<(), WireError> {
        if self.buf.capacity() - self.buf.len() < self.chunk / 4 {
            self.buf.reserve(self.chunk);
        }
        let n = r.read_buf(&mut self.buf).await?;
        if n == 0 {
            return Err(WireError::Closed);
        }
        Ok(())
    }

    /// The next typed message read from `r`. Cancel-safe.
    pub async fn read_message<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
    ) -> Result<RawMessage, WireError> {
        loop {
            if let Some(m) = proto::split_message_max(&mut self.buf, self.max_message)? {
                return Ok(m);
            }
            self.fill(r).await?;
        }
    }

    /// The next untagged startup-phase packet body read from `r`. Cancel-safe.
    pub async fn read_startup_packet<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
    ) -> Result<Bytes, WireError> {
        loop {
            if let Some(p) = proto::split_startup_packet(&mut self.buf)? {
                return Ok(p);
            }
            self.fill(r).await?;
        }
    }

    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

/// A read half (or any reader) with its buffer: what a task that only reads holds.
pub struct MsgReader<R> {
    inner: R,
    buf: ReadBuffer,
}

impl<R: AsyncRead + Unpin> MsgReader<R> {
    pub fn new(inner: R, buf: ReadBuffer) -> Self {
        MsgReader { inner, buf }
    }

    /// Bytes received but not consumed yet.
    pub fn buffered(&self) -> usize {
        self.buf.buffered()
    }

    /// See [`ReadBuffer::set_max_message`].
    pub fn set_max_message(&mut self, max: usize) {
        self.buf.set_max_message(max);
    }

    /// Next typed message. Cancel-safe.
    pub async fn read_message(&mut self) -> Result<RawMessage, WireError> {
        self.buf.read_message(&mut self.inner).await
    }

    /// Next untagged startup-phase packet body. Cancel-safe.
    pub async fn read_startup_packet(&mut self) -> Result<Bytes, WireError> {
        self.buf.read_startup_packet(&mut self.inner).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn an_announced_length_is_not_reserved() {
        // 'd' announcing 60 MB, then nothing: the buffer stays near one chunk.
        let header: &[u8] = &[b'd', 0x03, 0xC0, 0x00, 0x00, b'x'];
        let mut rd = header;
        let mut buf = ReadBuffer::new(8192);
        assert!(matches!(
            buf.read_message(&mut rd).await,
            Err(WireError::Closed)
        ));
        assert_eq!(buf.buffered(), header.len());
        assert!(buf.capacity() < 64 * 1024, "capacity {}", buf.capacity());
    }

    #[tokio::test]
    async fn a_message_over_the_limit_is_refused() {
        let mut ok: &[u8] = b"Q\0\0\0\x08abc\0";
        let mut buf = ReadBuffer::new(64);
        buf.set_max_message(8);
        assert_eq!(buf.read_message(&mut ok).await.unwrap().tag, b'Q');
        let mut big: &[u8] = b"Q\0\0\0\x09abcd\0";
        assert!(matches!(
            buf.read_message(&mut big).await,
            Err(WireError::Protocol(ProtocolError::BadLength(9)))
        ));
    }

    #[tokio::test]
    async fn a_cancelled_read_keeps_its_bytes() {
        let (client, server) = tokio::io::duplex(64);
        let mut client = client;
        let mut rd = MsgReader::new(server, ReadBuffer::new(16));
        // Half a message, then the read is cancelled by a timeout.
        client.write_all(b"Q\0\0\0\x08ab").await.unwrap();
        let r = tokio::time::timeout(Duration::from_millis(20), rd.read_message()).await;
        assert!(r.is_err());
        client.write_all(b"c\0").await.unwrap();
        let m = rd.read_message().await.unwrap();
        assert_eq!((m.tag, &m.body[..]), (b'Q', &b"abc\0"[..]));
        // Messages larger than the chunk arrive whole.
        let body = vec![7u8; 1000];
        let mut msg = vec![b'd'];
        msg.extend_from_slice(&(1004u32).to_be_bytes());
        msg.extend_from_slice(&body);
        let writer = tokio::spawn(async move {
            client.write_all(&msg).await.unwrap();
            client
        });
        let m = rd.read_message().await.unwrap();
        assert_eq!(m.body.len(), 1000);
        drop(writer.await.unwrap());
        assert!(matches!(rd.read_message().await, Err(WireError::Closed)));
    }
}
