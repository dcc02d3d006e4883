//! Failover (brief §3.4–3.5): real promotions (`pg_ctl promote`), real crashes (`kill -9`).
//! The relay lists the primary and its HA standbys with `target_session_attrs=read-write`,
//! finds the new primary by itself, moves WAL past the new primary's fork point aside, follows
//! the timeline switch and carries its downstreams across it, which nobody touches.

use serde_json::Value;
use walrelay::wal::segment::{partial_file_name, segment_file_name};
use walrelay::wal::Lsn;

use crate::harness::os;
use crate::harness::receivewal::{assert_file_matches, assert_same_file};
use crate::harness::topology::read_write_hosts;
use crate::harness::wire::ReplClient;
use crate::harness::{lsn, wait_until, workload, PgCluster, ReceiveWal, Relay, Topology, SEG_SIZE};

/// Waits until the relay streams from the server at `port` with its durable WAL on
/// `timeline` (`/status` upstream port and timeline, metric `walrelay_timeline`); returns that
/// `/status`.
pub(crate) fn wait_upstream(relay: &Relay, port: u16, timeline: u32) -> Value {
    wait_until(
        &format!("the relay to stream timeline {timeline} from port {port}"),
        || {
            let status = relay.status();
            let up = &status["upstream"];
            let metric = relay.metric("walrelay_timeline");
            if up["connected"] == true
                && up["port"] == port
                && up["timeline"] == timeline
                && metric == Some(f64::from(timeline))
            {
                Ok(status)
            } else {
                Err(format!("walrelay_timeline {metric:?}, upstream {up}"))
            }
        },
    )
}

/// Waits until the standby's walreceiver streams WAL of `timeline`.
pub(crate) fn wait_received_tli(standby: &PgCluster, timeline: u32) {
    standby.wait_for_value(
        &format!("the walreceiver to stream timeline {timeline}"),
        "select status || ':' || received_tli from pg_stat_wal_receiver",
        &format!("streaming:{timeline}"),
    );
}

/// The walreceiver's pid and the port it streams from.
pub(crate) fn walreceiver(standby: &PgCluster) -> String {
    standby.psql("select pid || ':' || sender_port from pg_stat_wal_receiver")
}

/// Cuts the HA standby `name` off the primary: its walreceiver stops and stays stopped, so it
/// lags from now on. Returns the end of the WAL it received.
pub(crate) fn cut_off(primary: &PgCluster, ha: &PgCluster, name: &str) -> Lsn {
    ha.set_primary_conninfo(None);
    ha.wait_for_value(
        "the walreceiver to stop",
        "select count(*) from pg_stat_wal_receiver",
        "0",
    );
    primary.wait_for_value(
        &format!("{name} to be gone from the primary's pg_stat_replication"),
        &format!("select count(*) from pg_stat_replication where application_name = '{name}'"),
        "0",
    );
    ha.receive_lsn()
}

