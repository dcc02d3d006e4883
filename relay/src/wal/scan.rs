//! The end of valid WAL in a segment file (protocol reference §6.6), for crash recovery and
//! `walrelay verify`.
//!
//! A segment file is preallocated with zeros and written from its start, so after a crash it
//! holds valid WAL, then possibly a torn record, then zeros. [`find_end_of_wal`] returns the
//! end of the last whole valid record and tells a torn tail (everything after the point where
//! validation stopped is zero) from damage (non-zero bytes after it).

use super::decoder::{DecoderStatus, WalDecoder, ZeroPolicy};
use super::error::WalError;
use super::lsn::Lsn;

/// Why scanning stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// Every byte was taken without a problem: the data ends at `valid_end`, inside the zero
    /// tail after an XLOG_SWITCH, or inside a record whose rest was not given.
    EndOfData,
    /// Zeros at `at` where a record or page header should start: never written.
    Zeros { at: Lsn },
    /// A page or record failed validation.
    Invalid(WalError),
}

/// Result of [`find_end_of_wal`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndOfWal {
    /// End of the last whole valid record (MAXALIGNed when its padding was present), or the
    /// end of the data inside a switch tail.
    pub valid_end: Lsn,
    pub reason: EndReason,
    /// Whole valid records found.
    pub records: u64,
    /// Start of the last whole valid record: the `xl_prev` the next record must carry.
    pub last_record: Option<Lsn>,
    /// For [`EndReason::Zeros`] and [`EndReason::Invalid`]: the first non-zero byte at or
    /// after the point where validation stopped. `None` means the tail is what an
    /// interrupted writer leaves (zeros after the last byte written).
    pub garbage_at: Option<Lsn>,
}

impl EndOfWal {
    /// True when the data ends the way a preallocated file written up to some point ends:
    /// no validation failure, or one followed only by zeros.
    pub fn is_clean(&self) -> bool {
        self.garbage_at.is_none()
    }

    /// Summarizes a decoder that was fed a file's bytes. `garbage_after_stop`: for a failed
    /// decoder, the first non-zero byte the caller found at or after
    /// [`WalDecoder::stopped_at`] (the decoder itself does not look at bytes after a failure).
    pub fn from_decoder(d: &WalDecoder, garbage_after_stop: Option<Lsn>) -> EndOfWal {
        let (reason, garbage_at) = match d.status() {
            DecoderStatus::Running => (EndReason::EndOfData, None),
            DecoderStatus::Ended { at } => (EndReason::Zeros { at: *at }, d.nonzero_after_end()),
            DecoderStatus::Failed(e) => (EndReason::Invalid(e.clone()), garbage_after_stop),
        };
        EndOfWal {
            valid_end: d.valid_end(),
            reason,
            records: d.records(),
            last_record: d.last_record(),
            garbage_at,
        }
    }
}

/// The first non-zero byte of `data` (which starts at `data_start`) at or after `from`.
pub fn first_nonzero(data: &[u8], data_start: Lsn, from: Lsn) -> Option<Lsn> {
    let skip = usize::try_from(from.0.saturating_sub(data_start.0)).unwrap_or(usize::MAX);
    let tail = data.get(skip..)?;
    let i = tail.iter().position(|&b| b != 0)?;
    Some(Lsn(data_start.0 + skip as u64 + i as u64))
}

