//! The relay's durable WAL store under `<data-dir>`: standard segment files in `wal/`
//! (`TTTTTTTTXXXXXXXXYYYYYYYY`, the one being written as `.partial`), timeline history files
//! beside them, `relay.state`, `slots/`, and WAL set aside in `diverged/` and `torn/`.
//!
//! [`Store`] is a thin handle: the lock, the identity, the durable and health watches, and
//! one door to each room. The rooms:
//! - [`fs`]: every file write (durable whole-file write, segment files, the `.partial` rule),
//!   and the fault-injection seam;
//! - [`catalog`]: what the files in `wal/` are (listed and classified once);
//! - [`writer`] (the one writer thread), [`backfill`] (older segments added below the
//!   oldest), [`reader`] (walsenders' reads: errors, the first segment's check), [`cache`]
//!   (the shared, validated segment cache every walsender reads through), [`tail`] (recent
//!   WAL in memory),
//!   [`record_ends`] (where records end), [`histories`] (history files);
//! - `recover` (the `.partial` scan at open), `diverged` (WAL past a fork moved aside),
//!   [`retention`] (which segments go), [`state`] (`relay.state`), [`slots`], [`usage`] (what
//!   the store takes on disk, measured for the operator).
//!
//! Invariants:
//! - Segment files are written by the writer thread ([`writer`]), and before it starts by
//!   recovery at open (zeroing a torn tail, completing a whole `.partial`); moving diverged
//!   WAL aside runs on the writer thread; retention only removes whole old segments;
//!   [`backfill`] only adds whole, validated segments right below the oldest of a timeline,
//!   all at once, newest first (never a `.partial`, never a hole).
//! - Every file under the data directory is either absent or whole: small files go through
//!   [`fs::durable_write`], a segment gets its complete name only once written to its end and
//!   fsynced.
//! - The durable position published on the `watch` channel ([`Store::subscribe`]) only moves
//!   after the bytes below it were fsynced; walsenders never read past it. What they may read
//!   (durable, within the failover limit, up to a timeline's switch point) is derived from it
//!   in one place, [`servable`], and published on its own watch ([`Store::subscribe_servable`]).
//! - Every segment file is whole from its first byte: streaming into a new segment file starts
//!   at the segment's start.
//! - Whatever changes a segment file in place or removes one (diverged WAL moved aside,
//!   retention, backfill's renames) drops what the segment cache holds of it, before and after
//!   ([`Store::invalidate_segments`]); recovery at open runs before the cache exists.
//! - One relay per data directory (an exclusive lock on `<data-dir>/walrelay.lock`).

pub mod backfill;
pub mod cache;
pub mod catalog;
mod diverged;
pub mod fs;
pub mod histories;
pub mod reader;
pub mod record_ends;
mod recover;
pub mod retention;
pub mod servable;
pub mod slots;
pub mod state;
pub mod tail;
pub mod usage;
pub mod writer;

/// Test support shared by the store's modules.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;

    use super::{Identity, Store};
    use crate::wal::testwal::{fixture, SEG};

    /// A store opened at `dir` for the fixture's cluster (its system identifier, 1 MiB
    /// segments), holding no WAL yet.
    pub(crate) fn fixture_store(dir: &std::path::Path) -> Arc<Store> {
        let f = fixture();
        let mut sysid = [0u8; 8];
        sysid.copy_from_slice(&f.segment(f.first_segno())[24..32]);
        let store = Store::open(dir).unwrap();
        store
            .adopt_identity(Identity {
                system_identifier: u64::from_le_bytes(sysid).to_string(),
                seg_size: SEG,
                server_version: "15.18".into(),
            })
            .unwrap();
        store
    }
}

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use tokio::sync::watch;

use crate::wal::{Lsn, TimeLineId};
use catalog::Catalog;
use histories::Histories;
use record_ends::RecordEnds;
use slots::Slots;
use state::RelayState;
use tail::Tail;

