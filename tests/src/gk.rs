//! Running the real `gatekeeper` binary in a namespace, and reading its stats.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;

use crate::{
    netns::{Link, Netns},
    process::{Daemon, PinDir, TempDir},
    workspace_binary,
};

/// The host address the fixture gives the host side of its veth.
pub const HOST_V4: &str = "192.0.2.25";

/// A veth pair whose host side (`link.left`, 192.0.2.25/24) has the real daemon attached.
/// Fields drop in order: the daemon stops before its pins, files and namespaces go.
pub struct Attached {
    pub daemon: Daemon,
    pub pins: PinDir,
    pub config: PathBuf,
    pub dir: TempDir,
    pub link: Link,
}

impl Attached {
    /// Namespaces named after `tag`, a config with `extra` lines and `allow`, the daemon running.
    pub fn start(tag: &str, extra: &str, allow: &[&str]) -> anyhow::Result<Attached> {
        let link = Link::new(tag)?;
        link.left
            .add_addr(&link.left_if, &format!("{HOST_V4}/24"))?;
        let dir = TempDir::new(tag)?;
        let pins = PinDir::new(tag);
        let config = dir.path().join("gatekeeper.toml");
        std::fs::write(&config, config_text(&link.left_if, &pins, extra, allow))?;
        let daemon = start_daemon(&link.left, &config, &dir.path().join("gk.log"))?;
        Ok(Attached {
            daemon,
            pins,
            config,
            dir,
            link,
        })
    }

    /// `gatekeeper stats --json` for this host.
    pub fn stats(&self) -> anyhow::Result<serde_json::Value> {
        stats(&self.link.left, &self.config)
    }

    /// One counter of the host interface from `stats`.
    pub fn counter(&self, stats: &serde_json::Value, family: &str, name: &str) -> u64 {
        counter(stats, &self.link.left_if, family, name)
    }
}

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
