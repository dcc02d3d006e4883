//! Operating-system plumbing for the harness: running PostgreSQL programs as an unprivileged
//! user, temp dirs that user owns, bounded waits for child programs, signals, free loopback
//! ports and log tails.
//!
//! PostgreSQL refuses to run as root and CI runs as root, so when the test process is root
//! every PostgreSQL program runs through `setpriv` as `WALRELAY_TEST_PGUSER` (default
//! `postgres`). `setpriv` execs in place, so a child's pid is the program's own pid and a signal
//! sent to it reaches the program, not a wrapper.

use std::collections::HashSet;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The directory holding initdb, pg_ctl, postgres, psql, pg_basebackup and pg_receivewal:
/// `WALRELAY_TEST_PGBIN`, else Debian's 15.
pub fn pg_bin_dir() -> PathBuf {
    std::env::var_os("WALRELAY_TEST_PGBIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

/// Whether the tests run as root (then PostgreSQL programs run as the PostgreSQL user).
pub fn is_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| {
        std::fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .unwrap_or(false)
    })
}

/// The OS user PostgreSQL programs run as when the tests run as root.
fn pg_user() -> String {
    std::env::var("WALRELAY_TEST_PGUSER").unwrap_or_else(|_| "postgres".to_string())
}

/// A command for a PostgreSQL program, run as the unprivileged user when we are root, in `cwd`
/// (a directory that user can enter), with `PG*` variables and locale cleared so that nothing
/// from the developer's environment changes what it connects to or how it words its errors.
pub fn pg_command(program: &str, cwd: &Path) -> Command {
    pg_command_in(&pg_bin_dir(), program, cwd)
}

/// [`pg_command`] for the program in another bin dir (another PostgreSQL version).
pub fn pg_command_in(bin_dir: &Path, program: &str, cwd: &Path) -> Command {
    let bin = bin_dir.join(program);
    let mut cmd = if is_root() {
        let user = pg_user();
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={user}"))
            .arg(format!("--regid={user}"))
            .arg("--init-groups")
            .arg("--")
            .arg(&bin);
        c
    } else {
        Command::new(&bin)
    };
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    cmd.current_dir(cwd)
        .env("HOME", cwd)
        .env("LC_ALL", "C")
        .env("LANG", "C")
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null());
    cmd
}

/// Whether to keep the temp dirs of a failed test (`WALRELAY_TEST_KEEP=1`).
fn keep_on_failure() -> bool {
    std::env::var_os("WALRELAY_TEST_KEEP").is_some_and(|v| !v.is_empty() && v != "0")
}

/// A temp dir named after `label`, owned by the PostgreSQL user. Removed on drop, unless the
/// test is failing and `WALRELAY_TEST_KEEP` is set, in which case its path is printed.
pub struct TestDir(Option<TempDir>);

impl TestDir {
    pub fn new(label: &str) -> TestDir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("walrelay-it-{label}-"))
            .tempdir()
            .expect("create a temp dir for the test");
        give_to_pg_user(dir.path());
        TestDir(Some(dir))
    }

    pub fn path(&self) -> &Path {
        self.0
            .as_ref()
            .map(TempDir::path)
            .unwrap_or(Path::new("/nonexistent"))
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if thread::panicking() && keep_on_failure() {
            if let Some(dir) = self.0.take() {
                eprintln!("kept test dir {}", dir.keep().display());
            }
        }
    }
}

/// Makes a file or directory we (root) created belong to the PostgreSQL user.
pub fn give_to_pg_user(path: &Path) {
    if is_root() {
        let out = Command::new("chown")
            .arg(format!("{}:", pg_user()))
            .arg(path)
            .output()
            .expect("run chown");
        assert!(
            out.status.success(),
            "chown {} to {} failed (does the user exist? scripts/install-deps creates it): {}",
            path.display(),
            pg_user(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Creates a directory the PostgreSQL user owns.
pub fn pg_owned_dir(path: &Path) {
    std::fs::create_dir_all(path).expect("create directory");
    give_to_pg_user(path);
}

/// Runs `cmd` to completion, capturing its output, killing it after `timeout`.
pub fn run(cmd: &mut Command, timeout: Duration) -> Result<Output, String> {
    let desc = format!("{cmd:?}");
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {desc}: {e}"))?;
    let stdout = reader(child.stdout.take());
    let stderr = reader(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{desc} did not finish within {timeout:?}"));
            }
            Err(e) => return Err(format!("waiting for {desc}: {e}")),
        }
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

fn reader(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

/// Runs `cmd` and panics with its stderr unless it exits 0 within `timeout`.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> Output {
    let out = run(cmd, timeout).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Sends `signal` (`TERM`, `KILL`, ...) to each pid with kill(1). False when kill failed.
pub fn signal(pids: &[u32], signal: &str) -> bool {
    if pids.is_empty() {
        return true;
    }
    Command::new("kill")
        .arg(format!("-{signal}"))
        .args(pids.iter().map(u32::to_string))
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The state letter in /proc/PID/stat and the parent pid, if the process exists.
fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ppid ...": comm may hold spaces and parentheses; the rest follows the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Whether the process exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    matches!(proc_stat(pid), Some((state, _)) if state != 'Z' && state != 'X')
}

/// Pids of the live children of `parent`.
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| matches!(proc_stat(pid), Some((s, ppid)) if ppid == parent && s != 'Z'))
        .collect()
}

/// Whether the process is gone entirely (reaped by its parent, no zombie left).
pub fn reaped(pid: u32) -> bool {
    proc_stat(pid).is_none()
}

/// Waits until none of `pids` is alive; false if some still are after `timeout`.
pub fn wait_gone(pids: &[u32], timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while pids.iter().any(|&p| pid_alive(p)) {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Waits up to `timeout` for `child` to exit.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => return None,
        }
    }
}

/// A loopback port nobody listens on, never handed out twice by this process.
///
/// Ports come from below the kernel's ephemeral range, so that no client socket of the tests
/// (psql, walreceivers) can be holding one when a server binds it; only when that range is
/// too small do we take an ephemeral port from the kernel.
pub fn free_port() -> u16 {
    static NEXT: Mutex<Option<(u16, HashSet<u16>)>> = Mutex::new(None);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low);
    let mut next = NEXT.lock().unwrap_or_else(|e| e.into_inner());
    let span = high.saturating_sub(low);
    // Different test processes start at different places in the range.
    let (cursor, given) =
        next.get_or_insert_with(|| (std::process::id() as u16 % span.max(1), HashSet::new()));
    if span >= 1000 {
        for _ in 0..span {
            let port = low + *cursor;
            *cursor = (*cursor + 1) % span;
            if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
                given.insert(port);
                return port;
            }
        }
    }
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
        if given.insert(port) {
            return port;
        }
    }
}

/// The last `lines` lines of a text file, or a note saying why there are none.
pub fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Names of the entries of `dir` (none when it does not exist), sorted.
pub fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
