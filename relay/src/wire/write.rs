//! Cancel-safe sending of an output buffer: encoders append whole messages to the buffer, and
//! [`send`] writes it out, advancing it as bytes go. A cancelled send leaves the unsent tail
//! queued; the next send writes it first, so the peer never sees a torn message.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Writes everything in `buf` to `w` and flushes `w`, leaving `buf` empty for reuse. A write
/// that takes nothing is reported as `WriteZero` (the peer is gone).
pub async fn send<W: AsyncWrite + Unpin>(w: &mut W, buf: &mut BytesMut) -> std::io::Result<()> {
    while buf.has_remaining() {
        let n = w.write_buf(buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
    }
    w.flush().await
}

/// A write half (or any writer) with its output buffer: what a task that only writes holds.
pub struct MsgWriter<W> {
    inner: W,
    /// Bytes queued for the peer; encoders append here, [`MsgWriter::flush`] drains it.
    pub out: BytesMut,
}

impl<W: AsyncWrite + Unpin> MsgWriter<W> {
    pub fn new(inner: W, out: BytesMut) -> Self {
        MsgWriter { inner, out }
    }

    /// Sends everything queued and flushes. Cancel-safe (see the module docs).
    pub async fn flush(&mut self) -> std::io::Result<()> {
        send(&mut self.inner, &mut self.out).await
    }

    /// Best-effort close: sends what is queued and shuts the writer down.
    pub async fn shutdown(&mut self) {
        let _ = self.flush().await;
        let _ = self.inner.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn sends_all_and_empties_the_buffer() {
        let (a, mut b) = tokio::io::duplex(8);
        let mut w = MsgWriter::new(a, BytesMut::new());
        w.out.extend_from_slice(b"0123456789abcdef");
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; 16];
            b.read_exact(&mut got).await.unwrap();
            got
        });
        w.flush().await.unwrap();
        assert!(w.out.is_empty());
        assert_eq!(reader.await.unwrap(), b"0123456789abcdef");
    }
}
