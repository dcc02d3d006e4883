//! The relay as systemd runs it, with the real binary: a fake `NOTIFY_SOCKET` (a datagram
//! socket bound here) and `WATCHDOG_USEC` as systemd sets them (`WATCHDOG_PID` unset, which
//! means the main process). READY=1 only once the relay streams; STATUS= says what it does;
//! watchdog pings go on while an idle primary sends nothing but keepalives; SIGHUP reloads the
//! config file without dropping a streaming standby, and a reloaded `wal_sender_timeout` or
//! `failover_standby` set is what the running relay goes by.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use crate::failover::cut_off;
use crate::harness::os::{self, TestDir};
use crate::harness::wire::{ReplClient, WireError};
use crate::harness::{wait_until, workload, PgCluster, Relay, Topology};
use crate::limits::start_streaming;

/// What systemd would receive: every datagram, in order.
struct NotifySocket {
    _dir: TestDir,
    path: PathBuf,
    sock: UnixDatagram,
    seen: Vec<String>,
}

impl NotifySocket {
    fn new() -> NotifySocket {
        let dir = TestDir::new("notify");
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind the fake NOTIFY_SOCKET");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("set a read timeout");
        NotifySocket {
            _dir: dir,
            path,
            sock,
            seen: Vec::new(),
        }
    }

    /// `NOTIFY_SOCKET` and a one-second `WATCHDOG_USEC` (pings every 500 ms).
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("NOTIFY_SOCKET", self.path.display().to_string()),
            ("WATCHDOG_USEC", "1000000".to_string()),
        ]
    }

    /// Reads what has arrived (for up to `for_at_least`), keeping it.
    fn drain(&mut self, for_at_least: Duration) {
        let until = Instant::now() + for_at_least;
        let mut buf = vec![0u8; 4096];
        loop {
            match self.sock.recv(&mut buf) {
                Ok(n) => self
                    .seen
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned()),
                // EINTR: a signal reached this test process (another test's child exiting);
                // read again.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if Instant::now() >= until {
                        return;
                    }
                }
                Err(e) => panic!("read the fake NOTIFY_SOCKET: {e}"),
            }
        }
    }

    /// Waits for a datagram with a line equal to `line` (or, ending in `…`, starting with it);
    /// returns that datagram.
    fn wait_for(&mut self, line: &str) -> String {
        wait_until(&format!("sd_notify {line:?}"), || {
            self.drain(Duration::ZERO);
            self.seen
                .iter()
                .find(|m| has_line(m, line))
                .cloned()
                .ok_or_else(|| format!("{:?}", self.seen))
        })
    }

    /// How many datagrams so far have a line `line`.
    fn count(&self, line: &str) -> usize {
        self.seen.iter().filter(|m| has_line(m, line)).count()
    }
}

fn has_line(datagram: &str, line: &str) -> bool {
    datagram.lines().any(|l| match line.strip_suffix('…') {
        Some(prefix) => l.starts_with(prefix),
        None => l == line,
    })
}

fn start_relay(upstream: &str, sock: &NotifySocket, extra_args: &[&str]) -> Relay {
    let env = sock.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Relay::start_with_env(upstream, "relay", extra_args, &env)
}

/// READY=1 comes once the relay streams from the primary (its `/status` already says so), with
/// a STATUS= line naming the primary and the timeline; before it only "connecting". On an idle
/// primary the watchdog pings go on.
#[test]
fn ready_only_once_streaming_and_watchdog_on_an_idle_primary() {
    let primary = PgCluster::init_primary("primary");
    workload::create_table(&primary);
    let mut sock = NotifySocket::new();
    let mut relay = start_relay(&primary.conninfo(), &sock, &[]);
    let ready = sock.wait_for("READY=1");
    let status = relay.status();
    assert_eq!(
        status["upstream"]["connected"], true,
        "READY=1 before /status said streaming: {status}"
    );
    assert!(
        has_line(
            &ready,
            &format!(
                "STATUS=streaming from 127.0.0.1:{} on timeline 1",
                primary.port()
            )
        ),
        "{ready}"
    );
    let first_ready = sock.seen.iter().position(|m| has_line(m, "READY=1"));
    let connecting = sock
        .seen
        .iter()
        .position(|m| has_line(m, "STATUS=connecting to upstream"));
    assert!(
        connecting.is_some() && connecting < first_ready,
        "{:?}",
        sock.seen
    );
    relay.wait_ready();

    // Idle: no writes on the primary, only its keepalives. Pings every 500 ms: at least a few
    // in four seconds, even on a loaded machine.
    let before = sock.count("WATCHDOG=1");
    sock.drain(Duration::from_secs(4));
    let pings = sock.count("WATCHDOG=1") - before;
    assert!(pings >= 3, "{pings} watchdog pings in 4s: {:?}", sock.seen);
    assert_eq!(sock.count("READY=1"), 1, "{:?}", sock.seen);
    relay.assert_running();
    assert!(relay.stop().success());
    sock.drain(Duration::from_millis(200));
    assert!(sock.count("STOPPING=1") >= 1, "{:?}", sock.seen);
}

