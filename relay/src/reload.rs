//! SIGHUP: re-read the config file, apply what can change while the relay runs, and say what
//! changed and what needs a restart.
//!
//! The file is merged with the flags and `WALRELAY_*` env the relay started with (they still
//! win), and validated as at startup: a file that does not parse or validate is reported and
//! the running settings stay. Applied in place: `log_filter` (the logger's reload layer) and
//! the retention settings `wal_keep_size` and `max_slot_wal_keep_size` (the retention task's
//! watch; a pass runs at once), and the downstream access files (`hba_file`, `auth_file`, the
//! `tls_cert`/`tls_key` pair) re-read for new connections while established ones keep
//! streaming; a bad access file is reported and the running rules stay. Everything else (`upstream`, `slot`, `listen`, `http`,
//! `data_dir`, `failover_standby`, `log_format`) is logged as needing a restart and keeps its
//! running value, so a later reload reports it again until the relay restarts.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::{FileConfig, Overrides, RelayConfig, Retention};
use crate::downstream;
use crate::logging::LogHandle;

/// Where the configuration came from, kept to build it again.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// `--config`, if any.
    pub path: Option<PathBuf>,
    /// The flags and env as read at startup.
    pub overrides: Overrides,
}

impl ConfigSource {
    pub fn load(&self) -> anyhow::Result<RelayConfig> {
        let file = match &self.path {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::default(),
        };
        RelayConfig::build(file, self.overrides.clone())
    }
}

/// What a reload can reach.
pub struct Reloader {
    pub source: ConfigSource,
    /// The settings in force.
    pub running: RelayConfig,
    pub retention: watch::Sender<Retention>,
    /// `None` when the logger is not this crate's (e.g. in tests).
    pub log: Option<Arc<LogHandle>>,
    /// Where new downstream connections take their access rules; `None` in unit tests.
    pub downstream: Option<Arc<downstream::Context>>,
}

/// A size the way the config file writes it.
fn size(n: u64) -> String {
    for (unit, shift) in [("TB", 40), ("GB", 30), ("MB", 20), ("kB", 10)] {
        if n != 0 && n.is_multiple_of(1u64 << shift) {
            return format!("{}{unit}", n >> shift);
        }
    }
    format!("{n} bytes")
}

fn max_size(n: Option<u64>) -> String {
    n.map(size).unwrap_or_else(|| "-1".into())
}

