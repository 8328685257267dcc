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
        "{}: ok: interfaces {}, xdp_mode {}, mode {}, protected ports {}, allowlist {} IPv4 + {} IPv6 entries",
        path.display(),
        config.interfaces.join(","),
        config.xdp_mode,
        config.mode,
        join_ports(&config.protected_ports),
        v4,
        config.allow.len() - v4
    );
    super::print_warnings(&config);
    Ok(())
}
