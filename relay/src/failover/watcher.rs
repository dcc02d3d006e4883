//! The task that reads the named candidates' positions on the current primary and sets the
//! serve limit in the store ([`Store::set_serve_limit`]), which derives the servable end from
//! it.
//!
//! It polls only while WAL is waiting to be released (the durable end is past the limit), every
//! [`POLL_INTERVAL`], so the added latency stays in single-digit milliseconds under load and an
//! idle primary sees no queries beyond one every [`IDLE_POLL`].
//!
//! From its start until its first reading it holds at the floor: what was durable when the
//! relay started, or lower, what `failover.json` says the candidates had confirmed (a
//! restarted relay must not serve past them before it knows more). What it sees is persisted
//! there ([`persist`]) at most every [`PERSIST_INTERVAL`], and at once when a candidate's
//! source changes.
//!
//! The candidates' names come through a watch, so that a reload (SIGHUP) changes the set
//! while the relay runs: the watcher takes the new set before each reading
//! ([`HoldRule::set_names`]), and is woken by the change when it waits.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use super::persist::{self, Seen};
use super::rule::{CandidateState, HoldRule, HoldState, MissingPolicy, Observed, Source};
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
/// Least time between two writes of `failover.json` while positions only move forward.
const PERSIST_INTERVAL: Duration = Duration::from_secs(1);
/// Each walsender by `application_name` (kind `a`), and each physical slot with its position:
/// the flush of the walsender using it, else its `restart_lsn` (kind `s`; `connected` says
/// whether a walsender uses it). `flush_lsn` is NULL for walsender rows the role may not see
/// in full (it needs `pg_read_all_stats`); a slot's `restart_lsn` is readable by anyone.
const QUERY: &str = "SELECT 'a', application_name, flush_lsn, true \
                     FROM pg_catalog.pg_stat_replication \
                     UNION ALL \
                     SELECT 's', s.slot_name::text, coalesce(r.flush_lsn, s.restart_lsn), \
                     r.pid IS NOT NULL \
                     FROM pg_catalog.pg_replication_slots s \
                     LEFT JOIN pg_catalog.pg_stat_replication r ON r.pid = s.active_pid \
                     WHERE s.slot_type = 'physical'";

