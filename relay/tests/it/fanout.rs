//! Several downstreams share the relay's one upstream connection, and one of them coming and
//! going disturbs none of the others.

use crate::harness::{wait_until, workload, Topology};

#[test]
fn many_downstreams_one_upstream() {
    let Topology {
        primary,
        relays: [mut relay],
        standbys: [standby_a, mut standby_b],
        receivers: [mut receiver],
        ..
    } = Topology::primary_relay()
        .standbys(["standby_a", "standby_b"])
        .receivewal()
        .rows(1..=500)
        .start();
    // pg_basebackup's own walsenders may take a moment to go; then only the relay is left.
    primary.wait_for_value(
        "the relay to be the primary's only replication connection",
        "select count(*) from pg_stat_replication",
        "1",
    );
    let slot_before = primary
        .slot_restart_lsn("relay")
        .expect("the relay's slot on the primary");
    let receiver_a = standby_a.psql("select pid from pg_stat_wal_receiver");

    // standby_b goes away and comes back while rows are written.
    standby_b.stop();
    workload::insert_rows(&primary, 501..=1000);
    let segment = workload::switch_wal(&primary);
    workload::insert_rows(&primary, 1001..=1500);
    workload::wait_rows(&primary, &standby_a);
    receiver.wait_for_segments(std::slice::from_ref(&segment));
    standby_b.start();
    workload::wait_rows(&primary, &standby_b);
    workload::insert_rows(&primary, 1501..=2000);
    workload::wait_rows(&primary, &standby_a);
    workload::wait_rows(&primary, &standby_b);

    // The others were not disturbed: same walreceiver, pg_receivewal running without errors.
    assert_eq!(
        standby_a.psql("select pid from pg_stat_wal_receiver"),
        receiver_a,
        "standby_a's walreceiver reconnected while standby_b restarted"
    );
    receiver.assert_running();
    assert_eq!(
        receiver.errors(),
        Vec::<String>::new(),
        "pg_receivewal errors"
    );
    assert_eq!(
        primary.psql("select count(*) from pg_stat_replication"),
        "1",
        "the primary streams to the relay only"
    );
    wait_until("the relay's slot on the primary to advance", || {
        let now = primary
            .slot_restart_lsn("relay")
            .expect("the relay's slot on the primary");
        if now > slot_before {
            Ok(now)
        } else {
            Err(format!("restart_lsn {now}, was {slot_before}"))
        }
    });
    relay.assert_running();
}
