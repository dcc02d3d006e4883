//! Configuration: the `run` flags, the TOML file, `WALRELAY_*` env, and the upstream conninfo.
//!
//! Precedence: flag > env (clap reads `WALRELAY_<NAME>` for each flag) > file > default. The
//! merged, validated [`RelayConfig`] is what the rest of the relay sees; nothing else reads
//! flags, env or files.

pub mod conninfo;
pub mod pgpass;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

use conninfo::ConnInfo;

use crate::access::query::AuthQuery;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:5433";
pub const DEFAULT_HTTP: &str = "127.0.0.1:9433";
pub const DEFAULT_APPLICATION_NAME: &str = "walrelay";
/// Unlike PostgreSQL (0), a relay keeps some WAL by default: buffering for replicas that
/// reconnect is its job.
pub const DEFAULT_WAL_KEEP_SIZE: u64 = 1 << 30;
/// The in-memory tail of recent WAL (`wal_tail_size`): replicas less than this far behind are
/// served from memory. The same figure as `store::tail::DEFAULT_TAIL_CAPACITY` (this module
/// does not import the store).
pub const DEFAULT_WAL_TAIL_SIZE: usize = 64 << 20;
/// PostgreSQL's default `max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 100;
/// PostgreSQL's default `max_replication_slots`.
pub const DEFAULT_MAX_REPLICATION_SLOTS: usize = 10;
/// PostgreSQL's default `authentication_timeout`.
pub const DEFAULT_AUTHENTICATION_TIMEOUT: Duration = Duration::from_secs(60);
/// PostgreSQL's default `wal_sender_timeout`.
pub const DEFAULT_WAL_SENDER_TIMEOUT: Duration = Duration::from_secs(60);

/// The config file (`--config`). Every key is optional; unknown keys are errors, so a typo
/// never silently falls back to a default.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub upstream: Option<String>,
    pub slot: Option<String>,
    pub listen: Option<String>,
    pub http: Option<String>,
    pub data_dir: Option<PathBuf>,
    #[serde(default)]
    pub failover_standby: Vec<String>,
    /// `hold` or `serve`.
    pub failover_standby_missing: Option<String>,
    pub log_format: Option<String>,
    /// PostgreSQL-style size (`1GB`, `512MB`; a bare number is megabytes).
    pub wal_keep_size: Option<String>,
    /// PostgreSQL-style size, or `-1` for unlimited.
    pub max_slot_wal_keep_size: Option<String>,
    /// PostgreSQL-style size of the in-memory tail of recent WAL; `0` keeps none.
    pub wal_tail_size: Option<String>,
    pub max_connections: Option<u32>,
    pub max_replication_slots: Option<u32>,
    /// A duration: `60s`, `1m`, `500ms`.
    pub authentication_timeout: Option<String>,
    /// A duration, or `0` for off.
    pub wal_sender_timeout: Option<String>,
    /// Downstream TLS certificate (PEM); an empty string is unset.
    pub tls_cert: Option<PathBuf>,
    /// Downstream TLS private key (PEM); an empty string is unset.
    pub tls_key: Option<PathBuf>,
    /// Downstream pg_hba.conf-syntax rules; an empty string is unset.
    pub hba_file: Option<PathBuf>,
    /// Downstream users and SCRAM verifiers; an empty string is unset.
    pub auth_file: Option<PathBuf>,
    /// SQL run on the upstream for a user not in the auth file (`$1`: the user name), returning
    /// (name, SCRAM verifier); an empty string is unset.
    pub auth_query: Option<String>,
    /// Which log lines are written, in `RUST_LOG` syntax (`info`, `walrelay=debug,info`).
    pub log_filter: Option<String>,
}

impl FileConfig {
    pub fn load(path: &Path) -> anyhow::Result<FileConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parse config file {}", path.display()))
    }
}

