//! Shell completions and man pages, generated from a binary's one clap definition.

use std::io::Write;

use anyhow::Context as _;
/// The shell names completions are generated for, re-exported so a CLI needs no clap_complete.
pub use clap_complete::Shell;

/// Writes the completion script of `command` (named `bin`) for `shell` to `out`.
pub fn completions(
    mut command: clap::Command,
    bin: &str,
    shell: clap_complete::Shell,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, bin, &mut script);
    if shell == clap_complete::Shell::Bash {
        script = fix_bash_states(&script, bin)?;
    }
    out.write_all(&script)
        .context("writing the completion script")
}

/// clap_complete's bash script spells the states of a hyphenated binary two ways: the loop over
/// the words says `smtp__relay__subcmd__queue`, the case arms `smtp__subcmd__relay__subcmd__queue`,
/// so nothing after the subcommand ever completes (clap-rs/clap#6421). Spell the arms like the
/// loop; for a name without hyphens, or once clap fixes it, this replaces nothing.
fn fix_bash_states(script: &[u8], bin: &str) -> anyhow::Result<Vec<u8>> {
    let text = std::str::from_utf8(script).context("the bash completion script is not UTF-8")?;
    let wrong = bin.replace('-', "__subcmd__");
    let right = bin.replace('-', "__");
    Ok(text.replace(&wrong, &right).into_bytes())
}

/// Writes the man page of `command` (named `bin`) followed by one page per subcommand, titled
/// `bin-sub`: one roff stream for `man -l -`.
pub fn man_pages(command: clap::Command, bin: &str, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut roff = Vec::new();
    clap_mangen::Man::new(command.clone())
        .render(&mut roff)
        .context("rendering the man page")?;
    for sub in command.get_subcommands() {
        clap_mangen::Man::new(sub.clone())
            .title(format!("{bin}-{}", sub.get_name()))
            .render(&mut roff)
            .with_context(|| format!("rendering the man page of {}", sub.get_name()))?;
    }
    out.write_all(&roff).context("writing the man page")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli() -> clap::Command {
        clap::Command::new("smtp-relay")
            .about("A relay")
            .subcommand(clap::Command::new("queue").subcommand(clap::Command::new("flush")))
            .subcommand(clap::Command::new("check"))
    }

    #[test]
    fn bash_states_of_a_hyphenated_binary_are_spelled_one_way() {
        let mut out = Vec::new();
        completions(cli(), "smtp-relay", clap_complete::Shell::Bash, &mut out).expect("script");
        let script = String::from_utf8(out).expect("utf-8");
        assert!(script.contains("smtp__relay__subcmd__queue"), "{script}");
        assert!(!script.contains("smtp__subcmd__relay"), "{script}");
    }

    #[test]
    fn man_pages_cover_every_subcommand() {
        let mut out = Vec::new();
        man_pages(cli(), "smtp-relay", &mut out).expect("pages");
        let roff = String::from_utf8(out).expect("utf-8");
        assert!(roff.contains(".TH smtp-relay "), "{roff}");
        assert!(roff.contains(".TH smtp-relay-queue "), "{roff}");
        assert!(roff.contains(".TH smtp-relay-check "), "{roff}");
    }
}
