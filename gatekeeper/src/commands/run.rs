//! `gatekeeper run`: the daemon.
//!
//! Start-up: validate the config, take the pin directory's lock (one daemon per pin directory),
//! load the program with the pinned maps (or create and pin them), fill the maps, then for every
//! interface adopt the pinned link an earlier daemon left (the new program replaces the old one
//! inside the link, atomically) or attach and pin a new link.
//!
//! Running: drop events are logged; SIGHUP or a change of the config file reloads it: new entries
//! go in before old ones come out, mode and ports switch atomically, interfaces added to the config
//! are attached and removed ones detached. A changed file is read only once it has settled (see
//! [`gatekeeper_support::settle`]), so one written in place is never applied half-way. A config
//! that does not validate is refused with FILE:LINE:COLUMN in the log, and the filter keeps
//! enforcing the previous one. The blocking part of a reload (edit lock, read, parse, map fill)
//! runs on a blocking thread ([`reload`]), metrics render on another ([`scrape`]), so neither a
//! foreign lock holder nor a flood of scrapes holds the loop up. Link events and a check every
//! second keep the filter on the configured interfaces ([`links`]). The deny feeds are followed
//! like the config file ([`feeds`]); every deny sync, after a reload or a feed change, writes the
//! union of the `[[deny]]` entries and all feeds.
//!
//! Stopping: SIGINT/SIGTERM detach the program and remove the pins, unless
//! `keep_attached_on_exit = true`, which leaves the pinned program enforcing for the next daemon
//! to adopt. A crash or SIGKILL always leaves it enforcing.

mod ban_socket;
mod bans;
mod derived;
mod feeds;
mod fleet;
mod ipv4_tables;
mod links;
mod reload;
mod scrape;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail};
use aya::maps::{MapData, RingBuf};
use gatekeeper::{
    bpffs, capabilities,
    config::Config,
    dir24, events,
    filter::{self, Filter, LoadOptions},
    link_watch::LinkWatch,
    lock,
    maps::FilterMaps,
    metrics, stats, sync,
};
use gatekeeper_support::{
    notify,
    settle::{Look, Settle},
    stamp::FileStamp,
};
use ipnet::IpNet;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{Signal, SignalKind, signal},
    task::JoinHandle,
};
use tracing::{error, info, warn};

use self::{
    derived::DerivedLink,
    feeds::{FeedSet, FeedWatch},
    links::Interfaces,
    reload::Outcome,
    scrape::SharedCounts,
};
use super::join_ports;

/// How often the daemon reports drop events the kernel suppressed.
const SUPPRESSED_REPORT_INTERVAL: Duration = Duration::from_secs(10);
/// How often the config file is looked at (one `stat`); a change is read once it has settled.
const CONFIG_POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How often every configured interface is checked, besides on link events: catches a program
/// someone took off without a link event.
const INTERFACE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

