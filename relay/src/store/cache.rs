//! The shared, validated segment cache: stored WAL read from the segment files once, validated
//! once, and handed to every walsender that reads it as refcounted [`Bytes`] slices (no copy).
//!
//! Owns: the chunks of segment files held in memory, and per segment the one validation state
//! (a [`WalDecoder`] fed from the segment's first byte, and the file it reads).
//!
//! How a read goes ([`Store::read_wal`]):
//! - a hit (the chunk holding the position is in memory and that position validated) is served
//!   on the caller's task, under one short lock, with no system call and no copy;
//! - a miss waits for the segment's load lock (one loader per segment at a time: the others
//!   wait for its result instead of loading too), looks again, and only then goes to a blocking
//!   thread, which reads whole chunks ([`CHUNK`] bytes, one `pread` each into memory that is
//!   not zeroed first), feeds the bytes not yet validated to the segment's decoder and puts the
//!   chunks in the cache. A segment that is still growing is extended by reading and validating
//!   only its new part.
//!
//! Validation has reader.rs's former semantics, now once per segment for all senders: only what
//! validated is served (a record running on into the next segment is served once the whole
//! segment was fed without a fault: its CRC was checked when it arrived from upstream); a
//! position at or past the damage is refused with [`ReadError::Damaged`].
//!
//! Invariants:
//! - Memory is bounded: at most [`BUDGET`] bytes of chunks (least recently used go first) and
//!   [`MAX_SEGMENTS`] validation states. An evicted chunk lives on only while a sender still
//!   holds a slice of it (a slice pins its own chunk, at most [`CHUNK`] bytes, nothing more).
//! - Nothing at or past the end a reader may read (`end`, never past the durable end) is read
//!   into a chunk, so a cached byte is always below the durable end when it was read; bytes
//!   below the durable end change in place or go away only through the store's own file work
//!   (diverged WAL moved aside and zeroed, retention's removals, backfill's renames, recovery at
//!   open), which calls [`Store::invalidate_segments`] for the segments it touches, before and
//!   after: their chunks and validation state are dropped, and a load that was under way for
//!   one of them (its state marked dead) puts nothing in the cache and starts again on the file
//!   as it is now. So no byte is served that the file no longer holds as valid.
//! - Files are opened by the `.partial` rule ([`fs::open_for_read`]); the cache never writes.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::fs::{self, SegmentId};
use super::reader::ReadError;
use super::Store;
use crate::wal::decoder::WalDecoder;
use crate::wal::segment::DEFAULT_SEG_SIZE;
use crate::wal::{Lsn, TimeLineId};

/// Bytes read from a segment file at a time (and the most a sender's slice pins).
pub const CHUNK: u64 = 2 << 20;
/// Most bytes of chunks held (four default segments).
pub const BUDGET: u64 = 4 * DEFAULT_SEG_SIZE;
/// Most segments whose validation state is kept (a decoder is a few hundred bytes).
pub const MAX_SEGMENTS: usize = 64;

type SegKey = (TimeLineId, u64);

/// One segment's validation: the decoder fed from the segment's first byte, and the file.
struct Load {
    file: Option<File>,
    decoder: WalDecoder,
}

/// A segment's entry: its load lock and whether it was invalidated (or evicted) since.
struct SegState {
    /// Set under the cache lock when the entry leaves the map; a loader holding it then
    /// discards what it read and starts again.
    dead: AtomicBool,
    load: Arc<tokio::sync::Mutex<Load>>,
}

struct SegEntry {
    state: Arc<SegState>,
    /// How far this segment may be served (validated, by the rule in the module docs).
    valid: Lsn,
    used: u64,
}

struct Chunk {
    data: Bytes,
    used: u64,
}

#[derive(Default)]
struct Inner {
    segs: HashMap<SegKey, SegEntry>,
    /// By (timeline, LSN of the chunk's first byte).
    chunks: BTreeMap<(TimeLineId, u64), Chunk>,
    bytes: u64,
    tick: u64,
}

/// The cache (one per store).
#[derive(Default)]
pub struct SegmentCache {
    inner: Mutex<Inner>,
    /// Bytes read from segment files into chunks, ever (`walrelay_wal_cache_read_bytes_total`).
    read_bytes: AtomicU64,
}

