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
    /// The IPv4 summary in front of the allowlist lookups (see [`super::summary`]).
    pub const SUMMARY_V4: &str = "GK_SUMMARY_V4";
    /// IPv4 bans: hash of `[u8; 4]` (network order) -> [`super::Ban`]; sized at load time
    /// (`max_bans`).
    pub const BANS_V4: &str = "GK_BANS_V4";
    /// IPv6 bans: hash of `[u8; 16]`, masked to `ban_ipv6_prefix` -> [`super::Ban`].
    pub const BANS_V6: &str = "GK_BANS_V6";
    /// IPv4 deny list: LPM trie of `[u8; 4]` (network order) -> [`super::RuleValue`].
    pub const DENY_V4: &str = "GK_DENY_V4";
    /// IPv6 deny list: LPM trie of `[u8; 16]` -> [`super::RuleValue`].
    pub const DENY_V6: &str = "GK_DENY_V6";
    /// The /24 bitmap in front of the IPv4 ban and deny lookups (see [`super::blocked`]).
    pub const BLOCKED_V4: &str = "GK_BLOCKED_V4";
    /// The same for IPv6, one bit per /24 (the top 24 bits of the address).
    pub const BLOCKED_V6: &str = "GK_BLOCKED_V6";
    /// Userspace bookkeeping for `BLOCKED_V4` (see [`super::blocked`]); the program never reads it.
    pub const BLOCKED_REFS: &str = "GK_BLOCKED_REFS";
    /// Per-source SYN token buckets, IPv4: an array of pairs of [`super::RateSlotV4`], two-way
    /// set associative by a hash of the source (see [`super::RateBucket`]); sized at load time.
    pub const RATE_V4: &str = "GK_RATE_V4";
    /// Per-source SYN token buckets, IPv6: LRU hash of `[u8; 16]` (masked like bans).
    /// The same for IPv6 sources masked like bans: an array of [`super::RateSlotV6`].
    pub const RATE_V6: &str = "GK_RATE_V6";
    /// IPv4 ban slots in front of `BANS_V4`: an array of [`super::BanBucketV4`] (see
    /// [`super::ban_slots`]); sized at load time (`max_bans` / 2 buckets, rounded up), mmapable.
    pub const BAN_SLOTS_V4: &str = "GK_BAN_SLOTS_V4";
    /// IPv6 ban slots in front of `BANS_V6`: an array of [`super::BanBucketV6`].
    pub const BAN_SLOTS_V6: &str = "GK_BAN_SLOTS_V6";
    /// Userspace bookkeeping: bans in force per family (`[IPv4, IPv6]`, slots and hash map
    /// together), so `max_bans` holds exactly; the program never reads it.
    pub const BAN_COUNT: &str = "GK_BAN_COUNT";
}

/// Name of the filter program in the eBPF object.
pub const PROGRAM_NAME: &str = "gatekeeper";
/// Global (`.rodata`) the loader sets to 1 when the kernel has `bpf_ktime_get_coarse_ns` (5.11+).
pub const COARSE_CLOCK_GLOBAL: &str = "GK_COARSE_CLOCK";
/// Global (`.rodata`) the loader sets to the number of values (pairs of slots) of each rate map.
pub const RATE_PAIRS_GLOBAL: &str = "GK_RATE_PAIRS";
/// Global (`.rodata`) the loader sets to the number of buckets of each ban slot map.
pub const BAN_BUCKETS_GLOBAL: &str = "GK_BAN_BUCKETS";

/// Largest number of entries each allowlist trie can hold (and of entry ids).
pub const ALLOWLIST_CAPACITY: u32 = 1 << 20;

