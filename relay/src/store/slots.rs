//! Replication slots on the relay: persistent and temporary physical slots that downstreams
//! create (`CREATE_REPLICATION_SLOT`), use (`START_REPLICATION SLOT`, `primary_slot_name`) and
//! drop. A slot holds WAL on the relay's disk from its `restart_lsn`, which moves forward with
//! the flush position its user reports.
//!
//! Persistent slots live in `<data-dir>/slots/<name>.json`, written with [`durable_write`]
//! (temp, fsync, rename, fsync dir). Temporary slots live in memory and die with their session.
//! Errors are [`SlotError`]: PostgreSQL's words (slot.c), with no wire-protocol type; the
//! downstream maps them to SQLSTATEs (`downstream::error`).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::fs::{durable_write, fsync_dir};
use crate::wal::{Lsn, TimeLineId};

/// How often an advancing slot's position is written to disk while it is in use; a crash
/// loses at most this much progress, which only means WAL is kept a little longer.
const SAVE_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotData {
    pub name: String,
    /// Where the slot's user needs WAL from; `None` until reserved.
    pub restart_lsn: Option<Lsn>,
    pub restart_tli: Option<TimeLineId>,
    /// Why the slot was invalidated (`wal_removed`), if it was.
    pub invalidated: Option<String>,
}

#[derive(Debug)]
struct Slot {
    data: SlotData,
    temporary: bool,
    active_pid: Option<i32>,
    /// For temporary slots: the session that owns it.
    owner_pid: Option<i32>,
    dirty: bool,
    last_saved: Instant,
}

/// A slot as reported (`pg_replication_slots`-like).
#[derive(Debug, Clone, Serialize)]
pub struct SlotInfo {
    pub slot_name: String,
    pub temporary: bool,
    pub active_pid: Option<i32>,
    pub restart_lsn: Option<Lsn>,
    pub invalidation_reason: Option<String>,
}

/// Why a slot operation was refused. The messages are PostgreSQL's (slot.c), word for word:
/// clients and operators see them as they are.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("replication slot name \"{0}\" is too short")]
    NameTooShort(String),
    #[error("replication slot name \"{0}\" is too long")]
    NameTooLong(String),
    #[error("replication slot name \"{0}\" contains invalid character")]
    NameInvalidCharacter(String),
    #[error("replication slot \"{0}\" already exists")]
    AlreadyExists(String),
    /// `max_replication_slots` slots exist already.
    #[error("all replication slots are in use")]
    AllInUse,
    /// `max_replication_slots` is 0.
    #[error("replication slots can only be used if max_replication_slots > 0")]
    Disabled,
    #[error("replication slot \"{0}\" does not exist")]
    DoesNotExist(String),
    #[error("replication slot \"{name}\" is active for PID {pid}")]
    Active { name: String, pid: i32 },
    #[error("can no longer access replication slot \"{name}\"")]
    Invalidated { name: String, reason: String },
    /// The slot file could not be written.
    #[error("could not create replication slot \"{name}\": {source}")]
    Create {
        name: String,
        source: std::io::Error,
    },
}

/// More slots are stored than `max_replication_slots` allows (PostgreSQL's startup error).
#[derive(Debug, thiserror::Error)]
#[error(
    "too many replication slots active before shutdown: {stored} stored, max_replication_slots \
     is {max}; increase max_replication_slots and try again"
)]
pub struct TooManySlots {
    pub stored: usize,
    pub max: usize,
}

impl SlotError {
    /// PostgreSQL's errdetail, where it gives one.
    pub fn detail(&self) -> Option<String> {
        match self {
            SlotError::Invalidated { reason, .. } => Some(format!(
                "This replication slot has been invalidated due to \"{reason}\"."
            )),
            _ => None,
        }
    }

    /// PostgreSQL's errhint, where it gives one.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            SlotError::NameInvalidCharacter(_) => Some(
                "Replication slot names may only contain lower case letters, numbers, and the underscore character.",
            ),
            SlotError::AllInUse => Some("Free one or increase max_replication_slots."),
            _ => None,
        }
    }
}

pub struct Slots {
    dir: PathBuf,
    inner: Mutex<BTreeMap<String, Slot>>,
    /// `max_replication_slots`: how many slots (persistent and temporary) may exist; no limit
    /// until [`Slots::set_max`] is called.
    max: AtomicUsize,
}

