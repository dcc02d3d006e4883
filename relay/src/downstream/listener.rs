//! The accept loop: one task per downstream connection, tracked so that shutdown waits for
//! every session to end.
//!
//! A failed accept (EMFILE and friends) is logged and retried after a pause; it never ends the
//! loop, which stops only when the relay is cancelled.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use super::context::{Admission, Context};
use super::error::too_many_clients;
use super::session;

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
                match ctx.admit() {
                    Admission::Session(permit) => {
                        tracker.spawn(session::run(ctx.clone(), socket, peer, permit));
                    }
                    Admission::Refuse(permit) => {
                        tracker.spawn(session::refuse(ctx.clone(), socket, peer, permit));
                    }
                    Admission::RefuseNow => refuse_now(&socket, peer),
                }
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("could not accept downstream connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Past `max_connections` with as many refusals already in progress: the error goes out at
/// once, unread startup packet or not (as the postmaster's report_fork_failure_to_client), in
/// one non-blocking write, and the socket closes.
fn refuse_now(socket: &tokio::net::TcpStream, peer: std::net::SocketAddr) {
    let mut buf = bytes::BytesMut::new();
    too_many_clients().encode(&mut buf);
    let _ = socket.try_write(&buf);
    tracing::debug!(%peer, "refused downstream connection: too many clients");
}
