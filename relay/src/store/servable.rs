//! The servable end: what walsenders may send, computed here and nowhere else, and published
//! on one `watch` channel that every walsender and `IDENTIFY_SYSTEM` read.
//!
//! Three inputs meet here:
//! - the durable end (the writer publishes it after fsync, through `Store::publish_durable`);
//! - the `--failover-standby` bound ([`ServeLimit`], set by `failover::watcher` through
//!   [`Store::set_serve_limit`]);
//! - the history of the relay's current timeline, which says where an older timeline ends
//!   (its switch point) and which timeline follows it.
//!
//! ```text
//!  writer ──publish_durable──▶ ┐
//!  failover watcher ──limit──▶ ├─▶ Servable (one watch) ──▶ walsenders, IDENTIFY_SYSTEM
//!  history of the timeline ──▶ ┘
//! ```
//!
//! Invariants:
//! - The published end never passes the durable end: the durable watch is sent first, and the
//!   servable value is derived from that same position.
//! - On the current timeline nothing past the failover limit is servable; a limit for another
//!   timeline does not bound the current one (it was set before a switch and is stale).
//! - On an older timeline nothing past its switch point is servable; while the relay is still
//!   filling the next timeline's copy of the switch segment, only its durable part is.

use std::sync::Arc;

use tokio::sync::watch;

use super::{Durable, Store};
use crate::wal::history::{parse_history, switch_point, HistoryEntry};
use crate::wal::{Lsn, TimeLineId};

/// The most WAL of `timeline` that may be served, or no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServeLimit {
    #[default]
    Unlimited,
    UpTo {
        timeline: TimeLineId,
        lsn: Lsn,
    },
}

impl ServeLimit {
    /// What may be served of the durable WAL `durable`.
    fn apply(self, durable: Durable) -> Durable {
        match self {
            ServeLimit::UpTo { timeline, lsn } if timeline == durable.timeline => Durable {
                timeline,
                lsn: durable.lsn.min(lsn),
            },
            _ => durable,
        }
    }
}

/// Where a timeline that is not the relay's current one ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Historic {
    /// The first position that belongs to the next timeline.
    pub switchpoint: Lsn,
    pub next_tli: TimeLineId,
}

/// A requested timeline is not in the lineage of the relay's current timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("requested timeline {0} is not in this server's history")]
pub struct NotInHistory(pub TimeLineId);

/// How far a walsender streaming one timeline may send now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    /// `Some` when the timeline is historic: the stream ends at its switch point.
    pub historic: Option<Historic>,
    /// Send nothing at or past this position.
    pub end: Lsn,
}

/// One published state of what may be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Servable {
    durable: Durable,
    limit: ServeLimit,
    /// `limit` applied to `durable`: the current timeline and the end served on it.
    end: Durable,
    /// Parsed history of `durable.timeline`; `None` while the file is missing or unreadable
    /// (then no older timeline can be placed, and the next update tries again).
    history: Option<Arc<[HistoryEntry]>>,
}

impl Servable {
    fn new(durable: Durable, limit: ServeLimit, history: Option<Arc<[HistoryEntry]>>) -> Self {
        Servable {
            durable,
            limit,
            end: limit.apply(durable),
            history,
        }
    }

    /// The relay's current timeline and the end of what may be served on it (durable, within
    /// the failover limit). What `IDENTIFY_SYSTEM` reports.
    pub fn end(&self) -> Durable {
        self.end
    }

    pub fn timeline(&self) -> TimeLineId {
        self.end.timeline
    }

    /// The durable end before the failover limit; walsenders note when it moves (the time WAL
    /// became durable is what their lag samples carry).
    pub fn durable(&self) -> Durable {
        self.durable
    }

    /// Where `tli` ends in the lineage of the current timeline: `None` when `tli` is the current
    /// timeline (`tliSwitchPoint`).
    pub fn historic(&self, tli: TimeLineId) -> Result<Option<Historic>, NotInHistory> {
        let current = self.end.timeline;
        if tli == current {
            return Ok(None);
        }
        let history = self.history.as_deref().unwrap_or(&[]);
        match switch_point(tli, current, history) {
            Some((Some(switchpoint), next_tli)) => Ok(Some(Historic {
                switchpoint,
                next_tli,
            })),
            _ => Err(NotInHistory(tli)),
        }
    }

    /// How far a walsender streaming `tli` may send. `known` is the end it found before: a
    /// switch point never moves, so the history is consulted only while `tli` was current.
    pub fn bound(&self, tli: TimeLineId, known: Option<Historic>) -> Result<Bound, NotInHistory> {
        let historic = match known {
            Some(h) => Some(h),
            None => self.historic(tli)?,
        };
        let end = match historic {
            // The segment holding the switch point is read from the next timeline's file; while
            // the relay is still filling that file, only its servable part is served.
            Some(h) if self.end.timeline == h.next_tli => h.switchpoint.min(self.end.lsn),
            Some(h) => h.switchpoint,
            None => self.end.lsn,
        };
        Ok(Bound { historic, end })
    }
}

/// The parsed history of `tli` from its file's content (timeline 1 has none and needs none).
fn parse_for(tli: TimeLineId, content: Option<&[u8]>) -> Option<Arc<[HistoryEntry]>> {
    match content {
        Some(content) => parse_history(content).ok().map(Arc::from),
        None if tli <= 1 => Some(Arc::from(Vec::new())),
        None => None,
    }
}

/// The channel a new [`Store`] publishes on: `durable` (with the history file content of its
/// timeline), no limit.
pub(super) fn channel(durable: Durable, history: Option<&[u8]>) -> watch::Sender<Servable> {
    let history = parse_for(durable.timeline, history);
    watch::Sender::new(Servable::new(durable, ServeLimit::Unlimited, history))
}

