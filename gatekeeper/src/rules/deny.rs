//! The deny tries: networks whose segments to any judged port are dropped (counter
//! `denied_list`), whatever the allowlist says.

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::Context as _;
use aya::maps::{LpmTrie, Map, MapData, MapError, lpm_trie::Key};
use gatekeeper_common::{RuleValue, map_names};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::blocked::{Blocked, RefKind, region_of, regions};

/// `BPF_NOEXIST`: insert only if the exact key is not there.
const NO_EXIST: u64 = 1;

/// The deny tries of both families, and the bitmaps in front of them (`[IPv4, IPv6]`).
pub struct DenyMaps {
    v4: LpmTrie<MapData, [u8; 4], RuleValue>,
    v6: LpmTrie<MapData, [u8; 16], RuleValue>,
    blocked: [Blocked; 2],
}

/// A deny entry as the kernel holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveDeny {
    pub net: IpNet,
    /// Segments this entry dropped (or counted, in monitor mode) since it went in.
    pub hits: u64,
}

/// What [`DenyMaps::sync`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DenySyncReport {
    pub added: Vec<IpNet>,
    pub removed: Vec<IpNet>,
}

impl DenyMaps {
    pub(super) fn new(v4: Map, v6: Map, blocked: [Blocked; 2]) -> anyhow::Result<DenyMaps> {
        Ok(DenyMaps {
            v4: LpmTrie::try_from(v4).context(map_names::DENY_V4)?,
            v6: LpmTrie::try_from(v6).context(map_names::DENY_V6)?,
            blocked,
        })
    }

    /// Opens the deny maps a daemon pinned under `dir`.
    pub fn open_pinned(dir: &std::path::Path) -> anyhow::Result<DenyMaps> {
        Ok(super::Rules::open_pinned(dir, 64)?.deny)
    }

    /// Adds `net` (normalised to its network); false if it was there already. Call under the
    /// config's edit lock.
    pub fn insert(&mut self, net: IpNet) -> anyhow::Result<bool> {
        let net = net.trunc();
        // The bitmap first: it must never hide what the trie holds.
        let small = net.prefix_len() > 24;
        let region = region_of(net.network());
        let blocked = self.blocked_mut(net);
        if small {
            blocked.add_ref(RefKind::Deny, region)?;
        } else {
            blocked.cover(net);
        }
        let value = RuleValue::default();
        let inserted = match net {
            IpNet::V4(v4) => self.v4.insert(
                &Key::new(u32::from(v4.prefix_len()), v4.network().octets()),
                value,
                NO_EXIST,
            ),
            IpNet::V6(v6) => self.v6.insert(
                &Key::new(u32::from(v6.prefix_len()), v6.network().octets()),
                value,
                NO_EXIST,
            ),
        };
        let inserted = match inserted {
            Ok(()) => Ok(true),
            Err(err) if is_errno(&err, libc::EEXIST) => Ok(false),
            Err(err) => Err(err).with_context(|| format!("adding {net} to the deny list failed")),
        };
        if !matches!(inserted, Ok(true)) {
            // Nothing new went in: give back what was taken for it.
            let blocked = self.blocked_mut(net);
            if small {
                blocked.drop_ref(RefKind::Deny, region)?;
            } else {
                blocked.settle(regions(net))?;
            }
        }
        inserted
    }

    fn blocked_mut(&mut self, net: IpNet) -> &mut Blocked {
        match net {
            IpNet::V4(_) => &mut self.blocked[0],
            IpNet::V6(_) => &mut self.blocked[1],
        }
    }

