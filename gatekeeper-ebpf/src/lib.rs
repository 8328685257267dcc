//! The gatekeeper XDP program's logic and maps. `src/main.rs` is the production object (only the
//! `gatekeeper` program); `gatekeeper-ebpf-bench` links the same code into the benchmark object.
//!
//! Judges exactly one kind of packet: a TCP segment to a judged port. A banned source (deadline in
//! the future) or one in the deny list is dropped on every judged port; otherwise the port's policy
//! decides: on an "allowlist" port the source must be in the IPv4 or IPv6 allowlist, on an "open"
//! port every source passes except one whose SYNs exceed its per-source rate (allowlisted sources
//! are never limited). A refused frame is dropped (enforce mode) or counted under its rule's counter
//! and passed (monitor mode) before the kernel allocates anything for it. Every other frame (ARP, neighbour discovery,
//! UDP, other TCP ports, ...) passes untouched, so the filter can never cut the host off its
//! network. Work per packet is bounded: at most two VLAN tags and eight IPv6 extension headers are
//! walked; a frame that needs more and could be TCP to a protected port is dropped (fail closed).
#![no_std]
// Atomic add on map values needs BPF inline assembly (core's atomics lack fetch_add here).
#![feature(asm_experimental_arch)]

mod parse;

use aya_ebpf::{
    Global,
    bindings::{
        BPF_F_MMAPABLE, BPF_F_NO_PREALLOC,
        xdp_action::{XDP_DROP, XDP_PASS},
    },
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::XdpContext,
};
use gatekeeper_common::{
    ALLOWLIST_CAPACITY, Ban, BanBucketV4, BanBucketV6, COUNTER_ENTRIES, Counter, DEFAULT_MAX_BANS,
    DEFAULT_RATE_LIMIT_SOURCES, DENY_CAPACITY, DropEvent, Family, FilterConfig, IFINDEX_LIMIT,
    LOOKUP_DIR24, MAX_IFACE_SLOTS, Mode, RateBucket, RateSlotV4, RateSlotV6, RuleValue,
    TokenBucket, ban_slots, blocked, counter_index, dir24, rule, summary,
};
use parse::{Judged, Segment};

use gatekeeper_common::AllowValue;

#[map(name = "GK_ALLOW_V4")]
static ALLOW_V4: LpmTrie<[u8; 4], AllowValue> = LpmTrie::with_max_entries(ALLOWLIST_CAPACITY, 0);

#[map(name = "GK_ALLOW_V6")]
static ALLOW_V6: LpmTrie<[u8; 16], AllowValue> = LpmTrie::with_max_entries(ALLOWLIST_CAPACITY, 0);

// DIR-24-8 (see gatekeeper_common::dir24). Userspace sizes these at load time (one entry each when
// the trie serves IPv4) and fills them through mmap. Array values sit 8 bytes apart, so each
// `u64` holds two `u32` table entries: the even one in the low half.
#[map(name = "GK_DIR24")]
static DIR24: Array<u64> = Array::with_max_entries(dir24::TBL24_ENTRIES / 2, BPF_F_MMAPABLE);

#[map(name = "GK_DIR24_LONG")]
static DIR24_LONG: Array<u64> =
    Array::with_max_entries(dir24::DEFAULT_LONG_BLOCKS * 128, BPF_F_MMAPABLE);

/// The IPv4 summary (see gatekeeper_common::summary): sized at load time like the DIR-24-8 tables.
#[map(name = "GK_SUMMARY_V4")]
static SUMMARY_V4: Array<u64> = Array::with_max_entries(summary::WORDS, BPF_F_MMAPABLE);

/// Entry id -> prefix length and DIR-24-8 hit counter (see `map_names::ENTRY`).
#[map(name = "GK_ENTRY")]
static ENTRY: Array<u64> = Array::with_max_entries(ALLOWLIST_CAPACITY, BPF_F_MMAPABLE);

