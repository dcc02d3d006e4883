//! START_REPLICATION: the CopyBoth stream to one downstream.
//!
//! The send half (this task) waits on the store's durable position and sends `w` messages cut
//! at page boundaries (at most 128 KiB each, as walsender.c's MAX_SEND_SIZE), and `k`
//! keepalives while idle. A separate task reads the client's `r`/`h`/CopyDone so that a client
//! that is busy writing never blocks on us and we never block on it.
//!
//! How far it may send is not its own decision: it follows the store's servable end
//! ([`crate::store::servable`]: durable, within the failover limit, up to a historic timeline's
//! switch point), one watch, and applies [`Servable::bound`] to its timeline.
//!
//! Invariant: no byte at or past the published servable end is ever sent.
//!
//! A start before the store's oldest segment is backfilled first: the missing segments are
//! fetched from the upstream into the store ([`crate::upstream::backfill`]) before the
//! CopyBothResponse goes out, then served like any other; `58P01` only when the upstream no
//! longer has them either.
//!
//! `wal_sender_timeout` is followed as it is reloaded (SIGHUP): the walsender watches the
//! context's limits and times its client by the new value from then on, as PostgreSQL's
//! walsenders re-read their settings at each loop after a SIGHUP.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use super::client::Client;
use super::connection::Conn;
use super::context::{Context, Limits};
use super::error::{not_in_history, read_error, slot_error, SessionEnd};
use crate::lag::registry::{Downstream, RegistryGuard, WalSndState};
use crate::proto::backend::{self, Column};
use crate::proto::error::{sqlstate, PgError};
use crate::proto::frontend::{parse_frontend, FrontendMessage};
use crate::proto::replication::{
    encode_xlog_data_header, now_pg, parse_client_copy, ClientCopyMessage, Keepalive,
};
use crate::store::reader::ReadError;
use crate::store::servable::{Historic, Servable};
use crate::upstream::backfill::BackfillError;
use crate::wal::{Lsn, TimeLineId, WAL_PAGE_SIZE};
use crate::wire::{MsgReader, ReadHalf, WireError};

/// MAX_SEND_SIZE in walsender.c.
const MAX_SEND: u64 = 16 * WAL_PAGE_SIZE;
/// Idle time after which a keepalive is sent.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// When the client was last heard from: set by the reply reader on every message, read by the
/// sender, also while it is blocked writing (as walsender.c processes replies while its
/// output is pending).
struct Heard {
    base: Instant,
    millis: AtomicU64,
    /// Messages heard so far: whether anything came after a ping is told by this count, not by
    /// the clock (a reply on loopback comes within the millisecond of the ping).
    count: AtomicU64,
}

