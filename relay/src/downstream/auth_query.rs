//! `--auth-query` at run time: looks a downstream user's verifier up on the upstream, over a
//! SQL (not replication) session made with the upstream conninfo, through the per-user cache
//! of [`crate::access::query`].
//!
//! Each lookup opens its own session (hosts tried in conninfo order, the first that answers
//! wins: a standby's `pg_authid` is the primary's), runs the query and closes it; the cache
//! keeps lookups rare, so no session is held open. Every attempt is bounded by the conninfo's
//! `connect_timeout` ([`DEFAULT_LOOKUP_TIMEOUT`] when it has none), so a client never waits on
//! an upstream that does not answer beyond that (and never beyond `authentication_timeout`).
//!
//! What the client sees when the lookup fails (no host answers, the query errs): PgBouncer's
//! behaviour when it cannot log in to run its `auth_query`, an error saying to try later,
//! with PgBouncer's SQLSTATE 08P01 ([`lookup_failed`]); the reason is in the log only. It is
//! the same for every user the auth file does not list, so it says nothing about whether the
//! user exists.
//!
//! Invariant: the verifier is never logged; the query text sent holds only the user name, and
//! an upstream error message that could quote a secret is withheld from the log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::access::query::{Fetched, LookupFailed, VerifierCache};
use crate::access::users::NO_ROLE;
use crate::config::AuthQuerySource;
use crate::proto::error::{sqlstate, PgError};
use crate::upstream::connection::{connect_kind, SessionKind};

/// The bound on one attempt when the conninfo has no `connect_timeout`.
pub const DEFAULT_LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// The query, where it runs, and what it said lately.
#[derive(Debug)]
pub struct UpstreamVerifiers {
    source: AuthQuerySource,
    cache: VerifierCache,
}

impl UpstreamVerifiers {
    pub fn new(source: AuthQuerySource) -> UpstreamVerifiers {
        UpstreamVerifiers {
            source,
            cache: VerifierCache::default(),
        }
    }

    pub fn source(&self) -> &AuthQuerySource {
        &self.source
    }

    /// What the upstream says about `user`, from the cache when fresh.
    pub async fn lookup(&self, user: &str) -> Result<Arc<Fetched>, LookupFailed> {
        self.cache
            .get(user, Instant::now(), || self.fetch(user))
            .await
    }

    async fn fetch(&self, user: &str) -> Result<Fetched, LookupFailed> {
        let Some(sql) = self.source.query.for_user(user) else {
            // No role has a NUL in its name; nothing to ask.
            return Ok(Fetched::Unusable {
                log_detail: NO_ROLE,
            });
        };
        let ci = &self.source.conninfo;
        let limit = ci.connect_timeout.unwrap_or(DEFAULT_LOOKUP_TIMEOUT);
        let mut errors = Vec::new();
        for (idx, host) in ci.hosts.iter().enumerate() {
            let attempt = async {
                let mut conn =
                    connect_kind(ci, idx, &self.source.application_name, SessionKind::Sql)
                        .await
                        .map_err(|e| e.to_string())?;
                let rows = conn.simple_query(&sql).await;
                conn.terminate().await;
                let rows = rows.map_err(|e| withhold_secrets(e.to_string()))?;
                Fetched::from_rows(&rows).map_err(|e| e.to_string())
            };
            match tokio::time::timeout(limit, attempt).await {
                Ok(Ok(fetched)) => {
                    tracing::debug!(
                        user,
                        host = %host,
                        usable = matches!(fetched, Fetched::Scram(_)),
                        "auth_query: looked up a downstream user on the upstream"
                    );
                    return Ok(fetched);
                }
                Ok(Err(e)) => errors.push(format!("{host}: {e}")),
                Err(_) => errors.push(format!("{host}: no answer within {limit:?}")),
            }
        }
        Err(LookupFailed(format!(
            "auth_query could not be run on the upstream: {}",
            errors.join("; ")
        )))
    }
}

/// An upstream error message as the log may show it: one that could quote a secret (a query
/// that fails on the password column, say) is replaced.
fn withhold_secrets(message: String) -> String {
    if message.contains("SCRAM-SHA-256$") || message.contains("md5") {
        "the query failed (the server's message is withheld: it may quote a password)".into()
    } else {
        message
    }
}

/// The FATAL a client gets when its verifier cannot be looked up (see the module doc).
pub fn lookup_failed(user: &str) -> PgError {
    PgError::fatal(
        sqlstate::PROTOCOL_VIOLATION,
        format!("authentication failed for user \"{user}\": the password could not be looked up on the upstream, try again later"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_that_may_hold_secrets_are_withheld() {
        assert_eq!(
            withhold_secrets("permission denied for table pg_authid".into()),
            "permission denied for table pg_authid"
        );
        let m = withhold_secrets(
            "invalid input syntax for type integer: \"SCRAM-SHA-256$4096:abc\"".into(),
        );
        assert!(!m.contains("SCRAM"), "{m}");
        let m = lookup_failed("rep");
        assert_eq!(m.code, "08P01");
        assert!(m.message.contains("user \"rep\""), "{}", m.message);
    }
}
