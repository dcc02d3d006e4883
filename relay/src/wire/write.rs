//! Cancel-safe sending of an output buffer: encoders append whole messages to the buffer, and
//! [`send`] writes it out, advancing it as bytes go. A cancelled send leaves the unsent tail
//! queued; the next send writes it first, so the peer never sees a torn message.
//!
//! Large payloads need not be copied into the buffer: [`MsgWriter::queue_bytes`] queues a
//! [`Bytes`] (a walsender's WAL, shared with the in-memory tail) after what the buffer holds, and
//! [`MsgWriter::flush`] writes the queue with vectored writes (header and payload in one
//! `writev`). So the output buffer stays small (message headers, keepalives, command results)
//! and grows on demand only for a large message encoded into it; [`MsgWriter::shrink_idle`]
//! gives a grown one back once everything was sent, for a writer that goes idle: memory follows
//! what is being sent, not the largest message ever sent on the connection.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};
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

/// Most pieces handed to one vectored write (a header and its payload are two).
const MAX_IOV: usize = 16;

/// A write half (or any writer) with its output buffer: what a task that only writes holds.
pub struct MsgWriter<W> {
    inner: W,
    /// Bytes queued for the peer after everything in `chain`; encoders append here,
    /// [`MsgWriter::flush`] drains it.
    pub out: BytesMut,
    /// Bytes queued before those in `out`, in order: earlier contents of `out` and payloads
    /// queued whole ([`MsgWriter::queue_bytes`]).
    chain: VecDeque<Bytes>,
    /// The most bytes `out` held at a flush since it was last given back: its capacity is at
    /// least this (once drained, `out.capacity()` no longer tells, as sending advances the
    /// buffer's start through its allocation).
    peak: usize,
}

impl<W: AsyncWrite + Unpin> MsgWriter<W> {
    pub fn new(inner: W, out: BytesMut) -> Self {
        let peak = out.capacity();
        MsgWriter {
            inner,
            out,
            chain: VecDeque::new(),
            peak,
        }
    }

    /// Queues `payload` after everything encoded so far, without copying it; what is encoded
    /// into [`MsgWriter::out`] from then on goes after it.
    pub fn queue_bytes(&mut self, payload: Bytes) {
        if payload.is_empty() {
            return;
        }
        if !self.out.is_empty() {
            // The same allocation: `out` keeps the room after it.
            self.chain.push_back(self.out.split().freeze());
        }
        self.chain.push_back(payload);
    }

    /// Bytes queued and not sent yet.
    pub fn queued(&self) -> usize {
        self.chain.iter().map(Bytes::len).sum::<usize>() + self.out.len()
    }

    /// Sends everything queued and flushes. Cancel-safe (see the module docs): the queue
    /// advances by what each write took, and nothing else.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        self.peak = self.peak.max(self.out.len());
        while !self.chain.is_empty() {
            let n = {
                let mut iov = [IoSlice::new(&[]); MAX_IOV];
                let mut k = 0;
                for (slot, piece) in iov.iter_mut().zip(
                    self.chain
                        .iter()
                        .map(|b| &b[..])
                        .chain(std::iter::once(&self.out[..])),
                ) {
                    *slot = IoSlice::new(piece);
                    k += 1;
                }
                self.inner
                    .write_vectored(iov.get(..k).unwrap_or_default())
                    .await?
            };
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            self.advance(n);
        }
        send(&mut self.inner, &mut self.out).await
    }

    /// Drops the first `n` bytes queued (written).
    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            match self.chain.front_mut() {
                Some(front) if front.len() <= n => {
                    n -= front.len();
                    self.chain.pop_front();
                }
                Some(front) => {
                    front.advance(n);
                    return;
                }
                None => {
                    self.out.advance(n.min(self.out.len()));
                    return;
                }
            }
        }
    }

    /// Gives the output buffer's memory back when everything queued was sent and it had grown
    /// past `keep` bytes; `true` if it did. For a writer about to wait: a buffer given back is
    /// allocated again (small, then as large as needed) by the next message, so calling this
    /// per message would cost an allocation each time, calling it when going idle costs none
    /// while busy.
    pub fn shrink_idle(&mut self, keep: usize) -> bool {
        if !self.out.is_empty() || !self.chain.is_empty() || self.peak <= keep {
            return false;
        }
        self.out = BytesMut::new();
        self.peak = 0;
        true
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

    #[tokio::test]
    async fn queued_payloads_go_out_in_order_and_survive_a_cancelled_flush() {
        let (a, mut b) = tokio::io::duplex(3);
        let mut w = MsgWriter::new(a, BytesMut::new());
        w.out.extend_from_slice(b"abc");
        w.queue_bytes(Bytes::from_static(b"DEFG"));
        w.out.extend_from_slice(b"hi");
        w.queue_bytes(Bytes::from_static(b"JK"));
        w.queue_bytes(Bytes::new());
        w.out.extend_from_slice(b"l");
        assert_eq!(w.queued(), 12);
        // Nobody reads: the flush takes 3 bytes and waits; cancelled, the rest stays queued.
        let r = tokio::time::timeout(std::time::Duration::from_millis(20), w.flush()).await;
        assert!(r.is_err());
        assert_eq!(w.queued(), 9);
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; 12];
            b.read_exact(&mut got).await.unwrap();
            got
        });
        w.flush().await.unwrap();
        assert_eq!(w.queued(), 0);
        assert_eq!(reader.await.unwrap(), b"abcDEFGhiJKl");
        // Sent through the chain, the buffer never grew: nothing to give back.
        assert!(!w.shrink_idle(1024));
    }

    #[tokio::test]
    async fn a_grown_buffer_is_given_back_once_sent() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut w = MsgWriter::new(a, BytesMut::with_capacity(64));
        // Small messages: nothing to give back.
        w.out.extend_from_slice(&[1; 32]);
        w.flush().await.unwrap();
        assert!(!w.shrink_idle(1024));
        // A large one grows the buffer; queued, it is kept.
        w.out.extend_from_slice(&[2; 100_000]);
        assert!(w.out.capacity() >= 100_000);
        assert!(!w.shrink_idle(1024));
        w.flush().await.unwrap();
        // Sent: given back, once.
        assert!(w.shrink_idle(1024));
        assert_eq!(w.out.capacity(), 0);
        assert!(!w.shrink_idle(1024));
        // And it grows again on demand.
        w.out.extend_from_slice(&[3; 4]);
        w.flush().await.unwrap();
        let mut got = vec![0u8; 100_036];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(got.get(100_032..), Some(&[3u8; 4][..]));
    }
}
