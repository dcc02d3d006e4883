//! The `/status` document. Keys are part of the brief's contract: extend, never rename.

use serde::Serialize;

use super::{Disk, HttpState};
use crate::wal::{Lsn, TimeLineId};

#[derive(Debug, Serialize)]
pub struct Status {
    pub upstream: UpstreamJson,
    pub downstreams: Vec<DownstreamJson>,
    /// Downstreams that received WAL past a fork point and must be rebuilt.
    pub diverged_downstreams: Vec<DivergedJson>,
    /// `--failover-standby` state (null when not configured).
    pub failover: Option<crate::failover::FailoverStatus>,
    /// What the store takes on disk.
    pub store: StoreJson,
    /// Replication slots on the relay, persistent and temporary, in name order.
    pub slots: Vec<SlotJson>,
}

/// The store on disk: the same figures as the `walrelay_wal_*` and `walrelay_data_dir_*`
/// gauges; a figure that could not be read is null.
#[derive(Debug, Serialize)]
pub struct StoreJson {
    /// The end of what walsenders may send (durable, within the failover limit): what
    /// `IDENTIFY_SYSTEM` reports and what slots' retained bytes are measured against.
    pub servable_lsn: Option<Lsn>,
    pub wal_segments: Option<u64>,
    pub wal_stored_bytes: Option<u64>,
    pub data_dir_free_bytes: Option<u64>,
    pub data_dir_size_bytes: Option<u64>,
}

/// One relay-side slot, shaped like `pg_replication_slots`.
#[derive(Debug, Serialize)]
pub struct SlotJson {
    pub slot_name: String,
    pub temporary: bool,
    pub active_pid: Option<i32>,
    pub restart_lsn: Option<Lsn>,
    pub invalidation_reason: Option<String>,
    /// `servable_lsn − restart_lsn`: WAL kept for this slot (0 without a restart_lsn).
    pub retained_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct DivergedJson {
    pub application_name: String,
    pub client_addr: String,
    pub sent_lsn: Lsn,
    pub fork_lsn: Lsn,
}

#[derive(Debug, Serialize)]
pub struct UpstreamJson {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub connected: bool,
    pub timeline: Option<TimeLineId>,
    pub system_identifier: Option<String>,
    pub server_version: Option<String>,
    pub received_lsn: Option<Lsn>,
    pub flushed_lsn: Option<Lsn>,
    pub upstream_lsn: Option<Lsn>,
    pub lag_bytes: Option<u64>,
    /// How long ago the relay learned of upstream WAL it has not made durable yet.
    pub lag_seconds: f64,
    pub stream_start_lsn: Option<Lsn>,
    pub reconnects: u64,
    pub last_error: Option<String>,
    pub ingest_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct DownstreamJson {
    pub pid: i32,
    pub application_name: String,
    pub usename: String,
    pub client_addr: String,
    pub client_port: u16,
    pub state: &'static str,
    pub timeline: Option<TimeLineId>,
    pub slot_name: Option<String>,
    pub sent_lsn: Lsn,
    pub write_lsn: Lsn,
    pub flush_lsn: Lsn,
    pub replay_lsn: Lsn,
    pub write_lag_seconds: Option<f64>,
    pub flush_lag_seconds: Option<f64>,
    pub replay_lag_seconds: Option<f64>,
    pub sent_lag_bytes: u64,
    /// Null for a client that reports no replay position (pg_receivewal sends 0/0).
    pub replay_lag_bytes: Option<u64>,
    pub bytes_sent: u64,
    /// Seconds since the Unix epoch when the session started.
    pub backend_start: f64,
}

pub fn build(s: &HttpState, disk: &Disk) -> Status {
    let up = s.upstream.get();
    let durable = s.store.durable();
    let identity = s.store.identity();
    let ingest_error = s.store.health().borrow().error.clone();
    let upstream = UpstreamJson {
        host: up.host,
        port: up.port,
        connected: up.connected,
        timeline: up
            .timeline
            .or((durable.timeline > 0).then_some(durable.timeline)),
        system_identifier: up
            .system_identifier
            .or_else(|| identity.as_ref().map(|i| i.system_identifier.clone())),
        server_version: up
            .server_version
            .or_else(|| identity.as_ref().map(|i| i.server_version.clone())),
        received_lsn: up.received_lsn,
        flushed_lsn: durable.lsn.is_valid().then_some(durable.lsn),
        upstream_lsn: up.upstream_lsn,
        lag_bytes: up.upstream_lsn.map(|u| u.saturating_sub(durable.lsn)),
        lag_seconds: s.upstream.lag_seconds(durable.lsn),
        stream_start_lsn: up.stream_start_lsn,
        reconnects: up.reconnects,
        last_error: up.last_error,
        ingest_error,
    };
    let downstreams = s
        .registry
        .snapshot()
        .into_iter()
        .map(|snap| {
            let d = snap.d;
            DownstreamJson {
                pid: d.pid,
                application_name: d.application_name,
                usename: d.user,
                client_addr: d.client_addr.ip().to_string(),
                client_port: d.client_addr.port(),
                state: d.state.as_str(),
                timeline: d.timeline,
                slot_name: d.slot_name,
                sent_lsn: d.sent,
                write_lsn: d.write,
                flush_lsn: d.flush,
                replay_lsn: d.replay,
                write_lag_seconds: snap.write_lag,
                flush_lag_seconds: snap.flush_lag,
                replay_lag_seconds: snap.replay_lag,
                sent_lag_bytes: durable.lsn.saturating_sub(d.sent),
                replay_lag_bytes: d
                    .replay
                    .is_valid()
                    .then(|| durable.lsn.saturating_sub(d.replay)),
                bytes_sent: d.bytes_sent,
                backend_start: d
                    .connected_at
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|t| t.as_secs_f64())
                    .unwrap_or(0.0),
            }
        })
        .collect();
    let diverged_downstreams = s
        .registry
        .diverged()
        .into_iter()
        .map(|d| DivergedJson {
            application_name: d.application_name,
            client_addr: d.client_addr.ip().to_string(),
            sent_lsn: d.sent,
            fork_lsn: d.fork,
        })
        .collect();
    let servable = s.store.servable().end().lsn;
    let store = StoreJson {
        servable_lsn: servable.is_valid().then_some(servable),
        wal_segments: disk.wal.map(|w| w.segments),
        wal_stored_bytes: disk.wal.map(|w| w.bytes),
        data_dir_free_bytes: disk.space.map(|d| d.free),
        data_dir_size_bytes: disk.space.map(|d| d.size),
    };
    let slots = s
        .store
        .slot_retention(servable)
        .into_iter()
        .map(|r| SlotJson {
            slot_name: r.slot.slot_name,
            temporary: r.slot.temporary,
            active_pid: r.slot.active_pid,
            restart_lsn: r.slot.restart_lsn,
            invalidation_reason: r.slot.invalidation_reason,
            retained_bytes: r.retained_bytes,
        })
        .collect();
    Status {
        upstream,
        downstreams,
        diverged_downstreams,
        failover: s.failover_status(),
        store,
        slots,
    }
}
