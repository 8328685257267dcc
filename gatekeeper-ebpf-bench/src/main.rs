//! Benchmark-only object: the filter (`gatekeeper`, the very code of the production object) with
//! the programs its figures are measured against. Never attached by the daemon; loaded by the
//! benchmarks and kernel tests only.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action::XDP_PASS,
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};

/// The per-CPU sequence `spread_source` turns into source addresses.
#[map(name = "GK_BENCH_SEQ")]
static BENCH_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

// Every program here is its own straight function: `filter` and `spread_source` are inlined.
#[xdp]
pub fn gatekeeper(ctx: XdpContext) -> u32 {
    gatekeeper_ebpf::filter(&ctx)
}

/// The empty program: the baseline every benchmark figure is a ratio against.
#[xdp]
pub fn gatekeeper_baseline(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// Gives every run a new source address, then filters like `gatekeeper`. A flood comes from
/// everywhere; this measures the program with cold lookups instead of one hot packet.
#[xdp]
pub fn gatekeeper_bench_spread(ctx: XdpContext) -> u32 {
    spread_source(&ctx, false);
    gatekeeper_ebpf::filter(&ctx)
}

/// Like `gatekeeper_bench_spread`, with sources only in odd /24s (the third octet's low bit set):
/// against a list of even /24s (the benchmark's spread shape) every source is denied, yet lands
/// in the same /16s and bitmap words as listed ones. A flood from everywhere nobody listed.
#[xdp]
pub fn gatekeeper_bench_spread_unlisted(ctx: XdpContext) -> u32 {
    spread_source(&ctx, true);
    gatekeeper_ebpf::filter(&ctx)
}

/// The baseline for `gatekeeper_bench_spread` (the same rewrite, then pass).
#[xdp]
pub fn gatekeeper_baseline_spread(ctx: XdpContext) -> u32 {
    spread_source(&ctx, false);
    XDP_PASS
}

/// Overwrites 4 bytes of the source address (IPv4: all of it; IPv6: the top 32 bits) of an
/// untagged frame with a per-CPU sequence spread over the address space; `odd_24` sets the low bit
/// of the third byte.
#[inline(always)]
fn spread_source(ctx: &XdpContext, odd_24: bool) {
    let Some(seq) = BENCH_SEQ.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU value, only this CPU touches it while the program runs.
    let next = unsafe {
        *seq = (*seq).wrapping_add(1);
        *seq
    };
    // Knuth's multiplicative hash: consecutive numbers land far apart.
    let mut source = next.wrapping_mul(2_654_435_761).to_be_bytes();
    if odd_24 {
        source[2] |= 1;
    }
    let start = ctx.data();
    let end = ctx.data_end();
    if start + 14 > end {
        return;
    }
    // SAFETY: bounds checked above.
    let ethertype = unsafe { u16::from_be(core::ptr::read_unaligned((start + 12) as *const u16)) };
    let offset = match ethertype {
        0x0800 => 26,
        0x86dd => 22,
        _ => return,
    };
    if start + offset + 4 > end {
        return;
    }
    // SAFETY: bounds checked above; XDP programs may write the frame.
    unsafe { core::ptr::write_unaligned((start + offset) as *mut [u8; 4], source) };
}

gatekeeper_ebpf::program_object!();
