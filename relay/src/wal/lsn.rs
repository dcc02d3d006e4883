//! Log sequence numbers and timeline IDs, printed and parsed as PostgreSQL does (`X/X`).
//!
//! PostgreSQL 13-18 print LSNs as `%X/%X` (upper-case hex, no padding); PostgreSQL 19 is said to
//! pad the low half to 8 digits, so parsing accepts both.

use std::fmt;
use std::str::FromStr;

/// A WAL position: a byte offset in the cluster's WAL address space.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

/// A timeline ID (`TimeLineID` in PostgreSQL).
pub type TimeLineId = u32;

/// XLOG_BLCKSZ: the WAL page size. A compile-time constant in PostgreSQL; 8192 in every build a
/// relay will meet.
pub const WAL_PAGE_SIZE: u64 = 8192;

impl Lsn {
    pub const INVALID: Lsn = Lsn(0);

    pub fn is_valid(self) -> bool {
        self.0 != 0
    }

    /// Segment number holding this LSN.
    pub fn segment(self, seg_size: u64) -> u64 {
        self.0 / seg_size
    }

    /// Offset of this LSN inside its segment.
    pub fn segment_offset(self, seg_size: u64) -> u64 {
        self.0 % seg_size
    }

    /// The start of the segment holding this LSN.
    pub fn segment_start(self, seg_size: u64) -> Lsn {
        Lsn(self.0 - self.0 % seg_size)
    }

    /// The start of the page holding this LSN.
    pub fn page_start(self) -> Lsn {
        Lsn(self.0 - self.0 % WAL_PAGE_SIZE)
    }

    pub fn checked_add(self, n: u64) -> Option<Lsn> {
        self.0.checked_add(n).map(Lsn)
    }

    /// Bytes from `other` up to `self`, zero when `other` is ahead.
    pub fn saturating_sub(self, other: Lsn) -> u64 {
        self.0.saturating_sub(other.0)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// Why a string is not an LSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN \"{0}\"")]
pub struct ParseLsnError(pub String);

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError(s.to_string());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let valid =
            |p: &str| !p.is_empty() && p.len() <= 8 && p.bytes().all(|b| b.is_ascii_hexdigit());
        if !valid(hi) || !valid(lo) {
            return Err(err());
        }
        let hi = u64::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u64::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn(hi << 32 | lo))
    }
}

impl serde::Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_matches_postgres() {
        assert_eq!(Lsn(0x304AC00).to_string(), "0/304AC00");
        assert_eq!(Lsn(0x1_0000_0000).to_string(), "1/0");
        assert_eq!(Lsn(0).to_string(), "0/0");
    }

    #[test]
    fn parse_both_forms() {
        assert_eq!("0/304AC00".parse::<Lsn>().unwrap(), Lsn(0x304AC00));
        assert_eq!("0/0304AC00".parse::<Lsn>().unwrap(), Lsn(0x304AC00));
        assert_eq!("1A/ff".parse::<Lsn>().unwrap(), Lsn(0x1A_0000_00FF));
        for bad in ["", "/", "0/", "x/1", "1/2/3", "123456789/0", "0/+1"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad}");
        }
    }

    #[test]
    fn segment_math() {
        let seg = 16 << 20;
        let l = Lsn(0x304AC00);
        assert_eq!(l.segment(seg), 3);
        assert_eq!(l.segment_start(seg), Lsn(0x3000000));
        assert_eq!(l.segment_offset(seg), 0x4AC00);
        assert_eq!(l.page_start(), Lsn(0x304A000));
    }

    proptest::proptest! {
        /// Every LSN prints as `X/X` and parses back; the zero-padded, lower-case spelling
        /// (what `pg_lsn` also accepts) parses to the same value.
        #[test]
        fn text_round_trip(v: u64) {
            let l = Lsn(v);
            proptest::prop_assert_eq!(l.to_string().parse::<Lsn>(), Ok(l));
            let padded = format!("{:08x}/{:08x}", v >> 32, v & 0xFFFF_FFFF);
            proptest::prop_assert_eq!(padded.parse::<Lsn>(), Ok(l));
        }
    }
}