/// With the upstream unreachable the relay never says READY; STATUS= says it reconnects and
/// why; the watchdog still pings (an unreachable upstream is not a wedged relay).
#[test]
fn no_ready_while_the_upstream_is_unreachable() {
    let closed = os::free_port();
    let mut sock = NotifySocket::new();
    let mut relay = start_relay(&format!("host=127.0.0.1 port={closed} user=x"), &sock, &[]);
    let status = sock.wait_for("STATUS=reconnecting to upstream: …");
    assert!(status.contains("connect"), "{status}");
    sock.drain(Duration::from_secs(5));
    relay.assert_running();
    assert_eq!(sock.count("READY=1"), 0, "{:?}", sock.seen);
    assert!(sock.count("WATCHDOG=1") >= 3, "{:?}", sock.seen);
}

/// SIGHUP re-reads the config file: the changed wal_keep_size and log_filter are applied and
/// logged, the streaming standby stays connected (same walreceiver) and rows still arrive; a
/// file that does not validate changes nothing and the relay keeps running.
#[test]
fn sighup_reloads_without_dropping_a_standby() {
    let primary = PgCluster::init_primary("primary");
    workload::create_table(&primary);
    let conf_dir = TestDir::new("config");
    let conf = conf_dir.path().join("relay.toml");
    std::fs::write(&conf, "wal_keep_size = \"1GB\"\nlog_filter = \"info\"\n").unwrap();
    let conf_arg = conf.display().to_string();
    let mut sock = NotifySocket::new();
    let mut relay = start_relay(&primary.conninfo(), &sock, &["--config", &conf_arg]);
    sock.wait_for("READY=1");
    relay.wait_ready();
    let standby = PgCluster::basebackup_standby(&primary, "standby1", relay.port());
    workload::insert_rows(&primary, 1..=100);
    workload::wait_rows(&primary, &standby);
    relay.wait_for_downstream("standby1");
    let receiver = "select pid, status, sender_port from pg_stat_wal_receiver";
    let before = standby.psql(receiver);
    assert!(
        before.ends_with(&format!("|streaming|{}", relay.port())),
        "{before}"
    );

    std::fs::write(
        &conf,
        "wal_keep_size = \"64MB\"\nlog_filter = \"walrelay=debug,info\"\n",
    )
    .unwrap();
    assert!(os::signal(&[relay.pid()], "HUP"));
    relay.wait_for_log("reloaded: wal_keep_size changed from 1GB to 64MB");
    relay.wait_for_log("reloaded: log_filter changed from \"info\" to \"walrelay=debug,info\"");
    relay.wait_for_log("configuration reloaded");

    workload::insert_rows(&primary, 101..=200);
    workload::wait_rows(&primary, &standby);
    relay.assert_running();
    assert_eq!(standby.psql(receiver), before, "the standby reconnected");

    // A broken file: reported, nothing changes, still running and serving.
    std::fs::write(&conf, "wal_keep_size = \"lots\"\n").unwrap();
    assert!(os::signal(&[relay.pid()], "HUP"));
    relay.wait_for_log("configuration not reloaded, the running settings stay");
    // A change that needs a restart is named as such.
    std::fs::write(
        &conf,
        "wal_keep_size = \"64MB\"\nlog_filter = \"walrelay=debug,info\"\nlog_format = \"json\"\n",
    )
    .unwrap();
    assert!(os::signal(&[relay.pid()], "HUP"));
    relay.wait_for_log("changed settings that need a restart to apply");
    workload::insert_rows(&primary, 201..=300);
    workload::wait_rows(&primary, &standby);
    thread::sleep(Duration::from_millis(200));
    relay.assert_running();
    assert_eq!(standby.psql(receiver), before, "the standby reconnected");
    // No second READY=1 for a reload.
    sock.drain(Duration::from_millis(200));
    assert_eq!(sock.count("READY=1"), 1, "{:?}", sock.seen);
}

