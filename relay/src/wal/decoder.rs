//! An incremental, sans-IO WAL validator: feed it consecutive bytes of one timeline's WAL in
//! chunks of any size and it checks page headers, record headers, record CRCs and the links
//! between records exactly as PostgreSQL's reader does (`XLogDecodeNextRecord`,
//! `XLogReaderValidatePageHeader`, `ValidXLogRecordHeader`, `ValidXLogRecord`).
//!
//! What it owns: the byte-level state machine over pages and records. It does no I/O and
//! keeps no record bodies: the CRC-32C covers the body first and the header last, so it is
//! computed as the bytes stream past, and memory stays constant whatever `xl_tot_len` says
//! (up to 1020 MB is legal, and an untrusted length must not drive an allocation).
//!
//! Invariants:
//! - [`WalDecoder::valid_end`] never exceeds the bytes fed, never moves backwards, and every
//!   byte below it has been validated: it is the end of the last whole valid record (plus its
//!   MAXALIGN padding once fed), or, inside the zero tail after an `XLOG_SWITCH`, the position
//!   reached in that tail (the next segment's start once all of it is fed).
//! - After the first error the decoder stays failed and returns the same error; bytes already
//!   validated stay validated.
//! - Nothing panics on any input: bytes are read with `get` and `try_into`, arithmetic on
//!   values from the input saturates or is bounded by the page and segment geometry.
//!
//! Where it may start: at a segment or page start (a continuation of a record begun earlier,
//! announced by `XLP_FIRST_IS_CONTRECORD`, is skipped using `xlp_rem_len`; those bytes cannot
//! be checked and count as valid), or at a record boundary inside a page (the caller's word).
//!
//! Zeros where a record should start mean two different things. In a file that was
//! preallocated with zeros (a `.partial` segment, a crashed writer's segment), they mean "not
//! written yet": [`ZeroPolicy::EndOfWal`] reports that as [`DecoderStatus::Ended`]. In a live
//! stream, or a completed segment, every byte was written by PostgreSQL, so a zero length is
//! corruption: [`ZeroPolicy::Corrupt`], the default, reports it as PostgreSQL does ("invalid
//! record length ... got 0").

use super::error::WalError;
use super::lsn::{Lsn, TimeLineId, WAL_PAGE_SIZE};
use super::page::{header_len, PageHeader, PageValidator, LONG_HEADER_LEN, SHORT_HEADER_LEN};
use super::record::{
    finish_crc, max_record_len, maxalign, rmid_is_valid, RecordHeader, RECORD_HEADER_LEN,
};
use super::segment::is_valid_seg_size;

/// What zeros where a record or page header should start mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ZeroPolicy {
    /// Corruption: every byte fed was written by PostgreSQL (live stream, complete segment).
    #[default]
    Corrupt,
    /// The end of WAL: the bytes come from a zero-preallocated file that was not written
    /// further (a `.partial` segment, a torn tail after a crash).
    EndOfWal,
}

/// Where the decoder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecoderStatus {
    /// Everything fed so far is valid (possibly ending inside a record).
    Running,
    /// [`ZeroPolicy::EndOfWal`] only: zeros at `at` where a record or page header should
    /// start. Later bytes are only checked for being zero ([`WalDecoder::nonzero_after_end`]).
    Ended { at: Lsn },
    /// The first error; the decoder stays here.
    Failed(WalError),
}

/// One whole, valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordInfo {
    /// Where the record starts.
    pub lsn: Lsn,
    /// The position just after its last byte (page headers in between included; not aligned).
    pub end: Lsn,
    pub header: RecordHeader,
}

/// The record being read when the decoder stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingRecord {
    pub start: Lsn,
    /// `xl_tot_len`, once its 4 bytes were fed.
    pub tot_len: Option<u32>,
}

/// How `xl_prev` of the next record is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PrevCheck {
    /// Must equal the previous record's start.
    Exact(Lsn),
    /// "Random access": only known to be before the record itself.
    Before,
}

/// The record-level state.
#[derive(Debug, Clone)]
enum Rec {
    /// Started at a page start: what comes first depends on the page header.
    Start,
    /// Skipping the rest of a record that began before the start.
    Skip { remaining: u64 },
    /// Alignment padding after a record; `Pad { remaining: 0 }` is a record boundary.
    Pad { remaining: u64 },
    Header {
        start: Lsn,
        buf: [u8; RECORD_HEADER_LEN],
        have: usize,
    },
    Body {
        start: Lsn,
        raw: [u8; RECORD_HEADER_LEN],
        header: RecordHeader,
        got: u64,
        crc: u32,
    },
    /// The unused rest of a segment after an XLOG_SWITCH record: no page headers.
    SwitchTail,
}

/// Validates WAL bytes fed in order. See the module documentation.
#[derive(Debug, Clone)]
pub struct WalDecoder {
    seg_size: u64,
    pages: PageValidator,
    zeros: ZeroPolicy,
    /// LSN of the next byte to be fed.
    pos: Lsn,
    valid_end: Lsn,
    status: DecoderStatus,
    /// Where reading stopped on failure: the page start for page-level errors, the position
    /// after the last byte taken for record errors. Bytes from here on were not accepted.
    stop: Lsn,
    in_page_header: bool,
    page_buf: [u8; LONG_HEADER_LEN],
    page_have: usize,
    rec: Rec,
    prev: PrevCheck,
    records: u64,
    last_record: Option<Lsn>,
    nonzero_after_end: Option<Lsn>,
}

const BLCKSZ: u64 = WAL_PAGE_SIZE;

