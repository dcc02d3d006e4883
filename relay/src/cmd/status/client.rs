//! The one HTTP client of the crate: a single `GET` over a fresh HTTP/1.1 connection, with one
//! deadline for the whole exchange, for `walrelay status` and for the tests that read the
//! relay's `/healthz`, `/readyz`, `/status` and `/metrics`.
//!
//! It is hyper's connection-level client (`hyper::client::conn::http1`; hyper is in the tree
//! already as axum's server), so framing is hyper's: `Content-Length`, chunked or
//! close-delimited bodies, interim answers (`100 Continue`, `103`) skipped, malformed heads
//! refused. No pool, no redirects, no TLS: one request to a loopback-ish address is all either
//! caller needs. [`get`] is async; [`get_blocking`] serves synchronous callers (the command's
//! tests, the acceptance-test harness).
//!
//! Invariants:
//! - The deadline bounds everything, name lookup and connect included; the connection is
//!   driven inside the returned future (no spawned task), so when [`get`] returns nothing of
//!   the exchange is left running.
//! - Memory is bounded whatever answers: hyper caps the head (100 header fields, a few hundred
//!   KiB of buffer), [`MAX_BODY`] caps the body.
//! - Errors say what a caller can act on ([`ClientError`]): nothing reachable, no answer in
//!   time, an answer that is not well-formed HTTP (or cut short), a request that can't be
//!   written. Nothing from the network is unwrapped or indexed: hyper parses, we map errors.

use std::error::Error as _;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use bytesize::ByteSize;
use http_body_util::{BodyExt as _, Empty, LengthLimitError, Limited};
use hyper::header::{ACCEPT, CONNECTION, HOST, USER_AGENT};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

/// Largest body accepted, so a wrong address can't make the client buffer without end.
pub const MAX_BODY: usize = 16 * 1024 * 1024;

/// A complete answer: its status code and whole body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Why a GET failed. Each carries a reason a person reads ("Connection refused", "timed out
/// after 5s"), without the address: the caller knows which address it asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The address did not resolve, or no connection could be made before the deadline (or,
    /// for [`get_blocking`], no runtime could be started to make one).
    #[error("could not connect: {0}")]
    Connect(String),
    /// Connected, but the request could not be sent or the whole answer did not arrive in
    /// time (a silent server, a reset connection).
    #[error("no answer: {0}")]
    NoAnswer(String),
    /// Something answered, but not with a well-formed HTTP/1.x response within the limits.
    #[error("bad response: {0}")]
    BadResponse(String),
    /// The path or host can't go into a request (control characters and the like).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

/// `GET path` from `addr` (`host:port`; a name is resolved and each address tried in turn),
/// the whole exchange bounded by `timeout`. Any status code is a [`Response`]; telling a 404
/// from a 200 is the caller's business. Sends `Host: addr`, `Accept: application/json` and
/// `Connection: close` (the server closes after answering, which ends the connection).
pub async fn get(addr: &str, path: &str, timeout: Duration) -> Result<Response, ClientError> {
    let deadline = Instant::now() + timeout;
    let stream = match timeout_at(deadline, connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(ClientError::Connect(io_reason(&e, timeout))),
        Err(_) => return Err(ClientError::Connect(timed_out(timeout))),
    };
    // Built after connecting, so an address that can't be a Host header has already failed
    // as an address.
    let request = Request::get(path)
        .header(HOST, addr)
        .header(USER_AGENT, concat!("walrelay/", env!("CARGO_PKG_VERSION")))
        .header(ACCEPT, "application/json")
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| ClientError::InvalidRequest(e.to_string()))?;
    match timeout_at(deadline, exchange(stream, request, timeout)).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::NoAnswer(timed_out(timeout))),
    }
}

/// [`get`] for synchronous callers, on a runtime of its own. Not from inside a Tokio runtime
/// (Tokio refuses to block a runtime's thread): there, await [`get`].
pub fn get_blocking(addr: &str, path: &str, timeout: Duration) -> Result<Response, ClientError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClientError::Connect(format!("no I/O runtime: {}", io_reason(&e, timeout))))?;
    let r = rt.block_on(get(addr, path, timeout));
    // A name lookup still running on the blocking pool after the deadline is not waited for.
    rt.shutdown_background();
    r
}