impl Heard {
    fn new() -> Self {
        Heard {
            base: Instant::now(),
            millis: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.millis.fetch_max(ms, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.millis.load(Ordering::Relaxed))
    }
}

/// What the reply reader tells the sender.
enum ClientEvent {
    Message(ClientCopyMessage),
    /// The client sent CopyDone; the reader is handed back for the command loop.
    CopyDone(MsgReader<ReadHalf>),
    Terminate,
    Gone(SessionEnd),
}

pub async fn start_replication(
    ctx: &Arc<Context>,
    conn: &mut Conn,
    client: &Client,
    slot: Option<String>,
    start: Lsn,
    timeline: Option<TimeLineId>,
) -> Result<(), SessionEnd> {
    // The slot is acquired before anything else; its errors come before CopyBothResponse.
    let slot = match slot {
        Some(name) => match ctx.store.slots().acquire(&name, client.pid) {
            Ok(_) => Some(SlotUse {
                slots: ctx.store.slots().clone(),
                name,
                pid: client.pid,
            }),
            Err(e) => return Ok(conn.send_error(&slot_error(&e)).await?),
        },
        None => None,
    };
    let servable = ctx.store.servable();
    let durable = servable.end();
    let tli = timeline.unwrap_or(durable.timeline);
    let historic = match servable.historic(tli) {
        Ok(h) => h,
        Err(e) => return Ok(conn.send_error(&not_in_history(e)).await?),
    };
    if let Some(h) = historic {
        if start > h.switchpoint {
            let e = PgError::error(
                sqlstate::INTERNAL_ERROR,
                format!("requested starting point {start} on timeline {tli} is not in this server's history"),
            )
            .with_detail(format!("This server's history forked from timeline {tli} at {}.", h.switchpoint));
            return Ok(conn.send_error(&e).await?);
        }
        if start == h.switchpoint {
            // Nothing to stream on this timeline: answer with the next timeline, no COPY.
            end_of_timeline_result(conn, h);
            return Ok(conn.flush().await?);
        }
    }

    backend::copy_both_response(conn.out());
    if historic.is_none() && start > durable.lsn {
        let e = PgError::error(
            sqlstate::INTERNAL_ERROR,
            format!(
                "requested starting point {start} is ahead of the WAL flush position of this server {}",
                durable.lsn
            ),
        );
        return Ok(conn.send_error(&e).await?);
    }
    let seg_size = ctx.store.seg_size();
    // At the durable end the next segment may not exist yet: the stream just waits for it.
    let available_end = historic.map(|h| h.switchpoint).unwrap_or(durable.lsn);
    if start < available_end {
        let ftli = file_tli(tli, historic, start, seg_size);
        if let Err(e) = ctx.store.check_segment(ftli, start) {
            // WAL older than the store's oldest segment: the upstream may still have it.
            let e = match e {
                ReadError::SegmentMissing(_) if backfill(ctx, ftli, start, seg_size).await => {
                    ctx.store.check_segment(ftli, start).err()
                }
                e => Some(e),
            };
            if let Some(e) = e {
                return Ok(conn.send_error(&read_error(e)).await?);
            }
        }
    }
    conn.flush().await?;
    tracing::info!(%start, timeline = tli, "started streaming WAL");

    let guard = ctx.registry.register(Downstream {
        pid: client.pid,
        application_name: client.application_name.clone(),
        user: client.user.clone(),
        client_addr: client.peer,
        connected_at: SystemTime::now(),
        state: WalSndState::Catchup,
        timeline: Some(tli),
        slot_name: slot.as_ref().map(|s| s.name.clone()),
        sent: start,
        write: Lsn(0),
        flush: Lsn(0),
        replay: Lsn(0),
        reply_time: None,
        bytes_sent: 0,
        hs_feedback: None,
    });

    // Hand the read half to the reply reader for the duration of the stream.
    let Some(rd) = conn.rd.take() else {
        return Err(SessionEnd::ClientGone);
    };
    let (ev_tx, ev_rx) = mpsc::channel(64);
    let heard = Arc::new(Heard::new());
    let reader_task = tokio::spawn(read_replies(rd, ev_tx, heard.clone()));
    let mut limits = ctx.subscribe_limits();
    let timeout = limits.borrow_and_update().wal_sender_timeout;
    let mut s = Sender {
        ctx: ctx.clone(),
        guard,
        tli,
        historic,
        sent: start,
        seg_size,
        pieces: Vec::new(),
        ev_rx,
        heard,
        timeout,
        limits,
        application_name: client.application_name.clone(),
        durable_at: Instant::now(),
        ping_sent_at: None,
        deferred: None,
        reply_owed: false,
        slot,
    };
    let result = s.stream(conn).await;
    reader_task.abort();
    match result {
        Ok(rd) => {
            conn.rd = Some(rd);
            Ok(())
        }
        Err(e) => Err(e),
    }
}

struct Sender {
    ctx: Arc<Context>,
    guard: RegistryGuard,
    tli: TimeLineId,
    historic: Option<Historic>,
    sent: Lsn,
    seg_size: u64,
    /// The pieces of the message being sent (kept for its allocation).
    pieces: Vec<Bytes>,
    ev_rx: mpsc::Receiver<ClientEvent>,
    heard: Arc<Heard>,
    /// `wal_sender_timeout`; `None` is off.
    timeout: Option<Duration>,
    /// Where a reloaded `wal_sender_timeout` comes from ([`Sender::reload_timeout`]).
    limits: watch::Receiver<Limits>,
    application_name: String,
    durable_at: Instant,
    /// [`Heard::count`] when a keepalive asking for a reply was sent, if one was
    /// (walsender.c's `waiting_for_ping_response` while nothing was heard since).
    ping_sent_at: Option<u64>,
    /// An event that came while a write was pending and needs writing of its own (CopyDone)
    /// or ends the stream: handled once the write is done.
    deferred: Option<ClientEvent>,
    /// A reply that asked for a keepalive came while a write was pending.
    reply_owed: bool,
    slot: Option<SlotUse>,
}

/// A slot in use by this walsender; released when the stream ends, however it ends.
struct SlotUse {
    slots: Arc<crate::store::slots::Slots>,
    name: String,
    pid: i32,
}

impl Drop for SlotUse {
    fn drop(&mut self) {
        self.slots.release(&self.name, self.pid);
    }
}

/// Fetches the WAL from `start` on that the store lacks, older than its oldest segment of
/// `tli`, from the upstream ([`crate::upstream::backfill`]). `false` when nothing could be
/// fetched (no backfill configured, the upstream no longer has it either, or it could not be
/// asked): the relay's `58P01` stands, in PostgreSQL's words, for the segment asked for.
async fn backfill(ctx: &Context, tli: TimeLineId, start: Lsn, seg_size: u64) -> bool {
    let Some(b) = ctx.backfill() else {
        return false;
    };
    match b.fetch(tli, start.segment(seg_size)).await {
        Ok(()) => true,
        Err(BackfillError::Removed(message)) => {
            tracing::info!(%start, timeline = tli, "the upstream no longer has the WAL asked for either: {message}");
            false
        }
        Err(e) => {
            tracing::warn!(%start, timeline = tli, "could not backfill WAL from upstream: {e}");
            false
        }
    }
}

/// The file a position of `tli` is read from: the segment holding a timeline's switch point is
/// read from the next timeline's file (WalSndSegmentOpen), which exists even when the old
/// timeline's copy does not.
fn file_tli(tli: TimeLineId, historic: Option<Historic>, lsn: Lsn, seg_size: u64) -> TimeLineId {
    match historic {
        Some(h) if lsn.segment(seg_size) == h.switchpoint.segment(seg_size) => h.next_tli,
        _ => tli,
    }
}

/// `T next_tli next_tli_startpos / D / C START_STREAMING / C START_REPLICATION / Z`.
fn end_of_timeline_result(conn: &mut Conn, h: Historic) {
    backend::row_description(
        conn.out(),
        &[Column::int8("next_tli"), Column::text("next_tli_startpos")],
    );
    backend::data_row(
        conn.out(),
        &[
            Some(h.next_tli.to_string().as_bytes()),
            Some(h.switchpoint.to_string().as_bytes()),
        ],
    );
    backend::command_complete(conn.out(), "START_STREAMING");
    backend::command_complete(conn.out(), "START_REPLICATION");
    backend::ready_for_query(conn.out());
}

impl Sender {
    /// Streams until the client ends the stream (returns the reader for the command loop) or
    /// the connection ends.
    async fn stream(&mut self, conn: &mut Conn) -> Result<MsgReader<ReadHalf>, SessionEnd> {
        let mut servable_rx = self.ctx.store.subscribe_servable();
        let mut keepalive_due = Instant::now() + KEEPALIVE_INTERVAL;
        loop {
            self.reload_timeout();
            if let Some(rd) = self.after_write(conn).await? {
                return Ok(rd);
            }
            let servable: Servable = servable_rx.borrow_and_update().clone();
            // When the relay moved to a new timeline under us, ours is historic from now on.
            let bound = servable
                .bound(self.tli, self.historic)
                .map_err(|e| SessionEnd::Fatal(not_in_history(e)))?;
            self.historic = bound.historic;
            let end = bound.end;
            if let Some(h) = self.historic.filter(|h| self.sent > h.switchpoint) {
                // Past the fork by a partial record only: the downstream replayed nothing the
                // new primary lacks, so its timeline ends as usual and it follows. A whole
                // record past the fork (or no way to tell) means it must be rebuilt.
                if self
                    .ctx
                    .store
                    .holds_record_past(self.tli, h.switchpoint, self.sent)
                {
                    return Err(self.diverged(h));
                }
                return self.end_timeline(conn, h).await;
            }
            if self.sent < end {
                self.send_chunk(conn, end).await?;
                keepalive_due = Instant::now() + KEEPALIVE_INTERVAL;
                // While catching up too, as WalSndLoop: the timeout, and a ping at half of it.
                self.check_timeout()?;
                if self.ping_due().is_some_and(|p| Instant::now() >= p) {
                    self.ping_sent_at = Some(self.heard.count());
                    self.keepalive(conn, true).await?;
                }
                while let Ok(ev) = self.ev_rx.try_recv() {
                    if let Some(rd) = self.on_event(conn, ev).await? {
                        return Ok(rd);
                    }
                }
                // One message, then the other walsenders' turn (as the OS schedules
                // PostgreSQL's walsender processes). A socket that keeps accepting never makes
                // this task wait, so without it a walsender reading from the in-memory tail
                // would send many messages per turn while those behind it wait, drift further
                // behind, fall out of the tail and read the files: in the live fan-out
                // benchmark the consumers spread over 300 MiB.
                tokio::task::yield_now().await;
                continue;
            }
            if let Some(h) = self.historic.filter(|h| self.sent >= h.switchpoint) {
                return self.end_timeline(conn, h).await;
            }
            self.guard.update(|d| d.state = WalSndState::Streaming);
            // Going to wait: an output buffer grown by a large message goes back (it grows
            // again with the next one), so an idle walsender holds little memory.
            conn.shrink_idle();
            // After a ping the next wake-up is the keepalive or the timeout, never the ping
            // time again (which has passed).
            let ping_due = self.ping_due();
            let wake = ping_due.map_or(keepalive_due, |p| p.min(keepalive_due));
            let timeout_at = self.timeout.map(|t| self.heard.last() + t);
            tokio::select! {
                r = servable_rx.changed() => {
                    if r.is_err() {
                        return Err(SessionEnd::Shutdown);
                    }
                    // Lag samples carry the time new WAL became durable, not the time the
                    // failover limit released it.
                    if servable_rx.borrow().durable() != servable.durable() {
                        self.durable_at = Instant::now();
                    }
                }
                ev = self.ev_rx.recv() => {
                    let ev = ev.unwrap_or(ClientEvent::Gone(SessionEnd::ClientGone));
                    if let Some(rd) = self.on_event(conn, ev).await? {
                        return Ok(rd);
                    }
                }
                _ = tokio::time::sleep_until(wake.into()) => {
                    let now = Instant::now();
                    let ping = ping_due.is_some_and(|p| now >= p);
                    if ping {
                        self.ping_sent_at = Some(self.heard.count());
                    }
                    self.keepalive(conn, ping).await?;
                    keepalive_due = Instant::now() + KEEPALIVE_INTERVAL;
                }
                _ = sleep_until_opt(timeout_at) => self.check_timeout()?,
                // Woken to compute the waits again with the new timeout.
                () = limits_changed(&mut self.limits) => self.reload_timeout(),
                _ = self.ctx.cancel.cancelled() => return Err(SessionEnd::Shutdown),
            }
        }
    }

