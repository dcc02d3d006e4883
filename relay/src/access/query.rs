//! `--auth-query`: a user's SCRAM verifier taken from the upstream on demand, as PgBouncer's
//! `auth_query`, so one password (the one in the primary's `pg_authid`) serves the primary and
//! every relay. This module owns the sans-IO half: the query text ([`AuthQuery`], `$1` for the
//! user name), what its rows mean ([`Fetched::from_rows`]), and the per-user cache
//! ([`VerifierCache`]); the downstream authentication step runs the query over a SQL session to
//! the upstream and feeds the rows in.
//!
//! Meaning, as in PgBouncer: the query returns one row `(name, verifier)` for a user, none for
//! a user that does not exist. It is only asked about users that are not in `--auth-file` (the
//! file wins).
//!
//! Invariants:
//! * The verifier is never logged or shown by `Debug` (it lives in a
//!   [`ScramVerifier`](super::users::ScramVerifier), whose `Debug` shows the iteration count
//!   only); errors about rows name the shape, never a value.
//! * Only a SCRAM-SHA-256 verifier is usable. An MD5 hash, a plain-text password, an empty or
//!   NULL one end in the same mock exchange and the same 28P01 as a wrong password (PostgreSQL's
//!   behaviour for a `scram-sha-256` hba line); the reason goes to the log only, in PostgreSQL's
//!   words. A user without a row is "Role … does not exist." in the log, 28P01 to the client.
//! * One lookup per user at a time (the others wait for its result), and at most
//!   [`MAX_CONCURRENT_LOOKUPS`] at once in all: a reconnect storm costs the upstream one query
//!   per user per [`CACHE_TTL`], not one per connection.
//! * The map of cached users is bounded ([`MAX_CACHED`]): user names come from unauthenticated
//!   clients, so expired entries are dropped when it fills, and past it lookups go uncached.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::users::{Lookup, ScramVerifier, NOT_SCRAM, NO_PASSWORD, NO_ROLE};

/// How long a looked-up verifier (or the absence of a user) is used before asking again. A
/// password changed on the primary applies to the relay within this.
pub const CACHE_TTL: Duration = Duration::from_secs(60);
/// How long a failed lookup (upstream unreachable, query error) is remembered, so that
/// clients arriving while the upstream is down fail at once instead of each waiting for a
/// connection attempt (PgBouncer's `server_login_retry` does the same).
pub const FAILURE_TTL: Duration = Duration::from_secs(5);
/// Users held in the cache at most.
pub const MAX_CACHED: usize = 10_000;
/// Lookups running at once, over all users.
pub const MAX_CONCURRENT_LOOKUPS: usize = 4;

/// An `auth_query` that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthQueryError {
    #[error("invalid auth_query: it must contain $1 where the user name goes")]
    NoPlaceholder,
}

/// The configured query, checked to hold `$1`.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthQuery {
    sql: String,
}

impl fmt::Debug for AuthQuery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("AuthQuery").field(&self.sql).finish()
    }
}

impl AuthQuery {
    pub fn parse(sql: &str) -> Result<AuthQuery, AuthQueryError> {
        if placeholders(sql).next().is_none() {
            return Err(AuthQueryError::NoPlaceholder);
        }
        Ok(AuthQuery { sql: sql.into() })
    }

    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// The query for `user`: every `$1` (not `$10`, …) replaced by the name as a SQL literal.
    /// `None` for a name with a NUL, which no role can have (and which a startup packet cannot
    /// carry).
    ///
    /// Why a literal and not a bind parameter: the relay's upstream client speaks the simple
    /// query protocol only (the failover watcher's session), which has no parameters. The name
    /// comes from an unauthenticated client, so it is quoted as PostgreSQL's `quote_literal`
    /// does, which is safe whatever `standard_conforming_strings` is (see
    /// [`quote_literal`]). The placeholder is replaced wherever it appears, even inside a
    /// string in the query: write the query with `$1` only where the name goes.
    pub fn for_user(&self, user: &str) -> Option<String> {
        let literal = quote_literal(user)?;
        let mut out = String::with_capacity(self.sql.len() + literal.len());
        let mut rest = 0;
        for at in placeholders(&self.sql) {
            out.push_str(self.sql.get(rest..at).unwrap_or_default());
            out.push_str(&literal);
            rest = at + 2;
        }
        out.push_str(self.sql.get(rest..).unwrap_or_default());
        Some(out)
    }
}

/// Byte offsets of each `$1` not followed by another digit.
fn placeholders(sql: &str) -> impl Iterator<Item = usize> + '_ {
    let b = sql.as_bytes();
    sql.match_indices("$1")
        .map(|(i, _)| i)
        .filter(move |&i| !b.get(i + 2).is_some_and(u8::is_ascii_digit))
}

