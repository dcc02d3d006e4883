//! `walrelay status`: reads `GET /status` from a running relay and prints it as a table that
//! fits the terminal (or as the JSON document itself with `--json`), once or every few seconds.
//!
//! The HTTP client is a few dozen lines over `std::net::TcpStream` rather than a client crate:
//! one GET to a loopback-ish address, with a deadline, is all this needs. It reads what
//! axum/hyper send (a `Content-Length` body or a chunked one) and also an EOF-delimited body.
//!
//! The document is read into read-side structs ([`StatusDoc`]) rather than the server's
//! [`crate::http::status::Status`]: every field is optional there, so `status` from one version
//! can read a relay of another (fields added or missing), and the server types can keep
//! borrowing static strings. A test serialises the server's type and reads it back here, so the
//! two cannot drift apart unnoticed.
//!
//! Exit codes: 0 printed, 2 relay not reachable (connect failed, no answer in time), 1 anything
//! else (an HTTP error, something that is not a relay's `/status`).

use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, IsTerminal, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use bytesize::ByteSize;
use clap::Args;
use comfy_table::{
    Cell, CellAlignment, ColumnConstraint, ContentArrangement, Table, TableStyle,
    Width as ComfyWidth,
};
use serde::Deserialize;

use crate::wal::Lsn;

/// How long one fetch may take in all: connect, send, read the whole answer.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Width used when stdout is not a terminal (piped, redirected, under a test).
const DEFAULT_WIDTH: u16 = 100;
/// Caps on what the client accepts, so a wrong address can't make it buffer without end.
const MAX_HEADER_LINE: usize = 16 * 1024;
const MAX_HEADERS: usize = 100;
const MAX_BODY: usize = 16 * 1024 * 1024;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The relay's HTTP endpoint (its `run --http`).
    #[arg(
        long,
        env = "WALRELAY_HTTP",
        default_value = "127.0.0.1:9433",
        value_name = "ADDR"
    )]
    pub http: String,
    /// Print the /status JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Redraw every SECONDS [default: 2] until interrupted.
    #[arg(
        long,
        value_name = "SECONDS",
        num_args = 0..=1,
        default_missing_value = "2",
        value_parser = parse_interval
    )]
    pub watch: Option<Duration>,
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("\"{s}\" is not a number of seconds"))?;
    if !(0.1..=86_400.0).contains(&secs) {
        return Err("the interval must be between 0.1 and 86400 seconds".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

// ---------------------------------------------------------------------------------------------
// The document, as read

/// `/status`, read side. Every field is optional: see the module docs.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct StatusDoc {
    pub upstream: UpstreamView,
    pub downstreams: Vec<DownstreamView>,
    pub diverged_downstreams: Vec<DivergedView>,
    /// Present when the relay runs with `--failover-standby`.
    pub failover: Option<FailoverView>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct UpstreamView {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub connected: Option<bool>,
    pub timeline: Option<u32>,
    pub system_identifier: Option<String>,
    pub server_version: Option<String>,
    pub received_lsn: Option<String>,
    pub flushed_lsn: Option<String>,
    pub upstream_lsn: Option<String>,
    pub lag_bytes: Option<u64>,
    pub reconnects: Option<u64>,
    pub last_error: Option<String>,
    pub ingest_error: Option<String>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct DownstreamView {
    pub pid: Option<i32>,
    pub application_name: Option<String>,
    pub usename: Option<String>,
    pub client_addr: Option<String>,
    pub client_port: Option<u16>,
    pub state: Option<String>,
    pub timeline: Option<u32>,
    pub slot_name: Option<String>,
    pub sent_lsn: Option<String>,
    pub write_lsn: Option<String>,
    pub flush_lsn: Option<String>,
    pub replay_lsn: Option<String>,
    pub write_lag_seconds: Option<f64>,
    pub flush_lag_seconds: Option<f64>,
    pub replay_lag_seconds: Option<f64>,
    pub sent_lag_bytes: Option<u64>,
    pub replay_lag_bytes: Option<u64>,
}

/// A downstream that received WAL past a fork point and has to be rebuilt.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct DivergedView {
    pub application_name: Option<String>,
    pub client_addr: Option<String>,
    pub sent_lsn: Option<String>,
    pub fork_lsn: Option<String>,
}

/// `--failover-standby` state: the serving limit and each named candidate.
#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct FailoverView {
    pub standbys: Vec<CandidateView>,
    pub limit_lsn: Option<String>,
    pub holding: Option<bool>,
    pub connected: Option<bool>,
    pub last_error: Option<String>,
}

#[derive(Debug, Default, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct CandidateView {
    pub application_name: Option<String>,
    /// `confirmed`, `missing` or `never_seen`.
    pub state: Option<String>,
    pub flush_lsn: Option<String>,
}

