//! What the upstream side reports about itself (for `/status`, `/metrics`, `/readyz`).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use tokio::sync::watch;

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
pub struct UpstreamState {
    status: Mutex<UpstreamStatus>,
    /// When each new upstream WAL end was first seen: the upstream lag in seconds is how long
    /// ago the oldest end the relay has not made durable yet was seen.
    ends: Mutex<VecDeque<(Lsn, Instant)>>,
    /// Marked on every [`UpstreamState::update`], for those that follow the status as it changes
    /// (the systemd readiness and `STATUS=` task).
    changed: watch::Sender<()>,
}

impl Default for UpstreamState {
    fn default() -> Self {
        UpstreamState {
            status: Mutex::default(),
            ends: Mutex::default(),
            changed: watch::channel(()).0,
        }
    }
}

/// Upstream ends remembered for the time lag (older ones merge into the newest).
const ENDS_KEPT: usize = 4096;

impl UpstreamState {
    /// Records the upstream's WAL end from a `w` or `k` message.
    pub fn note_upstream_end(&self, end: Lsn) {
        let mut ends = self.ends.lock().unwrap_or_else(|e| e.into_inner());
        if ends.back().is_some_and(|(l, _)| *l >= end) {
            return;
        }
        if ends.len() >= ENDS_KEPT {
            ends.pop_back();
        }
        ends.push_back((end, Instant::now()));
    }

    /// Seconds since the relay learned of upstream WAL it has not made durable yet (0 when it
    /// has everything it knows of).
    pub fn lag_seconds(&self, durable: Lsn) -> f64 {
        let mut ends = self.ends.lock().unwrap_or_else(|e| e.into_inner());
        while ends.front().is_some_and(|(l, _)| *l <= durable) {
            ends.pop_front();
        }
        ends.front()
            .map(|(_, t)| t.elapsed().as_secs_f64())
            .unwrap_or(0.0)
    }

    pub fn update(&self, f: impl FnOnce(&mut UpstreamStatus)) {
        {
            let mut g = self.status.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut g);
        }
        self.changed.send_replace(());
    }

    /// A receiver marked changed after every [`UpstreamState::update`].
    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.changed.subscribe()
    }

    pub fn get(&self) -> UpstreamStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