/// `wal_sender_timeout` lowered by SIGHUP from 1h to 5s: the standby streams on through the
/// same walreceiver, and a replica that was already streaming and never replies is dropped by
/// its running walsender per the new value (under the old one it would stream for an hour).
#[test]
fn sighup_lowers_wal_sender_timeout_for_running_walsenders() {
    let conf_dir = TestDir::new("config");
    let conf = conf_dir.path().join("relay.toml");
    std::fs::write(&conf, "wal_sender_timeout = \"1h\"\n").unwrap();
    let conf_arg = conf.display().to_string();
    let Topology {
        primary,
        relays: [mut relay],
        standbys: [standby],
        ..
    } = Topology::primary_relay_standby()
        .relay_args(&["--config", &conf_arg])
        .rows(1..=100)
        .start();
    // The standby replies every second: the new 5 s timeout applies at once to the time since
    // its last reply (as WalSndCheckTimeOut does), so with the default 10 s interval a reload
    // landing just before its next reply would drop it as well.
    standby.alter_system("wal_receiver_status_interval", "1s");
    let receiver = "select pid, status, sender_port from pg_stat_wal_receiver";
    let before = standby.psql(receiver);
    // Streaming, never reading nor replying: with the 1h timeout, nothing ends it.
    let silent = start_streaming(relay.port(), "silent", None);
    relay.wait_for_downstream("silent");

    std::fs::write(&conf, "wal_sender_timeout = \"5s\"\n").unwrap();
    assert!(os::signal(&[relay.pid()], "HUP"));
    relay.wait_for_log("reloaded: wal_sender_timeout changed from 1h to 5s");
    let dropped = relay.wait_for_replica_dropped("silent");
    assert!(dropped.contains("timeout=5s"), "{dropped}");
    relay.wait_status("the silent replica gone from /status", |s| {
        s["downstreams"]
            .as_array()
            .is_some_and(|d| d.iter().all(|d| d["application_name"] != "silent"))
    });
    drop(silent);

    // The standby answers the pings of the new timeout and streams on.
    workload::insert_rows(&primary, 101..=200);
    workload::wait_rows(&primary, &standby);
    relay.assert_running();
    assert_eq!(standby.psql(receiver), before, "the standby reconnected");
    let log = relay.log();
    let timeouts: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("due to replication timeout"))
        .collect();
    assert_eq!(timeouts.len(), 1, "only the silent replica: {timeouts:?}");
}

/// A new replication connection to the relay is refused with `53300`, as past
/// `max_connections`.
fn assert_too_many_clients(relay: &Relay, what: &str) {
    match ReplClient::connect(relay.port(), "one_more") {
        Err(WireError::Server(e)) => {
            assert_eq!(e.code(), "53300", "{what}: {e}");
            assert_eq!(e.message(), "sorry, too many clients already");
        }
        Err(e) => panic!("{what}: expected 53300, got {e}"),
        Ok(_) => panic!("{what}: a client was let in past max_connections"),
    }
}

