//! Builds the XDP program (`gatekeeper-ebpf`) with the nightly toolchain and bpf-linker, so that
//! `include_bytes_aligned!` in `src/ebpf.rs` embeds a fresh object. `cargo xtask setup` installs
//! what this needs.

use std::path::Path;

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let workspace = Path::new(&manifest_dir)
        .parent()
        .context("gatekeeper crate has no parent directory")?;
    let ebpf_dir = workspace.join("gatekeeper-ebpf");
    let common_dir = workspace.join("gatekeeper-common");
    // aya-build watches the eBPF crate; the shared types it compiles in must be watched too.
    println!("cargo:rerun-if-changed={}", common_dir.display());
    let root_dir = ebpf_dir
        .to_str()
        .context("gatekeeper-ebpf path is not UTF-8")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "gatekeeper-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context(
        "building gatekeeper-ebpf failed; run `cargo xtask setup` to install the eBPF toolchain",
    )
}