impl WalDecoder {
    /// A decoder whose first byte fed is at `start`.
    ///
    /// `system_identifier`: checked against every long page header when given, otherwise
    /// learned from the first one. `first_record_prev`: the start of the record before the
    /// first one, when known; `None` applies PostgreSQL's random-access rule (`xl_prev` below
    /// the record's own LSN). An invalid `seg_size` or a `start` that cannot be a record
    /// boundary makes the first [`feed`](Self::feed) fail.
    pub fn new(
        start: Lsn,
        seg_size: u64,
        system_identifier: Option<u64>,
        first_record_prev: Option<Lsn>,
    ) -> Self {
        let mut d = WalDecoder {
            seg_size,
            pages: PageValidator::new(seg_size, system_identifier),
            zeros: ZeroPolicy::Corrupt,
            pos: start,
            valid_end: start,
            status: DecoderStatus::Running,
            stop: start,
            in_page_header: false,
            page_buf: [0; LONG_HEADER_LEN],
            page_have: 0,
            rec: Rec::Start,
            prev: first_record_prev.map_or(PrevCheck::Before, PrevCheck::Exact),
            records: 0,
            last_record: None,
            nonzero_after_end: None,
        };
        if !is_valid_seg_size(seg_size) {
            d.status = DecoderStatus::Failed(WalError::InvalidSegmentSize(seg_size));
            return d;
        }
        let page_off = start.0 % BLCKSZ;
        if page_off != 0 {
            // A record boundary inside a page: past the page header, MAXALIGNed.
            let hdr = if start.segment_offset(seg_size) < BLCKSZ {
                LONG_HEADER_LEN
            } else {
                SHORT_HEADER_LEN
            } as u64;
            if page_off < hdr || !page_off.is_multiple_of(8) {
                d.status = DecoderStatus::Failed(WalError::InvalidRecordOffset {
                    lsn: start,
                    expected: hdr as u32,
                    got: page_off as u32,
                });
            }
            d.rec = Rec::Pad { remaining: 0 };
        }
        d
    }

    /// Chooses what zeros where a record should start mean (see [`ZeroPolicy`]); may be
    /// changed between feeds, e.g. for the last file of a directory.
    pub fn set_zero_policy(&mut self, policy: ZeroPolicy) {
        self.zeros = policy;
    }

    /// The timeline of the file being read, used only to name segment files in messages.
    pub fn set_timeline(&mut self, tli: TimeLineId) {
        self.pages.set_file_timeline(tli);
    }

    /// Feeds the next bytes. Returns the first error (the same one on every later call).
    pub fn feed(&mut self, data: &[u8]) -> Result<(), WalError> {
        self.feed_with(data, |_| {})
    }

    /// Like [`feed`](Self::feed), calling `on_record` for every whole valid record.
    pub fn feed_with<F: FnMut(&RecordInfo)>(
        &mut self,
        data: &[u8],
        mut on_record: F,
    ) -> Result<(), WalError> {
        let mut rest = data;
        loop {
            match &self.status {
                DecoderStatus::Failed(e) => return Err(e.clone()),
                DecoderStatus::Ended { .. } => {
                    self.note_tail(rest);
                    return Ok(());
                }
                DecoderStatus::Running => {}
            }
            if rest.is_empty() {
                return Ok(());
            }
            match self.step(rest, &mut on_record) {
                Ok(n) => rest = rest.get(n..).unwrap_or(&[]),
                Err(e) => {
                    self.status = DecoderStatus::Failed(e.clone());
                    return Err(e);
                }
            }
        }
    }

    /// End of the last whole valid record; see the module invariants.
    pub fn valid_end(&self) -> Lsn {
        self.valid_end
    }

    /// LSN of the next byte to be fed.
    pub fn position(&self) -> Lsn {
        self.pos
    }

    pub fn status(&self) -> &DecoderStatus {
        &self.status
    }

