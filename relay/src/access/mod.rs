//! Who may connect downstream, and how they prove it: PostgreSQL's `pg_hba.conf` rules
//! ([`hba`]), a PgBouncer-style file of SCRAM verifiers ([`users`]), the server side of
//! SCRAM-SHA-256 and SCRAM-SHA-256-PLUS ([`scram`]) and the downstream TLS identity ([`tls`]).
//!
//! Everything here is sans-IO except loading files: the downstream authentication step feeds
//! it addresses, user names and message bodies and gets back decisions, payloads to send and
//! PostgreSQL-worded errors ([`crate::proto::error::PgError`]). Parsers are plain functions of
//! text or bytes (`HbaRules::parse`, `UserList::parse`, `ScramVerifier::parse`,
//! `ScramExchange::step`, `parse_sasl_initial_response`) so fuzz targets are one-liners.
//!
//! The order a connection goes through, as PostgreSQL's `ClientAuthentication`:
//! 1. [`hba::HbaRules::decide`] with the peer and local address, TLS on/off and the startup
//!    user: `Trust` (send AuthenticationOk), `Reject`/`NoMatch` (send
//!    [`hba::Decision::refusal`], FATAL 28000), or `Scram`;
//! 2. for `Scram`: advertise [`scram::mechanisms`] for the connection's
//!    [`scram::Binding`] (from [`tls::ServerTls::binding`] over TLS), then run a
//!    [`scram::ScramExchange`] built from [`users::UserList::lookup`]; every failure that is
//!    about the password, including an unknown user, ends in the same FATAL 28P01
//!    `password authentication failed for user "…"`.
//!
//! Without `--hba-file` the rules are [`hba::HbaRules::loopback_default`]; without
//! `--auth-file` the user list is [`users::UserList::empty`]. With `--auth-query`, a user the
//! file does not list is looked up on the upstream ([`query`]: the query text, its rows, the
//! per-user cache; the downstream authentication step runs it). `walrelay passwd` prints
//! [`users::passwd_line`]. Every loader is callable again for SIGHUP and returns a new value
//! (the caller keeps the old one when it fails). Fuzz targets for the parsers live in `fuzz/`.
//!
//! Invariants:
//! * No password, verifier, key or proof is ever logged or shown by `Debug`: the types that
//!   hold them ([`users::ScramVerifier`], [`users::UserList`], [`scram::ScramExchange`],
//!   [`scram::MockKey`]) implement `Debug` by hand and print only non-secret fields. Errors
//!   never quote a secret either (a malformed verifier is reported by user and line only).
//! * Proofs and nonces are compared in constant time (`subtle`), and an unknown user, a user
//!   without a usable verifier and a wrong password run the same computation and end in the
//!   same error (PostgreSQL's mock authentication, `scram_mock_salt`).
//! * Nothing here panics on input: no `unwrap`, `expect` or indexing on bytes from the
//!   network or from files.

pub mod hba;
pub mod query;
pub mod scram;
pub mod tls;
pub mod users;
