//! The client side of one physical replication connection to an upstream server: TCP (with
//! keepalives), SSL negotiation by `sslmode`, StartupMessage with `replication=true`,
//! authentication, then simple queries and the CopyBoth stream of `START_REPLICATION`.
//!
//! Protocol state is tracked in [`Connection`] so misuse and interrupted operations are
//! reported instead of desynchronising the stream:
//! * `Idle`: ready for a query.
//! * `Copy`: inside CopyBoth; which sides have sent CopyDone.
//! * `Draining`: the server ended COPY with an ERROR; its ReadyForQuery is still to be read
//!   (done lazily, and resumably, by the next query).
//! * `Query`: a query sent with [`Connection::send_simple_query`] whose events (rows,
//!   notices) are read one at a time with [`Connection::recv_query_event`] until it ends.
//! * `Busy`: a multi-step operation is in progress. If its future is dropped the state stays
//!   `Busy`, and later calls fail with [`UpstreamError::Broken`].
//! * `Broken`: I/O failed, the server sent FATAL, or the protocol went off the rails.
//!
//! Cancel safety: [`Connection::recv_copy`] and [`Connection::recv_query_event`] are cancel-safe (meant for `tokio::select!` with
//! timers and feedback); a cancelled send leaves its message queued whole, to go out with the
//! next send. `simple_query`, `start_copy_both` and `finish_copy` are not cancel-safe: dropping
//! them half-way leaves the connection `Busy` (unusable).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::auth::{self, Binding};
use super::error::{Rows, ServerError, UpstreamError};
use super::message::{decode, BackendMessage};
use super::tls;
use crate::config::conninfo::{ConnInfo, HostPort, SslMode};
use crate::config::pgpass;
use crate::wal::{Lsn, TimeLineId};
use crate::wire::{Framed, Stream};

/// Read-buffer headroom kept before each read: enough for a 128 kB XLogData chunk to arrive in
/// a few reads without reallocating per message.
const READ_CHUNK: usize = 64 * 1024;

/// One event of the CopyBoth stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyEvent {
    /// A CopyData payload (`w` XLogData or `k` keepalive; parse with
    /// [`crate::proto::replication::parse_server_copy`]).
    Data(Bytes),
    /// The server sent CopyDone (end of a historic timeline). Send CopyDone too (or call
    /// [`Connection::finish_copy`], which does) and read the result.
    Done,
    /// CommandComplete inside COPY mode: a walsender's `COPY 0` at server shutdown, after
    /// which it exits without ReadyForQuery.
    CommandComplete(String),
}

/// One event of a query read as it arrives ([`Connection::send_simple_query`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryEvent {
    /// A NoticeResponse (a `RAISE NOTICE`, a WARNING, ...), as the server flushed it: the
    /// server sends each one at once (elog.c's `send_message_to_frontend` ends with
    /// `pq_flush`), so a long-running statement can report as it goes.
    Notice(ServerError),
    /// A DataRow, as text.
    Row(Vec<Option<String>>),
    /// ReadyForQuery after a query that succeeded: the connection is idle again. (A query that
    /// failed ends with [`UpstreamError::Server`] instead, the connection idle as well.)
    Done,
}

/// What a [`CancelToken`] sends: PostgreSQL's CancelRequest for one backend, on a connection
/// of its own (as libpq's `PQcancel`: plain TCP, whatever the session's `sslmode`; the server
/// reads it before any authentication).
#[derive(Debug, Clone)]
pub struct CancelToken {
    addr: SocketAddr,
    pid: i32,
    key: i32,
}

