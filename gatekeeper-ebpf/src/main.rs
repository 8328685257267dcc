//! The production eBPF object: the `gatekeeper` XDP program and nothing else (benchmark and test
//! programs live in `gatekeeper-ebpf-bench`, so a host's `bpftool prog show` lists only the
//! program that judges traffic).
#![no_std]
#![no_main]

use aya_ebpf::{macros::xdp, programs::XdpContext};

#[xdp]
pub fn gatekeeper(ctx: XdpContext) -> u32 {
    gatekeeper_ebpf::filter(&ctx)
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
