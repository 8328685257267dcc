//! One module per CLI verb.

mod allow;
mod ban;
mod check;
mod deny;
mod detach;
mod entry_rows;
mod fleet;
mod run;
mod stats;
mod status;

use std::process::ExitCode;

use clap::CommandFactory as _;
use gatekeeper::fleet::Kind;
use gatekeeper_support::cli_docs;

use crate::cli::{AllowAction, BanAction, Cli, Command, DenyAction};

/// The command name in completions and man pages.
const BIN: &str = "gatekeeper";

/// Runs one command; `status` alone reports through its exit code as well.
pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let done = match cli.command {
        Command::Status { config, json } => {
            return Ok(status::status(&config.config, json)?.exit_code());
        }
        Command::Completions { shell } => {
            cli_docs::completions(Cli::command(), BIN, shell, &mut std::io::stdout())
        }
        Command::Man => cli_docs::man_pages(Cli::command(), BIN, &mut std::io::stdout()),
        Command::Run { config, ifaces } => run::run(&config.config, ifaces),
        Command::Check { config } => check::check(&config.config),
        Command::Stats { config, json } => stats::stats(&config.config, json),
        Command::Allow { action } => match action {
            AllowAction::Add {
                config,
                cidr,
                comment,
                fleet: true,
            } => fleet::add(&config.config, Kind::Allow, &cidr, comment.as_deref()),
            AllowAction::Add {
                config,
                cidr,
                comment,
                fleet: false,
            } => allow::add(&config.config, &cidr, comment.as_deref()),
            AllowAction::Remove {
                config,
                cidr,
                fleet: true,
            } => fleet::remove(&config.config, Kind::Allow, &cidr),
            AllowAction::Remove {
                config,
                cidr,
                fleet: false,
            } => allow::remove(&config.config, &cidr),
            AllowAction::List { config, json } => allow::list(&config.config, json),
        },
        Command::Ban { action } => match action {
            BanAction::Add {
                config,
                addr,
                duration,
                reason,
            } => ban::add(&config.config, &addr, duration, &reason),
            BanAction::Remove { config, addr } => ban::remove(&config.config, &addr),
            BanAction::List { config, json } => ban::list(&config.config, json),
        },
        Command::Deny { action } => match action {
            DenyAction::Add {
                config,
                cidr,
                comment,
                fleet: true,
            } => fleet::add(&config.config, Kind::Deny, &cidr, comment.as_deref()),
            DenyAction::Add {
                config,
                cidr,
                comment,
                fleet: false,
            } => deny::add(&config.config, &cidr, comment.as_deref()),
            DenyAction::Remove {
                config,
                cidr,
                fleet: true,
            } => fleet::remove(&config.config, Kind::Deny, &cidr),
            DenyAction::Remove {
                config,
                cidr,
                fleet: false,
            } => deny::remove(&config.config, &cidr),
            DenyAction::List { config, json } => deny::list(&config.config, json),
        },
        Command::Detach { config, ifaces } => detach::detach(&config.config, &ifaces),
    };
    done.map(|()| ExitCode::SUCCESS)
}

/// The config's warnings on stderr, one `gatekeeper: warning: …` line each.
pub fn print_warnings(config: &gatekeeper::config::Config) {
    print_each(&config.warnings());
}

pub fn print_each(warnings: &[String]) {
    for warning in warnings {
        eprintln!("gatekeeper: warning: {warning}");
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
