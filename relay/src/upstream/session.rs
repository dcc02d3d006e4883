//! One upstream session after another: connect, identify, make sure of the slot and history
//! files, then stream WAL into the store, following timeline switches, until an error; the
//! supervisor reconnects with backoff and jitter.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context as _};
use bytes::{Bytes, BytesMut};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn, Instrument};

use super::connection::{
    connect_kind, parse_next_timeline, Connection, CopyEvent, SessionKind, StartOutcome,
};
use super::status::UpstreamState;
use super::target::connect_any_at_least;
use crate::config::conninfo::ConnInfo;
use crate::lag::Feedback;
use crate::proto::replication::{
    now_pg, parse_server_copy, HotStandbyFeedback, ServerCopyMessage, StandbyStatus,
};
use crate::store::writer::WriterHandle;
use crate::store::{Identity, Store};
use crate::wal::history::{parse_history, switch_point, timeline_of_point, HistoryEntry};
use crate::wal::segment::parse_seg_size;
use crate::wal::{Lsn, TimeLineId};

/// How often a status update goes upstream when nothing else prompts one
/// (`wal_receiver_status_interval`).
const STATUS_INTERVAL: Duration = Duration::from_secs(10);
/// How often the aggregated hot-standby feedback of the downstreams is checked and, when it
/// changed, forwarded upstream.
const FEEDBACK_INTERVAL: Duration = Duration::from_secs(1);
/// `wal_receiver_timeout`: an upstream silent this long is gone (a silent network partition
/// would otherwise hold the session forever); at half of it the relay asks for a reply.
const RECEIVER_TIMEOUT: Duration = Duration::from_secs(60);
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub conninfo: ConnInfo,
    pub slot: Option<String>,
    pub application_name: String,
}

/// Everything a session needs.
pub struct Upstream {
    pub cfg: UpstreamConfig,
    pub store: Arc<Store>,
    pub writer: WriterHandle,
    /// What the downstreams ask to be reported upstream (apply, hot-standby feedback).
    pub feedback: Arc<dyn Feedback>,
    pub status: Arc<UpstreamState>,
}

/// Runs sessions until cancelled.
pub async fn supervise(up: Upstream, cancel: CancellationToken) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let started = Instant::now();
        let span = tracing::info_span!("upstream", upstream = %up.cfg.conninfo.redacted());
        let result = tokio::select! {
            r = session(&up).instrument(span.clone()) => r,
            _ = cancel.cancelled() => break,
        };
        up.status.update(|s| s.connected = false);
        let _enter = span.enter();
        match result {
            Ok(()) => info!("upstream session ended"),
            Err(e) => {
                error!("upstream session failed: {e:#}");
                up.status.update(|s| s.last_error = Some(format!("{e:#}")));
            }
        }
        // A session that got as far as streaming was a success: the next failure (a failover
        // soon after another) starts from the shortest wait again.
        let streamed = up
            .status
            .get()
            .connected_since
            .is_some_and(|t| t.elapsed().is_ok_and(|e| e <= started.elapsed()));
        if streamed || started.elapsed() > BACKOFF_MAX {
            backoff = BACKOFF_MIN;
        }
        // Jitter spreads the reconnects of many relays after a primary failure.
        let jitter = backoff.mul_f64(rand::random::<f64>() * 0.5);
        let wait = backoff + jitter;
        info!("reconnecting to upstream in {:.1}s", wait.as_secs_f64());
        // A span entered across an `.await` leaks onto whatever else runs on this thread while
        // the task waits (downstream lines logged as `upstream{…}:downstream{…}`).
        drop(_enter);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = cancel.cancelled() => break,
        }
        up.status.update(|s| s.reconnects += 1);
        metrics::counter!("walrelay_upstream_reconnects_total").increment(1);
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// The entries of the store's history file of `tli` (none for timeline 1, which has no file).
fn stored_history(store: &Store, tli: TimeLineId) -> anyhow::Result<Vec<HistoryEntry>> {
    Ok(store
        .history(tli)
        .map(|h| parse_history(&h))
        .transpose()?
        .unwrap_or_default())
}

fn col(rows: &[Vec<Option<String>>], i: usize) -> Option<&str> {
    rows.first()
        .and_then(|r| r.get(i))
        .and_then(|v| v.as_deref())
}

