//! [`Relay`]: the walrelay binary under test, run as `walrelay run` with its upstream, slot,
//! free loopback ports for `--listen` and `--http`, and a data dir in a temp dir; stdout and
//! stderr go to `walrelay.log` there. Restarts reuse the same data dir and ports.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;

use serde_json::Value;
use walrelay::wal::segment::{parse_wal_file_name, WalFileName};
use walrelay::wal::Lsn;

use super::os::{self, TestDir};
use super::wire::ReplClient;
use super::{http, lsn, wait_until, SEG_SIZE, WAIT};

/// A running (or stopped) walrelay process. Dropping it kills the process.
pub struct Relay {
    dir: TestDir,
    upstream: String,
    /// `--slot`; `None` for [`Relay::start_without_upstream`].
    slot: Option<String>,
    /// Further `walrelay run` flags (e.g. `--failover-standby NAME`), kept for restarts.
    extra_args: Vec<String>,
    /// Further environment (e.g. `NOTIFY_SOCKET`), kept for restarts.
    env: Vec<(String, String)>,
    listen_port: u16,
    http_port: u16,
    child: Option<Child>,
    starts: u32,
}

impl Relay {
    /// Spawns `walrelay run` against `upstream` (a libpq conninfo) with slot `slot`. Does not
    /// wait; see [`Relay::wait_ready`].
    pub fn start(upstream: &str, slot: &str) -> Relay {
        Relay::start_with(upstream, slot, &[])
    }

    /// Like [`Relay::start`], with further `walrelay run` flags (kept for restarts).
    pub fn start_with(upstream: &str, slot: &str, extra_args: &[&str]) -> Relay {
        let dir = TestDir::new("relay");
        // Made beforehand, as an operator's unit (systemd StateDirectory=) would.
        std::fs::create_dir(dir.path().join("data")).expect("create the relay's data dir");
        Relay::spawn_in(dir, upstream, Some(slot), extra_args)
    }