    /// Takes a reloaded `wal_sender_timeout`, if there is one. (Read every time, not only
    /// when the watch says it changed: [`limits_changed`] has already marked it seen.)
    fn reload_timeout(&mut self) {
        let new = self.limits.borrow_and_update().wal_sender_timeout;
        if new != self.timeout {
            tracing::debug!(old = ?self.timeout, new = ?new, "wal_sender_timeout reloaded");
            self.timeout = new;
        }
    }

    /// When to ask the client for a reply: half the timeout after it was last heard, unless
    /// that ping was sent and nothing was heard since (WalSndKeepaliveIfNecessary).
    fn ping_due(&self) -> Option<Instant> {
        let t = self.timeout?;
        let last = self.heard.last();
        if self.ping_sent_at == Some(self.heard.count()) {
            return None;
        }
        Some(last + t / 2)
    }

    /// WalSndCheckTimeOut: nothing heard from the client for `wal_sender_timeout`.
    fn check_timeout(&self) -> Result<(), SessionEnd> {
        match self.timeout {
            Some(t) if Instant::now() >= self.heard.last() + t => Err(self.replication_timeout()),
            _ => Ok(()),
        }
    }

    /// The one log line of a dropped replica (walsender.c's words), and how the session ends:
    /// the client is told nothing, the connection closes, and the registry entry, the slot and
    /// with them its xmin and apply position are released.
    fn replication_timeout(&self) -> SessionEnd {
        tracing::warn!(
            application_name = %self.application_name,
            timeout = %humantime::format_duration(self.timeout.unwrap_or_default()),
            last_heard_ms = self.heard.last().elapsed().as_millis() as u64,
            waiting_for_ping = self.ping_sent_at == Some(self.heard.count()),
            sent = %self.sent,
            "terminating walsender process due to replication timeout"
        );
        metrics::counter!("walrelay_downstream_timeouts_total").increment(1);
        SessionEnd::ReplicationTimeout
    }