async fn session(up: &Upstream) -> anyhow::Result<()> {
    let expected = up.store.identity().map(|i| i.system_identifier);
    let relay_tli = Some(up.store.durable())
        .filter(|d| d.lsn.is_valid())
        .map(|d| d.timeline);
    let mut conn = connect_any_at_least(
        &up.cfg.conninfo,
        &up.cfg.application_name,
        expected.as_deref(),
        relay_tli,
    )
    .await
    .context("connect to upstream")?;
    let host = conn.host().clone();
    let server_version = conn.server_version().unwrap_or_default().to_string();
    info!(host = %host.host, port = host.port, server_version, "connected to upstream");

    let ident = conn
        .simple_query("IDENTIFY_SYSTEM")
        .await
        .context("IDENTIFY_SYSTEM")?;
    let sysid = col(&ident, 0)
        .ok_or_else(|| anyhow!("IDENTIFY_SYSTEM returned no system identifier"))?
        .to_string();
    let up_tli: TimeLineId = col(&ident, 1)
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| anyhow!("IDENTIFY_SYSTEM returned no timeline"))?;
    let up_pos: Lsn = col(&ident, 2)
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow!("IDENTIFY_SYSTEM returned no position"))?;
    let seg_rows = conn
        .simple_query("SHOW wal_segment_size")
        .await
        .context("SHOW wal_segment_size")?;
    let seg_size = col(&seg_rows, 0)
        .and_then(parse_seg_size)
        .ok_or_else(|| anyhow!("upstream reported an invalid wal_segment_size"))?;
    up.store
        .adopt_identity(Identity {
            system_identifier: sysid.clone(),
            seg_size,
            server_version: server_version.clone(),
        })
        .context("refusing upstream")?;
    up.status.update(|s| {
        s.host = Some(host.host.clone());
        s.port = Some(host.port);
        s.system_identifier = Some(sysid.clone());
        s.server_version = Some(server_version.clone());
        s.timeline = Some(up_tli);
        s.upstream_lsn = Some(up_pos);
    });

    let slot_existed = match &up.cfg.slot {
        Some(slot) => !ensure_slot(&mut conn, slot).await?,
        None => false,
    };
    fetch_histories(&mut conn, &up.store, up_tli).await?;

    reconcile_timelines(up, up_tli).await?;
    let durable = up.store.durable();
    let slot_start = match (&up.cfg.slot, slot_existed, durable.lsn.is_valid()) {
        (Some(slot), true, false) => {
            slot_restart(up, &mut conn, slot, &server_version, up_tli).await?
        }
        _ => None,
    };
    let (mut tli, mut start) = if durable.lsn.is_valid() {
        (durable.timeline, durable.lsn)
    } else if let Some((restart_tli, restart)) = slot_start {
        // A new store on a slot that already exists (made by the operator or the HA manager
        // before the standbys' base backups) starts where the slot holds WAL from, as
        // `pg_receivewal --slot` does: the upstream keeps that WAL for the relay, and the
        // standbys made since may need all of it.
        info!(%restart, timeline = restart_tli, "new store: starting at the upstream slot's restart_lsn");
        (restart_tli, restart.segment_start(seg_size))
    } else {
        // A new store starts at the segment holding the upstream's current position, so that
        // its first file is whole, as pg_receivewal does.
        (up_tli, up_pos.segment_start(seg_size))
    };
    loop {
        up.writer.start(tli, start).await.map_err(|e| anyhow!(e))?;
        let slot_clause = up
            .cfg
            .slot
            .as_ref()
            .map(|s| format!("SLOT \"{s}\" "))
            .unwrap_or_default();
        let cmd = format!("START_REPLICATION {slot_clause}PHYSICAL {start} TIMELINE {tli}");
        info!(%start, timeline = tli, "starting replication from upstream");
        let ended = match conn
            .start_copy_both(&cmd)
            .await
            .with_context(|| cmd.clone())?
        {
            // Our timeline ends exactly at the start point: the answer is the next timeline.
            StartOutcome::NoCopy { rows } => Some(rows),
            StartOutcome::CopyBoth => None,
        };
        let rows = match ended {
            Some(rows) => rows,
            None => {
                // START_REPLICATION accepted: the relay streams (what READY=1 waits for).
                up.status.update(|s| {
                    s.connected = true;
                    s.connected_since = Some(SystemTime::now());
                    s.stream_start_lsn = Some(start);
                    s.received_lsn = Some(start);
                    s.last_error = None;
                });
                stream(up, &mut conn, start).await?;
                // The upstream ended our timeline: it tells where the next one starts.
                conn.finish_copy()
                    .await
                    .context("read end of timeline result")?
            }
        };
        let (next, next_start) = parse_next_timeline(&rows)?;
        if next <= tli {
            bail!("upstream reported next timeline {next} after timeline {tli}");
        }
        info!(timeline = tli, next, switchpoint = %next_start, "upstream timeline ended; following");
        fetch_histories(&mut conn, &up.store, next).await?;
        up.status.update(|s| s.timeline = Some(next));
        tli = next;
        // The new timeline's copy of the switch segment starts with the old timeline's bytes;
        // streaming it from the segment start keeps the file whole.
        start = next_start.segment_start(seg_size);
    }
}

