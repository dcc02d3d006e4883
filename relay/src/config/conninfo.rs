//! The upstream conninfo: libpq's `key=value` and `postgresql://` URI forms, parsed into a
//! [`ConnInfo`] with libpq's defaults and `PG*` environment fallbacks.
//!
//! Hand-written on purpose: `tokio_postgres::Config` rejects keys a replication client needs
//! (`passfile`, `sslrootcert`, `sslmode=verify-full`, `target_session_attrs=primary`, and the
//! keys `pg_basebackup -R` writes into `primary_conninfo`), and has no env or pgpass handling.
//!
//! Invariants:
//! * `ConnInfo::hosts` is never empty, and every entry has a port in 1..=65535.
//! * Error texts are libpq's where libpq has one, so operators can search for them.
//! * Nothing here reads the process environment except [`FromStr`] (through
//!   [`ConnInfo::parse_with_env`] with `std::env::var`) and the OS user-name fallback.
//! * [`ConnInfo::redacted`] never contains the password.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use syntax::{is_uri, parse_keyword_value, parse_uri, Raw};

mod syntax;

/// Port used when neither the conninfo nor `PGPORT` gives one (`DEF_PGPORT`).
pub const DEFAULT_PORT: u16 = 5432;
/// Host used when neither the conninfo nor `PGHOST` gives one. libpq would use a Unix socket;
/// a relay always talks TCP.
pub const DEFAULT_HOST: &str = "localhost";

/// Why a conninfo string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnInfoError {
    #[error("invalid connection option \"{0}\"")]
    UnknownOption(String),
    #[error("connection option \"{0}\" is not supported by walrelay")]
    Unsupported(String),
    #[error("connection option \"replication\" is set by walrelay itself and must not be given")]
    Replication,
    #[error("missing \"=\" after \"{0}\" in connection info string")]
    MissingEquals(String),
    #[error("unterminated quoted string in connection info string")]
    UnterminatedQuote,
    #[error("invalid {key} value: \"{value}\"")]
    InvalidValue { key: &'static str, value: String },
    #[error("invalid integer value \"{value}\" for connection option \"{key}\"")]
    InvalidInteger { key: &'static str, value: String },
    #[error("invalid port number: \"{0}\"")]
    InvalidPort(String),
    #[error("could not parse network address \"{0}\"")]
    InvalidHostaddr(String),
    #[error("could not match {ports} port numbers to {hosts} hosts")]
    PortCount { ports: usize, hosts: usize },
    #[error("could not match {hosts} host names to {addrs} hostaddr values")]
    HostaddrCount { hosts: usize, addrs: usize },
    #[error("Unix-domain socket host \"{0}\" is not supported: walrelay connects over TCP")]
    UnixSocket(String),
    #[error("invalid URI propagated to internal parser routine: \"{0}\"")]
    InvalidUri(String),
    #[error("invalid URI query parameter: \"{0}\"")]
    InvalidUriParam(String),
    #[error("invalid percent-encoded token: \"{0}\"")]
    InvalidPercent(String),
    #[error("forbidden value %00 in percent-encoded value: \"{0}\"")]
    PercentNul(String),
    #[error("end of string reached when looking for matching \"]\" in IPv6 host address in URI: \"{0}\"")]
    UnterminatedIpv6(String),
    #[error("unexpected character \"{ch}\" at position {pos} in URI (expected \":\" or \"/\"): \"{uri}\"")]
    UnexpectedUriChar { ch: char, pos: usize, uri: String },
    #[error("could not look up local user name; set user= or PGUSER")]
    NoUser,
}

/// `sslmode`: whether and how TLS is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    /// Plaintext first; TLS only if the server refuses the plaintext connection.
    Allow,
    /// TLS if the server offers it, plaintext otherwise (libpq's default).
    #[default]
    Prefer,
    /// TLS, no certificate check (unless a root certificate is configured: then as `VerifyCa`).
    Require,
    /// TLS, certificate chain checked against `sslrootcert`, host name not checked.
    VerifyCa,
    /// TLS, chain and host name checked.
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether a server without TLS is refused.
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }
}

impl FromStr for SslMode {
    type Err = ConnInfoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return Err(invalid("sslmode", s)),
        })
    }
}

