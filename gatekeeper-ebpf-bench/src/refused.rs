//! Test only: a `gatekeeper` program every kernel's verifier refuses (it reads the packet without
//! checking its length before filtering), with the filter's maps, so that the kernel tests can
//! check what an admin is told when the kernel refuses the program, and that a refused start
//! leaves no pinned maps behind.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action::XDP_ABORTED, macros::xdp, programs::XdpContext};

#[xdp]
pub fn gatekeeper(ctx: XdpContext) -> u32 {
    // SAFETY: none — the missing bounds check is the point; the verifier refuses the program.
    let first = unsafe { core::ptr::read_volatile(ctx.data() as *const u8) };
    if first == 0 {
        return XDP_ABORTED;
    }
    gatekeeper_ebpf::filter(&ctx)
}

gatekeeper_ebpf::program_object!();
