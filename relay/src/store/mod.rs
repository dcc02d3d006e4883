//! The relay's durable WAL store: standard segment files (`TTTTTTTTXXXXXXXXYYYYYYYY`, the one
//! being written as `.partial`), timeline history files and `relay.state`, under
//! `<data-dir>/wal/`.
//!
//! Invariants:
//! - Only the writer thread ([`writer`]) writes segment files.
//! - The durable position published on the `watch` channel ([`Store::subscribe`]) only moves
//!   after the bytes below it were fsynced; walsenders never read past it. What they may read
//!   (durable, within the failover limit, up to a timeline's switch point) is derived from it
//!   in one place, [`servable`], and published on its own watch ([`Store::subscribe_servable`]).
//! - Every segment file is whole from its first byte: streaming into a new segment file starts
//!   at the segment's start.
//! - One relay per data directory (an exclusive lock on `<data-dir>/walrelay.lock`).

pub mod reader;
mod recover;
pub mod retention;
pub mod servable;
pub mod slots;
pub mod state;
pub mod tail;
pub mod writer;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use tokio::sync::watch;

use crate::wal::segment::{history_file_name, parse_wal_file_name, WalFileName};
use crate::wal::{Lsn, TimeLineId};
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
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
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
    move |source| StoreError::Io { context, source }
}

/// Record ends remembered (about the last few hundred MB of WAL at typical record sizes).
const RECORD_ENDS_KEPT: usize = 1 << 18;

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
    histories: RwLock<BTreeMap<TimeLineId, Bytes>>,
    tail: Mutex<Tail>,
    /// Ends of the most recent valid records, per timeline: where served WAL may be cut so a
    /// downstream never holds a partial record past a bound, and what a fork point's next
    /// record end is.
    record_ends: Mutex<BTreeSet<(TimeLineId, Lsn)>>,
    slots: Arc<Slots>,
    _lock: fs::File,
}