/// The DIR-24-8 IPv4 lookup: a flat table indexed by the top 24 bits of the address, whose
/// entries either name the allowlist entry covering the whole /24, or name the one host of a /24
/// that holds a single /32 and nothing else ([`dir24::single`]), or point to a block of 256
/// entries for the other /24s that hold longer prefixes. At most two array reads per lookup,
/// whatever the list size.
pub mod dir24 {
    /// Entries of the first level: 2^24.
    pub const TBL24_ENTRIES: u32 = 1 << 24;
    /// Second-level blocks allocated by default (each 256 entries, 1 KiB): one is needed per /24
    /// that holds prefixes longer than /24, unless its only entry is one /32 ([`single`]).
    pub const DEFAULT_LONG_BLOCKS: u32 = 1 << 14;
    /// Set in a first-level entry whose low bits are a block index (and in a [`single`] entry).
    pub const LONG_FLAG: u32 = 1 << 31;
    /// Set in a first-level entry for a /24 whose only covering entry is one /32 (nothing
    /// shorter covers the rest of the /24): the entry holds the host's last octet and the
    /// entry's `id + 1` itself, so such a /24 needs no second-level block (a list of a million
    /// hosts, each in its own /24, would otherwise take a million 1 KiB blocks). See [`single`].
    pub const SINGLE_FLAG: u32 = 1 << 30;
    /// In a [`single`] entry: where the host's last octet starts (8 bits).
    pub const SINGLE_OCTET_SHIFT: u32 = 22;
    /// Always set in a [`single`] entry: a program that knows only [`LONG_FLAG`] reads the low 24
    /// bits as a block index past any pool (`MAX_DIR24_BLOCKS` is 2^20) and denies the /24,
    /// rather than reading someone else's block.
    pub const SINGLE_GUARD: u32 = 1 << 21;
    /// In a [`single`] entry: the host's `id + 1`.
    pub const SINGLE_VALUE_MASK: u32 = SINGLE_GUARD - 1;

    // Every id + 1 fits below the guard bit, and the octet above it, under the flags.
    const _: () = assert!(super::ALLOWLIST_CAPACITY <= SINGLE_VALUE_MASK);
    const _: () = assert!(SINGLE_GUARD < 1 << SINGLE_OCTET_SHIFT);
    const _: () = assert!(0xff << SINGLE_OCTET_SHIFT < SINGLE_FLAG);

    /// The first-level entry of a /24 that holds only the host `.octet`, resolving to `value`
    /// (`id + 1`); every other address of the /24 resolves to [`NONE`]:
    /// `LONG_FLAG | SINGLE_FLAG | octet << 22 | SINGLE_GUARD | value`.
    pub const fn single(octet: u8, value: u32) -> u32 {
        LONG_FLAG
            | SINGLE_FLAG
            | (octet as u32) << SINGLE_OCTET_SHIFT
            | SINGLE_GUARD
            | (value & SINGLE_VALUE_MASK)
    }

    /// What a [`single`] entry resolves address `addr` to (`addr`'s /24 is the entry's).
    #[inline(always)]
    pub const fn single_lookup(entry: u32, addr: u32) -> u32 {
        if (entry >> SINGLE_OCTET_SHIFT) & 0xff == addr & 0xff {
            entry & SINGLE_VALUE_MASK
        } else {
            NONE
        }
    }
    /// `0` means "no entry covers this address"; otherwise `id + 1`.
    pub const NONE: u32 = 0;
    /// In an `ENTRY` value: where the prefix length + 1 starts.
    pub const ENTRY_LEN_SHIFT: u32 = 56;
    /// In an `ENTRY` value: the hit counter bits.
    pub const ENTRY_HITS_MASK: u64 = (1 << ENTRY_LEN_SHIFT) - 1;
}

