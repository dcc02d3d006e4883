//! The single writer: a dedicated thread that appends WAL to segment files, fsyncs in batches
//! (group commit: everything queued while the previous fsync ran is synced by the next one),
//! and only then publishes the new durable position.
//!
//! Not cancel-safe by design: it runs on its own OS thread and finishes what it took from the
//! queue. It stops when every sender is dropped, after a last fsync and state save.
//!
//! Invariants: the durable position it publishes is the lower of what was fsynced and the end
//! of the last record that passed validation; after any failure ([`WriteError`]) it publishes
//! nothing and drops queued WAL until the next `Start`. Segment files are opened, written and
//! fsynced through [`super::fs`], so the `.partial` rule holds and fail points can reach them.

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::fs::{SegmentFile, SegmentId, SegmentIoError};
use super::{Durable, Store, WriterHealth};
use crate::wal::decoder::WalDecoder;
use crate::wal::error::WalError;
use crate::wal::{Lsn, TimeLineId};

/// Bytes written without fsync before a batch is cut even if more is queued.
const MAX_UNSYNCED: u64 = 16 << 20;
/// How often the state file is refreshed while WAL flows.
const STATE_SAVE_INTERVAL: Duration = Duration::from_secs(1);

/// Why the writer refused a command or stopped ingest. A full disk ([`WriteError::Io`]) and
/// WAL that fails validation ([`WriteError::InvalidWal`]) differ by variant; the messages are
/// the words the log, `/readyz` and `walrelay status` show.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// A segment file could not be created, sized, written, fsynced or renamed.
    #[error(transparent)]
    Io(#[from] SegmentIoError),
    /// A record from upstream failed validation; what was valid before it was kept.
    #[error("invalid WAL from upstream: {0}")]
    InvalidWal(WalError),
    /// A chunk that does not start where the stream is.
    #[error("WAL chunk at {start} does not continue the stream at {pos}")]
    Discontinuous { start: Lsn, pos: Lsn },
    /// WAL before a `Start` (or after a failure, before the next `Start`).
    #[error("WAL arrived before the stream start")]
    NotStarted,
    /// A start that is neither within the durable WAL nor at a segment start.
    #[error(
        "stream start {lsn} on timeline {tli} is neither within the durable WAL ({} on timeline {}) nor at a segment start",
        durable.lsn,
        durable.timeline
    )]
    BadStart {
        tli: TimeLineId,
        lsn: Lsn,
        durable: Durable,
    },
    /// Moving diverged WAL aside failed (the OS error is the message, as before).
    #[error("{0}")]
    MoveDiverged(std::io::Error),
    /// The writer thread is gone.
    #[error("WAL writer has stopped")]
    Stopped,
}

pub enum WriteCmd {
    /// The upstream stream (re)starts at `lsn` of `tli`. Answers whether the writer can continue
    /// there (it must be the durable end, or a segment start).
    Start {
        tli: TimeLineId,
        lsn: Lsn,
        reply: oneshot::Sender<Result<(), WriteError>>,
    },
    /// WAL bytes at `start`, continuing the previous command.
    Wal { start: Lsn, data: Bytes },
    /// The upstream's history forked from `tli` at `at`: move the relay's WAL of `tli` past
    /// `at` into `diverged/`, so it is never served. Answers the number of bytes moved aside.
    Diverge {
        tli: TimeLineId,
        at: Lsn,
        reply: oneshot::Sender<Result<u64, WriteError>>,
    },
    /// Nothing to do: the writer only counts a heartbeat once it gets here, after whatever
    /// write or fsync was queued before it (see [`WriterHandle::probe`]).
    Tick,
}

/// The sending side, held by the upstream session.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<WriteCmd>,
    beats: Arc<AtomicU64>,
}

impl WriterHandle {
    /// How many times the writer thread finished a batch (written, fsynced, published) or a
    /// probe: it stops moving while the thread is blocked in a write or an fsync.
    pub fn beats(&self) -> u64 {
        self.beats.load(Ordering::Relaxed)
    }

    /// Asks the writer for a heartbeat without waiting: an idle writer beats at once, a busy
    /// one after the batch it is in, a wedged one never. A full queue is a probe already.
    pub fn probe(&self) {
        let _ = self.tx.try_send(WriteCmd::Tick);
    }

