//! The daemon's fleet wiring (`[fleet]`, see [`gatekeeper::fleet`]): the saved fleet state merged
//! into the start's fill, the follower and the publisher started on the loop, fleet bans applied
//! through the ban store, and the fleet's allow and deny networks applied to the maps as a job of
//! the loop's reload queue, so they never interleave with a reload of the file (which merges the
//! fleet's networks in as the last job applied them).

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use gatekeeper::{
    bans::store::NewBan,
    config::Config,
    fleet::{
        Extra, FleetState,
        etcd::Client,
        follow::{self, BanChanges, Follower, LocalBan, Publisher},
        host_name, state_path,
    },
    maps::FilterMaps,
    rules::DenyMaps,
    sync::sorted_difference,
};
use ipnet::IpNet;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use super::bans::StoreAt;

/// The fleet as the daemon holds it.
pub(super) struct Fleet {
    /// The fleet's allow and deny networks the maps hold (what reloads merge in).
    pub applied: Arc<Extra>,
    /// The newest from the follower; `None` without `[fleet]`.
    latest: Option<watch::Receiver<Arc<Extra>>>,
    /// Where local bans go to be published.
    publish: Option<mpsc::UnboundedSender<LocalBan>>,
    /// The saved state, until the follower takes it.
    start: Option<(FleetState, PathBuf)>,
}

impl Fleet {
    /// Reads the saved fleet state of `config` (nothing without `[fleet]`): what the start's
    /// fill merges in, so a host that restarts while etcd is down enforces the fleet's last state.
    pub fn load(config: &Config) -> Fleet {
        let Some(fleet) = &config.fleet else {
            return Fleet {
                applied: Arc::default(),
                latest: None,
                publish: None,
                start: None,
            };
        };
        let path = state_path(config, fleet);
        let state = FleetState::load(&path).unwrap_or_else(|err| {
            warn!("{err:#}: starting from an empty fleet state (a full read of etcd replaces it)");
            FleetState::default()
        });
        info!(
            state = %path.display(),
            revision = state.revision,
            allow = state.allow.len(),
            deny = state.deny.len(),
            bans = state.bans.len(),
            "fleet: the saved fleet state is in force until etcd answers"
        );
        Fleet {
            applied: Arc::new(state.extra()),
            latest: None,
            publish: None,
            start: Some((state, path)),
        }
    }

    /// Starts the follower and the publisher (on the daemon's runtime).
    pub fn start(&mut self, config: &Config) -> anyhow::Result<()> {
        let (Some(fleet), Some((state, state_path))) = (&config.fleet, self.start.take()) else {
            return Ok(());
        };
        let client = Client::new(fleet).context("[fleet]")?;
        let host = host_name(fleet);
        let (extra, latest) = watch::channel(Arc::clone(&self.applied));
        let at = StoreAt::of(config);
        let never_ban = config.bans.never_ban.clone();
        let follower = Follower {
            client: client.clone(),
            prefix: fleet.prefix.clone(),
            host: host.clone(),
            state_path,
            state,
            extra,
            apply_bans: Arc::new(move |changes| apply_bans(&at, &never_ban, changes)),
        };
        let (publish, bans) = mpsc::unbounded_channel();
        let publisher = Publisher {
            client: client.clone(),
            prefix: fleet.prefix.clone(),
            host: host.clone(),
            bans,
        };
        info!(endpoints = %client.endpoints(), prefix = fleet.prefix, host, "fleet: following etcd");
        tokio::spawn(follower.run());
        tokio::spawn(publisher.run());
        self.latest = Some(latest);
        self.publish = Some(publish);
        Ok(())
    }

    /// Where the ban socket sends the bans it made.
    pub fn publisher(&self) -> Option<mpsc::UnboundedSender<LocalBan>> {
        self.publish.clone()
    }

