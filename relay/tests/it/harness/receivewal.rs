//! [`ReceiveWal`]: Debian's pg_receivewal streaming from a port (the relay's) into a temp dir,
//! looping on connection errors as operators run it, with `-v` output in `pg_receivewal.log`.
//! Also [`assert_segments_match`]: completed segments must be byte-identical to the primary's.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::thread;

use super::os::{self, TestDir};
use super::{wait_until, PgCluster};

/// A running pg_receivewal. Dropping it kills the process.
pub struct ReceiveWal {
    dir: TestDir,
    port: u16,
    child: Option<Child>,
}

impl ReceiveWal {
    /// Starts `pg_receivewal -D <dir> -h 127.0.0.1 -p <port> -U postgres -v`.
    pub fn start(port: u16) -> ReceiveWal {
        ReceiveWal::start_with(port, &[])
    }

    /// Like [`ReceiveWal::start`], with further pg_receivewal options (e.g. `-S SLOT`).
    pub fn start_with(port: u16, extra_args: &[&str]) -> ReceiveWal {
        let dir = TestDir::new("receivewal");
        let wal = dir.path().join("wal");
        os::pg_owned_dir(&wal);
        let log = File::create(dir.path().join("pg_receivewal.log")).expect("create log");
        let mut cmd = os::pg_command("pg_receivewal", dir.path());
        cmd.arg("-D")
            .arg(&wal)
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-U", "postgres", "--no-password", "-v"])
            .args(extra_args)
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        ReceiveWal {
            dir,
            port,
            child: Some(child),
        }
    }

    /// Where the WAL files land.
    pub fn wal_dir(&self) -> PathBuf {
        self.dir.path().join("wal")
    }

    /// pg_receivewal's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pg_receivewal.log")).unwrap_or_default()
    }

    /// The lines pg_receivewal printed as errors.
    pub fn errors(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("error:") || l.contains("FATAL") || l.contains("ERROR"))
            .map(str::to_string)
            .collect()
    }

    /// Panics unless the process is still running.
    pub fn assert_running(&mut self) {
        let child = self.child.as_mut().expect("pg_receivewal was stopped");
        if let Ok(Some(status)) = child.try_wait() {
            panic!("pg_receivewal exited ({status}):\n{}", self.log());
        }
    }

    /// Waits until pg_receivewal says it started streaming.
    pub fn wait_streaming(&self) {
        wait_until(
            &format!("pg_receivewal from port {} to start streaming", self.port),
            || {
                let log = self.log();
                if log.contains("starting log streaming") {
                    Ok(())
                } else {
                    Err(log)
                }
            },
        );
    }

    /// Names of the completed segment files (24 hex digits, no `.partial`), sorted.
    pub fn completed_segments(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.wal_dir())
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Waits until every segment in `names` is complete in the directory.
    pub fn wait_for_segments(&self, names: &[String]) {
        wait_until(
            &format!("pg_receivewal to complete segments {names:?}"),
            || {
                let have = self.completed_segments();
                if names.iter().all(|n| have.contains(n)) {
                    Ok(())
                } else {
                    Err(format!("completed {have:?}; log:\n{}", self.log()))
                }
            },
        );
    }
}

impl Drop for ReceiveWal {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            eprintln!(
                "----- pg_receivewal (port {}) output tail -----\n{}",
                self.port,
                os::tail(&self.dir.path().join("pg_receivewal.log"), 30)
            );
        }
    }
}

/// Asserts that every completed segment pg_receivewal holds is byte-identical to the file of
/// the same name in the primary's pg_wal, and that there are at least `at_least` of them.
pub fn assert_segments_match(receiver: &ReceiveWal, primary: &PgCluster, at_least: usize) {
    let names = receiver.completed_segments();
    assert!(
        names.len() >= at_least,
        "expected at least {at_least} completed segments, pg_receivewal has {names:?}"
    );
    for name in &names {
        assert_same_file(
            &receiver.wal_dir().join(name),
            &primary.pg_wal_dir().join(name),
        );
    }
}

/// Asserts that pg_receivewal's file `name` (a segment or a history file) is byte-identical
/// to the file of that name in `server`'s pg_wal.
pub fn assert_file_matches(receiver: &ReceiveWal, name: &str, server: &PgCluster) {
    assert_same_file(
        &receiver.wal_dir().join(name),
        &server.pg_wal_dir().join(name),
    );
}

/// Byte-compares two files, panicking with the first differing offset.
pub fn assert_same_file(ours: &Path, theirs: &Path) {
    let a = std::fs::read(ours).unwrap_or_else(|e| panic!("read {}: {e}", ours.display()));
    let b = std::fs::read(theirs).unwrap_or_else(|e| panic!("read {}: {e}", theirs.display()));
    if a != b {
        let at = a.iter().zip(&b).position(|(x, y)| x != y);
        panic!(
            "{} ({} bytes) differs from {} ({} bytes), first difference at byte {}",
            ours.display(),
            a.len(),
            theirs.display(),
            b.len(),
            at.map_or("(one is a prefix of the other)".to_string(), |o| o
                .to_string())
        );
    }
}
