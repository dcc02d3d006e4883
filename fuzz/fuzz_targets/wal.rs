#![no_main]
//! The WAL validator used at ingest (a `WalDecoder` fed the upstream's XLogData chunks) and
//! at verify/recovery (`find_end_of_wal` over a segment file), with a 1 MiB segment size so
//! that small inputs cross pages and segment ends.
//!
//! Input: byte 0 holds flags, byte 1 the start page, byte 2 the chunk size, bytes 3..6 a
//! mutation; the rest is either raw WAL bytes or (synth flag) record specs from which the
//! target lays out correct WAL (page headers, continuation flags, CRCs), so that the
//! fuzzer reaches the record-level state machine without having to compute CRC-32C.
//!
//! Checked on every input: feeding in chunks gives exactly what one feed gives; the valid
//! end never moves backwards nor past the bytes fed; a failed decoder repeats its error;
//! `find_end_of_wal` agrees with a decoder using the same zero policy. On synthesized WAL:
//! unmutated, every record is reported at its LSN and nothing fails; mutated at byte `m`,
//! every record ending before `m` is still reported and a record whose CRC-covered bytes
//! (other than its length) contain `m` is not.
use libfuzzer_sys::fuzz_target;
use walrelay::wal::record::finish_crc;
use walrelay::wal::{find_end_of_wal, DecoderStatus, Lsn, WalDecoder, ZeroPolicy};

const SEG: u64 = 1 << 20;
const PAGE: u64 = 8192;
/// The fixture segment the seed corpus comes from (relay/testdata/wal/pg15-1mb), so that its
/// page addresses match.
const SEGNO: u64 = 8;
const SYSID: u64 = 7_000_000_000_000_000_001;
const MAGICS: [u16; 6] = [0xD106, 0xD10D, 0xD110, 0xD113, 0xD116, 0xD118];
/// Bounds the synthesized WAL, so that one input stays fast.
const SYNTH_LIMIT: usize = 3 << 18;

struct Synth {
    start: u64,
    magic: u16,
    buf: Vec<u8>,
    prev: u64,
    /// Per record: its LSN, its end (unaligned), and where each of its pieces went in
    /// `buf` (buffer offset, offset in the record, length).
    records: Vec<(u64, u64, Vec<(usize, usize, usize)>)>,
}

impl Synth {
    fn pos(&self) -> u64 {
        self.start + self.buf.len() as u64
    }

    fn page_header(&mut self, info: u16, rem_len: u32) {
        let pos = self.pos();
        let long = pos % SEG == 0;
        let info = info | if long { 0x0002 } else { 0 };
        self.buf.extend_from_slice(&self.magic.to_le_bytes());
        self.buf.extend_from_slice(&info.to_le_bytes());
        self.buf.extend_from_slice(&1u32.to_le_bytes());
        self.buf.extend_from_slice(&pos.to_le_bytes());
        self.buf.extend_from_slice(&rem_len.to_le_bytes());
        self.buf.extend_from_slice(&[0; 4]);
        if long {
            self.buf.extend_from_slice(&SYSID.to_le_bytes());
            self.buf.extend_from_slice(&(SEG as u32).to_le_bytes());
            self.buf.extend_from_slice(&(PAGE as u32).to_le_bytes());
        }
    }

    fn record(&mut self, rmid: u8, info: u8, tot_len: u32, fill: u8) {
        if self.pos() % PAGE == 0 {
            self.page_header(0, 0);
        }
        let lsn = self.pos();
        let mut r = vec![fill; tot_len as usize];
        r[0..4].copy_from_slice(&tot_len.to_le_bytes());
        r[4..8].copy_from_slice(&740u32.to_le_bytes());
        r[8..16].copy_from_slice(&self.prev.to_le_bytes());
        r[16] = info;
        r[17] = rmid;
        r[18] = 0;
        r[19] = 0;
        let head: [u8; 24] = r[0..24].try_into().unwrap();
        let crc = finish_crc(crc32c::crc32c(&r[24..]), &head);
        r[20..24].copy_from_slice(&crc.to_le_bytes());
        let mut pieces = Vec::new();
        let mut off = 0;
        while off < r.len() {
            if self.pos() % PAGE == 0 {
                self.page_header(0x0001, (r.len() - off) as u32);
            }
            let room = (PAGE - self.pos() % PAGE) as usize;
            let n = room.min(r.len() - off);
            pieces.push((self.buf.len(), off, n));
            self.buf.extend_from_slice(&r[off..off + n]);
            off += n;
        }
        self.records.push((lsn, self.pos(), pieces));
        while self.pos() % 8 != 0 {
            self.buf.push(0);
        }
        self.prev = lsn;
        if rmid == 0 && info & 0xF0 == 0x40 {
            // XLOG_SWITCH: the rest of the segment is zeros, without page headers.
            let end = (self.pos().div_ceil(SEG) * SEG - self.start) as usize;
            self.buf.resize(end, 0);
        }
    }
}

#[derive(Debug, PartialEq)]
struct Outcome {
    status: DecoderStatus,
    valid_end: Lsn,
    position: Lsn,
    records: u64,
    last_record: Option<Lsn>,
    stopped_at: Option<Lsn>,
    nonzero_after_end: Option<Lsn>,
    reported: Vec<Lsn>,
}

