//! Embeds the XDP program (`gatekeeper-ebpf`, bin `gatekeeper`) for `include_bytes_aligned!` in
//! `src/filter.rs`: prebuilt by `cargo xtask`, or built here with nightly and bpf-linker
//! (`cargo xtask setup` installs them).

include!("../gatekeeper-ebpf/embed.rs");

fn main() -> anyhow::Result<()> {
    embed_ebpf_objects("gatekeeper-ebpf", &["gatekeeper"])
}