/// The IPv4 summary in front of the allowlist lookups: bitmaps with one bit per /16, /20 and /24
/// of the address space, a bit set while an allowlist entry covers at least one address of that
/// region. A clear bit means "no entry covers this source": the program denies it without touching
/// the allowlist tables, so a flood from everywhere reads a 128 KiB and a 2 MiB bitmap (cache
/// resident) instead of missing in a 64 MiB table or walking a trie. A set bit only means "look
/// further". The program reads the /20 then the /24 bitmap, or only the /16 bitmap when the map
/// was sized without the others (the trie-only load, [`summary::WORDS_WITHOUT_L20`]).
///
/// One array map of `u64` words, region by region, each region on its own pages (the values of an
/// mmapable array map start on a page and sit 8 bytes apart); userspace fills it through mmap:
///
/// | words | what | read by |
/// |---|---|---|
/// | `L16_BASE..` (8 KiB) | /16 bitmap: bit `a >> 16` of address `a` | program (trie-only load) |
/// | `META_BASE` | [`summary::FILLED`] (xor the layout filled) once userspace filled the map | userspace |
/// | `COUNTS_BASE..` (256 KiB) | per /16, how many entries cover part of it (`u32`s) | userspace |
/// | `L20_BASE..` (128 KiB) | /20 bitmap: bit `a >> 12` | program |
/// | `L24_BASE..` (2 MiB) | /24 bitmap: bit `a >> 8` | program |
pub mod summary {
    /// First word of the /16 bitmap.
    pub const L16_BASE: u32 = 0;
    /// Words of the /16 bitmap: 2^16 bits.
    pub const L16_WORDS: u32 = 1 << 10;
    /// The word that says whether userspace filled the map (a map the loader just created is
    /// all zeros, which would deny every source).
    pub const META_BASE: u32 = L16_BASE + L16_WORDS;
    /// First word of the per-/16 reference counts (two `u32` per word, the even /16 in the low
    /// half).
    pub const COUNTS_BASE: u32 = META_BASE + 512;
    /// Words of the reference counts.
    pub const COUNT_WORDS: u32 = (1 << 16) / 2;
    /// First word of the /20 bitmap.
    pub const L20_BASE: u32 = COUNTS_BASE + COUNT_WORDS;
    /// Words of the /20 bitmap: 2^20 bits.
    pub const L20_WORDS: u32 = 1 << 14;
    /// First word of the /24 bitmap.
    pub const L24_BASE: u32 = L20_BASE + L20_WORDS;
    /// Words of the /24 bitmap: 2^24 bits.
    pub const L24_WORDS: u32 = 1 << 18;
    /// Words of the whole map.
    pub const WORDS: u32 = L24_BASE + L24_WORDS;
    /// Words of the map without the /20 and /24 bitmaps (the trie-only load: userspace keeps them
    /// exact from the DIR-24-8 first level, which that load does not have).
    pub const WORDS_WITHOUT_L20: u32 = L20_BASE;
    /// The marker at `META_BASE` of a filled map (userspace xors in which levels it filled).
    pub const FILLED: u64 = 0x6761_7465_7375_6d31;

    // Each region starts on a page (512 words of 8 bytes): the /24 bitmap spans exactly 512
    // pages, the /20 bitmap 32.
    const _: () = assert!(
        META_BASE.is_multiple_of(512)
            && COUNTS_BASE.is_multiple_of(512)
            && L20_BASE.is_multiple_of(512)
            && L24_BASE.is_multiple_of(512)
    );
}

/// The /24 bitmaps in front of the ban and deny lookups, one per family: bit `r` is set while a
/// deny entry or a ban covers at least one address of the region `r` (the top 24 bits of the
/// address: an IPv4 /24, an IPv6 /24). A clear bit means "neither banned nor denied" and skips
/// both lookups; a set bit only means "look further", so userspace sets it *before* inserting an
/// entry and clears it *after* removing the last one.
///
/// Which regions still need their bit is decided by userspace from the deny trie itself (entries
/// of /24 and shorter: one trie lookup at /24) and from reference counts in `BLOCKED_REFS` for the
/// things smaller than a region (deny entries longer than /24, bans), kept per family and kind so
/// the deny side and the ban side, each under its own lock, never write the same count.
pub mod blocked {
    /// Words of each bitmap: 2^24 bits.
    pub const WORDS: u32 = 1 << 18;
    /// In a `BLOCKED_REFS` key: the region is in the low 24 bits, the kind above.
    pub const REF_KIND_SHIFT: u32 = 24;
    /// Kind of reference: an IPv4 deny entry longer than /24 inside the region.
    pub const REF_DENY: u32 = 0;
    /// Kind of reference: an IPv4 ban inside the region.
    pub const REF_BAN: u32 = 1;
    /// Kind of reference: an IPv6 deny entry longer than /24 inside the region.
    pub const REF_DENY_V6: u32 = 2;
    /// Kind of reference: an IPv6 ban inside the region.
    pub const REF_BAN_V6: u32 = 3;
}

