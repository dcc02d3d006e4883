//! One downstream session: startup packet negotiation (SSLRequest answered `S` and the TLS
//! handshake when TLS is configured; direct TLS), authentication (through [`auth`]), the
//! parameters a walsender reports, then the simple-query command loop, which hands each query
//! to [`commands`]. How the session ended is reported here, once: in the log and, where the
//! protocol allows, as the client's last message.
//!
//! Layering: this file sits on [`super::connection`], [`auth`], [`super::client`] and
//! [`super::error`]; the commands and the walsender sit above those, and are reached from here
//! only through [`commands::execute`].

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_rustls::TlsStream;
use tracing::{field, info, warn, Instrument};

use super::auth::{self, Access};
use super::client::{server_major, Client};
use super::commands;
use super::connection::{Conn, READ_CHUNK};
use super::context::{Context, Permit};
use super::error::{too_many_clients, SessionEnd};
use crate::access::tls::check_direct_alpn;
use crate::proto::backend;
use crate::proto::error::{sqlstate, PgError};
use crate::proto::frontend::{
    parse_frontend, parse_startup_packet, FrontendMessage, StartupPacket,
};
use crate::proto::ProtocolError;
use crate::wire::{Framed, Stream, WireError};

/// One session, holding its `max_connections` permit until it ends.
pub async fn run(ctx: Arc<Context>, socket: TcpStream, peer: SocketAddr, _permit: Permit) {
    let pid = ctx.next_pid();
    let span = tracing::info_span!(
        "downstream",
        pid,
        peer = %peer,
        application_name = field::Empty,
        user = field::Empty
    );
    async move {
        // One snapshot of the rules for the whole connection (a reload applies to new ones).
        let access = ctx.access();
        let local = socket
            .local_addr()
            .map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
        // One authentication_timeout covers the TLS handshake, the startup packet and the
        // authentication exchange, as PostgreSQL's does.
        let (authenticated, startup_done) = oneshot::channel();
        // Read once, when the connection arrives: a reload applies to the next connections.
        let auth_timeout = ctx.limits().authentication_timeout;
        let deadline = startup_deadline(startup_done, auth_timeout);
        tokio::pin!(deadline);
        let opened = tokio::select! {
            r = open(&access, socket) => Ok(r),
            () = &mut deadline => Err(SessionEnd::AuthenticationTimeout),
            () = shutdown_grace(&ctx) => Err(SessionEnd::Shutdown),
        };
        let (mut conn, result) = match opened {
            Err(e) => (None, Err(e)),
            Ok((framed, started)) => {
                let mut conn = framed.map(Conn::from_framed);
                let result = match (started, conn.as_mut()) {
                    (Ok(startup), Some(c)) => tokio::select! {
                        r = session(&ctx, &access, c, pid, Addrs { peer, local }, startup, authenticated) => r,
                        () = &mut deadline => Err(SessionEnd::AuthenticationTimeout),
                        () = shutdown_grace(&ctx) => Err(SessionEnd::Shutdown),
                    },
                    (Err(e), _) => Err(e),
                    (Ok(_), None) => Err(SessionEnd::ClientGone),
                };
                (conn, result)
            }
        };
        // Temporary slots end with the session that created them.
        ctx.store.slots().drop_temporary_of(pid);
        match result {
            Ok(()) | Err(SessionEnd::ClientGone) => info!("downstream disconnected"),
            Err(SessionEnd::Fatal(e)) => {
                info!("ending downstream connection: {e}");
                farewell(conn.as_mut(), &e).await;
            }
            Err(SessionEnd::AuthFailed { error, log_detail }) => {
                match log_detail {
                    Some(d) => warn!("ending downstream connection: {error} DETAIL: {d}"),
                    None => warn!("ending downstream connection: {error}"),
                }
                farewell(conn.as_mut(), &error).await;
            }
            Err(SessionEnd::Protocol(e)) => {
                info!("ending downstream connection: {e}");
                let e = PgError::fatal(sqlstate::PROTOCOL_VIOLATION, e.to_string());
                farewell(conn.as_mut(), &e).await;
            }
            Err(SessionEnd::Shutdown) => {
                let e = PgError::fatal(
                    sqlstate::ADMIN_SHUTDOWN,
                    "terminating connection due to administrator command",
                );
                farewell(conn.as_mut(), &e).await;
                info!("downstream connection closed at shutdown");
            }
            // As PostgreSQL: the client is told nothing, the connection just closes.
            Err(SessionEnd::AuthenticationTimeout) => info!(
                timeout = %humantime::format_duration(auth_timeout),
                "closing downstream connection: startup and authentication not finished within authentication_timeout"
            ),
            Err(SessionEnd::Io(e)) => info!("downstream connection lost: {e}"),
            // Logged once by the walsender; the client is told nothing (COMMERROR).
            Err(SessionEnd::ReplicationTimeout) => {}
        }
    }
    .instrument(span)
    .await
}