/// `max_connections` lowered by SIGHUP below the connections in progress ends none of them (the
/// standby streams on, an idle session still answers) and refuses new ones; raised again, new
/// clients get in.
#[test]
fn sighup_changes_max_connections_for_new_connections_only() {
    let conf_dir = TestDir::new("config");
    let conf = conf_dir.path().join("relay.toml");
    std::fs::write(&conf, "max_connections = 2\n").unwrap();
    let conf_arg = conf.display().to_string();
    let Topology {
        primary,
        relays: [mut relay],
        standbys: [standby],
        ..
    } = Topology::primary_relay_standby()
        .relay_args(&["--config", &conf_arg])
        .rows(1..=100)
        .start();
    let receiver = "select pid, status, sender_port from pg_stat_wal_receiver";
    let before = standby.psql(receiver);
    // The standby and this session: two of two.
    let mut session = ReplClient::connect(relay.port(), "session").expect("a second connection");
    assert_too_many_clients(&relay, "the third of max_connections 2");

    std::fs::write(&conf, "max_connections = 1\n").unwrap();
    assert!(os::signal(&[relay.pid()], "HUP"));
    relay.wait_for_log("reloaded: max_connections changed from 2 to 1");
    relay.wait_for_log("max_connections 1 is below the 2 downstream connections in progress");
    let reply = session.query("IDENTIFY_SYSTEM").expect("IDENTIFY_SYSTEM");
    assert_eq!(reply.error, None, "the session in progress was ended");
    workload::insert_rows(&primary, 101..=200);
    workload::wait_rows(&primary, &standby);
    assert_eq!(standby.psql(receiver), before, "the standby reconnected");
    assert_too_many_clients(&relay, "a new client past max_connections 1");

    std::fs::write(&conf, "max_connections = 3\n").unwrap();
    assert!(os::signal(&[relay.pid()], "HUP"));
    relay.wait_for_log("reloaded: max_connections changed from 1 to 3");
    let mut third = ReplClient::connect(relay.port(), "third").expect("a third connection");
    assert_eq!(
        third
            .query("IDENTIFY_SYSTEM")
            .expect("IDENTIFY_SYSTEM")
            .error,
        None
    );
    assert_too_many_clients(&relay, "the fourth of max_connections 3");
    relay.assert_running();
}

