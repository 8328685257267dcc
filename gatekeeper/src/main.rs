//! `gatekeeper`: the controller daemon (`run`) and admin CLI.

mod cli;
mod commands;

use std::process::ExitCode;

use clap::Parser as _;
use gatekeeper_support::logging;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    logging::init(logging::Targets::Hidden);
    match commands::dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("gatekeeper: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
