//! How downstream sessions end and what clients are told: [`SessionEnd`] (why a session
//! ended, reported once by the session), and the typed errors of `store/` ([`SlotError`],
//! [`ReadError`], [`NotInHistory`]) mapped to ErrorResponses with PostgreSQL's SQLSTATEs and
//! words.
//!
//! The store says what went wrong in PostgreSQL's words and knows nothing of the wire; the
//! SQLSTATE a client sees is chosen here, once, so the two sides cannot drift apart. This file
//! sits below every other file of `downstream/` and imports none of them.

use crate::proto::error::{sqlstate, PgError};
use crate::proto::ProtocolError;
use crate::store::reader::ReadError;
use crate::store::servable::NotInHistory;
use crate::store::slots::SlotError;
use crate::wire::WireError;

/// How a session ended, for the log line (and the last message to the client).
#[derive(Debug, thiserror::Error)]
pub enum SessionEnd {
    #[error("client disconnected")]
    ClientGone,
    #[error("{0}")]
    Fatal(PgError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("invalid message from client: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("relay shutting down")]
    Shutdown,
    /// Startup and authentication did not finish within `authentication_timeout`.
    #[error("authentication timeout")]
    AuthenticationTimeout,
    /// The walsender's client was not heard from, or did not read, for `wal_sender_timeout`
    /// (already logged by the walsender).
    #[error("terminating walsender process due to replication timeout")]
    ReplicationTimeout,
    /// Authentication failed: `error` goes to the client, `log_detail` (PostgreSQL's DETAIL
    /// of the server log: which check failed, which hba line matched) only to the log. Never
    /// holds a password or verifier.
    #[error("{error}")]
    AuthFailed {
        error: PgError,
        log_detail: Option<String>,
    },
}

impl From<WireError> for SessionEnd {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Closed => SessionEnd::ClientGone,
            WireError::Io(e) => SessionEnd::Io(e),
            WireError::Protocol(p) => SessionEnd::Protocol(p),
        }
    }
}

/// `max_connections` reached (PostgreSQL's CAC_TOOMANY).
pub fn too_many_clients() -> PgError {
    PgError::fatal(
        sqlstate::TOO_MANY_CONNECTIONS,
        "sorry, too many clients already",
    )
}

/// A slot refusal as PostgreSQL's slot.c reports it (all `ERROR`: the session goes on).
pub fn slot_error(e: &SlotError) -> PgError {
    let code = match e {
        SlotError::NameTooShort(_)
        | SlotError::NameTooLong(_)
        | SlotError::NameInvalidCharacter(_) => sqlstate::INVALID_NAME,
        SlotError::AlreadyExists(_) => sqlstate::DUPLICATE_OBJECT,
        SlotError::AllInUse => sqlstate::CONFIGURATION_LIMIT_EXCEEDED,
        SlotError::Disabled => sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
        SlotError::DoesNotExist(_) => sqlstate::UNDEFINED_OBJECT,
        SlotError::Active { .. } => sqlstate::OBJECT_IN_USE,
        SlotError::Invalidated { .. } => sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
        SlotError::Create { .. } => sqlstate::INTERNAL_ERROR,
    };
    let mut pg = PgError::error(code, e.to_string());
    if let Some(d) = e.detail() {
        pg = pg.with_detail(d);
    }
    if let Some(h) = e.hint() {
        pg = pg.with_hint(h);
    }
    pg
}

/// A failed read of stored WAL. Damage is also logged and counted here: it is the one place
/// every damaged read passes through.
pub fn read_error(e: ReadError) -> PgError {
    match e {
        ReadError::SegmentMissing(_) => PgError::error(sqlstate::UNDEFINED_FILE, e.to_string()),
        ReadError::Io { .. } => PgError::error(sqlstate::INTERNAL_ERROR, e.to_string()),
        ReadError::Damaged { .. } => {
            tracing::error!("refusing to serve damaged WAL: {e}");
            metrics::counter!("walrelay_wal_damaged_reads_total").increment(1);
            PgError::error(sqlstate::DATA_CORRUPTED, e.to_string())
                .with_hint("Run walrelay verify on the relay's data directory; the relay serves no WAL past the damage.")
        }
    }
}

/// `START_REPLICATION` of a timeline the relay's history does not hold (walsender.c's words).
pub fn not_in_history(e: NotInHistory) -> PgError {
    PgError::error(sqlstate::INTERNAL_ERROR, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_errors_keep_postgresql_codes_and_words() {
        let e = slot_error(&SlotError::NameInvalidCharacter("Bad-Name".into()));
        assert_eq!(e.code, "42602");
        assert_eq!(
            e.message,
            "replication slot name \"Bad-Name\" contains invalid character"
        );
        assert_eq!(
            e.hint.as_deref(),
            Some("Replication slot names may only contain lower case letters, numbers, and the underscore character.")
        );
        let e = slot_error(&SlotError::Active {
            name: "s1".into(),
            pid: 11,
        });
        assert_eq!(
            (e.code, e.message.as_str()),
            ("55006", "replication slot \"s1\" is active for PID 11")
        );
        assert_eq!(
            slot_error(&SlotError::AlreadyExists("s".into())).code,
            "42710"
        );
        assert_eq!(
            slot_error(&SlotError::DoesNotExist("s".into())).code,
            "42704"
        );
        assert_eq!(
            slot_error(&SlotError::NameTooShort(String::new())).code,
            "42602"
        );
        let e = slot_error(&SlotError::Invalidated {
            name: "old".into(),
            reason: "wal_removed".into(),
        });
        assert_eq!(e.code, "55000");
        assert_eq!(e.message, "can no longer access replication slot \"old\"");
        assert_eq!(
            e.detail.as_deref(),
            Some("This replication slot has been invalidated due to \"wal_removed\".")
        );
        let e = slot_error(&SlotError::Create {
            name: "s".into(),
            source: std::io::Error::other("disk full"),
        });
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                "XX000",
                "could not create replication slot \"s\": disk full"
            )
        );
        let e = slot_error(&SlotError::AllInUse);
        assert_eq!(
            (e.code, e.message.as_str(), e.hint.as_deref()),
            (
                "53400",
                "all replication slots are in use",
                Some("Free one or increase max_replication_slots.")
            )
        );
        assert_eq!(slot_error(&SlotError::Disabled).code, "55000");
        assert_eq!(
            not_in_history(NotInHistory(7)).message,
            "requested timeline 7 is not in this server's history"
        );
    }
}
