//! tracing subscriber set-up: human lines by default, JSON on request.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. `RUST_LOG` overrides `level`.
/// Logs go to stderr (journald captures it under systemd).
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = colour(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    // A second init (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Human => builder.with_target(true).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
}

/// Whether log lines carry ANSI colour escapes: only on a terminal, and not
/// when `NO_COLOR` is set (<https://no-color.org>). journald and log files
/// would otherwise store the escapes as text.
fn colour(stderr_is_terminal: bool, no_color: bool) -> bool {
    stderr_is_terminal && !no_color
}

#[cfg(test)]
mod tests {
    use super::colour;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, false));
        assert!(!colour(false, false), "journald, files and pipes get plain text");
        assert!(!colour(true, true), "NO_COLOR wins");
        assert!(!colour(false, true));
    }
}