#[derive(Debug, Clone, Default, Serialize)]
pub struct FailoverStatus {
    pub standbys: Vec<CandidateJson>,
    /// `--failover-standby-missing`: `hold` or `serve`.
    pub missing_policy: &'static str,
    /// The position up to which WAL is served on the current timeline (null: no limit).
    pub limit_lsn: Option<Lsn>,
    /// True while a candidate that is not connected holds the relay back.
    pub holding: bool,
    pub connected: bool,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CandidateJson {
    /// The name as configured: an `application_name` or a physical slot's name.
    pub name: String,
    /// The same (the field's name from before slots could name a candidate).
    pub application_name: String,
    #[serde(flatten)]
    pub state: CandidateState,
}

impl CandidateJson {
    pub fn new(name: String, state: CandidateState) -> Self {
        CandidateJson {
            application_name: name.clone(),
            name,
            state,
        }
    }
}

impl FailoverStatus {
    /// Candidates the relay cannot place (not connected, no slot, not seen).
    pub fn missing(&self) -> impl Iterator<Item = &CandidateJson> {
        self.standbys
            .iter()
            .filter(|c| c.state.source == Source::Missing)
    }
}

pub struct FailoverWatcher {
    pub conninfo: ConnInfo,
    /// The candidates' `application_name`s; never empty (without candidates there is no
    /// watcher), changed by a reload.
    pub names: watch::Receiver<Vec<String>>,
    pub application_name: String,
    pub missing_policy: MissingPolicy,
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
            let persisted = match persist::load(self.store.data_dir()) {
                Ok(p) => p,
                Err(e) => {
                    // Not fatal: without it the relay holds at what is durable, and every
                    // candidate it cannot place holds as well.
                    warn!("cannot use what the relay saw of the failover standbys before: {e}");
                    None
                }
            };
            // Until the first reading, hold at the floor: nothing is served past what was
            // durable at the start, nor past what the candidates had confirmed when the relay
            // last saw them on this timeline.
            let d = self.store.durable();
            let floor = persisted
                .as_ref()
                .filter(|p| p.timeline == d.timeline)
                .and_then(|p| {
                    p.standbys
                        .iter()
                        .filter(|(n, _)| first.contains(n))
                        .map(|(_, l)| *l)
                        .min()
                })
                .map_or(d.lsn, |l| l.min(d.lsn));
            // Cut at a record end, as every limit is (see `session`).
            let floor = if floor < d.lsn {
                self.store
                    .record_end_at_or_before(d.timeline, floor)
                    .unwrap_or(floor)
            } else {
                floor
            };
            self.store.set_serve_limit(ServeLimit::UpTo {
                timeline: d.timeline,
                lsn: floor,
            });
            let mut rule = HoldRule::new(first, self.missing_policy, floor);
            if let Some(p) = persisted.as_ref().filter(|p| p.timeline == d.timeline) {
                rule.load(p.standbys.clone(), p.hold_missing);
            }
            let (_, states) = rule.clone().observe(&[]);
            self.set_status(|s| {
                s.missing_policy = self.missing_policy.as_str();
                s.limit_lsn = Some(floor);
                s.holding = true;
                s.standbys = states
                    .into_iter()
                    .map(|(n, st)| CandidateJson::new(n, st))
                    .collect();
            });
            let mut state = WatchState {
                primary: None,
                persisted,
                persisted_at: None,
                sources: BTreeMap::new(),
            };
            loop {
                if cancel.is_cancelled() {
                    return;
                }
                self.take_names(&mut names, &mut rule);
                let r = tokio::select! {
                    r = self.session(&mut rule, &mut names, &mut state) => r,
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

    /// Writes what was seen to `failover.json` when it changed: at once when `now` (a
    /// candidate's source changed, the timeline changed), else at most every
    /// [`PERSIST_INTERVAL`]. A failed write is logged and retried at the next reading; the
    /// file lagging is safe (it is never ahead of what the candidates confirmed).
    async fn persist(&self, rule: &HoldRule, timeline: TimeLineId, now: bool, st: &mut WatchState) {
        let seen = Seen {
            timeline,
            hold_missing: rule.holds_missing(),
            standbys: rule.seen().clone(),
        };
        if st.persisted.as_ref() == Some(&seen) {
            return;
        }
        if !now
            && st
                .persisted_at
                .is_some_and(|t| t.elapsed() < PERSIST_INTERVAL)
        {
            return;
        }
        let dir = self.store.data_dir().to_path_buf();
        let copy = seen.clone();
        let r = tokio::task::spawn_blocking(move || persist::store(&dir, &copy)).await;
        match r {
            Ok(Ok(())) => {
                st.persisted = Some(seen);
                st.persisted_at = Some(Instant::now());
            }
            Ok(Err(e)) => warn!("cannot persist the failover standbys' positions: {e}"),
            Err(e) => warn!("cannot persist the failover standbys' positions: {e}"),
        }
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
                        .unwrap_or_else(|| {
                            CandidateJson::new(name.clone(), CandidateState::NEVER_SEEN)
                        })
                })
                .collect();
        });
        rule.set_floor(self.store.servable().end().lsn);
        rule.set_names(new);
    }

    /// One SQL session to the primary the upstream streams from; ends when that changes.
    async fn session(
        &self,
        rule: &mut HoldRule,
        names: &mut watch::Receiver<Vec<String>>,
        st: &mut WatchState,
    ) -> anyhow::Result<()> {
        let up = self.upstream.get();
        let (Some(host), Some(port), Some(tli), true) =
            (up.host, up.port, up.timeline, up.connected)
        else {
            anyhow::bail!("upstream not connected");
        };
        match st.primary {
            None => {
                // The first primary since the relay started. What an earlier run saw on an
                // older timeline says nothing about this one: a failover happened while the
                // relay was down, and the promoted candidate is this primary.
                if let Some(p) = st.persisted.as_ref().filter(|p| p.timeline < tli) {
                    info!(
                        timeline = tli,
                        persisted_timeline = p.timeline,
                        "the primary failed over while the relay was down: learning the failover standbys anew"
                    );
                    rule.new_primary();
                }
            }
            Some(old) if old != tli => {
                info!(
                    host,
                    port,
                    timeline = tli,
                    "new primary: learning the failover standbys anew"
                );
                rule.new_primary();
            }
            Some(_) => {}
        }
        st.primary = Some(tli);
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
            let mut obs: Vec<Observed> = Vec::new();
            let mut null_flush: Vec<String> = Vec::new();
            for r in rows {
                let (Some(kind), Some(name)) =
                    (r.first().cloned().flatten(), r.get(1).cloned().flatten())
                else {
                    continue;
                };
                let lsn = r
                    .get(2)
                    .cloned()
                    .flatten()
                    .and_then(|l| l.parse::<Lsn>().ok());
                let connected = r.get(3).cloned().flatten().as_deref() == Some("t");
                match lsn {
                    Some(lsn) => obs.push(Observed {
                        name,
                        lsn,
                        connected,
                    }),
                    None if kind == "a" && rule.names().contains(&name) => null_flush.push(name),
                    None => {}
                }
            }
            // A walsender row without its position is unreadable unless the candidate's slot
            // gives it (a slot is readable by any role).
            let unreadable: Vec<String> = null_flush
                .into_iter()
                .filter(|n| !obs.iter().any(|o| &o.name == n))
                .collect();
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
            let holding = states.iter().any(|(_, s)| s.state == HoldState::Missing);
            let changed = self.log_transitions(&states, rule.holds_missing(), &mut st.sources);
            self.persist(rule, tli, changed, st).await;
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
                    .filter(|(_, s)| s.state == HoldState::Missing)
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
                    .map(|(n, st)| CandidateJson::new(n, st))
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

    /// Logs each candidate that became unknown (neither connected, nor with a slot, nor seen)
    /// or known again, comparing with the last reading's (`last`, empty before the first).
    /// Returns whether any candidate's source changed (then what was seen is persisted at
    /// once).
    fn log_transitions(
        &self,
        states: &[(String, CandidateState)],
        holds_missing: bool,
        last: &mut BTreeMap<String, Source>,
    ) -> bool {
        let before = std::mem::take(last);
        last.extend(states.iter().map(|(n, s)| (n.clone(), s.source)));
        let mut changed = false;
        for (name, state) in states {
            let was = before.get(name).copied();
            if was == Some(state.source) {
                continue;
            }
            changed = true;
            match (state.source, state.holds_at()) {
                (Source::Missing, Some(at)) => warn!(
                    standby = %name,
                    hold_lsn = %at,
                    "failover standby {name} is not known on the primary (not connected, no \
                     physical slot of that name, not seen before): holding WAL at {at} until \
                     it is (--failover-standby-missing=serve serves without it)"
                ),
                (Source::Missing, None) if holds_missing => warn!(
                    standby = %name,
                    "failover standby {name} is not known on the primary (not connected, no \
                     physical slot of that name, not seen before): serving without it \
                     (--failover-standby-missing=serve)"
                ),
                (Source::Missing, None) => {}
                (source, at) if was == Some(Source::Missing) => info!(
                    standby = %name,
                    ?source,
                    "failover standby {name} is known: {} at {}",
                    source_name(source),
                    at.map_or_else(|| "-".to_string(), |l| l.to_string())
                ),
                _ => {}
            }
        }
        changed
    }
}

fn source_name(s: Source) -> &'static str {
    match s {
        Source::Connected => "connected",
        Source::Slot => "slot",
        Source::Persisted => "persisted",
        Source::Missing => "missing",
    }
}

/// What the watcher carries between sessions.
struct WatchState {
    /// The timeline of the primary read last (None before the first reading).
    primary: Option<TimeLineId>,
    /// What `failover.json` holds now.
    persisted: Option<Seen>,
    persisted_at: Option<Instant>,
    /// Each candidate's source at the last reading (for the log).
    sources: BTreeMap<String, Source>,
}