/// `target_session_attrs`: which kind of server a multi-host conninfo should settle on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TargetSessionAttrs {
    #[default]
    Any,
    ReadWrite,
    ReadOnly,
    Primary,
    Standby,
    PreferStandby,
}

impl TargetSessionAttrs {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetSessionAttrs::Any => "any",
            TargetSessionAttrs::ReadWrite => "read-write",
            TargetSessionAttrs::ReadOnly => "read-only",
            TargetSessionAttrs::Primary => "primary",
            TargetSessionAttrs::Standby => "standby",
            TargetSessionAttrs::PreferStandby => "prefer-standby",
        }
    }
}

impl FromStr for TargetSessionAttrs {
    type Err = ConnInfoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "any" => TargetSessionAttrs::Any,
            "read-write" => TargetSessionAttrs::ReadWrite,
            "read-only" => TargetSessionAttrs::ReadOnly,
            "primary" => TargetSessionAttrs::Primary,
            "standby" => TargetSessionAttrs::Standby,
            "prefer-standby" => TargetSessionAttrs::PreferStandby,
            _ => return Err(invalid("target_session_attrs", s)),
        })
    }
}

/// `channel_binding`: whether SCRAM-SHA-256-PLUS is used over TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChannelBindingMode {
    Disable,
    #[default]
    Prefer,
    Require,
}

impl ChannelBindingMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelBindingMode::Disable => "disable",
            ChannelBindingMode::Prefer => "prefer",
            ChannelBindingMode::Require => "require",
        }
    }
}

impl FromStr for ChannelBindingMode {
    type Err = ConnInfoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "disable" => ChannelBindingMode::Disable,
            "prefer" => ChannelBindingMode::Prefer,
            "require" => ChannelBindingMode::Require,
            _ => return Err(invalid("channel_binding", s)),
        })
    }
}

/// `ssl_min_protocol_version`. rustls speaks only TLS 1.2 and 1.3, so `TLSv1` and `TLSv1.1`
/// are accepted and mean 1.2 in practice (libpq's default minimum is 1.2 anyway).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMinVersion {
    #[default]
    Tls12,
    Tls13,
}

impl TlsMinVersion {
    fn parse(s: &str) -> Result<Self, ConnInfoError> {
        match s {
            "TLSv1" | "TLSv1.1" | "TLSv1.2" => Ok(TlsMinVersion::Tls12),
            "TLSv1.3" => Ok(TlsMinVersion::Tls13),
            _ => Err(invalid("ssl_min_protocol_version", s)),
        }
    }
}

/// One upstream server: the name used for TLS host checks and `.pgpass`, and the numeric
/// address to connect to instead of resolving the name (`hostaddr`), if given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub hostaddr: Option<IpAddr>,
    pub port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// `connect_timeout` when the conninfo does not set it.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed upstream conninfo with every default applied.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnInfo {
    pub hosts: Vec<HostPort>,
    pub user: String,
    /// `password` or `PGPASSWORD`; an empty one counts as none (libpq then reads `.pgpass`).
    pub password: Option<String>,
    /// `passfile` or `PGPASSFILE`; `None` means `~/.pgpass`.
    pub passfile: Option<PathBuf>,
    /// Kept for display only: a physical replication connection is not connected to a database.
    pub dbname: Option<String>,
    pub sslmode: SslMode,
    pub sslrootcert: Option<PathBuf>,
    pub sslcert: Option<PathBuf>,
    pub sslkey: Option<PathBuf>,
    pub ssl_min_protocol_version: TlsMinVersion,
    pub channel_binding: ChannelBindingMode,
    /// Bounds each connection attempt (handshake and authentication) and each query of the
    /// session's setup. Absent: [`DEFAULT_CONNECT_TIMEOUT`] (libpq has no default; a relay
    /// does, so that a host that accepts TCP and then hangs does not hold up the next host).
    /// `None`: no timeout (an explicit zero or negative, as libpq).
    pub connect_timeout: Option<Duration>,
    pub application_name: Option<String>,
    pub fallback_application_name: Option<String>,
    pub target_session_attrs: TargetSessionAttrs,
    /// Command-line options for the server (`-c name=value ...`), sent in the StartupMessage.
    pub options: Option<String>,
    /// TCP keepalives on (libpq default) or off.
    pub keepalives: bool,
    pub keepalives_idle: Option<Duration>,
    pub keepalives_interval: Option<Duration>,
    pub keepalives_count: Option<u32>,
    pub tcp_user_timeout: Option<Duration>,
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Debug output ends up in logs; never print the password.
        f.debug_struct("ConnInfo")
            .field("conninfo", &self.redacted())
            .finish()
    }
}

