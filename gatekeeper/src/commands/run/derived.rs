//! The daemon's side of the DNS-derived allow entries ([`gatekeeper::derived`]): at start, the
//! persisted sets and one bounded round of DNS before the maps are filled (so "enforcing" means
//! the partner's networks are in force, and a start without DNS enforces the persisted ones);
//! while running, the follower task's new unions, applied through the reload thread like every
//! other change of the maps: new networks in before old ones out, under the config's edit lock.

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::Context as _;
use gatekeeper::{
    config::Config,
    derived::{self, Sources, dns::Resolver, refresh::Refresher},
    maps::FilterMaps,
    sync::sorted_difference,
};
use ipnet::IpNet;
use tokio::sync::{mpsc, watch};
use tracing::info;

/// How long the start waits for the first round of DNS: past it, the daemon starts with the
/// persisted sets and the round goes on in the background.
const FIRST_ROUND: Duration = Duration::from_secs(5);

/// The follower task (before `serve` spawns it) and the sets the loop knows of.
pub(super) struct DerivedLink {
    task: Option<(Refresher, Option<Resolver>, watch::Receiver<Sources>)>,
    updates_tx: mpsc::UnboundedSender<Arc<Vec<IpNet>>>,
    updates: mpsc::UnboundedReceiver<Arc<Vec<IpNet>>>,
    configs: watch::Sender<Sources>,
    /// The union of the derived sets as last resolved (sorted).
    pub wanted: Arc<Vec<IpNet>>,
    /// The union the maps hold (sorted): what the last successful sync applied.
    pub applied: Arc<Vec<IpNet>>,
}

fn sources_of(config: &Config) -> Sources {
    (
        config.dns.clone(),
        config.derived.iter().map(|e| e.source.clone()).collect(),
    )
}

impl DerivedLink {
    /// Loads the persisted sets of `config`'s sources and, if it has any, resolves them once
    /// (at most [`FIRST_ROUND`]).
    pub fn start(config: &Config, runtime: &tokio::runtime::Runtime) -> DerivedLink {
        let sources = sources_of(config);
        let (configs, configs_rx) = watch::channel(sources.clone());
        let (updates_tx, updates) = mpsc::unbounded_channel();
        let (settings, list) = sources;
        let persisted = if list.is_empty() {
            Default::default()
        } else {
            derived::load_state(&settings)
        };
        let mut refresher = Refresher::new(settings.clone(), &list, &persisted);
        let resolver = {
            let _context = runtime.enter();
            derived::resolver_for(&settings)
        };
        if let Some(dns) = resolver.as_ref().filter(|_| !refresher.is_empty()) {
            // The timer is made inside the runtime (it needs its time driver).
            let round = runtime.block_on(async {
                tokio::time::timeout(FIRST_ROUND, refresher.refresh_due(dns)).await
            });
            if round.is_err() {
                info!(
                    "the first DNS round for the derived allow entries takes longer than {FIRST_ROUND:?}: starting with the persisted sets"
                );
            }
            derived::store(&refresher);
        }
        let wanted = Arc::new(refresher.union());
        if !refresher.is_empty() {
            info!(
                sources = list.len(),
                networks = wanted.len(),
                state = %settings.state.display(),
                "derived allow entries loaded"
            );
        }
        DerivedLink {
            task: Some((refresher, resolver, configs_rx)),
            updates_tx,
            updates,
            configs,
            applied: Arc::clone(&wanted),
            wanted,
        }
    }

    /// Spawns the follower task (on the daemon's runtime).
    pub fn spawn(&mut self) {
        if let Some((refresher, resolver, configs)) = self.task.take() {
            tokio::spawn(derived::follow(
                refresher,
                resolver,
                configs,
                self.updates_tx.clone(),
            ));
        }
    }

    /// The next union the follower sends.
    pub async fn recv(&mut self) -> Arc<Vec<IpNet>> {
        match self.updates.recv().await {
            Some(nets) => nets,
            None => std::future::pending().await,
        }
    }

    /// A config was applied: the follower follows its sources.
    pub fn config_applied(&self, config: &Config) {
        let sources = sources_of(config);
        self.configs.send_if_modified(|old| {
            let changed = *old != sources;
            *old = sources;
            changed
        });
    }

    /// The change that brings the maps from [`Self::applied`] to [`Self::wanted`]: networks to
    /// add, and networks to take out (those neither the config's own entries nor `kept`, the
    /// fleet's allow entries (sorted), list).
    pub fn change(&self, config: &Config, kept: &[IpNet]) -> (Vec<IpNet>, Vec<IpNet>) {
        let add = sorted_difference(&self.wanted, &self.applied).collect();
        let mut remove: Vec<IpNet> = sorted_difference(&self.applied, &self.wanted)
            .filter(|net| kept.binary_search(net).is_err())
            .collect();
        if !remove.is_empty() {
            let listed: std::collections::HashSet<IpNet> = config
                .allow
                .nets()
                .iter()
                .filter(|n| remove.binary_search(n).is_ok())
                .copied()
                .collect();
            remove.retain(|n| !listed.contains(n));
        }
        (add, remove)
    }
}

/// `wanted` (the config's sorted allowlist) with the derived networks.
pub(super) fn with_derived(wanted: Vec<IpNet>, derived: &[IpNet]) -> Vec<IpNet> {
    if derived.is_empty() {
        return wanted;
    }
    derived::refresh::union(&wanted, derived)
}

/// Applies a change of the derived sets to the pinned maps (on the reload thread, under the
/// edit lock): the new networks in, then the old ones out.
pub(super) fn apply(
    pin_dir: &Path,
    add: &[IpNet],
    remove: &[IpNet],
) -> anyhow::Result<(usize, usize)> {
    let mut maps =
        FilterMaps::open_pinned(pin_dir).context("opening the pinned maps for the derived sync")?;
    let mut new = Vec::with_capacity(add.len());
    for net in add {
        if !maps.contains(*net)? {
            new.push(*net);
        }
    }
    maps.insert_new_all(&new)?;
    let mut removed = 0;
    for net in remove {
        if maps.remove(*net)? {
            removed += 1;
        }
    }
    Ok((new.len(), removed))
}
