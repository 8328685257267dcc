//! `smtp-relay`: thin CLI over the library (see `lib.rs`).

use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser, Subcommand};
use gatekeeper_support::{cli_docs, cli_docs::Shell, logging};
use smtp_relay::server::Server;

/// The command name in completions and man pages.
const BIN: &str = "smtp-relay";

/// SMTP relay for the peers the gatekeeper admits: ESMTP with TLS, AUTH
/// only inside TLS, never an open relay, durable spool, audit log.
///
/// Listener roles: mta (port 25: local domains from anyone admitted,
/// relaying only after AUTH), submission (587: STARTTLS then AUTH),
/// submissions (465: implicit TLS, AUTH). See smtp-relay/README.md for the
/// config reference and examples/smtp-relay.toml for a commented example.
#[derive(Parser)]
#[command(name = BIN, version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve SMTP on the configured listeners until SIGINT or SIGTERM.
    ///
    /// Logs go to stderr (RUST_LOG selects levels, default "info"); audit
    /// events use the target "audit". On a bad config nothing listens.
    /// Under systemd (Type=notify, $NOTIFY_SOCKET) it reports READY=1 once
    /// every listener accepts, RELOADING=1 then READY=1 around SIGHUP.
    /// Next hops with tls = "required" are verified against [delivery]
    /// ca_file, else the system trust store (SSL_CERT_FILE/SSL_CERT_DIR
    /// honoured).
    Run {
        /// The relay's TOML config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a config file (syntax, values, TLS certificate and key,
    /// password hashes, gatekeeper allowlists) without listening.
    Check {
        /// The relay's TOML config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Inspect and steer the delivery queue (also while the relay runs).
    ///
    /// flush and remove go through the running relay's control socket
    /// (spool_dir/control.sock); without a running relay they work on the
    /// spool directly under its lock. list and show only read.
    Queue {
        /// The relay's TOML config file (for spool_dir).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        #[command(subcommand)]
        action: QueueAction,
    },
    /// Query the company directory (`[directory]`) as the relay would.
    ///
    /// Connects (failover in order), binds as the service account and, with
    /// --user, searches that login name and prints the entry's DN, the
    /// addresses it may send as, its groups, whether it is disabled and in
    /// the relay group. Never asks for or prints a user's password.
    Directory {
        /// The relay's TOML config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        #[command(subcommand)]
        action: DirectoryAction,
    },
    /// DKIM keys: generate one and print its DNS record, or check the published records.
    Dkim {
        #[command(subcommand)]
        action: DkimAction,
    },
    /// Print an argon2id hash for a `[[user]]` password_hash entry.
    ///
    /// Prompts twice without echo, or reads one line from standard input
    /// with --stdin (for scripts).
    HashPassword {
        /// Read the password from standard input instead of prompting.
        #[arg(long)]
        stdin: bool,
    },
    /// Print a shell completion script to standard output.
    ///
    /// bash: `smtp-relay completions bash > /etc/bash_completion.d/smtp-relay`
    ///
    /// zsh: `smtp-relay completions zsh > /usr/local/share/zsh/site-functions/_smtp-relay`
    ///
    /// fish: `smtp-relay completions fish > ~/.config/fish/completions/smtp-relay.fish`
    Completions {
        /// The shell to complete for.
        #[arg(value_name = "SHELL")]
        shell: Shell,
    },
    /// Print the man page (roff) for smtp-relay and each subcommand.
    ///
    /// Read it with `smtp-relay man | man -l -`, or install it with
    /// `smtp-relay man > /usr/local/share/man/man1/smtp-relay.1`.
    Man,
}

#[derive(Subcommand)]
enum DirectoryAction {
    /// Bind as the service account and show what the relay would use.
    Test {
        /// A login name to look up (sAMAccountName, userPrincipalName, uid, ...).
        #[arg(long, value_name = "NAME")]
        user: Option<String>,
    },
}

#[derive(Subcommand)]
enum DkimAction {
    /// Generate a private key (PEM, mode 0600, never over an existing file) and print the TXT
    /// record to publish at SELECTOR._domainkey.DOMAIN, in zone-file syntax.
    Keygen {
        /// The signing domain (d=); mail whose From: is in it gets signed.
        #[arg(long)]
        domain: String,
        /// The selector (s=), e.g. "ed2026" or "rsa2026".
        #[arg(long)]
        selector: String,
        /// ed25519 (RFC 8463) or rsa (2048 bits); configure one of each for dual signatures.
        #[arg(long, value_enum, default_value = "ed25519")]
        algorithm: smtp_relay::dkim::keys::Algorithm,
        /// Where to write the key [default: DOMAIN.SELECTOR.key in the current directory].
        #[arg(long, value_name = "FILE")]
        key_file: Option<PathBuf>,
        /// Make this user (the relay's, e.g. smtp-relay) own the key file; needs root.
        #[arg(long, value_name = "USER")]
        owner: Option<String>,
    },
    /// Look up each [[dkim.key]]'s record through the config's nameservers ([dns], else
    /// [delivery] nameservers) and say whether it matches the key file. Exits non-zero when any
    /// key is missing, differs, or cannot be checked.
    Check {
        /// The relay's TOML config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum QueueAction {
    /// List queued messages: id, size, age, attempts, sender, pending
    /// recipients, last reply.
    List {
        /// One JSON array instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show one message: its envelope with delivery state and its headers.
    Show {
        /// The queue id, as `queue list` prints it.
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Try every queued message now.
    Flush,
    /// Delete a message from the queue without delivering it.
    Remove {
        /// The queue id, as `queue list` prints it.
        #[arg(value_name = "ID")]
        id: String,
    },
}

fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    let password = if from_stdin {
        let mut s = String::new();
        std::io::stdin()
            .take(4096)
            .read_to_string(&mut s)
            .context("reading password from standard input")?;
        s.lines().next().unwrap_or("").to_owned()
    } else {
        let first = rpassword::prompt_password("Password: ").context("reading password")?;
        let second = rpassword::prompt_password("Again: ").context("reading password")?;
        anyhow::ensure!(first == second, "passwords do not match");
        first
    };
    anyhow::ensure!(!password.is_empty(), "empty password");
    Ok(password)
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is
/// called, before any listener is bound, so an early SIGTERM is not fatal.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match execute(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line with the whole context chain: file, line, cause.
            eprintln!("smtp-relay: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn execute(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Completions { shell } => {
            cli_docs::completions(Cli::command(), BIN, shell, &mut std::io::stdout())
        }
        Command::Man => cli_docs::man_pages(Cli::command(), BIN, &mut std::io::stdout()),
        Command::Check { config } => {
            let prepared = smtp_relay::prepare(&config)?;
            for warning in smtp_relay::directory::warnings(&prepared.config) {
                eprintln!("smtp-relay: warning: {}: {warning}", config.display());
            }
            println!(
                "{}: OK ({} listener(s), {} user(s))",
                config.display(),
                prepared.config.listeners.len(),
                prepared.config.users.len()
            );
            Ok(())
        }
        Command::Queue { config, action } => {
            let config = smtp_relay::config::Config::load(&config)?;
            let dir = &config.spool_dir;
            match action {
                QueueAction::List { json } => {
                    let items = smtp_relay::control::list(dir)?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&items)?);
                    } else {
                        print!("{}", smtp_relay::control::format_list(&items));
                    }
                }
                QueueAction::Show { id } => println!("{}", smtp_relay::control::show(dir, &id)?),
                QueueAction::Flush => println!("{}", smtp_relay::control::command(dir, "flush")?),
                QueueAction::Remove { id } => {
                    anyhow::ensure!(
                        smtp_relay::spool::is_valid_id(&id),
                        "invalid queue id {id:?}"
                    );
                    println!(
                        "{}",
                        smtp_relay::control::command(dir, &format!("remove {id}"))?
                    );
                }
            }
            Ok(())
        }
        Command::Directory {
            config,
            action: DirectoryAction::Test { user },
        } => {
            logging::init(logging::Targets::Shown);
            let prepared = smtp_relay::prepare(&config)?;
            let directory = prepared
                .directory
                .with_context(|| format!("{}: no [directory] table", config.display()))?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let text =
                runtime.block_on(smtp_relay::directory::test(&directory, user.as_deref()))?;
            print!("{text}");
            Ok(())
        }
        Command::Dkim { action } => dkim(action),
        Command::HashPassword { stdin } => {
            let password = read_password(stdin)?;
            println!("{}", smtp_relay::password::hash_password(&password)?);
            Ok(())
        }
        Command::Run { config } => {
            logging::init(logging::Targets::Shown);
            let prepared = smtp_relay::prepare(&config)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(async {
                let shutdown = shutdown_signal()?;
                let server = Server::bind(prepared)?;
                server.run(shutdown).await
            })
        }
    }
}

