//! The embedded eBPF object and the maps of it that are pinned: what the loader (`filter`), the
//! map access (`maps`) and the pinned-state check (`compat`) all start from, so none of them
//! imports another for it.

use gatekeeper_common::map_names;

/// The compiled XDP object, embedded by `build.rs` from `gatekeeper-ebpf` (bin `gatekeeper`).
pub static PROGRAM_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gatekeeper"));

/// The names of every map the controller pins, in a stable order.
pub const PINNED_MAPS: [&str; 11] = [
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
];