/// Scans `data`, the bytes of WAL starting at `start` (normally a whole segment file read
/// from its first byte), for the end of valid WAL. Zeros where a record should start end the
/// scan (they are the unwritten rest of a preallocated file).
///
/// `system_identifier` and `first_record_prev` as for [`WalDecoder::new`].
pub fn find_end_of_wal(
    data: &[u8],
    start: Lsn,
    seg_size: u64,
    system_identifier: Option<u64>,
    first_record_prev: Option<Lsn>,
) -> EndOfWal {
    let mut d = WalDecoder::new(start, seg_size, system_identifier, first_record_prev);
    d.set_zero_policy(ZeroPolicy::EndOfWal);
    // The outcome is read from the decoder's status below.
    let _ = d.feed(data);
    let garbage = match (d.status(), d.stopped_at()) {
        (DecoderStatus::Failed(_), Some(stop)) => first_nonzero(data, start, stop),
        _ => None,
    };
    EndOfWal::from_decoder(&d, garbage)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::testwal::{fixture, SEG};

    /// Segment `segno` of the fixture with every byte from `from` on zeroed (a writer that
    /// stopped there, in a preallocated file).
    fn torn(segno: u64, from: Lsn) -> Vec<u8> {
        let mut data = fixture().segment(segno).to_vec();
        let i = (from.0 - segno * SEG) as usize;
        data[i..].fill(0);
        data
    }

    /// A segment with whole records only on single pages, after its first.
    fn busy_segment() -> u64 {
        fixture().first_segno() + 1
    }

    #[test]
    fn whole_segments() {
        let f = fixture();
        // The first segment ends with an XLOG_SWITCH and its zero tail.
        let seg = f.first_segno();
        let e = find_end_of_wal(f.segment(seg), Lsn(seg * SEG), SEG, None, None);
        assert_eq!(e.reason, EndReason::EndOfData);
        assert_eq!(e.valid_end, Lsn((seg + 1) * SEG));
        assert!(e.is_clean());
        // The last one ends in zeros where pg_waldump found the end of WAL.
        let (_, last, bytes) = f.segments.last().unwrap();
        let e = find_end_of_wal(bytes, Lsn(last * SEG), SEG, None, None);
        let end = f.lsn("end_of_wal");
        assert_eq!(e.reason, EndReason::Zeros { at: end });
        assert_eq!(e.valid_end, end);
        assert_eq!(e.last_record, Some(f.lsn("last_record")));
        assert!(e.is_clean());
        let in_last = f
            .records
            .iter()
            .filter(|r| r.lsn.segment(SEG) == *last)
            .count();
        assert_eq!(e.records, in_last as u64);
    }

    #[test]
    fn torn_tail_mid_record_ends_at_the_previous_record() {
        let f = fixture();
        let seg = busy_segment();
        let r = f
            .records
            .iter()
            .filter(|r| r.lsn.segment(SEG) == seg)
            .find(|r| r.tot_len > 200 && r.lsn.0 % 8192 > 64 && r.lsn.0 % 8192 + 200 < 8192)
            .unwrap();
        // Inside the body: the CRC fails, and only zeros follow.
        let e = find_end_of_wal(
            &torn(seg, Lsn(r.lsn.0 + 50)),
            Lsn(seg * SEG),
            SEG,
            None,
            None,
        );
        assert_eq!(e.valid_end, r.lsn);
        assert_eq!(
            e.reason,
            EndReason::Invalid(WalError::IncorrectChecksum { lsn: r.lsn })
        );
        assert!(e.is_clean());
        // Inside the header (after xl_tot_len): a header check fails, zeros follow.
        let e = find_end_of_wal(
            &torn(seg, Lsn(r.lsn.0 + 8)),
            Lsn(seg * SEG),
            SEG,
            None,
            None,
        );
        assert_eq!(e.valid_end, r.lsn);
        assert!(matches!(e.reason, EndReason::Invalid(_)));
        assert!(e.is_clean());
        // Exactly at the record: zeros where it should start.
        let e = find_end_of_wal(&torn(seg, r.lsn), Lsn(seg * SEG), SEG, None, None);
        assert_eq!(e.valid_end, r.lsn);
        assert_eq!(e.reason, EndReason::Zeros { at: r.lsn });
        assert!(e.is_clean());
    }

    #[test]
    fn torn_tail_at_a_page_inside_a_record() {
        let f = fixture();
        let seg = busy_segment();
        let r = f
            .records
            .iter()
            .filter(|r| r.lsn.segment(SEG) == seg && r.lsn.0 % 8192 > 64)
            .find(|r| r.lsn.0 % 8192 + u64::from(r.tot_len) > 8192 + 100)
            .unwrap();
        let page = Lsn(r.lsn.page_start().0 + 8192);
        let e = find_end_of_wal(&torn(seg, page), Lsn(seg * SEG), SEG, None, None);
        assert_eq!(e.valid_end, r.lsn);
        assert_eq!(e.reason, EndReason::Zeros { at: page });
        assert!(e.is_clean());
    }

    #[test]
    fn damage_is_not_a_torn_tail() {
        let f = fixture();
        let seg = busy_segment();
        let r = f
            .records
            .iter()
            .filter(|r| r.lsn.segment(SEG) == seg)
            .find(|r| r.tot_len > 200 && r.lsn.0 % 8192 > 64 && r.lsn.0 % 8192 + 200 < 8192)
            .unwrap();
        let mut data = f.segment(seg).to_vec();
        data[(r.lsn.0 - seg * SEG + 60) as usize] ^= 0xFF;
        let e = find_end_of_wal(&data, Lsn(seg * SEG), SEG, None, None);
        assert_eq!(e.valid_end, r.lsn);
        assert_eq!(
            e.reason,
            EndReason::Invalid(WalError::IncorrectChecksum { lsn: r.lsn })
        );
        assert!(!e.is_clean());
        assert!(e.garbage_at.unwrap() > r.lsn);

        // Non-zero bytes after a zero end of WAL.
        let (_, last, bytes) = f.segments.last().unwrap();
        let mut data = bytes.clone();
        let at = data.len() - 1000;
        data[at] = 1;
        let e = find_end_of_wal(&data, Lsn(last * SEG), SEG, None, None);
        assert_eq!(
            e.reason,
            EndReason::Zeros {
                at: f.lsn("end_of_wal")
            }
        );
        assert_eq!(e.garbage_at, Some(Lsn(last * SEG + at as u64)));
        assert!(!e.is_clean());
    }

    #[test]
    fn first_nonzero_offsets() {
        let d = [0, 0, 3, 0, 5];
        assert_eq!(first_nonzero(&d, Lsn(100), Lsn(100)), Some(Lsn(102)));
        assert_eq!(first_nonzero(&d, Lsn(100), Lsn(103)), Some(Lsn(104)));
        assert_eq!(first_nonzero(&d, Lsn(100), Lsn(105)), None);
        assert_eq!(first_nonzero(&d, Lsn(100), Lsn(50)), Some(Lsn(102)));
    }
}
