//! `gatekeeper run`: the daemon.
//!
//! Start-up: validate the config, take the pin directory's lock (one daemon per pin directory),
//! load the program with the pinned maps (or create and pin them), fill the maps, then for every
//! interface adopt the pinned link an earlier daemon left (the new program replaces the old one
//! inside the link, atomically) or attach and pin a new link.
//!
//! Running: drop events are logged; SIGHUP or a change of the config file (polled every second)
//! reloads it: new entries go in before old ones come out, mode and ports switch atomically,
//! interfaces added to the config are attached and removed ones detached. A config that does not
//! validate is refused with FILE:LINE:COLUMN in the log, and the filter keeps enforcing the
//! previous one.
//!
//! Stopping: SIGINT/SIGTERM detach the program and remove the pins, unless
//! `keep_attached_on_exit = true`, which leaves the pinned program enforcing for the next daemon
//! to adopt. A crash or SIGKILL always leaves it enforcing.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, anyhow};
use aya::maps::{MapData, RingBuf};
use gatekeeper::{
    bpffs, capabilities,
    config::Config,
    dir24, events,
    filter::{self, Filter, LoadOptions},
    lock,
    maps::FilterMaps,
    metrics, stats, sync,
};
use gatekeeper_support::{metrics::endpoint, stamp::FileStamp};
use tokio::{
    io::{Interest, unix::AsyncFd},
    net::TcpListener,
    signal::unix::{Signal, SignalKind, signal},
    sync::{mpsc, oneshot},
};
use tracing::{error, info, warn};

use super::join_ports;

/// How often the daemon reports drop events the kernel suppressed.
const SUPPRESSED_REPORT_INTERVAL: Duration = Duration::from_secs(10);
/// How often the config file is checked for changes.
const CONFIG_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How long a reload waits for an admin's `gatekeeper allow` edit to finish.
const EDIT_LOCK_WAIT: Duration = Duration::from_secs(5);

pub fn run(path: &Path, ifaces: Vec<String>) -> anyhow::Result<()> {
    let config = load(path, &ifaces)?;
    capabilities::ensure_can_load()?;
    bpffs::ensure_pin_dir(&config.pin_dir)?;
    // Signal handlers go in first: a SIGHUP (`systemctl reload`) during start-up must not kill the
    // daemon with its default action; it is handled as a reload once the daemon serves.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime failed")?;
    let signals = {
        let _context = runtime.enter();
        Signals::install()?
    };
    let _pin_lock = lock::try_lock_pin_dir(&config.pin_dir)?.ok_or_else(|| {
        anyhow!(
            "another gatekeeper daemon is running with pin_dir {} (stop it first, or give this one its own pin_dir)",
            config.pin_dir.display()
        )
    })?;

    // Pins this start creates (none yet) are its own to remove if it fails; pins an earlier
    // daemon left keep the filter it left enforcing.
    let fresh = !FilterMaps::is_pinned(&config.pin_dir);
    let mut filter = Filter::load_with(&LoadOptions {
        pin_dir: Some(&config.pin_dir),
        ipv4_lookup: config.ipv4_lookup,
        dir24_blocks: dir24::pool_size(
            dir24::blocks_needed(config.allow.nets()),
            config.ipv4_dir24_blocks,
        ),
        ..LoadOptions::default()
    })?;
    let started = fill(&mut filter, path, &config)
        .map_err(|e| (e, false))
        .and_then(|()| attach_all(&mut filter, &config).map_err(|e| (e, true)));
    if let Err((err, attaching)) = started {
        // A failed attach takes off what it attached unless the config keeps it attached.
        if fresh || (attaching && !config.keep_attached_on_exit) {
            // Leave nothing half-attached, and no pins of a filter that never enforced.
            if let Err(cleanup) = filter.detach_all().and_then(|()| filter.unpin()) {
                warn!(error = %format!("{cleanup:#}"), "could not remove what the failed start attached or pinned");
            }
        }
        return Err(err);
    }
    info!(interfaces = %config.interfaces.join(","), "enforcing; reload with SIGHUP, stop with SIGINT or SIGTERM");

    let events = filter.take_events();
    let mut daemon = Daemon {
        path: path.to_path_buf(),
        iface_override: ifaces,
        config,
        filter,
        counts: metrics::DaemonCounts::default(),
    };
    let result = runtime.block_on(daemon.serve(signals, events));
    let Daemon {
        mut filter, config, ..
    } = daemon;
    if config.keep_attached_on_exit {
        info!(
            pin_dir = %config.pin_dir.display(),
            "keep_attached_on_exit: the filter stays attached and pinned; the next daemon adopts it (`gatekeeper detach` removes it)"
        );
    } else {
        filter.detach_all()?;
        filter.unpin()?;
        info!(pin_dir = %config.pin_dir.display(), "detached and unpinned");
    }
    result
}

