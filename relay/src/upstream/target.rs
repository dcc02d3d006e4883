//! Choosing a server from a multi-host conninfo by `target_session_attrs`, as libpq's
//! `CONNECTION_CHECK_TARGET` does, within what a physical walsender session can answer.
//!
//! * `read-write`/`read-only`: from the `in_hot_standby` and `default_transaction_read_only`
//!   ParameterStatus values (PG 14+) when both are present, else `SHOW transaction_read_only`
//!   (libpq's own fallback, which works in a walsender session).
//! * `primary`/`standby`/`prefer-standby`: from `in_hot_standby` (PG 14+). libpq's fallback,
//!   `SELECT pg_is_in_recovery()`, is SQL that a physical walsender refuses, so before PG 14
//!   `SHOW transaction_read_only` stands in for it: a primary with
//!   `default_transaction_read_only=on` then counts as a standby.
//! * `prefer-standby`: the first standby in host order, else the first server that connected
//!   (kept open while the remaining hosts are probed, instead of libpq's second pass).
//!
//! Hosts are tried in order; every failure is kept, `host:port: reason`, for the
//! [`UpstreamError::NoSuitableHost`] that is returned when no host fits.

use super::connection::{connect, Connection};
use super::error::UpstreamError;
use crate::config::conninfo::{ConnInfo, TargetSessionAttrs};
use crate::wal::TimeLineId;

/// Connects to the first host of `ci` that accepts the connection, fits
/// `ci.target_session_attrs` and, when `expected_sysid` is given, belongs to that cluster (a
/// server of another cluster is refused loudly and the next host is tried). Configuration
/// errors are returned at once.
pub async fn connect_any(
    ci: &ConnInfo,
    application_name: &str,
    expected_sysid: Option<&str>,
) -> Result<Connection, UpstreamError> {
    connect_any_at_least(ci, application_name, expected_sysid, None).await
}

/// [`connect_any`], also refusing a server whose timeline is older than `min_timeline` (the
/// relay's own): an old primary that came back writable after a failover, listed before the
/// new one, is passed over for the next host instead of being retried for ever.
pub async fn connect_any_at_least(
    ci: &ConnInfo,
    application_name: &str,
    expected_sysid: Option<&str>,
    min_timeline: Option<TimeLineId>,
) -> Result<Connection, UpstreamError> {
    let want = ci.target_session_attrs;
    let mut failures = Vec::new();
    let mut fallback: Option<Connection> = None;
    for (i, host) in ci.hosts.iter().enumerate() {
        let mut conn = match connect(ci, i, application_name).await {
            Ok(c) => c,
            Err(e) if !e.is_transient() => return Err(e),
            Err(e) => {
                failures.push(format!("{host}: {e}"));
                continue;
            }
        };
        let verdict = match check(&mut conn, want).await {
            Ok(None) => check_system(&mut conn, expected_sysid, min_timeline).await,
            other => other.map(|r| r.map(String::from)),
        };
        match verdict {
            Ok(None) => {
                if let Some(f) = fallback.take() {
                    f.terminate().await;
                }
                return Ok(conn);
            }
            Ok(Some(reason)) => {
                failures.push(format!("{host}: {reason}"));
                if want == TargetSessionAttrs::PreferStandby && fallback.is_none() {
                    fallback = Some(conn);
                } else {
                    conn.terminate().await;
                }
            }
            Err(e) => {
                failures.push(format!("{host}: {e}"));
                conn.terminate().await;
            }
        }
    }
    match fallback {
        Some(conn) => Ok(conn),
        None => Err(UpstreamError::NoSuitableHost(failures)),
    }
}

/// Asks IDENTIFY_SYSTEM, always: a server that authenticated and then stopped answering is
/// given up on here (the query is bounded by `connect_timeout`), while the next host can still
/// be tried. Refuses a server whose system identifier is not the one the relay's store holds
/// WAL for.
async fn check_system(
    conn: &mut Connection,
    expected: Option<&str>,
    min_timeline: Option<TimeLineId>,
) -> Result<Option<String>, UpstreamError> {
    let rows = conn.simple_query("IDENTIFY_SYSTEM").await?;
    let row = rows.first();
    let timeline = row
        .and_then(|r| r.get(1))
        .cloned()
        .flatten()
        .and_then(|t| t.parse::<TimeLineId>().ok());
    let Some(expected) = expected else {
        return Ok(None);
    };
    let got = row
        .and_then(|r| r.first())
        .cloned()
        .flatten()
        .unwrap_or_default();
    if got == expected {
        return Ok(match (timeline, min_timeline) {
            (Some(t), Some(min)) if t < min => {
                tracing::warn!(
                    host = %conn.host(),
                    timeline = t,
                    relay_timeline = min,
                    "passing over upstream server: it is on an older timeline than the relay (an old primary after a failover?)"
                );
                Some(format!(
                    "server is on timeline {t}, behind the relay's timeline {min}"
                ))
            }
            _ => None,
        });
    }
    tracing::error!(
        host = %conn.host(),
        system_identifier = %got,
        expected = %expected,
        "refusing upstream server: it belongs to a different cluster"
    );
    Ok(Some(format!(
        "database system identifier differs: server has {got}, the relay holds WAL of {expected}"
    )))
}

/// `Ok(None)` when the server fits, `Ok(Some(reason))` (libpq's words) when it does not.
async fn check(
    conn: &mut Connection,
    want: TargetSessionAttrs,
) -> Result<Option<&'static str>, UpstreamError> {
    Ok(match want {
        TargetSessionAttrs::Any => None,
        TargetSessionAttrs::ReadWrite => read_only(conn).await?.then_some("session is read-only"),
        TargetSessionAttrs::ReadOnly => {
            (!read_only(conn).await?).then_some("session is not read-only")
        }
        TargetSessionAttrs::Primary => hot_standby(conn)
            .await?
            .then_some("server is in hot standby mode"),
        TargetSessionAttrs::Standby | TargetSessionAttrs::PreferStandby => {
            (!hot_standby(conn).await?).then_some("server is not in hot standby mode")
        }
    })
}

fn param_on(conn: &Connection, name: &str) -> Option<bool> {
    conn.params().get(name).map(|v| v == "on")
}

async fn read_only(conn: &mut Connection) -> Result<bool, UpstreamError> {
    match (
        param_on(conn, "in_hot_standby"),
        param_on(conn, "default_transaction_read_only"),
    ) {
        (Some(hs), Some(ro)) => Ok(hs || ro),
        _ => show_transaction_read_only(conn).await,
    }
}

async fn hot_standby(conn: &mut Connection) -> Result<bool, UpstreamError> {
    match param_on(conn, "in_hot_standby") {
        Some(hs) => Ok(hs),
        None => show_transaction_read_only(conn).await,
    }
}

async fn show_transaction_read_only(conn: &mut Connection) -> Result<bool, UpstreamError> {
    let rows = conn.simple_query("SHOW transaction_read_only").await?;
    match rows.first().and_then(|r| r.first()).cloned().flatten() {
        Some(v) => Ok(v == "on"),
        None => Err(UpstreamError::Protocol(
            "SHOW transaction_read_only returned no value".into(),
        )),
    }
}
