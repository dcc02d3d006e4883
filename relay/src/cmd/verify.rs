//! `walrelay verify --data-dir DIR`: an offline check of everything the store holds.
//!
//! What it checks, per the product contract (brief §1): every timeline history file parses,
//! lists increasing timeline IDs, all below the file's own; every segment file, timeline by
//! timeline in segment order, has valid page headers and records (CRC-32C, lengths, prev
//! links, continuation records) with records continuing from one file into the next; segment
//! numbers are consecutive (a gap is damage); complete segments have the segment size. The
//! last `.partial` segment of a timeline may end in zeros or in a torn record followed only by
//! zeros (the unwritten rest of a preallocated file), but not below the durable position that
//! `relay.state` records.
//!
//! The directory is listed and classified by the store's catalogue
//! ([`crate::store::catalog`]), so verify and the relay agree on what each file is.
//!
//! It only reads. It reports the first bad LSN and file for each damaged stretch (then carries
//! on at the next segment, so one run shows all damage), and a summary per timeline.
//! `run` returns the report; I/O failures and a missing directory are errors (exit 2),
//! damage is part of the report (exit 1).

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::store::catalog::Listing;
use crate::store::state::{self, StateError, STATE_FILE};
use crate::wal::decoder::{DecoderStatus, WalDecoder, ZeroPolicy};
use crate::wal::history::parse_history;
use crate::wal::page::{PageHeader, LONG_HEADER_LEN};
use crate::wal::scan::first_nonzero;
use crate::wal::segment::{format_seg_size, is_valid_seg_size, segment_file_name, MIN_SEG_SIZE};
use crate::wal::{Lsn, TimeLineId};

/// Bytes read from a segment file at a time.
const CHUNK: usize = 1 << 20;

/// One damaged place: the file, the first bad LSN (none for history and state files), what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub file: String,
    pub lsn: Option<Lsn>,
    pub what: String,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.lsn {
            Some(lsn) => write!(f, "damage in {} at {}: {}", self.file, lsn, self.what),
            None => write!(f, "damage in {}: {}", self.file, self.what),
        }
    }
}

/// What was found on one timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineReport {
    pub tli: TimeLineId,
    pub segments: usize,
    pub first_file: String,
    pub last_file: String,
    /// Whole valid records.
    pub records: u64,
    /// Bytes of segment files read.
    pub bytes: u64,
    /// End of the last whole valid record (or of the zero tail after a final XLOG_SWITCH).
    pub end_lsn: Lsn,
    /// Where the last `.partial` stopped being valid, when that was a torn record (zeros after).
    pub torn_tail: Option<Lsn>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub wal_dir: PathBuf,
    pub seg_size: Option<u64>,
    pub system_identifier: Option<u64>,
    pub histories: Vec<String>,
    pub timelines: Vec<TimelineReport>,
    /// In the order found: state, history files, then timelines in order, LSNs ascending.
    pub damage: Vec<Damage>,
    pub warnings: Vec<String>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.damage.is_empty()
    }

    /// The summary, one line per item, as printed on stdout.
    pub fn summary(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut head = format!("walrelay verify: {}", self.wal_dir.display());
        if let Some(s) = self.seg_size {
            head.push_str(&format!(", WAL segment size {}", format_seg_size(s)));
        }
        if let Some(id) = self.system_identifier {
            head.push_str(&format!(", system identifier {id}"));
        }
        out.push(head);
        if !self.histories.is_empty() {
            out.push(format!(
                "history files: {} ({})",
                self.histories.len(),
                self.histories.join(", ")
            ));
        }
        for t in &self.timelines {
            let files = if t.segments == 1 {
                t.first_file.clone()
            } else {
                format!("{} .. {}", t.first_file, t.last_file)
            };
            let mut line = format!(
                "timeline {}: {} segment{} ({files}), {} records, {} bytes, end of WAL {}",
                t.tli,
                t.segments,
                if t.segments == 1 { "" } else { "s" },
                t.records,
                t.bytes,
                t.end_lsn
            );
            if let Some(at) = t.torn_tail {
                line.push_str(&format!(" (torn tail at {at})"));
            }
            out.push(line);
        }
        if self.timelines.is_empty() {
            out.push("no WAL segments stored".into());
        }
        out.push(if self.is_clean() {
            "walrelay verify: no damage found".into()
        } else {
            format!(
                "walrelay verify: {} damaged place{} found",
                self.damage.len(),
                if self.damage.len() == 1 { "" } else { "s" }
            )
        });
        out
    }

    /// Prints the summary (stdout), warnings and damage (stderr, first damage first), and
    /// returns the exit code: 0 clean, 1 damage found.
    pub fn finish(&self) -> ExitCode {
        for w in &self.warnings {
            eprintln!("walrelay verify: warning: {w}");
        }
        for d in &self.damage {
            eprintln!("walrelay verify: {d}");
        }
        for line in self.summary() {
            println!("{line}");
        }
        if self.is_clean() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }
    }
}