// Bans, deny lists, SYN buckets (see gatekeeper_common::map_names). The ban and rate maps are
// sized at load time from the config (`max_bans`, `rate_limit_sources`).
#[map(name = "GK_BANS_V4")]
static BANS_V4: HashMap<[u8; 4], Ban> =
    HashMap::with_max_entries(DEFAULT_MAX_BANS, BPF_F_NO_PREALLOC);

#[map(name = "GK_BANS_V6")]
static BANS_V6: HashMap<[u8; 16], Ban> =
    HashMap::with_max_entries(DEFAULT_MAX_BANS, BPF_F_NO_PREALLOC);

// The ban slots in front of the ban hash maps (see gatekeeper_common::ban_slots): sized at load
// time with the global below, written by userspace through mmap.
#[map(name = "GK_BAN_SLOTS_V4")]
static BAN_SLOTS_V4: Array<BanBucketV4> =
    Array::with_max_entries(ban_slots::buckets_for(DEFAULT_MAX_BANS), BPF_F_MMAPABLE);

#[map(name = "GK_BAN_SLOTS_V6")]
static BAN_SLOTS_V6: Array<BanBucketV6> =
    Array::with_max_entries(ban_slots::buckets_for(DEFAULT_MAX_BANS), BPF_F_MMAPABLE);

/// Buckets of each ban slot map: the loader sets it to the maps' size (`.rodata`).
#[unsafe(no_mangle)]
static GK_BAN_BUCKETS: Global<u32> = Global::new(ban_slots::buckets_for(DEFAULT_MAX_BANS));

/// Userspace's count of bans per family (`max_bans` is exact); the program never reads it.
#[map(name = "GK_BAN_COUNT")]
static BAN_COUNT: Array<u64> = Array::with_max_entries(2, 0);

#[map(name = "GK_DENY_V4")]
static DENY_V4: LpmTrie<[u8; 4], RuleValue> = LpmTrie::with_max_entries(DENY_CAPACITY, 0);

#[map(name = "GK_DENY_V6")]
static DENY_V6: LpmTrie<[u8; 16], RuleValue> = LpmTrie::with_max_entries(DENY_CAPACITY, 0);

/// The /24 bitmap in front of the IPv4 ban and deny lookups (see gatekeeper_common::blocked).
#[map(name = "GK_BLOCKED_V4")]
static BLOCKED_V4: Array<u64> = Array::with_max_entries(blocked::WORDS, BPF_F_MMAPABLE);

/// The same for IPv6 sources (by their top 24 bits).
#[map(name = "GK_BLOCKED_V6")]
static BLOCKED_V6: Array<u64> = Array::with_max_entries(blocked::WORDS, BPF_F_MMAPABLE);

/// Userspace's reference counts for `GK_BLOCKED_V4` and `GK_BLOCKED_V6`. The program never reads them; the map is in
/// the object so the loader creates and pins it with the others (an exported map symbol is kept).
#[map(name = "GK_BLOCKED_REFS")]
static BLOCKED_REFS: HashMap<u32, u32> =
    HashMap::with_max_entries(DEFAULT_MAX_BANS + DENY_CAPACITY, BPF_F_NO_PREALLOC);

// One value per pair of slots: one array read per SYN.
#[map(name = "GK_RATE_V4")]
static RATE_V4: Array<[RateSlotV4; 2]> = Array::with_max_entries(DEFAULT_RATE_LIMIT_SOURCES / 2, 0);

#[map(name = "GK_RATE_V6")]
static RATE_V6: Array<[RateSlotV6; 2]> = Array::with_max_entries(DEFAULT_RATE_LIMIT_SOURCES / 2, 0);

/// Pairs of slots (values) of each rate map: the loader sets it to the maps' size (`.rodata`,
/// known to the verifier). An index past a map's end only finds no slot (the SYN passes).
#[unsafe(no_mangle)]
static GK_RATE_PAIRS: Global<u32> = Global::new(DEFAULT_RATE_LIMIT_SOURCES / 2);

#[map(name = "GK_CONFIG")]
static CONFIG: Array<FilterConfig> = Array::with_max_entries(2, 0);

#[map(name = "GK_CONFIG_SEL")]
static CONFIG_SELECTOR: Array<u32> = Array::with_max_entries(1, 0);