/// What a blocking load ended with.
enum Loaded {
    Served(Bytes),
    /// The segment was invalidated while it loaded: look again.
    Again,
}

impl Inner {
    fn tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// Up to `want` bytes at `lsn` if that position validated and its chunk is here.
    fn lookup(&mut self, key: SegKey, lsn: Lsn, want: u64) -> Option<Bytes> {
        let now = self.tick();
        let seg = self.segs.get_mut(&key)?;
        if lsn >= seg.valid {
            return None;
        }
        seg.used = now;
        let valid = seg.valid;
        let (&(tli, start), chunk) = self.chunks.range_mut(..=(key.0, lsn.0)).next_back()?;
        let len = chunk.data.len() as u64;
        if tli != key.0 || start + len <= lsn.0 {
            return None;
        }
        chunk.used = now;
        let n = want.min(valid.0 - lsn.0).min(start + len - lsn.0);
        let off = (lsn.0 - start) as usize;
        Some(chunk.data.slice(off..off + n as usize))
    }

    /// The entry of `key`, made if there is none (evicting the least recently used past
    /// [`MAX_SEGMENTS`]).
    fn state(&mut self, key: SegKey, seg_size: u64, sysid: Option<u64>) -> Arc<SegState> {
        let now = self.tick();
        if let Some(e) = self.segs.get_mut(&key) {
            e.used = now;
            return e.state.clone();
        }
        if self.segs.len() >= MAX_SEGMENTS {
            if let Some(old) = self
                .segs
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| *k)
            {
                self.remove_seg(old, seg_size);
            }
        }
        let mut decoder = WalDecoder::new(Lsn(key.1 * seg_size), seg_size, sysid, None);
        decoder.set_timeline(key.0);
        let state = Arc::new(SegState {
            dead: AtomicBool::new(false),
            load: Arc::new(tokio::sync::Mutex::new(Load {
                file: None,
                decoder,
            })),
        });
        self.segs.insert(
            key,
            SegEntry {
                state: state.clone(),
                valid: Lsn(key.1 * seg_size),
                used: now,
            },
        );
        state
    }

    /// Drops a segment's entry and chunks; a load under way for it is told by `dead`.
    fn remove_seg(&mut self, key: SegKey, seg_size: u64) {
        if let Some(e) = self.segs.remove(&key) {
            e.state.dead.store(true, Ordering::Release);
        }
        let (start, end) = (key.1 * seg_size, (key.1 + 1) * seg_size);
        let doomed: Vec<_> = self
            .chunks
            .range((key.0, start)..(key.0, end))
            .map(|(k, _)| *k)
            .collect();
        for k in doomed {
            if let Some(c) = self.chunks.remove(&k) {
                self.bytes -= c.data.len() as u64;
            }
        }
    }

    /// Puts a chunk in (replacing one with the same start), evicting the least recently used
    /// past [`BUDGET`].
    fn insert_chunk(&mut self, tli: TimeLineId, start: Lsn, data: Bytes) {
        let now = self.tick();
        let len = data.len() as u64;
        if let Some(old) = self
            .chunks
            .insert((tli, start.0), Chunk { data, used: now })
        {
            self.bytes -= old.data.len() as u64;
        }
        self.bytes += len;
        while self.bytes > BUDGET {
            let Some(k) = self
                .chunks
                .iter()
                .filter(|(k, _)| **k != (tli, start.0))
                .min_by_key(|(_, c)| c.used)
                .map(|(k, _)| *k)
            else {
                break;
            };
            if let Some(c) = self.chunks.remove(&k) {
                self.bytes -= c.data.len() as u64;
            }
        }
    }
}

impl SegmentCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes of chunks held now (for tests and the docs' figures).
    pub fn held_bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// [`read_at`], counted (`walrelay_wal_cache_read_bytes_total`, and [`Store::cache_read_bytes`]
    /// for tests, which have no metrics recorder).
    fn read(
        &self,
        file: &File,
        from: Lsn,
        to: Lsn,
        seg_size: u64,
        name: &str,
    ) -> Result<Bytes, ReadError> {
        let data = read_at(file, from, to, seg_size, name)?;
        let n = data.len() as u64;
        self.read_bytes.fetch_add(n, Ordering::Relaxed);
        metrics::counter!("walrelay_wal_cache_read_bytes_total").increment(n);
        Ok(data)
    }
}

