//! walconsume: N physical replication connections in one process that receive WAL and throw it
//! away, for `scripts/bench --fanout`. Each connection acknowledges write = flush = apply = the
//! end of what it received (every `--status-interval-ms`, and at once when a keepalive asks),
//! so the consumers are never what limits the server.
//!
//! Phases, each with an optional file for a script to wait on or release:
//! connect and IDENTIFY_SYSTEM on every connection (`--ready-file` written), wait for
//! `--go-file`, START_REPLICATION on every connection (`--streaming-file` once all stream),
//! stream until each reached its goal (`--reached-file`), then stay connected and acknowledging
//! until `--linger-file` exists, and leave with Terminate. Prints one JSON object on stdout.

mod lsn;
mod pg;
mod stream;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use serde::Serialize;
use tokio::sync::watch;

use lsn::Lsn;
use stream::{Goal, Outcome, Plan, Progress};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Discard consumer of PostgreSQL physical streaming replication"
)]
struct Args {
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 5432)]
    port: u16,
    #[arg(long, default_value = "postgres")]
    user: String,
    /// Password for cleartext, MD5 or SCRAM-SHA-256 (no TLS); also read from PGPASSWORD.
    #[arg(long, env = "PGPASSWORD", hide_env_values = true)]
    password: Option<String>,
    #[arg(long, default_value = "walconsume")]
    application_name: String,
    /// Replication connections to open.
    #[arg(long, short = 'n', default_value_t = 1)]
    connections: usize,
    /// Where to start (X/X), or `current`: the position IDENTIFY_SYSTEM reports on each connection.
    #[arg(long, default_value = "current")]
    start: String,
    /// Timeline to stream; default: the server's (IDENTIFY_SYSTEM).
    #[arg(long)]
    timeline: Option<u32>,
    /// Each connection is done when it has received WAL up to this position (X/X).
    #[arg(long, conflicts_with_all = ["bytes", "duration"])]
    until: Option<String>,
    /// Each connection is done when it has received this many bytes (suffixes k, M, G: binary).
    #[arg(long, conflicts_with = "duration")]
    bytes: Option<String>,
    /// Each connection is done after streaming this many seconds. With none of --until, --bytes
    /// and --duration a connection is done as soon as it streams (to hold idle connections).
    #[arg(long)]
    duration: Option<f64>,
    #[arg(long, default_value_t = 100)]
    status_interval_ms: u64,
    /// Runtime worker threads (1: a single-threaded runtime).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Give up (exit 1) after this many seconds in all.
    #[arg(long, default_value_t = 600.0)]
    timeout: f64,
    #[arg(long)]
    ready_file: Option<PathBuf>,
    #[arg(long)]
    go_file: Option<PathBuf>,
    #[arg(long)]
    streaming_file: Option<PathBuf>,
    #[arg(long)]
    reached_file: Option<PathBuf>,
    #[arg(long)]
    linger_file: Option<PathBuf>,
}

#[derive(Serialize)]
struct ConnReport {
    bytes: u64,
    seconds: Option<f64>,
    end_lsn: String,
    messages: u64,
    keepalives: u64,
    reply_requests: u64,
    status_updates: u64,
    error: Option<String>,
}

#[derive(Serialize)]
struct Report {
    ok: bool,
    host: String,
    port: u16,
    connections: usize,
    timeline: Option<u32>,
    start_lsn: Option<String>,
    until_lsn: Option<String>,
    target_bytes: Option<u64>,
    connect_seconds: f64,
    /// From the first START_REPLICATION until the last connection reached its goal.
    seconds: Option<f64>,
    go_unix: Option<f64>,
    reached_unix: Option<f64>,
    bytes_total: u64,
    /// 10^6 bytes per second, all connections together, over `seconds`.
    aggregate_mb_per_s: Option<f64>,
    aggregate_mib_per_s: Option<f64>,
    /// This process's CPU (getrusage) from the first START_REPLICATION until all reached.
    cpu_seconds: Option<f64>,
    cpu_user_seconds: Option<f64>,
    cpu_system_seconds: Option<f64>,
    errors: usize,
    per_connection: Vec<ConnReport>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("walconsume: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(report) => {
            let ok = report.ok;
            for (i, c) in report.per_connection.iter().enumerate() {
                if let Some(e) = &c.error {
                    eprintln!("walconsume: connection {i}: {e}");
                }
            }
            match serde_json::to_string(&report) {
                Ok(json) => println!("{json}"),
                Err(e) => eprintln!("walconsume: {e}"),
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("walconsume: {e}");
            ExitCode::from(2)
        }
    }
}

fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (&s[..i], 1 << 10),
        (i, 'M') => (&s[..i], 1 << 20),
        (i, 'G') => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Unix time of an Instant, through the pair (now, Instant::now()).
fn unix_at(t: Instant, now_unix: f64, now: Instant) -> f64 {
    now_unix - now.saturating_duration_since(t).as_secs_f64()
}

fn touch(path: &Option<PathBuf>, text: &str) -> Result<(), String> {
    match path {
        Some(p) => {
            std::fs::write(p, text).map_err(|e| format!("cannot write {}: {e}", p.display()))
        }
        None => Ok(()),
    }
}

async fn wait_file(path: &Path, deadline: Instant) -> Result<(), String> {
    while !path.exists() {
        if Instant::now() >= deadline {
            return Err(format!("timed out waiting for {}", path.display()));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// User and system CPU seconds of this process, from getrusage(2).
fn cpu_times() -> (f64, f64) {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // The one unsafe block of the crate.
    #[allow(unsafe_code)]
    // SAFETY: getrusage writes a `struct rusage` into the pointer it is given, which points to
    // a zeroed `rusage` owned here; it reads nothing else.
    let usage = unsafe {
        if libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) != 0 {
            return (0.0, 0.0);
        }
        usage.assume_init()
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(usage.ru_utime), secs(usage.ru_stime))
}

async fn run(args: Args) -> Result<Report, String> {
    if args.connections == 0 {
        return Err("--connections must be at least 1".into());
    }
    let deadline = Instant::now() + Duration::from_secs_f64(args.timeout.max(0.0));
    let fixed_start = match args.start.as_str() {
        "current" => None,
        s => Some(
            Lsn::parse(s)
                .ok_or_else(|| format!("--start {s:?} is not an LSN (X/X) or `current`"))?,
        ),
    };
    let goal = match (&args.until, &args.bytes, args.duration) {
        (Some(u), _, _) => {
            Goal::Until(Lsn::parse(u).ok_or_else(|| format!("--until {u:?} is not an LSN (X/X)"))?)
        }
        (None, Some(b), _) => {
            Goal::Bytes(parse_bytes(b).ok_or_else(|| format!("--bytes {b:?} is not a size"))?)
        }
        (None, None, Some(d)) if d.is_finite() && d >= 0.0 => Goal::For(Duration::from_secs_f64(d)),
        (None, None, Some(d)) => return Err(format!("--duration {d} is not a number of seconds")),
        (None, None, None) => Goal::Streaming,
    };
    let target = pg::Target {
        host: args.host.clone(),
        port: args.port,
        user: args.user.clone(),
        password: args.password.clone(),
    };

    // Connect and identify, all at once.
    let t_connect = Instant::now();
    let target = Arc::new(target);
    let mut tasks = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        let target = target.clone();
        let name = args.application_name.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = pg::Conn::connect(&target, &name).await?;
            let id = c.identify_system().await?;
            Ok::<_, pg::Error>((c, id))
        }));
    }
    let mut conns = Vec::with_capacity(args.connections);
    for (i, t) in tasks.into_iter().enumerate() {
        let r = tokio::time::timeout_at(deadline.into(), t)
            .await
            .map_err(|_| format!("connection {i}: timed out connecting"))?
            .map_err(|e| format!("connection {i}: {e}"))?
            .map_err(|e| format!("connection {i} to {}:{}: {e}", args.host, args.port))?;
        conns.push(r);
    }
    let connect_seconds = t_connect.elapsed().as_secs_f64();
    let timeline = args.timeline.unwrap_or(conns[0].1.timeline);
    touch(&args.ready_file, "ready\n")?;
    if let Some(go) = &args.go_file {
        wait_file(go, deadline).await?;
    }

    // Stream.
    let progress = Arc::new(Progress::default());
    let (release, linger) = watch::channel(false);
    let linger = args.linger_file.as_ref().map(|_| linger);
    let cpu0 = cpu_times();
    let go = Instant::now();
    let go_unix = unix_now();
    let n = conns.len();
    let mut first_start = None;
    let mut streams = Vec::with_capacity(n);
    for (c, id) in conns {
        let start = fixed_start.unwrap_or(id.xlogpos);
        first_start.get_or_insert(start);
        let plan = Plan {
            start,
            goal,
            status_interval: Duration::from_millis(args.status_interval_ms.max(1)),
            deadline,
            linger: linger.clone(),
        };
        streams.push(tokio::spawn(stream::run(
            c,
            timeline,
            plan,
            progress.clone(),
        )));
    }
    let mut streaming_written = args.streaming_file.is_none();
    let mut timed_out = false;
    while progress.finished.load(Ordering::SeqCst) < n {
        if !streaming_written && progress.streaming.load(Ordering::SeqCst) >= n {
            touch(&args.streaming_file, "streaming\n")?;
            streaming_written = true;
        }
        if Instant::now() >= deadline + Duration::from_secs(1) {
            timed_out = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let cpu1 = cpu_times();
    if !streaming_written {
        touch(&args.streaming_file, "streaming\n")?;
    }
    touch(&args.reached_file, "reached\n")?;
    if let Some(path) = &args.linger_file {
        if !timed_out {
            wait_file(path, deadline).await?;
        }
        let _ = release.send(true);
    }
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(n);
    for s in streams {
        if timed_out {
            s.abort();
        }
        outcomes.push(s.await.unwrap_or_else(|e| Outcome {
            error: Some(if e.is_cancelled() {
                "timed out".into()
            } else {
                format!("task failed: {e}")
            }),
            ..Outcome::default()
        }));
    }

    let now_unix = unix_now();
    let now = Instant::now();
    let per: Vec<ConnReport> = outcomes
        .iter()
        .map(|o| ConnReport {
            bytes: o.bytes,
            seconds: o.reached.map(|r| {
                r.saturating_duration_since(o.started.unwrap_or(go))
                    .as_secs_f64()
            }),
            end_lsn: o.end.to_string(),
            messages: o.messages,
            keepalives: o.keepalives,
            reply_requests: o.reply_requests,
            status_updates: o.status_updates,
            error: o
                .error
                .clone()
                .or_else(|| o.reached.is_none().then(|| "did not reach its goal".into())),
        })
        .collect();
    let errors = per.iter().filter(|c| c.error.is_some()).count();
    let last = outcomes.iter().filter_map(|o| o.reached).max();
    let seconds = last.map(|l| l.saturating_duration_since(go).as_secs_f64());
    let bytes_total: u64 = outcomes.iter().map(|o| o.bytes).sum();
    let rate = |unit: f64| {
        seconds
            .filter(|s| *s > 0.0)
            .map(|s| bytes_total as f64 / unit / s)
    };
    let ok = errors == 0 && !timed_out;
    Ok(Report {
        ok,
        host: args.host,
        port: args.port,
        connections: n,
        timeline: Some(timeline),
        start_lsn: fixed_start.or(first_start).map(|l| l.to_string()),
        until_lsn: match goal {
            Goal::Until(l) => Some(l.to_string()),
            _ => None,
        },
        target_bytes: match goal {
            Goal::Bytes(b) => Some(b),
            _ => None,
        },
        connect_seconds,
        seconds,
        go_unix: Some(go_unix),
        reached_unix: last.map(|l| unix_at(l, now_unix, now)),
        bytes_total,
        aggregate_mb_per_s: rate(1e6),
        aggregate_mib_per_s: rate(1048576.0),
        cpu_seconds: Some((cpu1.0 - cpu0.0) + (cpu1.1 - cpu0.1)),
        cpu_user_seconds: Some(cpu1.0 - cpu0.0),
        cpu_system_seconds: Some(cpu1.1 - cpu0.1),
        errors,
        per_connection: per,
    })
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("123"), Some(123));
        assert_eq!(parse_bytes("4k"), Some(4096));
        assert_eq!(parse_bytes("256M"), Some(256 << 20));
        assert_eq!(parse_bytes("1G"), Some(1 << 30));
        assert_eq!(parse_bytes("x"), None);
        assert_eq!(parse_bytes(""), None);
    }
}
