//! Shell completions and the man page, generated from the one CLI definition in `cli.rs`.

use std::io::Write as _;

use clap::CommandFactory as _;

use crate::cli::Cli;

pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut command = Cli::command();
    clap_complete::generate(shell, &mut command, "gatekeeper", &mut std::io::stdout());
    Ok(())
}

/// The top-level page followed by one section per subcommand.
pub fn man() -> anyhow::Result<()> {
    let command = Cli::command();
    let mut out = Vec::new();
    clap_mangen::Man::new(command.clone()).render(&mut out)?;
    for sub in command.get_subcommands() {
        let title = format!("gatekeeper-{}", sub.get_name());
        clap_mangen::Man::new(sub.clone())
            .title(title)
            .render(&mut out)?;
    }
    std::io::stdout().write_all(&out)?;
    Ok(())
}
