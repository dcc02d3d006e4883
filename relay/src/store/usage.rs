//! What the store takes on disk, for the operator's gauges and `/status`: the segment files in
//! `wal/` (how many, how many bytes), the space left on the data directory's file system, and
//! how much WAL each replication slot holds back.
//!
//! Owns: measuring, never changing. Every figure is read when asked for (each `/metrics` scrape,
//! each `/status`), from the directory, `statvfs(2)` and the slots, rather than tracked as the
//! writer and retention create and remove files: a figure read from the file system cannot drift
//! from it (a crash, an operator's `rm`, a segment moved aside to `diverged/`), and one listing
//! of `wal/` plus a `stat` per segment is cheap next to a scrape interval.
//!
//! Invariants: the reads are blocking file system work (callers on the async runtime run them
//! with `spawn_blocking`); a segment removed between the listing and its `stat` (retention ran)
//! is not counted, so the count and the bytes describe the same files.

use std::io;

use super::catalog::Listing;
use super::slots::SlotInfo;
use super::Store;
use crate::wal::Lsn;

/// The segment files in `wal/`, complete and `.partial`, of every timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WalUsage {
    pub segments: u64,
    /// Their sizes (`st_size`). A `.partial` is pre-sized to the whole segment, so it counts at
    /// its full size: that is what it will take once written.
    pub bytes: u64,
}

/// The data directory's file system, as `statvfs(2)` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSpace {
    /// Bytes an unprivileged process may still allocate (`f_bavail × f_frsize`, what `df` shows
    /// as available): the relay gets no share of the blocks reserved for root.
    pub free: u64,
    /// The file system's size (`f_blocks × f_frsize`).
    pub size: u64,
}

/// A slot and the WAL it holds back.
#[derive(Debug, Clone)]
pub struct SlotRetention {
    pub slot: SlotInfo,
    /// The servable end minus the slot's `restart_lsn`: WAL the store keeps because of this
    /// slot. 0 for a slot with no `restart_lsn` (not reserved, or invalidated).
    pub retained_bytes: u64,
}

/// Bytes of WAL a slot whose user needs WAL from `restart` holds back when the store can serve
/// up to `end`.
pub fn retained_bytes(end: Lsn, restart: Option<Lsn>) -> u64 {
    restart.map(|r| end.saturating_sub(r)).unwrap_or(0)
}

impl Store {
    /// Counts and sizes the segment files in `wal/`. Blocking.
    pub fn wal_usage(&self) -> io::Result<WalUsage> {
        let listing = Listing::read(self.wal_dir())?;
        let names: Vec<String> = match self.identity() {
            Some(id) => listing
                .classify(id.seg_size)
                .segment_files()
                .map(|s| s.name.clone())
                .collect(),
            // Before the first upstream there is no segment size; any segment name counts.
            None => listing.segment_names().map(str::to_string).collect(),
        };
        sum_sizes(&listing, &names)
    }

    /// Free and total space of the file system holding the data directory. Blocking.
    pub fn disk_space(&self) -> io::Result<DiskSpace> {
        let st = rustix::fs::statvfs(self.data_dir()).map_err(io::Error::from)?;
        Ok(DiskSpace {
            free: st.f_bavail.saturating_mul(st.f_frsize),
            size: st.f_blocks.saturating_mul(st.f_frsize),
        })
    }

    /// Every slot, persistent and temporary, with the WAL it holds back from `end` (the
    /// servable end, read once by the caller so that every figure of a response uses the same).
    pub fn slot_retention(&self, end: Lsn) -> Vec<SlotRetention> {
        self.slots()
            .list()
            .into_iter()
            .map(|slot| SlotRetention {
                retained_bytes: retained_bytes(end, slot.restart_lsn),
                slot,
            })
            .collect()
    }
}

fn sum_sizes(listing: &Listing, names: &[String]) -> io::Result<WalUsage> {
    let mut usage = WalUsage::default();
    for name in names {
        match std::fs::symlink_metadata(listing.dir().join(name)) {
            Ok(meta) => {
                usage.segments += 1;
                usage.bytes += meta.len();
            }
            // Removed by retention (or moved aside) since the listing.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retained_is_end_minus_restart() {
        assert_eq!(
            retained_bytes(Lsn(0x3000000), Some(Lsn(0x1000000))),
            0x2000000
        );
        // A restart position ahead of what is servable (a failover limit below it) holds
        // nothing back.
        assert_eq!(retained_bytes(Lsn(0x1000000), Some(Lsn(0x2000000))), 0);
        assert_eq!(retained_bytes(Lsn(0x3000000), None), 0);
    }

    #[test]
    fn counts_segment_files_of_every_timeline_and_nothing_else() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path()).unwrap();
        let wal = store.wal_dir().to_path_buf();
        assert_eq!(store.wal_usage().unwrap(), WalUsage::default());
        for (name, len) in [
            ("000000010000000000000003", 100),
            ("000000010000000000000004.partial", 40),
            ("000000020000000000000004.partial", 7),
            ("00000002.history", 1000),
            ("relay.state.tmp", 1000),
        ] {
            std::fs::write(wal.join(name), vec![0u8; len]).unwrap();
        }
        std::fs::create_dir(wal.join("000000010000000000000005")).unwrap();
        // No identity yet: any segment name counts.
        assert_eq!(
            store.wal_usage().unwrap(),
            WalUsage {
                segments: 3,
                bytes: 147
            }
        );
        // Once the segment size is known, only names of that size's segments count: at 16 MB
        // a segment number's low part stops at 0xFF.
        std::fs::write(wal.join("000000010000000000000100"), vec![0u8; 9]).unwrap();
        assert_eq!(store.wal_usage().unwrap().segments, 4);
        store
            .adopt_identity(super::super::Identity {
                system_identifier: "1".into(),
                seg_size: 16 << 20,
                server_version: "15.0".into(),
            })
            .unwrap();
        assert_eq!(
            store.wal_usage().unwrap(),
            WalUsage {
                segments: 3,
                bytes: 147
            }
        );

        let space = store.disk_space().unwrap();
        assert!(space.size > 0, "{space:?}");
        assert!(space.free <= space.size, "{space:?}");
    }
}
