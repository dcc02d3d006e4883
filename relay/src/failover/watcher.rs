//! The task that reads the named candidates' positions on the current primary and sets the
//! serve limit in the store ([`Store::set_serve_limit`]), which derives the servable end from
//! it.
//!
//! The positions come from the primary's `pg_stat_replication` and physical slots, through one
//! normal SQL connection, read two ways:
//!
//! * **pushed** (the usual way, while WAL waits to be released: the durable end is past the
//!   limit): one anonymous `DO` block ([`block_sql`], PL/pgSQL) that reads the same positions
//!   every [`BLOCK_SLEEP`](super::reading::BLOCK_SLEEP) inside the server and sends each reading that differs from the
//!   last as a `NOTICE`, which PostgreSQL flushes to the client at once (elog.c's
//!   `send_message_to_frontend` ends with `pq_flush`). So the watcher learns of a
//!   candidate's confirmation within about a millisecond, while the primary runs one
//!   statement per block. A block ends itself after [`BLOCK_BOUND`], or after
//!   [`BLOCK_IDLE_END`] without a change; the next starts when WAL waits again and new WAL
//!   became durable since. It commits every second (no snapshot, no xmin held longer), reads
//!   the backends' table again when a walsender is not in it, and is cancelled (a
//!   CancelRequest) when the relay stops or the upstream changes; the session sets
//!   `client_connection_check_interval` so that a backend whose relay vanished ends within a
//!   second (PostgreSQL 14+; before, at the block's bound).
//! * **one-shot** queries ([`QUERY`]): one every [`IDLE_POLL`] while no block runs (to notice
//!   candidates coming and going), at once after a reload, the first reading of a session when
//!   nothing waits, and, when the primary refuses the block (no PL/pgSQL, an error), instead of
//!   it: logged once, then never two readings within [`FALLBACK_POLL_MIN`], one every
//!   [`FALLBACK_POLL_MIN`] while WAL waits and readings release some, each one that releases
//!   nothing doubling the wait up to [`FALLBACK_POLL_MAX`].
//!
//! From its start until its first reading it holds at the floor: what was durable when the
//! relay started, or lower, what `failover.json` says the candidates had confirmed (a
//! restarted relay must not serve past them before it knows more). What it sees is persisted
//! there ([`persist`]) at most every [`PERSIST_INTERVAL`], and at once when a candidate's
//! source changes.
//!
//! The candidates' names come through a watch, so that a reload (SIGHUP) changes the set
//! while the relay runs: the watcher takes the new set before each reading
//! ([`HoldRule::set_names`]), and is woken by the change when it waits; a running block reads
//! every walsender and slot, so a new set applies to its last reading at once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use super::persist::{self, Seen};
use super::reading::{block_sql, interpret, parse_reading, Row, NOTICE_PREFIX, QUERY};
use super::rule::{CandidateState, HoldRule, HoldState, MissingPolicy, Source};
use crate::config::conninfo::ConnInfo;
use crate::store::servable::ServeLimit;
use crate::store::Store;
use crate::upstream::connection::{connect_kind, SessionKind};
use crate::upstream::{CancelToken, Connection, QueryEvent, Rows, UpstreamError, UpstreamState};
use crate::wal::{Lsn, TimeLineId};