/// Default size of each ban map (`max_bans`).
pub const DEFAULT_MAX_BANS: u32 = 100_000;
/// Default size of each rate-limit map (`rate_limit_sources`).
pub const DEFAULT_RATE_LIMIT_SOURCES: u32 = 65_536;
/// Largest number of entries each deny trie can hold.
pub const DENY_CAPACITY: u32 = 1 << 20;

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
    /// Bit `port % 64` of word `port / 64` set: the TCP port is judged.
    pub ports: [u64; PORT_BITMAP_WORDS],
    /// The judged ports whose policy is "open" (a subset of `ports`): every source except
    /// denied, banned and over-rate ones; the others are "allowlist" ports.
    pub open_ports: [u64; PORT_BITMAP_WORDS],
    /// Nanoseconds of credit one SYN costs on an open port (`1e9 / syn_rate`; 0: no limit).
    pub syn_interval_ns: u64,
    /// The bucket's capacity in nanoseconds (`syn_burst * syn_interval_ns`).
    pub syn_burst_ns: u64,
    /// Mask applied to IPv6 sources before the ban and rate lookups (`ban_ipv6_prefix`).
    pub ban_v6_mask: [u8; 16],
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
            open_ports: [0; PORT_BITMAP_WORDS],
            syn_interval_ns: 0,
            syn_burst_ns: 0,
            ban_v6_mask: v6_prefix_mask(64),
        }
    }

    pub fn protect(&mut self, port: u16) {
        self.ports[usize::from(port >> 6)] |= 1u64 << (port & 63);
    }

    pub fn is_protected(&self, port: u16) -> bool {
        self.ports[usize::from(port >> 6)] & (1u64 << (port & 63)) != 0
    }

    /// Judges `port` with the "open" policy (and protects it).
    pub fn open(&mut self, port: u16) {
        self.protect(port);
        self.open_ports[usize::from(port >> 6)] |= 1u64 << (port & 63);
    }

    pub fn is_open(&self, port: u16) -> bool {
        self.open_ports[usize::from(port >> 6)] & (1u64 << (port & 63)) != 0
    }
}

/// The mask keeping the first `prefix_len` bits of an IPv6 address (`prefix_len` above 128 counts
/// as 128).
pub const fn v6_prefix_mask(prefix_len: u32) -> [u8; 16] {
    let mut mask = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        let bits = prefix_len.saturating_sub(i as u32 * 8);
        mask[i] = if bits >= 8 { 0xff } else { !(0xffu8 >> bits) };
        i += 1;
    }
    mask
}

/// Value of a ban: the source is dropped while the program's clock is before `deadline_ns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Ban {
    /// `CLOCK_MONOTONIC` nanoseconds (what `bpf_ktime_get_ns` reads; the coarse clock the program
    /// reads on 5.11+ lags it by at most a tick). An expired entry is ignored until swept.
    pub deadline_ns: u64,
    /// Segments dropped (or counted, in monitor mode) by this ban (bumped atomically).
    pub hits: u64,
}