/// Which cluster the store holds WAL for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub system_identifier: String,
    pub seg_size: u64,
    pub server_version: String,
}

/// The end of durable WAL: everything of `timeline` below `lsn` is fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Durable {
    pub timeline: TimeLineId,
    pub lsn: Lsn,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("data directory {0} is in use by another walrelay")]
    Locked(PathBuf),
    /// The OS error is part of the message (and so not also a `source`, which `{:#}` would
    /// print a second time).
    #[error("{context}: {cause}")]
    Io {
        context: String,
        cause: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error("upstream system identifier {got} differs from the relay's stored {stored}")]
    SystemIdMismatch { stored: String, got: String },
    #[error("upstream wal_segment_size {got} differs from the relay's stored {stored}")]
    SegSizeMismatch { stored: u64, got: u64 },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let context = context.into();
    move |cause| StoreError::Io { context, cause }
}

/// Health of ingest, as the writer last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriterHealth {
    /// Set while the writer cannot write (full disk, failed fsync): ingest stops until the next
    /// upstream session restarts it.
    pub error: Option<String>,
}

pub struct Store {
    data_dir: PathBuf,
    wal_dir: PathBuf,
    identity: RwLock<Option<Identity>>,
    durable_tx: watch::Sender<Durable>,
    /// What walsenders may send, derived from the durable end ([`servable`]).
    servable_tx: watch::Sender<servable::Servable>,
    health_tx: watch::Sender<WriterHealth>,
    histories: Histories,
    tail: Mutex<Tail>,
    record_ends: RecordEnds,
    slots: Arc<Slots>,
    /// Stored WAL read once for all walsenders ([`cache`]).
    cache: cache::SegmentCache,
    _lock: std::fs::File,
}

impl Store {
    /// Opens (creating if needed) the store in `data_dir` and recovers its durable position.
    pub fn open(data_dir: &Path) -> Result<Arc<Store>, StoreError> {
        std::fs::create_dir_all(data_dir)
            .map_err(io_err(format!("create {}", data_dir.display())))?;
        let wal_dir = data_dir.join("wal");
        std::fs::create_dir_all(&wal_dir)
            .map_err(io_err(format!("create {}", wal_dir.display())))?;
        let lock_path = data_dir.join("walrelay.lock");
        let lock = match fs::lock_data_dir(&lock_path) {
            Ok(lock) => lock,
            Err(fs::LockError::Held) => return Err(StoreError::Locked(data_dir.into())),
            Err(fs::LockError::Open(e)) => {
                return Err(io_err(format!("open {}", lock_path.display()))(e))
            }
            Err(fs::LockError::Lock(e)) => return Err(io_err("lock data directory")(e)),
        };

        let state = state::load(data_dir)?;
        let identity = state.as_ref().map(|s| Identity {
            system_identifier: s.system_identifier.clone(),
            seg_size: s.wal_segment_size,
            server_version: s.server_version.clone(),
        });
        let mut histories = Histories::empty(wal_dir.clone());
        let mut durable = Durable::default();
        if let (Some(st), Some(id)) = (&state, &identity) {
            durable = Durable {
                timeline: st.timeline,
                lsn: st.flush(),
            };
            let catalog =
                Catalog::read(&wal_dir, id.seg_size).map_err(io_err("list wal directory"))?;
            histories = Histories::load(&catalog)?;
            // A complete segment beyond the recorded position: the state file was not
            // rewritten after the segment was completed (crash); the segment was fsynced
            // before its rename, so all of it is durable.
            if let Some(end) = catalog.complete_end(st.timeline) {
                if end > durable.lsn {
                    durable.lsn = end;
                }
            }
            durable = recover::partial_tail(data_dir, &wal_dir, id, durable)?;
        }
        let slots = Slots::load(data_dir).map_err(io_err("load replication slots"))?;
        let (durable_tx, _) = watch::channel(durable);
        let history = histories.get(durable.timeline);
        let servable_tx = servable::channel(durable, history.as_deref());
        let (health_tx, _) = watch::channel(WriterHealth::default());
        Ok(Arc::new(Store {
            data_dir: data_dir.to_path_buf(),
            histories,
            wal_dir,
            identity: RwLock::new(identity),
            durable_tx,
            servable_tx,
            health_tx,
            tail: Mutex::new(Tail::default()),
            record_ends: RecordEnds::default(),
            slots,
            cache: cache::SegmentCache::default(),
            _lock: lock,
        }))
    }

