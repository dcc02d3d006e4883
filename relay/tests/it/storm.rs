//! A storm of bad and idle clients while a real standby streams: random bytes, truncated and
//! oversized startup packets, 500 connections that say nothing, thousands of connect/disconnect
//! cycles and a replica that stops reading. The standby streams throughout (same walreceiver,
//! every row), the relay's memory per idle connection stays small, idle sockets are closed at
//! the authentication timeout, the stopped reader at the sender timeout, and ordinary
//! disconnects are logged at INFO at most.

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use crate::harness::{wait_until, workload, Relay, Topology};
use crate::limits::{connect, read_until_closed, start_streaming};

const IDLE: usize = 500;
const CYCLES: usize = 2000;
const GARBAGE: usize = 200;

/// xorshift64*: deterministic noise (the seed is printed, so a failure can be replayed).
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Sets the flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The relay's resident memory (`VmRSS`), in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A StartupMessage for a replication connection of `postgres`.
fn startup_packet() -> Vec<u8> {
    let mut body = 196_608u32.to_be_bytes().to_vec();
    for s in [
        "user",
        "postgres",
        "replication",
        "true",
        "application_name",
        "cycle",
    ] {
        body.extend_from_slice(s.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut pkt = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    pkt.extend_from_slice(&body);
    pkt
}

/// WARN and ERROR lines of the relay's log.
fn loud_lines(relay: &Relay) -> Vec<String> {
    relay
        .log()
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_storm_of_bad_and_idle_clients_leaves_the_standby_streaming() {
    let Topology {
        primary,
        relays: [relay],
        standbys: [standby],
        ..
    } = Topology::primary_relay_standby()
        .relay_args(&[
            "--authentication-timeout",
            "3s",
            "--wal-sender-timeout",
            "5s",
            "--max-connections",
            "700",
        ])
        .rows(1..=100)
        .start();
    let walreceiver = standby.psql("select pid from pg_stat_wal_receiver");
    let pid = relay.pid();
    let port = relay.port();
    let seed = std::env::var("WALRELAY_STORM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_u64 ^ u64::from(pid));
    eprintln!("storm seed {seed} (WALRELAY_STORM_SEED replays it)");
    let mut noise = Noise(seed | 1);

    // Rows are written all through the storm (until the guard drops, also on a failed
    // assertion, so that the scope can end).
    let stop = AtomicBool::new(false);
    let written = AtomicU32::new(100);
    std::thread::scope(|scope| {
        let _stop_writer = StopOnDrop(&stop);
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let from = written.load(Ordering::Relaxed) + 1;
                workload::insert_rows(&primary, from..=from + 99);
                written.store(from + 99, Ordering::Relaxed);
            }
        });

        // 500 sockets that say nothing: memory per idle connection.
        let base_rss = rss(pid);
        let base_fds = open_fds(pid);
        let idle: Vec<TcpStream> = (0..IDLE).map(|_| connect(port)).collect();
        wait_until("the relay to accept the idle connections", || {
            let fds = open_fds(pid);
            if fds >= base_fds + IDLE {
                Ok(())
            } else {
                Err(format!("{fds} fds, {base_fds} before"))
            }
        });
        let idle_rss = rss(pid);
        let per_conn = idle_rss.saturating_sub(base_rss) / IDLE as u64;
        eprintln!(
            "memory: {} KiB before, {} KiB with {IDLE} idle connections: {per_conn} bytes each",
            base_rss / 1024,
            idle_rss / 1024
        );
        // Bounded: a buffer reserved per connection (the announced 64 MiB, or even 1 MiB)
        // would show here many times over.
        assert!(
            per_conn < 256 * 1024,
            "{per_conn} bytes per idle connection"
        );

        // Thousands of connect/disconnect cycles, half of them after a startup packet.
        let startup = startup_packet();
        for i in 0..CYCLES {
            let mut s = connect(port);
            if i % 2 == 1 {
                let _ = s.write_all(&startup);
            }
            drop(s);
        }

        // The idle ones are closed at the authentication timeout, with nothing said.
        for s in idle {
            assert_eq!(read_until_closed(s, "an idle socket"), b"");
        }
        let loud = loud_lines(&relay);
        assert!(
            loud.is_empty(),
            "idle sockets and connect/disconnect cycles were logged above INFO:\n{}",
            loud.join("\n")
        );

        // Random bytes; truncated and oversized startup packets. Each gets an error or a
        // close, never a hang past the authentication timeout.
        let mut bad: Vec<TcpStream> = Vec::new();
        for i in 0..GARBAGE {
            let mut s = connect(port);
            let bytes = match i % 4 {
                0 => {
                    let n = 1 + (noise.next() % 2048) as usize;
                    noise.bytes(n)
                }
                // A startup packet cut short.
                1 => {
                    let cut = 1 + (noise.next() as usize % (startup.len() - 1));
                    startup[..cut].to_vec()
                }
                // A length far past any startup packet.
                2 => {
                    let mut b = (0x4000_0000u32 | noise.next() as u32)
                        .to_be_bytes()
                        .to_vec();
                    b.extend_from_slice(&noise.bytes(64));
                    b
                }
                // A good startup packet, then garbage messages (and the end of the stream, as a
                // session that got in stays open until the client leaves).
                _ => {
                    let mut b = startup.clone();
                    let n = 1 + (noise.next() % 512) as usize;
                    b.extend_from_slice(&noise.bytes(n));
                    b
                }
            };
            let _ = s.write_all(&bytes);
            if i % 4 == 3 {
                let _ = s.shutdown(std::net::Shutdown::Write);
            }
            bad.push(s);
        }
        for (i, s) in bad.into_iter().enumerate() {
            let _ = read_until_closed(s, &format!("garbage client {i}"));
        }

        // A replica that stops reading is dropped at the sender timeout.
        let stopped = start_streaming(port, "stopped", None);
        relay.wait_for_replica_dropped("stopped");
        drop(stopped);
    });

    // The standby streamed throughout: same walreceiver, every row.
    workload::wait_rows(&primary, &standby);
    let rows = standby.psql("select count(*), min(id), max(id) from t");
    let n = written.load(Ordering::Relaxed);
    assert_eq!(rows, format!("{n}|1|{n}"));
    assert_eq!(
        standby.psql("select pid from pg_stat_wal_receiver"),
        walreceiver,
        "the standby's walreceiver reconnected"
    );
    let mut relay = relay;
    relay.assert_running();
}
