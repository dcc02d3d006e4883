//! The store's filesystem layer: every write of a file under the data directory goes through
//! here.
//!
//! Owns: the durable whole-file write ([`durable_write`]: temp file, fsync, rename, fsync of
//! the directory), directory fsync, and the data directory's lock.
//!
//! Invariants:
//! - A small file under the data directory (`relay.state`, `slots/*.json`, history files,
//!   `torn/*`) is either absent, or whole with its old content, or whole with its new content:
//!   every such write goes through [`durable_write`], and its new content counts as stored only
//!   once it returned.
//! - A rename or removal is durable only after [`fsync_dir`] of the directory it changed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Makes the entries of `dir` (creations, renames, removals) durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The temp file a durable write of `path` goes through: `<path>.tmp`, beside it, so the
/// rename stays within one directory.
fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Replaces `path` with `bytes`, durably: written to `<path>.tmp`, fsynced, renamed over `path`,
/// and the directory fsynced. A crash at any point leaves either the old file or the new one.
pub fn durable_write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = tmp_path(path);
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    fsync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Why the data directory could not be locked.
#[derive(Debug)]
pub enum LockError {
    /// Another process holds the lock.
    Held,
    /// The lock file could not be opened (or created).
    Open(io::Error),
    /// The lock itself failed.
    Lock(io::Error),
}

/// Takes the exclusive lock on `<data-dir>/walrelay.lock` (one relay per data directory);
/// it holds as long as the returned file is open.
pub fn lock_data_dir(path: &Path) -> Result<File, LockError> {
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(LockError::Open)?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(fs::TryLockError::WouldBlock) => Err(LockError::Held),
        Err(fs::TryLockError::Error(e)) => Err(LockError::Lock(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_write_replaces_whole_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("relay.state");
        durable_write(&p, b"one").unwrap();
        durable_write(&p, b"two, longer").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two, longer");
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("relay.state")]);
        assert_eq!(tmp_path(&p), d.path().join("relay.state.tmp"));
    }
}
