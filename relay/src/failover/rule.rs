//! The hold rule for `--failover-standby`, as a pure state machine over readings of the
//! primary (`pg_stat_replication` and its physical slots).
//!
//! Per named candidate, its confirmed position on the current primary comes from, in order:
//!
//! 1. `connected`: a walsender of that `application_name`, or the walsender using the physical
//!    slot of that name: its `flush_lsn`;
//! 2. `slot`: the primary's physical slot of that name, not in use: its `restart_lsn`, which
//!    follows the standby's flush feedback and stays while the standby is away;
//! 3. `persisted`: what the relay saw of it before on this timeline (kept in
//!    `failover.json`, so it outlives a relay restart);
//! 4. `missing`: none of these. On the first primary after the relay starts it holds at
//!    the floor (what the relay may already have served before it started) unless
//!    `--failover-standby-missing=serve`; on a primary the relay followed a failover to, it
//!    does not hold (the promoted candidate is the primary itself and is never seen there).
//!
//! Invariants: a candidate's confirmed position never moves back on one timeline (a
//! reconnecting standby reports its restart point, but what it confirmed before is on its
//! disk); the limit is the lowest position among the candidates that hold.

use std::collections::BTreeMap;

use serde::Serialize;

pub use crate::config::MissingPolicy;
use crate::wal::Lsn;

/// Whether the candidate bounds serving (`/status` `state`, kept from before the sources).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldState {
    /// Connected; it bounds at what it confirmed.
    Confirmed,
    /// Not connected; the relay holds at its last known position (or the floor).
    Missing,
    /// Not connected and not known, and it does not hold.
    NeverSeen,
}

/// Where a candidate's position comes from (`/status` `source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Connected,
    Slot,
    Persisted,
    Missing,
}

/// What the relay knows about one named candidate on the current primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CandidateState {
    pub state: HoldState,
    pub source: Source,
    /// The position it holds at (null: it does not hold).
    pub flush_lsn: Option<Lsn>,
}

impl CandidateState {
    pub const NEVER_SEEN: CandidateState = CandidateState {
        state: HoldState::NeverSeen,
        source: Source::Missing,
        flush_lsn: None,
    };

    /// The position this candidate bounds serving at, if it does.
    pub fn holds_at(&self) -> Option<Lsn> {
        match self.state {
            HoldState::Confirmed | HoldState::Missing => self.flush_lsn,
            HoldState::NeverSeen => None,
        }
    }
}

/// One row of a reading: a name (an `application_name` or a physical slot's name), its
/// position, and whether a walsender is streaming to it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub name: String,
    pub lsn: Lsn,
    pub connected: bool,
}

/// The candidates' last confirmed positions on the current primary.
#[derive(Debug, Clone)]
pub struct HoldRule {
    names: Vec<String>,
    seen: BTreeMap<String, Lsn>,
    policy: MissingPolicy,
    /// Whether a candidate that cannot be placed holds (false on a primary the relay followed
    /// a failover to).
    strict: bool,
    /// Where a missing candidate holds: what may already have been served.
    floor: Lsn,
}

impl HoldRule {
    pub fn new(names: Vec<String>, policy: MissingPolicy, floor: Lsn) -> Self {
        HoldRule {
            names,
            seen: BTreeMap::new(),
            policy,
            strict: true,
            floor,
        }
    }

    /// The candidates watched.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// What the relay has seen of the candidates on this primary (what it persists).
    pub fn seen(&self) -> &BTreeMap<String, Lsn> {
        &self.seen
    }

    /// Whether a candidate that cannot be placed holds (see [`HoldRule::new_primary`]).
    pub fn holds_missing(&self) -> bool {
        self.strict
    }

    /// Where a candidate not known yet holds from now on: what is served now (a candidate
    /// added by a reload cannot take back what was served before it).
    pub fn set_floor(&mut self, floor: Lsn) {
        self.floor = floor;
    }

    /// Positions persisted by an earlier run on the same timeline: they count as seen; and
    /// whether a candidate that cannot be placed holds on it.
    pub fn load(&mut self, seen: BTreeMap<String, Lsn>, hold_missing: bool) {
        self.strict = hold_missing;
        for (name, lsn) in seen {
            if self.names.contains(&name) {
                let e = self.seen.entry(name).or_insert(lsn);
                *e = (*e).max(lsn);
            }
        }
    }

    /// A reload changed the candidates: the ones kept keep what was seen of them on this
    /// primary (their hold stands), a removed one no longer holds, an added one is placed by
    /// its connection or slot, else it is missing.
    pub fn set_names(&mut self, names: Vec<String>) {
        self.seen.retain(|n, _| names.contains(n));
        self.names = names;
    }

