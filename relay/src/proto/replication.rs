//! The CopyBoth sub-protocol of physical streaming replication: XLogData `w` and primary
//! keepalive `k` (server to client), standby status update `r` and hot-standby feedback `h`
//! (client to server). All integers big-endian; timestamps are microseconds since 2000-01-01.

use bytes::{BufMut, BytesMut};
use std::time::{SystemTime, UNIX_EPOCH};

use super::{ProtocolError, Reader};
use crate::wal::Lsn;

/// Microseconds between the Unix epoch and the PostgreSQL epoch (2000-01-01 UTC).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// A PostgreSQL `TimestampTz`: microseconds since 2000-01-01 00:00:00 UTC.
pub type PgTimestamp = i64;

pub fn now_pg() -> PgTimestamp {
    system_time_to_pg(SystemTime::now())
}

pub fn system_time_to_pg(t: SystemTime) -> PgTimestamp {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i64 - PG_EPOCH_OFFSET_US,
        Err(_) => -PG_EPOCH_OFFSET_US,
    }
}

/// `w`: WAL bytes starting at `start`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XLogData<'a> {
    pub start: Lsn,
    pub wal_end: Lsn,
    pub send_time: PgTimestamp,
    pub data: &'a [u8],
}

pub const XLOG_DATA_HEADER_LEN: usize = 25;

/// Writes a `w` CopyData message (with its `d` frame) into `out`.
pub fn encode_xlog_data_frame(out: &mut BytesMut, start: Lsn, wal_end: Lsn, data: &[u8]) {
    encode_xlog_data_header(out, start, wal_end, data.len());
    out.put_slice(data);
}

/// Writes the `d` frame and `w` header of a message whose `len` WAL bytes the caller sends
/// right after it (not copied into `out`: see `wire::MsgWriter::queue_bytes`).
pub fn encode_xlog_data_header(out: &mut BytesMut, start: Lsn, wal_end: Lsn, len: usize) {
    out.put_u8(b'd');
    out.put_i32((4 + XLOG_DATA_HEADER_LEN + len) as i32);
    out.put_u8(b'w');
    out.put_u64(start.0);
    out.put_u64(wal_end.0);
    out.put_i64(now_pg());
}

/// `k`: the sender's WAL end, its clock, and whether it wants a reply at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub wal_end: Lsn,
    pub send_time: PgTimestamp,
    pub reply_requested: bool,
}

impl Keepalive {
    /// Writes the `k` CopyData message (exactly 18 payload bytes) with its `d` frame.
    pub fn encode_frame(&self, out: &mut BytesMut) {
        out.put_u8(b'd');
        out.put_i32(4 + 18);
        out.put_u8(b'k');
        out.put_u64(self.wal_end.0);
        out.put_i64(self.send_time);
        out.put_u8(self.reply_requested as u8);
    }
}

/// `r`: the client's write/flush/apply positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandbyStatus {
    pub write: Lsn,
    pub flush: Lsn,
    pub apply: Lsn,
    pub client_time: PgTimestamp,
    pub reply_requested: bool,
}

impl StandbyStatus {
    /// The 34-byte CopyData payload.
    pub fn encode_payload(&self, out: &mut BytesMut) {
        out.put_u8(b'r');
        out.put_u64(self.write.0);
        out.put_u64(self.flush.0);
        out.put_u64(self.apply.0);
        out.put_i64(self.client_time);
        out.put_u8(self.reply_requested as u8);
    }
}

/// `h`: the oldest transaction the client still needs, with epochs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HotStandbyFeedback {
    pub client_time: PgTimestamp,
    pub xmin: u32,
    pub xmin_epoch: u32,
    pub catalog_xmin: u32,
    pub catalog_xmin_epoch: u32,
}

impl HotStandbyFeedback {
    /// The 25-byte CopyData payload.
    pub fn encode_payload(&self, out: &mut BytesMut) {
        out.put_u8(b'h');
        out.put_i64(self.client_time);
        out.put_u32(self.xmin);
        out.put_u32(self.xmin_epoch);
        out.put_u32(self.catalog_xmin);
        out.put_u32(self.catalog_xmin_epoch);
    }
}

