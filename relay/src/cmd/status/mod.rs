//! `walrelay status`: reads `GET /status` from a running relay and prints it as a table that
//! fits the terminal (or as the JSON document itself with `--json`), once or every few seconds.
//!
//! This file owns the command: its arguments, the fetch (one GET through [`client`], 5 s for
//! the whole exchange), the checks that the answer is a relay's `/status`, the watch loop and
//! the exit codes. The document's shape is in [`view`], the text in [`render`](mod@render);
//! [`client`] is the crate's one HTTP client, public for the tests as well.
//!
//! The command is synchronous (it prints, sleeps, exits); its fetches run on one
//! current-thread Tokio runtime made at the start, because the client is async.
//!
//! Exit codes: 0 printed, 2 relay not reachable (connect failed, no answer in time), 1 anything
//! else (an HTTP error, something that is not a relay's `/status`).

pub mod client;
pub mod render;
pub mod view;

use std::fmt::Write as _;
use std::io::{self, IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use clap::Args;
use comfy_table::Table;

use client::ClientError;
use render::{render, DEFAULT_WIDTH};
use view::StatusDoc;

/// How long one fetch may take in all: connect, send, read the whole answer.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

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

/// Why a fetch failed, worded for the operator with the relay's address.
/// [`StatusError::exit_code`] maps it to the command's exit status.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("could not connect to relay at {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("no answer from relay at {addr}: {reason}")]
    NoAnswer { addr: String, reason: String },
    #[error("unexpected answer from relay at {addr}: {reason}")]
    BadResponse { addr: String, reason: String },
    #[error("could not ask relay at {addr}: {reason}")]
    Request { addr: String, reason: String },
}

impl StatusError {
    /// 2 when the relay could not be reached, 1 when something answered but not as a relay.
    pub fn exit_code(&self) -> u8 {
        match self {
            StatusError::Connect { .. } | StatusError::NoAnswer { .. } => 2,
            StatusError::BadResponse { .. } | StatusError::Request { .. } => 1,
        }
    }

    fn from_client(addr: &str, e: ClientError) -> Self {
        let addr = addr.to_string();
        match e {
            ClientError::Connect(reason) => StatusError::Connect { addr, reason },
            ClientError::NoAnswer(reason) => StatusError::NoAnswer { addr, reason },
            ClientError::BadResponse(reason) => StatusError::BadResponse { addr, reason },
            ClientError::InvalidRequest(reason) => StatusError::Request { addr, reason },
        }
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

/// Normalises what an operator may type for the endpoint: `http://host:port/` or `host:port`.
fn host_port(addr: &str) -> &str {
    let a = addr.trim();
    let a = a.strip_prefix("http://").unwrap_or(a);
    a.trim_end_matches('/')
}

/// Fetches `/status` and checks it is JSON; returns the parsed document.
pub async fn fetch_status(addr: &str) -> Result<serde_json::Value, StatusError> {
    let hp = host_port(addr);
    let bad = |reason: String| StatusError::BadResponse {
        addr: hp.to_string(),
        reason,
    };
    let resp = client::get(hp, "/status", FETCH_TIMEOUT)
        .await
        .map_err(|e| StatusError::from_client(hp, e))?;
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
    Ok(value)
}

// ---------------------------------------------------------------------------------------------
// The command

/// The terminal's width when stdout is one, else [`DEFAULT_WIDTH`].
fn terminal_width() -> u16 {
    // An unconfigured comfy-table reports the width of the terminal on stdout, or None.
    Table::new().width().unwrap_or(DEFAULT_WIDTH)
}

/// One screenful: the table (or JSON) for the current `/status`.
async fn frame(args: &StatusArgs) -> Result<String, StatusError> {
    let value = fetch_status(&args.http).await?;
    if args.json {
        return Ok(render::json(&value));
    }
    let doc: StatusDoc = serde_json::from_value(value).map_err(|e| StatusError::BadResponse {
        addr: host_port(&args.http).to_string(),
        reason: format!("not a walrelay /status document: {e}"),
    })?;
    Ok(render(&doc, terminal_width()))
}

/// `walrelay status`.
pub fn run(args: StatusArgs) -> ExitCode {
    // One single-threaded runtime for every fetch: the command does one thing at a time.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("walrelay status: could not start an I/O runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(interval) = args.watch else {
        return match rt.block_on(frame(&args)) {
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
        match rt.block_on(frame(&args)) {
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

    #[tokio::test]
    async fn connect_refused_is_exit_2_with_a_plain_message() {
        // A port that was free a moment ago: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let e = fetch_status(&addr).await.unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert_eq!(
            e.to_string(),
            format!("could not connect to relay at {addr}: Connection refused")
        );
        let e = fetch_status(&format!("http://{addr}/")).await.unwrap_err();
        assert!(e.to_string().contains(&format!("at {addr}:")), "{e}");
    }

    #[tokio::test]
    async fn silent_server_times_out_as_no_answer() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let e = client::get(&addr, "/status", Duration::from_millis(200))
            .await
            .map_err(|e| StatusError::from_client(&addr, e))
            .unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert_eq!(
            e.to_string(),
            format!("no answer from relay at {addr}: timed out after 200ms")
        );
        drop(l);
    }

    #[tokio::test]
    async fn non_200_and_non_json_are_exit_1() {
        use std::io::{Read as _, Write as _};
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
        let e = fetch_status(&addr).await.unwrap_err();
        assert_eq!(e.exit_code(), 1);
        assert_eq!(
            e.to_string(),
            format!("unexpected answer from relay at {addr}: HTTP 404 from /status: no route")
        );
        let e = fetch_status(&addr).await.unwrap_err();
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
}
