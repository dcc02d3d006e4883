//! [`PgCluster`]: a real PostgreSQL server in a temp dir, listening on a free loopback port,
//! with its Unix socket and log file beside its data directory. Primaries come from initdb,
//! standbys from pg_basebackup with `primary_conninfo` pointing wherever the test says (the
//! relay, or the primary itself for the harness's own checks), or from a cold copy of the
//! primary's data directory for PostgreSQL versions whose bin dir has no pg_basebackup.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use super::os::{self, TestDir};
use super::tls::TestCerts;
use walrelay::wal::Lsn;

use super::{lsn, wait_until, WAIT};

/// A PostgreSQL cluster. Dropping it stops the server (`pg_ctl stop -m immediate`).
pub struct PgCluster {
    name: String,
    dir: TestDir,
    port: u16,
    running: bool,
    /// Where its initdb, pg_ctl and postgres are; `None`: the default ([`os::pg_bin_dir`]).
    bin_dir: Option<PathBuf>,
}

impl PgCluster {
    /// initdb, configure for replication and start a primary.
    pub fn init_primary(name: &str) -> PgCluster {
        PgCluster::init_primary_in(name, None)
    }

    /// [`PgCluster::init_primary`] with the PostgreSQL in `bin_dir` (initdb, pg_ctl and
    /// postgres; psql stays the default one).
    pub fn init_primary_with(name: &str, bin_dir: &Path) -> PgCluster {
        PgCluster::init_primary_in(name, Some(bin_dir.to_path_buf()))
    }

