//! Benchmark only: the flood generator and the drop floor, never attached by the daemon.
//!
//! `gatekeeper_flood` is run through `BPF_PROG_TEST_RUN` in live-frames mode: the kernel hands it
//! one template frame (an Ethernet/IPv4/TCP SYN with valid checksums) per run; it gives the frame a
//! new source address and source port from a per-CPU sequence, patches both checksums
//! incrementally (RFC 1624) and returns `XDP_TX`, which transmits the frame out of the interface
//! named in the run's `ingress_ifindex`: into a veth, so that the peer receives it like frames from
//! a NIC, without any socket buffer on the sending side.
//!
//! `gatekeeper_flood_drop` is the empty `XDP_DROP` program: the cheapest a receiver can discard.
//!
//! Self-contained on purpose (its own panic handler and license); it shares nothing with the
//! filter program.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action::{XDP_ABORTED, XDP_DROP, XDP_TX},
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};

/// Where the sources come from: slot 0 = first source address (as read from the frame, i.e.
/// network byte order loaded as a native u32), slot 1 = how many consecutive addresses (≥ 1).
#[map(name = "FLOOD_CONFIG")]
static CONFIG: Array<u32> = Array::with_max_entries(2, 0);

/// Per-CPU frame sequence; also the count of frames this program produced on each CPU.
#[map(name = "FLOOD_SEQ")]
static SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

const ETH_HDR_LEN: usize = 14;
const IPV4_HDR_LEN: usize = 20;
const TCP_HDR_LEN: usize = 20;
const FIRST_PORT: u32 = 1024;
const PORTS: u32 = 65536 - FIRST_PORT;

#[xdp]
pub fn gatekeeper_flood(ctx: XdpContext) -> u32 {
    match rewrite(&ctx) {
        Some(()) => XDP_TX,
        None => XDP_ABORTED,
    }
}

#[xdp]
pub fn gatekeeper_flood_drop(_ctx: XdpContext) -> u32 {
    XDP_DROP
}

#[inline(always)]
fn rewrite(ctx: &XdpContext) -> Option<()> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + ETH_HDR_LEN + IPV4_HDR_LEN + TCP_HDR_LEN > end {
        return None;
    }
    let base = *CONFIG.get(0)?;
    let count = *CONFIG.get(1)?;
    let seq = SEQ.get_ptr_mut(0)?;
    // SAFETY: a per-CPU value; only this CPU touches it while the program runs.
    let n = unsafe {
        *seq = (*seq).wrapping_add(1);
        *seq
    } as u32;
    let count = if count == 0 { 1 } else { count };
    let index = n % count;
    // Consecutive frames walk through the addresses; each pass over them moves the port.
    let port = (FIRST_PORT + (n / count) % PORTS) as u16;
    // base is in network order: add the index in host order.
    let source = (u32::from_be(base).wrapping_add(index)).to_be();

    let ip = start + ETH_HDR_LEN;
    let tcp = ip + IPV4_HDR_LEN;
    // SAFETY: every access below lies within [start, start + 54), checked against `end` above;
    // XDP programs may write their frame.
    unsafe {
        let saddr = (ip + 12) as *mut u32;
        let sport = tcp as *mut u16;
        let ip_check = (ip + 10) as *mut u16;
        let tcp_check = (tcp + 16) as *mut u16;
        let old_addr = core::ptr::read_unaligned(saddr);
        let old_port = core::ptr::read_unaligned(sport);
        let new_port = port.to_be();
        core::ptr::write_unaligned(saddr, source);
        core::ptr::write_unaligned(sport, new_port);
        let ip_sum = update(core::ptr::read_unaligned(ip_check), old_addr, source, 0, 0);
        core::ptr::write_unaligned(ip_check, ip_sum);
        let tcp_sum = update(
            core::ptr::read_unaligned(tcp_check),
            old_addr,
            source,
            old_port,
            new_port,
        );
        core::ptr::write_unaligned(tcp_check, tcp_sum);
    }
    Some(())
}

/// RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m') over the changed 16-bit words. One's-complement sums
/// do not depend on byte order, so the words are used as loaded.
#[inline(always)]
fn update(check: u16, old_addr: u32, new_addr: u32, old_port: u16, new_port: u16) -> u16 {
    let mut sum: u32 = u32::from(!check);
    sum += u32::from(!(old_addr as u16)) + u32::from(!((old_addr >> 16) as u16));
    sum += (new_addr & 0xffff) + (new_addr >> 16);
    sum += u32::from(!old_port) + u32::from(new_port);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here; the loop only satisfies the type.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
