//! Where a relay's WAL begins and what it reports as its end: a new store on an upstream slot
//! that already exists starts at the slot's `restart_lsn`, so standbys whose base backups
//! predate the relay are served; `IDENTIFY_SYSTEM` reports exactly the servable end, and a
//! standby ahead of the relay is refused in PostgreSQL's words, retries, and streams once the
//! relay has caught up past it.

use std::path::PathBuf;

use walrelay::wal::segment::segment_file_name;

use crate::harness::receivewal::assert_same_file;
use crate::harness::{os, workload, PgCluster, Relay, SEG_SIZE};
use crate::versions::installed;

/// The slot exists before the standby's base backup (as Patroni's permanent slots do); the
/// primary moves on several segments; a relay started only now with an empty data directory
/// on that slot starts at the slot's restart segment, and the standby, whose base backup is
/// older than the relay's start, streams through it and gets every row. Without the slot
/// start the relay would begin at the primary's current segment and the standby would get
/// `58P01` for WAL the primary still holds.
#[test]
fn slot_start_serves_standby_older_than_relay() {
    slot_start_scenario(None);
}

/// The same on PostgreSQL 14, which has no `READ_REPLICATION_SLOT`: the relay reads the
/// slot's `restart_lsn` from `pg_replication_slots` through a SQL session.
#[test]
fn slot_start_serves_standby_older_than_relay_pg14() {
    if let Some(bin) = installed(14) {
        slot_start_scenario(Some(bin));
    }
}

/// `bin`: the PostgreSQL to run (the harness default, Debian's 15, for `None`). The npm builds
/// have no pg_basebackup, so there the standby is a cold copy of the primary.
fn slot_start_scenario(bin: Option<PathBuf>) {
    let mut primary = match &bin {
        Some(bin) => PgCluster::init_primary_with("primary", bin),
        None => PgCluster::init_primary("primary"),
    };
    workload::create_table(&primary);
    primary.psql("select pg_create_physical_replication_slot('relay', true)");
    let restart = primary
        .slot_restart_lsn("relay")
        .expect("the slot reserves WAL from its creation");
    workload::insert_rows(&primary, 1..=100);
    // Its walreceiver has nothing to connect to until the relay exists.
    let standby = match &bin {
        Some(bin) => PgCluster::cold_copy_standby(&mut primary, "standby", os::free_port(), bin),
        None => PgCluster::basebackup_standby(&primary, "standby", os::free_port()),
    };
    for batch in 1..4 {
        workload::insert_rows(&primary, batch * 100 + 1..=batch * 100 + 100);
        workload::switch_wal(&primary);
    }
    primary.psql("checkpoint");
    let first = segment_file_name(1, restart.0 / SEG_SIZE, SEG_SIZE);
    assert!(
        primary.pg_wal_dir().join(&first).exists(),
        "the slot holds {first} on the primary"
    );
    let current = primary.flush_lsn();
    assert!(
        current.0 / SEG_SIZE > restart.0 / SEG_SIZE + 2,
        "the primary ({current}) must be segments past the slot ({restart}) for the test to mean anything"
    );

    let mut relay = Relay::start(&primary.conninfo(), "relay");
    relay.wait_ready();
    relay.wait_flushed(current);
    let segments = relay.segments();
    assert_eq!(
        segments.first().map(|(n, _)| n.as_str()),
        Some(first.as_str()),
        "a new store on an existing slot starts at the slot's restart segment; the relay has {segments:?}"
    );

    standby.set_primary_conninfo(Some(relay.port()));
    workload::insert_rows(&primary, 401..=500);
    workload::wait_rows(&primary, &standby);
    assert_eq!(
        standby.psql("select status, sender_port from pg_stat_wal_receiver"),
        format!("streaming|{}", relay.port())
    );

    // Every segment the relay completed is the primary's, byte for byte, from the first.
    let complete: Vec<String> = relay
        .segments()
        .into_iter()
        .filter(|(_, partial)| !partial)
        .map(|(n, _)| n)
        .collect();
    assert!(
        complete.len() >= 3 && complete.first() == Some(&first),
        "expected the relay to have completed the segments from {first}: {complete:?}"
    );
    for name in &complete {
        assert_same_file(
            &relay.data_dir().join("wal").join(name),
            &primary.pg_wal_dir().join(name),
        );
    }
    assert!(
        !standby.log().contains("has already been removed"),
        "the standby was refused WAL: {}",
        standby.log_tail()
    );
    relay.assert_running();
}
