//! The per-replica LSN→time sample ring (walsender.c LagTrackerWrite / LagTrackerRead).
//!
//! Memory follows the samples in flight (sent, not yet reported by every stage), at most
//! [`CAPACITY`]; a ring that grew under load is given back once every stage has caught up, and
//! a stage the replica does not report (0/0: pg_receivewal's replay) holds no sample.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::wal::Lsn;

/// Samples kept per replica (`LAG_TRACKER_BUFFER_SIZE` in PostgreSQL).
const CAPACITY: usize = 8192;
/// Room for samples kept when the ring is empty; past it, an empty ring gives its memory back
/// (so a connection that streamed a burst does not keep the burst's ring while idle, and one
/// that keeps few samples in flight never reallocates).
const IDLE_CAPACITY: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Write = 0,
    Flush = 1,
    Replay = 2,
}

/// One value per stage, addressed by [`Stage`]: no index arithmetic, so nothing out of range.
#[derive(Debug, Clone, Copy, Default)]
struct PerStage<T>([T; 3]);

impl<T> PerStage<T> {
    fn get(&self, stage: Stage) -> &T {
        let [w, f, r] = &self.0;
        match stage {
            Stage::Write => w,
            Stage::Flush => f,
            Stage::Replay => r,
        }
    }

    fn get_mut(&mut self, stage: Stage) -> &mut T {
        let [w, f, r] = &mut self.0;
        match stage {
            Stage::Write => w,
            Stage::Flush => f,
            Stage::Replay => r,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    lsn: Lsn,
    time: Instant,
}

/// Lag samples of one replica and the lags last measured for each stage.
#[derive(Debug)]
pub struct LagTracker {
    samples: VecDeque<Sample>,
    /// Sequence number of `samples[0]`.
    base: u64,
    /// Per stage, the sequence number of the next sample not yet consumed.
    heads: PerStage<u64>,
    /// Per stage, the newest sample consumed, for interpolation while a position is stuck.
    last_read: PerStage<Option<Sample>>,
    last_lsn: Lsn,
    lags: PerStage<Option<Duration>>,
    fully_applied_last_time: bool,
}

impl Default for LagTracker {
    fn default() -> Self {
        LagTracker {
            samples: VecDeque::new(),
            base: 0,
            heads: PerStage([0; 3]),
            last_read: PerStage([None; 3]),
            last_lsn: Lsn(0),
            lags: PerStage([None; 3]),
            fully_applied_last_time: false,
        }
    }
}

impl LagTracker {
    /// WAL up to `lsn`, made durable on the relay at `time`, has been sent.
    pub fn record_sent(&mut self, lsn: Lsn, time: Instant) {
        if lsn <= self.last_lsn {
            return;
        }
        self.last_lsn = lsn;
        if self.samples.len() >= CAPACITY {
            // Full: move the newest sample forward rather than lose the oldest, as PostgreSQL
            // does; lag figures get coarser, never wrong.
            if let Some(last) = self.samples.back_mut() {
                last.lsn = lsn;
            }
            return;
        }
        self.samples.push_back(Sample { lsn, time });
    }

    /// LagTrackerRead: the lag of `stage` at reported position `lsn`, or `None` when it cannot
    /// be measured now.
    fn read(&mut self, stage: Stage, lsn: Lsn, now: Instant) -> Option<Duration> {
        let mut found = None;
        while let Some(s) = self
            .samples
            .get((self.heads.get(stage) - self.base) as usize)
        {
            if s.lsn > lsn {
                break;
            }
            found = Some(s.time);
            *self.last_read.get_mut(stage) = Some(*s);
            *self.heads.get_mut(stage) += 1;
        }
        let next = self
            .samples
            .get((self.heads.get(stage) - self.base) as usize)
            .copied();
        if next.is_none() {
            // Everything sent was processed: forget the last sample, so the next burst after an
            // idle period is not interpolated against a stale one.
            *self.last_read.get_mut(stage) = None;
        }
        self.drop_consumed();
        let time = match (found, next, *self.last_read.get(stage)) {
            (Some(t), _, _) => t,
            (None, None, _) => return None,
            // A position stuck between two samples: interpolate the time the WAL at `lsn` was
            // made durable, so a stuck replica shows its lag growing.
            (None, Some(next), Some(prev)) => {
                if lsn < prev.lsn || next.lsn <= prev.lsn {
                    return None;
                }
                let fraction = (lsn.0 - prev.lsn.0) as f64 / (next.lsn.0 - prev.lsn.0) as f64;
                let span = next.time.saturating_duration_since(prev.time);
                prev.time + span.mul_f64(fraction.clamp(0.0, 1.0))
            }
            // Caught up until a new burst the replica has not reached yet: the lag it would
            // have if the first new sample were processed now.
            (None, Some(next), None) => next.time,
        };
        Some(now.saturating_duration_since(time))
    }

    /// Drops the samples every stage has consumed; an emptied ring that had grown goes back.
    fn drop_consumed(&mut self) {
        let min_head = self.heads.0.iter().copied().min().unwrap_or(self.base);
        while self.base < min_head {
            self.samples.pop_front();
            self.base += 1;
        }
        if self.samples.is_empty() && self.samples.capacity() > IDLE_CAPACITY {
            self.samples = VecDeque::new();
        }
    }

    /// A reply from the replica: update the lags it allows to measure. `sent` is how far the
    /// relay has sent.
    pub fn on_reply(&mut self, write: Lsn, flush: Lsn, replay: Lsn, sent: Lsn, now: Instant) {
        // A stage reported as 0/0 is one the client does not do (pg_receivewal never replays):
        // it has no lag figure rather than an ever-growing one.
        let mut read = |stage, lsn: Lsn| {
            if lsn.is_valid() {
                self.read(stage, lsn, now)
            } else {
                None
            }
        };
        let measured = [
            read(Stage::Write, write),
            read(Stage::Flush, flush),
            read(Stage::Replay, replay),
        ];
        // A stage not reported keeps no sample the reported ones are done with: they would
        // pile up to CAPACITY for pg_receivewal, whose replay is always 0/0.
        let stages = [
            (Stage::Write, write),
            (Stage::Flush, flush),
            (Stage::Replay, replay),
        ];
        let reported = stages
            .iter()
            .filter(|(_, l)| l.is_valid())
            .map(|(s, _)| *self.heads.get(*s))
            .min();
        if let Some(done) = reported {
            for (stage, lsn) in stages {
                let head = self.heads.get_mut(stage);
                if !lsn.is_valid() && *head < done {
                    *head = done;
                }
            }
            self.drop_consumed();
        }
        let clear = if replay == sent {
            let c = self.fully_applied_last_time;
            self.fully_applied_last_time = true;
            c
        } else {
            self.fully_applied_last_time = false;
            false
        };
        for (slot, m) in self.lags.0.iter_mut().zip(measured) {
            if m.is_some() || clear {
                *slot = m;
            }
        }
    }

    pub fn lag(&self, stage: Stage) -> Option<Duration> {
        *self.lags.get(stage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn measures_and_clears_when_idle() {
        let t0 = Instant::now();
        let mut t = LagTracker::default();
        t.record_sent(Lsn(100), t0);
        t.record_sent(Lsn(200), t0 + ms(10));
        // Written up to 150: the first sample is consumed. Flush has reached nothing yet: the
        // lag it would have if it reached the first sample now.
        t.on_reply(Lsn(150), Lsn(90), Lsn(0), Lsn(200), t0 + ms(30));
        assert_eq!(t.lag(Stage::Write), Some(ms(30)));
        assert_eq!(t.lag(Stage::Flush), Some(ms(30)));
        // 0/0 means "not reported" (pg_receivewal's replay): no figure.
        assert_eq!(t.lag(Stage::Replay), None);
        t.on_reply(Lsn(200), Lsn(200), Lsn(200), Lsn(200), t0 + ms(50));
        assert_eq!(t.lag(Stage::Write), Some(ms(40)));
        assert_eq!(t.lag(Stage::Replay), Some(ms(40)));
        // Fully replayed twice in a row: the lags are forgotten, not left to look stale.
        t.on_reply(
            Lsn(200),
            Lsn(200),
            Lsn(200),
            Lsn(200),
            t0 + Duration::from_secs(10),
        );
        assert_eq!(t.lag(Stage::Replay), None);
        assert_eq!(t.lag(Stage::Write), None);
    }

    #[test]
    fn stuck_replay_shows_growing_lag() {
        let t0 = Instant::now();
        let mut t = LagTracker::default();
        t.record_sent(Lsn(100), t0);
        t.on_reply(Lsn(100), Lsn(100), Lsn(50), Lsn(100), t0 + ms(5));
        assert_eq!(t.lag(Stage::Flush), Some(ms(5)));
        assert_eq!(t.lag(Stage::Replay), Some(ms(5)));
        t.on_reply(Lsn(100), Lsn(100), Lsn(50), Lsn(100), t0 + ms(9));
        assert_eq!(t.lag(Stage::Replay), Some(ms(9)));
        // Replay reaches the first sample, then sticks halfway to the next: interpolated.
        t.record_sent(Lsn(200), t0 + ms(100));
        t.on_reply(Lsn(200), Lsn(200), Lsn(100), Lsn(200), t0 + ms(150));
        t.on_reply(Lsn(200), Lsn(200), Lsn(150), Lsn(200), t0 + ms(200));
        assert_eq!(t.lag(Stage::Replay), Some(ms(150)));
        t.on_reply(Lsn(200), Lsn(200), Lsn(150), Lsn(200), t0 + ms(300));
        assert_eq!(t.lag(Stage::Replay), Some(ms(250)));
    }

    #[test]
    fn samples_follow_what_is_in_flight() {
        let t0 = Instant::now();
        let mut t = LagTracker::default();
        // pg_receivewal: replay always 0/0. Its samples go once write and flush are past them.
        for i in 1..=1000u64 {
            t.record_sent(Lsn(i * 100), t0 + ms(i));
            t.on_reply(Lsn(i * 100), Lsn(i * 100), Lsn(0), Lsn(i * 100), t0 + ms(i));
        }
        assert_eq!(t.samples.len(), 0);
        assert_eq!(t.lag(Stage::Replay), None);
        // A burst in flight grows the ring; caught up, it is given back.
        for i in 1001..=2000u64 {
            t.record_sent(Lsn(i * 100), t0 + ms(i));
        }
        assert_eq!(t.samples.len(), 1000);
        assert!(t.samples.capacity() >= 1000);
        let end = Lsn(200_000);
        t.on_reply(end, end, Lsn(0), end, t0 + ms(2500));
        assert_eq!(t.lag(Stage::Flush), Some(ms(500)));
        assert_eq!((t.samples.len(), t.samples.capacity()), (0, 0));
    }
}