    /// Removes exactly `net`; false if it was not an entry. Call under the config's edit lock.
    pub fn remove(&mut self, net: IpNet) -> anyhow::Result<bool> {
        let net = net.trunc();
        let removed = match net {
            IpNet::V4(v4) => self
                .v4
                .remove(&Key::new(u32::from(v4.prefix_len()), v4.network().octets())),
            IpNet::V6(v6) => self
                .v6
                .remove(&Key::new(u32::from(v6.prefix_len()), v6.network().octets())),
        };
        match removed {
            Ok(()) => {}
            Err(MapError::KeyNotFound) => return Ok(false),
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("removing {net} from the deny list failed"));
            }
        }
        if net.prefix_len() > 24 {
            self.blocked_mut(net)
                .drop_ref(RefKind::Deny, region_of(net.network()))?;
        } else if !self.covered_whole(net)? {
            self.blocked_mut(net).settle(regions(net))?;
        }
        Ok(true)
    }

    /// Whether a remaining entry of the same or a shorter prefix covers all of `net` (then every
    /// bit of it stays).
    fn covered_whole(&self, net: IpNet) -> anyhow::Result<bool> {
        let found = match net {
            IpNet::V4(v4) => self.v4.get(
                &Key::new(u32::from(v4.prefix_len()), v4.network().octets()),
                0,
            ),
            IpNet::V6(v6) => self.v6.get(
                &Key::new(u32::from(v6.prefix_len()), v6.network().octets()),
                0,
            ),
        };
        match found {
            Ok(_) => Ok(true),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(err) => Err(err).context("reading the deny list failed"),
        }
    }

    /// Every deny network (keys only), IPv4 first, unsorted.
    pub fn nets(&self) -> anyhow::Result<Vec<IpNet>> {
        let mut nets = Vec::new();
        for key in self.v4.keys() {
            let key = key.context("reading the IPv4 deny list failed")?;
            nets.push(IpNet::V4(Ipv4Net::new(
                Ipv4Addr::from(key.data()),
                prefix_u8(key.prefix_len())?,
            )?));
        }
        for key in self.v6.keys() {
            let key = key.context("reading the IPv6 deny list failed")?;
            nets.push(IpNet::V6(Ipv6Net::new(
                Ipv6Addr::from(key.data()),
                prefix_u8(key.prefix_len())?,
            )?));
        }
        Ok(nets)
    }

    /// Every deny entry with its hits, IPv4 first, unsorted.
    pub fn entries(&self) -> anyhow::Result<Vec<LiveDeny>> {
        let mut entries = Vec::new();
        for item in self.v4.iter() {
            let (key, value) = item.context("reading the IPv4 deny list failed")?;
            let net = Ipv4Net::new(Ipv4Addr::from(key.data()), prefix_u8(key.prefix_len())?)?;
            entries.push(LiveDeny {
                net: IpNet::V4(net),
                hits: value.hits,
            });
        }
        for item in self.v6.iter() {
            let (key, value) = item.context("reading the IPv6 deny list failed")?;
            let net = Ipv6Net::new(Ipv6Addr::from(key.data()), prefix_u8(key.prefix_len())?)?;
            entries.push(LiveDeny {
                net: IpNet::V6(net),
                hits: value.hits,
            });
        }
        Ok(entries)
    }

    /// Makes the deny list hold exactly `wanted` (sorted, without duplicates, networks
    /// normalised): one sorted merge against the live entries; new entries go in first, old ones
    /// come out last. If an insert fails, the entries this call added come out again and the
    /// error is returned (the live list stays as it was). Call under the config's edit lock.
    pub fn sync(&mut self, wanted: &[IpNet]) -> anyhow::Result<DenySyncReport> {
        let mut live = self.nets()?;
        live.sort_unstable();
        let mut report = DenySyncReport::default();
        for net in crate::sync::sorted_difference(wanted, &live) {
            if let Err(err) = self.insert(net) {
                for added in &report.added {
                    if let Err(undo) = self.remove(*added) {
                        tracing::warn!(entry = %added, error = %undo, "could not take back a new deny entry");
                    }
                }
                return Err(err);
            }
            report.added.push(net);
        }
        for net in crate::sync::sorted_difference(&live, wanted) {
            self.remove(net)?;
            report.removed.push(net);
        }
        Ok(report)
    }

    /// Whether the bitmap of `addr`'s family has the bit of `addr`'s region (top 24 bits) set
    /// (for tests and `check`).
    pub fn blocked_bit(&self, addr: std::net::IpAddr) -> bool {
        let family = usize::from(addr.is_ipv6());
        self.blocked[family].is_set(region_of(addr))
    }
}

pub(super) fn is_errno(err: &MapError, errno: i32) -> bool {
    match err {
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(errno),
        _ => false,
    }
}

pub(super) fn prefix_u8(prefix: u32) -> anyhow::Result<u8> {
    u8::try_from(prefix).context("prefix length out of range in a rule map")
}
