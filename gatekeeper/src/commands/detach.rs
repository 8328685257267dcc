//! `gatekeeper detach [--iface IF]`: takes the program off interfaces by removing their pinned
//! links; when no link is left, removes the pinned maps too. Refused while a daemon runs on the
//! same pin directory (stop it first: with the default stop semantics that already detaches).

use std::path::Path;

use anyhow::{anyhow, bail};
use gatekeeper::{bpffs, config::Config, dispatcher, filter, lock};
use gatekeeper_common::PROGRAM_NAME;

pub fn detach(path: &Path, ifaces: &[String]) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let dir = &config.pin_dir;
    // "Nothing to detach" only from a process that can see the pins.
    if !bpffs::pin_dir_visible(dir)? {
        if let Some(iface) = ifaces.first() {
            bail!(
                "{iface} has no pinned gatekeeper link ({} does not exist)",
                dir.display()
            );
        }
        println!("nothing to detach: {} does not exist", dir.display());
        return Ok(());
    }
    let _lock = lock::try_lock_pin_dir(dir)?.ok_or_else(|| {
        anyhow!(
            "a gatekeeper daemon is running with pin_dir {}: stop it first (`systemctl stop gatekeeper`; with keep_attached_on_exit = true the filter stays, then run `gatekeeper detach`)",
            dir.display()
        )
    })?;
    // Exclusive attachments are pinned links; dispatcher components live in libxdp's pins.
    let mut pinned = filter::pinned_link_ifaces(dir)?;
    let components: Vec<String> = config
        .interfaces
        .iter()
        .filter(|i| dispatcher::has_component(i, PROGRAM_NAME))
        .cloned()
        .collect();
    pinned.extend(components.iter().cloned());
    let targets: Vec<String> = if ifaces.is_empty() {
        pinned.clone()
    } else {
        for iface in ifaces {
            if !pinned.contains(iface) {
                bail!(
                    "{iface} has no pinned gatekeeper link in {} (pinned: {})",
                    dir.display(),
                    if pinned.is_empty() {
                        "none".to_string()
                    } else {
                        pinned.join(", ")
                    }
                );
            }
        }
        ifaces.to_vec()
    };
    for iface in &targets {
        if components.contains(iface) {
            dispatcher::leave(iface, PROGRAM_NAME)?;
        }
        filter::detach_pinned(dir, iface)?;
        println!("detached from {iface}");
    }
    let still_component = config
        .interfaces
        .iter()
        .any(|i| dispatcher::has_component(i, PROGRAM_NAME));
    if filter::pinned_link_ifaces(dir)?.is_empty() && !still_component {
        filter::remove_pins(dir)?;
        println!("removed the pinned state in {}", dir.display());
    }
    Ok(())
}
