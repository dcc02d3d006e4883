//! Crash recovery of the segment being written when the relay stopped.
//!
//! The `.partial` segment of the current timeline is scanned from its first byte to the end of
//! its last whole valid record ([`crate::wal::scan::find_end_of_wal`]); that is where the
//! durable WAL ends, whatever `relay.state` said (it is only a lower bound, written now and
//! then). Bytes after that end that are not zero (a torn write, or damage) are copied to
//! `<data-dir>/torn/` and zeroed in place: they are never served, and never silently lost.
//!
//! Runs at open, before the writer starts: it is the only other code that writes segment
//! files. The copy in `torn/` is a durable write ([`super::fs::durable_write`]); a `.partial`
//! found whole gets its complete name by [`super::fs::rename_complete`].

use std::fs;
use std::path::Path;

use super::fs::{durable_write, rename_complete, zero_from, SegmentId, SegmentOp};
use super::{io_err, Durable, Identity, StoreError};
use crate::wal::scan::{find_end_of_wal, EndReason};

/// Returns the durable end after scanning the `.partial` segment that holds `durable` (if any).
/// A `.partial` that turns out whole (the relay was killed between its last write and the
/// rename) is completed, and the scan goes on with the next segment.
pub(super) fn partial_tail(
    data_dir: &Path,
    wal_dir: &Path,
    id: &Identity,
    mut durable: Durable,
) -> Result<Durable, StoreError> {
    loop {
        let (next, whole) = scan_partial(data_dir, wal_dir, id, durable)?;
        if !whole {
            return Ok(next);
        }
        durable = next;
    }
}

/// Scans one `.partial` segment: the durable end found, and whether the segment is whole (and
/// was renamed to its final name).
fn scan_partial(
    data_dir: &Path,
    wal_dir: &Path,
    id: &Identity,
    durable: Durable,
) -> Result<(Durable, bool), StoreError> {
    let seg_size = id.seg_size;
    let seg = SegmentId::holding(durable.timeline, durable.lsn, seg_size);
    // Only the segment being written can be incomplete: by the `.partial` rule it is the one
    // under the `.partial` name.
    let name = seg.partial_name();
    let path = wal_dir.join(&name);
    let data = match fs::read(&path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((durable, false)),
        Err(e) => return Err(io_err(format!("read {name}"))(e)),
    };
    let seg_start = seg.start();
    let sysid = id.system_identifier.parse::<u64>().ok();
    let end = find_end_of_wal(&data, seg_start, seg_size, sysid, None);
    if end.valid_end < durable.lsn {
        // The relay once made WAL up to `durable` durable and now cannot read it back: the
        // disk lost or damaged it. Serve only what is still valid; the upstream will send the
        // rest again.
        tracing::error!(
            segment = %name,
            recorded = %durable.lsn,
            valid_end = %end.valid_end,
            reason = ?end.reason,
            "stored WAL is damaged below the position the relay had made durable"
        );
    }
    if let (Some(garbage), EndReason::Invalid(_) | EndReason::Zeros { .. }) =
        (end.garbage_at, &end.reason)
    {
        let off = end.valid_end.segment_offset(seg_size);
        let tail = data.get(off as usize..).unwrap_or(&[]);
        let torn_dir = data_dir.join("torn");
        let keep = torn_dir.join(format!("{name}.{:016X}", end.valid_end.0));
        let save = || -> std::io::Result<()> {
            fs::create_dir_all(&torn_dir)?;
            durable_write(&keep, tail)?;
            zero_from(&path, off, tail.len() as u64)
        };
        save().map_err(io_err(format!("set aside the torn tail of {name}")))?;
        tracing::warn!(
            segment = %name,
            valid_end = %end.valid_end,
            first_garbage = %garbage,
            kept = %keep.display(),
            "discarded the bytes after the last valid record of the segment being written (kept aside)"
        );
        metrics::counter!("walrelay_recovery_torn_bytes_total").increment(tail.len() as u64);
    }
    // What was written before the crash may never have been fsynced (a write error drops the
    // pending fsync): make it durable before anyone is told it is.
    fs::File::open(&path)
        .and_then(|f| f.sync_all())
        .map_err(io_err(format!("fsync {name}")))?;
    let recovered = Durable {
        timeline: durable.timeline,
        lsn: end.valid_end,
    };
    if end.valid_end == seg.end() {
        rename_complete(wal_dir, seg).map_err(|e| match e.op {
            SegmentOp::FsyncDir => io_err("fsync wal directory")(e.into_io()),
            _ => io_err(format!("rename {name}"))(e.into_io()),
        })?;
        tracing::info!(segment = %name, "completed a segment that was whole but not yet renamed");
        return Ok((recovered, true));
    }
    tracing::info!(segment = %name, valid_end = %end.valid_end, records = end.records, "recovered the segment being written");
    Ok((recovered, false))
}
