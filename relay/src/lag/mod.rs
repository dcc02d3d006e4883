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

mod feedback;
pub mod registry;
pub mod tracker;

pub use feedback::Feedback;
pub use registry::Registry;
pub use tracker::{LagTracker, Stage};