/// The ban slots: a two-choice, 4-way set-associative table per family in front of the ban hash
/// maps, because an array read costs a fraction of a kernel hash lookup (jhash, bucket walk,
/// memcmp; docs/benchmarks.md). A source's two hashes name two buckets of [`BAN_WAYS`] slots;
/// userspace (the only writer) puts a new ban in the one with more free slots. When both are full
/// the ban goes to the hash map (`BANS_V4`/`BANS_V6`) and both buckets count it in `overflow`:
/// the program looks in the hash map only when the source's first bucket has a non-zero count.
/// With `max_bans / 2` buckets a full table fills at most half the slots, so that is rare.
///
/// Userspace writes single fields, in an order that lets a program run see either no ban or a
/// whole one (IPv4: deadline, hits, then the key; IPv6: key, hits, then the deadline), extends a
/// ban with one 8-byte store of the deadline, and lifts it by clearing the key (IPv4) or the
/// deadline (IPv6). A freed slot records when it was freed and is not reused for
/// [`ban_slots::QUARANTINE_NS`], so a run that matched the old key never reads a new ban's
/// deadline.
pub mod ban_slots {
    /// Slots per bucket.
    pub const WAYS: usize = 4;
    /// A freed slot is not reused for this long (a program run lasts microseconds).
    pub const QUARANTINE_NS: u64 = 1_000_000_000;

    /// The key of a used IPv4 slot for `addr` (`u32::from_ne_bytes(octets)`): bit 0 set. A free
    /// slot's key has bit 0 clear (its other bits: when it was freed, `CLOCK_MONOTONIC` ns).
    #[inline(always)]
    pub const fn v4_key(addr: u32) -> u64 {
        ((addr as u64) << 32) | 1
    }

    /// The two candidate buckets of an IPv4 source (`addr` = `u32::from_ne_bytes(octets)`).
    #[inline(always)]
    pub const fn buckets_v4(addr: u32, buckets: u32) -> (u32, u32) {
        let first = addr.wrapping_mul(0x9e37_79b1);
        let second = addr.rotate_left(16).wrapping_mul(0x85eb_ca6b);
        (scale(first, buckets), scale(second, buckets))
    }

    /// The two candidate buckets of a masked IPv6 source (`key`: its two native-endian halves).
    #[inline(always)]
    pub const fn buckets_v6(key: [u64; 2], buckets: u32) -> (u32, u32) {
        let folded = key[0] ^ key[1].rotate_left(29);
        let first = (folded.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as u32;
        let second = (folded.wrapping_mul(0xc2b2_ae3d_27d4_eb4f) >> 32) as u32;
        (scale(first, buckets), scale(second, buckets))
    }

    /// A masked IPv6 source as the slots key it: two native-endian `u64`.
    #[inline(always)]
    pub fn v6_key(source: &[u8; 16]) -> [u64; 2] {
        let mut high = [0u8; 8];
        let mut low = [0u8; 8];
        high.copy_from_slice(&source[..8]);
        low.copy_from_slice(&source[8..]);
        [u64::from_ne_bytes(high), u64::from_ne_bytes(low)]
    }

    /// `hash * buckets / 2^32`: any bucket count, no division.
    #[inline(always)]
    const fn scale(hash: u32, buckets: u32) -> u32 {
        ((hash as u64 * buckets as u64) >> 32) as u32
    }

    /// Buckets of each family's slot map for a table of `max_bans` bans: 8 slots (two buckets)
    /// for every 4 bans, so a full table fills half of them.
    pub const fn buckets_for(max_bans: u32) -> u32 {
        let bans = if max_bans < 2 { 2 } else { max_bans };
        bans.div_ceil(2)
    }
}

/// One bucket of `BAN_SLOTS_V4` (see [`ban_slots`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BanBucketV4 {
    /// [`ban_slots::v4_key`] of the banned source, or a free slot (bit 0 clear).
    pub keys: [u64; ban_slots::WAYS],
    /// `CLOCK_MONOTONIC` ns, as in [`Ban`].
    pub deadlines: [u64; ban_slots::WAYS],
    /// Segments dropped (or counted) by the ban (bumped atomically).
    pub hits: [u64; ban_slots::WAYS],
    /// Bans of sources with this bucket as a candidate that live in the hash map.
    pub overflow: u64,
}