    /// Sends what is queued, bounded as walsender.c bounds pending output: the replica is
    /// dropped when nothing was heard from it for `wal_sender_timeout`, or when the write made
    /// no progress for that long (a replica that stopped reading). Shutdown does not wait.
    /// Replies that came meanwhile are taken in (positions, feedback) so the client's reader is
    /// never stalled behind the write; what needs an answer of its own waits for
    /// [`Sender::after_write`].
    async fn flush(&mut self, conn: &mut Conn) -> Result<(), SessionEnd> {
        let mut progress_at = Instant::now();
        let mut left = conn.pending();
        loop {
            let deadline = self
                .timeout
                .map(|t| (self.heard.last() + t).min(progress_at + t));
            tokio::select! {
                r = conn.flush() => return Ok(r?),
                ev = self.ev_rx.recv(), if self.deferred.is_none() => {
                    match ev {
                        Some(ClientEvent::Message(m)) => self.take_in(m),
                        other => {
                            self.deferred = Some(other.unwrap_or(ClientEvent::Gone(SessionEnd::ClientGone)));
                        }
                    }
                    continue;
                }
                _ = sleep_until_opt(deadline) => {}
                () = limits_changed(&mut self.limits) => self.reload_timeout(),
                _ = self.ctx.cancel.cancelled() => return Err(SessionEnd::Shutdown),
            }
            let Some(t) = self.timeout else { continue };
            let now = Instant::now();
            let remaining = conn.pending();
            if remaining < left {
                left = remaining;
                progress_at = now;
            }
            if now >= self.heard.last() + t || now >= progress_at + t {
                return Err(self.replication_timeout());
            }
        }
    }

