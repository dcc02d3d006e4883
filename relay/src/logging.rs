//! Logging on stderr for `walrelay run`: text or JSON (`log_format`), filtered by `log_filter`
//! (`RUST_LOG` syntax) through a reload layer, so SIGHUP can change the filter in place.
//!
//! JSON lines have stable keys: `timestamp` (RFC 3339, UTC), `level` (`ERROR` … `TRACE`),
//! `target` (the module, e.g. `walrelay::upstream::session`), `message`, the event's own
//! fields beside them at the top level (e.g. `timeline`, `flushed`), `span` (the innermost span:
//! its `name` and fields) and `spans` (every open span, outermost first). Span fields are the
//! ones ARCHITECTURE.md lists: `upstream` for the upstream session; `pid`, `peer`,
//! `application_name`, `user` for downstream sessions. Text lines drop the timestamp when
//! journald captures stderr (`JOURNAL_STREAM` set): the journal has its own.

use std::sync::Mutex;

use anyhow::Context as _;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

use crate::config::LogFormat;

/// Changes the running log filter.
pub struct LogHandle {
    filter: reload::Handle<EnvFilter, Registry>,
    current: Mutex<String>,
}

impl LogHandle {
    /// The filter in force.
    pub fn current(&self) -> String {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the filter; the old one stays when `directives` do not parse.
    pub fn set_filter(&self, directives: &str) -> anyhow::Result<()> {
        let f = parse_filter(directives)?;
        self.filter
            .reload(f)
            .map_err(|e| anyhow::anyhow!("cannot change the log filter: {e}"))?;
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = directives.to_string();
        Ok(())
    }
}

fn parse_filter(directives: &str) -> anyhow::Result<EnvFilter> {
    EnvFilter::builder()
        .parse(directives)
        .with_context(|| format!("invalid log filter \"{directives}\""))
}

/// The JSON layer, its keys as the module documentation lists them.
pub fn json_layer<S, W>(writer: W) -> impl Layer<S> + Send + Sync
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(true)
        .with_target(true)
        .with_writer(writer)
        .with_ansi(false)
}

/// Installs the global subscriber: `format` on stderr, filtered by `filter`.
pub fn init(format: LogFormat, filter: &str) -> anyhow::Result<LogHandle> {
    let (filter_layer, handle) = reload::Layer::new(parse_filter(filter)?);
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let fmt: Box<dyn Layer<_> + Send + Sync> = match format {
        LogFormat::Json => Box::new(json_layer(std::io::stderr)),
        LogFormat::Text if journald => Box::new(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .without_time(),
        ),
        LogFormat::Text => Box::new(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false),
        ),
    };
    tracing_subscriber::registry()
        .with(filter_layer)
        .with(fmt)
        .try_init()
        .context("install the logger")?;
    Ok(LogHandle {
        filter: handle,
        current: Mutex::new(filter.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    #[test]
    fn json_lines_have_stable_keys() {
        let buf = Buf::default();
        let subscriber = tracing_subscriber::registry().with(json_layer(buf.clone()));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("upstream", upstream = "host=a port=5432");
            let _e = span.enter();
            tracing::info!(timeline = 2, "starting replication from upstream");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        for key in ["timestamp", "level", "target", "message", "span", "spans"] {
            assert!(line.get(key).is_some(), "no {key} in {line}");
        }
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["message"], "starting replication from upstream");
        assert_eq!(line["timeline"], 2);
        assert_eq!(line["span"]["name"], "upstream");
        assert_eq!(line["span"]["upstream"], "host=a port=5432");
        assert_eq!(line["spans"][0]["name"], "upstream");
    }

    #[test]
    fn bad_filters_are_refused() {
        assert!(parse_filter("walrelay=verbose").is_err());
        assert!(parse_filter("walrelay=debug,info").is_ok());
    }
}
