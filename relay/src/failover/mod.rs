//! Failover-safe serving (`--failover-standby NAME`, brief §3.5).
//!
//! A downstream that received WAL past the point where a newly promoted primary's history forks
//! must be rebuilt. To make every downstream able to follow whichever HA candidate is promoted,
//! the relay serves no WAL past the position that the named candidates have confirmed to the
//! primary, read from the primary's `pg_stat_replication` and `pg_replication_slots` over a
//! normal SQL connection.
//!
//! ```text
//!  primary ──pg_stat_replication, slots──▶ watcher ──▶ rule ──▶ ServeLimit
//!                                            │                     │
//!                              failover.json ┘ (persist)           │
//!        walsenders ◀── store::servable (min(durable, limit), one watch) ◀──────┘
//! ```
//!
//! The rule ([`rule`]) rests on state that outlives the relay and the candidate's connection:
//! a candidate's flush while connected, its physical slot's `restart_lsn` while it is away,
//! what the relay saw of it before ([`persist`], kept across restarts). A candidate known by
//! none of these holds at startup (`--failover-standby-missing=hold`, the default) until it
//! is. After a failover the set is learned anew on the new primary.

pub mod persist;
pub mod reading;
pub mod rule;
pub mod watcher;

pub use rule::{CandidateState, HoldRule, HoldState, MissingPolicy, Source};
pub use watcher::{CandidateJson, FailoverStatus, FailoverWatcher};