/// A client past `max_connections`: as PostgreSQL does, its startup packet is read (SSL and
/// GSS requests answered as usual) and then it gets `53300` and is closed.
pub async fn refuse(ctx: Arc<Context>, socket: TcpStream, peer: SocketAddr, _permit: Permit) {
    let span = tracing::info_span!("downstream", peer = %peer);
    async move {
        let access = ctx.access();
        let timeout = ctx.limits().authentication_timeout;
        if let Ok((framed, started)) = tokio::time::timeout(timeout, open(&access, socket)).await {
            let mut conn = framed.map(Conn::from_framed);
            match started {
                Ok(_) => {
                    info!("refusing downstream connection: too many clients already");
                    farewell(conn.as_mut(), &too_many_clients()).await;
                }
                Err(SessionEnd::Fatal(e)) => farewell(conn.as_mut(), &e).await,
                Err(_) => {}
            }
        }
    }
    .instrument(span)
    .await
}

/// How long the last message to a client that is going away may take: a client that does not
/// read it is not waited for.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a session may take to end after the relay is told to stop (a session blocked
/// writing to a client that does not read is dropped then).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Sends a client its last message, if it takes it within [`FAREWELL_TIMEOUT`].
async fn farewell(conn: Option<&mut Conn>, e: &PgError) {
    if let Some(conn) = conn {
        let _ = tokio::time::timeout(FAREWELL_TIMEOUT, conn.send_error(e)).await;
    }
}

/// Ends when `limit` has passed before the session said it is authenticated; never ends once
/// it has.
async fn startup_deadline(done: oneshot::Receiver<()>, limit: Duration) {
    if tokio::time::timeout(limit, done).await.is_ok() {
        std::future::pending::<()>().await;
    }
}

/// Ends [`SHUTDOWN_GRACE`] after the relay was told to stop.
async fn shutdown_grace(ctx: &Context) {
    ctx.cancel.cancelled().await;
    tokio::time::sleep(SHUTDOWN_GRACE).await;
}

/// What the startup phase learned: the protocol minor version, the StartupMessage parameters,
/// and whether the connection is TLS.
struct Startup {
    minor: u16,
    params: Vec<(String, String)>,
    tls: bool,
}

/// The startup phase on the whole connection: direct TLS (PostgreSQL 17+, the first byte a TLS
/// handshake record), then [`startup`]. Returns the connection (`None` when it was lost in a
/// TLS handshake, when nothing can be sent any more) and the outcome.
async fn open(access: &Access, socket: TcpStream) -> (Option<Framed>, Result<Startup, SessionEnd>) {
    let direct = match &access.tls {
        Some(tls) => {
            let mut first = [0u8; 1];
            match socket.peek(&mut first).await {
                Ok(0) => return (None, Err(SessionEnd::ClientGone)),
                Ok(_) if first == [TLS_HANDSHAKE] => Some(tls),
                Ok(_) => None,
                Err(e) => return (None, Err(SessionEnd::Io(e))),
            }
        }
        None => None,
    };
    let framed = match direct {
        Some(tls) => match tls.acceptor.accept(socket).await {
            Ok(s) => {
                if let Err(why) = check_direct_alpn(s.get_ref().1.alpn_protocol()) {
                    info!("{why}");
                    return (None, Err(SessionEnd::ClientGone));
                }
                Framed::new(Stream::Tls(Box::new(TlsStream::Server(s))), READ_CHUNK)
            }
            Err(e) => return (None, Err(tls_failed(e))),
        },
        None => Framed::new(Stream::Plain(socket), READ_CHUNK),
    };
    startup(access, framed).await
}

/// `TLSPlaintext.type` handshake(22): the first byte of a direct TLS connection.
const TLS_HANDSHAKE: u8 = 0x16;

fn tls_failed(e: std::io::Error) -> SessionEnd {
    SessionEnd::Io(std::io::Error::new(
        e.kind(),
        format!("could not accept SSL connection: {e}"),
    ))
}

/// The two ends of a downstream connection's socket.
struct Addrs {
    peer: SocketAddr,
    local: IpAddr,
}

