//! GET from the relay's HTTP port, through the relay's own HTTP client
//! (`walrelay::cmd::status::client`, the one `walrelay status` uses), so the tests and the
//! operator command read `/healthz`, `/readyz`, `/status` and `/metrics` the same way.

use std::io;
use std::time::Duration;

use walrelay::cmd::status::client::get_blocking;

/// GET `path` from 127.0.0.1:`port`; returns (status code, body). One 30 s deadline covers
/// connecting and the whole answer. Not for use inside a Tokio runtime.
pub fn get(port: u16, path: &str) -> io::Result<(u16, String)> {
    let r = get_blocking(&format!("127.0.0.1:{port}"), path, Duration::from_secs(30))
        .map_err(io::Error::other)?;
    Ok((r.status, String::from_utf8_lossy(&r.body).into_owned()))
}