impl Reloader {
    /// Handles one SIGHUP.
    pub fn reload(&mut self) {
        // Without --config the flags and env cannot change, but the files they name can: the
        // access files are re-read all the same, as PostgreSQL re-reads pg_hba.conf.
        match &self.source.path {
            Some(path) => {
                tracing::info!(config = %path.display(), "SIGHUP: re-reading the configuration")
            }
            None => tracing::info!(
                "SIGHUP: no config file (--config); re-reading the files the flags name"
            ),
        }
        let new = match self.source.load() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("configuration not reloaded, the running settings stay: {e:#}");
                return;
            }
        };
        let mut applied = 0;
        let old_filter = self.running.effective_log_filter();
        let new_filter = new.effective_log_filter();
        if new_filter != old_filter {
            match &self.log {
                Some(log) => match log.set_filter(&new_filter) {
                    Ok(()) => {
                        applied += 1;
                        self.running.log_filter = new.log_filter.clone();
                        tracing::info!(
                            setting = "log_filter",
                            old = %old_filter,
                            new = %new_filter,
                            "reloaded: log_filter changed from \"{old_filter}\" to \"{new_filter}\""
                        );
                    }
                    Err(e) => tracing::error!("log_filter not changed: {e:#}"),
                },
                None => tracing::warn!("log_filter changed, but this logger cannot reload"),
            }
        }
        if let Some(ctx) = &self.downstream {
            // Always re-read: the files may have changed under the same paths.
            match ctx.access().reload(&new.access) {
                Ok(access) => {
                    applied += 1;
                    ctx.set_access(access);
                    self.running.access = new.access.clone();
                    tracing::info!(
                        "reloaded: downstream access rules (hba_file, auth_file, TLS certificate) \
                         re-read; new connections use them"
                    );
                }
                Err(e) => tracing::error!(
                    "downstream access files not reloaded, the running rules stay: {e:#}"
                ),
            }
        }
        let (old, r) = (self.running.retention, new.retention);
        if r.wal_keep_size != old.wal_keep_size {
            tracing::info!(
                setting = "wal_keep_size",
                old = %size(old.wal_keep_size),
                new = %size(r.wal_keep_size),
                "reloaded: wal_keep_size changed from {} to {}",
                size(old.wal_keep_size),
                size(r.wal_keep_size)
            );
        }
        if r.max_slot_wal_keep_size != old.max_slot_wal_keep_size {
            tracing::info!(
                setting = "max_slot_wal_keep_size",
                old = %max_size(old.max_slot_wal_keep_size),
                new = %max_size(r.max_slot_wal_keep_size),
                "reloaded: max_slot_wal_keep_size changed from {} to {}",
                max_size(old.max_slot_wal_keep_size),
                max_size(r.max_slot_wal_keep_size)
            );
        }
        if r != old {
            applied += 1;
            self.running.retention = r;
            self.retention.send_replace(r);
        }
        let run = &self.running;
        let restart: Vec<&str> = [
            ("upstream", new.upstream != run.upstream),
            ("slot", new.slot != run.slot),
            ("listen", new.listen != run.listen),
            ("http", new.http != run.http),
            ("data_dir", new.data_dir != run.data_dir),
            (
                "failover_standby",
                new.failover_standbys != run.failover_standbys,
            ),
            ("log_format", new.log_format != run.log_format),
            (
                "max_replication_slots",
                new.max_replication_slots != run.max_replication_slots,
            ),
        ]
        .into_iter()
        .filter_map(|(name, changed)| changed.then_some(name))
        .collect();
        if !restart.is_empty() {
            tracing::warn!(
                settings = ?restart,
                "changed settings that need a restart to apply (the running values stay): {}",
                restart.join(", ")
            );
        }
        if applied == 0 && restart.is_empty() {
            tracing::info!("configuration reloaded: nothing changed");
        } else {
            tracing::info!(
                applied,
                needs_restart = restart.len(),
                "configuration reloaded"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &std::path::Path, text: &str) -> PathBuf {
        let p = dir.join("relay.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn applies_retention_keeps_the_rest_and_survives_a_bad_file() {
        let dir = tempfile::tempdir().unwrap();
        let base = "upstream = \"host=a user=r\"\ndata_dir = \"/tmp/x\"\n";
        let path = write(dir.path(), &format!("{base}wal_keep_size = \"1GB\"\n"));
        let source = ConfigSource {
            path: Some(path.clone()),
            overrides: Overrides::default(),
        };
        let running = source.load().unwrap();
        let (tx, rx) = watch::channel(running.retention);
        let mut r = Reloader {
            source,
            running,
            retention: tx,
            log: None,
            downstream: None,
        };
        write(
            dir.path(),
            &format!("{base}wal_keep_size = \"64MB\"\nlisten = \"127.0.0.1:7000\"\n"),
        );
        r.reload();
        assert_eq!(rx.borrow().wal_keep_size, 64 << 20);
        assert_eq!(r.running.retention.wal_keep_size, 64 << 20);
        // listen needs a restart: the running value stays.
        assert_eq!(r.running.listen.to_string(), "127.0.0.1:5433");
        write(dir.path(), "wal_keep_size = \"lots\"\n");
        r.reload();
        assert_eq!(rx.borrow().wal_keep_size, 64 << 20);
        assert_eq!(size(1 << 30), "1GB");
        assert_eq!(size(0), "0 bytes");
        assert_eq!(max_size(None), "-1");
    }
}