pub fn run(path: &Path, ifaces: Vec<String>) -> anyhow::Result<()> {
    let stamp = FileStamp::of(path);
    let config = load(path, &ifaces)?;
    capabilities::ensure_can_load()?;
    announce_attach(&config)?;
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
    // The list is sorted (for the sync) on a second thread while the kernel makes the maps
    // (zeroing a gigabyte of tables for a million spread entries takes seconds).
    let (filter, wanted) = std::thread::scope(|scope| {
        let sorting = scope.spawn(|| config.allow.sorted_nets());
        let filter = Filter::load_with(&load_options(
            &config,
            dir24::pool_size(
                dir24::blocks_needed(config.allow.nets()),
                config.ipv4_dir24_blocks,
            ),
        ));
        (filter, sorting.join())
    });
    let mut filter = filter?;
    let wanted = wanted.map_err(|_| anyhow!("sorting the allowlist failed"))?;
    // The DNS-derived entries: persisted, then resolved once (bounded) before the fill.
    let derived = DerivedLink::start(&config, &runtime);
    let wanted = derived::with_derived(wanted, &derived.wanted);
    let counts = SharedCounts::default();
    // Before attaching: after a reboot the maps are new, and the file has the bans.
    bans::restore(&mut filter, &config, &counts);
    let feeds = FeedSet::load(&config.deny_feeds);
    // The fleet's last saved state is enforced from the start, etcd or not.
    let fleet = fleet::Fleet::load(&config);
    let started = start(&mut filter, path, &config, &feeds, &wanted, &fleet.applied);
    // Not kept for the daemon's life: a million networks are 24 MB.
    drop(wanted);
    let interfaces = match started {
        Ok(interfaces) => interfaces,
        Err((err, attaching)) => {
            // A failed attach takes off what it attached unless the config keeps it attached
            // (a restart adopts it without a gap); a start that pinned the maps itself leaves
            // no pins of a filter that never enforced.
            if (fresh || (attaching && !config.keep_attached_on_exit))
                && let Err(cleanup) = filter.detach_all().and_then(|()| filter.unpin())
            {
                warn!(error = %format!("{cleanup:#}"), "could not remove what the failed start attached or pinned");
            }
            return Err(err);
        }
    };
    info!(interfaces = %config.interfaces.join(","), "enforcing; reload with SIGHUP, stop with SIGINT or SIGTERM");

    let events = filter.take_events();
    let mut daemon = Daemon {
        path: path.to_path_buf(),
        iface_override: ifaces,
        config,
        filter,
        interfaces,
        counts,
        settle: Settle::new(stamp),
        ban_limits: None,
        feeds: FeedSet::default(),
        feed_watch: FeedWatch::new(&FeedSet::default()),
        derived,
        fleet,
    };
    daemon.set_feeds(feeds);
    let result = runtime.block_on(daemon.serve(signals, events));
    let Daemon {
        mut filter, config, ..
    } = daemon;
    if let Some(socket) = &config.bans.socket {
        let _ = std::fs::remove_file(socket);
    }
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

/// Fills the maps and attaches; an error says whether it came from attaching.
fn start(
    filter: &mut Filter,
    path: &Path,
    config: &Config,
    feeds: &FeedSet,
    wanted: &[IpNet],
    extra: &gatekeeper::fleet::Extra,
) -> Result<Interfaces, (anyhow::Error, bool)> {
    let wanted = gatekeeper::fleet::merge_sorted(wanted, &extra.allow);
    let deny_nets = gatekeeper::fleet::merge_sorted(&feeds.union, &extra.deny);
    fill(filter, path, config, feeds, &deny_nets, &wanted).map_err(|e| (e, false))?;
    // After the fill, which may have replaced the program along with its tables.
    let mut interfaces = Interfaces::new(filter).map_err(|e| (e, false))?;
    attach_all(filter, &mut interfaces, config).map_err(|e| (e, true))?;
    Ok(interfaces)
}

/// Fills the maps from the config (`wanted`: its allowlist, sorted) and the deny feeds: before
/// attaching, so the program never runs with an empty allowlist or without its deny list.
fn fill(
    filter: &mut Filter,
    path: &Path,
    config: &Config,
    feeds: &FeedSet,
    deny_nets: &[IpNet],
    wanted: &[IpNet],
) -> anyhow::Result<()> {
    let _edit = reload::edit_lock(path);
    fit_ipv4_tables(filter, config)?;
    // Pins this start adopts may have been edited by a gatekeeper that kept no summary: rebuilt
    // (from the tables that fit the config) before this program is attached.
    filter.maps().refill_summary()?;
    let (v4_bans, _) = filter.rules().bans.capacity();
    if v4_bans != config.max_bans {
        // Adopted pins keep their size: the bans in them must survive the restart.
        warn!(
            pinned = v4_bans,
            max_bans = config.max_bans,
            "the pinned ban tables were made for another max_bans; they keep their size until `gatekeeper detach` removes them"
        );
    }
    let report = apply_growing(filter, config, deny_nets, wanted)?;
    // The windows of the tables the fill mapped stay in the maps, not in this process.
    filter.maps().release_tables();
    info!(
        added = report.added.len(),
        removed = report.removed.len(),
        deny_entries = config.deny.len(),
        deny_feed_networks = feeds.union.len(),
        open_ports = %join_ports(&config.open_ports),
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
        max_bans: config.max_bans,
        rate_limit_sources: config.rate_limit_sources,
        ban_ipv6_prefix: config.ban_ipv6_prefix,
        dispatcher_priority: joins_dispatcher(config)
            .then_some(gatekeeper::dispatcher::DEFAULT_PRIORITY),
        ..LoadOptions::default()
    }
}

/// Says once how the program attaches and why; refuses `xdp_attach = "dispatcher"` on a kernel
/// that refuses the dispatcher's components, before anything is loaded.
fn announce_attach(config: &Config) -> anyhow::Result<()> {
    use gatekeeper::{
        config::XdpAttach,
        dispatcher::{asked_and_refused, freplace_refusal},
        xdp_attach::{Attach, resolve},
    };
    let first = config
        .interfaces
        .first()
        .and_then(|i| gatekeeper::filter::ifindex(i).ok());
    let (attach, why) = resolve(config.xdp_attach, first);
    match config.xdp_attach {
        XdpAttach::Dispatcher => {
            if let Some(refusal) = freplace_refusal() {
                bail!(
                    "xdp_attach = \"dispatcher\" cannot work on this kernel: {refusal}. Set xdp_attach = \"exclusive\" (or \"auto\", which falls back to it) to take the interface for the gatekeeper alone"
                );
            }
        }
        // The probe ran: auto wanted the dispatcher and the kernel refused it.
        XdpAttach::Auto if attach == Attach::Exclusive && asked_and_refused().is_some() => {
            warn!(%attach, reason = %why, "xdp_attach = auto: FALLING BACK to exclusive, as libxdp does on this kernel");
            return Ok(());
        }
        _ => {}
    }
    info!(%attach, reason = %why, "xdp_attach");
    Ok(())
}

/// Whether the program runs as a libxdp dispatcher component: `xdp_attach` as resolved for the
/// first interface (one program serves every interface, as one kind or the other).
fn joins_dispatcher(config: &Config) -> bool {
    use gatekeeper::xdp_attach::{Attach, resolve};
    let first = config
        .interfaces
        .first()
        .and_then(|i| gatekeeper::filter::ifindex(i).ok());
    resolve(config.xdp_attach, first).0 == Attach::Dispatcher
}

/// Replaces the (pinned) IPv4 tables when they do not fit the config at start: tables for
/// DIR-24-8 when the pinned ones were made for the trie only or the other way round
/// (`ipv4_lookup` switched), or a larger block pool when the list needs more blocks than the
/// pinned pool has. (A reload finds the same on its blocking thread: [`reload::Refit`].)
fn fit_ipv4_tables(filter: &mut Filter, config: &Config) -> anyhow::Result<()> {
    let needed = dir24::blocks_needed(config.allow.nets());
    let blocks = if let Some(blocks) = ipv4_tables::lookup_switch(filter.maps(), config) {
        blocks
    } else if filter.maps().dir24().is_some() && filter.maps().ipv4_blocks() < needed as usize {
        let blocks = dir24::pool_size(needed, config.ipv4_dir24_blocks);
        info!(
            pinned = filter.maps().ipv4_blocks(),
            needed,
            blocks,
            "the allowlist needs more DIR-24-8 blocks than pinned: growing the pool"
        );
        blocks
    } else {
        return Ok(());
    };
    filter.replace_ipv4_tables(&load_options(config, blocks))
}

/// Applies `config` to the maps at start; when the DIR-24-8 block pool is too small, grows it
/// (larger tables filled and swapped in without a gap) and applies again, up to the
/// `ipv4_dir24_blocks` ceiling.
fn apply_growing(
    filter: &mut Filter,
    config: &Config,
    feed_nets: &[IpNet],
    wanted: &[IpNet],
) -> anyhow::Result<sync::SyncReport> {
    let (maps, rules) = filter.maps_and_rules();
    match sync::apply_sorted(maps, &mut rules.deny, config, feed_nets, wanted) {
        Err(err) if err.downcast_ref::<dir24::OutOfBlocks>().is_some() => {
            let Some(blocks) = ipv4_tables::grown_pool(filter.maps(), config)? else {
                return Err(err);
            };
            filter.replace_ipv4_tables(&load_options(config, blocks))?;
            let (maps, rules) = filter.maps_and_rules();
            sync::apply_sorted(maps, &mut rules.deny, config, feed_nets, wanted)
        }
        other => other,
    }
}

/// Attaches to every configured interface (adopting pinned links) and detaches the pinned links
/// of interfaces no longer configured.
fn attach_all(
    filter: &mut Filter,
    interfaces: &mut Interfaces,
    config: &Config,
) -> anyhow::Result<()> {
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
        interfaces.attach(filter, iface, config)?;
    }
    Ok(())
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
    interfaces: Interfaces,
    /// What `/metrics` shows of the daemon itself.
    counts: SharedCounts,
    /// The config file's version in force, and a change waiting to settle.
    settle: Settle,
    /// The ban socket's limits (allowlist, never_ban), replaced at every reload; `None` when
    /// there is no ban socket.
    ban_limits: Option<Arc<std::sync::RwLock<Arc<gatekeeper::bans::request::Limits>>>>,
    /// The deny feeds in force (their networks are in the kernel's deny list with the config's
    /// `[[deny]]` entries), and the watch on their files.
    feeds: FeedSet,
    feed_watch: FeedWatch,
    /// The DNS-derived allow entries: the follower task and the sets it sent.
    derived: DerivedLink,
    /// `[fleet]`: the fleet's networks in the maps, and the follower's newest.
    fleet: fleet::Fleet,
}

