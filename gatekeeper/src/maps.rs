//! The filter's maps, reached either from a freshly loaded program or from their bpffs pins, so
//! the admin CLI works the same whether or not the daemon runs.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
};

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{Array, LpmTrie, Map, MapData, PerCpuArray, lpm_trie::Key},
};
use gatekeeper_common::{
    AllowValue, COUNTER_COUNT, COUNTERS_PER_FAMILY, FAMILIES, FilterConfig, IFINDEX_LIMIT,
    LOOKUP_DIR24, LOOKUP_TRIE, MAX_IFACE_SLOTS, dir24::NONE, map_names,
};
use gatekeeper_support::gatekeeper_config::Ipv4Lookup;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tracing::warn;

use crate::{dir24::Dir24, policy::Policy, summary::Summary};

/// Every map the controller writes or reads (the drop-event ring buffer is taken separately).
pub struct FilterMaps {
    allow_v4: LpmTrie<MapData, [u8; 4], AllowValue>,
    allow_v6: LpmTrie<MapData, [u8; 16], AllowValue>,
    config: Array<MapData, FilterConfig>,
    selector: Array<MapData, u32>,
    iface_slots: Array<MapData, u32>,
    counters: PerCpuArray<MapData, u64>,
    /// The IPv4 DIR-24-8 tables, when the filter was loaded with them.
    dir24: Option<Dir24>,
    /// The DIR-24-8 maps' handles: programs of this object loaded later still refer to them by fd.
    _dir24_maps: [Map; 3],
    /// The IPv4 summary and its map's handle; `None` with pins of a gatekeeper that had none
    /// (its program does not read one).
    summary: Option<(Summary, Map)>,
    /// How `set_policy` picks the IPv4 lookup; `None` (maps opened from pins by the CLI) keeps
    /// the running choice.
    v4_preference: Option<Ipv4Lookup>,
}

/// An allowlist entry as the kernel holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveEntry {
    pub net: IpNet,
    /// Segments this entry admitted since it was inserted.
    pub hits: u64,
}

/// IPv4 entries from which `auto` switches from the trie to DIR-24-8 (`cargo xtask bench xdp`
/// shows the trie ahead for short lists and DIR-24-8 far ahead for long ones).
pub const AUTO_DIR24_THRESHOLD: usize = 1024;

/// IPv4 entries from which [`FilterMaps::insert_new_all`] fills the trie and the DIR-24-8 tables
/// on two threads (below, a thread costs more than it saves).
pub const PARALLEL_FILL_MIN: usize = 1024;

pub use crate::object::{IPV4_TABLE_MAPS, PINNED_MAPS};