/// `s` as a SQL string literal, as PostgreSQL's `quote_literal` makes it: single quotes
/// doubled, and when `s` holds a backslash, an `E'…'` literal with backslashes doubled too.
/// Either form means the same text whether `standard_conforming_strings` is on (a backslash is
/// an ordinary character in `'…'`) or off (it escapes): a plain `'…'` is only produced without
/// backslashes, and `E'…'` is read the same under both settings. `None` when `s` holds a NUL,
/// which a literal cannot carry.
pub fn quote_literal(s: &str) -> Option<String> {
    if s.contains('\0') {
        return None;
    }
    let mut out = String::with_capacity(s.len() + 3);
    if s.contains('\\') {
        out.push('E');
    }
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    Some(out)
}

/// What the upstream said about one user. `Debug` shows no secret.
#[derive(Clone)]
pub enum Fetched {
    Scram(ScramVerifier),
    /// No usable verifier; the detail (PostgreSQL's words, `%s` the user) is for the log.
    Unusable {
        log_detail: &'static str,
    },
}

impl fmt::Debug for Fetched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.lookup().fmt(f)
    }
}

/// Rows that are not an answer to "what is this user's verifier". Never quotes a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowsError {
    #[error("auth_query returned {0} columns; it must return 2 (user name, password)")]
    Columns(usize),
    #[error("auth_query returned {0} rows for one user; it must return at most 1")]
    Rows(usize),
}

impl Fetched {
    /// Reads the query's rows (text values, NULL as `None`) as PgBouncer does: no row, no
    /// such user; one row `(name, password)`.
    pub fn from_rows(rows: &[Vec<Option<String>>]) -> Result<Fetched, RowsError> {
        let row = match rows {
            [] => {
                return Ok(Fetched::Unusable {
                    log_detail: NO_ROLE,
                })
            }
            [row] => row,
            more => return Err(RowsError::Rows(more.len())),
        };
        let [_name, password] = row.as_slice() else {
            return Err(RowsError::Columns(row.len()));
        };
        Ok(match password.as_deref() {
            None | Some("") => Fetched::Unusable {
                log_detail: NO_PASSWORD,
            },
            // PostgreSQL's `scram_init`: anything that is not a SCRAM verifier (an MD5 hash, a
            // plain-text password, a broken verifier) cannot run SCRAM. Unlike the auth file,
            // a plain-text password is not turned into a verifier: the primary would refuse it
            // for a scram-sha-256 line too.
            Some(p) => match ScramVerifier::parse(p) {
                Ok(v) => Fetched::Scram(v),
                Err(_) => Fetched::Unusable {
                    log_detail: NOT_SCRAM,
                },
            },
        })
    }

    /// For the SCRAM exchange.
    pub fn lookup(&self) -> Lookup<'_> {
        match self {
            Fetched::Scram(v) => Lookup::Scram(v),
            Fetched::Unusable { log_detail } => Lookup::Unusable { log_detail },
        }
    }
}

/// A lookup that did not get an answer (the upstream unreachable, the query failed); the
/// message is for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LookupFailed(pub String);

struct Cached {
    at: Instant,
    result: Result<Arc<Fetched>, LookupFailed>,
}

impl Cached {
    fn fresh(&self, now: Instant, ttl: Duration, failure_ttl: Duration) -> bool {
        let ttl = if self.result.is_ok() {
            ttl
        } else {
            failure_ttl
        };
        now.saturating_duration_since(self.at) < ttl
    }
}

type SlotRef = Arc<tokio::sync::Mutex<Option<Cached>>>;

/// Per-user results of the query, each used for a while.
pub struct VerifierCache {
    ttl: Duration,
    failure_ttl: Duration,
    max_entries: usize,
    slots: Mutex<HashMap<String, SlotRef>>,
    running: Semaphore,
}

impl fmt::Debug for VerifierCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifierCache")
            .field("ttl", &self.ttl)
            .field("users", &self.len())
            .finish_non_exhaustive()
    }
}

impl Default for VerifierCache {
    fn default() -> Self {
        VerifierCache::new(CACHE_TTL, FAILURE_TTL, MAX_CACHED)
    }
}

impl VerifierCache {
    pub fn new(ttl: Duration, failure_ttl: Duration, max_entries: usize) -> VerifierCache {
        VerifierCache {
            ttl,
            failure_ttl,
            max_entries,
            slots: Mutex::new(HashMap::new()),
            running: Semaphore::new(MAX_CONCURRENT_LOOKUPS),
        }
    }

