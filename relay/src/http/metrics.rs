//! `/metrics`: counters recorded through the `metrics` facade (rendered by the Prometheus
//! exporter), plus gauges computed at scrape time from live state, so a replica that
//! disconnected or a slot that was dropped leaves no stale series behind. The store's figures
//! on disk (segments, bytes, free space) are measured for each scrape too ([`Disk`]), so they
//! follow every segment the writer creates and retention removes without either reporting it.

use std::fmt::Write;

use super::{Disk, HttpState};

/// What the store takes on disk. A figure that could not be read has no sample (its
/// `# HELP` / `# TYPE` stay), so a failed measurement never reads as an empty disk.
fn storage(out: &mut String, s: &HttpState, disk: &Disk) {
    // Each family's samples right after its own HELP / TYPE: the text format keeps a family's
    // lines together.
    header(
        out,
        "walrelay_wal_stored_bytes",
        "Bytes of WAL segment files in the store (complete and .partial, every timeline).",
    );
    if let Some(w) = disk.wal {
        sample(out, "walrelay_wal_stored_bytes", w.bytes);
    }
    header(
        out,
        "walrelay_wal_segments",
        "WAL segment files in the store (complete and .partial, every timeline).",
    );
    if let Some(w) = disk.wal {
        sample(out, "walrelay_wal_segments", w.segments);
    }
    header(
        out,
        "walrelay_data_dir_free_bytes",
        "Bytes available to the relay on the data directory's file system (statvfs f_bavail).",
    );
    if let Some(d) = disk.space {
        sample(out, "walrelay_data_dir_free_bytes", d.free);
    }
    header(
        out,
        "walrelay_data_dir_size_bytes",
        "Size of the data directory's file system.",
    );
    if let Some(d) = disk.space {
        sample(out, "walrelay_data_dir_size_bytes", d.size);
    }
    header(
        out,
        "walrelay_slot_retained_bytes",
        "WAL the store keeps for a relay replication slot: servable end minus its restart_lsn.",
    );
    for r in s.store.slot_retention(s.store.servable().end().lsn) {
        let _ = writeln!(
            out,
            "walrelay_slot_retained_bytes{{slot_name=\"{}\"}} {}",
            esc(&r.slot.slot_name),
            r.retained_bytes
        );
    }
}

/// Prometheus label value escaping.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The labels that identify one downstream session's series.
fn downstream_labels(d: &crate::lag::registry::DownstreamSnapshot) -> String {
    format!(
        "application_name=\"{}\",client_addr=\"{}\",pid=\"{}\"",
        esc(&d.application_name),
        d.client_addr.ip(),
        d.pid
    )
}

fn header(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
}

fn sample(out: &mut String, name: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "{name} {value}");
}

pub fn render(s: &HttpState, disk: &Disk) -> String {
    let mut out = s.prometheus.render();
    let up = s.upstream.get();
    let durable = s.store.durable();

    header(
        &mut out,
        "walrelay_build_info",
        "Always 1; the version label is the walrelay release.",
    );
    let _ = writeln!(
        out,
        "walrelay_build_info{{version=\"{}\"}} 1",
        esc(env!("CARGO_PKG_VERSION"))
    );

    header(
        &mut out,
        "walrelay_upstream_connected",
        "1 while streaming from the upstream server.",
    );
    sample(&mut out, "walrelay_upstream_connected", up.connected as u8);
    header(
        &mut out,
        "walrelay_timeline",
        "Timeline of the relay's newest durable WAL.",
    );
    sample(&mut out, "walrelay_timeline", durable.timeline);
    header(
        &mut out,
        "walrelay_flushed_lsn_bytes",
        "Durable end of the relay's WAL, as a byte position.",
    );
    sample(&mut out, "walrelay_flushed_lsn_bytes", durable.lsn.0);
    header(
        &mut out,
        "walrelay_received_lsn_bytes",
        "End of WAL received from upstream, as a byte position.",
    );
    sample(
        &mut out,
        "walrelay_received_lsn_bytes",
        up.received_lsn.unwrap_or(durable.lsn).0,
    );
    header(
        &mut out,
        "walrelay_upstream_wal_end_lsn_bytes",
        "The upstream's WAL end from its last message.",
    );
    sample(
        &mut out,
        "walrelay_upstream_wal_end_lsn_bytes",
        up.upstream_lsn.unwrap_or(durable.lsn).0,
    );
    header(
        &mut out,
        "walrelay_upstream_lag_bytes",
        "Upstream WAL end minus the relay's durable position.",
    );
    sample(
        &mut out,
        "walrelay_upstream_lag_bytes",
        up.upstream_lsn
            .map(|u| u.saturating_sub(durable.lsn))
            .unwrap_or(0),
    );

    header(
        &mut out,
        "walrelay_upstream_lag_seconds",
        "How long ago the relay learned of upstream WAL it has not made durable yet.",
    );
    sample(
        &mut out,
        "walrelay_upstream_lag_seconds",
        s.upstream.lag_seconds(durable.lsn),
    );
    if let Some(f) = s.failover_status() {
        header(
            &mut out,
            "walrelay_failover_holding",
            "1 while a missing --failover-standby holds WAL back.",
        );
        sample(&mut out, "walrelay_failover_holding", f.holding as u8);
        header(
            &mut out,
            "walrelay_failover_candidates_missing",
            "--failover-standby candidates the relay cannot place: not connected, no slot, not seen.",
        );
        sample(
            &mut out,
            "walrelay_failover_candidates_missing",
            f.missing().count(),
        );
        header(
            &mut out,
            "walrelay_failover_limit_lag_bytes",
            "Durable WAL not yet served because the failover standbys have not confirmed it.",
        );
        let held = f
            .limit_lsn
            .map(|l| durable.lsn.saturating_sub(l))
            .unwrap_or(0);
        sample(&mut out, "walrelay_failover_limit_lag_bytes", held);
    }

    storage(&mut out, s, disk);

    let downstreams = s.registry.snapshot();
    header(
        &mut out,
        "walrelay_downstreams",
        "Connected downstream walsender sessions.",
    );
    sample(&mut out, "walrelay_downstreams", downstreams.len());
    header(
        &mut out,
        "walrelay_downstream_lag_bytes",
        "Bytes between the relay's durable WAL end and what the replica was sent / wrote / flushed / replayed.",
    );
    for d in &downstreams {
        let labels = downstream_labels(d);
        for (stage, lsn) in [
            ("sent", d.sent),
            ("write", d.write),
            ("flush", d.flush),
            ("replay", d.replay),
        ] {
            // A replica that reports no position for a stage (pg_receivewal's replay is 0/0)
            // has no figure for it rather than a huge one.
            if lsn.is_valid() {
                let v = durable.lsn.saturating_sub(lsn);
                let _ = writeln!(
                    out,
                    "walrelay_downstream_lag_bytes{{{labels},stage=\"{stage}\"}} {v}"
                );
            }
        }
    }
    header(
        &mut out,
        "walrelay_downstream_lag_seconds",
        "Time between the relay making WAL durable and the replica reporting it written / flushed / replayed (pg_stat_replication's *_lag; 0 when idle).",
    );
    for d in &downstreams {
        let labels = downstream_labels(d);
        for (stage, lag) in [
            ("write", d.write_lag),
            ("flush", d.flush_lag),
            ("replay", d.replay_lag),
        ] {
            let v = lag.unwrap_or(0.0);
            let _ = writeln!(
                out,
                "walrelay_downstream_lag_seconds{{{labels},stage=\"{stage}\"}} {v}"
            );
        }
    }
    out
}