/// A CopyData payload from a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerCopyMessage<'a> {
    XLogData(XLogData<'a>),
    Keepalive(Keepalive),
}

/// Decodes a server's CopyData payload (as the walreceiver does: `w` needs its 24 header bytes,
/// `k` exactly 17 after the type byte).
pub fn parse_server_copy(payload: &[u8]) -> Result<ServerCopyMessage<'_>, ProtocolError> {
    let mut r = Reader::new(payload, "streaming");
    match r.u8()? {
        b'w' => {
            let mut r = Reader::new(r.rest(), "XLogData");
            let start = Lsn(r.u64()?);
            let wal_end = Lsn(r.u64()?);
            let send_time = r.i64()?;
            Ok(ServerCopyMessage::XLogData(XLogData {
                start,
                wal_end,
                send_time,
                data: r.rest(),
            }))
        }
        b'k' => {
            if r.remaining() != 17 {
                return Err(ProtocolError::Malformed("keepalive"));
            }
            let wal_end = Lsn(r.u64()?);
            let send_time = r.i64()?;
            let reply_requested = r.u8()? != 0;
            Ok(ServerCopyMessage::Keepalive(Keepalive {
                wal_end,
                send_time,
                reply_requested,
            }))
        }
        _ => Err(ProtocolError::Malformed("streaming")),
    }
}

/// A CopyData payload from a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCopyMessage {
    Status(StandbyStatus),
    HotStandbyFeedback(HotStandbyFeedback),
}

