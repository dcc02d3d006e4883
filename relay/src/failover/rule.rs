//! The hold rule for `--failover-standby`, as a pure state machine over observations of the
//! primary's `pg_stat_replication`.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::wal::Lsn;

/// What the relay knows about one named candidate on the current primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "flush_lsn", rename_all = "snake_case")]
pub enum CandidateState {
    /// Connected; it has confirmed flushing up to this position.
    Confirmed(Lsn),
    /// Seen before on this primary, absent now: the relay holds at its last confirmed position.
    Missing(Lsn),
    /// Never seen on this primary (it may be the primary itself, or not attached yet): no hold.
    NeverSeen,
}

/// The candidates' last confirmed flush positions on the current primary.
#[derive(Debug, Clone, Default)]
pub struct HoldRule {
    names: Vec<String>,
    seen: BTreeMap<String, Lsn>,
}

impl HoldRule {
    pub fn new(names: Vec<String>) -> Self {
        HoldRule {
            names,
            seen: BTreeMap::new(),
        }
    }

    /// The candidates watched.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// A reload changed the candidates: the ones kept keep what was seen of them on this
    /// primary (their hold stands), a removed one no longer holds, an added one holds once it
    /// is seen, like any candidate not yet attached.
    pub fn set_names(&mut self, names: Vec<String>) {
        self.seen.retain(|n, _| names.contains(n));
        self.names = names;
    }

    /// The primary changed: what was seen on the old one says nothing about the new one.
    pub fn reset(&mut self) {
        self.seen.clear();
    }

    /// Takes one reading of `(application_name, flush_lsn)` rows and returns the limit (None:
    /// no candidate holds) and each candidate's state.
    pub fn observe(
        &mut self,
        rows: &[(String, Lsn)],
    ) -> (Option<Lsn>, Vec<(String, CandidateState)>) {
        let mut states = Vec::with_capacity(self.names.len());
        let mut limit: Option<Lsn> = None;
        for name in &self.names {
            // Several connections with one name (a reconnect racing the old session): the most
            // advanced one speaks for the standby.
            let now = rows
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, l)| *l)
                .max();
            let state = match (now, self.seen.get(name)) {
                (Some(flush), prev) => {
                    // Confirmed positions never move back: a reconnecting standby reports its
                    // restart point, but what it confirmed before is on its disk.
                    let flush = prev.map_or(flush, |p| flush.max(*p));
                    self.seen.insert(name.clone(), flush);
                    CandidateState::Confirmed(flush)
                }
                (None, Some(prev)) => CandidateState::Missing(*prev),
                (None, None) => CandidateState::NeverSeen,
            };
            if let CandidateState::Confirmed(l) | CandidateState::Missing(l) = state {
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

    fn rows(r: &[(&str, u64)]) -> Vec<(String, Lsn)> {
        r.iter().map(|(n, l)| (n.to_string(), Lsn(*l))).collect()
    }

    #[test]
    fn holds_at_the_slowest_seen_candidate() {
        let mut r = HoldRule::new(vec!["ha1".into(), "ha2".into()]);
        // Nobody seen yet: no hold.
        let (limit, st) = r.observe(&rows(&[("other", 50)]));
        assert_eq!(limit, None);
        assert_eq!(st[0].1, CandidateState::NeverSeen);
        // ha1 seen: it bounds; ha2 never seen does not.
        assert_eq!(r.observe(&rows(&[("ha1", 100)])).0, Some(Lsn(100)));
        // Both: the lower one.
        assert_eq!(
            r.observe(&rows(&[("ha1", 120), ("ha2", 90)])).0,
            Some(Lsn(90))
        );
        // ha2 goes away: hold at what it confirmed last.
        let (limit, st) = r.observe(&rows(&[("ha1", 200)]));
        assert_eq!(limit, Some(Lsn(90)));
        assert_eq!(st[1].1, CandidateState::Missing(Lsn(90)));
        // It comes back reporting an older restart point: the confirmed position stands.
        assert_eq!(
            r.observe(&rows(&[("ha1", 200), ("ha2", 10)])).0,
            Some(Lsn(90))
        );
        assert_eq!(
            r.observe(&rows(&[("ha1", 200), ("ha2", 150)])).0,
            Some(Lsn(150))
        );
        // A new primary: learned anew; the promoted candidate is never seen there.
        r.reset();
        assert_eq!(r.observe(&rows(&[("ha2", 5)])).0, Some(Lsn(5)));
        r.reset();
        assert_eq!(r.observe(&rows(&[])).0, None);
    }

    #[test]
    fn a_reloaded_set_keeps_what_was_seen_of_the_kept_candidates() {
        let mut r = HoldRule::new(vec!["ha1".into(), "ha2".into()]);
        r.observe(&rows(&[("ha1", 100), ("ha2", 90)]));
        // ha2 goes missing: it holds at 90.
        assert_eq!(r.observe(&rows(&[("ha1", 200)])).0, Some(Lsn(90)));
        // ha2 removed, ha3 added: ha1 alone bounds; ha3, not seen yet, does not hold.
        r.set_names(vec!["ha1".into(), "ha3".into()]);
        assert_eq!(r.names(), ["ha1", "ha3"]);
        let (limit, st) = r.observe(&rows(&[("ha1", 200)]));
        assert_eq!(limit, Some(Lsn(200)));
        assert_eq!(st[1], ("ha3".to_string(), CandidateState::NeverSeen));
        // ha3 seen: it bounds, and it holds once it goes missing.
        assert_eq!(
            r.observe(&rows(&[("ha1", 300), ("ha3", 250)])).0,
            Some(Lsn(250))
        );
        assert_eq!(r.observe(&rows(&[("ha1", 400)])).0, Some(Lsn(250)));
        // ha2 back in the set: what was seen of it before its removal is gone, it starts
        // as never seen.
        r.set_names(vec!["ha1".into(), "ha2".into()]);
        let (limit, st) = r.observe(&rows(&[("ha1", 400)]));
        assert_eq!(limit, Some(Lsn(400)));
        assert_eq!(st[1].1, CandidateState::NeverSeen);
    }
}
