//! What `walrelay status` prints for one `/status` document: the upstream summary, the
//! failover line, the downstream table (or psql's expanded layout when the terminal is too
//! narrow for it) and the diverged downstreams; or, for `--json`, the document itself.
//!
//! Pure: a document and a width in, text out; no I/O, no clock, no terminal query (the caller
//! measures the terminal). Invariant: every line fits the width whenever a table can be laid
//! out at all; figures and addresses never wrap, only names do.

use std::fmt::Write as _;

use bytesize::ByteSize;
use comfy_table::{
    Cell, CellAlignment, ColumnConstraint, ContentArrangement, Table, TableStyle,
    Width as ComfyWidth,
};

use super::view::{
    parse_lsn, DivergedView, DownstreamView, FailoverView, SlotView, StatusDoc, StoreView,
    UpstreamView,
};
use crate::wal::Lsn;

/// Width used when stdout is not a terminal (piped, redirected, under a test).
pub const DEFAULT_WIDTH: u16 = 100;

/// A byte count as "1.2 MiB" (IEC units, as PostgreSQL's pg_size_pretty uses powers of 1024).
pub fn human_bytes(n: u64) -> String {
    ByteSize::b(n).display().iec().to_string()
}

/// A lag in seconds as "350ms", "2.1s", "5m03s", "2h05m"; "-" for null (as psql shows an empty
/// `replay_lag` when the replica has caught up and there is nothing to time).
pub fn human_secs(v: Option<f64>) -> String {
    let Some(s) = v.filter(|s| s.is_finite()) else {
        return "-".into();
    };
    let s = s.max(0.0);
    if s < 0.01 {
        format!("{:.1}ms", s * 1e3)
    } else if s < 1.0 {
        format!("{:.0}ms", s * 1e3)
    } else if s < 60.0 {
        format!("{s:.1}s")
    } else {
        let t = s.round() as u64;
        if t < 3600 {
            format!("{}m{:02}s", t / 60, t % 60)
        } else if t < 86_400 {
            format!("{}h{:02}m", t / 3600, t % 3600 / 60)
        } else {
            format!("{}d{:02}h", t / 86_400, t % 86_400 / 3600)
        }
    }
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "-".into(), T::to_string)
}

/// Joins `parts` with `sep`, starting a new line (indented two spaces) where the next part
/// would pass `width`, so the summary fits a terminal as the table does. A part too long for
/// any line is cut into pieces that fit.
fn wrap_parts<S: AsRef<str>>(parts: &[S], sep: &str, width: usize) -> String {
    let room = width.saturating_sub(2).max(8);
    let pieces = parts.iter().flat_map(|p| {
        let chars: Vec<char> = p.as_ref().chars().collect();
        chars
            .chunks(room)
            .map(|c| c.iter().collect::<String>())
            .collect::<Vec<_>>()
    });
    let mut out = String::new();
    let mut line_len = 0;
    for p in pieces {
        let len = display_width(&p);
        if line_len > 0 && line_len + sep.len() + len > width {
            out.push_str("\n  ");
            line_len = 2;
        } else if line_len > 0 {
            out.push_str(sep);
            line_len += sep.len();
        }
        out.push_str(&p);
        line_len += len;
    }
    out.push('\n');
    out
}

/// A message wrapped at spaces to `width`.
fn wrap_text(text: &str, width: usize) -> String {
    wrap_parts(&text.split_whitespace().collect::<Vec<_>>(), " ", width)
}

