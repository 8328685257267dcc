//! Where the rule maps come from: a loaded object or the pins a daemon left.

use std::path::Path;

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{Map, MapData},
};
use gatekeeper_common::map_names;

/// The rule maps as handles, before they are typed.
pub(super) struct RuleMapData {
    pub bans_v4: Map,
    pub bans_v6: Map,
    pub deny_v4: Map,
    pub deny_v6: Map,
    pub blocked_v4: Map,
    pub blocked_v6: Map,
    pub refs: Map,
    pub slots_v4: Map,
    pub slots_v6: Map,
    pub ban_count: Map,
}

impl RuleMapData {
    pub fn take_from(ebpf: &mut Ebpf) -> anyhow::Result<RuleMapData> {
        let mut take = |name: &str| -> anyhow::Result<Map> {
            ebpf.take_map(name)
                .with_context(|| format!("the eBPF object has no {name} map"))
        };
        Ok(RuleMapData {
            bans_v4: take(map_names::BANS_V4)?,
            bans_v6: take(map_names::BANS_V6)?,
            deny_v4: take(map_names::DENY_V4)?,
            deny_v6: take(map_names::DENY_V6)?,
            blocked_v4: take(map_names::BLOCKED_V4)?,
            blocked_v6: take(map_names::BLOCKED_V6)?,
            refs: take(map_names::BLOCKED_REFS)?,
            slots_v4: take(map_names::BAN_SLOTS_V4)?,
            slots_v6: take(map_names::BAN_SLOTS_V6)?,
            ban_count: take(map_names::BAN_COUNT)?,
        })
    }

    pub fn open_pinned(dir: &Path) -> anyhow::Result<RuleMapData> {
        crate::compat::check_pin_dir(dir)?;
        let open = |name: &str| open_pin(dir, name);
        Ok(RuleMapData {
            bans_v4: Map::HashMap(open(map_names::BANS_V4)?),
            bans_v6: Map::HashMap(open(map_names::BANS_V6)?),
            deny_v4: Map::LpmTrie(open(map_names::DENY_V4)?),
            deny_v6: Map::LpmTrie(open(map_names::DENY_V6)?),
            blocked_v4: Map::Array(open(map_names::BLOCKED_V4)?),
            blocked_v6: Map::Array(open(map_names::BLOCKED_V6)?),
            refs: Map::HashMap(open(map_names::BLOCKED_REFS)?),
            slots_v4: Map::Array(open(map_names::BAN_SLOTS_V4)?),
            slots_v6: Map::Array(open(map_names::BAN_SLOTS_V6)?),
            ban_count: Map::Array(open(map_names::BAN_COUNT)?),
        })
    }
}

/// One pinned map under `dir`.
pub(super) fn open_pin(dir: &Path, name: &str) -> anyhow::Result<MapData> {
    let path = dir.join(name);
    MapData::from_pin(&path).with_context(|| {
        format!(
            "cannot open the pinned map {} (is the filter loaded? `gatekeeper run` pins it)",
            path.display()
        )
    })
}

/// The handle inside `map`.
pub(super) fn data_of<'m>(map: &'m Map, name: &str) -> anyhow::Result<&'m MapData> {
    match map {
        Map::HashMap(data) | Map::LpmTrie(data) | Map::Array(data) | Map::LruHashMap(data) => {
            Ok(data)
        }
        _ => anyhow::bail!("{name} has an unexpected map type"),
    }
}

/// A second handle of the same kernel map (the bitmap's bookkeeping is shared by the deny and
/// the ban halves, each owning its handles).
pub(super) fn duplicate(map: &Map, name: &str) -> anyhow::Result<Map> {
    use std::os::fd::AsFd as _;
    let fd = data_of(map, name)?
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .with_context(|| format!("duplicating {name}'s descriptor"))?;
    let data = MapData::from_fd(fd).with_context(|| format!("reopening {name}"))?;
    Ok(match map {
        Map::HashMap(_) => Map::HashMap(data),
        Map::LpmTrie(_) => Map::LpmTrie(data),
        Map::LruHashMap(_) => Map::LruHashMap(data),
        _ => Map::Array(data),
    })
}
