//! The command line: subcommands and `run` flags. Each `run` flag is also read from
//! `WALRELAY_<NAME>` env by clap; the config file is merged in [`crate::config`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "walrelay",
    version,
    about = "PostgreSQL WAL cascading-replication relay"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay daemon.
    Run(Box<RunArgs>),
    /// Read a password on stdin and print its SCRAM-SHA-256 verifier (pg_authid.rolpassword
    /// format), for the relay's downstream users.
    Passwd {
        /// The user name: print one --auth-file line (`"name" "SCRAM-SHA-256$…"`).
        #[arg(long)]
        user: Option<String>,
    },
    /// Per-replica lag table (or JSON) read from a running relay's /status.
    Status(crate::cmd::status::StatusArgs),
    /// Validate a config file and exit.
    CheckConfig {
        #[arg(long, env = "WALRELAY_CONFIG")]
        config: PathBuf,
    },
    /// Check every stored segment and history file (page headers, record CRC-32C,
    /// continuity); exit 0 clean, 1 damage found.
    Verify {
        /// The relay's data directory (or a plain directory of WAL files).
        #[arg(long)]
        data_dir: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// TOML config file.
    #[arg(long, env = "WALRELAY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Upstream conninfo (libpq key=value or postgresql:// URI; several hosts allowed).
    #[arg(long, env = "WALRELAY_UPSTREAM")]
    pub upstream: Option<String>,
    /// Physical replication slot on the upstream (created when missing).
    #[arg(long, env = "WALRELAY_SLOT")]
    pub slot: Option<String>,
    /// Where downstream replicas connect [default: 127.0.0.1:5433].
    #[arg(long, env = "WALRELAY_LISTEN")]
    pub listen: Option<String>,
    /// HTTP endpoint for /metrics, /status, /healthz, /readyz [default: 127.0.0.1:9433].
    #[arg(long, env = "WALRELAY_HTTP")]
    pub http: Option<String>,
    /// Directory for WAL segments, history files and relay state.
    #[arg(long, env = "WALRELAY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// HA failover candidate whose confirmed flush bounds what is served (repeatable).
    #[arg(
        long = "failover-standby",
        env = "WALRELAY_FAILOVER_STANDBY",
        value_delimiter = ','
    )]
    pub failover_standby: Vec<String>,
    /// A failover standby neither connected, nor with a slot, nor seen before: hold or serve
    /// [default: hold].
    #[arg(long, env = "WALRELAY_FAILOVER_STANDBY_MISSING")]
    pub failover_standby_missing: Option<String>,
    /// WAL kept behind the newest, whatever the slots (PostgreSQL units) [default: 1GB].
    #[arg(long, env = "WALRELAY_WAL_KEEP_SIZE")]
    pub wal_keep_size: Option<String>,
    /// Most WAL a relay-side slot may hold back; -1 = unlimited [default: -1].
    #[arg(
        long,
        env = "WALRELAY_MAX_SLOT_WAL_KEEP_SIZE",
        allow_hyphen_values = true
    )]
    pub max_slot_wal_keep_size: Option<String>,
    /// Recent WAL kept in memory for replicas that keep up (PostgreSQL units); 0 = none, every
    /// read from the segment files [default: 64MB]. Re-read on SIGHUP.
    #[arg(long, env = "WALRELAY_WAL_TAIL_SIZE")]
    pub wal_tail_size: Option<String>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "WALRELAY_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Which log lines are written, RUST_LOG syntax (e.g. walrelay=debug,info) [default:
    /// RUST_LOG, else info]. The config file's value is re-read on SIGHUP.
    #[arg(long, env = "WALRELAY_LOG_FILTER")]
    pub log_filter: Option<String>,
    /// PEM certificate (chain, leaf first) for downstream TLS; needs --tls-key.
    #[arg(long, env = "WALRELAY_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (mode 0600, or 0640 owned by root).
    #[arg(long, env = "WALRELAY_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Downstream rules in pg_hba.conf syntax [default: loopback trusted, others refused].
    #[arg(long, env = "WALRELAY_HBA_FILE")]
    pub hba_file: Option<PathBuf>,
    /// Downstream users and SCRAM verifiers, PgBouncer userlist.txt format.
    #[arg(long, env = "WALRELAY_AUTH_FILE")]
    pub auth_file: Option<PathBuf>,
    /// SQL run on the upstream (over the upstream conninfo, as a SQL session) for a user not in
    /// --auth-file, `$1` the user name, returning (name, SCRAM verifier), as PgBouncer's
    /// auth_query; e.g. `SELECT rolname, rolpassword FROM pg_authid WHERE rolname=$1`.
    #[arg(long, env = "WALRELAY_AUTH_QUERY")]
    pub auth_query: Option<String>,
    /// Most downstream connections at once; past it `53300 sorry, too many clients already`
    /// [default: 100].
    #[arg(long, env = "WALRELAY_MAX_CONNECTIONS")]
    pub max_connections: Option<u32>,
    /// Most replication slots on the relay (persistent and temporary); past it
    /// `53400 all replication slots are in use`; 0 = no slots [default: 10].
    #[arg(long, env = "WALRELAY_MAX_REPLICATION_SLOTS")]
    pub max_replication_slots: Option<u32>,
    /// Time a client has to finish its startup and authentication before it is closed
    /// (`90s`, `1m`, `500ms`) [default: 60s].
    #[arg(long, env = "WALRELAY_AUTHENTICATION_TIMEOUT")]
    pub authentication_timeout: Option<String>,
    /// A replica not heard from for this long, or that stops reading for this long, is dropped;
    /// 0 = off [default: 60s].
    #[arg(long, env = "WALRELAY_WAL_SENDER_TIMEOUT")]
    pub wal_sender_timeout: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }
}