/// The upstream summary: where from, whether streaming, timeline, identity, how far behind.
pub fn render_upstream(up: &UpstreamView, width: u16) -> String {
    let addr = match (&up.host, up.port) {
        (Some(h), Some(p)) if h.contains(':') => format!("[{h}]:{p}"),
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.clone(),
        (None, _) => "-".into(),
    };
    let mut parts = vec![
        format!("upstream {addr}"),
        match up.connected {
            Some(true) => "connected".into(),
            Some(false) => "DISCONNECTED".into(),
            None => "connection unknown".into(),
        },
        format!("timeline {}", opt(&up.timeline)),
        format!("system {}", opt(&up.system_identifier)),
    ];
    if let Some(v) = &up.server_version {
        parts.push(format!("server {v}"));
    }
    parts.push(format!("flushed {}", opt(&up.flushed_lsn)));
    parts.push(match up.lag() {
        Some(n) => format!("lag {} ({n} bytes)", human_bytes(n)),
        None => "lag -".into(),
    });
    let mut out = wrap_parts(&parts, "  ", usize::from(width));
    // Why it is not streaming, when it is not: the first thing an operator wants to know.
    if up.connected != Some(true) {
        if let Some(e) = &up.last_error {
            out.push_str(&wrap_text(&format!("last error: {e}"), usize::from(width)));
        }
    }
    if let Some(e) = &up.ingest_error {
        out.push_str(&wrap_text(
            &format!("WAL ingest stopped: {e}"),
            usize::from(width),
        ));
    }
    out
}

/// The `--failover-standby` line: how far WAL is served, whether a missing candidate holds it
/// back, and each candidate's state.
fn render_failover(f: &FailoverView, flushed: Option<Lsn>, width: u16) -> String {
    let mut parts = vec![match (&f.limit_lsn, parse_lsn(&f.limit_lsn)) {
        (Some(l), Some(limit)) => match flushed.map(|d| d.saturating_sub(limit)) {
            Some(held) if held > 0 => format!(
                "failover: serving up to {l} ({} held back)",
                human_bytes(held)
            ),
            _ => format!("failover: serving up to {l}"),
        },
        (Some(l), None) => format!("failover: serving up to {l}"),
        (None, _) => "failover: no limit".into(),
    }];
    if f.holding == Some(true) {
        parts.push("HOLDING".into());
    }
    for c in &f.standbys {
        let name = c.application_name.as_deref().unwrap_or("?");
        parts.push(match (c.state.as_deref(), &c.flush_lsn) {
            (Some("confirmed"), Some(l)) => format!("{name} confirmed {l}"),
            (Some("missing"), Some(l)) if c.source.as_deref() == Some("slot") => {
                format!("{name} away, slot at {l}")
            }
            (Some("missing"), Some(l)) if c.source.as_deref() == Some("missing") => {
                format!("{name} UNKNOWN, held at {l}")
            }
            (Some("missing"), Some(l)) => format!("{name} MISSING since {l}"),
            (Some("never_seen"), _) => format!("{name} never seen"),
            (Some(other), _) => format!("{name} {other}"),
            (None, _) => format!("{name} ?"),
        });
    }
    if f.connected == Some(false) {
        parts.push("watcher DISCONNECTED".into());
    }
    let mut out = wrap_parts(&parts, "  ", usize::from(width));
    if f.connected == Some(false) {
        if let Some(e) = &f.last_error {
            out.push_str(&wrap_text(
                &format!("failover watcher error: {e}"),
                usize::from(width),
            ));
        }
    }
    out
}

/// The `store:` line: the WAL on disk, the data directory's free space, and what each relay
/// slot holds back (largest first: the one filling the disk leads).
fn render_store(st: &StoreView, slots: &[SlotView], width: u16) -> String {
    let mut parts = vec![match (st.wal_segments, st.wal_stored_bytes) {
        (Some(n), Some(b)) => format!(
            "store: {n} segment{} ({})",
            if n == 1 { "" } else { "s" },
            human_bytes(b)
        ),
        _ => "store: WAL size unknown".into(),
    }];
    parts.push(match (st.data_dir_free_bytes, st.data_dir_size_bytes) {
        (Some(free), Some(size)) if size > 0 => format!(
            "{} free of {} ({:.0}%)",
            human_bytes(free),
            human_bytes(size),
            free as f64 * 100.0 / size as f64
        ),
        (Some(free), _) => format!("{} free", human_bytes(free)),
        (None, _) => "free space unknown".into(),
    });
    let mut sorted: Vec<&SlotView> = slots.iter().collect();
    sorted.sort_by(|a, b| (b.retained_bytes, &a.slot_name).cmp(&(a.retained_bytes, &b.slot_name)));
    for s in sorted {
        let name = s.slot_name.as_deref().unwrap_or("?");
        let mut part = match s.retained_bytes {
            Some(b) => format!("slot {name} retains {}", human_bytes(b)),
            None => format!("slot {name}"),
        };
        if s.invalidation_reason.is_some() {
            part.push_str(" INVALIDATED");
        } else if s.active_pid.is_none() {
            part.push_str(" (inactive)");
        }
        parts.push(part);
    }
    wrap_parts(&parts, "  ", usize::from(width))
}

