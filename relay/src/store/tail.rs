//! The in-memory tail: the most recent WAL chunks, so walsenders that keep up are served
//! without touching disk. Holds only contiguous bytes of one timeline; the writer resets it when
//! the stream jumps.
//!
//! Its size is a setting (`--wal-tail-size`, [`DEFAULT_TAIL_CAPACITY`] by default) that a
//! reload may change ([`Tail::set_capacity`]). Invariant: it never holds more than its capacity
//! in chunk bytes (a chunk larger than the capacity is not kept at all); a capacity of 0 keeps
//! nothing, and every read goes to the segment files.
//!
//! The chunks are the upstream's `w` payloads as received (slices of the upstream
//! connection's read buffer), so the memory behind them is their bytes plus at most the
//! unused part of the read-buffer allocations they share.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::wal::{Lsn, TimeLineId};

/// Bytes of recent WAL kept in memory unless `--wal-tail-size` says otherwise.
pub const DEFAULT_TAIL_CAPACITY: usize = 64 << 20;

pub struct Tail {
    tli: TimeLineId,
    chunks: VecDeque<(Lsn, Bytes)>,
    bytes: usize,
    /// Most chunk bytes held.
    capacity: usize,
}

impl Default for Tail {
    fn default() -> Self {
        Tail::with_capacity(DEFAULT_TAIL_CAPACITY)
    }
}

impl Tail {
    /// An empty tail that holds at most `capacity` bytes (0: none).
    pub fn with_capacity(capacity: usize) -> Self {
        Tail {
            tli: 0,
            chunks: VecDeque::new(),
            bytes: 0,
            capacity,
        }
    }

    /// The most bytes held.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The bytes of WAL held now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// A new capacity: a smaller one drops the oldest chunks at once.
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity;
        self.trim();
        if self.chunks.is_empty() {
            // Give the queue's own allocation back too (a tail turned off holds nothing).
            self.chunks = VecDeque::new();
        }
    }

    fn trim(&mut self) {
        while self.bytes > self.capacity {
            match self.chunks.pop_front() {
                Some((_, b)) => self.bytes -= b.len(),
                None => break,
            }
        }
    }

    fn end(&self) -> Option<Lsn> {
        self.chunks.back().map(|(s, b)| Lsn(s.0 + b.len() as u64))
    }

    /// Appends a chunk written at `start`; a chunk that does not continue the tail replaces it.
    pub fn push(&mut self, tli: TimeLineId, start: Lsn, data: Bytes) {
        if data.is_empty() || self.capacity == 0 {
            return;
        }
        if self.tli != tli || self.end() != Some(start) {
            self.chunks.clear();
            self.bytes = 0;
            self.tli = tli;
        }
        self.bytes += data.len();
        self.chunks.push_back((start, data));
        self.trim();
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

    #[test]
    fn holds_at_most_its_capacity_and_follows_a_new_one() {
        let mut t = Tail::with_capacity(10);
        t.push(1, Lsn(0), Bytes::from_static(b"0123"));
        t.push(1, Lsn(4), Bytes::from_static(b"4567"));
        assert_eq!(t.bytes(), 8);
        // A third chunk would make 12: the oldest goes.
        t.push(1, Lsn(8), Bytes::from_static(b"89ab"));
        assert_eq!(t.bytes(), 8);
        assert!(t.read(1, Lsn(0), 4).is_none());
        assert_eq!(t.read(1, Lsn(4), 8).unwrap(), Bytes::from_static(b"4567"));
        assert_eq!(t.read(1, Lsn(8), 8).unwrap(), Bytes::from_static(b"89ab"));
        // A chunk larger than the whole capacity is not kept, and the tail stays within it.
        t.push(1, Lsn(12), Bytes::from(vec![7u8; 11]));
        assert_eq!(t.bytes(), 0);
        assert!(t.read(1, Lsn(12), 1).is_none());
        // Lowered: the oldest chunks go at once.
        t.push(1, Lsn(23), Bytes::from_static(b"cdef"));
        t.push(1, Lsn(27), Bytes::from_static(b"ghij"));
        t.set_capacity(5);
        assert_eq!((t.capacity(), t.bytes()), (5, 4));
        assert!(t.read(1, Lsn(23), 4).is_none());
        assert_eq!(t.read(1, Lsn(27), 4).unwrap(), Bytes::from_static(b"ghij"));
        // 0: nothing is held, nothing is kept.
        t.set_capacity(0);
        assert_eq!(t.bytes(), 0);
        t.push(1, Lsn(31), Bytes::from_static(b"k"));
        assert_eq!(t.bytes(), 0);
        assert!(t.read(1, Lsn(31), 1).is_none());
        // Raised again: it fills from the next chunk on.
        t.set_capacity(DEFAULT_TAIL_CAPACITY);
        t.push(1, Lsn(32), Bytes::from_static(b"lm"));
        assert_eq!(t.read(1, Lsn(33), 1).unwrap(), Bytes::from_static(b"m"));
        assert_eq!(Tail::default().capacity(), 64 << 20);
    }
}
