//! A minimal PostgreSQL v3 frontend over `std::net::TcpStream` for the tests that must speak
//! the protocol directly: a replication connection's StartupMessage and simple queries with
//! their ErrorResponse fields decoded, and raw bytes for the garbage tests.
//!
//! Everything read from the socket is parsed with checked lengths; a malformed reply is a
//! [`WireError::Protocol`], never a panic.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

/// Upper bound on a message body we accept from the server.
const MAX_MESSAGE: usize = 64 << 20;

/// An ErrorResponse (or NoticeResponse) from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// (field type byte, value), e.g. (b'C', "58P01").
    pub fields: Vec<(u8, String)>,
}

impl ServerError {
    fn field(&self, t: u8) -> &str {
        self.fields
            .iter()
            .find(|(k, _)| *k == t)
            .map_or("", |(_, v)| v)
    }

    /// `S`: ERROR, FATAL, ...
    pub fn severity(&self) -> &str {
        self.field(b'S')
    }

    /// `C`: the SQLSTATE.
    pub fn code(&self) -> &str {
        self.field(b'C')
    }

    /// `M`: the primary message.
    pub fn message(&self) -> &str {
        self.field(b'M')
    }

    /// `H`: the hint ("" when none).
    pub fn hint(&self) -> &str {
        self.field(b'H')
    }

    fn decode(body: &[u8]) -> ServerError {
        let mut fields = Vec::new();
        let mut rest = body;
        while let Some((&t, tail)) = rest.split_first() {
            if t == 0 {
                break;
            }
            let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
            let (value, tail) = tail.split_at(end);
            fields.push((t, String::from_utf8_lossy(value).into_owned()));
            rest = tail.get(1..).unwrap_or_default();
        }
        ServerError { fields }
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.severity(), self.code(), self.message())
    }
}

#[derive(Debug)]
pub enum WireError {
    Io(io::Error),
    /// The server sent something that is not a well-formed reply.
    Protocol(String),
    /// The server refused the connection during startup.
    Server(ServerError),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Io(e) => write!(f, "I/O error: {e}"),
            WireError::Protocol(m) => write!(f, "protocol error: {m}"),
            WireError::Server(e) => write!(f, "server error: {e}"),
        }
    }
}

impl From<io::Error> for WireError {
    fn from(e: io::Error) -> Self {
        WireError::Io(e)
    }
}

/// What a simple query produced, up to ReadyForQuery (or up to the first CopyData after a
/// CopyBothResponse, where the reply becomes a stream).
#[derive(Debug, Default)]
pub struct QueryResult {
    /// The RowDescription's columns: (name, type oid).
    pub columns: Vec<(String, u32)>,
    pub rows: Vec<Vec<Option<String>>>,
    pub error: Option<ServerError>,
    /// A CopyBothResponse (`W`) arrived: the server started streaming.
    pub copy_both: bool,
    /// A CopyData (`d`) arrived after it: the server sent WAL (reading stopped there).
    pub copy_data: bool,
}

/// How a server reacted to bytes we sent before closing our side.
#[derive(Debug, PartialEq, Eq)]
pub enum RawOutcome {
    /// It closed the connection without a reply.
    Closed,
    /// It sent an ErrorResponse (and then, presumably, closed).
    Error(ServerError),
    /// It sent something else (the raw reply).
    Other(Vec<u8>),
}

fn connect(port: u16) -> io::Result<TcpStream> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.set_write_timeout(Some(Duration::from_secs(30)))?;
    Ok(stream)
}

/// Sends `bytes` on a fresh connection, closes our sending side, and reads whatever comes back
/// until the server closes. Times out (an Err) if the server neither answers nor closes.
pub fn send_raw(port: u16, bytes: &[u8]) -> Result<RawOutcome, WireError> {
    let mut stream = connect(port)?;
    // The server may close before reading everything: a failed write is not the verdict.
    let _ = stream.write_all(bytes);
    let _ = stream.shutdown(Shutdown::Write);
    read_outcome(&mut stream)
}

fn read_outcome(stream: &mut TcpStream) -> Result<RawOutcome, WireError> {
    let mut reply = Vec::new();
    match stream.read_to_end(&mut reply) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        Err(e) => return Err(WireError::Io(e)),
    }
    if reply.is_empty() {
        return Ok(RawOutcome::Closed);
    }
    let mut cursor = reply.as_slice();
    match read_message(&mut cursor) {
        Ok((b'E', body)) => Ok(RawOutcome::Error(ServerError::decode(&body))),
        _ => Ok(RawOutcome::Other(reply)),
    }
}

/// Reads one message: type byte, then a length-checked body.
fn read_message(r: &mut impl Read) -> Result<(u8, Vec<u8>), WireError> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head)?;
    let [kind, l0, l1, l2, l3] = head;
    let len = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
    if !(4..=MAX_MESSAGE).contains(&len) {
        return Err(WireError::Protocol(format!(
            "message {:?} has length {len}",
            kind as char
        )));
    }
    let mut body = vec![0u8; len - 4];
    r.read_exact(&mut body)?;
    Ok((kind, body))
}

/// A checked reader over a message body.
struct Body<'a>(&'a [u8]);

impl<'a> Body<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.0.len() {
            return Err(WireError::Protocol(format!(
                "field of {n} bytes overruns the message ({} left)",
                self.0.len()
            )));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        self.take(N)?
            .try_into()
            .map_err(|_| WireError::Protocol(format!("short {N}-byte field")))
    }

    fn i16(&mut self) -> Result<i16, WireError> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    fn i32(&mut self) -> Result<i32, WireError> {
        Ok(i32::from_be_bytes(self.array()?))
    }
}

