//! What the upstream side reports about itself (for `/status`, `/metrics`, `/readyz`).

use std::sync::Mutex;
use std::time::SystemTime;

use crate::wal::{Lsn, TimeLineId};

#[derive(Debug, Clone, Default)]
pub struct UpstreamStatus {
    pub host: Option<String>,
    pub port: Option<u16>,
    /// Streaming (inside START_REPLICATION) right now.
    pub connected: bool,
    pub timeline: Option<TimeLineId>,
    pub system_identifier: Option<String>,
    pub server_version: Option<String>,
    /// End of the WAL received from upstream (not necessarily durable yet).
    pub received_lsn: Option<Lsn>,
    /// The upstream's own WAL end, from its `w` and `k` messages.
    pub upstream_lsn: Option<Lsn>,
    /// Where the current (or last) START_REPLICATION began.
    pub stream_start_lsn: Option<Lsn>,
    pub last_message_at: Option<SystemTime>,
    pub connected_since: Option<SystemTime>,
    pub reconnects: u64,
    pub last_error: Option<String>,
}

/// Shared, lock-protected status; updated by the upstream task only.
#[derive(Default)]
pub struct UpstreamState(Mutex<UpstreamStatus>);

impl UpstreamState {
    pub fn update(&self, f: impl FnOnce(&mut UpstreamStatus)) {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g);
    }

    pub fn get(&self) -> UpstreamStatus {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
