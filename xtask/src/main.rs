//! `cargo xtask`: the project's workflow. Each subcommand says what it does before it does it.

mod bench;
mod bench_relay;
mod build;
mod demo;
mod fuzz;
mod kernels;
mod package;
mod package_check;
mod report;
mod setup;
mod shell;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Gatekeeper's development and CI workflow.
#[derive(Parser)]
#[command(name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building the eBPF program needs (nightly + rust-src, LLVM 22, bpf-linker,
    /// iproute2); a fast no-op when everything is present.
    Setup,
    /// Build the eBPF program and every userspace crate.
    Build(build::Args),
    /// Run setup, lint, unit tests, then the kernel tests (root for the kernel tests).
    Test(test::Args),
    /// Play the end-to-end scenario in network namespaces, narrated step by step (root).
    Demo(demo::Args),
    /// Measure the XDP program, a SYN flood against XDP and nftables, and write the report (root).
    Bench(bench::Args),
    /// Boot Debian's kernels (5.10, 6.1, 6.12) under qemu and run the kernel test suites in each.
    Kernels(kernels::Args),
    /// Fuzz the SMTP relay's parsers for a bounded time (stable Rust, in-process).
    Fuzz(fuzz::Args),
    /// Build Debian packages of both daemons (binaries, units, conffiles, man pages,
    /// completions, maintainer scripts) into target/debian/.
    Package(package::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup => setup::run(),
        Command::Build(args) => build::run(&args),
        Command::Test(args) => test::run(&args),
        Command::Demo(args) => demo::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Kernels(args) => kernels::run(&args),
        Command::Fuzz(args) => fuzz::run(&args),
        Command::Package(args) => package::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
