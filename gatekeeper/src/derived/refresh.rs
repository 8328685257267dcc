//! Keeping the derived sets current: each source is resolved again when its records' TTL runs
//! out (bounded by `[dns] min_refresh_secs`/`max_refresh_secs`); a failure (SERVFAIL, timeout,
//! loop, too many lookups...) keeps the last good set, logs why, and is retried after the
//! minimum interval, doubling up to the maximum. Every change of a set is logged as a diff
//! (networks added and removed, with the source's name), and the state — every source's last good
//! set, its age, its last error — is what [`Refresher::state`] returns for the state file.

use std::time::Duration;

use gatekeeper_support::derived::{
    DerivedSource, DerivedState, DnsSettings, STATE_VERSION, SourceState, unix_now,
};
use ipnet::IpNet;
use tokio::time::Instant;
use tracing::{info, warn};

use super::{
    dns::Dns,
    spf::{self, Resolution},
};

/// One followed source.
#[derive(Debug)]
struct Followed {
    source: DerivedSource,
    /// The last good set and the last attempt (`None`: never resolved, nothing persisted).
    state: Option<SourceState>,
    due: Instant,
    /// Failures in a row, for the retry back-off.
    failures: u32,
}

/// What a refresh round did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// Sources asked.
    pub asked: usize,
    /// Some source's set changed (the union may have).
    pub changed: bool,
}

/// The sources of one config, their last good sets, and when each is due.
#[derive(Debug)]
pub struct Refresher {
    settings: DnsSettings,
    sources: Vec<Followed>,
}

impl Refresher {
    /// Follows `sources`, starting from their persisted state (if any); all are due now.
    pub fn new(
        settings: DnsSettings,
        sources: &[DerivedSource],
        persisted: &DerivedState,
    ) -> Refresher {
        let now = Instant::now();
        Refresher {
            settings,
            sources: sources
                .iter()
                .map(|source| Followed {
                    source: source.clone(),
                    state: persisted.get(source).cloned(),
                    due: now,
                    failures: 0,
                })
                .collect(),
        }
    }

    /// Another config: sources kept keep their state and schedule, new ones are due now, and
    /// dropped ones are forgotten. True if the set of sources changed.
    pub fn reconfigure(&mut self, settings: DnsSettings, sources: &[DerivedSource]) -> bool {
        let now = Instant::now();
        let mut old = std::mem::take(&mut self.sources);
        let before: Vec<DerivedSource> = old.iter().map(|f| f.source.clone()).collect();
        self.sources = sources
            .iter()
            .map(
                |source| match old.iter().position(|f| &f.source == source) {
                    Some(at) => old.swap_remove(at),
                    None => Followed {
                        source: source.clone(),
                        state: None,
                        due: now,
                        failures: 0,
                    },
                },
            )
            .collect();
        for gone in &old {
            info!(
                source = %gone.source,
                networks = gone.state.as_ref().map_or(0, |s| s.networks.len()),
                "derived allow entry no longer in the config: its networks are no longer admitted"
            );
        }
        let changed = before.len() != sources.len() || !old.is_empty();
        self.settings = settings;
        changed
    }

    pub fn settings(&self) -> &DnsSettings {
        &self.settings
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// When the next source is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.sources.iter().map(|f| f.due).min()
    }

    /// Resolves every source due now.
    pub async fn refresh_due(&mut self, dns: &impl Dns) -> Round {
        let now = Instant::now();
        let mut round = Round::default();
        for index in 0..self.sources.len() {
            if self.sources[index].due > now {
                continue;
            }
            round.asked += 1;
            let result = spf::resolve(dns, &self.sources[index].source).await;
            round.changed |= self.settle(index, result);
        }
        round
    }

