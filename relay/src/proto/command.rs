//! The replication command grammar (`repl_gram.y` / `repl_scanner.l`) for a physical walsender.
//!
//! Keywords are upper-case and case-sensitive; unquoted identifiers are down-cased, quoted ones
//! keep their case (truncated to 63 bytes, NAMEDATALEN-1); an optional trailing `;` is allowed.
//! Text whose first token is not a replication keyword is SQL, which a physical walsender
//! refuses (0A000).

use crate::wal::{Lsn, TimeLineId};

/// A parsed replication command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    IdentifySystem,
    /// `SHOW name`: the name down-cased unless quoted.
    Show(String),
    TimelineHistory(TimeLineId),
    /// `READ_REPLICATION_SLOT slot`.
    ReadReplicationSlot(String),
    /// `CREATE_REPLICATION_SLOT slot [TEMPORARY] PHYSICAL [RESERVE_WAL | ( options )]`.
    CreatePhysicalSlot { name: String, temporary: bool, reserve_wal: bool },
    /// `CREATE_REPLICATION_SLOT slot [TEMPORARY] LOGICAL plugin ...`: parsed only to be refused.
    CreateLogicalSlot { name: String },
    /// `DROP_REPLICATION_SLOT slot [WAIT]`.
    DropSlot { name: String, wait: bool },
    /// `START_REPLICATION [SLOT s] [PHYSICAL] X/X [TIMELINE n]`.
    StartReplication { slot: Option<String>, start: Lsn, timeline: Option<TimeLineId> },
    /// `START_REPLICATION SLOT s LOGICAL ...`: parsed only to be refused.
    StartLogicalReplication { slot: String },
    /// `BASE_BACKUP ...`: recognised, not supported by a relay (it has no data directory).
    BaseBackup,
    /// `ALTER_REPLICATION_SLOT ...` (17+): recognised, logical-only, refused.
    AlterReplicationSlot,
    /// `UPLOAD_MANIFEST` (17+): recognised, refused.
    UploadManifest,
    /// An empty query string (only whitespace / `;`): answered with EmptyQueryResponse.
    Empty,
}

/// Why a query string is not a command the relay can run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The first token is not a replication keyword: SQL on a physical replication connection.
    #[error("cannot execute SQL commands in WAL sender for physical replication")]
    NotReplicationCommand,
    /// A replication keyword followed by something the grammar does not accept.
    #[error("syntax error")]
    Syntax,
    /// `TIMELINE 0` / `TIMELINE_HISTORY 0`.
    #[error("invalid timeline {0}")]
    InvalidTimeline(u64),
}

/// Parses one replication command.
pub fn parse_command(_query: &str) -> Result<Command, CommandError> {
    Err(CommandError::Syntax)
}
