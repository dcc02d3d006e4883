//! `relay.state`: the relay's small durable state (which cluster it holds WAL for, and how far
//! its WAL is known to be durable).
//!
//! Format: one JSON object, then a line `crc32c=XXXXXXXX` over the JSON bytes. Written with
//! [`durable_write`] (temp file, fsync, rename, fsync of the directory), so a crash leaves
//! either the old or the new state, never a torn one; the checksum catches damage at rest.

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::fs::durable_write;
use crate::wal::{Lsn, TimeLineId};

pub const STATE_FILE: &str = "relay.state";
const MAGIC: &str = "walrelay-state";
const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayState {
    pub magic: String,
    pub version: u32,
    /// The upstream cluster's system identifier, as a decimal string (as IDENTIFY_SYSTEM gives it).
    pub system_identifier: String,
    pub wal_segment_size: u64,
    pub server_version: String,
    pub timeline: TimeLineId,
    /// Durable end of WAL on `timeline` when the state was written (a lower bound).
    pub flush_lsn: String,
}

impl RelayState {
    pub fn new(system_identifier: String, wal_segment_size: u64, server_version: String) -> Self {
        RelayState {
            magic: MAGIC.into(),
            version: VERSION,
            system_identifier,
            wal_segment_size,
            server_version,
            timeline: 0,
            flush_lsn: Lsn(0).to_string(),
        }
    }

    pub fn flush(&self) -> Lsn {
        self.flush_lsn.parse().unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("relay state file: {0}")]
    Io(#[from] std::io::Error),
    #[error("state file is damaged: {0}")]
    Damaged(String),
}

pub fn load(dir: &Path) -> Result<Option<RelayState>, StateError> {
    let path = dir.join(STATE_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let (json, crc_line) = text
        .rsplit_once("\ncrc32c=")
        .ok_or_else(|| StateError::Damaged("no checksum line".into()))?;
    let want = u32::from_str_radix(crc_line.trim(), 16)
        .map_err(|_| StateError::Damaged("bad checksum line".into()))?;
    if crc32c::crc32c(json.as_bytes()) != want {
        return Err(StateError::Damaged("checksum mismatch".into()));
    }
    let state: RelayState =
        serde_json::from_str(json).map_err(|e| StateError::Damaged(e.to_string()))?;
    if state.magic != MAGIC || state.version != VERSION {
        return Err(StateError::Damaged(format!(
            "unknown format {} version {}",
            state.magic, state.version
        )));
    }
    Ok(Some(state))
}

pub fn save(dir: &Path, state: &RelayState) -> Result<(), StateError> {
    let json =
        serde_json::to_string_pretty(state).map_err(|e| StateError::Damaged(e.to_string()))?;
    let crc = crc32c::crc32c(json.as_bytes());
    let text = format!("{json}\ncrc32c={crc:08X}\n");
    durable_write(&dir.join(STATE_FILE), text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage_detected() {
        let d = tempfile::tempdir().unwrap();
        assert!(load(d.path()).unwrap().is_none());
        let mut s = RelayState::new("7710847067492433073".into(), 16 << 20, "15.18".into());
        s.timeline = 1;
        s.flush_lsn = Lsn(0x3000000).to_string();
        save(d.path(), &s).unwrap();
        assert_eq!(load(d.path()).unwrap().unwrap(), s);
        let p = d.path().join(STATE_FILE);
        let text = fs::read_to_string(&p).unwrap().replace("15.18", "15.19");
        fs::write(&p, text).unwrap();
        assert!(matches!(load(d.path()), Err(StateError::Damaged(_))));
    }
}
