//! The failover campaign (issue 11, `scripts/failover-campaign`): randomized rounds of real
//! failovers on a full topology, each round checked the way an operator would check it
//! afterwards. `#[ignore]`d: it runs minutes, not seconds; the script (or
//! `cargo test -p walrelay --test it -- campaign --ignored --nocapture --test-threads=1`) runs it.
//!
//! Each round builds a fresh topology: a primary; an HA standby `ha` streaming from it (a
//! physical slot `pin_wal` on it keeps the old timeline's WAL a restarted relay asks for);
//! relay A with `--failover-standby ha`, fed by the conninfo `primary,ha` with
//! `target_session_attrs=read-write`; relay B fed by A; relay C fed by B; and a standby behind
//! each relay (`standby_a`, `standby_b`, `standby_c`). A background writer inserts rows on the
//! primary while the round's event happens. The event is one of [`Kind`], picked by a seeded
//! xorshift generator; then `ha` is promoted (for [`Kind::BackToBack`], after that the old
//! primary is made a standby of `ha` and promoted back).
//!
//! After each round: rows are written on the new primary, and each standby must reach the new
//! primary's timeline and hold exactly its rows within [`CONVERGE_BOUND`]. One that does not is
//! a **rebuild** (it is stuck on the old timeline, or forked, so an operator would rebuild it).
//! **Rows lost** counts rows the new primary has that a standby lacks plus rows a standby has
//! that the new primary lacks (a fork). Rows the writer had committed on the old primary that
//! the new primary never got (a lagging candidate) are PostgreSQL's asynchronous replication,
//! not the relay's doing: reported as `acked_not_on_new_primary`, not counted. A round that
//! panics (a harness wait timed out) is counted as an error. The test fails if any round had a
//! rebuild, a lost row or an error.
//!
//! `WALRELAY_CAMPAIGN_SEED` (default: the clock, printed), `WALRELAY_CAMPAIGN_ROUNDS` (default
//! 3), `WALRELAY_CAMPAIGN_KINDS` (comma-separated [`Kind::name`]s to pick from; default all).
//! Every result line starts with `campaign:` for the script to collect.

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::failover::{cut_off, wait_received_tli};
use crate::harness::pg::psql;
use crate::harness::{os, wait_until, workload, PgCluster, Relay, Topology};

/// How long a standby may take to reach the new primary's timeline and rows before it counts
/// as needing a rebuild. Generous: it is a verdict on "can it follow at all", not a speed test.
const CONVERGE_BOUND: Duration = Duration::from_secs(180);

/// Row count and digest of table `t`, as `workload::wait_rows` compares them.
const DIGEST: &str = "select count(*) || ':' || coalesce(md5(string_agg(id::text || '=' || v, ',' order by id)), '') from t";

/// What happens to the primary in a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `pg_ctl stop -m fast` on the primary (every byte reaches `ha`), promote `ha`.
    Switchover,
    /// `kill -9` of the primary under load right after `ha` has caught up with it, promote.
    CrashCurrent,
    /// `ha` is cut off, the writer goes on (relay A holds), `kill -9` of the primary, promote.
    CrashLagging,
    /// Relay A is killed (`kill -9`) under load, the primary stopped, `ha` promoted, rows
    /// written on it, and only then relay A restarted.
    RelayKilled,
    /// `ha` stopped, relay A restarted while it is down, `ha` started again, the primary
    /// killed (`kill -9`) without waiting for `ha` to catch up, promote.
    CandidateDown,
    /// A switchover to `ha`, then the old primary re-made a standby of `ha` and a switchover
    /// back to it (timeline 3).
    BackToBack,
}

const KINDS: [Kind; 6] = [
    Kind::Switchover,
    Kind::CrashCurrent,
    Kind::CrashLagging,
    Kind::RelayKilled,
    Kind::CandidateDown,
    Kind::BackToBack,
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Switchover => "switchover",
            Kind::CrashCurrent => "crash_current",
            Kind::CrashLagging => "crash_lagging",
            Kind::RelayKilled => "relay_killed",
            Kind::CandidateDown => "candidate_down",
            Kind::BackToBack => "back_to_back",
        }
    }
}