#[map(name = "GK_IFACE_SLOTS")]
static IFACE_SLOTS: Array<u32> = Array::with_max_entries(IFINDEX_LIMIT, 0);

#[map(name = "GK_COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_ENTRIES, 0);

#[map(name = "GK_EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// 1 when the kernel has `bpf_ktime_get_coarse_ns` (Linux 5.11 and later): the loader sets it
/// from a probe (`COARSE_CLOCK_GLOBAL`). It lands in `.rodata`, which the kernel freezes, so
/// the verifier knows its value and never visits the other branch: a 5.10 kernel never sees the
/// call to a helper it lacks. 0 (the precise clock, every kernel) unless the loader says so.
#[unsafe(no_mangle)]
static GK_COARSE_CLOCK: Global<u32> = Global::new(0);

#[map(name = "GK_EVENT_BUCKET")]
static EVENT_BUCKET: PerCpuArray<TokenBucket> = PerCpuArray::with_max_entries(1, 0);

// Everything below is `#[inline(always)]`: shared BPF subprograms between several entry points
// trip the loader, and inlining keeps each program one straight verified function.

/// Judges one frame: the whole program. Entry points (`gatekeeper` in `main.rs`, the benchmark
/// twins) call only this.
#[inline(always)]
pub fn filter(ctx: &XdpContext) -> u32 {
    let Some(config) = active_config() else {
        // Unreachable for array maps; passing keeps the host reachable if it ever happened.
        return XDP_PASS;
    };
    let slot = iface_slot(ctx);
    let judged = parse::judge(ctx, &|port| config.is_protected(port));
    let verdict = decide(&judged, config);
    count(slot, verdict.family, verdict.counter);
    if let Some(segment) = verdict.report {
        report_drop(ctx, segment, config, slot, verdict.rule, verdict.now);
    }
    verdict.action
}

/// What to do with a frame, what to count, and whether to report it as a drop event.
struct Verdict<'a> {
    family: Family,
    counter: Counter,
    action: u32,
    /// Set only for dropped (or, in monitor mode, would-be-dropped) SYNs when events are on.
    report: Option<&'a Segment>,
    /// The rule a reported segment broke (`gatekeeper_common::rule`).
    rule: u32,
    /// The clock, when a rule read it (0: not read); the drop event's token bucket reuses it.
    now: u64,
}

#[inline(always)]
fn decide<'a>(judged: &'a Judged, config: &FilterConfig) -> Verdict<'a> {
    let enforce = config.mode != Mode::Monitor as u32;
    match judged {
        Judged::Pass(family, counter) => passed(*family, *counter),
        Judged::Unjudgeable(family) => Verdict {
            family: *family,
            counter: Counter::Unjudgeable,
            action: if enforce { XDP_DROP } else { XDP_PASS },
            report: None,
            rule: rule::ALLOWLIST,
            now: 0,
        },
        // The segment's fields are read only in this arm: elsewhere they were never written, and
        // kernels before 6.3 (5.10, 6.1 point releases) refuse a read of unwritten stack even
        // when its value is then ignored, as a flattened `a && b && segment.syn_only` would do.
        Judged::Segment(segment) => judge_segment(segment, config, enforce),
    }
}

#[inline(always)]
fn passed<'a>(family: Family, counter: Counter) -> Verdict<'a> {
    Verdict {
        family,
        counter,
        action: XDP_PASS,
        report: None,
        rule: rule::ALLOWLIST,
        now: 0,
    }
}

/// Ban, then deny list, then the port's policy: bans and deny entries win over allow entries.
#[inline(always)]
fn judge_segment<'a>(segment: &'a Segment, config: &FilterConfig, enforce: bool) -> Verdict<'a> {
    let mut clock = Clock(0);
    let (counter, rule) = match blocked_rule(segment, config, &mut clock) {
        Some(blocked) => blocked,
        None => {
            if allowed(segment, config) {
                return passed(segment.family, Counter::Allowed);
            }
            if !config.is_open(segment.dest_port) {
                let counter = if enforce {
                    Counter::Dropped
                } else {
                    Counter::WouldDrop
                };
                (counter, rule::ALLOWLIST)
            } else if segment.syn_only
                && config.syn_interval_ns != 0
                && !within_rate(segment, config, &mut clock)
            {
                (Counter::RateLimited, rule::RATE_LIMITED)
            } else {
                return passed(segment.family, Counter::PassedOpen);
            }
        }
    };
    let report = (config.event_interval_ns != 0 && segment.syn_only).then_some(segment);
    Verdict {
        family: segment.family,
        counter,
        action: if enforce { XDP_DROP } else { XDP_PASS },
        report,
        rule,
        now: clock.0,
    }
}