    fn init_primary_in(name: &str, bin_dir: Option<PathBuf>) -> PgCluster {
        let mut c = PgCluster::new(name);
        c.bin_dir = bin_dir;
        let data = c.data_dir();
        os::run_ok(
            c.command("initdb")
                .arg("-D")
                .arg(&data)
                .args([
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--no-locale",
                    "-E",
                    "UTF8",
                ])
                .arg("--no-sync"),
            WAIT,
        );
        c.append_conf(&format!(
            "{common}\
             wal_level = replica\n\
             max_wal_senders = 20\n\
             max_replication_slots = 20\n\
             wal_keep_size = '16MB'\n\
             fsync = on\n",
            common = c.common_conf()
        ));
        let hba = "local all all trust\n\
                   local replication all trust\n\
                   host all all 127.0.0.1/32 trust\n\
                   host replication all 127.0.0.1/32 trust\n";
        std::fs::write(data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
        c.start();
        c
    }

    /// pg_basebackup from `primary`, then start it as a hot standby whose walreceiver connects
    /// to `upstream_port` (the relay) as `application_name = name`.
    pub fn basebackup_standby(primary: &PgCluster, name: &str, upstream_port: u16) -> PgCluster {
        PgCluster::basebackup_standby_to(
            primary,
            name,
            &format!("host=127.0.0.1 port={upstream_port} user=postgres application_name={name}"),
        )
    }

    /// [`PgCluster::basebackup_standby`] with this `primary_conninfo` (no single quotes in it),
    /// e.g. one with `sslmode`, `sslrootcert` and `password`.
    pub fn basebackup_standby_to(
        primary: &PgCluster,
        name: &str,
        primary_conninfo: &str,
    ) -> PgCluster {
        assert!(!primary_conninfo.contains('\''), "{primary_conninfo}");
        assert!(
            name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "standby name {name:?} must be a plain identifier (it goes into primary_conninfo)"
        );
        let mut c = PgCluster::new(name);
        let data = c.data_dir();
        os::run_ok(
            os::pg_command("pg_basebackup", c.dir.path())
                .arg("-D")
                .arg(&data)
                .args(["-h", "127.0.0.1", "-p", &primary.port.to_string()])
                .args(["-U", "postgres", "-X", "stream", "-c", "fast", "--no-sync"]),
            WAIT * 2,
        );
        c.append_conf(&format!(
            "# standby settings written by the test harness\n{common}\
             primary_conninfo = '{primary_conninfo}'\n",
            common = c.common_conf()
        ));
        let signal = data.join("standby.signal");
        std::fs::write(&signal, "").expect("write standby.signal");
        os::give_to_pg_user(&signal);
        c.start();
        c
    }

    /// A hot standby made without pg_basebackup (which the npm PostgreSQL builds lack): stops
    /// `primary` cleanly, copies its data directory, starts it again, and starts the copy with
    /// the PostgreSQL in `bin_dir` (the primary's version) as a standby whose walreceiver
    /// connects to `upstream_port` as `application_name = name`. It replays from the
    /// primary's shutdown checkpoint, so whatever serves `upstream_port` must have that WAL
    /// (start the relay before making the copy).
    pub fn cold_copy_standby(
        primary: &mut PgCluster,
        name: &str,
        upstream_port: u16,
        bin_dir: &Path,
    ) -> PgCluster {
        assert!(
            name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "standby name {name:?} must be a plain identifier (it goes into primary_conninfo)"
        );
        let mut c = PgCluster::new(name);
        c.bin_dir = Some(bin_dir.to_path_buf());
        let data = c.data_dir();
        primary.stop();
        // As root, -a keeps the PostgreSQL user as the owner; otherwise we own both anyway.
        let copied = os::run(
            std::process::Command::new("cp")
                .arg("-a")
                .arg(primary.data_dir())
                .arg(&data),
            WAIT,
        );
        primary.start();
        let out = copied.unwrap_or_else(|e| panic!("{e}"));
        assert!(
            out.status.success(),
            "copying {} failed: {}",
            primary.data_dir().display(),
            String::from_utf8_lossy(&out.stderr)
        );
        // Later settings win: the copy gets its own port and socket dir.
        c.append_conf(&format!(
            "# standby settings written by the test harness\n{common}\
             primary_conninfo = 'host=127.0.0.1 port={upstream_port} user=postgres application_name={name}'\n",
            common = c.common_conf()
        ));
        let signal = data.join("standby.signal");
        std::fs::write(&signal, "").expect("write standby.signal");
        os::give_to_pg_user(&signal);
        c.start();
        c
    }

    /// An HA standby of `primary`: a base backup whose walreceiver streams directly from the
    /// primary as `application_name = name` (so it shows in the primary's
    /// `pg_stat_replication` under that name), hot standby on, ready to be promoted.
    pub fn ha_standby(primary: &PgCluster, name: &str) -> PgCluster {
        let standby = PgCluster::basebackup_standby(primary, name, primary.port());
        standby.wait_for_value(
            &format!("{name} to stream from the primary"),
            "select status from pg_stat_wal_receiver",
            "streaming",
        );
        standby
    }

    /// Points this standby's walreceiver at `upstream_port` (as `application_name` = its
    /// name), or at nothing with `None` (the walreceiver stops and stays stopped: the standby
    /// lags from now on). Reloads the configuration of a running server; `primary_conninfo`
    /// takes effect without a restart (PostgreSQL 13+).
    pub fn set_primary_conninfo(&self, upstream_port: Option<u16>) {
        let conninfo = upstream_port.map_or(String::new(), |port| {
            format!(
                "host=127.0.0.1 port={port} user=postgres application_name={}",
                self.name
            )
        });
        self.append_conf(&format!(
            "# changed by the test harness\nprimary_conninfo = '{conninfo}'\n"
        ));
        if self.running {
            self.psql("select pg_reload_conf()");
        }
    }

    /// Promotes this standby (`pg_ctl promote -w`) and waits until it accepts writes.
    pub fn promote(&mut self) {
        let timeout = WAIT.as_secs().to_string();
        if let Err(e) = self.pg_ctl(&["-w", "-t", &timeout, "promote"], WAIT * 2) {
            panic!("{}: {e}", self.name);
        }
        self.wait_for_value(
            "the promoted server to leave recovery",
            "select pg_is_in_recovery()",
            "f",
        );
    }

    /// `alter system set NAME = 'VALUE'` and a reload: for settings a reload applies.
    pub fn alter_system(&self, name: &str, value: &str) {
        self.psql(&format!("alter system set {name} = '{value}'"));
        self.psql("select pg_reload_conf()");
    }

    /// A physical slot `pin_wal` reserving WAL from now on, so that this server's segments are
    /// still there to be compared with the relay's and pg_receivewal's copies later (on a
    /// standby too: it keeps the WAL a relay will ask it for once promoted).
    pub fn pin_wal(&self) {
        self.psql("select pg_create_physical_replication_slot('pin_wal', true)");
    }

    /// `pg_current_wal_flush_lsn()` (a primary).
    pub fn flush_lsn(&self) -> Lsn {
        lsn(
            "pg_current_wal_flush_lsn()",
            &self.psql("select pg_current_wal_flush_lsn()"),
        )
    }

    /// `pg_last_wal_receive_lsn()` (a standby).
    pub fn receive_lsn(&self) -> Lsn {
        lsn(
            "pg_last_wal_receive_lsn()",
            &self.psql("select pg_last_wal_receive_lsn()"),
        )
    }

    /// `pg_last_wal_replay_lsn()` (a standby).
    pub fn replay_lsn(&self) -> Lsn {
        lsn(
            "pg_last_wal_replay_lsn()",
            &self.psql("select pg_last_wal_replay_lsn()"),
        )
    }

    /// The `restart_lsn` of the physical slot `slot` here (for a relay's slot: the flush
    /// position the relay last acknowledged); `None` when there is no such slot or no LSN.
    pub fn slot_restart_lsn(&self, slot: &str) -> Option<Lsn> {
        let out = self.psql(&format!(
            "select restart_lsn from pg_replication_slots where slot_name = '{slot}'"
        ));
        (!out.is_empty()).then(|| lsn("slot restart_lsn", &out))
    }

    /// Where `timeline` forked from its parent on this promoted server: the switch point in
    /// its history file (the last line's second field).
    pub fn fork_point(&self, timeline: u32) -> Lsn {
        let path = self.pg_wal_dir().join(format!("{timeline:08X}.history"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let field = text
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .and_then(|l| l.split('\t').nth(1))
            .unwrap_or_else(|| panic!("{} has no switch point: {text:?}", path.display()));
        lsn("switch point", field)
    }

    /// The cluster's system identifier (`pg_control_system()`).
    pub fn system_identifier(&self) -> String {
        self.psql("select system_identifier from pg_control_system()")
    }

    /// The whole server log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn new(name: &str) -> PgCluster {
        PgCluster {
            name: name.to_string(),
            dir: TestDir::new(name),
            port: os::free_port(),
            running: false,
            bin_dir: None,
        }
    }

    /// A command for one of this cluster's PostgreSQL programs (initdb, pg_ctl, ...).
    fn command(&self, program: &str) -> std::process::Command {
        match &self.bin_dir {
            Some(dir) => os::pg_command_in(dir, program, self.dir.path()),
            None => os::pg_command(program, self.dir.path()),
        }
    }

    /// Settings every cluster of ours has: where it listens and logs, hot standby on.
    fn common_conf(&self) -> String {
        format!(
            "listen_addresses = '127.0.0.1'\n\
             port = {port}\n\
             unix_socket_directories = '{sockets}'\n\
             hot_standby = on\n\
             logging_collector = off\n\
             log_line_prefix = '%m [%p] %q%a '\n\
             log_connections = on\n\
             log_disconnections = on\n\
             shared_buffers = '32MB'\n",
            port = self.port,
            sockets = self.dir.path().display()
        )
    }

    /// Appends settings to `postgresql.conf` (later lines win); they take effect at the next
    /// [`PgCluster::restart`] or reload.
    pub fn append_conf(&self, text: &str) {
        let path = self.data_dir().join("postgresql.conf");
        let mut f = OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open postgresql.conf");
        f.write_all(text.as_bytes())
            .expect("append to postgresql.conf");
    }

    /// Replaces `pg_hba.conf`; takes effect at the next restart or reload. Keep a line that
    /// lets the harness's psql in (`host all postgres 127.0.0.1/32 trust`).
    pub fn write_hba(&self, hba: &str) {
        std::fs::write(self.data_dir().join("pg_hba.conf"), hba).expect("write pg_hba.conf");
    }

    /// Turns TLS on with `certs`' server certificate and restarts the server.
    pub fn enable_ssl(&mut self, certs: &TestCerts) {
        self.append_conf(&format!(
            "# TLS, written by the test harness
ssl = on
ssl_cert_file = '{}'
ssl_key_file = '{}'
",
            certs.server_cert().display(),
            certs.server_key().display()
        ));
        self.restart();
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// libpq conninfo for a client of this server (e.g. the relay's `--upstream`).
    pub fn conninfo(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres", self.port)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn pg_wal_dir(&self) -> PathBuf {
        self.data_dir().join("pg_wal")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// The last lines of the server log.
    pub fn log_tail(&self) -> String {
        os::tail(&self.log_path(), 40)
    }

    fn pg_ctl(&self, args: &[&str], timeout: Duration) -> Result<(), String> {
        let out = os::run(
            self.command("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .args(args),
            timeout,
        )?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl {args:?} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&mut self) {
        let log = self.log_path();
        let log = log.to_string_lossy();
        let timeout = WAIT.as_secs().to_string();
        // Set first: a start that fails or times out may still have left a server to stop.
        self.running = true;
        if let Err(e) = self.pg_ctl(&["-l", &log, "-w", "-t", &timeout, "start"], WAIT * 2) {
            panic!("{}: {e}", self.name);
        }
    }

    /// Clean shutdown (`pg_ctl stop -m fast`).
    pub fn stop(&mut self) {
        let timeout = WAIT.as_secs().to_string();
        if let Err(e) = self.pg_ctl(&["-m", "fast", "-w", "-t", &timeout, "stop"], WAIT * 2) {
            panic!("{}: {e}", self.name);
        }
        self.running = false;
    }

    /// Stops (if running) and starts again.
    pub fn restart(&mut self) {
        if self.running {
            self.stop();
        }
        self.start();
    }

    /// The postmaster's pid, from postmaster.pid.
    pub fn postmaster_pid(&self) -> Option<u32> {
        let text = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// Crash: SIGKILL the postmaster and all its children at once, and wait until they are gone.
    pub fn kill9(&mut self) {
        if let Err(e) = self.kill_all() {
            panic!("{}: {e}", self.name);
        }
    }

    fn kill_all(&mut self) -> Result<(), String> {
        let pm = self.postmaster_pid().ok_or("no postmaster.pid to kill")?;
        let mut pids = os::children_of(pm);
        pids.push(pm);
        os::signal(&pids, "KILL");
        if !os::wait_gone(&pids, WAIT) {
            return Err(format!("processes {pids:?} survived SIGKILL"));
        }
        // The postmaster's parent is pid 1, which may be slow to reap it (or never do so in a
        // container). A zombie still "exists" for the next start's lock-file checks
        // (kill(pid, 0)), so the dead server's lock files are stale: remove them.
        if !os::reaped(pm) {
            let socket_lock = format!(".s.PGSQL.{}.lock", self.port);
            let _ = std::fs::remove_file(self.data_dir().join("postmaster.pid"));
            let _ = std::fs::remove_file(self.dir.path().join(socket_lock));
        }
        self.running = false;
        Ok(())
    }

    /// Runs `sql` with psql against the TCP port; Ok(output) or Err(psql's stderr).
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        psql(&format!("{} dbname=postgres", self.conninfo()), sql)
    }

    /// Runs `sql` and returns its output; panics with psql's error on failure.
    pub fn psql(&self, sql: &str) -> String {
        self.try_psql(sql)
            .unwrap_or_else(|e| panic!("{}: psql {sql:?} failed: {e}", self.name))
    }

    /// Polls `sql` until its output satisfies `done`; returns that output. Query errors count as
    /// "not yet" (a standby may be restarting).
    pub fn wait_for(&self, what: &str, sql: &str, done: impl Fn(&str) -> bool) -> String {
        wait_until(
            &format!("{what} (on {}: {sql})", self.name),
            || match self.try_psql(sql) {
                Ok(out) if done(&out) => Ok(out),
                Ok(out) => Err(format!("{out:?}")),
                Err(e) => Err(format!("error: {e}")),
            },
        )
    }

    /// Polls `sql` until it prints exactly `expected`.
    pub fn wait_for_value(&self, what: &str, sql: &str, expected: &str) {
        self.wait_for(what, sql, |out| out == expected);
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "----- {} (port {}) server log tail -----\n{}",
                self.name,
                self.port,
                self.log_tail()
            );
        }
        if self.running
            && self
                .pg_ctl(&["-m", "immediate", "-w", "-t", "30", "stop"], WAIT)
                .is_err()
        {
            let _ = self.kill_all();
        }
    }
}

/// Runs `sql` with `psql -X -At` (as the PostgreSQL user) against a libpq conninfo;
/// Ok(unaligned tuples-only output, trimmed) or Err(psql's stderr).
pub fn psql(conninfo: &str, sql: &str) -> Result<String, String> {
    let out = os::run(
        os::pg_command("psql", &std::env::temp_dir()).args([
            "-X",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            conninfo,
            "-c",
            sql,
        ]),
        WAIT,
    )?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}