/// One segment file found in the directory.
#[derive(Debug, Clone)]
struct SegFile {
    name: String,
    path: PathBuf,
    partial: bool,
    len: u64,
}

/// Checks the store in `data_dir` (its `wal/` folder; a directory without one is taken to be
/// a plain WAL directory). Progress goes to stderr when it is a terminal.
pub fn run(data_dir: &Path) -> anyhow::Result<VerifyReport> {
    if !data_dir.is_dir() {
        bail!("{} is not a directory", data_dir.display());
    }
    let wal_dir = {
        let w = data_dir.join("wal");
        if w.is_dir() {
            w
        } else {
            data_dir.to_path_buf()
        }
    };
    let mut report = VerifyReport {
        wal_dir: wal_dir.clone(),
        seg_size: None,
        system_identifier: None,
        histories: Vec::new(),
        timelines: Vec::new(),
        damage: Vec::new(),
        warnings: Vec::new(),
    };

    let st = match state::load(data_dir) {
        Ok(s) => s,
        Err(StateError::Damaged(what)) => {
            report.damage.push(Damage {
                file: STATE_FILE.into(),
                lsn: None,
                what,
            });
            None
        }
        Err(e) => return Err(e).context(format!("read {}", data_dir.join(STATE_FILE).display())),
    };
    if let Some(s) = &st {
        if is_valid_seg_size(s.wal_segment_size) {
            report.seg_size = Some(s.wal_segment_size);
        } else {
            report.damage.push(Damage {
                file: STATE_FILE.into(),
                lsn: None,
                what: format!("invalid wal_segment_size {}", s.wal_segment_size),
            });
        }
        match s.system_identifier.parse::<u64>() {
            Ok(id) => report.system_identifier = Some(id),
            Err(_) => report.damage.push(Damage {
                file: STATE_FILE.into(),
                lsn: None,
                what: format!("invalid system identifier \"{}\"", s.system_identifier),
            }),
        }
    }

    let listing = Listing::read(&wal_dir).with_context(|| format!("list {}", wal_dir.display()))?;
    if report.seg_size.is_none() {
        report.seg_size = detect_seg_size(&listing)?;
    }
    let seg_size = report.seg_size.unwrap_or(MIN_SEG_SIZE);

    let catalog = listing.classify(seg_size);
    let histories = &catalog.histories;
    let mut segments: BTreeMap<TimeLineId, BTreeMap<u64, Vec<SegFile>>> = BTreeMap::new();
    for seg in catalog.segment_files() {
        let path = catalog.path(&seg.name);
        let len = std::fs::metadata(&path)
            .with_context(|| format!("stat {}", path.display()))?
            .len();
        segments
            .entry(seg.id.tli)
            .or_default()
            .entry(seg.id.segno)
            .or_default()
            .push(SegFile {
                name: seg.name.clone(),
                path,
                partial: seg.partial,
                len,
            });
    }
    if report.seg_size.is_none() && !segments.is_empty() {
        let first = segments
            .values()
            .flat_map(|m| m.values())
            .flatten()
            .next()
            .map(|f| f.name.clone())
            .unwrap_or_default();
        report.damage.push(Damage {
            file: first,
            lsn: None,
            what: "cannot tell the WAL segment size: no relay.state, and no segment file starts \
                   with a valid long page header"
                .into(),
        });
        return Ok(report);
    }

    for (tli, name) in histories {
        check_history(&wal_dir, *tli, name, &mut report)?;
    }
    for tli in segments.keys() {
        if *tli > 1 && !histories.contains_key(tli) {
            report.warnings.push(format!(
                "timeline {tli} has WAL segments but no history file"
            ));
        }
    }

    let total: u64 = segments
        .values()
        .flat_map(|m| m.values())
        .flatten()
        .map(|f| f.len)
        .sum();
    let bar = progress_bar(total);
    let durable = st
        .as_ref()
        .filter(|s| s.timeline != 0)
        .map(|s| (s.timeline, s.flush()));
    let mut walker = Walker {
        seg_size,
        sysid: report.system_identifier,
        bar: &bar,
        report: &mut report,
    };
    for (tli, files) in &segments {
        let flush = durable.and_then(|(t, l)| (t == *tli && l.is_valid()).then_some(l));
        walker.timeline(*tli, files, flush)?;
    }
    let learned = walker.sysid;
    report.system_identifier = report.system_identifier.or(learned);
    if let Some((tli, flush)) = durable {
        // A timeline starts at a segment start, so a durable position exactly there needs no
        // segment of that timeline yet (the writer publishes it before creating the file).
        if flush.segment_offset(seg_size) != 0 && !segments.contains_key(&tli) {
            report.damage.push(Damage {
                file: STATE_FILE.into(),
                lsn: Some(flush),
                what: format!(
                    "relay.state records WAL durable up to {flush} on timeline {tli}, but no \
                     segment of timeline {tli} is stored"
                ),
            });
        }
    }
    bar.finish_and_clear();
    Ok(report)
}