    /// This downstream already received WAL past the point where the new primary's history
    /// forked: it cannot follow the new timeline without a rebuild. Say so plainly, count it.
    fn diverged(&self, h: Historic) -> SessionEnd {
        let sent = self.sent;
        tracing::error!(
            timeline = self.tli,
            fork = %h.switchpoint,
            sent = %sent,
            "downstream received WAL past the fork point of the new timeline; it must be rebuilt"
        );
        self.ctx.registry.note_diverged(&self.guard, h.switchpoint);
        metrics::counter!("walrelay_downstream_divergences_total").increment(1);
        SessionEnd::Fatal(
            PgError::fatal(
                sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!(
                    "this standby received WAL up to {sent} on timeline {}, past the point {} where the new primary's timeline {} forked",
                    self.tli, h.switchpoint, h.next_tli
                ),
            )
            .with_hint("Rebuild this standby from the new primary with pg_rewind or a new base backup."),
        )
    }

    async fn send_chunk(&mut self, conn: &mut Conn, end: Lsn) -> Result<(), SessionEnd> {
        let mut chunk_end = Lsn(end.0.min(self.sent.0 + MAX_SEND));
        if chunk_end < end {
            // More is pending: cut at a page boundary, as walsender.c does.
            let page = chunk_end.page_start();
            if page > self.sent {
                chunk_end = page;
            }
        }
        let ftli = file_tli(self.tli, self.historic, self.sent, self.seg_size);
        let mut pieces = std::mem::take(&mut self.pieces);
        pieces.clear();
        let n = self
            .read(ftli, self.sent, chunk_end, &mut pieces)
            .await
            .map_err(|e| SessionEnd::Fatal(read_error(e)))?;
        if n == 0 {
            return Err(SessionEnd::Fatal(PgError::error(
                sqlstate::INTERNAL_ERROR,
                "could not read WAL",
            )));
        }
        // The header into the out buffer, the payload sent from where it is (the tail's or the
        // segment cache's memory), in one vectored write.
        encode_xlog_data_header(conn.out(), self.sent, end, n);
        for p in pieces.drain(..) {
            conn.queue(p);
        }
        self.pieces = pieces;
        let n = n as u64;
        self.flush(conn).await?;
        self.sent = Lsn(self.sent.0 + n);
        let (sent, at) = (self.sent, self.durable_at);
        self.guard.update(|d| {
            d.sent = sent;
            d.bytes_sent += n;
            d.lag.record_sent(sent, at);
        });
        metrics::counter!("walrelay_wal_sent_bytes_total").increment(n);
        Ok(())
    }

