//! WAL retention: which segments the relay may remove.
//!
//! Keep everything from the oldest valid slot's `restart_lsn`, and at least `wal_keep_size`
//! bytes behind the durable end; a slot that falls more than `max_slot_wal_keep_size` behind is
//! invalidated (as PostgreSQL does) rather than allowed to fill the disk. The decision is a
//! pure function ([`horizon`]); [`apply`] does the file work: it removes whole segment files
//! (of any timeline, complete or `.partial`) that the catalogue ([`super::catalog`]) lists
//! wholly below the horizon, then fsyncs the directory.

use std::fs;

use super::catalog::Catalog;
use super::Store;
use crate::wal::Lsn;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionConfig {
    /// Bytes of WAL kept behind the durable end regardless of slots (`wal_keep_size`).
    pub wal_keep_size: u64,
    /// Most WAL a slot may hold back (`max_slot_wal_keep_size`); `None` = unlimited.
    pub max_slot_wal_keep_size: Option<u64>,
}

/// What retention decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Horizon {
    /// Segments wholly below this position may be removed.
    pub keep_from: Lsn,
    /// Slots whose restart_lsn is below this are to be invalidated.
    pub invalidate_before: Option<Lsn>,
}

pub fn horizon(durable: Lsn, slot_min: Option<Lsn>, cfg: RetentionConfig) -> Horizon {
    let mut keep_from = Lsn(durable.0.saturating_sub(cfg.wal_keep_size));
    let cutoff = cfg
        .max_slot_wal_keep_size
        .map(|m| Lsn(durable.0.saturating_sub(m)));
    let mut invalidate_before = None;
    if let Some(s) = slot_min {
        let held = match cutoff {
            Some(c) if s < c => {
                invalidate_before = Some(c);
                c
            }
            _ => s,
        };
        keep_from = keep_from.min(held);
    }
    Horizon {
        keep_from,
        invalidate_before,
    }
}

/// Invalidates slots and removes segments below the horizon. Blocking (file system work).
/// Returns the number of segment files removed.
pub fn apply(store: &Store, cfg: RetentionConfig) -> std::io::Result<usize> {
    let Some(id) = store.identity() else {
        return Ok(0);
    };
    let durable = store.durable().lsn;
    if !durable.is_valid() {
        return Ok(0);
    }
    let slots = store.slots();
    let mut h = horizon(durable, slots.min_restart_lsn(), cfg);
    if let Some(cut) = h.invalidate_before {
        slots.invalidate_before(cut);
        h = horizon(durable, slots.min_restart_lsn(), cfg);
    }
    let keep_segno = h.keep_from.segment(id.seg_size);
    let mut removed = 0;
    let catalog = Catalog::read(store.wal_dir(), id.seg_size)?;
    for seg in catalog.segment_files().filter(|s| s.id.segno < keep_segno) {
        fs::remove_file(catalog.path(&seg.name))?;
        // Gone from the store: a walsender asking for it now gets PostgreSQL's "already
        // removed", not bytes kept in memory.
        store.invalidate_segments(Some(seg.id.tli), seg.id.segno, seg.id.segno);
        tracing::debug!(segment = seg.name, "removed WAL segment");
        removed += 1;
    }
    if removed > 0 {
        super::fs::fsync_dir(store.wal_dir())?;
        tracing::info!(removed, keep_from = %h.keep_from, "removed old WAL segments");
    }
    slots.save_dirty();
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GB: u64 = 1 << 30;

    #[test]
    fn horizon_rules() {
        let cfg = RetentionConfig {
            wal_keep_size: 64 << 20,
            max_slot_wal_keep_size: None,
        };
        let d = Lsn(10 * GB);
        // No slot: wal_keep_size behind the end.
        assert_eq!(horizon(d, None, cfg).keep_from, Lsn(10 * GB - (64 << 20)));
        // A slot further behind holds more.
        assert_eq!(horizon(d, Some(Lsn(GB)), cfg).keep_from, Lsn(GB));
        // A slot ahead of the keep window changes nothing.
        assert_eq!(
            horizon(d, Some(Lsn(10 * GB)), cfg).keep_from,
            Lsn(10 * GB - (64 << 20))
        );
        // Capped: the slot is to be invalidated and WAL kept only back to the cap.
        let capped = RetentionConfig {
            wal_keep_size: 0,
            max_slot_wal_keep_size: Some(2 * GB),
        };
        let h = horizon(d, Some(Lsn(GB)), capped);
        assert_eq!(h.invalidate_before, Some(Lsn(8 * GB)));
        assert_eq!(h.keep_from, Lsn(8 * GB));
        // Never below zero.
        assert_eq!(horizon(Lsn(5), None, cfg).keep_from, Lsn(0));
    }
}
