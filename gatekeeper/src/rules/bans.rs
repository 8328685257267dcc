//! The ban tables: one ban per source (IPv4 /32, IPv6 cut to `ban_ipv6_prefix`) holding a
//! deadline on `CLOCK_MONOTONIC`; the program drops the source while its clock is before the
//! deadline, so a ban ends on time even while no daemon runs. Expired bans stay until swept
//! ([`BanMaps::remove_expired`]). A full table refuses new bans; nothing is ever evicted.
//!
//! A ban lives in one of two places (layout in `gatekeeper_common::ban_slots`): a slot of the
//! family's slot table (two candidate buckets of four slots, probed by the program with plain array
//! reads), or, when both buckets are full, the family's hash map, which the program reads only
//! when the source's first bucket counts an overflow. The overflow counters are raised before the
//! hash insert and lowered after the hash delete, so a counter is never 0 under a hash entry that
//! needs it. How many bans each family holds is kept in the pinned `GK_BAN_COUNT` (raised before
//! a ban goes in, lowered after one came out, so it is never below the truth and `max_bans` holds
//! exactly for the daemon and the CLI alike); [`BanMaps::repair`] recounts both at daemon start.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::Context as _;
use aya::maps::{Array, HashMap, Map, MapData, MapError};
use gatekeeper_common::{Ban, ban_slots, map_names, v6_prefix_mask};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{
    blocked::{Blocked, RefKind, region_of},
    clock,
    deny::is_errno,
    pinned::data_of,
    slots::{Layout, SlotKey, SlotTable},
};

/// `BPF_NOEXIST`, `BPF_EXIST`.
const NO_EXIST: u64 = 1;
const EXIST: u64 = 2;

/// Why a ban was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum BanError {
    /// The family's table holds `capacity` bans already (`max_bans`): the ban is refused, no
    /// other ban is evicted.
    #[error("the {family} ban table is full ({capacity} entries, max_bans): {net} was not banned")]
    TableFull {
        family: &'static str,
        capacity: u32,
        net: IpNet,
    },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// What a ban request did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BanOutcome {
    /// The source as keyed (the address cut to its ban prefix).
    pub source: IpNet,
    /// The deadline in force now: the later of the old and the requested one.
    pub deadline_ns: u64,
    /// False when the source was banned already (its deadline may have moved later).
    pub new: bool,
}

/// A ban as the kernel holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveBan {
    pub source: IpNet,
    /// `CLOCK_MONOTONIC` nanoseconds (see [`super::clock`]).
    pub deadline_ns: u64,
    /// Segments this ban dropped (or counted, in monitor mode).
    pub hits: u64,
}

/// The ban maps of both families, as handles, before they are typed.
pub(super) struct BanMapData {
    pub v4: Map,
    pub v6: Map,
    pub slots_v4: Map,
    pub slots_v6: Map,
    pub count: Map,
}

/// The ban tables of both families.
pub struct BanMaps {
    v4: HashMap<MapData, [u8; 4], Ban>,
    v6: HashMap<MapData, [u8; 16], Ban>,
    /// The slot tables in front of the hash maps: `[IPv4, IPv6]`.
    slots: [SlotTable; 2],
    /// Bans per family (`GK_BAN_COUNT`): `[IPv4, IPv6]`.
    count: Array<MapData, u64>,
    /// The bitmaps in front of the lookups: `[IPv4, IPv6]`.
    blocked: [Blocked; 2],
    v6_prefix: u8,
    capacity: (u32, u32),
    force_overflow: bool,
    /// The slot maps' own handles: the tables map duplicates, and programs of the same object
    /// loaded later (benchmark twins) refer to these by fd.
    _slot_maps: [Map; 2],
}

/// Which family a ban is of: index into the per-family arrays.
#[derive(Clone, Copy)]
enum Fam {
    V4 = 0,
    V6 = 1,
}

