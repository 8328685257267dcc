use std::path::Path;

use gatekeeper::config::Config;

use super::join_ports;

pub fn check(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let v4 = config
        .allow
        .iter()
        .filter(|e| e.net.addr().is_ipv4())
        .count();
    println!(
        "{}: ok: interfaces {}, xdp_mode {}, xdp_attach {}, mode {}, protected ports {}, allowlist {} IPv4 + {} IPv6 entries",
        path.display(),
        config.interfaces.join(","),
        config.xdp_mode,
        config.xdp_attach,
        config.mode,
        join_ports(&config.protected_ports),
        v4,
        config.allow.len() - v4
    );
    for iface in &config.interfaces {
        let (attach, why) = gatekeeper::xdp_attach::resolve(
            config.xdp_attach,
            gatekeeper::filter::ifindex(iface).ok(),
        );
        println!("  {iface}: xdp_attach {attach} ({why})");
    }
    if config.xdp_attach == gatekeeper::config::XdpAttach::Dispatcher
        && let Some(refusal) = gatekeeper::dispatcher::freplace_refusal()
    {
        println!(
            "  warning: xdp_attach = \"dispatcher\" will not start here: {refusal} (\"auto\" falls back to exclusive)"
        );
    }
    for line in explain(&config) {
        println!("  {line}");
    }
    if !config.derived.is_empty() {
        let sources: Vec<String> = config
            .derived
            .iter()
            .map(|e| e.source.to_string())
            .collect();
        let nameservers: Vec<String> = config
            .dns
            .nameservers
            .iter()
            .map(ToString::to_string)
            .collect();
        println!(
            "  derived allow entries: {} (the daemon resolves them through {}, refreshed at their TTL within {}-{} s; last good sets kept in {})",
            sources.join(", "),
            nameservers.join(", "),
            config.dns.min_refresh.as_secs(),
            config.dns.max_refresh.as_secs(),
            config.dns.state.display()
        );
    }
    super::print_warnings(&config);
    Ok(())
}

/// What the config makes the filter do, in words: per judged port its policy (and where it came
/// from), then the deny list, the bans and the ban socket.
fn explain(config: &Config) -> Vec<String> {
    let mut lines = Vec::new();
    let precedence = "ban > deny > allow";
    for port in &config.protected_ports {
        if config.open_ports.contains(port) {
            let limit = if config.syn_rate == 0 {
                "no SYN rate limit (syn_rate unset)".to_string()
            } else {
                format!(
                    "SYNs beyond {}/s per source (burst {}) dropped, {} sources tracked per family",
                    config.syn_rate, config.syn_burst, config.rate_limit_sources
                )
            };
            lines.push(format!(
                "port {port}: policy open ([[port]]): everyone but banned and denied sources; allowlisted sources are never rate-limited; {limit}"
            ));
        } else {
            lines.push(format!(
                "port {port}: policy allowlist{}: only allowlisted sources",
                if config.open_ports.is_empty() && !config.protected_ports.is_empty() {
                    " (protected_ports, or the default 25)"
                } else {
                    ""
                }
            ));
        }
    }
    lines.push(format!(
        "precedence on every judged port: {precedence}; other ports and protocols are not judged"
    ));
    lines.push(format!(
        "deny: {} [[deny]] entries, {} feed(s){}",
        config.deny.len(),
        config.deny_feeds.len(),
        config
            .deny_feeds
            .iter()
            .map(|f| format!(" {}", f.display()))
            .collect::<String>()
    ));
    let bans = &config.bans;
    lines.push(format!(
        "bans: up to {} per family (max_bans), IPv4 /32, IPv6 /{} (ban_ipv6_prefix), state file {}",
        config.max_bans,
        config.ban_ipv6_prefix,
        bans.state.display()
    ));
    match &bans.socket {
        Some(socket) => lines.push(format!(
            "ban socket: {} (mode 0660, group {}), bans up to {} s (ban_max_secs), {} requests/minute",
            socket.display(),
            bans.socket_group.as_deref().unwrap_or("root"),
            bans.max_secs,
            bans.requests_per_minute
        )),
        None => lines.push("ban socket: off (set ban_socket to let the relay ban)".into()),
    }
    let never: Vec<String> = bans.never_ban.iter().map(ToString::to_string).collect();
    lines.push(format!(
        "never banned: every allowlist entry{}",
        if never.is_empty() {
            String::new()
        } else {
            format!(", and never_ban {}", never.join(", "))
        }
    ));
    lines
}
