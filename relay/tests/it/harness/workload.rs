//! The data the tests write and check: one table on the primary, batches of rows, WAL
//! switches, and a wait until a standby holds exactly the primary's rows.

use std::ops::RangeInclusive;

use super::PgCluster;

/// The query whose answer must match between primary and standby: row count and a digest.
const DIGEST: &str = "select count(*) || ':' || coalesce(md5(string_agg(id::text || '=' || v, ',' order by id)), '') from t";

pub fn create_table(primary: &PgCluster) {
    primary.psql("create table t (id int primary key, v text not null)");
}

/// Inserts rows with these ids, in one transaction.
pub fn insert_rows(primary: &PgCluster, ids: RangeInclusive<u32>) {
    primary.psql(&format!(
        "insert into t select g, md5(g::text) from generate_series({}, {}) g",
        ids.start(),
        ids.end()
    ));
}

/// Waits until `standby` has exactly the rows the primary has now.
pub fn wait_rows(primary: &PgCluster, standby: &PgCluster) {
    let expected = primary.psql(DIGEST);
    standby.wait_for_value(
        &format!("the primary's rows ({expected}) on the standby"),
        DIGEST,
        &expected,
    );
}

/// Forces a WAL segment switch and returns the name of the segment it completed. Write
/// something first: a switch with nothing new to switch away from does nothing.
pub fn switch_wal(primary: &PgCluster) -> String {
    primary.psql("select pg_walfile_name(pg_switch_wal())")
}

/// Writes and switches a few segments, then checkpoints, so that the primary no longer has
/// its first segment (000000010000000000000001, holding 0/1000000) and a relay started now
/// cannot have it either.
pub fn retire_first_segment(primary: &PgCluster) {
    for batch in 0..4 {
        insert_rows(primary, batch * 100 + 1..=batch * 100 + 100);
        switch_wal(primary);
    }
    primary.psql("checkpoint");
    let first = primary.pg_wal_dir().join("000000010000000000000001");
    assert!(
        !first.exists(),
        "the primary still has {} after the checkpoint",
        first.display()
    );
}
