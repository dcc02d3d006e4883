//! `<data-dir>/failover.json`: what the relay has seen of its failover candidates, so that a
//! restarted relay holds at their last confirmed positions even when they are down when it
//! starts (brief §3.5: the rule must survive the relay's own restarts).
//!
//! The file owns one timeline's positions:
//! `{"timeline": 1, "hold_missing": true, "standbys": {"c": "0/5000000"}}`.
//! Positions are confirmed flushes (a connected standby's, or its slot's `restart_lsn`); the
//! file may lag them (it is written at most once a second while they move) but is never
//! ahead of them, so holding at what it says is always safe. It is replaced atomically with
//! [`crate::store::fs::durable_write`]; `relay.state` is not touched.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::wal::{Lsn, TimeLineId};

pub const FILE_NAME: &str = "failover.json";

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parse {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The positions seen on one timeline.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    pub timeline: TimeLineId,
    /// Whether a candidate the relay cannot place holds on this timeline: false once the
    /// relay followed a failover to it (the promoted candidate is the primary itself), so a
    /// restart on that timeline does not start holding for it.
    pub hold_missing: bool,
    pub standbys: BTreeMap<String, Lsn>,
}

fn yes() -> bool {
    true
}

#[derive(Serialize, Deserialize)]
struct FileJson {
    timeline: TimeLineId,
    #[serde(default = "yes")]
    hold_missing: bool,
    standbys: BTreeMap<String, String>,
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// Loads the file; `Ok(None)` when there is none (a relay that never watched candidates).
pub fn load(data_dir: &Path) -> Result<Option<Seen>, PersistError> {
    let path = path(data_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(PersistError::Read { path, source }),
    };
    let parse_err = |reason: String| PersistError::Parse {
        path: path.clone(),
        reason,
    };
    let file: FileJson = serde_json::from_str(&text).map_err(|e| parse_err(e.to_string()))?;
    let mut standbys = BTreeMap::new();
    for (name, lsn) in file.standbys {
        let lsn: Lsn = lsn.parse().map_err(|e| parse_err(format!("{name}: {e}")))?;
        standbys.insert(name, lsn);
    }
    Ok(Some(Seen {
        timeline: file.timeline,
        hold_missing: file.hold_missing,
        standbys,
    }))
}

/// Replaces the file with `seen`, durably (blocking: call it off the async threads).
pub fn store(data_dir: &Path, seen: &Seen) -> Result<(), PersistError> {
    let path = path(data_dir);
    let file = FileJson {
        timeline: seen.timeline,
        hold_missing: seen.hold_missing,
        standbys: seen
            .standbys
            .iter()
            .map(|(n, l)| (n.clone(), l.to_string()))
            .collect(),
    };
    let mut bytes = serde_json::to_vec_pretty(&file).map_err(|e| PersistError::Write {
        path: path.clone(),
        source: std::io::Error::other(e),
    })?;
    bytes.push(b'\n');
    crate::store::fs::durable_write(&path, &bytes)
        .map_err(|source| PersistError::Write { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        let seen = Seen {
            timeline: 3,
            hold_missing: false,
            standbys: BTreeMap::from([("c".into(), Lsn(0x1_0500_0000))]),
        };
        store(dir.path(), &seen).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(seen));
        let text = std::fs::read_to_string(path(dir.path())).unwrap();
        assert!(text.contains("\"1/5000000\""), "{text}");
        std::fs::write(
            path(dir.path()),
            "{\"timeline\":1,\"standbys\":{\"c\":\"x\"}}",
        )
        .unwrap();
        assert!(matches!(load(dir.path()), Err(PersistError::Parse { .. })));
    }
}
