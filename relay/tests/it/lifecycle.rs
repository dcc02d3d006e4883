//! The harness's own cluster lifecycle: crash and restart keep committed rows, and dropping a
//! cluster leaves no server running.

use crate::harness::{os, workload, PgCluster};

#[test]
fn harness_selfcheck_cluster_lifecycle() {
    let mut primary = PgCluster::init_primary("lifecycle");
    workload::create_table(&primary);
    workload::insert_rows(&primary, 1..=10);

    let crashed = primary.postmaster_pid().expect("postmaster.pid");
    primary.kill9();
    assert!(!os::pid_alive(crashed), "postmaster survived kill9");
    primary.start();
    assert_eq!(primary.psql("select count(*) from t"), "10");
    primary.restart();
    assert_eq!(primary.psql("select count(*) from t"), "10");

    let pid = primary.postmaster_pid().expect("postmaster.pid");
    drop(primary);
    assert!(
        !os::pid_alive(pid),
        "dropping the cluster left postmaster {pid} running"
    );
}
