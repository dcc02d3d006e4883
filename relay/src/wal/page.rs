//! WAL page headers (`XLogPageHeaderData` / `XLogLongPageHeaderData`, xlog_internal.h) and
//! their validation as `XLogReaderValidatePageHeader` does it.
//!
//! Layout, native little-endian (every platform a relay meets): magic u16, info u16, tli u32,
//! pageaddr u64, rem_len u32, 4 bytes of padding (short header: 24 bytes); the long header,
//! on the first page of every segment, adds sysid u64, seg_size u32, xlog_blcksz u32 (40).
//!
//! Invariants kept by [`PageValidator`] along one stream of pages:
//! - every page's magic is a known one and equal to the first page's (one major version);
//! - no unknown flag bits; the long header required at segment offset 0, with system identifier,
//!   segment size and block size matching;
//! - `xlp_pageaddr` is the page's own LSN (recycled segments fail here);
//! - `xlp_tli` never decreases. It is *not* compared with the file's timeline: the first
//!   segment of a new timeline carries the old timeline's TLI on the pages copied from it.

use super::error::WalError;
use super::lsn::{Lsn, TimeLineId, WAL_PAGE_SIZE};
use super::segment::segment_file_name;

pub const SHORT_HEADER_LEN: usize = 24;
pub const LONG_HEADER_LEN: usize = 40;

pub const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
pub const XLP_LONG_HEADER: u16 = 0x0002;
pub const XLP_BKP_REMOVABLE: u16 = 0x0004;
/// Added in 13.5 / 14.1 without a magic change, so it is allowed for every major.
pub const XLP_FIRST_IS_OVERWRITE_CONTRECORD: u16 = 0x0008;
pub const XLP_ALL_FLAGS: u16 = 0x000F;

/// `XLOG_PAGE_MAGIC` of each supported major version.
const MAGICS: [(u16, u32); 6] = [
    (0xD106, 13),
    (0xD10D, 14),
    (0xD110, 15),
    (0xD113, 16),
    (0xD116, 17),
    (0xD118, 18),
];

/// The PostgreSQL major version whose WAL pages carry `magic`.
pub fn major_for_magic(magic: u16) -> Option<u32> {
    MAGICS.iter().find(|(m, _)| *m == magic).map(|(_, v)| *v)
}

/// The page magic of a major version.
pub fn magic_for_major(major: u32) -> Option<u16> {
    MAGICS.iter().find(|(_, v)| *v == major).map(|(m, _)| *m)
}

/// Header length announced by a page's `xlp_info`.
pub fn header_len(info: u16) -> usize {
    if info & XLP_LONG_HEADER != 0 {
        LONG_HEADER_LEN
    } else {
        SHORT_HEADER_LEN
    }
}

/// The extra fields of a segment's first page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LongHeader {
    pub sysid: u64,
    pub seg_size: u32,
    pub xlog_blcksz: u32,
}

/// A decoded page header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageHeader {
    pub magic: u16,
    pub info: u16,
    pub tli: TimeLineId,
    pub pageaddr: Lsn,
    pub rem_len: u32,
    pub long: Option<LongHeader>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

impl PageHeader {
    /// Decodes a header from the start of `b`. `None` when `b` is shorter than the header its
    /// `xlp_info` announces.
    pub fn parse(b: &[u8]) -> Option<PageHeader> {
        let info = u16_at(b, 2)?;
        let long = if info & XLP_LONG_HEADER != 0 {
            Some(LongHeader {
                sysid: u64_at(b, 24)?,
                seg_size: u32_at(b, 32)?,
                xlog_blcksz: u32_at(b, 36)?,
            })
        } else {
            None
        };
        Some(PageHeader {
            magic: u16_at(b, 0)?,
            info,
            tli: u32_at(b, 4)?,
            pageaddr: Lsn(u64_at(b, 8)?),
            rem_len: u32_at(b, 16)?,
            long,
        })
    }

    /// 24 or 40.
    pub fn size(&self) -> usize {
        header_len(self.info)
    }

    pub fn is_contrecord(&self) -> bool {
        self.info & XLP_FIRST_IS_CONTRECORD != 0
    }