/// Between one-shot readings when nothing waits (to notice candidates coming and going).
const IDLE_POLL: Duration = Duration::from_millis(500);
/// The longest a reading block runs on the primary (less when `statement_timeout` or
/// `transaction_timeout` is shorter: half of it).
const BLOCK_BOUND: Duration = Duration::from_secs(10);
/// A block ends when its reading has not changed for this long (WAL has stopped, or a
/// candidate is stuck): the next one starts with new durable WAL that waits.
const BLOCK_IDLE_END: Duration = Duration::from_secs(1);
/// Past its bound, how long the watcher waits for the block's end before giving the
/// connection up.
const BLOCK_SLACK: Duration = Duration::from_secs(5);
/// How often the watcher checks, while a block runs, whether the upstream changed.
const UPSTREAM_CHECK: Duration = Duration::from_millis(100);
/// Bounds a cancel request (connect, send, the server's close).
const CANCEL_WAIT: Duration = Duration::from_secs(2);
/// Polling without the block: the shortest wait between readings while WAL waits (50 a
/// second at most) ...
const FALLBACK_POLL_MIN: Duration = Duration::from_millis(20);
/// ... and the longest, reached by doubling after each reading that released nothing.
const FALLBACK_POLL_MAX: Duration = Duration::from_millis(320);
/// SQLSTATE `query_canceled`: a cancel request, or `statement_timeout`.
const QUERY_CANCELED: &str = "57014";
/// `/status` `failover.reading`.
const READING_PUSH: &str = "push";
const READING_POLL: &str = "poll";
/// Least time between two writes of `failover.json` while positions only move forward.
const PERSIST_INTERVAL: Duration = Duration::from_secs(1);

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
    /// How the positions are read now: `push` (a reading block on the primary sends each
    /// change) or `poll` (one-shot queries: the primary refused the block); null before the
    /// first reading.
    pub reading: Option<&'static str>,
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
        // Exported from the start (at zero), so that rate() sees the first statements.
        metrics::counter!("walrelay_failover_queries_total").increment(0);
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
                push_refused: None,
            };
            // The running block's cancel token, for the shutdown below.
            let block = Mutex::new(None);
            loop {
                if cancel.is_cancelled() {
                    return;
                }
                self.take_names(&mut names, &mut rule);
                let r = tokio::select! {
                    r = self.session(&mut rule, &mut names, &mut state, &block) => r,
                    _ = cancel.cancelled() => {
                        self.cancel_block(&block).await;
                        return;
                    }
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
    /// Returns whether the set changed.
    fn take_names(&self, names: &mut watch::Receiver<Vec<String>>, rule: &mut HoldRule) -> bool {
        let new = names.borrow_and_update().clone();
        if new == rule.names() {
            return false;
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
        true
    }

    /// One SQL session to the primary the upstream streams from; ends when that changes.
    async fn session(
        &self,
        rule: &mut HoldRule,
        names: &mut watch::Receiver<Vec<String>>,
        st: &mut WatchState,
        block: &Mutex<Option<CancelToken>>,
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
        let primary = Primary {
            host: host.clone(),
            port,
            tli,
        };
        // The pushing source needs the notices to reach the relay whatever the role's
        // `client_min_messages`, and the backend to notice a relay that is gone while its
        // block sleeps (PostgreSQL 14+; older servers end the block at its bound).
        let mut push = match self
            .query(&mut conn, "SET client_min_messages TO notice")
            .await
        {
            Ok(_) => true,
            Err(UpstreamError::Server(e)) if !e.is_fatal() => {
                self.push_refused(st, &format!("{e}"));
                false
            }
            Err(e) => return Err(e.into()),
        };
        if push {
            match self
                .query(&mut conn, "SET client_connection_check_interval TO 1000")
                .await
            {
                Ok(_) => {}
                Err(UpstreamError::Server(e)) if !e.is_fatal() => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.set_status(|s| s.reading = Some(if push { READING_PUSH } else { READING_POLL }));
        let mut durable_rx = self.store.subscribe();
        // A one-shot reading is due (the first one, the idle one, a reload, a poll).
        let mut due = true;
        // The durable end when the last block ended (none yet on this connection).
        let mut block_end: Option<Lsn> = None;
        let mut poll_every = FALLBACK_POLL_MIN;
        let mut last_read: Option<Instant> = None;
        loop {
            if primary.moved(&self.upstream) {
                conn.terminate().await;
                return Ok(());
            }
            if self.take_names(names, rule) {
                due = true;
            }
            let durable = self.store.durable().lsn;
            let waiting = self.waiting();
            if push && waiting && block_end.is_none_or(|e| durable > e) {
                match self
                    .run_block(&mut conn, rule, names, st, &primary, block)
                    .await?
                {
                    BlockEnd::Ended => {}
                    BlockEnd::Refused(why) => {
                        self.push_refused(st, &why);
                        push = false;
                        due = true;
                    }
                    BlockEnd::UpstreamMoved => {
                        conn.terminate().await;
                        return Ok(());
                    }
                }
                block_end = Some(self.store.durable().lsn);
                continue;
            }
            if due {
                due = false;
                if !push {
                    // Polling: never two readings closer than FALLBACK_POLL_MIN, whatever
                    // woke the watcher (new WAL comes far more often).
                    if let Some(gap) =
                        last_read.and_then(|t| FALLBACK_POLL_MIN.checked_sub(t.elapsed()))
                    {
                        tokio::time::sleep(gap).await;
                    }
                }
                last_read = Some(Instant::now());
                let rows = self.query(&mut conn, QUERY).await?;
                let rows: Vec<Row> = rows.iter().filter_map(|r| Row::from_columns(r)).collect();
                let applied = self.apply(&rows, rule, tli, st).await;
                if applied.unreadable {
                    // Position unknown: the limit stays; read again in a while.
                    tokio::select! {
                        _ = tokio::time::sleep(IDLE_POLL) => {}
                        Ok(()) = names.changed() => {}
                    }
                    due = true;
                    continue;
                }
                // The backoff counts only readings taken while WAL waited (the poll's own);
                // the first one after new WAL waits the shortest.
                poll_every = if waiting {
                    next_poll(poll_every, applied.released)
                } else {
                    FALLBACK_POLL_MIN
                };
                continue;
            }
            let wait = if !push && waiting {
                poll_every
            } else {
                IDLE_POLL
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => due = true,
                // New durable WAL: a block starts if it waits (push); a reading when nothing
                // waited (poll: while WAL waits, the poll's own timer reads).
                r = durable_rx.changed(), if push || !waiting => {
                    if r.is_err() {
                        tokio::time::sleep(wait).await;
                        due = true;
                    } else if !push {
                        due = true;
                    }
                }
                // A reload: read again with the new set at once.
                Ok(()) = names.changed() => {}
            }
        }
    }

    /// Runs one reading block on the primary ([`block_sql`]) until it ends, applying each
    /// reading it pushes as it arrives.
    async fn run_block(
        &self,
        conn: &mut Connection,
        rule: &mut HoldRule,
        names: &mut watch::Receiver<Vec<String>>,
        st: &mut WatchState,
        primary: &Primary,
        block: &Mutex<Option<CancelToken>>,
    ) -> anyhow::Result<BlockEnd> {
        // The token first: a shutdown while the query goes out still cancels it.
        set_block(block, conn.cancel_token());
        if let Err(e) = conn
            .send_simple_query(&block_sql(BLOCK_BOUND, BLOCK_IDLE_END))
            .await
        {
            set_block(block, None);
            return Err(e.into());
        }
        count_query();
        let deadline = Instant::now() + BLOCK_BOUND + BLOCK_SLACK;
        let mut last: Option<Vec<Row>> = None;
        // One timer for the whole block: readings may arrive every millisecond, and the
        // checks must still run.
        let mut check = tokio::time::interval(UPSTREAM_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let end = loop {
            let ev = tokio::select! {
                ev = conn.recv_query_event() => ev,
                _ = check.tick() => {
                    if primary.moved(&self.upstream) {
                        // The relay no longer needs this primary's readings: stop the block
                        // now rather than at its bound (the connection is closed next).
                        self.cancel_block(block).await;
                        break BlockEnd::UpstreamMoved;
                    }
                    if self.take_names(names, rule) {
                        if let Some(rows) = &last {
                            self.apply(rows, rule, primary.tli, st).await;
                        }
                    }
                    if Instant::now() > deadline {
                        // Given up: it must not go on running either.
                        self.cancel_block(block).await;
                        anyhow::bail!(
                            "the primary did not end the failover standbys' reading within {} s",
                            (BLOCK_BOUND + BLOCK_SLACK).as_secs()
                        );
                    }
                    continue;
                }
            };
            match ev {
                Ok(QueryEvent::Notice(n)) => {
                    let Some(json) = n.message.strip_prefix(NOTICE_PREFIX) else {
                        debug!(notice = %n, "notice from the primary");
                        continue;
                    };
                    match parse_reading(json) {
                        Ok(rows) => {
                            self.apply(&rows, rule, primary.tli, st).await;
                            last = Some(rows);
                        }
                        Err(e) => {
                            // Not what the block sends: read no more of it.
                            self.cancel_block(block).await;
                            self.drain(conn).await?;
                            break BlockEnd::Refused(format!("unreadable reading {json:?}: {e}"));
                        }
                    }
                }
                Ok(QueryEvent::Row(_)) => {}
                Ok(QueryEvent::Done) => break BlockEnd::Ended,
                // Cancelled after it read (a statement_timeout shorter than the bound allowed
                // for, someone's pg_cancel_backend): the next block starts as usual.
                Err(UpstreamError::Server(e)) if e.code == QUERY_CANCELED && last.is_some() => {
                    debug!(error = %e, "the failover standbys' reading ended");
                    break BlockEnd::Ended;
                }
                // An ERROR: the block is refused (the connection is usable). A FATAL (the
                // backend terminated) ends the session instead, below.
                Err(UpstreamError::Server(e)) if !e.is_fatal() => {
                    break BlockEnd::Refused(format!("{e}"))
                }
                Err(e) => {
                    set_block(block, None);
                    return Err(e.into());
                }
            }
        };
        set_block(block, None);
        Ok(end)
    }

    /// Reads the running block to its end (after a cancel).
    async fn drain(&self, conn: &mut Connection) -> Result<(), UpstreamError> {
        loop {
            match tokio::time::timeout(CANCEL_WAIT, conn.recv_query_event()).await {
                Ok(Ok(QueryEvent::Done)) => return Ok(()),
                Ok(Ok(_)) => {}
                Ok(Err(UpstreamError::Server(_))) => return Ok(()),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(UpstreamError::Broken),
            }
        }
    }

    /// Cancels the running block, if any (also at shutdown: a block must not outlive the
    /// relay's need of it).
    async fn cancel_block(&self, block: &Mutex<Option<CancelToken>>) {
        let token = block.lock().ok().and_then(|mut b| b.take());
        if let Some(t) = token {
            if let Err(e) = t.cancel(CANCEL_WAIT).await {
                debug!(error = %e, "cannot cancel the failover standbys' reading on the primary");
            }
        }
    }

    /// Logs once (per reason) that the primary refused the reading block.
    fn push_refused(&self, st: &mut WatchState, why: &str) {
        if st.push_refused.as_deref() != Some(why) {
            warn!(
                "the primary refused the failover standbys' pushing reading ({why}): polling \
                 instead, every {} ms at most while WAL waits",
                FALLBACK_POLL_MIN.as_millis()
            );
            st.push_refused = Some(why.to_string());
        }
        self.set_status(|s| s.reading = Some(READING_POLL));
    }

    /// One statement on the watcher's connection, counted.
    async fn query(&self, conn: &mut Connection, sql: &str) -> Result<Rows, UpstreamError> {
        count_query();
        conn.simple_query(sql).await
    }

    /// Whether durable WAL waits for the candidates (the durable end is past the limit).
    fn waiting(&self) -> bool {
        let limit = self.status.lock().map(|s| s.limit_lsn).unwrap_or(None);
        limit.is_some_and(|l| self.store.durable().lsn > l)
    }

    /// Takes one reading of the primary into the rule, the serve limit, `failover.json` and
    /// the status.
    async fn apply(
        &self,
        rows: &[Row],
        rule: &mut HoldRule,
        tli: TimeLineId,
        st: &mut WatchState,
    ) -> Applied {
        let (obs, unreadable) = interpret(rows, rule.names());
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
            return Applied {
                unreadable: true,
                released: false,
            };
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
        let (was_holding, was_limit) = self
            .status
            .lock()
            .map(|s| (s.holding, s.limit_lsn))
            .unwrap_or((false, None));
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
        let released = match (was_limit, limit) {
            (Some(a), Some(b)) => b > a,
            (Some(_), None) => true,
            _ => false,
        };
        Applied {
            unreadable: false,
            released,
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
    /// Why the primary last refused the reading block (logged once per reason).
    push_refused: Option<String>,
}

/// The primary a session reads: the upstream as it was when the session began.
struct Primary {
    host: String,
    port: u16,
    tli: TimeLineId,
}

impl Primary {
    /// Whether the upstream is no longer this primary (another host, another timeline).
    fn moved(&self, upstream: &UpstreamState) -> bool {
        let up = upstream.get();
        (up.host.as_deref(), up.port, up.timeline)
            != (Some(self.host.as_str()), Some(self.port), Some(self.tli))
    }
}

/// How a reading block ended.
#[derive(Debug)]
enum BlockEnd {
    /// At its bound, idle, or cancelled: the next one may start.
    Ended,
    /// The primary refused it (why): poll instead on this connection.
    Refused(String),
    /// The upstream changed; the block was cancelled.
    UpstreamMoved,
}

/// What one reading did.
#[derive(Debug, Clone, Copy)]
struct Applied {
    /// A candidate's position could not be read (the role lacks `pg_read_all_stats`).
    unreadable: bool,
    /// The limit moved forward.
    released: bool,
}

/// Polling (the block refused): the wait before the next reading while WAL waits. As often as
/// the readings release WAL, at most every [`FALLBACK_POLL_MIN`]; each reading that released
/// nothing doubles the wait, up to [`FALLBACK_POLL_MAX`].
fn next_poll(last: Duration, released: bool) -> Duration {
    if released {
        FALLBACK_POLL_MIN
    } else {
        (last * 2).clamp(FALLBACK_POLL_MIN, FALLBACK_POLL_MAX)
    }
}

fn count_query() {
    metrics::counter!("walrelay_failover_queries_total").increment(1);
}

fn set_block(block: &Mutex<Option<CancelToken>>, token: Option<CancelToken>) {
    if let Ok(mut b) = block.lock() {
        *b = token;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polling_backs_off_while_readings_release_nothing() {
        let mut w = FALLBACK_POLL_MIN;
        let mut waits = vec![];
        for _ in 0..6 {
            w = next_poll(w, false);
            waits.push(w.as_millis());
        }
        assert_eq!(waits, [40, 80, 160, 320, 320, 320]);
        assert_eq!(next_poll(FALLBACK_POLL_MAX, true), FALLBACK_POLL_MIN);
        // Never faster than 50 a second.
        assert_eq!(next_poll(Duration::ZERO, false), FALLBACK_POLL_MIN);
    }
}
