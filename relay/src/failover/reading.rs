//! What the failover watcher reads on the primary, and how its answers are read: the one-shot
//! query ([`QUERY`]), the reading block that pushes each change as a `NOTICE` ([`block_sql`]),
//! and their rows ([`Row`]; [`parse_reading`], and [`interpret`] into the rule's [`Observed`]).
//!
//! Owns the SQL text and its parsing, nothing else: no I/O (the watcher runs them), no state.
//! Invariant: the query and the block return the same columns, `[kind, name, lsn, connected,
//! visible]`, so a reading means the same whichever way it came.

use std::time::Duration;

use super::rule::Observed;
use crate::wal::Lsn;

/// The block's sleep between two readings (`pg_sleep`, millisecond resolution).
pub(super) const BLOCK_SLEEP: Duration = Duration::from_millis(1);
/// The message of the block's notices, before the reading's JSON.
pub(super) const NOTICE_PREFIX: &str = "walrelay failover reading ";
/// Each walsender by `application_name` (kind `a`), and each physical slot with its position:
/// the flush of the walsender using it, else its `restart_lsn` (kind `s`; `connected` says
/// whether a walsender uses it); last, whether the row is visible in full. `flush_lsn` is NULL
/// for walsender rows the role may not see in full (it needs `pg_read_all_stats`: then
/// `state` is NULL too), and for a walsender still starting; a slot's `restart_lsn` is
/// readable by anyone.
pub(super) const QUERY: &str = "SELECT 'a', application_name, flush_lsn, true, state IS NOT NULL \
                     FROM pg_catalog.pg_stat_replication \
                     UNION ALL \
                     SELECT 's', s.slot_name::text, coalesce(r.flush_lsn, s.restart_lsn), \
                     r.pid IS NOT NULL, true \
                     FROM pg_catalog.pg_replication_slots s \
                     LEFT JOIN pg_catalog.pg_stat_replication r ON r.pid = s.active_pid \
                     WHERE s.slot_type = 'physical'";

/// Which kind of row of a reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RowKind {
    /// A walsender, by its `application_name`.
    Walsender,
    /// A physical slot, by its name.
    Slot,
}

/// One row of a reading, from [`QUERY`] or from a block's notice (the same columns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Row {
    pub(super) kind: RowKind,
    pub(super) name: String,
    pub(super) lsn: Option<Lsn>,
    /// A walsender streams to it now.
    pub(super) connected: bool,
    /// The role sees the row in full (false: a walsender row of another role without
    /// `pg_read_all_stats`).
    pub(super) visible: bool,
}

impl Row {
    /// From [`QUERY`]'s text columns; None for a row without a kind or a name.
    pub(super) fn from_columns(r: &[Option<String>]) -> Option<Row> {
        let col = |i: usize| r.get(i).cloned().flatten();
        let kind = match col(0)?.as_str() {
            "a" => RowKind::Walsender,
            "s" => RowKind::Slot,
            _ => return None,
        };
        Some(Row {
            kind,
            name: col(1)?,
            lsn: col(2).and_then(|l| l.parse::<Lsn>().ok()),
            connected: col(3).as_deref() == Some("t"),
            visible: col(4).as_deref() != Some("f"),
        })
    }
}

/// Parses a block's reading: a JSON array of `[kind, name, lsn, connected, visible]`.
pub(super) fn parse_reading(json: &str) -> Result<Vec<Row>, serde_json::Error> {
    type Raw = (String, Option<String>, Option<String>, bool, bool);
    let raw: Vec<Raw> = serde_json::from_str(json)?;
    Ok(raw
        .into_iter()
        .filter_map(|(kind, name, lsn, connected, visible)| {
            let kind = match kind.as_str() {
                "a" => RowKind::Walsender,
                "s" => RowKind::Slot,
                _ => return None,
            };
            Some(Row {
                kind,
                name: name?,
                lsn: lsn.and_then(|l| l.parse::<Lsn>().ok()),
                connected,
                visible,
            })
        })
        .collect())
}