    pub async fn start(&self, tli: TimeLineId, lsn: Lsn) -> Result<(), WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(WriteCmd::Start { tli, lsn, reply })
            .await
            .map_err(|_| WriteError::Stopped)?;
        rx.await.map_err(|_| WriteError::Stopped)?
    }

    /// Moves WAL of `tli` past `at` aside (see [`WriteCmd::Diverge`]).
    pub async fn diverge(&self, tli: TimeLineId, at: Lsn) -> Result<u64, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(WriteCmd::Diverge { tli, at, reply })
            .await
            .map_err(|_| WriteError::Stopped)?;
        rx.await.map_err(|_| WriteError::Stopped)?
    }

    /// Queues WAL; waits when the queue is full (backpressure on the upstream socket).
    pub async fn write(&self, start: Lsn, data: Bytes) -> Result<(), WriteError> {
        self.tx
            .send(WriteCmd::Wal { start, data })
            .await
            .map_err(|_| WriteError::Stopped)
    }
}

struct Writer {
    store: Arc<Store>,
    seg_size: u64,
    tli: TimeLineId,
    /// Next byte to write; `None` until a Start, and after a failure.
    pos: Option<Lsn>,
    seg: Option<SegmentFile>,
    /// Validates every byte written (page headers, record headers and CRC-32C); the durable
    /// position never passes its `valid_end`, so a record that fails is never served.
    decoder: Option<WalDecoder>,
    unsynced: u64,
    dirty: bool,
    last_state_save: Instant,
}

/// Starts the writer thread. The store must have an identity (segment size) by then.
pub fn spawn(store: Arc<Store>) -> (WriterHandle, std::thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(256);
    let beats = Arc::new(AtomicU64::new(0));
    let thread_beats = beats.clone();
    let handle = std::thread::Builder::new()
        .name("wal-writer".into())
        .spawn(move || run(store, rx, &thread_beats))
        .unwrap_or_else(|e| panic!("cannot spawn the WAL writer thread: {e}"));
    (WriterHandle { tx, beats }, handle)
}

fn run(store: Arc<Store>, mut rx: mpsc::Receiver<WriteCmd>, beats: &AtomicU64) {
    let mut w = Writer::new(store);
    let span = tracing::info_span!("wal_writer");
    let _enter = span.enter();
    while let Some(cmd) = rx.blocking_recv() {
        w.handle(cmd);
        while w.unsynced < MAX_UNSYNCED {
            match rx.try_recv() {
                Ok(cmd) => w.handle(cmd),
                Err(_) => break,
            }
        }
        w.sync();
        // Written, fsynced and published (or failed and reported): the writer is not wedged.
        beats.fetch_add(1, Ordering::Relaxed);
    }
    w.sync();
    if let Err(e) = w.store.save_state() {
        tracing::error!("could not save relay state at shutdown: {e}");
    }
}

impl Writer {
    fn new(store: Arc<Store>) -> Writer {
        let durable = store.durable();
        Writer {
            seg_size: store.seg_size(),
            store,
            tli: durable.timeline,
            pos: None,
            seg: None,
            decoder: None,
            unsynced: 0,
            dirty: false,
            last_state_save: Instant::now(),
        }
    }

    fn handle(&mut self, cmd: WriteCmd) {
        match cmd {
            WriteCmd::Start { tli, lsn, reply } => {
                let r = self.start(tli, lsn);
                if let Err(e) = &r {
                    tracing::error!("cannot start writing at {lsn} on timeline {tli}: {e}");
                }
                let _ = reply.send(r);
            }
            WriteCmd::Diverge { tli, at, reply } => {
                let r = self.diverge(tli, at);
                if let Err(e) = &r {
                    tracing::error!(
                        "cannot move diverged WAL of timeline {tli} past {at} aside: {e}"
                    );
                }
                let _ = reply.send(r);
            }
            WriteCmd::Tick => {}
            // After a failure, WAL still queued behind it is dropped until the next Start: the
            // first error is the one reported.
            WriteCmd::Wal { .. }
                if self.pos.is_none() && self.store.health().borrow().error.is_some() => {}
            WriteCmd::Wal { start, data } => {
                if let Err(e) = self.write(start, &data) {
                    self.fail(e);
                } else {
                    self.store.tail_push(self.tli, start, data);
                }
            }
        }
    }

    fn fail(&mut self, e: WriteError) {
        tracing::error!("WAL ingest stopped: {e}");
        self.pos = None;
        self.seg = None;
        self.decoder = None;
        self.dirty = false;
        self.unsynced = 0;
        self.store.set_health(WriterHealth {
            error: Some(e.to_string()),
        });
    }

