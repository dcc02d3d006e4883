#![no_main]
//! Startup packets as a listener reads them: split off the socket buffer (possibly several
//! in one read), then parsed. What parsed must encode back to the bytes it came from (the
//! parameter text is lossy UTF-8, so the check re-parses the re-encoding instead).
use bytes::{BufMut, BytesMut};
use libfuzzer_sys::fuzz_target;
use walrelay::proto::frontend::{parse_startup_packet, StartupPacket, CANCEL_REQUEST_CODE};
use walrelay::proto::{split_startup_packet, MAX_STARTUP_PACKET_LEN};

fn encode(p: &StartupPacket) -> Vec<u8> {
    use walrelay::proto::frontend::{GSSENC_REQUEST_CODE, SSL_REQUEST_CODE};
    let mut v = BytesMut::new();
    match p {
        StartupPacket::SslRequest => v.put_u32(SSL_REQUEST_CODE),
        StartupPacket::GssEncRequest => v.put_u32(GSSENC_REQUEST_CODE),
        StartupPacket::Cancel { pid, key } => {
            v.put_u32(CANCEL_REQUEST_CODE);
            v.put_i32(*pid);
            v.put_slice(key);
        }
        StartupPacket::Startup { minor, params } => {
            v.put_u32(3 << 16 | u32::from(*minor));
            for (k, val) in params {
                v.put_slice(k.as_bytes());
                v.put_u8(0);
                v.put_slice(val.as_bytes());
                v.put_u8(0);
            }
            v.put_u8(0);
        }
    }
    v.to_vec()
}

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        match split_startup_packet(&mut buf) {
            Ok(Some(body)) => {
                // The length word counts itself and is bounded.
                let taken = before - buf.len();
                assert_eq!(taken, body.len() + 4);
                assert!((8..=MAX_STARTUP_PACKET_LEN).contains(&taken));
                if let Ok(p) = parse_startup_packet(&body) {
                    let again = encode(&p);
                    if !matches!(p, StartupPacket::Startup { .. }) {
                        assert_eq!(&again[..], &body[..]);
                    }
                    assert_eq!(parse_startup_packet(&again).as_ref(), Ok(&p));
                }
            }
            Ok(None) => {
                assert_eq!(buf.len(), before);
                break;
            }
            Err(_) => break,
        }
    }
    // Unframed bodies too: the parser must cope with any length, not only what the
    // splitter lets through.
    let _ = parse_startup_packet(data);
});