fn invalid(key: &'static str, value: &str) -> ConnInfoError {
    ConnInfoError::InvalidValue {
        key,
        value: value.to_string(),
    }
}

impl ConnInfo {
    /// Parses `s` (key=value or URI form), taking defaults from `env` (a `PG*` variable
    /// lookup; `std::env::var` in production, a map in tests).
    pub fn parse_with_env(
        s: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConnInfoError> {
        let raw = if is_uri(s) {
            parse_uri(s)?
        } else {
            parse_keyword_value(s)?
        };
        Self::from_raw(&raw, &env)
    }

    fn from_raw(raw: &Raw, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConnInfoError> {
        // A key given in the string wins; an absent key falls back to its PG* variable.
        let get = |key: &str, var: &str| -> Option<String> {
            raw.get(key).map(str::to_string).or_else(|| env(var))
        };
        let hosts = build_hosts(
            get("host", "PGHOST").as_deref(),
            get("hostaddr", "PGHOSTADDR").as_deref(),
            get("port", "PGPORT").as_deref(),
        )?;
        let user = match get("user", "PGUSER").filter(|u| !u.is_empty()) {
            Some(u) => u,
            None => os_user_name(env).ok_or(ConnInfoError::NoUser)?,
        };
        let nonempty = |v: Option<String>| v.filter(|s| !s.is_empty());
        let sslmode = match nonempty(get("sslmode", "PGSSLMODE")) {
            Some(v) => v.parse()?,
            None => SslMode::default(),
        };
        let target_session_attrs =
            match nonempty(get("target_session_attrs", "PGTARGETSESSIONATTRS")) {
                Some(v) => v.parse()?,
                None => TargetSessionAttrs::default(),
            };
        let channel_binding = match nonempty(get("channel_binding", "PGCHANNELBINDING")) {
            Some(v) => v.parse()?,
            None => ChannelBindingMode::default(),
        };
        let ssl_min_protocol_version =
            match nonempty(get("ssl_min_protocol_version", "PGSSLMINPROTOCOLVERSION")) {
                Some(v) => TlsMinVersion::parse(&v)?,
                None => TlsMinVersion::default(),
            };
        let connect_timeout = match nonempty(get("connect_timeout", "PGCONNECT_TIMEOUT")) {
            Some(v) => positive_secs(parse_int("connect_timeout", &v)?),
            None => Some(DEFAULT_CONNECT_TIMEOUT),
        };
        let keepalives = match nonempty(raw.get("keepalives").map(str::to_string)) {
            Some(v) => parse_int("keepalives", &v)? != 0,
            None => true,
        };
        let int_key = |key: &'static str| -> Result<Option<i64>, ConnInfoError> {
            match raw.get(key).filter(|v| !v.is_empty()) {
                Some(v) => parse_int(key, v).map(Some),
                None => Ok(None),
            }
        };
        let keepalives_idle = int_key("keepalives_idle")?.and_then(positive_secs);
        let keepalives_interval = int_key("keepalives_interval")?.and_then(positive_secs);
        let keepalives_count = int_key("keepalives_count")?
            .filter(|&n| n > 0)
            .map(|n| n.min(u32::MAX as i64) as u32);
        let tcp_user_timeout = int_key("tcp_user_timeout")?
            .filter(|&n| n > 0)
            .map(|ms| Duration::from_millis(ms as u64));
        let path = |key: &str, var: &str| nonempty(get(key, var)).map(PathBuf::from);
        Ok(ConnInfo {
            hosts,
            user,
            password: nonempty(get("password", "PGPASSWORD")),
            passfile: path("passfile", "PGPASSFILE"),
            dbname: nonempty(get("dbname", "PGDATABASE")),
            sslmode,
            sslrootcert: path("sslrootcert", "PGSSLROOTCERT"),
            sslcert: path("sslcert", "PGSSLCERT"),
            sslkey: path("sslkey", "PGSSLKEY"),
            ssl_min_protocol_version,
            channel_binding,
            connect_timeout,
            application_name: nonempty(get("application_name", "PGAPPNAME")),
            fallback_application_name: nonempty(
                raw.get("fallback_application_name").map(str::to_string),
            ),
            target_session_attrs,
            options: nonempty(get("options", "PGOPTIONS")),
            keepalives,
            keepalives_idle,
            keepalives_interval,
            keepalives_count,
            tcp_user_timeout,
        })
    }

    /// The application name to send: the conninfo's `application_name`, else the program's
    /// default (`default`, if not empty), else the conninfo's `fallback_application_name`.
    pub fn effective_application_name<'a>(&'a self, default: &'a str) -> Option<&'a str> {
        self.application_name
            .as_deref()
            .or(Some(default).filter(|d| !d.is_empty()))
            .or(self.fallback_application_name.as_deref())
    }

    /// A key=value rendering for logs: every setting that differs from the default, with the
    /// password replaced by a marker.
    pub fn redacted(&self) -> String {
        let mut parts: Vec<(&str, String)> = Vec::new();
        let join = |f: &dyn Fn(&HostPort) -> String| {
            self.hosts.iter().map(f).collect::<Vec<_>>().join(",")
        };
        parts.push(("host", join(&|h| h.host.clone())));
        if self.hosts.iter().any(|h| h.hostaddr.is_some()) {
            parts.push((
                "hostaddr",
                join(&|h| h.hostaddr.map(|a| a.to_string()).unwrap_or_default()),
            ));
        }
        parts.push(("port", join(&|h| h.port.to_string())));
        parts.push(("user", self.user.clone()));
        if self.password.is_some() {
            parts.push(("password", "********".to_string()));
        }
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        if let Some(p) = path(&self.passfile) {
            parts.push(("passfile", p));
        }
        if let Some(d) = &self.dbname {
            parts.push(("dbname", d.clone()));
        }
        parts.push(("sslmode", self.sslmode.as_str().to_string()));
        for (k, v) in [
            ("sslrootcert", &self.sslrootcert),
            ("sslcert", &self.sslcert),
            ("sslkey", &self.sslkey),
        ] {
            if let Some(p) = path(v) {
                parts.push((k, p));
            }
        }
        if self.ssl_min_protocol_version == TlsMinVersion::Tls13 {
            parts.push(("ssl_min_protocol_version", "TLSv1.3".to_string()));
        }
        if self.channel_binding != ChannelBindingMode::default() {
            parts.push(("channel_binding", self.channel_binding.as_str().to_string()));
        }
        match self.connect_timeout {
            Some(t) if t == DEFAULT_CONNECT_TIMEOUT => {}
            Some(t) => parts.push(("connect_timeout", t.as_secs().to_string())),
            // Written out, as the default would apply again when the text is parsed.
            None => parts.push(("connect_timeout", "0".to_string())),
        }
        if let Some(a) = &self.application_name {
            parts.push(("application_name", a.clone()));
        }
        if let Some(a) = &self.fallback_application_name {
            parts.push(("fallback_application_name", a.clone()));
        }
        if self.target_session_attrs != TargetSessionAttrs::Any {
            parts.push((
                "target_session_attrs",
                self.target_session_attrs.as_str().to_string(),
            ));
        }
        if let Some(o) = &self.options {
            parts.push(("options", o.clone()));
        }
        if !self.keepalives {
            parts.push(("keepalives", "0".to_string()));
        }
        let secs = |d: &Option<Duration>| d.map(|d| d.as_secs().to_string());
        if let Some(v) = secs(&self.keepalives_idle) {
            parts.push(("keepalives_idle", v));
        }
        if let Some(v) = secs(&self.keepalives_interval) {
            parts.push(("keepalives_interval", v));
        }
        if let Some(n) = self.keepalives_count {
            parts.push(("keepalives_count", n.to_string()));
        }
        if let Some(t) = self.tcp_user_timeout {
            parts.push(("tcp_user_timeout", t.as_millis().to_string()));
        }
        parts
            .iter()
            .map(|(k, v)| format!("{k}={}", quote(v)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl FromStr for ConnInfo {
    type Err = ConnInfoError;
    /// Parses with the process environment as the source of `PG*` defaults.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ConnInfo::parse_with_env(s, |k| std::env::var(k).ok())
    }
}

/// Quotes a value for a key=value conninfo when it needs it (empty, spaces, quotes, `\`).
fn quote(v: &str) -> String {
    if !v.is_empty()
        && !v
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\')
    {
        return v.to_string();
    }
    let mut out = String::with_capacity(v.len() + 2);
    out.push('\'');
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

fn positive_secs(n: i64) -> Option<Duration> {
    (n > 0).then(|| Duration::from_secs(n as u64))
}

/// libpq's `parse_int_param`: an integer, surrounding whitespace allowed.
fn parse_int(key: &'static str, v: &str) -> Result<i64, ConnInfoError> {
    v.trim()
        .parse::<i64>()
        .map_err(|_| ConnInfoError::InvalidInteger {
            key,
            value: v.to_string(),
        })
}

fn parse_port(v: &str) -> Result<u16, ConnInfoError> {
    let n = parse_int("port", v)?;
    u16::try_from(n)
        .ok()
        .filter(|&p| p >= 1)
        .ok_or_else(|| ConnInfoError::InvalidPort(v.to_string()))
}

/// Combines the comma-separated `host`, `hostaddr` and `port` lists as libpq does.
fn build_hosts(
    host: Option<&str>,
    hostaddr: Option<&str>,
    port: Option<&str>,
) -> Result<Vec<HostPort>, ConnInfoError> {
    let split = |s: Option<&str>| -> Vec<String> {
        match s {
            Some(s) if !s.is_empty() => s.split(',').map(|p| p.trim().to_string()).collect(),
            _ => Vec::new(),
        }
    };
    let names = split(host);
    let addrs = split(hostaddr);
    let ports = split(port);
    let count = if names.is_empty() {
        addrs.len().max(1)
    } else {
        names.len()
    };
    if !names.is_empty() && !addrs.is_empty() && names.len() != addrs.len() {
        return Err(ConnInfoError::HostaddrCount {
            hosts: names.len(),
            addrs: addrs.len(),
        });
    }
    if ports.len() > 1 && ports.len() != count {
        return Err(ConnInfoError::PortCount {
            ports: ports.len(),
            hosts: count,
        });
    }
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let addr = match addrs.get(i).filter(|a| !a.is_empty()) {
            Some(a) => Some(
                a.parse::<IpAddr>()
                    .map_err(|_| ConnInfoError::InvalidHostaddr(a.clone()))?,
            ),
            None => None,
        };
        let name = match names.get(i).filter(|n| !n.is_empty()) {
            Some(n) if n.starts_with('/') || n.starts_with('@') => {
                return Err(ConnInfoError::UnixSocket(n.clone()))
            }
            Some(n) => n.clone(),
            // libpq names the server by its address when only hostaddr is given.
            None => addr
                .map(|a| a.to_string())
                .unwrap_or_else(|| DEFAULT_HOST.to_string()),
        };
        let port = match ports
            .get(if ports.len() == 1 { 0 } else { i })
            .filter(|p| !p.is_empty())
        {
            Some(p) => parse_port(p)?,
            None => DEFAULT_PORT,
        };
        out.push(HostPort {
            host: name,
            hostaddr: addr,
            port,
        });
    }
    Ok(out)
}

/// The login name of the process owner: `/etc/passwd` for the owner of `/proc/self`, else
/// `$USER` (libpq uses `getpwuid(geteuid())`).
fn os_user_name(env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    passwd_entry_of_self()
        .map(|(name, _)| name)
        .or_else(|| env("USER"))
        .filter(|u| !u.is_empty())
}

/// `(name, home)` of the process owner from `/etc/passwd`, found without libc: the uid is the
/// owner of `/proc/self`.
pub(crate) fn passwd_entry_of_self() -> Option<(String, PathBuf)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let uid = std::fs::metadata("/proc/self").ok()?.uid();
        let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
        passwd.lines().find_map(|line| {
            let mut f = line.split(':');
            let name = f.next()?;
            let _pw = f.next()?;
            let id: u32 = f.next()?.parse().ok()?;
            let home = f.nth(2)?;
            (id == uid).then(|| (name.to_string(), PathBuf::from(home)))
        })
    }
    #[cfg(not(unix))]
    {
        None
    }
}

#[cfg(test)]
mod tests;
