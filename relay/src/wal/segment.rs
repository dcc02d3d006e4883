//! WAL segment and timeline-history file names (`xlog_internal.h`: XLogFileName,
//! XLogFromFileName, TLHistoryFileName).

use super::lsn::TimeLineId;

/// Smallest and largest segment sizes PostgreSQL accepts (`IsValidWalSegSize`).
pub const MIN_SEG_SIZE: u64 = 1 << 20;
pub const MAX_SEG_SIZE: u64 = 1 << 30;
/// PostgreSQL's default segment size (16 MiB): what the store assumes before it has adopted a
/// cluster's identity (no stored segment exists then, so nothing depends on the guess).
pub const DEFAULT_SEG_SIZE: u64 = 16 << 20;

pub fn is_valid_seg_size(size: u64) -> bool {
    size.is_power_of_two() && (MIN_SEG_SIZE..=MAX_SEG_SIZE).contains(&size)
}

/// `TTTTTTTTXXXXXXXXYYYYYYYY`: timeline, then segment number split in "log id" and segment
/// within the 4 GiB log id.
pub fn segment_file_name(tli: TimeLineId, segno: u64, seg_size: u64) -> String {
    let per_id = 0x1_0000_0000 / seg_size;
    format!("{:08X}{:08X}{:08X}", tli, segno / per_id, segno % per_id)
}

/// Name of the file being written for a segment that is not complete yet.
pub fn partial_file_name(tli: TimeLineId, segno: u64, seg_size: u64) -> String {
    format!("{}.partial", segment_file_name(tli, segno, seg_size))
}

/// `%08X.history`.
pub fn history_file_name(tli: TimeLineId) -> String {
    format!("{tli:08X}.history")
}

/// A file name in a WAL directory, understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalFileName {
    Segment {
        tli: TimeLineId,
        segno: u64,
        partial: bool,
    },
    History {
        tli: TimeLineId,
    },
}

/// Parses a segment (optionally `.partial`) or history file name; anything else is `None`.
pub fn parse_wal_file_name(name: &str, seg_size: u64) -> Option<WalFileName> {
    let hex8 = |s: &str| -> Option<u32> {
        (s.len() == 8 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F')))
            .then(|| u32::from_str_radix(s, 16).ok())
            .flatten()
    };
    if let Some(stem) = name.strip_suffix(".history") {
        return hex8(stem).map(|tli| WalFileName::History { tli });
    }
    let (stem, partial) = match name.strip_suffix(".partial") {
        Some(s) => (s, true),
        None => (name, false),
    };
    if stem.len() != 24 || !stem.is_ascii() {
        return None;
    }
    let tli = hex8(stem.get(0..8)?)?;
    let log = hex8(stem.get(8..16)?)? as u64;
    let seg = hex8(stem.get(16..24)?)? as u64;
    let per_id = 0x1_0000_0000 / seg_size;
    if seg >= per_id {
        return None;
    }
    Some(WalFileName::Segment {
        tli,
        segno: log * per_id + seg,
        partial,
    })
}

/// Formats a segment size the way `SHOW wal_segment_size` does (`16MB`, `1GB`).
pub fn format_seg_size(size: u64) -> String {
    if size >= 1 << 30 && size.is_multiple_of(1 << 30) {
        format!("{}GB", size >> 30)
    } else {
        format!("{}MB", size >> 20)
    }
}

/// Parses `SHOW wal_segment_size` output (`16MB`, `1GB`, also a bare byte count from old
/// servers) into bytes.
pub fn parse_seg_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(digits_end);
    let n: u64 = num.parse().ok()?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        _ => return None,
    };
    let size = n.checked_mul(mult)?;
    is_valid_seg_size(size).then_some(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;

    #[test]
    fn names_round_trip() {
        assert_eq!(segment_file_name(2, 3, SEG), "000000020000000000000003");
        assert_eq!(segment_file_name(1, 0x1FF, SEG), "0000000100000001000000FF");
        assert_eq!(
            parse_wal_file_name("0000000100000001000000FF", SEG),
            Some(WalFileName::Segment {
                tli: 1,
                segno: 0x1FF,
                partial: false
            })
        );
        assert_eq!(
            parse_wal_file_name("000000010000000000000003.partial", SEG),
            Some(WalFileName::Segment {
                tli: 1,
                segno: 3,
                partial: true
            })
        );
        assert_eq!(
            parse_wal_file_name("00000002.history", SEG),
            Some(WalFileName::History { tli: 2 })
        );
        assert_eq!(parse_wal_file_name("000000010000000000000100", SEG), None);
        assert_eq!(parse_wal_file_name("0000000100000000000000zz", SEG), None);
        assert_eq!(parse_wal_file_name("state", SEG), None);
        // 1 GiB segments: 4 per log id.
        assert_eq!(segment_file_name(1, 5, 1 << 30), "000000010000000100000001");
    }

    #[test]
    fn seg_size_text() {
        assert_eq!(format_seg_size(SEG), "16MB");
        assert_eq!(format_seg_size(1 << 30), "1GB");
        assert_eq!(parse_seg_size("16MB"), Some(SEG));
        assert_eq!(parse_seg_size("1GB"), Some(1 << 30));
        assert_eq!(parse_seg_size("16777216"), Some(SEG));
        assert_eq!(parse_seg_size("3MB"), None);
        assert_eq!(parse_seg_size("junk"), None);
    }
}
