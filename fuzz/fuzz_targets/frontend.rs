#![no_main]
//! Frontend messages as a downstream session reads them: split off the buffer, decoded,
//! and the payloads a walsender and the authenticator look into (standby status 'r', hot
//! standby feedback 'h', SASL responses) decoded further. Decoded standby messages must
//! encode back to the bytes they came from; the upstream-side CopyData decoder
//! (XLogData / keepalive) is run over the same payloads.
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use walrelay::proto::frontend::{parse_frontend, parse_sasl_initial_response, FrontendMessage};
use walrelay::proto::replication::{
    parse_client_copy, parse_server_copy, ClientCopyMessage, ServerCopyMessage,
};
use walrelay::proto::{split_message_max, ProtocolError};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the length limit, so that both the limit check and messages
    // close to it are reached with small inputs.
    let Some((&limit, rest)) = data.split_first() else {
        return;
    };
    let max_len = 4 + usize::from(limit) * 16;
    let mut buf = BytesMut::from(rest);
    loop {
        let before = buf.len();
        let msg = match split_message_max(&mut buf, max_len) {
            Ok(Some(m)) => m,
            Ok(None) => {
                assert_eq!(buf.len(), before);
                break;
            }
            Err(e) => {
                assert!(matches!(e, ProtocolError::BadLength(_)));
                break;
            }
        };
        assert_eq!(before - buf.len(), 5 + msg.body.len());
        assert!(msg.body.len() + 4 <= max_len);
        let _ = parse_sasl_initial_response(&msg.body);
        let _ = walrelay::access::scram::parse_sasl_initial_response(&msg.body);
        let _ = walrelay::proto::error::decode_error_fields(&msg.body);
        match parse_frontend(msg.clone()) {
            Ok(FrontendMessage::CopyData(payload)) => {
                assert_eq!(payload, msg.body);
                check_copy(&payload);
            }
            Ok(FrontendMessage::Query(q)) | Ok(FrontendMessage::CopyFail(q)) => {
                assert!(!q.contains('\0'));
            }
            Ok(_) | Err(_) => {}
        }
    }
});

fn check_copy(payload: &[u8]) {
    match parse_client_copy(payload) {
        Ok(ClientCopyMessage::Status(s)) => {
            let mut b = BytesMut::new();
            s.encode_payload(&mut b);
            // Trailing bytes are ignored, as PostgreSQL's walsender does; the booleans
            // are any non-zero byte, so compare the decoded value, and the bytes up to it.
            assert_eq!(&b[..33], &payload[..33]);
            assert_eq!(parse_client_copy(&b), Ok(ClientCopyMessage::Status(s)));
        }
        Ok(ClientCopyMessage::HotStandbyFeedback(h)) => {
            let mut b = BytesMut::new();
            h.encode_payload(&mut b);
            assert_eq!(&b[..], &payload[..b.len()]);
        }
        Err(_) => {}
    }
    match parse_server_copy(payload) {
        Ok(ServerCopyMessage::Keepalive(k)) => {
            let mut b = BytesMut::new();
            k.encode_frame(&mut b);
            // 'd', length, then the payload; the flag is any non-zero byte.
            assert_eq!(&b[5..22], &payload[..17]);
            assert_eq!(b.len(), 5 + 18);
        }
        Ok(ServerCopyMessage::XLogData(x)) => {
            assert_eq!(x.data.len() + 25, payload.len());
            assert_eq!(x.data, &payload[25..]);
        }
        Err(_) => {}
    }
}