/// Downstreams the relay cut off because they were sent WAL past a timeline's fork point.
fn render_diverged(list: &[DivergedView], width: u16) -> String {
    let mut out = String::new();
    if list.is_empty() {
        return out;
    }
    out.push_str(&wrap_text(
        "DIVERGED: these downstreams received WAL past a fork point and must be rebuilt \
         (pg_rewind or a new base backup):",
        usize::from(width),
    ));
    for d in list {
        out.push_str(&wrap_text(
            &format!(
                "- {} from {}: sent up to {}, timeline forked at {}",
                d.application_name.as_deref().unwrap_or("?"),
                opt(&d.client_addr),
                opt(&d.sent_lsn),
                opt(&d.fork_lsn)
            ),
            usize::from(width),
        ));
    }
    out
}

/// One column of the downstream table.
struct Column {
    /// Table header (kubectl-style capitals; may wrap at its space).
    header: &'static str,
    /// Label in the expanded layout: the `pg_stat_replication` / `/status` name.
    field: &'static str,
    /// Names may wrap when the terminal is narrow. Addresses, positions and figures never do:
    /// "10.1.0.1" over "6" reads as another address, "48.0" over "MiB" as two values.
    wraps: bool,
    /// Figures are right-aligned.
    numeric: bool,
}

const fn col(header: &'static str, field: &'static str, wraps: bool, numeric: bool) -> Column {
    Column {
        header,
        field,
        wraps,
        numeric,
    }
}

/// In `pg_stat_replication`'s order. BEHIND is the replay position's distance from the relay's
/// durable end (postgres_exporter's `pg_wal_lsn_diff`); the three LAG columns are times.
const COLUMNS: [Column; 11] = [
    col("NAME", "application_name", true, false),
    col("CLIENT", "client_addr", false, false),
    col("STATE", "state", false, false),
    col("TL", "timeline", false, true),
    col("SLOT", "slot_name", true, false),
    col("SENT LSN", "sent_lsn", false, true),
    col("REPLAY LSN", "replay_lsn", false, true),
    col("BEHIND", "replay_lag_bytes", false, true),
    col("WRITE LAG", "write_lag", false, true),
    col("FLUSH LAG", "flush_lag", false, true),
    col("REPLAY LAG", "replay_lag", false, true),
];

/// Narrowest a name column gets before the expanded layout is used instead.
const MIN_WRAPPED_WIDTH: usize = 8;
/// Spaces between columns.
const GAP: u16 = 2;

fn cells(d: &DownstreamView, flushed: Option<Lsn>) -> [String; 11] {
    [
        d.application_name.clone().unwrap_or_default(),
        opt(&d.client_addr),
        opt(&d.state),
        opt(&d.timeline),
        opt(&d.slot_name),
        opt(&d.sent_lsn),
        opt(&d.replay_lsn),
        d.replay_lag(flushed)
            .map_or_else(|| "-".into(), human_bytes),
        human_secs(d.write_lag_seconds),
        human_secs(d.flush_lag_seconds),
        human_secs(d.replay_lag_seconds),
    ]
}

fn display_width(s: &str) -> usize {
    s.chars().count()
}