/// The ban or deny entry that refuses the source, if any (bumping its hit counter). For IPv4 the
/// /24 bitmap answers first: a clear bit means no ban or deny entry touches the source's /24.
#[inline(always)]
fn blocked_rule(
    segment: &Segment,
    config: &FilterConfig,
    clock: &mut Clock,
) -> Option<(Counter, u32)> {
    match segment.family {
        Family::Ipv4 => {
            let mut v4 = [0u8; 4];
            v4.copy_from_slice(&segment.source[..4]);
            let addr = u32::from_be_bytes(v4);
            if !region_flagged(&BLOCKED_V4, addr >> 8) {
                return None;
            }
            if banned_v4(v4, clock) {
                return Some((Counter::Banned, rule::BANNED));
            }
            let value = DENY_V4.get(Key::new(32, v4))?;
            atomic_add(&value.hits, 1);
            Some((Counter::DeniedList, rule::DENIED_LIST))
        }
        _ => {
            let region = (u32::from(segment.source[0]) << 16)
                | (u32::from(segment.source[1]) << 8)
                | u32::from(segment.source[2]);
            if !region_flagged(&BLOCKED_V6, region) {
                return None;
            }
            if banned_v6(masked_v6_words(segment, config), clock) {
                return Some((Counter::Banned, rule::BANNED));
            }
            let value = DENY_V6.get(Key::new(128, segment.source))?;
            atomic_add(&value.hits, 1);
            Some((Counter::DeniedList, rule::DENIED_LIST))
        }
    }
}

/// What the source's two ban buckets say.
enum Probe {
    /// The source's slot: its deadline and hit counter.
    Slot(u64, *const u64),
    /// Not in its buckets, but the hash map may hold it (its first bucket counts an overflow).
    Overflow,
    Absent,
}

/// Whether an IPv4 source is banned: its two buckets, then the hash map only when the first
/// bucket says a ban overflowed there.
#[inline(always)]
fn banned_v4(v4: [u8; 4], clock: &mut Clock) -> bool {
    match probe_v4(u32::from_ne_bytes(v4)) {
        Probe::Slot(deadline, hits) => slot_in_force(deadline, hits, clock),
        Probe::Absent => false,
        Probe::Overflow => match BANS_V4.get_ptr_mut(v4) {
            Some(ban) => ban_in_force(ban, clock),
            None => false,
        },
    }
}

/// One 8-byte key load decides whether a slot holds the source (userspace stores the key last
/// and frees a slot by clearing its bit 0); the deadline read next is stable (quarantine).
#[inline(always)]
fn probe_v4(addr: u32) -> Probe {
    let want = ban_slots::v4_key(addr);
    let (first, second) = ban_slots::buckets_v4(addr, GK_BAN_BUCKETS.load());
    // An index past the map's end cannot happen (the loader sizes the maps and the global
    // together); if it did, the hash map answers, so no ban is missed.
    let Some(a) = BAN_SLOTS_V4.get(first) else {
        return Probe::Overflow;
    };
    for i in 0..ban_slots::WAYS {
        if a.keys[i] == want {
            return Probe::Slot(a.deadlines[i], &a.hits[i]);
        }
    }
    let Some(b) = BAN_SLOTS_V4.get(second) else {
        return Probe::Overflow;
    };
    for i in 0..ban_slots::WAYS {
        if b.keys[i] == want {
            return Probe::Slot(b.deadlines[i], &b.hits[i]);
        }
    }
    if a.overflow != 0 {
        Probe::Overflow
    } else {
        Probe::Absent
    }
}

