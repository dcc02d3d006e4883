//! The operator's HTTP endpoint: `/healthz` (process alive), `/readyz` (streaming from upstream
//! and serving), `/status` (JSON), `/metrics` (Prometheus text).

pub mod metrics;
pub mod status;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::lag::Registry;
use crate::store::usage::{DiskSpace, WalUsage};
use crate::store::Store;
use crate::upstream::UpstreamState;

/// What the endpoints read.
pub struct HttpState {
    pub store: Arc<Store>,
    pub registry: Arc<Registry>,
    pub upstream: Arc<UpstreamState>,
    pub prometheus: PrometheusHandle,
    /// Present when `--failover-standby` is set.
    pub failover: Option<Arc<std::sync::Mutex<crate::failover::FailoverStatus>>>,
}

impl HttpState {
    pub fn failover_status(&self) -> Option<crate::failover::FailoverStatus> {
        self.failover
            .as_ref()
            .map(|f| f.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

pub async fn serve(listener: TcpListener, state: Arc<HttpState>, cancel: CancellationToken) {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status_json))
        .route("/metrics", get(metrics_text))
        .with_state(state);
    let r = axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await;
    if let Err(e) = r {
        tracing::error!("HTTP server failed: {e}");
    }
}

async fn readyz(State(s): State<Arc<HttpState>>) -> impl IntoResponse {
    let up = s.upstream.get();
    let health = s.store.health().borrow().clone();
    if let Some(e) = health.error {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: WAL ingest stopped: {e}\n"),
        );
    }
    if !up.connected {
        let why = up.last_error.unwrap_or_else(|| "not connected".into());
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: upstream: {why}\n"),
        );
    }
    (StatusCode::OK, "ready\n".to_string())
}

/// What the store takes on disk, measured for one response (see [`crate::store::usage`]); a
/// figure that could not be read is `None` (and logged), the rest of the response stands.
#[derive(Debug, Clone, Copy, Default)]
pub struct Disk {
    pub wal: Option<WalUsage>,
    pub space: Option<DiskSpace>,
}

/// Reads [`Disk`] off the async threads: listing `wal/` and `statvfs` block.
async fn disk(s: &Arc<HttpState>) -> Disk {
    let store = s.store.clone();
    let measured = tokio::task::spawn_blocking(move || {
        let wal = store
            .wal_usage()
            .map_err(|e| tracing::warn!("could not measure {}: {e}", store.wal_dir().display()))
            .ok();
        let space = store
            .disk_space()
            .map_err(|e| {
                tracing::warn!(
                    "could not read free space of {}: {e}",
                    store.data_dir().display()
                )
            })
            .ok();
        Disk { wal, space }
    })
    .await;
    measured.unwrap_or_else(|e| {
        tracing::warn!("measuring the data directory failed: {e}");
        Disk::default()
    })
}

async fn status_json(State(s): State<Arc<HttpState>>) -> impl IntoResponse {
    let disk = disk(&s).await;
    Json(status::build(&s, &disk))
}

async fn metrics_text(State(s): State<Arc<HttpState>>) -> impl IntoResponse {
    let disk = disk(&s).await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::render(&s, &disk),
    )
}