    /// Reads from the in-memory tail directly (the one place it is looked up; as many of its
    /// pieces as fit), else from the store's shared segment cache (which goes to a blocking
    /// thread only on a miss). Appends to `pieces`; returns the bytes read.
    async fn read(
        &mut self,
        tli: TimeLineId,
        lsn: Lsn,
        end: Lsn,
        pieces: &mut Vec<Bytes>,
    ) -> Result<usize, ReadError> {
        let max = (end.0 - lsn.0) as usize;
        let n = self.ctx.store.tail_read_pieces(tli, lsn, max, pieces);
        if n > 0 {
            return Ok(n);
        }
        let b = self.ctx.store.read_wal(tli, lsn, end, max).await?;
        let n = b.len();
        if n > 0 {
            pieces.push(b);
        }
        Ok(n)
    }

    async fn keepalive(
        &mut self,
        conn: &mut Conn,
        reply_requested: bool,
    ) -> Result<(), SessionEnd> {
        Keepalive {
            wal_end: self.sent,
            send_time: now_pg(),
            reply_requested,
        }
        .encode_frame(conn.out());
        self.flush(conn).await
    }

    /// A status update or hot-standby feedback: positions into the registry and the slot.
    fn take_in(&mut self, m: ClientCopyMessage) {
        match m {
            ClientCopyMessage::Status(s) => {
                self.guard.on_reply(s.write, s.flush, s.apply);
                if let Some(slot) = &self.slot {
                    slot.slots.confirm_flush(&slot.name, s.flush, self.tli);
                }
                self.reply_owed |= s.reply_requested;
            }
            ClientCopyMessage::HotStandbyFeedback(h) => {
                self.guard.update(|d| d.hs_feedback = Some(h));
            }
        }
    }

    /// What came in while a write was pending: the keepalive a reply asked for, and a
    /// deferred event (`Some(reader)` when the stream is over).
    async fn after_write(
        &mut self,
        conn: &mut Conn,
    ) -> Result<Option<MsgReader<ReadHalf>>, SessionEnd> {
        if std::mem::take(&mut self.reply_owed) {
            self.keepalive(conn, false).await?;
        }
        match self.deferred.take() {
            Some(ev) => self.on_event(conn, ev).await,
            None => Ok(None),
        }
    }

    /// Handles one event from the client; `Some(reader)` when the stream is over.
    async fn on_event(
        &mut self,
        conn: &mut Conn,
        ev: ClientEvent,
    ) -> Result<Option<MsgReader<ReadHalf>>, SessionEnd> {
        match ev {
            ClientEvent::Message(m) => {
                self.take_in(m);
                if std::mem::take(&mut self.reply_owed) {
                    self.keepalive(conn, false).await?;
                }
                Ok(None)
            }
            ClientEvent::CopyDone(rd) => {
                // Client ends the stream: CopyDone back, then the two CommandCompletes.
                backend::copy_done(conn.out());
                backend::command_complete(conn.out(), "START_STREAMING");
                backend::command_complete(conn.out(), "START_REPLICATION");
                backend::ready_for_query(conn.out());
                self.flush(conn).await?;
                Ok(Some(rd))
            }
            ClientEvent::Terminate => Err(SessionEnd::ClientGone),
            ClientEvent::Gone(e) => Err(e),
        }
    }

