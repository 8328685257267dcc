//! Types shared by the XDP program (`gatekeeper-ebpf`) and its controller (`gatekeeper`).
//!
//! Everything here is `#[repr(C)]`, `Copy` and free of implicit padding, because the same bytes are
//! read by the kernel program and written by userspace through BPF maps.
#![no_std]

/// Names of the maps in the eBPF object; also their file names when pinned.
pub mod map_names {
    /// IPv4 allowlist: LPM trie of `[u8; 4]` (network order) -> [`super::AllowValue`].
    pub const ALLOW_V4: &str = "GK_ALLOW_V4";
    /// IPv6 allowlist: LPM trie of `[u8; 16]` -> [`super::AllowValue`].
    pub const ALLOW_V6: &str = "GK_ALLOW_V6";
    /// Two [`super::FilterConfig`] slots; the program reads the one `CONFIG_SELECTOR` names.
    pub const CONFIG: &str = "GK_CONFIG";
    /// One `u32`: index (0 or 1) of the active `CONFIG` slot.
    pub const CONFIG_SELECTOR: &str = "GK_CONFIG_SEL";
    /// `ifindex` -> counter slot (1..[`super::MAX_IFACE_SLOTS`]); 0 means "other interfaces".
    pub const IFACE_SLOTS: &str = "GK_IFACE_SLOTS";
    /// Per-CPU `u64` counters, indexed by [`super::counter_index`].
    pub const COUNTERS: &str = "GK_COUNTERS";
    /// Ring buffer of [`super::DropEvent`].
    pub const EVENTS: &str = "GK_EVENTS";
    /// Per-CPU [`super::TokenBucket`] limiting drop events.
    pub const EVENT_BUCKET: &str = "GK_EVENT_BUCKET";
    /// DIR-24-8 first level: one `u32` per /24 of the IPv4 space (see [`super::dir24`]).
    pub const DIR24: &str = "GK_DIR24";
    /// DIR-24-8 second level: blocks of 256 `u32`, one per address of a /24.
    pub const DIR24_LONG: &str = "GK_DIR24_LONG";
    /// Entry id -> `u64`: bits 56..64 hold the prefix length + 1 (0: the id is free; how
    /// DIR-24-8 updates know which prefix covers an address), bits 0..56 count the segments
    /// admitted through the DIR-24-8 lookup (the program adds 1 atomically).
    pub const ENTRY: &str = "GK_ENTRY";
}

/// Name of the filter program in the eBPF object.
pub const PROGRAM_NAME: &str = "gatekeeper";
/// Global (`.rodata`) the loader sets to 1 when the kernel has `bpf_ktime_get_coarse_ns` (5.11+).
pub const COARSE_CLOCK_GLOBAL: &str = "GK_COARSE_CLOCK";

/// Largest number of entries each allowlist trie can hold (and of entry ids).
pub const ALLOWLIST_CAPACITY: u32 = 1 << 20;

/// The DIR-24-8 IPv4 lookup: a flat table indexed by the top 24 bits of the address, whose
/// entries either name the allowlist entry covering the whole /24 or point to a block of 256
/// entries for /24s that hold longer prefixes. Two array reads per lookup, whatever the list size.
pub mod dir24 {
    /// Entries of the first level: 2^24.
    pub const TBL24_ENTRIES: u32 = 1 << 24;
    /// Second-level blocks allocated by default (each 256 entries, 1 KiB): one is needed per /24
    /// that holds prefixes longer than /24.
    pub const DEFAULT_LONG_BLOCKS: u32 = 1 << 14;
    /// Set in a first-level entry whose low bits are a block index.
    pub const LONG_FLAG: u32 = 1 << 31;
    /// `0` means "no entry covers this address"; otherwise `id + 1`.
    pub const NONE: u32 = 0;
    /// In an `ENTRY` value: where the prefix length + 1 starts.
    pub const ENTRY_LEN_SHIFT: u32 = 56;
    /// In an `ENTRY` value: the hit counter bits.
    pub const ENTRY_HITS_MASK: u64 = (1 << ENTRY_LEN_SHIFT) - 1;
}

/// IPv4 lookup: the kernel LPM trie (no extra memory; cost grows with the list).
pub const LOOKUP_TRIE: u32 = 0;
/// IPv4 lookup: DIR-24-8 (constant cost; 64 MiB + 1 KiB per long block of kernel memory).
pub const LOOKUP_DIR24: u32 = 1;

/// Interfaces are mapped to counter slots through a direct-indexed array of this many ifindexes;
/// interfaces with a larger ifindex count in slot 0.
pub const IFINDEX_LIMIT: u32 = 1 << 14;
/// Counter slots: slot 0 collects interfaces without a slot of their own.
pub const MAX_IFACE_SLOTS: u32 = 64;

/// What the program does with a stranger's segment to a protected port: one enum for the
/// program, the controller and the config file (`mode = "enforce" | "monitor"`). Stored in
/// [`FilterConfig::mode`] as its `u32` discriminant.
#[repr(u32)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize, serde::Serialize),
    serde(rename_all = "lowercase")
)]
pub enum Mode {
    /// Drop what the allowlist refuses.
    #[default]
    Enforce = 0,
    /// Count what would be dropped, pass everything.
    Monitor = 1,
}

impl Mode {
    /// The mode a map value holds; anything but `Monitor` enforces (fail closed).
    pub const fn from_raw(raw: u32) -> Mode {
        if raw == Mode::Monitor as u32 {
            Mode::Monitor
        } else {
            Mode::Enforce
        }
    }

    /// The name the config file and the CLI use.
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Monitor => "monitor",
        }
    }
}

impl core::fmt::Display for Mode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Words in the protected-port bitmap (one bit per TCP port).
pub const PORT_BITMAP_WORDS: usize = 65536 / 64;