/// Values given on the command line or in `WALRELAY_*` env (already merged by clap).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub upstream: Option<String>,
    pub slot: Option<String>,
    pub listen: Option<String>,
    pub http: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub failover_standby: Vec<String>,
    pub failover_standby_missing: Option<String>,
    pub wal_keep_size: Option<String>,
    pub max_slot_wal_keep_size: Option<String>,
    pub wal_tail_size: Option<String>,
    pub max_connections: Option<u32>,
    pub max_replication_slots: Option<u32>,
    pub authentication_timeout: Option<String>,
    pub wal_sender_timeout: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub hba_file: Option<PathBuf>,
    pub auth_file: Option<PathBuf>,
    pub auth_query: Option<String>,
    pub log_format: Option<String>,
    pub log_filter: Option<String>,
}

/// `--failover-standby-missing`: what a candidate that cannot be placed does to serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MissingPolicy {
    /// Hold at the floor until the candidate is known (the default: safe).
    #[default]
    Hold,
    /// Do not wait for it (the operator's explicit opt-out).
    Serve,
}

impl MissingPolicy {
    pub fn parse(s: &str) -> anyhow::Result<MissingPolicy> {
        match s.trim() {
            "hold" => Ok(MissingPolicy::Hold),
            "serve" => Ok(MissingPolicy::Serve),
            other => anyhow::bail!(
                "invalid failover_standby_missing \"{other}\": expected \"hold\" or \"serve\""
            ),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MissingPolicy::Hold => "hold",
            MissingPolicy::Serve => "serve",
        }
    }
}

/// How log lines are written on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    /// One JSON object per line (see `crate::logging`).
    Json,
}

impl LogFormat {
    pub fn parse(s: &str) -> anyhow::Result<LogFormat> {
        match s.trim() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => bail!("invalid log_format \"{other}\": expected \"text\" or \"json\""),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// The files of downstream access control, as configured (loaded by
/// `downstream::auth::Access::load` at startup). `None`: not set (an empty path is not set).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessFiles {
    /// `--tls-cert` and `--tls-key`, both or neither.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub hba_file: Option<PathBuf>,
    pub auth_file: Option<PathBuf>,
    /// `--auth-query`, with where to run it.
    pub auth_query: Option<AuthQuerySource>,
}

/// `--auth-query` and the session it runs over: a SQL (not replication) session with the
/// upstream conninfo (its user, password, TLS settings and `dbname`, default `postgres`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthQuerySource {
    pub query: AuthQuery,
    pub conninfo: ConnInfo,
    /// The `application_name` of that session on the upstream.
    pub application_name: String,
}

/// WAL retention settings, in bytes, as configured (`wal_keep_size`, `max_slot_wal_keep_size`;
/// `None` = unlimited). `app` hands them to the store's retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub wal_keep_size: u64,
    pub max_slot_wal_keep_size: Option<u64>,
}

/// The relay's configuration, merged and validated.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub upstream: ConnInfo,
    pub slot: Option<String>,
    pub listen: SocketAddr,
    pub http: SocketAddr,
    pub data_dir: PathBuf,
    pub failover_standbys: Vec<String>,
    /// What a failover standby that cannot be placed (not connected, no slot, never seen)
    /// does to serving (needs a restart to change).
    pub failover_standby_missing: MissingPolicy,
    /// `application_name` the relay uses upstream (from the conninfo, else `walrelay`).
    pub application_name: String,
    pub retention: Retention,
    /// Bytes of recent WAL kept in memory for walsenders (`wal_tail_size`; 0: none, every
    /// read goes to the segment files). A reload applies a new value at once.
    pub wal_tail_size: usize,
    /// Limits on downstream connections.
    pub limits: Limits,
    /// Relay-side replication slots that may exist at once (needs a restart to change, as in
    /// PostgreSQL).
    pub max_replication_slots: usize,
    pub access: AccessFiles,
    pub log_format: LogFormat,
    /// `log_filter` as configured (flag, env or file); `None`: `RUST_LOG`, else `info`.
    pub log_filter: Option<String>,
}

impl RelayConfig {
    /// The log filter in force: `log_filter` as configured, else `RUST_LOG`, else `info`.
    pub fn effective_log_filter(&self) -> String {
        self.log_filter
            .clone()
            .or_else(|| {
                std::env::var("RUST_LOG")
                    .ok()
                    .filter(|v| !v.trim().is_empty())
            })
            .unwrap_or_else(|| "info".into())
    }
}