    /// All WAL up to the switch point is sent: CopyDone, wait for the client's CopyDone, then
    /// the next-timeline result set.
    async fn end_timeline(
        &mut self,
        conn: &mut Conn,
        h: Historic,
    ) -> Result<MsgReader<ReadHalf>, SessionEnd> {
        tracing::info!(timeline = self.tli, switchpoint = %h.switchpoint, next = h.next_tli, "end of timeline reached");
        self.guard.update(|d| d.state = WalSndState::Stopping);
        backend::copy_done(conn.out());
        self.flush(conn).await?;
        loop {
            self.reply_owed = false;
            let ev = if let Some(ev) = self.deferred.take() {
                ev
            } else {
                tokio::select! {
                ev = self.ev_rx.recv() => ev.unwrap_or(ClientEvent::Gone(SessionEnd::ClientGone)),
                _ = sleep_until_opt(self.timeout.map(|t| self.heard.last() + t)) => {
                    self.check_timeout()?;
                    continue;
                }
                () = limits_changed(&mut self.limits) => {
                    self.reload_timeout();
                    self.check_timeout()?;
                    continue;
                }
                _ = self.ctx.cancel.cancelled() => return Err(SessionEnd::Shutdown),
                }
            };
            match ev {
                ClientEvent::Message(ClientCopyMessage::Status(s)) => {
                    self.guard.on_reply(s.write, s.flush, s.apply)
                }
                ClientEvent::Message(_) => {}
                ClientEvent::CopyDone(rd) => {
                    end_of_timeline_result(conn, h);
                    self.flush(conn).await?;
                    return Ok(rd);
                }
                ClientEvent::Terminate => return Err(SessionEnd::ClientGone),
                ClientEvent::Gone(e) => return Err(e),
            }
        }
    }
}

/// Reads the client's messages during the stream and forwards them to the sender.
async fn read_replies(
    mut rd: MsgReader<ReadHalf>,
    tx: mpsc::Sender<ClientEvent>,
    heard: Arc<Heard>,
) {
    loop {
        let msg = rd.read_message().await;
        if msg.is_ok() {
            heard.touch();
        }
        let ev = match msg {
            Err(e) => ClientEvent::Gone(match e {
                WireError::Closed => SessionEnd::ClientGone,
                other => other.into(),
            }),
            Ok(msg) => match parse_frontend(msg) {
                Ok(FrontendMessage::CopyData(payload)) => match parse_client_copy(&payload) {
                    Ok(m) => ClientEvent::Message(m),
                    Err(_) => ClientEvent::Gone(SessionEnd::Fatal(PgError::fatal(
                        sqlstate::PROTOCOL_VIOLATION,
                        format!(
                            "unexpected message type \"{}\"",
                            payload.first().map(|b| char::from(*b)).unwrap_or(' ')
                        ),
                    ))),
                },
                Ok(FrontendMessage::CopyDone) => {
                    let _ = tx.send(ClientEvent::CopyDone(rd)).await;
                    return;
                }
                Ok(FrontendMessage::Terminate) => ClientEvent::Terminate,
                Ok(other) => ClientEvent::Gone(SessionEnd::Fatal(PgError::fatal(
                    sqlstate::PROTOCOL_VIOLATION,
                    format!("invalid standby message type \"{}\"", other_tag(&other)),
                ))),
                Err(e) => ClientEvent::Gone(e.into()),
            },
        };
        let last = matches!(ev, ClientEvent::Gone(_) | ClientEvent::Terminate);
        if tx.send(ev).await.is_err() || last {
            return;
        }
    }
}

/// Ends when the limits change; never, once they cannot (the context is gone).
async fn limits_changed(rx: &mut watch::Receiver<Limits>) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Sleeps until `at`, or for ever when there is no `at`.
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

fn other_tag(m: &FrontendMessage) -> char {
    match m {
        FrontendMessage::Query(_) => 'Q',
        FrontendMessage::CopyFail(_) => 'f',
        FrontendMessage::Password(_) => 'p',
        FrontendMessage::Sync => 'S',
        FrontendMessage::Flush => 'H',
        FrontendMessage::Other(t) => char::from(*t),
        _ => '?',
    }
}
