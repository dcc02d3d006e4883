//! The framed connection to one downstream client, on [`crate::wire`]: the read side (a
//! cancel-safe message reader, handed to a walsender's reply task while it streams) and the
//! write side with the output buffer that encoders append to. The startup phase runs on a
//! whole [`Framed`] (plain, or TLS after an SSLRequest or direct TLS) and then becomes a
//! [`Conn`] ([`Conn::from_framed`]): nothing above it sees the socket.
//!
//! Invariant: what is encoded into [`Conn::out`] or queued ([`Conn::queue`]) goes to the
//! client only through [`Conn::flush`], whole and in the order it was encoded.

use bytes::{Bytes, BytesMut};

use super::error::SessionEnd;
use crate::proto::backend;
use crate::proto::error::{PgError, Severity};
use crate::wire::{Framed, MsgReader, MsgWriter, ReadHalf, Stream, WriteHalf};

/// Read-buffer step: client messages are small (a standby's reply is 34 bytes, hot-standby
/// feedback 21, a replication command a few hundred), so connections stay cheap (each
/// connection's buffer is about this large for as long as it lives); a larger message grows
/// the buffer as it arrives.
pub const READ_CHUNK: usize = 2048;
/// Longest message a downstream client may send (length word included): replication commands
/// are a few hundred bytes, a standby's reply 34, hot-standby feedback 21; PostgreSQL's limit for
/// messages other than queries is 10000 bytes. Past it the client gets `08P01`.
pub const MAX_CLIENT_MESSAGE: usize = 16 * 1024;
/// Initial room in the output buffer, and the most it keeps while idle ([`Conn::shrink_idle`]):
/// enough for the startup replies, a keepalive or a `w` header (the WAL itself is queued
/// beside it, not copied in); a larger message grows it on demand.
const OUT_CAPACITY: usize = 2048;

/// The connection halves and the output buffer.
pub struct Conn {
    /// `None` only while a walsender's reply task holds it.
    pub rd: Option<MsgReader<ReadHalf>>,
    wr: MsgWriter<WriteHalf>,
}

impl Conn {
    /// A connection over `stream`, before anything was read.
    pub fn new(stream: Stream) -> Self {
        Conn::from_framed(Framed::new(stream, READ_CHUNK))
    }

    /// The connection after its startup phase (bytes already read or queued stay).
    pub fn from_framed(mut framed: Framed) -> Self {
        framed.out().reserve(OUT_CAPACITY);
        let (mut rd, wr) = framed.into_split();
        rd.set_max_message(MAX_CLIENT_MESSAGE);
        Conn { rd: Some(rd), wr }
    }

    pub fn reader(&mut self) -> Result<&mut MsgReader<ReadHalf>, SessionEnd> {
        self.rd.as_mut().ok_or(SessionEnd::ClientGone)
    }

    /// The output buffer, for encoders; [`Conn::flush`] sends it.
    pub fn out(&mut self) -> &mut BytesMut {
        &mut self.wr.out
    }

    /// Queues `payload` after what is encoded so far, sent from where it is (no copy) on a
    /// plain connection; a TLS connection copies it into its records anyway.
    pub fn queue(&mut self, payload: Bytes) {
        self.wr.queue(payload);
    }

    /// Gives back an output buffer that grew past [`OUT_CAPACITY`] (a large result set or
    /// error), once all of it was sent: for a walsender about to wait, so that an idle
    /// connection holds only small buffers. Not per message.
    pub fn shrink_idle(&mut self) {
        self.wr.shrink_idle(OUT_CAPACITY);
    }

    /// Bytes encoded or queued and not sent yet.
    pub fn pending(&self) -> usize {
        self.wr.pending()
    }

    pub async fn flush(&mut self) -> std::io::Result<()> {
        self.wr.flush().await
    }

    /// Sends an ErrorResponse (and ReadyForQuery after an ERROR).
    pub async fn send_error(&mut self, e: &PgError) -> std::io::Result<()> {
        e.encode(self.out());
        if e.severity != Severity::Fatal {
            backend::ready_for_query(self.out());
        }
        self.flush().await
    }
}
