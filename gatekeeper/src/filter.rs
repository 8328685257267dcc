//! The loaded XDP program: loading (optionally with pinned maps), attaching with pinned links,
//! adopting the links an earlier daemon pinned, detaching.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, RingBuf},
    programs::{
        Extension, Xdp, XdpMode as AyaXdpMode,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
};
use gatekeeper_common::{
    BAN_BUCKETS_GLOBAL, COARSE_CLOCK_GLOBAL, DEFAULT_MAX_BANS, DEFAULT_RATE_LIMIT_SOURCES,
    DENY_CAPACITY, PROGRAM_NAME, RATE_PAIRS_GLOBAL, ban_slots, dir24, map_names, summary,
};
use tracing::{error, info, warn};

use crate::{
    compat, config::XdpMode, dispatcher, maps::FilterMaps, netlink, rules::Rules, verifier,
};

/// Pinned XDP links are named `link-<interface>` in the pin directory.
pub const LINK_PIN_PREFIX: &str = "link-";

/// Where the XDP link of `iface` is pinned under `dir`.
pub fn link_pin_path(dir: &Path, iface: &str) -> PathBuf {
    dir.join(format!("{LINK_PIN_PREFIX}{iface}"))
}

pub use crate::object::{IPV4_TABLE_MAPS, PINNED_MAPS, PROGRAM_OBJECT};

/// A loaded (verified) gatekeeper program with its maps.
pub struct Filter {
    ebpf: Ebpf,
    maps: FilterMaps,
    rules: Rules,
    events: Option<RingBuf<MapData>>,
    /// Links this process owns (without a pin directory): detached when dropped.
    links: Vec<(String, XdpLinkId)>,
    /// Interfaces whose link this filter pinned or adopted under `pin_dir`.
    pinned_links: Vec<String>,
    pin_dir: Option<PathBuf>,
    loaded_siblings: Vec<String>,
    /// The program is a libxdp dispatcher component (`xdp_attach = "dispatcher"`): loaded as an
    /// `Extension` when it joins its first dispatcher, with this run priority.
    dispatcher_priority: Option<u32>,
    /// Interfaces whose dispatcher this filter joined.
    dispatched: Vec<String>,
}

/// How the program ended up attached to one interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachedMode {
    Native,
    Skb,
}

impl std::fmt::Display for AttachedMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AttachedMode::Native => "native",
            AttachedMode::Skb => "skb",
        })
    }
}

/// How the IPv4 allowlist is looked up: part of the config schema, in gatekeeper-support.
pub use gatekeeper_support::gatekeeper_config::Ipv4Lookup;

pub use crate::maps::AUTO_DIR24_THRESHOLD;

/// How to load the filter.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions<'a> {
    /// The eBPF object holding the `gatekeeper` program: the production object unless a
    /// benchmark loads its own build of the same program.
    pub object: &'a [u8],
    /// Pin (or reuse pinned) maps here.
    pub pin_dir: Option<&'a Path>,
    pub ipv4_lookup: Ipv4Lookup,
    /// Second-level DIR-24-8 blocks (one per /24 holding prefixes longer than /24).
    pub dir24_blocks: u32,
    /// Where the whole verifier log goes if the kernel refuses the program (default:
    /// [`verifier::default_log_dir`]).
    pub verifier_log_dir: Option<&'a Path>,
    /// Create the IPv4 tables ([`IPV4_TABLE_MAPS`]) anew instead of reusing their pins (for
    /// [`Filter::replace_ipv4_tables`]); the other maps are still shared through the pins.
    pub fresh_ipv4_tables: bool,
    /// Size of each ban table (`max_bans`). Pinned tables keep the size they were made with.
    pub max_bans: u32,
    /// Size of each SYN rate-limit table (`rate_limit_sources`).
    pub rate_limit_sources: u32,
    /// Leading bits of an IPv6 source that key its ban (`ban_ipv6_prefix`).
    pub ban_ipv6_prefix: u8,
    /// Load the program as a component of libxdp's dispatcher with this run priority
    /// (`xdp_attach = "dispatcher"`): it is verified when it joins its first dispatcher.
    pub dispatcher_priority: Option<u32>,
}

