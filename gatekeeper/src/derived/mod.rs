//! DNS-derived allow entries (`[[allow]] spf|mx|a = "NAME"`): the networks a partner publishes
//! in DNS, followed as they change.
//!
//! - [`dns`]: the questions asked, and the resolver that asks the `[dns]` nameservers only;
//! - [`spf`]: the networks a source authorises (the SPF walk, MX hosts, addresses);
//! - [`refresh`]: each source refreshed at its TTL, the last good set kept on failure, every
//!   change logged as a diff;
//! - [`follow`]: the daemon's task around them, which persists the state file
//!   ([`gatekeeper_support::derived`]) and hands every new union to the daemon's sync.

pub mod dns;
pub mod listing;
pub mod refresh;
pub mod spf;

use std::sync::Arc;

use gatekeeper_support::derived::{DerivedSource, DerivedState, DnsSettings};
use ipnet::IpNet;
use tokio::sync::{mpsc, watch};
use tracing::{error, warn};

use self::{dns::Resolver, refresh::Refresher};

/// What the daemon's config says about the derived entries.
pub type Sources = (DnsSettings, Vec<DerivedSource>);

/// The resolver for `settings`, or `None` (logged) when there is none to build.
pub fn resolver_for(settings: &DnsSettings) -> Option<Resolver> {
    if settings.nameservers.is_empty() {
        return None;
    }
    match Resolver::new(settings) {
        Ok(resolver) => Some(resolver),
        Err(err) => {
            error!("the derived allow entries cannot be resolved: {err:#}");
            None
        }
    }
}

/// Writes the refresher's state to the state file (logged on failure).
pub fn store(refresher: &Refresher) {
    let path = &refresher.settings().state;
    if let Err(err) = refresher.state().store(path) {
        warn!(state = %path.display(), "writing the derived allow state failed (the filter has the new set; a reboot without DNS would start from the older file): {err:#}");
    }
}

/// Loads the state file; an unreadable one counts as empty, with a warning.
pub fn load_state(settings: &DnsSettings) -> DerivedState {
    DerivedState::load(&settings.state).unwrap_or_else(|err| {
        warn!("the derived allow state cannot be read, starting without it: {err}");
        DerivedState::default()
    })
}

/// The daemon's task: refreshes the sources as they fall due, follows config changes, and sends
/// every new union of the derived sets on `updates`.
pub async fn follow(
    mut refresher: Refresher,
    mut resolver: Option<Resolver>,
    mut configs: watch::Receiver<Sources>,
    updates: mpsc::UnboundedSender<Arc<Vec<IpNet>>>,
) {
    loop {
        let due = refresher.next_due().filter(|_| resolver.is_some());
        tokio::select! {
            () = sleep_until(due) => {
                let Some(dns) = resolver.as_ref() else { continue };
                let round = refresher.refresh_due(dns).await;
                if round.asked > 0 {
                    store(&refresher);
                }
                if round.changed && updates.send(Arc::new(refresher.union())).is_err() {
                    return;
                }
            }
            changed = configs.changed() => {
                if changed.is_err() {
                    return;
                }
                let (settings, sources) = configs.borrow_and_update().clone();
                let old = refresher.settings();
                if (&old.nameservers, old.timeout, old.attempts)
                    != (&settings.nameservers, settings.timeout, settings.attempts)
                {
                    resolver = resolver_for(&settings);
                }
                let moved = old.state != settings.state;
                if refresher.reconfigure(settings, &sources) || moved {
                    store(&refresher);
                    if updates.send(Arc::new(refresher.union())).is_err() {
                        return;
                    }
                }
            }
        }
    }
}

async fn sleep_until(due: Option<tokio::time::Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}
