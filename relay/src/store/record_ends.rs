//! Ends of the most recent valid records, per timeline, as the writer validated them.
//!
//! Owns: the bounded set of `(timeline, record end)` pairs. They tell where served WAL may be
//! cut so a downstream never holds a partial record past a bound, and what a fork point's next
//! record end is.
//!
//! Invariants: only positions the writer's decoder accepted as whole-record ends are noted;
//! at most [`RECORD_ENDS_KEPT`] are kept, the oldest dropped first. The set is in memory only:
//! after a restart it starts empty and callers fall back to the position they asked about.

use std::collections::BTreeSet;
use std::sync::Mutex;

use crate::wal::{Lsn, TimeLineId};

/// Record ends remembered (about the last few hundred MB of WAL at typical record sizes).
pub const RECORD_ENDS_KEPT: usize = 1 << 18;

#[derive(Default)]
pub struct RecordEnds {
    ends: Mutex<BTreeSet<(TimeLineId, Lsn)>>,
}

impl RecordEnds {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<(TimeLineId, Lsn)>> {
        self.ends.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes the ends of records of `tli` that passed validation.
    pub fn note(&self, tli: TimeLineId, new: &[Lsn]) {
        if new.is_empty() {
            return;
        }
        let mut ends = self.lock();
        ends.extend(new.iter().map(|l| (tli, *l)));
        while ends.len() > RECORD_ENDS_KEPT {
            ends.pop_first();
        }
    }

    /// The end of the last known record of `tli` at or before `lsn`.
    pub fn at_or_before(&self, tli: TimeLineId, lsn: Lsn) -> Option<Lsn> {
        self.lock()
            .range((tli, Lsn(0))..=(tli, lsn))
            .next_back()
            .map(|(_, l)| *l)
    }

    /// The end of the first known record of `tli` that ends after `lsn`.
    pub fn after(&self, tli: TimeLineId, lsn: Lsn) -> Option<Lsn> {
        self.lock()
            .range((tli, Lsn(lsn.0.saturating_add(1)))..=(tli, Lsn(u64::MAX)))
            .next()
            .map(|(_, l)| *l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_stay_on_their_timeline() {
        let r = RecordEnds::default();
        r.note(1, &[Lsn(100), Lsn(200), Lsn(300)]);
        r.note(2, &[Lsn(250)]);
        assert_eq!(r.at_or_before(1, Lsn(250)), Some(Lsn(200)));
        assert_eq!(r.at_or_before(1, Lsn(200)), Some(Lsn(200)));
        assert_eq!(r.at_or_before(1, Lsn(99)), None);
        assert_eq!(r.after(1, Lsn(200)), Some(Lsn(300)));
        assert_eq!(r.after(1, Lsn(300)), None);
        assert_eq!(r.after(2, Lsn(0)), Some(Lsn(250)));
        assert_eq!(r.at_or_before(3, Lsn(1000)), None);
    }
}
