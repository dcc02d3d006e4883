//! The store's filesystem layer: every write of a file under the data directory goes through
//! here.
//!
//! Owns: the durable whole-file write ([`durable_write`]: temp file, fsync, rename, fsync of
//! the directory), directory fsync, the data directory's lock, and segment files: opening and
//! creating them, writing, zeroing and fsyncing them, and the `.partial` rule
//! ([`SegmentFile`], [`open_for_read`], [`rename_complete`], [`zero_from`]).
//!
//! The `.partial` rule: the segment being written is named `….partial` and pre-sized to the
//! segment size; it gets its complete name only after it was written to its end and fsynced.
//! Readers look for the complete name first, then the `.partial`.
//!
//! Invariants:
//! - A small file under the data directory (`relay.state`, `slots/*.json`, history files,
//!   `torn/*`) is either absent, or whole with its old content, or whole with its new content:
//!   every such write goes through [`durable_write`], and its new content counts as stored only
//!   once it returned.
//! - A rename or removal is durable only after [`fsync_dir`] of the directory it changed.
//! - A segment file under its complete name is whole and fsynced (see [`rename_complete`]).
//!
//! Fault injection: this is the seam where tests make the disk fail. With the `failpoints`
//! cargo feature, the points `fs::durable-write::before-rename`, `fs::segment::create`,
//! `fs::segment::write`, `fs::segment::fsync`, `fs::segment::zero` and
//! `fs::complete::before-rename` fail the
//! operation with an injected OS error (ENOSPC for create and write, EIO otherwise) when
//! configured with `fail::cfg(NAME, "return")`, or with `"return(TEXT)"` only for paths that
//! contain TEXT (a test aims at its own temporary directory while other tests run). Without
//! the feature the points compile to nothing.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::wal::segment::{partial_file_name, segment_file_name};
use crate::wal::{Lsn, TimeLineId};

/// A fail point (see the module doc): returns `Err(wrap(injected error))` from the enclosing
/// function when configured.
#[cfg(feature = "failpoints")]
macro_rules! fail_point {
    ($name:literal, $path:expr, $wrap:expr) => {
        if let Some(e) = injected($name, $path) {
            return Err(($wrap)(e));
        }
    };
}

#[cfg(not(feature = "failpoints"))]
macro_rules! fail_point {
    ($name:literal, $path:expr, $wrap:expr) => {};
}

/// The error a configured fail point injects for `path`, if it fires there.
#[cfg(feature = "failpoints")]
fn injected(name: &'static str, path: &Path) -> Option<io::Error> {
    // ENOSPC where a full disk shows, EIO (a failing device) elsewhere.
    let errno = if name == "fs::segment::create" || name == "fs::segment::write" {
        28
    } else {
        5
    };
    fail::fail_point!(name, |only: Option<String>| {
        match only {
            Some(text) if !path.to_string_lossy().contains(text.as_str()) => None,
            _ => Some(io::Error::from_raw_os_error(errno)),
        }
    });
    None
}

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
    fail_point!(
        "fs::durable-write::before-rename",
        path,
        std::convert::identity
    );
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

/// One segment file: its timeline, number, and the segment size that names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentId {
    pub tli: TimeLineId,
    pub segno: u64,
    pub seg_size: u64,
}

impl SegmentId {
    pub fn new(tli: TimeLineId, segno: u64, seg_size: u64) -> Self {
        SegmentId {
            tli,
            segno,
            seg_size,
        }
    }

    /// The segment of `tli` that holds `lsn`.
    pub fn holding(tli: TimeLineId, lsn: Lsn, seg_size: u64) -> Self {
        Self::new(tli, lsn.segment(seg_size), seg_size)
    }

    /// The name of the complete segment (`TTTTTTTTXXXXXXXXYYYYYYYY`).
    pub fn name(&self) -> String {
        segment_file_name(self.tli, self.segno, self.seg_size)
    }

    /// The name while it is being written (`….partial`).
    pub fn partial_name(&self) -> String {
        partial_file_name(self.tli, self.segno, self.seg_size)
    }

    pub fn start(&self) -> Lsn {
        Lsn(self.segno * self.seg_size)
    }

    pub fn end(&self) -> Lsn {
        Lsn(self.start().0 + self.seg_size)
    }
}