    /// The error the decoder failed with, if any.
    pub fn error(&self) -> Option<&WalError> {
        match &self.status {
            DecoderStatus::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// Where validation stopped: `at` when [`DecoderStatus::Ended`]; on failure, the start of
    /// the bad page for page-level errors, otherwise the position after the last byte taken
    /// (a bad CRC: the record's end). `None` while running.
    ///
    /// A writer that was interrupted leaves zeros after the last byte it wrote; so when every
    /// byte from here on is zero, the failure is consistent with a torn tail, not corruption.
    pub fn stopped_at(&self) -> Option<Lsn> {
        match &self.status {
            DecoderStatus::Running => None,
            DecoderStatus::Ended { at } => Some(*at),
            DecoderStatus::Failed(_) => Some(self.stop),
        }
    }

    /// Whole valid records seen.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Start of the last whole valid record (the `xl_prev` of the next one).
    pub fn last_record(&self) -> Option<Lsn> {
        self.last_record
    }

    /// The major version named by the page magic, once a page header was seen.
    pub fn major_version(&self) -> Option<u32> {
        self.pages.major()
    }

    /// The system identifier given or learned from the first long page header.
    pub fn system_identifier(&self) -> Option<u64> {
        self.pages.system_identifier()
    }

    /// `xlp_tli` of the latest page header.
    pub fn page_timeline(&self) -> Option<TimeLineId> {
        self.pages.latest_tli()
    }

    /// The record being read (incomplete, or the one that failed).
    pub fn pending_record(&self) -> Option<PendingRecord> {
        match &self.rec {
            Rec::Header { start, buf, have } => Some(PendingRecord {
                start: *start,
                tot_len: (*have >= 4).then(|| tot_len_of(buf)),
            }),
            Rec::Body { start, header, .. } => Some(PendingRecord {
                start: *start,
                tot_len: Some(header.tot_len),
            }),
            _ => None,
        }
    }

    /// After [`DecoderStatus::Ended`]: the first non-zero byte fed after the end, if any.
    pub fn nonzero_after_end(&self) -> Option<Lsn> {
        self.nonzero_after_end
    }

    fn note_tail(&mut self, rest: &[u8]) {
        if self.nonzero_after_end.is_none() {
            if let Some(i) = rest.iter().position(|&b| b != 0) {
                self.nonzero_after_end = Some(Lsn(self.pos.0.saturating_add(i as u64)));
            }
        }
        self.pos = Lsn(self.pos.0.saturating_add(rest.len() as u64));
    }

    fn advance(&mut self, n: usize) {
        self.pos = Lsn(self.pos.0.saturating_add(n as u64));
    }

    /// Consumes a prefix of `data` (possibly empty when only the state changed).
    fn step(
        &mut self,
        data: &[u8],
        on_record: &mut dyn FnMut(&RecordInfo),
    ) -> Result<usize, WalError> {
        if !self.in_page_header
            && self.pos.0.is_multiple_of(BLCKSZ)
            && !matches!(self.rec, Rec::SwitchTail)
        {
            self.in_page_header = true;
            self.page_have = 0;
        }
        if self.in_page_header {
            self.step_page_header(data)
        } else {
            self.step_record(data, on_record)
        }
    }

    fn step_page_header(&mut self, data: &[u8]) -> Result<usize, WalError> {
        let need = if self.page_have < SHORT_HEADER_LEN {
            SHORT_HEADER_LEN
        } else {
            let info = self
                .page_buf
                .get(2..4)
                .map_or(0, |b| u16::from_le_bytes(b.try_into().unwrap_or([0, 0])));
            header_len(info)
        };
        let n = data.len().min(need.saturating_sub(self.page_have));
        let (Some(dst), Some(src)) = (
            self.page_buf.get_mut(self.page_have..self.page_have + n),
            data.get(..n),
        ) else {
            return Ok(0);
        };
        dst.copy_from_slice(src);
        self.page_have += n;
        self.advance(n);
        if self.page_have < need {
            // Either more bytes are needed, or 24 bytes announced a long header.
            return Ok(n);
        }
        let page = Lsn(self.pos.0.saturating_sub(self.page_have as u64));
        self.stop = page;
        let bytes = self.page_buf.get(..self.page_have).unwrap_or(&[]);
        if self.zeros == ZeroPolicy::EndOfWal && bytes.iter().all(|&b| b == 0) {
            // A zero page where WAL should continue: nothing was written here.
            self.in_page_header = false;
            self.status = DecoderStatus::Ended { at: page };
            return Ok(n);
        }
        if need == SHORT_HEADER_LEN && header_len(u16_le(bytes, 2)) != SHORT_HEADER_LEN {
            // The long-header flag appeared with the last bytes: collect the rest first.
            return Ok(n);
        }
        let h = PageHeader::parse(bytes).ok_or_else(|| WalError::InvalidInfoBits {
            info: u16_le(bytes, 2),
            segment: self.pages.segment_name(page),
            lsn: page,
            offset: page.segment_offset(self.seg_size) as u32,
        })?;
        self.pages.validate(&h, page)?;
        self.in_page_header = false;
        self.on_page_header(&h, page)?;
        Ok(n)
    }

    /// Record-level consequences of a valid page header (xlogreader.c's contrecord checks).
    fn on_page_header(&mut self, h: &PageHeader, page: Lsn) -> Result<(), WalError> {
        let after = Lsn(page.0 + h.size() as u64);
        match &self.rec {
            Rec::Start => {
                // Like XLogFindNextRecord: skip the tail of a record that began earlier.
                self.rec = if h.is_contrecord() && h.rem_len > 0 {
                    Rec::Skip {
                        remaining: u64::from(h.rem_len),
                    }
                } else {
                    Rec::Pad { remaining: 0 }
                };
            }
            Rec::Skip { remaining } => {
                let remaining = *remaining;
                if h.is_overwrite_contrecord() {
                    // The record being skipped was never finished; WAL goes on from here.
                    self.rec = Rec::Pad { remaining: 0 };
                } else if !h.is_contrecord() {
                    return Err(WalError::NoContrecordFlag { lsn: page });
                } else if u64::from(h.rem_len) != remaining {
                    return Err(WalError::InvalidContrecordLength {
                        rem_len: h.rem_len,
                        expected: remaining as i64,
                        lsn: page,
                    });
                }
            }
            Rec::Pad { .. } => {
                if h.is_contrecord() {
                    return Err(WalError::ContrecordRequested { lsn: after });
                }
            }
            Rec::Header { start, buf, have } => {
                let tot_len = (*have >= 4).then(|| tot_len_of(buf));
                self.check_continuation(h, *start, tot_len, *have as u64)?;
            }
            Rec::Body {
                start, header, got, ..
            } => {
                self.check_continuation(h, *start, Some(header.tot_len), *got)?;
            }
            // No page headers inside a switch tail: `step` does not collect one there.
            Rec::SwitchTail => {}
        }
        Ok(())
    }

    /// A page in the middle of a record must continue it, with the right remaining length.
    fn check_continuation(
        &mut self,
        h: &PageHeader,
        start: Lsn,
        tot_len: Option<u32>,
        got: u64,
    ) -> Result<(), WalError> {
        if h.is_overwrite_contrecord() {
            // The record was aborted (its continuation lost at a crash) and the WAL after it
            // rewritten from this page: PostgreSQL's reader restarts here, and so do we. The
            // aborted record never counted, so `prev` still names the record before it, which
            // is what the XLOG_OVERWRITE_CONTRECORD record on this page points back to.
            self.rec = Rec::Pad { remaining: 0 };
            return Ok(());
        }
        if !h.is_contrecord() {
            return Err(WalError::NoContrecordFlag { lsn: start });
        }
        if let Some(tot_len) = tot_len {
            if h.rem_len == 0 || u64::from(tot_len) != u64::from(h.rem_len) + got {
                return Err(WalError::InvalidContrecordLength {
                    rem_len: h.rem_len,
                    expected: i64::from(tot_len) - got as i64,
                    lsn: start,
                });
            }
        }
        Ok(())
    }

    fn step_record(
        &mut self,
        data: &[u8],
        on_record: &mut dyn FnMut(&RecordInfo),
    ) -> Result<usize, WalError> {
        // Bytes up to the end of this page (of this segment in a switch tail) belong to the
        // current record state; the next page header is handled by `step`.
        let room = match self.rec {
            Rec::SwitchTail => self.seg_size - self.pos.segment_offset(self.seg_size),
            _ => BLCKSZ - self.pos.0 % BLCKSZ,
        };
        let avail = data.get(..data.len().min(room as usize)).unwrap_or(&[]);
        match &mut self.rec {
            Rec::Start => {
                self.rec = Rec::Pad { remaining: 0 };
                Ok(0)
            }
            Rec::Skip { remaining } => {
                let n = (avail.len() as u64).min(*remaining);
                *remaining -= n;
                let done = *remaining == 0;
                self.advance(n as usize);
                self.valid_end = self.pos;
                if done {
                    self.rec = Rec::Pad {
                        remaining: maxalign(self.pos.0) - self.pos.0,
                    };
                }
                Ok(n as usize)
            }
            Rec::Pad { remaining } if *remaining > 0 => {
                let n = (avail.len() as u64).min(*remaining);
                *remaining -= n;
                self.advance(n as usize);
                self.valid_end = self.pos;
                Ok(n as usize)
            }
            Rec::Pad { .. } => {
                self.rec = Rec::Header {
                    start: self.pos,
                    buf: [0; RECORD_HEADER_LEN],
                    have: 0,
                };
                Ok(0)
            }
            Rec::Header { start, buf, have } => {
                let start = *start;
                // Take xl_tot_len alone first, so that a zero length (end of WAL) consumes
                // no byte beyond it.
                let want = if *have < 4 { 4 } else { RECORD_HEADER_LEN };
                let n = avail.len().min(want - *have);
                if let (Some(dst), Some(src)) = (buf.get_mut(*have..*have + n), avail.get(..n)) {
                    dst.copy_from_slice(src);
                }
                *have += n;
                let have = *have;
                let raw = *buf;
                self.advance(n);
                self.stop = self.pos;
                if have == 4 {
                    let tot_len = tot_len_of(&raw);
                    if tot_len == 0 && self.zeros == ZeroPolicy::EndOfWal {
                        self.status = DecoderStatus::Ended { at: start };
                        return Ok(n);
                    }
                    if (tot_len as usize) < RECORD_HEADER_LEN {
                        return Err(WalError::InvalidRecordLength {
                            lsn: start,
                            got: tot_len,
                        });
                    }
                    if tot_len > max_record_len(self.pages.major()) {
                        return Err(WalError::RecordTooLong {
                            len: tot_len,
                            lsn: start,
                        });
                    }
                }
                if have == RECORD_HEADER_LEN {
                    self.header_complete(start, raw, on_record)?;
                }
                Ok(n)
            }
            Rec::Body {
                start,
                raw,
                header,
                got,
                crc,
            } => {
                let left = u64::from(header.tot_len).saturating_sub(*got);
                let n = (avail.len() as u64).min(left) as usize;
                let chunk = avail.get(..n).unwrap_or(&[]);
                *crc = crc32c::crc32c_append(*crc, chunk);
                *got += n as u64;
                let complete = *got >= u64::from(header.tot_len);
                let (start, raw, header, crc) = (*start, *raw, *header, *crc);
                self.advance(n);
                self.stop = self.pos;
                if complete {
                    if finish_crc(crc, &raw) != header.crc {
                        return Err(WalError::IncorrectChecksum { lsn: start });
                    }
                    self.record_complete(start, header, on_record);
                }
                Ok(n)
            }
            Rec::SwitchTail => {
                // PostgreSQL zero-fills this space (without page headers) and its reader
                // never looks at it; neither do we.
                let n = avail.len();
                self.advance(n);
                self.valid_end = self.pos;
                if self.pos.segment_offset(self.seg_size) == 0 {
                    self.rec = Rec::Pad { remaining: 0 };
                }
                Ok(n)
            }
        }
    }

    /// `ValidXLogRecordHeader`, then on to the body (or done, for a header-only record).
    fn header_complete(
        &mut self,
        start: Lsn,
        raw: [u8; RECORD_HEADER_LEN],
        on_record: &mut dyn FnMut(&RecordInfo),
    ) -> Result<(), WalError> {
        let header = RecordHeader::parse(&raw)
            .ok_or(WalError::InvalidRecordLength { lsn: start, got: 0 })?;
        if !rmid_is_valid(header.rmid, self.pages.major()) {
            return Err(WalError::InvalidRmgr {
                rmid: header.rmid,
                lsn: start,
            });
        }
        let prev_ok = match self.prev {
            PrevCheck::Exact(p) => header.prev == p,
            PrevCheck::Before => header.prev < start,
        };
        if !prev_ok {
            return Err(WalError::IncorrectPrevLink {
                prev: header.prev,
                lsn: start,
            });
        }
        if header.tot_len as usize == RECORD_HEADER_LEN {
            if finish_crc(0, &raw) != header.crc {
                return Err(WalError::IncorrectChecksum { lsn: start });
            }
            self.record_complete(start, header, on_record);
        } else {
            self.rec = Rec::Body {
                start,
                raw,
                header,
                got: RECORD_HEADER_LEN as u64,
                crc: 0,
            };
        }
        Ok(())
    }

    fn record_complete(
        &mut self,
        start: Lsn,
        header: RecordHeader,
        on_record: &mut dyn FnMut(&RecordInfo),
    ) {
        self.records += 1;
        self.last_record = Some(start);
        self.prev = PrevCheck::Exact(start);
        self.valid_end = self.pos;
        on_record(&RecordInfo {
            lsn: start,
            end: self.pos,
            header,
        });
        self.rec = if header.is_switch() {
            if self.pos.segment_offset(self.seg_size) == 0 {
                Rec::Pad { remaining: 0 }
            } else {
                Rec::SwitchTail
            }
        } else {
            Rec::Pad {
                remaining: maxalign(self.pos.0) - self.pos.0,
            }
        };
    }
}

fn u16_le(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u16::from_le_bytes)
}

fn tot_len_of(buf: &[u8; RECORD_HEADER_LEN]) -> u32 {
    let [a, b, c, d, ..] = *buf;
    u32::from_le_bytes([a, b, c, d])
}

/// The position after `len` bytes of record data starting at `start`, stepping over the page
/// headers in between (long at segment starts). Used to tell how far a record claims to
/// reach. Bounded: at most one iteration per page of `len`.
pub fn data_end(start: Lsn, len: u64, seg_size: u64) -> Lsn {
    let mut pos = start.0;
    let mut left = len;
    loop {
        if pos.is_multiple_of(BLCKSZ) {
            let hdr = if seg_size != 0 && pos.is_multiple_of(seg_size) {
                LONG_HEADER_LEN
            } else {
                SHORT_HEADER_LEN
            };
            pos = pos.saturating_add(hdr as u64);
        }
        let room = BLCKSZ - pos % BLCKSZ;
        if left <= room {
            return Lsn(pos.saturating_add(left));
        }
        left -= room;
        pos = pos.saturating_add(room);
        if pos == u64::MAX {
            return Lsn(pos);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::page::{XLP_FIRST_IS_CONTRECORD, XLP_FIRST_IS_OVERWRITE_CONTRECORD};
    use crate::wal::testwal::{fixture, SynthWal, SEG};

    /// Deterministic chunk sizes from 1 byte to 200 KB (an LCG, so failures reproduce).
    struct Chunks(u64);

    impl Chunks {
        fn next(&mut self) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let r = (self.0 >> 33) as usize;
            match r % 4 {
                0 => 1 + r % 16,
                1 => 1 + r % 8192,
                2 => 1 + r % 65536,
                _ => 1 + r % 200_000,
            }
        }
    }

    fn feed_chunked(d: &mut WalDecoder, data: &[u8], seed: u64) -> Vec<RecordInfo> {
        let mut recs = Vec::new();
        let mut chunks = Chunks(seed);
        let mut at = 0;
        while at < data.len() {
            let n = chunks.next().min(data.len() - at);
            let r = d.feed_with(&data[at..at + n], |r| recs.push(*r));
            at += n;
            if r.is_err() {
                break;
            }
        }
        recs
    }

    fn file_decoder(start: Lsn, prev: Option<Lsn>) -> WalDecoder {
        let mut d = WalDecoder::new(start, SEG, None, prev);
        d.set_zero_policy(ZeroPolicy::EndOfWal);
        d
    }

    #[test]
    fn fixture_matches_pg_waldump() {
        let f = fixture();
        let data = f.bytes_from(f.first_segno());
        let start = Lsn(f.first_segno() * SEG);
        let mut d = file_decoder(start, None);
        let mut recs = Vec::new();
        d.feed_with(&data, |r| recs.push(*r)).unwrap();
        let end = f.lsn("end_of_wal");
        assert_eq!(d.status(), &DecoderStatus::Ended { at: end });
        assert_eq!(d.valid_end(), end);
        assert_eq!(d.records(), f.num("records"));
        assert_eq!(d.nonzero_after_end(), None);
        assert_eq!(d.major_version(), Some(15));
        assert_eq!(d.page_timeline(), Some(1));
        assert!(d.system_identifier().is_some());
        assert_eq!(recs.len(), f.records.len());
        for (mine, theirs) in recs.iter().zip(&f.records) {
            assert_eq!(mine.lsn, theirs.lsn);
            assert_eq!(mine.header.prev, theirs.prev, "at {}", theirs.lsn);
            assert_eq!(mine.header.tot_len, theirs.tot_len, "at {}", theirs.lsn);
        }
        let switches = recs.iter().filter(|r| r.header.is_switch()).count() as u64;
        assert_eq!(switches, f.num("switch_records"));
        assert_eq!(d.last_record(), Some(f.lsn("last_record")));
    }

    #[test]
    fn any_chunking_gives_the_same_result() {
        let f = fixture();
        let data = f.bytes_from(f.first_segno());
        let start = Lsn(f.first_segno() * SEG);
        for seed in 1..=6u64 {
            let mut d = file_decoder(start, None);
            let recs = feed_chunked(&mut d, &data, seed);
            assert_eq!(d.valid_end(), f.lsn("end_of_wal"), "seed {seed}");
            assert_eq!(d.records(), f.num("records"), "seed {seed}");
            assert_eq!(recs.len() as u64, f.num("records"));
            assert_eq!(
                d.status(),
                &DecoderStatus::Ended {
                    at: f.lsn("end_of_wal")
                }
            );
        }
    }

    #[test]
    fn valid_end_never_passes_the_bytes_fed() {
        let f = fixture();
        let data = f.bytes_from(f.first_segno());
        let start = Lsn(f.first_segno() * SEG);
        let mut d = file_decoder(start, None);
        let mut chunks = Chunks(99);
        let mut at = 0;
        let mut last = d.valid_end();
        while at < data.len() {
            let n = chunks.next().min(data.len() - at);
            d.feed(&data[at..at + n]).unwrap();
            at += n;
            assert!(d.valid_end() <= Lsn(start.0 + at as u64));
            assert!(d.valid_end() >= last);
            last = d.valid_end();
        }
    }

    #[test]
    fn zero_length_is_corruption_in_a_stream() {
        let f = fixture();
        let data = f.bytes_from(f.first_segno());
        let mut d = WalDecoder::new(Lsn(f.first_segno() * SEG), SEG, None, None);
        let e = d.feed(&data).unwrap_err();
        let end = f.lsn("end_of_wal");
        assert_eq!(e, WalError::InvalidRecordLength { lsn: end, got: 0 });
        assert_eq!(
            e.to_string(),
            format!("invalid record length at {end}: expected at least 24, got 0")
        );
        assert_eq!(d.valid_end(), end);
        // Stays failed.
        assert_eq!(d.feed(&[1, 2, 3]).unwrap_err(), e);
    }

    #[test]
    fn switch_record_and_its_zero_tail() {
        let f = fixture();
        let seg = f.first_segno();
        let switch = f.switch_record();
        // Stream policy: the zero tail after a switch is not an error.
        let mut d = WalDecoder::new(Lsn(seg * SEG), SEG, None, None);
        let mut seen = Vec::new();
        feed_chunked_ok(&mut d, f.segment(seg), 5, &mut seen);
        assert_eq!(d.status(), &DecoderStatus::Running);
        assert_eq!(d.valid_end(), Lsn((seg + 1) * SEG));
        assert_eq!(seen.last().unwrap().lsn, switch.lsn);
        let in_seg = f
            .records
            .iter()
            .filter(|r| r.lsn.segment(SEG) == seg)
            .count();
        assert_eq!(seen.len(), in_seg);
        // Half the tail: valid_end follows the bytes.
        let mut d = WalDecoder::new(Lsn(seg * SEG), SEG, None, None);
        let half = (SEG - 4096) as usize;
        d.feed(&f.segment(seg)[..half]).unwrap();
        assert_eq!(d.valid_end(), Lsn(seg * SEG + half as u64));
        // The next segment follows with its long header.
        d.feed(&f.segment(seg)[half..]).unwrap();
        d.feed(f.segment(seg + 1)).unwrap();
        assert!(d.valid_end() > Lsn((seg + 1) * SEG));
    }

    fn feed_chunked_ok(d: &mut WalDecoder, data: &[u8], seed: u64, out: &mut Vec<RecordInfo>) {
        let mut chunks = Chunks(seed);
        let mut at = 0;
        while at < data.len() {
            let n = chunks.next().min(data.len() - at);
            d.feed_with(&data[at..at + n], |r| out.push(*r)).unwrap();
            at += n;
        }
    }

    #[test]
    fn starting_on_a_continuation_page() {
        let f = fixture();
        let end = f.lsn("end_of_wal");
        // Every fixture segment after the first starts with a continuation or a record.
        for (_, segno, bytes) in f.segments.iter().skip(1) {
            let start = Lsn(segno * SEG);
            let cont = u16::from_le_bytes([bytes[2], bytes[3]]) & XLP_FIRST_IS_CONTRECORD != 0;
            let mut d = file_decoder(start, None);
            let mut recs = Vec::new();
            d.feed_with(&f.bytes_from(*segno), |r| recs.push(*r))
                .unwrap();
            let expected: Vec<Lsn> = f
                .records
                .iter()
                .map(|r| r.lsn)
                .filter(|l| *l >= start)
                .collect();
            let got: Vec<Lsn> = recs.iter().map(|r| r.lsn).collect();
            assert_eq!(got, expected, "from {start} (contrecord: {cont})");
            assert_eq!(d.valid_end(), end);
        }
        // The fixture has a record longer than a segment: some segment is continuation only.
        assert!(f
            .segments
            .iter()
            .any(|(_, segno, _)| !f.records.iter().any(|r| r.lsn.segment(SEG) == *segno)));
    }

    #[test]
    fn starting_mid_page_at_a_record() {
        let f = fixture();
        let r = f.records.iter().find(|r| r.lsn.0 % 8192 > 100).unwrap();
        let seg = r.lsn.segment(SEG);
        let off = (r.lsn.0 - seg * SEG) as usize;
        let data = &f.bytes_from(seg)[off..];
        let mut d = file_decoder(r.lsn, Some(r.prev));
        d.feed(data).unwrap();
        assert_eq!(d.valid_end(), f.lsn("end_of_wal"));
        let mut d = file_decoder(r.lsn, Some(Lsn(r.prev.0 + 8)));
        assert_eq!(
            d.feed(data).unwrap_err(),
            WalError::IncorrectPrevLink {
                prev: r.prev,
                lsn: r.lsn
            }
        );
        // Inside the page header, or misaligned: refused.
        let mut d = WalDecoder::new(Lsn(seg * SEG + 8), SEG, None, None);
        assert!(matches!(
            d.feed(data),
            Err(WalError::InvalidRecordOffset { expected: 40, .. })
        ));
        let mut d = WalDecoder::new(Lsn(r.lsn.0 + 4), SEG, None, None);
        assert!(d.feed(data).is_err());
        let mut d = WalDecoder::new(Lsn(0), 3 << 20, None, None);
        assert_eq!(
            d.feed(data).unwrap_err(),
            WalError::InvalidSegmentSize(3 << 20)
        );
    }

    /// Decodes the fixture with one byte changed; returns the error and the valid end.
    fn corrupt_at(at: Lsn, f: impl Fn(u8) -> u8) -> (WalError, Lsn) {
        let fx = fixture();
        let start = Lsn(fx.first_segno() * SEG);
        let mut data = fx.bytes_from(fx.first_segno());
        let i = (at.0 - start.0) as usize;
        data[i] = f(data[i]);
        let mut d = file_decoder(start, None);
        let e = d.feed(&data).unwrap_err();
        (e, d.valid_end())
    }

    /// pg_waldump's view of where the record before `lsn` ends (the next record's start).
    fn end_before(lsn: Lsn) -> Lsn {
        let f = fixture();
        let i = f.records.iter().position(|r| r.lsn == lsn).unwrap();
        let prev = &f.records[i - 1];
        if prev.rmgr == "XLOG" && prev.tot_len == 24 && lsn.segment_offset(SEG) < 8192 {
            // After a switch: the end is the next segment's start.
            return lsn.segment_start(SEG);
        }
        let e = data_end(prev.lsn, u64::from(prev.tot_len), SEG);
        Lsn(maxalign(e.0))
    }

    #[test]
    fn flipped_body_byte_is_a_crc_error_at_that_record() {
        let f = fixture();
        // A record whose body is on its first page, and one whose body continues on later
        // pages (flip a byte on the second page).
        let one_page = f
            .records
            .iter()
            .skip(10)
            .find(|r| r.tot_len > 200 && r.lsn.0 % 8192 + 200 < 8192)
            .unwrap();
        let (e, end) = corrupt_at(Lsn(one_page.lsn.0 + 100), |b| b ^ 0x20);
        assert_eq!(e, WalError::IncorrectChecksum { lsn: one_page.lsn });
        assert_eq!(end, end_before(one_page.lsn));
        assert_eq!(
            e.to_string(),
            format!(
                "incorrect resource manager data checksum in record at {}",
                one_page.lsn
            )
        );

        let spanning = f
            .records
            .iter()
            .skip(10)
            .find(|r| r.lsn.0 % 8192 + u64::from(r.tot_len) > 8192 + 200)
            .unwrap();
        let second_page = Lsn(spanning.lsn.page_start().0 + 8192 + 100);
        let (e, _) = corrupt_at(second_page, |b| b.wrapping_add(1));
        assert_eq!(e, WalError::IncorrectChecksum { lsn: spanning.lsn });

        // The xl_prev field, and the rmgr ID.
        let (e, _) = corrupt_at(Lsn(one_page.lsn.0 + 8), |b| b ^ 0x08);
        assert!(matches!(e, WalError::IncorrectPrevLink { lsn, .. } if lsn == one_page.lsn));
        let (e, _) = corrupt_at(Lsn(one_page.lsn.0 + 17), |_| 99);
        assert_eq!(
            e,
            WalError::InvalidRmgr {
                rmid: 99,
                lsn: one_page.lsn
            }
        );
        let (e, _) = corrupt_at(Lsn(one_page.lsn.0 + 3), |_| 0x7F);
        assert!(matches!(e, WalError::RecordTooLong { lsn, .. } if lsn == one_page.lsn));
        let (e, _) = corrupt_at(Lsn(one_page.lsn.0), |_| 0);
        assert!(matches!(
            e,
            WalError::IncorrectChecksum { .. } | WalError::InvalidRecordLength { .. }
        ));
    }

    #[test]
    fn flipped_page_header_byte_is_a_page_error() {
        let f = fixture();
        let spanning = f
            .records
            .iter()
            .skip(10)
            .find(|r| r.lsn.0 % 8192 + u64::from(r.tot_len) > 8192 + 200)
            .unwrap();
        let page = Lsn(spanning.lsn.page_start().0 + 8192);
        // Magic.
        let (e, end) = corrupt_at(page, |b| b ^ 0x01);
        assert!(
            matches!(e, WalError::InvalidMagic { lsn, .. } if lsn == page),
            "{e}"
        );
        assert_eq!(end, end_before(spanning.lsn));
        assert!(e.is_page_error());
        // Unknown info bit.
        let (e, _) = corrupt_at(Lsn(page.0 + 2), |b| b | 0x40);
        assert!(
            matches!(e, WalError::InvalidInfoBits { lsn, .. } if lsn == page),
            "{e}"
        );
        // Continuation flag cleared.
        let (e, _) = corrupt_at(Lsn(page.0 + 2), |b| b & !0x01);
        assert_eq!(e, WalError::NoContrecordFlag { lsn: spanning.lsn });
        // Timeline going back.
        let (e, _) = corrupt_at(Lsn(page.0 + 4), |_| 0);
        assert!(
            matches!(
                e,
                WalError::OutOfSequenceTimeline {
                    tli: 0,
                    after: 1,
                    ..
                }
            ),
            "{e}"
        );
        // Page address.
        let (e, _) = corrupt_at(Lsn(page.0 + 9), |b| b ^ 0x10);
        assert!(
            matches!(e, WalError::UnexpectedPageAddr { lsn, .. } if lsn == page),
            "{e}"
        );
        // Remaining length.
        let (e, _) = corrupt_at(Lsn(page.0 + 16), |b| b ^ 0x04);
        assert!(
            matches!(e, WalError::InvalidContrecordLength { lsn, .. } if lsn == spanning.lsn),
            "{e}"
        );
        // A segment's long header: system identifier.
        let seg2 = Lsn((f.first_segno() + 1) * SEG);
        let (e, _) = corrupt_at(Lsn(seg2.0 + 24), |b| b ^ 0x01);
        assert!(matches!(e, WalError::SystemIdMismatch { .. }), "{e}");
        let (e, _) = corrupt_at(Lsn(seg2.0 + 33), |b| b ^ 0x01);
        assert!(matches!(e, WalError::SegmentSizeMismatch { .. }), "{e}");
    }

    #[test]
    fn no_corrupted_record_byte_is_ever_below_valid_end() {
        // Flip one byte of one record (header or body, never a page header) at a time: the
        // decoder must fail, and what it calls valid must end before that record.
        let f = fixture();
        let start = Lsn(f.first_segno() * SEG);
        let clean = f.bytes_from(f.first_segno());
        let mut rng = Chunks(2024);
        for _ in 0..100 {
            let r = &f.records[rng.next() % f.records.len()];
            let off = (rng.next() as u64) % u64::from(r.tot_len);
            let at = Lsn(data_end(r.lsn, off + 1, SEG).0 - 1);
            let mut data = clean.clone();
            let i = (at.0 - start.0) as usize;
            data[i] ^= 1 << (rng.next() % 8);
            let mut d = WalDecoder::new(start, SEG, None, None);
            let e = d.feed(&data).unwrap_err();
            assert!(
                d.valid_end() <= r.lsn,
                "flip at {at} in record {}: valid_end {} ({e})",
                r.lsn,
                d.valid_end()
            );
            assert!(e.lsn() >= r.lsn, "flip at {at} in record {}: {e}", r.lsn);
        }
    }

    #[test]
    fn system_identifier_is_checked_when_given() {
        let f = fixture();
        let mut d = WalDecoder::new(Lsn(f.first_segno() * SEG), SEG, Some(12345), None);
        assert!(matches!(
            d.feed(f.segment(f.first_segno())),
            Err(WalError::SystemIdMismatch {
                expected: 12345,
                ..
            })
        ));
    }

    #[test]
    fn synthetic_records_across_pages_and_segments() {
        let mut w = SynthWal::new(3);
        let mut lsns = Vec::new();
        for len in [24u32, 100, 8000, 30, 20000, 3, 17000] {
            lsns.push(w.record(10, 0, len.max(24)));
        }
        // A record crossing into the next segment, longer than a segment.
        while w.pos() % SEG < SEG - 20_000 {
            lsns.push(w.record(11, 0, 5000));
        }
        lsns.push(w.record(11, 0, (SEG + 300_000) as u32));
        lsns.push(w.record(11, 0, 64));
        w.pad_segment();
        for seed in 1..4 {
            let mut d = WalDecoder::new(Lsn(3 * SEG), SEG, Some(w.sysid), None);
            d.set_zero_policy(ZeroPolicy::EndOfWal);
            let recs = feed_chunked(&mut d, &w.buf, seed);
            let got: Vec<u64> = recs.iter().map(|r| r.lsn.0).collect();
            assert_eq!(got, lsns);
            assert!(matches!(d.status(), DecoderStatus::Ended { .. }));
        }
    }

    #[test]
    fn overwritten_contrecord_restarts_at_that_page() {
        // A record whose continuation was lost; the new WAL starts at the next page with
        // XLP_FIRST_IS_OVERWRITE_CONTRECORD and an XLOG_OVERWRITE_CONTRECORD record whose
        // xl_prev is the record before the aborted one.
        let mut w = SynthWal::new(2);
        let before = w.record(10, 0, 100);
        let aborted = w.pos();
        let rec = w.record_bytes(10, 0, 20_000);
        let first_page_room = (8192 - aborted % 8192) as usize;
        w.buf.extend_from_slice(&rec[..first_page_room]);
        assert_eq!(w.pos() % 8192, 0);
        w.prev = before;
        // Page header with the overwrite flag, then the new record.
        let page = w.pos();
        w.buf.extend_from_slice(&0xD110u16.to_le_bytes());
        w.buf
            .extend_from_slice(&XLP_FIRST_IS_OVERWRITE_CONTRECORD.to_le_bytes());
        w.buf.extend_from_slice(&1u32.to_le_bytes());
        w.buf.extend_from_slice(&page.to_le_bytes());
        w.buf.extend_from_slice(&[0; 8]);
        let overwrite = w.record(0, 0xD0, 40);
        let after = w.record(10, 0, 60);
        w.pad_segment();
        let mut d = WalDecoder::new(Lsn(2 * SEG), SEG, None, None);
        d.set_zero_policy(ZeroPolicy::EndOfWal);
        let mut recs = Vec::new();
        d.feed_with(&w.buf, |r| recs.push(r.lsn.0)).unwrap();
        assert_eq!(recs, vec![before, overwrite, after]);
        assert_ne!(aborted, overwrite);
    }

    #[test]
    fn switch_record_straddling_a_segment_boundary() {
        let mut w = SynthWal::new(5);
        while SEG - w.pos() % SEG > 9000 {
            w.record(10, 0, 1000);
        }
        // One record crossing into the segment's last page, ending 8 bytes before its end:
        // the switch record's header then straddles the segment boundary.
        let left = SEG - w.pos() % SEG;
        w.record(10, 0, (left - 32) as u32);
        assert_eq!(w.pos() % SEG, SEG - 8);
        let sw = w.switch();
        assert_eq!(sw % SEG, SEG - 8);
        let next = w.record(10, 0, 50);
        w.pad_segment();
        assert_eq!(next, 7 * SEG + 40);
        let mut d = WalDecoder::new(Lsn(5 * SEG), SEG, None, None);
        d.set_zero_policy(ZeroPolicy::EndOfWal);
        let mut recs = Vec::new();
        feed_chunked_ok(&mut d, &w.buf, 3, &mut recs);
        assert_eq!(recs.last().unwrap().lsn.0, next);
        assert!(recs.iter().any(|r| r.lsn.0 == sw && r.header.is_switch()));
    }

    #[test]
    fn data_end_steps_over_page_headers() {
        assert_eq!(data_end(Lsn(SEG + 40), 100, SEG), Lsn(SEG + 140));
        assert_eq!(data_end(Lsn(SEG + 8000), 192, SEG), Lsn(SEG + 8192));
        assert_eq!(
            data_end(Lsn(SEG + 8000), 200, SEG),
            Lsn(SEG + 8192 + 24 + 8)
        );
        assert_eq!(data_end(Lsn(2 * SEG - 8), 16, SEG), Lsn(2 * SEG + 40 + 8));
    }

    #[test]
    fn garbage_never_panics() {
        let mut chunks = Chunks(7);
        for seed in 0..200u64 {
            let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let len = chunks.next() % 30_000;
            let mut data: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 24) as u8
                })
                .collect();
            // Make the first page header plausible so decoding gets past it sometimes.
            if data.len() > 40 && seed % 2 == 0 {
                let mut w = SynthWal::new(1);
                w.record(10, 0, 24);
                data[..40].copy_from_slice(&w.buf[..40]);
            }
            for policy in [ZeroPolicy::Corrupt, ZeroPolicy::EndOfWal] {
                let mut d = WalDecoder::new(Lsn(SEG), SEG, None, None);
                d.set_zero_policy(policy);
                let _ = feed_chunked(&mut d, &data, seed);
                assert!(d.valid_end() <= d.position());
            }
        }
    }
}
