//! Test harness for the acceptance tests: real PostgreSQL clusters ([`pg`]), the walrelay
//! binary ([`relay`]), pg_receivewal ([`receivewal`]), the usual set-ups of them in one
//! expression ([`topology`]), the rows they carry ([`workload`]), crash tools ([`crash`]), a
//! raw protocol client ([`wire`]), a tiny HTTP client ([`http`]), test certificates ([`tls`])
//! and the OS plumbing under them all ([`os`]). `docs/testing.md` is the guide.
//!
//! Every running thing is a guard: dropping it stops its processes (also when the test panics),
//! and a failing test prints the tail of each guard's log. Waits poll with a generous timeout
//! ([`WAIT`]) and fail with what they last saw; no test asserts on timing.

pub mod crash;
pub mod http;
pub mod os;
pub mod pg;
pub mod receivewal;
pub mod relay;
pub mod tls;
pub mod topology;
pub mod wire;
pub mod workload;

use std::fmt::Display;
use std::thread;
use std::time::{Duration, Instant};

use walrelay::wal::segment::{parse_wal_file_name, WalFileName};
use walrelay::wal::Lsn;

pub use pg::PgCluster;
pub use receivewal::ReceiveWal;
pub use relay::Relay;
pub use topology::Topology;

/// PostgreSQL's default `wal_segment_size`, which the harness's clusters use.
pub const SEG_SIZE: u64 = 16 << 20;

/// How long any wait on the system under test may take. Generous on purpose: a loaded 2-core
/// CI machine must never fail a correct relay.
pub const WAIT: Duration = Duration::from_secs(60);

/// Polls `probe` until it returns `Ok`, for up to [`WAIT`]. On timeout panics naming `what`
/// and the last observation `probe` returned as `Err`.
pub fn wait_until<T, E: Display>(what: &str, mut probe: impl FnMut() -> Result<T, E>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        match probe() {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {WAIT:?} waiting for {what}; last saw: {last}")
            }
            Err(_) => thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Parses an `X/X` LSN printed by PostgreSQL or the relay, panicking with `what` when it is not one.
pub fn lsn(what: &str, text: &str) -> Lsn {
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{what}: expected an LSN, got {text:?}: {e}"))
}

/// The LSN right after `marker` in `text` (e.g. "damaged at " → "0/5003028"), up to the first
/// character that cannot be part of an LSN.
pub fn lsn_after(text: &str, marker: &str) -> Option<Lsn> {
    let at = text.find(marker)? + marker.len();
    let rest = text.get(at..)?;
    let end = rest
        .find(|c: char| !(c.is_ascii_hexdigit() || c == '/'))
        .unwrap_or(rest.len());
    rest.get(..end)?.parse().ok()
}

/// The LSN where the segment of this file name starts (a `.partial` suffix is fine).
pub fn segment_start(name: &str) -> Lsn {
    match parse_wal_file_name(name, SEG_SIZE) {
        Some(WalFileName::Segment { segno, .. }) => Lsn(segno * SEG_SIZE),
        other => panic!("{name} is not a segment file name ({other:?})"),
    }
}