    /// Like [`Relay::start_with`], with further environment variables for the process (kept
    /// for restarts), e.g. `NOTIFY_SOCKET` and `WATCHDOG_USEC` as systemd sets them.
    pub fn start_with_env(
        upstream: &str,
        slot: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Relay {
        let dir = TestDir::new("relay");
        std::fs::create_dir(dir.path().join("data")).expect("create the relay's data dir");
        Relay::new_in(dir, upstream, Some(slot), extra_args).spawned_with_env(env)
    }

    /// `walrelay run` with no PostgreSQL behind it, for the tests of the HTTP endpoint and the
    /// operator commands: its upstream is a closed port (it keeps retrying and serves `/status`
    /// and `/metrics` meanwhile), no `--slot`. Waits until `/healthz` answers.
    pub fn start_without_upstream(extra_args: &[&str]) -> Relay {
        let dir = TestDir::new("relay");
        std::fs::create_dir(dir.path().join("data")).expect("create the relay's data dir");
        let mut relay = Relay::spawn_in(dir, "host=127.0.0.1 port=1 user=x", None, extra_args);
        relay.wait_healthy();
        relay
    }

    /// Spawns the relay in `dir`, whose `data` entry is ready.
    fn spawn_in(dir: TestDir, upstream: &str, slot: Option<&str>, extra_args: &[&str]) -> Relay {
        let mut relay = Relay::new_in(dir, upstream, slot, extra_args);
        relay.spawn();
        relay
    }

    /// A relay in `dir`, not started yet.
    fn new_in(dir: TestDir, upstream: &str, slot: Option<&str>, extra_args: &[&str]) -> Relay {
        Relay {
            dir,
            upstream: upstream.to_string(),
            slot: slot.map(str::to_string),
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            env: Vec::new(),
            listen_port: os::free_port(),
            http_port: os::free_port(),
            child: None,
            starts: 0,
        }
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let log = self.log_path();
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open walrelay.log");
        writeln!(file, "===== harness: walrelay start #{} =====", self.starts)
            .expect("write walrelay.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_walrelay"));
        // Only the flags below configure the relay, whatever the developer's environment says.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("WALRELAY_") {
                cmd.env_remove(key);
            }
        }
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.env("RUST_BACKTRACE", "1")
            .arg("run")
            .args(["--upstream", &self.upstream]);
        if let Some(slot) = &self.slot {
            cmd.args(["--slot", slot]);
        }
        cmd.args(["--listen", &format!("127.0.0.1:{}", self.listen_port)])
            .args(["--http", &self.http_addr()])
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(&self.extra_args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone log handle"))
            .stderr(file);
        self.child = Some(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}")),
        );
    }

    /// The process id of the running relay.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the relay is not running").id()
    }

    /// The port downstream clients connect to.
    pub fn port(&self) -> u16 {
        self.listen_port
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("walrelay.log")
    }

    /// The whole log of every start so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Waits until the log holds a line containing `text`; returns that line.
    pub fn wait_for_log(&self, text: &str) -> String {
        wait_until(&format!("walrelay to log {text:?}"), || {
            self.log()
                .lines()
                .find(|l| l.contains(text))
                .map(str::to_string)
                .ok_or_else(|| self.log_tail())
        })
    }

    /// Waits until the relay logs that it dropped the replica `application_name` at the sender
    /// timeout (walsender.c's words); returns that line.
    pub fn wait_for_replica_dropped(&self, application_name: &str) -> String {
        wait_until(&format!("{application_name} to be dropped"), || {
            self.log()
                .lines()
                .find(|l| {
                    l.contains("terminating walsender process due to replication timeout")
                        && l.contains(&format!("application_name={application_name}"))
                })
                .map(str::to_string)
                .ok_or_else(|| self.log_tail())
        })
    }

    /// The last lines of the relay's log.
    pub fn log_tail(&self) -> String {
        os::tail(&self.log_path(), 60)
    }

    /// Panics (with the log tail) if the process has exited.
    pub fn assert_running(&mut self) {
        let child = self.child.as_mut().expect("the relay was stopped");
        if let Ok(Some(status)) = child.try_wait() {
            panic!("walrelay exited unexpectedly ({status})");
        }
    }

    /// `host:port` of the HTTP endpoint, as `walrelay status --http` takes it.
    pub fn http_addr(&self) -> String {
        format!("127.0.0.1:{}", self.http_port)
    }

    /// Waits until `/healthz` answers 200 (the process runs and has bound its HTTP port).
    pub fn wait_healthy(&mut self) {
        wait_until("walrelay /healthz to answer 200", || {
            self.assert_running();
            match http::get(self.http_port, "/healthz") {
                Ok((200, _)) => Ok(()),
                Ok((code, body)) => Err(format!("{code} {body}")),
                Err(e) => Err(e.to_string()),
            }
        });
    }

    /// Waits until `/readyz` answers 200 (streaming from upstream and serving).
    pub fn wait_ready(&mut self) {
        wait_until("walrelay /readyz to answer 200", || {
            self.assert_running();
            match http::get(self.http_port, "/readyz") {
                Ok((200, _)) => Ok(()),
                Ok((code, body)) => Err(format!("{code} {body}")),
                Err(e) => Err(e.to_string()),
            }
        });
    }

    /// GET `path` on the HTTP port: (status code, body).
    pub fn http_get(&self, path: &str) -> std::io::Result<(u16, String)> {
        http::get(self.http_port, path)
    }

    /// GET `path`, expecting 200: the body.
    pub fn get_ok(&self, path: &str) -> String {
        match self.http_get(path) {
            Ok((200, body)) => body,
            Ok((code, body)) => panic!("GET {path}: {code} {body}"),
            Err(e) => panic!("GET {path}: {e}"),
        }
    }

    /// `GET /status` as JSON.
    pub fn status(&self) -> Value {
        let body = self.get_ok("/status");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("/status is not JSON ({e}): {body}"))
    }

    /// An LSN field of `/status`, by JSON pointer (e.g. `/upstream/flushed_lsn`).
    pub fn status_lsn(&self, pointer: &str) -> Lsn {
        let status = self.status();
        let text = status
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("/status has no string at {pointer}: {status}"));
        lsn(&format!("/status {pointer}"), text)
    }

    /// Waits until `/status` says everything up to `target` is durable; returns the
    /// `flushed_lsn` it saw.
    pub fn wait_flushed(&self, target: Lsn) -> Lsn {
        wait_until(&format!("the relay to flush up to {target}"), || {
            let flushed = self.status_lsn("/upstream/flushed_lsn");
            if flushed >= target {
                Ok(flushed)
            } else {
                Err(format!("flushed_lsn {flushed}"))
            }
        })
    }

    /// Polls `/status` until `done` accepts it; returns that document.
    pub fn wait_status(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        wait_until(&format!("/status: {what}"), || {
            let status = self.status();
            if done(&status) {
                Ok(status)
            } else {
                Err(status.to_string())
            }
        })
    }

    /// Waits until `/status` lists a downstream with this application_name in state
    /// `streaming`; returns that entry.
    pub fn wait_for_downstream(&self, application_name: &str) -> Value {
        wait_until(
            &format!("/status to list downstream {application_name:?} streaming"),
            || {
                let status = self.status();
                status
                    .pointer("/downstreams")
                    .and_then(Value::as_array)
                    .and_then(|list| {
                        list.iter().find(|d| {
                            d["application_name"] == application_name && d["state"] == "streaming"
                        })
                    })
                    .cloned()
                    .ok_or_else(|| status.to_string())
            },
        )
    }

    /// Runs `walrelay status --http <this relay> <args>` and returns its stdout; panics on a
    /// non-zero exit.
    pub fn status_command(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_walrelay"))
            .arg("status")
            .args(["--http", &self.http_addr()])
            .args(args)
            .env_remove("WALRELAY_HTTP")
            .output()
            .expect("run walrelay status");
        assert!(
            out.status.success(),
            "walrelay status {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `GET /metrics` (Prometheus text).
    pub fn metrics(&self) -> String {
        self.get_ok("/metrics")
    }

    /// The value of an unlabelled sample `name` in `/metrics`, if present.
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics().lines().find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            (key == name).then(|| value.trim().parse().ok())?
        })
    }

    /// Segment files in the store's `wal/` (complete and `.partial`), as `(name without the
    /// suffix, partial)`, sorted by name.
    pub fn segments(&self) -> Vec<(String, bool)> {
        let mut out: Vec<(String, bool)> = os::files_in(&self.data_dir().join("wal"))
            .into_iter()
            .filter_map(|n| match parse_wal_file_name(&n, SEG_SIZE) {
                Some(WalFileName::Segment { partial, .. }) => {
                    Some((n.trim_end_matches(".partial").to_string(), partial))
                }
                _ => None,
            })
            .collect();
        out.sort();
        out
    }

    /// Creates a physical slot on the relay that reserves WAL from its current end
    /// (`CREATE_REPLICATION_SLOT slot PHYSICAL RESERVE_WAL`).
    pub fn create_slot(&self, slot: &str) {
        let mut client =
            ReplClient::connect(self.port(), "test_slot_admin").expect("replication connection");
        let reply = client
            .query(&format!(
                "CREATE_REPLICATION_SLOT {slot} PHYSICAL RESERVE_WAL"
            ))
            .expect("CREATE_REPLICATION_SLOT reply");
        assert_eq!(reply.error, None, "CREATE_REPLICATION_SLOT {slot} failed");
    }

    /// `READ_REPLICATION_SLOT slot` on the relay: the slot's restart_lsn (`None` for no slot or
    /// no LSN).
    pub fn slot_restart_lsn(&self, slot: &str) -> Option<Lsn> {
        let mut client =
            ReplClient::connect(self.port(), "test_slot_admin").expect("replication connection");
        let reply = client
            .query(&format!("READ_REPLICATION_SLOT {slot}"))
            .expect("READ_REPLICATION_SLOT reply");
        assert_eq!(reply.error, None, "READ_REPLICATION_SLOT {slot} failed");
        let restart = reply.rows.first()?.get(1)?.clone()?;
        Some(lsn("READ_REPLICATION_SLOT restart_lsn", &restart))
    }

    /// Clean stop: SIGTERM, then wait for the exit. Returns the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the relay is not running");
        os::signal(&[child.id()], "TERM");
        match os::wait_child(&mut child, WAIT) {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("walrelay did not exit within {WAIT:?} of SIGTERM");
            }
        }
    }

    /// Crash: SIGKILL and reap.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("the relay is not running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Changes the upstream conninfo the next [`Relay::restart`] uses (same data dir, slot,
    /// ports and extra flags), as an operator edits the unit's configuration.
    pub fn set_upstream(&mut self, upstream: &str) {
        self.upstream = upstream.to_string();
    }

    /// Starts the relay again (after [`Relay::stop`] or [`Relay::kill9`]) with the same
    /// upstream, slot, ports and data dir. Does not wait for readiness.
    pub fn restart(&mut self) {
        assert!(
            self.child.is_none(),
            "restart() needs the relay stopped first"
        );
        self.spawn();
    }

    /// Like [`Relay::start_with`], with the data dir at `data_dir` (e.g. a small file system
    /// mounted for the test): [`Relay::data_dir`] is a symlink to it.
    pub fn start_in(data_dir: &Path, upstream: &str, slot: &str, extra_args: &[&str]) -> Relay {
        let dir = TestDir::new("relay");
        std::os::unix::fs::symlink(data_dir, dir.path().join("data"))
            .expect("symlink the relay's data dir");
        Relay::spawn_in(dir, upstream, Some(slot), extra_args)
    }

    /// [`Relay::start_in`] with further environment variables (see [`Relay::start_with_env`]).
    pub fn start_in_with_env(
        data_dir: &Path,
        upstream: &str,
        slot: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Relay {
        let dir = TestDir::new("relay");
        std::os::unix::fs::symlink(data_dir, dir.path().join("data"))
            .expect("symlink the relay's data dir");
        Relay::new_in(dir, upstream, Some(slot), extra_args).spawned_with_env(env)
    }

    /// Starts the relay with `env` added to its environment.
    fn spawned_with_env(mut self, env: &[(&str, &str)]) -> Relay {
        self.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.spawn();
        self
    }

    /// Runs `walrelay verify --data-dir <data dir>` (the relay must be stopped): its exit code
    /// and stderr.
    pub fn verify(&self) -> (i32, String) {
        assert!(
            self.child.is_none(),
            "verify() needs the relay stopped first"
        );
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_walrelay"));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("WALRELAY_") {
                cmd.env_remove(key);
            }
        }
        cmd.arg("verify").arg("--data-dir").arg(self.data_dir());
        let out = os::run(&mut cmd, WAIT).unwrap_or_else(|e| panic!("{e}"));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        // Killed by a signal (no code) counts as neither clean nor damage found.
        (out.status.code().unwrap_or(-1), stderr)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            eprintln!(
                "----- walrelay (listen {}, http {}) log tail -----\n{}",
                self.listen_port,
                self.http_port,
                self.log_tail()
            );
        }
    }
}