    fn start(&mut self, tli: TimeLineId, lsn: Lsn) -> Result<(), WriteError> {
        self.sync();
        let durable = self.store.durable();
        let same_stream = tli == durable.timeline && lsn <= durable.lsn;
        // A new timeline (or a first start) must begin at a segment start, so that the segment
        // file is whole from its first byte.
        if !same_stream && lsn.segment_offset(self.seg_size) != 0 {
            return Err(WriteError::BadStart { tli, lsn, durable });
        }
        if tli != self.tli {
            self.store.tail_clear();
        }
        self.seg = None;
        self.tli = tli;
        self.pos = Some(lsn);
        self.decoder = Some(self.resume_decoder(tli, lsn));
        if !same_stream {
            // Durable now means "up to lsn on tli": nothing of tli is stored past it yet.
            self.store.publish_durable(Durable { timeline: tli, lsn });
        }
        // A previous failure stays reported until WAL is written and synced again.
        Ok(())
    }

    /// The decoder for a stream that starts at `lsn` of `tli`. Inside a segment, it is first
    /// fed the stored bytes from the segment start up to `lsn`, so that it knows what `lsn` is
    /// in: the zero tail after an `XLOG_SWITCH` (the durable end moves through it as it
    /// arrives), or a record's run over page boundaries. A fresh decoder at `lsn` would take
    /// the switch tail's zeros at the next page boundary for a missing page header and refuse
    /// the upstream's WAL for ever: a relay (or its downstream relay) stopped inside such a
    /// tail could never resume. PostgreSQL's walreceiver sidesteps the question by always
    /// streaming from the segment start; the relay keeps its start point and reads its own copy
    /// instead. When the stored bytes cannot be read or do not validate up to `lsn`, the
    /// stream starts with a fresh decoder at `lsn`, as before.
    fn resume_decoder(&self, tli: TimeLineId, lsn: Lsn) -> WalDecoder {
        let sysid = self
            .store
            .identity()
            .and_then(|i| i.system_identifier.parse::<u64>().ok());
        let fresh = || {
            let mut d = WalDecoder::new(lsn, self.seg_size, sysid, None);
            d.set_timeline(tli);
            d
        };
        let off = lsn.segment_offset(self.seg_size);
        if off == 0 {
            return fresh();
        }
        let id = SegmentId::new(tli, lsn.segment(self.seg_size), self.seg_size);
        let primed = || -> Result<WalDecoder, String> {
            let file = super::fs::open_for_read(self.store.wal_dir(), id)
                .map_err(|e| format!("open: {e}"))?;
            let mut stored = vec![0u8; off as usize];
            file.read_exact_at(&mut stored, 0)
                .map_err(|e| format!("read: {e}"))?;
            let mut d = WalDecoder::new(id.start(), self.seg_size, sysid, None);
            d.set_timeline(tli);
            d.feed(&stored).map_err(|e| e.to_string())?;
            if d.position() != lsn {
                return Err(format!("stored bytes end at {}", d.position()));
            }
            Ok(d)
        };
        primed().unwrap_or_else(|why| {
            tracing::debug!(segment = %id.name(), %lsn, "resuming without the stored start of the segment ({why})");
            fresh()
        })
    }

    fn diverge(&mut self, tli: TimeLineId, at: Lsn) -> Result<u64, WriteError> {
        self.sync();
        self.seg = None;
        self.pos = None;
        self.decoder = None;
        self.store.tail_clear();
        let moved = self
            .store
            .move_diverged(tli, at)
            .map_err(WriteError::MoveDiverged)?;
        let durable = self.store.durable();
        if durable.timeline == tli && durable.lsn > at {
            self.store.publish_durable(Durable {
                timeline: tli,
                lsn: at,
            });
        }
        self.save_state();
        Ok(moved)
    }

    fn write(&mut self, start: Lsn, data: &[u8]) -> Result<(), WriteError> {
        let Some(pos) = self.pos else {
            return Err(WriteError::NotStarted);
        };
        if start != pos {
            return Err(WriteError::Discontinuous { start, pos });
        }
        if let Some(d) = self.decoder.as_mut() {
            let mut ends = Vec::new();
            let fed = d.feed_with(data, |rec| ends.push(rec.end));
            self.store.note_record_ends(self.tli, &ends);
            if let Err(e) = fed {
                // Keep what is valid, up to the last whole record before the bad one: write
                // it, sync and publish it, then stop ingest. The durable end stays a record
                // boundary, where the next stream can start.
                let valid = d
                    .valid_end()
                    .0
                    .saturating_sub(start.0)
                    .min(data.len() as u64);
                let kept = self.write_bytes(start, data.get(..valid as usize).unwrap_or(&[]));
                self.sync();
                metrics::counter!("walrelay_wal_invalid_total").increment(1);
                kept?;
                return Err(WriteError::InvalidWal(e));
            }
        }
        self.write_bytes(start, data)
    }