/// Without relay.state: the segment size from the first segment file that starts with a
/// valid long page header.
fn detect_seg_size(listing: &Listing) -> anyhow::Result<Option<u64>> {
    for name in listing.segment_names() {
        let path = listing.dir().join(name);
        let mut head = Vec::with_capacity(LONG_HEADER_LEN);
        File::open(&path)
            .with_context(|| format!("open {}", path.display()))?
            .take(LONG_HEADER_LEN as u64)
            .read_to_end(&mut head)
            .with_context(|| format!("read {}", path.display()))?;
        let size = PageHeader::parse(&head)
            .and_then(|h| h.long)
            .map(|l| u64::from(l.seg_size))
            .filter(|s| is_valid_seg_size(*s));
        if size.is_some() {
            return Ok(size);
        }
    }
    Ok(None)
}

fn check_history(
    dir: &Path,
    tli: TimeLineId,
    name: &str,
    report: &mut VerifyReport,
) -> anyhow::Result<()> {
    let path = dir.join(name);
    let content = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
    report.histories.push(name.to_string());
    let mut bad = |what: String| {
        report.damage.push(Damage {
            file: name.to_string(),
            lsn: None,
            what,
        })
    };
    match parse_history(&content) {
        Err(e) => bad(e.to_string()),
        Ok(entries) if entries.is_empty() => bad(format!(
            "lists no parent timeline (timeline {tli} must have one)"
        )),
        Ok(entries) => {
            if let Some(e) = entries.iter().find(|e| e.tli >= tli) {
                bad(format!(
                    "invalid data in history file: timeline {} is not below the file's own timeline {tli}",
                    e.tli
                ));
            }
        }
    }
    Ok(())
}

fn progress_bar(total: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{wide_bar} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

/// Walks the segment files of one timeline after another.
struct Walker<'a> {
    seg_size: u64,
    sysid: Option<u64>,
    bar: &'a ProgressBar,
    report: &'a mut VerifyReport,
}

