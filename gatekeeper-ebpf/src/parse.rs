//! Walking a frame down to the TCP destination port, with a fixed bound on every loop.
//!
//! The userspace reference classifier in `tests/src/reference.rs` implements the same rules; the
//! differential test holds the two together.

use aya_ebpf::programs::XdpContext;
use gatekeeper_common::{Counter, Family};

const ETH_HDR_LEN: usize = 14;
const VLAN_TAG_LEN: usize = 4;
/// VLAN tags walked: 802.1Q inside 802.1ad is the deepest stacking a DMZ link carries.
const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers walked before the frame counts as unjudgeable.
const MAX_IPV6_EXT_HEADERS: usize = 8;
/// No extension header starting past this offset is read (keeps offsets small for the verifier;
/// real chains are a few dozen bytes). Only a chain that still goes on there is unjudgeable:
/// what it ends in (UDP, ICMPv6, TCP to some port) is known up to one header further.
const MAX_L4_OFFSET: usize = 1024;

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const ETH_P_QINQ_LEGACY: u16 = 0x9100;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;
const IPPROTO_MOBILITY: u8 = 135;
const IPPROTO_HIP: u8 = 139;
const IPPROTO_SHIM6: u8 = 140;

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// A TCP segment to a protected port, to be judged against the allowlist.
///
/// The source comes first in an 8-aligned struct, so its halves load as two 8-byte words (BPF
/// has no unaligned loads: a byte array of unknown alignment is read a byte at a time).
#[repr(C, align(8))]
pub struct Segment {
    /// IPv4 sources use the first four bytes.
    pub source: [u8; 16],
    pub family: Family,
    pub dest_port: u16,
    /// SYN without ACK: a connection attempt (the only kind reported as a drop event).
    pub syn_only: bool,
}

/// What parsing found.
pub enum Judged {
    /// Not for the allowlist to judge; passes, counted under this counter.
    Pass(Family, Counter),
    /// Could be TCP to a protected port but cannot be judged: fail closed.
    Unjudgeable(Family),
    Segment(Segment),
}

const fn malformed(family: Family) -> Judged {
    Judged::Pass(family, Counter::Malformed)
}

#[inline(always)]
pub fn judge<F: Fn(u16) -> bool>(ctx: &XdpContext, protected: &F) -> Judged {
    let Some(mut ethertype) = read_be16(ctx, 12) else {
        return malformed(Family::Other);
    };
    let mut l3 = ETH_HDR_LEN;
    for _ in 0..MAX_VLAN_TAGS {
        if !is_vlan(ethertype) {
            break;
        }
        let Some(inner) = read_be16(ctx, l3 + 2) else {
            return malformed(Family::Other);
        };
        ethertype = inner;
        l3 += VLAN_TAG_LEN;
    }
    match ethertype {
        ETH_P_IPV4 => judge_ipv4(ctx, l3, protected),
        ETH_P_IPV6 => judge_ipv6(ctx, l3, protected),
        // More tags than the bound: whatever is inside could be TCP to port 25.
        t if is_vlan(t) => Judged::Unjudgeable(Family::Other),
        _ => Judged::Pass(Family::Other, Counter::PassNotIp),
    }
}

#[inline(always)]
fn is_vlan(ethertype: u16) -> bool {
    ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD || ethertype == ETH_P_QINQ_LEGACY
}

#[inline(always)]
fn judge_ipv4<F: Fn(u16) -> bool>(ctx: &XdpContext, l3: usize, protected: &F) -> Judged {
    const FAMILY: Family = Family::Ipv4;
    // The fixed header is bounds-checked in one go before any variable-length check: LLVM drops
    // checks it can prove redundant from a variable one, which the verifier cannot follow.
    let Some(header) = header_at(ctx, l3, 20) else {
        return malformed(FAMILY);
    };
    // SAFETY (every load below): offsets inside the 20 bytes just checked.
    let version_ihl = unsafe { load8(header) };
    let header_len = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4 || header_len < 20 {
        return malformed(FAMILY);
    }
    // A total length shorter than the header itself: the kernel discards the packet, and what
    // follows the header is not this packet's payload.
    if usize::from(unsafe { load16(header + 2) }) < header_len {
        return malformed(FAMILY);
    }
    if unsafe { load8(header + 9) } != IPPROTO_TCP {
        return Judged::Pass(FAMILY, Counter::PassNotTcp);
    }
    let frag = unsafe { load16(header + 6) };
    // Options included, the whole header must be in the frame.
    if header_len > 20 && read_u8(ctx, l3 + header_len - 1).is_none() {
        return malformed(FAMILY);
    }
    // Later fragments carry no TCP header, hence no port: they pass, and the kernel cannot
    // reassemble them into a segment without the first fragment, which is judged below.
    if frag & 0x1fff != 0 {
        return Judged::Pass(FAMILY, Counter::PassFragment);
    }
    let more_fragments = frag & 0x2000 != 0;
    judge_tcp(
        ctx,
        l3 + header_len,
        FAMILY,
        header + 12,
        more_fragments,
        protected,
    )
}