    pub fn is_overwrite_contrecord(&self) -> bool {
        self.info & XLP_FIRST_IS_OVERWRITE_CONTRECORD != 0
    }
}

/// Checks page headers along one stream of WAL, carrying what the checks need from page to
/// page (magic, system identifier, latest TLI).
#[derive(Debug, Clone)]
pub struct PageValidator {
    seg_size: u64,
    sysid: Option<u64>,
    magic: Option<u16>,
    latest_tli: Option<TimeLineId>,
    /// Timeline used to name segment files in error messages (PostgreSQL uses the timeline of
    /// the file it is reading).
    file_tli: TimeLineId,
}

impl PageValidator {
    /// `sysid`: the cluster's system identifier when known; when `None`, the first long
    /// header's identifier is adopted and every later one must match it.
    pub fn new(seg_size: u64, sysid: Option<u64>) -> Self {
        PageValidator {
            seg_size,
            sysid,
            magic: None,
            latest_tli: None,
            file_tli: 0,
        }
    }

    pub fn set_file_timeline(&mut self, tli: TimeLineId) {
        self.file_tli = tli;
    }

    /// The major version of the pages seen so far.
    pub fn major(&self) -> Option<u32> {
        self.magic.and_then(major_for_magic)
    }

    pub fn system_identifier(&self) -> Option<u64> {
        self.sysid
    }

    /// `xlp_tli` of the latest page.
    pub fn latest_tli(&self) -> Option<TimeLineId> {
        self.latest_tli
    }

    /// Name of the segment holding `lsn`, for messages.
    pub fn segment_name(&self, lsn: Lsn) -> String {
        let tli = if self.file_tli != 0 {
            self.file_tli
        } else {
            self.latest_tli.unwrap_or(1)
        };
        segment_file_name(tli, lsn.segment(self.seg_size), self.seg_size)
    }