    /// Writes `data` at `start` (the current position) into the segment files.
    fn write_bytes(&mut self, start: Lsn, mut data: &[u8]) -> Result<(), WriteError> {
        let mut lsn = start;
        while !data.is_empty() {
            let segno = lsn.segment(self.seg_size);
            let off = lsn.segment_offset(self.seg_size);
            let room = (self.seg_size - off) as usize;
            let n = room.min(data.len());
            let (now, rest) = data.split_at(n);
            let seg = self.open_segment(segno)?;
            seg.write_at(now, off)?;
            self.dirty = true;
            self.unsynced += n as u64;
            lsn = Lsn(lsn.0 + n as u64);
            self.pos = Some(lsn);
            data = rest;
            if lsn.segment_offset(self.seg_size) == 0 {
                self.complete_segment()?;
            }
        }
        Ok(())
    }

    /// The segment file `segno` of the current timeline, opened on first use.
    fn open_segment(&mut self, segno: u64) -> Result<&SegmentFile, WriteError> {
        let seg = match self.seg.take() {
            Some(s) if s.id.segno == segno => s,
            _ => SegmentFile::open_for_write(
                self.store.wal_dir(),
                SegmentId::new(self.tli, segno, self.seg_size),
            )?,
        };
        Ok(self.seg.insert(seg))
    }

    /// The write position just reached a segment end: fsync, rename `.partial` to its final
    /// name, fsync the directory.
    fn complete_segment(&mut self) -> Result<(), WriteError> {
        let Some(seg) = self.seg.take() else {
            return Ok(());
        };
        seg.complete(self.store.wal_dir())?;
        self.dirty = false;
        self.store.set_health(WriterHealth::default());
        self.publish();
        // A completed segment is a natural point to record progress.
        self.save_state();
        Ok(())
    }

    /// Publishes what is both fsynced and validated. Within a stream the durable position
    /// only moves forward (a restart re-validates from a point the store already had).
    fn publish(&mut self) {
        if let Some(pos) = self.pos {
            let valid = self.decoder.as_ref().map_or(pos, |d| d.valid_end());
            let lsn = pos.min(valid);
            let cur = self.store.durable();
            if cur.timeline != self.tli || lsn > cur.lsn {
                self.store.publish_durable(Durable {
                    timeline: self.tli,
                    lsn,
                });
            }
        }
        self.unsynced = 0;
    }

    fn save_state(&mut self) {
        if let Err(e) = self.store.save_state() {
            tracing::warn!("could not save relay state: {e}");
        }
        self.last_state_save = Instant::now();
    }

    /// Fsyncs what was written since the last fsync. Publishes nothing.
    fn fsync_written(&mut self) -> Result<(), WriteError> {
        if self.dirty {
            if let Some(seg) = &self.seg {
                seg.sync()?;
            }
            self.dirty = false;
            // Written and synced: whatever stopped ingest before is over.
            self.store.set_health(WriterHealth::default());
        }
        Ok(())
    }