impl CancelToken {
    /// Asks the server to cancel the backend's running statement, and waits (up to `limit`)
    /// for the server to close the cancel connection, which it does once it has signalled the
    /// backend. A cancel that arrives when nothing runs does nothing.
    pub async fn cancel(&self, limit: Duration) -> Result<(), UpstreamError> {
        let send = async {
            let mut tcp = TcpStream::connect(self.addr).await.map_err(|e| {
                UpstreamError::io(format!("could not send cancel request to {}", self.addr), e)
            })?;
            let mut req = bytes::BytesMut::new();
            frontend::cancel_request(self.pid, self.key, &mut req);
            tcp.write_all(&req)
                .await
                .map_err(|e| UpstreamError::io("could not send cancel request", e))?;
            let mut sink = [0u8; 16];
            // The server answers nothing and closes: EOF (or an error) means it is done.
            let _ = tcp.read(&mut sink).await;
            Ok(())
        };
        tokio::time::timeout(limit, send).await.unwrap_or_else(|_| {
            Err(UpstreamError::Timeout {
                addr: self.addr.to_string(),
            })
        })
    }
}

/// What `start_copy_both` led to.
///
/// Chosen over an error variant because the no-COPY answer is a normal protocol outcome:
/// `START_REPLICATION` on a historic timeline whose switch point equals the start point answers
/// with the next-timeline result set instead of entering COPY mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartOutcome {
    /// CopyBothResponse received; use `recv_copy` / `send_copy_data`.
    CopyBoth,
    /// The command completed without COPY; its result rows (possibly none).
    NoCopy { rows: Rows },
}

/// Parses the `next_tli, next_tli_startpos` row that ends a historic timeline (from
/// [`StartOutcome::NoCopy`] or [`Connection::finish_copy`]).
pub fn parse_next_timeline(rows: &Rows) -> Result<(TimeLineId, Lsn), UpstreamError> {
    let bad = || UpstreamError::Protocol(format!("unexpected end-of-timeline result {rows:?}"));
    let row = rows.first().ok_or_else(bad)?;
    let tli = row.first().cloned().flatten().ok_or_else(bad)?;
    let pos = row.get(1).cloned().flatten().ok_or_else(bad)?;
    let tli: TimeLineId = tli.trim().parse().map_err(|_| bad())?;
    let pos: Lsn = pos.trim().parse().map_err(|_| bad())?;
    Ok((tli, pos))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Copy {
        server_done: bool,
        client_done: bool,
    },
    Draining,
    /// A query from [`Connection::send_simple_query`] is running; its events are read one at
    /// a time.
    Query,
    Busy,
    Broken,
}

/// An authenticated replication connection.
pub struct Connection {
    wire: Framed,
    host: HostPort,
    addr: SocketAddr,
    params: HashMap<String, String>,
    backend_key: Option<(i32, i32)>,
    state: State,
    /// Bounds each query and the start of COPY (the conninfo's `connect_timeout`): a server
    /// that authenticated and then stopped answering is given up on, so the next host can be
    /// tried.
    query_timeout: Option<Duration>,
    /// The ErrorResponse of the running [`State::Query`], returned at its ReadyForQuery.
    query_error: Option<ServerError>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("host", &self.host.to_string())
            .field("addr", &self.addr)
            .field("tls", &self.is_tls())
            .field("state", &self.state)
            .finish()
    }
}

/// What kind of session to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    /// A physical replication (walsender) connection.
    Replication,
    /// A normal SQL connection to the conninfo's `dbname` (default `postgres`), used to read
    /// `pg_stat_replication` on the primary.
    Sql,
}

/// How to treat TLS for one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encryption {
    Plain,
    IfOffered,
    Required,
}

/// Connects to `ci.hosts[host_index]`, trying each of its addresses in turn, and authenticates.
/// `application_name` is the program's default, used unless the conninfo sets one (see
/// [`ConnInfo::effective_application_name`]). `connect_timeout` bounds each address attempt,
/// handshake and authentication included.
pub async fn connect(
    ci: &ConnInfo,
    host_index: usize,
    application_name: &str,
) -> Result<Connection, UpstreamError> {
    connect_kind(ci, host_index, application_name, SessionKind::Replication).await
}

