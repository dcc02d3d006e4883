//! The two conninfo syntaxes, reduced to an ordered list of known `key=value` settings:
//! libpq's `key=value` form (`conninfo_parse`) and its URI form (`conninfo_uri_parse`), with
//! quoting, escapes and percent-decoding. Which keys exist is decided here too; what the values
//! mean is decided by the parent module.

use super::{invalid, ConnInfoError};

/// Keys libpq knows that walrelay accepts without acting on them: GSSAPI, compression, SNI
/// (rustls always sends SNI for names), and the rest of what `pg_basebackup -R` writes.
const IGNORED_KEYS: &[&str] = &[
    "gssencmode",
    "krbsrvname",
    "gsslib",
    "gssdelegation",
    "sslcompression",
    "sslsni",
    "sslnegotiation",
    "ssl_max_protocol_version",
    "sslcertmode",
    "requirepeer",
    "client_encoding",
];

/// Keys libpq knows whose meaning walrelay cannot honour; ignoring them would silently weaken
/// what the operator asked for, so they are refused.
const UNSUPPORTED_KEYS: &[&str] = &[
    "sslcrl",
    "sslcrldir",
    "sslpassword",
    "requiressl",
    "service",
    "require_auth",
    "load_balance_hosts",
    "min_protocol_version",
    "max_protocol_version",
];

/// Keys with a typed field in [`super::ConnInfo`].
const KNOWN_KEYS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "user",
    "password",
    "dbname",
    "passfile",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "ssl_min_protocol_version",
    "channel_binding",
    "connect_timeout",
    "application_name",
    "fallback_application_name",
    "target_session_attrs",
    "options",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
];

/// Raw settings in the order given; later duplicates win, as in libpq.
#[derive(Default)]
pub(super) struct Raw {
    pairs: Vec<(String, String)>,
}

impl Raw {
    fn set(&mut self, key: &str, value: String) -> Result<(), ConnInfoError> {
        if key == "replication" {
            return Err(ConnInfoError::Replication);
        }
        if UNSUPPORTED_KEYS.contains(&key) {
            return Err(ConnInfoError::Unsupported(key.to_string()));
        }
        if !KNOWN_KEYS.contains(&key) && !IGNORED_KEYS.contains(&key) {
            return Err(ConnInfoError::UnknownOption(key.to_string()));
        }
        self.pairs.retain(|(k, _)| k != key);
        self.pairs.push((key.to_string(), value));
        Ok(())
    }

    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

pub(super) fn is_uri(s: &str) -> bool {
    s.starts_with("postgresql://") || s.starts_with("postgres://")
}

/// libpq's `conninfo_parse`: `key = value` pairs separated by whitespace; values may be
/// single-quoted, and `\` escapes the next character inside or outside quotes.
pub(super) fn parse_keyword_value(s: &str) -> Result<Raw, ConnInfoError> {
    let mut raw = Raw::default();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            return Ok(raw);
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_whitespace() || c == '=' {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(ConnInfoError::MissingEquals(key));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err(ConnInfoError::UnterminatedQuote),
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => return Err(ConnInfoError::UnterminatedQuote),
                    },
                    Some('\'') => break,
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        value.push(n);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        raw.set(&key, value)?;
    }
}

/// libpq's `conninfo_uri_parse`:
/// `postgresql://[user[:password]@][host[:port][,...]][/dbname][?param=value&...]`.
pub(super) fn parse_uri(uri: &str) -> Result<Raw, ConnInfoError> {
    let mut raw = Raw::default();
    let rest = uri
        .strip_prefix("postgresql://")
        .or_else(|| uri.strip_prefix("postgres://"))
        .ok_or_else(|| ConnInfoError::InvalidUri(uri.to_string()))?;
    let prefix_len = uri.len() - rest.len();

    // Split off the query, then the path; what is left is [userinfo@]hostlist.
    let (before_query, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match before_query.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (before_query, None),
    };
    let (userinfo, hostlist) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    if let Some(u) = userinfo {
        let (user, password) = match u.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (u, None),
        };
        if !user.is_empty() {
            raw.set("user", percent_decode(user)?)?;
        }
        if let Some(p) = password {
            if !p.is_empty() {
                raw.set("password", percent_decode(p)?)?;
            }
        }
    }

    let mut hosts = Vec::new();
    let mut ports = Vec::new();
    let hostlist_at = prefix_len + userinfo.map_or(0, |u| u.len() + 1);
    let mut offset = 0;
    for item in hostlist.split(',') {
        let (host, port) = if let Some(v6) = item.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| ConnInfoError::UnterminatedIpv6(uri.to_string()))?;
            match after {
                "" => (h, None),
                a => match a.strip_prefix(':') {
                    Some(p) => (h, Some(p)),
                    None => {
                        let ch = a.chars().next().unwrap_or(' ');
                        let pos = hostlist_at + offset + 1 + h.len() + 2;
                        return Err(ConnInfoError::UnexpectedUriChar {
                            ch,
                            pos,
                            uri: uri.to_string(),
                        });
                    }
                },
            }
        } else {
            match item.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (item, None),
            }
        };
        hosts.push(percent_decode(host)?);
        ports.push(match port {
            Some(p) => percent_decode(p)?,
            None => String::new(),
        });
        offset += item.len() + 1;
    }
    if hosts.iter().any(|h| !h.is_empty()) {
        raw.set("host", hosts.join(","))?;
    }
    if ports.iter().any(|p| !p.is_empty()) {
        raw.set("port", ports.join(","))?;
    }
    if let Some(db) = path {
        if !db.is_empty() {
            raw.set("dbname", percent_decode(db)?)?;
        }
    }
    if let Some(q) = query {
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| ConnInfoError::InvalidUriParam(pair.to_string()))?;
            let k = percent_decode(k)?;
            let v = percent_decode(v)?;
            // URI-only alias (libpq): `ssl=true` means sslmode=require.
            let (k, v) = match k.as_str() {
                "ssl" if v == "true" => ("sslmode".to_string(), "require".to_string()),
                "ssl" => return Err(invalid("ssl", &v)),
                _ => (k, v),
            };
            raw.set(&k, v).map_err(|e| match e {
                ConnInfoError::UnknownOption(k) => ConnInfoError::InvalidUriParam(k),
                e => e,
            })?;
        }
    }
    Ok(raw)
}

/// Decodes `%XX` escapes; `%00` and malformed escapes are errors, as in libpq.
fn percent_decode(s: &str) -> Result<String, ConnInfoError> {
    if !s.contains('%') {
        return Ok(s.to_string());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or_else(|| ConnInfoError::InvalidPercent(s.to_string()))?;
        if hex == 0 {
            return Err(ConnInfoError::PercentNul(s.to_string()));
        }
        out.push(hex);
        i += 3;
    }
    String::from_utf8(out).map_err(|_| ConnInfoError::InvalidPercent(s.to_string()))
}
