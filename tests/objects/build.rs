//! Embeds the benchmark and test objects (`gatekeeper-ebpf-bench`): prebuilt by `cargo xtask`, or built
//! here with nightly and bpf-linker.

include!("../../gatekeeper-ebpf/embed.rs");

fn main() -> anyhow::Result<()> {
    embed_ebpf_objects(
        "gatekeeper-ebpf-bench",
        &["gatekeeper-bench", "gatekeeper-flood", "gatekeeper-refused"],
    )
}
