//! Lag as an operator sees it: per-replica positions and lag on `/status` and `/metrics` that
//! agree with what the standbys themselves report, the relay's apply position on the primary
//! following the slowest replica, and hot-standby feedback passed up to the primary.

use std::thread;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{lsn, wait_until, workload, PgCluster, Relay};

/// The `/status` entry of a downstream.
fn downstream(relay: &Relay, name: &str) -> Value {
    let status = relay.status();
    status["downstreams"]
        .as_array()
        .and_then(|l| l.iter().find(|d| d["application_name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no downstream {name} in /status: {status}"))
}

/// `walrelay_downstream_lag_<unit>{application_name="name",...,stage="stage"}` from /metrics.
fn lag_metric(relay: &Relay, unit: &str, name: &str, stage: &str) -> Option<f64> {
    let prefix = format!("walrelay_downstream_lag_{unit}{{application_name=\"{name}\",");
    let stage = format!("stage=\"{stage}\"}}");
    relay.metrics().lines().find_map(|line| {
        let (key, value) = line.rsplit_once(' ')?;
        (key.starts_with(&prefix) && key.ends_with(&stage)).then(|| value.parse().ok())?
    })
}

/// Makes a standby report often, so the test sees replies in seconds, not tens of seconds.
fn report_every_second(standby: &PgCluster) {
    standby.alter_system("wal_receiver_status_interval", "1s");
}

#[test]
fn paused_replay_shows_growing_lag_and_recovers() {
    let primary = PgCluster::init_primary("primary");
    workload::create_table(&primary);
    let mut relay = Relay::start(&primary.conninfo(), "relay");
    relay.wait_ready();
    let fast = PgCluster::basebackup_standby(&primary, "fast", relay.port());
    let slow = PgCluster::basebackup_standby(&primary, "slow", relay.port());
    report_every_second(&fast);
    report_every_second(&slow);
    workload::insert_rows(&primary, 1..=100);
    workload::wait_rows(&primary, &fast);
    workload::wait_rows(&primary, &slow);

    slow.psql("select pg_wal_replay_pause()");
    slow.wait_for_value(
        "replay to be paused",
        "select pg_get_wal_replay_pause_state()",
        "paused",
    );
    let mut last_seconds = 0.0;
    let mut last_bytes = 0u64;
    for round in 1..=3u32 {
        workload::insert_rows(&primary, round * 1000..=round * 1000 + 999);
        workload::wait_rows(&primary, &fast);
        // The paused standby still receives and flushes, but its replay stays behind: its
        // replay lag in bytes and seconds grows round after round.
        let (bytes, seconds) = wait_until("the slow standby's replay lag to grow", || {
            let d = downstream(&relay, "slow");
            let bytes = d["replay_lag_bytes"].as_u64().unwrap_or(0);
            let seconds = d["replay_lag_seconds"].as_f64().unwrap_or(0.0);
            if bytes > last_bytes && seconds > last_seconds {
                Ok((bytes, seconds))
            } else {
                Err(d.to_string())
            }
        });
        let metric_bytes =
            lag_metric(&relay, "bytes", "slow", "replay").expect("replay lag bytes metric");
        let metric_seconds =
            lag_metric(&relay, "seconds", "slow", "replay").expect("replay lag seconds metric");
        assert!(
            metric_bytes > 0.0,
            "slow's replay lag bytes on /metrics: {metric_bytes}"
        );
        assert!(
            metric_seconds > 0.0,
            "slow's replay lag seconds on /metrics: {metric_seconds}"
        );
        last_bytes = bytes;
        last_seconds = seconds;
        // The other standby replays everything: no byte lag once it has caught up.
        wait_until("the fast standby to show no replay lag", || {
            let d = downstream(&relay, "fast");
            match d["replay_lag_bytes"].as_u64() {
                Some(0) => Ok(()),
                _ => Err(d.to_string()),
            }
        });
        assert_eq!(lag_metric(&relay, "bytes", "fast", "replay"), Some(0.0));
        // `walrelay status` shows the same: its JSON is /status, and its table has a row for
        // the paused standby with a byte lag that is not zero.
        let json: Value =
            serde_json::from_str(&relay.status_command(&["--json"])).expect("status --json");
        let slow_json = json["downstreams"]
            .as_array()
            .and_then(|l| l.iter().find(|d| d["application_name"] == "slow"))
            .cloned()
            .expect("slow in walrelay status --json");
        assert!(
            slow_json["replay_lag_bytes"].as_u64().unwrap_or(0) > 0,
            "{slow_json}"
        );
        let table = relay.status_command(&[]);
        let row = table
            .lines()
            .find(|l| l.contains("slow"))
            .unwrap_or_else(|| panic!("no row for slow in:\n{table}"));
        assert!(
            (row.contains("KiB") || row.contains("MiB")) && !row.contains(" 0 B"),
            "slow's row shows no byte lag: {row}\n{table}"
        );
        thread::sleep(Duration::from_millis(500));
    }
    // The relay's figures are the standby's own: write/flush as its walreceiver reports them,
    // replay as pg_last_wal_replay_lsn() says.
    let standby_replay = lsn("slow replay", &slow.psql("select pg_last_wal_replay_lsn()"));
    wait_until(
        "the relay's replay_lsn for slow to match the standby's",
        || {
            let d = downstream(&relay, "slow");
            let relay_replay = lsn("relay replay_lsn", d["replay_lsn"].as_str().unwrap_or(""));
            if relay_replay == standby_replay {
                Ok(())
            } else {
                Err(format!("relay {relay_replay}, standby {standby_replay}"))
            }
        },
    );
    let standby_flush = lsn(
        "slow flush",
        &slow.psql("select flushed_lsn from pg_stat_wal_receiver"),
    );
    let relay_flush = lsn(
        "relay flush_lsn",
        downstream(&relay, "slow")["flush_lsn"]
            .as_str()
            .unwrap_or(""),
    );
    assert!(
        relay_flush <= standby_flush,
        "relay says slow flushed {relay_flush}, slow says {standby_flush}"
    );

    // Resumed, the slow standby catches up and its lag falls back to zero.
    slow.psql("select pg_wal_replay_resume()");
    workload::wait_rows(&primary, &slow);
    wait_until("the slow standby's replay lag bytes to fall to 0", || {
        let d = downstream(&relay, "slow");
        match d["replay_lag_bytes"].as_u64() {
            Some(0) => Ok(()),
            _ => Err(d.to_string()),
        }
    });
}

#[test]
fn idle_primary_shows_no_climbing_time_lag() {
    let primary = PgCluster::init_primary("primary");
    workload::create_table(&primary);
    let mut relay = Relay::start(&primary.conninfo(), "relay");
    relay.wait_ready();
    let standby = PgCluster::basebackup_standby(&primary, "idle", relay.port());
    report_every_second(&standby);
    workload::insert_rows(&primary, 1..=100);
    workload::wait_rows(&primary, &standby);

    // Once the standby has reported "all replayed" twice, the time lags are cleared (null), as
    // in pg_stat_replication, and stay so while nothing is written.
    wait_until("the idle standby's time lags to be null", || {
        let d = downstream(&relay, "idle");
        if d["replay_lag_seconds"].is_null() && d["write_lag_seconds"].is_null() {
            Ok(())
        } else {
            Err(d.to_string())
        }
    });
    for _ in 0..5 {
        thread::sleep(Duration::from_secs(1));
        let d = downstream(&relay, "idle");
        for key in [
            "write_lag_seconds",
            "flush_lag_seconds",
            "replay_lag_seconds",
        ] {
            assert!(d[key].is_null(), "{key} while the primary is idle: {d}");
        }
        assert_eq!(lag_metric(&relay, "seconds", "idle", "replay"), Some(0.0));
        assert_eq!(d["replay_lag_bytes"].as_u64(), Some(0), "{d}");
    }
}

#[test]
fn primary_apply_position_tracks_the_slowest_replay() {
    let primary = PgCluster::init_primary("primary");
    workload::create_table(&primary);
    let mut relay = Relay::start(&primary.conninfo(), "relay");
    relay.wait_ready();
    let fast = PgCluster::basebackup_standby(&primary, "fast", relay.port());
    let slow = PgCluster::basebackup_standby(&primary, "slow", relay.port());
    report_every_second(&fast);
    report_every_second(&slow);
    workload::insert_rows(&primary, 1..=100);
    workload::wait_rows(&primary, &slow);

    slow.psql("select pg_wal_replay_pause()");
    slow.wait_for_value(
        "replay to be paused",
        "select pg_get_wal_replay_pause_state()",
        "paused",
    );
    workload::insert_rows(&primary, 1000..=1999);
    workload::wait_rows(&primary, &fast);
    let held = lsn("slow replay", &slow.psql("select pg_last_wal_replay_lsn()"));
    // The relay's row on the primary: flush is what the relay made durable, replay is the
    // slowest downstream's replay position.
    primary.wait_for(
        "the relay's replay_lsn on the primary to be the paused standby's",
        "select replay_lsn from pg_stat_replication where application_name = 'walrelay'",
        |out| out.parse::<walrelay::wal::Lsn>().is_ok_and(|l| l == held),
    );
    let flush = lsn(
        "relay flush on primary",
        &primary
            .psql("select flush_lsn from pg_stat_replication where application_name = 'walrelay'"),
    );
    assert!(
        flush > held,
        "the relay's flush {flush} should be past the held replay {held}"
    );

    slow.psql("select pg_wal_replay_resume()");
    workload::wait_rows(&primary, &slow);
    let end = lsn(
        "primary wal lsn",
        &primary.psql("select pg_current_wal_lsn()"),
    );
    primary.wait_for(
        "the relay's replay_lsn on the primary to catch up",
        "select replay_lsn from pg_stat_replication where application_name = 'walrelay'",
        |out| out.parse::<walrelay::wal::Lsn>().is_ok_and(|l| l >= end),
    );
}

#[test]
fn hot_standby_feedback_protects_queries_on_downstreams() {
    let primary = PgCluster::init_primary("primary");
    workload::create_table(&primary);
    workload::insert_rows(&primary, 1..=2000);
    let mut relay = Relay::start(&primary.conninfo(), "relay");
    relay.wait_ready();
    let standby = PgCluster::basebackup_standby(&primary, "reader", relay.port());
    report_every_second(&standby);
    // Cancel conflicting queries at once: only feedback can save the long query below.
    standby.psql("alter system set max_standby_streaming_delay = 0");
    standby.psql("alter system set hot_standby_feedback = on");
    standby.psql("select pg_reload_conf()");
    workload::wait_rows(&primary, &standby);

    // The standby's xmin reaches the primary through the relay: it is held on the relay's slot.
    let xmin = primary.wait_for(
        "the relay's slot on the primary to hold an xmin",
        "select coalesce(xmin::text, '') from pg_replication_slots where slot_name = 'relay'",
        |out| !out.is_empty(),
    );
    assert!(xmin.parse::<u64>().is_ok(), "slot xmin: {xmin:?}");

    let long_query = "begin isolation level repeatable read; \
                      select count(*) from t; select pg_sleep(8); select count(*) from t; commit";
    thread::scope(|s| {
        let reader = s.spawn(|| standby.try_psql(long_query));
        thread::sleep(Duration::from_secs(2));
        // Rows the long query still sees are deleted and vacuumed on the primary.
        primary.psql("delete from t where id <= 1000");
        primary.psql("vacuum t");
        workload::insert_rows(&primary, 5000..=5100);
        primary.psql("vacuum t");
        let out = reader.join().expect("reader thread");
        let out = out.unwrap_or_else(|e| panic!("the long query on the standby failed: {e}"));
        assert_eq!(
            out.lines().filter(|l| *l == "2000").count(),
            2,
            "the long query should see its 2000 rows twice, got {out:?}"
        );
    });
    workload::wait_rows(&primary, &standby);
}
