//! The daemon's side of the fleet: [`Follower`] watches the prefix and applies what changes,
//! [`Publisher`] puts the bans this host makes (the relay's ban requests) into etcd.
//!
//! Following: at start the state file's revision is where the watch resumes (a state at
//! revision 0, or one etcd compacted away, is replaced by a full read of the prefix). Each batch
//! of events becomes a new [`FleetState`]; its difference from the last is applied (bans through
//! the daemon's ban store, allow and deny networks handed to the daemon's loop, which syncs the
//! maps with the file's entries merged in), then the state is saved. When the watch breaks, it
//! resumes on another member at once; when no member answers, the outage is logged once (the
//! host keeps enforcing the saved state) and the watch is tried again every few seconds, from the
//! revision it had.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use ipnet::IpNet;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use super::{
    Ban, Extra, FleetState, Kind,
    etcd::{Client, Compacted, Event},
    key,
};

/// The longest wait between two tries while etcd is unreachable.
const MAX_RETRY: Duration = Duration::from_secs(2);
/// Puts per etcd transaction (etcd's `--max-txn-ops` is 128 by default).
const TXN_PUTS: usize = 100;

/// Bans to apply to the local ban store, from the fleet.
#[derive(Debug, Default)]
pub struct BanChanges {
    pub put: Vec<(IpNet, Ban)>,
    pub removed: Vec<IpNet>,
}

/// Applies ban changes (on a blocking thread).
pub type ApplyBans = Arc<dyn Fn(BanChanges) -> anyhow::Result<()> + Send + Sync>;

/// The watcher.
pub struct Follower {
    pub client: Client,
    pub prefix: String,
    /// This host's name: its own bans, applied when it made them, are not applied again.
    pub host: String,
    pub state_path: PathBuf,
    pub state: FleetState,
    /// The fleet's allow and deny networks, for the daemon's loop.
    pub extra: watch::Sender<Arc<Extra>>,
    pub apply_bans: ApplyBans,
}

/// Why a session ended.
enum Ended {
    /// It never reached a member.
    Unreachable(anyhow::Error),
    /// It was following, and the watch broke.
    Broke(anyhow::Error),
}

impl Follower {
    /// Follows the prefix until the daemon stops.
    pub async fn run(mut self) {
        let mut outage: Option<Instant> = None;
        let mut delay = Duration::from_millis(100);
        loop {
            match self.session(&mut outage).await {
                Ended::Broke(err) => {
                    warn!(
                        revision = self.state.revision,
                        "fleet: the etcd watch broke ({err:#}); resuming from revision {} on a member that answers",
                        self.state.revision + 1
                    );
                    delay = Duration::from_millis(100);
                }
                Ended::Unreachable(err) => {
                    if outage.is_none() {
                        outage = Some(Instant::now());
                        error!(
                            endpoints = %self.client.endpoints(),
                            revision = self.state.revision,
                            allow = self.state.allow.len(),
                            deny = self.state.deny.len(),
                            bans = self.state.bans.len(),
                            "fleet: etcd is unreachable ({err:#}): enforcing the last fleet state until it answers (logged once; retried every {MAX_RETRY:?})"
                        );
                    } else {
                        debug!("fleet: etcd still unreachable: {err:#}");
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RETRY);
                }
            }
        }
    }