/// The same for an IPv6 source masked to the ban prefix.
#[inline(always)]
fn banned_v6(words: [u64; 2], clock: &mut Clock) -> bool {
    match probe_v6(words) {
        Probe::Slot(deadline, hits) => slot_in_force(deadline, hits, clock),
        Probe::Absent => false,
        Probe::Overflow => {
            let mut key = [0u8; 16];
            key[..8].copy_from_slice(&words[0].to_ne_bytes());
            key[8..].copy_from_slice(&words[1].to_ne_bytes());
            match BANS_V6.get_ptr_mut(key) {
                Some(ban) => ban_in_force(ban, clock),
                None => false,
            }
        }
    }
}

/// A slot is used while its deadline is not 0, which userspace stores after the key.
#[inline(always)]
fn probe_v6(want: [u64; 2]) -> Probe {
    let (first, second) = ban_slots::buckets_v6(want, GK_BAN_BUCKETS.load());
    let Some(a) = BAN_SLOTS_V6.get(first) else {
        return Probe::Overflow;
    };
    for i in 0..ban_slots::WAYS {
        let deadline = a.deadlines[i];
        if deadline != 0 && a.keys[i] == want {
            return Probe::Slot(deadline, &a.hits[i]);
        }
    }
    let Some(b) = BAN_SLOTS_V6.get(second) else {
        return Probe::Overflow;
    };
    for i in 0..ban_slots::WAYS {
        let deadline = b.deadlines[i];
        if deadline != 0 && b.keys[i] == want {
            return Probe::Slot(deadline, &b.hits[i]);
        }
    }
    if a.overflow != 0 {
        Probe::Overflow
    } else {
        Probe::Absent
    }
}

/// [`ban_in_force`] for a slot.
#[inline(always)]
fn slot_in_force(deadline: u64, hits: *const u64, clock: &mut Clock) -> bool {
    if clock.now() >= deadline {
        return false;
    }
    // SAFETY: points into an array map value, valid for the whole program run.
    atomic_add(unsafe { &*hits }, 1);
    true
}

/// Whether a deny entry or a ban touches region `region` (the source's top 24 bits).
#[inline(always)]
fn region_flagged(bitmap: &Array<u64>, region: u32) -> bool {
    match bitmap.get(region >> 6) {
        Some(word) => (*word >> (region & 63)) & 1 != 0,
        // Unreachable (the index is below the map's size); look further if it ever happened.
        None => true,
    }
}

/// Whether the ban's deadline is still ahead (bumping its hit counter if so). An expired entry
/// changes nothing: it only waits for the daemon's sweep.
#[inline(always)]
fn ban_in_force(ban: *mut Ban, clock: &mut Clock) -> bool {
    // SAFETY: a pointer into a map value the kernel keeps valid for this program run (the ban
    // maps are not preallocated, so an entry removed meanwhile is freed only after an RCU grace
    // period).
    let ban = unsafe { &*ban };
    if clock.now() >= ban.deadline_ns {
        return false;
    }
    atomic_add(&ban.hits, 1);
    true
}

/// The IPv6 source cut to the ban prefix: the key of the ban and rate maps.
#[inline(always)]
fn masked_v6(segment: &Segment, config: &FilterConfig) -> [u8; 16] {
    let [high, low] = masked_v6_words(segment, config);
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&high.to_ne_bytes());
    key[8..].copy_from_slice(&low.to_ne_bytes());
    key
}

/// The same as two native-endian words (the ban slots' key): two 8-byte loads and masks instead
/// of sixteen byte loads, masks and shifts (`Segment` and `FilterConfig` keep both aligned).
#[inline(always)]
fn masked_v6_words(segment: &Segment, config: &FilterConfig) -> [u64; 2] {
    let source = ban_slots::v6_key(&segment.source);
    // The optimizer does not carry the map value's alignment to this field: read it as words.
    const _: () = assert!(core::mem::offset_of!(FilterConfig, ban_v6_mask) % 8 == 0);
    let mask = config.ban_v6_mask.as_ptr().cast::<u64>();
    // SAFETY: the 16 bytes of the mask, 8-aligned (asserted above; the config is a map value,
    // which the kernel aligns to 8).
    let mask = unsafe { [mask.read(), mask.add(1).read()] };
    [source[0] & mask[0], source[1] & mask[1]]
}