/// Column widths (without gaps) that fit `width`, or None when none do. Every column first gets
/// its natural width (content or header, whichever is wider); when that is too wide, headers
/// wrap at their space, then the widest name column gives up a character at a time, down to
/// [`MIN_WRAPPED_WIDTH`]. (comfy-table's own dynamic arrangement squeezes the names first and
/// keeps one-line headers, which wraps "replica-eu1-a" in a table with room to spare.)
fn column_widths(rows: &[[String; 11]], width: u16) -> Option<[usize; 11]> {
    let gaps = usize::from(GAP) * (COLUMNS.len() - 1);
    let budget = usize::from(width).checked_sub(gaps)?;
    // Widest cell per column, at least 1 (an empty column still takes a place).
    let mut content = [1usize; 11];
    for r in rows {
        for (m, cell) in content.iter_mut().zip(r) {
            *m = (*m).max(display_width(cell));
        }
    }
    let header_word = |c: &Column| c.header.split(' ').map(display_width).max().unwrap_or(1);
    let mut w = content;
    let mut header_wrapped = content;
    let mut min = content;
    for (((c, w), wrapped), min) in COLUMNS
        .iter()
        .zip(&mut w)
        .zip(&mut header_wrapped)
        .zip(&mut min)
    {
        *w = (*w).max(display_width(c.header));
        *wrapped = (*wrapped).max(header_word(c));
        if c.wraps {
            *min = (*min).min(MIN_WRAPPED_WIDTH);
        }
        *min = (*min).max(header_word(c));
    }
    if w.iter().sum::<usize>() > budget {
        w = header_wrapped;
    }
    while w.iter().sum::<usize>() > budget {
        // The last of the widest that may still shrink.
        let (widest, _) = w
            .iter_mut()
            .zip(&min)
            .filter(|(w, min)| **w > **min)
            .max_by_key(|(w, _)| **w)?;
        *widest -= 1;
    }
    Some(w)
}

/// One table row per downstream, kubectl-style (no rules, two spaces between columns, so eleven
/// columns fit a 100-column terminal), or None when it cannot fit `width` without wrapping a
/// figure or squeezing a name below [`MIN_WRAPPED_WIDTH`].
fn render_table(rows: &[[String; 11]], width: u16) -> Option<String> {
    let widths = column_widths(rows, width)?;
    let mut table = Table::new();
    // Deterministic output whatever stdout is: the caller measured the terminal already.
    table
        .force_no_tty()
        .load_style(TableStyle::new())
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_width(width)
        .set_header(COLUMNS.iter().map(|c| c.header));
    for r in rows {
        table.add_row(r.iter().map(Cell::new));
    }
    for (i, (c, col_width)) in COLUMNS.iter().zip(widths).enumerate() {
        let pad = if i + 1 == COLUMNS.len() { 0 } else { GAP };
        // The constraint counts the cell's padding (here: the gap after it).
        let w = u16::try_from(col_width)
            .unwrap_or(u16::MAX)
            .saturating_add(pad);
        if let Some(column) = table.column_mut(i) {
            if c.numeric {
                // Headers too, so "BEHIND" sits over "1.2 MiB".
                column.set_cell_alignment(CellAlignment::Right);
            }
            column
                .set_padding((0, pad))
                .set_constraint(ColumnConstraint::Absolute(ComfyWidth::Fixed(w)));
        }
    }
    let mut text = String::new();
    for line in table.lines() {
        // Without the spaces that pad out the last column.
        let line = line.trim_end();
        // A safety net: the widths above were chosen to fit.
        if display_width(line) > usize::from(width) {
            return None;
        }
        text.push_str(line);
        text.push('\n');
    }
    Some(text)
}

/// psql's expanded display (`\x`): one block per downstream, a line per field, values wrapped
/// to the width. For terminals too narrow for the table.
fn render_expanded(rows: &[[String; 11]], width: u16) -> String {
    let label_w = COLUMNS.iter().map(|c| c.field.len()).max().unwrap_or(0);
    let value_w = usize::from(width).saturating_sub(label_w + 3).max(8);
    let mut out = String::new();
    for (n, r) in rows.iter().enumerate() {
        let title = format!("-[ downstream {} ]", n + 1);
        let fill = usize::from(width)
            .min(label_w + 3 + value_w)
            .saturating_sub(display_width(&title));
        let _ = writeln!(out, "{title}{}", "-".repeat(fill));
        for (c, v) in COLUMNS.iter().zip(r) {
            let chars: Vec<char> = v.chars().collect();
            let mut pieces = chars.chunks(value_w).map(|p| p.iter().collect::<String>());
            let first = pieces.next().unwrap_or_default();
            let _ = writeln!(out, "{:<label_w$} | {first}", c.field);
            for p in pieces {
                let _ = writeln!(out, "{:<label_w$} | {p}", "");
            }
        }
    }
    out
}

