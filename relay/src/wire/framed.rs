//! A whole framed connection: one [`Stream`], its read buffer and its output buffer. The
//! upstream client uses it as is; the downstream splits it ([`Framed::into_split`]) so that a
//! walsender's reply reader and its sender run apart.
//!
//! Cancel safety is that of [`super::read`] and [`super::write`]: [`Framed::recv`] loses no
//! byte when dropped, and a dropped [`Framed::flush`] leaves the unsent tail queued.

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;

use super::read::{MsgReader, ReadBuffer, WireError};
use super::stream::{ReadHalf, Stream, WriteHalf};
use super::write::{self, MsgWriter};
use crate::proto::RawMessage;

pub struct Framed {
    stream: Stream,
    rbuf: ReadBuffer,
    /// Bytes queued for the peer; encoders append here, [`Framed::flush`] drains it.
    out: BytesMut,
}

impl Framed {
    /// A connection over `stream` whose reads go in steps of about `read_chunk` bytes.
    pub fn new(stream: Stream, read_chunk: usize) -> Self {
        Framed {
            stream,
            rbuf: ReadBuffer::new(read_chunk),
            out: BytesMut::new(),
        }
    }

    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    /// Bytes received but not consumed yet.
    pub fn buffered(&self) -> usize {
        self.rbuf.buffered()
    }

    /// The transport, dropping both buffers: for a TLS upgrade after SSLRequest, when nothing
    /// is buffered (check [`Framed::buffered`]) and everything queued was flushed.
    pub fn into_stream(self) -> Stream {
        self.stream
    }

    /// The output buffer, for encoders.
    pub fn out(&mut self) -> &mut BytesMut {
        &mut self.out
    }

    /// The next whole message from the peer. Cancel-safe.
    pub async fn recv(&mut self) -> Result<RawMessage, WireError> {
        self.rbuf.read_message(&mut self.stream).await
    }

    /// The next untagged startup-phase packet body. Cancel-safe.
    pub async fn recv_startup_packet(&mut self) -> Result<Bytes, WireError> {
        self.rbuf.read_startup_packet(&mut self.stream).await
    }

    /// Sends everything queued and flushes the stream. Cancel-safe.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        write::send(&mut self.stream, &mut self.out).await
    }

    /// Best-effort close: flushes what is queued and shuts the stream down (TLS close_notify).
    pub async fn shutdown(&mut self) {
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }

    /// The reading and the writing side, each with its buffer (bytes already received or
    /// queued stay with them).
    pub fn into_split(self) -> (MsgReader<ReadHalf>, MsgWriter<WriteHalf>) {
        let (r, w) = self.stream.into_split();
        (MsgReader::new(r, self.rbuf), MsgWriter::new(w, self.out))
    }
}
