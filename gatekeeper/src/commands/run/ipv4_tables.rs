//! When the pinned IPv4 tables do not fit a config, and the DIR-24-8 pool new tables get: the
//! same decisions at start (on the filter the daemon loads) and at a reload (on freshly opened
//! pins, on the reload's blocking thread).

use gatekeeper::{config::Config, dir24, filter::Ipv4Lookup, maps::FilterMaps};
use tracing::{info, warn};

/// The pool for new tables when `maps` were made for another `ipv4_lookup` (DIR-24-8 tables
/// wanted but absent, or the other way round), logged; `None` when they match.
pub(super) fn lookup_switch(maps: &FilterMaps, config: &Config) -> Option<u32> {
    let wants_tables = config.ipv4_lookup != Ipv4Lookup::Trie;
    let has_tables = maps.dir24().is_some();
    if has_tables == wants_tables {
        return None;
    }
    warn!(
        configured = %config.ipv4_lookup,
        pinned_dir24_tables = has_tables,
        "ipv4_lookup changed: switching the IPv4 lookup (new tables filled, then swapped in without a gap)"
    );
    Some(dir24::pool_size(
        dir24::blocks_needed(config.allow.nets()),
        config.ipv4_dir24_blocks,
    ))
}

/// After applying `config` to `maps` ran out of DIR-24-8 blocks: the larger pool that holds the
/// live entries and the config's at once (new entries go in before old ones come out), logged;
/// `None` when the ceiling allows no more than the pool has.
pub(super) fn grown_pool(maps: &FilterMaps, config: &Config) -> anyhow::Result<Option<u32>> {
    let current = maps.ipv4_blocks();
    let live = maps.nets()?;
    let needed = dir24::blocks_needed(config.allow.nets().iter().chain(&live));
    let blocks = dir24::pool_size(needed, config.ipv4_dir24_blocks);
    if blocks as usize <= current {
        return Ok(None);
    }
    info!(
        from = current,
        to = blocks,
        "the allowlist needs more DIR-24-8 blocks: growing the pool"
    );
    Ok(Some(blocks))
}
