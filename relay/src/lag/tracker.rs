//! The per-replica LSN→time sample ring (walsender.c LagTrackerWrite / LagTrackerRead).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::wal::Lsn;

/// Samples kept per replica (`LAG_TRACKER_BUFFER_SIZE` in PostgreSQL).
const CAPACITY: usize = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Write = 0,
    Flush = 1,
    Replay = 2,
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
    heads: [u64; 3],
    last_lsn: Lsn,
    lags: [Option<Duration>; 3],
    fully_applied_last_time: bool,
}

impl Default for LagTracker {
    fn default() -> Self {
        LagTracker {
            samples: VecDeque::new(),
            base: 0,
            heads: [0; 3],
            last_lsn: Lsn(0),
            lags: [None; 3],
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

    fn read(&mut self, stage: Stage, lsn: Lsn, now: Instant) -> Option<Duration> {
        let i = stage as usize;
        let mut found = None;
        while let Some(s) = self.samples.get((self.heads[i] - self.base) as usize) {
            if s.lsn > lsn {
                break;
            }
            found = Some(s.time);
            self.heads[i] += 1;
        }
        let min_head = self.heads.iter().copied().min().unwrap_or(self.base);
        while self.base < min_head {
            self.samples.pop_front();
            self.base += 1;
        }
        found.map(|t| now.saturating_duration_since(t))
    }

    /// A reply from the replica: update the lags it allows to measure. `sent` is how far the
    /// relay has sent.
    pub fn on_reply(&mut self, write: Lsn, flush: Lsn, replay: Lsn, sent: Lsn, now: Instant) {
        let measured = [
            self.read(Stage::Write, write, now),
            self.read(Stage::Flush, flush, now),
            self.read(Stage::Replay, replay, now),
        ];
        let clear = if replay == sent {
            let c = self.fully_applied_last_time;
            self.fully_applied_last_time = true;
            c
        } else {
            self.fully_applied_last_time = false;
            false
        };
        for (slot, m) in self.lags.iter_mut().zip(measured) {
            if m.is_some() || clear {
                *slot = m;
            }
        }
    }

    pub fn lag(&self, stage: Stage) -> Option<Duration> {
        self.lags[stage as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_and_clears_when_idle() {
        let t0 = Instant::now();
        let mut t = LagTracker::default();
        t.record_sent(Lsn(100), t0);
        t.record_sent(Lsn(200), t0 + Duration::from_millis(10));
        // Written up to 150: only the first sample is consumed.
        t.on_reply(
            Lsn(150),
            Lsn(0),
            Lsn(0),
            Lsn(200),
            t0 + Duration::from_millis(30),
        );
        assert_eq!(t.lag(Stage::Write), Some(Duration::from_millis(30)));
        assert_eq!(t.lag(Stage::Flush), None);
        t.on_reply(
            Lsn(200),
            Lsn(200),
            Lsn(200),
            Lsn(200),
            t0 + Duration::from_millis(50),
        );
        assert_eq!(t.lag(Stage::Write), Some(Duration::from_millis(40)));
        assert_eq!(t.lag(Stage::Replay), Some(Duration::from_millis(40)));
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
    fn keeps_last_value_while_behind() {
        let t0 = Instant::now();
        let mut t = LagTracker::default();
        t.record_sent(Lsn(100), t0);
        t.on_reply(
            Lsn(100),
            Lsn(100),
            Lsn(50),
            Lsn(100),
            t0 + Duration::from_millis(5),
        );
        t.on_reply(
            Lsn(100),
            Lsn(100),
            Lsn(50),
            Lsn(100),
            t0 + Duration::from_millis(9),
        );
        assert_eq!(t.lag(Stage::Flush), Some(Duration::from_millis(5)));
        assert_eq!(t.lag(Stage::Replay), None);
    }
}