/// The whole screen for one `/status` document at a terminal `width`: the upstream summary
/// (and the failover-safe serving state when configured), then one row per downstream, sorted
/// by application_name (a table, or psql's expanded layout when the terminal is too narrow for
/// one), then any downstreams cut off at a fork point.
pub fn render(doc: &StatusDoc, width: u16) -> String {
    let mut out = render_upstream(&doc.upstream, width);
    let flushed = parse_lsn(&doc.upstream.flushed_lsn);
    if let Some(f) = &doc.failover {
        out.push_str(&render_failover(f, flushed, width));
    }
    if let Some(st) = &doc.store {
        out.push_str(&render_store(st, &doc.slots, width));
    }
    out.push('\n');
    if doc.downstreams.is_empty() {
        out.push_str("no downstreams connected\n");
    } else {
        let mut sorted: Vec<&DownstreamView> = doc.downstreams.iter().collect();
        sorted.sort_by(|a, b| {
            (&a.application_name, &a.client_addr, a.client_port, a.pid).cmp(&(
                &b.application_name,
                &b.client_addr,
                b.client_port,
                b.pid,
            ))
        });
        let rows: Vec<[String; 11]> = sorted.into_iter().map(|d| cells(d, flushed)).collect();
        match render_table(&rows, width) {
            Some(t) => out.push_str(&t),
            None => out.push_str(&render_expanded(&rows, width)),
        }
    }
    if !doc.diverged_downstreams.is_empty() {
        out.push('\n');
        out.push_str(&render_diverged(&doc.diverged_downstreams, width));
    }
    out
}

