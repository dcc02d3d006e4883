//! A relay stopped and started again resumes where it was, and its standbys follow by
//! themselves.

use crate::harness::{workload, Topology};

#[test]
fn relay_restart_resumes() {
    let Topology {
        primary,
        relays: [mut relay],
        standbys: [standby],
        ..
    } = Topology::primary_relay_standby().rows(1..=100).start();

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
