//! `gatekeeper`: the controller daemon (`run`) and admin CLI.

mod cli;
mod commands;

use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    init_logging();
    match commands::dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("gatekeeper: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// One line per event on stderr (the journal under systemd); `RUST_LOG` overrides the level.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}
