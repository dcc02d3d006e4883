//! Moving WAL aside that the relay held past a new primary's fork point.
//!
//! Owns: `<data-dir>/diverged/`. Whole segments of the timeline past the fork are moved
//! there; the segment holding the fork point is copied there whole and zeroed from the fork
//! point on in place (and named `.partial` again, since it is no longer complete).
//!
//! Invariants: runs on the writer thread only (with nothing open for writing), so no segment
//! it touches is being written; diverged bytes are kept, never served and never silently lost;
//! both directories are fsynced before the caller publishes the lowered durable position.

use std::fs;
use std::path::Path;

use super::catalog::Catalog;
use super::fs::{fsync_dir, zero_from};
use super::Durable;
use crate::wal::{Lsn, TimeLineId};

/// Moves the WAL of `tli` from `at` on into `<data-dir>/diverged/`. `durable` is the store's
/// durable position (it bounds how many bytes count as moved). Returns the bytes of WAL moved
/// aside.
pub(super) fn move_aside(
    data_dir: &Path,
    wal_dir: &Path,
    seg_size: u64,
    durable: Durable,
    tli: TimeLineId,
    at: Lsn,
) -> std::io::Result<u64> {
    let diverged = data_dir.join("diverged");
    fs::create_dir_all(&diverged)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let end = if durable.timeline == tli {
        durable.lsn
    } else {
        Lsn(u64::MAX)
    };
    let catalog = Catalog::read(wal_dir, seg_size)?;
    let mut moved = 0u64;
    for seg in catalog.segment_files_of(tli) {
        let (seg_start, seg_end) = (seg.id.start(), seg.id.end());
        if seg_end <= at {
            continue;
        }
        let path = catalog.path(&seg.name);
        let target = diverged.join(format!("{}.{stamp}", seg.name));
        if seg_start >= at {
            fs::rename(&path, &target)?;
            moved += end.0.min(seg_end.0).saturating_sub(seg_start.0);
        } else {
            // The fork is inside this segment: keep a copy of it whole, then zero the
            // diverged bytes in place so they can never be served.
            fs::copy(&path, &target)?;
            // The copy must be on disk before the only other copy of those bytes is zeroed:
            // after a crash in between, the diverged WAL is still somewhere.
            fs::File::open(&target)?.sync_all()?;
            fsync_dir(&diverged)?;
            let off = at.segment_offset(seg_size);
            zero_from(&path, off, seg_size - off)?;
            // No longer whole: by the `.partial` rule it must not keep its complete name.
            if !seg.partial {
                fs::rename(&path, wal_dir.join(seg.id.partial_name()))?;
            }
            moved += end.0.min(seg_end.0).saturating_sub(at.0);
        }
    }
    fsync_dir(wal_dir)?;
    fsync_dir(&diverged)?;
    Ok(moved)
}