/// The session after the startup packet: authentication, then the command loop. `authenticated`
/// is told once the client is through authentication (ending its authentication_timeout).
async fn session(
    ctx: &Arc<Context>,
    access: &Arc<Access>,
    conn: &mut Conn,
    pid: i32,
    addrs: Addrs,
    startup: Startup,
    authenticated: oneshot::Sender<()>,
) -> Result<(), SessionEnd> {
    let Addrs { peer, local } = addrs;
    let Startup { minor, params, tls } = startup;
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());

    let user = get("user").filter(|u| !u.is_empty()).ok_or_else(|| {
        SessionEnd::Fatal(PgError::fatal(
            sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
            "no PostgreSQL user name specified in startup packet",
        ))
    })?;
    let span = tracing::Span::current();
    span.record("user", user.as_str());
    let application_name = get("application_name").unwrap_or_default();
    span.record("application_name", application_name.as_str());

    check_replication_param(get("replication"))?;

    // Protocol options (`_pq_.*`) and minor versions above 0 are answered with
    // NegotiateProtocolVersion, as PostgreSQL does, before authentication.
    let unsupported: Vec<String> = params
        .iter()
        .filter(|(k, _)| k.starts_with("_pq_."))
        .map(|(k, _)| k.clone())
        .collect();
    if minor > 0 || !unsupported.is_empty() {
        backend::negotiate_protocol_version(conn.out(), 0, &unsupported);
    }

    // Before the relay says anything about its own state: a refused client learns nothing.
    let who = auth::Peer {
        peer: peer.ip(),
        local,
        tls,
    };
    let method = auth::authenticate(conn, access, &who, &user, &ctx.cancel).await?;

    let Some(identity) = ctx.store.identity() else {
        return Err(SessionEnd::Fatal(
            PgError::fatal(
                sqlstate::CANNOT_CONNECT_NOW,
                "the database system is starting up",
            )
            .with_detail("walrelay has not reached its upstream server yet."),
        ));
    };

    backend::authentication_ok(conn.out());
    let client_encoding = get("client_encoding").unwrap_or_else(|| "UTF8".into());
    let major = server_major(&identity.server_version);
    let mut status: Vec<(&str, &str)> = vec![
        ("application_name", &application_name),
        ("client_encoding", &client_encoding),
        ("DateStyle", "ISO, MDY"),
        ("default_transaction_read_only", "on"),
        ("in_hot_standby", "on"),
        ("integer_datetimes", "on"),
        ("IntervalStyle", "postgres"),
        ("is_superuser", "on"),
    ];
    if major >= 16 {
        status.push(("scram_iterations", "4096"));
    }
    if major >= 18 {
        status.push(("search_path", "\"$user\", public"));
    }
    status.extend([
        ("server_encoding", "UTF8"),
        ("server_version", identity.server_version.as_str()),
        ("session_authorization", user.as_str()),
        ("standard_conforming_strings", "on"),
        ("TimeZone", "Etc/UTC"),
    ]);
    for (k, v) in status {
        backend::parameter_status(conn.out(), k, v);
    }
    backend::backend_key_data(conn.out(), pid, rand::random::<i32>());
    backend::ready_for_query(conn.out());
    conn.flush().await?;
    let _ = authenticated.send(());
    info!(tls, auth = method.as_str(), "downstream connected");

    let client = Client {
        pid,
        peer,
        user,
        application_name,
        identity,
    };
    loop {
        let msg = tokio::select! {
            m = conn.reader()?.read_message() => m?,
            _ = ctx.cancel.cancelled() => return Err(SessionEnd::Shutdown),
        };
        match parse_frontend(msg)? {
            FrontendMessage::Query(q) => commands::execute(ctx, conn, &client, &q).await?,
            FrontendMessage::Terminate => return Ok(()),
            // Stray COPY messages after an error or after the server's CopyDone are ignored,
            // as PostgreSQL's command loop does; so are Sync and Flush.
            FrontendMessage::CopyData(_)
            | FrontendMessage::CopyDone
            | FrontendMessage::CopyFail(_)
            | FrontendMessage::Sync
            | FrontendMessage::Flush => {}
            FrontendMessage::Password(_) | FrontendMessage::Other(_) => {
                return Err(SessionEnd::Fatal(PgError::fatal(
                    sqlstate::PROTOCOL_VIOLATION,
                    "invalid frontend message type",
                )))
            }
        }
    }
}

