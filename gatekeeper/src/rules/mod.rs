//! Deny lists and bans as the kernel holds them: the userspace half of the program's ban and deny
//! rules (layout in `gatekeeper_common`: `map_names`, [`gatekeeper_common::Ban`],
//! [`gatekeeper_common::RuleValue`], [`gatekeeper_common::blocked`]).
//!
//! - [`DenyMaps`]: the deny tries (`[[deny]]` entries and deny feeds), with hits per entry.
//! - [`BanMaps`]: the ban tables, one entry per source (IPv4 /32, IPv6 masked to
//!   `ban_ipv6_prefix`) with a deadline on `CLOCK_MONOTONIC` ([`clock`]); a full table refuses a
//!   new ban with [`BanError::TableFull`], it never evicts.
//! - both keep the /24 bitmaps in front of the lookups ([`blocked`], one per family) exact enough:
//!   a bit is set before an entry goes in and cleared only after the last entry of its /24 came
//!   out.
//!
//! Both work on a freshly loaded program's maps ([`Rules::take_from`]) or on the maps a daemon
//! pinned ([`DenyMaps::open_pinned`], [`BanMaps::open_pinned`]), so the CLI edits the same state as
//! the daemon, and bans survive a daemon restart. Writers serialise per kind: deny edits under the
//! config's edit lock, ban edits under the ban lock; the two kinds never write the same bitmap
//! reference count (see [`blocked`]).

mod bans;
pub mod blocked;
pub mod clock;
mod deny;
mod pinned;
mod slots;

use aya::Ebpf;
pub use bans::{BanError, BanMaps, BanOutcome, LiveBan};
pub use deny::{DenyMaps, DenySyncReport, LiveDeny};

/// The deny and ban halves of a loaded program.
pub struct Rules {
    pub deny: DenyMaps,
    pub bans: BanMaps,
    /// The handles the halves work through are duplicates; these originals stay open because
    /// programs of the same object loaded later (benchmark twins) refer to them by fd.
    _originals: [aya::maps::Map; 3],
}

impl Rules {
    /// Takes the rule maps out of a loaded object (the program keeps using them). IPv6 bans are
    /// keyed by their first `ban_ipv6_prefix` bits.
    pub fn take_from(ebpf: &mut Ebpf, ban_ipv6_prefix: u8) -> anyhow::Result<Rules> {
        let maps = pinned::RuleMapData::take_from(ebpf)?;
        Rules::from_data(maps, ban_ipv6_prefix)
    }

    /// Opens the rule maps a daemon pinned under `dir`.
    pub fn open_pinned(dir: &std::path::Path, ban_ipv6_prefix: u8) -> anyhow::Result<Rules> {
        let maps = pinned::RuleMapData::open_pinned(dir)?;
        Rules::from_data(maps, ban_ipv6_prefix)
    }

    fn from_data(maps: pinned::RuleMapData, ban_ipv6_prefix: u8) -> anyhow::Result<Rules> {
        let open = || -> anyhow::Result<[blocked::Blocked; 2]> {
            Ok([
                blocked::Blocked::open_v4(&maps.blocked_v4, &maps.refs, &maps.deny_v4)?,
                blocked::Blocked::open_v6(&maps.blocked_v6, &maps.refs, &maps.deny_v6)?,
            ])
        };
        let (deny_blocked, ban_blocked) = (open()?, open()?);
        Ok(Rules {
            deny: DenyMaps::new(maps.deny_v4, maps.deny_v6, deny_blocked)?,
            bans: BanMaps::new(
                bans::BanMapData {
                    v4: maps.bans_v4,
                    v6: maps.bans_v6,
                    slots_v4: maps.slots_v4,
                    slots_v6: maps.slots_v6,
                    count: maps.ban_count,
                },
                ban_blocked,
                ban_ipv6_prefix,
            )?,
            _originals: [maps.blocked_v4, maps.blocked_v6, maps.refs],
        })
    }
}