impl Walker<'_> {
    fn damage(&mut self, file: &str, lsn: Lsn, what: impl Into<String>) {
        self.report.damage.push(Damage {
            file: file.to_string(),
            lsn: Some(lsn),
            what: what.into(),
        });
    }

    fn timeline(
        &mut self,
        tli: TimeLineId,
        files: &BTreeMap<u64, Vec<SegFile>>,
        flush: Option<Lsn>,
    ) -> anyhow::Result<()> {
        let seg_size = self.seg_size;
        // One file per segment: a complete file wins over a `.partial` of the same segment
        // (both existing is itself damage: the writer renames, it never copies).
        let mut chosen: Vec<(u64, &SegFile)> = Vec::new();
        for (segno, candidates) in files {
            let file = candidates
                .iter()
                .find(|f| !f.partial)
                .or_else(|| candidates.first());
            let Some(file) = file else { continue };
            if candidates.len() > 1 {
                if let Some(p) = candidates.iter().find(|f| f.partial) {
                    self.damage(
                        &p.name,
                        Lsn(segno * seg_size),
                        format!("both {} and {} exist", file.name, p.name),
                    );
                }
            }
            chosen.push((*segno, file));
        }
        let name_of = |lsn: Lsn| -> Option<String> {
            chosen
                .iter()
                .find(|(s, _)| *s == lsn.segment(seg_size))
                .map(|(_, f)| f.name.clone())
        };

        let mut t = TimelineReport {
            tli,
            segments: chosen.len(),
            first_file: chosen
                .first()
                .map(|(_, f)| f.name.clone())
                .unwrap_or_default(),
            last_file: chosen
                .last()
                .map(|(_, f)| f.name.clone())
                .unwrap_or_default(),
            records: 0,
            bytes: 0,
            end_lsn: Lsn::INVALID,
            torn_tail: None,
        };
        let mut decoder: Option<WalDecoder> = None;
        let mut prev_segno: Option<u64> = None;
        let mut stored_end = Lsn::INVALID;
        // One report per cause: a tail found below the durable position is not reported again
        // as "state ahead of the stored WAL".
        let mut durable_reported = false;
        let last_index = chosen.len().saturating_sub(1);
        for (i, (segno, file)) in chosen.iter().enumerate() {
            let segno = *segno;
            let seg_start = Lsn(segno * seg_size);
            if let Some(p) = prev_segno {
                if segno != p + 1 {
                    let missing = segment_file_name(tli, p + 1, seg_size);
                    let upto = segment_file_name(tli, segno - 1, seg_size);
                    let what = if segno == p + 2 {
                        "segment missing: the timeline's WAL has a gap".to_string()
                    } else {
                        format!(
                            "segments {missing} .. {upto} missing: the timeline's WAL has a gap"
                        )
                    };
                    self.damage(&missing, Lsn((p + 1) * seg_size), what);
                    decoder = None;
                }
            }
            prev_segno = Some(segno);
            self.bar.set_message(file.name.clone());

            let last_partial = file.partial && i == last_index;
            let size_ok = if file.partial {
                file.len <= seg_size
            } else {
                file.len == seg_size
            };
            if !size_ok {
                self.damage(
                    &file.name,
                    seg_start,
                    format!("file has {} bytes, a segment has {seg_size}", file.len),
                );
                self.bar.inc(file.len);
                t.bytes += file.len;
                decoder = None;
                continue;
            }
            let d = decoder.get_or_insert_with(|| {
                let mut d = WalDecoder::new(seg_start, seg_size, self.sysid, None);
                d.set_timeline(tli);
                d
            });
            d.set_zero_policy(if last_partial {
                ZeroPolicy::EndOfWal
            } else {
                ZeroPolicy::Corrupt
            });

            let mut f =
                File::open(&file.path).with_context(|| format!("open {}", file.path.display()))?;
            let mut buf = vec![0u8; CHUNK];
            let mut at = seg_start;
            let mut garbage: Option<Lsn> = None;
            let mut failed = false;
            loop {
                let n = read_full(&mut f, &mut buf)
                    .with_context(|| format!("read {}", file.path.display()))?;
                if n == 0 {
                    break;
                }
                let chunk = buf.get(..n).unwrap_or(&[]);
                self.bar.inc(n as u64);
                t.bytes += n as u64;
                if !failed {
                    let mut records = 0u64;
                    let r = d.feed_with(chunk, |_| records += 1);
                    t.records += records;
                    if r.is_err() {
                        failed = true;
                        if !last_partial {
                            // Damage: the rest of this file cannot be checked in sequence.
                            self.bar
                                .inc(file.len.saturating_sub(at.0 - seg_start.0 + n as u64));
                            t.bytes += file.len.saturating_sub(at.0 - seg_start.0 + n as u64);
                            break;
                        }
                    }
                }
                if failed && garbage.is_none() {
                    if let Some(stop) = d.stopped_at() {
                        garbage = first_nonzero(chunk, at, stop);
                    }
                }
                at = Lsn(at.0 + n as u64);
            }
            stored_end = Lsn(seg_start.0 + file.len);
            self.sysid = self.sysid.or(d.system_identifier());
            t.end_lsn = d.valid_end();

            match d.status().clone() {
                DecoderStatus::Running => {}
                DecoderStatus::Ended { at: end } => {
                    if let Some(x) = d.nonzero_after_end() {
                        self.damage(
                            &file.name,
                            x,
                            format!("non-zero bytes after the end of WAL at {end}"),
                        );
                    } else if flush.is_some_and(|fl| fl > end) {
                        durable_reported = true;
                        self.damage(
                            &file.name,
                            end,
                            format!(
                                "WAL ends here (zeros), below the relay's durable position {}",
                                flush.unwrap_or_default()
                            ),
                        );
                    }
                }
                DecoderStatus::Failed(e) => {
                    let bad = e.lsn();
                    let file_name = name_of(bad).unwrap_or_else(|| file.name.clone());
                    let stop = d.stopped_at().unwrap_or(bad);
                    let below_durable = flush.is_some_and(|fl| fl > bad && fl >= stop);
                    if !last_partial || garbage.is_some() {
                        self.damage(&file_name, bad, e.to_string());
                    } else if below_durable {
                        durable_reported = true;
                        self.damage(
                            &file_name,
                            bad,
                            format!(
                                "{e} (below the relay's durable position {})",
                                flush.unwrap_or_default()
                            ),
                        );
                    } else {
                        // A record torn by an interrupted write, zeros after it: the end of WAL.
                        t.torn_tail = Some(bad);
                    }
                    decoder = None;
                }
            }
        }
        if let Some(fl) = flush {
            if fl > stored_end && !chosen.is_empty() && !durable_reported {
                let last = t.last_file.clone();
                self.damage(
                    &last,
                    stored_end,
                    format!(
                        "relay.state records WAL durable up to {fl} on timeline {tli}, but the stored WAL ends here"
                    ),
                );
            }
        }
        self.report.timelines.push(t);
        Ok(())
    }
}

