//! `walrelay`: parses the command line, sets up logging, runs the subcommand.

use std::process::ExitCode;

use clap::Parser;
use walrelay::cli::{Cli, Command};
use walrelay::config::{FileConfig, Overrides, RelayConfig};
use walrelay::reload::ConfigSource;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            let file = match &args.config {
                Some(p) => match FileConfig::load(p) {
                    Ok(f) => f,
                    Err(e) => return fail(e),
                },
                None => FileConfig::default(),
            };
            let over = Overrides {
                upstream: args.upstream,
                slot: args.slot,
                listen: args.listen,
                http: args.http,
                data_dir: args.data_dir,
                failover_standby: args.failover_standby,
                failover_standby_missing: args.failover_standby_missing,
                wal_keep_size: args.wal_keep_size,
                max_slot_wal_keep_size: args.max_slot_wal_keep_size,
                wal_tail_size: args.wal_tail_size,
                max_connections: args.max_connections,
                max_replication_slots: args.max_replication_slots,
                authentication_timeout: args.authentication_timeout,
                wal_sender_timeout: args.wal_sender_timeout,
                tls_cert: args.tls_cert,
                tls_key: args.tls_key,
                hba_file: args.hba_file,
                auth_file: args.auth_file,
                auth_query: args.auth_query,
                log_format: args.log_format,
                log_filter: args.log_filter,
            };
            let source = ConfigSource {
                path: args.config.clone(),
                overrides: over.clone(),
            };
            let cfg = match RelayConfig::build(file, over) {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            // Configuration errors above go to stderr as they are; from here on, the logger.
            let log = match walrelay::logging::init(cfg.log_format, &cfg.effective_log_filter()) {
                Ok(l) => l,
                Err(e) => return fail(e),
            };
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return fail(e.into()),
            };
            match rt.block_on(walrelay::app::run(cfg, source, Some(log))) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
        Command::Passwd { user } => match walrelay::cmd::passwd::run(user.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        },
        Command::Status(args) => walrelay::cmd::status::run(args),
        Command::CheckConfig { config } => match walrelay::cmd::check_config::run(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        },
        Command::Verify { data_dir } => match walrelay::cmd::verify::run(&data_dir) {
            Ok(report) => report.finish(),
            Err(e) => {
                eprintln!("walrelay verify: error: {e:#}");
                ExitCode::from(2)
            }
        },
    }
}

fn fail(e: anyhow::Error) -> ExitCode {
    eprintln!("walrelay: error: {e:#}");
    ExitCode::FAILURE
}
