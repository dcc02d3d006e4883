//! The downstream side: a walsender for standbys, pg_receivewal and other relays.
//!
//! ```text
//!  listener ──accept──▶ session (startup, auth, command loop) ──▶ commands ──START_REPLICATION──▶ walsender
//!                                                                                 ▲        │ 'w' / 'k'
//!                          store (servable end: one watch; tail; segments) ───────┘        ▼
//!                                                          lag::Registry ◀── replies ('r', 'h') task
//! ```
//!
//! Files, bottom up, each importing only those below it:
//! - [`error`]: how a session ends ([`SessionEnd`]) and store errors as SQLSTATEs;
//! - [`context`]: what all sessions share; [`client`]: who the client is;
//! - [`connection`]: the framed connection; [`auth`]: who may connect (on [`crate::access`]);
//! - [`walsender`]: the CopyBoth stream; [`commands`]: the replication commands;
//! - [`session`]: startup and the command loop; [`listener`]: the accept loop.
//!
//! Each connection is one task in a tracing span with `pid` and `peer` (and `application_name`,
//! `user` once known). A bad client ends its own connection only: every error path ends in
//! a PostgreSQL ErrorResponse or a closed socket for that client, never in a panic or a stall
//! of others.

pub mod auth;
pub mod auth_query;
pub mod client;
pub mod commands;
pub mod connection;
pub mod context;
pub mod error;
pub mod listener;
pub mod session;
pub mod walsender;

pub use context::Context;
pub use error::SessionEnd;
pub use listener::serve;