impl Store {
    /// What may be served now.
    pub fn servable(&self) -> Servable {
        self.servable_tx.borrow().clone()
    }

    /// A receiver of the servable end; it changes when the durable end or the failover limit
    /// does.
    pub fn subscribe_servable(&self) -> watch::Receiver<Servable> {
        self.servable_tx.subscribe()
    }

    /// Sets the `--failover-standby` bound (the failover watcher is its only caller).
    pub fn set_serve_limit(&self, limit: ServeLimit) {
        self.servable_tx.send_if_modified(|s| {
            if s.limit == limit {
                return false;
            }
            *s = Servable::new(s.durable, limit, s.history.clone());
            true
        });
    }

    /// Follows a newly published durable end (called by [`Store::publish_durable`], after the
    /// durable watch was sent).
    pub(super) fn servable_follow_durable(&self, durable: Durable) {
        let reload = {
            let cur = self.servable_tx.borrow();
            cur.durable.timeline != durable.timeline || cur.history.is_none()
        };
        // Read outside the watch's lock: the history map has its own.
        let history =
            reload.then(|| parse_for(durable.timeline, self.history(durable.timeline).as_deref()));
        self.servable_tx.send_if_modified(|s| {
            let history = history.unwrap_or_else(|| s.history.clone());
            let new = Servable::new(durable, s.limit, history);
            let changed = *s != new;
            *s = new;
            changed
        });
    }

    /// Whether a downstream that received WAL of `tli` up to `sent`, past the switch point
    /// `fork`, holds a whole record past it (or it cannot be told). Past the fork by part of a
    /// record only, it replayed nothing the new primary lacks and can follow the new timeline.
    pub fn holds_record_past(&self, tli: TimeLineId, fork: Lsn, sent: Lsn) -> bool {
        self.record_end_after(tli, fork)
            .is_none_or(|first_end| sent >= first_end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(timeline: TimeLineId, lsn: u64) -> Durable {
        Durable {
            timeline,
            lsn: Lsn(lsn),
        }
    }

    fn history(entries: &[(TimeLineId, u64)]) -> Option<Arc<[HistoryEntry]>> {
        let v: Vec<HistoryEntry> = entries
            .iter()
            .map(|&(tli, sp)| HistoryEntry {
                tli,
                switchpoint: Lsn(sp),
            })
            .collect();
        Some(Arc::from(v))
    }

    #[test]
    fn limit_bounds_only_its_timeline() {
        let up_to = ServeLimit::UpTo {
            timeline: 2,
            lsn: Lsn(0x500),
        };
        assert_eq!(Servable::new(d(2, 0x900), up_to, None).end(), d(2, 0x500));
        assert_eq!(Servable::new(d(2, 0x400), up_to, None).end(), d(2, 0x400));
        // A limit left from before a switch does not hold the new timeline back.
        assert_eq!(Servable::new(d(3, 0x900), up_to, None).end(), d(3, 0x900));
        assert_eq!(
            Servable::new(d(3, 0x900), ServeLimit::Unlimited, None).end(),
            d(3, 0x900)
        );
    }

    #[test]
    fn bounds_per_timeline() {
        let s = Servable::new(
            d(3, 0x9000),
            ServeLimit::UpTo {
                timeline: 3,
                lsn: Lsn(0x8000),
            },
            history(&[(1, 0x3000), (2, 0x7000)]),
        );
        // The current timeline: the limited durable end.
        assert_eq!(
            s.bound(3, None),
            Ok(Bound {
                historic: None,
                end: Lsn(0x8000)
            })
        );
        // An ancestor two switches back ends at its own switch point.
        let b1 = s.bound(1, None).unwrap();
        assert_eq!(
            b1.historic,
            Some(Historic {
                switchpoint: Lsn(0x3000),
                next_tli: 2
            })
        );
        assert_eq!(b1.end, Lsn(0x3000));
        // The parent: its switch point, bounded by what is servable of the current timeline.
        let s_low = Servable::new(
            d(3, 0x6000),
            ServeLimit::Unlimited,
            history(&[(1, 0x3000), (2, 0x7000)]),
        );
        assert_eq!(s_low.bound(2, None).unwrap().end, Lsn(0x6000));
        assert_eq!(s.bound(2, None).unwrap().end, Lsn(0x7000));
        // Not in the lineage, or no history to tell.
        assert_eq!(s.bound(4, None), Err(NotInHistory(4)));
        let blind = Servable::new(d(3, 0x9000), ServeLimit::Unlimited, None);
        assert_eq!(blind.bound(2, None), Err(NotInHistory(2)));
        // A switch point found before is kept.
        assert_eq!(blind.bound(2, b1.historic).unwrap().end, Lsn(0x3000));
    }

    #[test]
    fn follows_durable_and_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut rx = store.subscribe_servable();
        store.publish_durable(d(1, 0x100));
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().end(), d(1, 0x100));
        store.set_serve_limit(ServeLimit::UpTo {
            timeline: 1,
            lsn: Lsn(0x80),
        });
        assert_eq!(rx.borrow_and_update().end(), d(1, 0x80));
        // The same limit again is no news.
        store.set_serve_limit(ServeLimit::UpTo {
            timeline: 1,
            lsn: Lsn(0x80),
        });
        assert!(!rx.has_changed().unwrap());
        store.publish_durable(d(1, 0x200));
        let s = rx.borrow_and_update().clone();
        assert_eq!((s.end(), s.durable()), (d(1, 0x80), d(1, 0x200)));
        store.set_serve_limit(ServeLimit::Unlimited);
        assert_eq!(store.servable().end(), d(1, 0x200));
    }
}