/// The upstream is on a later timeline than the relay's WAL (a failover happened while the
/// relay was away or on another server): check where the relay's timeline ends in the
/// upstream's history, and move any WAL the relay holds past that fork point aside. Such WAL
/// was never part of the new primary's history and must never be served.
async fn reconcile_timelines(up: &Upstream, up_tli: TimeLineId) -> anyhow::Result<()> {
    let durable = up.store.durable();
    if !durable.lsn.is_valid() || durable.timeline == up_tli {
        return Ok(());
    }
    if durable.timeline > up_tli {
        bail!(
            "upstream is on timeline {up_tli}, behind the relay's timeline {}; waiting for a server that has it",
            durable.timeline
        );
    }
    let history = stored_history(&up.store, up_tli)?;
    let Some((Some(fork), _next)) = switch_point(durable.timeline, up_tli, &history) else {
        bail!(
            "the relay's timeline {} is not in the history of the upstream's timeline {up_tli}",
            durable.timeline
        );
    };
    if durable.lsn > fork {
        let moved = up
            .writer
            .diverge(durable.timeline, fork)
            .await
            .map_err(|e| anyhow!(e))?;
        metrics::counter!("walrelay_diverged_wal_bytes_total").increment(moved);
        metrics::counter!("walrelay_divergences_total").increment(1);
        warn!(
            timeline = durable.timeline,
            fork = %fork,
            relay_end = %durable.lsn,
            moved_bytes = moved,
            "the relay held WAL past the new primary's fork point; moved it to diverged/ (it will never be served)"
        );
    }
    Ok(())
}

/// Creates the upstream slot if missing (reserving WAL now, so nothing the relay needs is
/// removed while it streams). Returns whether it created it.
async fn ensure_slot(conn: &mut Connection, slot: &str) -> anyhow::Result<bool> {
    let cmd = format!("CREATE_REPLICATION_SLOT \"{slot}\" PHYSICAL RESERVE_WAL");
    match conn.simple_query(&cmd).await {
        Ok(_) => {
            info!(slot, "created replication slot on upstream");
            Ok(true)
        }
        Err(e) if e.sqlstate() == Some("42710") => Ok(false),
        Err(e) => Err(anyhow::Error::new(e).context(format!("create replication slot \"{slot}\""))),
    }
}

/// The `restart_lsn` of the upstream's slot `slot` and the timeline it is on, `None` when the
/// slot holds no WAL (made without `RESERVE_WAL`, or invalidated by
/// `max_slot_wal_keep_size`). PostgreSQL 15+ answers `READ_REPLICATION_SLOT` on the
/// replication connection (with `restart_tli`); before 15 `pg_replication_slots` is read
/// through a SQL session to the same server, and the timeline is the one that holds
/// `restart_lsn` in the upstream's history (which [`fetch_histories`] has stored by now).
async fn slot_restart(
    up: &Upstream,
    conn: &mut Connection,
    slot: &str,
    server_version: &str,
    up_tli: TimeLineId,
) -> anyhow::Result<Option<(TimeLineId, Lsn)>> {
    let (restart, tli) = if server_major(server_version) >= 15 {
        let rows = conn
            .simple_query(&format!("READ_REPLICATION_SLOT \"{slot}\""))
            .await
            .with_context(|| format!("READ_REPLICATION_SLOT \"{slot}\""))?;
        let restart = col(&rows, 1)
            .map(str::parse::<Lsn>)
            .transpose()
            .map_err(|e| anyhow!("READ_REPLICATION_SLOT returned an invalid restart_lsn: {e}"))?;
        let tli = col(&rows, 2)
            .map(str::parse::<TimeLineId>)
            .transpose()
            .map_err(|e| anyhow!("READ_REPLICATION_SLOT returned an invalid restart_tli: {e}"))?;
        (restart, tli)
    } else {
        match slot_restart_sql(up, conn, slot).await {
            Ok(restart) => (restart, None),
            Err(e) => {
                // A role allowed only replication connections (pg_hba) cannot read it: the
                // store then starts at the current position, and older WAL is backfilled.
                warn!(
                    slot,
                    "could not read the upstream slot's restart_lsn from pg_replication_slots ({e:#}): a new store starts at the upstream's current position"
                );
                return Ok(None);
            }
        }
    };
    let Some(restart) = restart.filter(|l| l.is_valid()) else {
        warn!(
            slot,
            "the upstream slot holds no WAL (no restart_lsn): a new store starts at the upstream's current position"
        );
        return Ok(None);
    };
    let tli = match tli {
        Some(t) => t,
        None => timeline_of_point(restart, up_tli, &stored_history(&up.store, up_tli)?),
    };
    Ok(Some((tli, restart)))
}

