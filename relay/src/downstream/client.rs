//! Who is on the other end of a downstream session, and as which server the relay answers it:
//! what the startup phase learned, read by the command loop, the commands and the walsender.

use std::net::SocketAddr;

use crate::store::Identity;

/// What the command loop and walsender know about the client.
pub struct Client {
    pub pid: i32,
    pub peer: SocketAddr,
    pub user: String,
    pub application_name: String,
    /// The cluster the relay serves, as it was when the session started.
    pub identity: Identity,
}

impl Client {
    /// The major version the relay answers as (its upstream's): some replies differ by major.
    pub fn server_major(&self) -> u32 {
        server_major(&self.identity.server_version)
    }
}

/// The major version number of a `server_version` string (`15.18 (Debian …)` → 15).
pub fn server_major(version: &str) -> u32 {
    server_version_num(version) / 10000
}

/// `server_version_num` from a `server_version` string, as libpq's PQserverVersion computes it
/// for 10+: major × 10000 + minor (`15.18 (Debian …)` → 150018).
pub fn server_version_num(version: &str) -> u32 {
    let mut parts = version
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    major.saturating_mul(10000).saturating_add(minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(server_major("15.18 (Debian 15.18-0+deb12u1)"), 15);
        assert_eq!(server_major("18beta1"), 18);
        assert_eq!(server_version_num("15.18 (Debian 15.18-0+deb12u1)"), 150018);
    }
}