/// What was being done to a segment file when the I/O failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentOp {
    /// Creating the `.partial` file of a new segment.
    Create,
    /// Reserving the whole segment on disk (`set_len`).
    Size,
    Write,
    Fsync,
    /// Renaming `.partial` to the complete name.
    Rename,
    /// Fsyncing the WAL directory after a creation or a rename.
    FsyncDir,
}

/// An I/O failure on a segment file, typed by what was being done. The message keeps the words
/// operators know from the log and `/readyz`; the OS error is part of it (and deliberately not
/// a `source()`, so a `{:#}` chain does not print it twice).
#[derive(Debug, thiserror::Error)]
#[error("{}", self.message())]
pub struct SegmentIoError {
    pub op: SegmentOp,
    /// The file (for [`SegmentOp::FsyncDir`], the directory).
    pub path: PathBuf,
    cause: io::Error,
}

impl SegmentIoError {
    fn new(op: SegmentOp, path: &Path) -> impl FnOnce(io::Error) -> SegmentIoError + '_ {
        move |cause| SegmentIoError {
            op,
            path: path.to_path_buf(),
            cause,
        }
    }

    /// The OS error (a full disk is `StorageFull`).
    pub fn io(&self) -> &io::Error {
        &self.cause
    }

    pub fn into_io(self) -> io::Error {
        self.cause
    }

    fn message(&self) -> String {
        let (path, e) = (self.path.display(), &self.cause);
        match self.op {
            SegmentOp::Create => format!("could not create WAL segment {path}: {e}"),
            SegmentOp::Size => format!("could not size WAL segment {path}: {e}"),
            SegmentOp::Write => format!("could not write to WAL segment: {e}"),
            SegmentOp::Fsync => format!("could not fsync WAL segment: {e}"),
            SegmentOp::Rename => format!("could not rename {path}: {e}"),
            SegmentOp::FsyncDir => format!("could not fsync WAL directory: {e}"),
        }
    }
}

/// A segment file open for writing (the writer's). Renaming it from `.partial` to its complete
/// name does not disturb the open file.
pub struct SegmentFile {
    pub id: SegmentId,
    file: File,
    path: PathBuf,
    /// Open under its `.partial` name (else it was complete already).
    partial: bool,
}

impl SegmentFile {
    /// Opens segment `id` for writing, by the `.partial` rule: the `.partial` file if there is
    /// one; else the complete file (bytes of a segment already complete are received again
    /// when `relay.state` lagged: the same bytes are written again in place); else a new
    /// `.partial`, sized to the whole segment, with the directory fsynced.
    pub fn open_for_write(wal_dir: &Path, id: SegmentId) -> Result<SegmentFile, SegmentIoError> {
        let partial = wal_dir.join(id.partial_name());
        let open = |p: &Path| OpenOptions::new().write(true).open(p);
        if let Ok(file) = open(&partial) {
            return Ok(SegmentFile {
                id,
                file,
                path: partial,
                partial: true,
            });
        }
        let full = wal_dir.join(id.name());
        if let Ok(file) = open(&full) {
            return Ok(SegmentFile {
                id,
                file,
                path: full,
                partial: false,
            });
        }
        let create_err = SegmentIoError::new(SegmentOp::Create, &partial);
        fail_point!("fs::segment::create", &partial, create_err);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&partial)
            .map_err(create_err)?;
        // Reserve the whole segment now, as PostgreSQL does, so a full disk shows up here and
        // not in the middle of a segment.
        file.set_len(id.seg_size)
            .map_err(SegmentIoError::new(SegmentOp::Size, &partial))?;
        fsync_dir(wal_dir).map_err(SegmentIoError::new(SegmentOp::FsyncDir, wal_dir))?;
        Ok(SegmentFile {
            id,
            file,
            path: partial,
            partial: true,
        })
    }

    /// Writes `data` at offset `off` of the segment.
    pub fn write_at(&self, data: &[u8], off: u64) -> Result<(), SegmentIoError> {
        let err = SegmentIoError::new(SegmentOp::Write, &self.path);
        fail_point!("fs::segment::write", &self.path, err);
        self.file.write_all_at(data, off).map_err(err)
    }

    /// Makes what was written durable (`fdatasync`: the size was fixed at creation).
    pub fn sync(&self) -> Result<(), SegmentIoError> {
        let err = SegmentIoError::new(SegmentOp::Fsync, &self.path);
        fail_point!("fs::segment::fsync", &self.path, err);
        // The one wait every served byte has (nothing goes downstream before it returned): its
        // spread is the floor of the latency the relay adds (docs/performance.md).
        let started = std::time::Instant::now();
        let r = self.file.sync_data().map_err(err);
        metrics::histogram!("walrelay_wal_fsync_seconds").record(started.elapsed().as_secs_f64());
        r
    }

    /// The segment is written to its end: fsync it, then give a `.partial` its complete name
    /// (see [`rename_complete`]).
    pub fn complete(self, wal_dir: &Path) -> Result<(), SegmentIoError> {
        self.sync()?;
        if self.partial {
            rename_complete(wal_dir, self.id)?;
        }
        Ok(())
    }
}