/// PostgreSQL's ReplicationSlotValidateName (the rule is [`crate::wal::slot_name`]'s).
pub fn validate_name(name: &str) -> Result<(), SlotError> {
    use crate::wal::slot_name::{validate, SlotNameError};
    validate(name).map_err(|e| match e {
        SlotNameError::TooShort(n) => SlotError::NameTooShort(n),
        SlotNameError::TooLong(n) => SlotError::NameTooLong(n),
        SlotNameError::InvalidCharacter(n) => SlotError::NameInvalidCharacter(n),
    })
}

fn does_not_exist(name: &str) -> SlotError {
    SlotError::DoesNotExist(name.to_string())
}

fn active_for(name: &str, pid: i32) -> SlotError {
    SlotError::Active {
        name: name.to_string(),
        pid,
    }
}

impl Slots {
    /// Loads the persistent slots of `data_dir/slots`.
    pub fn load(data_dir: &Path) -> std::io::Result<Arc<Slots>> {
        let dir = data_dir.join("slots");
        fs::create_dir_all(&dir)?;
        let mut map = BTreeMap::new();
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let parsed = fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<SlotData>(&b).ok())
                .filter(|d| validate_name(&d.name).is_ok());
            match parsed {
                Some(data) => {
                    map.insert(
                        data.name.clone(),
                        Slot {
                            data,
                            temporary: false,
                            active_pid: None,
                            owner_pid: None,
                            dirty: false,
                            last_saved: Instant::now(),
                        },
                    );
                }
                None => tracing::warn!("ignoring unreadable slot file {}", path.display()),
            }
        }
        Ok(Arc::new(Slots {
            dir,
            inner: Mutex::new(map),
            max: AtomicUsize::new(usize::MAX),
        }))
    }

    /// Sets `max_replication_slots`. Refused, as PostgreSQL refuses to start, when more slots
    /// than that are stored: they would all be kept but some could not be used.
    pub fn set_max(&self, max: usize) -> Result<(), TooManySlots> {
        let stored = self.lock().len();
        if stored > max {
            return Err(TooManySlots { stored, max });
        }
        self.max.store(max, Ordering::Relaxed);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Slot>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn save(&self, data: &SlotData) -> std::io::Result<()> {
        let body = serde_json::to_vec_pretty(data).map_err(std::io::Error::other)?;
        durable_write(&self.dir.join(format!("{}.json", data.name)), &body)
    }

    /// `CREATE_REPLICATION_SLOT name [TEMPORARY] PHYSICAL [RESERVE_WAL]`.
    pub fn create(
        &self,
        name: &str,
        temporary: bool,
        reserve_at: Option<(Lsn, TimeLineId)>,
        owner_pid: i32,
    ) -> Result<(), SlotError> {
        validate_name(name)?;
        let max = self.max.load(Ordering::Relaxed);
        if max == 0 {
            return Err(SlotError::Disabled);
        }
        let mut map = self.lock();
        if map.contains_key(name) {
            return Err(SlotError::AlreadyExists(name.to_string()));
        }
        if map.len() >= max {
            return Err(SlotError::AllInUse);
        }
        let data = SlotData {
            name: name.to_string(),
            restart_lsn: reserve_at.map(|r| r.0),
            restart_tli: reserve_at.map(|r| r.1),
            invalidated: None,
        };
        if !temporary {
            self.save(&data).map_err(|source| SlotError::Create {
                name: name.to_string(),
                source,
            })?;
        }
        map.insert(
            name.to_string(),
            Slot {
                data,
                temporary,
                // PostgreSQL leaves a temporary slot acquired by its creator.
                active_pid: temporary.then_some(owner_pid),
                owner_pid: temporary.then_some(owner_pid),
                dirty: false,
                last_saved: Instant::now(),
            },
        );
        Ok(())
    }

    /// `DROP_REPLICATION_SLOT name`.
    pub fn drop_slot(&self, name: &str, by_pid: i32) -> Result<(), SlotError> {
        let mut map = self.lock();
        let slot = map.get(name).ok_or_else(|| does_not_exist(name))?;
        if let Some(pid) = slot.active_pid.filter(|p| *p != by_pid) {
            return Err(active_for(name, pid));
        }
        let temporary = slot.temporary;
        map.remove(name);
        drop(map);
        if !temporary {
            let _ = fs::remove_file(self.dir.join(format!("{name}.json")));
            let _ = fsync_dir(&self.dir);
        }
        Ok(())
    }

    /// Marks a slot in use by `pid` (START_REPLICATION SLOT).
    pub fn acquire(&self, name: &str, pid: i32) -> Result<SlotData, SlotError> {
        let mut map = self.lock();
        let slot = map.get_mut(name).ok_or_else(|| does_not_exist(name))?;
        if let Some(other) = slot.active_pid.filter(|p| *p != pid) {
            return Err(active_for(name, other));
        }
        if let Some(reason) = &slot.data.invalidated {
            return Err(SlotError::Invalidated {
                name: name.to_string(),
                reason: reason.clone(),
            });
        }
        slot.active_pid = Some(pid);
        Ok(slot.data.clone())
    }

    /// Ends `pid`'s use of a slot, saving its position.
    pub fn release(&self, name: &str, pid: i32) {
        let mut map = self.lock();
        if let Some(slot) = map.get_mut(name) {
            if slot.active_pid == Some(pid) && slot.owner_pid != Some(pid) {
                slot.active_pid = None;
            }
            if slot.dirty && !slot.temporary {
                if let Err(e) = self.save(&slot.data) {
                    tracing::warn!("could not save replication slot \"{name}\": {e}");
                }
                slot.dirty = false;
            }
        }
    }

    /// Drops the temporary slots `pid` created (its session ended).
    pub fn drop_temporary_of(&self, pid: i32) {
        self.lock().retain(|_, s| s.owner_pid != Some(pid));
    }

    /// The slot's user confirmed it flushed up to `flush` (PhysicalConfirmReceivedLocation:
    /// only a valid position moves the slot, and only forward).
    pub fn confirm_flush(&self, name: &str, flush: Lsn, tli: TimeLineId) {
        if !flush.is_valid() {
            return;
        }
        let mut map = self.lock();
        let Some(slot) = map.get_mut(name) else {
            return;
        };
        if slot.data.invalidated.is_some() || slot.data.restart_lsn.is_some_and(|r| r >= flush) {
            return;
        }
        slot.data.restart_lsn = Some(flush);
        slot.data.restart_tli = Some(tli);
        slot.dirty = true;
        if !slot.temporary && slot.last_saved.elapsed() >= SAVE_INTERVAL {
            if let Err(e) = self.save(&slot.data) {
                tracing::warn!("could not save replication slot \"{name}\": {e}");
            }
            slot.dirty = false;
            slot.last_saved = Instant::now();
        }
    }

    pub fn get(&self, name: &str) -> Option<SlotData> {
        self.lock().get(name).map(|s| s.data.clone())
    }

    pub fn list(&self) -> Vec<SlotInfo> {
        self.lock()
            .values()
            .map(|s| SlotInfo {
                slot_name: s.data.name.clone(),
                temporary: s.temporary,
                active_pid: s.active_pid,
                restart_lsn: s.data.restart_lsn,
                invalidation_reason: s.data.invalidated.clone(),
            })
            .collect()
    }

    /// The oldest position any valid slot needs.
    pub fn min_restart_lsn(&self) -> Option<Lsn> {
        self.lock()
            .values()
            .filter(|s| s.data.invalidated.is_none())
            .filter_map(|s| s.data.restart_lsn)
            .min()
    }

    /// Invalidates slots whose restart_lsn is below `cutoff` (max_slot_wal_keep_size).
    pub fn invalidate_before(&self, cutoff: Lsn) -> Vec<String> {
        let mut out = Vec::new();
        let mut map = self.lock();
        for s in map.values_mut() {
            if s.data.invalidated.is_none() && s.data.restart_lsn.is_some_and(|r| r < cutoff) {
                tracing::warn!(
                    slot = %s.data.name,
                    restart_lsn = %s.data.restart_lsn.unwrap_or_default(),
                    "invalidating replication slot because its restart_lsn exceeds max_slot_wal_keep_size"
                );
                s.data.invalidated = Some("wal_removed".into());
                s.data.restart_lsn = None;
                if !s.temporary {
                    if let Err(e) = self.save(&s.data) {
                        tracing::warn!("could not save replication slot \"{}\": {e}", s.data.name);
                    }
                }
                out.push(s.data.name.clone());
            }
        }
        out
    }

    /// Writes every changed persistent slot (at shutdown and from the retention task).
    pub fn save_dirty(&self) {
        let mut map = self.lock();
        for s in map.values_mut().filter(|s| s.dirty && !s.temporary) {
            if let Err(e) = self.save(&s.data) {
                tracing::warn!("could not save replication slot \"{}\": {e}", s.data.name);
            } else {
                s.dirty = false;
                s.last_saved = Instant::now();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_and_errors() {
        let d = tempfile::tempdir().unwrap();
        let slots = Slots::load(d.path()).unwrap();
        slots
            .create("s1", false, Some((Lsn(0x3000000), 1)), 10)
            .unwrap();
        let dup = slots.create("s1", false, None, 10).unwrap_err();
        assert!(matches!(dup, SlotError::AlreadyExists(_)));
        assert_eq!(dup.to_string(), "replication slot \"s1\" already exists");
        assert!(matches!(
            slots.create("Bad-Name", false, None, 10).unwrap_err(),
            SlotError::NameInvalidCharacter(_)
        ));
        slots.acquire("s1", 11).unwrap();
        assert_eq!(
            slots.acquire("s1", 12).unwrap_err().to_string(),
            "replication slot \"s1\" is active for PID 11"
        );
        assert!(matches!(
            slots.drop_slot("s1", 12).unwrap_err(),
            SlotError::Active { pid: 11, .. }
        ));
        slots.confirm_flush("s1", Lsn(0x3100000), 1);
        slots.confirm_flush("s1", Lsn(0), 1);
        slots.release("s1", 11);
        // Persisted with its advanced position.
        let again = Slots::load(d.path()).unwrap();
        assert_eq!(again.get("s1").unwrap().restart_lsn, Some(Lsn(0x3100000)));
        assert_eq!(again.min_restart_lsn(), Some(Lsn(0x3100000)));
        assert!(matches!(
            again.drop_slot("nope", 1).unwrap_err(),
            SlotError::DoesNotExist(_)
        ));
        again.drop_slot("s1", 1).unwrap();
        assert!(Slots::load(d.path()).unwrap().get("s1").is_none());
    }

    #[test]
    fn max_replication_slots_counts_persistent_and_temporary_slots() {
        let d = tempfile::tempdir().unwrap();
        let slots = Slots::load(d.path()).unwrap();
        slots.set_max(2).unwrap();
        slots.create("a", false, None, 1).unwrap();
        slots.create("t", true, None, 1).unwrap();
        let full = slots.create("b", false, None, 1).unwrap_err();
        assert!(matches!(full, SlotError::AllInUse), "{full:?}");
        assert_eq!(full.to_string(), "all replication slots are in use");
        assert_eq!(
            full.hint(),
            Some("Free one or increase max_replication_slots.")
        );
        // An existing name is still reported as such, as PostgreSQL checks it first.
        assert!(matches!(
            slots.create("a", false, None, 1).unwrap_err(),
            SlotError::AlreadyExists(_)
        ));
        slots.drop_temporary_of(1);
        slots.create("b", false, None, 1).unwrap();
        // More stored than allowed: refused, as PostgreSQL refuses to start.
        let again = Slots::load(d.path()).unwrap();
        let e = again.set_max(1).unwrap_err();
        assert_eq!((e.stored, e.max), (2, 1));
        assert!(e
            .to_string()
            .starts_with("too many replication slots active before shutdown"));
        again.set_max(0).unwrap_err();
        let none = Slots::load(tempfile::tempdir().unwrap().path()).unwrap();
        none.set_max(0).unwrap();
        assert_eq!(
            none.create("x", false, None, 1).unwrap_err().to_string(),
            "replication slots can only be used if max_replication_slots > 0"
        );
    }

    #[test]
    fn temporary_slots_die_with_their_session() {
        let d = tempfile::tempdir().unwrap();
        let slots = Slots::load(d.path()).unwrap();
        slots
            .create("pg_walreceiver_7", true, Some((Lsn(0x1000000), 1)), 7)
            .unwrap();
        assert!(slots.acquire("pg_walreceiver_7", 7).is_ok());
        assert!(matches!(
            slots.acquire("pg_walreceiver_7", 8).unwrap_err(),
            SlotError::Active { pid: 7, .. }
        ));
        slots.drop_temporary_of(7);
        assert!(slots.get("pg_walreceiver_7").is_none());
        assert!(Slots::load(d.path()).unwrap().list().is_empty());
    }

    #[test]
    fn invalidation() {
        let d = tempfile::tempdir().unwrap();
        let slots = Slots::load(d.path()).unwrap();
        slots
            .create("old", false, Some((Lsn(0x1000000), 1)), 1)
            .unwrap();
        slots
            .create("new", false, Some((Lsn(0x9000000), 1)), 1)
            .unwrap();
        assert_eq!(
            slots.invalidate_before(Lsn(0x5000000)),
            vec!["old".to_string()]
        );
        let e = slots.acquire("old", 3).unwrap_err();
        assert!(matches!(e, SlotError::Invalidated { .. }));
        assert_eq!(
            e.detail().as_deref(),
            Some("This replication slot has been invalidated due to \"wal_removed\".")
        );
        assert_eq!(slots.min_restart_lsn(), Some(Lsn(0x9000000)));
    }
}