    /// Waits until the follower has new networks (never without `[fleet]`).
    pub async fn changed(&mut self) {
        match &mut self.latest {
            Some(latest) => {
                if latest.changed().await.is_err() {
                    // The follower is gone (it never ends while the daemon runs).
                    self.latest = None;
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending().await,
        }
    }

    /// The fleet's allow networks the ban socket refuses to ban: those in the maps and the
    /// follower's newest (an entry just added is refused before its job ran).
    pub fn allow_nets(&self) -> Vec<IpNet> {
        match &self.latest {
            Some(latest) => {
                gatekeeper::fleet::merge_sorted(&self.applied.allow, &latest.borrow().allow)
                    .into_owned()
            }
            None => self.applied.allow.clone(),
        }
    }

    /// The networks the maps should hold, when they differ from what they hold.
    pub fn pending(&self) -> Option<Arc<Extra>> {
        let latest = Arc::clone(&*self.latest.as_ref()?.borrow());
        (latest != self.applied).then_some(latest)
    }
}

/// What a fleet job changes in the maps.
pub(super) struct Job {
    pub pin_dir: PathBuf,
    pub target: Arc<Extra>,
    pub allow_added: Vec<IpNet>,
    pub allow_removed: Vec<IpNet>,
    pub deny_added: Vec<IpNet>,
    pub deny_removed: Vec<IpNet>,
}

/// The networks of `leaving` that neither the file's list (`file`, in file order) nor `sorted`
/// (another source in the maps) still has. The file's list is sorted once, and only when
/// something leaves: a million-entry list is not scanned once per leaving network.
fn kept_out(leaving: impl Iterator<Item = IpNet>, file: &[IpNet], sorted: &[IpNet]) -> Vec<IpNet> {
    let leaving: Vec<IpNet> = leaving
        .filter(|net| sorted.binary_search(net).is_err())
        .collect();
    if leaving.is_empty() {
        return leaving;
    }
    let mut file = file.to_vec();
    gatekeeper_support::allowlist::sort_nets(&mut file);
    leaving
        .into_iter()
        .filter(|net| file.binary_search(net).is_err())
        .collect()
}

impl Job {
    /// The job that takes the maps from `applied` to `target`; a network leaving the fleet stays
    /// when the file (or a deny feed) still has it.
    /// `derived`: the DNS-derived networks in the maps (sorted), kept like the file's entries.
    pub fn new(
        config: &Config,
        feed_nets: &[IpNet],
        derived: &[IpNet],
        applied: &Extra,
        target: Arc<Extra>,
    ) -> Job {
        let allow_removed = kept_out(
            sorted_difference(&applied.allow, &target.allow),
            config.allow.nets(),
            derived,
        );
        let deny_removed = kept_out(
            sorted_difference(&applied.deny, &target.deny),
            config.deny.nets(),
            feed_nets,
        );
        Job {
            pin_dir: config.pin_dir.clone(),
            allow_added: sorted_difference(&target.allow, &applied.allow).collect(),
            deny_added: sorted_difference(&target.deny, &applied.deny).collect(),
            allow_removed,
            deny_removed,
            target,
        }
    }
}

/// What a fleet job did.
pub(super) struct Done {
    pub target: Arc<Extra>,
    pub allow: (usize, usize),
    pub deny: (usize, usize),
}

/// Runs on the reload thread: new networks in before old ones come out.
pub(super) fn run(job: Job) -> anyhow::Result<Done> {
    let mut maps =
        FilterMaps::open_pinned(&job.pin_dir).context("opening the pinned maps for the fleet")?;
    let mut deny = DenyMaps::open_pinned(&job.pin_dir)
        .context("opening the pinned deny list for the fleet")?;
    let mut done = Done {
        target: job.target,
        allow: (0, 0),
        deny: (0, 0),
    };
    for net in &job.deny_added {
        if deny.insert(*net)? {
            done.deny.0 += 1;
        }
    }
    for net in &job.allow_added {
        if !maps.contains(*net)? {
            maps.insert(*net)?;
            done.allow.0 += 1;
        }
    }
    for net in &job.allow_removed {
        if maps.remove(*net)? {
            done.allow.1 += 1;
        }
    }
    for net in &job.deny_removed {
        if deny.remove(*net)? {
            done.deny.1 += 1;
        }
    }
    maps.release_tables();
    Ok(done)
}

/// Applies the fleet's ban changes through the ban store (on the follower's blocking thread):
/// bans from other hosts are put with the deadline they were published with (sources in
/// `never_ban` excepted); bans the fleet lifted (their lease ended, or an admin took them out)
/// are lifted here when they came from the fleet.
fn apply_bans(at: &StoreAt, never_ban: &[IpNet], changes: BanChanges) -> anyhow::Result<()> {
    let mut store = at.open()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut skipped = 0;
    let new: Vec<NewBan> = changes
        .put
        .into_iter()
        .filter(|(source, ban)| {
            let keep = ban.until_unix > now && follow::bannable(never_ban, *source);
            if !keep && ban.until_unix > now {
                skipped += 1;
            }
            keep
        })
        .map(|(source, ban)| NewBan {
            source,
            duration: Duration::from_secs(ban.until_unix - now),
            reason: ban.reason,
            by: format!("fleet host={} {}", ban.host, ban.by),
        })
        .collect();
    if skipped > 0 {
        warn!(
            skipped,
            "fleet: bans of sources in never_ban were not applied here"
        );
    }
    if !new.is_empty() {
        let (_, full) = store.add_all(new)?;
        if full > 0 {
            error!(
                refused = full,
                "fleet: the ban table is full (max_bans): fleet bans were not applied"
            );
        }
    }
    if !changes.removed.is_empty() {
        store.remove_where(&changes.removed, |record| record.by.starts_with("fleet "))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().expect("net")).collect()
    }

    #[test]
    fn a_network_leaving_the_fleet_stays_when_the_file_or_another_source_has_it() {
        // The file's list in file order (unsorted), the other source sorted.
        let file = nets(&["203.0.113.0/24", "2001:db8::/48", "192.0.2.0/28"]);
        let derived = nets(&["198.51.100.7/32"]);
        let leaving = nets(&[
            "192.0.2.0/28",
            "192.0.2.0/29",
            "198.51.100.7/32",
            "203.0.113.0/24",
            "2001:db8::/48",
            "2001:db8::/64",
        ]);
        assert_eq!(
            kept_out(leaving.into_iter(), &file, &derived),
            nets(&["192.0.2.0/29", "2001:db8::/64"])
        );
        assert!(kept_out(std::iter::empty(), &file, &derived).is_empty());
    }
}