impl Default for LoadOptions<'_> {
    fn default() -> Self {
        LoadOptions {
            object: PROGRAM_OBJECT,
            pin_dir: None,
            ipv4_lookup: Ipv4Lookup::Auto,
            dir24_blocks: dir24::DEFAULT_LONG_BLOCKS,
            verifier_log_dir: None,
            fresh_ipv4_tables: false,
            max_bans: DEFAULT_MAX_BANS,
            rate_limit_sources: DEFAULT_RATE_LIMIT_SOURCES,
            ban_ipv6_prefix: 64,
            dispatcher_priority: None,
        }
    }
}

impl Filter {
    /// Loads the program with the default IPv4 lookup (the verifier runs here). With `pin_dir`,
    /// its maps are pinned there, or reused from there when an earlier run pinned them, so their
    /// state survives this process.
    pub fn load(pin_dir: Option<&Path>) -> anyhow::Result<Filter> {
        Filter::load_with(&LoadOptions {
            pin_dir,
            ..LoadOptions::default()
        })
    }

    /// Loads the program as `options` say. Pinned maps whose shape does not fit this build's
    /// program are refused with a clear message. A load that fails (the verifier refused the
    /// program, a map could not be made) removes the pins it created, so a failed start leaves
    /// nothing behind that looks like a loaded filter; pins an earlier run left stay untouched.
    pub fn load_with(options: &LoadOptions<'_>) -> anyhow::Result<Filter> {
        let pin_dir = options.pin_dir;
        if let Some(dir) = pin_dir {
            compat::check_pin_dir(dir)?;
        }
        let pins: Vec<(&str, PathBuf)> = match pin_dir {
            Some(dir) => PINNED_MAPS.iter().map(|n| (*n, dir.join(n))).collect(),
            None => Vec::new(),
        };
        let created: Vec<&Path> = pins
            .iter()
            .map(|(_, path)| path.as_path())
            .filter(|path| !path.exists())
            .collect();
        match Filter::load_pinned(options, &pins) {
            Ok(filter) => Ok(filter),
            Err(err) => {
                for path in created {
                    if let Err(cleanup) = remove_file_if_exists(path) {
                        warn!(pin = %path.display(), error = %cleanup, "could not remove a pin of the failed load");
                    }
                }
                Err(err)
            }
        }
    }

