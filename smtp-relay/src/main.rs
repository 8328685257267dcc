//! `smtp-relay`: the SMTP service the peers admitted by the gatekeeper talk to.

use clap::Parser;

/// SMTP relay for the peers the gatekeeper admits.
#[derive(Parser)]
#[command(version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
