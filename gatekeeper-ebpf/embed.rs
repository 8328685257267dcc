// How a userspace crate's build script obtains eBPF objects of this workspace, shared by
// `gatekeeper/build.rs` (the production object) and `tests/objects/build.rs` (the benchmark
// objects) through `include!`. Build scripts cannot share a library crate without making it a
// build-dependency of both, and this is all there is to share.
//
// `cargo xtask` builds every object once per run (nightly, bpfel-unknown-none) and points each
// build script at them with `GATEKEEPER_EBPF_OBJECTS`: the script copies them into OUT_DIR.
// Without the variable (a plain `cargo build`), aya-build builds the package here.

/// Copies (or builds) the objects `bins` of eBPF package `package` into OUT_DIR, where
/// `include_bytes_aligned!(concat!(env!("OUT_DIR"), "/<bin>"))` finds them.
fn embed_ebpf_objects(package: &str, bins: &[&str]) -> anyhow::Result<()> {
    use anyhow::Context as _;
    const PREBUILT: &str = "GATEKEEPER_EBPF_OBJECTS";
    println!("cargo:rerun-if-env-changed={PREBUILT}");
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR not set")?);
    if let Some(dir) = std::env::var_os(PREBUILT) {
        let dir = std::path::PathBuf::from(dir);
        for bin in bins {
            let object = dir.join(bin);
            println!("cargo:rerun-if-changed={}", object.display());
            std::fs::copy(&object, out_dir.join(bin)).with_context(|| {
                format!(
                    "copying the prebuilt eBPF object {} ({PREBUILT} is set; `cargo xtask build` makes it)",
                    object.display()
                )
            })?;
        }
        return Ok(());
    }
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let workspace = std::path::Path::new(&manifest_dir)
        .ancestors()
        .find(|dir| dir.join("gatekeeper-ebpf").is_dir())
        .context("no workspace directory holding gatekeeper-ebpf above this crate")?;
    // aya-build watches the package it builds; what it compiles in must be watched too.
    for shared in ["gatekeeper-common", "gatekeeper-ebpf"] {
        println!("cargo:rerun-if-changed={}", workspace.join(shared).display());
    }
    let root_dir = workspace.join(package);
    let root_dir = root_dir
        .to_str()
        .with_context(|| format!("{package} path is not UTF-8"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: package,
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .with_context(|| {
        format!("building {package} failed; run `cargo xtask setup` to install the eBPF toolchain")
    })
}
