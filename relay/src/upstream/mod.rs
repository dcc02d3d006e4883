//! The upstream side: a physical replication client of the primary (or of another relay),
//! feeding the store.
//!
//! ```text
//!  supervise ── connect (hosts in order, target_session_attrs) ── IDENTIFY_SYSTEM, slot,
//!     ▲            history files ── START_REPLICATION at the store's durable end
//!     │                                   │ 'w' ──▶ store writer (bounded queue)
//!     └── backoff + jitter on any error    │ 'k' ──▶ reply at once when asked
//!                                          ◀── 'r' (write=received, flush=durable, apply=min replay)
//! ```
//!
//! Layers of the client, bottom up: [`crate::wire`] (bytes and framing over TCP/TLS, shared with
//! the downstream side), `message` (backend message decoding), [`tls`] (rustls by sslmode, channel-binding hash), `auth` (startup
//! authentication), [`connection`] (queries and the CopyBoth stream), [`target`] (host choice
//! by `target_session_attrs`); [`session`] decides what to stream and when to reconnect.
//!
//! Invariant: the flush position reported upstream is the store's durable position, which only
//! moves after fsync.

mod auth;
pub mod backfill;
pub mod connection;
pub mod error;
mod message;
pub mod session;
pub mod status;
pub mod target;
pub mod tls;

pub use connection::{
    connect, parse_next_timeline, CancelToken, Connection, CopyEvent, QueryEvent, StartOutcome,
};
pub use error::{Rows, ServerError, UpstreamError};
pub use session::{supervise, UpstreamConfig};
pub use status::{UpstreamState, UpstreamStatus};
pub use target::connect_any;
