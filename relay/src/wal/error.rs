//! What can be wrong with WAL bytes, and where.
//!
//! Every variant names the LSN it is about ([`WalError::lsn`]): the page for page-header
//! problems, the record's start for record problems (as PostgreSQL's reader reports them).
//! Messages use PostgreSQL's own words (`xlogreader.c`) where it has them, so an operator can
//! search for them; where PostgreSQL omits the position, it is appended.

use super::lsn::Lsn;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalError {
    #[error("invalid WAL segment size {0}: must be a power of two between 1 MB and 1 GB")]
    InvalidSegmentSize(u64),

    #[error("invalid record offset at {lsn}: expected at least {expected}, got {got}")]
    InvalidRecordOffset { lsn: Lsn, expected: u32, got: u32 },

    #[error(
        "invalid magic number {magic:04X} in WAL segment {segment}, LSN {lsn}, offset {offset}"
    )]
    InvalidMagic {
        magic: u16,
        segment: String,
        lsn: Lsn,
        offset: u32,
    },

    #[error("invalid info bits {info:04X} in WAL segment {segment}, LSN {lsn}, offset {offset}")]
    InvalidInfoBits {
        info: u16,
        segment: String,
        lsn: Lsn,
        offset: u32,
    },

    #[error(
        "WAL file is from different database system: WAL file database system identifier is \
         {got}, pg_control database system identifier is {expected} (WAL segment {segment}, LSN {lsn})"
    )]
    SystemIdMismatch {
        got: u64,
        expected: u64,
        segment: String,
        lsn: Lsn,
    },

    #[error(
        "WAL file is from different database system: incorrect segment size in page header \
         ({got}, expected {expected}; WAL segment {segment}, LSN {lsn})"
    )]
    SegmentSizeMismatch {
        got: u32,
        expected: u64,
        segment: String,
        lsn: Lsn,
    },

    #[error(
        "WAL file is from different database system: incorrect XLOG_BLCKSZ in page header \
         ({got}; WAL segment {segment}, LSN {lsn})"
    )]
    BlockSizeMismatch { got: u32, segment: String, lsn: Lsn },

    #[error("unexpected pageaddr {pageaddr} in WAL segment {segment}, LSN {lsn}, offset {offset}")]
    UnexpectedPageAddr {
        pageaddr: Lsn,
        segment: String,
        lsn: Lsn,
        offset: u32,
    },

    #[error(
        "out-of-sequence timeline ID {tli} (after {after}) in WAL segment {segment}, LSN {lsn}, offset {offset}"
    )]
    OutOfSequenceTimeline {
        tli: u32,
        after: u32,
        segment: String,
        lsn: Lsn,
        offset: u32,
    },

    #[error("contrecord is requested by {lsn}")]
    ContrecordRequested { lsn: Lsn },

    #[error("there is no contrecord flag at {lsn}")]
    NoContrecordFlag { lsn: Lsn },

    #[error("invalid contrecord length {rem_len} (expected {expected}) at {lsn}")]
    InvalidContrecordLength {
        rem_len: u32,
        expected: i64,
        lsn: Lsn,
    },

    #[error("invalid record length at {lsn}: expected at least 24, got {got}")]
    InvalidRecordLength { lsn: Lsn, got: u32 },

    #[error("record length {len} at {lsn} too long")]
    RecordTooLong { len: u32, lsn: Lsn },

    #[error("invalid resource manager ID {rmid} at {lsn}")]
    InvalidRmgr { rmid: u8, lsn: Lsn },

    #[error("record with incorrect prev-link {prev} at {lsn}")]
    IncorrectPrevLink { prev: Lsn, lsn: Lsn },

    #[error("incorrect resource manager data checksum in record at {lsn}")]
    IncorrectChecksum { lsn: Lsn },
}

impl WalError {
    /// The position the error is about: the page for page-header errors, the record's start
    /// for record errors, the requested start for a bad starting position.
    pub fn lsn(&self) -> Lsn {
        match self {
            WalError::InvalidSegmentSize(_) => Lsn::INVALID,
            WalError::InvalidRecordOffset { lsn, .. }
            | WalError::InvalidMagic { lsn, .. }
            | WalError::InvalidInfoBits { lsn, .. }
            | WalError::SystemIdMismatch { lsn, .. }
            | WalError::SegmentSizeMismatch { lsn, .. }
            | WalError::BlockSizeMismatch { lsn, .. }
            | WalError::UnexpectedPageAddr { lsn, .. }
            | WalError::OutOfSequenceTimeline { lsn, .. }
            | WalError::ContrecordRequested { lsn }
            | WalError::NoContrecordFlag { lsn }
            | WalError::InvalidContrecordLength { lsn, .. }
            | WalError::InvalidRecordLength { lsn, .. }
            | WalError::RecordTooLong { lsn, .. }
            | WalError::InvalidRmgr { lsn, .. }
            | WalError::IncorrectPrevLink { lsn, .. }
            | WalError::IncorrectChecksum { lsn } => *lsn,
        }
    }

    /// True for errors found in a page header (as opposed to a record).
    pub fn is_page_error(&self) -> bool {
        matches!(
            self,
            WalError::InvalidMagic { .. }
                | WalError::InvalidInfoBits { .. }
                | WalError::SystemIdMismatch { .. }
                | WalError::SegmentSizeMismatch { .. }
                | WalError::BlockSizeMismatch { .. }
                | WalError::UnexpectedPageAddr { .. }
                | WalError::OutOfSequenceTimeline { .. }
        )
    }
}
