//! Crashes and damage (brief §2: invariants 1, 4, 5 and 7; §3.3 slots): the relay killed with
//! SIGKILL at random instants under a steady write load, a byte flipped in a stored segment, a
//! full disk under the data dir, and relay-side slots holding WAL against retention.

use std::thread;
use std::time::{Duration, Instant};

use walrelay::wal::segment::segment_file_name;
use walrelay::wal::Lsn;

use crate::harness::crash::{
    fill_disk, flip_byte, rewind_state, torn_tail, unexpected_log_errors, unrenamed_whole_segment,
    Lcg, SmallFs, Writer,
};
use crate::harness::receivewal::assert_segments_match;
use crate::harness::wire::ReplClient;
use crate::harness::{
    lsn, lsn_after, segment_start, wait_until, workload, PgCluster, ReceiveWal, Topology, SEG_SIZE,
};

/// Keeps every segment the primary writes in its pg_wal, so the test can compare against it.
fn keep_primary_wal(primary: &PgCluster) {
    primary.alter_system("wal_keep_size", "1GB");
}

#[test]
fn kill9_at_random_points_loses_nothing() {
    let mut rng = Lcg::from_env_or_clock("kill9_at_random_points_loses_nothing");
    let Topology {
        primary,
        relays: [mut relay],
        standbys: [standby],
        ..
    } = Topology::primary_relay_standby()
        .on_primary(keep_primary_wal)
        .start();
    // pg_receivewal retries every 5 s and so spends most of the crash rounds disconnected: a
    // slot on the relay keeps the WAL it has not received yet (and must survive the kills).
    relay.create_slot("rw");
    let mut receiver = ReceiveWal::start_with(relay.port(), &["-S", "rw"]);
    receiver.wait_streaming();
    workload::insert_rows(&primary, 1..=100);
    workload::wait_rows(&primary, &standby);

    let writer = Writer::start(&primary, 1_000_000);
    // WALRELAY_TEST_CRASH_ROUNDS=200 for a longer soak.
    let rounds: u32 = std::env::var("WALRELAY_TEST_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20);
    let mut verified = 0;
    let mut torn_kills = 0;
    let began = Instant::now();
    for round in 1..=rounds {
        let pause = rng.range(50, 1500);
        thread::sleep(Duration::from_millis(pause));
        relay.assert_running();
        relay.kill9();
        // What the relay had acknowledged as flushed to the primary before it died.
        let acked = primary.slot_restart_lsn("relay");
        let torn = torn_tail(&relay);
        torn_kills += usize::from(torn.is_some());
        let verify_now = rng.next().is_multiple_of(2);
        if verify_now {
            let (code, stderr) = relay.verify();
            assert_eq!(
                code, 0,
                "round {round}: walrelay verify right after kill -9 found damage (a torn \
                 .partial tail is not damage):\n{stderr}"
            );
            verified += 1;
        }
        relay.restart();
        relay.wait_ready();
        let resumed = relay.status_lsn("/upstream/stream_start_lsn");
        if let Some(acked) = acked {
            assert!(
                resumed >= acked,
                "round {round}: the relay had acknowledged {acked} as flushed before kill -9, \
                 but after the restart it resumed streaming at {resumed}: acknowledged WAL lost"
            );
        }
        eprintln!(
            "round {round}/{rounds}: killed after {pause} ms, acknowledged {}, {}resumed at \
             {resumed}{}",
            acked.map_or("-".to_string(), |a| a.to_string()),
            torn.map_or(String::new(), |(name, end)| format!(
                "torn record after {end} in {name}.partial, "
            )),
            if verify_now { ", verify clean" } else { "" }
        );
    }
    let crash_phase = began.elapsed();
    let rows = writer.finish();

    // One more segment, so that everything the writer wrote is in a completed segment.
    workload::insert_rows(&primary, 500_001..=500_100);
    let last = workload::switch_wal(&primary);
    workload::wait_rows(&primary, &standby);
    receiver.wait_for_segments(std::slice::from_ref(&last));
    receiver.assert_running();

    assert_eq!(
        standby.psql("select status, sender_port from pg_stat_wal_receiver"),
        format!("streaming|{}", relay.port())
    );

    let status = relay.stop();
    assert!(
        status.success(),
        "SIGTERM is a clean stop, but walrelay exited {status}"
    );
    let (code, stderr) = relay.verify();
    assert_eq!(code, 0, "walrelay verify after the crash rounds:\n{stderr}");
    relay.restart();
    relay.wait_ready();

    let completed = receiver.completed_segments();
    assert_segments_match(&receiver, &primary, 3);
    let set_aside = std::fs::read_dir(relay.data_dir().join("torn"))
        .map(|d| d.count())
        .unwrap_or(0);
    let log = relay.log();
    let errors = unexpected_log_errors(&log, &[]).len();
    let unexpected = unexpected_log_errors(
        &log,
        &[
            // The downstreams lose their connection when the relay dies; so does the upstream.
            "connection reset",
            "broken pipe",
            "Broken pipe",
            "Connection reset",
        ],
    );
    eprintln!(
        "{rounds} kill -9 rounds in {:.1}s ({verified} verified while down), {rows} rows \
         written meanwhile, {} segments received by pg_receivewal and identical to the \
         primary's; {torn_kills} kills left a torn record, {set_aside} tails with garbage set \
         aside; {errors} ERROR lines in the relay's log",
        crash_phase.as_secs_f64(),
        completed.len()
    );
    assert!(
        unexpected.is_empty(),
        "unexpected ERROR or panic lines in the relay's log:\n{}",
        unexpected.join("\n")
    );
}

#[test]
fn flipped_byte_in_stored_segment_is_detected_and_not_served() {
    let Topology {
        primary,
        relays: [mut relay],
        ..
    } = Topology::primary_relay()
        .on_primary(keep_primary_wal)
        .start();
    // Reserves the relay's WAL from here on: a pg_receivewal given this slot and an empty
    // directory starts at the slot's segment, before the one the test damages.
    relay.create_slot("rslot");
    let standby = PgCluster::basebackup_standby(&primary, "standby1", relay.port());
    let mut switched = Vec::new();
    for batch in 0..5 {
        workload::insert_rows(&primary, batch * 1000 + 1..=batch * 1000 + 1000);
        switched.push(workload::switch_wal(&primary));
    }
    workload::wait_rows(&primary, &standby);
    wait_until("the relay to complete the switched segments", || {
        let have = relay.segments();
        match switched
            .iter()
            .find(|n| !have.contains(&((*n).clone(), false)))
        {
            None => Ok(()),
            Some(missing) => Err(format!("{missing} not complete; have {have:?}")),
        }
    });
    let status = relay.stop();
    assert!(status.success(), "walrelay exited {status} on SIGTERM");

    // A byte inside a record in the middle of a complete segment: at 0x3000 + 300 the first
    // batch of inserts after the switch is being logged (no page header there).
    let damaged = switched[2].clone();
    let seg_start = segment_start(&damaged);
    let offset = 0x3000 + 300;
    let flipped_at = Lsn(seg_start.0 + offset);
    let path = relay.data_dir().join("wal").join(&damaged);
    let was = flip_byte(&path, offset);
    eprintln!("flipped byte {was:#04x} at {flipped_at} (offset {offset:#x}) of {damaged}");

    let (code, stderr) = relay.verify();
    assert_eq!(
        code, 1,
        "walrelay verify missed the flipped byte:\n{stderr}"
    );
    let line = stderr
        .lines()
        .find(|l| l.contains("damage in") && l.contains(&damaged))
        .unwrap_or_else(|| panic!("walrelay verify does not name {damaged}:\n{stderr}"));
    let reported =
        lsn_after(line, " at ").unwrap_or_else(|| panic!("walrelay verify names no LSN: {line}"));
    assert!(
        seg_start <= reported && reported <= flipped_at,
        "walrelay verify reports {reported}, not within {damaged} at or before the flipped \
         byte at {flipped_at}: {line}"
    );

    relay.restart();
    relay.wait_ready();
    workload::insert_rows(&primary, 10_001..=11_000);
    workload::wait_rows(&primary, &standby);
    relay.wait_for_downstream("standby1");
    let walreceiver = standby.psql("select pid from pg_stat_wal_receiver");

    let mut receiver = ReceiveWal::start_with(relay.port(), &["-S", "rslot"]);
    let good = &switched[..2];
    receiver.wait_for_segments(good);
    let refused = wait_until("pg_receivewal to get the relay's damage error", || {
        receiver
            .log()
            .lines()
            .find(|l| l.contains("stored WAL is damaged"))
            .map(str::to_string)
            .ok_or_else(|| receiver.log())
    });
    let relay_line = relay.wait_for_log("refusing to serve damaged WAL");
    assert!(
        relay_line.contains(&damaged),
        "the relay's log does not name {damaged}: {relay_line}"
    );
    let served_to = lsn_after(&refused, "damaged at ")
        .unwrap_or_else(|| panic!("no LSN in pg_receivewal's error: {refused}"));
    assert!(
        seg_start <= served_to && served_to <= flipped_at,
        "the relay reports damage at {served_to}, not within {damaged} at or before the \
         flipped byte at {flipped_at}: {refused}"
    );
    assert!(
        relay
            .metric("walrelay_wal_damaged_reads_total")
            .unwrap_or(0.0)
            >= 1.0,
        "walrelay_wal_damaged_reads_total did not count the refused read"
    );

    // pg_receivewal got every segment before the damage whole and identical, and never the
    // damaged one: at most a .partial with the valid bytes before the damage, zeros after.
    receiver.assert_running();
    assert!(
        !receiver.completed_segments().contains(&damaged),
        "pg_receivewal completed the damaged segment {damaged}"
    );
    assert_segments_match(&receiver, &primary, good.len());
    let partial = receiver.wal_dir().join(format!("{damaged}.partial"));
    let partial = std::fs::read(&partial);
    match &partial {
        Ok(ours) => eprintln!(
            "pg_receivewal has {damaged}.partial, non-zero up to offset {:#x}",
            ours.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)
        ),
        Err(e) => eprintln!("pg_receivewal has no {damaged}.partial ({e})"),
    }
    if let Ok(ours) = partial {
        let theirs = std::fs::read(primary.pg_wal_dir().join(&damaged)).expect("read P's copy");
        let cut = (served_to.0 - seg_start.0) as usize;
        assert_eq!(
            ours.get(..cut),
            theirs.get(..cut),
            "pg_receivewal's {damaged}.partial differs from the primary's before the damage"
        );
        if let Some(i) = ours.get(cut..).and_then(|t| t.iter().position(|&b| b != 0)) {
            panic!(
                "pg_receivewal's {damaged}.partial has bytes past the damage at {served_to} \
                 (offset {:#x}): the relay served WAL it had found damaged",
                cut + i
            );
        }
    }
    eprintln!("walrelay verify: {line}\npg_receivewal: {refused}\nwalrelay: {relay_line}");

    // The standby on the live tail noticed nothing.
    workload::insert_rows(&primary, 11_001..=12_000);
    workload::wait_rows(&primary, &standby);
    assert_eq!(
        standby.psql("select pid from pg_stat_wal_receiver"),
        walreceiver,
        "the standby's walreceiver reconnected while pg_receivewal hit the damage"
    );
    relay.assert_running();
}