fn run(
    data: &[u8],
    start: Lsn,
    sysid: Option<u64>,
    prev: Option<Lsn>,
    zeros: ZeroPolicy,
    chunk: usize,
) -> Outcome {
    let mut d = WalDecoder::new(start, SEG, sysid, prev);
    d.set_zero_policy(zeros);
    let mut reported = Vec::new();
    let mut last_end = d.valid_end();
    let mut fed = 0u64;
    for piece in data.chunks(chunk.max(1)) {
        let r = d.feed_with(piece, |rec| {
            assert!(rec.end > rec.lsn);
            reported.push(rec.lsn);
        });
        fed += piece.len() as u64;
        assert!(d.valid_end() >= last_end, "valid end moved back");
        assert!(
            d.valid_end().0 <= start.0 + fed,
            "valid end past the bytes fed"
        );
        last_end = d.valid_end();
        if let Err(e) = r {
            assert_eq!(d.error(), Some(&e));
            assert_eq!(
                d.feed(b"\x01"),
                Err(e),
                "a failed decoder changed its error"
            );
            break;
        }
    }
    assert_eq!(reported.len() as u64, d.records());
    assert_eq!(reported.last().copied(), d.last_record());
    Outcome {
        status: d.status().clone(),
        valid_end: d.valid_end(),
        position: d.position(),
        records: d.records(),
        last_record: d.last_record(),
        stopped_at: d.stopped_at(),
        nonzero_after_end: d.nonzero_after_end(),
        reported,
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&[flags, page, chunk, mx, m0, m1], rest)) = input.split_first_chunk::<6>() else {
        return;
    };
    let synth = flags & 1 != 0;
    let zeros = if flags & 2 != 0 {
        ZeroPolicy::EndOfWal
    } else {
        ZeroPolicy::Corrupt
    };
    let sysid = (flags & 4 != 0).then_some(SYSID);
    let start = Lsn(SEGNO * SEG + u64::from(page % 128) * PAGE);
    let chunk = 1 + usize::from(chunk) * 67;

    let (mut data, synth) = if synth {
        let mut s = Synth {
            start: start.0,
            magic: MAGICS[usize::from(flags >> 4) % MAGICS.len()],
            buf: Vec::new(),
            prev: start.0.saturating_sub(64),
            records: Vec::new(),
        };
        for spec in rest.chunks_exact(4) {
            if s.buf.len() > SYNTH_LIMIT {
                break;
            }
            let len = u16::from_le_bytes([spec[2], spec[3]]);
            s.record(spec[0] % 22, spec[1], 24 + u32::from(len % 20000), spec[1]);
        }
        (s.buf.clone(), Some(s))
    } else {
        (rest.to_vec(), None)
    };
    // The synthesized stream starts right after a record at `start - 64`, so its first
    // `xl_prev` can be checked exactly when the flag asks for it.
    let prev = match (&synth, flags & 8 != 0) {
        (Some(_), true) => Some(Lsn(start.0.saturating_sub(64))),
        _ => None,
    };
    let mutated = (mx != 0 && !data.is_empty()).then(|| {
        let m = usize::from(u16::from_le_bytes([m0, m1])) * 13 % data.len();
        data[m] ^= mx;
        m
    });

    // Byte-sized pieces over an XLOG_SWITCH's megabyte of zeros would make one input take
    // seconds; at most 64 pieces per input keeps the boundaries anywhere and inputs fast.
    let chunk = chunk.max(data.len() / 64);
    let whole = run(&data, start, sysid, prev, zeros, data.len());
    let chunked = run(&data, start, sysid, prev, zeros, chunk);
    assert_eq!(whole, chunked, "chunking changed the outcome");

    // The verify path: a scan of the bytes as a file.
    let scan = find_end_of_wal(&data, start, SEG, sysid, prev);
    let as_file = if zeros == ZeroPolicy::EndOfWal {
        whole
    } else {
        run(&data, start, sysid, prev, ZeroPolicy::EndOfWal, data.len())
    };
    assert_eq!(scan.valid_end, as_file.valid_end);

    let Some(s) = synth else {
        return;
    };
    let expected: Vec<Lsn> = s.records.iter().map(|r| Lsn(r.0)).collect();
    let got = &chunked.reported;
    match mutated {
        None => {
            assert_eq!(got, &expected);
            assert!(
                !matches!(chunked.status, DecoderStatus::Failed(_)),
                "{:?}",
                chunked.status
            );
            if !s.buf.is_empty() {
                assert_eq!(chunked.valid_end.0, s.start + s.buf.len() as u64);
            }
        }
        Some(m) => {
            let m_lsn = s.start + m as u64;
            let before = s.records.iter().take_while(|r| r.1 <= m_lsn).count();
            assert!(got.len() >= before, "a record before the damage was lost");
            assert_eq!(&got[..before], &expected[..before]);
            let hit = s.records.iter().position(|r| {
                r.2.iter()
                    .any(|&(b, o, n)| (b..b + n).contains(&m) && o + (m - b) >= 4)
            });
            if let Some(i) = hit {
                assert!(got.len() <= i, "a damaged record was accepted");
            }
        }
    }
});