impl Store {
    /// Up to `max` bytes of `tli` from `lsn` out of its segment file (through the shared
    /// cache), never past `end` (the servable end) nor the segment end. Only a miss leaves
    /// the caller's task (for a blocking thread).
    pub async fn read_wal(
        self: &Arc<Self>,
        tli: TimeLineId,
        lsn: Lsn,
        end: Lsn,
        max: usize,
    ) -> Result<Bytes, ReadError> {
        let (seg_size, sysid) = self.seg_params();
        let segno = lsn.segment(seg_size);
        let seg_end = (segno + 1) * seg_size;
        let limit = Lsn(end.0.min(seg_end));
        let want = limit.0.saturating_sub(lsn.0).min(max as u64);
        if want == 0 {
            return Ok(Bytes::new());
        }
        let key = (tli, segno);
        loop {
            if let Some(b) = self.cache.lock().lookup(key, lsn, want) {
                return Ok(b);
            }
            let state = self.cache.lock().state(key, seg_size, sysid);
            let load = state.load.clone().lock_owned().await;
            // Whoever held the lock before may have loaded what we need.
            if let Some(b) = self.cache.lock().lookup(key, lsn, want) {
                return Ok(b);
            }
            if state.dead.load(Ordering::Acquire) {
                continue;
            }
            let store = self.clone();
            let r = tokio::task::spawn_blocking(move || {
                let mut load = load;
                store.load(&state, &mut load, key, lsn, want, limit, seg_size)
            })
            .await
            .map_err(|e| ReadError::Io {
                name: SegmentId::new(tli, segno, seg_size).name(),
                source: std::io::Error::other(e),
            })??;
            match r {
                Loaded::Served(b) => return Ok(b),
                Loaded::Again => continue,
            }
        }
    }

    /// Drops what the cache holds of the segments `from_segno` ..= `to_segno` of `tli`
    /// (all timelines when `None`), for the store's file work that changes or removes them:
    /// call it before and after the change.
    pub(crate) fn invalidate_segments(
        &self,
        tli: Option<TimeLineId>,
        from_segno: u64,
        to_segno: u64,
    ) {
        let (seg_size, _) = self.seg_params();
        let mut inner = self.cache.lock();
        let keys: Vec<SegKey> = inner
            .segs
            .keys()
            .filter(|(t, s)| tli.is_none_or(|x| x == *t) && (from_segno..=to_segno).contains(s))
            .copied()
            .collect();
        for k in keys {
            inner.remove_seg(k, seg_size);
        }
        // Chunks whose entry was evicted already (none should be left, but be sure).
        let doomed: Vec<_> = inner
            .chunks
            .keys()
            .filter(|(t, start)| {
                tli.is_none_or(|x| x == *t) && (from_segno..=to_segno).contains(&(start / seg_size))
            })
            .copied()
            .collect();
        for k in doomed {
            if let Some(c) = inner.chunks.remove(&k) {
                inner.bytes -= c.data.len() as u64;
            }
        }
    }

    /// Bytes of WAL the segment cache holds now.
    pub fn cache_held_bytes(&self) -> u64 {
        self.cache.held_bytes()
    }

    /// Bytes the segment cache read from segment files since the store opened.
    pub fn cache_read_bytes(&self) -> u64 {
        self.cache.read_bytes.load(Ordering::Relaxed)
    }

    fn seg_params(&self) -> (u64, Option<u64>) {
        let sysid = self
            .identity()
            .and_then(|i| i.system_identifier.parse().ok());
        (self.seg_size(), sysid)
    }

