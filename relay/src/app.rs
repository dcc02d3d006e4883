//! `walrelay run`: builds the components, starts them under one shutdown tree (a root
//! cancellation token and a task tracker), and waits for a signal.
//!
//! Startup order: lock and recover the store, bind the listeners (so a port conflict fails
//! fast), start the writer thread, the upstream supervisor, the downstream listener and the HTTP
//! endpoint, and the systemd task that sends READY=1 once the upstream streams (`service.rs`).
//! Shutdown: cancel, let tasks end, drop the writer's last
//! sender so it fsyncs and saves its state. Durability never depends on this path: a `kill -9`
//! is recovered from at the next start.

use std::sync::Arc;

use anyhow::Context as _;
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, Instrument};

use crate::config::RelayConfig;
use crate::downstream;
use crate::failover::{FailoverStatus, FailoverWatcher};
use crate::http::{self, HttpState};
use crate::lag::Registry;
use crate::logging::LogHandle;
use crate::reload::{ConfigSource, Reloader};
use crate::service;
use crate::store::retention::{self, RetentionConfig};
use crate::store::{writer, Store};
use crate::upstream::backfill::Backfiller;
use crate::upstream::{self, UpstreamConfig, UpstreamState};

pub async fn run(
    cfg: RelayConfig,
    source: ConfigSource,
    log: Option<LogHandle>,
) -> anyhow::Result<()> {
    // Before anything else: SIGHUP's default action ends the process.
    let signals = Signals::install();
    let prometheus = PrometheusBuilder::new()
        .install_recorder()
        .context("install metrics recorder")?;
    describe_metrics();
    let access = downstream::auth::Access::load(&cfg.access)?;

    let store = Store::open(&cfg.data_dir)
        .with_context(|| format!("open data directory {}", cfg.data_dir.display()))?;
    store
        .slots()
        .set_max(cfg.max_replication_slots)
        .with_context(|| format!("open data directory {}", cfg.data_dir.display()))?;
    store.set_tail_capacity(cfg.wal_tail_size);
    let durable = store.durable();
    info!(data_dir = %cfg.data_dir.display(), timeline = durable.timeline, flushed = %durable.lsn, "store opened");

    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("listen on {}", cfg.listen))?;
    let http_listener = TcpListener::bind(cfg.http)
        .await
        .with_context(|| format!("listen for HTTP on {}", cfg.http))?;
    info!(listen = %cfg.listen, http = %cfg.http, "listening");

    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let registry = Arc::new(Registry::default());
    let upstream_state = Arc::new(UpstreamState::default());

    let (writer_handle, writer_thread) = writer::spawn(store.clone());
    let accept_beat = Arc::new(service::Heartbeat::default());
    if let Some(interval) = service::watchdog_interval() {
        tracker.spawn(service::watchdog(
            interval,
            writer_handle.clone(),
            accept_beat.clone(),
            cancel.clone(),
        ));
    }
    tracker.spawn(upstream::supervise(
        upstream::session::Upstream {
            cfg: UpstreamConfig {
                conninfo: cfg.upstream.clone(),
                slot: cfg.slot.clone(),
                application_name: cfg.application_name.clone(),
            },
            store: store.clone(),
            writer: writer_handle,
            feedback: registry.clone(),
            status: upstream_state.clone(),
        },
        cancel.clone(),
    ));
    service::notify_status("connecting to upstream");
    let failover_status = Arc::new(std::sync::Mutex::new(FailoverStatus::default()));
    // The candidates' names, which a reload may change (within a non-empty set: see reload.rs).
    let mut failover_names = None;
    if !cfg.failover_standbys.is_empty() {
        info!(standbys = ?cfg.failover_standbys, "failover-safe serving enabled");
        let (names_tx, names_rx) = tokio::sync::watch::channel(cfg.failover_standbys.clone());
        failover_names = Some(names_tx);
        tracker.spawn(
            FailoverWatcher {
                conninfo: cfg.upstream.clone(),
                names: names_rx,
                application_name: format!("{} failover watcher", cfg.application_name),
                missing_policy: cfg.failover_standby_missing,
                store: store.clone(),
                upstream: upstream_state.clone(),
                status: failover_status.clone(),
            }
            .run(cancel.clone()),
        );
    }
    let ctx = Arc::new(
        downstream::Context::new(store.clone(), registry.clone(), cancel.clone())
            .with_access(access)
            .with_limits(cfg.limits)
            .with_backfill(Arc::new(Backfiller::new(
                cfg.upstream.clone(),
                format!("{} backfill", cfg.application_name),
                store.clone(),
            ))),
    );
    tracker.spawn(
        downstream::serve(listener, ctx.clone(), tracker.clone(), accept_beat)
            .instrument(tracing::info_span!("listener", listen = %cfg.listen)),
    );
    tracker.spawn(service::readiness(
        upstream_state.clone(),
        (!cfg.failover_standbys.is_empty()).then(|| failover_status.clone()),
        cancel.clone(),
    ));
    tracker.spawn(
        http::serve(
            http_listener,
            Arc::new(HttpState {
                store: store.clone(),
                registry,
                upstream: upstream_state,
                prometheus,
                failover: (!cfg.failover_standbys.is_empty()).then_some(failover_status),
            }),
            cancel.clone(),
        )
        .instrument(tracing::info_span!("http", listen = %cfg.http)),
    );

    let (retention_tx, retention_rx) = tokio::sync::watch::channel(cfg.retention);
    tracker.spawn(
        retention_task(store.clone(), retention_rx, cancel.clone())
            .instrument(tracing::info_span!("retention")),
    );

    let mut reloader = Reloader {
        source,
        running: cfg,
        retention: retention_tx,
        log: log.map(Arc::new),
        downstream: Some(ctx),
        failover: failover_names,
    };
    signals.wait(|| reloader.reload()).await;
    info!("shutting down");
    service::notify_stopping();
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
    // All writer handles are gone with the upstream task: the writer syncs and exits.
    let _ = tokio::task::spawn_blocking(move || writer_thread.join()).await;
    store.slots().save_dirty();
    info!(flushed = %store.durable().lsn, "stopped");
    Ok(())
}