/// Reads startup-phase packets until the StartupMessage. SSLRequest is answered `S` and the
/// TLS handshake follows when TLS is configured, `N` otherwise; GSSENCRequest always `N`.
async fn startup(
    access: &Access,
    mut framed: Framed,
) -> (Option<Framed>, Result<Startup, SessionEnd>) {
    // After direct TLS an SSLRequest is refused like a second one, as PostgreSQL does.
    let mut ssl_answered = framed.is_tls();
    let mut gss_answered = false;
    let fatal = |framed, code, message: String| {
        (
            Some(framed),
            Err(SessionEnd::Fatal(PgError::fatal(code, message))),
        )
    };
    loop {
        let pkt = match framed.recv_startup_packet().await {
            Ok(p) => p,
            Err(WireError::Protocol(_)) => {
                return fatal(
                    framed,
                    sqlstate::PROTOCOL_VIOLATION,
                    "invalid length of startup packet".into(),
                )
            }
            Err(e) => return (Some(framed), Err(e.into())),
        };
        match parse_startup_packet(&pkt) {
            Ok(StartupPacket::SslRequest) if !ssl_answered => {
                ssl_answered = true;
                let Some(tls) = &access.tls else {
                    framed.out().extend_from_slice(b"N");
                    if let Err(e) = framed.flush().await {
                        return (Some(framed), Err(e.into()));
                    }
                    continue;
                };
                // Bytes after the SSLRequest would be read as if they came over TLS
                // (CVE-2021-23214): refuse them, as PostgreSQL does.
                if framed.buffered() > 0 {
                    return fatal(
                        framed,
                        sqlstate::PROTOCOL_VIOLATION,
                        "received unencrypted data after SSL request".into(),
                    );
                }
                framed.out().extend_from_slice(b"S");
                if let Err(e) = framed.flush().await {
                    return (Some(framed), Err(e.into()));
                }
                let Stream::Plain(socket) = framed.into_stream() else {
                    return (None, Err(SessionEnd::ClientGone));
                };
                framed = match tls.acceptor.accept(socket).await {
                    Ok(s) => Framed::new(Stream::Tls(Box::new(TlsStream::Server(s))), READ_CHUNK),
                    Err(e) => return (None, Err(tls_failed(e))),
                };
            }
            Ok(StartupPacket::GssEncRequest) if !gss_answered => {
                gss_answered = true;
                framed.out().extend_from_slice(b"N");
                if let Err(e) = framed.flush().await {
                    return (Some(framed), Err(e.into()));
                }
            }
            // A second request of the same kind: PostgreSQL reads its code as a protocol
            // version (1234.5679 or 1234.5680) and refuses it.
            Ok(p @ (StartupPacket::SslRequest | StartupPacket::GssEncRequest)) => {
                let minor = if p == StartupPacket::SslRequest {
                    5679
                } else {
                    5680
                };
                return fatal(
                    framed,
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!(
                        "unsupported frontend protocol 1234.{minor}: server supports 3.0 to 3.0"
                    ),
                );
            }
            // A cancel request gets no answer; the connection just closes.
            Ok(StartupPacket::Cancel { .. }) => return (Some(framed), Err(SessionEnd::ClientGone)),
            Ok(StartupPacket::Startup { minor, params }) => {
                let tls = framed.is_tls();
                return (Some(framed), Ok(Startup { minor, params, tls }));
            }
            Err(ProtocolError::UnsupportedProtocol { major, minor }) => {
                return fatal(
                    framed,
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!(
                        "unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0"
                    ),
                )
            }
            Err(e) => return fatal(framed, sqlstate::PROTOCOL_VIOLATION, e.to_string()),
        }
    }
}

/// `replication=true|on|yes|1` means a physical walsender; anything else is refused: the relay
/// has no databases to run SQL in, and logical decoding needs a real server.
fn check_replication_param(value: Option<String>) -> Result<(), SessionEnd> {
    let refuse_sql = || {
        SessionEnd::Fatal(
            PgError::fatal(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "walrelay accepts only physical replication connections",
            )
            .with_hint(
                "Connect with replication=true, as primary_conninfo, pg_receivewal and pg_basebackup do; run SQL on the primary.",
            ),
        )
    };
    let Some(v) = value else {
        return Err(refuse_sql());
    };
    if v == "database" {
        return Err(SessionEnd::Fatal(PgError::fatal(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "walrelay does not support logical replication connections",
        )));
    }
    match parse_bool(&v) {
        Some(true) => Ok(()),
        Some(false) => Err(refuse_sql()),
        None => Err(SessionEnd::Fatal(PgError::fatal(
            sqlstate::INVALID_PARAMETER_VALUE,
            format!("invalid value for parameter \"replication\": \"{v}\""),
        ))),
    }
}

/// PostgreSQL's `parse_bool`: true/false, yes/no, on/off, 1/0, and unique prefixes.
pub fn parse_bool(v: &str) -> Option<bool> {
    let l = v.trim().to_ascii_lowercase();
    let prefix_of = |word: &str, min: usize| l.len() >= min && word.starts_with(&l);
    if prefix_of("true", 1) || prefix_of("yes", 1) || l == "on" || l == "1" {
        Some(true)
    } else if prefix_of("false", 1) || prefix_of("no", 1) || prefix_of("off", 2) || l == "0" {
        Some(false)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bools() {
        assert_eq!(parse_bool("true"), Some(true));
        assert_eq!(parse_bool("on"), Some(true));
        assert_eq!(parse_bool("of"), Some(false));
        assert_eq!(parse_bool("o"), None);
        assert_eq!(parse_bool("database"), None);
    }
}