fn dkim(action: DkimAction) -> anyhow::Result<()> {
    use smtp_relay::dkim::{check, keyfile, keys};
    match action {
        DkimAction::Keygen {
            domain,
            selector,
            algorithm,
            key_file,
            owner,
        } => {
            anyhow::ensure!(
                smtp_relay::address::is_host_name(&domain),
                "--domain {domain:?} is not a domain"
            );
            anyhow::ensure!(
                smtp_relay::config::dkim::is_selector(&selector),
                "--selector {selector:?} is not a selector (DNS labels)"
            );
            let domain = domain.to_ascii_lowercase();
            let path =
                key_file.unwrap_or_else(|| PathBuf::from(format!("{domain}.{selector}.key")));
            let pem = keys::generate(algorithm)?;
            let record = keys::PrivateKey::from_pem(pem.as_bytes())?.record()?;
            keyfile::write(&path, &pem, owner.as_deref())?;
            eprintln!("wrote {} ({})", path.display(), algorithm.as_str());
            println!("{}", keys::zone_line(&selector, &domain, &record));
            Ok(())
        }
        DkimAction::Check { config } => {
            let config = smtp_relay::config::Config::load(&config)?;
            let Some(dkim) = &config.dkim else {
                anyhow::bail!("{}: no [dkim] table", config.path.display());
            };
            let resolver = match (&config.dns, &config.delivery) {
                (Some(dns), _) => smtp_relay::dns::from_config(dns)?,
                (None, Some(d)) if !d.nameservers.is_empty() => smtp_relay::dns::resolver(
                    &d.nameservers,
                    std::time::Duration::from_secs(2),
                    2,
                    0,
                )?,
                _ => anyhow::bail!(
                    "{}: no nameservers: add a [dns] table",
                    config.path.display()
                ),
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let mut failed = 0;
            for key in &dkim.keys {
                let status = runtime.block_on(check::check_key(&resolver, key));
                println!("{}", check::describe(key, &status));
                if !status.ok() {
                    failed += 1;
                }
            }
            anyhow::ensure!(
                failed == 0,
                "{failed} of {} DKIM key(s) not published as configured",
                dkim.keys.len()
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::Cli;

    #[test]
    fn cli_definition_is_consistent() {
        // clap's own checks (duplicate flags, bad defaults) that otherwise
        // only fire when the broken subcommand is used.
        Cli::command().debug_assert();
    }
}