impl Fam {
    fn of(addr: IpAddr) -> Fam {
        if addr.is_ipv4() { Fam::V4 } else { Fam::V6 }
    }

    fn name(self) -> &'static str {
        match self {
            Fam::V4 => "IPv4",
            Fam::V6 => "IPv6",
        }
    }
}

impl BanMaps {
    pub(super) fn new(
        maps: BanMapData,
        blocked: [Blocked; 2],
        ban_ipv6_prefix: u8,
    ) -> anyhow::Result<BanMaps> {
        let capacity_of = |map: &Map, name: &str| -> anyhow::Result<u32> {
            Ok(data_of(map, name)?
                .info()
                .context(name.to_string())?
                .max_entries())
        };
        let capacity = (
            capacity_of(&maps.v4, map_names::BANS_V4)?,
            capacity_of(&maps.v6, map_names::BANS_V6)?,
        );
        Ok(BanMaps {
            slots: [
                SlotTable::open(&maps.slots_v4, map_names::BAN_SLOTS_V4, Layout::V4)?,
                SlotTable::open(&maps.slots_v6, map_names::BAN_SLOTS_V6, Layout::V6)?,
            ],
            count: Array::try_from(maps.count).context(map_names::BAN_COUNT)?,
            v4: HashMap::try_from(maps.v4).context(map_names::BANS_V4)?,
            v6: HashMap::try_from(maps.v6).context(map_names::BANS_V6)?,
            blocked,
            v6_prefix: ban_ipv6_prefix.min(128),
            capacity,
            force_overflow: false,
            _slot_maps: [maps.slots_v4, maps.slots_v6],
        })
    }

    /// Opens the ban maps a daemon pinned under `dir`; IPv6 bans are keyed by their first
    /// `ban_ipv6_prefix` bits (the config's value, which the running program masks with).
    pub fn open_pinned(dir: &std::path::Path, ban_ipv6_prefix: u8) -> anyhow::Result<BanMaps> {
        Ok(super::Rules::open_pinned(dir, ban_ipv6_prefix)?.bans)
    }

    /// How many bans each family's table holds at most: `(IPv4, IPv6)`.
    pub fn capacity(&self) -> (u32, u32) {
        self.capacity
    }

    /// The source a ban of `addr` covers: `addr/32`, or the IPv6 address cut to the ban prefix.
    pub fn source_of(&self, addr: IpAddr) -> IpNet {
        match addr {
            IpAddr::V4(v4) => IpNet::V4(Ipv4Net::from(v4)),
            IpAddr::V6(v6) => IpNet::V6(
                Ipv6Net::new(v6, self.v6_prefix)
                    .map(|n| n.trunc())
                    .unwrap_or_else(|_| Ipv6Net::from(v6)),
            ),
        }
    }

    fn v6_key(&self, v6: Ipv6Addr) -> [u8; 16] {
        let mask = v6_prefix_mask(u32::from(self.v6_prefix));
        let mut key = v6.octets();
        for (byte, m) in key.iter_mut().zip(mask) {
            *byte &= m;
        }
        key
    }

    /// The slots key of `addr`'s source.
    fn slot_key(&self, addr: IpAddr) -> SlotKey {
        match addr {
            IpAddr::V4(v4) => SlotKey::V4(ban_slots::v4_key(u32::from_ne_bytes(v4.octets()))),
            IpAddr::V6(v6) => SlotKey::V6(ban_slots::v6_key(&self.v6_key(v6))),
        }
    }

    fn blocked_region(addr: IpAddr) -> u32 {
        region_of(addr)
    }

    /// Benchmarks only: new bans go to the hash map as if their buckets were full (the fallback's
    /// cost stays measured). Every ban stays exact either way.
    #[doc(hidden)]
    pub fn set_force_overflow(&mut self, on: bool) {
        self.force_overflow = on;
    }

