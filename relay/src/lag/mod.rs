//! Replication lag, with `pg_stat_replication`'s meaning.
//!
//! Byte lag is plain LSN arithmetic. Time lag follows walsender.c's LagTracker: each walsender
//! records (LSN, time the relay made it durable) samples as it sends; when a replica reports a
//! write/flush/replay position, the lag for that stage is "now" minus the time of the newest
//! sample at or below that position. A replica that reports it has replayed everything sent, in
//! two replies in a row, has its time lags cleared (null), so an idle primary never shows a
//! climbing number.
//!
//! [`registry`] holds the connected downstreams and their trackers; [`Feedback`] is the narrow
//! view of it that the upstream session forwards (apply and hot-standby feedback).

pub mod registry;
pub mod tracker;

pub use registry::Registry;
pub use tracker::{LagTracker, Stage};

use crate::proto::replication::HotStandbyFeedback;
use crate::wal::Lsn;

/// What the upstream session reports on behalf of the downstreams: the slowest replay (as
/// `apply`) and the oldest xmin / catalog_xmin they ask to keep (as hot-standby feedback).
pub trait Feedback: Send + Sync {
    /// The lowest replay position among downstreams that report one; `None` when none does
    /// (pg_receivewal reports 0/0 and must not drag apply down).
    fn min_replay(&self) -> Option<Lsn>;
    /// The oldest xmin and catalog_xmin (with epochs) any downstream asks to keep; zero where
    /// nobody asks.
    fn min_xmin(&self) -> HotStandbyFeedback;
}
