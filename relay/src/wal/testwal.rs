//! Test support: the real PostgreSQL 15 WAL fixtures (`relay/testdata/wal/pg15-1mb`, made by
//! `scripts/make-wal-fixtures`, with pg_waldump's figures) and a small synthetic WAL writer
//! for shapes PostgreSQL only produces after a crash (overwritten contrecords).

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::OnceLock;

use super::lsn::Lsn;
use super::page::{XLP_FIRST_IS_CONTRECORD, XLP_LONG_HEADER};
use super::record::finish_crc;

pub const SEG: u64 = 1 << 20;

/// One record as pg_waldump listed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpRecord {
    pub lsn: Lsn,
    pub prev: Lsn,
    pub tot_len: u32,
    pub rmgr: String,
}

pub struct Fixture {
    /// (file name, segment number, bytes), in order.
    pub segments: Vec<(String, u64, Vec<u8>)>,
    pub expected: HashMap<String, String>,
    pub records: Vec<DumpRecord>,
}

impl Fixture {
    pub fn lsn(&self, key: &str) -> Lsn {
        self.expected[key].parse().unwrap()
    }

    pub fn num(&self, key: &str) -> u64 {
        self.expected[key].parse().unwrap()
    }

    pub fn first_segno(&self) -> u64 {
        self.segments[0].1
    }

    /// The fixture's `XLOG_SWITCH` record (the only 24-byte XLOG record), checked to be in
    /// the first segment, as the tests of the zero tail after it assume.
    pub fn switch_record(&self) -> &DumpRecord {
        let switch = self
            .records
            .iter()
            .find(|r| r.tot_len == 24 && r.rmgr == "XLOG")
            .unwrap();
        assert_eq!(
            switch.lsn.segment(SEG),
            self.first_segno(),
            "fixture: the switch is in the first segment"
        );
        switch
    }

    /// Bytes of all segments from `segno` on, concatenated.
    pub fn bytes_from(&self, segno: u64) -> Vec<u8> {
        let mut v = Vec::new();
        for (_, s, b) in &self.segments {
            if *s >= segno {
                v.extend_from_slice(b);
            }
        }
        v
    }

    pub fn segment(&self, segno: u64) -> &[u8] {
        &self
            .segments
            .iter()
            .find(|(_, s, _)| *s == segno)
            .unwrap()
            .2
    }
}

fn gunzip(path: &std::path::Path) -> Vec<u8> {
    let f = std::fs::File::open(path).unwrap();
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(f)
        .read_to_end(&mut out)
        .unwrap();
    out
}

pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/wal/pg15-1mb");
        let text = std::fs::read_to_string(dir.join("expected.txt")).unwrap();
        let expected: HashMap<String, String> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("000000") && n.ends_with(".gz"))
            .collect();
        names.sort();
        let segments = names
            .iter()
            .map(|n| {
                let name = n.trim_end_matches(".gz").to_string();
                let segno = u64::from_str_radix(&name[16..24], 16).unwrap()
                    + (u64::from_str_radix(&name[8..16], 16).unwrap() << 12);
                let bytes = gunzip(&dir.join(n));
                assert_eq!(bytes.len() as u64, SEG, "{n}");
                (name, segno, bytes)
            })
            .collect();
        let records = String::from_utf8(gunzip(&dir.join("records.txt.gz")))
            .unwrap()
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                DumpRecord {
                    lsn: f[0].parse().unwrap(),
                    prev: f[1].parse().unwrap(),
                    tot_len: f[2].parse().unwrap(),
                    rmgr: f[3].to_string(),
                }
            })
            .collect();
        Fixture {
            segments,
            expected,
            records,
        }
    })
}

/// A minimal XLogInsert: lays records out in pages and segments as PostgreSQL does, with
/// correct page headers, continuation flags and CRCs.
pub struct SynthWal {
    pub seg_size: u64,
    pub sysid: u64,
    pub tli: u32,
    pub start: u64,
    pub buf: Vec<u8>,
    pub prev: u64,
}

