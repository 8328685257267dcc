//! The log both daemons write: one line per event on stderr (the journal under systemd), level
//! from `RUST_LOG` (default `info`), colours only on a terminal.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// Whether each line names its target (the module, or a target such as the relay's `audit`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Targets {
    Shown,
    Hidden,
}

/// Installs the subscriber for the process; later calls do nothing.
pub fn init(targets: Targets) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(targets == Targets::Shown)
        .try_init();
}
