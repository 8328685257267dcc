//! Benchmark and test eBPF objects (`gatekeeper-ebpf-bench`), never part of the product:
//! - the benchmark object: the filter (`gatekeeper`, the production program's code) with the empty
//!   baseline and the cold-lookup twins, for `cargo xtask bench xdp`;
//! - the flood object: the live-frames flood generator used by `cargo xtask bench flood` and its
//!   kernel test, and the empty `XDP_DROP` program that is the flood benchmark's floor;
//! - a program the verifier refuses, for the test of what an admin is told then.

use std::net::Ipv4Addr;

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{Array, PerCpuArray},
    programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp},
};

use gatekeeper::filter::xdp_program;
use gatekeeper_tests::frames::internet_checksum;

/// The benchmark object (bin `gatekeeper-bench`): load it with
/// `gatekeeper::filter::LoadOptions::object` to fill its maps like the daemon's.
pub static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gatekeeper-bench"));

/// The filter, in the benchmark object.
pub const FILTER_PROGRAM_NAME: &str = "gatekeeper";
/// The empty program (returns XDP_PASS): the baseline every benchmark figure is a ratio against.
pub const BASELINE_PROGRAM_NAME: &str = "gatekeeper_baseline";
/// Gives every run a new source address (cold lookups), then filters.
pub const BENCH_SPREAD_PROGRAM_NAME: &str = "gatekeeper_bench_spread";
/// The same, with sources only in odd /24s (third octet odd): all denied by a list of even /24s.
pub const BENCH_SPREAD_UNLISTED_PROGRAM_NAME: &str = "gatekeeper_bench_spread_unlisted";
/// The same rewrite, then XDP_PASS: the baseline of `BENCH_SPREAD_PROGRAM_NAME`.
pub const BASELINE_SPREAD_PROGRAM_NAME: &str = "gatekeeper_baseline_spread";

/// A `gatekeeper` program every verifier refuses (bin `gatekeeper-refused`), with the filter's
/// maps: it reads the packet unchecked.
pub static REFUSED_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gatekeeper-refused"));
/// Its program, refused by the verifier: named like the filter, so `Filter::load_with` takes it.
pub const REFUSED_PROGRAM_NAME: &str = "gatekeeper";

/// The flood object (bin `gatekeeper-flood`).
pub static FLOOD_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gatekeeper-flood"));

/// Rewrites each frame's IPv4 source address and TCP source port, returns `XDP_TX`.
pub const FLOOD_PROGRAM_NAME: &str = "gatekeeper_flood";
/// Returns `XDP_DROP`: the cheapest possible receiver.
pub const DROP_PROGRAM_NAME: &str = "gatekeeper_flood_drop";

/// Frames per batch in live-frames mode (the kernel's maximum is 256).
pub const DEFAULT_BATCH: u32 = 64;

/// Loads only the program `name` of `object` (e.g. `BASELINE_PROGRAM_NAME` of `BENCH_OBJECT`, or
/// `DROP_PROGRAM_NAME` of `FLOOD_OBJECT` to attach it).
pub fn load_program(object: &[u8], name: &str) -> anyhow::Result<Ebpf> {
    let mut ebpf = Ebpf::load(object).context("loading a benchmark eBPF object failed")?;
    xdp_program(&mut ebpf, name)?
        .load()
        .with_context(|| format!("the kernel refused the {name} program"))?;
    Ok(ebpf)
}

/// The flood generator: `BPF_PROG_TEST_RUN` in live-frames mode on `gatekeeper_flood`. Each
/// frame it produces leaves through `XDP_TX` on the interface given to [`FloodGenerator::send`]
/// and arrives at that veth's peer.
pub struct FloodGenerator {
    ebpf: Ebpf,
}