/// Spends one SYN's credit from the source's bucket; false when it has too little (over the rate).
#[inline(always)]
fn within_rate(segment: &Segment, config: &FilterConfig, clock: &mut Clock) -> bool {
    let now = clock.now();
    match segment.family {
        Family::Ipv4 => {
            let mut v4 = [0u8; 4];
            v4.copy_from_slice(&segment.source[..4]);
            let hash = u32::from_ne_bytes(v4).wrapping_mul(0x9e37_79b1);
            let Some(pair) = RATE_V4.get_ptr_mut(pair_index(hash)) else {
                return true;
            };
            // SAFETY: a pointer into an array map value valid for this program run; racing CPUs
            // only make the buckets approximate.
            let [a, b] = unsafe { &mut *pair };
            let slot = if a.source == v4 && a.bucket.last_ns != 0 {
                a
            } else if b.source == v4 && b.bucket.last_ns != 0 {
                b
            } else {
                let victim = if a.bucket.last_ns <= b.bucket.last_ns {
                    a
                } else {
                    b
                };
                victim.source = v4;
                return fresh_bucket(&mut victim.bucket, config, now);
            };
            spend(&mut slot.bucket, config, now)
        }
        _ => {
            let key = masked_v6(segment, config);
            let mut high = [0u8; 8];
            let mut low = [0u8; 8];
            high.copy_from_slice(&key[..8]);
            low.copy_from_slice(&key[8..]);
            let folded = u64::from_ne_bytes(high) ^ u64::from_ne_bytes(low).rotate_left(29);
            let hash = (folded.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as u32;
            let Some(pair) = RATE_V6.get_ptr_mut(pair_index(hash)) else {
                return true;
            };
            // SAFETY: as for IPv4.
            let [a, b] = unsafe { &mut *pair };
            let slot = if a.source == key && a.bucket.last_ns != 0 {
                a
            } else if b.source == key && b.bucket.last_ns != 0 {
                b
            } else {
                let victim = if a.bucket.last_ns <= b.bucket.last_ns {
                    a
                } else {
                    b
                };
                victim.source = key;
                return fresh_bucket(&mut victim.bucket, config, now);
            };
            spend(&mut slot.bucket, config, now)
        }
    }
}

/// The pair of slots `hash` names: `hash * pairs / 2^32`, without a division.
#[inline(always)]
fn pair_index(hash: u32) -> u32 {
    let pairs = GK_RATE_PAIRS.load();
    ((u64::from(hash) * u64::from(pairs)) >> 32) as u32
}

/// A source seen for the first time (or again after its slot was taken) starts with a full bucket
/// and spends one SYN from it.
#[inline(always)]
fn fresh_bucket(bucket: &mut RateBucket, config: &FilterConfig, now: u64) -> bool {
    bucket.tokens_ns = config.syn_burst_ns.saturating_sub(config.syn_interval_ns);
    // 0 marks a free slot; the clock is never 0 in practice, this keeps it so.
    bucket.last_ns = now | 1;
    true
}

/// The token bucket in nanoseconds: elapsed time refills it up to `syn_burst_ns`, a SYN costs
/// `syn_interval_ns`; no division on the packet path.
#[inline(always)]
fn spend(bucket: &mut RateBucket, config: &FilterConfig, now: u64) -> bool {
    let cost = config.syn_interval_ns;
    let elapsed = now.saturating_sub(bucket.last_ns);
    let tokens = bucket
        .tokens_ns
        .saturating_add(elapsed)
        .min(config.syn_burst_ns);
    bucket.last_ns = now | 1;
    if tokens < cost {
        bucket.tokens_ns = tokens;
        return false;
    }
    bucket.tokens_ns = tokens - cost;
    true
}

/// Looks the source up in its family's allowlist, bumping the matching entry's hit counter.
#[inline(always)]
fn allowed(segment: &Segment, config: &FilterConfig) -> bool {
    let value = match segment.family {
        Family::Ipv4 => {
            let mut v4 = [0u8; 4];
            v4.copy_from_slice(&segment.source[..4]);
            let addr = u32::from_be_bytes(v4);
            if !v4_may_be_listed(addr) {
                return false;
            }
            if config.v4_lookup == LOOKUP_DIR24 {
                return dir24_allowed(addr);
            }
            ALLOW_V4.get(Key::new(32, v4))
        }
        _ => ALLOW_V6.get(Key::new(128, segment.source)),
    };
    match value {
        Some(value) => {
            atomic_add(&value.hits, 1);
            true
        }
        None => false,
    }
}

/// False when the summary says no allowlist entry covers any address of `addr`'s /20 and /24 (or,
/// in a map sized without them, its /16): a source nobody listed is denied from a 128 KiB and a
/// 2 MiB bitmap that stay in the caches, instead of a miss in the 64 MiB table or a trie walk.
/// True means "look it up". (docs/benchmarks.md has the measurements behind the choice of levels.)
#[inline(always)]
fn v4_may_be_listed(addr: u32) -> bool {
    if let Some(word) = SUMMARY_V4.get(summary::L20_BASE + (addr >> 18)) {
        if (*word >> ((addr >> 12) & 63)) & 1 == 0 {
            return false;
        }
        let Some(word) = SUMMARY_V4.get(summary::L24_BASE + (addr >> 14)) else {
            return true;
        };
        return (*word >> ((addr >> 8) & 63)) & 1 != 0;
    }
    // The trie-only load: the map ends before the /20 bitmap.
    let Some(word) = SUMMARY_V4.get(summary::L16_BASE + (addr >> 22)) else {
        return true;
    };
    (*word >> ((addr >> 16) & 63)) & 1 != 0
}

/// DIR-24-8: the /24's entry; for a /24 holding a single host, that host's entry if the address
/// is the host; for other /24s holding longer prefixes the address's entry in its block. At most
/// two inlined array reads whatever the list size.
#[inline(always)]
fn dir24_allowed(addr: u32) -> bool {
    let Some(first) = table_entry(&DIR24, addr >> 8) else {
        return false;
    };
    let mut entry = first;
    // Checked first: a single-host entry also carries LONG_FLAG (see `dir24::SINGLE_GUARD`).
    if entry & dir24::SINGLE_FLAG != 0 {
        entry = dir24::single_lookup(entry, addr);
    } else if entry & dir24::LONG_FLAG != 0 {
        let index = ((entry & !dir24::LONG_FLAG) << 8) | (addr & 0xff);
        let Some(second) = table_entry(&DIR24_LONG, index) else {
            return false;
        };
        entry = second;
    }
    if entry == dir24::NONE {
        return false;
    }
    if let Some(counter) = ENTRY.get(entry - 1) {
        atomic_add(counter, 1);
    }
    true
}

/// Entry `index` of a table stored two `u32` per `u64` map value.
#[inline(always)]
fn table_entry(table: &Array<u64>, index: u32) -> Option<u32> {
    let pair = *table.get(index >> 1)?;
    Some(if index & 1 == 0 {
        pair as u32
    } else {
        (pair >> 32) as u32
    })
}

/// `lock *(u64 *)(counter) += n`: the entry is shared by every CPU.
#[inline(always)]
fn atomic_add(counter: &u64, n: u64) {
    // SAFETY: `counter` points into a map value that stays valid for the whole program run; the
    // BPF atomic add is the kernel's own way to update shared map values.
    unsafe {
        core::arch::asm!(
            "lock *(u64 *)({ptr} + 0) += {n}",
            ptr = in(reg) counter as *const u64,
            n = in(reg) n,
        );
    }
}

#[inline(always)]
fn active_config() -> Option<&'static FilterConfig> {
    let selector = *CONFIG_SELECTOR.get(0)?;
    CONFIG.get(selector & 1)
}

