//! The walsender registry: one entry per connected downstream, with its positions and lag
//! samples. Walsenders write it (`downstream/`); `/status` and `/metrics` read it (`http/`);
//! the upstream session reads only the two minima it forwards, through [`Feedback`].
//!
//! It lives beside the data flow, not in it, so that `upstream/`, `downstream/` and `http/` all
//! reach it without importing each other. Entries are removed by an RAII guard when the session
//! ends, whatever way it ends.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use super::feedback::Feedback;
use super::tracker::{LagTracker, Stage};
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

/// One downstream connection as the relay reports it.
#[derive(Debug, Clone)]
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
}

/// A registry entry: the reported fields and the session's lag samples.
#[derive(Debug)]
pub struct Entry {
    pub d: Downstream,
    pub lag: LagTracker,
}

impl std::ops::Deref for Entry {
    type Target = Downstream;
    fn deref(&self) -> &Downstream {
        &self.d
    }
}

impl std::ops::DerefMut for Entry {
    fn deref_mut(&mut self) -> &mut Downstream {
        &mut self.d
    }
}

/// A copy of an entry for reporting, with the lags measured so far (seconds).
#[derive(Debug, Clone)]
pub struct DownstreamSnapshot {
    pub d: Downstream,
    pub write_lag: Option<f64>,
    pub flush_lag: Option<f64>,
    pub replay_lag: Option<f64>,
}

impl std::ops::Deref for DownstreamSnapshot {
    type Target = Downstream;
    fn deref(&self) -> &Downstream {
        &self.d
    }
}

/// A downstream that received WAL past a fork point (it must be rebuilt).
#[derive(Debug, Clone)]
pub struct DivergedDownstream {
    pub application_name: String,
    pub client_addr: SocketAddr,
    pub sent: Lsn,
    pub fork: Lsn,
    pub at: SystemTime,
}

/// How many diverged downstreams are remembered for `/status`.
const DIVERGED_KEPT: usize = 100;

#[derive(Default)]
pub struct Registry {
    inner: Mutex<BTreeMap<i32, Entry>>,
    diverged: Mutex<Vec<DivergedDownstream>>,
}

/// Removes its entry when dropped.
pub struct RegistryGuard {
    registry: Arc<Registry>,
    pid: i32,
}

impl RegistryGuard {
    pub fn update(&self, f: impl FnOnce(&mut Entry)) {
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
    pub fn register(self: &Arc<Self>, d: Downstream) -> RegistryGuard {
        let pid = d.pid;
        if let Ok(mut m) = self.inner.lock() {
            m.insert(
                pid,
                Entry {
                    d,
                    lag: LagTracker::default(),
                },
            );
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
            .map(|e| DownstreamSnapshot {
                d: e.d.clone(),
                write_lag: e.lag.lag(Stage::Write).map(|l| l.as_secs_f64()),
                flush_lag: e.lag.lag(Stage::Flush).map(|l| l.as_secs_f64()),
                replay_lag: e.lag.lag(Stage::Replay).map(|l| l.as_secs_f64()),
            })
            .collect()
    }

    /// Records that the session behind `guard` got WAL past the fork at `fork`.
    pub fn note_diverged(&self, guard: &RegistryGuard, fork: Lsn) {
        let entry = self.inner.lock().ok().and_then(|m| {
            m.get(&guard.pid).map(|d| DivergedDownstream {
                application_name: d.application_name.clone(),
                client_addr: d.client_addr,
                sent: d.sent,
                fork,
                at: SystemTime::now(),
            })
        });
        if let (Some(e), Ok(mut v)) = (entry, self.diverged.lock()) {
            v.retain(|o| {
                o.application_name != e.application_name || o.client_addr.ip() != e.client_addr.ip()
            });
            v.push(e);
            if v.len() > DIVERGED_KEPT {
                v.remove(0);
            }
        }
    }

    pub fn diverged(&self) -> Vec<DivergedDownstream> {
        self.diverged.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl Feedback for Registry {
    /// The lowest replay position among streaming downstreams that report one (pg_receivewal
    /// reports 0/0 and must not drag it down). `None` when nobody reports replay.
    fn min_replay(&self) -> Option<Lsn> {
        let m = self.inner.lock().ok()?;
        m.values()
            .filter(|d| d.replay.is_valid())
            .map(|d| d.replay)
            .min()
    }

    /// The oldest xmin and catalog_xmin any downstream asks to keep (hot_standby_feedback),
    /// compared with their epochs; zero where nobody asks. What a cascading standby forwards.
    fn min_xmin(&self) -> HotStandbyFeedback {
        let Ok(m) = self.inner.lock() else {
            return HotStandbyFeedback::default();
        };
        let full = |xid: u32, epoch: u32| ((epoch as u64) << 32) | xid as u64;
        let mut xmin: Option<u64> = None;
        let mut catalog: Option<u64> = None;
        for f in m.values().filter_map(|d| d.hs_feedback) {
            if f.xmin != 0 {
                let x = full(f.xmin, f.xmin_epoch);
                xmin = Some(xmin.map_or(x, |c| c.min(x)));
            }
            if f.catalog_xmin != 0 {
                let x = full(f.catalog_xmin, f.catalog_xmin_epoch);
                catalog = Some(catalog.map_or(x, |c| c.min(x)));
            }
        }
        let split = |v: Option<u64>| v.map(|v| (v as u32, (v >> 32) as u32)).unwrap_or((0, 0));
        let (xmin, xmin_epoch) = split(xmin);
        let (catalog_xmin, catalog_xmin_epoch) = split(catalog);
        HotStandbyFeedback {
            client_time: 0,
            xmin,
            xmin_epoch,
            catalog_xmin,
            catalog_xmin_epoch,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(pid: i32, replay: u64, fb: Option<(u32, u32)>) -> Downstream {
        Downstream {
            pid,
            application_name: format!("s{pid}"),
            user: "u".into(),
            client_addr: "127.0.0.1:1".parse().unwrap(),
            connected_at: SystemTime::now(),
            state: WalSndState::Streaming,
            timeline: Some(1),
            slot_name: None,
            sent: Lsn(0),
            write: Lsn(0),
            flush: Lsn(0),
            replay: Lsn(replay),
            reply_time: None,
            bytes_sent: 0,
            hs_feedback: fb.map(|(xmin, epoch)| HotStandbyFeedback {
                client_time: 0,
                xmin,
                xmin_epoch: epoch,
                catalog_xmin: 0,
                catalog_xmin_epoch: 0,
            }),
        }
    }

    #[test]
    fn aggregates_replay_and_feedback() {
        let r = Arc::new(Registry::default());
        let a = r.register(entry(1, 0x500, Some((700, 1))));
        // pg_receivewal-like: replay 0/0, no feedback; must not drag anything down.
        let _b = r.register(entry(2, 0, None));
        let c = r.register(entry(3, 0x300, Some((4_000_000_000, 0))));
        assert_eq!(r.min_replay(), Some(Lsn(0x300)));
        // Epoch 0 with a big xid is older than epoch 1 with a small one.
        let f = r.min_xmin();
        assert_eq!((f.xmin, f.xmin_epoch), (4_000_000_000, 0));
        drop(c);
        assert_eq!(r.min_replay(), Some(Lsn(0x500)));
        assert_eq!(r.min_xmin().xmin, 700);
        drop(a);
        assert_eq!(r.min_replay(), None);
        assert_eq!(r.min_xmin(), HotStandbyFeedback::default());
    }
}