impl FilterMaps {
    /// Takes the maps out of a loaded object (the program keeps using them).
    pub fn take_from(ebpf: &mut Ebpf) -> anyhow::Result<FilterMaps> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("the eBPF object has no {name} map"))
        };
        let dir24 = [
            take(map_names::DIR24)?,
            take(map_names::DIR24_LONG)?,
            take(map_names::ENTRY)?,
        ];
        FilterMaps::from_maps(
            take(map_names::ALLOW_V4)?,
            take(map_names::ALLOW_V6)?,
            take(map_names::CONFIG)?,
            take(map_names::CONFIG_SELECTOR)?,
            take(map_names::IFACE_SLOTS)?,
            take(map_names::COUNTERS)?,
            dir24,
            Some(take(map_names::SUMMARY_V4)?),
        )
    }

    /// Opens the maps a daemon pinned under `dir`, after checking they fit this build.
    pub fn open_pinned(dir: &Path) -> anyhow::Result<FilterMaps> {
        crate::compat::check_pin_dir(dir)?;
        let open = |name: &str| -> anyhow::Result<MapData> {
            let path = dir.join(name);
            MapData::from_pin(&path).with_context(|| {
                format!(
                    "cannot open the pinned map {} (is the filter loaded? `gatekeeper run` pins it)",
                    path.display()
                )
            })
        };
        let dir24 = [
            Map::Array(open(map_names::DIR24)?),
            Map::Array(open(map_names::DIR24_LONG)?),
            Map::Array(open(map_names::ENTRY)?),
        ];
        FilterMaps::from_maps(
            Map::LpmTrie(open(map_names::ALLOW_V4)?),
            Map::LpmTrie(open(map_names::ALLOW_V6)?),
            Map::Array(open(map_names::CONFIG)?),
            Map::Array(open(map_names::CONFIG_SELECTOR)?),
            Map::Array(open(map_names::IFACE_SLOTS)?),
            Map::PerCpuArray(open(map_names::COUNTERS)?),
            dir24,
            dir.join(map_names::SUMMARY_V4)
                .exists()
                .then(|| open(map_names::SUMMARY_V4).map(Map::Array))
                .transpose()?,
        )
    }

    /// Whether a daemon pinned maps under `dir`.
    pub fn is_pinned(dir: &Path) -> bool {
        dir.join(map_names::ALLOW_V4).exists()
    }

    /// Opens the pinned maps under `dir` if a daemon pinned them there; `None` if nothing is
    /// pinned (the filter is not loaded).
    pub fn open_if_pinned(dir: &Path) -> anyhow::Result<Option<FilterMaps>> {
        if !FilterMaps::is_pinned(dir) {
            return Ok(None);
        }
        FilterMaps::open_pinned(dir).map(Some)
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one per map, named at both call sites"
    )]
    fn from_maps(
        allow_v4: Map,
        allow_v6: Map,
        config: Map,
        selector: Map,
        iface_slots: Map,
        counters: Map,
        dir24: [Map; 3],
        summary: Option<Map>,
    ) -> anyhow::Result<FilterMaps> {
        let [tbl24, long, entries] = dir24;
        fn data<'m>(map: &'m Map, name: &str) -> anyhow::Result<&'m MapData> {
            match map {
                Map::Array(data) => Ok(data),
                _ => anyhow::bail!("{name} is not an array map"),
            }
        }
        let dir24 = Dir24::open(
            data(&tbl24, map_names::DIR24)?,
            data(&long, map_names::DIR24_LONG)?,
            data(&entries, map_names::ENTRY)?,
        )?;
        let allow_v4 = LpmTrie::try_from(allow_v4).context(map_names::ALLOW_V4)?;
        let summary = match summary {
            Some(map) => {
                let data = data(&map, map_names::SUMMARY_V4)?;
                Some((Summary::open(data, dir24.as_ref(), &allow_v4)?, map))
            }
            None => None,
        };
        Ok(FilterMaps {
            dir24,
            _dir24_maps: [tbl24, long, entries],
            summary,
            v4_preference: None,
            allow_v4,
            allow_v6: LpmTrie::try_from(allow_v6).context(map_names::ALLOW_V6)?,
            config: Array::try_from(config).context(map_names::CONFIG)?,
            selector: Array::try_from(selector).context(map_names::CONFIG_SELECTOR)?,
            iface_slots: Array::try_from(iface_slots).context(map_names::IFACE_SLOTS)?,
            counters: PerCpuArray::try_from(counters).context(map_names::COUNTERS)?,
        })
    }

    /// Switches mode, ports and event limits in one step: the new policy is written to the
    /// inactive slot, then the selector flips, so the program never sees a half-written policy.
    pub fn set_policy(&mut self, policy: &Policy) -> anyhow::Result<()> {
        let active = self.active_slot()?;
        let next = active ^ 1;
        let mut config = policy.to_filter_config();
        config.v4_lookup = self.choose_v4_lookup(active)?;
        self.config
            .set(next, config, 0)
            .context("writing the filter policy failed")?;
        self.selector
            .set(0, next, 0)
            .context("switching to the new filter policy failed")
    }

    /// Sets how `set_policy` picks the IPv4 lookup.
    pub fn prefer_ipv4_lookup(&mut self, lookup: Ipv4Lookup) {
        self.v4_preference = Some(lookup);
    }

    fn choose_v4_lookup(&self, active: u32) -> anyhow::Result<u32> {
        let Some(dir24) = &self.dir24 else {
            return Ok(LOOKUP_TRIE);
        };
        Ok(match self.v4_preference {
            Some(Ipv4Lookup::Dir24) => LOOKUP_DIR24,
            Some(Ipv4Lookup::Trie) => LOOKUP_TRIE,
            Some(Ipv4Lookup::Auto) if dir24.entries_in_use() >= AUTO_DIR24_THRESHOLD => {
                LOOKUP_DIR24
            }
            Some(Ipv4Lookup::Auto) => LOOKUP_TRIE,
            None => {
                self.config
                    .get(&active, 0)
                    .context("reading the filter policy failed")?
                    .v4_lookup
            }
        })
    }

    /// The policy the program applies now.
    pub fn policy(&self) -> anyhow::Result<Policy> {
        let active = self.active_slot()?;
        let config = self
            .config
            .get(&active, 0)
            .context("reading the filter policy failed")?;
        Ok(Policy::from_filter_config(&config))
    }

    fn active_slot(&self) -> anyhow::Result<u32> {
        Ok(self
            .selector
            .get(&0, 0)
            .context("reading the policy selector failed")?
            & 1)
    }

    /// Copies the IPv4 tables of `old` into these (new, larger or equal) ones: every map of
    /// [`IPV4_TABLE_MAPS`] value by value, up to the smaller size. Block and entry numbers stay
    /// valid, so the copy resolves every address exactly as the original.
    pub fn copy_ipv4_tables_from(&mut self, old: &FilterMaps) -> anyhow::Result<()> {
        for ((name, new), old) in IPV4_TABLE_MAPS
            .iter()
            .zip(&self._dir24_maps)
            .zip(&old._dir24_maps)
        {
            let (Map::Array(new), Map::Array(old)) = (new, old) else {
                anyhow::bail!("{name} is not an array map");
            };
            crate::dir24::copy_values(old, new, name)?;
        }
        // The copy's free blocks are found afresh on first use.
        if let Some(dir24) = &mut self.dir24 {
            dir24.forget_free_blocks();
            if dir24.has_registry() && !old.dir24.as_ref().is_some_and(Dir24::has_registry) {
                // Tables pinned by a build without the registry: networks from the trie.
                let mut ids = Vec::new();
                for item in self.allow_v4.iter() {
                    let (key, value) = item.context("reading the IPv4 allowlist failed")?;
                    let net =
                        Ipv4Net::new(Ipv4Addr::from(key.data()), prefix_u8(key.prefix_len())?)?;
                    ids.push((value.id, net));
                }
                dir24.rebuild_registry(&ids);
            }
        }
        Ok(())
    }

    /// Puts every IPv4 entry of the trie into the (new, empty) DIR-24-8 tables: for a switch
    /// from the trie-only lookup.
    pub fn rebuild_ipv4_tables(&mut self) -> anyhow::Result<()> {
        if self.dir24.is_none() {
            return Ok(());
        }
        let mut nets: Vec<Ipv4Net> = Vec::new();
        for key in self.allow_v4.keys() {
            let key = key.context("reading the IPv4 allowlist failed")?;
            nets.push(Ipv4Net::new(
                Ipv4Addr::from(key.data()),
                prefix_u8(key.prefix_len())?,
            )?);
        }
        // Shorter prefixes first, so each longer one lands on what it refines.
        nets.sort_unstable_by_key(|n| n.prefix_len());
        for net in nets {
            let key = Key::new(u32::from(net.prefix_len()), net.network().octets());
            let Some(dir24) = &mut self.dir24 else {
                break;
            };
            let id = dir24.alloc_id(net)?;
            dir24.add(net, id)?;
            let value = AllowValue {
                hits: 0,
                id,
                prefix_len: u32::from(net.prefix_len()),
            };
            self.allow_v4
                .insert(&key, value, 0)
                .with_context(|| format!("recording {net}'s table entry failed"))?;
        }
        Ok(())
    }

    /// Pins these IPv4 tables under `dir` beside the ones pinned there, as `<name>_next` (bpffs
    /// refuses dots); [`FilterMaps::commit_ipv4_pins`] renames them over the old pins.
    pub fn stage_ipv4_pins(&self, dir: &Path) -> anyhow::Result<()> {
        for (name, map) in IPV4_TABLE_MAPS.iter().zip(&self._dir24_maps) {
            let Map::Array(data) = map else {
                anyhow::bail!("{name} is not an array map");
            };
            let staged = staged_pin(dir, name);
            let _ = std::fs::remove_file(&staged);
            data.pin(&staged)
                .with_context(|| format!("pinning the new {name} at {}", staged.display()))?;
        }
        Ok(())
    }

    /// Renames the staged pins over the old ones: the pin paths name the new tables from now on.
    pub fn commit_ipv4_pins(dir: &Path) -> anyhow::Result<()> {
        for name in IPV4_TABLE_MAPS {
            let path = dir.join(name);
            std::fs::rename(staged_pin(dir, name), &path)
                .with_context(|| format!("replacing the pin {}", path.display()))?;
        }
        Ok(())
    }

    /// Removes staged pins (a replacement that did not happen).
    pub fn discard_staged_pins(dir: &Path) {
        for name in IPV4_TABLE_MAPS {
            let _ = std::fs::remove_file(staged_pin(dir, name));
        }
    }

    /// Second-level blocks of the DIR-24-8 tables (0 without them).
    pub fn ipv4_blocks(&self) -> usize {
        self.dir24.as_ref().map_or(0, Dir24::blocks)
    }

    /// The DIR-24-8 tables, when the filter has them.
    pub fn dir24(&self) -> Option<&Dir24> {
        self.dir24.as_ref()
    }

    /// Rebuilds the IPv4 summary from the allowlist. The daemon does this at start, under the edit
    /// lock, before its program is attached: pins it adopts may have been edited by a gatekeeper
    /// that kept no summary.
    pub fn refill_summary(&mut self) -> anyhow::Result<()> {
        match &mut self.summary {
            Some((summary, _)) => summary.fill(&self.allow_v4, self.dir24.as_ref()),
            None => Ok(()),
        }
    }

    /// The IPv4 summary, when the filter has one.
    pub fn summary(&self) -> Option<&Summary> {
        self.summary.as_ref().map(|(summary, _)| summary)
    }

    /// The entry id the trie holds for exactly `net` (IPv4).
    pub fn entry_id(&self, net: Ipv4Net) -> anyhow::Result<Option<u32>> {
        Ok(self.v4_entry(net)?.map(|v| v.id))
    }

    /// Which IPv4 lookup the program uses.
    pub fn ipv4_lookup(&self) -> anyhow::Result<&'static str> {
        let active = self.active_slot()?;
        let config = self
            .config
            .get(&active, 0)
            .context("reading the filter policy failed")?;
        Ok(if config.v4_lookup == LOOKUP_DIR24 {
            "dir24"
        } else {
            "trie"
        })
    }

    /// Adds `net` to its family's allowlist; adding an entry that is there already changes
    /// nothing. IPv4 entries go into the trie (the registry every tool reads) and, when the
    /// filter has them, into the DIR-24-8 tables the program reads.
    pub fn insert(&mut self, net: IpNet) -> anyhow::Result<()> {
        let context = || format!("adding {net} to the allowlist failed");
        match net {
            IpNet::V6(v6) => {
                let key = Key::new(u32::from(v6.prefix_len()), v6.network().octets());
                let value = AllowValue {
                    prefix_len: u32::from(v6.prefix_len()),
                    ..AllowValue::default()
                };
                self.allow_v6.insert(&key, value, 0).with_context(context)
            }
            IpNet::V4(v4) => {
                if self.v4_entry(v4)?.is_some() {
                    return Ok(());
                }
                self.insert_new(net)
            }
        }
    }

    /// Adds `net`, which the caller knows is not in the allowlist (a sync that compared it with
    /// the live entries): one syscall less per entry than [`FilterMaps::insert`].
    pub fn insert_new(&mut self, net: IpNet) -> anyhow::Result<()> {
        let context = || format!("adding {net} to the allowlist failed");
        match net {
            IpNet::V6(_) => self.insert(net),
            IpNet::V4(v4) => {
                let key = Key::new(u32::from(v4.prefix_len()), v4.network().octets());
                let id = match &mut self.dir24 {
                    Some(dir24) => dir24.alloc_id(v4)?,
                    None => 0,
                };
                let value = AllowValue {
                    hits: 0,
                    id,
                    prefix_len: u32::from(v4.prefix_len()),
                };
                // The summary first: it must never deny what the tables hold.
                if let Some((summary, _)) = &mut self.summary {
                    summary.add(v4);
                }
                if let Err(err) = self.allow_v4.insert(&key, value, 0) {
                    self.summary_remove(v4);
                    if let Some(dir24) = &mut self.dir24 {
                        dir24.free_id(id);
                    }
                    return Err(err).with_context(context);
                }
                if let Some(dir24) = &mut self.dir24
                    && let Err(err) = dir24.add(v4, id)
                {
                    // Nothing half-applied: take the entry back out of the registry.
                    let _ = self.allow_v4.remove(&key);
                    dir24.free_id(id);
                    self.summary_remove(v4);
                    return Err(err);
                }
                Ok(())
            }
        }
    }

    /// Adds `nets` (sorted, none of them in the allowlist: a sync's new entries). With the
    /// DIR-24-8 tables and at least [`PARALLEL_FILL_MIN`] IPv4 entries, the kernel's trie (the
    /// registry; a syscall and a kernel trie walk per entry) is filled on a second thread while
    /// this one fills the tables: at a million entries the trie is a third of a daemon's start.
    /// The summary bits go in first, as in [`FilterMaps::insert_new`]; each table only gains
    /// entries, so either is consistent for the program at every step. If an insert fails, what
    /// this call added is taken out again and the error returned.
    pub fn insert_new_all(&mut self, nets: &[IpNet]) -> anyhow::Result<()> {
        let v4: Vec<Ipv4Net> = nets
            .iter()
            .filter_map(|net| match net {
                IpNet::V4(v4) => Some(*v4),
                IpNet::V6(_) => None,
            })
            .collect();
        if self.dir24.is_none() || v4.len() < PARALLEL_FILL_MIN {
            return self.insert_new_each(nets);
        }
        let v6: Vec<IpNet> = nets
            .iter()
            .copied()
            .filter(|n| n.addr().is_ipv6())
            .collect();
        self.insert_new_v4_parallel(&v4)?;
        if let Err(err) = self.insert_new_each(&v6) {
            self.take_back(v4.iter().rev().map(|n| IpNet::V4(*n)));
            return Err(err);
        }
        Ok(())
    }

    /// [`FilterMaps::insert_new`] for each of `nets`, all taken back if one fails.
    fn insert_new_each(&mut self, nets: &[IpNet]) -> anyhow::Result<()> {
        for (done, net) in nets.iter().enumerate() {
            if let Err(err) = self.insert_new(*net) {
                self.take_back(nets[..done].iter().rev().copied());
                return Err(err);
            }
        }
        Ok(())
    }

    /// Removes entries this process just added (after a failed batch).
    fn take_back(&mut self, nets: impl Iterator<Item = IpNet>) {
        for net in nets {
            if let Err(undo) = self.remove(net) {
                warn!(entry = %net, error = %undo, "could not take back a new entry");
            }
        }
    }

    fn insert_new_v4_parallel(&mut self, nets: &[Ipv4Net]) -> anyhow::Result<()> {
        let Some(dir24) = &mut self.dir24 else {
            anyhow::bail!("no DIR-24-8 tables");
        };
        let mut ids = Vec::with_capacity(nets.len());
        for net in nets {
            match dir24.alloc_id(*net) {
                Ok(id) => ids.push(id),
                Err(err) => {
                    for id in ids {
                        dir24.free_id(id);
                    }
                    return Err(err);
                }
            }
        }
        // The summary first: it must never deny what the tables hold.
        if let Some((summary, _)) = &mut self.summary {
            for net in nets {
                summary.add(*net);
            }
        }
        let trie = &mut self.allow_v4;
        let (in_trie, in_tables) = std::thread::scope(|scope| {
            let registry = scope.spawn(|| {
                for (done, (net, id)) in nets.iter().zip(&ids).enumerate() {
                    let key = Key::new(u32::from(net.prefix_len()), net.network().octets());
                    let value = AllowValue {
                        hits: 0,
                        id: *id,
                        prefix_len: u32::from(net.prefix_len()),
                    };
                    if let Err(err) = trie.insert(&key, value, 0) {
                        return (
                            done,
                            Some(
                                anyhow::Error::new(err)
                                    .context(format!("adding {net} to the allowlist failed")),
                            ),
                        );
                    }
                }
                (nets.len(), None)
            });
            let mut tables = (nets.len(), None);
            for (done, (net, id)) in nets.iter().zip(&ids).enumerate() {
                if let Err(err) = dir24.add(*net, *id) {
                    tables = (done, Some(err));
                    break;
                }
            }
            let registry = registry.join().unwrap_or_else(|_| {
                (
                    0,
                    Some(anyhow::anyhow!("the allowlist registry thread panicked")),
                )
            });
            (registry, tables)
        });
        let ((trie_done, trie_err), (tables_done, tables_err)) = (in_trie, in_tables);
        let Some(err) = tables_err.or(trie_err) else {
            return Ok(());
        };
        // Back out, last first: entries in both the trie and the tables the usual way; one that
        // made only one of them from that one (the tables hand its addresses to the longest
        // ancestor the trie names: any ancestor the trie lacks is on its way out too).
        for (index, (net, id)) in nets.iter().zip(&ids).enumerate().rev() {
            let (in_trie, in_tables) = (index < trie_done, index < tables_done);
            if in_trie && in_tables {
                if let Err(undo) = self.remove(IpNet::V4(*net)) {
                    warn!(entry = %net, error = %undo, "could not take back a new entry");
                }
                continue;
            }
            if in_tables {
                match self.v4_replacement(*net) {
                    Ok(replacement) => {
                        if let Some(dir24) = &mut self.dir24 {
                            dir24.remove(*net, *id, replacement);
                        }
                    }
                    Err(undo) => {
                        warn!(entry = %net, error = %format!("{undo:#}"), "could not take back a new entry");
                    }
                }
            }
            if in_trie {
                let key = Key::new(u32::from(net.prefix_len()), net.network().octets());
                let _ = self.allow_v4.remove(&key);
            }
            if let Some(dir24) = &mut self.dir24 {
                dir24.free_id(*id);
            }
            self.summary_remove(*net);
        }
        Err(err)
    }

    /// The DIR-24-8 value `net`'s addresses go to when it leaves: the longest entry of the trie
    /// that strictly contains it (as `id + 1`), or NONE.
    fn v4_replacement(&self, net: Ipv4Net) -> anyhow::Result<u32> {
        let len = match net.prefix_len() {
            0 => return Ok(NONE),
            len => len,
        };
        let parent = Key::new(u32::from(len) - 1, net.network().octets());
        match self.allow_v4.get(&parent, 0) {
            Ok(ancestor) => Ok(ancestor.id + 1),
            Err(aya::maps::MapError::KeyNotFound) => Ok(NONE),
            Err(err) => {
                Err(err).with_context(|| format!("removing {net} from the allowlist failed"))
            }
        }
    }

    /// Clears the summary bits only `net` needed (after the tables let it go).
    fn summary_remove(&mut self, net: Ipv4Net) {
        if let Some((summary, _)) = &mut self.summary {
            summary.remove(net, self.dir24.as_ref());
        }
    }

    /// The trie's value for exactly `net`, if it is an entry.
    fn v4_entry(&self, net: Ipv4Net) -> anyhow::Result<Option<AllowValue>> {
        let key = Key::new(u32::from(net.prefix_len()), net.network().octets());
        match self.allow_v4.get(&key, 0) {
            Ok(value) => {
                // The trie answers with the longest prefix up to this length: it is `net`
                // itself only if the lengths agree (two prefixes of one length that contain
                // the same address are the same prefix).
                let exact = value.prefix_len == u32::from(net.prefix_len());
                Ok(exact.then_some(value))
            }
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(err) => Err(err).context("reading the IPv4 allowlist failed"),
        }
    }

    /// Removes `net` from its family's allowlist; false if it was not there.
    pub fn remove(&mut self, net: IpNet) -> anyhow::Result<bool> {
        let context = || format!("removing {net} from the allowlist failed");
        match net {
            IpNet::V6(v6) => {
                let key = Key::new(u32::from(v6.prefix_len()), v6.network().octets());
                match self.allow_v6.remove(&key) {
                    Ok(()) => Ok(true),
                    Err(aya::maps::MapError::KeyNotFound) => Ok(false),
                    Err(err) => Err(err).with_context(context),
                }
            }
            IpNet::V4(v4) => {
                let Some(value) = self.v4_entry(v4)? else {
                    return Ok(false);
                };
                let key = Key::new(u32::from(v4.prefix_len()), v4.network().octets());
                if self.dir24.is_some() {
                    // Its addresses go to the longest remaining entry that contains it.
                    let replacement = self.v4_replacement(v4)?;
                    if let Some(dir24) = &mut self.dir24 {
                        dir24.remove(v4, value.id, replacement);
                    }
                }
                self.allow_v4.remove(&key).with_context(context)?;
                if let Some(dir24) = &mut self.dir24 {
                    dir24.free_id(value.id);
                }
                self.summary_remove(v4);
                Ok(true)
            }
        }
    }

    /// Whether the allowlist holds exactly `net` (not just a prefix covering it).
    pub fn contains(&self, net: IpNet) -> anyhow::Result<bool> {
        match net {
            IpNet::V4(v4) => Ok(self.v4_entry(v4)?.is_some()),
            IpNet::V6(v6) => {
                let prefix = u32::from(v6.prefix_len());
                let octets = v6.network().octets();
                Ok(self
                    .allow_v6
                    .keys()
                    .any(|k| k.is_ok_and(|k| k.prefix_len() == prefix && k.data() == octets)))
            }
        }
    }

    /// Every allowlist network (keys only: no value read per entry), IPv4 first, unsorted.
    pub fn nets(&self) -> anyhow::Result<Vec<IpNet>> {
        let mut nets = Vec::new();
        if let Some(registered) = self.dir24.as_ref().and_then(Dir24::registered) {
            // Read through the mapping: a syscall per trie key costs microseconds.
            nets.extend(registered.map(|(_, net, _)| IpNet::V4(net)));
        } else {
            for key in self.allow_v4.keys() {
                let key = key.context("reading the IPv4 allowlist failed")?;
                let net = Ipv4Net::new(Ipv4Addr::from(key.data()), prefix_u8(key.prefix_len())?)?;
                nets.push(IpNet::V4(net));
            }
        }
        for key in self.allow_v6.keys() {
            let key = key.context("reading the IPv6 allowlist failed")?;
            let net = Ipv6Net::new(Ipv6Addr::from(key.data()), prefix_u8(key.prefix_len())?)?;
            nets.push(IpNet::V6(net));
        }
        Ok(nets)
    }

    /// Every allowlist entry with its hit counter, IPv4 first.
    pub fn entries(&self) -> anyhow::Result<Vec<LiveEntry>> {
        let mut entries = Vec::new();
        if let Some(registered) = self.dir24.as_ref().and_then(Dir24::registered) {
            // Networks and DIR-24-8 hits through the mapping. The trie's own counters (hits
            // while the trie served IPv4) are read, one lookup each, only while the trie serves
            // IPv4: a syscall per entry is seconds at a million.
            let trie_in_force = self.ipv4_lookup()? == "trie";
            for (_, net, dir24_hits) in registered {
                let trie_hits = if trie_in_force {
                    self.v4_entry(net)?.map_or(0, |v| v.hits)
                } else {
                    0
                };
                entries.push(LiveEntry {
                    net: IpNet::V4(net),
                    hits: trie_hits + dir24_hits,
                });
            }
        } else {
            self.v4_entries_from_trie(&mut entries)?;
        }
        for item in self.allow_v6.iter() {
            let (key, value) = item.context("reading the IPv6 allowlist failed")?;
            let net = Ipv6Net::new(Ipv6Addr::from(key.data()), prefix_u8(key.prefix_len())?)?;
            entries.push(LiveEntry {
                net: IpNet::V6(net),
                hits: value.hits,
            });
        }
        Ok(entries)
    }

    fn v4_entries_from_trie(&self, entries: &mut Vec<LiveEntry>) -> anyhow::Result<()> {
        for item in self.allow_v4.iter() {
            let (key, value) = item.context("reading the IPv4 allowlist failed")?;
            let net = Ipv4Net::new(Ipv4Addr::from(key.data()), prefix_u8(key.prefix_len())?)?;
            let dir24_hits = self.dir24.as_ref().map_or(0, |d| d.hits(value.id));
            entries.push(LiveEntry {
                net: IpNet::V4(net),
                hits: value.hits + dir24_hits,
            });
        }
        Ok(())
    }

    /// Unmaps the DIR-24-8 tables from this process until next used (see [`Dir24::release`]).
    pub fn release_tables(&self) {
        if let Some(dir24) = &self.dir24 {
            dir24.release();
        }
        if let Some((summary, _)) = &self.summary {
            summary.release();
        }
    }

    /// Counts `ifindex`'s traffic in counter slot `slot` (1..MAX_IFACE_SLOTS).
    pub fn assign_slot(&mut self, ifindex: u32, slot: u32) -> anyhow::Result<()> {
        if ifindex >= IFINDEX_LIMIT || slot >= MAX_IFACE_SLOTS {
            // Its counters go to slot 0 ("other"), which stats reports as such.
            return Ok(());
        }
        self.iface_slots
            .set(ifindex, slot, 0)
            .context("assigning the interface's counter slot failed")
    }

    /// Gives `ifindex`'s counters back to slot 0 (after detaching from it).
    pub fn clear_slot(&mut self, ifindex: u32) -> anyhow::Result<()> {
        if ifindex >= IFINDEX_LIMIT {
            return Ok(());
        }
        self.iface_slots
            .set(ifindex, 0, 0)
            .context("clearing the interface's counter slot failed")
    }

    /// The slot `ifindex` counts in already, or the lowest free one (0 if all are taken).
    pub fn slot_for(&self, ifindex: u32) -> anyhow::Result<u32> {
        let slots = self.slots()?;
        if let Some((_, slot)) = slots.iter().find(|(i, _)| *i == ifindex) {
            return Ok(*slot);
        }
        Ok((1..MAX_IFACE_SLOTS)
            .find(|s| !slots.iter().any(|(_, used)| used == s))
            .unwrap_or(0))
    }

    /// `(ifindex, slot)` for every interface with a slot of its own.
    pub fn slots(&self) -> anyhow::Result<Vec<(u32, u32)>> {
        let mut slots = Vec::new();
        for (ifindex, slot) in self.iface_slots.iter().enumerate() {
            let slot = slot.context("reading interface slots failed")?;
            if slot != 0 {
                slots.push((u32::try_from(ifindex)?, slot));
            }
        }
        Ok(slots)
    }

    /// Counters of one slot, summed over CPUs: `[family][counter]`.
    pub fn counters(&self, slot: u32) -> anyhow::Result<SlotCounters> {
        let mut sums = [[0u64; COUNTER_COUNT as usize]; FAMILIES as usize];
        for (family, row) in sums.iter_mut().enumerate() {
            for (counter, sum) in row.iter_mut().enumerate() {
                let index = (slot * FAMILIES + u32::try_from(family)?) * COUNTERS_PER_FAMILY
                    + u32::try_from(counter)?;
                let values = self
                    .counters
                    .get(&index, 0)
                    .context("reading counters failed")?;
                *sum = values.iter().sum();
            }
        }
        Ok(SlotCounters(sums))
    }
}

