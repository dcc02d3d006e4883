//! Relay HA and clean stops (issue 12): two relays in one region, each on its own slot on the
//! primary, both in a standby's `primary_conninfo` (libpq multi-host); stopping the one it
//! streams from, the standby goes on from the other with every row, and both relays' stored
//! segments are byte-identical to each other and to the primary's. And SIGTERM while a
//! downstream has stopped reading (the walsender blocked writing to it) still ends the relay
//! with exit status 0.

use std::io::Read;

use serde_json::Value;

use crate::harness::receivewal::assert_same_file;
use crate::harness::{lsn, wait_until, workload, PgCluster, Relay, Topology};
use crate::limits::start_streaming;

/// `status|sender_port` of the standby's walreceiver (empty while it has none).
fn walreceiver(standby: &PgCluster) -> String {
    standby
        .try_psql("select status || '|' || sender_port from pg_stat_wal_receiver")
        .unwrap_or_default()
}

/// Waits until the standby's walreceiver streams from `port`.
fn wait_sender_port(standby: &PgCluster, port: u16) {
    standby.wait_for_value(
        &format!("the standby to stream from port {port}"),
        "select status || '|' || sender_port from pg_stat_wal_receiver",
        &format!("streaming|{port}"),
    );
}

/// The complete segment files a relay stores, by name.
fn complete_segments(relay: &Relay) -> Vec<String> {
    relay
        .segments()
        .into_iter()
        .filter(|(_, partial)| !partial)
        .map(|(name, _)| name)
        .collect()
}

/// Waits until `relay` stores `segment` complete.
fn wait_complete(relay: &Relay, segment: &str) {
    wait_until(
        &format!("relay on port {} to complete {segment}", relay.port()),
        || {
            let have = complete_segments(relay);
            if have.iter().any(|s| s == segment) {
                Ok(())
            } else {
                Err(format!("{have:?}"))
            }
        },
    );
}

/// The rows the primary has: `count|min|max` of `t`.
const ROWS: &str = "select count(*) || '|' || min(id) || '|' || max(id) from t";

/// Two relays, a standby with both in `primary_conninfo = 'host=…,… port=A,B'`: the relay it
/// streams from is stopped with SIGTERM (exit 0), rows written while it is down reach the
/// standby through the other one, whole. The stopped relay is started again and catches up;
/// then every complete segment either relay stores is in the other too (from the later of the
/// two first segments on), byte-identical, and byte-identical to the primary's pg_wal file.
/// Last the other relay stops, and the standby goes back to the restarted one, with every row.
#[test]
fn a_standby_listing_two_relays_goes_on_from_the_other_when_one_stops() {
    let primary = PgCluster::init_primary("primary");
    workload::create_table(&primary);
    // Every segment stays in the primary's pg_wal, to compare the relays' copies against.
    primary.pin_wal();
    let mut relays = [
        Relay::start(&primary.conninfo(), "relay_a"),
        Relay::start(&primary.conninfo(), "relay_b"),
    ];
    for relay in &mut relays {
        relay.wait_ready();
    }
    let conninfo = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres application_name=standby1",
        relays[0].port(),
        relays[1].port()
    );
    let standby = PgCluster::basebackup_standby_to(&primary, "standby1", &conninfo);
    workload::insert_rows(&primary, 1..=20_000);
    workload::wait_rows(&primary, &standby);

    // libpq tries the hosts in order; which one it took is what pg_stat_wal_receiver says.
    let serving = wait_until("the standby to stream from one of the relays", || {
        let now = walreceiver(&standby);
        relays
            .iter()
            .position(|r| now == format!("streaming|{}", r.port()))
            .ok_or(now)
    });
    let other = 1 - serving;
    relays[serving].wait_for_downstream("standby1");
    // Segments that were complete while both ran, and one the serving relay had begun.
    workload::switch_wal(&primary);
    let status = relays[serving].stop();
    assert!(
        status.success(),
        "SIGTERM is a clean stop, but walrelay exited {status}"
    );

    // Written while that relay is down: whole segments of it, and some of the next.
    workload::insert_rows(&primary, 20_001..=150_000);
    let written_while_down = workload::switch_wal(&primary);
    workload::insert_rows(&primary, 150_001..=160_000);
    // The standby may reach the other relay before that one has all the standby has (the
    // relays stream from the primary independently): then it is told, as PostgreSQL tells it,
    // "requested starting point ... is ahead of the WAL flush position of this server", and
    // tries again after wal_retrieve_retry_interval.
    wait_sender_port(&standby, relays[other].port());
    assert_every_row(&primary, &standby, 160_000);

    // The stopped relay comes back and catches up on what it missed.
    relays[serving].restart();
    relays[serving].wait_ready();
    let last = workload::switch_wal(&primary);
    for relay in &relays {
        wait_complete(relay, &last);
    }

    let a = complete_segments(&relays[0]);
    let b = complete_segments(&relays[1]);
    let first = a.first().max(b.first()).cloned().unwrap_or_default();
    let a_from: Vec<&String> = a.iter().filter(|s| **s >= first).collect();
    let b_from: Vec<&String> = b.iter().filter(|s| **s >= first).collect();
    assert_eq!(
        a_from, b_from,
        "the two relays store different complete segments"
    );
    assert!(
        a_from.contains(&&written_while_down),
        "{written_while_down}, written while one relay was down, is not in both: {a_from:?}"
    );
    for name in &a_from {
        assert!(name.starts_with("00000001"), "{name} is not on timeline 1");
        let ours = relays[0].data_dir().join("wal").join(name);
        assert_same_file(&ours, &relays[1].data_dir().join("wal").join(name));
        assert_same_file(&ours, &primary.pg_wal_dir().join(name));
    }
    eprintln!(
        "standby moved from port {} to {}; {} complete segments ({}..={}) byte-identical on \
         both relays and the primary",
        relays[serving].port(),
        relays[other].port(),
        a_from.len(),
        first,
        last
    );

    // And back: the relay that was restarted serves the standby when the other one stops.
    let status = relays[other].stop();
    assert!(status.success(), "walrelay exited {status} on SIGTERM");
    workload::insert_rows(&primary, 160_001..=170_000);
    wait_sender_port(&standby, relays[serving].port());
    assert_every_row(&primary, &standby, 170_000);
    let status = relays[serving].stop();
    assert!(status.success(), "walrelay exited {status} on SIGTERM");
}