#[inline(always)]
fn iface_slot(ctx: &XdpContext) -> u32 {
    // SAFETY: reading the xdp_md context field the verifier allows for XDP programs.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    match IFACE_SLOTS.get(ifindex) {
        Some(slot) if *slot < MAX_IFACE_SLOTS => *slot,
        _ => 0,
    }
}

#[inline(always)]
fn count(slot: u32, family: Family, counter: Counter) {
    if let Some(value) = COUNTERS.get_ptr_mut(counter_index(slot, family, counter)) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *value += 1 };
    }
}

/// Sends a drop event if this CPU's token bucket has a token; counts it either way.
#[inline(always)]
fn report_drop(
    ctx: &XdpContext,
    segment: &Segment,
    config: &FilterConfig,
    slot: u32,
    rule: u32,
    now: u64,
) {
    if !take_token(config, now) {
        count(slot, segment.family, Counter::EventSuppressed);
        return;
    }
    let event = DropEvent {
        family: if segment.family == Family::Ipv4 { 4 } else { 6 },
        // SAFETY: as in `iface_slot`.
        ifindex: unsafe { (*ctx.ctx).ingress_ifindex },
        dest_port: segment.dest_port,
        monitor: u16::from(config.mode == Mode::Monitor as u32),
        source: segment.source,
        rule,
    };
    match EVENTS.output::<DropEvent>(&event, 0) {
        Ok(()) => count(slot, segment.family, Counter::EventSent),
        Err(_) => count(slot, segment.family, Counter::EventSuppressed),
    }
}