/// The application names `/status` lists in `diverged_downstreams`.
fn diverged_names(status: &Value) -> Vec<String> {
    status["diverged_downstreams"]
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|d| d["application_name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The relay reported no downstream as diverged, in `/status` and in its metric.
fn assert_no_diverged_downstreams(relay: &Relay) {
    let status = relay.status();
    assert_eq!(
        diverged_names(&status),
        Vec::<String>::new(),
        "/status diverged_downstreams: {status}"
    );
    let count = relay
        .metric("walrelay_downstream_divergences_total")
        .unwrap_or(0.0);
    assert_eq!(count, 0.0, "walrelay_downstream_divergences_total");
}

/// The relay never moved WAL aside: nothing in `diverged/`, no divergence counted or logged.
pub(crate) fn assert_relay_not_diverged(relay: &Relay) {
    assert_eq!(
        os::files_in(&relay.data_dir().join("diverged")),
        Vec::<String>::new(),
        "the relay moved WAL to diverged/"
    );
    assert_eq!(
        relay.metric("walrelay_divergences_total").unwrap_or(0.0),
        0.0,
        "walrelay_divergences_total"
    );
    assert!(
        !relay.log().contains("moved it to diverged/"),
        "the relay logged a divergence:\n{}",
        relay.log_tail()
    );
}

/// Whether the file `name` (a segment name, perhaps with a suffix) is of a later segment than
/// the segment file name `segment` (same timeline).
fn segment_after(name: &str, segment: &str) -> bool {
    name.get(..24).is_some_and(|n| n > segment)
}

/// pg_receivewal followed the switch to `timeline` through the relay, on its one connection
/// loop: it holds the history file, byte-identical to the new primary's, says so in its log,
/// and reported no error.
pub(crate) fn assert_receivewal_followed(
    receiver: &mut ReceiveWal,
    new_primary: &PgCluster,
    timeline: u32,
) {
    let history = format!("{timeline:08X}.history");
    wait_until(&format!("pg_receivewal to fetch {history}"), || {
        if receiver.wal_dir().join(&history).exists() {
            Ok(())
        } else {
            Err(receiver.log())
        }
    });
    assert_file_matches(receiver, &history, new_primary);
    let switched = format!("switched to timeline {timeline} at");
    wait_until(&format!("pg_receivewal to log {switched:?}"), || {
        let log = receiver.log();
        if log.contains(&switched) {
            Ok(())
        } else {
            Err(log)
        }
    });
    receiver.assert_running();
    assert_eq!(
        receiver.errors(),
        Vec::<String>::new(),
        "pg_receivewal errors"
    );
}

/// Switches a segment on `primary` (on `timeline`) and waits until pg_receivewal and the
/// relay have it complete, each byte-identical to the primary's file.
fn assert_switched_segment_identical(
    primary: &PgCluster,
    timeline: u32,
    relay: &Relay,
    receiver: Option<&ReceiveWal>,
) -> String {
    let segment = workload::switch_wal(primary);
    assert!(
        segment.starts_with(&format!("{timeline:08X}")),
        "the switched segment {segment} is not on timeline {timeline}"
    );
    if let Some(receiver) = receiver {
        receiver.wait_for_segments(std::slice::from_ref(&segment));
        assert_file_matches(receiver, &segment, primary);
    }
    let ours = relay.data_dir().join("wal").join(&segment);
    wait_until(&format!("the relay to complete {segment}"), || {
        if ours.exists() {
            Ok(())
        } else {
            Err(format!("{:?}", os::files_in(&relay.data_dir().join("wal"))))
        }
    });
    assert_same_file(&ours, &primary.pg_wal_dir().join(&segment));
    segment
}

/// Clean switchover: the primary stops (`-m fast`, so its HA standby has every byte), the HA
/// standby is promoted; the relay finds it, and two standbys and pg_receivewal follow
/// timeline 2 through the relay on their existing connections.
#[test]
fn clean_switchover_carries_downstreams() {
    let Topology {
        mut primary,
        candidates: [mut ha],
        relays: [mut relay],
        standbys: [standby1, standby2],
        receivers: [mut receiver],
    } = Topology::primary_relay()
        .candidates(["ha"])
        .standbys(["standby1", "standby2"])
        .receivewal()
        .rows(1..=500)
        .start();
    wait_upstream(&relay, primary.port(), 1);
    wait_received_tli(&standby1, 1);
    let walreceivers = [walreceiver(&standby1), walreceiver(&standby2)];

    primary.stop();
    ha.promote();
    ha.pin_wal();
    let fork = ha.fork_point(2);
    wait_upstream(&relay, ha.port(), 2);
    workload::insert_rows(&ha, 501..=1000);
    for standby in [&standby1, &standby2] {
        workload::wait_rows(&ha, standby);
        wait_received_tli(standby, 2);
    }
    assert_eq!(
        [walreceiver(&standby1), walreceiver(&standby2)],
        walreceivers,
        "a standby's walreceiver reconnected: the relay must end the old timeline on the \
         existing connection"
    );
    assert_receivewal_followed(&mut receiver, &ha, 2);
    let segment = assert_switched_segment_identical(&ha, 2, &relay, Some(&receiver));
    eprintln!("switchover at {fork}; timeline 2 segment {segment} identical on relay, pg_receivewal and the new primary");

    assert_same_file(
        &relay.data_dir().join("wal/00000002.history"),
        &ha.pg_wal_dir().join("00000002.history"),
    );
    assert_relay_not_diverged(&relay);
    assert_no_diverged_downstreams(&relay);
    relay.assert_running();
}

/// Crash with a lagging candidate, no `--failover-standby`: the relay streamed WAL the new
/// primary never got. It moves that WAL to `diverged/` (logged, counted), its store ends up
/// matching the new primary's history, it streams timeline 2, it reports the downstream that
/// got WAL past the fork instead of breaking it silently, and a standby built from the new
/// primary streams through it.
#[test]
fn crash_failover_lagging_candidate_moves_diverged_wal() {
    let Topology {
        mut primary,
        candidates: [mut ha],
        relays: [mut relay],
        standbys: [standby1],
        ..
    } = Topology::primary_relay_standby()
        .candidates(["ha"])
        .rows(1..=500)
        .start();

    // The HA standby stops receiving; the primary goes on writing, whole segments included.
    let ha_end = cut_off(&primary, &ha, "ha");
    workload::insert_rows(&primary, 501..=1000);
    workload::switch_wal(&primary);
    workload::insert_rows(&primary, 1001..=1500);
    workload::wait_rows(&primary, &standby1);
    let relay_end = relay.wait_flushed(primary.flush_lsn());

    primary.kill9();
    ha.promote();
    ha.pin_wal();
    let fork = ha.fork_point(2);
    assert!(
        fork <= ha_end && fork < relay_end,
        "fork {fork}: the HA standby received up to {ha_end}, the relay {relay_end}"
    );
    wait_upstream(&relay, ha.port(), 2);

    // The relay's own WAL past the fork: moved aside, logged, counted.
    let line = relay.wait_for_log("moved it to diverged/");
    eprintln!("relay: {line}");
    let diverged = os::files_in(&relay.data_dir().join("diverged"));
    let fork_segment = segment_file_name(1, fork.segment(SEG_SIZE), SEG_SIZE);
    assert!(
        diverged.iter().any(|f| f.starts_with(&fork_segment))
            && diverged
                .iter()
                .any(|f| f.starts_with("00000001") && segment_after(f, &fork_segment)),
        "diverged/ should hold the segment holding the fork {fork} ({fork_segment}) and the \
         whole segment after it: {diverged:?}"
    );
    let divergences = relay.metric("walrelay_divergences_total");
    let bytes = relay.metric("walrelay_diverged_wal_bytes_total");
    eprintln!("walrelay_divergences_total {divergences:?}, walrelay_diverged_wal_bytes_total {bytes:?}, diverged/ {diverged:?}");
    assert!(
        divergences.is_some_and(|n| n >= 1.0),
        "walrelay_divergences_total {divergences:?}"
    );
    assert!(
        bytes.is_some_and(|b| b >= (relay_end.0 - fork.0) as f64),
        "walrelay_diverged_wal_bytes_total {bytes:?}, expected at least {} (relay end {relay_end} - fork {fork})",
        relay_end.0 - fork.0
    );

    // The store matches the new primary's history: the history file is the new primary's,
    // timeline 1 ends at the fork (the segment holding it is partial, zero past the fork, and
    // equal to the new primary's copy before it), no timeline 1 segment past it is left.
    let wal = relay.data_dir().join("wal");
    assert_same_file(
        &wal.join("00000002.history"),
        &ha.pg_wal_dir().join("00000002.history"),
    );
    let partial = wal.join(partial_file_name(1, fork.segment(SEG_SIZE), SEG_SIZE));
    let ours = std::fs::read(&partial).unwrap_or_else(|e| {
        panic!(
            "read {}: {e} (wal/: {:?})",
            partial.display(),
            os::files_in(&wal)
        )
    });
    let theirs_path = ha
        .pg_wal_dir()
        .join(segment_file_name(2, fork.segment(SEG_SIZE), SEG_SIZE));
    let theirs = std::fs::read(&theirs_path)
        .unwrap_or_else(|e| panic!("read {}: {e}", theirs_path.display()));
    let off = fork.segment_offset(SEG_SIZE) as usize;
    assert!(
        ours[..off] == theirs[..off],
        "{} differs from the new primary's {} before the fork",
        partial.display(),
        theirs_path.display()
    );
    assert!(
        ours[off..].iter().all(|&b| b == 0),
        "{} holds bytes past the fork {fork}",
        partial.display()
    );
    let left: Vec<String> = os::files_in(&wal)
        .into_iter()
        .filter(|f| f.starts_with("00000001") && segment_after(f, &fork_segment))
        .collect();
    assert_eq!(
        left,
        Vec::<String>::new(),
        "timeline 1 WAL past the fork left in wal/"
    );
    // ... and it is never served.
    let mut client = ReplClient::connect(relay.port(), "probe").expect("replication connection");
    let past_fork = Lsn(fork.0 + SEG_SIZE).segment_start(SEG_SIZE);
    let reply = client
        .query(&format!("START_REPLICATION {past_fork} TIMELINE 1"))
        .expect("START_REPLICATION reply");
    assert!(
        !reply.copy_data,
        "the relay served timeline 1 past the fork {fork}"
    );
    let error = reply.error.expect("an error for timeline 1 past the fork");
    assert_eq!(error.code(), "XX000", "{error}");
    assert!(
        error.message().contains("is not in this server's history"),
        "{error}"
    );

    // The downstream that got WAL past the fork is reported, not silently broken.
    let status = relay.wait_status("standby1 listed in diverged_downstreams", |s| {
        diverged_names(s).iter().any(|n| n == "standby1")
    });
    eprintln!("diverged_downstreams: {}", status["diverged_downstreams"]);
    assert!(
        relay
            .metric("walrelay_downstream_divergences_total")
            .is_some_and(|n| n >= 1.0),
        "walrelay_downstream_divergences_total"
    );
    let fatal = wait_until("standby1 to log the relay's FATAL", || {
        standby1
            .log()
            .lines()
            .find(|l| l.contains("past the point") && l.contains("forked"))
            .map(str::to_string)
            .ok_or_else(|| standby1.log_tail())
    });
    eprintln!("standby1: {fatal}");

    // A standby built from the new primary streams through the relay.
    let fresh = PgCluster::basebackup_standby(&ha, "fresh", relay.port());
    workload::insert_rows(&ha, 1501..=2000);
    workload::wait_rows(&ha, &fresh);
    wait_received_tli(&fresh, 2);
    assert!(
        walreceiver(&fresh).ends_with(&format!(":{}", relay.port())),
        "the fresh standby streams from the relay"
    );
    assert_switched_segment_identical(&ha, 2, &relay, None);
    relay.assert_running();
}

/// Crash with a lagging candidate, with `--failover-standby`: while the candidate is cut off,
/// the relay holds WAL at what the candidate confirmed, so when the primary crashes and the
/// candidate is promoted, every downstream follows timeline 2 and has exactly its rows.
#[test]
fn crash_failover_with_failover_standby_every_downstream_follows() {
    let Topology {
        mut primary,
        candidates: [mut ha],
        relays: [mut relay],
        standbys: [standby1, standby2],
        receivers: [mut receiver],
    } = Topology::primary_relay()
        .candidates(["ha"])
        .failover_standby("ha")
        .standbys(["standby1", "standby2"])
        .receivewal()
        .rows(1..=500)
        .start();
    let rows_before = standby1.psql("select count(*) from t");

    // The candidate is cut off; the relay holds at what it confirmed while the primary writes on.
    let ha_end = cut_off(&primary, &ha, "ha");
    let status = relay.wait_status("the relay holding for the missing ha", |s| {
        s["failover"]["holding"] == true && s["failover"]["standbys"][0]["state"] == "missing"
    });
    eprintln!("holding: {}", status["failover"]);
    assert_eq!(relay.metric("walrelay_failover_holding"), Some(1.0));
    workload::insert_rows(&primary, 501..=1000);
    workload::switch_wal(&primary);
    workload::insert_rows(&primary, 1001..=1500);
    let relay_end = relay.wait_flushed(primary.flush_lsn());
    // Everything is durable on the relay now: what it would serve, it has served.
    let status = relay.status();
    let limit = lsn(
        "/status failover.limit_lsn",
        status["failover"]["limit_lsn"].as_str().unwrap_or_default(),
    );
    assert!(
        limit <= ha_end,
        "the relay serves up to {limit}, past what ha received ({ha_end})"
    );
    assert!(limit < relay_end, "limit {limit}, relay end {relay_end}");
    for d in status["downstreams"].as_array().expect("downstreams") {
        let sent = lsn("sent_lsn", d["sent_lsn"].as_str().unwrap_or_default());
        assert!(sent <= limit, "downstream {d} was sent WAL past {limit}");
    }
    for standby in [&standby1, &standby2] {
        let received = standby.receive_lsn();
        assert!(
            received <= limit,
            "a standby received {received}, past {limit}"
        );
        assert_eq!(standby.psql("select count(*) from t"), rows_before);
    }
    eprintln!(
        "held: relay durable {relay_end}, served up to {limit}, ha received {ha_end}, \
         metric walrelay_failover_limit_lag_bytes {:?}",
        relay.metric("walrelay_failover_limit_lag_bytes")
    );

    primary.kill9();
    ha.promote();
    let fork = ha.fork_point(2);
    assert!(limit <= fork, "served up to {limit}, past the fork {fork}");
    wait_upstream(&relay, ha.port(), 2);
    workload::insert_rows(&ha, 1501..=2000);
    for standby in [&standby1, &standby2] {
        workload::wait_rows(&ha, standby);
        wait_received_tli(standby, 2);
    }
    assert_receivewal_followed(&mut receiver, &ha, 2);
    assert_no_diverged_downstreams(&relay);
    // The relay's own store had WAL past the fork: moved aside (the downstreams never saw it).
    relay.wait_for_log("moved it to diverged/");
    // On the new primary the set is learned anew: the promoted candidate is never seen there.
    relay.wait_status("the failover set re-learned on the new primary", |s| {
        s["failover"]["holding"] == false && s["failover"]["standbys"][0]["state"] == "never_seen"
    });
    assert_eq!(relay.metric("walrelay_failover_holding"), Some(0.0));
    relay.assert_running();
}

/// Two failovers in a row: the primary to HA standby 1 (timeline 2, HA standby 2 re-pointed at
/// it), then HA standby 1 to HA standby 2 (timeline 3). The relay's downstreams follow both.
#[test]
fn two_failovers_in_a_row() {
    let Topology {
        mut primary,
        candidates: [mut ha1, mut ha2],
        relays: [mut relay],
        standbys: [standby1],
        receivers: [mut receiver],
    } = Topology::primary_relay_standby()
        .candidates(["ha1", "ha2"])
        .receivewal()
        .rows(1..=500)
        .start();

    primary.stop();
    ha1.promote();
    ha2.set_primary_conninfo(Some(ha1.port()));
    wait_received_tli(&ha2, 2);
    wait_upstream(&relay, ha1.port(), 2);
    workload::insert_rows(&ha1, 501..=1000);
    workload::wait_rows(&ha1, &ha2);
    workload::wait_rows(&ha1, &standby1);
    wait_received_tli(&standby1, 2);
    assert_receivewal_followed(&mut receiver, &ha1, 2);

    ha1.stop();
    ha2.promote();
    ha2.pin_wal();
    wait_upstream(&relay, ha2.port(), 3);
    workload::insert_rows(&ha2, 1001..=1500);
    workload::wait_rows(&ha2, &standby1);
    wait_received_tli(&standby1, 3);
    assert_eq!(standby1.psql("select count(*) from t"), "1500");
    assert_receivewal_followed(&mut receiver, &ha2, 3);
    assert_switched_segment_identical(&ha2, 3, &relay, Some(&receiver));
    for tli in [2, 3] {
        let name = format!("{tli:08X}.history");
        assert_same_file(
            &relay.data_dir().join("wal").join(&name),
            &ha2.pg_wal_dir().join(&name),
        );
    }
    assert_relay_not_diverged(&relay);
    assert_no_diverged_downstreams(&relay);
    relay.assert_running();
}

/// Tiered fan-out: primary → relay A (primary and HA standby listed) → relay B (A as its only
/// upstream, `target_session_attrs=any`) → standby. The switch propagates down the chain.
#[test]
fn relay_chain_follows_failover() {
    let Topology {
        mut primary,
        candidates: [mut ha],
        relays: [mut relay_a, mut relay_b],
        standbys: [standby],
        ..
    } = Topology::primary_relay_standby()
        .candidates(["ha"])
        .relays(["relay_a", "relay_b"])
        .rows(1..=500)
        .start();
    relay_a.wait_for_downstream("walrelay");
    let before = walreceiver(&standby);

    primary.stop();
    ha.promote();
    wait_upstream(&relay_a, ha.port(), 2);
    workload::insert_rows(&ha, 501..=1000);
    workload::wait_rows(&ha, &standby);
    wait_received_tli(&standby, 2);
    wait_upstream(&relay_b, relay_a.port(), 2);
    assert_eq!(
        walreceiver(&standby),
        before,
        "the standby's walreceiver reconnected"
    );
    for relay in [&relay_a, &relay_b] {
        assert_same_file(
            &relay.data_dir().join("wal/00000002.history"),
            &ha.pg_wal_dir().join("00000002.history"),
        );
        assert_relay_not_diverged(relay);
        assert_no_diverged_downstreams(relay);
    }
    relay_a.assert_running();
    relay_b.assert_running();
}

/// The relay is down (`kill -9`) during the whole failover; restarted, it finds the new
/// primary, fills in the rest of timeline 1 and follows timeline 2, and its downstreams follow.
#[test]
fn relay_killed_during_failover_converges() {
    let Topology {
        mut primary,
        candidates: [mut ha],
        relays: [mut relay],
        standbys: [standby1],
        receivers: [receiver],
    } = Topology::primary_relay_standby()
        .candidates(["ha"])
        // Physical slots can be made on a standby; this one keeps the timeline 1 WAL that the
        // relay will ask the new primary for.
        .on_candidates(PgCluster::pin_wal)
        .receivewal()
        .rows(1..=500)
        .start();

    relay.kill9();
    workload::insert_rows(&primary, 501..=1000);
    primary.stop();
    ha.promote();
    workload::insert_rows(&ha, 1001..=1500);
    workload::switch_wal(&ha);
    workload::insert_rows(&ha, 1501..=2000);

    relay.restart();
    relay.wait_ready();
    wait_upstream(&relay, ha.port(), 2);
    workload::wait_rows(&ha, &standby1);
    wait_received_tli(&standby1, 2);
    assert_receivewal_followed_after_reconnect(&receiver, &ha);
    assert_switched_segment_identical(&ha, 2, &relay, Some(&receiver));
    assert_relay_not_diverged(&relay);
    assert_no_diverged_downstreams(&relay);
    relay.assert_running();
}

/// An old primary that comes back writable after a failover (not yet rewound or made a
/// standby), listed first in the relay's conninfo, is passed over: a relay already on the new
/// timeline connects to the next host, the new primary, instead of retrying the old one for
/// ever ("upstream is on timeline 1, behind the relay's timeline 2" at every reconnect).
#[test]
fn old_primary_back_writable_is_passed_over() {
    let Topology {
        mut primary,
        candidates: [mut ha],
        relays: [mut relay],
        standbys: [standby1],
        ..
    } = Topology::primary_relay_standby()
        .candidates(["ha"])
        .on_candidates(PgCluster::pin_wal)
        .rows(1..=500)
        .start();

    primary.stop();
    ha.promote();
    workload::insert_rows(&ha, 501..=1000);
    wait_upstream(&relay, ha.port(), 2);
    workload::wait_rows(&ha, &standby1);

    // The old primary is back as it was, writable on timeline 1, and the relay reconnects
    // (restarted here; a lost connection to the new primary takes the same path).
    primary.start();
    let status = relay.stop();
    assert!(status.success(), "relay exited {status}");
    relay.restart();
    relay.wait_ready();
    wait_upstream(&relay, ha.port(), 2);
    workload::insert_rows(&ha, 1001..=1500);
    workload::wait_rows(&ha, &standby1);
    wait_received_tli(&standby1, 2);
    let log = relay.log();
    assert!(
        log.contains("passing over upstream server: it is on an older timeline than the relay"),
        "{log}"
    );
    assert_relay_not_diverged(&relay);
    relay.assert_running();
}

/// pg_receivewal lost its connection when the relay was killed; looping as operators run it,
/// it reconnected and is on timeline 2 with the new primary's history file.
fn assert_receivewal_followed_after_reconnect(receiver: &ReceiveWal, new_primary: &PgCluster) {
    wait_until("pg_receivewal to fetch 00000002.history", || {
        if receiver.wal_dir().join("00000002.history").exists() {
            Ok(())
        } else {
            Err(receiver.log())
        }
    });
    assert_file_matches(receiver, "00000002.history", new_primary);
}

/// A server of another cluster (its own initdb, so another system identifier) listed first in
/// the relay's conninfo is refused, at every reconnect, and never touches the store: the relay
/// streams from its own cluster's primary.
#[test]
fn other_cluster_refused() {
    // The relay's store first holds the primary's WAL ...
    let Topology {
        mut primary,
        relays: [mut relay],
        standbys: [standby1],
        ..
    } = Topology::primary_relay_standby()
        .on_primary(PgCluster::pin_wal)
        .rows(1..=100)
        .start();
    let other = PgCluster::init_primary("other");
    workload::create_table(&other);
    workload::insert_rows(&other, 1..=1000);
    let sysid = primary.system_identifier();
    assert_ne!(
        sysid,
        other.system_identifier(),
        "two initdbs, one system identifier"
    );

    let status = relay.stop();
    assert!(status.success(), "walrelay exited {status}");

    // ... then it runs with the other cluster's server listed first.
    relay.set_upstream(&read_write_hosts(&[&other, &primary]));
    relay.restart();
    relay.wait_ready();
    let status = wait_upstream(&relay, primary.port(), 1);
    assert_eq!(status["upstream"]["system_identifier"], sysid.as_str());
    let refusal = relay.wait_for_log("refusing upstream server: it belongs to a different cluster");
    eprintln!("relay: {refusal}");
    workload::insert_rows(&primary, 101..=200);
    workload::wait_rows(&primary, &standby1);

    // A reconnect goes through the host list again: refused again, back to the primary.
    let refusals = relay
        .log()
        .matches("belongs to a different cluster")
        .count();
    let reconnects = relay.status()["upstream"]["reconnects"]
        .as_u64()
        .unwrap_or(0);
    primary.restart();
    relay.wait_status("the relay to reconnect", |s| {
        s["upstream"]["reconnects"].as_u64().unwrap_or(0) > reconnects
            && s["upstream"]["connected"] == true
    });
    wait_upstream(&relay, primary.port(), 1);
    let refused_again = relay
        .log()
        .matches("belongs to a different cluster")
        .count();
    assert!(
        refused_again > refusals,
        "the reconnect did not try (and refuse) the other cluster first"
    );
    workload::insert_rows(&primary, 201..=300);
    workload::wait_rows(&primary, &standby1);

    // The other cluster never gave the relay anything: no slot there, every completed segment
    // of the relay is the primary's.
    assert_eq!(
        other.psql("select count(*) from pg_replication_slots"),
        "0",
        "the relay created its slot on the other cluster"
    );
    assert_switched_segment_identical(&primary, 1, &relay, None);
    let wal = relay.data_dir().join("wal");
    let completed: Vec<String> = os::files_in(&wal)
        .into_iter()
        .filter(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect();
    assert!(completed.len() >= 2, "relay segments: {completed:?}");
    for name in &completed {
        assert_same_file(&wal.join(name), &primary.pg_wal_dir().join(name));
    }
    assert_eq!(
        relay.status()["upstream"]["system_identifier"],
        sysid.as_str()
    );
    relay.assert_running();
}

/// A crash in the middle of one large WAL record, with `--failover-standby`: the HA candidate
/// and the relay hold the first part of the record, which the promoted candidate drops (its
/// timeline forks where the record starts). The relay serves only whole records, so its
/// downstream never got any of it: it is not past the fork, is not told to rebuild, nor listed
/// in `diverged_downstreams`, and it follows the new timeline.
#[test]
fn failover_standby_partial_record_at_crash_is_no_divergence() {
    let Topology {
        mut primary,
        candidates: [mut ha],
        relays: [mut relay],
        standbys: [standby1],
        ..
    } = Topology::primary_relay_standby()
        .candidates(["ha"])
        .failover_standby("ha")
        .rows(1..=500)
        .start();
    let before = primary.flush_lsn();

    // One WAL record of 400 MB: while the backend copies it into the WAL buffers, finished
    // segments are flushed and the walsenders send them.
    let conninfo = format!("{} dbname=postgres", primary.conninfo());
    let big = std::thread::spawn(move || {
        crate::harness::pg::psql(
            &conninfo,
            "select pg_logical_emit_message(false, 'big', repeat('x', 400 * 1024 * 1024))",
        )
    });
    let backend: u32 = primary
        .wait_for(
            "the backend writing the big record",
            "select pid from pg_stat_activity where pid <> pg_backend_pid() \
             and query like 'select pg_logical_emit_message%'",
            |out| !out.is_empty(),
        )
        .parse()
        .expect("a pid");
    // The backend runs in short bursts between SIGSTOPs until the HA standby has received
    // two segments of the record, so it is frozen mid-record however fast or loaded the
    // machine is.
    let signal = |sig: &str| crate::harness::os::signal(&[backend], sig);
    assert!(
        signal("STOP"),
        "cannot stop backend {backend}: {:?}",
        big.join()
    );
    // Short bursts while the record is copied into WAL: it must not be finished before the
    // standby has two of its segments (the WAL writer keeps flushing while the backend is
    // stopped). Before that the backend builds the 400 MB string and writes no WAL: bursts
    // grow while the primary's WAL does not move, so that a loaded machine, which gives the
    // backend little of each burst, still gets it there.
    let mut burst_ms = 5u64;
    let mut last_flushed = primary.flush_lsn();
    wait_until("ha to receive part of the big record", || {
        let r = ha.receive_lsn();
        if r.0 > before.0 + 2 * SEG_SIZE {
            return Ok(());
        }
        let flushed = primary.flush_lsn();
        burst_ms = if flushed == last_flushed {
            (burst_ms * 2).min(200)
        } else {
            5
        };
        last_flushed = flushed;
        signal("CONT");
        std::thread::sleep(std::time::Duration::from_millis(burst_ms));
        signal("STOP");
        Err(format!("ha received {r}, primary flushed {flushed}"))
    });
    let settled = wait_until("the stream to settle mid-record", || {
        let flushed = primary.flush_lsn();
        let ha_at = ha.receive_lsn();
        if ha_at == flushed {
            Ok(flushed)
        } else {
            Err(format!("primary flushed {flushed}, ha received {ha_at}"))
        }
    });
    // The relay received the first part of the record too, but serves only whole records.
    let relay_has = wait_until("the relay to receive part of the big record", || {
        let r = relay.status_lsn("/upstream/received_lsn");
        if r.0 > before.0 + 2 * SEG_SIZE {
            Ok(r)
        } else {
            Err(format!("relay received {r}"))
        }
    });
    let standby_at = standby1.receive_lsn();
    assert!(
        standby_at < relay_has,
        "standby1 received {standby_at}: part of the unfinished record the relay holds up to {relay_has}"
    );
    primary.kill9();
    let _ = big.join();
    let replayed = standby1.replay_lsn();

    ha.promote();
    let fork = ha.fork_point(2);
    let standby_at = standby1.receive_lsn();
    eprintln!("fork {fork}; primary flushed {settled}; standby1 received {standby_at}, replayed {replayed}");
    assert!(
        standby_at <= fork && fork < settled,
        "standby1 must hold nothing past the fork ({fork}); it received {standby_at}"
    );
    wait_upstream(&relay, ha.port(), 2);
    // The relay is done with standby1's timeline 1 session one way or the other.
    wait_until("the relay to end standby1's timeline 1 session", || {
        let log = relay.log();
        let ended = log.lines().any(|l| {
            l.contains("application_name=\"standby1\"")
                && (l.contains("end of timeline reached") || l.contains("must be rebuilt"))
        });
        if ended {
            Ok(())
        } else {
            Err(relay.log_tail())
        }
    });
    for line in standby1.log().lines().filter(|l| l.contains("FATAL")) {
        eprintln!("standby1: {line}");
    }
    assert_no_diverged_downstreams(&relay);
    assert!(
        !standby1.log().contains("Rebuild this standby"),
        "standby1 was told to rebuild"
    );
    // And it follows the new primary.
    workload::insert_rows(&ha, 501..=600);
    workload::wait_rows(&ha, &standby1);
    wait_received_tli(&standby1, 2);
    relay.assert_running();
}

/// A relay chain after a crash with a lagging candidate: relay A moves its WAL past the fork
/// aside, and so does relay B below it (B received that WAL from A), by itself; B reports the
/// standby that got WAL past the fork, and a standby built from the new primary streams
/// through both relays.
#[test]
fn relay_chain_heals_after_divergence() {
    let Topology {
        mut primary,
        candidates: [mut ha],
        relays: [mut relay_a, mut relay_b],
        standbys: [standby1],
        ..
    } = Topology::primary_relay_standby()
        .candidates(["ha"])
        .relays(["relay_a", "relay_b"])
        .rows(1..=500)
        .start();

    cut_off(&primary, &ha, "ha");
    workload::insert_rows(&primary, 501..=1000);
    workload::wait_rows(&primary, &standby1);
    primary.kill9();
    ha.promote();
    let fork = ha.fork_point(2);
    wait_upstream(&relay_a, ha.port(), 2);
    wait_upstream(&relay_b, relay_a.port(), 2);
    for relay in [&relay_a, &relay_b] {
        let line = relay.wait_for_log("moved it to diverged/");
        eprintln!("{line}");
        assert!(!os::files_in(&relay.data_dir().join("diverged")).is_empty());
        assert_same_file(
            &relay.data_dir().join("wal/00000002.history"),
            &ha.pg_wal_dir().join("00000002.history"),
        );
    }
    let status = relay_b.wait_status("standby1 listed in relay B's diverged_downstreams", |s| {
        diverged_names(s).iter().any(|n| n == "standby1")
    });
    eprintln!(
        "fork {fork}; relay B diverged_downstreams {}; relay A {}",
        status["diverged_downstreams"],
        relay_a.status()["diverged_downstreams"]
    );
    let fresh = PgCluster::basebackup_standby(&ha, "fresh", relay_b.port());
    workload::insert_rows(&ha, 1001..=1500);
    workload::wait_rows(&ha, &fresh);
    wait_received_tli(&fresh, 2);
    relay_a.assert_running();
    relay_b.assert_running();
}

/// `--failover-standby` with a non-superuser upstream role, as operators create it: REPLICATION
/// and LOGIN, and `pg_read_all_stats`, which `--failover-standby` needs to read the candidates'
/// positions in `pg_stat_replication` (without it PostgreSQL shows other sessions' positions as
/// NULL): the candidate is seen, and holds when it goes missing.
#[test]
fn failover_standby_with_a_replication_role() {
    let Topology {
        primary,
        candidates: [ha],
        relays: [mut relay],
        ..
    } = Topology::primary_relay()
        .candidates(["ha"])
        .replicator_role(true)
        .failover_standby("ha")
        .start();
    cut_off(&primary, &ha, "ha");
    relay.wait_status("the relay holding for the missing ha", |s| {
        s["failover"]["holding"] == true && s["failover"]["standbys"][0]["state"] == "missing"
    });
    relay.assert_running();
}

/// `--failover-standby` with an upstream role that cannot read the candidates' positions (no
/// `pg_read_all_stats`): `pg_stat_replication` lists the candidate with a NULL `flush_lsn`. The
/// relay must not take that for "never seen" (which does not hold) in silence: it must say
/// that it cannot read the positions.
#[test]
fn failover_standby_without_stats_privilege_is_reported() {
    let Topology {
        primary,
        candidates: [_ha],
        relays: [relay],
        ..
    } = Topology::primary_relay()
        .candidates(["ha"])
        .replicator_role(false)
        .relay_args(&["--failover-standby", "ha"])
        .start();
    let visible = crate::harness::pg::psql(
        &format!(
            "host=127.0.0.1 port={} user=replicator dbname=postgres",
            primary.port()
        ),
        "select application_name || ':' || coalesce(flush_lsn::text, 'null') \
         from pg_stat_replication where application_name = 'ha'",
    )
    .expect("query pg_stat_replication as replicator");
    assert_eq!(
        visible, "ha:null",
        "what the relay's role sees of the candidate"
    );
    // Writes make the watcher read pg_stat_replication again.
    workload::insert_rows(&primary, 1..=100);
    relay.wait_flushed(primary.flush_lsn());
    let status = relay.wait_status("the watcher to have read the primary", |s| {
        s["failover"]["connected"] == true
    });
    eprintln!("failover: {}", status["failover"]);
    let failover = &status["failover"];
    assert!(
        failover["standbys"][0]["state"] != "never_seen" || !failover["last_error"].is_null(),
        "the relay cannot see ha's flush position and says nothing: {failover}"
    );
}