    fn load_pinned(options: &LoadOptions<'_>, pins: &[(&str, PathBuf)]) -> anyhow::Result<Filter> {
        let mut loader = EbpfLoader::new();
        let rate_pairs = rate_pairs(options, pins)?;
        let ban_buckets = ban_buckets(options, pins)?;
        // The DIR-24-8 tables shrink to one value each when the trie serves IPv4, and the summary
        // to its /16 level (its /20 and /24 levels are kept exact from the DIR-24-8 first level).
        let (tbl24, long, entries, summary) = match options.ipv4_lookup {
            Ipv4Lookup::Auto | Ipv4Lookup::Dir24 => (
                dir24::TBL24_ENTRIES / 2,
                options.dir24_blocks.max(1) * 128,
                crate::dir24::entry_map_len(options.dir24_blocks.max(1)),
                summary::WORDS,
            ),
            Ipv4Lookup::Trie => (1, 1, 1, summary::WORDS_WITHOUT_L20),
        };
        loader
            .map_max_entries(map_names::DIR24, tbl24)
            .map_max_entries(map_names::DIR24_LONG, long)
            .map_max_entries(map_names::ENTRY, entries)
            .map_max_entries(map_names::SUMMARY_V4, summary)
            .map_max_entries(map_names::BANS_V4, options.max_bans.max(1))
            .map_max_entries(map_names::BANS_V6, options.max_bans.max(1))
            .map_max_entries(
                map_names::BLOCKED_REFS,
                options.max_bans.max(1).saturating_add(DENY_CAPACITY),
            )
            .map_max_entries(map_names::RATE_V4, rate_pairs)
            .map_max_entries(map_names::RATE_V6, rate_pairs)
            .map_max_entries(map_names::BAN_SLOTS_V4, ban_buckets)
            .map_max_entries(map_names::BAN_SLOTS_V6, ban_buckets);
        loader.override_global(RATE_PAIRS_GLOBAL, &rate_pairs, true);
        loader.override_global(BAN_BUCKETS_GLOBAL, &ban_buckets, true);
        let coarse_clock = u32::from(has_coarse_clock());
        loader.override_global(COARSE_CLOCK_GLOBAL, &coarse_clock, true);
        for (name, path) in pins {
            if options.fresh_ipv4_tables && IPV4_TABLE_MAPS.contains(name) {
                continue;
            }
            loader.map_pin_path(name, path.as_path());
        }
        if options.dispatcher_priority.is_some() {
            loader.extension(PROGRAM_NAME);
        }
        let mut ebpf = loader
            .load(options.object)
            .context("loading the eBPF object failed")?;
        if options.dispatcher_priority.is_none() {
            let program = xdp_program(&mut ebpf, PROGRAM_NAME)?;
            let log_dir = options
                .verifier_log_dir
                .map_or_else(verifier::default_log_dir, Path::to_path_buf);
            verifier::load_xdp(program, PROGRAM_NAME, &log_dir)?;
        }
        let mut maps = FilterMaps::take_from(&mut ebpf)?;
        maps.prefer_ipv4_lookup(options.ipv4_lookup);
        let rules = Rules::take_from(&mut ebpf, options.ban_ipv6_prefix)?;
        let events = ebpf
            .take_map(map_names::EVENTS)
            .map(RingBuf::try_from)
            .transpose()
            .context("the drop-event map is not a ring buffer")?;
        Ok(Filter {
            ebpf,
            maps,
            rules,
            events,
            links: Vec::new(),
            pinned_links: Vec::new(),
            pin_dir: options.pin_dir.map(Path::to_path_buf),
            loaded_siblings: Vec::new(),
            dispatcher_priority: options.dispatcher_priority,
            dispatched: Vec::new(),
        })
    }

    /// Replaces the IPv4 tables without a gap, e.g. with a larger DIR-24-8 block pool when the
    /// list outgrew it, or with (or without) the DIR-24-8 tables when `ipv4_lookup` switched: a
    /// second instance of the program is loaded with new tables (`options`, whose pin_dir must be
    /// this filter's) and every other map shared; the tables are filled (copied, or built from
    /// the trie); the new program replaces the old one inside every link this filter holds
    /// (`BPF_LINK_UPDATE`, atomic); then the new tables are pinned in place of the old ones.
    /// Packets are judged by the old program with the old tables or by the new one with new
    /// tables that hold the same entries, never by anything else. Call under the edit lock.
    pub fn replace_ipv4_tables(&mut self, options: &LoadOptions<'_>) -> anyhow::Result<()> {
        let dir = self
            .pin_dir
            .clone()
            .context("replacing the IPv4 tables needs a pin directory")?;
        let mut next = Filter::load_with(&LoadOptions {
            pin_dir: Some(&dir),
            fresh_ipv4_tables: true,
            ..*options
        })?;
        match (self.maps.dir24().is_some(), next.maps.dir24().is_some()) {
            (true, true) => next.maps.copy_ipv4_tables_from(&self.maps)?,
            (false, true) => next.maps.rebuild_ipv4_tables()?,
            // Without tables the trie serves IPv4: switch the shared policy to it before the
            // program without tables takes over.
            (_, false) => {
                let policy = next.maps.policy()?;
                next.maps.set_policy(&policy)?;
            }
        }
        // Staged first: a pin that cannot be made stops the replacement before any switch.
        if let Err(err) = next.maps.stage_ipv4_pins(&dir) {
            FilterMaps::discard_staged_pins(&dir);
            return Err(err);
        }
        let mut moved: Vec<(String, u32)> = Vec::new();
        for iface in self.attached() {
            let switched = ifindex(&iface)
                .and_then(|index| next.maps.slot_for(index))
                .and_then(|slot| Ok(next.adopt(&iface, slot)?.map(|_| slot)));
            match switched {
                Ok(Some(slot)) => moved.push((iface, slot)),
                Ok(None) => {
                    warn!(
                        iface,
                        "no pinned link to move to the new IPv4 tables; attached anew on the next reload"
                    );
                }
                Err(err) => {
                    // The links moved so far go back to the old program and tables, which the
                    // pins still name: every interface is judged by one consistent pair again.
                    for (done, slot) in &moved {
                        if let Err(back) = self.adopt(done, *slot) {
                            error!(iface = %done, error = %format!("{back:#}"), "could not move the link back to the old IPv4 tables after a failed replacement; it keeps the new program, whose tables are not pinned: restart the daemon");
                        }
                    }
                    FilterMaps::discard_staged_pins(&dir);
                    error!(iface, error = %format!("{err:#}"), moved_back = moved.len(), "replacing the IPv4 tables failed part way; the links moved so far were moved back");
                    return Err(
                        err.context(format!("moving {iface} to the new IPv4 tables failed"))
                    );
                }
            }
        }
        FilterMaps::commit_ipv4_pins(&dir)?;
        // With tables in force everywhere, the policy may pick them (auto, dir24).
        let policy = next.maps.policy()?;
        next.maps.set_policy(&policy)?;
        next.links = std::mem::take(&mut self.links);
        // The old program goes with `self`: the links hold the new one now.
        self.pinned_links.clear();
        *self = next;
        info!(
            blocks = self.maps.ipv4_blocks(),
            ipv4_lookup = self.maps.ipv4_lookup()?,
            "IPv4 tables replaced without a gap"
        );
        Ok(())
    }

