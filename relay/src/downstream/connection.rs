//! The framed connection to one downstream client: the read half (with its cancel-safe message
//! reader), the write half, and the output buffer that encoders append to. This is where TLS
//! goes when downstream TLS arrives: nothing above it sees the socket.
//!
//! Invariant: what is encoded into [`Conn::out`] goes to the client only through
//! [`Conn::flush`], whole and in order.

use bytes::BytesMut;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::error::SessionEnd;
use crate::proto::backend;
use crate::proto::error::{PgError, Severity};
use crate::wire::{self, MsgReader};

/// The connection halves and the output buffer.
pub struct Conn {
    /// `None` only while a walsender's reply task holds it.
    pub rd: Option<MsgReader<OwnedReadHalf>>,
    pub wr: OwnedWriteHalf,
    pub out: BytesMut,
}

impl Conn {
    pub fn new(socket: TcpStream) -> Self {
        let (rd, wr) = socket.into_split();
        Conn {
            rd: Some(MsgReader::new(rd)),
            wr,
            out: BytesMut::with_capacity(8192),
        }
    }

    pub fn reader(&mut self) -> Result<&mut MsgReader<OwnedReadHalf>, SessionEnd> {
        self.rd.as_mut().ok_or(SessionEnd::ClientGone)
    }

    pub async fn flush(&mut self) -> std::io::Result<()> {
        wire::write_all(&mut self.wr, &mut self.out).await
    }

    /// Sends an ErrorResponse (and ReadyForQuery after an ERROR).
    pub async fn send_error(&mut self, e: &PgError) -> std::io::Result<()> {
        e.encode(&mut self.out);
        if e.severity != Severity::Fatal {
            backend::ready_for_query(&mut self.out);
        }
        self.flush().await
    }
}
