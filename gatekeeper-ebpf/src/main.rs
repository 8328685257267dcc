//! The gatekeeper XDP program.
//!
//! Judges exactly one kind of packet: a TCP segment to a protected port. Its source address must be
//! in the IPv4 or IPv6 allowlist, otherwise the frame is dropped before the kernel allocates
//! anything for it. Every other frame (ARP, neighbour discovery, UDP, other TCP ports, ...) passes
//! untouched, so the filter can never cut the host off its network.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    macros::{map, xdp},
    maps::{HashMap, LpmTrie, lpm_trie::Key},
    programs::XdpContext,
};
use gatekeeper_common::{ALLOWLIST_CAPACITY, AllowEntry, MAX_PORTS};

#[map(name = "ALLOW_V4")]
static ALLOW_V4: LpmTrie<[u8; 4], AllowEntry> = LpmTrie::with_max_entries(ALLOWLIST_CAPACITY, 0);

#[map(name = "ALLOW_V6")]
static ALLOW_V6: LpmTrie<[u8; 16], AllowEntry> = LpmTrie::with_max_entries(ALLOWLIST_CAPACITY, 0);

/// Protected TCP destination ports (host byte order) -> 1.
#[map(name = "PORTS")]
static PORTS: HashMap<u16, u8> = HashMap::with_max_entries(MAX_PORTS, 0);

const ETH_HDR_LEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const IPV4_MIN_HDR_LEN: usize = 20;
const IPV6_HDR_LEN: usize = 40;

#[xdp]
pub fn gatekeeper(ctx: XdpContext) -> u32 {
    judge(&ctx)
}

/// What the program decided about one frame.
enum Verdict {
    Pass,
    Drop,
}

fn judge(ctx: &XdpContext) -> u32 {
    match classify(ctx) {
        Verdict::Pass => XDP_PASS,
        Verdict::Drop => XDP_DROP,
    }
}

fn classify(ctx: &XdpContext) -> Verdict {
    // A frame too short for an Ethernet header is not ours to judge: the kernel discards it.
    let Some(ethertype) = read_be16(ctx, 12) else {
        return Verdict::Pass;
    };
    match ethertype {
        ETH_P_IPV4 => classify_ipv4(ctx, ETH_HDR_LEN),
        ETH_P_IPV6 => classify_ipv6(ctx, ETH_HDR_LEN),
        _ => Verdict::Pass,
    }
}

fn classify_ipv4(ctx: &XdpContext, l3: usize) -> Verdict {
    let Some(version_ihl) = read_u8(ctx, l3) else {
        return Verdict::Pass;
    };
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4 || header_len < IPV4_MIN_HDR_LEN {
        // Malformed: the kernel's IP layer discards it.
        return Verdict::Pass;
    }
    // Each read is checked on its own: combined checks get merged by LLVM into arithmetic on
    // packet pointers, which the verifier rejects.
    let Some(protocol) = read_u8(ctx, l3 + 9) else {
        return Verdict::Pass;
    };
    if protocol != IPPROTO_TCP {
        return Verdict::Pass;
    }
    let Some(frag) = read_be16(ctx, l3 + 6) else {
        return Verdict::Pass;
    };
    // Later fragments carry no TCP header, hence no port: they pass, and the kernel cannot
    // reassemble them into a segment without the first fragment, which is judged below.
    let more_fragments = frag & 0x2000 != 0;
    if frag & 0x1fff != 0 {
        return Verdict::Pass;
    }
    let Some(dest_port) = read_be16(ctx, l3 + header_len + 2) else {
        // A first fragment too short to show its port could be reassembled into a protected
        // segment: fail closed. An unfragmented truncated segment is discarded by TCP anyway.
        return if more_fragments {
            Verdict::Drop
        } else {
            Verdict::Pass
        };
    };
    if !is_protected(dest_port) {
        return Verdict::Pass;
    }
    let Some(source) = read_array::<4>(ctx, l3 + 12) else {
        return Verdict::Pass;
    };
    if ALLOW_V4.get(Key::new(32, source)).is_some() {
        Verdict::Pass
    } else {
        Verdict::Drop
    }
}

fn classify_ipv6(ctx: &XdpContext, l3: usize) -> Verdict {
    let Some(next_header) = read_u8(ctx, l3 + 6) else {
        return Verdict::Pass;
    };
    if next_header != IPPROTO_TCP {
        return Verdict::Pass;
    }
    let Some(dest_port) = read_be16(ctx, l3 + IPV6_HDR_LEN + 2) else {
        return Verdict::Pass;
    };
    if !is_protected(dest_port) {
        return Verdict::Pass;
    }
    let Some(source) = read_array::<16>(ctx, l3 + 8) else {
        return Verdict::Pass;
    };
    if ALLOW_V6.get(Key::new(128, source)).is_some() {
        Verdict::Pass
    } else {
        Verdict::Drop
    }
}

#[inline(always)]
fn is_protected(port: u16) -> bool {
    // SAFETY: the map value is a plain byte that is only read.
    unsafe { PORTS.get(&port) }.is_some()
}

/// Reads `N` bytes at `offset` from the start of the frame, or `None` past its end.
#[inline(always)]
fn read_array<const N: usize>(ctx: &XdpContext, offset: usize) -> Option<[u8; N]> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + N > end {
        return None;
    }
    // SAFETY: the bounds check above keeps the read inside the frame, which the verifier checks
    // again; the read is unaligned because headers sit at arbitrary offsets.
    Some(unsafe { core::ptr::read_unaligned((start + offset) as *const [u8; N]) })
}

#[inline(always)]
fn read_u8(ctx: &XdpContext, offset: usize) -> Option<u8> {
    read_array::<1>(ctx, offset).map(|[b]| b)
}

#[inline(always)]
fn read_be16(ctx: &XdpContext, offset: usize) -> Option<u16> {
    read_array::<2>(ctx, offset).map(u16::from_be_bytes)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here; the loop only satisfies the type.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