/// What a reading says of the candidates: the positions seen, and the candidates whose
/// position the role may not read (a walsender row without it, and no slot of the name to
/// give it). A walsender still starting (visible, no flush yet) says nothing.
pub(super) fn interpret(rows: &[Row], names: &[String]) -> (Vec<Observed>, Vec<String>) {
    let mut obs: Vec<Observed> = Vec::new();
    let mut null_flush: Vec<String> = Vec::new();
    for r in rows {
        match r.lsn {
            Some(lsn) => obs.push(Observed {
                name: r.name.clone(),
                lsn,
                connected: r.connected,
            }),
            None if r.kind == RowKind::Walsender && !r.visible && names.contains(&r.name) => {
                null_flush.push(r.name.clone())
            }
            None => {}
        }
    }
    let unreadable = null_flush
        .into_iter()
        .filter(|n| !obs.iter().any(|o| &o.name == n))
        .collect();
    (obs, unreadable)
}

/// The reading block: [`QUERY`]'s rows as JSON, read every [`BLOCK_SLEEP`] inside the
/// server, sent as a `NOTICE` each time they differ from the last; it ends after `bound` (or
/// half the session's `statement_timeout` / `transaction_timeout` when that is shorter), or
/// after `idle_end` without a change.
///
/// `pg_stat_get_wal_senders()` and the slots are read from shared memory each time; the
/// backends' table behind `application_name` is a per-transaction snapshot, so it is read again
/// (`pg_stat_clear_snapshot()`) when a walsender is not in it, and the block commits every
/// second (a DO block outside a transaction may), which also drops its snapshot: it holds no
/// xmin back for longer than that.
pub(super) fn block_sql(bound: Duration, idle_end: Duration) -> String {
    format!(
        r#"DO $walrelay$
DECLARE
  bound interval := interval '{bound} ms';
  idle_end interval := interval '{idle} ms';
  started timestamptz := clock_timestamp();
  changed timestamptz := clock_timestamp();
  committed timestamptz := clock_timestamp();
  last text;
  cur text;
  stale boolean;
  cleared boolean := false;
  tmo bigint;
BEGIN
  SELECT min(setting::bigint) INTO tmo FROM pg_catalog.pg_settings
   WHERE name IN ('statement_timeout', 'transaction_timeout') AND setting::bigint > 0;
  IF tmo IS NOT NULL THEN
    bound := least(bound, tmo * interval '0.5 ms');
  END IF;
  LOOP
    WITH w AS (SELECT pid, state, flush_lsn FROM pg_catalog.pg_stat_get_wal_senders())
    SELECT coalesce(json_agg(json_build_array(k, n, l, c, v) ORDER BY k, n, l), '[]')::text,
           coalesce(bool_or(k = 'a' AND n IS NULL), false)
      INTO cur, stale
      FROM (SELECT 'a' AS k, a.application_name AS n, w.flush_lsn AS l, true AS c,
                   w.state IS NOT NULL AS v
              FROM w LEFT JOIN LATERAL pg_catalog.pg_stat_get_activity(w.pid) a ON true
            UNION ALL
            SELECT 's', s.slot_name::text, coalesce(w.flush_lsn, s.restart_lsn),
                   w.pid IS NOT NULL, true
              FROM pg_catalog.pg_replication_slots s LEFT JOIN w ON w.pid = s.active_pid
             WHERE s.slot_type = 'physical') r;
    IF stale AND NOT cleared THEN
      PERFORM pg_catalog.pg_stat_clear_snapshot();
      cleared := true;
      CONTINUE;
    END IF;
    cleared := false;
    IF cur IS DISTINCT FROM last THEN
      RAISE NOTICE '{prefix}%', cur;
      last := cur;
      changed := clock_timestamp();
    END IF;
    EXIT WHEN clock_timestamp() - started >= bound OR clock_timestamp() - changed >= idle_end;
    IF clock_timestamp() - committed >= interval '1 s' THEN
      COMMIT;
      committed := clock_timestamp();
    END IF;
    PERFORM pg_catalog.pg_sleep({sleep});
  END LOOP;
END
$walrelay$"#,
        bound = bound.as_millis(),
        idle = idle_end.as_millis(),
        prefix = NOTICE_PREFIX,
        sleep = BLOCK_SLEEP.as_secs_f64(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }
    #[test]
    fn a_pushed_reading_parses_to_the_query_rows() {
        // As json_agg prints it (PostgreSQL 15).
        let json = r#"[["a", "ha", "0/3000148", true, true], ["a", null, "0/1", true, true], ["s", "ha", "0/3000148", true, true], ["x", "y", null, false, true]]"#;
        let rows = parse_reading(json).unwrap();
        assert_eq!(
            rows,
            vec![
                Row {
                    kind: RowKind::Walsender,
                    name: "ha".into(),
                    lsn: Some(Lsn(0x3000148)),
                    connected: true,
                    visible: true,
                },
                Row {
                    kind: RowKind::Slot,
                    name: "ha".into(),
                    lsn: Some(Lsn(0x3000148)),
                    connected: true,
                    visible: true,
                },
            ]
        );
        assert_eq!(parse_reading("[]").unwrap(), vec![]);
        for bad in [
            "",
            "[",
            "{}",
            r#"[["a", "ha"]]"#,
            r#"[["a", 1, "0/1", true, true]]"#,
        ] {
            assert!(parse_reading(bad).is_err(), "{bad}");
        }
        // The same row from the one-shot query's text columns.
        let col = |v: &str| Some(v.to_string());
        assert_eq!(
            Row::from_columns(&[col("a"), col("ha"), col("0/3000148"), col("t"), col("t")]),
            rows.first().cloned()
        );
        assert_eq!(Row::from_columns(&[col("a"), None, col("0/1")]), None);
        assert_eq!(Row::from_columns(&[]), None);
    }
    #[test]
    fn a_row_without_position_is_unreadable_only_when_hidden_by_privilege() {
        let row = |kind, name: &str, lsn: Option<u64>, visible| Row {
            kind,
            name: name.into(),
            lsn: lsn.map(Lsn),
            connected: true,
            visible,
        };
        let n = names(&["ha", "hb"]);
        // No pg_read_all_stats: the walsender's columns are NULL, state included.
        let (obs, unreadable) = interpret(&[row(RowKind::Walsender, "ha", None, false)], &n);
        assert!(obs.is_empty());
        assert_eq!(unreadable, names(&["ha"]));
        // ... unless its slot gives the position.
        let (obs, unreadable) = interpret(
            &[
                row(RowKind::Walsender, "ha", None, false),
                row(RowKind::Slot, "ha", Some(0x100), true),
            ],
            &n,
        );
        assert_eq!(obs.len(), 1);
        assert!(unreadable.is_empty());
        // A walsender still starting (state known, no flush yet) says nothing; neither does
        // a hidden row of a name not watched.
        let (obs, unreadable) = interpret(
            &[
                row(RowKind::Walsender, "hb", None, true),
                row(RowKind::Walsender, "other", None, false),
            ],
            &n,
        );
        assert!(obs.is_empty() && unreadable.is_empty());
    }
    #[test]
    fn the_block_is_bounded_and_reports_with_the_prefix() {
        let sql = block_sql(Duration::from_secs(10), Duration::from_secs(1));
        assert!(sql.starts_with("DO $walrelay$"));
        assert!(sql.contains("interval '10000 ms'"));
        assert!(sql.contains("interval '1000 ms'"));
        assert!(sql.contains(&format!("RAISE NOTICE '{NOTICE_PREFIX}%', cur;")));
        assert!(sql.contains("pg_catalog.pg_sleep(0.001)"));
        assert!(sql.trim_end().ends_with("$walrelay$"));
    }
}
