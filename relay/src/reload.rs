//! SIGHUP: re-read the config file, apply what can change while the relay runs, and say what
//! changed and what needs a restart.
//!
//! The file is merged with the flags and `WALRELAY_*` env the relay started with (they still
//! win), and validated as at startup: a file that does not parse or validate is reported and
//! the running settings stay. Each setting applied is logged as `reloaded: NAME changed from
//! OLD to NEW`. Applied in place:
//!
//! - `log_filter`: the logger's reload layer.
//! - `wal_keep_size`, `max_slot_wal_keep_size`: the retention task's watch; a pass runs at once.
//! - `wal_tail_size`: the store's in-memory tail takes the new size at once (a smaller one
//!   drops its oldest chunks; walsenders then read those bytes from the segment files).
//! - the downstream access files (`hba_file`, `auth_file`, the `tls_cert`/`tls_key` pair):
//!   re-read for new connections while established ones keep streaming; a bad access file is
//!   reported and the running rules stay. `auth_query` with them: a changed query applies to
//!   the next lookup (the verifiers cached with the old one are dropped; the same query keeps
//!   its cache); it keeps running over the upstream conninfo in force.
//! - the limits ([`downstream::Context::set_limits`]): `authentication_timeout` and
//!   `max_connections` for connections that arrive from then on; `max_connections` lowered
//!   below the connections in progress ends none of them (new ones are refused until fewer
//!   remain); `wal_sender_timeout` for new walsenders and the running ones alike, as
//!   PostgreSQL's walsenders take a reloaded `wal_sender_timeout`.
//! - `failover_standby` within a non-empty set: the failover watcher reads the new set at
//!   once (a removed candidate stops holding, an added one holds once it is seen on the
//!   primary). Turning failover-safe serving on or off (an empty set to a non-empty one, or
//!   back) needs a restart: it is a different way of serving, settled before the first byte
//!   (the relay holds everything until the candidates are first read, readiness and `/status`
//!   depend on it), and WAL already served beyond the candidates cannot be taken back from the
//!   downstreams, so switching it on in flight would promise what it cannot keep.
//!
//! Everything else (`upstream`, `slot`, `listen`, `http`, `data_dir`, `log_format`,
//! `failover_standby_missing`, and
//! `failover_standby` turned on or off) is logged as needing a restart and keeps its running
//! value, so a later reload reports it again until the relay restarts.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::{FileConfig, Limits, Overrides, RelayConfig, Retention};
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
    /// Where new downstream connections take their access rules and limits, and walsenders
    /// their `wal_sender_timeout`; `None` in unit tests.
    pub downstream: Option<Arc<downstream::Context>>,
    /// The failover watcher's candidates; `None` when the relay runs without them.
    pub failover: Option<watch::Sender<Vec<String>>>,
}

/// A size the way the config file writes it.
fn size(n: u64) -> String {
    for (unit, shift) in [("TB", 40), ("GB", 30), ("MB", 20), ("kB", 10)] {
        if n != 0 && n.is_multiple_of(1u64 << shift) {
            return format!("{}{unit}", n >> shift);
        }
    }
    if n == 0 {
        return "0".into();
    }
    format!("{n} bytes")
}

fn max_size(n: Option<u64>) -> String {
    n.map(size).unwrap_or_else(|| "-1".into())
}

/// A duration the way PostgreSQL shows a time setting: in the largest unit that holds it
/// whole (`500ms`, `5s`, `1min`, `1h`), which the config file reads back.
fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0".into();
    }
    for (unit, n) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("min", 60_000),
        ("s", 1000),
    ] {
        if ms.is_multiple_of(n) {
            return format!("{}{unit}", ms / n);
        }
    }
    format!("{ms}ms")
}

/// `wal_sender_timeout`: `0` is off.
fn timeout(d: Option<Duration>) -> String {
    d.map(duration).unwrap_or_else(|| "0".into())
}