    /// The blocking part of a miss: validates the segment as far as `lsn + want` (or `limit`),
    /// reads the chunk holding `lsn` if it is not in memory, and serves from it.
    #[allow(clippy::too_many_arguments)]
    fn load(
        &self,
        state: &SegState,
        load: &mut Load,
        key: SegKey,
        lsn: Lsn,
        want: u64,
        limit: Lsn,
        seg_size: u64,
    ) -> Result<Loaded, ReadError> {
        let (tli, segno) = key;
        let id = SegmentId::new(tli, segno, seg_size);
        let name = id.name();
        let seg_end = Lsn((segno + 1) * seg_size);
        if load.file.is_none() {
            match fs::open_for_read(self.wal_dir(), id) {
                Ok(f) => load.file = Some(f),
                Err(_) => {
                    let mut inner = self.cache.lock();
                    if !state.dead.load(Ordering::Acquire) {
                        inner.remove_seg(key, seg_size);
                    }
                    return Err(ReadError::SegmentMissing(name));
                }
            }
        }
        let Load { file, decoder } = load;
        let Some(file) = file.as_ref() else {
            return Err(ReadError::SegmentMissing(name));
        };
        let need = Lsn(lsn.0 + want);
        // The chunks read here: put in the cache (unless the segment was invalidated
        // meanwhile) and, the one holding `lsn`, served from.
        let mut read: Vec<(Lsn, Bytes)> = Vec::new();
        while decoder.valid_end() < need && decoder.error().is_none() {
            let pos = decoder.position();
            if pos >= limit {
                break;
            }
            // From the chunk boundary (or where a shorter chunk read earlier ended) to the
            // next one; past the readable end nothing is read (it is not to be served anyway).
            let to = Lsn(((pos.0 / CHUNK) + 1) * CHUNK).min(limit);
            let data = self.cache.read(file, pos, to, seg_size, &name)?;
            let fed = decoder.feed(&data);
            read.push((pos, data));
            if fed.is_err() {
                // What validated before the damage is still served; the damage is reported
                // once nothing valid is left to send.
                break;
            }
        }
        let valid = if decoder.error().is_none() && decoder.position() == seg_end {
            decoder.position()
        } else {
            decoder.valid_end()
        };
        if valid <= lsn {
            let mut inner = self.cache.lock();
            if state.dead.load(Ordering::Acquire) {
                return Ok(Loaded::Again);
            }
            if let Some(e) = inner.segs.get_mut(&key) {
                e.valid = e.valid.max(valid);
            }
            let detail = decoder
                .error()
                .map(|e| e.to_string())
                .unwrap_or_else(|| "record cannot be validated".to_string());
            return Err(ReadError::Damaged {
                segment: name,
                lsn: decoder.valid_end(),
                detail,
            });
        }
        let served = read
            .iter()
            .find(|(s, d)| *s <= lsn && s.0 + d.len() as u64 > lsn.0)
            .map(|(s, d)| (*s, d.clone()));
        let served = match served {
            Some(c) => c,
            None => {
                // Validated before, but its chunk is not in memory: read it again (whole, as
                // far as may be read). Put back in the cache, it serves the readers near this
                // one too (reading only what this reader sends, as PostgreSQL's walsenders do,
                // was measured: 5× the bytes read at 64 consumers catching up).
                let from = Lsn(lsn.0 / CHUNK * CHUNK).max(Lsn(segno * seg_size));
                let to = Lsn((from.0 / CHUNK + 1) * CHUNK).min(limit);
                let data = self.cache.read(file, from, to, seg_size, &name)?;
                read.push((from, data.clone()));
                (from, data)
            }
        };
        let mut inner = self.cache.lock();
        if state.dead.load(Ordering::Acquire) {
            return Ok(Loaded::Again);
        }
        if let Some(e) = inner.segs.get_mut(&key) {
            e.valid = e.valid.max(valid);
        }
        for (start, data) in read {
            inner.insert_chunk(tli, start, data);
        }
        drop(inner);
        let (start, data) = served;
        let end = (start.0 + data.len() as u64).min(valid.0).min(need.0);
        let off = (lsn.0 - start.0) as usize;
        Ok(Loaded::Served(
            data.slice(off..(off + (end - lsn.0) as usize)),
        ))
    }
}

