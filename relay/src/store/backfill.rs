//! Segments older than the store's oldest, fetched from the upstream after the fact
//! (`upstream::backfill`) and added here: validated as at ingest, staged whole, then put in
//! place newest first.
//!
//! Owns: where the store's WAL of a timeline begins ([`oldest_segment`]) and adding whole
//! segments before it ([`Staging`]).
//!
//! Invariants:
//! - A backfilled segment is validated from its first byte (page headers, record headers,
//!   CRC-32C, the store's system identifier and the timeline) before it is staged; one that
//!   fails is never stored.
//! - A staged segment is a whole, fsynced file named `<segment>.backfill` (not a segment name:
//!   readers, recovery and retention never see it). Staged segments get their segment names
//!   only once every one of them is there, newest first, each rename followed by a fsync of
//!   the directory: at every moment, after a crash too, the store's WAL of the timeline is
//!   contiguous, without a hole, and never a `.partial` below the stream position.
//! - Segments are only put before the oldest stored one of their timeline, right below it, so
//!   they never meet the writer thread's files (at or after the stream position).

use std::fs::{self as stdfs, File};
use std::io::Write;
use std::path::PathBuf;

use super::catalog::Catalog;
use super::fs::{fsync_dir, SegmentId};
use super::Store;
use crate::wal::decoder::WalDecoder;
use crate::wal::error::WalError;
use crate::wal::TimeLineId;

/// The suffix of a staged segment.
const STAGED: &str = ".backfill";

#[derive(Debug, thiserror::Error)]
pub enum BackfillStoreError {
    #[error("backfilled segment {name} is {got} bytes, not a whole segment of {seg_size}")]
    NotWhole {
        name: String,
        got: u64,
        seg_size: u64,
    },
    #[error("invalid WAL from upstream in backfilled segment {name}: {source}")]
    InvalidWal { name: String, source: WalError },
    #[error(
        "backfilled segments of timeline {tli} no longer end at the store's oldest segment (it is {oldest:?} now, expected {expected})"
    )]
    NotContiguous {
        tli: TimeLineId,
        oldest: Option<String>,
        expected: String,
    },
    #[error("the store has no identity yet")]
    NoIdentity,
    #[error("could not store backfilled segment {name}: {source}")]
    Io {
        name: String,
        source: std::io::Error,
    },
}

fn io_error(name: &str) -> impl FnOnce(std::io::Error) -> BackfillStoreError {
    let name = name.to_string();
    move |source| BackfillStoreError::Io { name, source }
}

/// The number of the oldest segment file of `tli` in the store (complete or `.partial`), or
/// `None` when the store holds none of that timeline.
pub fn oldest_segment(store: &Store, tli: TimeLineId) -> std::io::Result<Option<u64>> {
    let Some(id) = store.identity() else {
        return Ok(None);
    };
    let cat = Catalog::read(store.wal_dir(), id.seg_size)?;
    Ok(cat
        .segments
        .get(&tli)
        .and_then(|m| m.keys().next().copied()))
}

/// Segments of one timeline being staged, in order, to go right below segment `before`.
/// Dropped without [`Staging::install`], it removes what it staged.
pub struct Staging {
    wal_dir: PathBuf,
    seg_size: u64,
    sysid: Option<u64>,
    tli: TimeLineId,
    before: u64,
    staged: Vec<SegmentId>,
}

impl Staging {
    /// Staging for segments of `tli` below `before` (the store's oldest of `tli`). Removes
    /// what an interrupted backfill staged (one relay per data directory, one backfill at a
    /// time: nothing else stages).
    pub fn new(store: &Store, tli: TimeLineId, before: u64) -> Result<Staging, BackfillStoreError> {
        let id = store.identity().ok_or(BackfillStoreError::NoIdentity)?;
        let wal_dir = store.wal_dir().to_path_buf();
        for entry in stdfs::read_dir(&wal_dir).map_err(io_error("wal/"))? {
            let entry = entry.map_err(io_error("wal/"))?;
            if entry.file_name().to_string_lossy().ends_with(STAGED) {
                stdfs::remove_file(entry.path()).map_err(io_error("wal/"))?;
            }
        }
        Ok(Staging {
            wal_dir,
            seg_size: id.seg_size,
            sysid: id.system_identifier.parse::<u64>().ok(),
            tli,
            before,
            staged: Vec::new(),
        })
    }

    fn staged_path(&self, seg: SegmentId) -> PathBuf {
        self.wal_dir.join(format!("{}{STAGED}", seg.name()))
    }

    /// Validates `data`, the whole segment `segno`, and stages it (written and fsynced).
    /// Blocking.
    pub fn stage(&mut self, segno: u64, data: &[u8]) -> Result<(), BackfillStoreError> {
        let seg = SegmentId::new(self.tli, segno, self.seg_size);
        let name = seg.name();
        if data.len() as u64 != self.seg_size {
            return Err(BackfillStoreError::NotWhole {
                name,
                got: data.len() as u64,
                seg_size: self.seg_size,
            });
        }
        let mut decoder = WalDecoder::new(seg.start(), self.seg_size, self.sysid, None);
        decoder.set_timeline(self.tli);
        decoder
            .feed(data)
            .map_err(|source| BackfillStoreError::InvalidWal {
                name: name.clone(),
                source,
            })?;
        let path = self.staged_path(seg);
        // Counted as staged before it exists, so that a failure half-way removes it too.
        self.staged.push(seg);
        let mut f = File::create(&path).map_err(io_error(&name))?;
        f.write_all(data).map_err(io_error(&name))?;
        f.sync_all().map_err(io_error(&name))?;
        Ok(())
    }

