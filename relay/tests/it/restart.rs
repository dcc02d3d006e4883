//! A relay stopped and started again resumes where it was, and its standbys follow by
//! themselves.

use crate::harness::{workload, PgCluster, Relay};

#[test]
fn relay_restart_resumes() {
    let primary = PgCluster::init_primary("primary");
    workload::create_table(&primary);
    let mut relay = Relay::start(&primary.conninfo(), "relay");
    relay.wait_ready();
    let standby = PgCluster::basebackup_standby(&primary, "standby1", relay.port());
    workload::insert_rows(&primary, 1..=100);
    workload::wait_rows(&primary, &standby);

    let flushed = relay.wait_flushed(primary.flush_lsn());
    let status = relay.stop();
    assert!(
        status.success(),
        "SIGTERM is a clean stop, but walrelay exited {status}"
    );

    workload::insert_rows(&primary, 101..=200);
    relay.restart();
    relay.wait_ready();
    let start = relay.status_lsn("/upstream/stream_start_lsn");
    assert!(
        start >= flushed,
        "after restart the relay asked the primary for WAL from {start}, but it had already \
         flushed up to {flushed} before the stop"
    );
    workload::wait_rows(&primary, &standby);
    assert_eq!(
        standby.psql("select status, sender_port from pg_stat_wal_receiver"),
        format!("streaming|{}", relay.port())
    );
}