/// The first address of `addr` that accepts a connection; else the last error.
async fn connect(addr: &str) -> io::Result<TcpStream> {
    let mut last = None;
    for target in tokio::net::lookup_host(addr).await? {
        match TcpStream::connect(target).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("address resolved to nothing")))
}

/// Sends `request` on `stream` and reads the whole answer.
async fn exchange(
    stream: TcpStream,
    request: Request<Empty<Bytes>>,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        // `Host:`, `User-Agent:`, … as the hand-written client this replaced sent them:
        // servers don't mind either way, but captures and server logs stay the same.
        .title_case_headers(true)
        .handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await
        .map_err(|e| hyper_error(&e, timeout))?;
    let response = async move {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| hyper_error(&e, timeout))?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| body_error(e.as_ref(), timeout))?
            .to_bytes();
        Ok(Response {
            status,
            body: Vec::from(body),
        })
    };
    // The connection does the I/O and must be polled while the response is awaited. It is
    // polled here, not spawned, so that dropping this future (the deadline) ends it. Its own
    // error, if any, reaches the response future too, which is the one reported.
    let mut response = std::pin::pin!(response);
    let mut conn = std::pin::pin!(conn);
    let mut conn_done = false;
    loop {
        tokio::select! {
            r = &mut response => return r,
            _ = &mut conn, if !conn_done => conn_done = true,
        }
    }
}

/// A hyper error as one of ours: broken I/O is no answer; an answer cut short (the peer
/// closed before the head or the body was complete) or not HTTP is a bad answer.
fn hyper_error(e: &hyper::Error, timeout: Duration) -> ClientError {
    let cut_short =
        || ClientError::BadResponse("connection closed in the middle of the response".into());
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<io::Error>() {
            // hyper's body decoder reports framing faults as I/O errors of these kinds.
            return match io.kind() {
                io::ErrorKind::UnexpectedEof => cut_short(),
                io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput => {
                    ClientError::BadResponse(format!("not a well-formed HTTP/1.x response: {io}"))
                }
                _ => ClientError::NoAnswer(io_reason(io, timeout)),
            };
        }
        source = s.source();
    }
    if e.is_incomplete_message() {
        return cut_short();
    }
    ClientError::BadResponse(format!("not a well-formed HTTP/1.x response: {e}"))
}

