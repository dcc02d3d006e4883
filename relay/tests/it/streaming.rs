//! One standby, and pg_receivewal, streaming through the relay.

use crate::harness::receivewal::assert_segments_match;
use crate::harness::{workload, PgCluster, ReceiveWal, Relay};

/// A standby made from the primary, with `primary_conninfo` at `upstream_port`, gets the rows
/// written on the primary and its walreceiver streams from that port.
fn standby_streams(primary: &PgCluster, upstream_port: u16) -> PgCluster {
    let standby = PgCluster::basebackup_standby(primary, "standby1", upstream_port);
    workload::insert_rows(primary, 1..=1000);
    workload::wait_rows(primary, &standby);
    assert_eq!(
        standby.psql("select status, sender_port from pg_stat_wal_receiver"),
        format!("streaming|{upstream_port}")
    );
    standby
}

#[test]
fn standby_streams_through_relay() {
    let primary = PgCluster::init_primary("primary");
    workload::create_table(&primary);
    let mut relay = Relay::start(&primary.conninfo(), "relay");
    relay.wait_ready();
    let _standby = standby_streams(&primary, relay.port());
    relay.wait_for_downstream("standby1");
    assert_eq!(relay.metric("walrelay_upstream_connected"), Some(1.0));
}

#[test]
fn harness_selfcheck_standby_streams_from_primary() {
    let primary = PgCluster::init_primary("primary");
    workload::create_table(&primary);
    standby_streams(&primary, primary.port());
}

/// pg_receivewal at `port` completes every segment the primary switches away from, and each
/// is byte-identical to the primary's own file.
fn receivewal_identical(primary: &PgCluster, port: u16) {
    // Keeps the primary's copies of the segments until they are compared.
    primary.pin_wal();
    let mut receiver = ReceiveWal::start(port);
    receiver.wait_streaming();
    let mut switched = Vec::new();
    for batch in 0..4 {
        workload::insert_rows(primary, batch * 1000 + 1..=batch * 1000 + 1000);
        switched.push(workload::switch_wal(primary));
    }
    receiver.wait_for_segments(&switched);
    receiver.assert_running();
    assert_segments_match(&receiver, primary, switched.len());
}

#[test]
fn receivewal_segments_identical() {
    let primary = PgCluster::init_primary("primary");
    workload::create_table(&primary);
    let mut relay = Relay::start(&primary.conninfo(), "relay");
    relay.wait_ready();
    receivewal_identical(&primary, relay.port());
}

/// With `--wal-tail-size 0` the relay keeps no WAL in memory: every byte it serves is read back
/// from its segment files, and pg_receivewal's segments are still the primary's, byte for byte.
#[test]
fn receivewal_segments_identical_without_a_tail() {
    let primary = PgCluster::init_primary("primary");
    workload::create_table(&primary);
    let mut relay = Relay::start_with(&primary.conninfo(), "relay", &["--wal-tail-size", "0"]);
    relay.wait_ready();
    receivewal_identical(&primary, relay.port());
}

#[test]
fn harness_selfcheck_receivewal_from_primary() {
    let primary = PgCluster::init_primary("primary");
    workload::create_table(&primary);
    receivewal_identical(&primary, primary.port());
}

/// A standby with `wal_receiver_create_temp_slot = on` creates `pg_walreceiver_<pid>` on the
/// relay (`CREATE_REPLICATION_SLOT ... TEMPORARY PHYSICAL (RESERVE_WAL)`, the PID being the
/// relay's BackendKeyData) and streams through it; the slot is visible with
/// READ_REPLICATION_SLOT while it streams and gone once the standby disconnects.
#[test]
fn standby_with_temporary_slot_streams_through_relay() {
    let primary = PgCluster::init_primary("primary");
    workload::create_table(&primary);
    let mut relay = Relay::start(&primary.conninfo(), "relay");
    relay.wait_ready();
    let mut standby = PgCluster::basebackup_standby(&primary, "tempslot", relay.port());
    standby.psql("alter system set wal_receiver_create_temp_slot = on");
    standby.restart();
    workload::insert_rows(&primary, 1..=500);
    workload::wait_rows(&primary, &standby);
    let entry = crate::harness::wait_until("the standby to stream with a temporary slot", || {
        let d = relay.wait_for_downstream("tempslot");
        match d["slot_name"].as_str() {
            Some(s) if s.starts_with("pg_walreceiver_") => Ok(s.to_string()),
            _ => Err(d.to_string()),
        }
    });
    let mut client = crate::harness::wire::ReplClient::connect(relay.port(), "probe")
        .expect("replication connection to the relay");
    let read = client
        .query(&format!("READ_REPLICATION_SLOT {entry}"))
        .expect("READ_REPLICATION_SLOT");
    assert_eq!(
        read.rows
            .first()
            .and_then(|r| r.first())
            .cloned()
            .flatten()
            .as_deref(),
        Some("physical"),
        "{read:?}"
    );
    standby.stop();
    crate::harness::wait_until("the temporary slot to go with its session", || {
        let r = client
            .query(&format!("READ_REPLICATION_SLOT {entry}"))
            .map_err(|e| e.to_string())?;
        match r
            .rows
            .first()
            .and_then(|row| row.first())
            .cloned()
            .flatten()
        {
            None => Ok(()),
            Some(t) => Err(format!("still there: {t}")),
        }
    });
}

/// A first host that accepts TCP and then says nothing (a hung server) does not hold the relay
/// up: with no `connect_timeout` in the conninfo, the relay's 10 s default gives it up and the
/// relay streams from the next host.
#[test]
fn a_hung_first_host_is_given_up_after_the_default_connect_timeout() {
    let hung = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let hung_port = hung.local_addr().expect("addr").port();
    // Accepts and holds every connection, answering nothing (detached: it ends with the test
    // process).
    std::thread::spawn(move || {
        let held: Vec<_> = hung.incoming().map_while(Result::ok).collect();
        drop(held);
    });
    let primary = PgCluster::init_primary("primary");
    workload::create_table(&primary);
    let upstream = format!(
        "host=127.0.0.1,127.0.0.1 port={hung_port},{} user=postgres",
        primary.port()
    );
    let mut relay = Relay::start(&upstream, "relay");
    relay.wait_ready();
    let _standby = standby_streams(&primary, relay.port());
    let status = relay.status();
    assert_eq!(
        status["upstream"]["port"].as_u64(),
        Some(u64::from(primary.port())),
        "{status}"
    );
}
