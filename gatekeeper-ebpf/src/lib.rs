//! The gatekeeper XDP program's logic and maps. `src/main.rs` is the production object (only the
//! `gatekeeper` program); `gatekeeper-ebpf-bench` links the same code into the benchmark object.
//!
//! Judges exactly one kind of packet: a TCP segment to a protected port. Its source address must be
//! in the IPv4 or IPv6 allowlist, otherwise the frame is dropped (enforce mode) or counted (monitor
//! mode) before the kernel allocates anything for it. Every other frame (ARP, neighbour discovery,
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
        BPF_F_MMAPABLE,
        xdp_action::{XDP_DROP, XDP_PASS},
    },
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::map,
    maps::{Array, LpmTrie, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::XdpContext,
};
use gatekeeper_common::{
    ALLOWLIST_CAPACITY, COUNTER_ENTRIES, Counter, DropEvent, Family, FilterConfig, IFINDEX_LIMIT,
    LOOKUP_DIR24, MAX_IFACE_SLOTS, Mode, TokenBucket, counter_index, dir24, summary,
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
        report_drop(ctx, segment, config, slot);
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
}

#[inline(always)]
fn decide<'a>(judged: &'a Judged, config: &FilterConfig) -> Verdict<'a> {
    let enforce = config.mode != Mode::Monitor as u32;
    match judged {
        Judged::Pass(family, counter) => Verdict {
            family: *family,
            counter: *counter,
            action: XDP_PASS,
            report: None,
        },
        Judged::Unjudgeable(family) => Verdict {
            family: *family,
            counter: Counter::Unjudgeable,
            action: if enforce { XDP_DROP } else { XDP_PASS },
            report: None,
        },
        // The segment's fields are read only in this arm: elsewhere they were never written, and
        // kernels before 6.3 (5.10, 6.1 point releases) refuse a read of unwritten stack even
        // when its value is then ignored, as a flattened `a && b && segment.syn_only` would do.
        Judged::Segment(segment) => {
            if allowed(segment, config) {
                return Verdict {
                    family: segment.family,
                    counter: Counter::Allowed,
                    action: XDP_PASS,
                    report: None,
                };
            }
            let report = (config.event_interval_ns != 0 && segment.syn_only).then_some(segment);
            Verdict {
                family: segment.family,
                counter: if enforce {
                    Counter::Dropped
                } else {
                    Counter::WouldDrop
                },
                action: if enforce { XDP_DROP } else { XDP_PASS },
                report,
            }
        }
    }
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

/// DIR-24-8: the /24's entry, then for /24s holding longer prefixes the address's entry in its
/// block. Two inlined array reads whatever the list size.
#[inline(always)]
fn dir24_allowed(addr: u32) -> bool {
    let Some(first) = table_entry(&DIR24, addr >> 8) else {
        return false;
    };
    let mut entry = first;
    if entry & dir24::LONG_FLAG != 0 {
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
fn report_drop(ctx: &XdpContext, segment: &Segment, config: &FilterConfig, slot: u32) {
    if !take_token(config) {
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
        _pad2: 0,
    };
    match EVENTS.output::<DropEvent>(&event, 0) {
        Ok(()) => count(slot, segment.family, Counter::EventSent),
        Err(_) => count(slot, segment.family, Counter::EventSuppressed),
    }
}

#[inline(always)]
fn take_token(config: &FilterConfig) -> bool {
    let Some(bucket) = EVENT_BUCKET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU value, only this CPU touches it while the program runs.
    let bucket = unsafe { &mut *bucket };
    // The coarse clock (jiffies resolution) costs a fraction of the precise one, and a rate of
    // a few events per second needs no better; kernels before 5.11 only have the precise one.
    // SAFETY: both helpers have no preconditions.
    let now = unsafe {
        if GK_COARSE_CLOCK.load() != 0 {
            bpf_ktime_get_coarse_ns()
        } else {
            bpf_ktime_get_ns()
        }
    };
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