    /// Users with an entry (fresh or not).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, SlotRef>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The slot of `user`, made if there is room; `None` when the map is full of entries that
    /// are fresh or in use.
    fn slot(&self, user: &str, now: Instant) -> Option<SlotRef> {
        let mut slots = self.lock();
        if let Some(s) = slots.get(user) {
            return Some(s.clone());
        }
        if slots.len() >= self.max_entries {
            let (ttl, failure_ttl) = (self.ttl, self.failure_ttl);
            // An entry someone holds (a lookup in progress) is locked: kept.
            slots.retain(|_, s| match s.try_lock() {
                Ok(c) => c.as_ref().is_some_and(|c| c.fresh(now, ttl, failure_ttl)),
                Err(_) => true,
            });
            if slots.len() >= self.max_entries {
                return None;
            }
        }
        let s = SlotRef::default();
        slots.insert(user.to_string(), s.clone());
        Some(s)
    }

    /// The cached result for `user` if fresh at `now`, else `fetch`'s (which is then cached,
    /// failures for the shorter [`FAILURE_TTL`]). Callers for the same user wait for the one
    /// lookup in progress and share its result.
    pub async fn get<F, Fut>(
        &self,
        user: &str,
        now: Instant,
        fetch: F,
    ) -> Result<Arc<Fetched>, LookupFailed>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Fetched, LookupFailed>>,
    {
        let Some(slot) = self.slot(user, now) else {
            return self.run(fetch).await.map(Arc::new);
        };
        let mut cached = slot.lock().await;
        if let Some(c) = cached
            .as_ref()
            .filter(|c| c.fresh(now, self.ttl, self.failure_ttl))
        {
            return c.result.clone();
        }
        let result = self.run(fetch).await.map(Arc::new);
        *cached = Some(Cached {
            at: now,
            result: result.clone(),
        });
        result
    }