/// The bytes of the segment file from `from` to `to` (one `pread` into the spare capacity of
/// a new `Vec`, so the memory is not zeroed first; more only if the kernel returns less).
fn read_at(file: &File, from: Lsn, to: Lsn, seg_size: u64, name: &str) -> Result<Bytes, ReadError> {
    let len = (to.0 - from.0) as usize;
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    let off = from.segment_offset(seg_size);
    while buf.len() < len {
        let at = off + buf.len() as u64;
        let n =
            rustix::io::pread(file, rustix::buffer::spare_capacity(&mut buf), at).map_err(|e| {
                ReadError::Io {
                    name: name.to_string(),
                    source: e.into(),
                }
            })?;
        if n == 0 {
            return Err(ReadError::Io {
                name: name.to_string(),
                source: std::io::ErrorKind::UnexpectedEof.into(),
            });
        }
    }
    // The allocator may have given more room than asked: nothing past `to` is kept.
    buf.truncate(len);
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::fixture_store;
    use crate::wal::testwal::{fixture, SEG};

    /// A store holding the fixture's first `n` segments under their complete names.
    fn store_with_segments(dir: &std::path::Path, n: usize) -> Arc<Store> {
        let f = fixture();
        let store = fixture_store(dir);
        for (name, _, bytes) in f.segments.iter().take(n) {
            std::fs::write(store.wal_dir().join(name), bytes).unwrap();
        }
        store
    }

    /// The end of the last record of the fixture that ends at or before `end` (page headers
    /// counted).
    fn last_record_end(end: Lsn) -> Lsn {
        fixture()
            .records
            .iter()
            .map(|r| crate::wal::decoder::data_end(r.lsn, r.tot_len as u64, SEG))
            .filter(|e| *e <= end)
            .max()
            .unwrap()
    }

    /// Everything from `from` to `end` as a walsender reads it (128 KiB at a most), and the
    /// error it stopped at, if any.
    async fn read_all(store: &Arc<Store>, from: Lsn, end: Lsn) -> (Vec<u8>, Option<ReadError>) {
        let mut got = Vec::new();
        let mut at = from;
        while at < end {
            match store.read_wal(1, at, end, 128 << 10).await {
                Ok(b) if b.is_empty() => break,
                Ok(b) => {
                    at = Lsn(at.0 + b.len() as u64);
                    got.extend_from_slice(&b);
                }
                Err(e) => return (got, Some(e)),
            }
        }
        (got, None)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn serves_what_the_files_hold_once_for_all_readers() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_segments(dir.path(), 3);
        let f = fixture();
        let start = Lsn(f.first_segno() * SEG);
        let end = last_record_end(Lsn(start.0 + 3 * SEG));
        let want = &f.bytes_from(f.first_segno())[..(end.0 - start.0) as usize];
        let readers: Vec<_> = (0..8)
            .map(|_| {
                let s = store.clone();
                tokio::spawn(async move { read_all(&s, start, end).await })
            })
            .collect();
        for r in readers {
            let (got, err) = r.await.unwrap();
            assert!(err.is_none(), "{err:?}");
            assert!(got == want, "a reader got other bytes than the files hold");
        }
        assert!(store.cache_held_bytes() <= BUDGET);
        assert!(store.cache_held_bytes() >= end.0 - start.0);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn damage_is_refused_after_the_valid_part() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_segments(dir.path(), 3);
        let f = fixture();
        let (name, segno, _) = &f.segments[1];
        let offset = 0x3000 + 300;
        let path = store.wal_dir().join(name);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[offset] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let start = Lsn(f.first_segno() * SEG);
        let end = last_record_end(Lsn(start.0 + 3 * SEG));
        let (got, err) = read_all(&store, start, end).await;
        let flipped = segno * SEG + offset as u64;
        let Some(ReadError::Damaged { segment, lsn, .. }) = err else {
            panic!("no damage reported: {err:?}");
        };
        assert_eq!(&segment, name);
        assert!(lsn.0 <= flipped && lsn.0 >= segno * SEG, "damage at {lsn}");
        assert_eq!(start.0 + got.len() as u64, lsn.0);
        assert!(got[..] == f.bytes_from(f.first_segno())[..got.len()]);
        // Asked again (another walsender), the same answer, not served from memory.
        let again = store.read_wal(1, lsn, end, 128 << 10).await;
        assert!(matches!(again, Err(ReadError::Damaged { lsn: l, .. }) if l == lsn));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_growing_segment_is_extended_and_invalidation_drops_cached_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_segments(dir.path(), 1);
        let f = fixture();
        let (name, segno, full) = &f.segments[1];
        let seg_start = Lsn(segno * SEG);
        // The second segment is being written: half of it there (as `.partial`, zeros after).
        let half = last_record_end(Lsn(seg_start.0 + SEG / 2));
        let cut = (half.0 - seg_start.0) as usize;
        let mut partial = full[..cut].to_vec();
        partial.resize(SEG as usize, 0);
        let ppath = store.wal_dir().join(format!("{name}.partial"));
        std::fs::write(&ppath, &partial).unwrap();
        let (got, err) = read_all(&store, seg_start, half).await;
        assert!(err.is_none(), "{err:?}");
        assert!(got[..] == full[..cut]);
        // More of it written: only the new part is read.
        let more = last_record_end(Lsn(seg_start.0 + SEG * 3 / 4));
        let cut2 = (more.0 - seg_start.0) as usize;
        partial[..cut2].copy_from_slice(&full[..cut2]);
        std::fs::write(&ppath, &partial).unwrap();
        let (got, err) = read_all(&store, half, more).await;
        assert!(err.is_none(), "{err:?}");
        assert!(got[..] == full[cut..cut2]);
        // Zeroed in place from `half` on (diverged WAL moved aside) and invalidated: the
        // bytes after `half` are no longer served from memory.
        partial[cut..].fill(0);
        std::fs::write(&ppath, &partial).unwrap();
        store.invalidate_segments(Some(1), *segno, u64::MAX);
        // (At most the record's alignment padding after `half` still validates.)
        let (got, err) = read_all(&store, half, more).await;
        assert!(matches!(err, Some(ReadError::Damaged { .. })), "{err:?}");
        assert!(got.len() < 8 && got.iter().all(|b| *b == 0), "{got:?}");
        // Removed (retention): "already removed", not bytes kept in memory.
        let (got, _) = read_all(&store, seg_start, half).await;
        assert!(got[..] == full[..cut]);
        std::fs::remove_file(&ppath).unwrap();
        store.invalidate_segments(Some(1), *segno, *segno);
        let r = store.read_wal(1, seg_start, half, 128 << 10).await;
        assert!(matches!(r, Err(ReadError::SegmentMissing(_))), "{r:?}");
    }

    /// Walsenders that follow a segment while it is written (each reading up to the durable end
    /// as it moves) share the cache's reads: the file is read about once, not once per reader
    /// or once per step.
    #[tokio::test(flavor = "multi_thread")]
    async fn readers_following_a_growing_segment_share_its_reads() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_segments(dir.path(), 1);
        let f = fixture();
        let (name, segno, full) = &f.segments[1];
        let seg_start = Lsn(segno * SEG);
        let ppath = store.wal_dir().join(format!("{name}.partial"));
        let mut partial = vec![0u8; SEG as usize];
        let mut pos = [seg_start; 4];
        let mut end = seg_start;
        let step = SEG / 64;
        for i in 1..=64 {
            let next = last_record_end(Lsn(seg_start.0 + i * step));
            if next <= end {
                continue;
            }
            let cut = (next.0 - seg_start.0) as usize;
            partial[..cut].copy_from_slice(&full[..cut]);
            std::fs::write(&ppath, &partial).unwrap();
            end = next;
            for p in pos.iter_mut() {
                let (got, err) = read_all(&store, *p, end).await;
                assert!(err.is_none(), "{err:?}");
                let from = (p.0 - seg_start.0) as usize;
                assert!(got[..] == full[from..cut]);
                *p = end;
            }
        }
        let held = end.0 - seg_start.0;
        let read = store.cache_read_bytes();
        assert!(
            read <= 2 * held,
            "{read} bytes read from the file for {held} bytes of WAL served to 4 readers"
        );
    }
}
