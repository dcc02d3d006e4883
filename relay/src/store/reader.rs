//! What walsenders' reads of stored WAL can fail with, and the check of START_REPLICATION's
//! first segment. The reads themselves go through the shared, validated segment cache
//! ([`super::cache`], [`Store::read_wal`]): stored WAL is validated again as it is read from
//! disk (once per segment for all walsenders), so a byte damaged on disk since it was written
//! stops the stream at the last valid record before it, with an error, and is never sent.
//!
//! The in-memory tail ([`Store::tail_read_pieces`]) is not consulted here: the walsender looks there
//! first, once, without leaving its task (those bytes were validated as they arrived).
//!
//! Segment files are found by the `.partial` rule ([`super::fs::open_for_read`]); a reader
//! never writes.

use super::fs::{self, SegmentId};
use super::Store;
use crate::wal::segment::DEFAULT_SEG_SIZE;
use crate::wal::{Lsn, TimeLineId};

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The segment file is not in the store (never received, or removed).
    #[error("requested WAL segment {0} has already been removed")]
    SegmentMissing(String),
    #[error("could not read from WAL segment {name}: {source}")]
    Io {
        name: String,
        source: std::io::Error,
    },
    /// Stored WAL fails validation (damaged on disk).
    #[error("stored WAL is damaged at {lsn} in WAL segment {segment}: {detail}")]
    Damaged {
        segment: String,
        lsn: Lsn,
        detail: String,
    },
}

impl Store {
    /// The store's segment size (the default before the first upstream connection).
    pub fn seg_size(&self) -> u64 {
        self.identity()
            .map(|i| i.seg_size)
            .unwrap_or(DEFAULT_SEG_SIZE)
    }

    /// Checks that the segment holding `lsn` on `tli` exists (START_REPLICATION's first
    /// open). Blocking (an `open`): call from a blocking context or where a short stall is
    /// fine.
    pub fn check_segment(&self, tli: TimeLineId, lsn: Lsn) -> Result<(), ReadError> {
        let id = SegmentId::new(tli, lsn.segment(self.seg_size()), self.seg_size());
        fs::open_for_read(self.wal_dir(), id)
            .map(|_| ())
            .map_err(|_| ReadError::SegmentMissing(id.name()))
    }
}
