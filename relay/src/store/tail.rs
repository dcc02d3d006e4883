//! The in-memory tail: the most recent WAL chunks, so walsenders that keep up are served
//! without touching disk. Holds only contiguous bytes of one timeline; the writer resets it when
//! the stream jumps.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::wal::{Lsn, TimeLineId};

/// Bytes of recent WAL kept in memory.
pub const TAIL_CAPACITY: usize = 64 << 20;

#[derive(Default)]
pub struct Tail {
    tli: TimeLineId,
    chunks: VecDeque<(Lsn, Bytes)>,
    bytes: usize,
}

impl Tail {
    fn end(&self) -> Option<Lsn> {
        self.chunks.back().map(|(s, b)| Lsn(s.0 + b.len() as u64))
    }

    /// Appends a chunk written at `start`; a chunk that does not continue the tail replaces it.
    pub fn push(&mut self, tli: TimeLineId, start: Lsn, data: Bytes) {
        if data.is_empty() {
            return;
        }
        if self.tli != tli || self.end() != Some(start) {
            self.chunks.clear();
            self.bytes = 0;
            self.tli = tli;
        }
        self.bytes += data.len();
        self.chunks.push_back((start, data));
        while self.bytes > TAIL_CAPACITY {
            match self.chunks.pop_front() {
                Some((_, b)) => self.bytes -= b.len(),
                None => break,
            }
        }
    }

    pub fn clear(&mut self) {
        self.chunks.clear();
        self.bytes = 0;
    }

    /// Up to `max` bytes of timeline `tli` from `lsn`, if the tail holds `lsn`. Never crosses a
    /// chunk, so callers loop for more.
    pub fn read(&self, tli: TimeLineId, lsn: Lsn, max: usize) -> Option<Bytes> {
        if tli != self.tli {
            return None;
        }
        let idx = self
            .chunks
            .partition_point(|(s, _)| *s <= lsn)
            .checked_sub(1)?;
        let (start, data) = self.chunks.get(idx)?;
        let off = (lsn.0 - start.0) as usize;
        if off >= data.len() {
            return None;
        }
        let end = data.len().min(off + max);
        Some(data.slice(off..end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_within_and_across_chunks() {
        let mut t = Tail::default();
        t.push(1, Lsn(100), Bytes::from_static(b"abcd"));
        t.push(1, Lsn(104), Bytes::from_static(b"efgh"));
        assert_eq!(t.read(1, Lsn(102), 10).unwrap(), Bytes::from_static(b"cd"));
        assert_eq!(t.read(1, Lsn(104), 2).unwrap(), Bytes::from_static(b"ef"));
        assert!(t.read(1, Lsn(108), 2).is_none());
        assert!(t.read(1, Lsn(99), 2).is_none());
        assert!(t.read(2, Lsn(104), 2).is_none());
        // A jump replaces the tail.
        t.push(1, Lsn(200), Bytes::from_static(b"zz"));
        assert!(t.read(1, Lsn(100), 2).is_none());
        assert_eq!(t.read(1, Lsn(201), 2).unwrap(), Bytes::from_static(b"z"));
    }
}