/// Limits on downstream connections (`max_connections`, …); `app` hands them to the
/// downstream context, and a reload replaces them there (`reload.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    /// Startup and authentication must finish within this.
    pub authentication_timeout: Duration,
    /// `wal_sender_timeout`; `None` is off.
    pub wal_sender_timeout: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            authentication_timeout: DEFAULT_AUTHENTICATION_TIMEOUT,
            wal_sender_timeout: Some(DEFAULT_WAL_SENDER_TIMEOUT),
        }
    }
}

impl RelayConfig {
    pub fn build(file: FileConfig, over: Overrides) -> anyhow::Result<RelayConfig> {
        let upstream_text = over
            .upstream
            .or(file.upstream)
            .context("no upstream configured: give --upstream CONNINFO (or WALRELAY_UPSTREAM, or `upstream` in the config file)")?;
        let upstream: ConnInfo = upstream_text.parse().context("invalid upstream conninfo")?;
        let slot = over.slot.or(file.slot);
        if let Some(s) = &slot {
            validate_slot_name(s)?;
        }
        let listen = parse_addr(
            "listen",
            over.listen
                .or(file.listen)
                .as_deref()
                .unwrap_or(DEFAULT_LISTEN),
        )?;
        let http = parse_addr(
            "http",
            over.http.or(file.http).as_deref().unwrap_or(DEFAULT_HTTP),
        )?;
        let data_dir = over
            .data_dir
            .or(file.data_dir)
            .context("no data directory configured: give --data-dir DIR")?;
        let failover_standbys = if over.failover_standby.is_empty() {
            file.failover_standby
        } else {
            over.failover_standby
        };
        let failover_standby_missing = match over
            .failover_standby_missing
            .or(file.failover_standby_missing)
        {
            Some(m) => MissingPolicy::parse(&m)?,
            None => MissingPolicy::default(),
        };
        let application_name = upstream
            .application_name
            .clone()
            .unwrap_or_else(|| DEFAULT_APPLICATION_NAME.into());
        let wal_keep_size = match over.wal_keep_size.or(file.wal_keep_size) {
            Some(k) => parse_size(&k)
                .with_context(|| format!("invalid wal_keep_size \"{k}\""))?
                .unwrap_or(0),
            None => DEFAULT_WAL_KEEP_SIZE,
        };
        let max_slot_wal_keep_size =
            match over.max_slot_wal_keep_size.or(file.max_slot_wal_keep_size) {
                Some(m) => parse_size(&m)
                    .with_context(|| format!("invalid max_slot_wal_keep_size \"{m}\""))?,
                None => None,
            };
        let wal_tail_size = match over.wal_tail_size.or(file.wal_tail_size) {
            Some(t) => match parse_size(&t)
                .with_context(|| format!("invalid wal_tail_size \"{t}\""))?
            {
                Some(n) => usize::try_from(n)
                    .with_context(|| format!("invalid wal_tail_size \"{t}\": size out of range"))?,
                None => bail!("invalid wal_tail_size \"{t}\": give a size, or 0 for no tail"),
            },
            None => DEFAULT_WAL_TAIL_SIZE,
        };
        let max_connections = match over.max_connections.or(file.max_connections) {
            Some(0) => bail!("invalid max_connections 0: at least 1 connection is needed"),
            Some(n) => n as usize,
            None => DEFAULT_MAX_CONNECTIONS,
        };
        let max_replication_slots = over
            .max_replication_slots
            .or(file.max_replication_slots)
            .map_or(DEFAULT_MAX_REPLICATION_SLOTS, |n| n as usize);
        let authentication_timeout =
            match over.authentication_timeout.or(file.authentication_timeout) {
                Some(t) => match parse_duration(&t)
                    .with_context(|| format!("invalid authentication_timeout \"{t}\""))?
                {
                    d if d.is_zero() => {
                        bail!("invalid authentication_timeout \"{t}\": it must be more than 0")
                    }
                    d => d,
                },
                None => DEFAULT_AUTHENTICATION_TIMEOUT,
            };
        let wal_sender_timeout = match over.wal_sender_timeout.or(file.wal_sender_timeout) {
            Some(t) => Some(
                parse_duration(&t)
                    .with_context(|| format!("invalid wal_sender_timeout \"{t}\""))?,
            )
            .filter(|d| !d.is_zero()),
            None => Some(DEFAULT_WAL_SENDER_TIMEOUT),
        };
        let limits = Limits {
            max_connections,
            authentication_timeout,
            wal_sender_timeout,
        };
        let set = |p: Option<PathBuf>| p.filter(|p| !p.as_os_str().is_empty());
        let tls = match (
            set(over.tls_cert.or(file.tls_cert)),
            set(over.tls_key.or(file.tls_key)),
        ) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => {
                bail!("--tls-cert is set but --tls-key is not: give both or neither")
            }
            (None, Some(_)) => {
                bail!("--tls-key is set but --tls-cert is not: give both or neither")
            }
        };
        let access = AccessFiles {
            tls,
            hba_file: set(over.hba_file.or(file.hba_file)),
            auth_file: set(over.auth_file.or(file.auth_file)),
            auth_query: match over.auth_query.or(file.auth_query) {
                Some(q) if !q.trim().is_empty() => Some(AuthQuerySource {
                    query: AuthQuery::parse(&q)?,
                    conninfo: upstream.clone(),
                    application_name: format!("{application_name} auth query"),
                }),
                _ => None,
            },
        };
        let log_format = match over.log_format.or(file.log_format) {
            Some(f) => LogFormat::parse(&f)?,
            None => LogFormat::default(),
        };
        let log_filter = over.log_filter.or(file.log_filter);
        if let Some(f) = &log_filter {
            tracing_subscriber::EnvFilter::builder()
                .parse(f)
                .with_context(|| format!("invalid log_filter \"{f}\""))?;
        }
        Ok(RelayConfig {
            upstream,
            slot,
            listen,
            http,
            data_dir,
            failover_standbys,
            failover_standby_missing,
            application_name,
            retention: Retention {
                wal_keep_size,
                max_slot_wal_keep_size,
            },
            wal_tail_size,
            limits,
            max_replication_slots,
            access,
            log_format,
            log_filter,
        })
    }
}