/// The `--json` output: the document pretty-printed (two-space indent, as
/// `serde_json::to_string_pretty` lays it out) with a final newline. Keys stay in the order
/// the relay sent them: serde_json's `preserve_order` makes a parsed object keep it.
pub fn json(doc: &serde_json::Value) -> String {
    // `{:#}` lays out as `to_string_pretty` does, without its Result (it fails only for map
    // keys that are not strings, which a Value cannot hold).
    format!("{doc:#}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::status::view::fixtures::{downstream, server_status, upstream};

    /// Every line of `s` fits `width` terminal columns.
    fn assert_fits(s: &str, width: u16) {
        for line in s.lines() {
            let w = line.chars().count();
            assert!(
                w <= usize::from(width),
                "line of {w} > {width}: {line:?}\n{s}"
            );
        }
    }

    #[test]
    fn human_figures() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1000), "1000 B");
        assert_eq!(human_bytes(0x130000), "1.2 MiB");
        assert_eq!(human_bytes(256 << 20), "256.0 MiB");
        assert_eq!(human_secs(None), "-");
        assert_eq!(human_secs(Some(f64::NAN)), "-");
        assert_eq!(human_secs(Some(0.0)), "0.0ms");
        assert_eq!(human_secs(Some(0.0042)), "4.2ms");
        assert_eq!(human_secs(Some(0.35)), "350ms");
        assert_eq!(human_secs(Some(2.1)), "2.1s");
        assert_eq!(human_secs(Some(-1.0)), "0.0ms");
        assert_eq!(human_secs(Some(303.0)), "5m03s");
        assert_eq!(human_secs(Some(7500.0)), "2h05m");
        assert_eq!(human_secs(Some(90_000.0)), "1d01h");
    }

    #[test]
    fn table_has_summary_and_sorted_rows() {
        let doc = StatusDoc {
            upstream: upstream(),
            downstreams: vec![downstream("replica_b"), downstream("replica_a")],
            ..StatusDoc::default()
        };
        let s = render(&doc, 140);
        assert_fits(&s, 140);
        let first = s.lines().next().unwrap();
        assert!(first.starts_with("upstream 10.0.0.1:5432  connected  timeline 3"));
        assert!(first.contains("system 7301234567890123456"));
        assert!(first.contains("flushed 0/3000060"));
        assert!(first.contains("lag 1.2 MiB (1245184 bytes)"), "{first}");
        let a = s.find("replica_a").unwrap();
        let b = s.find("replica_b").unwrap();
        assert!(a < b, "rows sorted by application_name:\n{s}");
        for cell in [
            "10.1.0.7",
            "streaming",
            "0/2ED0060",
            "1.2 MiB",
            "350ms",
            "2.1s",
        ] {
            assert!(s.contains(cell), "{cell} missing:\n{s}");
        }
    }

    #[test]
    fn nulls_render_as_dashes() {
        let doc: StatusDoc = serde_json::from_str(
            r#"{"upstream":{"host":null,"port":null,"connected":false,"timeline":null,
                "system_identifier":null,"flushed_lsn":null,"upstream_lsn":null,
                "lag_bytes":null,"last_error":"connection refused"},
                "downstreams":[{"application_name":"walreceiver","client_addr":"127.0.0.1",
                "state":"catchup","timeline":null,"slot_name":null,"sent_lsn":"0/0",
                "replay_lsn":"0/0","write_lag_seconds":null,"flush_lag_seconds":null,
                "replay_lag_seconds":null,"replay_lag_bytes":50331744}]}"#,
        )
        .unwrap();
        let s = render(&doc, 100);
        assert_fits(&s, 100);
        assert!(s.starts_with("upstream -  DISCONNECTED  timeline -  system -"));
        assert!(s.contains("flushed -  lag -"));
        assert!(s.contains("last error: connection refused"));
        // replay 0/0 (pg_receivewal) has no byte lag, whatever the relay computed.
        let row = s
            .lines()
            .find(|l| l.contains("walreceiver"))
            .unwrap_or_else(|| panic!("{s}"));
        let fields: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            fields,
            [
                "walreceiver",
                "127.0.0.1",
                "catchup",
                "-",
                "-",
                "0/0",
                "0/0",
                "-",
                "-",
                "-",
                "-"
            ]
        );
    }

    #[test]
    fn empty_and_unknown_documents() {
        let doc: StatusDoc = serde_json::from_str("{}").unwrap();
        let s = render(&doc, 80);
        assert!(s.contains("connection unknown"));
        assert!(s.ends_with("no downstreams connected\n"));
        // Fields a newer relay adds are ignored.
        let doc: StatusDoc =
            serde_json::from_str(r#"{"upstream":{"new":1},"downstreams":[],"x":[]}"#).unwrap();
        assert!(doc.downstreams.is_empty());
    }

    #[test]
    fn failover_and_diverged_downstreams() {
        let mut doc = fleet();
        doc.failover = serde_json::from_str(
            r#"{"standbys":[{"application_name":"ha1","state":"confirmed","flush_lsn":"0/3A000060"},
                {"application_name":"ha2","state":"missing","flush_lsn":"0/39000000"},
                {"application_name":"ha3","state":"never_seen"}],
                "limit_lsn":"0/39000000","holding":true,"connected":true,"last_error":null}"#,
        )
        .unwrap();
        doc.diverged_downstreams = vec![DivergedView {
            application_name: Some("old-replica".into()),
            client_addr: Some("10.1.0.99".into()),
            sent_lsn: Some("0/3B000000".into()),
            fork_lsn: Some("0/3A800000".into()),
        }];
        let s = render(&doc, 120);
        assert_fits(&s, 120);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(
            lines[2],
            "failover: serving up to 0/39000000 (16.0 MiB held back)  HOLDING  ha1 confirmed 0/3A000060  \
             ha2 MISSING since 0/39000000"
        );
        assert_eq!(lines[3], "  ha3 never seen");
        assert!(s.contains(
            "\n- old-replica from 10.1.0.99: sent up to 0/3B000000, timeline forked at 0/3A800000\n"
        ));
        assert!(s.contains("\nDIVERGED: "), "{s}");

        // Not holding, watcher down: its error is shown.
        let f = doc.failover.as_mut().unwrap();
        f.holding = Some(false);
        f.limit_lsn = Some("0/3A000060".into());
        f.connected = Some(false);
        f.last_error = Some("connection refused".into());
        f.standbys.clear();
        let s = render(&doc, 120);
        assert!(
            s.contains("\nfailover: serving up to 0/3A000060  watcher DISCONNECTED\n"),
            "{s}"
        );
        assert!(
            s.contains("\nfailover watcher error: connection refused\n"),
            "{s}"
        );
    }

    #[test]
    fn store_line_with_slots_largest_first() {
        let mut doc = fleet();
        doc.store = Some(StoreView {
            servable_lsn: Some("0/3A000060".into()),
            wal_segments: Some(66),
            wal_stored_bytes: Some(66 << 24),
            data_dir_free_bytes: Some(25 << 30),
            data_dir_size_bytes: Some(100 << 30),
        });
        let slot = |name: &str, pid: Option<i32>, retained: u64, invalid: bool| SlotView {
            slot_name: Some(name.into()),
            temporary: Some(false),
            active_pid: pid,
            restart_lsn: None,
            invalidation_reason: invalid.then(|| "wal_removed".into()),
            retained_bytes: Some(retained),
        };
        doc.slots = vec![
            slot("replica_eu1_a", Some(1042), 16 << 20, false),
            slot("archiver", None, 3 << 30, false),
            slot("gone", None, 0, true),
        ];
        let s = render(&doc, 120);
        assert_fits(&s, 120);
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(
            lines[2],
            "store: 66 segments (1.0 GiB)  25.0 GiB free of 100.0 GiB (25%)  \
             slot archiver retains 3.0 GiB (inactive)"
        );
        assert_eq!(
            lines[3],
            "  slot replica_eu1_a retains 16.0 MiB  slot gone retains 0 B INVALIDATED"
        );
        assert_eq!(lines[4], "");

        // Figures the relay could not read.
        doc.store = Some(StoreView::default());
        doc.slots.clear();
        let s = render(&doc, 120);
        assert!(
            s.contains("\nstore: WAL size unknown  free space unknown\n"),
            "{s}"
        );
    }

    #[test]
    fn long_names_and_narrow_widths_fit() {
        let mut long = downstream(&"a_very_long_application_name_".repeat(4));
        long.client_addr = Some("fd12:3456:789a:1:2:3:4:5".into());
        long.slot_name = Some("s".repeat(63));
        let mut up = upstream();
        up.host = Some("primary-with-a-long-name.eu-central-1.db.example.internal".into());
        up.last_error = Some("x".repeat(300));
        up.connected = Some(false);
        let doc = StatusDoc {
            upstream: up,
            downstreams: vec![long, downstream("r2")],
            ..StatusDoc::default()
        };
        for width in [200u16, 120, 100, 80, 60] {
            let s = render(&doc, width);
            assert_fits(&s, width);
            assert!(s.contains("r2"));
        }
        // Narrower than any table can be: still renders, without panicking.
        for width in [40u16, 20, 5, 0] {
            let s = render(&doc, width);
            assert!(s.contains("no downstreams") || s.contains("r2"));
        }
    }

    #[test]
    fn json_is_pretty_in_the_relays_key_order() {
        // What the relay sends (compact, struct order) comes out as serde_json lays out the
        // server's own type: same keys, same order, same figures.
        let status = server_status();
        let sent: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&status).unwrap()).unwrap();
        let mut expected = serde_json::to_string_pretty(&status).unwrap();
        expected.push('\n');
        assert_eq!(json(&sent), expected);
        assert!(
            expected.starts_with("{\n  \"upstream\": {\n    \"host\": \"h\",\n    \"port\": 5432,")
        );

        // Not sorted, whatever the keys; empty containers stay on one line.
        let v: serde_json::Value =
            serde_json::from_str(r#"{"b":1,"a":{"z":[1,2,{}],"y":[],"x":"s, {\"q\": [1]}\\"}}"#)
                .unwrap();
        assert_eq!(
            json(&v),
            "{\n  \"b\": 1,\n  \"a\": {\n    \"z\": [\n      1,\n      2,\n      {}\n    ],\n    \"y\": [],\n    \"x\": \"s, {\\\"q\\\": [1]}\\\\\"\n  }\n}\n"
        );
    }

    fn fleet() -> StatusDoc {
        serde_json::from_str(
            r#"{"upstream":{"host":"10.0.0.1","port":5432,"connected":true,"timeline":3,
                "system_identifier":"7301234567890123456","server_version":"16.4","flushed_lsn":"0/3A000060","upstream_lsn":"0/3A130060",
                "lag_bytes":1245184},
                "downstreams":[{"application_name":"pg_receivewal","client_addr":"127.0.0.1",
                "state":"streaming","timeline":3,"slot_name":"archiver","sent_lsn":"0/3A000060",
                "replay_lsn":"0/0","write_lag_seconds":0.0012,"flush_lag_seconds":0.004,
                "replay_lag_seconds":null,"replay_lag_bytes":50331744},
                {"application_name":"replica-eu1-b","client_addr":"10.1.0.17",
                "state":"streaming","timeline":3,"slot_name":"replica_eu1_b","sent_lsn":"0/3A000060",
                "replay_lsn":"0/39000060","write_lag_seconds":0.35,"flush_lag_seconds":2.1,
                "replay_lag_seconds":3.3,"replay_lag_bytes":16777216},
                {"application_name":"replica-eu1-a","client_addr":"10.1.0.16",
                "state":"catchup","timeline":3,"slot_name":"replica_eu1_a","sent_lsn":"0/3A000060",
                "replay_lsn":"0/39000060","write_lag_seconds":0.35,"flush_lag_seconds":2.1,
                "replay_lag_seconds":3.3,"replay_lag_bytes":16777216}
                ]}"#,
        )
        .unwrap()
    }

    #[test]
    fn typical_fleet_as_a_table() {
        let expected = "\
upstream 10.0.0.1:5432  connected  timeline 3  system 7301234567890123456  server 16.4  flushed 0/3A000060
  lag 1.2 MiB (1245184 bytes)

NAME           CLIENT     STATE      TL  SLOT             SENT LSN  REPLAY LSN    BEHIND  WRITE  FLUSH  REPLAY
                                                                                            LAG    LAG     LAG
pg_receivewal  127.0.0.1  streaming   3  archiver       0/3A000060         0/0         -  1.2ms  4.0ms       -
replica-eu1-a  10.1.0.16  catchup     3  replica_eu1_a  0/3A000060  0/39000060  16.0 MiB  350ms   2.1s    3.3s
replica-eu1-b  10.1.0.17  streaming   3  replica_eu1_b  0/3A000060  0/39000060  16.0 MiB  350ms   2.1s    3.3s
";
        assert_eq!(render(&fleet(), 120), expected);
        // At the non-TTY default the table still fits: names wrap, figures and addresses don't.
        let s = render(&fleet(), DEFAULT_WIDTH);
        assert_fits(&s, DEFAULT_WIDTH);
        assert!(s.contains("\nNAME "), "{s}");
        for whole in ["10.1.0.16", "0/39000060", "16.0 MiB", "streaming"] {
            assert!(s.contains(whole), "{whole}:\n{s}");
        }
    }

    #[test]
    fn too_narrow_for_the_table_uses_the_expanded_layout() {
        let s = render(&fleet(), 80);
        assert_fits(&s, 80);
        assert!(!s.contains("NAME "), "{s}");
        assert!(s.contains("-[ downstream 1 ]"));
        let block: Vec<&str> = s
            .lines()
            .skip_while(|l| !l.starts_with("-[ downstream 2 ]"))
            .skip(1)
            .take(11)
            .collect();
        assert_eq!(
            block,
            [
                "application_name | replica-eu1-a",
                "client_addr      | 10.1.0.16",
                "state            | catchup",
                "timeline         | 3",
                "slot_name        | replica_eu1_a",
                "sent_lsn         | 0/3A000060",
                "replay_lsn       | 0/39000060",
                "replay_lag_bytes | 16.0 MiB",
                "write_lag        | 350ms",
                "flush_lag        | 2.1s",
                "replay_lag       | 3.3s",
            ]
        );
    }
}
