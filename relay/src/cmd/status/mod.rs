//! `walrelay status`: reads `GET /status` from a running relay and prints it as a table that
//! fits the terminal (or as the JSON document itself with `--json`), once or every few seconds.
//!
//! This file owns the command: its arguments, the fetch (with one deadline for the whole
//! exchange), the checks that the answer is a relay's `/status`, the watch loop and the exit
//! codes. The document's shape is in [`view`], the text in [`render`].
//!
//! The HTTP client is a few dozen lines over `std::net::TcpStream` rather than a client crate:
//! one GET to a loopback-ish address, with a deadline, is all this needs. It reads what
//! axum/hyper send (a `Content-Length` body or a chunked one) and also an EOF-delimited body.
//!
//! Exit codes: 0 printed, 2 relay not reachable (connect failed, no answer in time), 1 anything
//! else (an HTTP error, something that is not a relay's `/status`).

pub mod render;
pub mod view;

use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, IsTerminal, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use clap::Args;
use comfy_table::Table;

use render::{human_bytes, pretty_json, render, DEFAULT_WIDTH};
use view::StatusDoc;

/// How long one fetch may take in all: connect, send, read the whole answer.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Caps on what the client accepts, so a wrong address can't make it buffer without end.
const MAX_HEADER_LINE: usize = 16 * 1024;
const MAX_HEADERS: usize = 100;
const MAX_BODY: usize = 16 * 1024 * 1024;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The relay's HTTP endpoint (its `run --http`).
    #[arg(
        long,
        env = "WALRELAY_HTTP",
        default_value = "127.0.0.1:9433",
        value_name = "ADDR"
    )]
    pub http: String,
    /// Print the /status JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Redraw every SECONDS [default: 2] until interrupted.
    #[arg(
        long,
        value_name = "SECONDS",
        num_args = 0..=1,
        default_missing_value = "2",
        value_parser = parse_interval
    )]
    pub watch: Option<Duration>,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("\"{s}\" is not a number of seconds"))?;
    if !(0.1..=86_400.0).contains(&secs) {
        return Err("the interval must be between 0.1 and 86400 seconds".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// Why a fetch failed. [`StatusError::exit_code`] maps it to the command's exit status.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("could not connect to relay at {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("no answer from relay at {addr}: {reason}")]
    NoAnswer { addr: String, reason: String },
    #[error("unexpected answer from relay at {addr}: {reason}")]
    BadResponse { addr: String, reason: String },
}

impl StatusError {
    /// 2 when the relay could not be reached, 1 when something answered but not as a relay.
    pub fn exit_code(&self) -> u8 {
        match self {
            StatusError::Connect { .. } | StatusError::NoAnswer { .. } => 2,
            StatusError::BadResponse { .. } => 1,
        }
    }
}

/// An I/O error as a person reads it: "Connection refused", not "... (os error 111)".
fn io_reason(e: &io::Error, timeout: Duration) -> String {
    if matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    ) {
        return format!("timed out after {}", humantime::format_duration(timeout));
    }
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// A complete HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Reading a response failed: the connection broke, or the bytes are not HTTP/1.x.
#[derive(Debug)]
enum ReadError {
    Io(io::Error),
    Malformed(String),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

fn malformed<T>(why: impl Into<String>) -> Result<T, ReadError> {
    Err(ReadError::Malformed(why.into()))
}

/// One CRLF- (or LF-) terminated line, without the terminator; at most `MAX_HEADER_LINE`.
fn read_line<R: BufRead>(r: &mut R) -> Result<String, ReadError> {
    let mut buf = Vec::new();
    r.by_ref()
        .take(MAX_HEADER_LINE as u64 + 1)
        .read_until(b'\n', &mut buf)?;
    if buf.last() != Some(&b'\n') {
        if buf.len() > MAX_HEADER_LINE {
            return malformed("header line too long");
        }
        return malformed("connection closed in the middle of the response");
    }
    buf.pop();
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    match String::from_utf8(buf) {
        Ok(s) => Ok(s),
        Err(_) => malformed("header line is not UTF-8"),
    }
}

/// Reads exactly `n` body bytes.
fn read_exact_body<R: Read>(r: &mut R, n: u64, body: &mut Vec<u8>) -> Result<(), ReadError> {
    if n > (MAX_BODY - body.len()) as u64 {
        return malformed(format!("body larger than {}", human_bytes(MAX_BODY as u64)));
    }
    let got = r.by_ref().take(n).read_to_end(body)?;
    if (got as u64) < n {
        return malformed(format!("connection closed after {got} of {n} body bytes"));
    }
    Ok(())
}

/// Parses one HTTP/1.x response from `r`: status line, headers, then a body delimited by
/// chunked transfer coding, `Content-Length`, or the end of the connection.
fn read_response<R: BufRead>(r: &mut R) -> Result<HttpResponse, ReadError> {
    loop {
        let line = read_line(r)?;
        let mut it = line.splitn(3, ' ');
        let (version, code) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
        if !version.starts_with("HTTP/1.") {
            return malformed(format!(
                "not an HTTP/1.x response: {:?}",
                truncate(&line, 60)
            ));
        }
        let status: u16 = match code.parse() {
            Ok(c) if (100..1000).contains(&c) => c,
            _ => return malformed(format!("bad status line {:?}", truncate(&line, 60))),
        };

        let mut chunked = false;
        let mut length: Option<u64> = None;
        let mut n_headers = 0;
        loop {
            let h = read_line(r)?;
            if h.is_empty() {
                break;
            }
            n_headers += 1;
            if n_headers > MAX_HEADERS {
                return malformed("too many header lines");
            }
            let Some((name, value)) = h.split_once(':') else {
                return malformed(format!("bad header line {:?}", truncate(&h, 60)));
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("transfer-encoding") {
                // The last coding decides how the body is framed (RFC 9112 §6.3).
                chunked = value
                    .rsplit(',')
                    .next()
                    .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
            } else if name.eq_ignore_ascii_case("content-length") {
                match value.parse::<u64>() {
                    Ok(n) if length.is_none_or(|l| l == n) => length = Some(n),
                    _ => return malformed(format!("bad Content-Length {value:?}")),
                }
            }
        }
        // Interim answers (100 Continue and friends) come before the real one.
        if (100..200).contains(&status) {
            continue;
        }

        let mut body = Vec::new();
        if status == 204 || status == 304 {
            // No body by definition.
        } else if chunked {
            loop {
                let size_line = read_line(r)?;
                let size_hex = size_line.split(';').next().unwrap_or("").trim();
                let size = match u64::from_str_radix(size_hex, 16) {
                    Ok(n) => n,
                    Err(_) => return malformed(format!("bad chunk size {size_hex:?}")),
                };
                if size == 0 {
                    // Trailer fields, up to the empty line.
                    while !read_line(r)?.is_empty() {}
                    break;
                }
                read_exact_body(r, size, &mut body)?;
                if !read_line(r)?.is_empty() {
                    return malformed("chunk not followed by CRLF");
                }
            }
        } else if let Some(n) = length {
            read_exact_body(r, n, &mut body)?;
        } else {
            r.by_ref()
                .take(MAX_BODY as u64 + 1)
                .read_to_end(&mut body)?;
            if body.len() > MAX_BODY {
                return malformed(format!("body larger than {}", human_bytes(MAX_BODY as u64)));
            }
        }
        return Ok(HttpResponse { status, body });
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n).collect();
        t.push('…');
        t
    }
}

/// A socket read that gives up at a fixed instant, however the time is split between reads.
struct DeadlineReader<'a> {
    stream: &'a TcpStream,
    until: Instant,
}

impl Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self
            .until
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(io::ErrorKind::TimedOut)?;
        self.stream.set_read_timeout(Some(left))?;
        let mut s = self.stream;
        s.read(buf)
    }
}

