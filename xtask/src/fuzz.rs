//! `cargo xtask fuzz`: bounded in-process fuzzing of the relay's parsers
//! (command, address, DATA decoder, forged Authentication-Results removal) on stable Rust.

use crate::shell::{self, step};

#[derive(clap::Args)]
pub struct Args {
    /// Total time for all targets, in seconds.
    #[arg(long, default_value_t = 60)]
    pub secs: u64,
    /// Seed of the first round (rounds use seed, seed+1, ...).
    #[arg(long, default_value_t = 24301)]
    pub seed: u64,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    step("fuzz: smtp-relay command parser, address parser, DATA decoder, A-R strip");
    shell::run(shell::cargo().args([
        "run",
        "--release",
        "-p",
        "smtp-relay-fuzz",
        "--",
        "--secs",
        &args.secs.to_string(),
        "--seed",
        &args.seed.to_string(),
    ]))
}