/// Parses a PostgreSQL size setting: `-1` (none), a bare number (megabytes, as for
/// `wal_keep_size`), or a number with `kB`, `MB`, `GB`, `TB`.
pub fn parse_size(s: &str) -> anyhow::Result<Option<u64>> {
    let t = s.trim();
    if t == "-1" {
        return Ok(None);
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .with_context(|| format!("\"{s}\" is not a size"))?;
    let mult: u64 = match unit.trim() {
        "" | "MB" => 1 << 20,
        "kB" => 1 << 10,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        other => {
            bail!("invalid unit \"{other}\": valid units are \"kB\", \"MB\", \"GB\", and \"TB\"")
        }
    };
    n.checked_mul(mult).map(Some).context("size out of range")
}

/// Parses a duration: `0`, or a number with a unit (`60s`, `1m`, `500ms`, `1h 30m`), as
/// humantime reads it.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(t)
        .with_context(|| format!("\"{s}\" is not a duration (e.g. 60s, 1m, 500ms)"))
}

fn parse_addr(what: &str, s: &str) -> anyhow::Result<SocketAddr> {
    s.parse()
        .with_context(|| format!("invalid --{what} address \"{s}\" (expected ADDR:PORT)"))
}

/// PostgreSQL's rule for slot names (ReplicationSlotValidateName), the same one the relay's own
/// slots follow.
pub fn validate_slot_name(name: &str) -> anyhow::Result<()> {
    crate::wal::slot_name::validate(name).map_err(|e| match e.hint() {
        Some(h) => anyhow::anyhow!("{e} ({h})"),
        None => anyhow::anyhow!("{e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file() {
        let file: FileConfig = toml::from_str(
            "upstream = \"host=a port=5432 user=r\"\nslot = \"s1\"\ndata_dir = \"/tmp/x\"\nlisten = \"0.0.0.0:6000\"\n",
        )
        .unwrap();
        let over = Overrides {
            slot: Some("s2".into()),
            ..Default::default()
        };
        let c = RelayConfig::build(file, over).unwrap();
        assert_eq!(c.slot.as_deref(), Some("s2"));
        assert_eq!(c.listen.to_string(), "0.0.0.0:6000");
        assert_eq!(c.http.to_string(), DEFAULT_HTTP);
        assert_eq!(c.application_name, "walrelay");
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.max_replication_slots, DEFAULT_MAX_REPLICATION_SLOTS);
        assert_eq!(c.wal_tail_size, DEFAULT_WAL_TAIL_SIZE);
    }

    #[test]
    fn wal_tail_size_from_file_and_flag() {
        let base = "upstream = \"host=a user=r\"\ndata_dir = \"/tmp/x\"\n";
        let with = |extra: &str, over: Overrides| {
            RelayConfig::build(toml::from_str(&format!("{base}{extra}")).unwrap(), over)
        };
        let c = with("wal_tail_size = \"1GB\"\n", Overrides::default()).unwrap();
        assert_eq!(c.wal_tail_size, 1 << 30);
        let c = with("wal_tail_size = \"16\"\n", Overrides::default()).unwrap();
        assert_eq!(c.wal_tail_size, 16 << 20);
        let over = |v: &str| Overrides {
            wal_tail_size: Some(v.into()),
            ..Default::default()
        };
        let c = with("wal_tail_size = \"1GB\"\n", over("0")).unwrap();
        assert_eq!(c.wal_tail_size, 0);
        let c = with("", over("512kB")).unwrap();
        assert_eq!(c.wal_tail_size, 512 << 10);
        for bad in ["-1", "lots", "1 parsec"] {
            let e = with("", over(bad)).unwrap_err();
            assert!(format!("{e:#}").contains("invalid wal_tail_size"), "{e:#}");
        }
    }

    #[test]
    fn failover_standby_missing_from_file_and_flag() {
        let base = "upstream = \"host=a user=r\"\ndata_dir = \"/tmp/x\"\n";
        let file: FileConfig = toml::from_str(base).unwrap();
        let c = RelayConfig::build(file, Overrides::default()).unwrap();
        assert_eq!(c.failover_standby_missing, MissingPolicy::Hold);
        let file: FileConfig =
            toml::from_str(&format!("{base}failover_standby_missing = \"serve\"\n")).unwrap();
        let c = RelayConfig::build(file.clone(), Overrides::default()).unwrap();
        assert_eq!(c.failover_standby_missing, MissingPolicy::Serve);
        let over = Overrides {
            failover_standby_missing: Some("hold".into()),
            ..Default::default()
        };
        let c = RelayConfig::build(file.clone(), over).unwrap();
        assert_eq!(c.failover_standby_missing, MissingPolicy::Hold);
        let over = Overrides {
            failover_standby_missing: Some("sometimes".into()),
            ..Default::default()
        };
        let e = RelayConfig::build(file, over).unwrap_err();
        assert!(
            format!("{e:#}").contains("invalid failover_standby_missing"),
            "{e:#}"
        );
    }

    #[test]
    fn limits_from_file_and_flags() {
        let base = "upstream = \"host=a user=r\"\ndata_dir = \"/tmp/x\"\n";
        let file: FileConfig = toml::from_str(&format!("{base}max_connections = 5\n")).unwrap();
        let c = RelayConfig::build(file.clone(), Overrides::default()).unwrap();
        assert_eq!(c.limits.max_connections, 5);
        let over = Overrides {
            max_connections: Some(7),
            ..Default::default()
        };
        let c = RelayConfig::build(file, over).unwrap();
        assert_eq!(c.limits.max_connections, 7);
        assert_eq!(c.limits.authentication_timeout, Duration::from_secs(60));
        let file: FileConfig =
            toml::from_str(&format!("{base}authentication_timeout = \"2s\"\n")).unwrap();
        let c = RelayConfig::build(file, Overrides::default()).unwrap();
        assert_eq!(c.limits.authentication_timeout, Duration::from_secs(2));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        let off: FileConfig =
            toml::from_str(&format!("{base}wal_sender_timeout = \"0\"\n")).unwrap();
        let c = RelayConfig::build(off, Overrides::default()).unwrap();
        assert_eq!(c.limits.wal_sender_timeout, None);
        let over = Overrides {
            wal_sender_timeout: Some("5s".into()),
            ..Default::default()
        };
        let c = RelayConfig::build(
            FileConfig {
                upstream: Some("host=a".into()),
                data_dir: Some("/x".into()),
                ..Default::default()
            },
            over,
        )
        .unwrap();
        assert_eq!(c.limits.wal_sender_timeout, Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("60").is_err());
        let zero: FileConfig = toml::from_str(&format!("{base}max_connections = 0\n")).unwrap();
        assert!(RelayConfig::build(zero, Overrides::default()).is_err());
    }

    #[test]
    fn rejects_typos_and_bad_values() {
        assert!(toml::from_str::<FileConfig>("upstrem = \"x\"").is_err());
        assert!(validate_slot_name("Bad-Name").is_err());
        assert!(validate_slot_name("walrelay_eu1").is_ok());
        assert_eq!(parse_size("1GB").unwrap(), Some(1 << 30));
        assert_eq!(parse_size("64").unwrap(), Some(64 << 20));
        assert_eq!(parse_size("-1").unwrap(), None);
        assert!(parse_size("1 parsec").is_err());
        let no_upstream = RelayConfig::build(FileConfig::default(), Overrides::default());
        assert!(no_upstream.is_err());
        let base = "upstream = \"host=a user=r\"\ndata_dir = \"/tmp/x\"\n";
        let with = |extra: &str| {
            RelayConfig::build(
                toml::from_str(&format!("{base}{extra}")).unwrap(),
                Overrides::default(),
            )
        };
        assert!(with("log_format = \"xml\"\n").is_err());
        assert!(with("log_filter = \"walrelay=verbose\"\n").is_err());
        let c = with("log_format = \"json\"\nlog_filter = \"walrelay=debug,info\"\n").unwrap();
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.effective_log_filter(), "walrelay=debug,info");
    }

    #[test]
    fn access_files_tls_pair_and_empty_paths() {
        let file: FileConfig = toml::from_str(
            "upstream = \"host=a\"\ndata_dir = \"/d\"\ntls_cert = \"/c.crt\"\ntls_key = \"\"\nhba_file = \"/h\"\nauth_file = \"\"\n",
        )
        .unwrap();
        let e = RelayConfig::build(file.clone(), Overrides::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--tls-cert is set but --tls-key is not: give both or neither"
        );
        let over = Overrides {
            tls_key: Some("/k.key".into()),
            ..Default::default()
        };
        let c = RelayConfig::build(file, over).unwrap();
        assert_eq!(
            c.access,
            AccessFiles {
                tls: Some(("/c.crt".into(), "/k.key".into())),
                hba_file: Some("/h".into()),
                auth_file: None,
                auth_query: None,
            }
        );
    }

    #[test]
    fn auth_query_needs_the_placeholder_and_runs_with_the_upstream_conninfo() {
        let base = "upstream = \"host=a user=r application_name=eu1\"\ndata_dir = \"/d\"\n";
        let with = |extra: &str, over: Overrides| {
            RelayConfig::build(toml::from_str(&format!("{base}{extra}")).unwrap(), over)
        };
        let e = with("auth_query = \"SELECT 1, 2\"\n", Overrides::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid auth_query: it must contain $1 where the user name goes"
        );
        let c = with("auth_query = \"\"\n", Overrides::default()).unwrap();
        assert_eq!(c.access.auth_query, None);
        let over = Overrides {
            auth_query: Some("SELECT usename, passwd FROM pg_shadow WHERE usename=$1".into()),
            ..Default::default()
        };
        let c = with("auth_query = \"SELECT 1, 2\"\n", over).unwrap();
        let q = c.access.auth_query.unwrap();
        assert_eq!(
            q.query.sql(),
            "SELECT usename, passwd FROM pg_shadow WHERE usename=$1"
        );
        assert_eq!(q.conninfo, c.upstream);
        assert_eq!(q.application_name, "eu1 auth query");
    }
}
