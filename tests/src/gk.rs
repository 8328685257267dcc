//! Running the real `gatekeeper` binary in a namespace, and reading its stats.

use std::{path::Path, time::Duration};

use anyhow::Context as _;

use crate::{
    netns::Netns,
    process::{Daemon, PinDir},
    workspace_binary,
};

/// Starts `gatekeeper run --config <config>` in `ns` (host mounts kept, so pins are shared) and
/// waits until it enforces.
pub fn start_daemon(ns: &Netns, config: &Path, log: &Path) -> anyhow::Result<Daemon> {
    let mut cmd = ns.nsenter();
    cmd.arg(workspace_binary("gatekeeper"))
        .args(["run", "--config"])
        .arg(config);
    let mut daemon = Daemon::start("gatekeeper run", cmd, log)?;
    daemon.wait_for_log("enforcing", Duration::from_secs(15))?;
    Ok(daemon)
}

/// A config for `iface` with the given extra lines and allowlist, pinned under `pins`.
pub fn config_text(iface: &str, pins: &PinDir, extra: &str, allow: &[&str]) -> String {
    let mut text = format!(
        "interfaces = [\"{iface}\"]\npin_dir = \"{}\"\n{extra}\n",
        pins.path().display()
    );
    for cidr in allow {
        text.push_str(&format!("\n[[allow]]\ncidr = \"{cidr}\"\n"));
    }
    text
}

/// `gatekeeper stats --json` run inside `ns`.
pub fn stats(ns: &Netns, config: &Path) -> anyhow::Result<serde_json::Value> {
    let out = ns
        .nsenter()
        .arg(workspace_binary("gatekeeper"))
        .args(["stats", "--json", "--config"])
        .arg(config)
        .output()
        .context("running gatekeeper stats")?;
    anyhow::ensure!(
        out.status.success(),
        "gatekeeper stats failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).context("parsing gatekeeper stats --json")
}

/// One counter of one interface from `stats` output.
pub fn counter(stats: &serde_json::Value, iface: &str, family: &str, name: &str) -> u64 {
    stats["interfaces"]
        .as_array()
        .and_then(|all| all.iter().find(|i| i["interface"] == iface))
        .and_then(|i| i["counters"][family][name].as_u64())
        .unwrap_or(0)
}