impl SynthWal {
    /// WAL starting at the segment `segno`.
    pub fn new(segno: u64) -> Self {
        SynthWal {
            seg_size: SEG,
            sysid: 7_000_000_000_000_000_001,
            tli: 1,
            start: segno * SEG,
            buf: Vec::new(),
            prev: 0,
        }
    }

    pub fn pos(&self) -> u64 {
        self.start + self.buf.len() as u64
    }

    fn page_header(&mut self, info: u16, rem_len: u32) {
        let pos = self.pos();
        assert_eq!(pos % 8192, 0);
        let long = pos.is_multiple_of(self.seg_size);
        let info = info | if long { XLP_LONG_HEADER } else { 0 };
        self.buf.extend_from_slice(&0xD110u16.to_le_bytes());
        self.buf.extend_from_slice(&info.to_le_bytes());
        self.buf.extend_from_slice(&self.tli.to_le_bytes());
        self.buf.extend_from_slice(&pos.to_le_bytes());
        self.buf.extend_from_slice(&rem_len.to_le_bytes());
        self.buf.extend_from_slice(&[0; 4]);
        if long {
            self.buf.extend_from_slice(&self.sysid.to_le_bytes());
            self.buf
                .extend_from_slice(&(self.seg_size as u32).to_le_bytes());
            self.buf.extend_from_slice(&8192u32.to_le_bytes());
        }
    }

    /// Writes raw record bytes from the current (aligned) position, inserting page headers
    /// with `XLP_FIRST_IS_CONTRECORD` where the record crosses pages. `extra_flags` go on
    /// every continuation page header.
    pub fn write_bytes(&mut self, rec: &[u8], extra_flags: u16) {
        let mut off = 0;
        if self.pos().is_multiple_of(8192) {
            self.page_header(0, 0);
        }
        while off < rec.len() {
            if self.pos().is_multiple_of(8192) {
                self.page_header(
                    XLP_FIRST_IS_CONTRECORD | extra_flags,
                    (rec.len() - off) as u32,
                );
            }
            let room = (8192 - self.pos() % 8192) as usize;
            let n = room.min(rec.len() - off);
            self.buf.extend_from_slice(&rec[off..off + n]);
            off += n;
        }
    }

    pub fn align(&mut self) {
        while !self.pos().is_multiple_of(8) {
            self.buf.push(0);
        }
    }

    /// A record of `tot_len` bytes (rmgr `rmid`, info `info`), its body a byte pattern.
    pub fn record_bytes(&self, rmid: u8, info: u8, tot_len: u32) -> Vec<u8> {
        let mut r = vec![0u8; tot_len as usize];
        r[0..4].copy_from_slice(&tot_len.to_le_bytes());
        r[4..8].copy_from_slice(&740u32.to_le_bytes());
        r[8..16].copy_from_slice(&self.prev.to_le_bytes());
        r[16] = info;
        r[17] = rmid;
        for (i, b) in r.iter_mut().enumerate().skip(24) {
            *b = (i * 7 % 251) as u8 + 1;
        }
        let head: [u8; 24] = r[0..24].try_into().unwrap();
        let crc = finish_crc(crc32c::crc32c(&r[24..]), &head);
        r[20..24].copy_from_slice(&crc.to_le_bytes());
        r
    }

    /// Appends a record; returns its LSN.
    pub fn record(&mut self, rmid: u8, info: u8, tot_len: u32) -> u64 {
        if self.pos().is_multiple_of(8192) {
            self.page_header(0, 0);
        }
        let lsn = self.pos();
        let r = self.record_bytes(rmid, info, tot_len);
        self.write_bytes(&r, 0);
        self.align();
        self.prev = lsn;
        lsn
    }

    /// An XLOG_SWITCH record and the zero rest of its segment.
    pub fn switch(&mut self) -> u64 {
        let lsn = self.record(0, 0x40, 24);
        while !self.pos().is_multiple_of(self.seg_size) {
            self.buf.push(0);
        }
        lsn
    }

    /// Zero-fills to the end of the current segment (a preallocated file).
    pub fn pad_segment(&mut self) {
        while !self.pos().is_multiple_of(self.seg_size) {
            self.buf.push(0);
        }
    }
}
