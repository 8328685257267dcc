//! The daemon's side of the bans: the state file put back into the maps at start (after a reboot
//! the maps are new), the sweeper that drops bans past their deadline from the maps and the file,
//! and the ban socket. Every change goes through [`gatekeeper::bans::store`] under `bans.lock`,
//! on a blocking thread, with the pinned maps opened there (the CLI does the same).

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use gatekeeper::{
    bans::{
        self,
        request::{Limits, RateLimit},
        store::{BanStore, NewBan},
    },
    config::Config,
    filter::Filter,
    rules::BanMaps,
};
use ipnet::IpNet;
use tracing::{error, info, warn};

use super::{
    ban_socket::{self, BanService},
    scrape::SharedCounts,
};

/// How often expired bans are swept from the maps and the file.
pub(super) const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Puts the state file's bans into the maps of the loaded filter.
pub(super) fn restore(filter: &mut Filter, config: &Config, counts: &SharedCounts) {
    let store = BanStore::lock(
        &config.bans.state,
        Some(&mut filter.rules().bans),
        bans::max_bans(config),
    );
    match store.and_then(|mut store| store.restore()) {
        Ok((put, refused)) => {
            info!(
                restored = put,
                state = %config.bans.state.display(),
                "bans from the state file are in force"
            );
            if !refused.is_empty() {
                if let Ok(mut c) = counts.lock() {
                    c.bans_refused_full += refused.len() as u64;
                }
                error!(
                    refused = refused.len(),
                    max_bans = bans::max_bans(config),
                    "the ban table is full: bans from the state file were not restored (raise max_bans)"
                );
            }
        }
        Err(err) => error!(
            state = %config.bans.state.display(),
            "restoring the bans failed (the pinned bans stay in force): {err:#}"
        ),
    }
}

/// What the blocking threads need to open the ban store.
#[derive(Clone)]
pub(super) struct StoreAt {
    pub state: PathBuf,
    pub pin_dir: PathBuf,
    pub v6_prefix: u8,
    pub max_bans: u32,
}

impl StoreAt {
    pub fn of(config: &Config) -> StoreAt {
        StoreAt {
            state: config.bans.state.clone(),
            pin_dir: config.pin_dir.clone(),
            v6_prefix: bans::v6_prefix(config),
            max_bans: bans::max_bans(config),
        }
    }

    pub(super) fn open(&self) -> anyhow::Result<BanStore<BanMaps>> {
        let maps = BanMaps::open_pinned(&self.pin_dir, self.v6_prefix)?;
        BanStore::lock(&self.state, Some(maps), self.max_bans)
    }
}

/// One sweep, on a blocking thread.
pub(super) async fn sweep(at: StoreAt, counts: SharedCounts) {
    let swept = tokio::task::spawn_blocking(move || at.open()?.sweep()).await;
    match swept {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => {
            if let Ok(mut c) = counts.lock() {
                c.bans_expired += n as u64;
            }
            info!(expired = n, "swept bans past their deadline");
        }
        Ok(Err(err)) => warn!("sweeping expired bans failed (retried): {err:#}"),
        Err(err) => warn!("the sweep thread failed: {err}"),
    }
}

/// The request limits of `config`; `fleet_allow` (the fleet's allow networks) are refused like
/// the file's: a partner allowed fleet-wide is never banned by a relay's request.
pub(super) fn limits(config: &Config, fleet_allow: &[IpNet]) -> Arc<Limits> {
    Arc::new(Limits {
        max_secs: config.bans.max_secs,
        v6_prefix: bans::v6_prefix(config),
        never_ban: config.bans.never_ban.clone(),
        allow: gatekeeper::fleet::merge_sorted(config.allow.nets(), fleet_allow).into_owned(),
    })
}

/// Binds and serves the ban socket when the config names one; the limits to update at reloads.
/// A ban the socket makes is also published to the fleet when `publish` is given.
pub(super) fn start_socket(
    config: &Config,
    fleet_allow: &[IpNet],
    counts: &SharedCounts,
    publish: Option<tokio::sync::mpsc::UnboundedSender<gatekeeper::fleet::follow::LocalBan>>,
) -> anyhow::Result<Option<Arc<RwLock<Arc<Limits>>>>> {
    let Some(path) = config.bans.socket.clone() else {
        return Ok(None);
    };
    let listener = ban_socket::bind(&path, config.bans.socket_group.as_deref())?;
    let shared = Arc::new(RwLock::new(limits(config, fleet_allow)));
    let at = StoreAt::of(config);
    let service = BanService {
        limits: Arc::clone(&shared),
        rate: Arc::new(Mutex::new(RateLimit::new(config.bans.requests_per_minute))),
        counts: Arc::clone(counts),
        apply: Arc::new(move |checked, by| {
            let added = at.open()?.add(NewBan {
                source: checked.source,
                duration: Duration::from_secs(checked.for_secs),
                reason: checked.reason.clone(),
                by: by.clone(),
            })?;
            if let Some(publish) = &publish {
                let _ = publish.send(gatekeeper::fleet::follow::LocalBan {
                    source: added.source,
                    until_unix: added.until_unix,
                    reason: checked.reason,
                    by,
                });
            }
            Ok(added)
        }),
    };
    info!(
        socket = %path.display(),
        group = config.bans.socket_group.as_deref().unwrap_or("(root only)"),
        max_secs = config.bans.max_secs,
        requests_per_minute = config.bans.requests_per_minute,
        "ban socket listening"
    );
    ban_socket::serve(listener, path, service);
    Ok(Some(shared))
}
