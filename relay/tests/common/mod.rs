//! A real `walrelay run` for integration tests that need the daemon's HTTP endpoint but no
//! PostgreSQL: its upstream is a closed port, so it keeps retrying and serves `/status` and
//! `/metrics` meanwhile. The process is killed when the handle drops, also when a test panics.
#![allow(dead_code)] // each test binary uses a different part

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use walrelay::cmd::status::client::{get_blocking, Response};

pub const BIN: &str = env!("CARGO_BIN_EXE_walrelay");

pub struct Relay {
    child: Child,
    /// host:port of the HTTP endpoint.
    pub http: String,
    _data: tempfile::TempDir,
}

/// A loopback port nothing listens on right now. The listener is closed before the relay binds
/// the port, so another process could take it in between; tests on one machine rarely race.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

impl Relay {
    /// `walrelay run` with `extra` flags besides upstream, data directory and addresses.
    pub fn start(extra: &[&str]) -> Relay {
        let data = tempfile::tempdir().expect("tempdir");
        // Two different ports: hold the first while asking for the second.
        let a = TcpListener::bind("127.0.0.1:0").expect("bind");
        let b = TcpListener::bind("127.0.0.1:0").expect("bind");
        let listen = a.local_addr().expect("addr").to_string();
        let http = b.local_addr().expect("addr").to_string();
        drop((a, b));
        let log = data.path().join("relay.log");
        let child = Command::new(BIN)
            .args(["run", "--upstream", "host=127.0.0.1 port=1 user=x"])
            .arg("--data-dir")
            .arg(data.path().join("store"))
            .args(["--listen", &listen, "--http", &http])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn walrelay run");
        let mut relay = Relay {
            child,
            http,
            _data: data,
        };
        relay.wait_ready(&log);
        relay
    }

    /// Polls `/healthz` until the endpoint answers (the relay binds it during startup).
    fn wait_ready(&mut self, log: &std::path::Path) {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                panic!("walrelay run exited early ({status}):\n{log}");
            }
            if let Ok(r) = get_blocking(&self.http, "/healthz", Duration::from_secs(1)) {
                if r.status == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < until,
                "walrelay run did not answer on {} within 30s:\n{}",
                self.http,
                std::fs::read_to_string(log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `GET path`, expecting 200; the body as text.
    pub fn get(&self, path: &str) -> String {
        let r: Response =
            get_blocking(&self.http, path, Duration::from_secs(5)).expect("GET from the relay");
        assert_eq!(r.status, 200, "GET {path}");
        String::from_utf8(r.body).expect("UTF-8 body")
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
