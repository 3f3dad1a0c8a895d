//! Structured logs with `tracing`: text for people, JSON for log pipelines, filtered like
//! `RUST_LOG` (e.g. `info,admission_kit=debug`).

use std::str::FromStr;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, with the review span's fields.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("unknown log format `{other}`; use `text` or `json`")),
        }
    }
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// The filter does not parse.
    #[error("failed to parse log filter `{filter}`: {source}")]
    Filter {
        /// The filter text.
        filter: String,
        /// The parse error.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
}

/// The filter without `$RUST_LOG` or a filter given: `info`, except kube-runtime's watcher, which
/// logs a warning on every retry of a forbidden list or watch; the caches log one warning per
/// outage instead (see [`crate::cache`]).
pub const DEFAULT_FILTER: &str = "info,kube_runtime::watcher=error";

/// Installs the global subscriber, writing to stderr; `filter` defaults to `$RUST_LOG`, then
/// [`DEFAULT_FILTER`]. Text has colours only when stderr is a terminal, so a log file or a log
/// pipeline gets no escape codes. A second call (tests) keeps the first subscriber.
pub fn init(format: LogFormat, filter: Option<&str>) -> Result<(), TelemetryError> {
    let text = filter
        .map(str::to_owned)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| DEFAULT_FILTER.to_owned());
    let env_filter =
        EnvFilter::try_new(&text).map_err(|source| TelemetryError::Filter { filter: text.clone(), source })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).with_span_list(false).try_init(),
    };
    Ok(())
}