#[test]
fn full_disk_stops_ingest_and_resumes() {
    // Declared first so that it is dropped last, after the relay using it has been killed.
    let fs = match SmallFs::new(64) {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!(
                "SKIPPED full_disk_stops_ingest_and_resumes: cannot loop-mount a small file \
                 system ({why}); it needs root and loop devices"
            );
            return;
        }
    };
    let data = fs.path().join("relaydata");
    std::fs::create_dir(&data).expect("create the relay's data dir on the small file system");

    let Topology {
        primary,
        relays: [mut relay],
        standbys: [standby],
        ..
    } = Topology::primary_relay_standby()
        .relay_data_dir(&data)
        .rows(1..=1000)
        .start();

    let filler = fs.path().join("filler");
    fill_disk(&fs, &filler, 3 << 20);
    let left = fs.available();
    eprintln!("filled the relay's file system: {left} bytes left");

    // Write WAL until the relay runs out of space.
    let mut next = 1001u32;
    let readyz = wait_until("/readyz to answer 503 \"WAL ingest stopped\"", || {
        workload::insert_rows(&primary, next..=next + 4999);
        next += 5000;
        match relay.http_get("/readyz") {
            Ok((503, body)) if body.contains("WAL ingest stopped") => Ok(body),
            Ok((code, body)) => Err(format!("{code} {body}")),
            Err(e) => Err(e.to_string()),
        }
    });
    eprintln!("after {} rows: /readyz says {}", next - 1, readyz.trim());
    let ingest_error = wait_until("/status upstream.ingest_error to be set", || {
        let status = relay.status();
        match status
            .pointer("/upstream/ingest_error")
            .and_then(|v| v.as_str())
        {
            Some(e) => Ok(e.to_string()),
            None => Err(status.to_string()),
        }
    });
    eprintln!("/status upstream.ingest_error: {ingest_error}");
    relay.wait_for_log("WAL ingest stopped");
    relay.assert_running();

    // The standby still answers and has everything the relay made durable.
    let durable = wait_until(
        "the standby to have received all the relay made durable",
        || {
            let durable = relay.status_lsn("/upstream/flushed_lsn");
            let received = standby
                .try_psql("select pg_last_wal_receive_lsn()")
                .map_err(|e| e.to_string())?;
            let received = lsn("standby receive LSN", &received);
            if received == durable {
                Ok(durable)
            } else {
                Err(format!(
                    "standby received {received}, relay durable {durable}"
                ))
            }
        },
    );
    let on_standby: u64 = standby
        .wait_for(
            "the standby to replay all it received",
            "select pg_last_wal_replay_lsn() >= pg_last_wal_receive_lsn(), count(*), pg_last_wal_replay_lsn(), pg_last_wal_receive_lsn() from t",
            |out| out.starts_with("t|"),
        )
        .trim_start_matches("t|")
        .split('|')
        .next()
        .unwrap_or_default()
        .parse()
        .expect("row count");
    let on_primary: u64 = primary
        .psql("select count(*) from t")
        .parse()
        .expect("row count");
    eprintln!(
        "disk full: relay durable at {durable}; standby has {on_standby} of the primary's \
         {on_primary} rows"
    );
    assert!(
        on_standby < on_primary,
        "the relay stopped ingest, yet the standby has all {on_primary} rows"
    );
    let primary_lsn = primary.flush_lsn();
    assert!(durable < primary_lsn);

    // Nothing stored is damaged: a clean stop, walrelay verify, and a start on the full disk.
    let status = relay.stop();
    eprintln!("walrelay stopped on the full disk: {status}");
    let (code, stderr) = relay.verify();
    assert_eq!(code, 0, "walrelay verify on the full disk:\n{stderr}");
    relay.restart();
    wait_until(
        "the relay to serve again after a restart on the full disk",
        || {
            relay.assert_running();
            match relay.http_get("/status") {
                Ok((200, _)) => Ok(()),
                Ok((code, body)) => Err(format!("{code} {body}")),
                Err(e) => Err(e.to_string()),
            }
        },
    );
    relay.wait_for_downstream("standby1");
    assert_eq!(
        standby.psql("select count(*) from t"),
        on_standby.to_string()
    );

    // Space comes back: the relay resumes by itself and the standby catches up.
    std::fs::remove_file(&filler).expect("remove the filler file");
    eprintln!("removed the filler: {} bytes free", fs.available());
    relay.wait_ready();
    workload::wait_rows(&primary, &standby);
    workload::insert_rows(&primary, next..=next + 999);
    workload::wait_rows(&primary, &standby);
    assert!(relay.status()["upstream"]["ingest_error"].is_null());
    let status = relay.stop();
    assert!(status.success(), "walrelay exited {status} on SIGTERM");
    let (code, stderr) = relay.verify();
    assert_eq!(
        code, 0,
        "walrelay verify after the disk filled and emptied:\n{stderr}"
    );
}