/// A list of standby names, as the log shows it: `[ha1, ha2]`.
fn names(list: &[String]) -> String {
    format!("[{}]", list.join(", "))
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
            // `auth_query` runs over the upstream conninfo in force: a changed `upstream` needs
            // a restart, for the lookups as for streaming.
            let mut files = new.access.clone();
            if let Some(q) = &mut files.auth_query {
                q.conninfo = self.running.upstream.clone();
                q.application_name = format!("{} auth query", self.running.application_name);
            }
            let query_changed = files.auth_query != self.running.access.auth_query;
            // Always re-read: the files may have changed under the same paths.
            match ctx.access().reload(&files) {
                Ok(access) => {
                    applied += 1;
                    ctx.set_access(access);
                    if query_changed {
                        let shown = |q: &Option<crate::config::AuthQuerySource>| {
                            q.as_ref()
                                .map_or_else(|| "(none)".to_string(), |q| q.query.sql().to_string())
                        };
                        let (old, new) = (
                            shown(&self.running.access.auth_query),
                            shown(&files.auth_query),
                        );
                        tracing::info!(
                            setting = "auth_query",
                            old = %old,
                            new = %new,
                            "reloaded: auth_query changed from \"{old}\" to \"{new}\"; verifiers \
                             looked up with the old one are forgotten"
                        );
                    }
                    self.running.access = files;
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
        if new.wal_tail_size != self.running.wal_tail_size {
            let (o, n) = (
                size(self.running.wal_tail_size as u64),
                size(new.wal_tail_size as u64),
            );
            // (No context only in unit tests: there is no store to tell.)
            if let Some(ctx) = &self.downstream {
                ctx.store.set_tail_capacity(new.wal_tail_size);
            }
            applied += 1;
            self.running.wal_tail_size = new.wal_tail_size;
            tracing::info!(
                setting = "wal_tail_size",
                old = %o,
                new = %n,
                "reloaded: wal_tail_size changed from {o} to {n}"
            );
        }
        applied += self.reload_limits(new.limits);
        let mut failover_restart = false;
        if new.failover_standbys != self.running.failover_standbys {
            let (old, list) = (&self.running.failover_standbys, &new.failover_standbys);
            match &self.failover {
                Some(tx) if !list.is_empty() => {
                    applied += 1;
                    tracing::info!(
                        setting = "failover_standby",
                        old = %names(old),
                        new = %names(list),
                        "reloaded: failover_standby changed from {} to {}",
                        names(old),
                        names(list)
                    );
                    tx.send_replace(list.clone());
                    self.running.failover_standbys = list.clone();
                }
                _ => {
                    failover_restart = true;
                    tracing::warn!(
                        setting = "failover_standby",
                        old = %names(old),
                        new = %names(list),
                        "failover_standby changed from {} to {}: turning failover-safe serving {} \
                         needs a restart (WAL already served past the candidates cannot be \
                         taken back); the running value stays",
                        names(old),
                        names(list),
                        if old.is_empty() { "on" } else { "off" }
                    );
                }
            }
        }
        let run = &self.running;
        let restart: Vec<&str> = [
            ("upstream", new.upstream != run.upstream),
            ("slot", new.slot != run.slot),
            ("listen", new.listen != run.listen),
            ("http", new.http != run.http),
            ("data_dir", new.data_dir != run.data_dir),
            ("failover_standby", failover_restart),
            (
                "failover_standby_missing",
                new.failover_standby_missing != run.failover_standby_missing,
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

    /// Applies changed limits to the downstream context; 1 when they changed, else 0.
    fn reload_limits(&mut self, l: Limits) -> usize {
        let old = self.running.limits;
        if l == old {
            return 0;
        }
        if l.max_connections != old.max_connections {
            tracing::info!(
                setting = "max_connections",
                old = old.max_connections,
                new = l.max_connections,
                "reloaded: max_connections changed from {} to {}",
                old.max_connections,
                l.max_connections
            );
        }
        if l.authentication_timeout != old.authentication_timeout {
            let (o, n) = (
                duration(old.authentication_timeout),
                duration(l.authentication_timeout),
            );
            tracing::info!(
                setting = "authentication_timeout",
                old = %o,
                new = %n,
                "reloaded: authentication_timeout changed from {o} to {n}"
            );
        }
        if l.wal_sender_timeout != old.wal_sender_timeout {
            let (o, n) = (
                timeout(old.wal_sender_timeout),
                timeout(l.wal_sender_timeout),
            );
            tracing::info!(
                setting = "wal_sender_timeout",
                old = %o,
                new = %n,
                "reloaded: wal_sender_timeout changed from {o} to {n}"
            );
        }
        self.running.limits = l;
        if let Some(ctx) = &self.downstream {
            ctx.set_limits(l);
            let in_use = ctx.connections_in_use();
            if in_use > l.max_connections {
                // The limit is checked when a connection arrives: ending sessions in progress
                // for it would drop replicas that are streaming.
                tracing::warn!(
                    max_connections = l.max_connections,
                    connections = in_use,
                    "max_connections {} is below the {in_use} downstream connections in \
                     progress: they stay, and new connections are refused until fewer than {} \
                     remain",
                    l.max_connections,
                    l.max_connections
                );
            }
        }
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::downstream::context::Admission;

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
            failover: None,
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
        assert_eq!(size(0), "0");
        assert_eq!(max_size(None), "-1");
    }

    /// A reloader over a config file in `dir` that starts as `text`, with a downstream context
    /// and, when the file names some, the failover watcher's candidates.
    fn reloader(dir: &std::path::Path, text: &str) -> (Reloader, Arc<downstream::Context>) {
        let source = ConfigSource {
            path: Some(write(dir, text)),
            overrides: Overrides::default(),
        };
        let running = source.load().unwrap();
        let store = crate::store::Store::open(&dir.join("data")).unwrap();
        let ctx = Arc::new(
            downstream::Context::new(
                store,
                Arc::new(crate::lag::Registry::default()),
                tokio_util::sync::CancellationToken::new(),
            )
            .with_limits(running.limits),
        );
        let failover = (!running.failover_standbys.is_empty())
            .then(|| watch::Sender::new(running.failover_standbys.clone()));
        let (retention, _) = watch::channel(running.retention);
        let r = Reloader {
            source,
            running,
            retention,
            log: None,
            downstream: Some(ctx.clone()),
            failover,
        };
        (r, ctx)
    }

    const BASE: &str = "upstream = \"host=a user=r\"\ndata_dir = \"/tmp/x\"\n";

    #[test]
    fn applies_the_limits_to_new_connections_and_walsenders() {
        let dir = tempfile::tempdir().unwrap();
        let (mut r, ctx) = reloader(
            dir.path(),
            &format!("{BASE}max_connections = 2\nwal_sender_timeout = \"1h\"\n"),
        );
        let mut walsender = ctx.subscribe_limits();
        let held: Vec<_> = (0..2)
            .map(|_| match ctx.admit() {
                Admission::Session(p) => p,
                _ => panic!("a session within max_connections 2 was not let in"),
            })
            .collect();
        assert!(matches!(ctx.admit(), Admission::Refuse(_)));

        write(
            dir.path(),
            &format!(
                "{BASE}max_connections = 1\nwal_sender_timeout = \"2s\"\n\
                 authentication_timeout = \"500ms\"\n"
            ),
        );
        r.reload();
        let want = Limits {
            max_connections: 1,
            authentication_timeout: Duration::from_millis(500),
            wal_sender_timeout: Some(Duration::from_secs(2)),
        };
        assert_eq!(ctx.limits(), want);
        assert_eq!(r.running.limits, want);
        // A running walsender is told.
        assert!(walsender.has_changed().unwrap());
        assert_eq!(
            walsender.borrow_and_update().wal_sender_timeout,
            Some(Duration::from_secs(2))
        );
        // Below the sessions in progress: they stay, new ones wait for the count to fall
        // under the new limit.
        assert_eq!(ctx.connections_in_use(), 2);
        let mut held = held;
        held.pop();
        assert!(!matches!(ctx.admit(), Admission::Session(_)));
        held.pop();
        assert_eq!(ctx.connections_in_use(), 0);
        assert!(matches!(ctx.admit(), Admission::Session(_)));

        // Off, and back to the default.
        write(dir.path(), &format!("{BASE}wal_sender_timeout = \"0\"\n"));
        r.reload();
        assert_eq!(ctx.limits().wal_sender_timeout, None);
        assert_eq!(
            ctx.limits(),
            Limits {
                wal_sender_timeout: None,
                ..Limits::default()
            }
        );
        // A bad value: nothing changes.
        write(dir.path(), &format!("{BASE}max_connections = 0\n"));
        r.reload();
        assert_eq!(
            ctx.limits().max_connections,
            Limits::default().max_connections
        );
    }

    #[test]
    fn failover_standbys_change_within_a_set_and_on_or_off_waits_for_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (mut r, _) = reloader(dir.path(), &format!("{BASE}failover_standby = [\"ha1\"]\n"));
        let Some(tx) = r.failover.clone() else {
            panic!("no failover watcher for a set of one")
        };
        let mut watcher = tx.subscribe();
        write(
            dir.path(),
            &format!("{BASE}failover_standby = [\"ha1\", \"ha2\"]\n"),
        );
        r.reload();
        assert!(watcher.has_changed().unwrap());
        assert_eq!(*watcher.borrow_and_update(), ["ha1", "ha2"]);
        assert_eq!(r.running.failover_standbys, ["ha1", "ha2"]);
        write(dir.path(), &format!("{BASE}failover_standby = [\"ha2\"]\n"));
        r.reload();
        assert_eq!(*watcher.borrow_and_update(), ["ha2"]);
        // Off: needs a restart, the watcher keeps its set.
        write(dir.path(), BASE);
        r.reload();
        assert!(!watcher.has_changed().unwrap());
        assert_eq!(r.running.failover_standbys, ["ha2"]);

        // On, from none: needs a restart too.
        let dir = tempfile::tempdir().unwrap();
        let (mut r, _) = reloader(dir.path(), BASE);
        assert!(r.failover.is_none());
        write(dir.path(), &format!("{BASE}failover_standby = [\"ha1\"]\n"));
        r.reload();
        assert!(r.running.failover_standbys.is_empty());
    }

    #[test]
    fn applies_the_tail_size_to_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let (mut r, ctx) = reloader(dir.path(), &format!("{BASE}wal_tail_size = \"64MB\"\n"));
        ctx.store.set_tail_capacity(r.running.wal_tail_size);
        assert_eq!(ctx.store.tail_usage(), (64 << 20, 0));
        write(dir.path(), &format!("{BASE}wal_tail_size = \"1MB\"\n"));
        r.reload();
        assert_eq!(ctx.store.tail_usage(), (1 << 20, 0));
        assert_eq!(r.running.wal_tail_size, 1 << 20);
        write(dir.path(), &format!("{BASE}wal_tail_size = \"0\"\n"));
        r.reload();
        assert_eq!(ctx.store.tail_usage(), (0, 0));
        // A bad value: the running size stays.
        write(dir.path(), &format!("{BASE}wal_tail_size = \"-1\"\n"));
        r.reload();
        assert_eq!(ctx.store.tail_usage(), (0, 0));
        assert_eq!(r.running.wal_tail_size, 0);
    }

    #[test]
    fn durations_read_as_postgresql_shows_them() {
        assert_eq!(duration(Duration::from_secs(60)), "1min");
        assert_eq!(duration(Duration::from_secs(5)), "5s");
        assert_eq!(duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(duration(Duration::from_secs(3600)), "1h");
        assert_eq!(timeout(None), "0");
        assert_eq!(names(&["ha1".into(), "ha2".into()]), "[ha1, ha2]");
        assert_eq!(names(&[]), "[]");
    }
}