    /// Connects (resuming or reading everything), then follows until the watch breaks.
    async fn session(&mut self, outage: &mut Option<Instant>) -> Ended {
        let resumed_from = self.state.revision;
        let mut full_read = None;
        let watch = if self.state.revision == 0 {
            full_read = Some("no fleet state yet");
            match self.read_all().await {
                Ok(()) => {
                    self.client
                        .watch(&self.prefix, self.state.revision + 1)
                        .await
                }
                Err(err) => return Ended::Unreachable(err),
            }
        } else {
            match self
                .client
                .watch(&self.prefix, self.state.revision + 1)
                .await
            {
                Err(err) if err.downcast_ref::<Compacted>().is_some() => {
                    full_read = Some("the revision it had was compacted");
                    match self.read_all().await {
                        Ok(()) => {
                            self.client
                                .watch(&self.prefix, self.state.revision + 1)
                                .await
                        }
                        Err(err) => return Ended::Unreachable(err),
                    }
                }
                other => other,
            }
        };
        let mut watch = match watch {
            Ok(watch) => watch,
            Err(err) => return Ended::Unreachable(err),
        };
        match (outage.take(), full_read) {
            (Some(since), Some(why)) => info!(
                member = watch.member(),
                outage_secs = since.elapsed().as_secs(),
                revision = self.state.revision,
                "fleet: etcd answers again; resynchronised by a full read ({why})"
            ),
            (Some(since), None) => info!(
                member = watch.member(),
                outage_secs = since.elapsed().as_secs(),
                "fleet: etcd answers again; resynchronising from revision {}",
                resumed_from + 1
            ),
            (None, Some(why)) => info!(
                member = watch.member(),
                revision = self.state.revision,
                "fleet: following the fleet after a full read ({why})"
            ),
            (None, None) => info!(
                member = watch.member(),
                "fleet: following the fleet from revision {}",
                resumed_from + 1
            ),
        }
        loop {
            let batch = match watch.next().await {
                Ok(Some(batch)) => batch,
                Ok(None) => {
                    return Ended::Broke(anyhow::anyhow!("{}: the stream ended", watch.member()));
                }
                Err(err) if err.downcast_ref::<Compacted>().is_some() => {
                    // Resumed past what the member kept: the next session reads everything.
                    self.state.revision = 0;
                    return Ended::Broke(err);
                }
                Err(err) => return Ended::Broke(err),
            };
            let mut new = self.state.clone();
            for event in &batch.events {
                match event {
                    Event::Put(kv) => {
                        if !new.put(&self.prefix, kv) {
                            debug!(key = kv.key, "fleet: a key the fleet does not use");
                        }
                    }
                    Event::Delete { key, .. } => new.delete(&self.prefix, key),
                }
            }
            new.revision = new.revision.max(batch.revision);
            self.commit(new, "watch").await;
        }
    }

    /// Reads the whole prefix and makes it the state.
    async fn read_all(&mut self) -> anyhow::Result<()> {
        let (kvs, revision) = self.client.range_prefix(&self.prefix).await?;
        let new = FleetState::from_kvs(&self.prefix, &kvs, revision);
        self.commit(new, "full read").await;
        Ok(())
    }

    /// Applies the difference from the state in force to `new`, and saves `new`.
    async fn commit(&mut self, new: FleetState, how: &str) {
        let diff = self.state.diff(&new);
        for net in &diff.allow_added {
            let entry = new.allow.get(net).cloned().unwrap_or_default();
            info!(source = "fleet", %net, comment = entry.comment, author = entry.author, how, "fleet: allow entry added");
        }
        for net in &diff.allow_removed {
            info!(source = "fleet", %net, how, "fleet: allow entry removed");
        }
        for net in &diff.deny_added {
            let entry = new.deny.get(net).cloned().unwrap_or_default();
            info!(source = "fleet", %net, comment = entry.comment, author = entry.author, how, "fleet: deny entry added");
        }
        for net in &diff.deny_removed {
            info!(source = "fleet", %net, how, "fleet: deny entry removed");
        }
        if !diff.bans_put.is_empty() || !diff.bans_removed.is_empty() {
            let changes = BanChanges {
                put: diff
                    .bans_put
                    .iter()
                    .filter(|(_, ban)| ban.host != self.host)
                    .cloned()
                    .collect(),
                removed: diff.bans_removed.clone(),
            };
            let (put, removed) = (changes.put.len(), changes.removed.len());
            if put + removed > 0 {
                let apply = Arc::clone(&self.apply_bans);
                match tokio::task::spawn_blocking(move || apply(changes)).await {
                    Ok(Ok(())) => info!(
                        banned = put,
                        lifted = removed,
                        revision = new.revision,
                        how,
                        "fleet: bans applied"
                    ),
                    Ok(Err(err)) => {
                        error!("fleet: applying {put} bans and lifting {removed} failed: {err:#}")
                    }
                    Err(err) => error!("fleet: the ban thread failed: {err}"),
                }
            }
        }
        if !(diff.allow_added.is_empty()
            && diff.allow_removed.is_empty()
            && diff.deny_added.is_empty()
            && diff.deny_removed.is_empty())
        {
            let _ = self.extra.send(Arc::new(new.extra()));
        }
        if new != self.state {
            if let Err(err) = new.save(&self.state_path) {
                error!("fleet: saving the fleet state failed (the maps follow it anyway): {err:#}");
            }
            self.state = new;
        }
    }
}

