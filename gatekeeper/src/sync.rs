//! Bringing the live maps in line with a config, without a gap: new allowlist entries go in
//! before the policy switches, and old entries come out last.

use gatekeeper_support::allowlist::sort_nets;
use ipnet::IpNet;

use crate::{
    config::Config,
    maps::FilterMaps,
    policy::Policy,
    rules::{DenyMaps, DenySyncReport},
};

/// What a sync changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub added: Vec<IpNet>,
    pub removed: Vec<IpNet>,
    pub policy_changed: bool,
    /// Deny entries put in and taken out.
    pub deny_added: usize,
    pub deny_removed: usize,
}

impl SyncReport {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && !self.policy_changed
            && self.deny_added == 0
            && self.deny_removed == 0
    }
}

/// The deny networks in force: the config's `[[deny]]` entries (`entries`, sorted) and the deny
/// feeds' networks (`feed_nets`, sorted), as one sorted list without duplicates. Every deny sync
/// passes this union, whoever triggers it (a config reload or a feed change): a sync of either
/// half alone would take the other half's entries out.
pub fn wanted_deny(entries: &[IpNet], feed_nets: &[IpNet]) -> Vec<IpNet> {
    let mut nets = Vec::with_capacity(entries.len() + feed_nets.len());
    nets.extend_from_slice(entries);
    nets.extend_from_slice(feed_nets);
    nets.sort_unstable();
    nets.dedup();
    nets
}

/// Brings the kernel's deny list in line with [`wanted_deny`] of the config's sorted `[[deny]]`
/// entries and the feeds' networks. Call under the config's edit lock (the CLI's edits and the
/// daemon's syncs go one at a time).
pub fn apply_deny(
    deny: &mut DenyMaps,
    entries: &[IpNet],
    feed_nets: &[IpNet],
) -> anyhow::Result<DenySyncReport> {
    deny.sync(&wanted_deny(entries, feed_nets))
}

/// Makes the maps enforce `config` and the deny feeds' networks (`feed_nets`, sorted); the
/// caller logs the report (one line per event). The deny list is brought in line first (its new
/// entries are in force before a port opens), then the allowlist and the policy. If an allowlist
/// insert fails (the allowlist is full), the allowlist entries this call added are taken out
/// again and the allowlist stays as it was.
///
/// File and live state are compared as two sorted lists in one pass: no set of either is built,
/// so a million entries cost two sorted vectors of networks (18 bytes each).
pub fn apply(
    maps: &mut FilterMaps,
    deny: &mut DenyMaps,
    config: &Config,
    feed_nets: &[IpNet],
) -> anyhow::Result<SyncReport> {
    apply_sorted(maps, deny, config, feed_nets, &config.allow.sorted_nets())
}

/// [`apply`] with the config's allowlist sorted already (`wanted`, from
/// [`gatekeeper_support::allowlist::Allowlist::sorted_nets`]): the daemon's start sorts it
/// while the kernel makes the maps.
pub fn apply_sorted(
    maps: &mut FilterMaps,
    deny: &mut DenyMaps,
    config: &Config,
    feed_nets: &[IpNet],
    wanted: &[IpNet],
) -> anyhow::Result<SyncReport> {
    let deny_report = apply_deny(deny, &config.deny.sorted_nets(), feed_nets)?;
    let mut report = apply_allowlist(maps, config, wanted)?;
    report.deny_added = deny_report.added.len();
    report.deny_removed = deny_report.removed.len();
    Ok(report)
}

/// The allowlist and policy half of [`apply_sorted`].
fn apply_allowlist(
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
    use super::{sorted_difference, wanted_deny};

    #[test]
    fn the_wanted_deny_set_is_the_sorted_union_of_entries_and_feeds() {
        let n = |s: &str| s.parse::<ipnet::IpNet>().expect("cidr");
        let entries = [n("192.0.2.0/28"), n("203.0.113.0/24")];
        let feeds = [
            n("198.51.100.0/24"),
            n("203.0.113.0/24"),
            n("2001:db8::/32"),
        ];
        assert_eq!(
            wanted_deny(&entries, &feeds),
            [
                n("192.0.2.0/28"),
                n("198.51.100.0/24"),
                n("203.0.113.0/24"),
                n("2001:db8::/32")
            ]
        );
        assert_eq!(wanted_deny(&entries, &[]), entries);
        assert_eq!(wanted_deny(&[], &feeds[..1]), feeds[..1]);
    }

    #[test]
    fn sorted_difference_is_the_set_difference() {
        let a = [1, 3, 4, 7, 9];
        let b = [0, 3, 5, 7, 8, 10];
        assert_eq!(sorted_difference(&a, &b).collect::<Vec<_>>(), [1, 4, 9]);
        assert_eq!(sorted_difference(&b, &a).collect::<Vec<_>>(), [0, 5, 8, 10]);
        assert_eq!(sorted_difference(&a, &[]).count(), 5);
    }
}
