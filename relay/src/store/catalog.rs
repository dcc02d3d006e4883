//! The catalogue of a WAL directory: `wal/` listed once and every file classified.
//!
//! Owns: what a file name in `wal/` means. A segment (`TTTTTTTTXXXXXXXXYYYYYYYY`, complete,
//! or `….partial` while being written), a timeline history file (`NNNNNNNN.history`), or
//! anything else (a `.tmp` left by a crash inside a durable write, an operator's file). Used by
//! the store at open, by retention, by moving diverged WAL aside, and by `walrelay verify`.
//!
//! Invariants: the catalogue only reads the directory (no file is opened); names that are not
//! UTF-8 and directories are not files of the store and are left out; entries are in name
//! order, so segments come timeline by timeline in segment order, and a segment's complete
//! file before its `.partial`. A catalogue is a snapshot: the writer may have created or
//! renamed a file since.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use super::fs::SegmentId;
use crate::wal::segment::{parse_wal_file_name, WalFileName, MIN_SEG_SIZE};
use crate::wal::{Lsn, TimeLineId};

/// The names in a WAL directory, before classification (which needs the segment size).
#[derive(Debug, Clone)]
pub struct Listing {
    dir: PathBuf,
    names: Vec<String>,
}

impl Listing {
    /// Lists `dir`.
    pub fn read(dir: &Path) -> io::Result<Listing> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
        names.sort();
        Ok(Listing {
            dir: dir.to_path_buf(),
            names,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The names that are segment files at some segment size (what to look into when the
    /// segment size is not known yet).
    pub fn segment_names(&self) -> impl Iterator<Item = &str> {
        // The smallest segment size accepts the name of every segment of any valid size.
        self.names.iter().map(String::as_str).filter(|n| {
            matches!(
                parse_wal_file_name(n, MIN_SEG_SIZE),
                Some(WalFileName::Segment { .. })
            )
        })
    }

    /// Classifies every name for segments of `seg_size` bytes.
    pub fn classify(&self, seg_size: u64) -> Catalog {
        let mut cat = Catalog {
            dir: self.dir.clone(),
            seg_size,
            segments: BTreeMap::new(),
            histories: BTreeMap::new(),
            others: Vec::new(),
        };
        for name in &self.names {
            match parse_wal_file_name(name, seg_size) {
                Some(WalFileName::Segment {
                    tli,
                    segno,
                    partial,
                }) => cat
                    .segments
                    .entry(tli)
                    .or_default()
                    .entry(segno)
                    .or_default()
                    .push(StoredSegment {
                        name: name.clone(),
                        id: SegmentId::new(tli, segno, seg_size),
                        partial,
                    }),
                Some(WalFileName::History { tli }) => {
                    cat.histories.insert(tli, name.clone());
                }
                None => cat.others.push(name.clone()),
            }
        }
        cat
    }
}

/// One segment file in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSegment {
    pub name: String,
    pub id: SegmentId,
    /// Named `.partial`: being written, or not known to be whole.
    pub partial: bool,
}

/// A WAL directory, classified.
#[derive(Debug, Clone)]
pub struct Catalog {
    dir: PathBuf,
    seg_size: u64,
    /// Per timeline, per segment number, the files of that segment: normally one, complete or
    /// `.partial`; both at once is damage (the writer renames, it never copies).
    pub segments: BTreeMap<TimeLineId, BTreeMap<u64, Vec<StoredSegment>>>,
    /// History file names per timeline.
    pub histories: BTreeMap<TimeLineId, String>,
    /// Every other file.
    pub others: Vec<String>,
}

impl Catalog {
    /// Lists and classifies `dir` for segments of `seg_size` bytes.
    pub fn read(dir: &Path, seg_size: u64) -> io::Result<Catalog> {
        Ok(Listing::read(dir)?.classify(seg_size))
    }

    pub fn seg_size(&self) -> u64 {
        self.seg_size
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of a file named in the catalogue.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Every segment file, timeline by timeline in segment order.
    pub fn segment_files(&self) -> impl Iterator<Item = &StoredSegment> {
        self.segments.values().flat_map(|m| m.values()).flatten()
    }

    /// The segment files of `tli`, in segment order.
    pub fn segment_files_of(&self, tli: TimeLineId) -> impl Iterator<Item = &StoredSegment> {
        self.segments
            .get(&tli)
            .into_iter()
            .flat_map(|m| m.values())
            .flatten()
    }

    /// The end of the newest complete segment of `tli` (a complete file was fsynced before
    /// its rename, so all of it is durable).
    pub fn complete_end(&self, tli: TimeLineId) -> Option<Lsn> {
        self.segment_files_of(tli)
            .filter(|s| !s.partial)
            .map(|s| s.id.end())
            .max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;

    #[test]
    fn lists_and_classifies() {
        let d = tempfile::tempdir().unwrap();
        for name in [
            "000000010000000000000003",
            "000000010000000000000004",
            "000000010000000000000004.partial",
            "000000020000000000000004.partial",
            "00000002.history",
            "relay.state.tmp",
            "000000010000000000000100",
        ] {
            std::fs::write(d.path().join(name), b"").unwrap();
        }
        std::fs::create_dir(d.path().join("000000010000000000000005")).unwrap();
        let listing = Listing::read(d.path()).unwrap();
        assert_eq!(listing.names().len(), 7);
        // At 1 MB segments 0x100 is a valid segment within its log id, so it is a candidate.
        assert_eq!(listing.segment_names().count(), 5);
        let cat = listing.classify(SEG);
        assert_eq!(
            cat.others,
            vec!["000000010000000000000100", "relay.state.tmp"]
        );
        assert_eq!(
            cat.histories.get(&2).map(String::as_str),
            Some("00000002.history")
        );
        let tl1: Vec<_> = cat.segment_files_of(1).map(|s| s.name.as_str()).collect();
        assert_eq!(
            tl1,
            vec![
                "000000010000000000000003",
                "000000010000000000000004",
                "000000010000000000000004.partial"
            ]
        );
        assert_eq!(cat.segments[&1][&4].len(), 2);
        assert_eq!(cat.complete_end(1), Some(Lsn(5 * SEG)));
        assert_eq!(cat.complete_end(2), None);
        assert_eq!(cat.segment_files().count(), 4);
        assert_eq!(cat.path("x"), d.path().join("x"));
    }
}
