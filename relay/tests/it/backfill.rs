//! Where a relay's WAL begins and what it reports as its end: a new store on an upstream slot
//! that already exists starts at the slot's `restart_lsn`, so standbys whose base backups
//! predate the relay are served; `IDENTIFY_SYSTEM` reports exactly the servable end, and a
//! standby ahead of the relay is refused in PostgreSQL's words, retries, and streams once the
//! relay has caught up past it.

use std::path::PathBuf;

use walrelay::wal::segment::segment_file_name;
use walrelay::wal::Lsn;

use crate::harness::receivewal::assert_same_file;
use crate::harness::wire::{QueryResult, ReplClient};
use crate::harness::{
    lsn, os, segment_start, wait_until, workload, PgCluster, Relay, Topology, SEG_SIZE,
};
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

/// `IDENTIFY_SYSTEM` on `port`: (timeline, xlogpos).
fn identify(port: u16) -> (String, Lsn) {
    let mut client = ReplClient::connect(port, "identify_check")
        .unwrap_or_else(|e| panic!("replication connection to port {port}: {e}"));
    let reply = client.query("IDENTIFY_SYSTEM").expect("IDENTIFY_SYSTEM");
    assert_eq!(reply.error, None, "IDENTIFY_SYSTEM on port {port}");
    let row = reply.rows.first().expect("IDENTIFY_SYSTEM returns a row");
    let tli = row.get(1).cloned().flatten().expect("a timeline");
    let pos = row.get(2).cloned().flatten().expect("an xlogpos");
    (tli, lsn("IDENTIFY_SYSTEM xlogpos", &pos))
}

/// Asserts that `IDENTIFY_SYSTEM`'s xlogpos is the servable end of `/status`, on a relay that
/// may be streaming: the two are compared when `/status` gave the same end before and after
/// the `IDENTIFY_SYSTEM` (polled until it does).
fn assert_identify_is_servable(relay: &Relay) {
    wait_until(
        "IDENTIFY_SYSTEM between two equal /status servable ends",
        || {
            let before = relay.status_lsn("/store/servable_lsn");
            let (_, pos) = identify(relay.port());
            let after = relay.status_lsn("/store/servable_lsn");
            if before != after {
                return Err(format!("servable end moved from {before} to {after}"));
            }
            assert_eq!(
                pos, before,
                "IDENTIFY_SYSTEM xlogpos is not the servable end"
            );
            Ok(())
        },
    );
}

/// `START_REPLICATION PHYSICAL start TIMELINE 1` on `port`, expected to be refused.
fn start_refused(port: u16, start: Lsn) -> QueryResult {
    let mut client = ReplClient::connect(port, "ahead_check")
        .unwrap_or_else(|e| panic!("replication connection to port {port}: {e}"));
    let reply = client
        .query(&format!("START_REPLICATION PHYSICAL {start} TIMELINE 1"))
        .expect("START_REPLICATION reply");
    assert!(
        !reply.copy_data,
        "port {port} sent CopyData (WAL or a keepalive) for a start at {start}, past its flush position, instead of refusing it"
    );
    reply
}

/// A standby ahead of its relay: the relay is restarted from its data directory while the
/// standby got segments further from the primary (a relay restarted from an older disk, or one
/// a standby switches to). The relay reports exactly its servable end in `IDENTIFY_SYSTEM`
/// (also right after the restart and while it lags), refuses a start past it in PostgreSQL's
/// words (checked against PostgreSQL's own answer), sends the standby nothing, the standby
/// keeps retrying with its rows intact, and streams every row once the relay has caught up.
#[test]
fn ahead_standby_refused_until_relay_catches_up() {
    let Topology {
        primary,
        relays: [mut relay],
        standbys: [standby],
        ..
    } = Topology::primary_relay_standby().rows(1..=100).start();
    relay.wait_flushed(primary.flush_lsn());
    workload::wait_rows(&primary, &standby);
    assert_identify_is_servable(&relay);
    let before_stop = relay.status_lsn("/store/servable_lsn");
    let status = relay.stop();
    assert!(status.success(), "walrelay exited {status} on SIGTERM");

    // The standby goes on from the primary, segments past the relay.
    standby.set_primary_conninfo(Some(primary.port()));
    for batch in 1..4 {
        workload::insert_rows(&primary, batch * 100 + 1..=batch * 100 + 100);
        workload::switch_wal(&primary);
    }
    workload::wait_rows(&primary, &standby);

    // The relay comes back from its data directory with no upstream to catch up from.
    relay.set_upstream(&format!(
        "host=127.0.0.1 port={} user=postgres",
        os::free_port()
    ));
    relay.restart();
    relay.wait_healthy();
    let servable = relay.status_lsn("/store/servable_lsn");
    assert!(
        servable >= before_stop && servable < primary.flush_lsn(),
        "after the restart the relay serves up to {servable}: it held {before_stop} and lags the primary"
    );
    assert_eq!(
        identify(relay.port()),
        ("1".to_string(), servable),
        "IDENTIFY_SYSTEM after the restart must report the servable end"
    );

    // What PostgreSQL answers a start past its flush position, and the relay the same.
    let standby_start = standby.receive_lsn().segment_start(SEG_SIZE);
    assert!(
        standby_start > servable,
        "the standby ({standby_start}) must be ahead of the relay ({servable})"
    );
    let pg_far = Lsn(primary.flush_lsn().segment_start(SEG_SIZE).0 + 4 * SEG_SIZE);
    let pg = start_refused(primary.port(), pg_far);
    let pg_err = pg.error.expect("PostgreSQL refuses a start past its flush");
    let pg_prefix = format!(
        "requested starting point {pg_far} is ahead of the WAL flush position of this server "
    );
    assert!(
        pg.copy_both && pg_err.code() == "XX000" && pg_err.message().starts_with(&pg_prefix),
        "harness self-check: PostgreSQL answered {pg_err:?} (CopyBoth first: {})",
        pg.copy_both
    );
    let ours = start_refused(relay.port(), standby_start);
    let err = ours
        .error
        .expect("the relay refuses a start past its servable end");
    assert!(
        ours.copy_both,
        "PostgreSQL sends CopyBothResponse before this error"
    );
    assert_eq!(
        (err.severity(), err.code(), err.message()),
        (
            pg_err.severity(),
            "XX000",
            format!("requested starting point {standby_start} is ahead of the WAL flush position of this server {servable}").as_str()
        )
    );

    // The standby is refused, retries, and is sent nothing.
    let rows = standby.psql("select count(*) from t");
    standby.set_primary_conninfo(Some(relay.port()));
    let refusal = format!(
        "requested starting point {standby_start} is ahead of the WAL flush position of this server {servable}"
    );
    wait_until("the standby to be refused twice (a retry)", || {
        let n = standby.log().matches(&refusal).count();
        if n >= 2 {
            Ok(())
        } else {
            Err(format!("{n} refusals; log tail:\n{}", standby.log_tail()))
        }
    });
    assert_eq!(
        relay.metric("walrelay_wal_sent_bytes_total").unwrap_or(0.0),
        0.0,
        "the relay sent WAL to a standby ahead of it"
    );
    assert_eq!(standby.psql("select count(*) from t"), rows);
    assert_eq!(identify(relay.port()).1, servable);

    // The relay catches up from the primary; the standby streams from it, every row.
    relay.stop();
    relay.set_upstream(&primary.conninfo());
    relay.restart();
    relay.wait_ready();
    workload::insert_rows(&primary, 401..=500);
    workload::wait_rows(&primary, &standby);
    assert_eq!(
        standby.psql("select status, sender_port from pg_stat_wal_receiver"),
        format!("streaming|{}", relay.port())
    );
    assert_identify_is_servable(&relay);
}

