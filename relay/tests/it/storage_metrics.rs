//! The store's gauges (docs/monitoring.md, "Metrics") against what they describe, read
//! independently by the test: `walrelay_wal_segments` / `walrelay_wal_stored_bytes` against the
//! segment files in the data directory's `wal/`, `walrelay_slot_retained_bytes` against
//! `IDENTIFY_SYSTEM`'s position and `READ_REPLICATION_SLOT`'s restart_lsn, and
//! `walrelay_data_dir_free_bytes` / `walrelay_data_dir_size_bytes` against `df` of the data
//! directory. Other processes on the machine write to the same disk and the primary writes WAL
//! of its own, so each comparison is retried until the thing measured held still across the
//! scrape (and one that held still must match at once).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use walrelay::wal::segment::{parse_wal_file_name, WalFileName};
use walrelay::wal::Lsn;

use crate::harness::crash::{fill_disk, SmallFs};
use crate::harness::os;
use crate::harness::wire::ReplClient;
use crate::harness::{lsn, wait_until, workload, Relay, Topology, SEG_SIZE};

/// The value of the sample `key` (a name with its labels, as exported) in an exposition.
fn value(metrics: &str, key: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let (k, v) = line.rsplit_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// The segment files (complete and `.partial`) in the relay's `wal/` with their sizes.
fn segment_files(relay: &Relay) -> Vec<(String, u64)> {
    let wal = relay.data_dir().join("wal");
    let mut out: Vec<(String, u64)> = os::files_in(&wal)
        .into_iter()
        .filter(|n| {
            matches!(
                parse_wal_file_name(n, SEG_SIZE),
                Some(WalFileName::Segment { .. })
            )
        })
        .filter_map(|n| {
            let len = std::fs::metadata(wal.join(&n)).ok()?.len();
            Some((n, len))
        })
        .collect();
    out.sort();
    out
}

/// `df`'s size and available bytes of the file system holding `dir`.
fn df(dir: &Path) -> (u64, u64) {
    let out = os::run_ok(
        Command::new("df")
            .args(["-B1", "--output=size,avail"])
            .arg(dir),
        Duration::from_secs(30),
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let figures: Vec<u64> = text
        .lines()
        .nth(1)
        .map(|l| {
            l.split_whitespace()
                .filter_map(|f| f.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    match figures[..] {
        [size, avail] => (size, avail),
        _ => panic!("cannot parse df output {text:?}"),
    }
}

/// What `IDENTIFY_SYSTEM` on the relay reports as its WAL position: the servable end.
fn servable_end(relay: &Relay) -> Lsn {
    let mut client = ReplClient::connect(relay.port(), "test_identify").expect("connect");
    let reply = client.query("IDENTIFY_SYSTEM").expect("IDENTIFY_SYSTEM");
    assert_eq!(reply.error, None, "IDENTIFY_SYSTEM failed");
    let xlogpos = reply.rows[0][2].clone().expect("xlogpos");
    lsn("IDENTIFY_SYSTEM xlogpos", &xlogpos)
}

/// Waits until a scrape saw `wal/` hold still, and checks the WAL gauges against it then.
/// Returns the files.
fn assert_wal_gauges_match(relay: &Relay) -> Vec<(String, u64)> {
    wait_until("wal/ to hold still across a scrape", || {
        let before = segment_files(relay);
        let metrics = relay.metrics();
        let after = segment_files(relay);
        if before != after {
            return Err(format!("wal/ changed: {before:?} -> {after:?}"));
        }
        let bytes: u64 = before.iter().map(|(_, len)| len).sum();
        assert_eq!(
            value(&metrics, "walrelay_wal_segments"),
            Some(before.len() as f64),
            "walrelay_wal_segments, with wal/ holding {before:?}"
        );
        assert_eq!(
            value(&metrics, "walrelay_wal_stored_bytes"),
            Some(bytes as f64),
            "walrelay_wal_stored_bytes, with wal/ holding {before:?}"
        );
        Ok(before)
    })
}

/// Waits until `df` of the data directory gave the same figures before and after a scrape
/// and the gauges agree with them. Returns the free bytes.
fn assert_disk_gauges_match(relay: &Relay) -> u64 {
    let dir = relay.data_dir();
    wait_until("walrelay_data_dir_free_bytes to agree with df", || {
        let (size, before) = df(&dir);
        let metrics = relay.metrics();
        let (_, after) = df(&dir);
        let free = value(&metrics, "walrelay_data_dir_free_bytes");
        let gauge_size = value(&metrics, "walrelay_data_dir_size_bytes");
        assert_eq!(
            gauge_size,
            Some(size as f64),
            "walrelay_data_dir_size_bytes"
        );
        let lo = before.min(after) as f64;
        let hi = before.max(after) as f64;
        match free {
            Some(f) if lo <= f && f <= hi => Ok(f as u64),
            other => Err(format!(
                "walrelay_data_dir_free_bytes {other:?}, df said {before} then {after}"
            )),
        }
    })
}

#[test]
fn storage_metrics_match_the_data_directory() {
    // wal_keep_size 0: only the slot keeps WAL, so dropping it lets retention remove segments.
    let Topology {
        primary,
        relays: [relay],
        ..
    } = Topology::primary_relay()
        .relay_args(&["--wal-keep-size", "0"])
        .start();

    let metrics = relay.metrics();
    let build = format!(
        "walrelay_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    assert!(
        metrics.lines().any(|l| l == build),
        "no `{build}` in /metrics:\n{metrics}"
    );
    assert!(
        !metrics.contains("walrelay_slot_retained_bytes{"),
        "a slot series before any slot exists:\n{metrics}"
    );

    relay.create_slot("keeper");
    let reserved = relay
        .slot_restart_lsn("keeper")
        .expect("keeper reserved WAL");
    // Several segments' worth of WAL, each switched out, so the store has complete segments
    // and a .partial.
    for batch in 0..3u32 {
        workload::insert_rows(&primary, batch * 1000 + 1..=batch * 1000 + 1000);
        workload::switch_wal(&primary);
    }
    workload::insert_rows(&primary, 3001..=4000);
    let end = primary.flush_lsn();
    relay.wait_flushed(end);

    let files = assert_wal_gauges_match(&relay);
    assert!(
        files.len() >= 4 && files.iter().any(|(n, _)| n.ends_with(".partial")),
        "expected three switched-out segments and the .partial: {files:?}"
    );

    // The slot holds WAL from where it was reserved up to what the relay can serve.
    let key = "walrelay_slot_retained_bytes{slot_name=\"keeper\"}";
    let retained = wait_until(
        "IDENTIFY_SYSTEM's position to hold still across a scrape",
        || {
            let servable = servable_end(&relay);
            let restart = relay.slot_restart_lsn("keeper");
            let status = relay.status();
            let metrics = relay.metrics();
            if servable_end(&relay) != servable {
                return Err(format!("the servable end moved on from {servable}"));
            }
            assert_eq!(
                restart,
                Some(reserved),
                "nobody used the slot: it stays put"
            );
            let expected = servable.saturating_sub(reserved);
            assert_eq!(value(&metrics, key), Some(expected as f64), "{key}");
            assert_eq!(
                status["store"]["servable_lsn"].as_str(),
                Some(servable.to_string().as_str()),
                "/status store.servable_lsn: {status}"
            );
            let slots = status["slots"].as_array().expect("/status slots");
            let keeper = slots
                .iter()
                .find(|s| s["slot_name"] == "keeper")
                .unwrap_or_else(|| panic!("keeper not in /status slots: {status}"));
            assert_eq!(keeper["restart_lsn"], reserved.to_string(), "{status}");
            assert_eq!(keeper["retained_bytes"], expected, "{status}");
            assert_eq!(keeper["temporary"], false, "{status}");
            assert_eq!(
                status["store"]["wal_segments"].as_u64(),
                value(&metrics, "walrelay_wal_segments").map(|v| v as u64),
                "/status store.wal_segments: {status}"
            );
            Ok(expected)
        },
    );
    assert!(
        retained >= end.saturating_sub(reserved) && retained > 2 * SEG_SIZE,
        "keeper retains {retained} bytes; it was reserved at {reserved} and the relay has WAL up to {end}"
    );

    // `walrelay status` shows the store and the slot to the operator.
    let table = relay.status_command(&[]);
    assert!(
        table.contains("\nstore: ") && table.contains("  slot keeper retains "),
        "{table}"
    );

    let free = assert_disk_gauges_match(&relay);
    assert!(free > 0, "walrelay_data_dir_free_bytes is 0");

    // Dropped, the slot's series goes, and with nothing holding it retention removes the
    // switched-out segments: the gauges follow.
    let mut client = ReplClient::connect(relay.port(), "test_slot_admin").expect("connect");
    let reply = client
        .query("DROP_REPLICATION_SLOT keeper")
        .expect("DROP_REPLICATION_SLOT");
    assert_eq!(reply.error, None, "DROP_REPLICATION_SLOT keeper failed");
    let metrics = relay.metrics();
    assert_eq!(
        value(&metrics, key),
        None,
        "{key} after the drop:\n{metrics}"
    );
    assert_eq!(relay.status()["slots"], serde_json::json!([]));
    wait_until("retention to remove the switched-out segments", || {
        let now = segment_files(&relay);
        if now.len() < files.len() {
            Ok(())
        } else {
            Err(format!("{now:?}"))
        }
    });
    let left = assert_wal_gauges_match(&relay);
    assert!(left.len() < files.len(), "{left:?}");
}

/// `walrelay_data_dir_free_bytes` is the data directory's own file system: a file filling a
/// small file system of its own shows in the gauge, byte for byte as `df` shows it.
#[test]
fn data_dir_free_bytes_follows_its_file_system() {
    let fs = match SmallFs::new(128) {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!(
                "SKIPPED data_dir_free_bytes_follows_its_file_system: cannot loop-mount a small \
                 file system ({why}); it needs root and loop devices"
            );
            return;
        }
    };
    let data = fs.path().join("data");
    std::fs::create_dir(&data).expect("create the data dir");
    let mut relay = Relay::start_in(&data, "host=127.0.0.1 port=1 user=x", "relay", &[]);
    relay.wait_healthy();

    let (size, _) = df(&data);
    let before = assert_disk_gauges_match(&relay);
    assert!(before <= size, "free {before} > size {size}");
    // Nothing but the relay's few small files is on it.
    assert!(before > size / 2, "free {before} of {size}");

    let leave = before / 2;
    fill_disk(&fs, &fs.path().join("filler"), leave);
    let filled = std::fs::metadata(fs.path().join("filler"))
        .expect("filler")
        .len();
    let after = assert_disk_gauges_match(&relay);
    assert!(
        after + filled <= before,
        "free went from {before} to {after} with a {filled}-byte file written"
    );
}