/// Fills the maps from the config: before attaching, so the program never runs with an empty
/// allowlist.
fn fill(filter: &mut Filter, path: &Path, config: &Config) -> anyhow::Result<()> {
    let _edit = edit_lock(path);
    fit_ipv4_tables(filter, config)?;
    let report = apply_growing(filter, config, false)?;
    // The windows of the tables the fill mapped stay in the maps, not in this process.
    filter.maps().release_tables();
    info!(
        added = report.added.len(),
        removed = report.removed.len(),
        config = %path.display(),
        mode = %config.mode,
        ports = %join_ports(&config.protected_ports),
        entries = config.allow.len(),
        pin_dir = %config.pin_dir.display(),
        ipv4_lookup = filter.maps().ipv4_lookup()?,
        "allowlist loaded"
    );
    Ok(())
}

/// The load options for `config` with a DIR-24-8 pool of `blocks`.
fn load_options(config: &Config, blocks: u32) -> LoadOptions<'_> {
    LoadOptions {
        pin_dir: Some(&config.pin_dir),
        ipv4_lookup: config.ipv4_lookup,
        dir24_blocks: blocks,
        ..LoadOptions::default()
    }
}

/// Replaces the (pinned) IPv4 tables when they do not fit the config: tables for DIR-24-8 when
/// the pinned ones were made for the trie only or the other way round (`ipv4_lookup` switched),
/// or a larger block pool when the list needs more blocks than the pinned pool has.
fn fit_ipv4_tables(filter: &mut Filter, config: &Config) -> anyhow::Result<()> {
    let wants_tables = config.ipv4_lookup != gatekeeper::filter::Ipv4Lookup::Trie;
    let has_tables = filter.maps().dir24().is_some();
    let needed = dir24::blocks_needed(config.allow.nets());
    let blocks = dir24::pool_size(needed, config.ipv4_dir24_blocks);
    if has_tables != wants_tables {
        warn!(
            configured = %config.ipv4_lookup,
            pinned_dir24_tables = has_tables,
            "ipv4_lookup changed: switching the IPv4 lookup (new tables filled, then swapped in without a gap)"
        );
    } else if wants_tables && filter.maps().ipv4_blocks() < needed as usize {
        info!(
            pinned = filter.maps().ipv4_blocks(),
            needed,
            blocks,
            "the allowlist needs more DIR-24-8 blocks than pinned: growing the pool"
        );
    } else {
        return Ok(());
    }
    filter.replace_ipv4_tables(&load_options(config, blocks))
}

/// Applies `config` to the maps (freshly opened from their pins with `reopen`, as a reload
/// does); when the DIR-24-8 block pool is too small, grows it (larger tables filled and swapped
/// in without a gap) and applies again, up to the `ipv4_dir24_blocks` ceiling.
fn apply_growing(
    filter: &mut Filter,
    config: &Config,
    reopen: bool,
) -> anyhow::Result<sync::SyncReport> {
    let attempt = |filter: &mut Filter| {
        if reopen {
            // Fresh handles: the CLI may have edited the maps (and taken blocks) since the last
            // sync; opened under the edit lock, their picture is current.
            let mut maps = FilterMaps::open_pinned(&config.pin_dir)
                .context("opening the pinned maps for the reload")?;
            sync::apply(&mut maps, config)
        } else {
            sync::apply(filter.maps(), config)
        }
    };
    match attempt(filter) {
        Err(err) if err.downcast_ref::<dir24::OutOfBlocks>().is_some() => {
            let current = u32::try_from(filter.maps().ipv4_blocks()).unwrap_or(u32::MAX);
            // Entries come out only after new ones went in: room for both.
            let live = FilterMaps::open_pinned(&config.pin_dir)?.nets()?;
            let needed = dir24::blocks_needed(config.allow.nets().iter().chain(&live));
            let blocks = dir24::pool_size(needed, config.ipv4_dir24_blocks);
            if blocks <= current {
                return Err(err);
            }
            info!(
                from = current,
                to = blocks,
                "the allowlist needs more DIR-24-8 blocks: growing the pool"
            );
            filter.replace_ipv4_tables(&load_options(config, blocks))?;
            attempt(filter)
        }
        other => other,
    }
}

/// Attaches to every configured interface (adopting pinned links) and detaches the pinned links
/// of interfaces no longer configured.
fn attach_all(filter: &mut Filter, config: &Config) -> anyhow::Result<()> {
    // Links an earlier daemon pinned for interfaces no longer configured.
    for iface in filter::pinned_link_ifaces(&config.pin_dir)? {
        if !config.interfaces.contains(&iface) {
            filter::detach_pinned(&config.pin_dir, &iface)?;
            warn!(
                iface,
                "detached the pinned link of an interface no longer in the config"
            );
        }
    }
    for iface in &config.interfaces {
        attach(filter, iface, config)?;
    }
    Ok(())
}