/// A ban this host made, to publish.
#[derive(Clone, Debug)]
pub struct LocalBan {
    pub source: IpNet,
    pub until_unix: u64,
    pub reason: String,
    pub by: String,
}

/// Puts local bans into etcd, each with a lease that ends with it (bans ending in the same
/// second share one lease); a burst goes out in transactions of [`TXN_PUTS`]. While etcd is
/// unreachable the bans wait (those that end meanwhile are dropped) and go out when it answers.
pub struct Publisher {
    pub client: Client,
    pub prefix: String,
    pub host: String,
    pub bans: mpsc::UnboundedReceiver<LocalBan>,
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Publisher {
    pub async fn run(mut self) {
        let mut pending: BTreeMap<IpNet, LocalBan> = BTreeMap::new();
        let mut failing = false;
        loop {
            if pending.is_empty() {
                match self.bans.recv().await {
                    Some(ban) => {
                        pending.insert(ban.source, ban);
                    }
                    None => return,
                }
            }
            while let Ok(ban) = self.bans.try_recv() {
                pending.insert(ban.source, ban);
            }
            let now = now_unix();
            pending.retain(|_, ban| ban.until_unix > now);
            match self.publish(&mut pending, now).await {
                Ok(published) => {
                    if failing {
                        info!(published, "fleet: publishing bans again");
                        failing = false;
                    }
                }
                Err(err) => {
                    if !failing {
                        error!(
                            waiting = pending.len(),
                            "fleet: publishing bans failed ({err:#}); they go out when etcd answers (logged once)"
                        );
                        failing = true;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Publishes `pending`, taking out what went; how many went.
    async fn publish(
        &self,
        pending: &mut BTreeMap<IpNet, LocalBan>,
        now: u64,
    ) -> anyhow::Result<usize> {
        let mut by_ttl: BTreeMap<u64, Vec<IpNet>> = BTreeMap::new();
        for ban in pending.values() {
            by_ttl
                .entry(ban.until_unix.saturating_sub(now).max(1))
                .or_default()
                .push(ban.source);
        }
        let mut published = 0;
        for (ttl, sources) in by_ttl {
            let lease = self.client.grant(ttl).await?;
            for chunk in sources.chunks(TXN_PUTS) {
                let puts: Vec<(String, Vec<u8>)> = chunk
                    .iter()
                    .filter_map(|source| pending.get(source))
                    .map(|ban| {
                        let value = Ban {
                            until_unix: ban.until_unix,
                            reason: ban.reason.clone(),
                            by: ban.by.clone(),
                            host: self.host.clone(),
                        };
                        (
                            key(&self.prefix, Kind::Ban, ban.source),
                            serde_json::to_vec(&value).unwrap_or_default(),
                        )
                    })
                    .collect();
                self.client.put_all(&puts, lease).await?;
                for source in chunk {
                    pending.remove(source);
                }
                published += chunk.len();
            }
        }
        debug!(published, "fleet: bans published");
        Ok(published)
    }
}

/// Whether a fleet ban of `source` may be applied here: not inside `never_ban`.
pub fn bannable(never_ban: &[IpNet], source: IpNet) -> bool {
    let addr: IpAddr = source.network();
    !super::covered(never_ban, addr) && !never_ban.iter().any(|n| source.contains(&n.network()))
}