    /// The relay followed a failover to a new primary: what was seen on the old one says
    /// nothing about the new one, and a candidate not known there does not hold (the promoted
    /// one is the primary itself).
    pub fn new_primary(&mut self) {
        self.seen.clear();
        self.strict = false;
    }

    /// Takes one reading and returns the limit (None: no candidate holds) and each
    /// candidate's state.
    pub fn observe(&mut self, rows: &[Observed]) -> (Option<Lsn>, Vec<(String, CandidateState)>) {
        let mut states = Vec::with_capacity(self.names.len());
        let mut limit: Option<Lsn> = None;
        for name in &self.names {
            // Several rows for one name (a reconnect racing the old session, a standby whose
            // application_name and slot are both named): the most advanced one speaks for it.
            let best = |connected: bool| {
                rows.iter()
                    .filter(|o| &o.name == name && o.connected == connected)
                    .map(|o| o.lsn)
                    .max()
            };
            let prev = self.seen.get(name).copied();
            let known = |lsn: Lsn| prev.map_or(lsn, |p| lsn.max(p));
            let state = if let Some(lsn) = best(true) {
                CandidateState {
                    state: HoldState::Confirmed,
                    source: Source::Connected,
                    flush_lsn: Some(known(lsn)),
                }
            } else if let Some(lsn) = best(false) {
                CandidateState {
                    state: HoldState::Missing,
                    source: Source::Slot,
                    flush_lsn: Some(known(lsn)),
                }
            } else if let Some(lsn) = prev {
                CandidateState {
                    state: HoldState::Missing,
                    source: Source::Persisted,
                    flush_lsn: Some(lsn),
                }
            } else if self.strict && self.policy == MissingPolicy::Hold {
                CandidateState {
                    state: HoldState::Missing,
                    source: Source::Missing,
                    flush_lsn: Some(self.floor),
                }
            } else {
                CandidateState::NEVER_SEEN
            };
            if let (Source::Connected | Source::Slot, Some(lsn)) = (state.source, state.flush_lsn) {
                self.seen.insert(name.clone(), lsn);
            }
            if let Some(l) = state.holds_at() {
                limit = Some(limit.map_or(l, |c| c.min(l)));
            }
            states.push((name.clone(), state));
        }
        (limit, states)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(r: &[(&str, u64)]) -> Vec<Observed> {
        r.iter()
            .map(|(n, l)| Observed {
                name: n.to_string(),
                lsn: Lsn(*l),
                connected: true,
            })
            .collect()
    }

    fn slot(name: &str, lsn: u64) -> Observed {
        Observed {
            name: name.into(),
            lsn: Lsn(lsn),
            connected: false,
        }
    }

    fn rule(names: &[&str], policy: MissingPolicy) -> HoldRule {
        HoldRule::new(
            names.iter().map(|n| n.to_string()).collect(),
            policy,
            Lsn(7),
        )
    }

    #[test]
    fn holds_at_the_slowest_candidate() {
        let mut r = rule(&["ha1", "ha2"], MissingPolicy::Hold);
        // Nobody known yet: both hold at the floor.
        let (limit, st) = r.observe(&conn(&[("other", 50)]));
        assert_eq!(limit, Some(Lsn(7)));
        assert_eq!(st[0].1.source, Source::Missing);
        assert_eq!(st[0].1.state, HoldState::Missing);
        // ha1 connected, ha2 still missing: the floor.
        assert_eq!(r.observe(&conn(&[("ha1", 100)])).0, Some(Lsn(7)));
        // Both: the lower one.
        assert_eq!(
            r.observe(&conn(&[("ha1", 120), ("ha2", 90)])).0,
            Some(Lsn(90))
        );
        // ha2 goes away: hold at what it confirmed last.
        let (limit, st) = r.observe(&conn(&[("ha1", 200)]));
        assert_eq!(limit, Some(Lsn(90)));
        assert_eq!(st[1].1.source, Source::Persisted);
        assert_eq!(st[1].1.state, HoldState::Missing);
        // It comes back reporting an older restart point: the confirmed position stands.
        assert_eq!(
            r.observe(&conn(&[("ha1", 200), ("ha2", 10)])).0,
            Some(Lsn(90))
        );
        assert_eq!(
            r.observe(&conn(&[("ha1", 200), ("ha2", 150)])).0,
            Some(Lsn(150))
        );
        // A new primary: learned anew; the promoted candidate is never seen there and does
        // not hold.
        r.new_primary();
        assert_eq!(r.observe(&conn(&[("ha2", 5)])).0, Some(Lsn(5)));
        r.new_primary();
        let (limit, st) = r.observe(&conn(&[]));
        assert_eq!(limit, None);
        assert_eq!(st[0].1, CandidateState::NEVER_SEEN);
    }

    #[test]
    fn a_slot_places_a_candidate_that_is_away() {
        let mut r = rule(&["ha1", "ha_slot"], MissingPolicy::Hold);
        // ha1 away, its slot at 40; ha_slot streams through its slot (named, connected).
        let rows = vec![
            slot("ha1", 40),
            Observed {
                name: "ha_slot".into(),
                lsn: Lsn(60),
                connected: true,
            },
        ];
        let (limit, st) = r.observe(&rows);
        assert_eq!(limit, Some(Lsn(40)));
        assert_eq!(st[0].1.source, Source::Slot);
        assert_eq!(st[0].1.flush_lsn, Some(Lsn(40)));
        assert_eq!(st[1].1.source, Source::Connected);
        // The slot gone as well: what was seen of it (the slot's position) holds.
        let (limit, st) = r.observe(&rows[1..]);
        assert_eq!(limit, Some(Lsn(40)));
        assert_eq!(st[0].1.source, Source::Persisted);
        // A slot behind what was seen does not move the hold back.
        assert_eq!(
            r.observe(&[slot("ha1", 30), rows[1].clone()]).0,
            Some(Lsn(40))
        );
    }

    #[test]
    fn persisted_positions_hold_after_a_restart() {
        let mut r = rule(&["ha1", "ha2"], MissingPolicy::Hold);
        r.load(
            BTreeMap::from([("ha1".into(), Lsn(300)), ("gone".into(), Lsn(1))]),
            true,
        );
        assert_eq!(
            r.seen().len(),
            1,
            "a name no longer in the set is not loaded"
        );
        let (limit, st) = r.observe(&conn(&[("ha2", 500)]));
        assert_eq!(limit, Some(Lsn(300)));
        assert_eq!(st[0].1.source, Source::Persisted);
        // Persisted after a failover to this timeline: an unknown candidate does not hold.
        let mut r = rule(&["ha1", "ha2"], MissingPolicy::Hold);
        r.load(BTreeMap::from([("ha2".into(), Lsn(300))]), false);
        assert_eq!(r.observe(&[]).0, Some(Lsn(300)));
    }

    #[test]
    fn serve_policy_does_not_wait_for_a_missing_candidate() {
        let mut r = rule(&["ha1", "ghost"], MissingPolicy::Serve);
        let (limit, st) = r.observe(&conn(&[("ha1", 100)]));
        assert_eq!(limit, Some(Lsn(100)));
        assert_eq!(st[1].1, CandidateState::NEVER_SEEN);
        let mut r = rule(&["ghost"], MissingPolicy::Serve);
        assert_eq!(r.observe(&[]).0, None);
        assert_eq!(
            MissingPolicy::parse("serve").ok(),
            Some(MissingPolicy::Serve)
        );
        assert!(MissingPolicy::parse("maybe").is_err());
    }

    #[test]
    fn a_reloaded_set_keeps_what_was_seen_of_the_kept_candidates() {
        let mut r = rule(&["ha1", "ha2"], MissingPolicy::Hold);
        r.observe(&conn(&[("ha1", 100), ("ha2", 90)]));
        // ha2 goes missing: it holds at 90.
        assert_eq!(r.observe(&conn(&[("ha1", 200)])).0, Some(Lsn(90)));
        // ha2 removed, ha3 added: ha3, not known, holds at the floor.
        r.set_names(vec!["ha1".into(), "ha3".into()]);
        assert_eq!(r.names(), ["ha1", "ha3"]);
        let (limit, st) = r.observe(&conn(&[("ha1", 200)]));
        assert_eq!(limit, Some(Lsn(7)));
        assert_eq!(st[1].1.source, Source::Missing);
        // ha3 seen: it bounds, and it holds once it goes missing.
        assert_eq!(
            r.observe(&conn(&[("ha1", 300), ("ha3", 250)])).0,
            Some(Lsn(250))
        );
        assert_eq!(r.observe(&conn(&[("ha1", 400)])).0, Some(Lsn(250)));
        // ha2 back in the set: what was seen of it before its removal is gone.
        r.set_names(vec!["ha1".into(), "ha2".into()]);
        let (_, st) = r.observe(&conn(&[("ha1", 400)]));
        assert_eq!(st[1].1.source, Source::Missing);
    }
}