impl FloodGenerator {
    /// Sources walk through `sources` consecutive addresses from `first_source`, and then move
    /// to the next source port (1024–65535), so every frame of a flood is a new connection.
    pub fn load(first_source: Ipv4Addr, sources: u32) -> anyhow::Result<FloodGenerator> {
        let mut ebpf = load_program(FLOOD_OBJECT, FLOOD_PROGRAM_NAME)?;
        let mut config: Array<_, u32> = Array::try_from(
            ebpf.map_mut("FLOOD_CONFIG")
                .context("the flood object has no FLOOD_CONFIG map")?,
        )?;
        config.set(0, u32::from_ne_bytes(first_source.octets()), 0)?;
        config.set(1, sources.max(1), 0)?;
        Ok(FloodGenerator { ebpf })
    }

    /// Sends `frames` copies of `template` (see [`syn_frame`]), rewritten, out of interface
    /// `ifindex`, `batch` frames at a time. The calling thread must be in the interface's network
    /// namespace (the kernel looks the index up there); it does the work itself, on its CPU.
    pub fn send(
        &self,
        ifindex: u32,
        template: &[u8],
        frames: u32,
        batch: u32,
    ) -> anyhow::Result<()> {
        let program: &Xdp = self
            .ebpf
            .program(FLOOD_PROGRAM_NAME)
            .context("no flood program")?
            .try_into()?;
        let len = u32::try_from(template.len())?;
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex.
        let mut ctx = Vec::with_capacity(24);
        for field in [0, len, 0, ifindex, 0, 0] {
            ctx.extend_from_slice(&u32::to_ne_bytes(field));
        }
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(template),
                ctx_in: Some(&ctx),
                repeat: frames,
                attrs: TestRunAttrs::new().xdp_live_frames(batch),
                ..Default::default()
            })
            .context("BPF_PROG_TEST_RUN in live-frames mode")?;
        let _ = result;
        Ok(())
    }

    /// Frames produced so far, over all CPUs (the program's per-CPU sequence).
    pub fn produced(&self) -> anyhow::Result<u64> {
        let seq: PerCpuArray<_, u64> = PerCpuArray::try_from(
            self.ebpf
                .map("FLOOD_SEQ")
                .context("the flood object has no FLOOD_SEQ map")?,
        )?;
        Ok(seq.get(&0, 0)?.iter().sum())
    }
}

/// An Ethernet/IPv4/TCP SYN from `source` to `dest`:`dest_port` with valid IPv4 and TCP
/// checksums (the generator patches both, so frames it passes on reach TCP intact).
pub fn syn_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    source: Ipv4Addr,
    dest: Ipv4Addr,
    dest_port: u16,
) -> Vec<u8> {
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&dest_port.to_be_bytes());
    tcp[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02;
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let mut pseudo = Vec::with_capacity(32);
    pseudo.extend_from_slice(&source.octets());
    pseudo.extend_from_slice(&dest.octets());
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    pseudo.extend_from_slice(&tcp);
    let check = internet_checksum(&pseudo);
    tcp[16..18].copy_from_slice(&check.to_be_bytes());

    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&source.octets());
    ip[16..20].copy_from_slice(&dest.octets());
    let check = internet_checksum(&ip);
    ip[10..12].copy_from_slice(&check.to_be_bytes());

    let mut frame = Vec::with_capacity(54);
    frame.extend_from_slice(&dst_mac);
    frame.extend_from_slice(&src_mac);
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&tcp);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syn_frame_checksums_verify() {
        let frame = syn_frame(
            [2, 0, 0, 0, 0, 1],
            [2, 0, 0, 0, 0, 2],
            Ipv4Addr::new(203, 0, 113, 1),
            Ipv4Addr::new(192, 0, 2, 25),
            25,
        );
        assert_eq!(frame.len(), 54);
        assert_eq!(internet_checksum(&frame[14..34]), 0);
        let mut pseudo = frame[26..34].to_vec();
        pseudo.extend_from_slice(&[0, 6, 0, 20]);
        pseudo.extend_from_slice(&frame[34..54]);
        assert_eq!(internet_checksum(&pseudo), 0);
    }
}