    /// The program, for `BPF_PROG_TEST_RUN` in tests and benchmarks.
    pub fn program_mut(&mut self) -> anyhow::Result<&mut Xdp> {
        xdp_program(&mut self.ebpf, PROGRAM_NAME)
    }

    /// Another program of the same object, loaded on first use; it shares this filter's maps.
    /// Used for the benchmark twins of the benchmark object.
    pub fn sibling_program(&mut self, name: &str) -> anyhow::Result<&mut Xdp> {
        if !self.loaded_siblings.iter().any(|n| n == name) {
            let program = xdp_program(&mut self.ebpf, name)?;
            verifier::load_xdp(program, name, &verifier::default_log_dir())?;
            self.loaded_siblings.push(name.to_string());
        }
        xdp_program(&mut self.ebpf, name)
    }

    /// The maps: policy, allowlists, counters.
    pub fn maps(&mut self) -> &mut FilterMaps {
        &mut self.maps
    }

    /// The deny lists and bans.
    pub fn rules(&mut self) -> &mut Rules {
        &mut self.rules
    }

    /// The allowlist maps and the rules at once (a sync writes both).
    pub fn maps_and_rules(&mut self) -> (&mut FilterMaps, &mut Rules) {
        (&mut self.maps, &mut self.rules)
    }

