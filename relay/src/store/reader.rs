//! Positioned reads of stored WAL for walsenders: from the in-memory tail when it still holds
//! the bytes, else from the segment files.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::Store;
use crate::wal::segment::{partial_file_name, segment_file_name};
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
}

/// A reader that keeps its current segment file open between reads (a rename from `.partial`
/// to the final name does not disturb an open file).
pub struct WalReader {
    store: Arc<Store>,
    seg_size: u64,
    open: Option<(TimeLineId, u64, File)>,
}

impl WalReader {
    pub fn new(store: Arc<Store>) -> Self {
        let seg_size = store.identity().map(|i| i.seg_size).unwrap_or(16 << 20);
        WalReader {
            store,
            seg_size,
            open: None,
        }
    }

    pub fn seg_size(&self) -> u64 {
        self.seg_size
    }

    /// Checks that the segment holding `lsn` on `tli` exists (START_REPLICATION's first open).
    pub fn check_segment(&mut self, tli: TimeLineId, lsn: Lsn) -> Result<(), ReadError> {
        self.file(tli, lsn.segment(self.seg_size)).map(|_| ())
    }

    /// Up to `max` bytes of `tli` from `lsn`, never past `end` nor the segment end. Blocking when
    /// the bytes are not in memory: call from a blocking context.
    pub fn read(
        &mut self,
        tli: TimeLineId,
        lsn: Lsn,
        end: Lsn,
        max: usize,
    ) -> Result<Bytes, ReadError> {
        let seg_end = lsn.segment_start(self.seg_size).0 + self.seg_size;
        let want = (end.0.min(seg_end).saturating_sub(lsn.0) as usize).min(max);
        if want == 0 {
            return Ok(Bytes::new());
        }
        if let Some(b) = self.store.tail_read(tli, lsn, want) {
            return Ok(b);
        }
        let segno = lsn.segment(self.seg_size);
        let off = lsn.segment_offset(self.seg_size);
        let name = segment_file_name(tli, segno, self.seg_size);
        let file = self.file(tli, segno)?;
        let mut buf = BytesMut::zeroed(want);
        file.read_exact_at(&mut buf, off)
            .map_err(|source| ReadError::Io { name, source })?;
        Ok(buf.freeze())
    }

    fn file(&mut self, tli: TimeLineId, segno: u64) -> Result<&File, ReadError> {
        let cached = matches!(&self.open, Some((t, s, _)) if *t == tli && *s == segno);
        if !cached {
            let dir = self.store.wal_dir();
            let full = dir.join(segment_file_name(tli, segno, self.seg_size));
            let partial = dir.join(partial_file_name(tli, segno, self.seg_size));
            // The writer may rename `.partial` between the two opens: try the final name again.
            let f = File::open(&full)
                .or_else(|_| File::open(&partial))
                .or_else(|_| File::open(&full))
                .map_err(|_| {
                    ReadError::SegmentMissing(segment_file_name(tli, segno, self.seg_size))
                })?;
            self.open = Some((tli, segno, f));
        }
        match &self.open {
            Some((_, _, f)) => Ok(f),
            None => Err(ReadError::SegmentMissing(segment_file_name(
                tli,
                segno,
                self.seg_size,
            ))),
        }
    }
}