/// Reads until `buf` is full or the file ends.
fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let Some(rest) = buf.get_mut(n..) else { break };
        match f.read(rest) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::state::RelayState;
    use crate::wal::testwal::{fixture, SEG};

    /// A data directory holding the fixture segments under `wal/`, the last one as
    /// `.partial` (as the relay's store keeps them), and a relay.state.
    fn store(with_state: bool) -> tempfile::TempDir {
        let f = fixture();
        let d = tempfile::tempdir().unwrap();
        let wal = d.path().join("wal");
        std::fs::create_dir(&wal).unwrap();
        let last = f.segments.len() - 1;
        for (i, (name, _, bytes)) in f.segments.iter().enumerate() {
            let name = if i == last {
                format!("{name}.partial")
            } else {
                name.clone()
            };
            std::fs::write(wal.join(name), bytes).unwrap();
        }
        if with_state {
            let mut st = RelayState::new(sysid().to_string(), SEG, "15.18".into());
            st.timeline = 1;
            st.flush_lsn = f.lsn("end_of_wal").to_string();
            state::save(d.path(), &st).unwrap();
        }
        d
    }

    fn sysid() -> u64 {
        let b = &fixture().segments[0].2;
        u64::from_le_bytes(b[24..32].try_into().unwrap())
    }

    fn wal_file(d: &tempfile::TempDir, name: &str) -> PathBuf {
        d.path().join("wal").join(name)
    }

    fn seg_name(segno: u64) -> String {
        segment_file_name(1, segno, SEG)
    }

    #[test]
    fn clean_store() {
        let f = fixture();
        for with_state in [true, false] {
            let d = store(with_state);
            let r = run(d.path()).unwrap();
            assert!(r.is_clean(), "{:?}", r.damage);
            assert_eq!(r.seg_size, Some(SEG));
            assert_eq!(r.system_identifier, Some(sysid()));
            assert_eq!(r.timelines.len(), 1);
            let t = &r.timelines[0];
            assert_eq!(t.segments, f.segments.len());
            assert_eq!(t.records, f.num("records"));
            assert_eq!(t.end_lsn, f.lsn("end_of_wal"));
            assert_eq!(t.bytes, SEG * f.segments.len() as u64);
            assert_eq!(t.torn_tail, None);
            assert!(r.summary().last().unwrap().contains("no damage found"));
        }
    }

    #[test]
    fn flipped_byte_names_the_file_and_lsn() {
        let f = fixture();
        let segno = f.first_segno() + 1;
        let r0 = f
            .records
            .iter()
            .filter(|r| r.lsn.segment(SEG) == segno)
            .find(|r| r.tot_len > 200 && r.lsn.0 % 8192 > 64 && r.lsn.0 % 8192 + 200 < 8192)
            .unwrap();
        let d = store(true);
        let path = wal_file(&d, &seg_name(segno));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[(r0.lsn.0 - segno * SEG + 100) as usize] ^= 0x40;
        std::fs::write(&path, bytes).unwrap();
        let r = run(d.path()).unwrap();
        assert_eq!(r.damage.len(), 1, "{:?}", r.damage);
        let dmg = &r.damage[0];
        assert_eq!(dmg.file, seg_name(segno));
        assert_eq!(dmg.lsn, Some(r0.lsn));
        assert_eq!(
            dmg.to_string(),
            format!(
                "damage in {} at {}: incorrect resource manager data checksum in record at {}",
                seg_name(segno),
                r0.lsn,
                r0.lsn
            )
        );
    }

    #[test]
    fn record_crossing_files_is_reported_in_the_file_of_its_start() {
        // A page header in the next file breaks a record that started in this one.
        let f = fixture();
        let next = f.first_segno() + 2;
        let cont = f
            .records
            .iter()
            .rev()
            .find(|r| r.lsn < Lsn(next * SEG))
            .unwrap();
        let d = store(true);
        let path = wal_file(&d, &seg_name(next));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[16] ^= 0x01; // xlp_rem_len of the long header
        std::fs::write(&path, bytes).unwrap();
        let r = run(d.path()).unwrap();
        let dmg = &r.damage[0];
        assert_eq!(dmg.lsn, Some(cont.lsn));
        assert_eq!(dmg.file, seg_name(cont.lsn.segment(SEG)));
        assert!(dmg.what.starts_with("invalid contrecord length"), "{dmg}");
    }

    #[test]
    fn missing_segment_is_a_gap() {
        let f = fixture();
        let missing = f.first_segno() + 2;
        let d = store(true);
        std::fs::remove_file(wal_file(&d, &seg_name(missing))).unwrap();
        let r = run(d.path()).unwrap();
        assert_eq!(r.damage.len(), 1, "{:?}", r.damage);
        assert_eq!(r.damage[0].file, seg_name(missing));
        assert_eq!(r.damage[0].lsn, Some(Lsn(missing * SEG)));
        assert!(r.damage[0].what.contains("gap"));
        // Checking went on after the gap, up to the end of WAL.
        assert_eq!(r.timelines[0].end_lsn, f.lsn("end_of_wal"));
    }

    #[test]
    fn history_files() {
        let d = store(true);
        std::fs::write(
            wal_file(&d, "00000002.history"),
            "1\t0/B2CFB8\tno recovery target specified\n",
        )
        .unwrap();
        let r = run(d.path()).unwrap();
        assert!(r.is_clean(), "{:?}", r.damage);
        assert_eq!(r.histories, vec!["00000002.history".to_string()]);

        std::fs::write(
            wal_file(&d, "00000003.history"),
            b"\x7fELF\x02\x01garbage\n",
        )
        .unwrap();
        std::fs::write(wal_file(&d, "00000004.history"), "1\t0/1\tr\n4\t0/2\tr\n").unwrap();
        std::fs::write(wal_file(&d, "00000005.history"), "").unwrap();
        let r = run(d.path()).unwrap();
        let files: Vec<&str> = r.damage.iter().map(|d| d.file.as_str()).collect();
        assert_eq!(
            files,
            vec!["00000003.history", "00000004.history", "00000005.history"]
        );
        assert!(r.damage[0].what.contains("syntax error"), "{}", r.damage[0]);
        assert!(r.damage[1].what.contains("not below"), "{}", r.damage[1]);
    }

    #[test]
    fn torn_partial_tail_is_the_end_of_wal_unless_durable() {
        let f = fixture();
        let (name, segno, bytes) = f.segments.last().unwrap();
        // Tear the last record of the last segment: it keeps its first 30 bytes.
        let last = f.lsn("last_record");
        assert_eq!(last.segment(SEG), *segno);
        let mut torn = bytes.clone();
        torn[(last.0 - segno * SEG + 30) as usize..].fill(0);
        let d = store(false);
        std::fs::write(wal_file(&d, &format!("{name}.partial")), &torn).unwrap();
        let r = run(d.path()).unwrap();
        assert!(r.is_clean(), "{:?}", r.damage);
        assert_eq!(r.timelines[0].torn_tail, Some(last));
        assert_eq!(r.timelines[0].end_lsn, last);
        assert_eq!(r.timelines[0].records, f.num("records") - 1);

        // relay.state says that record was durable: damage.
        let mut st = RelayState::new(sysid().to_string(), SEG, "15.18".into());
        st.timeline = 1;
        st.flush_lsn = f.lsn("end_of_wal").to_string();
        state::save(d.path(), &st).unwrap();
        let r = run(d.path()).unwrap();
        assert_eq!(r.damage.len(), 1, "{:?}", r.damage);
        assert_eq!(r.damage[0].lsn, Some(last));
        assert!(r.damage[0].what.contains("durable"), "{}", r.damage[0]);

        // Durable up to the record's start only: a torn tail again.
        st.flush_lsn = last.to_string();
        state::save(d.path(), &st).unwrap();
        assert!(run(d.path()).unwrap().is_clean());
    }

    #[test]
    fn a_complete_segment_must_be_whole() {
        let f = fixture();
        let (name, _, bytes) = f.segments.last().unwrap();
        let d = store(true);
        std::fs::remove_file(wal_file(&d, &format!("{name}.partial"))).unwrap();
        // The same bytes, complete: its zero tail is damage now.
        std::fs::write(wal_file(&d, name), bytes).unwrap();
        let r = run(d.path()).unwrap();
        assert_eq!(r.damage.len(), 1, "{:?}", r.damage);
        assert_eq!(r.damage[0].lsn, Some(f.lsn("end_of_wal")));
        assert!(r.damage[0].what.contains("invalid record length"));
        // A short complete file.
        std::fs::write(wal_file(&d, name), &bytes[..1000]).unwrap();
        let r = run(d.path()).unwrap();
        assert!(r.damage[0].what.contains("1000 bytes"), "{}", r.damage[0]);
    }

    #[test]
    fn garbage_after_the_end_of_a_partial() {
        let f = fixture();
        let (name, _, bytes) = f.segments.last().unwrap();
        let d = store(true);
        let mut b = bytes.clone();
        let at = b.len() - 5000;
        b[at] = 0xAA;
        std::fs::write(wal_file(&d, &format!("{name}.partial")), &b).unwrap();
        let r = run(d.path()).unwrap();
        assert_eq!(r.damage.len(), 1, "{:?}", r.damage);
        assert!(r.damage[0]
            .what
            .contains("non-zero bytes after the end of WAL"));
    }

    #[test]
    fn state_ahead_of_the_stored_wal() {
        let f = fixture();
        let d = store(false);
        let mut st = RelayState::new(sysid().to_string(), SEG, "15.18".into());
        st.timeline = 1;
        st.flush_lsn = Lsn((f.segments.last().unwrap().1 + 3) * SEG).to_string();
        state::save(d.path(), &st).unwrap();
        let r = run(d.path()).unwrap();
        assert_eq!(r.damage.len(), 1, "{:?}", r.damage);
        assert!(r.damage[0].what.contains("durable"), "{}", r.damage[0]);
        // Another cluster's state.
        st.flush_lsn = f.lsn("end_of_wal").to_string();
        st.system_identifier = "42".into();
        state::save(d.path(), &st).unwrap();
        let r = run(d.path()).unwrap();
        assert!(
            r.damage[0].what.contains("different database system"),
            "{}",
            r.damage[0]
        );
        assert_eq!(r.damage[0].file, seg_name(f.first_segno()));
    }

    #[test]
    fn durable_position_on_a_timeline_without_segments() {
        let d = store(false);
        let mut st = RelayState::new(sysid().to_string(), SEG, "15.18".into());
        st.timeline = 2;
        // Just switched: durable at the new timeline's first segment start, no file yet.
        st.flush_lsn = Lsn(12 * SEG).to_string();
        state::save(d.path(), &st).unwrap();
        assert!(run(d.path()).unwrap().is_clean());
        st.flush_lsn = Lsn(12 * SEG + 4096).to_string();
        state::save(d.path(), &st).unwrap();
        let r = run(d.path()).unwrap();
        assert_eq!(r.damage.len(), 1, "{:?}", r.damage);
        assert_eq!(r.damage[0].file, STATE_FILE);
    }

    #[test]
    fn exit_codes() {
        let d = store(true);
        assert_eq!(run(d.path()).unwrap().finish(), ExitCode::SUCCESS);
        std::fs::write(wal_file(&d, "00000002.history"), "junk").unwrap();
        assert_eq!(run(d.path()).unwrap().finish(), ExitCode::from(1));
    }

    #[test]
    fn not_a_directory_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        assert!(run(&d.path().join("nope")).is_err());
        // An empty directory is clean.
        let r = run(d.path()).unwrap();
        assert!(r.is_clean());
        assert!(r.timelines.is_empty());
    }
}
