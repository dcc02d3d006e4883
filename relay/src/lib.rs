//! walrelay: a PostgreSQL WAL cascading-replication relay.
//!
//! Data flows one way: [`upstream`] (a physical replication client of the primary) hands WAL
//! to [`store`] (segment files on disk, one writer, durable position published after fsync),
//! which [`downstream`] (a walsender for standbys, pg_receivewal and other relays) serves.
//! [`wal`] and [`proto`] hold the PostgreSQL formats and wire codec and do no I/O; [`lag`]
//! measures replicas, [`http`] reports, [`config`] and [`cli`] take the operator's settings;
//! [`cmd`] holds the operator commands other than `run` (`status`, `passwd`, `check-config`).

pub mod access;
pub mod app;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod downstream;
pub mod failover;
pub mod http;
pub mod lag;
pub mod logging;
pub mod proto;
pub mod reload;
pub mod service;
pub mod store;
pub mod upstream;
pub mod wal;
pub mod wire;
