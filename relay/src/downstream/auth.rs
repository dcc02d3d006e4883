//! Authentication of downstream clients, on [`crate::access`]: the hba rules pick the method
//! (`--hba-file`, default loopback trusted), SCRAM-SHA-256(-PLUS) checks the password against
//! the `--auth-file` verifiers, and [`Access`] carries the TLS identity that the startup phase
//! uses for SSLRequest and direct TLS.
//!
//! The decision is taken after the startup packet and before the relay says anything about its
//! own state (a refused client never learns whether the relay has reached its upstream), as
//! PostgreSQL does. Failures end the session with PostgreSQL's FATAL errors: 28000 from the
//! hba rules, 28P01 for anything about the password; what only the server log may know (which
//! check failed, the matching hba line) travels in [`SessionEnd::AuthFailed`]'s `log_detail`
//! and is logged once, by the session. No password, verifier or proof is ever logged.
//!
//! With `--auth-query`, a user the auth file does not list gets its verifier from the upstream
//! ([`super::auth_query`]) before the exchange starts, as PostgreSQL reads the role's secret
//! before it sends AuthenticationSASL; the file wins for users it lists. The lookup's state
//! (the cache) lives as long as the query is configured the same, across reloads.

use std::net::IpAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::auth_query::{self, UpstreamVerifiers};
use super::connection::Conn;
use super::error::SessionEnd;
use crate::access::hba::{self, Decision, HbaRules};
use crate::access::scram::{self, Binding, MockKey, ScramExchange, ScramFailure, Step};
use crate::access::tls::ServerTls;
use crate::access::users::{Lookup, UserList};
use crate::config::AccessFiles;
use crate::proto::backend;
use crate::proto::RawMessage;

/// The TLS identity, ready for handshakes.
#[derive(Clone)]
pub struct Tls {
    pub server: ServerTls,
    pub acceptor: TlsAcceptor,
}

impl Tls {
    pub fn new(server: ServerTls) -> Tls {
        Tls {
            acceptor: TlsAcceptor::from(server.config()),
            server,
        }
    }
}

/// Who may connect and how they prove it; one snapshot per connection.
pub struct Access {
    pub hba: HbaRules,
    pub users: UserList,
    pub tls: Option<Tls>,
    /// The secret behind mock salts for unknown users (one per process).
    pub mock: MockKey,
    /// `--auth-query`: verifiers of users not in the auth file, from the upstream.
    pub query: Option<Arc<UpstreamVerifiers>>,
}

impl Access {
    /// No files: loopback trusted, everyone else refused, no TLS.
    pub fn loopback_default() -> Access {
        Access {
            hba: HbaRules::loopback_default(),
            users: UserList::empty(),
            tls: None,
            mock: MockKey::random(),
            query: None,
        }
    }

    /// Loads the configured files again (SIGHUP), keeping this process's mock-salt key so an
    /// unknown user's salt does not change with a reload.
    pub fn reload(&self, files: &AccessFiles) -> anyhow::Result<Access> {
        let mut access = Access::load(files)?;
        access.mock = self.mock.clone();
        // The same query keeps its cache (and its lookups in progress); a changed one starts
        // afresh.
        if let (Some(old), Some(new)) = (&self.query, &access.query) {
            if old.source() == new.source() {
                access.query = Some(old.clone());
            }
        }
        Ok(access)
    }

    /// Loads the configured files; each error names its file. Warnings (ignored hba lines,
    /// users that cannot log in, `hostssl` lines without TLS) are logged.
    pub fn load(files: &AccessFiles) -> anyhow::Result<Access> {
        let tls = match &files.tls {
            Some((cert, key)) => {
                let server =
                    ServerTls::load(cert, key).context("downstream TLS (--tls-cert, --tls-key)")?;
                tracing::info!(cert = %cert.display(), key = %key.display(), channel_binding = matches!(server.binding(), Binding::Tls(_)), "downstream TLS enabled");
                Some(Tls::new(server))
            }
            None => None,
        };
        let hba = match &files.hba_file {
            Some(path) => {
                let rules = HbaRules::load(path).context("--hba-file")?;
                tracing::info!(file = %path.display(), rules = rules.len(), "downstream hba rules loaded");
                rules
            }
            None => HbaRules::loopback_default(),
        };
        for w in hba
            .warnings()
            .iter()
            .chain(&hba.tls_warnings(tls.is_some()))
        {
            tracing::warn!("{w}");
        }
        let users = match &files.auth_file {
            Some(path) => {
                let users = UserList::load(path).context("--auth-file")?;
                tracing::info!(file = %path.display(), users = users.len(), "downstream users loaded");
                users
            }
            None => UserList::empty(),
        };
        for w in users.warnings() {
            tracing::warn!("{w}");
        }
        let query = files.auth_query.as_ref().map(|source| {
            tracing::info!(
                query = source.query.sql(),
                "downstream users not in the auth file are looked up on the upstream (auth_query)"
            );
            Arc::new(UpstreamVerifiers::new(source.clone()))
        });
        Ok(Access {
            hba,
            users,
            tls,
            mock: MockKey::random(),
            query,
        })
    }

