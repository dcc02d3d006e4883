//! Messages a server sends (encoders), as the relay's downstream side writes them, plus the
//! few decoders the upstream client needs beyond `postgres-protocol`.

use bytes::{BufMut, BytesMut};

/// Type OIDs used in RowDescription (clients never look at them, but they follow PostgreSQL).
pub mod oid {
    pub const TEXT: u32 = 25;
    pub const INT4: u32 = 23;
    pub const INT8: u32 = 20;
    pub const BYTEA: u32 = 17;
}

/// A column of a RowDescription.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub type_oid: u32,
}

impl Column {
    pub const fn text(name: &'static str) -> Column {
        Column {
            name,
            type_oid: oid::TEXT,
        }
    }
    pub const fn int4(name: &'static str) -> Column {
        Column {
            name,
            type_oid: oid::INT4,
        }
    }
    pub const fn int8(name: &'static str) -> Column {
        Column {
            name,
            type_oid: oid::INT8,
        }
    }
}

fn typlen(oid: u32) -> i16 {
    match oid {
        oid::INT4 => 4,
        oid::INT8 => 8,
        _ => -1,
    }
}

/// Writes a message: tag, length word, body produced by `f`.
fn message(out: &mut BytesMut, tag: u8, f: impl FnOnce(&mut BytesMut)) {
    out.put_u8(tag);
    let len_at = out.len();
    out.put_i32(0);
    f(out);
    let len = (out.len() - len_at) as i32;
    // The four bytes were put there above, so the range always exists.
    if let Some(word) = out.get_mut(len_at..len_at + 4) {
        word.copy_from_slice(&len.to_be_bytes());
    }
}

pub fn authentication_ok(out: &mut BytesMut) {
    message(out, b'R', |b| b.put_i32(0));
}

/// AuthenticationSASL with the mechanism list.
pub fn authentication_sasl(out: &mut BytesMut, mechanisms: &[&str]) {
    message(out, b'R', |b| {
        b.put_i32(10);
        for m in mechanisms {
            b.put_slice(m.as_bytes());
            b.put_u8(0);
        }
        b.put_u8(0);
    });
}

pub fn authentication_sasl_continue(out: &mut BytesMut, data: &[u8]) {
    message(out, b'R', |b| {
        b.put_i32(11);
        b.put_slice(data);
    });
}

pub fn authentication_sasl_final(out: &mut BytesMut, data: &[u8]) {
    message(out, b'R', |b| {
        b.put_i32(12);
        b.put_slice(data);
    });
}

pub fn parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    message(out, b'S', |b| {
        b.put_slice(name.as_bytes());
        b.put_u8(0);
        b.put_slice(value.as_bytes());
        b.put_u8(0);
    });
}

pub fn backend_key_data(out: &mut BytesMut, pid: i32, key: i32) {
    message(out, b'K', |b| {
        b.put_i32(pid);
        b.put_i32(key);
    });
}

pub fn ready_for_query(out: &mut BytesMut) {
    message(out, b'Z', |b| b.put_u8(b'I'));
}

pub fn row_description(out: &mut BytesMut, cols: &[Column]) {
    message(out, b'T', |b| {
        b.put_i16(cols.len() as i16);
        for c in cols {
            b.put_slice(c.name.as_bytes());
            b.put_u8(0);
            b.put_u32(0); // table oid
            b.put_i16(0); // attnum
            b.put_u32(c.type_oid);
            b.put_i16(typlen(c.type_oid));
            b.put_i32(-1); // typmod
            b.put_i16(0); // text format
        }
    });
}

pub fn data_row(out: &mut BytesMut, values: &[Option<&[u8]>]) {
    message(out, b'D', |b| {
        b.put_i16(values.len() as i16);
        for v in values {
            match v {
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.put_slice(v);
                }
                None => b.put_i32(-1),
            }
        }
    });
}

pub fn command_complete(out: &mut BytesMut, tag: &str) {
    message(out, b'C', |b| {
        b.put_slice(tag.as_bytes());
        b.put_u8(0);
    });
}

pub fn empty_query_response(out: &mut BytesMut) {
    message(out, b'I', |_| {});
}

/// CopyBothResponse with overall text format and zero columns, as a walsender sends it.
pub fn copy_both_response(out: &mut BytesMut) {
    message(out, b'W', |b| {
        b.put_u8(0);
        b.put_i16(0);
    });
}

pub fn copy_data(out: &mut BytesMut, payload: &[u8]) {
    message(out, b'd', |b| b.put_slice(payload));
}

pub fn copy_done(out: &mut BytesMut) {
    message(out, b'c', |_| {});
}

/// NegotiateProtocolVersion: the newest minor version supported and the unrecognised options.
pub fn negotiate_protocol_version(out: &mut BytesMut, minor: i32, unsupported: &[String]) {
    message(out, b'v', |b| {
        b.put_i32(minor);
        b.put_i32(unsupported.len() as i32);
        for o in unsupported {
            b.put_slice(o.as_bytes());
            b.put_u8(0);
        }
    });
}

/// A whole one-row result set: RowDescription, DataRow, CommandComplete.
pub fn single_row(out: &mut BytesMut, cols: &[Column], values: &[Option<&[u8]>], tag: &str) {
    row_description(out, cols);
    data_row(out, values);
    command_complete(out, tag);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::split_message;

    #[test]
    fn keepalive_frame_sizes_match_postgres() {
        let mut b = BytesMut::new();
        copy_both_response(&mut b);
        assert_eq!(&b[..], b"W\0\0\0\x07\0\0\0");
        let mut b = BytesMut::new();
        row_description(
            &mut b,
            &[Column::text("systemid"), Column::int4("timeline")],
        );
        data_row(&mut b, &[Some(b"1"), None]);
        let t = split_message(&mut b).unwrap().unwrap();
        assert_eq!(t.tag, b'T');
        let d = split_message(&mut b).unwrap().unwrap();
        assert_eq!(&d.body[..], b"\0\x02\0\0\0\x011\xff\xff\xff\xff");
    }
}