/// Like [`connect`], for either kind of session.
pub async fn connect_kind(
    ci: &ConnInfo,
    host_index: usize,
    application_name: &str,
    kind: SessionKind,
) -> Result<Connection, UpstreamError> {
    let host = ci
        .hosts
        .get(host_index)
        .ok_or(UpstreamError::NoSuchHost(host_index))?;
    let addrs = with_timeout(ci.connect_timeout, &host.to_string(), resolve(host)).await?;
    let mut last = None;
    for addr in addrs {
        let attempt = connect_addr(ci, host, addr, application_name, kind);
        match with_timeout(ci.connect_timeout, &describe(host, addr), attempt).await {
            Ok(c) => return Ok(c),
            Err(e) if !e.is_transient() => return Err(e),
            Err(e) => {
                tracing::debug!(host = %host, %addr, error = %e, "upstream connection attempt failed");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| {
        UpstreamError::io(
            format!("could not translate host name \"{}\" to address", host.host),
            std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses"),
        )
    }))
}

fn describe(host: &HostPort, addr: SocketAddr) -> String {
    format!("\"{}\" ({}), port {}", host.host, addr.ip(), addr.port())
}

async fn with_timeout<T>(
    limit: Option<Duration>,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, UpstreamError>>,
) -> Result<T, UpstreamError> {
    match limit {
        None => fut.await,
        Some(d) => tokio::time::timeout(d, fut).await.unwrap_or_else(|_| {
            Err(UpstreamError::Timeout {
                addr: what.to_string(),
            })
        }),
    }
}

async fn resolve(host: &HostPort) -> Result<Vec<SocketAddr>, UpstreamError> {
    if let Some(ip) = host.hostaddr {
        return Ok(vec![SocketAddr::new(ip, host.port)]);
    }
    let addrs = tokio::net::lookup_host((host.host.as_str(), host.port))
        .await
        .map_err(|e| {
            UpstreamError::io(
                format!("could not translate host name \"{}\" to address", host.host),
                e,
            )
        })?;
    Ok(addrs.collect())
}

/// One address, with libpq's sslmode fallbacks: `allow` retries with TLS when the server
/// refuses the plaintext connection; `prefer` retries in plaintext when the TLS handshake fails.
async fn connect_addr(
    ci: &ConnInfo,
    host: &HostPort,
    addr: SocketAddr,
    app: &str,
    kind: SessionKind,
) -> Result<Connection, UpstreamError> {
    let attempt = |enc| attempt(ci, host, addr, app, enc, kind);
    match ci.sslmode {
        SslMode::Disable => attempt(Encryption::Plain).await,
        SslMode::Allow => match attempt(Encryption::Plain).await {
            Err(UpstreamError::Server(e)) => {
                tracing::debug!(error = %e, "plaintext refused; retrying with SSL (sslmode=allow)");
                attempt(Encryption::IfOffered).await
            }
            other => other,
        },
        SslMode::Prefer => match attempt(Encryption::IfOffered).await {
            Err(UpstreamError::Tls(e)) => {
                tracing::debug!(error = %e, "SSL failed; retrying without SSL (sslmode=prefer)");
                attempt(Encryption::Plain).await
            }
            other => other,
        },
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            attempt(Encryption::Required).await
        }
    }
}

fn configure_socket(tcp: &TcpStream, ci: &ConnInfo) -> std::io::Result<()> {
    tcp.set_nodelay(true)?;
    let sock = socket2::SockRef::from(tcp);
    if !ci.keepalives {
        return sock.set_keepalive(false);
    }
    let mut ka = socket2::TcpKeepalive::new();
    if let Some(t) = ci.keepalives_idle {
        ka = ka.with_time(t);
    }
    #[cfg(target_os = "linux")]
    {
        if let Some(t) = ci.keepalives_interval {
            ka = ka.with_interval(t);
        }
        if let Some(n) = ci.keepalives_count {
            ka = ka.with_retries(n);
        }
        if let Some(t) = ci.tcp_user_timeout {
            sock.set_tcp_user_timeout(Some(t))?;
        }
    }
    sock.set_tcp_keepalive(&ka)
}

