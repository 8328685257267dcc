//! The embedded eBPF object and the maps of it that are pinned: what the loader (`filter`), the
//! map access (`maps`) and the pinned-state check (`compat`) all start from, so none of them
//! imports another for it.

use gatekeeper_common::map_names;

/// The compiled XDP object, embedded by `build.rs` from `gatekeeper-ebpf` (bin `gatekeeper`).
pub static PROGRAM_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gatekeeper"));

/// The names of every map the controller pins, in a stable order.
pub const PINNED_MAPS: [&str; 24] = [
    map_names::DIR24,
    map_names::DIR24_LONG,
    map_names::ENTRY,
    map_names::ALLOW_V4,
    map_names::ALLOW_V6,
    map_names::CONFIG,
    map_names::CONFIG_SELECTOR,
    map_names::IFACE_SLOTS,
    map_names::COUNTERS,
    map_names::EVENTS,
    map_names::EVENT_BUCKET,
    map_names::SUMMARY_V4,
    map_names::BANS_V4,
    map_names::BANS_V6,
    map_names::BAN_SLOTS_V4,
    map_names::BAN_SLOTS_V6,
    map_names::BAN_COUNT,
    map_names::DENY_V4,
    map_names::DENY_V6,
    map_names::BLOCKED_V4,
    map_names::BLOCKED_V6,
    map_names::BLOCKED_REFS,
    map_names::RATE_V4,
    map_names::RATE_V6,
];

/// The maps that hold the IPv4 lookup tables: sized at load from the list, and replaced as a set
/// (new maps filled, the program that uses them swapped into the links, then re-pinned) when the
/// list outgrows them or `ipv4_lookup` changes. Every other map is shared by old and new program.
/// A map added here is carried over by value (mmapable arrays of 8-byte values, copied up to
/// the smaller size).
pub const IPV4_TABLE_MAPS: [&str; 3] = [map_names::DIR24, map_names::DIR24_LONG, map_names::ENTRY];