    /// The drop-event ring buffer, once: whoever takes it reads the events.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// Attaches the program to `iface` in `mode`; `Auto` falls back from native to skb, loudly.
    /// Its traffic is counted in counter slot `slot`. With a pin directory the link is pinned as
    /// `link-<iface>` there and outlives this process (until `detach` or a clean stop unpins it).
    pub fn attach(
        &mut self,
        iface: &str,
        mode: XdpMode,
        slot: u32,
    ) -> anyhow::Result<AttachedMode> {
        let ifindex = ifindex(iface)?;
        if self.dispatcher_priority.is_some() {
            self.maps.assign_slot(ifindex, slot)?;
            return self.join_dispatcher(iface, ifindex, mode);
        }
        // Another program there makes every mode fail: name it instead of trying.
        if let Some(occupant) = crate::occupant::find(iface, ifindex, self.pin_dir.as_deref()) {
            anyhow::bail!("cannot attach to {iface}: {occupant}");
        }
        // Counting is set up first, so the first packet after attaching is already counted.
        self.maps.assign_slot(ifindex, slot)?;
        let program = self.program_mut()?;
        let (link, attached) = match mode {
            XdpMode::Native => (
                program
                    .attach(iface, AyaXdpMode::Driver)
                    .with_context(|| native_failure(iface))?,
                AttachedMode::Native,
            ),
            XdpMode::Skb => (
                program.attach(iface, AyaXdpMode::Skb).with_context(|| {
                    format!("attaching to {iface} in skb (generic) mode failed")
                })?,
                AttachedMode::Skb,
            ),
            XdpMode::Auto => match program.attach(iface, AyaXdpMode::Driver) {
                Ok(link) => (link, AttachedMode::Native),
                Err(err) => {
                    warn!(
                        iface,
                        error = %err,
                        "native XDP is not available; FALLING BACK to generic (skb) XDP, which runs after the kernel allocated a socket buffer and is several times slower"
                    );
                    let link = program.attach(iface, AyaXdpMode::Skb).with_context(|| {
                        format!("attaching to {iface} failed in native and in skb mode")
                    })?;
                    (link, AttachedMode::Skb)
                }
            },
        };
        match self.pin_dir.clone() {
            Some(dir) => {
                let path = link_pin_path(&dir, iface);
                let pinned = self.pin_link(link, &path);
                if let Err(err) = pinned {
                    // Not pinned means not persistent: take it off again rather than pretend.
                    let _ = std::fs::remove_file(&path);
                    return Err(err);
                }
                self.pinned_links.push(iface.to_string());
            }
            None => self.links.push((iface.to_string(), link)),
        }
        info!(iface, ifindex, mode = %attached, "attached");
        Ok(attached)
    }

    fn pin_link(&mut self, link: XdpLinkId, path: &Path) -> anyhow::Result<()> {
        let program = self.program_mut()?;
        let link = program
            .take_link(link)
            .context("taking the new XDP link failed")?;
        let fd_link = FdLink::try_from(link).context(
            "the kernel attached the program without a BPF link (netlink fallback), which cannot be pinned",
        )?;
        // The pin holds the link from now on; closing our fd leaves it attached.
        fd_link
            .pin(path)
            .with_context(|| format!("pinning the XDP link at {}", path.display()))?;
        Ok(())
    }

    /// Takes over the link an earlier daemon pinned for `iface`, if there is one: this program
    /// atomically replaces the old one inside the link (`BPF_LINK_UPDATE`), so the interface is
    /// never without a filter. Returns the mode the link runs in, or `None` if there was no usable
    /// pinned link (a stale one, whose interface has gone, is removed).
    pub fn adopt(
        &mut self,
        iface: &str,
        slot: u32,
    ) -> anyhow::Result<Option<netlink::XdpAttachment>> {
        let Some(dir) = self.pin_dir.clone() else {
            return Ok(None);
        };
        let path = link_pin_path(&dir, iface);
        if !path.exists() {
            return Ok(None);
        }
        let ifindex = ifindex(iface).ok();
        let pinned = PinnedLink::from_pin(&path)
            .with_context(|| format!("opening the pinned link {}", path.display()))?;
        let fd_link = FdLink::from(pinned);
        let link_prog = fd_link.info().map(|i| i.program_id()).ok();
        let state = match ifindex {
            Some(index) => netlink::xdp_state(index)?,
            None => None,
        };
        let (Some(ifindex), Some(state)) = (ifindex, state) else {
            warn!(iface, pin = %path.display(), "pinned link is stale (interface gone or without XDP): removing it");
            drop(fd_link);
            remove_file_if_exists(&path)?;
            return Ok(None);
        };
        if link_prog != Some(state.prog_id) {
            warn!(iface, pin = %path.display(), link_prog = ?link_prog, iface_prog = state.prog_id,
                "pinned link does not hold the program attached to the interface: removing the stale pin");
            drop(fd_link);
            remove_file_if_exists(&path)?;
            return Ok(None);
        }
        self.maps.assign_slot(ifindex, slot)?;
        let xdp_link = XdpLink::try_from(fd_link)
            .with_context(|| format!("{} is not an XDP link", path.display()))?;
        let program = self.program_mut()?;
        let id = program.attach_to_link(xdp_link).with_context(|| {
            format!("replacing the program in the pinned link of {iface} failed")
        })?;
        // The pin keeps the link; this process keeps no fd of it.
        drop(program.take_link(id));
        self.pinned_links.push(iface.to_string());
        info!(iface, ifindex, mode = %state.mode, "adopted the pinned link: this program replaced the old one without a gap");
        Ok(Some(state.mode))
    }

