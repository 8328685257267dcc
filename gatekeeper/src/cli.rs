//! Command-line interface, defined once; `--help` is generated from these doc comments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use gatekeeper::config::DEFAULT_CONFIG_PATH;

/// Keeps strangers off your SMTP port: an XDP filter that drops TCP segments to the protected
/// ports from any source outside an allowlist, before the kernel spends anything on them.
#[derive(Parser)]
#[command(name = "gatekeeper", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The config file option shared by every subcommand.
#[derive(Args, Clone)]
pub struct ConfigArg {
    /// The config file (the source of truth for the allowlist).
    #[arg(short, long, default_value = DEFAULT_CONFIG_PATH, env = "GATEKEEPER_CONFIG")]
    pub config: PathBuf,
}

#[derive(Subcommand)]
pub enum Command {
    /// Load the filter, attach it, fill its maps from the config and enforce until SIGINT/SIGTERM.
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Attach to these interfaces instead of the config's `interfaces` (repeatable).
        #[arg(long = "iface", value_name = "IF")]
        ifaces: Vec<String>,
    },
    /// Validate the config file without touching the kernel; exit 1 with FILE:LINE:COLUMN if bad.
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Show the filter's counters per interface (from the pinned maps; the daemon need not run).
    Stats {
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}