    /// Records the outcome of resolving source `index`; true if its set changed.
    fn settle(&mut self, index: usize, result: Result<Resolution, spf::WalkError>) -> bool {
        let now = unix_now();
        let settings = &self.settings;
        let followed = &mut self.sources[index];
        match result {
            Ok(resolution) => {
                let old = followed.state.take();
                let (added, removed) = diff(
                    old.as_ref().map_or(&[][..], |s| s.networks.as_slice()),
                    &resolution.nets,
                );
                let changed = old.is_none() || !added.is_empty() || !removed.is_empty();
                if changed {
                    info!(
                        source = %followed.source,
                        added = %join(&added),
                        removed = %join(&removed),
                        networks = resolution.nets.len(),
                        ttl = resolution.ttl,
                        "derived allow entries changed"
                    );
                }
                let old_warnings = old.as_ref().map(|s| s.warnings.clone());
                if old_warnings.as_ref() != Some(&resolution.warnings) {
                    for warning in &resolution.warnings {
                        warn!(source = %followed.source, "{warning}");
                    }
                }
                if let Some(error) = old.as_ref().and_then(|s| s.error.as_ref()) {
                    info!(source = %followed.source, previous_error = %error, "derived allow entry resolves again");
                }
                followed.due = Instant::now() + settings.refresh_after(resolution.ttl);
                followed.failures = 0;
                followed.state = Some(SourceState {
                    source: followed.source.to_string(),
                    networks: resolution.nets,
                    resolved_at: now,
                    ttl_secs: resolution.ttl,
                    checked_at: now,
                    error: None,
                    warnings: resolution.warnings,
                });
                changed
            }
            Err(err) => {
                followed.failures = followed.failures.saturating_add(1);
                let retry = retry_after(settings, followed.failures);
                followed.due = Instant::now() + retry;
                let kept = followed.state.as_ref().map_or(0, |s| s.networks.len());
                warn!(
                    source = %followed.source,
                    kept_networks = kept,
                    retry_secs = retry.as_secs(),
                    "resolving the derived allow entry failed, keeping the last good set: {err}"
                );
                let state = followed.state.get_or_insert_with(|| SourceState {
                    source: followed.source.to_string(),
                    networks: Vec::new(),
                    resolved_at: 0,
                    ttl_secs: 0,
                    checked_at: now,
                    error: None,
                    warnings: Vec::new(),
                });
                state.checked_at = now;
                state.error = Some(err.to_string());
                false
            }
        }
    }

    /// Every source's state, for the state file.
    pub fn state(&self) -> DerivedState {
        DerivedState {
            version: STATE_VERSION,
            sources: self
                .sources
                .iter()
                .filter_map(|f| f.state.clone())
                .collect(),
        }
    }

    /// The union of the sources' last good sets: what the filter admits for them. Sorted,
    /// without duplicates.
    pub fn union(&self) -> Vec<IpNet> {
        let mut nets: Vec<IpNet> = self
            .sources
            .iter()
            .filter_map(|f| f.state.as_ref())
            .flat_map(|s| s.networks.iter().copied())
            .collect();
        nets.sort_unstable();
        nets.dedup();
        nets
    }
}

/// After `failures` failures in a row: the minimum interval, doubled each time, up to the
/// maximum.
fn retry_after(settings: &DnsSettings, failures: u32) -> Duration {
    let doubled = settings
        .min_refresh
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    doubled.min(settings.max_refresh)
}

/// What `new` has that `old` lacks, and the other way round (both sorted).
pub fn diff(old: &[IpNet], new: &[IpNet]) -> (Vec<IpNet>, Vec<IpNet>) {
    (
        crate::sync::sorted_difference(new, old).collect(),
        crate::sync::sorted_difference(old, new).collect(),
    )
}

fn join(nets: &[IpNet]) -> String {
    if nets.is_empty() {
        return "-".into();
    }
    nets.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The sorted union of two sorted lists, without duplicates.
pub fn union(a: &[IpNet], b: &[IpNet]) -> Vec<IpNet> {
    let mut nets = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let next = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x < y => {
                i += 1;
                *x
            }
            (Some(x), Some(y)) if y < x => {
                j += 1;
                *y
            }
            (Some(x), Some(_)) => {
                i += 1;
                j += 1;
                *x
            }
            (Some(x), None) => {
                i += 1;
                *x
            }
            (None, Some(y)) => {
                j += 1;
                *y
            }
            (None, None) => break,
        };
        if nets.last() != Some(&next) {
            nets.push(next);
        }
    }
    nets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_within_the_bounds() {
        let settings = DnsSettings {
            min_refresh: Duration::from_secs(2),
            max_refresh: Duration::from_secs(20),
            ..DnsSettings::default()
        };
        let secs: Vec<u64> = (1..=6)
            .map(|n| retry_after(&settings, n).as_secs())
            .collect();
        assert_eq!(secs, [2, 4, 8, 16, 20, 20]);
        assert_eq!(settings.refresh_after(1), Duration::from_secs(2));
        assert_eq!(settings.refresh_after(300), Duration::from_secs(20));
    }

    #[test]
    fn union_and_diff_of_sorted_lists() {
        let n = |s: &str| s.parse::<IpNet>().expect("net");
        let a = [n("192.0.2.0/24"), n("198.51.100.0/24")];
        let b = [n("192.0.2.0/24"), n("203.0.113.0/24")];
        assert_eq!(union(&a, &b), [a[0], a[1], b[1]]);
        assert_eq!(diff(&a, &b), (vec![b[1]], vec![a[1]]));
    }
}
