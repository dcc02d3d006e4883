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
                configure_socket(&socket);
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

/// TCP keepalive on accepted sockets: first probe after this much silence.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// Then one probe every this long…
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// …and the peer is dead after this many unanswered probes: a host that vanished is noticed
/// about two minutes after it last spoke, whatever the session was doing.
const KEEPALIVE_RETRIES: u32 = 6;

/// No Nagle delay (replies and keepalives are small and must go at once) and TCP keepalives.
fn configure_socket(socket: &tokio::net::TcpStream) {
    let _ = socket.set_nodelay(true);
    let ka = socket2::TcpKeepalive::new().with_time(KEEPALIVE_IDLE);
    #[cfg(any(target_os = "linux", target_os = "macos", target_os = "freebsd"))]
    let ka = ka
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    if let Err(e) = socket2::SockRef::from(socket).set_tcp_keepalive(&ka) {
        tracing::debug!("could not set TCP keepalive on a downstream socket: {e}");
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
