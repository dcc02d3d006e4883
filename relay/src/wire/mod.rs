//! The byte pipe under both sides of the relay: one framed-stream type for the upstream client
//! and the downstream server, the one place where sockets meet [`crate::proto`].
//!
//! - [`stream`]: the transport, plain TCP or TLS (client or server side), and its halves;
//! - [`read`]: the cancel-safe message reader and its buffer;
//! - [`mod@write`]: the cancel-safe sender of an output buffer;
//! - [`framed`]: a whole connection (reader buffer + output buffer over one [`Stream`]), which
//!   splits into a [`MsgReader`] and a [`MsgWriter`] when reading and writing go to different
//!   tasks (the downstream walsender).
//!
//! Invariants that make callers cancel-safe:
//! - a read has a single await point (`read_buf` into the owned buffer) and messages are split
//!   only from that buffer, so dropping its future never loses or tears a message;
//! - a send writes from the owned output buffer (and the payloads queued beside it) and
//!   advances it as bytes go out, so a cancelled send leaves the unsent tail queued and the
//!   next send starts with it;
//! - the read buffer grows with the bytes that arrived, never with the length a peer announces.

pub mod framed;
pub mod read;
pub mod stream;
pub mod write;

pub use framed::Framed;
pub use read::{MsgReader, ReadBuffer, WireError};
pub use stream::{ReadHalf, Stream, WriteHalf};
pub use write::MsgWriter;
