//! Bringing the live maps in line with a config, without a gap: new allowlist entries go in
//! before the policy switches, and old entries come out last.

use gatekeeper_support::allowlist::sort_nets;
use ipnet::IpNet;

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
///
/// File and live state are compared as two sorted lists in one pass: no set of either is built,
/// so a million entries cost two sorted vectors of networks (18 bytes each).
pub fn apply(maps: &mut FilterMaps, config: &Config) -> anyhow::Result<SyncReport> {
    apply_sorted(maps, config, &config.allow.sorted_nets())
}

/// [`apply`] with the config's networks sorted already (`wanted`, from
/// [`gatekeeper_support::allowlist::Allowlist::sorted_nets`]): the daemon's start sorts them
/// while the kernel makes the maps.
pub fn apply_sorted(
    maps: &mut FilterMaps,
    config: &Config,
    wanted: &[IpNet],
) -> anyhow::Result<SyncReport> {
    let mut live = maps.nets()?;
    sort_nets(&mut live);
    let mut report = SyncReport::default();

    let added: Vec<IpNet> = sorted_difference(wanted, &live).collect();
    // All or nothing: a failed insert takes back what went in before it.
    maps.insert_new_all(&added)?;
    report.added = added;
    let policy = Policy::of(config);
    if maps.policy()? != policy {
        maps.set_policy(&policy)?;
        report.policy_changed = true;
    }
    for net in sorted_difference(&live, wanted) {
        maps.remove(net)?;
        report.removed.push(net);
    }
    Ok(report)
}

/// The items of sorted `a` that sorted `b` lacks, in order, by one merge of both.
pub fn sorted_difference<'a, T: Ord + Copy>(
    a: &'a [T],
    b: &'a [T],
) -> impl Iterator<Item = T> + 'a {
    let mut j = 0;
    a.iter().copied().filter(move |item| {
        while j < b.len() && b[j] < *item {
            j += 1;
        }
        !(j < b.len() && b[j] == *item)
    })
}

#[cfg(test)]
mod tests {
    use super::sorted_difference;

    #[test]
    fn sorted_difference_is_the_set_difference() {
        let a = [1, 3, 4, 7, 9];
        let b = [0, 3, 5, 7, 8, 10];
        assert_eq!(sorted_difference(&a, &b).collect::<Vec<_>>(), [1, 4, 9]);
        assert_eq!(sorted_difference(&b, &a).collect::<Vec<_>>(), [0, 5, 8, 10]);
        assert_eq!(sorted_difference(&a, &[]).count(), 5);
    }
}
