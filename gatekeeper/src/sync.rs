//! Bringing the live maps in line with a config, without a gap: new allowlist entries go in
//! before the policy switches, and old entries come out last.

use std::collections::BTreeSet;

use ipnet::IpNet;
use tracing::warn;

use crate::{config::Config, maps::FilterMaps, policy::Policy};

/// What a sync changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub added: Vec<IpNet>,
    pub removed: Vec<IpNet>,
    pub policy_changed: bool,
}

impl SyncReport {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && !self.policy_changed
    }
}

/// Makes the maps enforce `config`; the caller logs the report (one line per event). If an insert
/// fails (the allowlist is full), the entries this call added are taken out again and the maps
/// stay as they were.
pub fn apply(maps: &mut FilterMaps, config: &Config) -> anyhow::Result<SyncReport> {
    let live: BTreeSet<IpNet> = maps.entries()?.into_iter().map(|e| e.net).collect();
    let wanted: BTreeSet<IpNet> = config.allow.iter().map(|e| e.net).collect();
    let mut report = SyncReport::default();

    for net in wanted.difference(&live) {
        if let Err(err) = maps.insert(*net) {
            for added in &report.added {
                if let Err(undo) = maps.remove(*added) {
                    warn!(entry = %added, error = %undo, "could not take back a new entry");
                }
            }
            return Err(err);
        }
        report.added.push(*net);
    }
    let policy = Policy::of(config);
    if maps.policy()? != policy {
        maps.set_policy(&policy)?;
        report.policy_changed = true;
    }
    for net in live.difference(&wanted) {
        maps.remove(*net)?;
        report.removed.push(*net);
    }
    Ok(report)
}
