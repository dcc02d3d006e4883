//! `walrelay`: parses the command line, sets up logging, runs the subcommand.

use std::process::ExitCode;

use clap::Parser;
use walrelay::cli::{Cli, Command};
use walrelay::config::{FileConfig, Overrides, RelayConfig};

fn init_logging(format: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs go to stderr without timestamps or colours when journald captures them.
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    if format == "json" {
        b.json().init();
    } else if journald {
        b.without_time().init();
    } else {
        b.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            init_logging(&args.log_format);
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
                wal_keep_size: args.wal_keep_size,
                max_slot_wal_keep_size: args.max_slot_wal_keep_size,
                tls_cert: args.tls_cert,
                tls_key: args.tls_key,
                hba_file: args.hba_file,
                auth_file: args.auth_file,
            };
            let cfg = match RelayConfig::build(file, over) {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return fail(e.into()),
            };
            match rt.block_on(walrelay::app::run(cfg)) {
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