/// Reads and validates the config; `--iface` overrides its interfaces.
fn load(path: &Path, ifaces: &[String]) -> anyhow::Result<Config> {
    let mut config = Config::load(path)?;
    if !ifaces.is_empty() {
        config.interfaces = ifaces.to_vec();
    }
    Ok(config)
}

/// The config's edit lock, so a reload never lands between the two halves of an admin's
/// `gatekeeper allow` (map, then file). Without it (a read-only config directory) the daemon
/// still works; it says so.
fn edit_lock(path: &Path) -> Option<lock::Lock> {
    match lock::lock_config(path, EDIT_LOCK_WAIT) {
        Ok(lock) => Some(lock),
        Err(err) => {
            warn!(error = %format!("{err:#}"), "reading the config without the edit lock");
            None
        }
    }
}

/// Adopts the pinned link of `iface` or attaches anew.
fn attach(filter: &mut Filter, iface: &str, config: &Config) -> anyhow::Result<()> {
    let ifindex = filter::ifindex(iface)?;
    let slot = filter.maps().slot_for(ifindex)?;
    if let Some(mode) = filter.adopt(iface, slot)? {
        let wanted = config.xdp_mode.to_string();
        if wanted != "auto" && wanted != mode.to_string() {
            warn!(
                iface,
                running = %mode,
                configured = %config.xdp_mode,
                "the adopted link runs in another XDP mode than configured; to switch, `gatekeeper detach --iface` it and restart (a short gap)"
            );
        }
        return Ok(());
    }
    filter.attach(iface, config.xdp_mode, slot)?;
    Ok(())
}

/// The signals the daemon handles.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl Signals {
    /// Must run inside the runtime's context.
    fn install() -> anyhow::Result<Signals> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
            hangup: signal(SignalKind::hangup()).context("installing SIGHUP handler")?,
        })
    }
}

struct Daemon {
    path: PathBuf,
    iface_override: Vec<String>,
    config: Config,
    filter: Filter,
    counts: metrics::DaemonCounts,
}