/// The `failover_standby` set reloaded while the relay runs: a candidate added holds once the
/// relay has seen it on the primary, and a missing one removed from the set stops holding, so
/// that the rows it held back reach the standby behind the relay. Turning failover-safe serving
/// off is named as needing a restart, and the running set stays.
#[test]
fn sighup_changes_the_failover_standby_set() {
    let conf_dir = TestDir::new("config");
    let conf = conf_dir.path().join("relay.toml");
    std::fs::write(&conf, "failover_standby = [\"ha1\"]\n").unwrap();
    let conf_arg = conf.display().to_string();
    let Topology {
        primary,
        candidates: [_ha1, ha2],
        relays: [mut relay],
        standbys: [standby],
        ..
    } = Topology::primary_relay_standby()
        .candidates(["ha1", "ha2"])
        .relay_args(&["--config", &conf_arg])
        .rows(1..=100)
        .start();
    let names = |s: &serde_json::Value| -> Vec<String> {
        s["failover"]["standbys"]
            .as_array()
            .map(|l| {
                l.iter()
                    .map(|c| {
                        format!(
                            "{}:{}",
                            c["application_name"].as_str().unwrap_or(""),
                            c["state"].as_str().unwrap_or("")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    relay.wait_status("ha1 alone, confirmed", |s| names(s) == ["ha1:confirmed"]);

    std::fs::write(&conf, "failover_standby = [\"ha1\", \"ha2\"]\n").unwrap();
    assert!(os::signal(&[relay.pid()], "HUP"));
    relay.wait_for_log("reloaded: failover_standby changed from [ha1] to [ha1, ha2]");
    relay.wait_status("ha1 and ha2 confirmed", |s| {
        names(s) == ["ha1:confirmed", "ha2:confirmed"]
    });
    // ha2, now in the set and seen, holds the relay once it is cut off.
    cut_off(&primary, &ha2, "ha2");
    relay.wait_status("the relay holding for the missing ha2", |s| {
        s["failover"]["holding"] == true && names(s) == ["ha1:confirmed", "ha2:missing"]
    });
    workload::insert_rows(&primary, 101..=200);

    // ha2 out of the set: nothing holds, the rows reach the standby.
    std::fs::write(&conf, "failover_standby = [\"ha1\"]\n").unwrap();
    assert!(os::signal(&[relay.pid()], "HUP"));
    relay.wait_for_log("reloaded: failover_standby changed from [ha1, ha2] to [ha1]");
    relay.wait_status("ha1 alone, not holding", |s| {
        s["failover"]["holding"] == false && names(s) == ["ha1:confirmed"]
    });
    workload::wait_rows(&primary, &standby);

    // Off: needs a restart; the relay keeps watching ha1.
    std::fs::write(&conf, "").unwrap();
    assert!(os::signal(&[relay.pid()], "HUP"));
    relay.wait_for_log("turning failover-safe serving off needs a restart");
    relay.wait_for_log(
        "changed settings that need a restart to apply (the running values stay): failover_standby",
    );
    assert_eq!(names(&relay.status()), ["ha1:confirmed"]);
    relay.assert_running();
}

/// The config file's `log_format = "json"` is honoured at startup: every line the relay logs
/// is one JSON object with the stable keys.
#[test]
fn log_format_from_the_config_file() {
    let conf_dir = TestDir::new("config");
    let conf = conf_dir.path().join("relay.toml");
    std::fs::write(&conf, "log_format = \"json\"\n").unwrap();
    let conf_arg = conf.display().to_string();
    let relay = Relay::start_without_upstream(&["--config", &conf_arg]);
    let line = relay.wait_for_log("\"message\":\"listening\"");
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    for key in ["timestamp", "level", "target", "message"] {
        assert!(v.get(key).is_some(), "no {key} in {line}");
    }
    assert_eq!(v["level"], "INFO");
    let log = relay.log();
    for l in log.lines().filter(|l| !l.starts_with("=====")) {
        assert!(
            serde_json::from_str::<serde_json::Value>(l).is_ok(),
            "not a JSON line: {l}"
        );
    }
}

/// `fsfreeze -f` on a mount point until dropped (declare it after the relay, so that it thaws
/// before the relay is killed and the file system unmounted).
struct Frozen(PathBuf);

impl Frozen {
    fn new(mnt: &std::path::Path) -> Frozen {
        let out = os::run_ok(
            std::process::Command::new("fsfreeze").arg("-f").arg(mnt),
            crate::harness::WAIT,
        );
        assert!(out.status.success(), "fsfreeze -f: {out:?}");
        Frozen(mnt.to_path_buf())
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = std::process::Command::new("fsfreeze")
            .arg("-u")
            .arg(&self.0)
            .status();
    }
}

/// A writer wedged in a write or an fsync (the data directory's file system frozen) stops the
/// watchdog pings, and they resume once the disk thaws and WAL is stored again.
#[test]
fn watchdog_stops_while_the_writer_is_wedged() {
    // Declared first so that it is dropped last, after the relay using it has been killed.
    let fs = match crate::harness::crash::SmallFs::new(128) {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!(
                "SKIPPED watchdog_stops_while_the_writer_is_wedged: cannot loop-mount a small \
                 file system ({why}); it needs root and loop devices"
            );
            return;
        }
    };
    let data = fs.path().join("relaydata");
    std::fs::create_dir(&data).expect("create the relay's data dir on the small file system");
    let primary = PgCluster::init_primary("primary");
    workload::create_table(&primary);
    let mut sock = NotifySocket::new();
    let env = sock.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut relay = Relay::start_in_with_env(&data, &primary.conninfo(), "relay", &[], &env);
    sock.wait_for("READY=1");
    relay.wait_ready();
    let before = sock.count("WATCHDOG=1");
    sock.drain(Duration::from_secs(2));
    assert!(sock.count("WATCHDOG=1") > before, "{:?}", sock.seen);

    let frozen = Frozen::new(&fs.path());
    // WAL arrives; the writer's write or fsync blocks on the frozen file system.
    workload::insert_rows(&primary, 1..=5000);
    wait_until("the watchdog pings to stop", || {
        let before = sock.count("WATCHDOG=1");
        sock.drain(Duration::from_secs(3));
        let pings = sock.count("WATCHDOG=1") - before;
        if pings == 0 {
            Ok(())
        } else {
            Err(format!("{pings} pings in 3s"))
        }
    });
    relay.wait_for_log("watchdog: the WAL writer made no progress");
    relay.assert_running();

    drop(frozen);
    relay.wait_flushed(primary.flush_lsn());
    let before = sock.count("WATCHDOG=1");
    sock.drain(Duration::from_secs(2));
    assert!(
        sock.count("WATCHDOG=1") > before,
        "no pings after the thaw: {:?}",
        sock.seen
    );
    relay.wait_for_log("makes progress again; pinging systemd");
}
