//! Failover-safe serving across relay restarts (issue 11, brief §3.5): the hold rests on state
//! that outlives the relay and the candidate's connection (the candidate's physical slot on the
//! primary, the relay's own `failover.json`), so a relay (re)started while a
//! `--failover-standby` candidate is down still holds at what the candidate confirmed, and a
//! candidate the relay cannot place at all holds until it is known.

use std::time::Duration;

use serde_json::Value;

use crate::failover::{wait_received_tli, wait_upstream};
use crate::harness::{lsn, wait_until, workload, PgCluster, Relay, Topology};

/// The rows' digest the harness compares (`workload::wait_rows`).
const ROWS: &str = "select count(*) || ':' || coalesce(sum(id), 0) from t";

/// Makes the HA standby stream through the physical slot `slot` on `primary`, and waits until
/// the slot is in use.
fn stream_through_slot(primary: &PgCluster, ha: &PgCluster, slot: &str) {
    primary.psql(&format!(
        "select pg_create_physical_replication_slot('{slot}')"
    ));
    ha.append_conf(&format!("primary_slot_name = '{slot}'\n"));
    ha.psql("select pg_reload_conf()");
    primary.wait_for_value(
        &format!("slot {slot} in use by the HA standby"),
        &format!(
            "select active and restart_lsn is not null from pg_replication_slots \
             where slot_name = '{slot}'"
        ),
        "t",
    );
}

/// Waits until every downstream of the relay was sent everything the relay serves, so that
/// what a downstream holds is exactly what the relay was willing to serve.
fn wait_downstreams_sent_all(relay: &Relay) -> Value {
    relay.wait_status("every downstream sent all that is servable", |s| {
        let servable = s["store"]["servable_lsn"].as_str().unwrap_or_default();
        let ds = s["downstreams"].as_array().cloned().unwrap_or_default();
        !ds.is_empty() && ds.iter().all(|d| d["sent_lsn"] == servable)
    })
}

/// After the primary crashed and `new_primary` was promoted: the standby follows timeline 2
/// with exactly the new primary's rows, or the relay reports it diverged (the failure).
fn assert_standby_follows(relay: &Relay, new_primary: &PgCluster, standby: &PgCluster) {
    workload::insert_rows(new_primary, 100_001..=100_100);
    let expected = new_primary.psql(ROWS);
    let outcome = wait_until("the standby to follow the new primary (or diverge)", || {
        let diverged = relay.status()["diverged_downstreams"].clone();
        if diverged.as_array().is_some_and(|d| !d.is_empty()) {
            return Ok(Err(diverged));
        }
        match standby.try_psql(ROWS) {
            Ok(rows) if rows == expected => Ok(Ok(())),
            other => Err(format!("standby rows {other:?}, new primary {expected}")),
        }
    });
    if let Err(diverged) = outcome {
        panic!(
            "the standby received WAL past the new primary's fork and must be rebuilt: \
             diverged_downstreams {diverged}; standby rows {:?}, new primary {expected}",
            standby.try_psql(ROWS)
        );
    }
    wait_received_tli(standby, 2);
    assert_eq!(standby.psql(ROWS), new_primary.psql(ROWS));
}

/// The reproduction of issue 11: the relay is restarted and the candidate `c` (which streams
/// through its slot `c` on the primary) stops 0.5 s later, before the watcher's first reading;
/// 3000 more rows, the primary crashes, `c` is promoted. The restarted relay must have held at
/// what `c` confirmed (its slot's restart_lsn), so the standby behind it follows timeline 2
/// with exactly the new primary's rows.
#[test]
fn failover_standby_holds_across_a_relay_restart_while_the_candidate_is_down() {
    let Topology {
        mut primary,
        candidates: [mut c],
        relays: [mut relay],
        standbys: [standby],
        ..
    } = Topology::primary_relay()
        .candidates(["c"])
        .failover_standby("c")
        .standbys(["standby1"])
        .start();
    stream_through_slot(&primary, &c, "c");
    workload::insert_rows(&primary, 1..=5000);
    workload::wait_rows(&primary, &c);
    workload::wait_rows(&primary, &standby);

    relay.stop();
    relay.restart();
    // The scenario of the issue: the candidate goes down right after the relay starts, before
    // the watcher has read the primary once (it waits 1 s after "upstream not connected").
    std::thread::sleep(Duration::from_millis(500));
    c.stop();
    let c_end = primary
        .slot_restart_lsn("c")
        .unwrap_or_else(|| panic!("slot c has no restart_lsn"));
    workload::insert_rows(&primary, 5001..=8000);
    relay.wait_ready();
    let relay_end = relay.wait_flushed(primary.flush_lsn());
    let status = wait_downstreams_sent_all(&relay);
    eprintln!(
        "relay durable {relay_end}, c's slot at {c_end}, failover {}",
        status["failover"]
    );
    let servable = lsn(
        "/status servable_lsn",
        status["store"]["servable_lsn"].as_str().unwrap_or_default(),
    );
    assert!(
        servable <= c_end,
        "the restarted relay serves up to {servable}, past what c confirmed ({c_end})"
    );

    primary.kill9();
    c.start();
    c.promote();
    wait_upstream(&relay, c.port(), 2);
    assert_standby_follows(&relay, &c, &standby);
    relay.assert_running();
}