#[inline(always)]
fn judge_ipv6<F: Fn(u16) -> bool>(ctx: &XdpContext, l3: usize, protected: &F) -> Judged {
    const FAMILY: Family = Family::Ipv6;
    let Some(header) = header_at(ctx, l3, 40) else {
        return malformed(FAMILY);
    };
    // SAFETY (every load below): offsets inside the 40 bytes just checked.
    if unsafe { load8(header) } >> 4 != 6 {
        return malformed(FAMILY);
    }
    let mut next = unsafe { load8(header + 6) };
    let mut offset = l3 + 40;
    let mut first_fragment = false;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        if next == IPPROTO_TCP {
            break;
        }
        if !is_extension_header(next) {
            // UDP, ICMPv6, ESP, no-next-header, ...: not TCP.
            return Judged::Pass(FAMILY, Counter::PassNotTcp);
        }
        // Every extension header is at least 8 bytes long.
        let Some(ext) = header_at(ctx, offset, 8) else {
            return truncated(first_fragment);
        };
        if offset > MAX_L4_OFFSET {
            // Another extension header past the walk's reach: the chain could still end in TCP
            // to a protected port.
            return Judged::Unjudgeable(FAMILY);
        }
        // SAFETY (every load below): offsets inside the 8 bytes just checked.
        let (ext_next, ext_len) = unsafe { (load8(ext), load8(ext + 1)) };
        let header_len = match next {
            IPPROTO_FRAGMENT => {
                let frag = unsafe { load16(ext + 2) };
                if frag & 0xfff8 != 0 {
                    return Judged::Pass(FAMILY, Counter::PassFragment);
                }
                if frag & 1 != 0 {
                    first_fragment = true;
                }
                8
            }
            IPPROTO_AH => (usize::from(ext_len) + 2) * 4,
            _ => (usize::from(ext_len) + 1) * 8,
        };
        next = ext_next;
        offset += header_len;
        // A header running past the frame's end: a broken frame, not a long chain.
        if header_at(ctx, offset, 0).is_none() {
            return truncated(first_fragment);
        }
    }
    if next != IPPROTO_TCP {
        if is_extension_header(next) {
            // The chain goes on past the bound: it could still end in TCP to port 25.
            return Judged::Unjudgeable(FAMILY);
        }
        return Judged::Pass(FAMILY, Counter::PassNotTcp);
    }
    judge_tcp(ctx, offset, FAMILY, header + 8, first_fragment, protected)
}

#[inline(always)]
fn is_extension_header(next: u8) -> bool {
    matches!(
        next,
        IPPROTO_HOPOPTS
            | IPPROTO_ROUTING
            | IPPROTO_FRAGMENT
            | IPPROTO_AH
            | IPPROTO_DSTOPTS
            | IPPROTO_MOBILITY
            | IPPROTO_HIP
            | IPPROTO_SHIM6
    )
}

/// A header chain cut short: fail closed inside a first fragment (the rest may arrive in the
/// next fragment), otherwise the kernel discards the frame.
#[inline(always)]
fn truncated(first_fragment: bool) -> Judged {
    if first_fragment {
        Judged::Unjudgeable(Family::Ipv6)
    } else {
        malformed(Family::Ipv6)
    }
}

#[inline(always)]
/// `source_at` is the address of the source field inside an IP header already bounds-checked;
/// it is read only for segments to a protected port, the only ones that need it.
fn judge_tcp<F: Fn(u16) -> bool>(
    ctx: &XdpContext,
    l4: usize,
    family: Family,
    source_at: usize,
    fragmented: bool,
    protected: &F,
) -> Judged {
    let Some(dest_port) = read_be16(ctx, l4 + 2) else {
        // A first fragment too short to show its port could be reassembled into a protected
        // segment: fail closed. An unfragmented truncated segment is discarded by TCP anyway.
        return if fragmented {
            Judged::Unjudgeable(family)
        } else {
            malformed(family)
        };
    };
    if !protected(dest_port) {
        return Judged::Pass(family, Counter::PassOtherPort);
    }
    let syn_only = match read_u8(ctx, l4 + 13) {
        Some(flags) => flags & (TCP_SYN | TCP_ACK) == TCP_SYN,
        None => false,
    };
    let mut source = [0u8; 16];
    let words = if family == Family::Ipv4 { 2 } else { 8 };
    // The zero of an IPv4 source's tail is opaque to the optimizer: known zeros get merged into
    // a call to `memset`, a BPF subprogram, and the program must stay one straight function.
    let zero = core::hint::black_box(0u16);
    for i in 0..8 {
        let word = if i < words {
            // SAFETY: inside the IP header checked by the caller (4 or 16 bytes of source).
            unsafe { load16(source_at + 2 * i) }
        } else {
            zero
        };
        source[2 * i..2 * i + 2].copy_from_slice(&word.to_be_bytes());
    }
    Judged::Segment(Segment {
        family,
        source,
        dest_port,
        syn_only,
    })
}

/// The address of `len` bytes at `offset` in the frame, or `None` if the frame is shorter.
#[inline(always)]
fn header_at(ctx: &XdpContext, offset: usize, len: usize) -> Option<usize> {
    let start = ctx.data();
    if start + offset + len > ctx.data_end() {
        return None;
    }
    Some(start + offset)
}

/// A byte at `addr`. Safety: `addr` lies inside a range `header_at` returned.
#[inline(always)]
unsafe fn load8(addr: usize) -> u8 {
    // SAFETY: per the caller.
    unsafe { *(addr as *const u8) }
}

/// A big-endian u16 at `addr` in one 2-byte load (every field read this way sits at an even
/// offset from the frame start, and frame data starts aligned). Safety: `addr..addr + 2` lies
/// inside a range `header_at` returned.
#[inline(always)]
unsafe fn load16(addr: usize) -> u16 {
    // SAFETY: per the caller.
    u16::from_be(unsafe { core::ptr::read(addr as *const u16) })
}

#[inline(always)]
fn read_u8(ctx: &XdpContext, offset: usize) -> Option<u8> {
    let addr = header_at(ctx, offset, 1)?;
    // SAFETY: inside the checked range.
    Some(unsafe { load8(addr) })
}

#[inline(always)]
fn read_be16(ctx: &XdpContext, offset: usize) -> Option<u16> {
    let addr = header_at(ctx, offset, 2)?;
    // SAFETY: inside the checked range.
    Some(unsafe { load16(addr) })
}
