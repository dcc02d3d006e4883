//! The CopyBoth stream of one connection: XLogData payloads are counted and skipped without
//! being buffered (only the 30-byte header of each `w` message is looked at), keepalives that
//! ask for it are answered at once, and a standby status update with write = flush = apply =
//! the end of what was received goes out every status interval, so the consumer never holds
//! the server back. One fixed read buffer per connection; nothing is allocated per message.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::lsn::Lsn;
use crate::pg::{protocol, Error, Result};

/// The read buffer: room for two of PostgreSQL's largest XLogData messages (128 KiB each).
const BUF: usize = 256 << 10;
/// `d` + length + `w` + dataStart + walEnd + sendTime.
const XLOGDATA_HEADER: usize = 1 + 4 + 1 + 8 + 8 + 8;
/// Seconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_UNIX_SECS: u64 = 946_684_800;

/// When a connection has what it came for.
#[derive(Clone, Copy, Debug)]
pub enum Goal {
    /// Received WAL up to (at least) this position.
    Until(Lsn),
    /// Received this many bytes of WAL.
    Bytes(u64),
    /// Streamed for this long.
    For(Duration),
    /// Nothing to receive: reached as soon as streaming starts (to hold idle connections).
    Streaming,
}

/// Counters shared with the main task.
#[derive(Default)]
pub struct Progress {
    /// Connections that got their CopyBothResponse (or failed before it).
    pub streaming: AtomicUsize,
    /// Connections that reached their goal or failed.
    pub finished: AtomicUsize,
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub bytes: u64,
    pub messages: u64,
    pub keepalives: u64,
    pub reply_requests: u64,
    pub status_updates: u64,
    pub end: Lsn,
    /// When START_REPLICATION was sent.
    pub started: Option<Instant>,
    /// When the goal was reached.
    pub reached: Option<Instant>,
    pub error: Option<String>,
}

pub struct Plan {
    pub start: Lsn,
    pub goal: Goal,
    pub status_interval: Duration,
    pub deadline: Instant,
    /// Keep the connection (idle, still acknowledging) after the goal until this turns true.
    pub linger: Option<watch::Receiver<bool>>,
}

/// Counts one event, once, whatever happens.
struct Once<'a>(&'a AtomicUsize, bool);

