//! Command-line interface, defined once; `--help` is generated from these doc comments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use gatekeeper::config::DEFAULT_CONFIG_PATH;

/// Keeps strangers off your SMTP port: an XDP filter that drops TCP segments to the protected
/// ports from any source outside an allowlist, before the kernel spends anything on them.
#[derive(Parser)]
#[command(name = "gatekeeper", version)]
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
    /// Print a shell completion script (e.g. `gatekeeper completions bash >
    /// /etc/bash_completion.d/gatekeeper`).
    Completions {
        /// The shell to complete for.
        shell: gatekeeper_support::cli_docs::Shell,
    },
    /// Print the man page (roff) for gatekeeper and its subcommands, e.g.
    /// `gatekeeper man | man -l -`.
    Man,
    /// Load the filter, attach it, fill its maps from the config and enforce until SIGINT/SIGTERM.
    ///
    /// Reloads on SIGHUP (reads the file as it is) and when the file changes; a changed file is
    /// read only once it has settled (unchanged for 0.5 s), so write it by atomic replace (a
    /// temporary file renamed over it). A reload removing more than 10% and more than 20 of the
    /// entries in force is logged at WARN with the count. Link events are watched: an interface
    /// deleted and re-created gets the filter again at once (the loss is logged at ERROR), and
    /// SIGHUP retries every configured interface without it. An interface that already runs an
    /// XDP program is refused, naming that program.
    ///
    /// Under systemd (Type=notify, $NOTIFY_SOCKET) it reports READY=1 only once every configured
    /// interface is attached with the maps filled, RELOADING=1 then READY=1 around each config
    /// reload, and a STATUS= line saying what it enforces.
    ///
    /// DNS-derived entries (`[[allow]] spf|mx|a = "NAME"`) are resolved through the `[dns]`
    /// nameservers only (never the system resolver): once before the filter enforces (at most
    /// 5 s; without DNS the sets persisted in `[dns] state` are enforced), then again at the
    /// records' TTL, bounded by `min_refresh_secs` and `max_refresh_secs`. A failure (SERVFAIL, a
    /// timeout, an SPF loop, more than 10 lookups) keeps the last good set and is logged with the
    /// reason; every change is logged as the networks added and removed, with the name.
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Attach to these interfaces instead of the config's `interfaces` (repeatable).
        #[arg(long = "iface", value_name = "IF")]
        ifaces: Vec<String>,
    },
    /// Validate the config file without touching the kernel; exit 1 with FILE:LINE:COLUMN if bad.
    ///
    /// A valid config is explained: each judged port with its policy (`protected_ports` means
    /// "allowlist"; open ports with their SYN limit), the precedence ban > deny > allow, the deny
    /// entries and feeds, the ban table, the ban socket (path, group, limits) and `never_ban`.
    ///
    /// A valid config whose allowlist admits a whole address family (0.0.0.0/0, ::/0) or nobody
    /// (no entries) gets a `gatekeeper: warning:` line on stderr; the exit status stays 0.
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
    /// Edit or list the allowlist: live in the pinned maps and, atomically, in the config file.
    ///
    /// The file is replaced through a temporary file with a random name (never through a link
    /// planted in the directory), keeping its owner, group, mode and ACLs; edits are serialised by
    /// `<config>.lock` (mode 0600). Fails (exit 1) when the pins cannot be seen (not root, or
    /// inside `ip netns exec`) rather than editing only the file.
    Allow {
        #[command(subcommand)]
        action: AllowAction,
    },
    /// Edit or list the deny list: `[[deny]]` entries of the config file, dropped on every judged
    /// port (open or allowlist) even when an allow entry covers them: deny wins over allow.
    ///
    /// Edited like `allow` (comments kept, atomic replace, `<config>.lock`); the running daemon
    /// applies the change through its usual reload of the file (within a second). Large lists
    /// belong in `deny_feeds` files, not here.
    Deny {
        #[command(subcommand)]
        action: DenyAction,
    },
    /// Ban single sources for a while: dropped on every judged port until the ban ends, enforced
    /// by the program itself (a ban ends on time even while the daemon is down).
    ///
    /// Bans live in the pinned maps (they survive a daemon restart) and in the `ban_state` file
    /// (they survive a reboot), changed under `bans.lock` next to it. An IPv4 ban covers the
    /// address, an IPv6 ban its /`ban_ipv6_prefix` (default /64). Precedence: ban > deny > allow.
    Ban {
        #[command(subcommand)]
        action: BanAction,
    },
    /// Show interfaces, attachment mode, policy, entry counts, and whether the live maps match
    /// the config file (and the DNS-derived entries: each source with its networks, the age of
    /// its last good resolution and its last error).
    ///
    /// Exit status, for monitoring: 0 when the filter is loaded, attached to every configured
    /// interface and in sync with the file; 2 when it is loaded but differs (an entry, the mode or
    /// the ports, or a configured interface without it); 3 when it is not loaded at all; 1 on
    /// errors (e.g. an invalid config, or pins this process cannot see: not root, or inside
    /// `ip netns exec`, which hides bpffs).
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Take the filter off the interface(s); once none is left, remove its pinned state.
    ///
    /// Fails (exit 1) rather than reporting "nothing to detach" when this process cannot see the
    /// pins (not root, or inside `ip netns exec`, which hides bpffs).
    Detach {
        #[command(flatten)]
        config: ConfigArg,
        /// Only this interface (repeatable); default: every interface with a pinned link.
        #[arg(long = "iface", value_name = "IF")]
        ifaces: Vec<String>,
    },
}