/// What asked for a reload.
#[derive(Clone, Copy, Debug)]
enum Trigger {
    /// SIGHUP: read the file as it is now.
    Signal,
    /// The file changed and settled at this version.
    FileChanged(FileStamp),
    /// A deny feed changed and settled (or vanished).
    Feeds,
    /// The DNS-derived allow entries' networks changed.
    Derived,
    /// The fleet's allow or deny networks changed.
    Fleet,
}

impl Trigger {
    fn name(self) -> &'static str {
        match self {
            Trigger::Signal => "SIGHUP",
            Trigger::FileChanged(_) => "config file changed",
            Trigger::Feeds => "deny feed changed",
            Trigger::Derived => "derived allow entries changed",
            Trigger::Fleet => "fleet changed",
        }
    }
}

/// The reload running on a blocking thread, and the one asked for meanwhile.
#[derive(Default)]
struct Reloads {
    running: Option<(Trigger, JoinHandle<Outcome>)>,
    next: Option<Trigger>,
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
        if let Some(addr) = self.config.metrics_listen {
            scrape::serve(addr, self.config.pin_dir.clone(), Arc::clone(&self.counts))?;
        }
        self.fleet.start(&self.config)?;
        self.derived.spawn();
        self.ban_limits = bans::start_socket(
            &self.config,
            &self.exempt_from_bans(),
            &self.counts,
            self.fleet.publisher(),
        )?;

