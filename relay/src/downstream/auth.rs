//! Authentication of downstream clients: the room the access work (hba rules, SCRAM, TLS-only
//! rules) fills.
//!
//! Today there is one rule: with no rules configured, loopback clients are trusted and
//! everyone else is refused, in pg_hba.conf's words. The decision is taken after the startup
//! packet and before the relay says anything about its own state (a refused client never
//! learns whether the relay has reached its upstream), as PostgreSQL does.

use std::net::{IpAddr, SocketAddr};

use super::error::SessionEnd;
use crate::proto::error::{sqlstate, PgError};

/// Decides whether `user` from `peer` may connect. `Err` is the FATAL the client gets.
pub fn authenticate(peer: SocketAddr, user: &str) -> Result<(), SessionEnd> {
    if is_loopback(&peer) {
        return Ok(());
    }
    Err(SessionEnd::Fatal(PgError::fatal(
        sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
        format!(
            "no pg_hba.conf entry for replication connection from host \"{}\", user \"{}\", no encryption",
            peer.ip(),
            user
        ),
    )))
}

/// Whether a peer address is loopback (trusted when no auth rules are configured).
pub fn is_loopback(addr: &SocketAddr) -> bool {
    match addr.ip() {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_trusted_others_refused() {
        assert!(authenticate("127.0.0.1:5000".parse().unwrap(), "u").is_ok());
        assert!(authenticate("[::1]:5000".parse().unwrap(), "u").is_ok());
        assert!(authenticate("[::ffff:127.0.0.1]:5000".parse().unwrap(), "u").is_ok());
        match authenticate("10.1.2.3:5000".parse().unwrap(), "rep") {
            Err(SessionEnd::Fatal(e)) => {
                assert_eq!(e.code, "28000");
                assert_eq!(
                    e.message,
                    "no pg_hba.conf entry for replication connection from host \"10.1.2.3\", user \"rep\", no encryption"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
