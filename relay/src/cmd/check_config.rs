//! `walrelay check-config --config FILE`: loads the file and builds the relay's configuration
//! from it exactly as `walrelay run --config FILE` would with no flags or env overrides, so
//! "valid" here means `run` gets past its configuration, including loading the downstream
//! access files it names (`hba_file`, `auth_file`, the TLS pair).
//!
//! The verdict goes to stderr (stdout stays empty), like `run`'s own diagnostics.

use std::path::Path;

use crate::config::{FileConfig, Overrides, RelayConfig};

/// Validates `config`; on success reports it on stderr.
pub fn run(config: &Path) -> anyhow::Result<()> {
    let file = FileConfig::load(config)?;
    let cfg = RelayConfig::build(file, Overrides::default())?;
    crate::downstream::auth::Access::load(&cfg.access)?;
    eprintln!("{}: configuration is valid", config.display());
    Ok(())
}
