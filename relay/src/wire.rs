//! Message framing over an async byte stream: the one place where sockets meet [`crate::proto`].
//!
//! Reads are cancel-safe: bytes read so far stay in the buffer owned by [`MsgReader`], so a
//! read can sit in a `tokio::select!` beside timers and channels without losing data.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::proto::{self, ProtocolError, RawMessage};

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("connection closed")]
    Closed,
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// The read half of a connection with its buffer.
pub struct MsgReader<R> {
    inner: R,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> MsgReader<R> {
    pub fn new(inner: R) -> Self {
        MsgReader {
            inner,
            buf: BytesMut::with_capacity(8192),
        }
    }

    /// Bytes received but not consumed yet (used to detect data sent ahead of a TLS handshake).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    pub fn into_parts(self) -> (R, BytesMut) {
        (self.inner, self.buf)
    }

    async fn fill(&mut self) -> Result<(), WireError> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(8192);
        }
        let n = self.inner.read_buf(&mut self.buf).await?;
        if n == 0 {
            return Err(WireError::Closed);
        }
        Ok(())
    }

    /// Next typed message. Cancel-safe.
    pub async fn read_message(&mut self) -> Result<RawMessage, WireError> {
        loop {
            if let Some(m) = proto::split_message(&mut self.buf)? {
                return Ok(m);
            }
            self.fill().await?;
        }
    }

    /// Next untagged startup-phase packet body. Cancel-safe.
    pub async fn read_startup_packet(&mut self) -> Result<Bytes, WireError> {
        loop {
            if let Some(p) = proto::split_startup_packet(&mut self.buf)? {
                return Ok(p);
            }
            self.fill().await?;
        }
    }
}

/// Writes `buf` whole and flushes, leaving `buf` empty for reuse.
pub async fn write_all<W: AsyncWrite + Unpin>(
    w: &mut W,
    buf: &mut BytesMut,
) -> std::io::Result<()> {
    if !buf.is_empty() {
        w.write_all(buf).await?;
        buf.clear();
    }
    w.flush().await
}
