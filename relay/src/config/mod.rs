//! Configuration: the `run` flags, the TOML file, `WALRELAY_*` env, and the upstream conninfo.
//!
//! Precedence: flag > env (clap reads `WALRELAY_<NAME>` for each flag) > file > default. The
//! merged, validated [`RelayConfig`] is what the rest of the relay sees; nothing else reads
//! flags, env or files.

pub mod conninfo;
pub mod pgpass;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;

use conninfo::ConnInfo;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:5433";
pub const DEFAULT_HTTP: &str = "127.0.0.1:9433";
pub const DEFAULT_APPLICATION_NAME: &str = "walrelay";
/// Unlike PostgreSQL (0), a relay keeps some WAL by default: buffering for replicas that
/// reconnect is its job.
pub const DEFAULT_WAL_KEEP_SIZE: u64 = 1 << 30;

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
    pub log_format: Option<String>,
    /// PostgreSQL-style size (`1GB`, `512MB`; a bare number is megabytes).
    pub wal_keep_size: Option<String>,
    /// PostgreSQL-style size, or `-1` for unlimited.
    pub max_slot_wal_keep_size: Option<String>,
    /// Downstream TLS certificate (PEM); an empty string is unset.
    pub tls_cert: Option<PathBuf>,
    /// Downstream TLS private key (PEM); an empty string is unset.
    pub tls_key: Option<PathBuf>,
    /// Downstream pg_hba.conf-syntax rules; an empty string is unset.
    pub hba_file: Option<PathBuf>,
    /// Downstream users and SCRAM verifiers; an empty string is unset.
    pub auth_file: Option<PathBuf>,
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
    pub wal_keep_size: Option<String>,
    pub max_slot_wal_keep_size: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub hba_file: Option<PathBuf>,
    pub auth_file: Option<PathBuf>,
    pub log_format: Option<String>,
    pub log_filter: Option<String>,
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
    /// `application_name` the relay uses upstream (from the conninfo, else `walrelay`).
    pub application_name: String,
    pub retention: Retention,
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
            application_name,
            retention: Retention {
                wal_keep_size,
                max_slot_wal_keep_size,
            },
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
            }
        );
    }
}
