//! The task that reads the named candidates' flush positions on the current primary and
//! sets the serve limit in the store ([`Store::set_serve_limit`]), which derives the servable
//! end from it.
//!
//! It polls only while WAL is waiting to be released (the durable end is past the limit), every
//! [`POLL_INTERVAL`], so the added latency stays in single-digit milliseconds under load and an
//! idle primary sees no queries beyond one every [`IDLE_POLL`].
//!
//! The candidates' names come through a watch, so that a reload (SIGHUP) changes the set
//! while the relay runs: the watcher takes the new set before each reading
//! ([`HoldRule::set_names`]), and is woken by the change when it waits.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use super::rule::{CandidateState, HoldRule};
use crate::config::conninfo::ConnInfo;
use crate::store::servable::ServeLimit;
use crate::store::Store;
use crate::upstream::connection::{connect_kind, SessionKind};
use crate::upstream::UpstreamState;
use crate::wal::{Lsn, TimeLineId};

/// Between readings while WAL waits for the candidates.
const POLL_INTERVAL: Duration = Duration::from_millis(2);
/// Between readings when nothing waits (to notice candidates coming and going).
const IDLE_POLL: Duration = Duration::from_millis(500);
/// `flush_lsn` is NULL for rows the role may not see in full (it needs `pg_read_all_stats`):
/// such a candidate is neither seen nor absent, and is reported.
const QUERY: &str = "SELECT application_name, flush_lsn FROM pg_catalog.pg_stat_replication";

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
    /// The candidates' `application_name`s; never empty (without candidates there is no
    /// watcher), changed by a reload.
    pub names: watch::Receiver<Vec<String>>,
    pub application_name: String,
    pub store: Arc<Store>,
    pub upstream: Arc<UpstreamState>,
    pub status: Arc<Mutex<FailoverStatus>>,
}

impl FailoverWatcher {
    fn set_status(&self, f: impl FnOnce(&mut FailoverStatus)) {
        let mut g = self.status.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g);
    }

    pub async fn run(self, cancel: CancellationToken) {
        let mut names = self.names.clone();
        let first = names.borrow_and_update().clone();
        // No standbys field: the set can change (it is logged when it does).
        let span = tracing::info_span!("failover_watcher");
        async move {
            // Until the first reading, hold at what is durable now: nothing new is served
            // before the candidates' positions are known.
            let d = self.store.durable();
            self.store.set_serve_limit(ServeLimit::UpTo {
                timeline: d.timeline,
                lsn: d.lsn,
            });
            let mut rule = HoldRule::new(first);
            let mut primary: Option<(String, u16, TimeLineId)> = None;
            loop {
                if cancel.is_cancelled() {
                    return;
                }
                self.take_names(&mut names, &mut rule);
                let r = tokio::select! {
                    r = self.session(&mut rule, &mut names, &mut primary) => r,
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

    /// Takes a reloaded set of candidates into the rule, if it changed, and shows it in the
    /// status at once (the kept ones as they were, the added ones not seen yet) rather than at
    /// the next reading, which waits for the primary. (Read every time, not only when the watch
    /// says so: the watcher's wait has marked the change seen.)
    fn take_names(&self, names: &mut watch::Receiver<Vec<String>>, rule: &mut HoldRule) {
        let new = names.borrow_and_update().clone();
        if new == rule.names() {
            return;
        }
        info!(standbys = ?new, "failover standbys reloaded: now watching {}", new.join(", "));
        self.set_status(|s| {
            s.standbys = new
                .iter()
                .map(|name| {
                    s.standbys
                        .iter()
                        .find(|c| &c.application_name == name)
                        .cloned()
                        .unwrap_or_else(|| CandidateJson {
                            application_name: name.clone(),
                            state: CandidateState::NeverSeen,
                        })
                })
                .collect();
        });
        rule.set_names(new);
    }

    /// One SQL session to the primary the upstream streams from; ends when that changes.
    async fn session(
        &self,
        rule: &mut HoldRule,
        names: &mut watch::Receiver<Vec<String>>,
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
            self.take_names(names, rule);
            let rows = conn.simple_query(QUERY).await?;
            let mut obs: Vec<(String, Lsn)> = Vec::new();
            let mut unreadable: Vec<String> = Vec::new();
            for r in rows {
                let Some(name) = r.first().cloned().flatten() else {
                    continue;
                };
                match r.get(1).cloned().flatten().and_then(|l| l.parse().ok()) {
                    Some(lsn) => obs.push((name, lsn)),
                    None if rule.names().contains(&name) => unreadable.push(name),
                    None => {}
                }
            }
            if !unreadable.is_empty() {
                // Position unknown: keep the current limit (never release WAL on a guess) and
                // say why.
                let why = format!(
                    "cannot read the flush position of failover standby {} in pg_stat_replication: \
                     the upstream role needs the pg_read_all_stats privilege",
                    unreadable.join(", ")
                );
                let first = self
                    .status
                    .lock()
                    .map(|s| s.last_error.as_deref() != Some(why.as_str()))
                    .unwrap_or(true);
                if first {
                    warn!("{why}");
                }
                self.set_status(|s| {
                    s.last_error = Some(why);
                    s.holding = true;
                });
                tokio::time::sleep(IDLE_POLL).await;
                continue;
            }
            let (limit, states) = rule.observe(&obs);
            let holding = states
                .iter()
                .any(|(_, s)| matches!(s, CandidateState::Missing(_)));
            // Cut at a record end: a downstream never holds part of a record past what the
            // candidates confirmed, so it can never be "ahead" of a promoted candidate's fork
            // point (which is a record end) by a partial record either.
            // (Everything durable is whole records already, so a limit at or past the durable
            // end needs no cut; that also keeps a switch record's zero tail servable.)
            let durable = self.store.durable();
            let new = match limit {
                Some(lsn) if durable.timeline == tli && lsn >= durable.lsn => {
                    ServeLimit::UpTo { timeline: tli, lsn }
                }
                Some(lsn) => ServeLimit::UpTo {
                    timeline: tli,
                    lsn: self.store.record_end_at_or_before(tli, lsn).unwrap_or(lsn),
                },
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
            self.store.set_serve_limit(new);
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
            let wait = if waiting { POLL_INTERVAL } else { IDLE_POLL };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                r = durable_rx.changed(), if !waiting => if r.is_err() { tokio::time::sleep(wait).await },
                // A reload: read again with the new set at once.
                Ok(()) = names.changed() => {}
            }
        }
    }
}