/// `restart_lsn` of `slot` from `pg_replication_slots`, over a SQL session to the server `conn`
/// is connected to (PostgreSQL 13 and 14, which have no `READ_REPLICATION_SLOT`).
async fn slot_restart_sql(
    up: &Upstream,
    conn: &Connection,
    slot: &str,
) -> anyhow::Result<Option<Lsn>> {
    let host = conn.host().clone();
    let idx = up
        .cfg
        .conninfo
        .hosts
        .iter()
        .position(|h| h.host == host.host && h.port == host.port)
        .ok_or_else(|| anyhow!("upstream host {host} not in the conninfo", host = host.host))?;
    let mut sql = connect_kind(
        &up.cfg.conninfo,
        idx,
        &up.cfg.application_name,
        SessionKind::Sql,
    )
    .await
    .context("connect to upstream (SQL) to read the slot's restart_lsn")?;
    let query = format!(
        "select restart_lsn from pg_replication_slots where slot_name = '{}'",
        slot.replace('\'', "''")
    );
    let rows = sql
        .simple_query(&query)
        .await
        .context("read the slot's restart_lsn from pg_replication_slots")?;
    sql.terminate().await;
    let restart = col(&rows, 0)
        .map(str::parse::<Lsn>)
        .transpose()
        .map_err(|e| anyhow!("pg_replication_slots returned an invalid restart_lsn: {e}"))?;
    Ok(restart)
}

/// The major version of a `server_version` (`15.18 (Debian …)` → 15, `18beta1` → 18).
fn server_major(version: &str) -> u32 {
    let digits = version.bytes().take_while(u8::is_ascii_digit).count();
    version
        .get(..digits)
        .and_then(|d| d.parse().ok())
        .unwrap_or(0)
}

/// Fetches the history files of `tli`'s lineage that the store lacks.
async fn fetch_histories(
    conn: &mut Connection,
    store: &Store,
    tli: TimeLineId,
) -> anyhow::Result<()> {
    if tli <= 1 {
        return Ok(());
    }
    let content = match store.history(tli) {
        Some(c) => c,
        None => {
            let rows = conn
                .simple_query(&format!("TIMELINE_HISTORY {tli}"))
                .await
                .with_context(|| format!("TIMELINE_HISTORY {tli}"))?;
            let content = Bytes::from(col(&rows, 1).unwrap_or_default().to_string());
            parse_history(&content)
                .with_context(|| format!("history file of timeline {tli} from upstream"))?;
            store.save_history(tli, content.clone())?;
            content
        }
    };
    for entry in parse_history(&content)? {
        if entry.tli > 1 && store.history(entry.tli).is_none() {
            match conn
                .simple_query(&format!("TIMELINE_HISTORY {}", entry.tli))
                .await
            {
                Ok(rows) => {
                    let c = Bytes::from(col(&rows, 1).unwrap_or_default().to_string());
                    store.save_history(entry.tli, c)?;
                }
                Err(e) => warn!(
                    "could not fetch history of ancestor timeline {}: {e}",
                    entry.tli
                ),
            }
        }
    }
    Ok(())
}

