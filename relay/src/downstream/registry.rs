//! The walsender registry: one entry per connected downstream, what `/status`, `/metrics` and
//! the upstream feedback read. Entries are removed by an RAII guard when the session ends,
//! whatever way it ends.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use crate::lag::{LagTracker, Stage};
use crate::proto::replication::HotStandbyFeedback;
use crate::wal::{Lsn, TimeLineId};

/// `pg_stat_replication.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalSndState {
    Startup,
    Catchup,
    Streaming,
    Stopping,
}

impl WalSndState {
    pub fn as_str(self) -> &'static str {
        match self {
            WalSndState::Startup => "startup",
            WalSndState::Catchup => "catchup",
            WalSndState::Streaming => "streaming",
            WalSndState::Stopping => "stopping",
        }
    }
}

/// One downstream connection as the relay sees it.
#[derive(Debug)]
pub struct Downstream {
    pub pid: i32,
    pub application_name: String,
    pub user: String,
    pub client_addr: SocketAddr,
    pub connected_at: SystemTime,
    pub state: WalSndState,
    pub timeline: Option<TimeLineId>,
    pub slot_name: Option<String>,
    pub sent: Lsn,
    pub write: Lsn,
    pub flush: Lsn,
    pub replay: Lsn,
    pub reply_time: Option<SystemTime>,
    pub bytes_sent: u64,
    pub hs_feedback: Option<HotStandbyFeedback>,
    pub lag: LagTracker,
}

/// A copy of an entry for reporting.
#[derive(Debug, Clone)]
pub struct DownstreamSnapshot {
    pub pid: i32,
    pub application_name: String,
    pub user: String,
    pub client_addr: SocketAddr,
    pub connected_at: SystemTime,
    pub state: WalSndState,
    pub timeline: Option<TimeLineId>,
    pub slot_name: Option<String>,
    pub sent: Lsn,
    pub write: Lsn,
    pub flush: Lsn,
    pub replay: Lsn,
    pub reply_time: Option<SystemTime>,
    pub bytes_sent: u64,
    pub write_lag: Option<f64>,
    pub flush_lag: Option<f64>,
    pub replay_lag: Option<f64>,
}

#[derive(Default)]
pub struct Registry {
    inner: Mutex<BTreeMap<i32, Downstream>>,
}

/// Removes its entry when dropped.
pub struct RegistryGuard {
    registry: Arc<Registry>,
    pid: i32,
}

impl RegistryGuard {
    pub fn update(&self, f: impl FnOnce(&mut Downstream)) {
        if let Ok(mut m) = self.registry.inner.lock() {
            if let Some(d) = m.get_mut(&self.pid) {
                f(d);
            }
        }
    }

    /// Records a standby status update; returns nothing, the lags land in the entry.
    pub fn on_reply(&self, write: Lsn, flush: Lsn, replay: Lsn) {
        let now = Instant::now();
        self.update(|d| {
            d.write = write;
            d.flush = flush;
            d.replay = replay;
            d.reply_time = Some(SystemTime::now());
            let sent = d.sent;
            d.lag.on_reply(write, flush, replay, sent, now);
        });
    }
}

impl Drop for RegistryGuard {
    fn drop(&mut self) {
        if let Ok(mut m) = self.registry.inner.lock() {
            m.remove(&self.pid);
        }
    }
}

impl Registry {
    pub fn register(self: &Arc<Self>, entry: Downstream) -> RegistryGuard {
        let pid = entry.pid;
        if let Ok(mut m) = self.inner.lock() {
            m.insert(pid, entry);
        }
        RegistryGuard {
            registry: self.clone(),
            pid,
        }
    }

    pub fn snapshot(&self) -> Vec<DownstreamSnapshot> {
        let Ok(m) = self.inner.lock() else {
            return Vec::new();
        };
        m.values()
            .map(|d| DownstreamSnapshot {
                pid: d.pid,
                application_name: d.application_name.clone(),
                user: d.user.clone(),
                client_addr: d.client_addr,
                connected_at: d.connected_at,
                state: d.state,
                timeline: d.timeline,
                slot_name: d.slot_name.clone(),
                sent: d.sent,
                write: d.write,
                flush: d.flush,
                replay: d.replay,
                reply_time: d.reply_time,
                bytes_sent: d.bytes_sent,
                write_lag: d.lag.lag(Stage::Write).map(|l| l.as_secs_f64()),
                flush_lag: d.lag.lag(Stage::Flush).map(|l| l.as_secs_f64()),
                replay_lag: d.lag.lag(Stage::Replay).map(|l| l.as_secs_f64()),
            })
            .collect()
    }

    /// The lowest replay position among streaming downstreams that report one (pg_receivewal
    /// reports 0/0 and must not drag it down). `None` when nobody reports replay.
    pub fn min_replay(&self) -> Option<Lsn> {
        let m = self.inner.lock().ok()?;
        m.values()
            .filter(|d| d.replay.is_valid())
            .map(|d| d.replay)
            .min()
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