    /// Bans `addr` until `deadline_ns` (`CLOCK_MONOTONIC`, see [`super::clock::deadline_after`]).
    /// A source banned already keeps the later of its two deadlines (and its hits). A deadline of
    /// 0 is kept as 1 (0 marks a free slot; both are long past). Call under the ban lock.
    pub fn ban(&mut self, addr: IpAddr, deadline_ns: u64) -> Result<BanOutcome, BanError> {
        let deadline_ns = deadline_ns.max(1);
        let source = self.source_of(addr);
        let context = || format!("banning {source} failed");
        let fam = Fam::of(addr);
        let key = self.slot_key(addr);
        let table = &self.slots[fam as usize];
        if let Some((slot, ban)) = table.find(key) {
            let deadline = ban.deadline_ns.max(deadline_ns);
            if deadline != ban.deadline_ns {
                table.set_deadline(slot, deadline);
            }
            return Ok(BanOutcome {
                source,
                deadline_ns: deadline,
                new: false,
            });
        }
        if let Some(old) = self.hash_get(addr).with_context(context)? {
            return self.extend_hashed(addr, old, deadline_ns, source);
        }
        // A new ban: counted first, so no writer ever sees room that is not there.
        let capacity = self.capacity_of(fam);
        let count = self.count(fam)?;
        if count >= u64::from(capacity) {
            return Err(BanError::TableFull {
                family: fam.name(),
                capacity,
                net: source,
            });
        }
        self.set_count(fam, count + 1)?;
        let region = Self::blocked_region(addr);
        if let Err(err) = self.blocked[fam as usize].add_ref(RefKind::Ban, region) {
            self.set_count(fam, count)?;
            return Err(err.into());
        }
        let now = clock::monotonic_ns();
        let table = &self.slots[fam as usize];
        if !self.force_overflow && table.place(key, deadline_ns, now).is_some() {
            return Ok(BanOutcome {
                source,
                deadline_ns,
                new: true,
            });
        }
        // Both buckets are full: the hash map, counted as overflow in both buckets first.
        table.add_overflow(key, 1);
        let ban = Ban {
            deadline_ns,
            hits: 0,
        };
        let inserted = match addr {
            IpAddr::V4(v4) => self.v4.insert(v4.octets(), ban, NO_EXIST),
            IpAddr::V6(v6) => self.v6.insert(self.v6_key(v6), ban, NO_EXIST),
        };
        match inserted {
            Ok(()) => Ok(BanOutcome {
                source,
                deadline_ns,
                new: true,
            }),
            Err(err) => {
                self.slots[fam as usize].add_overflow(key, -1);
                self.blocked[fam as usize].drop_ref(RefKind::Ban, region)?;
                self.set_count(fam, count)?;
                if is_errno(&err, libc::EEXIST) {
                    // Another writer ignoring the lock got there first: extend it.
                    let old = self.hash_get(addr).with_context(context)?.unwrap_or(ban);
                    return self.extend_hashed(addr, old, deadline_ns, source);
                }
                Err(self.refused(err, fam.name(), capacity, source))
            }
        }
    }

    /// Extends a ban that lives in the hash map.
    fn extend_hashed(
        &mut self,
        addr: IpAddr,
        old: Ban,
        deadline_ns: u64,
        source: IpNet,
    ) -> Result<BanOutcome, BanError> {
        let ban = Ban {
            deadline_ns: old.deadline_ns.max(deadline_ns),
            hits: old.hits,
        };
        if ban.deadline_ns != old.deadline_ns {
            let updated = match addr {
                IpAddr::V4(v4) => self.v4.insert(v4.octets(), ban, EXIST),
                IpAddr::V6(v6) => self.v6.insert(self.v6_key(v6), ban, EXIST),
            };
            updated.with_context(|| format!("extending the ban of {source} failed"))?;
        }
        Ok(BanOutcome {
            source,
            deadline_ns: ban.deadline_ns,
            new: false,
        })
    }