    /// Ends a batch: fsync, then publish what is both fsynced and validated. A failed fsync
    /// stops ingest and publishes nothing.
    fn sync(&mut self) {
        if let Err(e) = self.fsync_written() {
            self.fail(e);
            return;
        }
        if self.pos.is_some() {
            self.publish();
        }
        if self.last_state_save.elapsed() >= STATE_SAVE_INTERVAL {
            self.save_state();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::fixture_store;
    use crate::store::Store;
    use crate::wal::testwal::{fixture, SEG};

    /// A store for the fixture's cluster, with its writer running.
    fn store_for_fixture(
        dir: &std::path::Path,
    ) -> (Arc<Store>, WriterHandle, std::thread::JoinHandle<()>) {
        let store = fixture_store(dir);
        let (handle, thread) = spawn(store.clone());
        (store, handle, thread)
    }

    async fn stream(handle: &WriterHandle, start: Lsn, bytes: &[u8]) {
        let mut at = start;
        for chunk in bytes.chunks(100_000) {
            handle
                .write(at, Bytes::copy_from_slice(chunk))
                .await
                .unwrap();
            at = Lsn(at.0 + chunk.len() as u64);
        }
    }

    async fn settle(store: &Store) -> Durable {
        // The writer syncs whenever its queue drains; give it a moment to get there.
        let mut last = store.durable();
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let now = store.durable();
            if now == last {
                return now;
            }
            last = now;
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn durable_follows_valid_records() {
        let dir = tempfile::tempdir().unwrap();
        let (store, handle, _t) = store_for_fixture(dir.path());
        let f = fixture();
        let start = Lsn(f.first_segno() * SEG);
        handle.start(1, start).await.unwrap();
        // Three whole segments: durable reaches the last record that ends inside them.
        let bytes = f.bytes_from(f.first_segno());
        stream(&handle, start, &bytes[..3 * SEG as usize]).await;
        let d = settle(&store).await;
        let end = Lsn(start.0 + 3 * SEG);
        let last_whole = f
            .records
            .iter()
            .map(|r| Lsn(r.lsn.0 + r.tot_len as u64))
            .filter(|e| *e <= end)
            .max()
            .unwrap();
        assert!(
            d.lsn >= last_whole && d.lsn <= end,
            "durable {} vs last whole record end {last_whole}",
            d.lsn
        );
        assert!(store.health().borrow().error.is_none());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_corrupt_record_is_never_made_durable() {
        let dir = tempfile::tempdir().unwrap();
        let (store, handle, _t) = store_for_fixture(dir.path());
        let f = fixture();
        let start = Lsn(f.first_segno() * SEG);
        // A record in the second segment, its body byte flipped.
        let victim = f
            .records
            .iter()
            .find(|r| r.lsn.0 > start.0 + SEG + 4096 && r.tot_len > 200)
            .unwrap();
        let mut bytes = f.bytes_from(f.first_segno());
        let at = (victim.lsn.0 - start.0 + 100) as usize;
        bytes[at] ^= 0x55;
        handle.start(1, start).await.unwrap();
        stream(&handle, start, &bytes[..3 * SEG as usize]).await;
        let d = settle(&store).await;
        assert!(
            d.lsn <= victim.lsn,
            "durable {} passed the corrupt record at {}",
            d.lsn,
            victim.lsn
        );
        assert!(
            d.lsn.0 + 64 * 1024 > victim.lsn.0,
            "durable {} stopped far before {}",
            d.lsn,
            victim.lsn
        );
        let err = store
            .health()
            .borrow()
            .error
            .clone()
            .expect("ingest error reported");
        assert!(err.contains("invalid WAL from upstream"), "{err}");
        assert!(
            err.contains(&victim.lsn.to_string()),
            "{err} should name {}",
            victim.lsn
        );
        // A new stream from the durable position (what the upstream session does) is accepted.
        handle.start(1, d.lsn).await.unwrap();
        let from = (d.lsn.0 - start.0) as usize;
        let good = f.bytes_from(f.first_segno());
        stream(&handle, d.lsn, &good[from..3 * SEG as usize]).await;
        let again = settle(&store).await;
        assert!(
            again.lsn > victim.lsn,
            "after a clean resend durable {} passes {}",
            again.lsn,
            victim.lsn
        );
        assert!(store.health().borrow().error.is_none());
    }

    /// A stream stopped inside the zero tail after an `XLOG_SWITCH` (the durable end moves
    /// through the tail as it arrives) resumes there: the zeros at the next page boundary are
    /// part of the tail, not a missing page header (campaign round: relay B stopped at
    /// 0/722E000 in such a tail when its upstream relay was killed, and refused every resend
    /// with "invalid magic number 0000").
    #[tokio::test(flavor = "multi_thread")]
    async fn a_stream_stopped_inside_a_switch_tail_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let (store, handle, _t) = store_for_fixture(dir.path());
        let f = fixture();
        let seg = f.first_segno();
        let start = Lsn(seg * SEG);
        let switch = f.switch_record();
        // A page boundary well inside the tail.
        let stop = Lsn(Lsn(switch.lsn.0 + 24).page_start().0 + 4 * 8192);
        assert!(stop.0 < start.0 + SEG);
        let bytes = f.bytes_from(seg);
        let upto = (stop.0 - start.0) as usize;
        handle.start(1, start).await.unwrap();
        stream(&handle, start, &bytes[..upto]).await;
        let d = settle(&store).await;
        assert_eq!(
            d.lsn, stop,
            "durable follows the bytes through the switch tail"
        );
        // The upstream connection is lost; the session resumes from the durable end (a
        // restarted relay instead finds the segment whole at open: recover.rs completes it).
        handle.start(1, stop).await.unwrap();
        stream(&handle, stop, &bytes[upto..2 * SEG as usize]).await;
        let d = settle(&store).await;
        assert!(
            store.health().borrow().error.is_none(),
            "{:?}",
            store.health().borrow().error
        );
        assert!(
            d.lsn > Lsn(start.0 + SEG),
            "durable {} did not pass the switch",
            d.lsn
        );
    }

    /// An idle writer answers a probe; the count moves only through the thread.
    #[tokio::test(flavor = "multi_thread")]
    async fn an_idle_writer_answers_probes() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, handle, _t) = store_for_fixture(dir.path());
        let before = handle.beats();
        handle.probe();
        for _ in 0..100 {
            if handle.beats() > before {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("the writer did not answer a probe");
    }

    #[test]
    fn refusals_are_typed() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Writer::new(fixture_store(dir.path()));
        let f = fixture();
        let start = Lsn(f.first_segno() * SEG);
        assert!(matches!(w.write(start, b"x"), Err(WriteError::NotStarted)));
        // A new timeline must start at a segment start.
        let e = w.start(2, Lsn(start.0 + 8192)).unwrap_err();
        assert!(matches!(e, WriteError::BadStart { tli: 2, .. }), "{e}");
        assert!(e.to_string().contains("nor at a segment start"), "{e}");
        w.start(1, start).unwrap();
        let e = w.write(Lsn(start.0 + 1), b"x").unwrap_err();
        assert!(matches!(e, WriteError::Discontinuous { .. }), "{e}");
        // Garbage where a page header belongs.
        let e = w.write(start, &[0xEE; 8192]).unwrap_err();
        assert!(matches!(e, WriteError::InvalidWal(_)), "{e}");
        assert!(
            e.to_string().starts_with("invalid WAL from upstream: "),
            "{e}"
        );
    }

    /// A failed fsync (injected at the fs seam) is reported as a typed error, stops ingest, and
    /// publishes nothing: the durable watch does not move. A new stream from the durable end
    /// goes on once the disk is back.
    #[cfg(feature = "failpoints")]
    #[test]
    fn a_failed_fsync_is_typed_and_publishes_nothing() {
        use super::super::fs::SegmentOp;
        let dir = tempfile::tempdir().unwrap();
        let store = fixture_store(dir.path());
        let mut w = Writer::new(store.clone());
        let f = fixture();
        let start = Lsn(f.first_segno() * SEG);
        w.start(1, start).unwrap();
        let durable_rx = store.subscribe();
        let before = store.durable();
        // Half a segment: written, not yet fsynced (no segment end reached).
        let bytes = f.bytes_from(f.first_segno());
        let half = &bytes[..SEG as usize / 2];
        w.write(start, half).unwrap();
        {
            // Only this test's files fail: other tests run meanwhile.
            let only_here = format!("return({})", dir.path().display());
            let _fsync = fail::FailGuard::new("fs::segment::fsync", &only_here).unwrap();
            match w.fsync_written() {
                Err(WriteError::Io(e)) => {
                    assert_eq!(e.op, SegmentOp::Fsync);
                    assert!(e.path.starts_with(dir.path()), "{}", e.path.display());
                    assert!(
                        e.to_string().starts_with("could not fsync WAL segment: "),
                        "{e}"
                    );
                }
                other => panic!("expected a typed fsync error, got {other:?}"),
            }
            // The batch end as the writer thread runs it: ingest stops, reported.
            w.sync();
            assert_eq!(store.durable(), before);
            assert!(!durable_rx.has_changed().unwrap(), "durable moved");
            let health = store.health().borrow().error.clone();
            assert!(
                health
                    .as_deref()
                    .is_some_and(|e| e.starts_with("could not fsync WAL segment")),
                "{health:?}"
            );
            assert!(matches!(w.write(start, half), Err(WriteError::NotStarted)));
        }
        // The disk is back: the upstream session restarts the stream at the durable end.
        w.start(1, before.lsn).unwrap();
        w.write(start, half).unwrap();
        w.sync();
        assert!(store.durable().lsn > before.lsn);
        assert!(durable_rx.has_changed().unwrap());
        assert!(store.health().borrow().error.is_none());
    }
}
