//! The downstream side: a walsender for standbys, pg_receivewal and other relays.
//!
//! ```text
//!  listener ──accept──▶ session (startup, auth, command loop) ──START_REPLICATION──▶ walsender
//!                                                                   ▲        │ 'w' / 'k'
//!                         store (durable watch, tail, segments) ────┘        ▼
//!                                                    registry ◀── replies ('r', 'h') task
//! ```
//!
//! Each connection is one task in a tracing span with `pid` and `peer` (and `application_name`,
//! `user` once known). A bad client ends its own connection only: every error path ends in
//! a PostgreSQL ErrorResponse or a closed socket for that client, never in a panic or a stall
//! of others.

pub mod commands;
pub mod error;
pub mod session;
pub mod walsender;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::lag::Registry;
use crate::store::Store;

/// What every downstream session shares.
pub struct Context {
    pub store: Arc<Store>,
    pub registry: Arc<Registry>,
    pub cancel: CancellationToken,
    next_pid: AtomicI32,
}

impl Context {
    pub fn new(store: Arc<Store>, registry: Arc<Registry>, cancel: CancellationToken) -> Self {
        // Start pids away from 0 and from small numbers, so that temp slot names
        // (`pg_walreceiver_<pid>`) look like PostgreSQL's and never collide after a restart
        // within the same second.
        let seed = (std::process::id() as i32 & 0x7FFF) << 12;
        Context {
            store,
            registry,
            cancel,
            next_pid: AtomicI32::new(seed.max(1000)),
        }
    }

    /// A distinct, non-zero pid for BackendKeyData.
    pub fn next_pid(&self) -> i32 {
        let p = self.next_pid.fetch_add(1, Ordering::Relaxed);
        if p <= 0 {
            self.next_pid.store(1000, Ordering::Relaxed);
            1000
        } else {
            p
        }
    }
}

/// Accepts downstream connections until cancelled.
pub async fn serve(listener: TcpListener, ctx: Arc<Context>, tracker: TaskTracker) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = ctx.cancel.cancelled() => break,
        };
        match accepted {
            Ok((socket, peer)) => {
                let _ = socket.set_nodelay(true);
                let ctx = ctx.clone();
                tracker.spawn(session::run(ctx, socket, peer));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("could not accept downstream connection: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// Whether a peer address is loopback (trusted when no auth rules are configured).
pub fn is_loopback(addr: &SocketAddr) -> bool {
    match addr.ip() {
        std::net::IpAddr::V4(v4) => v4.is_loopback(),
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}