        let mut sweep = tokio::time::interval(bans::SWEEP_INTERVAL);
        let mut link_watch = LinkWatch::open()?;
        self.publish_counts();
        // The one place the daemon is fully in force: `start` filled the maps and attached every
        // configured interface (a failed attach ends the start), the ban socket and metrics
        // endpoint listen. systemd (Type=notify) starts the units ordered after this one, the
        // relay on port 25 among them, only now.
        notify::ready(&self.status_line());
        let mut report = tokio::time::interval(SUPPRESSED_REPORT_INTERVAL);
        let mut poll = tokio::time::interval(CONFIG_POLL_INTERVAL);
        let mut feed_poll = tokio::time::interval(feeds::POLL_INTERVAL);
        let mut check = tokio::time::interval(INTERFACE_CHECK_INTERVAL);
        let mut reloads = Reloads::default();
        let mut suppressed_reported = 0u64;
        loop {
            tokio::select! {
                _ = interrupt.recv() => { self.stopping("SIGINT"); return Ok(()); }
                _ = terminate.recv() => { self.stopping("SIGTERM"); return Ok(()); }
                _ = hangup.recv() => {
                    self.check_interfaces(true);
                    self.request_reload(&mut reloads, Trigger::Signal);
                }
                _ = poll.tick(), if reloads.running.is_none() => {
                    if let Look::Settled(stamp) = self.settle.look(FileStamp::of(&self.path)) {
                        self.request_reload(&mut reloads, Trigger::FileChanged(stamp));
                    }
                }
                nets = self.derived.recv() => {
                    self.derived.wanted = nets;
                    self.request_reload(&mut reloads, Trigger::Derived);
                }
                _ = feed_poll.tick(), if reloads.running.is_none() && !self.feed_watch.is_empty() => {
                    if self.feed_watch.changed() {
                        self.request_reload(&mut reloads, Trigger::Feeds);
                    }
                }
                outcome = finished(&mut reloads.running) => {
                    let (trigger, outcome) = outcome;
                    reloads.running = None;
                    if let Some(again) = self.finish_reload(trigger, outcome) {
                        self.request_reload(&mut reloads, again);
                    }
                    if let Some(next) = reloads.next.take() {
                        self.request_reload(&mut reloads, next);
                    }
                    if reloads.running.is_none() {
                        // Back in force, with the new config or (refused) the previous one.
                        notify::ready(&self.status_line());
                    }
                    self.request_fleet(&mut reloads);
                }
                () = self.fleet.changed() => {
                    self.refresh_ban_limits();
                    self.request_fleet(&mut reloads);
                }
                changed = link_watch.changed() => {
                    changed.context("reading link events")?;
                    self.check_interfaces(false);
                }
                _ = check.tick() => {
                    self.check_interfaces(false);
                    // A fleet job that failed is tried again.
                    self.request_fleet(&mut reloads);
                }
                _ = sweep.tick() => {
                    tokio::spawn(bans::sweep(
                        bans::StoreAt::of(&self.config),
                        Arc::clone(&self.counts),
                    ));
                }
                ready = readable(&mut events) => {
                    let mut guard = ready?;
                    while let Some(item) = guard.get_inner_mut().next() {
                        match events::decode(&item) {
                            Some(drop) => info!(
                                source = %drop.source,
                                dest_port = drop.dest_port,
                                iface = %events::interface_name(drop.ifindex),
                                rule = %drop.rule,
                                "{}", drop.message()
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

    /// The ban socket refuses the file's allow networks, the fleet's as they are now and the
    /// DNS-derived ones.
    fn refresh_ban_limits(&self) {
        if let Some(limits) = &self.ban_limits
            && let Ok(mut shared) = limits.write()
        {
            *shared = bans::limits(&self.config, &self.exempt_from_bans());
        }
    }

    /// The admitted networks beside the file's that a ban request may never cover: the fleet's
    /// allow entries and the DNS-derived networks (sorted). A partner either admits is
    /// allowlisted, so never banned through the socket.
    fn exempt_from_bans(&self) -> Vec<IpNet> {
        gatekeeper::fleet::merge_sorted(&self.fleet.allow_nets(), &self.derived.applied)
            .into_owned()
    }

    /// Applies the fleet's newest networks to the maps when nothing else runs (a reload or
    /// feed sync running now merges the networks last applied; this job follows it).
    fn request_fleet(&mut self, reloads: &mut Reloads) {
        if reloads.running.is_none() && self.fleet.pending().is_some() {
            self.request_reload(reloads, Trigger::Fleet);
        }
    }

    /// Starts a reload on a blocking thread, or queues it behind the one running (a SIGHUP
    /// outranks a file change: it reads whatever is there).
    fn request_reload(&mut self, reloads: &mut Reloads, trigger: Trigger) {
        if reloads.running.is_some() {
            reloads.next = match (reloads.next, trigger) {
                (Some(Trigger::Signal), _) => Some(Trigger::Signal),
                (_, trigger) => Some(trigger),
            };
            return;
        }
        let job = reload::Job {
            path: self.path.clone(),
            iface_override: self.iface_override.clone(),
            pin_dir: self.config.pin_dir.clone(),
            kind: match trigger {
                Trigger::Signal => reload::Kind::Config { expected: None },
                Trigger::FileChanged(stamp) => reload::Kind::Config {
                    expected: Some(stamp),
                },
                Trigger::Feeds => reload::Kind::Feeds {
                    paths: self.config.deny_feeds.clone(),
                    entries: self.config.deny.sorted_nets(),
                },
                Trigger::Derived => {
                    let (add, remove) =
                        self.derived.change(&self.config, &self.fleet.applied.allow);
                    reload::Kind::Derived { add, remove }
                }
                Trigger::Fleet => {
                    let Some(target) = self.fleet.pending() else {
                        return;
                    };
                    reload::Kind::Fleet(fleet::Job::new(
                        &self.config,
                        &self.feeds.union,
                        &self.derived.applied,
                        &self.fleet.applied,
                        target,
                    ))
                }
            },
            feeds: self.feeds.clone(),
            derived: Arc::clone(&self.derived.wanted),
            extra: Arc::clone(&self.fleet.applied),
        };
        if !matches!(trigger, Trigger::Feeds | Trigger::Derived | Trigger::Fleet) {
            // A feed change is routine and quick; a config reload is what `systemctl reload`
            // asked for (ExecReload sends SIGHUP) and what its caller waits to see finished.
            notify::reloading(&format!("reloading the config ({})", trigger.name()));
        }
        reloads.running = Some((
            trigger,
            tokio::task::spawn_blocking(move || reload::run(job)),
        ));
    }

    /// The loop's half of a reload: interfaces, warnings, the log line.
    /// Returns the reload to run again, after the IPv4 tables were replaced to fit the config.
    fn finish_reload(
        &mut self,
        trigger: Trigger,
        outcome: anyhow::Result<Outcome>,
    ) -> Option<Trigger> {
        let mut again = None;
        match outcome {
            Ok(Outcome::Refit(refit)) => {
                // On the loop: the replacement moves the program inside the links this loop
                // owns. It is rare (a switched ipv4_lookup, a pool that grows) and bounded by
                // one program load and one table copy.
                let replaced = self
                    .filter
                    .replace_ipv4_tables(&load_options(&refit.config, refit.blocks))
                    .and_then(|()| self.interfaces.program_replaced(&mut self.filter));
                match replaced {
                    Ok(()) => again = Some(trigger),
                    Err(err) => {
                        self.counts_mut(|c| c.reload_failures += 1);
                        error!(
                            trigger = trigger.name(),
                            "reload refused, still enforcing the previous config: replacing the IPv4 tables failed: {err:#}"
                        );
                    }
                }
            }
            Ok(Outcome::Feeds(feeds, report)) => {
                info!(
                    trigger = trigger.name(),
                    deny_added = report.added.len(),
                    deny_removed = report.removed.len(),
                    feeds = feeds.feeds.len(),
                    feed_networks = feeds.union.len(),
                    "deny feeds reloaded"
                );
                self.set_feeds(feeds);
            }
            Ok(Outcome::Fleet(Ok(done))) => {
                info!(
                    allow_added = done.allow.0,
                    allow_removed = done.allow.1,
                    deny_added = done.deny.0,
                    deny_removed = done.deny.1,
                    fleet_allow = done.target.allow.len(),
                    fleet_deny = done.target.deny.len(),
                    "fleet entries applied"
                );
                self.fleet.applied = done.target;
                self.refresh_ban_limits();
            }
            Ok(Outcome::Fleet(Err(err))) => {
                error!("applying the fleet's allow and deny entries failed (tried again): {err:#}");
            }
            Ok(Outcome::FeedsFailed(err)) => {
                // Not retried until a feed changes again: the next change or reload syncs all.
                self.feed_watch = FeedWatch::settled_now(&self.config.deny_feeds);
                error!(
                    trigger = trigger.name(),
                    "syncing the reloaded deny feeds failed, the deny list is as before: {err:#}"
                );
            }
            Ok(Outcome::Derived {
                derived,
                added,
                removed,
            }) => {
                info!(
                    added,
                    removed,
                    networks = derived.len(),
                    "derived allow entries applied to the filter"
                );
                self.derived.applied = derived;
                self.refresh_ban_limits();
            }
            Ok(Outcome::DerivedFailed(err)) => {
                error!(
                    "applying the derived allow entries to the filter failed, it keeps the previous ones (retried at the next change or reload): {err:#}"
                );
            }
            Ok(Outcome::Applied(applied)) => {
                self.settle.applied(Some(applied.stamp));
                self.derived.applied = Arc::clone(&applied.derived);
                self.apply_interfaces(*applied, trigger);
                self.derived.config_applied(&self.config);
                self.refresh_ban_limits();
                self.counts_mut(|c| c.reloads += 1);
            }
            Ok(Outcome::Changed) => {
                self.settle.restart();
                info!(
                    trigger = trigger.name(),
                    "the config file changed while it was read: applying it once it has settled"
                );
            }
            Ok(Outcome::Refused(err, stamp)) => {
                self.settle.applied(stamp);
                self.counts_mut(|c| c.reload_failures += 1);
                error!(
                    trigger = trigger.name(),
                    "reload refused, still enforcing the previous config: {err:#}"
                );
            }
            Err(err) => {
                self.counts_mut(|c| c.reload_failures += 1);
                error!(
                    trigger = trigger.name(),
                    "reload refused, still enforcing the previous config: {err:#}"
                );
            }
        }
        self.publish_counts();
        again
    }

    fn apply_interfaces(&mut self, applied: reload::Applied, trigger: Trigger) {
        let reload::Applied {
            config: new,
            report,
            took,
            feeds,
            ..
        } = applied;
        self.set_feeds(feeds);
        // New interfaces get the new allowlist right away; removed ones come off last.
        let attached = self.filter.attached();
        for iface in new.interfaces.iter().filter(|i| !attached.contains(i)) {
            if let Err(err) = self.interfaces.attach(&mut self.filter, iface, &new) {
                error!(
                    iface,
                    "attaching a newly configured interface failed (retried when the interface changes, and on SIGHUP): {err:#}"
                );
            }
        }
        for iface in attached.iter().filter(|i| !new.interfaces.contains(i)) {
            if let Err(err) = self.interfaces.detach(&mut self.filter, iface) {
                error!(
                    iface,
                    "detaching an interface taken out of the config failed: {err:#}"
                );
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
        if let Some(limits) = &self.ban_limits
            && let Ok(mut shared) = limits.write()
        {
            *shared = bans::limits(&new, &self.fleet.allow_nets());
        }
        if new.bans.socket != self.config.bans.socket
            || new.bans.socket_group != self.config.bans.socket_group
        {
            warn!("ban_socket or ban_socket_group changed: takes effect when the daemon restarts");
        }
        if new.metrics_listen != self.config.metrics_listen {
            warn!("metrics_listen changed: takes effect when the daemon restarts");
        }
        info!(
            trigger = trigger.name(),
            took_ms = took.as_millis() as u64,
            added = report.added.len(),
            removed = report.removed.len(),
            deny_added = report.deny_added,
            deny_removed = report.deny_removed,
            policy_changed = report.policy_changed,
            mode = %new.mode,
            ports = %join_ports(&new.protected_ports),
            entries = new.allow.len(),
            // Last: tools and tests read the interfaces applied from the line's end.
            interfaces = %new.interfaces.join(","),
            "config reloaded"
        );
        self.config = new;
    }

    /// What `systemctl status` shows: what the filter enforces, and where.
    fn status_line(&self) -> String {
        let config = &self.config;
        let mode = match config.mode {
            gatekeeper_common::Mode::Enforce => "enforcing",
            gatekeeper_common::Mode::Monitor => "monitor mode (counting, dropping nothing)",
        };
        let mut line = format!(
            "{mode} on {}: ports {} allowlist-only ({} allowed networks)",
            self.filter.attached().join(","),
            join_ports(&config.protected_ports),
            config.allow.len(),
        );
        if !config.derived.is_empty() {
            line.push_str(&format!(
                ", +{} networks from {} DNS-derived entries",
                self.derived.applied.len(),
                config.derived.len()
            ));
        }
        if !config.open_ports.is_empty() {
            line.push_str(&format!(
                ", ports {} open to all but denied/banned/over-rate",
                join_ports(&config.open_ports)
            ));
        }
        let (feed_entries, _) = self.feeds.counts();
        line.push_str(&format!(
            ", {} denied networks (+{feed_entries} from feeds)",
            config.deny.len()
        ));
        line
    }

    fn stopping(&self, signal: &str) {
        info!(signal, "stopping");
        notify::stopping(&format!("stopping ({signal})"));
    }

    /// Keeps the filter on every configured interface (see [`links`]).
    fn check_interfaces(&mut self, retry: bool) {
        self.interfaces.check(&mut self.filter, &self.config, retry);
        self.publish_counts();
    }

    /// The feeds in force now: watched from their stamps, counted in the metrics.
    fn set_feeds(&mut self, feeds: FeedSet) {
        self.feed_watch = FeedWatch::new(&feeds);
        let (entries, bad_lines) = feeds.counts();
        self.counts_mut(|c| {
            c.feed_entries = entries;
            c.feed_bad_lines = bad_lines;
        });
        self.feeds = feeds;
    }

    fn counts_mut(&self, change: impl FnOnce(&mut metrics::DaemonCounts)) {
        if let Ok(mut counts) = self.counts.lock() {
            change(&mut counts);
        }
    }

    /// Publishes what `/metrics` shows of the interfaces.
    fn publish_counts(&mut self) {
        let attached = self.filter.attached().len();
        let unfiltered = self.interfaces.unfiltered(&self.config);
        self.counts_mut(|c| {
            c.attached_interfaces = attached;
            c.unfiltered_interfaces = unfiltered;
        });
    }
}

/// The outcome of the running reload, or never when none runs.
async fn finished(
    running: &mut Option<(Trigger, JoinHandle<Outcome>)>,
) -> (Trigger, anyhow::Result<Outcome>) {
    match running {
        Some((trigger, handle)) => {
            let outcome = handle
                .await
                .map_err(|err| anyhow!("the reload thread failed: {err}"));
            (*trigger, outcome)
        }
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
