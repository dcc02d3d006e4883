//! Acceptance tests, one binary: real PostgreSQL primaries and standbys, pg_receivewal and the
//! walrelay binary on loopback ports (see `harness`, and `docs/testing.md`). Tests named
//! `harness_selfcheck_*` run the same scenarios with PostgreSQL itself as the upstream: they
//! prove the harness and the expectations right independently of the relay.
//!
//! Run them with `scripts/test --test it [NAME_FILTER]`; `WALRELAY_TEST_KEEP=1` keeps a failed
//! test's dirs, `WALRELAY_TEST_PGBIN` picks another PostgreSQL bin dir (default Debian's 15).
//! `versions` is the PostgreSQL 13-18 matrix (`scripts/install-pg-versions`; a major that is
//! not installed fails under CI); `status_cli` and `dashboard_metrics` need only the relay (its
//! upstream a closed port).

// A test that panics is a failed test: the no-unwrap/no-indexing rule is for the relay itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod harness;

mod access;
mod access_query;
mod backfill;
mod bad_clients;
mod campaign;
mod crash;
mod dashboard_metrics;
mod failover;
mod failsafe;
mod fanout;
mod ha;
mod lag;
mod lifecycle;
mod limits;
mod restart;
mod service;
mod status_cli;
mod storage_metrics;
mod storm;
mod streaming;
mod upstream_connection;
mod versions;