/// Renames the `.partial` file of `id` to its complete name and fsyncs the directory. The
/// caller has fsynced the file: a complete name always means whole and durable.
pub fn rename_complete(wal_dir: &Path, id: SegmentId) -> Result<(), SegmentIoError> {
    let from = wal_dir.join(id.partial_name());
    let to = wal_dir.join(id.name());
    let err = SegmentIoError::new(SegmentOp::Rename, &from);
    fail_point!("fs::complete::before-rename", &from, err);
    fs::rename(&from, &to).map_err(err)?;
    fsync_dir(wal_dir).map_err(SegmentIoError::new(SegmentOp::FsyncDir, wal_dir))
}

/// Zeroes `len` bytes of the segment file at `path` from offset `off` on, in place, and
/// fsyncs it: bytes past a torn record (recovery) or past a fork point (diverged WAL) can then
/// never be served. The caller has kept a copy of them first.
pub fn zero_from(path: &Path, off: u64, len: u64) -> io::Result<()> {
    let f = OpenOptions::new().write(true).open(path)?;
    let len = usize::try_from(len).map_err(io::Error::other)?;
    fail_point!("fs::segment::zero", path, std::convert::identity);
    f.write_all_at(&vec![0u8; len], off)?;
    f.sync_all()
}

/// Opens segment `id` for reading, complete or `.partial` (the complete name first: it is the
/// final one). The writer may rename `.partial` between the two opens, so the complete name
/// is tried again last.
pub fn open_for_read(wal_dir: &Path, id: SegmentId) -> io::Result<File> {
    let full = wal_dir.join(id.name());
    File::open(&full)
        .or_else(|_| File::open(wal_dir.join(id.partial_name())))
        .or_else(|_| File::open(&full))
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

    #[test]
    fn partial_rule() {
        let d = tempfile::tempdir().unwrap();
        let seg_size = 1 << 20;
        let id = SegmentId::new(1, 3, seg_size);
        assert!(open_for_read(d.path(), id).is_err());
        let f = SegmentFile::open_for_write(d.path(), id).unwrap();
        let partial = d.path().join("000000010000000000000003.partial");
        assert_eq!(fs::metadata(&partial).unwrap().len(), seg_size);
        f.write_at(b"abc", 10).unwrap();
        f.sync().unwrap();
        // Readable while being written.
        let mut buf = [0u8; 3];
        open_for_read(d.path(), id)
            .unwrap()
            .read_exact_at(&mut buf, 10)
            .unwrap();
        assert_eq!(&buf, b"abc");
        f.complete(d.path()).unwrap();
        assert!(!partial.exists());
        assert!(d.path().join(id.name()).exists());
        // A complete segment is reopened in place, not created again.
        let again = SegmentFile::open_for_write(d.path(), id).unwrap();
        assert!(!again.partial);
        again.complete(d.path()).unwrap();
        assert!(!partial.exists());
        assert_eq!(id.start(), Lsn(3 << 20));
        assert_eq!(id.end(), Lsn(4 << 20));
    }

    /// A durable write that fails before its rename leaves the old file whole.
    #[cfg(feature = "failpoints")]
    #[test]
    fn a_failed_durable_write_keeps_the_old_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("relay.state");
        durable_write(&p, b"old").unwrap();
        {
            let only_here = format!("return({})", d.path().display());
            let _g = fail::FailGuard::new("fs::durable-write::before-rename", &only_here).unwrap();
            assert!(durable_write(&p, b"new").is_err());
        }
        assert_eq!(fs::read(&p).unwrap(), b"old");
        durable_write(&p, b"new").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new");
    }
}
