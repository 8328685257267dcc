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
    events,
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

    let mut filter = Filter::load_with(&LoadOptions {
        pin_dir: Some(&config.pin_dir),
        ipv4_lookup: config.ipv4_lookup,
        dir24_blocks: config.ipv4_dir24_blocks,
        ..LoadOptions::default()
    })?;
    let wants_tables = config.ipv4_lookup != gatekeeper::filter::Ipv4Lookup::Trie;
    if filter.maps().dir24().is_some() != wants_tables {
        warn!(
            pinned_dir24_tables = filter.maps().dir24().is_some(),
            configured = %config.ipv4_lookup,
            "the pinned maps were made for another ipv4_lookup and are kept (no gap); to switch, stop, `gatekeeper detach`, start"
        );
    }
    // Maps are filled before the program is attached, so it never runs with an empty allowlist.
    let report = {
        let _edit = edit_lock(path);
        sync::apply(filter.maps(), &config)?
    };
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
        if let Err(err) = attach(&mut filter, iface, &config) {
            if config.keep_attached_on_exit {
                // What is attached stays attached: a restart (systemd) adopts it without a gap.
                return Err(err);
            }
            // Leave nothing half-attached.
            filter.detach_all()?;
            filter.unpin()?;
            return Err(err);
        }
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

/// Reads and validates the config; `--iface` overrides its interfaces.
fn load(path: &Path, ifaces: &[String]) -> anyhow::Result<Config> {
    let mut config = Config::load(path)?;
    if !ifaces.is_empty() {
        config.interfaces = ifaces.to_vec();
    }
    for warning in config.warnings() {
        warn!(config = %path.display(), "{warning}");
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
        // Fresh handles on the pinned maps: the CLI may have edited them since the last sync, and
        // the DIR-24-8 writer's idea of which second-level blocks are free is per process (built
        // from the tables when first needed), so a long-lived one would hand out a block the CLI
        // took. Opened under the edit lock, its picture is current.
        let mut maps = FilterMaps::open_pinned(&self.config.pin_dir)
            .context("opening the pinned maps for the reload")?;
        let report = sync::apply(&mut maps, &new)?;
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
        if (new.ipv4_lookup, new.ipv4_dir24_blocks)
            != (self.config.ipv4_lookup, self.config.ipv4_dir24_blocks)
        {
            warn!(
                "ipv4_lookup or ipv4_dir24_blocks changed: the pinned maps keep their shape; to switch, stop, `gatekeeper detach`, start"
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
