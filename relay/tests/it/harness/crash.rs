//! Crash tools: what the crash tests do to a relay and its store besides `kill -9`
//! ([`Relay::kill9`](super::Relay::kill9), [`PgCluster::kill9`]).
//!
//! - [`Lcg`]: the seeded random sequence that picks when to kill (`WALRELAY_TEST_SEED`
//!   repeats a run);
//! - [`Writer`]: a steady write load on the primary that leaves torn records at the relay's end;
//! - [`torn_tail`]: whether a kill left a torn record in the newest `.partial`;
//! - crash images made by hand, for windows a random kill hits too rarely:
//!   [`unrenamed_whole_segment`], [`rewind_state`];
//! - damage and a full disk: [`flip_byte`], [`SmallFs`] and [`fill_disk`];
//! - [`unexpected_log_errors`]: ERROR and panic lines in a relay's log.
//!
//! The store helpers need the relay stopped (or killed): they edit its files underneath it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use walrelay::store::state;
use walrelay::wal::scan::first_nonzero;
use walrelay::wal::{find_end_of_wal, Lsn};

use super::os::{self, TestDir};
use super::pg::psql;
use super::{segment_start, PgCluster, Relay, SEG_SIZE};

/// A deterministic pseudo-random sequence (Knuth's MMIX LCG). The seed comes from
/// `WALRELAY_TEST_SEED` when set, else from the clock, and is printed so a run can be repeated.
pub struct Lcg(u64);

