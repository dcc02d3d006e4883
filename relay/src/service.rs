//! Running under systemd (`Type=notify`): `READY=1` once the relay streams from its upstream
//! and serves, `STATUS=` lines that say what it is doing, and `WATCHDOG=1` pings tied to the
//! progress of the WAL writer thread and the downstream accept loop.
//!
//! Every notification is best effort: without `NOTIFY_SOCKET` (not under systemd) `sd_notify`
//! does nothing, and a failed send is never a reason to stop relaying WAL.
//!
//! Readiness: the listeners are bound before any task starts (`app.rs`), so the one condition
//! left is the upstream session's first accepted `START_REPLICATION`
//! ([`crate::upstream::UpstreamStatus::connected`]). `READY=1` is sent once; afterwards only
//! `STATUS=` follows the upstream (reconnecting, streaming again, holding for a failover
//! candidate).
//!
//! Watchdog (`WatchdogSec=`, systemd sets `WATCHDOG_USEC`): every half interval the task asks
//! the writer thread and the accept loop for a heartbeat (a probe each answers when it gets to
//! it) and pings only if both answered the previous probe. An idle primary costs nothing: the
//! writer answers a probe at once when it has nothing queued. A writer blocked in a write or an
//! fsync (a frozen disk) answers no probe, so the pings stop and systemd restarts the relay. A
//! disk that fails outright is not a wedge: the writer reports the error (`/readyz`, `STATUS=`)
//! and keeps answering.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::failover::{FailoverStatus, HoldState};
use crate::store::writer::WriterHandle;
use crate::upstream::{UpstreamState, UpstreamStatus};

/// How long a `STATUS=` text may be (systemd shows one line).
const STATUS_MAX: usize = 200;
/// Status changes arrive with every upstream message; the task looks at most this often.
const DEBOUNCE: Duration = Duration::from_millis(100);
/// Changes that arrive without an upstream update (the failover watcher's) are seen this often.
const POLL: Duration = Duration::from_secs(1);

fn notify(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::debug!("sd_notify failed: {e}");
    }
}

/// `STATUS=…` on its own.
pub fn notify_status(text: &str) {
    notify(&[sd_notify::NotifyState::Status(text)]);
}

/// `STOPPING=1` with a status line.
pub fn notify_stopping() {
    notify(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status("stopping"),
    ]);
}

/// One line for `STATUS=`: what the relay is doing now.
pub fn status_line(up: &UpstreamStatus, failover: Option<&FailoverStatus>) -> String {
    let mut line = if up.connected {
        let host = up.host.as_deref().unwrap_or("?");
        let port = up.port.map(|p| p.to_string()).unwrap_or_else(|| "?".into());
        let tli = up
            .timeline
            .map(|t| t.to_string())
            .unwrap_or_else(|| "?".into());
        format!("streaming from {host}:{port} on timeline {tli}")
    } else if let Some(e) = &up.last_error {
        format!("reconnecting to upstream: {e}")
    } else {
        "connecting to upstream".to_string()
    };
    if let Some(f) = failover.filter(|f| f.holding) {
        let missing: Vec<&str> = f
            .standbys
            .iter()
            .filter(|c| c.state.state == HoldState::Missing)
            .map(|c| c.application_name.as_str())
            .collect();
        line.push_str("; holding: waiting for failover candidate ");
        line.push_str(&missing.join(", "));
    }
    one_line(&line)
}

/// `text` fit for one `KEY=value` line: no newlines, at most [`STATUS_MAX`] bytes.
fn one_line(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > STATUS_MAX {
        let mut end = STATUS_MAX;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
        out.push('…');
    }
    out
}