/// Backfill: a relay started late (its store begins at the primary's segment of that moment)
/// serves a standby restored from an older base backup: the segments it never held, which the
/// primary still has (pinned by a slot), are fetched from the primary on a second connection,
/// stored byte-identical to the primary's, and streamed; every row arrives. WAL the primary
/// no longer has either gets `58P01` in PostgreSQL's words, as the primary itself answers.
#[test]
fn backfill_serves_wal_older_than_the_store() {
    let primary = PgCluster::init_primary("primary");
    workload::create_table(&primary);
    workload::retire_first_segment(&primary);
    primary.pin_wal();
    workload::insert_rows(&primary, 401..=500);
    let standby = PgCluster::basebackup_standby(&primary, "standby", os::free_port());
    for batch in 5..8 {
        workload::insert_rows(&primary, batch * 100 + 1..=batch * 100 + 100);
        workload::switch_wal(&primary);
    }
    primary.psql("checkpoint");

    let mut relay = Relay::start(&primary.conninfo(), "relay");
    relay.wait_ready();
    relay.wait_flushed(primary.flush_lsn());
    let first = relay
        .segments()
        .first()
        .map(|(n, _)| n.clone())
        .expect("a segment");
    let needed = standby.replay_lsn().segment_start(SEG_SIZE);
    assert!(
        needed < segment_start(&first),
        "the standby ({needed}) must need WAL from before the relay's first segment {first}"
    );

    standby.set_primary_conninfo(Some(relay.port()));
    workload::insert_rows(&primary, 801..=900);
    workload::wait_rows(&primary, &standby);
    assert_eq!(
        standby.psql("select status, sender_port from pg_stat_wal_receiver"),
        format!("streaming|{}", relay.port())
    );
    let segments = relay.segments();
    let backfilled: Vec<&String> = segments
        .iter()
        .map(|(n, _)| n)
        .filter(|n| segment_start(n) < segment_start(&first))
        .collect();
    assert!(
        backfilled
            .first()
            .is_some_and(|n| segment_start(n) <= needed),
        "the relay backfilled {backfilled:?}, not from the standby's {needed}"
    );
    for (name, partial) in &segments {
        if !partial {
            assert_same_file(
                &relay.data_dir().join("wal").join(name),
                &primary.pg_wal_dir().join(name),
            );
        }
    }
    assert!(
        segments
            .iter()
            .all(|(n, p)| !p || segment_start(n) >= segment_start(&first)),
        "backfilled segments are stored whole: {segments:?}"
    );

    // Backfill added WAL below the store; the reported end is still the servable end.
    assert_identify_is_servable(&relay);

    // WAL neither the relay nor the primary has: both answer alike.
    let gone = Lsn(SEG_SIZE);
    let pg = start_refused(primary.port(), gone)
        .error
        .expect("the primary refuses");
    let ours = start_refused(relay.port(), gone)
        .error
        .expect("the relay refuses");
    assert_eq!(
        (pg.code(), pg.message()),
        (
            "58P01",
            "requested WAL segment 000000010000000000000001 has already been removed"
        ),
        "harness self-check: PostgreSQL's answer"
    );
    assert_eq!(
        (ours.severity(), ours.code(), ours.message()),
        (pg.severity(), pg.code(), pg.message())
    );
    relay.assert_running();
}
