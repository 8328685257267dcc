//! One module per CLI verb.

mod allow;
mod check;
mod detach;
mod docs;
mod run;
mod stats;
mod status;

use crate::cli::{AllowAction, Cli, Command};

pub fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Completions { shell } => docs::completions(shell),
        Command::Man => docs::man(),
        Command::Run { config, ifaces } => run::run(&config.config, ifaces),
        Command::Check { config } => check::check(&config.config),
        Command::Stats { config, json } => stats::stats(&config.config, json),
        Command::Allow { action } => match action {
            AllowAction::Add {
                config,
                cidr,
                comment,
            } => allow::add(&config.config, &cidr, comment.as_deref()),
            AllowAction::Remove { config, cidr } => allow::remove(&config.config, &cidr),
            AllowAction::List { config, json } => allow::list(&config.config, json),
        },
        Command::Status { config, json } => status::status(&config.config, json),
        Command::Detach { config, ifaces } => detach::detach(&config.config, &ifaces),
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