#[inline(always)]
fn take_token(config: &FilterConfig, now: u64) -> bool {
    let Some(bucket) = EVENT_BUCKET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU value, only this CPU touches it while the program runs.
    let bucket = unsafe { &mut *bucket };
    let now = if now != 0 { now } else { now_ns() };
    // Dividing only when at least one token is due keeps the flood path free of divisions.
    let elapsed = now.saturating_sub(bucket.last_ns);
    // `checked_div`: the caller only reports with a non-zero interval, but a division the compiler
    // cannot prove safe brings in core's panic path, a subprogram ending in a call that kernels
    // before 6.x refuse ("last insn is not an exit or jmp").
    if elapsed >= config.event_interval_ns
        && let Some(earned) = elapsed.checked_div(config.event_interval_ns)
    {
        bucket.tokens = (bucket.tokens + earned).min(u64::from(config.event_burst));
        bucket.last_ns = now;
    }
    if bucket.tokens == 0 {
        return false;
    }
    bucket.tokens -= 1;
    true
}

/// The clock, read at most once per frame: a ban check, the SYN bucket and the drop event's token
/// bucket share the reading.
struct Clock(u64);

impl Clock {
    #[inline(always)]
    fn now(&mut self) -> u64 {
        if self.0 == 0 {
            self.0 = now_ns();
        }
        self.0
    }
}

/// CLOCK_MONOTONIC(_COARSE) in nanoseconds: ban deadlines and the SYN buckets are on it.
#[inline(always)]
fn now_ns() -> u64 {
    // The coarse clock (jiffies resolution) costs a fraction of the precise one, and event rates,
    // SYN rates and ban deadlines need no better; kernels before 5.11 only have the precise one.
    // SAFETY: both helpers have no preconditions.
    unsafe {
        if GK_COARSE_CLOCK.load() != 0 {
            bpf_ktime_get_coarse_ns()
        } else {
            bpf_ktime_get_ns()
        }
    }
}

/// What every object built from this crate needs besides its programs: the panic handler (the
/// verifier refuses any path that could reach it; the loop only satisfies the type) and the
/// license the kernel checks for GPL-only helpers. One `program_object!();` per bin. A bin that
/// uses nothing else of this crate (the flood generator) writes its own: naming this crate links
/// every map of the filter into its object.
#[macro_export]
macro_rules! program_object {
    () => {
        #[cfg(not(test))]
        #[panic_handler]
        fn panic(_info: &core::panic::PanicInfo) -> ! {
            loop {}
        }

        #[unsafe(link_section = "license")]
        #[unsafe(no_mangle)]
        static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
    };
}