impl Daemon {
    async fn serve(
        &mut self,
        signals: Signals,
        events: Option<RingBuf<MapData>>,
    ) -> anyhow::Result<()> {
        let Signals {
            mut interrupt,
            mut terminate,
            mut hangup,
        } = signals;
        let mut events = match events {
            Some(ring) => {
                // SAFETY: the ring buffer owns its fd and keeps it open for as long as the AsyncFd
                // that owns the ring buffer is registered.
                let fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
                    .map_err(|e| e.into_parts().1)
                    .context("watching the drop-event ring buffer")?;
                Some(fd)
            }
            None => None,
        };
        let mut scrapes = match self.config.metrics_listen {
            Some(addr) => {
                let listener = TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("listening for metrics on {addr}"))?;
                info!(%addr, "serving Prometheus metrics at /metrics");
                Some(serve_metrics(listener))
            }
            None => None,
        };
        let mut report = tokio::time::interval(SUPPRESSED_REPORT_INTERVAL);
        let mut poll = tokio::time::interval(CONFIG_POLL_INTERVAL);
        let mut stamp = FileStamp::of(&self.path);
        let mut suppressed_reported = 0u64;
        loop {
            tokio::select! {
                _ = interrupt.recv() => { info!(signal = "SIGINT", "stopping"); return Ok(()); }
                _ = terminate.recv() => { info!(signal = "SIGTERM", "stopping"); return Ok(()); }
                _ = hangup.recv() => {
                    stamp = FileStamp::of(&self.path);
                    self.reload("SIGHUP");
                }
                _ = poll.tick() => {
                    let now = FileStamp::of(&self.path);
                    if now.is_some() && now != stamp {
                        stamp = now;
                        self.reload("config file changed");
                    }
                }
                Some(reply) = next_scrape(&mut scrapes) => {
                    self.counts.attached_interfaces = self.filter.attached().len();
                    let _ = reply.send(metrics::render(self.filter.maps(), &self.counts));
                }
                ready = readable(&mut events) => {
                    let mut guard = ready?;
                    while let Some(item) = guard.get_inner_mut().next() {
                        match events::decode(&item) {
                            Some(drop) if drop.monitor => info!(
                                source = %drop.source,
                                dest_port = drop.dest_port,
                                iface = %events::interface_name(drop.ifindex),
                                "would drop SYN from a source outside the allowlist (monitor mode, passed)"
                            ),
                            Some(drop) => info!(
                                source = %drop.source,
                                dest_port = drop.dest_port,
                                iface = %events::interface_name(drop.ifindex),
                                "dropped SYN from a source outside the allowlist"
                            ),
                            None => warn!(len = item.len(), "undecodable drop event"),
                        }
                    }
                    guard.clear_ready();
                }
                _ = report.tick() => {
                    let suppressed: u64 = stats::collect(self.filter.maps())?
                        .iter()
                        .map(|s| s.total("events_suppressed"))
                        .sum();
                    if suppressed > suppressed_reported {
                        info!(
                            suppressed = suppressed - suppressed_reported,
                            total = suppressed,
                            "drop events suppressed by the in-kernel rate limit (see `gatekeeper stats` for counts)"
                        );
                        suppressed_reported = suppressed;
                    }
                }
            }
        }
    }

    /// Re-reads the config and applies it; a bad one is refused and the filter stays as it was.
    fn reload(&mut self, trigger: &str) {
        match self.try_reload() {
            Ok(()) => self.counts.reloads += 1,
            Err(err) => {
                self.counts.reload_failures += 1;
                error!(
                    trigger,
                    "reload refused, still enforcing the previous config: {err:#}"
                );
            }
        }
    }

    fn try_reload(&mut self) -> anyhow::Result<()> {
        let _edit = edit_lock(&self.path);
        let new = load(&self.path, &self.iface_override)?;
        if new.pin_dir != self.config.pin_dir {
            anyhow::bail!(
                "pin_dir changed from {} to {}: restart the daemon to move the pinned state",
                self.config.pin_dir.display(),
                new.pin_dir.display()
            );
        }
        if new.ipv4_lookup != self.config.ipv4_lookup {
            fit_ipv4_tables(&mut self.filter, &new)?;
        }
        let report = apply_growing(&mut self.filter, &new, true)?;
        // New interfaces get the new allowlist right away; removed ones come off last.
        let attached = self.filter.attached();
        for iface in new.interfaces.iter().filter(|i| !attached.contains(i)) {
            if let Err(err) = attach(&mut self.filter, iface, &new) {
                error!(
                    iface,
                    "attaching a newly configured interface failed (retried on the next reload): {err:#}"
                );
            }
        }
        for iface in attached.iter().filter(|i| !new.interfaces.contains(i)) {
            self.filter.detach(iface)?;
            if let Ok(index) = filter::ifindex(iface) {
                self.filter.maps().clear_slot(index)?;
            }
        }
        if new.xdp_mode != self.config.xdp_mode {
            warn!(from = %self.config.xdp_mode, to = %new.xdp_mode, "xdp_mode changed: applies to interfaces attached from now on; restart after `gatekeeper detach` to switch the others");
        }
        if new.ipv4_dir24_blocks != self.config.ipv4_dir24_blocks {
            info!(
                ceiling = ?new.ipv4_dir24_blocks,
                "ipv4_dir24_blocks changed: the new ceiling applies when the pool next grows"
            );
        }
        if new.metrics_listen != self.config.metrics_listen {
            warn!("metrics_listen changed: takes effect when the daemon restarts");
        }
        info!(
            added = report.added.len(),
            removed = report.removed.len(),
            policy_changed = report.policy_changed,
            mode = %new.mode,
            ports = %join_ports(&new.protected_ports),
            entries = new.allow.len(),
            interfaces = %new.interfaces.join(","),
            "config reloaded"
        );
        self.config = new;
        Ok(())
    }
}

/// A scrape waiting for the metrics text, which only the daemon can read from the maps.
type Scrape = oneshot::Sender<anyhow::Result<String>>;

/// Serves `GET /metrics` on `listener` in a task of its own; each request becomes a [`Scrape`]
/// the daemon's loop answers.
fn serve_metrics(listener: TcpListener) -> mpsc::Receiver<Scrape> {
    let (scrapes, requests) = mpsc::channel::<Scrape>(8);
    tokio::spawn(endpoint::serve(listener, move || {
        let scrapes = scrapes.clone();
        async move {
            let (reply, text) = oneshot::channel();
            scrapes
                .send(reply)
                .await
                .map_err(|_| anyhow!("the daemon is stopping"))?;
            text.await.map_err(|_| anyhow!("the daemon is stopping"))?
        }
    }));
    requests
}

/// The next scrape, or never when metrics are off.
async fn next_scrape(scrapes: &mut Option<mpsc::Receiver<Scrape>>) -> Option<Scrape> {
    match scrapes {
        Some(requests) => requests.recv().await,
        None => std::future::pending().await,
    }
}

async fn readable(
    events: &mut Option<AsyncFd<RingBuf<MapData>>>,
) -> std::io::Result<tokio::io::unix::AsyncFdReadyMutGuard<'_, RingBuf<MapData>>> {
    match events {
        Some(fd) => fd.readable_mut().await,
        None => std::future::pending().await,
    }
}