    pub fn slots(&self) -> &Arc<Slots> {
        &self.slots
    }

    pub fn wal_dir(&self) -> &Path {
        &self.wal_dir
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn identity(&self) -> Option<Identity> {
        self.identity.read().ok().and_then(|g| g.clone())
    }

    /// Records which cluster this store belongs to (first upstream connection), or checks that
    /// a later upstream is the same cluster. The server version may change (minor upgrades).
    pub fn adopt_identity(&self, id: Identity) -> Result<(), StoreError> {
        let mut guard = self.identity.write().unwrap_or_else(|e| e.into_inner());
        if let Some(cur) = guard.as_ref() {
            if cur.system_identifier != id.system_identifier {
                return Err(StoreError::SystemIdMismatch {
                    stored: cur.system_identifier.clone(),
                    got: id.system_identifier,
                });
            }
            if cur.seg_size != id.seg_size {
                return Err(StoreError::SegSizeMismatch {
                    stored: cur.seg_size,
                    got: id.seg_size,
                });
            }
            if cur.server_version == id.server_version {
                return Ok(());
            }
        }
        *guard = Some(id);
        drop(guard);
        self.save_state()
    }

    /// Writes `relay.state` with the current identity and durable position.
    pub fn save_state(&self) -> Result<(), StoreError> {
        let Some(id) = self.identity() else {
            return Ok(());
        };
        let d = self.durable();
        let mut st = RelayState::new(id.system_identifier, id.seg_size, id.server_version);
        st.timeline = d.timeline;
        st.flush_lsn = d.lsn.to_string();
        state::save(&self.data_dir, &st)?;
        Ok(())
    }

    pub fn durable(&self) -> Durable {
        *self.durable_tx.borrow()
    }

    /// A receiver of the durable position; it changes only after fsync.
    pub fn subscribe(&self) -> watch::Receiver<Durable> {
        self.durable_tx.subscribe()
    }

    pub fn health(&self) -> watch::Receiver<WriterHealth> {
        self.health_tx.subscribe()
    }

    /// The content of `tli`'s history file, byte-exact as received.
    pub fn history(&self, tli: TimeLineId) -> Option<Bytes> {
        self.histories.get(tli)
    }

    /// Stores a history file (see [`Histories::save`]).
    pub fn save_history(&self, tli: TimeLineId, content: Bytes) -> Result<(), StoreError> {
        self.histories.save(tli, content)
    }

    /// Moves the WAL of `tli` from `at` on into `<data-dir>/diverged/` (see [`diverged`]).
    /// Only the writer calls this. Returns the bytes of WAL moved aside.
    pub(crate) fn move_diverged(&self, tli: TimeLineId, at: Lsn) -> std::io::Result<u64> {
        let Some(id) = self.identity() else {
            return Ok(0);
        };
        // The segment holding `at` is zeroed from it on and every later one moved away: no
        // cached byte of them may be served after this (before: a load under way starts
        // again; after: nothing read during the move stays).
        let from = at.segment(id.seg_size);
        self.invalidate_segments(Some(tli), from, u64::MAX);
        let r = diverged::move_aside(
            &self.data_dir,
            &self.wal_dir,
            id.seg_size,
            self.durable(),
            tli,
            at,
        );
        self.invalidate_segments(Some(tli), from, u64::MAX);
        r
    }

    pub(crate) fn publish_durable(&self, d: Durable) {
        self.durable_tx.send_if_modified(|cur| {
            let changed = *cur != d;
            *cur = d;
            changed
        });
        // After the durable watch: the servable end never runs ahead of it.
        self.servable_follow_durable(d);
    }

    pub(crate) fn set_health(&self, h: WriterHealth) {
        self.health_tx.send_if_modified(|cur| {
            // A failure is always news: an upstream session started after an earlier failure
            // (still reported) must learn that its own WAL failed too.
            let changed = *cur != h || h.error.is_some();
            *cur = h;
            changed
        });
    }

    pub(crate) fn tail_push(&self, tli: TimeLineId, start: Lsn, data: Bytes) {
        if let Ok(mut t) = self.tail.lock() {
            t.push(tli, start, data);
        }
    }

    pub(crate) fn note_record_ends(&self, tli: TimeLineId, new: &[Lsn]) {
        self.record_ends.note(tli, new);
    }

    /// The end of the last known record of `tli` at or before `lsn`.
    pub fn record_end_at_or_before(&self, tli: TimeLineId, lsn: Lsn) -> Option<Lsn> {
        self.record_ends.at_or_before(tli, lsn)
    }

    /// The end of the first known record of `tli` that ends after `lsn`.
    pub fn record_end_after(&self, tli: TimeLineId, lsn: Lsn) -> Option<Lsn> {
        self.record_ends.after(tli, lsn)
    }

    pub(crate) fn tail_clear(&self) {
        if let Ok(mut t) = self.tail.lock() {
            t.clear();
        }
    }

    /// Sets the in-memory tail's size (`--wal-tail-size`; 0 keeps none): at start, and on a
    /// reload, when a smaller size drops the oldest chunks at once.
    pub fn set_tail_capacity(&self, bytes: usize) {
        if let Ok(mut t) = self.tail.lock() {
            t.set_capacity(bytes);
        }
    }

    /// The in-memory tail's size, and the bytes of WAL it holds now.
    pub fn tail_usage(&self) -> (usize, usize) {
        self.tail
            .lock()
            .map(|t| (t.capacity(), t.bytes()))
            .unwrap_or_default()
    }

    /// Up to `max` contiguous bytes of recent WAL from `lsn`, as the tail's own pieces (no
    /// copy), appended to `pieces`, under one lock: one message can carry what several
    /// upstream messages brought. Returns the bytes appended (0 when the tail lacks `lsn`).
    pub fn tail_read_pieces(
        &self,
        tli: TimeLineId,
        lsn: Lsn,
        max: usize,
        pieces: &mut Vec<Bytes>,
    ) -> usize {
        let Ok(t) = self.tail.lock() else {
            return 0;
        };
        let mut got = 0;
        while got < max {
            match t.read(tli, Lsn(lsn.0 + got as u64), max - got) {
                Some(b) if !b.is_empty() => {
                    got += b.len();
                    pieces.push(b);
                }
                _ => break,
            }
        }
        got
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_pieces_are_contiguous_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.tail_push(1, Lsn(100), Bytes::from_static(b"abcd"));
        store.tail_push(1, Lsn(104), Bytes::from_static(b"efgh"));
        store.tail_push(1, Lsn(108), Bytes::from_static(b"ijkl"));
        let mut pieces = Vec::new();
        assert_eq!(store.tail_read_pieces(1, Lsn(102), 8, &mut pieces), 8);
        assert_eq!(pieces, [&b"cd"[..], &b"efgh"[..], &b"ij"[..]]);
        pieces.clear();
        // To the tail's end, and nothing for what it does not hold.
        assert_eq!(store.tail_read_pieces(1, Lsn(106), 100, &mut pieces), 6);
        assert_eq!(pieces.concat(), b"ghijkl");
        pieces.clear();
        assert_eq!(store.tail_read_pieces(1, Lsn(112), 100, &mut pieces), 0);
        assert_eq!(store.tail_read_pieces(2, Lsn(104), 100, &mut pieces), 0);
        assert!(pieces.is_empty());
    }
}