async fn attempt(
    ci: &ConnInfo,
    host: &HostPort,
    addr: SocketAddr,
    app: &str,
    enc: Encryption,
    kind: SessionKind,
) -> Result<Connection, UpstreamError> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| {
        UpstreamError::io(
            format!("connection to server at {} failed", describe(host, addr)),
            e,
        )
    })?;
    configure_socket(&tcp, ci).map_err(|e| UpstreamError::io("could not set socket options", e))?;
    let (stream, binding) = negotiate_tls(tcp, ci, host, enc).await?;
    let mut wire = Framed::new(stream, READ_CHUNK);

    let mut params: Vec<(&str, &str)> = match kind {
        SessionKind::Replication => vec![
            ("user", &ci.user),
            ("database", "replication"),
            ("replication", "true"),
        ],
        SessionKind::Sql => vec![
            ("user", &ci.user),
            ("database", ci.dbname.as_deref().unwrap_or("postgres")),
        ],
    };
    if let Some(name) = ci.effective_application_name(app) {
        params.push(("application_name", name));
    }
    if let Some(o) = &ci.options {
        params.push(("options", o));
    }
    frontend::startup_message(params.iter().copied(), wire.out())
        .map_err(|e| UpstreamError::Protocol(format!("cannot encode startup message: {e}")))?;
    wire.flush().await.map_err(UpstreamError::send)?;

    auth::authenticate(&mut wire, ci, host, binding).await?;

    let mut conn = Connection {
        wire,
        host: host.clone(),
        addr,
        params: HashMap::new(),
        backend_key: None,
        state: State::Busy,
        query_timeout: ci.connect_timeout,
        query_error: None,
    };
    loop {
        match conn.next().await? {
            BackendMessage::BackendKeyData { pid, key } => conn.backend_key = Some((pid, key)),
            BackendMessage::ReadyForQuery => break,
            BackendMessage::Error(e) => return Err(UpstreamError::Server(e)),
            other => return Err(conn.unexpected(other, "startup")),
        }
    }
    conn.state = State::Idle;
    Ok(conn)
}

/// Sends SSLRequest when `enc` asks for TLS and runs the handshake on `S`.
async fn negotiate_tls(
    mut tcp: TcpStream,
    ci: &ConnInfo,
    host: &HostPort,
    enc: Encryption,
) -> Result<(Stream, Binding), UpstreamError> {
    if enc == Encryption::Plain {
        return Ok((Stream::Plain(tcp), Binding::NoTls));
    }
    let mut req = bytes::BytesMut::new();
    frontend::ssl_request(&mut req);
    tcp.write_all(&req)
        .await
        .map_err(|e| UpstreamError::io("could not send SSL negotiation packet", e))?;
    // Exactly one byte: anything the server sent after it would be unencrypted data
    // injected ahead of the handshake (CVE-2021-23222), so nothing more is read here.
    let answer = tcp
        .read_u8()
        .await
        .map_err(|e| UpstreamError::io("could not receive data from server", e))?;
    match answer {
        b'S' => {}
        b'N' if enc == Encryption::Required => return Err(UpstreamError::SslNotSupported),
        b'N' => return Ok((Stream::Plain(tcp), Binding::NoTls)),
        b'E' => {
            return Err(UpstreamError::Protocol(
                "server sent an error response during SSL exchange".into(),
            ))
        }
        other => {
            return Err(UpstreamError::Protocol(format!(
                "received invalid response to SSL negotiation: {}",
                other as char
            )))
        }
    }
    let setup = tls::setup(ci, &host.host, pgpass::home_dir().as_deref())?;
    let connector = tokio_rustls::TlsConnector::from(setup.config);
    let tls = connector
        .connect(setup.server_name, tcp)
        .await
        .map_err(|e| UpstreamError::Tls(e.to_string()))?;
    let hash = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|cert| tls::tls_server_end_point(cert));
    Ok((Stream::Tls(Box::new(tls.into())), Binding::Tls(hash)))
}

