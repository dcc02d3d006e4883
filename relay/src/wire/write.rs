//! Cancel-safe sending of an output buffer: encoders append whole messages to the buffer (or
//! queue a payload they hold as [`Bytes`] after it, [`MsgWriter::queue`], so that it is written
//! from where it is, not copied), and [`send`] writes it out, advancing it as bytes go. A
//! cancelled send leaves the unsent tail queued; the next send writes it first, so the peer
//! never sees a torn message.
//!
//! Order: the queued pieces go first, in order, then the buffer. Queuing a payload moves
//! what is in the buffer to the queue first, so whatever is appended to the buffer later goes
//! after the payload: bytes reach the peer in the order they were encoded.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Most pieces handed to one vectored write.
const MAX_SLICES: usize = 16;

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

/// Writes the queued pieces and then `buf` to `w` with vectored writes (one system call for a
/// frame header and its payload on a plain socket), advancing them as bytes go, and flushes
/// `w`. Cancel-safe: each write is one poll of `poll_write_vectored`, and what it took is
/// removed before the next.
pub async fn send_queued<W: AsyncWrite + Unpin>(
    w: &mut W,
    queue: &mut VecDeque<Bytes>,
    buf: &mut BytesMut,
) -> std::io::Result<()> {
    loop {
        while queue.front().is_some_and(Bytes::is_empty) {
            queue.pop_front();
        }
        if queue.is_empty() {
            return send(w, buf).await;
        }
        let n = {
            let mut slices: [IoSlice<'_>; MAX_SLICES] = [IoSlice::new(&[]); MAX_SLICES];
            let pieces = queue
                .iter()
                .map(|b| &b[..])
                .chain(std::iter::once(&buf[..]).filter(|b| !b.is_empty()));
            let mut k = 0;
            for (slot, piece) in slices.iter_mut().zip(pieces) {
                *slot = IoSlice::new(piece);
                k += 1;
            }
            w.write_vectored(slices.get(..k).unwrap_or_default())
                .await?
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        advance(queue, buf, n);
    }
}

/// Removes the first `n` bytes of the queue-then-buffer sequence.
fn advance(queue: &mut VecDeque<Bytes>, buf: &mut BytesMut, mut n: usize) {
    while n > 0 {
        let Some(front) = queue.front_mut() else {
            buf.advance(n.min(buf.len()));
            return;
        };
        if n >= front.len() {
            n -= front.len();
            queue.pop_front();
        } else {
            front.advance(n);
            return;
        }
    }
}

/// A write half (or any writer) with its output buffer: what a task that only writes holds.
pub struct MsgWriter<W> {
    inner: W,
    /// Bytes queued for the peer; encoders append here, [`MsgWriter::flush`] drains it.
    pub out: BytesMut,
    /// Pieces queued before `out` ([`MsgWriter::queue`]).
    queued: VecDeque<Bytes>,
    /// The most bytes `out` held at a flush since it was last given back: its allocation is at
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
            queued: VecDeque::new(),
            peak,
        }
    }

    /// Queues `payload` after everything encoded so far, without copying it.
    pub fn queue(&mut self, payload: Bytes) {
        if !self.out.is_empty() {
            let head = self.out.split().freeze();
            self.queued.push_back(head);
        }
        self.queued.push_back(payload);
    }

    /// Bytes not sent yet.
    pub fn pending(&self) -> usize {
        self.queued.iter().map(Bytes::len).sum::<usize>() + self.out.len()
    }

    /// Sends everything queued and flushes. Cancel-safe (see the module docs).
    pub async fn flush(&mut self) -> std::io::Result<()> {
        self.peak = self.peak.max(self.out.len());
        send_queued(&mut self.inner, &mut self.queued, &mut self.out).await
    }

    /// Gives back an output buffer that a large message grew past `keep` bytes, once all of it
    /// was sent; `true` when it did. For a writer about to go idle, never per message (the next
    /// large message allocates it again), so memory follows what is being sent, not the
    /// largest message ever sent on the connection.
    pub fn shrink_idle(&mut self, keep: usize) -> bool {
        if !self.out.is_empty() || !self.queued.is_empty() || self.peak <= keep {
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

    /// A buffer a large message grew is given back once sent (and only then); a small one is
    /// kept.
    #[tokio::test]
    async fn a_grown_buffer_is_given_back_when_idle() {
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let mut w = MsgWriter::new(a, BytesMut::with_capacity(512));
        w.out.extend_from_slice(b"small");
        w.flush().await.unwrap();
        assert!(!w.shrink_idle(1024), "a small buffer is kept");
        w.out.extend_from_slice(&[7u8; 64 * 1024]);
        assert!(
            !w.shrink_idle(1024),
            "nothing goes while unsent bytes are in it"
        );
        w.flush().await.unwrap();
        assert!(w.shrink_idle(1024));
        assert!(w.out.capacity() < 1024);
        assert!(!w.shrink_idle(1024), "once");
        let mut got = vec![0u8; 5 + 64 * 1024];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..5], b"small");
    }

    #[tokio::test]
    async fn queued_payloads_go_in_encoding_order() {
        // A small pipe: every write is partial, so the advancing over pieces is exercised.
        let (a, mut b) = tokio::io::duplex(5);
        let mut w = MsgWriter::new(a, BytesMut::new());
        w.out.extend_from_slice(b"head1");
        w.queue(Bytes::from_static(b"payload-one"));
        w.queue(Bytes::new());
        w.out.extend_from_slice(b"head2");
        w.queue(Bytes::from_static(b"payload-two"));
        w.out.extend_from_slice(b"tail");
        assert_eq!(w.pending(), 36);
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; 36];
            b.read_exact(&mut got).await.unwrap();
            got
        });
        w.flush().await.unwrap();
        assert_eq!(w.pending(), 0);
        assert_eq!(
            reader.await.unwrap(),
            b"head1payload-onehead2payload-twotail"
        );
    }

    #[tokio::test]
    async fn a_cancelled_send_keeps_the_unsent_rest() {
        let (a, mut b) = tokio::io::duplex(4);
        let mut w = MsgWriter::new(a, BytesMut::new());
        w.out.extend_from_slice(b"hdr:");
        w.queue(Bytes::from_static(b"0123456789"));
        // The pipe takes 4 bytes and then blocks: the send is dropped while pending.
        let r = tokio::time::timeout(std::time::Duration::from_millis(20), w.flush()).await;
        assert!(r.is_err());
        assert_eq!(w.pending(), 10);
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; 14];
            b.read_exact(&mut got).await.unwrap();
            got
        });
        w.flush().await.unwrap();
        assert_eq!(reader.await.unwrap(), b"hdr:0123456789");
    }
}
