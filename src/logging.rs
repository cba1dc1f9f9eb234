//! Log lines on standard error: JSON lines or text, the level from `RUST_LOG`, colour only on a terminal.

use std::io::IsTerminal as _;

/// The format of log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// One JSON object per line (the default when standard error is not a terminal).
    Json,
    /// Human-readable lines (the default on a terminal).
    Text,
}

/// Installs the global subscriber: `format`, or the default for where standard error goes; never ANSI colour
/// codes unless standard error is a terminal. `RUST_LOG` sets the level (default: provgate's info, others' warn).
pub(crate) fn init(format: Option<LogFormat>) {
    let terminal = std::io::stderr().is_terminal();
    let format = format.unwrap_or(if terminal { LogFormat::Text } else { LogFormat::Json });
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "provgate=info,warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(terminal);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).with_span_list(false).init(),
        LogFormat::Text => builder.init(),
    }
}