/// Normalises what an operator may type for the endpoint: `http://host:port/` or `host:port`.
fn host_port(addr: &str) -> &str {
    let a = addr.trim();
    let a = a.strip_prefix("http://").unwrap_or(a);
    a.trim_end_matches('/')
}

/// `GET path` from `addr` (host:port), the whole exchange bounded by `timeout`.
pub fn http_get(addr: &str, path: &str, timeout: Duration) -> Result<HttpResponse, StatusError> {
    let hp = host_port(addr);
    let until = Instant::now() + timeout;
    let connect_err = |reason: String| StatusError::Connect {
        addr: hp.to_string(),
        reason,
    };
    let targets: Vec<_> = hp
        .to_socket_addrs()
        .map_err(|e| connect_err(io_reason(&e, timeout)))?
        .collect();
    let mut last = None;
    let mut stream = None;
    for t in &targets {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match TcpStream::connect_timeout(t, left) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let stream = match (stream, last) {
        (Some(s), _) => s,
        (None, Some(e)) => return Err(connect_err(io_reason(&e, timeout))),
        (None, None) => return Err(connect_err("address resolved to nothing".into())),
    };

    let no_answer = |e: &io::Error| StatusError::NoAnswer {
        addr: hp.to_string(),
        reason: io_reason(e, timeout),
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {hp}\r\nUser-Agent: walrelay/{}\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    let left = until.saturating_duration_since(Instant::now());
    stream
        .set_write_timeout(Some(left.max(Duration::from_millis(1))))
        .map_err(|e| no_answer(&e))?;
    (&stream)
        .write_all(request.as_bytes())
        .map_err(|e| no_answer(&e))?;

    let mut reader = BufReader::new(DeadlineReader {
        stream: &stream,
        until,
    });
    read_response(&mut reader).map_err(|e| match e {
        ReadError::Io(e) => no_answer(&e),
        ReadError::Malformed(reason) => StatusError::BadResponse {
            addr: hp.to_string(),
            reason,
        },
    })
}

/// Fetches `/status` and checks it is JSON; returns the text and the parsed document.
pub fn fetch_status(addr: &str) -> Result<(String, serde_json::Value), StatusError> {
    let hp = host_port(addr);
    let bad = |reason: String| StatusError::BadResponse {
        addr: hp.to_string(),
        reason,
    };
    let resp = http_get(hp, "/status", FETCH_TIMEOUT)?;
    if resp.status != 200 {
        let text = String::from_utf8_lossy(&resp.body);
        let first = text.lines().next().unwrap_or("").trim();
        return Err(bad(format!(
            "HTTP {} from /status{}",
            resp.status,
            if first.is_empty() {
                String::new()
            } else {
                format!(": {}", truncate(first, 120))
            }
        )));
    }
    let text = String::from_utf8(resp.body).map_err(|_| bad("/status is not UTF-8".into()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("/status is not JSON: {e}")))?;
    Ok((text, value))
}

// ---------------------------------------------------------------------------------------------
// The command

/// The terminal's width when stdout is one, else [`DEFAULT_WIDTH`].
fn terminal_width() -> u16 {
    // An unconfigured comfy-table reports the width of the terminal on stdout, or None.
    Table::new().width().unwrap_or(DEFAULT_WIDTH)
}

/// One screenful: the table (or JSON) for the current `/status`.
fn frame(args: &StatusArgs) -> Result<String, StatusError> {
    let (text, value) = fetch_status(&args.http)?;
    if args.json {
        let mut s = pretty_json(&text);
        s.push('\n');
        return Ok(s);
    }
    let doc: StatusDoc = serde_json::from_value(value).map_err(|e| StatusError::BadResponse {
        addr: host_port(&args.http).to_string(),
        reason: format!("not a walrelay /status document: {e}"),
    })?;
    Ok(render(&doc, terminal_width()))
}

/// `walrelay status`.
pub fn run(args: StatusArgs) -> ExitCode {
    let Some(interval) = args.watch else {
        return match frame(&args) {
            Ok(s) => {
                // A closed pipe (`| head`) is not worth an error message.
                let _ = io::stdout().lock().write_all(s.as_bytes());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("walrelay status: {e}");
                ExitCode::from(e.exit_code())
            }
        };
    };
    // Watching: keep going through errors (a relay restarting is exactly what one watches
    // for), showing them in place of the table, until Ctrl-C ends the process.
    let tty = io::stdout().is_terminal();
    loop {
        let started = Instant::now();
        let mut screen = String::new();
        if tty {
            // Cursor home, clear screen.
            screen.push_str("\x1b[H\x1b[2J");
        }
        let _ = writeln!(
            screen,
            "every {}: walrelay status {}    {}\n",
            humantime::format_duration(interval),
            host_port(&args.http),
            humantime::format_rfc3339_seconds(SystemTime::now())
        );
        match frame(&args) {
            Ok(s) => screen.push_str(&s),
            Err(e) => {
                let _ = writeln!(screen, "walrelay status: {e}");
            }
        }
        if !tty {
            screen.push('\n');
        }
        let mut out = io::stdout().lock();
        if out
            .write_all(screen.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            return ExitCode::SUCCESS;
        }
        drop(out);
        std::thread::sleep(interval.saturating_sub(started.elapsed()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<HttpResponse, ReadError> {
        read_response(&mut BufReader::new(raw))
    }

    #[test]
    fn http_content_length_and_eof_bodies() {
        let r = parse(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}trailing").unwrap();
        assert_eq!(
            r,
            HttpResponse {
                status: 200,
                body: b"{}".to_vec()
            }
        );
        let r = parse(b"HTTP/1.0 200 OK\nServer: x\n\nhello").unwrap();
        assert_eq!(r.body, b"hello");
        let r = parse(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            r,
            HttpResponse {
                status: 404,
                body: vec![]
            }
        );
    }

    #[test]
    fn http_chunked_bodies() {
        let r = parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\nB\r\n, world!!!!\r\n0\r\nX-Trailer: y\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, b"hello, world!!!!");
        // Chunked wins over a Content-Length.
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n").unwrap();
        assert_eq!(r.body, b"ok");
    }

    #[test]
    fn http_malformed_answers_are_errors() {
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
            assert!(
                matches!(parse(raw), Err(ReadError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        let mut long = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_HEADER_LINE + 10));
        assert!(matches!(parse(&long), Err(ReadError::Malformed(_))));
    }

    #[test]
    fn connect_refused_is_exit_2_with_a_plain_message() {
        // A port that was free a moment ago: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let e = fetch_status(&addr).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert_eq!(
            e.to_string(),
            format!("could not connect to relay at {addr}: Connection refused")
        );
        let e = fetch_status(&format!("http://{addr}/")).unwrap_err();
        assert!(e.to_string().contains(&format!("at {addr}:")), "{e}");
    }

    #[test]
    fn silent_server_times_out_as_no_answer() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let e = http_get(&addr, "/status", Duration::from_millis(200)).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert_eq!(
            e.to_string(),
            format!("no answer from relay at {addr}: timed out after 200ms")
        );
        drop(l);
    }

    #[test]
    fn non_200_and_non_json_are_exit_1() {
        use std::io::Write as _;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            for answer in [
                "HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\n\r\nno route\r\n",
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            ] {
                let (mut s, _) = l.accept().unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).unwrap();
                s.write_all(answer.as_bytes()).unwrap();
            }
        });
        let e = fetch_status(&addr).unwrap_err();
        assert_eq!(e.exit_code(), 1);
        assert_eq!(
            e.to_string(),
            format!("unexpected answer from relay at {addr}: HTTP 404 from /status: no route")
        );
        let e = fetch_status(&addr).unwrap_err();
        assert_eq!(e.exit_code(), 1);
        assert!(e.to_string().contains("/status is not JSON"), "{e}");
        server.join().unwrap();
    }

    #[test]
    fn watch_interval_parsing() {
        assert_eq!(parse_interval("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_interval("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_interval("0").is_err());
        assert!(parse_interval("x").is_err());
        assert!(parse_interval("inf").is_err());
    }
}
