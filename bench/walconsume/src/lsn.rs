//! WAL positions as PostgreSQL prints them (`X/X`, hexadecimal).

use std::fmt;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lsn(pub u64);

impl Lsn {
    pub fn parse(s: &str) -> Option<Lsn> {
        let (hi, lo) = s.split_once('/')?;
        let hi = u32::from_str_radix(hi, 16).ok()?;
        let lo = u32::from_str_radix(lo, 16).ok()?;
        Some(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::Lsn;

    #[test]
    fn round_trip() {
        for s in ["0/0", "0/304AC00", "1/0", "FFFFFFFF/FFFFFFFF"] {
            assert_eq!(Lsn::parse(s).map(|l| l.to_string()).as_deref(), Some(s));
        }
        assert_eq!(Lsn::parse("0/0000ABCD"), Some(Lsn(0xABCD)));
        for bad in ["", "0", "x/0", "0/", "1/2/3", "100000000/0"] {
            assert_eq!(Lsn::parse(bad), None, "{bad}");
        }
    }
}
