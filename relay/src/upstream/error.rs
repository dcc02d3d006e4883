//! Errors of the upstream connection, typed at the boundary so the caller can decide between
//! "retry with backoff" and "stop: the configuration is wrong".
//!
//! Retry policy ([`UpstreamError::is_transient`]): a relay must keep following its primary
//! through restarts, failovers, certificate renewals and password rotations, so everything is
//! transient (retry with backoff) except errors in the relay's own configuration: a conninfo
//! that does not parse, or TLS material (sslrootcert/sslcert/sslkey) that cannot be loaded.
//! Authentication failures (28P01, a missing password) are transient too: they are logged
//! loudly and retried, because an operator fixing `pg_hba.conf` or `.pgpass` should not have
//! to restart the relay.

use crate::config::conninfo::ConnInfoError;
use crate::proto::error::decode_error_fields;
use crate::proto::ProtocolError;
use crate::wire::WireError;

/// An ErrorResponse from the upstream server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// Non-localized severity (`ERROR`, `FATAL`, `PANIC`).
    pub severity: String,
    /// SQLSTATE, e.g. `28P01`.
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl ServerError {
    /// Decodes an ErrorResponse (or NoticeResponse) body. Missing fields become empty strings;
    /// the `V` (non-localized) severity is preferred over `S`.
    pub fn from_body(body: &[u8]) -> ServerError {
        let mut e = ServerError {
            severity: String::new(),
            code: String::new(),
            message: String::new(),
            detail: None,
            hint: None,
        };
        let mut localized_severity = None;
        for (tag, value) in decode_error_fields(body) {
            match tag {
                b'V' => e.severity = value,
                b'S' => localized_severity = Some(value),
                b'C' => e.code = value,
                b'M' => e.message = value,
                b'D' => e.detail = Some(value),
                b'H' => e.hint = Some(value),
                _ => {}
            }
        }
        if e.severity.is_empty() {
            e.severity = localized_severity.unwrap_or_default();
        }
        e
    }

    /// `FATAL` or `PANIC`: the server closes the connection after sending it.
    pub fn is_fatal(&self) -> bool {
        matches!(self.severity.as_str(), "FATAL" | "PANIC")
    }
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(d) = &self.detail {
            write!(f, " (DETAIL: {d})")?;
        }
        Ok(())
    }
}

/// Rows of a text-format result set; `None` is SQL NULL.
pub type Rows = Vec<Vec<Option<String>>>;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The conninfo is invalid. Not transient.
    #[error(transparent)]
    ConnInfo(#[from] ConnInfoError),
    /// `host_index` is not an index into the conninfo's host list. Not transient.
    #[error("no host number {0} in the conninfo")]
    NoSuchHost(usize),
    /// TLS material could not be loaded or is unusable. Not transient.
    #[error("TLS configuration: {0}")]
    TlsConfig(String),
    /// A socket operation failed; `context` says which, in libpq's words where it has them.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// `connect_timeout` expired before the connection was ready.
    #[error("connection to server at {addr} failed: timeout expired")]
    Timeout { addr: String },
    /// A query of the session's setup got no full answer within `connect_timeout`.
    #[error("server at {addr} did not answer {query} within connect_timeout")]
    QueryTimeout { query: String, addr: String },
    /// The server closed the connection without an ErrorResponse.
    #[error("server closed the connection unexpectedly")]
    Closed,
    /// sslmode requires TLS and the server answered `N` to SSLRequest.
    #[error("server does not support SSL, but SSL was required")]
    SslNotSupported,
    /// The TLS handshake failed (including certificate verification).
    #[error("SSL error: {0}")]
    Tls(String),
    /// Authentication could not proceed on the client side (no password, unsupported method,
    /// channel binding refused, bad SCRAM server signature).
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The server sent an ErrorResponse.
    #[error("server error: {0}")]
    Server(ServerError),
    /// The server sent something the protocol does not allow here.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A previous operation was cancelled half-way (its future dropped) or failed in a way that
    /// leaves the connection's protocol state unknown; only [`terminate`] makes sense now.
    ///
    /// [`terminate`]: super::Connection::terminate
    #[error("connection is unusable after an interrupted or failed operation")]
    Broken,
    /// Every host of the conninfo failed or did not fit `target_session_attrs`; one reason per
    /// host, each prefixed with `host:port`.
    #[error("no suitable upstream host: {}", .0.join("; "))]
    NoSuitableHost(Vec<String>),
}

impl UpstreamError {
    /// Whether retrying (with backoff) can help. See the module docs for the policy.
    pub fn is_transient(&self) -> bool {
        !matches!(
            self,
            UpstreamError::ConnInfo(_) | UpstreamError::NoSuchHost(_) | UpstreamError::TlsConfig(_)
        )
    }

    /// The SQLSTATE when the server sent an ErrorResponse.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            UpstreamError::Server(e) => Some(&e.code),
            _ => None,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        UpstreamError::Io {
            context: context.into(),
            source,
        }
    }

    /// A failed read from the server, in libpq's words.
    pub(crate) fn recv(e: WireError) -> Self {
        match e {
            WireError::Closed => UpstreamError::Closed,
            WireError::Protocol(p) => p.into(),
            WireError::Io(e) => UpstreamError::io("could not receive data from server", e),
        }
    }

    /// A failed send to the server, in libpq's words (a write that takes nothing: the server
    /// is gone).
    pub(crate) fn send(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::WriteZero {
            return UpstreamError::Closed;
        }
        UpstreamError::io("could not send data to server", e)
    }
}

impl From<ProtocolError> for UpstreamError {
    fn from(e: ProtocolError) -> Self {
        UpstreamError::Protocol(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::error::{sqlstate, PgError};
    use bytes::BytesMut;

    #[test]
    fn server_error_from_body() {
        let mut b = BytesMut::new();
        PgError::fatal(
            sqlstate::INVALID_PASSWORD,
            "password authentication failed for user \"x\"",
        )
        .with_detail("d")
        .encode(&mut b);
        let e = ServerError::from_body(b.get(5..).unwrap_or_default());
        assert_eq!(e.code, "28P01");
        assert_eq!(e.severity, "FATAL");
        assert!(e.is_fatal());
        assert_eq!(e.detail.as_deref(), Some("d"));
        // Truncated and empty bodies decode to something, never panic.
        let e = ServerError::from_body(b"SERROR\0Cx");
        assert_eq!(e.severity, "ERROR");
        assert!(!e.is_fatal());
        let _ = ServerError::from_body(b"");
    }

    #[test]
    fn transient_policy() {
        assert!(!UpstreamError::ConnInfo(ConnInfoError::NoUser).is_transient());
        assert!(!UpstreamError::TlsConfig("x".into()).is_transient());
        assert!(UpstreamError::Closed.is_transient());
        assert!(UpstreamError::SslNotSupported.is_transient());
        let auth = ServerError::from_body(b"VFATAL\0C28P01\0Mbad\0\0");
        assert!(UpstreamError::Server(auth).is_transient());
        assert!(UpstreamError::NoSuitableHost(vec![]).is_transient());
    }
}