impl Store {
    /// Opens (creating if needed) the store in `data_dir` and recovers its durable position.
    pub fn open(data_dir: &Path) -> Result<Arc<Store>, StoreError> {
        fs::create_dir_all(data_dir).map_err(io_err(format!("create {}", data_dir.display())))?;
        let wal_dir = data_dir.join("wal");
        fs::create_dir_all(&wal_dir).map_err(io_err(format!("create {}", wal_dir.display())))?;
        let lock_path = data_dir.join("walrelay.lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(format!("open {}", lock_path.display())))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(StoreError::Locked(data_dir.into())),
            Err(fs::TryLockError::Error(e)) => return Err(io_err("lock data directory")(e)),
        }

        let state = state::load(data_dir)?;
        let identity = state.as_ref().map(|s| Identity {
            system_identifier: s.system_identifier.clone(),
            seg_size: s.wal_segment_size,
            server_version: s.server_version.clone(),
        });
        let mut histories = BTreeMap::new();
        let mut durable = Durable::default();
        if let (Some(st), Some(id)) = (&state, &identity) {
            durable = Durable {
                timeline: st.timeline,
                lsn: st.flush(),
            };
            for entry in fs::read_dir(&wal_dir).map_err(io_err("list wal directory"))? {
                let entry = entry.map_err(io_err("list wal directory"))?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                match parse_wal_file_name(name, id.seg_size) {
                    Some(WalFileName::History { tli }) => {
                        let content =
                            fs::read(entry.path()).map_err(io_err(format!("read {name}")))?;
                        histories.insert(tli, Bytes::from(content));
                    }
                    // A complete segment beyond the recorded position: the state file was not
                    // rewritten after the segment was completed (crash); the segment was fsynced
                    // before its rename, so all of it is durable.
                    Some(WalFileName::Segment {
                        tli,
                        segno,
                        partial: false,
                    }) if tli == st.timeline => {
                        let end = Lsn((segno + 1) * id.seg_size);
                        if end > durable.lsn {
                            durable.lsn = end;
                        }
                    }
                    _ => {}
                }
            }
            durable = recover::partial_tail(data_dir, &wal_dir, id, durable)?;
        }
        let slots = Slots::load(data_dir).map_err(io_err("load replication slots"))?;
        let (durable_tx, _) = watch::channel(durable);
        let servable_tx =
            servable::channel(durable, histories.get(&durable.timeline).map(|h| &h[..]));
        let (health_tx, _) = watch::channel(WriterHealth::default());
        Ok(Arc::new(Store {
            data_dir: data_dir.to_path_buf(),
            wal_dir,
            identity: RwLock::new(identity),
            durable_tx,
            servable_tx,
            health_tx,
            histories: RwLock::new(histories),
            tail: Mutex::new(Tail::default()),
            record_ends: Mutex::new(BTreeSet::new()),
            slots,
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
        self.histories
            .read()
            .ok()
            .and_then(|h| h.get(&tli).cloned())
    }

    /// Stores a history file (atomically; a file already there with the same bytes is kept).
    pub fn save_history(&self, tli: TimeLineId, content: Bytes) -> Result<(), StoreError> {
        if self.history(tli).as_deref() == Some(&content[..]) {
            return Ok(());
        }
        let name = history_file_name(tli);
        let tmp = self.wal_dir.join(format!("{name}.tmp"));
        let write = || -> std::io::Result<()> {
            fs::write(&tmp, &content)?;
            fs::File::open(&tmp)?.sync_all()?;
            fs::rename(&tmp, self.wal_dir.join(&name))?;
            state::fsync_dir(&self.wal_dir)
        };
        write().map_err(io_err(format!("write {name}")))?;
        if let Ok(mut h) = self.histories.write() {
            h.insert(tli, content);
        }
        Ok(())
    }

    /// Moves the WAL of `tli` from `at` on into `<data-dir>/diverged/` (whole segments past
    /// `at` are moved; the segment holding `at` is copied there and zeroed from `at` on in
    /// place). Only the writer calls this. Returns the bytes of WAL moved aside.
    pub(crate) fn move_diverged(&self, tli: TimeLineId, at: Lsn) -> std::io::Result<u64> {
        use std::os::unix::fs::FileExt;
        let Some(id) = self.identity() else {
            return Ok(0);
        };
        let seg_size = id.seg_size;
        let diverged = self.data_dir.join("diverged");
        fs::create_dir_all(&diverged)?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let durable = self.durable();
        let end = if durable.timeline == tli {
            durable.lsn
        } else {
            Lsn(u64::MAX)
        };
        let mut moved = 0u64;
        for entry in fs::read_dir(&self.wal_dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(WalFileName::Segment { tli: t, segno, .. }) =
                parse_wal_file_name(name, seg_size)
            else {
                continue;
            };
            if t != tli {
                continue;
            }
            let seg_start = Lsn(segno * seg_size);
            let seg_end = Lsn(seg_start.0 + seg_size);
            if seg_end <= at {
                continue;
            }
            let target = diverged.join(format!("{name}.{stamp}"));
            if seg_start >= at {
                fs::rename(entry.path(), &target)?;
                moved += end.0.min(seg_end.0).saturating_sub(seg_start.0);
            } else {
                // The fork is inside this segment: keep a copy of it whole, then zero the
                // diverged bytes in place so they can never be served.
                fs::copy(entry.path(), &target)?;
                let f = fs::OpenOptions::new().write(true).open(entry.path())?;
                let off = at.segment_offset(seg_size);
                let zeros = vec![0u8; (seg_size - off) as usize];
                f.write_all_at(&zeros, off)?;
                f.sync_all()?;
                if !name.ends_with(".partial") {
                    let partial = self.wal_dir.join(format!("{name}.partial"));
                    fs::rename(entry.path(), partial)?;
                }
                moved += end.0.min(seg_end.0).saturating_sub(at.0);
            }
        }
        state::fsync_dir(&self.wal_dir)?;
        state::fsync_dir(&diverged)?;
        Ok(moved)
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
        if new.is_empty() {
            return;
        }
        let mut ends = self.record_ends.lock().unwrap_or_else(|e| e.into_inner());
        ends.extend(new.iter().map(|l| (tli, *l)));
        while ends.len() > RECORD_ENDS_KEPT {
            ends.pop_first();
        }
    }

    /// The end of the last known record of `tli` at or before `lsn`.
    pub fn record_end_at_or_before(&self, tli: TimeLineId, lsn: Lsn) -> Option<Lsn> {
        let ends = self.record_ends.lock().unwrap_or_else(|e| e.into_inner());
        ends.range((tli, Lsn(0))..=(tli, lsn))
            .next_back()
            .map(|(_, l)| *l)
    }

    /// The end of the first known record of `tli` that ends after `lsn`.
    pub fn record_end_after(&self, tli: TimeLineId, lsn: Lsn) -> Option<Lsn> {
        let ends = self.record_ends.lock().unwrap_or_else(|e| e.into_inner());
        ends.range((tli, Lsn(lsn.0 + 1))..=(tli, Lsn(u64::MAX)))
            .next()
            .map(|(_, l)| *l)
    }

    pub(crate) fn tail_clear(&self) {
        if let Ok(mut t) = self.tail.lock() {
            t.clear();
        }
    }

    /// Recent WAL from memory, if still there.
    pub fn tail_read(&self, tli: TimeLineId, lsn: Lsn, max: usize) -> Option<Bytes> {
        self.tail.lock().ok().and_then(|t| t.read(tli, lsn, max))
    }
}
