//! The task that reads the named candidates' flush positions on the current primary and
//! publishes the serve limit.
//!
//! It polls only while WAL is waiting to be released (the durable end is past the limit), every
//! [`POLL_INTERVAL`], so the added latency stays in single-digit milliseconds under load and an
//! idle primary sees no queries beyond one every [`IDLE_POLL`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use super::rule::{CandidateState, HoldRule};
use super::ServeLimit;
use crate::config::conninfo::ConnInfo;
use crate::store::Store;
use crate::upstream::connection::{connect_kind, SessionKind};
use crate::upstream::UpstreamState;
use crate::wal::{Lsn, TimeLineId};

/// Between readings while WAL waits for the candidates.
const POLL_INTERVAL: Duration = Duration::from_millis(2);
/// Between readings when nothing waits (to notice candidates coming and going).
const IDLE_POLL: Duration = Duration::from_millis(500);
const QUERY: &str = "SELECT application_name, flush_lsn FROM pg_catalog.pg_stat_replication WHERE flush_lsn IS NOT NULL";

#[derive(Debug, Clone, Default, Serialize)]
pub struct FailoverStatus {
    pub standbys: Vec<CandidateJson>,
    /// The position up to which WAL is served on the current timeline (null: no limit).
    pub limit_lsn: Option<Lsn>,
    /// True while a missing candidate holds the relay back.
    pub holding: bool,
    pub connected: bool,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CandidateJson {
    pub application_name: String,
    #[serde(flatten)]
    pub state: CandidateState,
}

pub struct FailoverWatcher {
    pub conninfo: ConnInfo,
    pub names: Vec<String>,
    pub application_name: String,
    pub store: Arc<Store>,
    pub upstream: Arc<UpstreamState>,
    pub limit_tx: watch::Sender<ServeLimit>,
    pub status: Arc<Mutex<FailoverStatus>>,
}

impl FailoverWatcher {
    fn set_status(&self, f: impl FnOnce(&mut FailoverStatus)) {
        let mut g = self.status.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g);
    }

    pub async fn run(self, cancel: CancellationToken) {
        let span = tracing::info_span!("failover_watcher", standbys = ?self.names);
        async move {
            // Until the first reading, hold at what is durable now: nothing new is served
            // before the candidates' positions are known.
            let d = self.store.durable();
            self.limit_tx.send_replace(ServeLimit::UpTo {
                timeline: d.timeline,
                lsn: d.lsn,
            });
            let mut rule = HoldRule::new(self.names.clone());
            let mut primary: Option<(String, u16, TimeLineId)> = None;
            loop {
                if cancel.is_cancelled() {
                    return;
                }
                let r = tokio::select! {
                    r = self.session(&mut rule, &mut primary) => r,
                    _ = cancel.cancelled() => return,
                };
                if let Err(e) = r {
                    warn!("cannot read the failover standbys' positions from the primary: {e:#}");
                    self.set_status(|s| {
                        s.connected = false;
                        s.last_error = Some(format!("{e:#}"));
                    });
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = cancel.cancelled() => return,
                }
            }
        }
        .instrument(span)
        .await
    }

    /// One SQL session to the primary the upstream streams from; ends when that changes.
    async fn session(
        &self,
        rule: &mut HoldRule,
        primary: &mut Option<(String, u16, TimeLineId)>,
    ) -> anyhow::Result<()> {
        let up = self.upstream.get();
        let (Some(host), Some(port), Some(tli), true) =
            (up.host, up.port, up.timeline, up.connected)
        else {
            anyhow::bail!("upstream not connected");
        };
        let current = (host.clone(), port, tli);
        if primary.as_ref() != Some(&current) {
            if primary.is_some() {
                info!(
                    host,
                    port,
                    timeline = tli,
                    "new primary: learning the failover standbys anew"
                );
            }
            rule.reset();
            *primary = Some(current.clone());
        }
        let idx = self
            .conninfo
            .hosts
            .iter()
            .position(|h| h.host == host && h.port == port)
            .ok_or_else(|| anyhow::anyhow!("upstream host {host}:{port} not in the conninfo"))?;
        let mut conn = connect_kind(
            &self.conninfo,
            idx,
            &self.application_name,
            SessionKind::Sql,
        )
        .await?;
        self.set_status(|s| {
            s.connected = true;
            s.last_error = None;
        });
        let mut durable_rx = self.store.subscribe();
        loop {
            let up = self.upstream.get();
            if (up.host.as_deref(), up.port, up.timeline)
                != (Some(host.as_str()), Some(port), Some(tli))
            {
                conn.terminate().await;
                return Ok(());
            }
            let rows = conn.simple_query(QUERY).await?;
            let obs: Vec<(String, Lsn)> = rows
                .into_iter()
                .filter_map(|r| {
                    let name = r.first().cloned().flatten()?;
                    let lsn = r.get(1).cloned().flatten()?.parse().ok()?;
                    Some((name, lsn))
                })
                .collect();
            let (limit, states) = rule.observe(&obs);
            let holding = states
                .iter()
                .any(|(_, s)| matches!(s, CandidateState::Missing(_)));
            let new = match limit {
                Some(lsn) => ServeLimit::UpTo { timeline: tli, lsn },
                None => ServeLimit::Unlimited,
            };
            let was_holding = self.status.lock().map(|s| s.holding).unwrap_or(false);
            if holding && !was_holding {
                let missing: Vec<&str> = states
                    .iter()
                    .filter(|(_, s)| matches!(s, CandidateState::Missing(_)))
                    .map(|(n, _)| n.as_str())
                    .collect();
                warn!(?missing, "failover standby missing from the primary: holding WAL at its last confirmed position");
            } else if !holding && was_holding {
                info!("failover standbys back: releasing WAL");
            }
            self.limit_tx.send_if_modified(|cur| {
                let changed = *cur != new;
                *cur = new;
                changed
            });
            self.set_status(|s| {
                s.limit_lsn = limit;
                s.holding = holding;
                s.standbys = states
                    .into_iter()
                    .map(|(application_name, state)| CandidateJson {
                        application_name,
                        state,
                    })
                    .collect();
            });
            let waiting = limit.is_some_and(|l| self.store.durable().lsn > l);
            if waiting {
                tokio::time::sleep(POLL_INTERVAL).await;
            } else {
                let _ = tokio::time::timeout(IDLE_POLL, durable_rx.changed()).await;
            }
        }
    }
}
