//! One module per CLI verb.

mod check;
mod run;
mod stats;

use crate::cli::{Cli, Command};

pub fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { config, ifaces } => run::run(&config.config, ifaces),
        Command::Check { config } => check::check(&config.config),
        Command::Stats { config, json } => stats::stats(&config.config, json),
    }
}

/// `25,587`
pub fn join_ports(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}
