//! Backfill: WAL older than the store's oldest segment, fetched from the upstream on a second
//! replication connection when a downstream asks for it (a standby restored from an older base
//! backup, a relay whose disk was replaced).
//!
//! Owns: that second connection. It connects as the relay does (same conninfo, the store's
//! system identifier required), without the relay's slot (the main session holds it), runs
//! `START_REPLICATION PHYSICAL <segment start> TIMELINE <tli>`, gathers whole segments and
//! stages each ([`Staging`]: validated, written whole and fsynced) up to the store's oldest
//! segment, closes, and has the staged segments put in place.
//!
//! Invariants:
//! - One backfill at a time ([`Backfiller::fetch`] holds a lock); a downstream that waited
//!   for another's backfill finds the segments there and fetches nothing.
//! - Only whole segments are stored, and only all of them at once, contiguous with the store
//!   (the last one ends where the store's oldest begins); a stream that ends or fails half-way
//!   stores nothing.
//! - When the upstream no longer has the WAL either, the error carries its `58P01`, so the
//!   downstream gets PostgreSQL's answer.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::Mutex;
use tracing::info;

use super::connection::{Connection, CopyEvent, StartOutcome};
use super::error::UpstreamError;
use super::target::connect_any;
use crate::config::conninfo::ConnInfo;
use crate::proto::replication::{now_pg, parse_server_copy, ServerCopyMessage, StandbyStatus};
use crate::store::backfill::{oldest_segment, BackfillStoreError, Staging};
use crate::store::fs::SegmentId;
use crate::store::Store;
use crate::wal::{Lsn, TimeLineId};

/// Silence from the upstream this long ends a backfill (`wal_receiver_timeout`).
const RECEIVER_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    /// The upstream does not have the WAL either (its `58P01`, in its words).
    #[error("upstream: {0}")]
    Removed(String),
    #[error("backfill from upstream: {0}")]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Store(#[from] BackfillStoreError),
    #[error("backfill: {0}")]
    Protocol(String),
}

/// Fetches older segments from the upstream; shared by every walsender.
pub struct Backfiller {
    conninfo: ConnInfo,
    application_name: String,
    store: Arc<Store>,
    lock: Mutex<()>,
}

impl Backfiller {
    pub fn new(conninfo: ConnInfo, application_name: String, store: Arc<Store>) -> Self {
        Backfiller {
            conninfo,
            application_name,
            store,
            lock: Mutex::new(()),
        }
    }

    /// Makes the store hold timeline `tli` from segment `from` on, contiguous with what it
    /// has: fetches segments `from..oldest` from the upstream, where `oldest` is the store's
    /// oldest segment of `tli`. Nothing to do when the store has none of `tli` (there is no
    /// end to backfill up to) or already holds `from`.
    pub async fn fetch(&self, tli: TimeLineId, from: u64) -> Result<(), BackfillError> {
        let _one_at_a_time = self.lock.lock().await;
        let Some(id) = self.store.identity() else {
            return Ok(());
        };
        let seg_size = id.seg_size;
        let io = |e: std::io::Error| BackfillStoreError::Io {
            name: "wal/".into(),
            source: e,
        };
        let oldest = match oldest_segment(&self.store, tli).map_err(io)? {
            Some(o) if from < o => o,
            _ => return Ok(()),
        };
        let start = SegmentId::new(tli, from, seg_size).start();
        let until = SegmentId::new(tli, oldest, seg_size).start();
        info!(timeline = tli, %start, %until, "backfilling WAL older than the store's oldest segment from upstream");
        let mut conn = connect_any(
            &self.conninfo,
            &self.application_name,
            Some(&id.system_identifier),
        )
        .await?;
        let cmd = format!("START_REPLICATION PHYSICAL {start} TIMELINE {tli}");
        let store = self.store.clone();
        let staging = blocking(move || Staging::new(&store, tli, oldest)).await??;
        let result = match conn.start_copy_both(&cmd).await {
            Ok(StartOutcome::CopyBoth) => receive(&mut conn, staging, start, until, seg_size).await,
            Ok(StartOutcome::NoCopy { .. }) => Err(BackfillError::Protocol(format!(
                "the upstream's timeline {tli} ends at {start}"
            ))),
            Err(e) => Err(removed_or(e)),
        };
        conn.terminate().await;
        let staging = result?;
        let store = self.store.clone();
        let n = blocking(move || staging.install(&store)).await??;
        info!(timeline = tli, %start, %until, segments = n, "backfill done");
        Ok(())
    }
}

/// Runs blocking file work off the runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, BackfillError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BackfillError::Protocol(format!("backfill file work failed: {e}")))
}

/// Receives `start..until` and stages it segment by segment.
async fn receive(
    conn: &mut Connection,
    mut staging: Staging,
    start: Lsn,
    until: Lsn,
    seg_size: u64,
) -> Result<Staging, BackfillError> {
    let mut pos = start;
    let mut buf = BytesMut::with_capacity(usize::try_from(seg_size).unwrap_or(16 << 20));
    while pos < until {
        let ev = tokio::time::timeout(RECEIVER_TIMEOUT, conn.recv_copy())
            .await
            .map_err(|_| {
                BackfillError::Protocol(format!(
                    "nothing from upstream for {}s",
                    RECEIVER_TIMEOUT.as_secs()
                ))
            })?
            .map_err(removed_or)?;
        let payload = match ev {
            CopyEvent::Data(p) => p,
            CopyEvent::Done | CopyEvent::CommandComplete(_) => {
                return Err(BackfillError::Protocol(format!(
                    "the upstream ended the stream at {pos}, before {until}"
                )))
            }
        };
        match parse_server_copy(&payload).map_err(|e| BackfillError::Protocol(e.to_string()))? {
            ServerCopyMessage::XLogData(x) => {
                if x.start != pos {
                    return Err(BackfillError::Protocol(format!(
                        "upstream sent WAL at {} but the stream is at {pos}",
                        x.start
                    )));
                }
                let mut data = x.data;
                while !data.is_empty() && pos < until {
                    let room = seg_size - pos.segment_offset(seg_size);
                    let room = room.min(until.0 - pos.0);
                    let n = usize::try_from(room).unwrap_or(usize::MAX).min(data.len());
                    let (now, rest) = data.split_at(n);
                    buf.extend_from_slice(now);
                    pos = Lsn(pos.0 + n as u64);
                    data = rest;
                    if pos.segment_offset(seg_size) == 0 {
                        let segno = pos.0 / seg_size - 1;
                        let whole = buf.split().freeze();
                        let (back, r) = blocking(move || {
                            let r = staging.stage(segno, &whole);
                            (staging, r)
                        })
                        .await?;
                        staging = back;
                        r?;
                    }
                }
            }
            ServerCopyMessage::Keepalive(k) => {
                if k.reply_requested {
                    let mut payload = BytesMut::with_capacity(34);
                    StandbyStatus {
                        write: pos,
                        flush: pos,
                        apply: pos,
                        client_time: now_pg(),
                        reply_requested: false,
                    }
                    .encode_payload(&mut payload);
                    conn.send_copy_data(&payload).await?;
                }
            }
        }
    }
    Ok(staging)
}

/// The upstream's `58P01` as [`BackfillError::Removed`]; any other error as it is.
fn removed_or(e: UpstreamError) -> BackfillError {
    match e {
        UpstreamError::Server(s) if s.code == "58P01" => BackfillError::Removed(s.message),
        e => BackfillError::Upstream(e),
    }
}