impl Once<'_> {
    fn hit(&mut self) {
        if !self.1 {
            self.1 = true;
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Once<'_> {
    fn drop(&mut self) {
        self.hit();
    }
}

/// Runs START_REPLICATION on an identified connection and streams until the plan is done.
pub async fn run(
    conn: crate::pg::Conn,
    timeline: u32,
    plan: Plan,
    progress: Arc<Progress>,
) -> Outcome {
    let mut out = Outcome {
        end: plan.start,
        started: Some(Instant::now()),
        ..Outcome::default()
    };
    let mut streaming = Once(&progress.streaming, false);
    let mut finished = Once(&progress.finished, false);
    let result = match conn.start_replication(plan.start, timeline).await {
        Ok((sock, leftover)) => {
            streaming.hit();
            stream(sock, leftover, &plan, &mut out, &mut finished).await
        }
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        out.error = Some(e.to_string());
    }
    out
}

struct Parser {
    /// Payload bytes of the current message still to be skipped.
    skip: usize,
    reply_now: bool,
}

impl Parser {
    /// Consumes whole messages (and skipped payload) from `buf`; returns the bytes consumed.
    fn feed(&mut self, buf: &[u8], out: &mut Outcome) -> Result<usize> {
        let mut at = 0;
        loop {
            if self.skip > 0 {
                let k = self.skip.min(buf.len() - at);
                self.skip -= k;
                at += k;
                if self.skip > 0 {
                    return Ok(at);
                }
            }
            let rest = &buf[at..];
            if rest.len() < 5 {
                return Ok(at);
            }
            let len = be32(&rest[1..5]) as usize;
            if len < 4 {
                return Err(protocol(format!("message length {len}")));
            }
            match rest[0] {
                b'd' => {
                    if rest.len() < 6 {
                        return Ok(at);
                    }
                    match rest[5] {
                        b'w' => {
                            if rest.len() < XLOGDATA_HEADER {
                                return Ok(at);
                            }
                            let payload = len
                                .checked_sub(XLOGDATA_HEADER - 1)
                                .ok_or_else(|| protocol(format!("XLogData of length {len}")))?;
                            let start = be64(&rest[6..14]);
                            out.end = Lsn(start + payload as u64);
                            out.bytes += payload as u64;
                            out.messages += 1;
                            at += XLOGDATA_HEADER;
                            self.skip = payload;
                        }
                        b'k' => {
                            if len != 4 + 18 {
                                return Err(protocol(format!("keepalive of length {len}")));
                            }
                            if rest.len() < 1 + len {
                                return Ok(at);
                            }
                            out.keepalives += 1;
                            if rest[1 + len - 1] != 0 {
                                out.reply_requests += 1;
                                self.reply_now = true;
                            }
                            at += 1 + len;
                        }
                        t => {
                            return Err(protocol(format!(
                                "unexpected CopyData message type {:?}",
                                t as char
                            )))
                        }
                    }
                }
                b'E' => {
                    if 1 + len > BUF {
                        return Err(protocol(format!("ErrorResponse of length {len}")));
                    }
                    if rest.len() < 1 + len {
                        return Ok(at);
                    }
                    return Err(error_response(&rest[5..1 + len]));
                }
                b'c' => {
                    return Err(protocol(format!(
                        "the server ended the stream (CopyDone) at {}",
                        out.end
                    )))
                }
                // NoticeResponse, ParameterStatus: skipped unread.
                b'N' | b'S' => self.skip = 1 + len,
                t => {
                    return Err(protocol(format!(
                        "unexpected message type {:?} while streaming",
                        t as char
                    )))
                }
            }
        }
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// The fields of an ErrorResponse body: type byte, NUL-terminated text, ..., NUL.
fn error_response(mut body: &[u8]) -> Error {
    let (mut code, mut message) = (String::new(), String::new());
    while let [t, rest @ ..] = body {
        if *t == 0 {
            break;
        }
        let Some(nul) = rest.iter().position(|&b| b == 0) else {
            break;
        };
        let value = String::from_utf8_lossy(&rest[..nul]).into_owned();
        match t {
            b'C' => code = value,
            b'M' => message = value,
            _ => {}
        }
        body = &rest[nul + 1..];
    }
    Error::Server(code, message)
}

/// A standby status update: write = flush = apply = `pos`, no reply requested.
fn status_update(pos: Lsn) -> [u8; 39] {
    let mut m = [0u8; 39];
    m[0] = b'd';
    m[1..5].copy_from_slice(&38u32.to_be_bytes());
    m[5] = b'r';
    for i in 0..3 {
        m[6 + 8 * i..14 + 8 * i].copy_from_slice(&pos.0.to_be_bytes());
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as i64
        - (PG_EPOCH_UNIX_SECS * 1_000_000) as i64;
    m[30..38].copy_from_slice(&now.to_be_bytes());
    m
}

async fn send_status(sock: &mut TcpStream, out: &mut Outcome) -> Result<()> {
    sock.write_all(&status_update(out.end)).await?;
    out.status_updates += 1;
    Ok(())
}

fn reached(goal: Goal, out: &Outcome, started: Instant) -> bool {
    match goal {
        Goal::Until(lsn) => out.end >= lsn,
        Goal::Bytes(n) => out.bytes >= n,
        Goal::For(d) => started.elapsed() >= d,
        Goal::Streaming => true,
    }
}

async fn stream(
    mut sock: TcpStream,
    leftover: BytesMut,
    plan: &Plan,
    out: &mut Outcome,
    finished: &mut Once<'_>,
) -> Result<()> {
    let started = out.started.unwrap_or_else(Instant::now);
    let mut buf = vec![0u8; BUF.max(leftover.len())].into_boxed_slice();
    let (mut lo, mut hi) = (0, leftover.len());
    buf[..hi].copy_from_slice(&leftover);
    drop(leftover);
    let mut parser = Parser {
        skip: 0,
        reply_now: false,
    };
    let mut linger = plan.linger.clone();
    let mut tick = tokio::time::interval(plan.status_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first acknowledgement at once, as a walreceiver sends one after CopyBothResponse.
    send_status(&mut sock, out).await?;
    tick.reset();
    loop {
        lo += parser.feed(&buf[lo..hi], out)?;
        if parser.reply_now {
            parser.reply_now = false;
            send_status(&mut sock, out).await?;
        }
        if out.reached.is_none() && reached(plan.goal, out, started) {
            out.reached = Some(Instant::now());
            send_status(&mut sock, out).await?;
            finished.hit();
        }
        if out.reached.is_some() && linger.as_ref().is_none_or(|l| *l.borrow()) {
            break;
        }
        if lo == hi {
            (lo, hi) = (0, 0);
        } else if hi == buf.len() {
            buf.copy_within(lo..hi, 0);
            (lo, hi) = (0, hi - lo);
        }
        tokio::select! {
            r = sock.read(&mut buf[hi..]) => {
                let n = r?;
                if n == 0 {
                    return Err(protocol(format!("the server closed the connection at {}", out.end)));
                }
                hi += n;
            }
            _ = tick.tick() => send_status(&mut sock, out).await?,
            _ = tokio::time::sleep_until(plan.deadline.into()) => {
                return Err(protocol(format!("timed out at {} after {} bytes", out.end, out.bytes)));
            }
            r = async {
                match linger.as_mut() {
                    Some(l) => l.changed().await,
                    None => std::future::pending().await,
                }
            } => {
                if r.is_err() {
                    linger = None;
                }
            }
        }
    }
    // Terminate, as a client leaving on purpose does.
    let mut bye = BytesMut::with_capacity(5);
    postgres_protocol::message::frontend::terminate(&mut bye);
    sock.write_all(&bye).await?;
    sock.shutdown().await.map_err(Error::Io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xlogdata(start: u64, payload: usize) -> Vec<u8> {
        let mut m = vec![b'd'];
        m.extend_from_slice(&((4 + 25 + payload) as u32).to_be_bytes());
        m.push(b'w');
        m.extend_from_slice(&start.to_be_bytes());
        m.extend_from_slice(&(start + payload as u64).to_be_bytes());
        m.extend_from_slice(&0u64.to_be_bytes());
        m.extend((0..payload).map(|i| i as u8));
        m
    }

    fn keepalive(reply: bool) -> Vec<u8> {
        let mut m = vec![b'd', 0, 0, 0, 22, b'k'];
        m.extend_from_slice(&[0; 16]);
        m.push(reply as u8);
        m
    }

    /// Feeds `wire` in pieces of `step` bytes, keeping unconsumed bytes as the stream does.
    fn feed_all(wire: &[u8], step: usize) -> (Result<()>, Outcome, bool) {
        let mut p = Parser {
            skip: 0,
            reply_now: false,
        };
        let mut out = Outcome::default();
        let mut pending: Vec<u8> = Vec::new();
        let mut replied = false;
        for chunk in wire.chunks(step) {
            pending.extend_from_slice(chunk);
            match p.feed(&pending, &mut out) {
                Ok(n) => {
                    pending.drain(..n);
                }
                Err(e) => return (Err(e), out, replied),
            }
            replied |= std::mem::take(&mut p.reply_now);
        }
        assert!(
            pending.is_empty() || p.skip == 0,
            "bytes left over while skipping"
        );
        (Ok(()), out, replied)
    }

    #[test]
    fn counts_payload_in_any_split() {
        let mut wire = xlogdata(0x1000000, 100);
        wire.extend(keepalive(false));
        wire.extend(xlogdata(0x1000064, 8192));
        for step in [1, 2, 5, 29, 30, 31, 100, 4096, wire.len()] {
            let (r, out, replied) = feed_all(&wire, step);
            assert!(r.is_ok(), "step {step}: {r:?}");
            assert_eq!(out.bytes, 8292, "step {step}");
            assert_eq!(out.end, Lsn(0x1000064 + 8192));
            assert_eq!((out.messages, out.keepalives), (2, 1));
            assert!(!replied);
        }
    }

    #[test]
    fn keepalive_asking_for_a_reply() {
        let (r, out, replied) = feed_all(&keepalive(true), 7);
        assert!(r.is_ok());
        assert!(replied);
        assert_eq!(out.reply_requests, 1);
    }

    #[test]
    fn error_response_ends_the_stream() {
        let body = b"SERROR\0C58P01\0Mrequested WAL segment has already been removed\0\0";
        let mut wire = vec![b'E'];
        wire.extend_from_slice(&((4 + body.len()) as u32).to_be_bytes());
        wire.extend_from_slice(body);
        let (r, _, _) = feed_all(&wire, 3);
        match r {
            Err(Error::Server(code, msg)) => {
                assert_eq!(code, "58P01");
                assert!(msg.contains("already been removed"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_messages_are_errors() {
        // XLogData shorter than its header.
        let mut short = vec![b'd', 0, 0, 0, 20, b'w'];
        short.extend_from_slice(&[0; 24]);
        assert!(feed_all(&short, 64).0.is_err());
        // Keepalive of the wrong length.
        let mut k = keepalive(false);
        k[4] = 21;
        assert!(feed_all(&k, 64).0.is_err());
        // A length below 4, an unknown CopyData type, an unknown message type.
        assert!(feed_all(&[b'd', 0, 0, 0, 3, b'w'], 64).0.is_err());
        assert!(feed_all(&[b'd', 0, 0, 0, 5, b'x'], 64).0.is_err());
        assert!(feed_all(&[b'Z', 0, 0, 0, 5, b'I'], 64).0.is_err());
        // The server's CopyDone.
        assert!(feed_all(&[b'c', 0, 0, 0, 4], 64).0.is_err());
    }

    #[test]
    fn notices_are_skipped() {
        let mut wire = vec![b'N', 0, 0, 0, 8, b'M', b'h', b'i', 0];
        wire.extend(xlogdata(0, 10));
        let (r, out, _) = feed_all(&wire, 4);
        assert!(r.is_ok());
        assert_eq!(out.bytes, 10);
    }

    #[test]
    fn status_update_layout() {
        let m = status_update(Lsn(0x0102030405060708));
        assert_eq!(&m[..6], &[b'd', 0, 0, 0, 38, b'r']);
        for i in 0..3 {
            assert_eq!(
                &m[6 + 8 * i..14 + 8 * i],
                &0x0102030405060708u64.to_be_bytes()
            );
        }
        assert_eq!(m[38], 0);
    }
}