impl Lcg {
    pub fn from_env_or_clock(test: &str) -> Lcg {
        let seed = std::env::var("WALRELAY_TEST_SEED")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("{test}: seed {seed} (set WALRELAY_TEST_SEED={seed} to repeat this run)");
        Lcg(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    /// Uniform enough in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// A thread inserting rows into `t` on the primary as fast as psql goes: each call runs 20
/// small transactions of 25 rows; every 8th call also one transaction of 1000 rows of 1 kB that
/// then waits 0.3 s before it commits: meanwhile the primary's WAL writer flushes its WAL up
/// to the last full page, inside a record, and sends that, so the relay holds a torn record
/// at its end (a kill then leaves it behind); and about every 2 seconds a switch to a new WAL
/// segment (more often would fill the disks with the zeros of switched segments).
pub struct Writer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<u32>>,
}

impl Writer {
    /// Starts writing rows with ids from `first_id` on.
    pub fn start(primary: &PgCluster, first_id: u32) -> Writer {
        let conninfo = format!("{} dbname=postgres", primary.conninfo());
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            let mut next = first_id;
            let mut last_switch = Instant::now();
            let mut calls = 0u32;
            while !flag.load(Ordering::Relaxed) {
                let mut sql = String::new();
                for _ in 0..20 {
                    sql.push_str(&format!(
                        "begin; insert into t select g, md5(g::text) from generate_series({}, {}) g; commit; ",
                        next,
                        next + 24
                    ));
                    next += 25;
                }
                calls += 1;
                if calls.is_multiple_of(8) {
                    sql.push_str(&format!(
                        "begin; insert into t select g, repeat(md5(g::text), 32) from generate_series({}, {}) g; select pg_sleep(0.3); commit; ",
                        next,
                        next + 999
                    ));
                    next += 1000;
                }
                if last_switch.elapsed() >= Duration::from_secs(2) {
                    sql.push_str("select pg_switch_wal();");
                    last_switch = Instant::now();
                }
                if let Err(e) = psql(&conninfo, &sql) {
                    panic!("the writer's insert failed on the primary: {e}");
                }
            }
            next - first_id
        });
        Writer {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops the thread; returns how many rows it inserted.
    pub fn finish(mut self) -> u32 {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.take().map(JoinHandle::join) {
            Some(Ok(rows)) => rows,
            Some(Err(_)) => panic!("the writer thread failed (see its panic above)"),
            None => 0,
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// After a crash: whether the relay's newest `.partial` segment holds bytes past its last
/// whole valid record (a record torn by the kill); then the segment's name and where that
/// record ends.
pub fn torn_tail(relay: &Relay) -> Option<(String, Lsn)> {
    let (name, _) = relay
        .segments()
        .into_iter()
        .rfind(|(_, partial)| *partial)?;
    let data = std::fs::read(relay.data_dir().join("wal").join(format!("{name}.partial"))).ok()?;
    let start = segment_start(&name);
    let end = find_end_of_wal(&data, start, SEG_SIZE, None, None);
    first_nonzero(&data, start, end.valid_end).map(|_| (name, end.valid_end))
}

/// Rewrites the stopped relay's `relay.state` with its flush position at `flush`. The file is
/// documented as a lower bound of the durable position (saved about once a second and at
/// segment ends), so any earlier value is one a kill -9 can leave behind.
pub fn rewind_state(relay: &Relay, flush: Lsn) {
    let dir = relay.data_dir();
    let mut st = state::load(&dir)
        .expect("read relay.state")
        .expect("relay.state exists");
    st.flush_lsn = flush.to_string();
    state::save(&dir, &st).expect("write relay.state");
}

/// Makes the stopped relay's store what a kill -9 leaves after the last byte of the complete
/// segment `whole` was written but before its `.partial` was renamed: `whole` named
/// `.partial` again, no later segment, and `relay.state` saved while `whole` was written.
pub fn unrenamed_whole_segment(relay: &Relay, whole: &str) {
    let wal = relay.data_dir().join("wal");
    for (name, partial) in relay.segments() {
        if partial && name.as_str() > whole {
            std::fs::remove_file(wal.join(format!("{name}.partial"))).expect("remove");
        }
    }
    std::fs::rename(wal.join(whole), wal.join(format!("{whole}.partial"))).expect("rename");
    rewind_state(relay, segment_start(whole));
}

/// XORs the byte at `offset` of `path` with 0xFF and fsyncs the file; returns its old value.
pub fn flip_byte(path: &Path, offset: u64) -> u8 {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).expect("read the byte");
    f.write_all_at(&[b[0] ^ 0xFF], offset)
        .expect("write the flipped byte");
    f.sync_all().expect("fsync the damaged segment");
    b[0]
}

/// Lines of a relay's log at ERROR level or showing a panic, minus the ERROR lines that
/// contain one of `expected` (a panic is never expected).
pub fn unexpected_log_errors(log: &str, expected: &[&str]) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(" ERROR ") || l.contains("ERROR:") || l.contains("panicked"))
        .filter(|l| l.contains("panicked") || !expected.iter().any(|e| l.contains(e)))
        .map(str::to_string)
        .collect()
}

/// A small ext4 file system in a file, loop-mounted for the test; unmounted on drop. Declare
/// it before the relay using it, so that it is dropped after the relay was killed.
pub struct SmallFs {
    dir: TestDir,
    mounted: bool,
}

impl SmallFs {
    /// Creates and mounts a `size_mb` image, or says why it cannot (it needs root and loop
    /// devices).
    pub fn new(size_mb: u32) -> Result<SmallFs, String> {
        if !os::is_root() {
            return Err("not running as root".into());
        }
        let dir = TestDir::new("loopfs");
        let image = dir.path().join("fs.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).map_err(|e| format!("mkdir {}: {e}", mnt.display()))?;
        let run = |cmd: &mut Command| -> Result<(), String> {
            let out = os::run(cmd, Duration::from_secs(60))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{cmd:?} failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        };
        run(Command::new("truncate")
            .arg("-s")
            .arg(format!("{size_mb}M"))
            .arg(&image))?;
        run(Command::new("mkfs.ext4")
            .args(["-q", "-m", "0"])
            .arg(&image))?;
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mnt))?;
        Ok(SmallFs { dir, mounted: true })
    }

    /// Where it is mounted.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    /// Bytes free for us (root) on the file system.
    pub fn available(&self) -> u64 {
        let out = os::run_ok(
            Command::new("df")
                .args(["-B1", "--output=avail"])
                .arg(self.path()),
            Duration::from_secs(30),
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or_else(|| panic!("cannot parse df output {out:?}"))
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        if !self.mounted {
            return;
        }
        let mnt = self.path();
        let ok = Command::new("umount")
            .arg(&mnt)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Something still holds it (a process the test could not stop): detach it lazily
            // so the loop device goes away once that process does.
            eprintln!("umount {} failed; detaching it lazily", mnt.display());
            let _ = Command::new("umount").arg("-l").arg(&mnt).status();
        }
        self.mounted = false;
    }
}

/// Writes zeros into `path` until only about `leave` bytes are free on `fs` (or the disk
/// says it is full); fsyncs it.
pub fn fill_disk(fs: &SmallFs, path: &Path, leave: u64) {
    let mut f = File::create(path).expect("create the filler file");
    let chunk = vec![0u8; 1 << 20];
    let mut to_write = fs.available().saturating_sub(leave);
    while to_write > 0 {
        let n = to_write.min(chunk.len() as u64) as usize;
        if let Err(e) = f.write_all(&chunk[..n]) {
            eprintln!("filler stopped early: {e}");
            break;
        }
        to_write -= n as u64;
    }
    let _ = f.sync_all();
}
