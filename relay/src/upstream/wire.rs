//! The byte pipe under an upstream connection: a TCP or TLS stream, one read buffer and one
//! write buffer, framed with [`crate::proto::split_message`].
//!
//! Invariants that make the callers cancel-safe:
//! * [`Wire::recv`] has a single await point (`read_buf` into the owned read buffer) and splits
//!   messages only from that buffer, so dropping its future never loses or tears a message.
//! * [`Wire::flush`] sends from the owned write buffer and advances it as bytes go out; a
//!   cancelled flush leaves the unsent tail queued, and the next flush sends it first, so the
//!   peer never sees a torn message.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::error::UpstreamError;
use crate::proto::{split_message, RawMessage};

/// Read-buffer headroom reserved before each read: enough for a 128 kB XLogData chunk to
/// arrive in a few reads without reallocating per message.
const READ_CHUNK: usize = 64 * 1024;

/// A plaintext or TLS connection to the upstream.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

pub(crate) struct Wire {
    stream: Stream,
    rbuf: BytesMut,
    /// Bytes queued for the server; encoders append here, [`Wire::flush`] drains it.
    pub wbuf: BytesMut,
}

impl Wire {
    pub fn new(stream: Stream) -> Self {
        Wire {
            stream,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::new(),
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }

    /// The next whole message from the server. Cancel-safe.
    pub async fn recv(&mut self) -> Result<RawMessage, UpstreamError> {
        loop {
            if let Some(msg) = split_message(&mut self.rbuf)? {
                return Ok(msg);
            }
            if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
                self.rbuf.reserve(READ_CHUNK);
            }
            let n = self
                .stream
                .read_buf(&mut self.rbuf)
                .await
                .map_err(|e| UpstreamError::io("could not receive data from server", e))?;
            if n == 0 {
                return Err(UpstreamError::Closed);
            }
        }
    }

    /// Sends everything queued in the write buffer and flushes the stream. A cancelled flush
    /// keeps the unsent tail queued (see the module docs).
    pub async fn flush(&mut self) -> Result<(), UpstreamError> {
        let send_err = |e| UpstreamError::io("could not send data to server", e);
        while self.wbuf.has_remaining() {
            let n = self
                .stream
                .write_buf(&mut self.wbuf)
                .await
                .map_err(send_err)?;
            if n == 0 {
                return Err(UpstreamError::Closed);
            }
        }
        self.stream.flush().await.map_err(send_err)
    }

    /// Best-effort close: flushes what is queued and shuts the stream down (TLS close_notify).
    pub async fn shutdown(&mut self) {
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }
}
