//! `cargo xtask build`: the eBPF program (through gatekeeper's build script) and every binary.

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

/// Builds `gatekeeper` (which embeds the freshly built XDP program) and `smtp-relay`.
pub fn build_binaries(release: bool) -> anyhow::Result<()> {
    step(
        "build: eBPF program (nightly, bpfel-unknown-none) and the gatekeeper and smtp-relay binaries",
    );
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
