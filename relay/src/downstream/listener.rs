//! The accept loop: one task per downstream connection, tracked so that shutdown waits for
//! every session to end.
//!
//! A failed accept (EMFILE and friends) is logged and retried after a pause; it never ends the
//! loop, which stops only when the relay is cancelled.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use super::context::Context;
use super::session;
use crate::service::Heartbeat;

/// Accepts downstream connections until cancelled. Answers `beat`'s probes (the systemd
/// watchdog's) between accepts, so a loop stuck anywhere stops the pings.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<Context>,
    tracker: TaskTracker,
    beat: Arc<Heartbeat>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = beat.probed() => {
                beat.beat();
                continue;
            }
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
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