    /// Validates the header `h` of the page that starts at `page`.
    pub fn validate(&mut self, h: &PageHeader, page: Lsn) -> Result<(), WalError> {
        let offset = u32::try_from(page.segment_offset(self.seg_size)).unwrap_or(u32::MAX);
        let known = major_for_magic(h.magic).is_some();
        if !known || self.magic.is_some_and(|m| m != h.magic) {
            return Err(WalError::InvalidMagic {
                magic: h.magic,
                segment: self.segment_name(page),
                lsn: page,
                offset,
            });
        }
        if h.info & !XLP_ALL_FLAGS != 0 {
            return Err(WalError::InvalidInfoBits {
                info: h.info,
                segment: self.segment_name(page),
                lsn: page,
                offset,
            });
        }
        match h.long {
            Some(long) => {
                if let Some(expected) = self.sysid {
                    if long.sysid != expected {
                        return Err(WalError::SystemIdMismatch {
                            got: long.sysid,
                            expected,
                            segment: self.segment_name(page),
                            lsn: page,
                        });
                    }
                }
                if u64::from(long.seg_size) != self.seg_size {
                    return Err(WalError::SegmentSizeMismatch {
                        got: long.seg_size,
                        expected: self.seg_size,
                        segment: self.segment_name(page),
                        lsn: page,
                    });
                }
                if u64::from(long.xlog_blcksz) != WAL_PAGE_SIZE {
                    return Err(WalError::BlockSizeMismatch {
                        got: long.xlog_blcksz,
                        segment: self.segment_name(page),
                        lsn: page,
                    });
                }
            }
            // The first page of a segment must carry the long header (PostgreSQL reports this
            // as invalid info bits too).
            None if offset == 0 => {
                return Err(WalError::InvalidInfoBits {
                    info: h.info,
                    segment: self.segment_name(page),
                    lsn: page,
                    offset,
                });
            }
            None => {}
        }
        if h.pageaddr != page {
            return Err(WalError::UnexpectedPageAddr {
                pageaddr: h.pageaddr,
                segment: self.segment_name(page),
                lsn: page,
                offset,
            });
        }
        if let Some(after) = self.latest_tli {
            if h.tli < after {
                return Err(WalError::OutOfSequenceTimeline {
                    tli: h.tli,
                    after,
                    segment: self.segment_name(page),
                    lsn: page,
                    offset,
                });
            }
        }
        self.magic = Some(h.magic);
        if self.sysid.is_none() {
            self.sysid = h.long.map(|l| l.sysid);
        }
        self.latest_tli = Some(h.tli);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 1 << 20;

    fn header(info: u16, tli: u32, addr: u64, rem: u32, long: Option<(u64, u32, u32)>) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&0xD110u16.to_le_bytes());
        b.extend_from_slice(&info.to_le_bytes());
        b.extend_from_slice(&tli.to_le_bytes());
        b.extend_from_slice(&addr.to_le_bytes());
        b.extend_from_slice(&rem.to_le_bytes());
        b.extend_from_slice(&[0; 4]);
        if let Some((sysid, seg, blck)) = long {
            b.extend_from_slice(&sysid.to_le_bytes());
            b.extend_from_slice(&seg.to_le_bytes());
            b.extend_from_slice(&blck.to_le_bytes());
        }
        b
    }

    #[test]
    fn magic_table() {
        assert_eq!(major_for_magic(0xD110), Some(15));
        assert_eq!(major_for_magic(0xD106), Some(13));
        assert_eq!(major_for_magic(0xD118), Some(18));
        assert_eq!(major_for_magic(0xD111), None);
        assert_eq!(magic_for_major(16), Some(0xD113));
    }

    #[test]
    fn parse_and_validate() {
        let long = header(XLP_LONG_HEADER, 1, SEG, 0, Some((42, SEG as u32, 8192)));
        let h = PageHeader::parse(&long).unwrap();
        assert_eq!(h.size(), 40);
        assert!(PageHeader::parse(&long[..39]).is_none());
        let mut v = PageValidator::new(SEG, None);
        v.validate(&h, Lsn(SEG)).unwrap();
        assert_eq!(v.system_identifier(), Some(42));
        assert_eq!(v.major(), Some(15));

        let short = header(XLP_FIRST_IS_CONTRECORD, 2, SEG + 8192, 100, None);
        let h = PageHeader::parse(&short).unwrap();
        assert!(h.is_contrecord());
        v.validate(&h, Lsn(SEG + 8192)).unwrap();

        // TLI going backwards.
        let h = PageHeader::parse(&header(0, 1, SEG + 16384, 0, None)).unwrap();
        let e = v.validate(&h, Lsn(SEG + 16384)).unwrap_err();
        assert!(
            matches!(
                e,
                WalError::OutOfSequenceTimeline {
                    tli: 1,
                    after: 2,
                    ..
                }
            ),
            "{e}"
        );

        // Wrong page address.
        let h = PageHeader::parse(&header(0, 2, 0, 0, None)).unwrap();
        let e = v.validate(&h, Lsn(SEG + 16384)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unexpected pageaddr 0/0 in WAL segment 000000020000000000000001, LSN 0/104000, offset 16384"
        );

        // Short header at a segment start; other system.
        let h = PageHeader::parse(&header(0, 2, 2 * SEG, 0, None)).unwrap();
        assert!(matches!(
            v.validate(&h, Lsn(2 * SEG)),
            Err(WalError::InvalidInfoBits { .. })
        ));
        let h = PageHeader::parse(&header(
            XLP_LONG_HEADER,
            2,
            2 * SEG,
            0,
            Some((43, SEG as u32, 8192)),
        ))
        .unwrap();
        assert!(matches!(
            v.validate(&h, Lsn(2 * SEG)),
            Err(WalError::SystemIdMismatch { .. })
        ));

        // Unknown flag bits; unknown magic.
        let h = PageHeader::parse(&header(0x10, 2, SEG + 8192, 0, None)).unwrap();
        assert!(matches!(
            v.validate(&h, Lsn(SEG + 8192)),
            Err(WalError::InvalidInfoBits { info: 0x10, .. })
        ));
        let mut b = header(0, 2, SEG + 8192, 0, None);
        b[0] = 0;
        b[1] = 0;
        let h = PageHeader::parse(&b).unwrap();
        assert_eq!(
            v.validate(&h, Lsn(SEG + 8192)).unwrap_err().to_string(),
            "invalid magic number 0000 in WAL segment 000000020000000000000001, LSN 0/102000, offset 8192"
        );
    }
}