    /// The program as a dispatcher component.
    fn extension_mut(&mut self) -> anyhow::Result<&mut Extension> {
        self.ebpf
            .program_mut(PROGRAM_NAME)
            .with_context(|| format!("the eBPF object has no {PROGRAM_NAME} program"))?
            .try_into()
            .with_context(|| format!("{PROGRAM_NAME} is not loaded as an extension"))
    }

    /// Joins libxdp's dispatcher on `iface` (starting one if the interface is free): a new
    /// dispatcher holding the other components and this program replaces the old one at once.
    /// A gatekeeper component already there (an earlier daemon's) is replaced by this program
    /// in the same step: adoption without a gap.
    fn join_dispatcher(
        &mut self,
        iface: &str,
        ifindex: u32,
        mode: XdpMode,
    ) -> anyhow::Result<AttachedMode> {
        let priority = self
            .dispatcher_priority
            .unwrap_or(dispatcher::DEFAULT_PRIORITY);
        let _lock = dispatcher::LibxdpLock::acquire()?;
        let mut current = dispatcher::current(ifindex)
            .with_context(|| format!("cannot join libxdp's dispatcher on {iface}"))?;
        let others = current
            .as_mut()
            .map(|c| c.take_components_except(PROGRAM_NAME))
            .unwrap_or_default();
        let wanted = match mode {
            XdpMode::Skb => netlink::XdpAttachment::Skb,
            _ => netlink::XdpAttachment::Native,
        };
        let ours = self.extension_mut()?;
        dispatcher::install(
            ifindex,
            wanted,
            current.as_ref(),
            others,
            Some((ours, PROGRAM_NAME, priority)),
        )
        .with_context(|| format!("joining libxdp's dispatcher on {iface} failed"))?;
        if !self.dispatched.iter().any(|i| i == iface) {
            self.dispatched.push(iface.to_string());
        }
        let attached = match current.map_or(wanted, |c| c.mode) {
            netlink::XdpAttachment::Skb => AttachedMode::Skb,
            _ => AttachedMode::Native,
        };
        info!(iface, ifindex, mode = %attached, priority, "attached as a component of libxdp's dispatcher");
        Ok(attached)
    }

    /// Whether this filter runs on `ifindex`, whose XDP program is `iface_prog`: that program
    /// itself, or libxdp's dispatcher with this program among its components.
    pub fn is_on(&mut self, ifindex: u32, iface_prog: u32) -> bool {
        let Ok(ours) = self.program_id() else {
            return false;
        };
        if self.dispatcher_priority.is_none() {
            return ours == iface_prog;
        }
        dispatcher::component_ids(ifindex, iface_prog).contains(&ours)
    }

    /// Whether the program runs as a libxdp dispatcher component.
    pub fn is_component(&self) -> bool {
        self.dispatcher_priority.is_some()
    }

    /// Detaches the program from every interface this filter attached to or adopted.
    pub fn detach_all(&mut self) -> anyhow::Result<()> {
        for iface in std::mem::take(&mut self.dispatched) {
            dispatcher::leave(&iface, PROGRAM_NAME)?;
            info!(iface, "left libxdp's dispatcher");
        }
        let links = std::mem::take(&mut self.links);
        // A dispatcher component has no XDP program of its own to ask.
        if !links.is_empty() {
            self.detach_links(links)?;
        }
        if let Some(dir) = self.pin_dir.clone() {
            for iface in std::mem::take(&mut self.pinned_links) {
                detach_pinned(&dir, &iface)?;
                info!(iface, "detached");
            }
        }
        Ok(())
    }

