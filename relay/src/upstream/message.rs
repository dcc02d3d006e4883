//! Decoding of the backend messages a replication client meets, from frames split by
//! [`crate::proto::split_message`]. Sans-IO and panic-free: every field read goes through
//! [`crate::proto::Reader`].
//!
//! Hand-rolled rather than `postgres_protocol::message::backend::Message::parse`, because that
//! parser does not know CopyBothResponse (`W`) and would need the raw frame re-assembled.

use bytes::Bytes;

use super::error::ServerError;
use crate::proto::{ProtocolError, RawMessage, Reader};

/// An `R` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AuthRequest {
    Ok,
    Cleartext,
    Md5 {
        salt: [u8; 4],
    },
    /// AuthenticationSASL with the offered mechanisms.
    Sasl(Vec<String>),
    SaslContinue(Bytes),
    SaslFinal(Bytes),
    /// Kerberos, GSSAPI, SSPI, ...: not supported by the relay.
    Other(i32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BackendMessage {
    Auth(AuthRequest),
    ParameterStatus {
        name: String,
        value: String,
    },
    BackendKeyData {
        pid: i32,
        key: i32,
    },
    ReadyForQuery,
    Error(ServerError),
    Notice(ServerError),
    RowDescription,
    DataRow(Vec<Option<String>>),
    CommandComplete(String),
    EmptyQuery,
    CopyBoth,
    CopyIn,
    CopyOut,
    CopyData(Bytes),
    CopyDone,
    /// NegotiateProtocolVersion: only possible if we asked for more than 3.0, which we don't.
    NegotiateProtocol,
    /// Anything else (NotificationResponse, extended-protocol acknowledgements, ...).
    Other(u8),
}

pub(crate) fn decode(msg: RawMessage) -> Result<BackendMessage, ProtocolError> {
    let body = &msg.body[..];
    Ok(match msg.tag {
        b'R' => BackendMessage::Auth(decode_auth(&msg.body)?),
        b'S' => {
            let mut r = Reader::new(body, "ParameterStatus");
            BackendMessage::ParameterStatus {
                name: r.cstr()?,
                value: r.cstr()?,
            }
        }
        b'K' => {
            let mut r = Reader::new(body, "BackendKeyData");
            BackendMessage::BackendKeyData {
                pid: r.i32()?,
                key: r.i32()?,
            }
        }
        b'Z' => BackendMessage::ReadyForQuery,
        b'E' => BackendMessage::Error(ServerError::from_body(body)),
        b'N' => BackendMessage::Notice(ServerError::from_body(body)),
        b'T' => BackendMessage::RowDescription,
        b'D' => BackendMessage::DataRow(decode_data_row(body)?),
        b'C' => BackendMessage::CommandComplete(Reader::new(body, "CommandComplete").cstr()?),
        b'I' => BackendMessage::EmptyQuery,
        b'W' => BackendMessage::CopyBoth,
        b'G' => BackendMessage::CopyIn,
        b'H' => BackendMessage::CopyOut,
        b'd' => BackendMessage::CopyData(msg.body),
        b'c' => BackendMessage::CopyDone,
        b'v' => BackendMessage::NegotiateProtocol,
        t => BackendMessage::Other(t),
    })
}

fn decode_auth(body: &Bytes) -> Result<AuthRequest, ProtocolError> {
    let mut r = Reader::new(body, "authentication request");
    let code = r.i32()?;
    Ok(match code {
        0 => AuthRequest::Ok,
        3 => AuthRequest::Cleartext,
        5 => {
            let s = r.bytes(4)?;
            let mut salt = [0u8; 4];
            salt.copy_from_slice(s);
            AuthRequest::Md5 { salt }
        }
        10 => {
            let mut mechanisms = Vec::new();
            loop {
                let m = r.cstr()?;
                if m.is_empty() {
                    break;
                }
                mechanisms.push(m);
            }
            AuthRequest::Sasl(mechanisms)
        }
        11 => AuthRequest::SaslContinue(body.slice(4..)),
        12 => AuthRequest::SaslFinal(body.slice(4..)),
        other => AuthRequest::Other(other),
    })
}

/// DataRow as text (lossy UTF-8): the walsender sends text-format results only.
fn decode_data_row(body: &[u8]) -> Result<Vec<Option<String>>, ProtocolError> {
    let mut r = Reader::new(body, "DataRow");
    let n = r.i16()?;
    if n < 0 {
        return Err(ProtocolError::Malformed("DataRow"));
    }
    let mut row = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let len = r.i32()?;
        row.push(if len < 0 {
            None
        } else {
            Some(String::from_utf8_lossy(r.bytes(len as usize)?).into_owned())
        });
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::backend;
    use crate::proto::split_message;
    use bytes::BytesMut;

    fn one(b: &mut BytesMut) -> BackendMessage {
        decode(split_message(b).unwrap().unwrap()).unwrap()
    }

    #[test]
    fn decodes_what_the_relay_server_encodes() {
        let mut b = BytesMut::new();
        backend::authentication_sasl(&mut b, &["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]);
        backend::parameter_status(&mut b, "server_version", "15.18");
        backend::backend_key_data(&mut b, 42, 7);
        backend::ready_for_query(&mut b);
        backend::data_row(&mut b, &[Some(b"1"), None]);
        backend::copy_both_response(&mut b);
        backend::command_complete(&mut b, "COPY 0");
        assert_eq!(
            one(&mut b),
            BackendMessage::Auth(AuthRequest::Sasl(vec![
                "SCRAM-SHA-256-PLUS".into(),
                "SCRAM-SHA-256".into()
            ]))
        );
        assert_eq!(
            one(&mut b),
            BackendMessage::ParameterStatus {
                name: "server_version".into(),
                value: "15.18".into()
            }
        );
        assert_eq!(
            one(&mut b),
            BackendMessage::BackendKeyData { pid: 42, key: 7 }
        );
        assert_eq!(one(&mut b), BackendMessage::ReadyForQuery);
        assert_eq!(
            one(&mut b),
            BackendMessage::DataRow(vec![Some("1".into()), None])
        );
        assert_eq!(one(&mut b), BackendMessage::CopyBoth);
        assert_eq!(
            one(&mut b),
            BackendMessage::CommandComplete("COPY 0".into())
        );
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        let raw = |tag: u8, body: &'static [u8]| RawMessage {
            tag,
            body: Bytes::from_static(body),
        };
        assert!(decode(raw(b'R', b"\0\0")).is_err());
        assert!(
            decode(raw(b'R', b"\0\0\0\x05\x01")).is_err(),
            "md5 salt too short"
        );
        assert!(
            decode(raw(b'R', b"\0\0\0\x0aSCRAM")).is_err(),
            "unterminated mechanism list"
        );
        assert!(
            decode(raw(b'D', b"\0\x01\0\0\0\x09abc")).is_err(),
            "value longer than body"
        );
        assert!(
            decode(raw(b'D', b"\xff\xff")).is_err(),
            "negative column count"
        );
        assert!(decode(raw(b'K', b"\0\0")).is_err());
        assert!(decode(raw(b'C', b"no terminator")).is_err());
        assert_eq!(
            decode(raw(b'R', b"\0\0\0\x05abcd")).unwrap(),
            BackendMessage::Auth(AuthRequest::Md5 { salt: *b"abcd" })
        );
        assert_eq!(
            decode(raw(b'R', b"\0\0\0\x07")).unwrap(),
            BackendMessage::Auth(AuthRequest::Other(7))
        );
    }
}