fn parse_lsn(s: &Option<String>) -> Option<Lsn> {
    s.as_deref().and_then(|s| s.parse().ok())
}

impl UpstreamView {
    /// Upstream WAL end minus the relay's durable end; from the document's own figure when a
    /// relay sends one, else from the two LSNs.
    pub fn lag(&self) -> Option<u64> {
        self.lag_bytes.or_else(|| {
            Some(parse_lsn(&self.upstream_lsn)?.saturating_sub(parse_lsn(&self.flushed_lsn)?))
        })
    }
}

impl DownstreamView {
    /// Bytes the replica has yet to replay. None when it reports no replay position at all
    /// (pg_receivewal sends 0/0): "everything behind" would be a meaningless, huge figure.
    pub fn replay_lag(&self, flushed: Option<Lsn>) -> Option<u64> {
        let replay = parse_lsn(&self.replay_lsn);
        if replay.is_some_and(|l| !l.is_valid()) {
            return None;
        }
        self.replay_lag_bytes
            .or_else(|| Some(flushed?.saturating_sub(replay?)))
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering (pure)

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
    let mut w = [0usize; 11];
    let mut min = [0usize; 11];
    let mut header_wrapped = [0usize; 11];
    for (i, c) in COLUMNS.iter().enumerate() {
        let content = rows
            .iter()
            .map(|r| display_width(&r[i]))
            .max()
            .unwrap_or(0)
            .max(1);
        let header_word = c.header.split(' ').map(display_width).max().unwrap_or(1);
        w[i] = content.max(display_width(c.header));
        header_wrapped[i] = content.max(header_word);
        min[i] = if c.wraps {
            content.min(MIN_WRAPPED_WIDTH)
        } else {
            content
        }
        .max(header_word);
    }
    if w.iter().sum::<usize>() > budget {
        w = header_wrapped;
    }
    while w.iter().sum::<usize>() > budget {
        let widest = (0..COLUMNS.len())
            .filter(|&i| w[i] > min[i])
            .max_by_key(|&i| w[i])?;
        w[widest] -= 1;
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
    for (i, c) in COLUMNS.iter().enumerate() {
        let pad = if i + 1 == COLUMNS.len() { 0 } else { GAP };
        // The constraint counts the cell's padding (here: the gap after it).
        let w = u16::try_from(widths[i])
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

/// Re-indents valid JSON text the way `serde_json::to_string_pretty` does, but keeping the
/// keys in the order the relay sent them (a `serde_json::Value` would sort them). Only called
/// on text that already parsed as JSON.
pub fn pretty_json(src: &str) -> String {
    fn newline(out: &mut String, depth: usize) {
        out.push('\n');
        for _ in 0..depth {
            out.push_str("  ");
        }
    }
    let mut out = String::with_capacity(src.len() * 2);
    let mut depth = 0usize;
    let mut in_str = false;
    let mut escaped = false;
    let mut chars = src.chars().peekable();
    while let Some(c) = chars.next() {
        if in_str {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_str = true;
                out.push(c);
            }
            '{' | '[' => {
                while chars.peek().is_some_and(|c| c.is_ascii_whitespace()) {
                    chars.next();
                }
                let close = if c == '{' { '}' } else { ']' };
                out.push(c);
                if chars.peek() == Some(&close) {
                    chars.next();
                    out.push(close);
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(',');
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_ascii_whitespace() => {}
            c => out.push(c),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// Why a fetch failed. [`StatusError::exit_code`] maps it to the command's exit status.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("could not connect to relay at {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("no answer from relay at {addr}: {reason}")]
    NoAnswer { addr: String, reason: String },
    #[error("unexpected answer from relay at {addr}: {reason}")]
    BadResponse { addr: String, reason: String },
}

impl StatusError {
    /// 2 when the relay could not be reached, 1 when something answered but not as a relay.
    pub fn exit_code(&self) -> u8 {
        match self {
            StatusError::Connect { .. } | StatusError::NoAnswer { .. } => 2,
            StatusError::BadResponse { .. } => 1,
        }
    }
}

/// An I/O error as a person reads it: "Connection refused", not "... (os error 111)".
fn io_reason(e: &io::Error, timeout: Duration) -> String {
    if matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    ) {
        return format!("timed out after {}", humantime::format_duration(timeout));
    }
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// A complete HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Reading a response failed: the connection broke, or the bytes are not HTTP/1.x.
#[derive(Debug)]
enum ReadError {
    Io(io::Error),
    Malformed(String),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

fn malformed<T>(why: impl Into<String>) -> Result<T, ReadError> {
    Err(ReadError::Malformed(why.into()))
}

/// One CRLF- (or LF-) terminated line, without the terminator; at most `MAX_HEADER_LINE`.
fn read_line<R: BufRead>(r: &mut R) -> Result<String, ReadError> {
    let mut buf = Vec::new();
    r.by_ref()
        .take(MAX_HEADER_LINE as u64 + 1)
        .read_until(b'\n', &mut buf)?;
    if buf.last() != Some(&b'\n') {
        if buf.len() > MAX_HEADER_LINE {
            return malformed("header line too long");
        }
        return malformed("connection closed in the middle of the response");
    }
    buf.pop();
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    match String::from_utf8(buf) {
        Ok(s) => Ok(s),
        Err(_) => malformed("header line is not UTF-8"),
    }
}

/// Reads exactly `n` body bytes.
fn read_exact_body<R: Read>(r: &mut R, n: u64, body: &mut Vec<u8>) -> Result<(), ReadError> {
    if n > (MAX_BODY - body.len()) as u64 {
        return malformed(format!("body larger than {}", human_bytes(MAX_BODY as u64)));
    }
    let got = r.by_ref().take(n).read_to_end(body)?;
    if (got as u64) < n {
        return malformed(format!("connection closed after {got} of {n} body bytes"));
    }
    Ok(())
}

/// Parses one HTTP/1.x response from `r`: status line, headers, then a body delimited by
/// chunked transfer coding, `Content-Length`, or the end of the connection.
fn read_response<R: BufRead>(r: &mut R) -> Result<HttpResponse, ReadError> {
    loop {
        let line = read_line(r)?;
        let mut it = line.splitn(3, ' ');
        let (version, code) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
        if !version.starts_with("HTTP/1.") {
            return malformed(format!(
                "not an HTTP/1.x response: {:?}",
                truncate(&line, 60)
            ));
        }
        let status: u16 = match code.parse() {
            Ok(c) if (100..1000).contains(&c) => c,
            _ => return malformed(format!("bad status line {:?}", truncate(&line, 60))),
        };

        let mut chunked = false;
        let mut length: Option<u64> = None;
        let mut n_headers = 0;
        loop {
            let h = read_line(r)?;
            if h.is_empty() {
                break;
            }
            n_headers += 1;
            if n_headers > MAX_HEADERS {
                return malformed("too many header lines");
            }
            let Some((name, value)) = h.split_once(':') else {
                return malformed(format!("bad header line {:?}", truncate(&h, 60)));
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("transfer-encoding") {
                // The last coding decides how the body is framed (RFC 9112 §6.3).
                chunked = value
                    .rsplit(',')
                    .next()
                    .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
            } else if name.eq_ignore_ascii_case("content-length") {
                match value.parse::<u64>() {
                    Ok(n) if length.is_none_or(|l| l == n) => length = Some(n),
                    _ => return malformed(format!("bad Content-Length {value:?}")),
                }
            }
        }
        // Interim answers (100 Continue and friends) come before the real one.
        if (100..200).contains(&status) {
            continue;
        }

        let mut body = Vec::new();
        if status == 204 || status == 304 {
            // No body by definition.
        } else if chunked {
            loop {
                let size_line = read_line(r)?;
                let size_hex = size_line.split(';').next().unwrap_or("").trim();
                let size = match u64::from_str_radix(size_hex, 16) {
                    Ok(n) => n,
                    Err(_) => return malformed(format!("bad chunk size {size_hex:?}")),
                };
                if size == 0 {
                    // Trailer fields, up to the empty line.
                    while !read_line(r)?.is_empty() {}
                    break;
                }
                read_exact_body(r, size, &mut body)?;
                if !read_line(r)?.is_empty() {
                    return malformed("chunk not followed by CRLF");
                }
            }
        } else if let Some(n) = length {
            read_exact_body(r, n, &mut body)?;
        } else {
            r.by_ref()
                .take(MAX_BODY as u64 + 1)
                .read_to_end(&mut body)?;
            if body.len() > MAX_BODY {
                return malformed(format!("body larger than {}", human_bytes(MAX_BODY as u64)));
            }
        }
        return Ok(HttpResponse { status, body });
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n).collect();
        t.push('…');
        t
    }
}

/// A socket read that gives up at a fixed instant, however the time is split between reads.
struct DeadlineReader<'a> {
    stream: &'a TcpStream,
    until: Instant,
}

impl Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self
            .until
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(io::ErrorKind::TimedOut)?;
        self.stream.set_read_timeout(Some(left))?;
        let mut s = self.stream;
        s.read(buf)
    }
}

/// Normalises what an operator may type for the endpoint: `http://host:port/` or `host:port`.
fn host_port(addr: &str) -> &str {
    let a = addr.trim();
    let a = a.strip_prefix("http://").unwrap_or(a);
    a.trim_end_matches('/')
}

/// `GET path` from `addr` (host:port), the whole exchange bounded by `timeout`.
pub fn http_get(addr: &str, path: &str, timeout: Duration) -> Result<HttpResponse, StatusError> {
    let hp = host_port(addr);
    let until = Instant::now() + timeout;
    let connect_err = |reason: String| StatusError::Connect {
        addr: hp.to_string(),
        reason,
    };
    let targets: Vec<_> = hp
        .to_socket_addrs()
        .map_err(|e| connect_err(io_reason(&e, timeout)))?
        .collect();
    let mut last = None;
    let mut stream = None;
    for t in &targets {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match TcpStream::connect_timeout(t, left) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let stream = match (stream, last) {
        (Some(s), _) => s,
        (None, Some(e)) => return Err(connect_err(io_reason(&e, timeout))),
        (None, None) => return Err(connect_err("address resolved to nothing".into())),
    };

    let no_answer = |e: &io::Error| StatusError::NoAnswer {
        addr: hp.to_string(),
        reason: io_reason(e, timeout),
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {hp}\r\nUser-Agent: walrelay/{}\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    let left = until.saturating_duration_since(Instant::now());
    stream
        .set_write_timeout(Some(left.max(Duration::from_millis(1))))
        .map_err(|e| no_answer(&e))?;
    (&stream)
        .write_all(request.as_bytes())
        .map_err(|e| no_answer(&e))?;

    let mut reader = BufReader::new(DeadlineReader {
        stream: &stream,
        until,
    });
    read_response(&mut reader).map_err(|e| match e {
        ReadError::Io(e) => no_answer(&e),
        ReadError::Malformed(reason) => StatusError::BadResponse {
            addr: hp.to_string(),
            reason,
        },
    })
}

/// Fetches `/status` and checks it is JSON; returns the text and the parsed document.
pub fn fetch_status(addr: &str) -> Result<(String, serde_json::Value), StatusError> {
    let hp = host_port(addr);
    let bad = |reason: String| StatusError::BadResponse {
        addr: hp.to_string(),
        reason,
    };
    let resp = http_get(hp, "/status", FETCH_TIMEOUT)?;
    if resp.status != 200 {
        let text = String::from_utf8_lossy(&resp.body);
        let first = text.lines().next().unwrap_or("").trim();
        return Err(bad(format!(
            "HTTP {} from /status{}",
            resp.status,
            if first.is_empty() {
                String::new()
            } else {
                format!(": {}", truncate(first, 120))
            }
        )));
    }
    let text = String::from_utf8(resp.body).map_err(|_| bad("/status is not UTF-8".into()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("/status is not JSON: {e}")))?;
    Ok((text, value))
}

// ---------------------------------------------------------------------------------------------
// The command

/// The terminal's width when stdout is one, else [`DEFAULT_WIDTH`].
fn terminal_width() -> u16 {
    // An unconfigured comfy-table reports the width of the terminal on stdout, or None.
    Table::new().width().unwrap_or(DEFAULT_WIDTH)
}

/// One screenful: the table (or JSON) for the current `/status`.
fn frame(args: &StatusArgs) -> Result<String, StatusError> {
    let (text, value) = fetch_status(&args.http)?;
    if args.json {
        let mut s = pretty_json(&text);
        s.push('\n');
        return Ok(s);
    }
    let doc: StatusDoc = serde_json::from_value(value).map_err(|e| StatusError::BadResponse {
        addr: host_port(&args.http).to_string(),
        reason: format!("not a walrelay /status document: {e}"),
    })?;
    Ok(render(&doc, terminal_width()))
}

/// `walrelay status`.
pub fn run(args: StatusArgs) -> ExitCode {
    let Some(interval) = args.watch else {
        return match frame(&args) {
            Ok(s) => {
                // A closed pipe (`| head`) is not worth an error message.
                let _ = io::stdout().lock().write_all(s.as_bytes());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("walrelay status: {e}");
                ExitCode::from(e.exit_code())
            }
        };
    };
    // Watching: keep going through errors (a relay restarting is exactly what one watches
    // for), showing them in place of the table, until Ctrl-C ends the process.
    let tty = io::stdout().is_terminal();
    loop {
        let started = Instant::now();
        let mut screen = String::new();
        if tty {
            // Cursor home, clear screen.
            screen.push_str("\x1b[H\x1b[2J");
        }
        let _ = writeln!(
            screen,
            "every {}: walrelay status {}    {}\n",
            humantime::format_duration(interval),
            host_port(&args.http),
            humantime::format_rfc3339_seconds(SystemTime::now())
        );
        match frame(&args) {
            Ok(s) => screen.push_str(&s),
            Err(e) => {
                let _ = writeln!(screen, "walrelay status: {e}");
            }
        }
        if !tty {
            screen.push('\n');
        }
        let mut out = io::stdout().lock();
        if out
            .write_all(screen.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            return ExitCode::SUCCESS;
        }
        drop(out);
        std::thread::sleep(interval.saturating_sub(started.elapsed()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failover::watcher::CandidateJson;
    use crate::failover::{CandidateState, FailoverStatus};
    use crate::http::status::{DivergedJson, DownstreamJson, Status, UpstreamJson};

    fn upstream() -> UpstreamView {
        UpstreamView {
            host: Some("10.0.0.1".into()),
            port: Some(5432),
            connected: Some(true),
            timeline: Some(3),
            system_identifier: Some("7301234567890123456".into()),
            server_version: Some("16.4".into()),
            received_lsn: Some("0/3000060".into()),
            flushed_lsn: Some("0/3000060".into()),
            upstream_lsn: Some("0/3130060".into()),
            lag_bytes: Some(0x130000),
            reconnects: Some(0),
            last_error: None,
            ingest_error: None,
        }
    }

    fn downstream(name: &str) -> DownstreamView {
        DownstreamView {
            pid: Some(1),
            application_name: Some(name.into()),
            usename: Some("replicator".into()),
            client_addr: Some("10.1.0.7".into()),
            client_port: Some(40000),
            state: Some("streaming".into()),
            timeline: Some(3),
            slot_name: Some(format!("{name}_slot")),
            sent_lsn: Some("0/3000060".into()),
            write_lsn: Some("0/3000060".into()),
            flush_lsn: Some("0/3000060".into()),
            replay_lsn: Some("0/2ED0060".into()),
            write_lag_seconds: Some(0.35),
            flush_lag_seconds: Some(2.1),
            replay_lag_seconds: None,
            sent_lag_bytes: Some(0),
            replay_lag_bytes: Some(0x130000),
        }
    }

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
    fn reads_what_the_server_writes() {
        // The server's own type, serialised, read back: the read side can't drift from it.
        let status = Status {
            upstream: UpstreamJson {
                host: Some("h".into()),
                port: Some(5432),
                connected: true,
                timeline: Some(2),
                system_identifier: Some("73".into()),
                server_version: Some("17.2".into()),
                received_lsn: Some(Lsn(0x300_0000)),
                flushed_lsn: Some(Lsn(0x300_0000)),
                upstream_lsn: Some(Lsn(0x310_0000)),
                lag_bytes: Some(0x10_0000),
                lag_seconds: 0.0,
                stream_start_lsn: Some(Lsn(0x100_0000)),
                reconnects: 4,
                last_error: Some("e".into()),
                ingest_error: None,
            },
            downstreams: vec![DownstreamJson {
                pid: 7,
                application_name: "app".into(),
                usename: "u".into(),
                client_addr: "::1".into(),
                client_port: 5,
                state: "streaming",
                timeline: Some(2),
                slot_name: None,
                sent_lsn: Lsn(0x300_0000),
                write_lsn: Lsn(0x2FF_0000),
                flush_lsn: Lsn(0x2FE_0000),
                replay_lsn: Lsn(0x2FD_0000),
                write_lag_seconds: Some(0.5),
                flush_lag_seconds: None,
                replay_lag_seconds: Some(1.5),
                sent_lag_bytes: 0,
                replay_lag_bytes: Some(0x3_0000),
                bytes_sent: 9,
                backend_start: 1.0,
            }],
            diverged_downstreams: vec![DivergedJson {
                application_name: "old".into(),
                client_addr: "10.0.0.9".into(),
                sent_lsn: Lsn(0x500_0000),
                fork_lsn: Lsn(0x480_0000),
            }],
            failover: Some(FailoverStatus {
                standbys: vec![
                    CandidateJson {
                        application_name: "ha1".into(),
                        state: CandidateState::Confirmed(Lsn(0x300_0000)),
                    },
                    CandidateJson {
                        application_name: "ha2".into(),
                        state: CandidateState::Missing(Lsn(0x2F0_0000)),
                    },
                    CandidateJson {
                        application_name: "ha3".into(),
                        state: CandidateState::NeverSeen,
                    },
                ],
                limit_lsn: Some(Lsn(0x2F0_0000)),
                holding: true,
                connected: false,
                last_error: Some("f".into()),
            }),
        };
        let doc: StatusDoc =
            serde_json::from_str(&serde_json::to_string(&status).unwrap()).unwrap();
        assert_eq!(
            doc.diverged_downstreams,
            vec![DivergedView {
                application_name: Some("old".into()),
                client_addr: Some("10.0.0.9".into()),
                sent_lsn: Some("0/5000000".into()),
                fork_lsn: Some("0/4800000".into()),
            }]
        );
        let cand = |n: &str, st: &str, l: Option<&str>| CandidateView {
            application_name: Some(n.into()),
            state: Some(st.into()),
            flush_lsn: l.map(Into::into),
        };
        assert_eq!(
            doc.failover,
            Some(FailoverView {
                standbys: vec![
                    cand("ha1", "confirmed", Some("0/3000000")),
                    cand("ha2", "missing", Some("0/2F00000")),
                    cand("ha3", "never_seen", None),
                ],
                limit_lsn: Some("0/2F00000".into()),
                holding: Some(true),
                connected: Some(false),
                last_error: Some("f".into()),
            })
        );
        assert_eq!(
            doc.upstream,
            UpstreamView {
                host: Some("h".into()),
                port: Some(5432),
                connected: Some(true),
                timeline: Some(2),
                system_identifier: Some("73".into()),
                server_version: Some("17.2".into()),
                received_lsn: Some("0/3000000".into()),
                flushed_lsn: Some("0/3000000".into()),
                upstream_lsn: Some("0/3100000".into()),
                lag_bytes: Some(0x10_0000),
                reconnects: Some(4),
                last_error: Some("e".into()),
                ingest_error: None,
            }
        );
        assert_eq!(
            doc.downstreams,
            vec![DownstreamView {
                pid: Some(7),
                application_name: Some("app".into()),
                usename: Some("u".into()),
                client_addr: Some("::1".into()),
                client_port: Some(5),
                state: Some("streaming".into()),
                timeline: Some(2),
                slot_name: None,
                sent_lsn: Some("0/3000000".into()),
                write_lsn: Some("0/2FF0000".into()),
                flush_lsn: Some("0/2FE0000".into()),
                replay_lsn: Some("0/2FD0000".into()),
                write_lag_seconds: Some(0.5),
                flush_lag_seconds: None,
                replay_lag_seconds: Some(1.5),
                sent_lag_bytes: Some(0),
                replay_lag_bytes: Some(0x3_0000),
            }]
        );
    }

    #[test]
    fn lag_fallbacks() {
        let mut up = upstream();
        up.lag_bytes = None;
        assert_eq!(up.lag(), Some(0x130000));
        up.upstream_lsn = None;
        assert_eq!(up.lag(), None);
        let mut d = downstream("x");
        d.replay_lag_bytes = None;
        assert_eq!(d.replay_lag(Some(Lsn(0x300_0060))), Some(0x130000));
        assert_eq!(d.replay_lag(None), None);
        d.replay_lsn = Some("0/0".into());
        d.replay_lag_bytes = Some(5);
        assert_eq!(d.replay_lag(Some(Lsn(0x300_0060))), None);
    }

    #[test]
    fn pretty_json_keeps_order_and_matches_serde_layout() {
        let compact =
            r#"{"b":1,"a":{"z":[1,2,{}],"y":[],"x":"s, {\"q\": [1]}\\"},"c":[{"k":null}]}"#;
        let p = pretty_json(compact);
        assert!(p.find("\"b\"").unwrap() < p.find("\"a\"").unwrap(), "{p}");
        // Same layout as serde_json's pretty printer once keys are in the same order.
        let sorted =
            r#"{"a":{"x":"s, {\"q\": [1]}\\","y":[],"z":[1,2,{}]},"b":1,"c":[{"k":null}]}"#;
        let v: serde_json::Value = serde_json::from_str(sorted).unwrap();
        assert_eq!(
            pretty_json(sorted),
            serde_json::to_string_pretty(&v).unwrap()
        );
        // Already-indented input comes out the same.
        assert_eq!(pretty_json(&pretty_json(sorted)), pretty_json(sorted));
        let v2: serde_json::Value = serde_json::from_str(&p).unwrap();
        let v1: serde_json::Value = serde_json::from_str(compact).unwrap();
        assert_eq!(v1, v2);
    }

    fn parse(raw: &[u8]) -> Result<HttpResponse, ReadError> {
        read_response(&mut BufReader::new(raw))
    }

    #[test]
    fn http_content_length_and_eof_bodies() {
        let r = parse(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}trailing").unwrap();
        assert_eq!(
            r,
            HttpResponse {
                status: 200,
                body: b"{}".to_vec()
            }
        );
        let r = parse(b"HTTP/1.0 200 OK\nServer: x\n\nhello").unwrap();
        assert_eq!(r.body, b"hello");
        let r = parse(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(
            r,
            HttpResponse {
                status: 404,
                body: vec![]
            }
        );
    }

    #[test]
    fn http_chunked_bodies() {
        let r = parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\nB\r\n, world!!!!\r\n0\r\nX-Trailer: y\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, b"hello, world!!!!");
        // Chunked wins over a Content-Length.
        let r = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n").unwrap();
        assert_eq!(r.body, b"ok");
    }

    #[test]
    fn http_malformed_answers_are_errors() {
        let bad: &[&[u8]] = &[
            b"",
            b"SSH-2.0-OpenSSH_9.6\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nbroken header\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokX\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n",
        ];
        for raw in bad {
            assert!(
                matches!(parse(raw), Err(ReadError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        let mut long = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_HEADER_LINE + 10));
        assert!(matches!(parse(&long), Err(ReadError::Malformed(_))));
    }

    #[test]
    fn connect_refused_is_exit_2_with_a_plain_message() {
        // A port that was free a moment ago: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let e = fetch_status(&addr).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert_eq!(
            e.to_string(),
            format!("could not connect to relay at {addr}: Connection refused")
        );
        let e = fetch_status(&format!("http://{addr}/")).unwrap_err();
        assert!(e.to_string().contains(&format!("at {addr}:")), "{e}");
    }

    #[test]
    fn silent_server_times_out_as_no_answer() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let e = http_get(&addr, "/status", Duration::from_millis(200)).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert_eq!(
            e.to_string(),
            format!("no answer from relay at {addr}: timed out after 200ms")
        );
        drop(l);
    }

    #[test]
    fn non_200_and_non_json_are_exit_1() {
        use std::io::Write as _;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            for answer in [
                "HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\n\r\nno route\r\n",
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            ] {
                let (mut s, _) = l.accept().unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).unwrap();
                s.write_all(answer.as_bytes()).unwrap();
            }
        });
        let e = fetch_status(&addr).unwrap_err();
        assert_eq!(e.exit_code(), 1);
        assert_eq!(
            e.to_string(),
            format!("unexpected answer from relay at {addr}: HTTP 404 from /status: no route")
        );
        let e = fetch_status(&addr).unwrap_err();
        assert_eq!(e.exit_code(), 1);
        assert!(e.to_string().contains("/status is not JSON"), "{e}");
        server.join().unwrap();
    }

    #[test]
    fn watch_interval_parsing() {
        assert_eq!(parse_interval("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_interval("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_interval("0").is_err());
        assert!(parse_interval("x").is_err());
        assert!(parse_interval("inf").is_err());
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