/// A failure while collecting the body: over [`MAX_BODY`], or hyper's.
fn body_error(
    e: &(dyn std::error::Error + Send + Sync + 'static),
    timeout: Duration,
) -> ClientError {
    if e.is::<LengthLimitError>() {
        return ClientError::BadResponse(format!(
            "body larger than {}",
            ByteSize::b(MAX_BODY as u64).display().iec()
        ));
    }
    match e.downcast_ref::<hyper::Error>() {
        Some(h) => hyper_error(h, timeout),
        None => ClientError::BadResponse(e.to_string()),
    }
}

fn timed_out(timeout: Duration) -> String {
    format!("timed out after {}", humantime::format_duration(timeout))
}

/// An I/O error as a person reads it: "Connection refused", not "... (os error 111)".
fn io_reason(e: &io::Error, timeout: Duration) -> String {
    if matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    ) {
        return timed_out(timeout);
    }
    let s = e.to_string();
    match s.split_once(" (os error ") {
        Some((reason, _)) => reason.to_string(),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};
    use std::net::TcpListener;
    use std::thread::JoinHandle;

    use super::*;

    const T: Duration = Duration::from_secs(5);

    /// A server for one connection: reads the request head, writes `answer`, closes. Returns
    /// its address and, on join, the request it read.
    fn serve(answer: Vec<u8>) -> (String, JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            // The whole head, so closing does not reset a connection with unread bytes.
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            // The client may stop reading early (a body over the limit).
            let _ = s.write_all(&answer);
            String::from_utf8_lossy(&request).into_owned()
        });
        (addr, server)
    }

    async fn answer(raw: &[u8]) -> Result<Response, ClientError> {
        let (addr, server) = serve(raw.to_vec());
        let r = get(&addr, "/status", T).await;
        server.join().unwrap();
        r
    }

    #[tokio::test]
    async fn sends_one_plain_get() {
        let (addr, server) = serve(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec());
        let r = get(&addr, "/status", T).await.unwrap();
        assert_eq!(
            r,
            Response {
                status: 200,
                body: b"ok".to_vec()
            }
        );
        let request = server.join().unwrap();
        assert!(request.starts_with("GET /status HTTP/1.1\r\n"), "{request}");
        for h in [
            format!("Host: {addr}\r\n"),
            format!("User-Agent: walrelay/{}\r\n", env!("CARGO_PKG_VERSION")),
            "Accept: application/json\r\n".into(),
            "Connection: close\r\n".into(),
        ] {
            assert!(request.contains(&h), "{h:?} missing from {request:?}");
        }
    }

    #[tokio::test]
    async fn content_length_and_eof_bodies() {
        let r = answer(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}trailing").await;
        assert_eq!(r.unwrap().body, b"{}");
        // Close-delimited, and bare LF line ends.
        let r = answer(b"HTTP/1.0 200 OK\nServer: x\n\nhello").await;
        assert_eq!(r.unwrap().body, b"hello");
        let r = answer(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        )
        .await;
        assert_eq!(
            r,
            Ok(Response {
                status: 404,
                body: vec![]
            })
        );
    }

    #[tokio::test]
    async fn chunked_bodies() {
        let r = answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\nB\r\n, world!!!!\r\n0\r\nX-Trailer: y\r\n\r\n").await;
        assert_eq!(r.unwrap().body, b"hello, world!!!!");
        // Chunked wins over a Content-Length.
        let r = answer(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n").await;
        assert_eq!(r.unwrap().body, b"ok");
    }

    #[tokio::test]
    async fn malformed_answers_are_bad_responses() {
        let bad: &[&[u8]] = &[
            b"",
            b"SSH-2.0-OpenSSH_9.6\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nbroken header\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokX\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n",
        ];
        for raw in bad {
            let r = answer(raw).await;
            assert!(
                matches!(r, Err(ClientError::BadResponse(_))),
                "{:?}: {r:?}",
                String::from_utf8_lossy(raw)
            );
        }
        assert_eq!(
            answer(b"").await,
            Err(ClientError::BadResponse(
                "connection closed in the middle of the response".into()
            ))
        );
    }

    #[tokio::test]
    async fn oversized_heads_and_bodies_are_refused() {
        let mut head = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        head.extend(std::iter::repeat_n(b'a', 1 << 20));
        head.extend_from_slice(b"\r\n\r\n");
        let r = answer(&head).await;
        assert!(matches!(r, Err(ClientError::BadResponse(_))), "{r:?}");

        let mut big = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        big.extend(std::iter::repeat_n(b'x', MAX_BODY + 1));
        assert_eq!(
            answer(&big).await,
            Err(ClientError::BadResponse("body larger than 16.0 MiB".into()))
        );
    }

    #[tokio::test]
    async fn refused_and_silent() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = get(&format!("127.0.0.1:{port}"), "/", T).await.unwrap_err();
        assert_eq!(e, ClientError::Connect("Connection refused".into()));
        assert_eq!(e.to_string(), "could not connect: Connection refused");

        // Listening but never accepting: the connect succeeds, no answer comes.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let e = get(&addr, "/", Duration::from_millis(200))
            .await
            .unwrap_err();
        assert_eq!(e, ClientError::NoAnswer("timed out after 200ms".into()));
        drop(l);

        let e = get("127.0.0.1", "/", T).await.unwrap_err();
        assert!(matches!(e, ClientError::Connect(_)), "{e:?}");
    }

    #[test]
    fn blocking_get() {
        let (addr, server) = serve(
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nnot \r\n5\r\nready\r\n0\r\n\r\n"
                .to_vec(),
        );
        let r = get_blocking(&addr, "/readyz", T).unwrap();
        assert_eq!((r.status, r.body), (503, b"not ready".to_vec()));
        assert!(server
            .join()
            .unwrap()
            .starts_with("GET /readyz HTTP/1.1\r\n"));
    }
}