#[test]
fn relay_side_slot_keeps_wal_and_drop_releases_it() {
    let Topology {
        primary,
        relays: [mut relay],
        ..
    } = Topology::primary_relay()
        .relay_args(&["--wal-keep-size", "0"])
        .start();
    relay.create_slot("sslot");
    let mut standby = PgCluster::basebackup_standby(&primary, "standby1", relay.port());
    standby.alter_system("primary_slot_name", "sslot");
    workload::insert_rows(&primary, 1..=1000);
    workload::wait_rows(&primary, &standby);
    relay.wait_status("standby1 to stream through slot sslot", |s| {
        s["downstreams"].as_array().is_some_and(|l| {
            l.iter().any(|d| {
                d["application_name"] == "standby1"
                    && d["slot_name"] == "sslot"
                    && d["state"] == "streaming"
            })
        })
    });

    standby.stop();
    let held = wait_until("sslot to hold the stopped standby's position", || {
        relay
            .slot_restart_lsn("sslot")
            .ok_or("sslot has no restart_lsn")
    });
    let held_name = segment_file_name(1, held.0 / SEG_SIZE, SEG_SIZE);
    eprintln!("sslot holds {held} (segment {held_name}) while standby1 is stopped");

    // Several segments go by, over more than two retention passes (every 10 s).
    let mut switched = Vec::new();
    let began = Instant::now();
    let mut batch = 1u32;
    while began.elapsed() < Duration::from_secs(30) || switched.len() < 4 {
        workload::insert_rows(&primary, batch * 1000 + 1..=batch * 1000 + 1000);
        switched.push(workload::switch_wal(&primary));
        batch += 1;
        thread::sleep(Duration::from_secs(5));
    }
    let last = switched.last().cloned().unwrap_or_default();
    wait_until("the relay to complete the last switched segment", || {
        let have = relay.segments();
        if have.contains(&(last.clone(), false)) {
            Ok(())
        } else {
            Err(format!("have {have:?}"))
        }
    });
    // Retention ran and stopped at the slot: the oldest segment is the one sslot holds.
    let have = wait_until("retention to keep exactly from sslot's segment", || {
        let have = relay.segments();
        match have.first() {
            Some((oldest, _)) if *oldest == held_name => Ok(have),
            _ => Err(format!("have {have:?}, sslot holds {held_name}")),
        }
    });
    let names: Vec<&str> = have.iter().map(|(n, _)| n.as_str()).collect();
    for s in &switched {
        assert!(names.contains(&s.as_str()), "{s} was removed: {names:?}");
    }
    assert_eq!(relay.slot_restart_lsn("sslot"), Some(held));
    eprintln!(
        "after {:.0}s and {} switches the relay keeps {} segments from {held_name}",
        began.elapsed().as_secs_f64(),
        switched.len(),
        names.len()
    );

    standby.start();
    workload::wait_rows(&primary, &standby);
    let log = standby.log();
    assert!(
        !log.contains("has already been removed"),
        "the standby was refused WAL the slot should have kept:\n{}",
        log.lines()
            .filter(|l| l.contains("has already been removed"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    standby.stop();

    let mut admin = ReplClient::connect(relay.port(), "test_slot_admin").expect("connect");
    let reply = admin
        .query("DROP_REPLICATION_SLOT sslot")
        .expect("DROP_REPLICATION_SLOT reply");
    assert_eq!(reply.error, None, "DROP_REPLICATION_SLOT sslot failed");
    drop(admin);
    workload::insert_rows(&primary, 900_001..=901_000);
    let last = workload::switch_wal(&primary);
    let oldest = wait_until("retention to remove the segments sslot held", || {
        let have = relay.segments();
        match have.first() {
            Some((oldest, _)) if *oldest > held_name && *oldest >= last => Ok(oldest.clone()),
            _ => Err(format!("have {have:?}")),
        }
    });
    eprintln!("after DROP_REPLICATION_SLOT the oldest segment is {oldest}");
    // The relay backfills WAL it no longer holds from the primary while the primary has it:
    // 58P01 is for WAL that neither has.
    primary.psql("checkpoint");
    assert!(
        !primary.pg_wal_dir().join(&held_name).exists(),
        "the primary still has {held_name} after the checkpoint"
    );
    let mut client = ReplClient::connect(relay.port(), "late").expect("connect");
    let start = segment_start(&held_name);
    let reply = client
        .query(&format!("START_REPLICATION {start} TIMELINE 1"))
        .expect("START_REPLICATION reply");
    assert!(
        !reply.copy_data,
        "the relay streamed WAL it should have removed"
    );
    let error = reply.error.expect("an error for removed WAL");
    assert_eq!(error.code(), "58P01", "{error}");
    assert!(
        error.message().contains("has already been removed"),
        "{error}"
    );
    relay.assert_running();
}

/// kill -9 after the last byte of a segment was written but before its `.partial` was renamed
/// (a window `kill9_at_random_points_loses_nothing` hits about once in 60 kills). The disk
/// state is made here exactly as such a kill leaves it: the segment whole but still named
/// `.partial`, no next segment yet, and `relay.state` saved while that segment was written.
#[test]
fn segment_written_whole_but_not_renamed_at_kill_is_completed() {
    let Topology {
        primary,
        relays: [mut relay],
        ..
    } = Topology::primary_relay().start();
    let mut switched = Vec::new();
    for batch in 0..3 {
        workload::insert_rows(&primary, batch * 1000 + 1..=batch * 1000 + 1000);
        switched.push(workload::switch_wal(&primary));
    }
    let whole = switched.last().cloned().unwrap_or_default();
    wait_until("the relay to complete the switched segments", || {
        let have = relay.segments();
        if have.contains(&(whole.clone(), false)) {
            Ok(())
        } else {
            Err(format!("have {have:?}"))
        }
    });
    let status = relay.stop();
    assert!(status.success(), "walrelay exited {status} on SIGTERM");

    // The kill: `whole` written to its last byte, not yet renamed; nothing after it.
    unrenamed_whole_segment(&relay, &whole);
    let next_start = Lsn(segment_start(&whole).0 + SEG_SIZE);

    relay.restart();
    relay.wait_ready();
    workload::insert_rows(&primary, 10_001..=11_000);
    let acked = wait_until(
        "the relay to acknowledge WAL past the whole segment",
        || match primary.slot_restart_lsn("relay") {
            Some(acked) if acked > next_start => Ok(acked),
            other => Err(format!("slot restart_lsn {other:?}")),
        },
    );
    let mut problems = Vec::new();
    let names = relay.segments();
    if names.contains(&(whole.clone(), true)) {
        problems.push(format!(
            "{whole} is whole but still named {whole}.partial after the restart; the relay \
             holds {names:?}"
        ));
    }

    // Killed again before the next periodic state save.
    relay.kill9();
    rewind_state(&relay, segment_start(&whole));
    relay.restart();
    relay.wait_ready();
    let resumed = relay.status_lsn("/upstream/stream_start_lsn");
    if resumed < acked {
        problems.push(format!(
            "the relay had acknowledged {acked} to the primary, but after kill -9 it resumed \
             streaming at {resumed}: it forgot the WAL it had made durable past {next_start}"
        ));
    }
    relay.stop();
    let (code, stderr) = relay.verify();
    if code != 0 {
        problems.push(format!("walrelay verify exits {code}:\n{stderr}"));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