/// One bucket of `BAN_SLOTS_V6` (see [`ban_slots`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BanBucketV6 {
    /// The masked source ([`ban_slots::v6_key`]); meaningful only while the deadline is not 0.
    pub keys: [[u64; 2]; ban_slots::WAYS],
    /// `CLOCK_MONOTONIC` ns; 0: a free slot (no real deadline is 0).
    pub deadlines: [u64; ban_slots::WAYS],
    /// Segments dropped (or counted); in a free slot, when it was freed.
    pub hits: [u64; ban_slots::WAYS],
    pub overflow: u64,
}

/// Value of a deny entry in the deny tries.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RuleValue {
    /// Segments dropped (or counted, in monitor mode) by this entry (bumped atomically).
    pub hits: u64,
}

/// Per-source SYN token bucket on open ports, in nanoseconds of credit: one SYN costs
/// `syn_interval_ns`, elapsed time refills, capacity `syn_burst_ns`. Updated by every CPU without
/// a lock: concurrent SYNs of one source may both spend the same credit (approximate, never
/// unsafe).
///
/// The buckets live in array maps, two-way set associative: a source's hash names a pair of
/// slots; a source in neither takes the one used least recently, with a full bucket. An array
/// read costs a few instructions where an LRU hash lookup costs tens of nanoseconds (measured,
/// docs/benchmarks.md); memory stays fixed whatever the flood, as with an LRU map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RateBucket {
    pub tokens_ns: u64,
    /// Clock of the last SYN; 0: the slot is free.
    pub last_ns: u64,
}

/// One IPv4 slot of `RATE_V4`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RateSlotV4 {
    pub source: [u8; 4],
    pub _pad: u32,
    pub bucket: RateBucket,
}

/// One IPv6 slot of `RATE_V6` (the source masked to the ban prefix).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RateSlotV6 {
    pub source: [u8; 16],
    pub bucket: RateBucket,
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
    /// TCP to a judged port from a banned source (deadline in the future): dropped (or counted).
    Banned = 11,
    /// TCP to a judged port from a source in the deny list: dropped (or counted).
    #[strum(serialize = "denied_list")]
    DeniedList = 12,
    /// A SYN to an open port from a source over its rate: dropped (or counted).
    RateLimited = 13,
    /// TCP to an open port from a source outside the allowlist, neither denied, banned nor over
    /// its rate: passed.
    #[strum(serialize = "passed_open")]
    PassedOpen = 14,
}

/// Counters per (slot, family); a power of two so the index is a shift.
pub const COUNTERS_PER_FAMILY: u32 = 16;
/// Counters in use, from the enum itself.
pub const COUNTER_COUNT: u32 = <Counter as strum::EnumCount>::COUNT as u32;
// Every counter's index fits its family's block.
const _: () = assert!(COUNTER_COUNT <= COUNTERS_PER_FAMILY);
const _: () = assert!(Counter::PassedOpen as u32 == COUNTER_COUNT - 1);
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
    /// Which rule dropped it: one of [`rule`].
    pub rule: u32,
}

/// The rule named in a [`DropEvent`].
pub mod rule {
    /// Not in the allowlist of an allowlist port (counter `dropped`).
    pub const ALLOWLIST: u32 = 0;
    /// In the deny list (counter `denied_list`).
    pub const DENIED_LIST: u32 = 1;
    /// Banned (counter `banned`).
    pub const BANNED: u32 = 2;
    /// Over its SYN rate on an open port (counter `rate_limited`).
    pub const RATE_LIMITED: u32 = 3;

    /// The counter name an operator knows the rule by.
    pub const fn name(rule: u32) -> &'static str {
        match rule {
            DENIED_LIST => "denied_list",
            BANNED => "banned",
            RATE_LIMITED => "rate_limited",
            _ => "dropped",
        }
    }
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
    unsafe impl aya::Pod for super::Ban {}
    unsafe impl aya::Pod for super::RuleValue {}
    unsafe impl aya::Pod for super::RateBucket {}
    unsafe impl aya::Pod for super::RateSlotV4 {}
    unsafe impl aya::Pod for super::RateSlotV6 {}
    unsafe impl aya::Pod for super::BanBucketV4 {}
    unsafe impl aya::Pod for super::BanBucketV6 {}
}
