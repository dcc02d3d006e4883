//! ErrorResponse / NoticeResponse: severity, SQLSTATE and text as PostgreSQL sends them.

use bytes::{BufMut, BytesMut};

/// SQLSTATE codes the relay sends (names as in PostgreSQL's `errcodes.txt`).
pub mod sqlstate {
    pub const SYNTAX_ERROR: &str = "42601";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const INVALID_AUTHORIZATION_SPECIFICATION: &str = "28000";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const UNDEFINED_OBJECT: &str = "42704";
    pub const DUPLICATE_OBJECT: &str = "42710";
    pub const INVALID_NAME: &str = "42602";
    pub const OBJECT_IN_USE: &str = "55006";
    pub const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
    pub const UNDEFINED_FILE: &str = "58P01";
    pub const INTERNAL_ERROR: &str = "XX000";
    pub const INVALID_PARAMETER_VALUE: &str = "22023";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const CONFIGURATION_LIMIT_EXCEEDED: &str = "53400";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const DISK_FULL: &str = "53100";
    pub const DATA_CORRUPTED: &str = "XX001";
}

/// `ERROR` ends the command; `FATAL` ends the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
    Notice,
    Warning,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
            Severity::Notice => "NOTICE",
            Severity::Warning => "WARNING",
        }
    }
}

/// An error (or notice) for a client, in PostgreSQL's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgError {
    pub severity: Severity,
    pub code: &'static str,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl PgError {
    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        PgError {
            severity: Severity::Error,
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn fatal(code: &'static str, message: impl Into<String>) -> Self {
        PgError {
            severity: Severity::Fatal,
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Encodes as `E` (or `N` for notices and warnings).
    pub fn encode(&self, out: &mut BytesMut) {
        let tag = match self.severity {
            Severity::Error | Severity::Fatal => b'E',
            Severity::Notice | Severity::Warning => b'N',
        };
        let mut body = BytesMut::new();
        let mut field = |t: u8, v: &str| {
            body.put_u8(t);
            body.put_slice(v.as_bytes());
            body.put_u8(0);
        };
        field(b'S', self.severity.as_str());
        field(b'V', self.severity.as_str());
        field(b'C', self.code);
        field(b'M', &self.message);
        if let Some(d) = &self.detail {
            field(b'D', d);
        }
        if let Some(h) = &self.hint {
            field(b'H', h);
        }
        body.put_u8(0);
        out.put_u8(tag);
        out.put_i32(4 + body.len() as i32);
        out.put_slice(&body);
    }
}

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {}",
            self.severity.as_str(),
            self.code,
            self.message
        )?;
        if let Some(d) = &self.detail {
            write!(f, " (DETAIL: {d})")?;
        }
        Ok(())
    }
}

impl std::error::Error for PgError {}

/// Decodes the fields of an ErrorResponse/NoticeResponse body sent by a server.
pub fn decode_error_fields(body: &[u8]) -> Vec<(u8, String)> {
    let mut out = Vec::new();
    let mut rest = body;
    while let Some((&t, tail)) = rest.split_first() {
        if t == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        let (value, after) = tail.split_at(end);
        out.push((t, String::from_utf8_lossy(value).into_owned()));
        rest = after.get(1..).unwrap_or(&[]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let e = PgError::error(
            sqlstate::UNDEFINED_FILE,
            "requested WAL segment x has already been removed",
        )
        .with_detail("d");
        let mut b = BytesMut::new();
        e.encode(&mut b);
        assert_eq!(b[0], b'E');
        let fields = decode_error_fields(&b[5..]);
        assert!(fields.contains(&(b'C', "58P01".to_string())));
        assert!(fields.contains(&(b'D', "d".to_string())));
        assert_eq!(decode_error_fields(b"Sx"), vec![(b'S', "x".to_string())]);
    }

    proptest::proptest! {
        /// An error encodes to a message whose fields decode back to what was set, in order.
        #[test]
        fn fields_round_trip(
            message in "[^\\x00]{0,80}",
            detail in proptest::option::of("[^\\x00]{0,40}"),
            hint in proptest::option::of("[^\\x00]{0,40}"),
            fatal: bool,
        ) {
            let mut e = if fatal {
                PgError::fatal(sqlstate::PROTOCOL_VIOLATION, message.clone())
            } else {
                PgError::error(sqlstate::UNDEFINED_FILE, message.clone())
            };
            if let Some(d) = &detail {
                e = e.with_detail(d.clone());
            }
            if let Some(h) = &hint {
                e = e.with_hint(h.clone());
            }
            let mut b = BytesMut::new();
            e.encode(&mut b);
            let m = crate::proto::split_message(&mut b).unwrap().unwrap();
            proptest::prop_assert_eq!(m.tag, b'E');
            proptest::prop_assert!(b.is_empty());
            let sev = if fatal { "FATAL" } else { "ERROR" }.to_string();
            let mut want = vec![
                (b'S', sev.clone()),
                (b'V', sev),
                (b'C', e.code.to_string()),
                (b'M', message),
            ];
            want.extend(detail.map(|d| (b'D', d)));
            want.extend(hint.map(|h| (b'H', h)));
            proptest::prop_assert_eq!(decode_error_fields(&m.body), want);
        }
    }
}
