//! Failover-safe serving (`--failover-standby NAME`, brief §3.5).
//!
//! A downstream that received WAL past the point where a newly promoted primary's history forks
//! must be rebuilt. To make every downstream able to follow whichever HA candidate is promoted,
//! the relay serves no WAL past the flush position that the named candidates have confirmed to
//! the primary, read from the primary's `pg_stat_replication` over a normal SQL connection.
//!
//! ```text
//!  primary ──pg_stat_replication──▶ watcher (polls while WAL waits) ──▶ rule ──▶ ServeLimit
//!                                                                               │
//!        walsenders ◀── store::servable (min(durable, limit), one watch) ◀──────┘
//! ```
//!
//! The rule for absent candidates ([`rule`]): a named standby holds once it has been seen
//! connected to the current primary; while it is then absent the relay holds at its last
//! confirmed position (and says so); a standby never seen on the current primary does not hold.
//! After a failover the set is learned anew on the new primary.

pub mod rule;
pub mod watcher;

pub use rule::{CandidateState, HoldRule};
pub use watcher::{CandidateJson, FailoverStatus, FailoverWatcher};