/// Follows the upstream status: `READY=1` (with its `STATUS=`) the first time the relay
/// streams, then a `STATUS=` line whenever what it does changes. Ends when cancelled.
pub async fn readiness(
    upstream: Arc<UpstreamState>,
    failover: Option<Arc<Mutex<FailoverStatus>>>,
    cancel: CancellationToken,
) {
    let mut changed = upstream.subscribe();
    let mut poll = tokio::time::interval(POLL);
    let mut ready = false;
    let mut last = String::new();
    loop {
        let st = upstream.get();
        let fo = failover
            .as_ref()
            .map(|f| f.lock().unwrap_or_else(|e| e.into_inner()).clone());
        let line = status_line(&st, fo.as_ref());
        if !ready && st.connected {
            ready = true;
            tracing::info!(status = %line, "ready: streaming from upstream and serving");
            notify(&[
                sd_notify::NotifyState::Ready,
                sd_notify::NotifyState::Status(&line),
            ]);
        } else if line != last {
            notify_status(&line);
        }
        last = line;
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            _ = poll.tick() => {}
            _ = cancel.cancelled() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(DEBOUNCE) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

/// A loop's sign of life for the watchdog: [`Heartbeat::probe`] asks, the loop answers with
/// [`Heartbeat::beat`] when it next gets to [`Heartbeat::probed`].
#[derive(Debug, Default)]
pub struct Heartbeat {
    beats: AtomicU64,
    probe: Notify,
}

impl Heartbeat {
    pub fn beat(&self) {
        self.beats.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.beats.load(Ordering::Relaxed)
    }

    /// Asks for a beat (kept until the loop takes it).
    pub fn probe(&self) {
        self.probe.notify_one();
    }

    /// Completes once asked.
    pub async fn probed(&self) {
        self.probe.notified().await;
    }
}

/// The watchdog interval systemd asks this process for, as `sd_watchdog_enabled` reads it:
/// `WATCHDOG_USEC`, with `WATCHDOG_PID` unset or this process's pid.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    let enabled = sd_notify::watchdog_enabled(false, &mut usec)
        || (std::env::var_os("WATCHDOG_PID").is_none()
            && std::env::var("WATCHDOG_USEC")
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .is_some_and(|v| {
                    usec = v;
                    true
                }));
    (enabled && usec > 0).then(|| Duration::from_micros(usec))
}

/// Pings `WATCHDOG=1` every half `interval` while both the writer and the accept loop answer
/// their probes. Ends when cancelled.
pub async fn watchdog(
    interval: Duration,
    writer: WriterHandle,
    accept: Arc<Heartbeat>,
    cancel: CancellationToken,
) {
    let period = interval / 2;
    tracing::info!(
        interval_ms = interval.as_millis() as u64,
        "systemd watchdog enabled: pinging while the WAL writer and the accept loop make progress"
    );
    let mut last = (writer.beats(), accept.count());
    writer.probe();
    accept.probe();
    let mut stalled: Option<&str> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = cancel.cancelled() => return,
        }
        let now = (writer.beats(), accept.count());
        let stuck = if now.0 == last.0 {
            Some("WAL writer")
        } else if now.1 == last.1 {
            Some("downstream accept loop")
        } else {
            None
        };
        match stuck {
            None => {
                notify(&[sd_notify::NotifyState::Watchdog]);
                if let Some(what) = stalled.take() {
                    tracing::info!("watchdog: the {what} makes progress again; pinging systemd");
                }
            }
            Some(what) if stalled != Some(what) => {
                tracing::warn!(
                    "watchdog: the {what} made no progress for {}ms; not pinging systemd (it restarts the relay at WatchdogSec)",
                    period.as_millis()
                );
                stalled = Some(what);
            }
            Some(_) => {}
        }
        last = now;
        writer.probe();
        accept.probe();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failover::{CandidateJson, CandidateState, Source};
    use crate::wal::Lsn;

    #[test]
    fn status_lines() {
        let mut up = UpstreamStatus::default();
        assert_eq!(status_line(&up, None), "connecting to upstream");
        up.last_error = Some("connect to upstream: connection refused\nsecond line".into());
        assert_eq!(
            status_line(&up, None),
            "reconnecting to upstream: connect to upstream: connection refused second line"
        );
        up.connected = true;
        up.host = Some("pg-a".into());
        up.port = Some(5432);
        up.timeline = Some(3);
        assert_eq!(
            status_line(&up, None),
            "streaming from pg-a:5432 on timeline 3"
        );
        let fo = FailoverStatus {
            standbys: vec![
                CandidateJson::new(
                    "pg_b".into(),
                    CandidateState {
                        state: HoldState::Missing,
                        source: Source::Persisted,
                        flush_lsn: Some(Lsn(0x100)),
                    },
                ),
                CandidateJson::new(
                    "pg_c".into(),
                    CandidateState {
                        state: HoldState::Confirmed,
                        source: Source::Connected,
                        flush_lsn: Some(Lsn(0x200)),
                    },
                ),
            ],
            holding: true,
            ..Default::default()
        };
        assert_eq!(
            status_line(&up, Some(&fo)),
            "streaming from pg-a:5432 on timeline 3; holding: waiting for failover candidate pg_b"
        );
        up.last_error = Some("x".repeat(500));
        up.connected = false;
        let long = status_line(&up, None);
        assert!(long.len() <= STATUS_MAX + '…'.len_utf8(), "{}", long.len());
    }
}
