//! Clients that are not walreceivers, or ask for what the relay cannot give, get the errors
//! PostgreSQL itself would send; each ends at most its own connection.

use crate::harness::pg::psql;
use crate::harness::wire::{send_raw, RawOutcome, ReplClient};
use crate::harness::{workload, PgCluster, Topology};

/// A well-formed replication command works: IDENTIFY_SYSTEM reports the primary's system id.
fn assert_identify_system(port: u16, primary: &PgCluster) {
    let mut client = ReplClient::connect(port, "identify").expect("replication connection");
    let reply = client
        .query("IDENTIFY_SYSTEM")
        .expect("IDENTIFY_SYSTEM reply");
    assert_eq!(reply.error, None, "IDENTIFY_SYSTEM failed");
    let systemid = reply
        .rows
        .first()
        .and_then(|row| row.first().cloned().flatten());
    assert_eq!(
        systemid.as_deref(),
        Some(
            primary
                .psql("select system_identifier from pg_control_system()")
                .as_str()
        ),
        "IDENTIFY_SYSTEM rows: {:?}",
        reply.rows
    );
}

/// Runs `sql` on a fresh replication connection and checks the error: SQLSTATE `code` and a
/// message containing `text`, and no WAL sent.
fn assert_repl_error(port: u16, sql: &str, code: &str, text: &str) {
    let mut client = ReplClient::connect(port, "bad_client").expect("replication connection");
    let reply = client
        .query(sql)
        .unwrap_or_else(|e| panic!("{sql}: no well-formed reply: {e}"));
    assert!(
        !reply.copy_data,
        "{sql}: the server streamed WAL instead of an error"
    );
    let error = reply
        .error
        .unwrap_or_else(|| panic!("{sql}: expected error {code}, got rows {:?}", reply.rows));
    assert_eq!(error.code(), code, "{sql}: {error}");
    assert!(error.message().contains(text), "{sql}: {error}");
}

/// The errors for WAL from before the store, WAL from the future, and SQL. The caller has run
/// [`workload::retire_first_segment`] before the server at `port` got its first WAL.
fn assert_replication_errors(port: u16) {
    assert_repl_error(
        port,
        "START_REPLICATION 0/1000000 TIMELINE 1",
        "58P01",
        "has already been removed",
    );
    assert_repl_error(
        port,
        "START_REPLICATION FF/0 TIMELINE 1",
        "XX000",
        "ahead of the WAL flush position",
    );
    assert_repl_error(
        port,
        "SELECT 1",
        "0A000",
        "cannot execute SQL commands in WAL sender",
    );
}

/// Garbage instead of a startup packet, and garbage after one, gets an ErrorResponse or a
/// closed connection: never a hang, never anything else.
fn assert_garbage_refused(port: u16) {
    let garbage: [(&str, &[u8]); 4] = [
        ("an HTTP request", b"GET / HTTP/1.1\r\nHost: relay\r\n\r\n"),
        (
            "an unknown protocol version",
            &[0, 0, 0, 8, 0x12, 0x34, 0x56, 0x78],
        ),
        ("a negative length", &[0xFF; 64]),
        (
            "a truncated startup packet",
            &[0, 0, 0, 100, 0, 3, 0, 0, b'u'],
        ),
    ];
    for (what, bytes) in garbage {
        match send_raw(port, bytes) {
            Ok(RawOutcome::Closed) => {}
            Ok(RawOutcome::Error(e)) => {
                assert!(matches!(e.severity(), "FATAL" | "ERROR"), "{what}: {e}")
            }
            Ok(other) => panic!("{what}: unexpected reply {other:?}"),
            Err(e) => panic!("{what}: the server neither answered nor closed: {e}"),
        }
    }
    let client = ReplClient::connect(port, "garbage").expect("replication connection");
    match client.send_raw(&[0xFF, 0, 0, 0, 4]) {
        Ok(RawOutcome::Closed) => {}
        Ok(RawOutcome::Error(e)) => assert_eq!(e.code(), "08P01", "unknown message type: {e}"),
        Ok(other) => panic!("unknown message type: unexpected reply {other:?}"),
        Err(e) => panic!("unknown message type: the server neither answered nor closed: {e}"),
    }
}

#[test]
fn bad_clients_get_postgres_errors() {
    let Topology {
        primary,
        relays: [mut relay],
        standbys: [standby],
        ..
    } = Topology::primary_relay_standby()
        .on_primary(workload::retire_first_segment)
        .rows(1001..=2000)
        .start();
    let walreceiver = standby.psql("select pid from pg_stat_wal_receiver");

    let plain = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres",
        relay.port()
    );
    match psql(&plain, "select 1") {
        Ok(out) => panic!("a non-replication connection to the relay succeeded: {out}"),
        Err(stderr) => assert!(stderr.contains("FATAL"), "psql said: {stderr}"),
    }
    assert_garbage_refused(relay.port());
    assert_identify_system(relay.port(), &primary);
    assert_replication_errors(relay.port());

    // The standby streaming all along noticed nothing.
    relay.assert_running();
    workload::insert_rows(&primary, 2001..=3000);
    workload::wait_rows(&primary, &standby);
    assert_eq!(
        standby.psql("select pid from pg_stat_wal_receiver"),
        walreceiver,
        "the standby's walreceiver reconnected"
    );
}

#[test]
fn harness_selfcheck_postgres_gives_the_expected_errors() {
    let primary = PgCluster::init_primary("primary");
    workload::create_table(&primary);
    workload::retire_first_segment(&primary);
    assert_garbage_refused(primary.port());
    assert_identify_system(primary.port(), &primary);
    assert_replication_errors(primary.port());
}