    async fn run<F, Fut>(&self, fetch: F) -> Result<Fetched, LookupFailed>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Fetched, LookupFailed>>,
    {
        // The semaphore is never closed, so acquiring only waits.
        let _permit = self.running.acquire().await;
        fetch().await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::access::users::tests::PG15_X_P;

    #[test]
    fn literals_are_quoted_as_postgres_quote_literal() {
        assert_eq!(quote_literal("rep").unwrap(), "'rep'");
        assert_eq!(quote_literal("").unwrap(), "''");
        assert_eq!(quote_literal("o'brien").unwrap(), "'o''brien'");
        assert_eq!(quote_literal("x' OR '1'='1").unwrap(), "'x'' OR ''1''=''1'");
        // A backslash: E'' with it doubled, the same text under either
        // standard_conforming_strings.
        assert_eq!(quote_literal(r"a\b").unwrap(), r"E'a\\b'");
        assert_eq!(quote_literal(r"\'; drop").unwrap(), r"E'\\''; drop'");
        assert_eq!(quote_literal("ünï \"q\"").unwrap(), "'ünï \"q\"'");
        assert_eq!(quote_literal("a\0b"), None);
    }

    #[test]
    fn placeholder_is_replaced_by_the_literal() {
        let q = AuthQuery::parse("SELECT rolname, rolpassword FROM pg_authid WHERE rolname=$1")
            .unwrap();
        assert_eq!(
            q.for_user("o'x").unwrap(),
            "SELECT rolname, rolpassword FROM pg_authid WHERE rolname='o''x'"
        );
        let q = AuthQuery::parse("SELECT * FROM f($1) WHERE $1 <> $10 AND x = $1").unwrap();
        assert_eq!(
            q.for_user("u").unwrap(),
            "SELECT * FROM f('u') WHERE 'u' <> $10 AND x = 'u'"
        );
        assert_eq!(q.for_user("a\0"), None);
        assert_eq!(
            AuthQuery::parse("SELECT 1, $10"),
            Err(AuthQueryError::NoPlaceholder)
        );
        assert_eq!(
            AuthQuery::parse("SELECT usename, passwd FROM pg_shadow"),
            Err(AuthQueryError::NoPlaceholder)
        );
    }

    fn row(name: &str, password: Option<&str>) -> Vec<Option<String>> {
        vec![Some(name.into()), password.map(Into::into)]
    }

    fn detail(f: &Fetched) -> Option<String> {
        f.lookup().log_detail("u")
    }

    #[test]
    fn rows_are_read_as_pgbouncer_does() {
        let f = Fetched::from_rows(&[row("u", Some(PG15_X_P))]).unwrap();
        assert!(matches!(f, Fetched::Scram(ref v) if v.verify_password(b"p")));
        assert_eq!(detail(&f), None);
        // The verifier never shows in Debug.
        assert!(!format!("{f:?}").contains("SCRAM-SHA-256$"), "{f:?}");
        assert_eq!(
            detail(&Fetched::from_rows(&[]).unwrap()).unwrap(),
            "Role \"u\" does not exist."
        );
        for unusable in [
            Some("md5a3556571e93b0d20722ba62be61e8c2d"),
            Some("plain text"),
            Some("SCRAM-SHA-256$4096:broken"),
        ] {
            assert_eq!(
                detail(&Fetched::from_rows(&[row("u", unusable)]).unwrap()).unwrap(),
                "User \"u\" does not have a valid SCRAM secret."
            );
        }
        for none in [None, Some("")] {
            assert_eq!(
                detail(&Fetched::from_rows(&[row("u", none)]).unwrap()).unwrap(),
                "User \"u\" has no password assigned."
            );
        }
        assert_eq!(
            Fetched::from_rows(&[vec![Some(PG15_X_P.into())]]).unwrap_err(),
            RowsError::Columns(1)
        );
        let e =
            Fetched::from_rows(&[row("u", Some(PG15_X_P)), row("u", Some(PG15_X_P))]).unwrap_err();
        assert_eq!(e, RowsError::Rows(2));
        assert!(!e.to_string().contains("SCRAM"), "{e}");
    }

    /// A fetch that counts its calls and answers `answer`.
    fn counting<'a>(
        calls: &'a AtomicUsize,
        answer: Result<Fetched, LookupFailed>,
    ) -> impl FnOnce() -> std::future::Ready<Result<Fetched, LookupFailed>> + 'a {
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            std::future::ready(answer)
        }
    }

    fn absent() -> Fetched {
        Fetched::Unusable {
            log_detail: NO_ROLE,
        }
    }

    #[tokio::test]
    async fn results_are_cached_for_the_ttl_failures_for_less() {
        let cache = VerifierCache::new(Duration::from_secs(60), Duration::from_secs(5), 100);
        let t0 = Instant::now();
        let calls = AtomicUsize::new(0);
        let ok = || Ok(Fetched::from_rows(&[row("u", Some(PG15_X_P))]).unwrap());
        cache.get("u", t0, counting(&calls, ok())).await.unwrap();
        cache
            .get("u", t0 + Duration::from_secs(59), counting(&calls, ok()))
            .await
            .unwrap();
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "asked again within the TTL"
        );
        // Another user is its own entry.
        cache
            .get("v", t0, counting(&calls, Ok(absent())))
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // After the TTL: asked again, and the new answer is used.
        let later = t0 + Duration::from_secs(60);
        let f = cache
            .get("u", later, counting(&calls, Ok(absent())))
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert!(matches!(*f, Fetched::Unusable { .. }));

        // A failure is remembered for the failure TTL only.
        let fail = || Err(LookupFailed("upstream down".into()));
        let e = cache.get("w", t0, counting(&calls, fail())).await;
        assert_eq!(e.unwrap_err().0, "upstream down");
        let e = cache
            .get("w", t0 + Duration::from_secs(4), counting(&calls, ok()))
            .await;
        assert!(e.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        cache
            .get("w", t0 + Duration::from_secs(5), counting(&calls, ok()))
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn one_lookup_per_user_at_a_time() {
        let cache = Arc::new(VerifierCache::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let (release, wait) = tokio::sync::watch::channel(false);
        let now = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (cache, calls, mut wait) = (cache.clone(), calls.clone(), wait.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get("u", now, || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        // Held until every task is waiting on this lookup.
                        let _ = wait.wait_for(|r| *r).await;
                        Ok(absent())
                    })
                    .await
            }));
        }
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        release.send_replace(true);
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_map_stays_bounded() {
        let cache = VerifierCache::new(Duration::from_secs(60), Duration::from_secs(5), 3);
        let t0 = Instant::now();
        let calls = AtomicUsize::new(0);
        for u in ["a", "b", "c"] {
            cache
                .get(u, t0, counting(&calls, Ok(absent())))
                .await
                .unwrap();
        }
        // Full of fresh entries: a fourth user is looked up without being cached.
        cache
            .get("d", t0, counting(&calls, Ok(absent())))
            .await
            .unwrap();
        assert_eq!(cache.len(), 3);
        cache
            .get("d", t0, counting(&calls, Ok(absent())))
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 5);
        // Once they expire, they make room.
        let later = t0 + Duration::from_secs(61);
        cache
            .get("d", later, counting(&calls, Ok(absent())))
            .await
            .unwrap();
        assert_eq!(cache.len(), 1);
    }
}
