//! Acceptance tests: real PostgreSQL primaries and standbys, pg_receivewal and the walrelay
//! binary on loopback ports (see `harness`). Tests named `harness_selfcheck_*` run the same
//! scenarios with PostgreSQL itself as the upstream: they prove the harness and the
//! expectations right independently of the relay.
//!
//! Run them with `cargo test --test it`; `WALRELAY_TEST_KEEP=1` keeps a failed test's dirs,
//! `WALRELAY_TEST_PGBIN` picks another PostgreSQL bin dir (default Debian's 15).
//! `versions` runs PostgreSQL 16-18 from `scripts/install-pg-versions` when installed.

mod harness;

mod bad_clients;
mod crash;
mod dashboard_metrics;
mod failover;
mod fanout;
mod lag;
mod lifecycle;
mod restart;
mod status_cli;
mod streaming;
mod upstream_connection;
mod versions;
