//! Messages a client sends, decoded on the relay's server side: the startup-phase packets
//! (SSLRequest, GSSENCRequest, CancelRequest, StartupMessage) and the typed messages of the
//! command and COPY phases.

use bytes::Bytes;

use super::{ProtocolError, RawMessage, Reader};

pub const PROTOCOL_3_0: u32 = 196608;
pub const SSL_REQUEST_CODE: u32 = 80877103;
pub const GSSENC_REQUEST_CODE: u32 = 80877104;
pub const CANCEL_REQUEST_CODE: u32 = 80877102;

/// A packet of the startup phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel {
        pid: i32,
        key: Vec<u8>,
    },
    /// StartupMessage: the requested minor version and the parameters in order.
    Startup {
        minor: u16,
        params: Vec<(String, String)>,
    },
}

/// Decodes a startup-phase packet body (length word removed).
pub fn parse_startup_packet(body: &[u8]) -> Result<StartupPacket, ProtocolError> {
    let mut r = Reader::new(body, "startup packet");
    let code = r.u32()?;
    match code {
        SSL_REQUEST_CODE if r.remaining() == 0 => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST_CODE if r.remaining() == 0 => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST_CODE => {
            let pid = r.i32()?;
            Ok(StartupPacket::Cancel {
                pid,
                key: r.rest().to_vec(),
            })
        }
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xFFFF) as u16;
            if major != 3 {
                return Err(ProtocolError::UnsupportedProtocol { major, minor });
            }
            let rest = r.rest();
            // The terminator must be the last byte (backend_startup.c).
            let Some((&0, rest)) = rest.split_last() else {
                return Err(ProtocolError::StartupLayout);
            };
            let mut params = Vec::new();
            let mut r = Reader::new(rest, "startup packet");
            while r.remaining() > 0 {
                let name = r.cstr().map_err(|_| ProtocolError::StartupLayout)?;
                let value = r.cstr().map_err(|_| ProtocolError::StartupLayout)?;
                params.push((name, value));
            }
            Ok(StartupPacket::Startup { minor, params })
        }
    }
}

/// A typed message from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrontendMessage {
    Query(String),
    CopyData(Bytes),
    CopyDone,
    CopyFail(String),
    Terminate,
    /// `p`: password, SASLInitialResponse or SASLResponse; its meaning depends on the state.
    Password(Bytes),
    /// `S` Sync, `H` Flush: accepted and ignored (extended protocol is not used here).
    Sync,
    Flush,
    /// Any other tag.
    Other(u8),
}

pub fn parse_frontend(msg: RawMessage) -> Result<FrontendMessage, ProtocolError> {
    Ok(match msg.tag {
        b'Q' => {
            let mut r = Reader::new(&msg.body, "Query");
            FrontendMessage::Query(r.cstr()?)
        }
        b'd' => FrontendMessage::CopyData(msg.body),
        b'c' => FrontendMessage::CopyDone,
        b'f' => {
            let mut r = Reader::new(&msg.body, "CopyFail");
            FrontendMessage::CopyFail(r.cstr()?)
        }
        b'X' => FrontendMessage::Terminate,
        b'p' => FrontendMessage::Password(msg.body),
        b'S' => FrontendMessage::Sync,
        b'H' => FrontendMessage::Flush,
        t => FrontendMessage::Other(t),
    })
}

/// SASLInitialResponse body: mechanism and the client-first-message.
pub fn parse_sasl_initial_response(body: &[u8]) -> Result<(String, Vec<u8>), ProtocolError> {
    let mut r = Reader::new(body, "SASLInitialResponse");
    let mech = r.cstr()?;
    let len = r.i32()?;
    let data = if len < 0 {
        Vec::new()
    } else {
        r.bytes(len as usize)?.to_vec()
    };
    Ok((mech, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup(params: &[(&str, &str)]) -> Vec<u8> {
        let mut v = PROTOCOL_3_0.to_be_bytes().to_vec();
        for (k, val) in params {
            v.extend_from_slice(k.as_bytes());
            v.push(0);
            v.extend_from_slice(val.as_bytes());
            v.push(0);
        }
        v.push(0);
        v
    }

    #[test]
    fn startup_packets() {
        assert_eq!(
            parse_startup_packet(&SSL_REQUEST_CODE.to_be_bytes()).unwrap(),
            StartupPacket::SslRequest
        );
        assert_eq!(
            parse_startup_packet(&GSSENC_REQUEST_CODE.to_be_bytes()).unwrap(),
            StartupPacket::GssEncRequest
        );
        let p = parse_startup_packet(&startup(&[("user", "u"), ("replication", "true")])).unwrap();
        assert_eq!(
            p,
            StartupPacket::Startup {
                minor: 0,
                params: vec![
                    ("user".into(), "u".into()),
                    ("replication".into(), "true".into())
                ]
            }
        );
        let mut bad = startup(&[("user", "u")]);
        bad.pop();
        assert_eq!(
            parse_startup_packet(&bad),
            Err(ProtocolError::StartupLayout)
        );
        assert!(parse_startup_packet(&[0, 2, 0, 0]).is_err());
        assert!(parse_startup_packet(&[1]).is_err());
    }

    proptest::proptest! {
        /// A StartupMessage with any parameters (names and values without NUL), framed with
        /// its length and followed by more bytes, splits off and parses to those parameters.
        #[test]
        fn startup_round_trip(
            minor: u16,
            params in proptest::collection::vec(("[^\\x00]{0,12}", "[^\\x00]{0,20}"), 0..8),
            trailing in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..10),
        ) {
            let mut body = (3u32 << 16 | u32::from(minor)).to_be_bytes().to_vec();
            for (k, v) in &params {
                body.extend_from_slice(k.as_bytes());
                body.push(0);
                body.extend_from_slice(v.as_bytes());
                body.push(0);
            }
            body.push(0);
            let mut buf = bytes::BytesMut::new();
            buf.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
            buf.extend_from_slice(&body);
            buf.extend_from_slice(&trailing);
            let pkt = crate::proto::split_startup_packet(&mut buf).unwrap().unwrap();
            proptest::prop_assert_eq!(&buf[..], &trailing[..]);
            proptest::prop_assert_eq!(
                parse_startup_packet(&pkt),
                Ok(StartupPacket::Startup { minor, params })
            );
        }

        /// Query and CopyFail text round-trips through a framed message.
        #[test]
        fn query_round_trip(q in "[^\\x00]{0,100}", fail: bool) {
            let tag = if fail { b'f' } else { b'Q' };
            let mut buf = bytes::BytesMut::new();
            buf.extend_from_slice(&[tag]);
            buf.extend_from_slice(&(q.len() as i32 + 5).to_be_bytes());
            buf.extend_from_slice(q.as_bytes());
            buf.extend_from_slice(&[0]);
            let m = crate::proto::split_message(&mut buf).unwrap().unwrap();
            let want = if fail {
                FrontendMessage::CopyFail(q)
            } else {
                FrontendMessage::Query(q)
            };
            proptest::prop_assert_eq!(parse_frontend(m), Ok(want));
        }
    }
}