/// Decodes a client's CopyData payload (`ProcessStandbyMessage`: `r` and `h` only).
pub fn parse_client_copy(payload: &[u8]) -> Result<ClientCopyMessage, ProtocolError> {
    let mut r = Reader::new(payload, "standby message");
    match r.u8()? {
        b'r' => {
            let mut r = Reader::new(r.rest(), "standby status update");
            Ok(ClientCopyMessage::Status(StandbyStatus {
                write: Lsn(r.u64()?),
                flush: Lsn(r.u64()?),
                apply: Lsn(r.u64()?),
                client_time: r.i64()?,
                reply_requested: r.u8()? != 0,
            }))
        }
        b'h' => {
            let mut r = Reader::new(r.rest(), "hot standby feedback");
            Ok(ClientCopyMessage::HotStandbyFeedback(HotStandbyFeedback {
                client_time: r.i64()?,
                xmin: r.u32()?,
                xmin_epoch: r.u32()?,
                catalog_xmin: r.u32()?,
                catalog_xmin_epoch: r.u32()?,
            }))
        }
        _ => Err(ProtocolError::Malformed("standby message")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::split_message;

    #[test]
    fn keepalive_is_18_bytes() {
        let mut b = BytesMut::new();
        Keepalive {
            wal_end: Lsn(5),
            send_time: 7,
            reply_requested: true,
        }
        .encode_frame(&mut b);
        let m = split_message(&mut b).unwrap().unwrap();
        assert_eq!(m.body.len(), 18);
        assert_eq!(
            parse_server_copy(&m.body).unwrap(),
            ServerCopyMessage::Keepalive(Keepalive {
                wal_end: Lsn(5),
                send_time: 7,
                reply_requested: true
            })
        );
    }

    #[test]
    fn xlog_data_round_trip() {
        let mut b = BytesMut::new();
        encode_xlog_data_frame(&mut b, Lsn(0x1000000), Lsn(0x1002000), b"abc");
        let m = split_message(&mut b).unwrap().unwrap();
        match parse_server_copy(&m.body).unwrap() {
            ServerCopyMessage::XLogData(x) => {
                assert_eq!(x.start, Lsn(0x1000000));
                assert_eq!(x.wal_end, Lsn(0x1002000));
                assert_eq!(x.data, b"abc");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn client_messages_round_trip_and_truncation_fails() {
        let s = StandbyStatus {
            write: Lsn(1),
            flush: Lsn(2),
            apply: Lsn(3),
            client_time: 4,
            reply_requested: true,
        };
        let mut b = BytesMut::new();
        s.encode_payload(&mut b);
        assert_eq!(b.len(), 34);
        assert_eq!(parse_client_copy(&b).unwrap(), ClientCopyMessage::Status(s));
        assert!(parse_client_copy(&b[..20]).is_err());
        let h = HotStandbyFeedback {
            client_time: 1,
            xmin: 728,
            xmin_epoch: 0,
            catalog_xmin: 0,
            catalog_xmin_epoch: 0,
        };
        let mut b = BytesMut::new();
        h.encode_payload(&mut b);
        assert_eq!(b.len(), 25);
        assert_eq!(
            parse_client_copy(&b).unwrap(),
            ClientCopyMessage::HotStandbyFeedback(h)
        );
        assert!(parse_client_copy(b"x").is_err());
        assert!(parse_client_copy(b"").is_err());
    }

    mod props {
        use super::*;
        use crate::proto::backend::copy_data;
        use crate::proto::frontend::{parse_frontend, FrontendMessage};
        use proptest::prelude::*;

        fn status() -> impl Strategy<Value = StandbyStatus> {
            (any::<[u64; 3]>(), any::<i64>(), any::<bool>()).prop_map(|(l, t, r)| StandbyStatus {
                write: Lsn(l[0]),
                flush: Lsn(l[1]),
                apply: Lsn(l[2]),
                client_time: t,
                reply_requested: r,
            })
        }

        fn feedback() -> impl Strategy<Value = HotStandbyFeedback> {
            (any::<i64>(), any::<[u32; 4]>()).prop_map(|(t, x)| HotStandbyFeedback {
                client_time: t,
                xmin: x[0],
                xmin_epoch: x[1],
                catalog_xmin: x[2],
                catalog_xmin_epoch: x[3],
            })
        }

        proptest! {
            /// What the relay sends a standby (keepalive, XLogData) splits off the stream
            /// and decodes to what was encoded, nothing left over.
            #[test]
            fn server_frames_round_trip(
                wal_end: u64,
                send_time: i64,
                reply: bool,
                start: u64,
                data in proptest::collection::vec(any::<u8>(), 0..300),
            ) {
                let k = Keepalive { wal_end: Lsn(wal_end), send_time, reply_requested: reply };
                let mut b = BytesMut::new();
                k.encode_frame(&mut b);
                encode_xlog_data_frame(&mut b, Lsn(start), Lsn(wal_end), &data);
                let m = split_message(&mut b).unwrap().unwrap();
                prop_assert_eq!(m.tag, b'd');
                prop_assert_eq!(parse_server_copy(&m.body), Ok(ServerCopyMessage::Keepalive(k)));
                let m = split_message(&mut b).unwrap().unwrap();
                prop_assert_eq!(m.tag, b'd');
                match parse_server_copy(&m.body) {
                    Ok(ServerCopyMessage::XLogData(x)) => {
                        prop_assert_eq!(x.start, Lsn(start));
                        prop_assert_eq!(x.wal_end, Lsn(wal_end));
                        prop_assert_eq!(x.data, &data[..]);
                    }
                    other => prop_assert!(false, "{:?}", other),
                }
                prop_assert!(b.is_empty());
            }

            /// What a standby sends (status, hot standby feedback), wrapped in CopyData,
            /// comes back through split -> frontend decode -> standby decode unchanged; any
            /// truncation of it fails rather than decoding to something else.
            #[test]
            fn client_messages_round_trip(s in status(), h in feedback(), cut: usize) {
                let mut s_payload = BytesMut::new();
                s.encode_payload(&mut s_payload);
                let mut h_payload = BytesMut::new();
                h.encode_payload(&mut h_payload);
                let mut wire = BytesMut::new();
                copy_data(&mut wire, &s_payload);
                copy_data(&mut wire, &h_payload);
                for want in [ClientCopyMessage::Status(s), ClientCopyMessage::HotStandbyFeedback(h)] {
                    let m = split_message(&mut wire).unwrap().unwrap();
                    let FrontendMessage::CopyData(payload) = parse_frontend(m).unwrap() else {
                        panic!("not CopyData");
                    };
                    prop_assert_eq!(parse_client_copy(&payload), Ok(want));
                    let short = &payload[..cut % payload.len()];
                    prop_assert!(parse_client_copy(short).is_err());
                }
                prop_assert!(wire.is_empty());
            }
        }
    }
}