/// Streams until the upstream ends the timeline (Ok) or something fails (Err).
async fn stream(up: &Upstream, conn: &mut Connection, start: Lsn) -> anyhow::Result<()> {
    let mut received = start;
    let mut durable_rx = up.store.subscribe();
    let mut health_rx = up.store.health();
    let mut last_status = Instant::now();
    let mut last_reported_flush = Lsn(0);
    let mut feedback_tick = tokio::time::interval(FEEDBACK_INTERVAL);
    // The first feedback message clears whatever a previous session left on the upstream.
    let mut last_feedback: Option<HotStandbyFeedback> = None;
    let mut last_feedback_at = Instant::now();
    let mut last_heard = Instant::now();
    let mut pinged = false;
    send_status(up, conn, received, false).await?;
    loop {
        let next_status = last_status + STATUS_INTERVAL;
        let ping_at = last_heard + RECEIVER_TIMEOUT / 2;
        tokio::select! {
            _ = tokio::time::sleep_until(ping_at.into()), if !pinged => {
                send_status(up, conn, received, true).await?;
                pinged = true;
            }
            _ = tokio::time::sleep_until((last_heard + RECEIVER_TIMEOUT).into()) => {
                bail!("terminating walreceiver due to timeout: nothing from upstream for {}s", RECEIVER_TIMEOUT.as_secs());
            }
            ev = conn.recv_copy() => {
                last_heard = Instant::now();
                pinged = false;
                match ev? {
                    CopyEvent::Data(payload) => match parse_server_copy(&payload)? {
                        ServerCopyMessage::XLogData(x) => {
                            if x.start != received {
                                bail!("upstream sent WAL at {} but the stream is at {received}", x.start);
                            }
                            let n = x.data.len() as u64;
                            let data = payload.slice(crate::proto::replication::XLOG_DATA_HEADER_LEN..);
                            up.writer.write(x.start, data).await.map_err(|e| anyhow!(e))?;
                            received = Lsn(received.0 + n);
                            metrics::counter!("walrelay_wal_received_bytes_total").increment(n);
                            let wal_end = x.wal_end;
                            up.status.note_upstream_end(wal_end.max(received));
                            up.status.update(|s| {
                                s.received_lsn = Some(received);
                                s.upstream_lsn = Some(wal_end.max(received));
                                s.last_message_at = Some(SystemTime::now());
                            });
                        }
                        ServerCopyMessage::Keepalive(k) => {
                            up.status.note_upstream_end(k.wal_end);
                            up.status.update(|s| {
                                s.upstream_lsn = Some(k.wal_end);
                                s.last_message_at = Some(SystemTime::now());
                            });
                            if k.reply_requested {
                                send_status(up, conn, received, false).await?;
                                last_status = Instant::now();
                            }
                        }
                    },
                    CopyEvent::Done => return Ok(()),
                    CopyEvent::CommandComplete(tag) => bail!("upstream ended the stream ({tag}): server shutting down"),
                }
            }
            r = durable_rx.changed() => {
                r.map_err(|_| anyhow!("store closed"))?;
                // Every fsync batch is reported at once: the upstream's slot and any
                // synchronous_commit waiters depend on it.
                let flush = durable_rx.borrow_and_update().lsn;
                if flush > last_reported_flush {
                    last_reported_flush = flush;
                    send_status(up, conn, received, false).await?;
                    last_status = Instant::now();
                }
            }
            r = health_rx.changed() => {
                r.map_err(|_| anyhow!("store closed"))?;
                if let Some(e) = health_rx.borrow_and_update().error.clone() {
                    bail!("WAL ingest stopped: {e}");
                }
            }
            _ = feedback_tick.tick() => {
                let f = up.feedback.min_xmin();
                if last_feedback != Some(f) || last_feedback_at.elapsed() >= STATUS_INTERVAL {
                    let mut payload = BytesMut::with_capacity(25);
                    HotStandbyFeedback { client_time: now_pg(), ..f }.encode_payload(&mut payload);
                    conn.send_copy_data(&payload).await?;
                    last_feedback = Some(f);
                    last_feedback_at = Instant::now();
                }
            }
            _ = tokio::time::sleep_until(next_status.into()) => {
                send_status(up, conn, received, false).await?;
                last_status = Instant::now();
            }
        }
    }
}

/// `r`: write = received, flush = durable, apply = the slowest replica's replay (or flush when
/// no replica reports replay).
async fn send_status(
    up: &Upstream,
    conn: &mut Connection,
    received: Lsn,
    reply_requested: bool,
) -> anyhow::Result<()> {
    let flush = up.store.durable().lsn.min(received);
    let apply = up
        .feedback
        .min_replay()
        .map(|r| r.min(flush))
        .unwrap_or(flush);
    let mut payload = BytesMut::with_capacity(34);
    StandbyStatus {
        write: received,
        flush,
        apply,
        client_time: now_pg(),
        reply_requested,
    }
    .encode_payload(&mut payload);
    conn.send_copy_data(&payload).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::server_major;

    #[test]
    fn server_major_of_versions() {
        assert_eq!(server_major("15.18 (Debian 15.18-0+deb12u1)"), 15);
        assert_eq!(server_major("14.24"), 14);
        assert_eq!(server_major("18beta1"), 18);
        assert_eq!(server_major(""), 0);
    }
}