/// The policy the program applies, switched as a whole (see `CONFIG_SELECTOR`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FilterConfig {
    /// A [`Mode`] as `u32` (map values must be valid for any bits; see [`Mode::from_raw`]).
    pub mode: u32,
    /// Drop events each CPU may send in a burst.
    pub event_burst: u32,
    /// Nanoseconds between two drop-event tokens on one CPU (0: no events).
    pub event_interval_ns: u64,
    /// [`LOOKUP_TRIE`] or [`LOOKUP_DIR24`] for IPv4 sources.
    pub v4_lookup: u32,
    pub _reserved: u32,
    /// Bit `port % 64` of word `port / 64` set: the TCP port is protected.
    pub ports: [u64; PORT_BITMAP_WORDS],
}

impl FilterConfig {
    /// Enforcing, no protected ports, no events.
    pub const fn empty() -> Self {
        FilterConfig {
            mode: Mode::Enforce as u32,
            event_burst: 0,
            event_interval_ns: 0,
            v4_lookup: LOOKUP_TRIE,
            _reserved: 0,
            ports: [0; PORT_BITMAP_WORDS],
        }
    }

    pub fn protect(&mut self, port: u16) {
        self.ports[usize::from(port >> 6)] |= 1u64 << (port & 63);
    }

    pub fn is_protected(&self, port: u16) -> bool {
        self.ports[usize::from(port >> 6)] & (1u64 << (port & 63)) != 0
    }
}

/// Value of an allowlist entry in the tries.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AllowValue {
    /// Segments admitted through the trie lookup (bumped atomically from every CPU).
    pub hits: u64,
    /// The entry's id: its index in the `ENTRY` map (IPv4 with DIR-24-8 only; else 0).
    pub id: u32,
    /// The entry's own prefix length: a trie lookup answers with the longest match, and this
    /// tells whether that is the prefix asked for.
    pub prefix_len: u32,
}

/// Address family index of a counter.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Not IP (ARP, LLDP, ...), or unknown because the frame was too short.
    Other = 0,
    Ipv4 = 1,
    Ipv6 = 2,
}

pub const FAMILIES: u32 = 3;

/// What happened to a frame; one counter each (per interface slot and family). The names
/// operators see (`gatekeeper stats`, metric labels) and the count come from this one enum.
#[repr(u32)]
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, strum::EnumCount, strum::EnumIter, strum::IntoStaticStr,
)]
#[strum(serialize_all = "snake_case")]
pub enum Counter {
    /// Not IPv4 or IPv6: passed.
    #[strum(serialize = "passed_not_ip")]
    PassNotIp = 0,
    /// IP but not TCP: passed.
    #[strum(serialize = "passed_not_tcp")]
    PassNotTcp = 1,
    /// TCP to a port that is not protected: passed.
    #[strum(serialize = "passed_other_port")]
    PassOtherPort = 2,
    /// A non-first fragment (no ports inside): passed.
    #[strum(serialize = "passed_fragment")]
    PassFragment = 3,
    /// TCP to a protected port from an allowlisted source: passed.
    Allowed = 4,
    /// TCP to a protected port from a stranger: dropped (enforce mode).
    Dropped = 5,
    /// TCP to a protected port from a stranger: passed and counted (monitor mode).
    WouldDrop = 6,
    /// Could carry TCP to a protected port but cannot be judged (too many VLAN tags or
    /// extension headers, a first fragment too short): dropped in enforce mode, fail closed.
    #[strum(serialize = "unjudgeable_dropped")]
    Unjudgeable = 7,
    /// Plainly broken (truncated header, IHL < 5): passed for the kernel to discard.
    Malformed = 8,
    /// Drop events sent to userspace.
    #[strum(serialize = "events_sent")]
    EventSent = 9,
    /// Drop events not sent: rate limit reached or ring buffer full.
    #[strum(serialize = "events_suppressed")]
    EventSuppressed = 10,
}

/// Counters per (slot, family); a power of two so the index is a shift.
pub const COUNTERS_PER_FAMILY: u32 = 16;
/// Counters in use, from the enum itself.
pub const COUNTER_COUNT: u32 = <Counter as strum::EnumCount>::COUNT as u32;
// Every counter's index fits its family's block.
const _: () = assert!(COUNTER_COUNT <= COUNTERS_PER_FAMILY);
const _: () = assert!(Counter::EventSuppressed as u32 == COUNTER_COUNT - 1);
pub const COUNTER_ENTRIES: u32 = MAX_IFACE_SLOTS * FAMILIES * COUNTERS_PER_FAMILY;

/// Index of a counter in the `COUNTERS` array.
#[inline(always)]
pub const fn counter_index(slot: u32, family: Family, counter: Counter) -> u32 {
    (slot * FAMILIES + family as u32) * COUNTERS_PER_FAMILY + counter as u32
}

/// A dropped SYN, reported to userspace (rate-limited per CPU inside the kernel).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DropEvent {
    /// 4 or 6.
    pub family: u32,
    pub ifindex: u32,
    /// Host byte order.
    pub dest_port: u16,
    /// 1 if the segment was only counted (monitor mode), 0 if it was dropped.
    pub monitor: u16,
    /// Source address; IPv4 in the first 4 bytes (network order).
    pub source: [u8; 16],
    pub _pad2: u32,
}

/// Per-CPU token bucket state for drop events.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TokenBucket {
    pub last_ns: u64,
    pub tokens: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` structs of integers without padding.
    unsafe impl aya::Pod for super::FilterConfig {}
    unsafe impl aya::Pod for super::AllowValue {}
    unsafe impl aya::Pod for super::DropEvent {}
    unsafe impl aya::Pod for super::TokenBucket {}
}