impl Connection {
    /// ParameterStatus values reported by the server (kept up to date while connected).
    pub fn params(&self) -> &HashMap<String, String> {
        &self.params
    }

    /// The conninfo host this connection went to.
    pub fn host(&self) -> &HostPort {
        &self.host
    }

    /// The socket address actually connected to.
    pub fn peer_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's `server_version` ParameterStatus, e.g. `15.18 (Debian 15.18-0+deb12u1)`.
    pub fn server_version(&self) -> Option<&str> {
        self.params.get("server_version").map(String::as_str)
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.wire.is_tls()
    }

    /// The walsender's process id and cancel key (BackendKeyData).
    pub fn backend_key(&self) -> Option<(i32, i32)> {
        self.backend_key
    }

    /// What cancels this backend's running statement from elsewhere (None when the server sent
    /// no BackendKeyData).
    pub fn cancel_token(&self) -> Option<CancelToken> {
        self.backend_key.map(|(pid, key)| CancelToken {
            addr: self.addr,
            pid,
            key,
        })
    }

    /// Whether the connection is idle and usable for queries (it may still need to read the
    /// ReadyForQuery left by a COPY that ended in an error, which the next query does).
    pub fn is_ready(&self) -> bool {
        matches!(self.state, State::Idle | State::Draining)
    }

    /// The next message that matters, folding in ParameterStatus and NoticeResponse. Cancel-safe
    /// (one await point, in [`Framed::recv`]). Marks the connection broken on failure.
    async fn next(&mut self) -> Result<BackendMessage, UpstreamError> {
        loop {
            match self.next_with_notices().await? {
                BackendMessage::Notice(n) => {
                    tracing::debug!(host = %self.host, notice = %n, "upstream notice");
                }
                m => return Ok(m),
            }
        }
    }

    /// Like [`Connection::next`], but NoticeResponse is returned too. Cancel-safe.
    async fn next_with_notices(&mut self) -> Result<BackendMessage, UpstreamError> {
        loop {
            let msg = match self
                .wire
                .recv()
                .await
                .map_err(UpstreamError::recv)
                .and_then(|raw| decode(raw).map_err(UpstreamError::from))
            {
                Ok(m) => m,
                Err(e) => {
                    self.state = State::Broken;
                    return Err(e);
                }
            };
            match msg {
                BackendMessage::ParameterStatus { name, value } => {
                    self.params.insert(name, value);
                }
                BackendMessage::Other(b'A') => {} // NotificationResponse: not ours to handle.
                m => return Ok(m),
            }
        }
    }

    fn unexpected(&mut self, msg: BackendMessage, during: &str) -> UpstreamError {
        self.state = State::Broken;
        UpstreamError::Protocol(format!(
            "unexpected message from server during {during}: {msg:?}"
        ))
    }

    /// A FATAL error ends the connection; any other error leaves it in `then`.
    fn server_error(&mut self, e: ServerError, then: State) -> UpstreamError {
        self.state = if e.is_fatal() { State::Broken } else { then };
        UpstreamError::Server(e)
    }

    /// Gets to `Idle`, reading the ReadyForQuery a failed COPY left behind.
    async fn ensure_idle(&mut self) -> Result<(), UpstreamError> {
        loop {
            match self.state {
                State::Idle => return Ok(()),
                State::Draining => {
                    // Resumable: until Z arrives the state stays Draining.
                    if self.next().await? == BackendMessage::ReadyForQuery {
                        self.state = State::Idle;
                    }
                }
                State::Copy { .. } => {
                    return Err(UpstreamError::Protocol("connection is in COPY mode".into()));
                }
                State::Query => {
                    return Err(UpstreamError::Protocol("a query is still running".into()));
                }
                State::Busy | State::Broken => return Err(UpstreamError::Broken),
            }
        }
    }

