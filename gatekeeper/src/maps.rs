//! The filter's maps, reached either from a freshly loaded program or from their bpffs pins, so
//! the admin CLI works the same whether or not the daemon runs.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{Array, LpmTrie, Map, MapData, PerCpuArray, lpm_trie::Key},
};
use gatekeeper_common::{
    AllowValue, COUNTER_COUNT, COUNTERS_PER_FAMILY, FAMILIES, FilterConfig, IFINDEX_LIMIT,
    MAX_IFACE_SLOTS, map_names,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::policy::Policy;

/// Every map the controller writes or reads (the drop-event ring buffer is taken separately).
pub struct FilterMaps {
    allow_v4: LpmTrie<MapData, [u8; 4], AllowValue>,
    allow_v6: LpmTrie<MapData, [u8; 16], AllowValue>,
    config: Array<MapData, FilterConfig>,
    selector: Array<MapData, u32>,
    iface_slots: Array<MapData, u32>,
    counters: PerCpuArray<MapData, u64>,
}

/// An allowlist entry as the kernel holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveEntry {
    pub net: IpNet,
    /// Segments this entry admitted since it was inserted.
    pub hits: u64,
}

/// The names of every map the controller pins, in a stable order.
pub const PINNED_MAPS: [&str; 8] = [
    map_names::ALLOW_V4,
    map_names::ALLOW_V6,
    map_names::CONFIG,
    map_names::CONFIG_SELECTOR,
    map_names::IFACE_SLOTS,
    map_names::COUNTERS,
    map_names::EVENTS,
    map_names::EVENT_BUCKET,
];

impl FilterMaps {
    /// Takes the maps out of a loaded object (the program keeps using them).
    pub fn take_from(ebpf: &mut Ebpf) -> anyhow::Result<FilterMaps> {
        let mut take = |name: &str| {
            ebpf.take_map(name)
                .with_context(|| format!("the eBPF object has no {name} map"))
        };
        FilterMaps::from_maps(
            take(map_names::ALLOW_V4)?,
            take(map_names::ALLOW_V6)?,
            take(map_names::CONFIG)?,
            take(map_names::CONFIG_SELECTOR)?,
            take(map_names::IFACE_SLOTS)?,
            take(map_names::COUNTERS)?,
        )
    }

    /// Opens the maps a daemon pinned under `dir`, after checking they fit this build.
    pub fn open_pinned(dir: &Path) -> anyhow::Result<FilterMaps> {
        let open = |name: &str| -> anyhow::Result<MapData> {
            let path = dir.join(name);
            let map = MapData::from_pin(&path).with_context(|| {
                format!(
                    "cannot open the pinned map {} (is the filter loaded? `gatekeeper run` pins it)",
                    path.display()
                )
            })?;
            crate::compat::check_map(dir, name, &map)?;
            Ok(map)
        };
        FilterMaps::from_maps(
            Map::LpmTrie(open(map_names::ALLOW_V4)?),
            Map::LpmTrie(open(map_names::ALLOW_V6)?),
            Map::Array(open(map_names::CONFIG)?),
            Map::Array(open(map_names::CONFIG_SELECTOR)?),
            Map::Array(open(map_names::IFACE_SLOTS)?),
            Map::PerCpuArray(open(map_names::COUNTERS)?),
        )
    }

    /// Opens the pinned maps under `dir` if a daemon pinned them there; `None` if nothing is
    /// pinned (the filter is not loaded).
    pub fn open_if_pinned(dir: &Path) -> anyhow::Result<Option<FilterMaps>> {
        if !dir.join(map_names::ALLOW_V4).exists() {
            return Ok(None);
        }
        FilterMaps::open_pinned(dir).map(Some)
    }

    fn from_maps(
        allow_v4: Map,
        allow_v6: Map,
        config: Map,
        selector: Map,
        iface_slots: Map,
        counters: Map,
    ) -> anyhow::Result<FilterMaps> {
        Ok(FilterMaps {
            allow_v4: LpmTrie::try_from(allow_v4).context(map_names::ALLOW_V4)?,
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
        self.config
            .set(next, policy.to_filter_config(), 0)
            .context("writing the filter policy failed")?;
        self.selector
            .set(0, next, 0)
            .context("switching to the new filter policy failed")
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

    /// Adds `net` to its family's allowlist (replacing an entry for the same prefix resets its
    /// hit counter).
    pub fn insert(&mut self, net: IpNet) -> anyhow::Result<()> {
        let value = AllowValue::default();
        let prefix = u32::from(net.prefix_len());
        match net.network() {
            IpAddr::V4(addr) => self
                .allow_v4
                .insert(&Key::new(prefix, addr.octets()), value, 0),
            IpAddr::V6(addr) => self
                .allow_v6
                .insert(&Key::new(prefix, addr.octets()), value, 0),
        }
        .with_context(|| format!("adding {net} to the allowlist failed (is it full?)"))
    }

    /// Removes `net` from its family's allowlist; false if it was not there.
    pub fn remove(&mut self, net: IpNet) -> anyhow::Result<bool> {
        let prefix = u32::from(net.prefix_len());
        let result = match net.network() {
            IpAddr::V4(addr) => self.allow_v4.remove(&Key::new(prefix, addr.octets())),
            IpAddr::V6(addr) => self.allow_v6.remove(&Key::new(prefix, addr.octets())),
        };
        match result {
            Ok(()) => Ok(true),
            Err(aya::maps::MapError::KeyNotFound) => Ok(false),
            Err(err) => {
                Err(err).with_context(|| format!("removing {net} from the allowlist failed"))
            }
        }
    }

    /// Whether the allowlist holds exactly `net` (not just a prefix covering it).
    pub fn contains(&self, net: IpNet) -> anyhow::Result<bool> {
        let prefix = u32::from(net.prefix_len());
        let found = match net.network() {
            IpAddr::V4(addr) => self.allow_v4.iter().any(|item| {
                item.is_ok_and(|(k, _)| k.prefix_len() == prefix && k.data() == addr.octets())
            }),
            IpAddr::V6(addr) => self.allow_v6.iter().any(|item| {
                item.is_ok_and(|(k, _)| k.prefix_len() == prefix && k.data() == addr.octets())
            }),
        };
        Ok(found)
    }

    /// Every allowlist entry with its hit counter, IPv4 first.
    pub fn entries(&self) -> anyhow::Result<Vec<LiveEntry>> {
        let mut entries = Vec::new();
        for item in self.allow_v4.iter() {
            let (key, value) = item.context("reading the IPv4 allowlist failed")?;
            let net = Ipv4Net::new(Ipv4Addr::from(key.data()), prefix_u8(key.prefix_len())?)?;
            entries.push(LiveEntry {
                net: IpNet::V4(net),
                hits: value.hits,
            });
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
        Ok(vec![
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
        ])
    }
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