impl FilterMaps {
    /// Kernel memory each map takes, as the kernel accounts it (`memlock` in its fdinfo).
    pub fn kernel_memory(&self) -> anyhow::Result<Vec<(&'static str, u64)>> {
        use aya::maps::IterableMap;
        let fixed = [
            (
                map_names::ALLOW_V4,
                memlock(IterableMap::<Key<[u8; 4]>, AllowValue>::map(&self.allow_v4))?,
            ),
            (
                map_names::ALLOW_V6,
                memlock(IterableMap::<Key<[u8; 16]>, AllowValue>::map(
                    &self.allow_v6,
                ))?,
            ),
            (
                map_names::CONFIG,
                memlock(IterableMap::<u32, FilterConfig>::map(&self.config))?,
            ),
            (
                map_names::IFACE_SLOTS,
                memlock(IterableMap::<u32, u32>::map(&self.iface_slots))?,
            ),
            (
                map_names::COUNTERS,
                memlock(IterableMap::<u32, aya::maps::PerCpuValues<u64>>::map(
                    &self.counters,
                ))?,
            ),
        ];
        let mut all = fixed.to_vec();
        if let Some((_, Map::Array(data))) = &self.summary {
            all.push((map_names::SUMMARY_V4, memlock(data)?));
        }
        for (name, map) in [map_names::DIR24, map_names::DIR24_LONG, map_names::ENTRY]
            .into_iter()
            .zip(&self._dir24_maps)
        {
            if let Map::Array(data) = map {
                all.push((name, memlock(data)?));
            }
        }
        Ok(all)
    }
}

fn staged_pin(dir: &Path, name: &str) -> std::path::PathBuf {
    dir.join(format!("{name}_next"))
}

/// The `memlock:` line of a map's fdinfo: the bytes the kernel charges for it.
fn memlock(map: &MapData) -> anyhow::Result<u64> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let fd = map.fd().as_fd().as_raw_fd();
    let path = format!("/proc/self/fdinfo/{fd}");
    let info = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    info.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no memlock line in {path}"))
}

/// Counters of one interface slot, summed over CPUs, indexed `[family][counter]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotCounters(pub [[u64; COUNTER_COUNT as usize]; FAMILIES as usize]);

fn prefix_u8(prefix: u32) -> anyhow::Result<u8> {
    u8::try_from(prefix).context("prefix length out of range in the allowlist map")
}
