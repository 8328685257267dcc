//! The ban tables: one entry per source (IPv4 /32, IPv6 cut to `ban_ipv6_prefix`) holding a
//! deadline on `CLOCK_MONOTONIC`; the program drops the source while its clock is before the
//! deadline, so a ban ends on time even while no daemon runs. Expired entries stay until swept
//! ([`BanMaps::remove_expired`]). A full table refuses new bans; nothing is ever evicted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::Context as _;
use aya::maps::{HashMap, Map, MapData, MapError};
use gatekeeper_common::{Ban, map_names, v6_prefix_mask};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{
    blocked::{Blocked, RefKind, region_of},
    deny::is_errno,
    pinned::data_of,
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

/// The ban tables of both families.
pub struct BanMaps {
    v4: HashMap<MapData, [u8; 4], Ban>,
    v6: HashMap<MapData, [u8; 16], Ban>,
    /// The bitmaps in front of the lookups: `[IPv4, IPv6]`.
    blocked: [Blocked; 2],
    v6_prefix: u8,
    capacity: (u32, u32),
}

impl BanMaps {
    pub(super) fn new(
        v4: Map,
        v6: Map,
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
            capacity_of(&v4, map_names::BANS_V4)?,
            capacity_of(&v6, map_names::BANS_V6)?,
        );
        Ok(BanMaps {
            v4: HashMap::try_from(v4).context(map_names::BANS_V4)?,
            v6: HashMap::try_from(v6).context(map_names::BANS_V6)?,
            blocked,
            v6_prefix: ban_ipv6_prefix.min(128),
            capacity,
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

    /// Bans `addr` until `deadline_ns` (`CLOCK_MONOTONIC`, see [`super::clock::deadline_after`]).
    /// A source banned already keeps the later of its two deadlines (and its hits). Call under the
    /// ban lock.
    pub fn ban(&mut self, addr: IpAddr, deadline_ns: u64) -> Result<BanOutcome, BanError> {
        let source = self.source_of(addr);
        let context = || format!("banning {source} failed");
        match addr {
            IpAddr::V4(v4) => {
                let key = v4.octets();
                if let Some(old) = lookup(&self.v4, &key).with_context(context)? {
                    return self.extend_v4(key, old, deadline_ns, source);
                }
                let slash24 = u32::from(v4) >> 8;
                self.blocked[0].add_ref(RefKind::Ban, slash24)?;
                let ban = Ban {
                    deadline_ns,
                    hits: 0,
                };
                match self.v4.insert(key, ban, NO_EXIST) {
                    Ok(()) => Ok(BanOutcome {
                        source,
                        deadline_ns,
                        new: true,
                    }),
                    Err(err) => {
                        self.blocked[0].drop_ref(RefKind::Ban, slash24)?;
                        if is_errno(&err, libc::EEXIST) {
                            // Another writer ignoring the lock got there first: extend it.
                            let old = lookup(&self.v4, &key).with_context(context)?;
                            return self.extend_v4(key, old.unwrap_or(ban), deadline_ns, source);
                        }
                        Err(self.refused(err, "IPv4", self.capacity.0, source))
                    }
                }
            }
            IpAddr::V6(v6) => {
                let key = self.v6_key(v6);
                let old = lookup(&self.v6, &key).with_context(context)?;
                let new = old.is_none();
                let ban = Ban {
                    deadline_ns: old.map_or(deadline_ns, |o| o.deadline_ns.max(deadline_ns)),
                    hits: old.map_or(0, |o| o.hits),
                };
                let region = region_of(IpAddr::V6(v6));
                if new {
                    self.blocked[1].add_ref(RefKind::Ban, region)?;
                }
                let flags = if new { NO_EXIST } else { EXIST };
                if let Err(err) = self.v6.insert(key, ban, flags) {
                    if new {
                        self.blocked[1].drop_ref(RefKind::Ban, region)?;
                    }
                    return Err(self.refused(err, "IPv6", self.capacity.1, source));
                }
                Ok(BanOutcome {
                    source,
                    deadline_ns: ban.deadline_ns,
                    new,
                })
            }
        }
    }

    fn extend_v4(
        &mut self,
        key: [u8; 4],
        old: Ban,
        deadline_ns: u64,
        source: IpNet,
    ) -> Result<BanOutcome, BanError> {
        let ban = Ban {
            deadline_ns: old.deadline_ns.max(deadline_ns),
            hits: old.hits,
        };
        if ban.deadline_ns != old.deadline_ns {
            self.v4
                .insert(key, ban, 0)
                .with_context(|| format!("extending the ban of {source} failed"))?;
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

    /// Lifts the ban covering `addr`; false if there was none. Call under the ban lock.
    pub fn unban(&mut self, addr: IpAddr) -> anyhow::Result<bool> {
        let source = self.source_of(addr);
        let context = || format!("lifting the ban of {source} failed");
        match addr {
            IpAddr::V4(v4) => {
                match self.v4.remove(&v4.octets()) {
                    Ok(()) => {}
                    Err(MapError::KeyNotFound) => return Ok(false),
                    Err(err) => return Err(err).with_context(context),
                }
                self.blocked[0].drop_ref(RefKind::Ban, u32::from(v4) >> 8)?;
                Ok(true)
            }
            IpAddr::V6(v6) => {
                match self.v6.remove(&self.v6_key(v6)) {
                    Ok(()) => {}
                    Err(MapError::KeyNotFound) => return Ok(false),
                    Err(err) => return Err(err).with_context(context),
                }
                self.blocked[1].drop_ref(RefKind::Ban, region_of(IpAddr::V6(v6)))?;
                Ok(true)
            }
        }
    }

    /// The ban covering `addr`, expired or not.
    pub fn get(&self, addr: IpAddr) -> anyhow::Result<Option<LiveBan>> {
        let source = self.source_of(addr);
        let ban = match addr {
            IpAddr::V4(v4) => lookup(&self.v4, &v4.octets()),
            IpAddr::V6(v6) => lookup(&self.v6, &self.v6_key(v6)),
        }
        .with_context(|| format!("reading the ban of {source} failed"))?;
        Ok(ban.map(|b| LiveBan {
            source,
            deadline_ns: b.deadline_ns,
            hits: b.hits,
        }))
    }

    /// Every ban, expired ones included, IPv4 first, unsorted.
    pub fn list(&self) -> anyhow::Result<Vec<LiveBan>> {
        let mut bans = Vec::new();
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
                source: IpNet::V6(
                    Ipv6Net::new(Ipv6Addr::from(key), self.v6_prefix)
                        .unwrap_or_else(|_| Ipv6Net::from(Ipv6Addr::from(key))),
                ),
                deadline_ns: ban.deadline_ns,
                hits: ban.hits,
            });
        }
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
}

fn lookup<K: aya::Pod>(map: &HashMap<MapData, K, Ban>, key: &K) -> Result<Option<Ban>, MapError> {
    match map.get(key, 0) {
        Ok(ban) => Ok(Some(ban)),
        Err(MapError::KeyNotFound) => Ok(None),
        Err(err) => Err(err),
    }
}