/// Removes WAL no slot and no `wal_keep_size` needs, every few seconds, and at once when a
/// reload changes the settings.
async fn retention_task(
    store: Arc<Store>,
    mut settings: tokio::sync::watch::Receiver<crate::config::Retention>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            r = settings.changed() => if r.is_err() { return },
            _ = cancel.cancelled() => return,
        }
        let r = *settings.borrow_and_update();
        let cfg = RetentionConfig {
            wal_keep_size: r.wal_keep_size,
            max_slot_wal_keep_size: r.max_slot_wal_keep_size,
        };
        let s = store.clone();
        match tokio::task::spawn_blocking(move || retention::apply(&s, cfg)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("WAL retention failed: {e}"),
            Err(e) => tracing::warn!("WAL retention task failed: {e}"),
        }
    }
}

fn describe_metrics() {
    metrics::describe_histogram!(
        "walrelay_wal_fsync_seconds",
        metrics::Unit::Seconds,
        "Time each fsync of a WAL segment file took (a summary over the last minute)."
    );
    metrics::describe_counter!(
        "walrelay_wal_received_bytes_total",
        metrics::Unit::Bytes,
        "WAL bytes received from upstream."
    );
    metrics::describe_counter!(
        "walrelay_wal_sent_bytes_total",
        metrics::Unit::Bytes,
        "WAL bytes sent to downstreams."
    );
    metrics::describe_counter!(
        "walrelay_upstream_reconnects_total",
        "Upstream reconnect attempts."
    );
    metrics::describe_counter!(
        "walrelay_divergences_total",
        "Times the relay found its own WAL past a new timeline's fork point and moved it aside."
    );
    metrics::describe_counter!(
        "walrelay_diverged_wal_bytes_total",
        metrics::Unit::Bytes,
        "WAL bytes moved aside (to diverged/) because they lay past a fork point."
    );
    metrics::describe_counter!(
        "walrelay_failover_queries_total",
        "Statements the --failover-standby watcher sent to the primary (one pushing reading block counts once, however long it runs)."
    );
    metrics::describe_counter!(
        "walrelay_downstream_timeouts_total",
        "Walsenders ended by wal_sender_timeout (a replica not heard from, or not reading)."
    );
    metrics::describe_counter!(
        "walrelay_downstream_divergences_total",
        "Downstream sessions ended because the downstream had received WAL past a fork point."
    );
    metrics::describe_counter!(
        "walrelay_wal_invalid_total",
        "WAL from upstream that failed validation (page header, record header or CRC-32C); each one restarts the upstream session from the last valid record."
    );
    metrics::describe_counter!(
        "walrelay_wal_damaged_reads_total",
        "Walsender reads that found stored WAL damaged on disk and stopped before it."
    );
    metrics::describe_counter!(
        "walrelay_wal_cache_read_bytes_total",
        metrics::Unit::Bytes,
        "Bytes of stored WAL read from segment files into the shared segment cache (walsenders behind the in-memory tail share them)."
    );
    metrics::describe_counter!(
        "walrelay_recovery_torn_bytes_total",
        metrics::Unit::Bytes,
        "Bytes after the last valid record of the segment being written, set aside at start."
    );
    // Registered at zero so dashboards see the series before the first byte flows, and so
    // increase() sees the first divergence (a series born at 1 shows no increase).
    for name in [
        "walrelay_wal_received_bytes_total",
        "walrelay_wal_sent_bytes_total",
        "walrelay_upstream_reconnects_total",
        "walrelay_divergences_total",
        "walrelay_diverged_wal_bytes_total",
        "walrelay_downstream_divergences_total",
        "walrelay_wal_invalid_total",
        "walrelay_wal_damaged_reads_total",
        "walrelay_wal_cache_read_bytes_total",
        "walrelay_recovery_torn_bytes_total",
        "walrelay_downstream_timeouts_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    // The same for the fsync summary (exported with a count of 0 until the first fsync).
    let _ = metrics::histogram!("walrelay_wal_fsync_seconds");
}

/// SIGTERM / Ctrl-C end the relay; SIGHUP reloads. Installed first thing in [`run`].
struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn install() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate())
            .map_err(|e| tracing::error!("cannot install SIGTERM handler: {e}"))
            .ok();
        let hup = signal(SignalKind::hangup())
            .map_err(|e| tracing::error!("cannot install SIGHUP handler: {e}"))
            .ok();
        Signals { term, hup }
    }

    /// Returns at SIGTERM or Ctrl-C; runs `on_hup` at each SIGHUP meanwhile.
    async fn wait(mut self, mut on_hup: impl FnMut()) {
        loop {
            tokio::select! {
                _ = recv(&mut self.term) => return,
                _ = tokio::signal::ctrl_c() => return,
                _ = recv(&mut self.hup) => on_hup(),
            }
        }
    }
}

/// The next signal of `s`; never, without a handler (or once its stream ended).
async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
    match s {
        Some(sig) => {
            if sig.recv().await.is_none() {
                *s = None;
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}