#[derive(Subcommand)]
pub enum AllowAction {
    /// Allow a network (CIDR, or a single address) to reach the protected ports.
    Add {
        #[command(flatten)]
        config: ConfigArg,
        /// IPv4 or IPv6 network without host bits, e.g. 198.51.100.0/24, or an address (not
        /// IPv4-mapped IPv6: write 198.51.100.1, not ::ffff:198.51.100.1).
        #[arg(value_name = "CIDR")]
        cidr: String,
        /// Who the entry is for; stored next to it in the config file.
        #[arg(long, value_name = "TEXT")]
        comment: Option<String>,
        /// Fleet-wide: the entry goes to etcd (`[fleet]`), and every host's daemon applies it;
        /// the config file is not changed.
        #[arg(long)]
        fleet: bool,
    },
    /// Remove a network from the allowlist.
    Remove {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(value_name = "CIDR")]
        cidr: String,
        /// Fleet-wide: the entry goes to etcd (`[fleet]`), and every host's daemon applies it;
        /// the config file is not changed.
        #[arg(long)]
        fleet: bool,
    },
    /// List the entries with their hit counters (live, when the filter is loaded) and source:
    /// `file` for the config's `cidr` entries, `spf:NAME`, `mx:NAME` or `a:NAME` for each network
    /// a DNS-derived entry admits (as the daemon last resolved it), `fleet` for the fleet's
    /// entries (as this host last applied them); then the derived sources' age and last error.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum DenyAction {
    /// Deny a network (CIDR, or a single address) on every judged port.
    Add {
        #[command(flatten)]
        config: ConfigArg,
        /// IPv4 or IPv6 network without host bits, or an address.
        #[arg(value_name = "CIDR")]
        cidr: String,
        /// Why; stored next to it in the config file.
        #[arg(long, value_name = "TEXT")]
        comment: Option<String>,
        /// Fleet-wide: the entry goes to etcd (`[fleet]`), and every host's daemon applies it;
        /// the config file is not changed.
        #[arg(long)]
        fleet: bool,
    },
    /// Remove a network from the deny list.
    Remove {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(value_name = "CIDR")]
        cidr: String,
        /// Fleet-wide: the entry goes to etcd (`[fleet]`), and every host's daemon applies it;
        /// the config file is not changed.
        #[arg(long)]
        fleet: bool,
    },
    /// List the `[[deny]]` entries with their hit counters (live, when the filter is loaded), and
    /// the deny feeds.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum BanAction {
    /// Ban a source: an address (IPv6: its /64, or /ban_ipv6_prefix). Banning a source that is
    /// banned already keeps the later of the two deadlines.
    Add {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(value_name = "ADDR")]
        addr: String,
        /// How long: 90s, 10m, 1h, 7d, 1h30m.
        #[arg(long = "for", value_name = "DURATION", value_parser = gatekeeper::bans::duration::parse)]
        duration: std::time::Duration,
        /// Why; stored with the ban and shown by `ban list`.
        #[arg(long, value_name = "TEXT", default_value = "")]
        reason: String,
    },
    /// Lift a ban before its time.
    Remove {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(value_name = "ADDR")]
        addr: String,
    },
    /// List the bans in force with the time left, the reason and their hit counters.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("gatekeeper").chain(args.iter().copied()))
    }

    #[test]
    fn allow_add_takes_a_cidr_a_comment_and_a_config() {
        let cli = parse(&[
            "allow",
            "add",
            "192.0.2.0/24",
            "--comment",
            "partner relay",
            "-c",
            "/tmp/gk.toml",
        ])
        .expect("parses");
        let Command::Allow {
            action:
                AllowAction::Add {
                    config,
                    cidr,
                    comment,
                    fleet,
                },
        } = cli.command
        else {
            panic!("not allow add");
        };
        assert!(!fleet);
        assert!(matches!(
            parse(&["allow", "add", "--fleet", "192.0.2.0/24"])
                .expect("parses")
                .command,
            Command::Allow {
                action: AllowAction::Add { fleet: true, .. }
            }
        ));
        assert_eq!(cidr, "192.0.2.0/24");
        assert_eq!(comment.as_deref(), Some("partner relay"));
        assert_eq!(config.config, PathBuf::from("/tmp/gk.toml"));
    }

    #[test]
    fn allow_remove_list_status_detach_parse() {
        assert!(matches!(
            parse(&["allow", "remove", "2001:db8::/32"])
                .expect("parses")
                .command,
            Command::Allow {
                action: AllowAction::Remove { .. }
            }
        ));
        assert!(matches!(
            parse(&["allow", "list", "--json"]).expect("parses").command,
            Command::Allow {
                action: AllowAction::List { json: true, .. }
            }
        ));
        assert!(matches!(
            parse(&["status", "--json"]).expect("parses").command,
            Command::Status { json: true, .. }
        ));
        let Command::Detach { ifaces, config } =
            parse(&["detach", "--iface", "eth0", "--iface", "eth1"])
                .expect("parses")
                .command
        else {
            panic!("not detach");
        };
        assert_eq!(ifaces, ["eth0", "eth1"]);
        assert_eq!(config.config, PathBuf::from(DEFAULT_CONFIG_PATH));
    }

    #[test]
    fn deny_and_ban_parse() {
        assert!(matches!(
            parse(&["deny", "add", "203.0.113.0/28", "--comment", "hijacked"])
                .expect("parses")
                .command,
            Command::Deny {
                action: DenyAction::Add { .. }
            }
        ));
        let Command::Ban {
            action:
                BanAction::Add {
                    addr,
                    duration,
                    reason,
                    ..
                },
        } = parse(&[
            "ban",
            "add",
            "203.0.113.9",
            "--for",
            "1h",
            "--reason",
            "guessing",
        ])
        .expect("parses")
        .command
        else {
            panic!("not ban add");
        };
        assert_eq!(addr, "203.0.113.9");
        assert_eq!(duration, std::time::Duration::from_secs(3600));
        assert_eq!(reason, "guessing");
        assert!(parse(&["ban", "add", "203.0.113.9", "--for", "soon"]).is_err());
        assert!(parse(&["ban", "add", "203.0.113.9"]).is_err());
        assert!(matches!(
            parse(&["ban", "list", "--json"]).expect("parses").command,
            Command::Ban {
                action: BanAction::List { json: true, .. }
            }
        ));
    }

    #[test]
    fn missing_or_extra_arguments_are_errors() {
        assert!(parse(&["allow", "add"]).is_err());
        assert!(parse(&["allow", "remove"]).is_err());
        assert!(parse(&["allow", "add", "192.0.2.1", "198.51.100.1"]).is_err());
        assert!(parse(&["allow", "frobnicate"]).is_err());
    }
}