/// Waits until `standby` has the primary's rows, which are ids 1..=`n`, and everything the
/// primary has flushed: every row arrived, none twice, still a standby.
fn assert_every_row(primary: &PgCluster, standby: &PgCluster, n: u32) {
    workload::wait_rows(primary, standby);
    let expected = format!("{n}|1|{n}");
    assert_eq!(primary.psql(ROWS), expected);
    assert_eq!(standby.psql(ROWS), expected, "the standby lacks rows");
    assert_eq!(standby.psql("select pg_is_in_recovery()"), "t");
    let flushed = primary.flush_lsn();
    wait_until("the standby to receive the primary's WAL", || {
        let got = standby.receive_lsn();
        if got >= flushed {
            Ok(())
        } else {
            Err(format!("received {got}, primary flushed {flushed}"))
        }
    });
}

/// The downstream named `name` in `/status`.
fn downstream(relay: &Relay, name: &str) -> Option<Value> {
    relay
        .status()
        .pointer("/downstreams")
        .and_then(Value::as_array)
        .and_then(|list| list.iter().find(|d| d["application_name"] == name).cloned())
}

/// SIGTERM while a replication client has stopped reading (its socket buffers full, the
/// walsender blocked writing to it; `--wal-sender-timeout 1h` so it is not dropped for that)
/// and a real standby streams: the relay exits 0, the standby is told
/// `terminating connection due to administrator command` (57P01) and the stuck client's
/// connection is closed. The bound is the relay's: a session gets `SHUTDOWN_GRACE` (5 s,
/// `downstream/session.rs`) to end after the cancel, then its last message gets
/// `FAREWELL_TIMEOUT` (2 s); the blocked walsender's flush also ends at the cancel. The test
/// waits up to `harness::WAIT` (60 s) for the exit, as a hang detector, not a timing check.
#[test]
fn sigterm_with_a_stopped_reader_exits_0() {
    let Topology {
        primary,
        relays: [mut relay],
        standbys: [standby],
        ..
    } = Topology::primary_relay_standby()
        .relay_args(&["--wal-sender-timeout", "1h"])
        .rows(1..=100)
        .start();
    let mut stuck = start_streaming(relay.port(), "stuck", None);
    // Far more WAL than the loopback socket buffers hold (a few MB each way).
    for batch in 0..5u32 {
        workload::insert_rows(
            &primary,
            1001 + batch * 50_000..=(batch + 1) * 50_000 + 1000,
        );
    }
    workload::wait_rows(&primary, &standby);
    let flushed = relay.wait_flushed(primary.flush_lsn());
    // The stuck client is far behind what the relay has (and the standby got): its walsender
    // is blocked writing.
    let entry = downstream(&relay, "stuck").expect("the stuck client in /status");
    let sent = lsn("stuck sent_lsn", entry["sent_lsn"].as_str().unwrap_or(""));
    assert!(
        flushed.0 - sent.0 > 16 << 20,
        "the stuck client was sent {sent} of {flushed}: it is not behind its socket buffers"
    );
    assert_eq!(walreceiver(&standby), format!("streaming|{}", relay.port()));

    let status = relay.stop();
    assert!(
        status.success(),
        "walrelay exited {status} on SIGTERM with a stopped reader"
    );
    // Each session ended as a shutdown (the stuck one when its last message did not go out),
    // and the relay went on to its last sync.
    let log = relay.log();
    for name in ["standby1", "stuck"] {
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("application_name=\"{name}\""))
                    && l.contains("downstream connection closed at shutdown")),
            "{name}'s session did not end as a shutdown:\n{log}"
        );
    }
    assert!(
        log.lines()
            .any(|l| l.contains("stopped") && l.contains("flushed=")),
        "no \"stopped\" line:\n{log}"
    );
    // The standby was told why its connection ended, in PostgreSQL's words.
    wait_until("the standby to log the relay's shutdown", || {
        let log = standby.log();
        if log.contains("terminating connection due to administrator command") {
            Ok(())
        } else {
            Err(walreceiver(&standby))
        }
    });
    // The stuck client's connection was closed: reading it ends (after what was buffered).
    let mut buf = vec![0u8; 1 << 20];
    let mut drained = 0usize;
    loop {
        match stuck.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => drained += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the stuck client's connection was not closed: {e}"),
        }
    }
    eprintln!("the stuck client was sent {sent} of {flushed}; {drained} bytes were still buffered");
}