/// xorshift64*: enough randomness to pick kinds and load sizes, repeatable from the seed.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        // Zero is xorshift's one fixed point; mix the seed so that 1, 2, 3 differ at once.
        XorShift((seed ^ 0x9E37_79B9_7F4A_7C15).max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A thread inserting batches of 50 rows (ids from `first` on, one transaction each, a WAL
/// switch every 40 batches) until told to stop or until the server stops answering (a crash
/// or a shutdown is the point). Counts the rows the server acknowledged.
struct Writer {
    first: u32,
    acked: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Writer {
    fn start(primary: &PgCluster, first: u32) -> Writer {
        let conninfo = format!("{} dbname=postgres", primary.conninfo());
        let acked = Arc::new(AtomicU32::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, flag) = (acked.clone(), stop.clone());
        let handle = thread::spawn(move || {
            let mut batches = 0u32;
            while !flag.load(Ordering::Relaxed) {
                let from = first + count.load(Ordering::Relaxed);
                let mut sql = format!(
                    "insert into t select g, md5(g::text) from generate_series({from}, {}) g;",
                    from + 49
                );
                batches += 1;
                if batches.is_multiple_of(40) {
                    sql.push_str("select pg_switch_wal();");
                }
                if psql(&conninfo, &sql).is_err() {
                    return;
                }
                count.fetch_add(50, Ordering::Relaxed);
            }
        });
        Writer {
            first,
            acked,
            stop,
            handle: Some(handle),
        }
    }

    fn acked(&self) -> u32 {
        self.acked.load(Ordering::Relaxed)
    }

    /// Waits until `rows` more rows than now are acknowledged (the load is really on).
    fn wait_more(&self, rows: u32) {
        let target = self.acked() + rows;
        wait_until(&format!("the writer to commit {rows} more rows"), || {
            let now = self.acked();
            if now >= target {
                Ok(())
            } else if self.handle.as_ref().is_some_and(JoinHandle::is_finished) {
                // Not an error to wait out: the server refused the writer.
                panic!("the writer stopped: the primary refused an insert")
            } else {
                Err(format!("{now} rows committed"))
            }
        });
    }

    /// Stops the thread; returns the range of ids it had acknowledged.
    fn finish(mut self) -> (u32, u32) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        (self.first, self.acked())
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

/// The outcome of one round.
struct Round {
    kind: Kind,
    converge_s: f64,
    rebuilds: u32,
    rows_lost: u64,
    acked_not_on_new_primary: u64,
    rows_written: u64,
    notes: Vec<String>,
}

/// The ids in `t` on `server`, or None if it does not answer.
fn ids(server: &PgCluster) -> Option<BTreeSet<u32>> {
    let out = server.try_psql("select id from t order by id").ok()?;
    Some(out.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// Waits until `deadline` for `standby` to stream `timeline` and hold exactly
/// `expected` (the new primary's digest). Err: what it last showed.
fn converge(
    standby: &PgCluster,
    expected: &str,
    timeline: u32,
    deadline: Instant,
) -> Result<(), String> {
    let want_tli = format!("streaming:{timeline}");
    loop {
        let digest = standby.try_psql(DIGEST);
        let tli =
            standby.try_psql("select status || ':' || received_tli from pg_stat_wal_receiver");
        match (&digest, &tli) {
            (Ok(d), Ok(t)) if d == expected && *t == want_tli => return Ok(()),
            _ if Instant::now() >= deadline => {
                let receiver = standby.try_psql(
                    "select flushed_lsn || ' from port ' || sender_port || ', latest end ' \
                     || latest_end_lsn from pg_stat_wal_receiver",
                );
                return Err(format!(
                    "rows {digest:?} (want {expected}), walreceiver {tli:?} {receiver:?}"
                ));
            }
            _ => thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The standbys' verdict against `new_primary` on `timeline`: rows are written there first,
/// then each standby must converge. Returns (seconds from `since` until all converged,
/// rebuilds, rows lost, notes).
fn check_standbys(
    new_primary: &PgCluster,
    timeline: u32,
    standbys: &[(&str, &PgCluster)],
    since: Instant,
) -> (f64, u32, u64, Vec<String>) {
    // Marker rows per timeline: a second check (back to back) must not insert the same ids.
    let first = 9_000_001 + timeline * 1000;
    workload::insert_rows(new_primary, first..=first + 499);
    let expected = new_primary.psql(DIGEST);
    let (mut rebuilds, mut lost, mut notes) = (0, 0u64, Vec::new());
    // One bound for all the standbys of the round: they converge (or not) at the same time.
    let deadline = Instant::now() + CONVERGE_BOUND;
    for (name, standby) in standbys {
        if let Err(last) = converge(standby, &expected, timeline, deadline) {
            rebuilds += 1;
            let theirs = ids(standby).unwrap_or_default();
            let ours = ids(new_primary).unwrap_or_default();
            let missing = ours.difference(&theirs).count() as u64;
            let extra = theirs.difference(&ours).count() as u64;
            lost += missing + extra;
            notes.push(format!(
                "{name}: REBUILD (missing {missing}, extra {extra}; last {last}; last error: {})",
                standby
                    .log()
                    .lines()
                    .rfind(|l| l.contains("FATAL") || l.contains("ERROR"))
                    .unwrap_or_default(),
            ));
        }
    }
    (since.elapsed().as_secs_f64(), rebuilds, lost, notes)
}

/// Rows the writer had acknowledged in `first..first+acked` that `new_primary` does not have.
fn acked_missing(new_primary: &PgCluster, (first, acked): (u32, u32)) -> u64 {
    if acked == 0 {
        return 0;
    }
    let present: u64 = new_primary
        .psql(&format!(
            "select count(*) from t where id between {first} and {}",
            first + acked - 1
        ))
        .parse()
        .unwrap_or(0);
    u64::from(acked).saturating_sub(present)
}

/// Makes the cleanly stopped old primary a standby of `upstream` (its shutdown checkpoint
/// reached `upstream` before the promotion, so it can follow the new timeline without
/// pg_rewind) and waits until it streams `timeline`.
fn remake_as_standby(old: &mut PgCluster, upstream: &PgCluster, timeline: u32) {
    old.set_primary_conninfo(Some(upstream.port()));
    let signal = old.data_dir().join("standby.signal");
    std::fs::write(&signal, "").expect("write standby.signal");
    os::give_to_pg_user(&signal);
    old.start();
    wait_received_tli(old, timeline);
    old.pin_wal();
}

/// One round of `kind`, on a fresh topology.
fn round(kind: Kind, rng: &mut XorShift) -> Round {
    let Topology {
        mut primary,
        candidates: [mut ha],
        relays: [mut relay_a, relay_b, relay_c],
        standbys: [standby_c],
        ..
    } = Topology::primary_relay_standby()
        .candidates(["ha"])
        .on_candidates(PgCluster::pin_wal)
        .relays(["relay_a", "relay_b", "relay_c"])
        .failover_standby("ha")
        .standbys(["standby_c"])
        .rows(1..=100)
        .start();
    let standby_a = PgCluster::basebackup_standby(&primary, "standby_a", relay_a.port());
    let standby_b = PgCluster::basebackup_standby(&primary, "standby_b", relay_b.port());
    for standby in [&standby_a, &standby_b, &standby_c] {
        workload::wait_rows(&primary, standby);
        wait_received_tli(standby, 1);
    }
    let standbys = [
        ("standby_a", &standby_a),
        ("standby_b", &standby_b),
        ("standby_c", &standby_c),
    ];
    // How much load before and during the event: 250 to 2500 rows each.
    let mut load = || 250 + 250 * rng.below(10) as u32;
    let writer = Writer::start(&primary, 1_000_001);
    writer.wait_more(load());
    let mut notes = Vec::new();

    let (promoted, timeline, acked) = match kind {
        Kind::Switchover => {
            writer.wait_more(load());
            primary.stop();
            let acked = writer.finish();
            ha.promote();
            (Instant::now(), 2, acked)
        }
        Kind::CrashCurrent => {
            writer.wait_more(load());
            let target = primary.flush_lsn();
            wait_until("ha to catch up with the primary", || {
                let at = ha.receive_lsn();
                if at >= target {
                    Ok(())
                } else {
                    Err(format!("ha received {at}, primary flushed {target}"))
                }
            });
            primary.kill9();
            let acked = writer.finish();
            ha.promote();
            (Instant::now(), 2, acked)
        }
        Kind::CrashLagging => {
            let ha_end = cut_off(&primary, &ha, "ha");
            relay_a.wait_status("relay A holding for the missing ha", |s| {
                s["failover"]["holding"] == true
            });
            writer.wait_more(load());
            let flushed = primary.flush_lsn();
            relay_a.wait_flushed(flushed);
            notes.push(format!("ha cut off at {ha_end}, primary flushed {flushed}"));
            primary.kill9();
            let acked = writer.finish();
            ha.promote();
            (Instant::now(), 2, acked)
        }
        Kind::RelayKilled => {
            relay_a.kill9();
            writer.wait_more(load());
            primary.stop();
            let acked = writer.finish();
            ha.promote();
            let promoted = Instant::now();
            workload::insert_rows(&ha, 8_000_001..=8_000_500);
            relay_a.restart();
            relay_a.wait_ready();
            (promoted, 2, acked)
        }
        Kind::CandidateDown => {
            ha.stop();
            writer.wait_more(load());
            let status = relay_a.stop();
            assert!(status.success(), "relay A exited {status}");
            relay_a.restart();
            relay_a.wait_ready();
            writer.wait_more(load());
            ha.start();
            primary.kill9();
            let acked = writer.finish();
            ha.promote();
            (Instant::now(), 2, acked)
        }
        Kind::BackToBack => {
            writer.wait_more(load());
            primary.stop();
            let first = writer.finish();
            ha.promote();
            let promoted = Instant::now();
            let (secs, rebuilds, lost, first_notes) = check_standbys(&ha, 2, &standbys, promoted);
            notes.push(format!(
                "first switch: converged in {secs:.1}s, rebuilds {rebuilds}, rows lost {lost}"
            ));
            notes.extend(first_notes);
            remake_as_standby(&mut primary, &ha, 2);
            workload::wait_rows(&ha, &primary);
            let writer = Writer::start(&ha, 2_000_001);
            writer.wait_more(load());
            ha.stop();
            let second = writer.finish();
            primary.promote();
            let promoted_back = Instant::now();
            let (secs2, rebuilds2, lost2, notes2) =
                check_standbys(&primary, 3, &standbys, promoted_back);
            notes.extend(notes2);
            let acked_missing = acked_missing(&primary, first) + acked_missing(&primary, second);
            return finish_round(
                [&relay_a, &relay_b, &relay_c],
                Round {
                    kind,
                    converge_s: secs + secs2,
                    rebuilds: rebuilds + rebuilds2,
                    rows_lost: lost + lost2,
                    acked_not_on_new_primary: acked_missing,
                    rows_written: u64::from(first.1 + second.1),
                    notes,
                },
            );
        }
    };
    let (secs, rebuilds, lost, more) = check_standbys(&ha, timeline, &standbys, promoted);
    notes.extend(more);
    let acked_missing = acked_missing(&ha, acked);
    finish_round(
        [&relay_a, &relay_b, &relay_c],
        Round {
            kind,
            converge_s: secs,
            rebuilds,
            rows_lost: lost,
            acked_not_on_new_primary: acked_missing,
            rows_written: u64::from(acked.1),
            notes,
        },
    )
}

/// Adds what the relays say about their downstreams to the round's notes.
/// After a rebuild, also prints each relay's `/status` and log tail (the round's dirs are gone
/// once it ends): `campaign-diag:` lines in the full output.
fn finish_round(relays: [&Relay; 3], mut round: Round) -> Round {
    for (name, relay) in ["A", "B", "C"].iter().zip(relays) {
        if round.rebuilds > 0 {
            let status = relay.status();
            println!(
                "campaign-diag: relay {name} upstream {} downstreams {}",
                status["upstream"], status["downstreams"]
            );
            for line in relay.log_tail().lines() {
                println!("campaign-diag: relay {name} log: {line}");
            }
            // The whole data directory and log, for a post-mortem (the round's dirs are gone
            // once it ends): `WALRELAY_CAMPAIGN_KEEP=DIR`.
            if let Ok(keep) = std::env::var("WALRELAY_CAMPAIGN_KEEP") {
                let dest = std::path::Path::new(&keep).join(format!(
                    "{}-{name}",
                    SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0)
                ));
                let _ = std::fs::create_dir_all(&dest);
                let _ = std::process::Command::new("cp")
                    .arg("-a")
                    .arg(relay.data_dir())
                    .arg(&dest)
                    .status();
                let _ = std::fs::write(dest.join("relay.log"), relay.log());
                println!("campaign-diag: relay {name} kept in {}", dest.display());
            }
        }
        let diverged = relay.status()["diverged_downstreams"].clone();
        if diverged.as_array().is_some_and(|d| !d.is_empty()) {
            round
                .notes
                .push(format!("relay {name} diverged_downstreams {diverged}"));
        }
        if relay.log().contains("moved it to diverged/") {
            round.notes.push(format!(
                "relay {name} moved its own WAL past the fork aside"
            ));
        }
    }
    round
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.trim().parse().ok())
}

/// The campaign; see the module doc.
#[test]
#[ignore = "minutes long: run by scripts/failover-campaign"]
fn campaign() {
    let seed = env_u64("WALRELAY_CAMPAIGN_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(1)
    });
    let rounds = env_u64("WALRELAY_CAMPAIGN_ROUNDS").unwrap_or(3);
    let kinds: Vec<Kind> = match std::env::var("WALRELAY_CAMPAIGN_KINDS") {
        Ok(list) if !list.trim().is_empty() => list
            .split(',')
            .map(|n| {
                let n = n.trim();
                *KINDS
                    .iter()
                    .find(|k| k.name() == n)
                    .unwrap_or_else(|| panic!("unknown campaign kind {n:?}"))
            })
            .collect(),
        _ => KINDS.to_vec(),
    };
    println!(
        "campaign: seed {seed}, {rounds} rounds, kinds {} (WALRELAY_CAMPAIGN_SEED={seed} repeats it)",
        kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(",")
    );
    let mut rng = XorShift::new(seed);
    let mut results: Vec<Result<Round, (Kind, String)>> = Vec::new();
    let started = Instant::now();
    for n in 1..=rounds {
        let kind = kinds[rng.below(kinds.len() as u64) as usize];
        let t0 = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| round(kind, &mut rng)));
        let line = match &outcome {
            Ok(r) => format!(
                "campaign: round {n}/{rounds} kind={} converge_s={:.1} rebuilds={} rows_lost={} \
                 acked_not_on_new_primary={} rows_written={} round_s={:.0}{}",
                r.kind.name(),
                r.converge_s,
                r.rebuilds,
                r.rows_lost,
                r.acked_not_on_new_primary,
                r.rows_written,
                t0.elapsed().as_secs_f64(),
                if r.notes.is_empty() {
                    String::new()
                } else {
                    format!(" notes: {}", r.notes.join("; "))
                }
            ),
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                format!(
                    "campaign: round {n}/{rounds} kind={} ERROR round_s={:.0}: {}",
                    kind.name(),
                    t0.elapsed().as_secs_f64(),
                    msg.lines().next().unwrap_or_default()
                )
            }
        };
        println!("{line}");
        results.push(outcome.map_err(|p| {
            (
                kind,
                p.downcast_ref::<String>().cloned().unwrap_or_default(),
            )
        }));
    }

    let ok: Vec<&Round> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    let errors = results.len() - ok.len();
    let rebuilds: u32 = ok.iter().map(|r| r.rebuilds).sum();
    let lost: u64 = ok.iter().map(|r| r.rows_lost).sum();
    let mut secs: Vec<f64> = ok.iter().map(|r| r.converge_s).collect();
    secs.sort_by(f64::total_cmp);
    let pick = |i: usize| secs.get(i).copied().unwrap_or(f64::NAN);
    for kind in KINDS {
        let of_kind: Vec<&Result<Round, (Kind, String)>> = results
            .iter()
            .filter(|r| match r {
                Ok(r) => r.kind == kind,
                Err((k, _)) => *k == kind,
            })
            .collect();
        if !of_kind.is_empty() {
            let errs = of_kind.iter().filter(|r| r.is_err()).count();
            let done: Vec<&Round> = of_kind.iter().filter_map(|r| r.as_ref().ok()).collect();
            let mut secs: Vec<f64> = done.iter().map(|r| r.converge_s).collect();
            secs.sort_by(f64::total_cmp);
            let pick = |i: usize| secs.get(i).copied().unwrap_or(f64::NAN);
            println!(
                "campaign: kind {} rounds {} errors {errs} rebuilds {} rows_lost {} \
                 converge_s min {:.1} median {:.1} max {:.1}",
                kind.name(),
                of_kind.len(),
                done.iter().map(|r| r.rebuilds).sum::<u32>(),
                done.iter().map(|r| r.rows_lost).sum::<u64>(),
                pick(0),
                pick(secs.len() / 2),
                pick(secs.len().saturating_sub(1)),
            );
        }
    }
    println!(
        "campaign: summary seed {seed} rounds {} errors {errors} rebuilds {rebuilds} rows_lost {lost} \
         converge_s min {:.1} median {:.1} max {:.1} total_s {:.0}",
        results.len(),
        pick(0),
        pick(secs.len() / 2),
        pick(secs.len().saturating_sub(1)),
        started.elapsed().as_secs_f64()
    );
    assert!(
        errors == 0 && rebuilds == 0 && lost == 0,
        "campaign seed {seed}: {errors} rounds failed, {rebuilds} rebuilds, {lost} rows lost"
    );
}