    fn detach_links(&mut self, links: Vec<(String, XdpLinkId)>) -> anyhow::Result<()> {
        let program = self.program_mut()?;
        for (iface, link) in links {
            program
                .detach(link)
                .with_context(|| format!("detaching from {iface} failed"))?;
            info!(iface, "detached");
        }
        Ok(())
    }

    /// Detaches the program from `iface` (only a link this filter pinned or adopted).
    pub fn detach(&mut self, iface: &str) -> anyhow::Result<()> {
        if let Some(at) = self.dispatched.iter().position(|i| i == iface) {
            self.dispatched.remove(at);
            dispatcher::leave(iface, PROGRAM_NAME)?;
        }
        if let Some(at) = self.links.iter().position(|(i, _)| i == iface) {
            let (_, link) = self.links.remove(at);
            self.program_mut()?
                .detach(link)
                .with_context(|| format!("detaching from {iface} failed"))?;
        }
        if let Some(at) = self.pinned_links.iter().position(|i| i == iface)
            && let Some(dir) = self.pin_dir.clone()
        {
            self.pinned_links.remove(at);
            detach_pinned(&dir, iface)?;
        }
        info!(iface, "detached");
        Ok(())
    }

    /// Forgets the link of `iface` whose interface is gone or whose program someone else took
    /// off: the kernel already detached it, so this only drops the pin and the bookkeeping.
    pub fn forget_link(&mut self, iface: &str) -> anyhow::Result<()> {
        self.links.retain(|(i, _)| i != iface);
        self.dispatched.retain(|i| i != iface);
        if let Some(at) = self.pinned_links.iter().position(|i| i == iface) {
            self.pinned_links.remove(at);
            if let Some(dir) = &self.pin_dir {
                detach_pinned(dir, iface)?;
            }
        }
        Ok(())
    }

    /// The kernel's id of the loaded program (what `ip link` shows on an attached interface).
    pub fn program_id(&mut self) -> anyhow::Result<u32> {
        if self.dispatcher_priority.is_some() {
            // Before it joins a dispatcher the component is not loaded: no id yet.
            return Ok(self.extension_mut()?.info().map_or(0, |i| i.id()));
        }
        Ok(self
            .program_mut()?
            .info()
            .context("reading the loaded program's info")?
            .id())
    }

    /// Interfaces the program is attached to through this filter.
    pub fn attached(&self) -> Vec<String> {
        self.links
            .iter()
            .map(|(i, _)| i.clone())
            .chain(self.pinned_links.iter().cloned())
            .chain(self.dispatched.iter().cloned())
            .collect()
    }

    /// Removes the pinned maps (after detaching, when the filter is meant to stop).
    pub fn unpin(&self) -> anyhow::Result<()> {
        let Some(dir) = &self.pin_dir else {
            return Ok(());
        };
        remove_pins(dir)
    }
}

/// Detaches the program from `iface` by removing its pinned link (the pin is the link's only
/// holder, so the kernel takes the program off the interface at once). False if none was pinned.
pub fn detach_pinned(dir: &Path, iface: &str) -> anyhow::Result<bool> {
    remove_file_if_exists(&link_pin_path(dir, iface))
}

/// Interfaces with a pinned link under `dir`.
pub fn pinned_link_ifaces(dir: &Path) -> anyhow::Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err).with_context(|| format!("listing {}", dir.display())),
    };
    let mut ifaces = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        if let Some(iface) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_prefix(LINK_PIN_PREFIX))
        {
            ifaces.push(iface.to_string());
        }
    }
    ifaces.sort();
    Ok(ifaces)
}

fn remove_file_if_exists(path: &Path) -> anyhow::Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(err).with_context(|| format!("removing {}", path.display())),
    }
}

