//! `cargo xtask test`: the whole check a change must pass, in the order that fails fastest.

use crate::shell::{self, step};

#[derive(clap::Args)]
pub struct Args {
    /// Skip `cargo fmt --check` and clippy.
    #[arg(long)]
    pub no_lint: bool,
    /// Skip the demo run at the end.
    #[arg(long)]
    pub no_demo: bool,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    crate::setup::run()?;
    if !args.no_lint {
        step("lint: formatting and clippy (warnings are errors)");
        shell::run(shell::cargo().args(["fmt", "--all", "--", "--check"]))?;
        shell::run(shell::cargo().args([
            "clippy",
            "--workspace",
            "--exclude",
            "gatekeeper-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
    }
    step("unit tests: config, CLI, relay (no privileges needed)");
    shell::run(shell::cargo().args([
        "test",
        "--workspace",
        "--exclude",
        "gatekeeper-ebpf",
        "--exclude",
        "gatekeeper-tests",
    ]))?;
    crate::build::build_binaries(false)?;
    step("kernel tests: BPF_PROG_TEST_RUN on crafted frames, then namespaces with real TCP (root)");
    if !shell::is_root() {
        println!(
            "    SKIP: not root — each kernel test prints its own SKIP line; run `sudo cargo xtask test`"
        );
    }
    shell::run(shell::cargo().args(["test", "--package", "gatekeeper-tests"]))?;
    if args.no_demo {
        return Ok(());
    }
    if shell::is_root() {
        step("demo: the README's main command, end to end");
        crate::demo::run(&crate::demo::Args { keep: false })?;
    } else {
        println!("    SKIP demo: needs root (network namespaces and XDP)");
    }
    Ok(())
}