    fn refused(
        &self,
        err: MapError,
        family: &'static str,
        capacity: u32,
        source: IpNet,
    ) -> BanError {
        if is_errno(&err, libc::E2BIG) {
            BanError::TableFull {
                family,
                capacity,
                net: source,
            }
        } else {
            BanError::Other(anyhow::Error::new(err).context(format!("banning {source} failed")))
        }
    }

    fn capacity_of(&self, fam: Fam) -> u32 {
        match fam {
            Fam::V4 => self.capacity.0,
            Fam::V6 => self.capacity.1,
        }
    }

    /// Bans the family's table holds, as counted in `GK_BAN_COUNT`.
    fn count(&self, fam: Fam) -> anyhow::Result<u64> {
        self.count
            .get(&(fam as u32), 0)
            .context("reading the ban count failed")
    }

    fn set_count(&mut self, fam: Fam, count: u64) -> anyhow::Result<()> {
        self.count
            .set(fam as u32, count, 0)
            .context("writing the ban count failed")
    }

    /// The hash map's ban of `addr`'s source.
    fn hash_get(&self, addr: IpAddr) -> Result<Option<Ban>, MapError> {
        match addr {
            IpAddr::V4(v4) => lookup(&self.v4, &v4.octets()),
            IpAddr::V6(v6) => lookup(&self.v6, &self.v6_key(v6)),
        }
    }

    /// Lifts the ban covering `addr`; false if there was none. Call under the ban lock.
    pub fn unban(&mut self, addr: IpAddr) -> anyhow::Result<bool> {
        let source = self.source_of(addr);
        let fam = Fam::of(addr);
        let key = self.slot_key(addr);
        let table = &self.slots[fam as usize];
        if let Some((slot, _)) = table.find(key) {
            table.free(slot, clock::monotonic_ns());
        } else {
            let removed = match addr {
                IpAddr::V4(v4) => self.v4.remove(&v4.octets()),
                IpAddr::V6(v6) => self.v6.remove(&self.v6_key(v6)),
            };
            match removed {
                Ok(()) => {}
                Err(MapError::KeyNotFound) => return Ok(false),
                Err(err) => {
                    return Err(err).with_context(|| format!("lifting the ban of {source} failed"));
                }
            }
            // After the delete: a counter is never 0 while the entry is there.
            self.slots[fam as usize].add_overflow(key, -1);
        }
        let count = self.count(fam)?;
        self.set_count(fam, count.saturating_sub(1))?;
        self.blocked[fam as usize].drop_ref(RefKind::Ban, Self::blocked_region(addr))?;
        Ok(true)
    }

    /// The ban covering `addr`, expired or not.
    pub fn get(&self, addr: IpAddr) -> anyhow::Result<Option<LiveBan>> {
        let source = self.source_of(addr);
        if let Some((_, ban)) = self.slots[Fam::of(addr) as usize].find(self.slot_key(addr)) {
            return Ok(Some(LiveBan {
                source,
                deadline_ns: ban.deadline_ns,
                hits: ban.hits,
            }));
        }
        let ban = self
            .hash_get(addr)
            .with_context(|| format!("reading the ban of {source} failed"))?;
        Ok(ban.map(|b| LiveBan {
            source,
            deadline_ns: b.deadline_ns,
            hits: b.hits,
        }))
    }

    /// Whether the ban of `addr` lives in the hash map (its buckets were full when it came).
    pub fn overflowed(&self, addr: IpAddr) -> anyhow::Result<bool> {
        Ok(self.hash_get(addr)?.is_some())
    }

    /// The sum of each family's bucket overflow counters (`(IPv4, IPv6)`; every ban in a hash map
    /// counts once in each of its two buckets).
    pub fn overflow_counters(&self) -> (u64, u64) {
        (
            self.slots[0].overflow_total(),
            self.slots[1].overflow_total(),
        )
    }

    /// Buckets of each family's slot table.
    pub fn buckets(&self) -> u32 {
        self.slots[0].buckets()
    }

