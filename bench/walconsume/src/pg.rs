//! The connection up to streaming: startup with `replication=true`, authentication (trust,
//! cleartext, MD5, SCRAM-SHA-256 without channel binding), `IDENTIFY_SYSTEM` and
//! `START_REPLICATION`. Backend messages are parsed with postgres-protocol, except
//! CopyBothResponse (`W`), which its parser does not know.

use std::fmt;
use std::io;

use bytes::{Buf, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::backend::{ErrorFields, Message};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::lsn::Lsn;

/// The longest backend message accepted before streaming (a DataRow of IDENTIFY_SYSTEM or an
/// error is a few hundred bytes).
const MAX_MESSAGE: usize = 1 << 20;

#[derive(Debug)]
pub enum Error {
    Io(io::Error),
    /// An ErrorResponse from the server: SQLSTATE and message.
    Server(String, String),
    Protocol(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "{e}"),
            Error::Server(code, msg) => write!(f, "server error {code}: {msg}"),
            Error::Protocol(msg) => write!(f, "protocol: {msg}"),
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

pub type Result<T> = std::result::Result<T, Error>;

pub fn protocol(msg: impl Into<String>) -> Error {
    Error::Protocol(msg.into())
}

/// SQLSTATE and message of an ErrorResponse (or NoticeResponse) body.
pub fn server_error(mut fields: ErrorFields<'_>) -> Error {
    let (mut code, mut message) = (String::new(), String::new());
    loop {
        match fields.next() {
            Ok(Some(f)) if f.type_() == b'C' => {
                code = String::from_utf8_lossy(f.value_bytes()).into_owned()
            }
            Ok(Some(f)) if f.type_() == b'M' => {
                message = String::from_utf8_lossy(f.value_bytes()).into_owned()
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => return protocol(format!("malformed ErrorResponse: {e}")),
        }
    }
    Error::Server(code, message)
}

pub struct Target {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
}

pub struct Identity {
    pub timeline: u32,
    pub xlogpos: Lsn,
}

enum Backend {
    Message(Message),
    CopyBoth,
}

pub struct Conn {
    stream: TcpStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
}

impl Conn {
    /// Connects, authenticates and waits for ReadyForQuery.
    pub async fn connect(target: &Target, application_name: &str) -> Result<Conn> {
        let stream = TcpStream::connect((target.host.as_str(), target.port)).await?;
        stream.set_nodelay(true)?;
        let mut c = Conn {
            stream,
            rbuf: BytesMut::with_capacity(8192),
            wbuf: BytesMut::with_capacity(512),
        };
        frontend::startup_message(
            [
                ("user", target.user.as_str()),
                ("database", "replication"),
                ("replication", "true"),
                ("application_name", application_name),
            ],
            &mut c.wbuf,
        )?;
        c.flush().await?;
        c.authenticate(target).await?;
        loop {
            match c.next().await? {
                Backend::Message(Message::ReadyForQuery(_)) => return Ok(c),
                Backend::Message(Message::ErrorResponse(b)) => {
                    return Err(server_error(b.fields()))
                }
                Backend::Message(
                    Message::ParameterStatus(_)
                    | Message::BackendKeyData(_)
                    | Message::NoticeResponse(_),
                ) => {}
                _ => return Err(protocol("unexpected message before ReadyForQuery")),
            }
        }
    }

    async fn authenticate(&mut self, target: &Target) -> Result<()> {
        let password = || {
            target.password.as_deref().ok_or_else(|| {
                protocol("the server asks for a password: give --password or PGPASSWORD")
            })
        };
        match self.next().await? {
            Backend::Message(Message::AuthenticationOk) => return Ok(()),
            Backend::Message(Message::AuthenticationCleartextPassword) => {
                frontend::password_message(password()?.as_bytes(), &mut self.wbuf)?;
            }
            Backend::Message(Message::AuthenticationMd5Password(b)) => {
                let hash = md5_hash(target.user.as_bytes(), password()?.as_bytes(), b.salt());
                frontend::password_message(hash.as_bytes(), &mut self.wbuf)?;
            }
            Backend::Message(Message::AuthenticationSasl(b)) => {
                let mut mechanisms = b.mechanisms();
                let mut scram = false;
                while let Some(m) = mechanisms.next()? {
                    scram |= m == "SCRAM-SHA-256";
                }
                if !scram {
                    return Err(protocol(
                        "the server offers no SCRAM-SHA-256 (TLS is not supported here)",
                    ));
                }
                let mut client =
                    ScramSha256::new(password()?.as_bytes(), ChannelBinding::unsupported());
                frontend::sasl_initial_response("SCRAM-SHA-256", client.message(), &mut self.wbuf)?;
                self.flush().await?;
                let Backend::Message(Message::AuthenticationSaslContinue(b)) = self.next().await?
                else {
                    return Err(protocol("expected AuthenticationSASLContinue"));
                };
                client.update(b.data())?;
                frontend::sasl_response(client.message(), &mut self.wbuf)?;
                self.flush().await?;
                let Backend::Message(Message::AuthenticationSaslFinal(b)) = self.next().await?
                else {
                    return Err(protocol("expected AuthenticationSASLFinal"));
                };
                client.finish(b.data())?;
            }
            Backend::Message(Message::ErrorResponse(b)) => return Err(server_error(b.fields())),
            _ => return Err(protocol("unsupported authentication request")),
        }
        self.flush().await?;
        match self.next().await? {
            Backend::Message(Message::AuthenticationOk) => Ok(()),
            Backend::Message(Message::ErrorResponse(b)) => Err(server_error(b.fields())),
            _ => Err(protocol("expected AuthenticationOk")),
        }
    }

    /// `IDENTIFY_SYSTEM`: the server's timeline and WAL position.
    pub async fn identify_system(&mut self) -> Result<Identity> {
        frontend::query("IDENTIFY_SYSTEM", &mut self.wbuf)?;
        self.flush().await?;
        let mut identity = None;
        loop {
            match self.next().await? {
                Backend::Message(Message::DataRow(row)) => {
                    let mut cols = Vec::with_capacity(4);
                    let mut ranges = row.ranges();
                    while let Some(r) = ranges.next()? {
                        let text = match r {
                            Some(r) => std::str::from_utf8(&row.buffer()[r])
                                .map_err(|_| protocol("IDENTIFY_SYSTEM: a column is not UTF-8"))?,
                            None => "",
                        };
                        cols.push(text.to_owned());
                    }
                    if cols.len() < 3 {
                        return Err(protocol("IDENTIFY_SYSTEM: fewer than 3 columns"));
                    }
                    let timeline = cols[1].parse().map_err(|_| {
                        protocol(format!("IDENTIFY_SYSTEM: bad timeline {:?}", cols[1]))
                    })?;
                    let xlogpos = Lsn::parse(&cols[2]).ok_or_else(|| {
                        protocol(format!("IDENTIFY_SYSTEM: bad xlogpos {:?}", cols[2]))
                    })?;
                    identity = Some(Identity { timeline, xlogpos });
                }
                Backend::Message(Message::ReadyForQuery(_)) => {
                    return identity.ok_or_else(|| protocol("IDENTIFY_SYSTEM returned no row"));
                }
                Backend::Message(Message::ErrorResponse(b)) => {
                    return Err(server_error(b.fields()))
                }
                Backend::Message(
                    Message::RowDescription(_)
                    | Message::CommandComplete(_)
                    | Message::NoticeResponse(_),
                ) => {}
                _ => return Err(protocol("unexpected message after IDENTIFY_SYSTEM")),
            }
        }
    }

    /// `START_REPLICATION PHYSICAL start TIMELINE tli`, up to the CopyBothResponse. Returns the
    /// socket and the bytes already read past the CopyBothResponse.
    pub async fn start_replication(
        mut self,
        start: Lsn,
        timeline: u32,
    ) -> Result<(TcpStream, BytesMut)> {
        let q = format!("START_REPLICATION PHYSICAL {start} TIMELINE {timeline}");
        frontend::query(&q, &mut self.wbuf)?;
        self.flush().await?;
        loop {
            match self.next().await? {
                Backend::CopyBoth => return Ok((self.stream, self.rbuf)),
                Backend::Message(Message::ErrorResponse(b)) => {
                    return Err(server_error(b.fields()))
                }
                Backend::Message(Message::NoticeResponse(_)) => {}
                // The no-COPY answer for the end of a historic timeline, among others.
                _ => return Err(protocol(format!("{q}: no CopyBothResponse"))),
            }
        }
    }

    async fn flush(&mut self) -> Result<()> {
        self.stream.write_all(&self.wbuf).await?;
        self.wbuf.clear();
        Ok(())
    }

    async fn next(&mut self) -> Result<Backend> {
        loop {
            if self.rbuf.len() >= 5 {
                let len =
                    u32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]])
                        as usize;
                if !(4..=MAX_MESSAGE).contains(&len) {
                    return Err(protocol(format!("backend message of length {len}")));
                }
                if self.rbuf[0] == b'W' {
                    if self.rbuf.len() > len {
                        self.rbuf.advance(1 + len);
                        return Ok(Backend::CopyBoth);
                    }
                } else if let Some(m) = Message::parse(&mut self.rbuf)? {
                    return Ok(Backend::Message(m));
                }
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return Err(Error::Io(io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }
}
