//! `cargo xtask test`: the whole check a change must pass, in the order that fails fastest.

use crate::shell::{self, TestTally, step};

#[derive(clap::Args)]
pub struct Args {
    /// Skip `cargo fmt --check` and clippy.
    #[arg(long)]
    pub no_lint: bool,
    /// Skip the demo run at the end.
    #[arg(long)]
    pub no_demo: bool,
    /// Skip the package check (build the .debs, install them into a throwaway Debian root,
    /// run `check` there, purge).
    #[arg(long)]
    pub no_package: bool,
    /// Skip the kernel matrix (Debian's kernels under qemu).
    #[arg(long, conflicts_with = "kernels")]
    pub no_matrix: bool,
    #[command(flatten)]
    pub matrix: crate::kernels::Selection,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    crate::setup::run()?;
    // First, so that clippy, the tests and the demo all embed these objects.
    crate::build::ebpf_objects()?;
    if !args.no_lint {
        step("lint: formatting and clippy (warnings are errors)");
        shell::run(shell::cargo().args(["fmt", "--all", "--", "--check"]))?;
        shell::run(shell::cargo().args([
            "clippy",
            "--workspace",
            "--exclude",
            "gatekeeper-ebpf",
            "--exclude",
            "gatekeeper-ebpf-bench",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
        lint_ebpf()?;
    }
    let mut tally = TestTally::default();
    let result = run_suites(&mut tally, args);
    // The plain closing line CI reads, also when a suite failed part-way.
    println!(
        "xtask test: {} passed, {} failed, {} skipped",
        tally.passed, tally.failed, tally.skipped
    );
    result
}

/// Clippy on the eBPF crates, which only build with nightly for `bpfel-unknown-none`. Its own
/// target directory keeps clippy's flags from invalidating the objects' build.
fn lint_ebpf() -> anyhow::Result<()> {
    let mut cmd = std::process::Command::new("rustup");
    cmd.current_dir(shell::workspace_root())
        .args(["run", crate::setup::NIGHTLY, "cargo", "clippy"])
        .args([
            "--package",
            "gatekeeper-ebpf",
            "--package",
            "gatekeeper-ebpf-bench",
        ])
        .arg("--release")
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["--", "-D", "warnings"])
        // The stable toolchain's variables would pin the nightly cargo to stable tools.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("CARGO")
        .env(
            "CARGO_TARGET_DIR",
            shell::workspace_root().join("target/ebpf-clippy"),
        );
    shell::run(&mut cmd)
}

fn run_suites(tally: &mut TestTally, args: &Args) -> anyhow::Result<()> {
    step(
        "unit and relay tests: config, CLI, SMTP sessions, delivery (the relay's systemd-unit test needs root)",
    );
    shell::run_tests(
        shell::cargo().args([
            "test",
            "--workspace",
            "--exclude",
            "gatekeeper-ebpf",
            "--exclude",
            "gatekeeper-ebpf-bench",
            "--exclude",
            "gatekeeper-tests",
        ]),
        tally,
    )?;
    crate::build::build_binaries(false)?;
    step("kernel tests: BPF_PROG_TEST_RUN on crafted frames, then namespaces with real TCP (root)");
    if !shell::is_root() {
        println!(
            "    SKIP: not root — each kernel test prints its own SKIP line; run `sudo cargo xtask test`"
        );
    }
    shell::run_tests(
        shell::cargo().args(["test", "--package", "gatekeeper-tests"]),
        tally,
    )?;
    if args.no_matrix {
        println!("    SKIP kernel matrix: --no-matrix");
    } else {
        crate::kernels::run_matrix(&args.matrix, false, tally)?;
    }
    if args.no_package {
        println!("    SKIP package check: --no-package");
    } else if shell::is_root() {
        step("package: the .debs installed into a throwaway Debian root, checked, purged");
        // The dev-profile binaries are built already; the layout and scripts are what is checked.
        crate::package::run(&crate::package::Args {
            debug: true,
            out: "target/debian".into(),
            check_install: true,
        })?;
    } else {
        println!("    SKIP package check: needs root (dpkg in a chroot)");
    }
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