    fn v6_net(&self, key: [u8; 16]) -> IpNet {
        IpNet::V6(
            Ipv6Net::new(Ipv6Addr::from(key), self.v6_prefix)
                .unwrap_or_else(|_| Ipv6Net::from(Ipv6Addr::from(key))),
        )
    }

    /// Every ban, expired ones included, IPv4 first, unsorted.
    pub fn list(&self) -> anyhow::Result<Vec<LiveBan>> {
        let mut bans = Vec::new();
        for table in &self.slots {
            for ban in table.bans() {
                let source = match ban.key {
                    SlotKey::V4(word) => IpNet::V4(Ipv4Net::from(Ipv4Addr::from(
                        ((word >> 32) as u32).to_ne_bytes(),
                    ))),
                    SlotKey::V6([high, low]) => {
                        let mut key = [0u8; 16];
                        key[..8].copy_from_slice(&high.to_ne_bytes());
                        key[8..].copy_from_slice(&low.to_ne_bytes());
                        self.v6_net(key)
                    }
                };
                bans.push(LiveBan {
                    source,
                    deadline_ns: ban.deadline_ns,
                    hits: ban.hits,
                });
            }
        }
        for item in self.v4.iter() {
            let (key, ban) = item.context("reading the IPv4 bans failed")?;
            bans.push(LiveBan {
                source: IpNet::V4(Ipv4Net::from(Ipv4Addr::from(key))),
                deadline_ns: ban.deadline_ns,
                hits: ban.hits,
            });
        }
        for item in self.v6.iter() {
            let (key, ban) = item.context("reading the IPv6 bans failed")?;
            bans.push(LiveBan {
                source: self.v6_net(key),
                deadline_ns: ban.deadline_ns,
                hits: ban.hits,
            });
        }
        for table in &self.slots {
            table.release();
        }
        bans.sort_by_key(|b| !b.source.addr().is_ipv4());
        Ok(bans)
    }

    /// Removes every ban whose deadline is at or before `now_ns` (the sweep); returns them.
    pub fn remove_expired(&mut self, now_ns: u64) -> anyhow::Result<Vec<LiveBan>> {
        let expired: Vec<LiveBan> = self
            .list()?
            .into_iter()
            .filter(|b| b.deadline_ns <= now_ns)
            .collect();
        for ban in &expired {
            self.unban(ban.source.addr())?;
        }
        Ok(expired)
    }

    /// Brings the bookkeeping in line with the bans themselves (daemon start, under the ban
    /// lock): each bucket's overflow counter from the hash maps' entries, each family's count
    /// from the used slots and the hash entries. A writer killed part way leaves a counter too
    /// high (a wasted lookup, a ban refused too early), never too low; ban hash maps pinned by a
    /// gatekeeper without slots get their bans counted as overflow, so they stay enforced.
    pub fn repair(&mut self) -> anyhow::Result<()> {
        let mut v4_keys = Vec::new();
        for key in self.v4.keys() {
            let key = key.context("reading the IPv4 bans failed")?;
            v4_keys.push(SlotKey::V4(ban_slots::v4_key(u32::from_ne_bytes(key))));
        }
        let mut v6_keys = Vec::new();
        for key in self.v6.keys() {
            let key = key.context("reading the IPv6 bans failed")?;
            v6_keys.push(SlotKey::V6(ban_slots::v6_key(&key)));
        }
        for (fam, keys) in [(Fam::V4, v4_keys), (Fam::V6, v6_keys)] {
            let table = &self.slots[fam as usize];
            table.rebuild_overflow(&keys);
            let count = table.bans().len() + keys.len();
            table.release();
            self.set_count(fam, count as u64)?;
        }
        Ok(())
    }
}

fn lookup<K: aya::Pod>(map: &HashMap<MapData, K, Ban>, key: &K) -> Result<Option<Ban>, MapError> {
    match map.get(key, 0) {
        Ok(ban) => Ok(Some(ban)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(err) => Err(err),
    }
}
