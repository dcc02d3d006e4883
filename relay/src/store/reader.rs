//! Positioned reads of stored WAL from the segment files for walsenders, validated again as
//! they are read: a byte damaged on disk since it was written stops the stream at the last
//! valid record before it, with an error, and is never sent.
//!
//! The in-memory tail ([`Store::tail_read`]) is not consulted here: the walsender looks there
//! first, once, without leaving its task (those bytes were validated as they arrived), and
//! comes here, on a blocking thread, only when the tail no longer holds them.
//!
//! Segment files are found by the `.partial` rule ([`super::fs::open_for_read`]); a reader
//! never writes.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::fs::{self, SegmentId};
use super::Store;
use crate::wal::decoder::WalDecoder;
use crate::wal::segment::DEFAULT_SEG_SIZE;
use crate::wal::{Lsn, TimeLineId};

/// How much is read and validated ahead at a time.
const VALIDATE_CHUNK: u64 = 1 << 20;

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

struct OpenSegment {
    tli: TimeLineId,
    segno: u64,
    file: File,
    /// Fed from the segment's first byte, as far as reads needed.
    decoder: WalDecoder,
}

/// A reader that keeps its current segment file open between reads (a rename from `.partial`
/// to the final name does not disturb an open file).
pub struct WalReader {
    store: Arc<Store>,
    seg_size: u64,
    sysid: Option<u64>,
    open: Option<OpenSegment>,
}

impl WalReader {
    pub fn new(store: Arc<Store>) -> Self {
        let id = store.identity();
        let seg_size = id.as_ref().map(|i| i.seg_size).unwrap_or(DEFAULT_SEG_SIZE);
        let sysid = id.and_then(|i| i.system_identifier.parse().ok());
        WalReader {
            store,
            seg_size,
            sysid,
            open: None,
        }
    }

    pub fn seg_size(&self) -> u64 {
        self.seg_size
    }

    /// Checks that the segment holding `lsn` on `tli` exists (START_REPLICATION's first open).
    pub fn check_segment(&mut self, tli: TimeLineId, lsn: Lsn) -> Result<(), ReadError> {
        self.segment(tli, lsn.segment(self.seg_size)).map(|_| ())
    }

    /// Up to `max` bytes of `tli` from `lsn` out of its segment file, never past `end` nor the
    /// segment end. Blocking: call from a blocking context.
    pub fn read_file(
        &mut self,
        tli: TimeLineId,
        lsn: Lsn,
        end: Lsn,
        max: usize,
    ) -> Result<Bytes, ReadError> {
        let seg_end = lsn.segment_start(self.seg_size).0 + self.seg_size;
        let limit = Lsn(end.0.min(seg_end));
        let want = (limit.0.saturating_sub(lsn.0) as usize).min(max);
        if want == 0 {
            return Ok(Bytes::new());
        }
        let seg_size = self.seg_size;
        let segno = lsn.segment(seg_size);
        let name = SegmentId::new(tli, segno, seg_size).name();
        let seg = self.segment(tli, segno)?;
        let need = Lsn(lsn.0 + want as u64);
        validate_until(seg, &name, need, limit, seg_size)?;
        // Serve only what validated; a damaged record further on is reported on the next read.
        // A record that runs on into the next segment cannot be checked whole from this file:
        // once the whole segment was fed without a fault, its start is served (its CRC was
        // checked when it arrived from upstream).
        let valid = if seg.decoder.error().is_none() && seg.decoder.position().0 == seg_end {
            seg.decoder.position()
        } else {
            seg.decoder.valid_end()
        };
        if valid <= lsn {
            return Err(damaged(seg, &name));
        }
        let want = want.min((valid.0 - lsn.0) as usize);
        let mut buf = BytesMut::zeroed(want);
        seg.file
            .read_exact_at(&mut buf, lsn.segment_offset(seg_size))
            .map_err(|source| ReadError::Io { name, source })?;
        Ok(buf.freeze())
    }

    fn segment(&mut self, tli: TimeLineId, segno: u64) -> Result<&mut OpenSegment, ReadError> {
        let cached = matches!(&self.open, Some(s) if s.tli == tli && s.segno == segno);
        if !cached {
            let id = SegmentId::new(tli, segno, self.seg_size);
            let file = fs::open_for_read(self.store.wal_dir(), id)
                .map_err(|_| ReadError::SegmentMissing(id.name()))?;
            let mut decoder =
                WalDecoder::new(Lsn(segno * self.seg_size), self.seg_size, self.sysid, None);
            decoder.set_timeline(tli);
            self.open = Some(OpenSegment {
                tli,
                segno,
                file,
                decoder,
            });
        }
        self.open.as_mut().ok_or_else(|| {
            ReadError::SegmentMissing(SegmentId::new(tli, segno, self.seg_size).name())
        })
    }
}

/// Feeds the segment's decoder from the file until it has validated up to `need` (or as far as
/// `limit`, the end of what may be read).
fn validate_until(
    seg: &mut OpenSegment,
    name: &str,
    need: Lsn,
    limit: Lsn,
    seg_size: u64,
) -> Result<(), ReadError> {
    while seg.decoder.valid_end() < need {
        if seg.decoder.error().is_some() {
            break;
        }
        let pos = seg.decoder.position();
        if pos >= limit {
            break;
        }
        // Past the durable end nothing is validated (it is not to be served anyway).
        let n = (limit.0 - pos.0).min(VALIDATE_CHUNK) as usize;
        let mut buf = vec![0u8; n];
        seg.file
            .read_exact_at(&mut buf, pos.segment_offset(seg_size))
            .map_err(|source| ReadError::Io {
                name: name.to_string(),
                source,
            })?;
        if seg.decoder.feed(&buf).is_err() {
            // What validated before the damage is still served; the caller reports the
            // damage once nothing valid is left to send.
            break;
        }
    }
    Ok(())
}

fn damaged(seg: &OpenSegment, name: &str) -> ReadError {
    let detail = seg
        .decoder
        .error()
        .map(|e| e.to_string())
        .unwrap_or_else(|| "record cannot be validated".to_string());
    ReadError::Damaged {
        segment: name.to_string(),
        lsn: seg.decoder.valid_end(),
        detail,
    }
}