    /// What SCRAM may bind to on a connection that is (or is not) TLS.
    pub fn binding(&self, tls: bool) -> Binding {
        match (&self.tls, tls) {
            (Some(t), true) => t.server.binding(),
            (None, true) => Binding::TlsUnbound,
            (_, false) => Binding::Plain,
        }
    }
}

/// What the connection looks like to the hba rules.
pub struct Peer {
    pub peer: IpAddr,
    pub local: IpAddr,
    pub tls: bool,
}

/// How the client proved who it is, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Trust,
    ScramSha256,
    ScramSha256Plus,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Trust => "trust",
            Method::ScramSha256 => scram::SCRAM_SHA_256,
            Method::ScramSha256Plus => scram::SCRAM_SHA_256_PLUS,
        }
    }
}

/// Runs PostgreSQL's `ClientAuthentication` for `user`: the hba decision, then for SCRAM the
/// exchange. On success the caller sends AuthenticationOk (SASLFinal is already queued).
pub async fn authenticate(
    conn: &mut Conn,
    access: &Arc<Access>,
    who: &Peer,
    user: &str,
    cancel: &CancellationToken,
) -> Result<Method, SessionEnd> {
    let interfaces = if access.hba.uses_interfaces() {
        hba::host_interfaces().unwrap_or_default()
    } else {
        Vec::new()
    };
    let client = hba::Client {
        peer: who.peer,
        local: who.local,
        tls: who.tls,
        user,
        interfaces: &interfaces,
    };
    let decision = access.hba.decide(&client);
    match decision {
        Decision::Trust { .. } => Ok(Method::Trust),
        Decision::Reject { .. } | Decision::NoMatch => match decision.refusal(&client) {
            Some(e) => Err(SessionEnd::Fatal(e)),
            None => Err(SessionEnd::ClientGone),
        },
        Decision::Scram { line } => {
            let matched = access.hba.matched_line_detail(line);
            let fail = |f: ScramFailure| {
                let detail = [f.log_detail, matched.clone()]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(" ");
                SessionEnd::AuthFailed {
                    error: f.error,
                    log_detail: (!detail.is_empty()).then_some(detail),
                }
            };
            // The file wins; the upstream is asked only about users it does not list.
            let fetched = match &access.query {
                Some(q) if !access.users.contains(user) => {
                    let looked_up = tokio::select! {
                        r = q.lookup(user) => r,
                        _ = cancel.cancelled() => return Err(SessionEnd::Shutdown),
                    };
                    match looked_up {
                        Ok(f) => Some(f),
                        Err(e) => {
                            let detail = [Some(e.to_string()), matched]
                                .into_iter()
                                .flatten()
                                .collect::<Vec<_>>()
                                .join(" ");
                            return Err(SessionEnd::AuthFailed {
                                error: auth_query::lookup_failed(user),
                                log_detail: Some(detail),
                            });
                        }
                    }
                }
                _ => None,
            };
            let lookup = match &fetched {
                Some(f) => f.lookup(),
                None => access.users.lookup(user),
            };
            let bound = scram_exchange(conn, access, who.tls, user, lookup, cancel, fail).await?;
            Ok(if bound {
                Method::ScramSha256Plus
            } else {
                Method::ScramSha256
            })
        }
    }
}

