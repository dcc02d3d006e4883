//! Failover-safe serving across relay restarts (issue 11, brief §3.5): the hold rests on state
//! that outlives the relay and the candidate's connection (the candidate's physical slot on the
//! primary, the relay's own `failover.json`), so a relay (re)started while a
//! `--failover-standby` candidate is down still holds at what the candidate confirmed, and a
//! candidate the relay cannot place at all holds until it is known.

use std::time::Duration;

use serde_json::Value;
use walrelay::wal::Lsn;

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
/// what a downstream holds is all the relay was willing to serve. (A downstream may have been
/// sent a few bytes more, up to the 8-byte-aligned start of the next record, before the limit
/// was cut back at a record end.)
fn wait_downstreams_sent_all(relay: &Relay) -> Value {
    let at = |v: &Value| v.as_str().and_then(|t| t.parse::<Lsn>().ok());
    relay.wait_status("every downstream sent all that is servable", |s| {
        let servable = at(&s["store"]["servable_lsn"]);
        let ds = s["downstreams"].as_array().cloned().unwrap_or_default();
        !ds.is_empty() && ds.iter().all(|d| at(&d["sent_lsn"]) >= servable)
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
    // It holds at c's slot, the state on the primary that outlived both the relay's restart
    // and c's connection.
    let c_state = &status["failover"]["standbys"][0];
    assert_eq!(c_state["source"], "slot", "{c_state}");
    assert_eq!(c_state["flush_lsn"], c_end.to_string(), "{c_state}");
    assert_eq!(status["failover"]["holding"], true);
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

/// Creates the physical slot `ha_slot` on the primary (before the candidate exists).
fn create_ha_slot(primary: &PgCluster) {
    primary.psql("select pg_create_physical_replication_slot('ha_slot')");
}

/// Makes the candidate stream through `ha_slot` (its application_name stays `ha`).
fn use_ha_slot(ha: &PgCluster) {
    ha.append_conf("primary_slot_name = 'ha_slot'\n");
    ha.psql("select pg_reload_conf()");
}

/// A candidate named by its physical slot only (`--failover-standby ha_slot`; its
/// application_name is `ha`): while it streams, the relay reads its flush through the slot's
/// walsender; cut off, it holds at the slot's restart_lsn; after the crash and its promotion
/// the standby behind the relay follows with exactly the new primary's rows.
#[test]
fn failover_standby_named_by_its_slot() {
    let Topology {
        mut primary,
        candidates: [mut ha],
        relays: [relay],
        standbys: [standby],
        ..
    } = Topology::primary_relay_standby()
        .on_primary(create_ha_slot)
        .candidates(["ha"])
        .on_candidates(use_ha_slot)
        .failover_standby("ha_slot")
        .rows(1..=500)
        .start();
    assert_eq!(
        primary.psql(
            "select string_agg(application_name, ',') from pg_stat_replication \
             where application_name like 'ha%'"
        ),
        "ha",
        "the candidate's application_name is not its slot's name"
    );
    let status = relay.status();
    assert_eq!(status["failover"]["standbys"][0]["source"], "connected");

    let ha_end = crate::failover::cut_off(&primary, &ha, "ha");
    let status = relay.wait_status("the relay holding at ha_slot's restart_lsn", |s| {
        let c = &s["failover"]["standbys"][0];
        s["failover"]["holding"] == true && c["source"] == "slot" && c["state"] == "missing"
    });
    let slot_at = primary
        .slot_restart_lsn("ha_slot")
        .unwrap_or_else(|| panic!("ha_slot has no restart_lsn"));
    assert_eq!(
        status["failover"]["standbys"][0]["flush_lsn"],
        slot_at.to_string()
    );
    assert!(slot_at <= ha_end, "slot at {slot_at}, ha received {ha_end}");
    workload::insert_rows(&primary, 501..=3500);
    let relay_end = relay.wait_flushed(primary.flush_lsn());
    let status = wait_downstreams_sent_all(&relay);
    let servable = lsn(
        "/status servable_lsn",
        status["store"]["servable_lsn"].as_str().unwrap_or_default(),
    );
    eprintln!("relay durable {relay_end}, ha_slot at {slot_at}, serving up to {servable}");
    assert!(
        servable <= slot_at,
        "serving up to {servable}, past {slot_at}"
    );
    assert!(
        servable < relay_end,
        "serving up to {servable}, relay end {relay_end}"
    );

    primary.kill9();
    ha.promote();
    wait_upstream(&relay, ha.port(), 2);
    assert_standby_follows(&relay, &ha, &standby);
}

/// A candidate the relay cannot place (never connected, no slot of that name, never seen):
/// with the default `--failover-standby-missing hold` the relay holds from its start (`/status`
/// source `missing`, the log, `walrelay_failover_candidates_missing 1`) and the standby behind
/// it gets none of the new rows; restarted with `failover_standby_missing = "serve"` in its
/// config file, it serves them.
#[test]
fn failover_standby_missing_holds_until_known_or_serves_when_told() {
    let conf_dir = crate::harness::os::TestDir::new("config");
    let conf = conf_dir.path().join("relay.toml");
    std::fs::write(&conf, "failover_standby = [\"ghost\"]\n").expect("write the config");
    let conf_arg = conf.display().to_string();
    let Topology {
        primary,
        relays: [mut relay],
        standbys: [standby],
        ..
    } = Topology::primary_relay_standby()
        .relay_args(&["--config", &conf_arg])
        .start();
    let status = relay.wait_status("ghost missing, holding", |s| {
        let c = &s["failover"]["standbys"][0];
        s["failover"]["connected"] == true
            && s["failover"]["holding"] == true
            && c["name"] == "ghost"
            && c["source"] == "missing"
            && c["state"] == "missing"
    });
    eprintln!("failover: {}", status["failover"]);
    relay.wait_for_log("failover standby ghost is not known on the primary");
    assert_eq!(
        relay.metric("walrelay_failover_candidates_missing"),
        Some(1.0)
    );
    assert_eq!(relay.metric("walrelay_failover_holding"), Some(1.0));
    let before = standby.psql(ROWS);
    // Where each downstream stood before the rows: its start point when nothing was sent yet.
    let sent_before = |name: &str, status: &Value| {
        status["downstreams"]
            .as_array()
            .and_then(|l| l.iter().find(|d| d["application_name"] == name))
            .and_then(|d| d["sent_lsn"].as_str())
            .map_or(Lsn(0), |t| lsn("sent_lsn", t))
    };
    let held_status = relay.status();
    workload::insert_rows(&primary, 1..=1000);
    let relay_end = relay.wait_flushed(primary.flush_lsn());
    // null: nothing servable at all (a new relay that holds from its first byte).
    let servable = relay.status()["store"]["servable_lsn"]
        .as_str()
        .map_or(Lsn(0), |t| lsn("/status servable_lsn", t));
    assert!(
        servable < relay_end,
        "the relay serves up to {servable}, its durable end {relay_end}: nothing held"
    );
    for d in relay.status()["downstreams"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let sent = lsn("sent_lsn", d["sent_lsn"].as_str().unwrap_or_default());
        let name = d["application_name"].as_str().unwrap_or_default();
        let allowed = servable.max(sent_before(name, &held_status));
        assert!(
            sent <= allowed,
            "downstream {d} was sent WAL past {allowed}"
        );
    }
    assert_eq!(standby.psql(ROWS), before);

    relay.stop();
    std::fs::write(
        &conf,
        "failover_standby = [\"ghost\"]\nfailover_standby_missing = \"serve\"\n",
    )
    .expect("write the config");
    relay.restart();
    relay.wait_ready();
    workload::wait_rows(&primary, &standby);
    let status = relay.wait_status("ghost missing, not holding", |s| {
        let c = &s["failover"]["standbys"][0];
        s["failover"]["holding"] == false
            && c["source"] == "missing"
            && c["state"] == "never_seen"
            && s["failover"]["missing_policy"] == "serve"
    });
    eprintln!("failover: {}", status["failover"]);
    relay.wait_for_log("serving without it (--failover-standby-missing=serve)");
    assert_eq!(
        relay.metric("walrelay_failover_candidates_missing"),
        Some(1.0)
    );
    relay.assert_running();
}

/// A candidate without a slot that the relay saw before it restarted: the restarted relay
/// holds at what it saw last (`<data-dir>/failover.json`, source `persisted`), not "never
/// seen", so the standby behind it gets none of the rows written while the candidate is away.
#[test]
fn failover_standby_seen_before_a_restart_holds_from_failover_json() {
    let Topology {
        primary,
        candidates: [ha],
        relays: [mut relay],
        standbys: [standby],
        ..
    } = Topology::primary_relay_standby()
        .candidates(["ha"])
        .failover_standby("ha")
        .rows(1..=500)
        .start();
    let ha_end = crate::failover::cut_off(&primary, &ha, "ha");
    relay.wait_status("the relay holding for the missing ha", |s| {
        s["failover"]["holding"] == true && s["failover"]["standbys"][0]["source"] == "persisted"
    });
    let file = relay.data_dir().join("failover.json");
    let saved = wait_until("failover.json to hold ha's position", || {
        let text = std::fs::read_to_string(&file).map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        match v["standbys"]["ha"]
            .as_str()
            .map(|t| lsn("failover.json", t))
        {
            Some(at) if v["timeline"] == 1 => Ok(at),
            _ => Err(text),
        }
    });
    assert!(
        saved <= ha_end,
        "failover.json says {saved}, ha received {ha_end}"
    );
    let rows_before = standby.psql(ROWS);

    relay.stop();
    relay.restart();
    workload::insert_rows(&primary, 501..=3000);
    relay.wait_ready();
    let relay_end = relay.wait_flushed(primary.flush_lsn());
    let status = relay.wait_status("the restarted relay holding at what it saw", |s| {
        let c = &s["failover"]["standbys"][0];
        s["failover"]["connected"] == true && c["source"] == "persisted" && c["state"] == "missing"
    });
    eprintln!("failover: {}", status["failover"]);
    let status = wait_downstreams_sent_all(&relay);
    let servable = lsn(
        "/status servable_lsn",
        status["store"]["servable_lsn"].as_str().unwrap_or_default(),
    );
    eprintln!(
        "relay durable {relay_end}, failover.json {saved}, ha received {ha_end}, serving up to {servable}"
    );
    assert!(
        servable <= ha_end,
        "serving up to {servable}, past what ha received ({ha_end})"
    );
    assert!(
        servable < relay_end,
        "serving up to {servable}, relay end {relay_end}"
    );
    assert_eq!(standby.psql(ROWS), rows_before);
    relay.assert_running();
}

/// What the relay's watcher has running on the primary: its reading blocks (issue 10).
const ACTIVE_BLOCKS: &str = "select count(*) from pg_stat_activity \
                             where query like 'DO $walrelay$%' and state = 'active'";

/// Waits until the relay serves everything the primary flushed (`ha` confirmed it all), read
/// the way `/status` `failover.reading` says.
fn wait_released(relay: &Relay, primary: &PgCluster, reading: &str) -> Value {
    let end = primary.flush_lsn();
    relay.wait_flushed(end);
    relay.wait_status(
        &format!("the limit at the primary's end {end}, read by {reading}"),
        |s| {
            s["failover"]["reading"] == reading
                && s["failover"]["limit_lsn"]
                    .as_str()
                    .and_then(|l| l.parse::<Lsn>().ok())
                    .is_some_and(|l| l >= end)
        },
    )
}

/// The watcher's pushing source (issue 10): while WAL waits, one reading block on the primary
/// sends each change of the candidates' positions as a NOTICE, so the limit follows `ha` with
/// one statement per block; on SIGTERM the relay cancels the block it has running, so none is
/// left on the primary; and a primary that refuses the block (no PL/pgSQL in the watcher's
/// database) is polled instead, which the relay says once.
#[test]
fn failover_standby_reading_is_pushed_cancelled_at_stop_and_polled_when_refused() {
    let Topology {
        primary,
        candidates: [_ha],
        relays: [mut relay],
        ..
    } = Topology::primary_relay()
        .candidates(["ha"])
        .failover_standby("ha")
        .start();
    workload::insert_rows(&primary, 1..=200);
    wait_released(&relay, &primary, "push");
    assert!(
        relay.metric("walrelay_failover_queries_total").is_some(),
        "{}",
        relay.metrics()
    );

    // A block runs while WAL keeps coming; the relay stops in the middle of it.
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut id = 1000;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                workload::insert_rows(&primary, id..=id + 9);
                id += 10;
            }
        });
        primary.wait_for_value("a reading block on the primary", ACTIVE_BLOCKS, "1");
        let status = relay.stop();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(status.success(), "{status:?}: {}", relay.log());
    });
    primary.wait_for_value("no reading block left", ACTIVE_BLOCKS, "0");
    let log = primary.log();
    assert!(
        log.contains("canceling statement due to user request"),
        "the relay did not cancel its block: {}\n----- relay log -----\n{}",
        primary.log_tail(),
        relay.log()
    );

    // No PL/pgSQL: the block is refused, the watcher polls.
    primary.psql("drop extension plpgsql");
    relay.restart();
    relay.wait_ready();
    workload::insert_rows(&primary, 5000..=5200);
    wait_released(&relay, &primary, "poll");
    workload::insert_rows(&primary, 6000..=6200);
    wait_released(&relay, &primary, "poll");
    let refused = "the primary refused the failover standbys' pushing reading";
    relay.wait_for_log(refused);
    assert_eq!(relay.log().matches(refused).count(), 1, "{}", relay.log());
    relay.assert_running();
    eprintln!("----- relay log -----\n{}", relay.log());
}