    async fn send_query(&mut self, sql: &str) -> Result<(), UpstreamError> {
        self.ensure_idle().await?;
        self.state = State::Busy;
        frontend::query(sql, self.wire.out()).map_err(|e| {
            self.state = State::Idle;
            UpstreamError::Protocol(format!("cannot encode query: {e}"))
        })?;
        self.flush().await
    }

    async fn flush(&mut self) -> Result<(), UpstreamError> {
        let r = self.wire.flush().await.map_err(UpstreamError::send);
        if r.is_err() {
            self.state = State::Broken;
        }
        r
    }

    /// Runs one simple-protocol query and returns its rows as text. An ERROR from the server
    /// comes back as [`UpstreamError::Server`] with the connection still usable.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Rows, UpstreamError> {
        match self.query_timeout {
            None => self.simple_query_unbounded(sql).await,
            Some(limit) => {
                match tokio::time::timeout(limit, self.simple_query_unbounded(sql)).await {
                    Ok(r) => r,
                    Err(_) => Err(self.query_timed_out(sql)),
                }
            }
        }
    }

    /// The error for a query that got no full answer within `query_timeout`; the connection is
    /// broken (half an answer may still arrive).
    fn query_timed_out(&mut self, sql: &str) -> UpstreamError {
        self.state = State::Broken;
        UpstreamError::QueryTimeout {
            query: sql
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string(),
            addr: describe(&self.host, self.addr),
        }
    }

    async fn simple_query_unbounded(&mut self, sql: &str) -> Result<Rows, UpstreamError> {
        self.send_query(sql).await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.next().await? {
                BackendMessage::DataRow(r) => rows.push(r),
                BackendMessage::RowDescription
                | BackendMessage::CommandComplete(_)
                | BackendMessage::EmptyQuery => {}
                BackendMessage::Error(e) if e.is_fatal() => {
                    return Err(self.server_error(e, State::Broken))
                }
                BackendMessage::Error(e) => error = Some(e),
                BackendMessage::ReadyForQuery => break,
                m @ (BackendMessage::CopyBoth
                | BackendMessage::CopyIn
                | BackendMessage::CopyOut) => {
                    return Err(
                        self.unexpected(m, "simple_query (use start_copy_both for COPY commands)")
                    );
                }
                m => return Err(self.unexpected(m, "simple_query")),
            }
        }
        self.state = State::Idle;
        error.map_or(Ok(rows), |e| Err(UpstreamError::Server(e)))
    }

    /// Sends one simple-protocol query whose results are read as they arrive, with
    /// [`Connection::recv_query_event`], until it ends: for a long-running statement that
    /// reports with NoticeResponse (no `connect_timeout` bound: the caller bounds it). To stop
    /// it early, [`CancelToken::cancel`] it and read on to its end (an ERROR 57014).
    pub async fn send_simple_query(&mut self, sql: &str) -> Result<(), UpstreamError> {
        self.send_query(sql).await?;
        self.query_error = None;
        self.state = State::Query;
        Ok(())
    }

    /// The next event of the query sent by [`Connection::send_simple_query`]. Cancel-safe (one
    /// await point; the state changes only after it).
    ///
    /// An ERROR from the server is returned as [`UpstreamError::Server`] at the query's
    /// ReadyForQuery, with the connection idle and usable; a FATAL one breaks it.
    pub async fn recv_query_event(&mut self) -> Result<QueryEvent, UpstreamError> {
        match self.state {
            State::Query => {}
            State::Busy | State::Broken => return Err(UpstreamError::Broken),
            State::Idle | State::Draining | State::Copy { .. } => {
                return Err(UpstreamError::Protocol("no query is running".into()))
            }
        }
        loop {
            match self.next_with_notices().await? {
                BackendMessage::Notice(n) => return Ok(QueryEvent::Notice(n)),
                BackendMessage::DataRow(r) => return Ok(QueryEvent::Row(r)),
                BackendMessage::RowDescription
                | BackendMessage::CommandComplete(_)
                | BackendMessage::EmptyQuery => {}
                BackendMessage::Error(e) if e.is_fatal() => {
                    return Err(self.server_error(e, State::Broken))
                }
                BackendMessage::Error(e) => self.query_error = Some(e),
                BackendMessage::ReadyForQuery => {
                    self.state = State::Idle;
                    return match self.query_error.take() {
                        None => Ok(QueryEvent::Done),
                        Some(e) => Err(UpstreamError::Server(e)),
                    };
                }
                m @ (BackendMessage::CopyBoth
                | BackendMessage::CopyIn
                | BackendMessage::CopyOut) => {
                    return Err(self.unexpected(m, "a query read as it arrives"));
                }
                m => return Err(self.unexpected(m, "a query read as it arrives")),
            }
        }
    }

    /// Sends a command expected to enter CopyBoth mode (`START_REPLICATION ...`).
    /// Returns [`StartOutcome::CopyBoth`] once CopyBothResponse arrives, or
    /// [`StartOutcome::NoCopy`] with the rows when the command completed without COPY. An
    /// ErrorResponse before CopyBothResponse is returned as [`UpstreamError::Server`] after
    /// reading up to ReadyForQuery (the connection stays usable). Errors the server reports
    /// after CopyBothResponse (WAL already removed, start point ahead of flush) come from
    /// [`Connection::recv_copy`].
    pub async fn start_copy_both(&mut self, sql: &str) -> Result<StartOutcome, UpstreamError> {
        match self.query_timeout {
            None => self.start_copy_both_unbounded(sql).await,
            Some(limit) => {
                match tokio::time::timeout(limit, self.start_copy_both_unbounded(sql)).await {
                    Ok(r) => r,
                    Err(_) => Err(self.query_timed_out(sql)),
                }
            }
        }
    }

    async fn start_copy_both_unbounded(
        &mut self,
        sql: &str,
    ) -> Result<StartOutcome, UpstreamError> {
        self.send_query(sql).await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.next().await? {
                BackendMessage::CopyBoth if error.is_none() => {
                    self.state = State::Copy {
                        server_done: false,
                        client_done: false,
                    };
                    return Ok(StartOutcome::CopyBoth);
                }
                BackendMessage::DataRow(r) => rows.push(r),
                BackendMessage::RowDescription
                | BackendMessage::CommandComplete(_)
                | BackendMessage::EmptyQuery => {}
                BackendMessage::Error(e) if e.is_fatal() => {
                    return Err(self.server_error(e, State::Broken))
                }
                BackendMessage::Error(e) => error = Some(e),
                BackendMessage::ReadyForQuery => break,
                m => return Err(self.unexpected(m, "start_copy_both")),
            }
        }
        self.state = State::Idle;
        match error {
            Some(e) => Err(UpstreamError::Server(e)),
            None => Ok(StartOutcome::NoCopy { rows }),
        }
    }

    /// The next event of the CopyBoth stream. Cancel-safe.
    ///
    /// An ERROR ends COPY mode: it is returned as [`UpstreamError::Server`] and the connection
    /// becomes usable for queries again (the pending ReadyForQuery is read by the next query).
    pub async fn recv_copy(&mut self) -> Result<CopyEvent, UpstreamError> {
        match self.state {
            State::Copy {
                server_done: false, ..
            } => {}
            State::Copy {
                server_done: true, ..
            } => {
                return Err(UpstreamError::Protocol(
                    "server already ended COPY; call finish_copy".into(),
                ));
            }
            State::Busy | State::Broken => return Err(UpstreamError::Broken),
            State::Idle | State::Draining | State::Query => {
                return Err(UpstreamError::Protocol("not in COPY mode".into()))
            }
        }
        match self.next().await? {
            BackendMessage::CopyData(b) => Ok(CopyEvent::Data(b)),
            BackendMessage::CopyDone => {
                if let State::Copy { server_done, .. } = &mut self.state {
                    *server_done = true;
                }
                Ok(CopyEvent::Done)
            }
            BackendMessage::CommandComplete(tag) => Ok(CopyEvent::CommandComplete(tag)),
            BackendMessage::Error(e) => Err(self.server_error(e, State::Draining)),
            m => Err(self.unexpected(m, "COPY")),
        }
    }

    fn require_copy_open(&self) -> Result<(), UpstreamError> {
        match self.state {
            State::Copy {
                client_done: false, ..
            } => Ok(()),
            State::Copy {
                client_done: true, ..
            } => Err(UpstreamError::Protocol("CopyDone already sent".into())),
            State::Busy | State::Broken => Err(UpstreamError::Broken),
            State::Idle | State::Draining | State::Query => {
                Err(UpstreamError::Protocol("not in COPY mode".into()))
            }
        }
    }

    /// Sends one CopyData message (e.g. a standby status update). If cancelled, the message
    /// stays queued whole and goes out with the next send.
    pub async fn send_copy_data(&mut self, payload: &[u8]) -> Result<(), UpstreamError> {
        self.require_copy_open()?;
        frontend::CopyData::new(payload)
            .map_err(|e| UpstreamError::Protocol(format!("cannot encode CopyData: {e}")))?
            .write(self.wire.out());
        self.flush().await
    }

    /// Sends CopyDone: the client will send no more CopyData.
    pub async fn send_copy_done(&mut self) -> Result<(), UpstreamError> {
        self.require_copy_open()?;
        frontend::copy_done(self.wire.out());
        if let State::Copy { client_done, .. } = &mut self.state {
            *client_done = true;
        }
        self.flush().await
    }

    /// Ends COPY mode and returns the command's result rows: for an ended timeline the
    /// `next_tli, next_tli_startpos` row (see [`parse_next_timeline`]), none when the client
    /// stopped streaming. Sends CopyDone if the client has not yet, discards CopyData the server
    /// sends before its own CopyDone, and reads up to ReadyForQuery.
    pub async fn finish_copy(&mut self) -> Result<Rows, UpstreamError> {
        match self.state {
            State::Copy {
                client_done: false, ..
            } => self.send_copy_done().await?,
            State::Copy {
                client_done: true, ..
            } => {}
            State::Busy | State::Broken => return Err(UpstreamError::Broken),
            State::Idle | State::Draining | State::Query => {
                return Err(UpstreamError::Protocol("not in COPY mode".into()))
            }
        }
        self.state = State::Busy;
        let mut rows = Vec::new();
        let mut error = None;
        let mut discarded = 0usize;
        loop {
            match self.next().await? {
                BackendMessage::CopyData(b) => discarded += b.len(),
                BackendMessage::CopyDone
                | BackendMessage::RowDescription
                | BackendMessage::CommandComplete(_)
                | BackendMessage::EmptyQuery => {}
                BackendMessage::DataRow(r) => rows.push(r),
                BackendMessage::Error(e) if e.is_fatal() => {
                    return Err(self.server_error(e, State::Broken))
                }
                BackendMessage::Error(e) => error = Some(e),
                BackendMessage::ReadyForQuery => break,
                m => return Err(self.unexpected(m, "finish_copy")),
            }
        }
        if discarded > 0 {
            tracing::debug!(
                bytes = discarded,
                "discarded CopyData received after CopyDone was sent"
            );
        }
        self.state = State::Idle;
        error.map_or(Ok(rows), |e| Err(UpstreamError::Server(e)))
    }

    /// Sends Terminate (if the protocol state allows) and closes the connection. (A backend
    /// still running a statement sees the Terminate only when it next reads; cancel the
    /// statement first, see [`Connection::cancel_token`].)
    pub async fn terminate(mut self) {
        if matches!(
            self.state,
            State::Idle | State::Draining | State::Copy { .. } | State::Query
        ) {
            frontend::terminate(self.wire.out());
        }
        self.wire.shutdown().await;
    }
}

#[cfg(test)]
mod tests;
