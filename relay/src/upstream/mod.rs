//! The relay's client side toward its upstream (the primary, a standby, or another relay): one
//! physical replication connection at a time, chosen from the conninfo's host list.
//!
//! Layers, bottom up: [`wire`] (bytes and framing over TCP/TLS), [`message`] (backend message
//! decoding), [`tls`] (rustls setup by sslmode, channel-binding hash), [`auth`] (startup
//! authentication), [`connection`] (the [`Connection`] API: queries and the CopyBoth stream),
//! [`target`] (host choice by `target_session_attrs`). What to stream and when to reconnect is
//! decided above this module.

mod auth;
pub mod connection;
pub mod error;
mod message;
pub mod target;
pub mod tls;
mod wire;

pub use connection::{connect, parse_next_timeline, Connection, CopyEvent, StartOutcome};
pub use error::{Rows, ServerError, UpstreamError};
pub use target::connect_any;