fn parse_data_row(body: &[u8]) -> Result<Vec<Option<String>>, WireError> {
    let mut b = Body(body);
    let n = b.i16()?;
    let mut row = Vec::new();
    for _ in 0..n {
        let len = b.i32()?;
        row.push(if len < 0 {
            None
        } else {
            Some(String::from_utf8_lossy(b.take(len as usize)?).into_owned())
        });
    }
    Ok(row)
}

/// A NUL-terminated string at the front of `b`.
fn cstr(b: &mut Body<'_>) -> Result<String, WireError> {
    let end =
        b.0.iter()
            .position(|&c| c == 0)
            .ok_or_else(|| WireError::Protocol("unterminated string".into()))?;
    let s = String::from_utf8_lossy(b.take(end)?).into_owned();
    b.take(1)?;
    Ok(s)
}

fn parse_parameter_status(body: &[u8]) -> Result<(String, String), WireError> {
    let mut b = Body(body);
    Ok((cstr(&mut b)?, cstr(&mut b)?))
}

/// (name, type oid) of each column of a RowDescription.
fn parse_row_description(body: &[u8]) -> Result<Vec<(String, u32)>, WireError> {
    let mut b = Body(body);
    let n = b.i16()?;
    let mut columns = Vec::new();
    for _ in 0..n {
        let name = cstr(&mut b)?;
        // table oid (4), column number (2), then the type oid, size (2), modifier (4), format (2).
        b.take(6)?;
        let oid = b.i32()? as u32;
        b.take(8)?;
        columns.push((name, oid));
    }
    Ok(columns)
}

/// A physical replication connection (`replication=true`), as walreceiver and pg_receivewal
/// open it.
pub struct ReplClient {
    stream: TcpStream,
    /// The ParameterStatus messages of the startup, in order.
    parameters: Vec<(String, String)>,
}

impl ReplClient {
    /// Connects, sends the StartupMessage (user postgres, database replication,
    /// replication=true) and reads up to ReadyForQuery. Only trust authentication is supported.
    pub fn connect(port: u16, application_name: &str) -> Result<ReplClient, WireError> {
        let mut stream = connect(port)?;
        let mut params = Vec::new();
        for (k, v) in [
            ("user", "postgres"),
            ("database", "replication"),
            ("replication", "true"),
            ("application_name", application_name),
        ] {
            for s in [k, v] {
                params.extend_from_slice(s.as_bytes());
                params.push(0);
            }
        }
        params.push(0);
        let mut msg = Vec::new();
        msg.extend_from_slice(&((params.len() + 8) as u32).to_be_bytes());
        msg.extend_from_slice(&196608u32.to_be_bytes());
        msg.extend_from_slice(&params);
        stream.write_all(&msg)?;
        let mut parameters = Vec::new();
        loop {
            match read_message(&mut stream)? {
                (b'R', body) => {
                    let code = Body(&body).i32()?;
                    if code != 0 {
                        return Err(WireError::Protocol(format!(
                            "authentication request {code}; the harness only speaks trust"
                        )));
                    }
                }
                (b'E', body) => return Err(WireError::Server(ServerError::decode(&body))),
                (b'Z', _) => return Ok(ReplClient { stream, parameters }),
                (b'S', body) => parameters.push(parse_parameter_status(&body)?),
                (b'K' | b'N', _) => {}
                (kind, _) => {
                    return Err(WireError::Protocol(format!(
                        "unexpected {:?} during startup",
                        kind as char
                    )))
                }
            }
        }
    }

    /// The value of a ParameterStatus the server sent during startup (e.g. `server_version`).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Runs one simple query (`Q`) and collects its rows and error.
    pub fn query(&mut self, sql: &str) -> Result<QueryResult, WireError> {
        let mut msg = vec![b'Q'];
        msg.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
        msg.extend_from_slice(sql.as_bytes());
        msg.push(0);
        self.stream.write_all(&msg)?;
        let mut result = QueryResult::default();
        loop {
            let message = match read_message(&mut self.stream) {
                // Ending the connection after an ErrorResponse is allowed; the error is the answer.
                Err(WireError::Io(e))
                    if e.kind() == io::ErrorKind::UnexpectedEof && result.error.is_some() =>
                {
                    return Ok(result)
                }
                other => other?,
            };
            match message {
                (b'D', body) => result.rows.push(parse_data_row(&body)?),
                (b'T', body) => result.columns = parse_row_description(&body)?,
                (b'E', body) => result.error = Some(ServerError::decode(&body)),
                (b'W', _) => result.copy_both = true,
                (b'd', _) => {
                    result.copy_data = true;
                    return Ok(result);
                }
                (b'Z', _) => return Ok(result),
                (b'C' | b'N' | b'I' | b'S', _) => {}
                (kind, _) => {
                    return Err(WireError::Protocol(format!(
                        "unexpected {:?} in a query reply",
                        kind as char
                    )))
                }
            }
        }
    }

    /// The socket, for a test that goes on by hand (e.g. stops reading mid-stream).
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }

    /// Sends raw bytes on this (started-up) connection, closes our side and reports the reply.
    pub fn send_raw(mut self, bytes: &[u8]) -> Result<RawOutcome, WireError> {
        let _ = self.stream.write_all(bytes);
        let _ = self.stream.shutdown(Shutdown::Write);
        read_outcome(&mut self.stream)
    }
}
