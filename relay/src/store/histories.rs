//! Timeline history files (`wal/NNNNNNNN.history`), kept byte-exact as the upstream sent them.
//!
//! Owns: the in-memory copy of every stored history file, and writing new ones.
//!
//! Invariants: the in-memory map only holds what is on disk: a history file is written
//! durably (temp, fsync, rename, fsync dir) before it is added, so `IDENTIFY_SYSTEM` and
//! `TIMELINE_HISTORY` never answer with a file a crash could lose. A file already stored with
//! the same bytes is not written again.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::RwLock;

use bytes::Bytes;

use super::catalog::Catalog;
use super::fs::durable_write;
use super::{io_err, StoreError};
use crate::wal::segment::history_file_name;
use crate::wal::TimeLineId;

pub struct Histories {
    wal_dir: PathBuf,
    files: RwLock<BTreeMap<TimeLineId, Bytes>>,
}

impl Histories {
    /// No history files yet (a new store).
    pub(super) fn empty(wal_dir: PathBuf) -> Self {
        Histories {
            wal_dir,
            files: RwLock::new(BTreeMap::new()),
        }
    }

    /// Reads the history files the catalogue found (at open).
    pub(super) fn load(catalog: &Catalog) -> Result<Self, StoreError> {
        let mut files = BTreeMap::new();
        for (tli, name) in &catalog.histories {
            let content =
                std::fs::read(catalog.path(name)).map_err(io_err(format!("read {name}")))?;
            files.insert(*tli, Bytes::from(content));
        }
        Ok(Histories {
            wal_dir: catalog.dir().to_path_buf(),
            files: RwLock::new(files),
        })
    }

    /// The content of `tli`'s history file, byte-exact as received.
    pub fn get(&self, tli: TimeLineId) -> Option<Bytes> {
        self.files.read().ok().and_then(|h| h.get(&tli).cloned())
    }

    /// Stores a history file (atomically; a file already there with the same bytes is kept).
    pub fn save(&self, tli: TimeLineId, content: Bytes) -> Result<(), StoreError> {
        if self.get(tli).as_deref() == Some(&content[..]) {
            return Ok(());
        }
        let name = history_file_name(tli);
        durable_write(&self.wal_dir.join(&name), &content)
            .map_err(io_err(format!("write {name}")))?;
        if let Ok(mut h) = self.files.write() {
            h.insert(tli, content);
        }
        Ok(())
    }
}
