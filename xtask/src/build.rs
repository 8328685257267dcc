//! `cargo xtask build`: the eBPF objects (once per run) and every binary.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use anyhow::Context as _;

use crate::shell::{self, step};

#[derive(clap::Args)]
pub struct Args {
    /// Build with the release profile.
    #[arg(long)]
    pub release: bool,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    crate::setup::run()?;
    build_binaries(args.release)
}

/// eBPF packages and the objects (bins) each produces.
const EBPF_PACKAGES: [(&str, &[&str]); 2] = [
    ("gatekeeper-ebpf", &["gatekeeper"]),
    (
        "gatekeeper-ebpf-bench",
        &["gatekeeper-bench", "gatekeeper-flood", "gatekeeper-refused"],
    ),
];
const EBPF_TARGET: &str = "bpfel-unknown-none";

/// Set once the objects of this run are built: every later cargo command gets it as
/// `GATEKEEPER_EBPF_OBJECTS` (see `gatekeeper-ebpf/embed.rs`).
static OBJECTS_DIR: OnceLock<PathBuf> = OnceLock::new();

/// The prebuilt objects' directory, if this run built them.
pub fn prebuilt_objects() -> Option<&'static Path> {
    OBJECTS_DIR.get().map(PathBuf::as_path)
}

/// Builds every eBPF object once (nightly, `bpfel-unknown-none`, one cargo invocation with its
/// own target directory) instead of once per build-script run: clippy, unit tests, binaries,
/// kernel tests and the demo then all embed the same objects.
pub fn ebpf_objects() -> anyhow::Result<&'static Path> {
    if let Some(dir) = prebuilt_objects() {
        return Ok(dir);
    }
    step("build: eBPF objects, once for this run (nightly, bpfel-unknown-none, bpf-linker)");
    let root = shell::workspace_root();
    let target_dir = root.join("target/ebpf");
    let mut cmd = Command::new("rustup");
    cmd.current_dir(&root)
        .args(["run", crate::setup::NIGHTLY, "cargo", "build", "--release"])
        .args(["--target", EBPF_TARGET, "-Z", "build-std=core", "--bins"]);
    for (package, _) in EBPF_PACKAGES {
        cmd.args(["--package", package]);
    }
    cmd.arg("--target-dir").arg(&target_dir);
    // The flags aya-build passes: target arch for aya-ebpf, BTF for the loader.
    let rustflags = [
        format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH),
        "-Cdebuginfo=2".to_string(),
        "-Clink-arg=--btf".to_string(),
    ]
    .join("\x1f");
    cmd.env("CARGO_ENCODED_RUSTFLAGS", rustflags);
    // The stable toolchain's variables would pin the nightly cargo to stable tools.
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO",
    ] {
        cmd.env_remove(var);
    }
    shell::run(&mut cmd).context(
        "building the eBPF objects failed; `cargo xtask setup` installs the eBPF toolchain",
    )?;
    let built = target_dir.join(EBPF_TARGET).join("release");
    let objects = target_dir.join("objects");
    std::fs::create_dir_all(&objects).with_context(|| format!("creating {}", objects.display()))?;
    for (_, bins) in EBPF_PACKAGES {
        for bin in bins {
            copy_if_changed(&built.join(bin), &objects.join(bin))?;
        }
    }
    Ok(OBJECTS_DIR.get_or_init(|| objects))
}

/// Copies only when the bytes differ: an unchanged object keeps its mtime, so the build scripts
/// that embed it do not run again.
fn copy_if_changed(from: &Path, to: &Path) -> anyhow::Result<()> {
    let new = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    if std::fs::read(to).is_ok_and(|old| old == new) {
        return Ok(());
    }
    std::fs::write(to, new).with_context(|| format!("writing {}", to.display()))
}

/// Builds `gatekeeper` (which embeds the XDP program) and `smtp-relay`.
pub fn build_binaries(release: bool) -> anyhow::Result<()> {
    ebpf_objects()?;
    step("build: the gatekeeper and smtp-relay binaries");
    let mut cmd = shell::cargo();
    cmd.args([
        "build",
        "--package",
        "gatekeeper",
        "--package",
        "smtp-relay",
        "--bins",
    ]);
    if release {
        cmd.arg("--release");
    }
    shell::run(&mut cmd)
}