/// AuthenticationSASL, then the exchange; `Ok(channel bound)`.
async fn scram_exchange(
    conn: &mut Conn,
    access: &Access,
    tls: bool,
    user: &str,
    lookup: Lookup<'_>,
    cancel: &CancellationToken,
    fail: impl Fn(ScramFailure) -> SessionEnd,
) -> Result<bool, SessionEnd> {
    let binding = access.binding(tls);
    backend::authentication_sasl(conn.out(), scram::mechanisms(&binding));
    conn.flush().await?;
    let first = sasl_response(conn, cancel).await?;
    let (mut exchange, mut step) =
        ScramExchange::from_initial_response(user, lookup, &access.mock, binding, &first.body)
            .map_err(&fail)?;
    loop {
        match step {
            Step::Continue(data) => {
                backend::authentication_sasl_continue(conn.out(), &data);
                conn.flush().await?;
                let next = sasl_response(conn, cancel).await?;
                step = exchange.step(Some(&next.body)).map_err(&fail)?;
            }
            Step::Success(data) => {
                backend::authentication_sasl_final(conn.out(), &data);
                return Ok(exchange.channel_bound());
            }
        }
    }
}

/// The next `p` message (SASLInitialResponse or SASLResponse).
async fn sasl_response(
    conn: &mut Conn,
    cancel: &CancellationToken,
) -> Result<RawMessage, SessionEnd> {
    let msg = tokio::select! {
        m = conn.reader()?.read_message() => m?,
        _ = cancel.cancelled() => return Err(SessionEnd::Shutdown),
    };
    if msg.tag != b'p' {
        return Err(SessionEnd::Fatal(scram::unexpected_message(msg.tag)));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_access_trusts_loopback_only() {
        let a = Access::loopback_default();
        assert!(a.tls.is_none());
        assert_eq!(a.binding(false), Binding::Plain);
        let c = |peer: &str| hba::Client {
            peer: peer.parse().unwrap(),
            local: "127.0.0.1".parse().unwrap(),
            tls: false,
            user: "rep",
            interfaces: &[],
        };
        assert!(matches!(
            a.hba.decide(&c("127.0.0.1")),
            Decision::Trust { .. }
        ));
        assert!(matches!(
            a.hba.decide(&c("::ffff:127.0.0.1")),
            Decision::Trust { .. }
        ));
        let far = c("10.1.2.3");
        let e = a.hba.decide(&far).refusal(&far).unwrap();
        assert_eq!(e.code, "28000");
        assert_eq!(
            e.message,
            "no pg_hba.conf entry for replication connection from host \"10.1.2.3\", user \"rep\", no encryption"
        );
    }

    #[test]
    fn a_reload_keeps_the_auth_query_cache_only_for_the_same_query() {
        use crate::access::query::AuthQuery;
        use crate::config::AuthQuerySource;
        let conninfo: crate::config::conninfo::ConnInfo = "host=a user=r".parse().unwrap();
        let files = |sql: &str| AccessFiles {
            auth_query: Some(AuthQuerySource {
                query: AuthQuery::parse(sql).unwrap(),
                conninfo: conninfo.clone(),
                application_name: "walrelay auth query".into(),
            }),
            ..Default::default()
        };
        let q1 = "SELECT rolname, rolpassword FROM pg_authid WHERE rolname=$1";
        let a = Access::load(&files(q1)).unwrap();
        let b = a.reload(&files(q1)).unwrap();
        let (qa, qb) = (a.query.clone().unwrap(), b.query.clone().unwrap());
        assert!(Arc::ptr_eq(&qa, &qb), "the same query lost its cache");
        let q2 = "SELECT usename, passwd FROM pg_shadow WHERE usename=$1";
        let c = b.reload(&files(q2)).unwrap();
        let qc = c.query.clone().unwrap();
        assert!(!Arc::ptr_eq(&qb, &qc), "a changed query kept the old cache");
        assert_eq!(qc.source().query.sql(), q2);
        assert!(c.reload(&AccessFiles::default()).unwrap().query.is_none());
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let hba = dir.path().join("hba.conf");
        std::fs::write(&hba, "hostx replication all all trust\n").unwrap();
        let files = AccessFiles {
            hba_file: Some(hba.clone()),
            ..Default::default()
        };
        let e = format!("{:#}", Access::load(&files).err().unwrap());
        assert!(e.contains(&hba.display().to_string()), "{e}");
        let files = AccessFiles {
            auth_file: Some(dir.path().join("missing.txt")),
            ..Default::default()
        };
        let e = format!("{:#}", Access::load(&files).err().unwrap());
        assert!(e.contains("missing.txt"), "{e}");
        let files = AccessFiles {
            tls: Some((dir.path().join("no.crt"), dir.path().join("no.key"))),
            ..Default::default()
        };
        let e = format!("{:#}", Access::load(&files).err().unwrap());
        assert!(e.contains("no.crt") || e.contains("no.key"), "{e}");
    }
}