/// Removes every pin the filter keeps under `dir` (links first, so the program comes off its
/// interfaces, then the maps), and `dir` itself once empty.
pub fn remove_pins(dir: &Path) -> anyhow::Result<()> {
    for iface in pinned_link_ifaces(dir)? {
        detach_pinned(dir, &iface)?;
    }
    for name in PINNED_MAPS {
        remove_file_if_exists(&dir.join(name))?;
    }
    // Other files (an admin's, a newer version's) keep the directory.
    let _ = std::fs::remove_dir(dir);
    Ok(())
}

/// Values (pairs of slots) of each rate map: pinned maps keep the size they were made with (the
/// program must index the maps it gets), new ones get half of `rate_limit_sources`, rounded up.
fn rate_pairs(options: &LoadOptions<'_>, pins: &[(&str, PathBuf)]) -> anyhow::Result<u32> {
    if let Some(pairs) = pinned_size(pins, map_names::RATE_V4)? {
        return Ok(pairs);
    }
    Ok(options.rate_limit_sources.clamp(2, 1 << 30).div_ceil(2))
}

/// Buckets of each ban slot map: pinned maps keep theirs (the program must index the maps it
/// gets); new ones get half of the ban tables' size, rounded up (a full table fills half the
/// slots). Ban hash maps pinned by a gatekeeper without slots set that size: their bans are
/// counted as overflow at start and stay enforced.
fn ban_buckets(options: &LoadOptions<'_>, pins: &[(&str, PathBuf)]) -> anyhow::Result<u32> {
    if let Some(buckets) = pinned_size(pins, map_names::BAN_SLOTS_V4)? {
        return Ok(buckets);
    }
    let bans = pinned_size(pins, map_names::BANS_V4)?.unwrap_or(options.max_bans);
    Ok(ban_slots::buckets_for(bans))
}

/// `max_entries` of the pinned map `name`, if it is pinned.
fn pinned_size(pins: &[(&str, PathBuf)], name: &str) -> anyhow::Result<Option<u32>> {
    let Some((_, path)) = pins.iter().find(|(n, path)| *n == name && path.exists()) else {
        return Ok(None);
    };
    let map = MapData::from_pin(path)
        .with_context(|| format!("opening the pinned map {}", path.display()))?;
    Ok(Some(
        map.info()
            .with_context(|| format!("reading {name}'s info"))?
            .max_entries(),
    ))
}

/// Whether the kernel has `bpf_ktime_get_coarse_ns` (Linux 5.11 and later), probed once. Without
/// it the program rate-limits drop events with the precise clock, which costs a little more per
/// reported drop and changes nothing else.
pub fn has_coarse_clock() -> bool {
    static PROBED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PROBED.get_or_init(|| {
        let supported = aya::sys::is_helper_supported(
            aya::programs::ProgramType::Xdp,
            aya::sys::BpfHelper::BPF_FUNC_ktime_get_coarse_ns,
        )
        .unwrap_or(false);
        if !supported {
            info!(
                kernel = %verifier::kernel_release(),
                "this kernel lacks bpf_ktime_get_coarse_ns (Linux 5.11+): drop events are rate-limited with the precise clock, a few ns more per reported drop"
            );
        }
        supported
    })
}

/// The XDP program `name` of `ebpf`.
pub fn xdp_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut Xdp> {
    ebpf.program_mut(name)
        .with_context(|| format!("the eBPF object has no {name} program"))?
        .try_into()
        .with_context(|| format!("{name} is not an XDP program"))
}

/// The index of network interface `iface` in this namespace.
pub fn ifindex(iface: &str) -> anyhow::Result<u32> {
    let name = std::ffi::CString::new(iface)
        .with_context(|| format!("interface name {iface:?} contains a NUL byte"))?;
    // SAFETY: a valid NUL-terminated string; if_nametoindex only reads it.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        anyhow::bail!("unknown network interface {iface}");
    }
    Ok(index)
}

fn native_failure(iface: &str) -> String {
    format!(
        "attaching to {iface} in native mode failed (set xdp_mode = \"auto\" to fall back to the slower skb mode, or \"skb\" to use it)"
    )
}
