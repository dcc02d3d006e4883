//! WAL record headers (`XLogRecord`, xlogrecord.h) and their checks (`ValidXLogRecordHeader`,
//! `ValidXLogRecord` in xlogreader.c).
//!
//! Layout, native little-endian: xl_tot_len u32, xl_xid u32, xl_prev u64, xl_info u8,
//! xl_rmid u8, 2 bytes of padding, xl_crc u32 (24 bytes). Records start MAXALIGNed (8).
//!
//! The CRC-32C covers the body (bytes 24..tot_len) first, then header bytes 0..20: that order
//! lets a reader check a record as its bytes stream past, without holding the body, which is
//! what [`crate::wal::decoder`] does. Bodies are never interpreted: the relay only stores and
//! forwards them.

use super::lsn::Lsn;

/// `SizeOfXLogRecord`.
pub const RECORD_HEADER_LEN: usize = 24;
/// Bytes of the header covered by the CRC: everything before `xl_crc`.
pub const CRC_COVERED_HEADER_LEN: usize = 20;
/// PostgreSQL's MAXALIGN.
pub const MAXALIGN: u64 = 8;

/// `RM_XLOG_ID`.
pub const RM_XLOG_ID: u8 = 0;
/// `XLOG_SWITCH` (rmgr XLOG).
pub const XLOG_SWITCH: u8 = 0x40;
/// The low bits of `xl_info` are generic flags, the high ones belong to the rmgr.
pub const XLR_INFO_MASK: u8 = 0x0F;

/// Highest built-in resource manager ID (`RM_MAX_BUILTIN_ID`): the same 22 rmgrs, 0..=21,
/// from 13 through 18.
pub const RM_MAX_BUILTIN_ID: u8 = 21;
/// Custom resource managers (15+): `RM_MIN_CUSTOM_ID`..=`RM_MAX_CUSTOM_ID`.
pub const RM_MIN_CUSTOM_ID: u8 = 128;

/// `XLogRecordMaxSize` (16+): 1020 MB.
pub const RECORD_MAX_SIZE: u32 = 1020 * 1024 * 1024;
/// Before 16 the only limit was the reader's allocation limit, `MaxAllocSize`.
pub const MAX_ALLOC_SIZE: u32 = 0x3FFF_FFFF;

/// Rounds up to MAXALIGN.
pub fn maxalign(n: u64) -> u64 {
    n.div_ceil(MAXALIGN).saturating_mul(MAXALIGN)
}

/// Largest `xl_tot_len` a reader of `major` accepts (`None`: version unknown, be lenient).
pub fn max_record_len(major: Option<u32>) -> u32 {
    match major {
        Some(v) if v >= 16 => RECORD_MAX_SIZE,
        _ => MAX_ALLOC_SIZE,
    }
}

/// `RmgrIdIsValid` for a server of `major` (`None`: version unknown, allow what any supported
/// version allows).
pub fn rmid_is_valid(rmid: u8, major: Option<u32>) -> bool {
    rmid <= RM_MAX_BUILTIN_ID || (rmid >= RM_MIN_CUSTOM_ID && major.is_none_or(|v| v >= 15))
}

/// A decoded record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub tot_len: u32,
    pub xid: u32,
    pub prev: Lsn,
    pub info: u8,
    pub rmid: u8,
    pub crc: u32,
}

impl RecordHeader {
    /// Decodes the header at the start of `b` (`None` if `b` is shorter than 24 bytes).
    pub fn parse(b: &[u8]) -> Option<RecordHeader> {
        let h: &[u8; RECORD_HEADER_LEN] = b.get(..RECORD_HEADER_LEN)?.try_into().ok()?;
        let [t0, t1, t2, t3, x0, x1, x2, x3, p0, p1, p2, p3, p4, p5, p6, p7, info, rmid, _, _, c0, c1, c2, c3] =
            *h;
        Some(RecordHeader {
            tot_len: u32::from_le_bytes([t0, t1, t2, t3]),
            xid: u32::from_le_bytes([x0, x1, x2, x3]),
            prev: Lsn(u64::from_le_bytes([p0, p1, p2, p3, p4, p5, p6, p7])),
            info,
            rmid,
            crc: u32::from_le_bytes([c0, c1, c2, c3]),
        })
    }

    /// An `XLOG_SWITCH` record: the rest of its segment is unused (zero-filled).
    pub fn is_switch(&self) -> bool {
        self.rmid == RM_XLOG_ID && self.info & !XLR_INFO_MASK == XLOG_SWITCH
    }
}

/// Finishes a record's CRC: `body_crc` is the CRC-32C of bytes 24..tot_len (0 for an empty
/// body), `header` the record's first 24 bytes.
pub fn finish_crc(body_crc: u32, header: &[u8; RECORD_HEADER_LEN]) -> u32 {
    let covered = header.get(..CRC_COVERED_HEADER_LEN).unwrap_or(&[]);
    crc32c::crc32c_append(body_crc, covered)
}

/// Checks the CRC of a whole record held in memory (header and body, page headers removed).
pub fn record_crc_ok(record: &[u8]) -> bool {
    let Some(h) = RecordHeader::parse(record) else {
        return false;
    };
    let Some(body) = record.get(RECORD_HEADER_LEN..h.tot_len as usize) else {
        return false;
    };
    let Some(head) = record
        .get(..RECORD_HEADER_LEN)
        .and_then(|b| <&[u8; RECORD_HEADER_LEN]>::try_from(b).ok())
    else {
        return false;
    };
    finish_crc(crc32c::crc32c(body), head) == h.crc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An XLOG_SWITCH record as PostgreSQL writes it: a bare header.
    fn switch_record(prev: u64) -> [u8; 24] {
        let mut h = [0u8; 24];
        h[0..4].copy_from_slice(&24u32.to_le_bytes());
        h[8..16].copy_from_slice(&prev.to_le_bytes());
        h[16] = XLOG_SWITCH;
        let crc = finish_crc(0, &h);
        h[20..24].copy_from_slice(&crc.to_le_bytes());
        h
    }

    #[test]
    fn header_and_crc() {
        let r = switch_record(0x7E0D00);
        let h = RecordHeader::parse(&r).unwrap();
        assert_eq!(h.tot_len, 24);
        assert_eq!(h.prev, Lsn(0x7E0D00));
        assert!(h.is_switch());
        assert!(record_crc_ok(&r));
        let mut bad = r;
        bad[9] ^= 1;
        assert!(!record_crc_ok(&bad));
        assert!(RecordHeader::parse(&r[..23]).is_none());
    }

    #[test]
    fn crc_chaining_is_streamable() {
        // The decoder relies on crc32c_append(crc32c(a), b) == crc32c(a ++ b).
        let a = b"hello, ";
        let b = b"world";
        assert_eq!(
            crc32c::crc32c_append(crc32c::crc32c(a), b),
            crc32c::crc32c(b"hello, world")
        );
        assert_eq!(crc32c::crc32c_append(0, a), crc32c::crc32c(a));
    }

    #[test]
    fn rmids_and_sizes() {
        assert!(rmid_is_valid(21, Some(13)));
        assert!(!rmid_is_valid(22, Some(17)));
        assert!(!rmid_is_valid(130, Some(14)));
        assert!(rmid_is_valid(130, Some(15)));
        assert!(rmid_is_valid(255, None));
        assert_eq!(maxalign(0), 0);
        assert_eq!(maxalign(25), 32);
        assert_eq!(maxalign(32), 32);
        assert_eq!(max_record_len(Some(16)), 1020 << 20);
    }
}
