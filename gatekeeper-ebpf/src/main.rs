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

gatekeeper_ebpf::program_object!();