    /// Puts the staged segments in place, newest first, when they run without a gap up to
    /// `before` and `before` is still the store's oldest segment. Blocking.
    pub fn install(mut self, store: &Store) -> Result<usize, BackfillStoreError> {
        let expected = SegmentId::new(self.tli, self.before, self.seg_size).name();
        let oldest = oldest_segment(store, self.tli).map_err(io_error("wal/"))?;
        let contiguous = self
            .staged
            .iter()
            .rev()
            .zip((0..self.before).rev())
            .all(|(s, want)| s.segno == want);
        if oldest != Some(self.before) || !contiguous {
            return Err(BackfillStoreError::NotContiguous {
                tli: self.tli,
                oldest: oldest.map(|o| SegmentId::new(self.tli, o, self.seg_size).name()),
                expected,
            });
        }
        let staged = std::mem::take(&mut self.staged);
        for (i, seg) in staged.iter().enumerate().rev() {
            let name = seg.name();
            if let Err(e) = stdfs::rename(self.staged_path(*seg), self.wal_dir.join(&name))
                .and_then(|()| fsync_dir(&self.wal_dir))
            {
                // What is in place stays (contiguous); the rest is removed by the drop.
                self.staged = staged.get(..i).map(<[_]>::to_vec).unwrap_or_default();
                return Err(io_error(&name)(e));
            }
            // A segment that was missing is there now: nothing the cache held of it (a
            // failed look-up keeps nothing, but be sure) may stand for the new file.
            store.invalidate_segments(Some(seg.tli), seg.segno, seg.segno);
        }
        Ok(staged.len())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        for seg in std::mem::take(&mut self.staged) {
            let _ = stdfs::remove_file(self.staged_path(seg));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::testing::fixture_store;
    use crate::wal::testwal::{fixture, SEG};

    /// A store for the fixture's cluster holding its segment `first + 2` (the oldest).
    fn store_from_third(dir: &std::path::Path) -> (Arc<Store>, u64) {
        let f = fixture();
        let first = f.first_segno();
        let store = fixture_store(dir);
        let third = SegmentId::new(1, first + 2, SEG);
        std::fs::write(store.wal_dir().join(third.name()), f.segment(first + 2)).unwrap();
        (store, first)
    }

    fn names(store: &Store) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(store.wal_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("0000000"))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn installs_whole_validated_segments_below_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let (store, first) = store_from_third(dir.path());
        let f = fixture();
        assert_eq!(oldest_segment(&store, 1).unwrap(), Some(first + 2));
        let mut staging = Staging::new(&store, 1, first + 2).unwrap();
        staging.stage(first, f.segment(first)).unwrap();
        staging.stage(first + 1, f.segment(first + 1)).unwrap();
        assert_eq!(staging.install(&store).unwrap(), 2);
        assert_eq!(oldest_segment(&store, 1).unwrap(), Some(first));
        for segno in first..first + 2 {
            let name = SegmentId::new(1, segno, SEG).name();
            assert_eq!(
                std::fs::read(store.wal_dir().join(&name)).unwrap(),
                f.segment(segno),
                "{name}"
            );
        }
        assert_eq!(names(&store).len(), 3, "{:?}", names(&store));
    }

    #[test]
    fn a_gap_installs_nothing_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (store, first) = store_from_third(dir.path());
        let before = names(&store);
        let mut staging = Staging::new(&store, 1, first + 2).unwrap();
        // Segment first + 1 is missing: installing would leave a hole.
        staging.stage(first, fixture().segment(first)).unwrap();
        let e = staging.install(&store).unwrap_err();
        assert!(matches!(e, BackfillStoreError::NotContiguous { .. }), "{e}");
        assert_eq!(names(&store), before);
    }

    #[test]
    fn damaged_or_short_segments_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (store, first) = store_from_third(dir.path());
        let before = names(&store);
        let mut staging = Staging::new(&store, 1, first + 2).unwrap();
        let mut bad = fixture().segment(first + 1).to_vec();
        // A byte inside a record (past the long page header): its CRC no longer matches.
        bad[200] ^= 0xff;
        let e = staging.stage(first + 1, &bad).unwrap_err();
        assert!(matches!(e, BackfillStoreError::InvalidWal { .. }), "{e}");
        let e = staging
            .stage(first + 1, &fixture().segment(first + 1)[..1000])
            .unwrap_err();
        assert!(matches!(e, BackfillStoreError::NotWhole { .. }), "{e}");
        drop(staging);
        assert_eq!(names(&store), before);
    }

    #[test]
    fn leftovers_of_an_interrupted_backfill_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (store, first) = store_from_third(dir.path());
        let left = store
            .wal_dir()
            .join(format!("{}{STAGED}", SegmentId::new(1, first, SEG).name()));
        std::fs::write(&left, b"half").unwrap();
        let _staging = Staging::new(&store, 1, first + 2).unwrap();
        assert!(!left.exists());
    }
}
