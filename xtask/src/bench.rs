//! `cargo xtask bench`: performance figures, always as ratios against a baseline measured in the
//! same run. Results go to `target/bench/*.json` beside the printed tables; `all` (the default)
//! also writes the report `target/bench/report.md` with its SVG charts.

use std::process::Command;

use anyhow::Context as _;

use crate::shell::{self, step, succeeds};

#[derive(clap::Args)]
pub struct Args {
    /// What to measure.
    #[arg(value_enum, default_value_t = Suite::All)]
    pub suite: Suite,
    /// Fewer repetitions: a quick look, not figures to publish.
    #[arg(long)]
    pub quick: bool,
    /// Allowlist sizes for `xdp`, comma-separated (default 10,10000,1000000; 10,10000,100000,1000000
    /// under `all`).
    #[arg(long, value_name = "LIST")]
    pub sizes: Option<String>,
    /// Allowlist sizes of the control-plane rows of `xdp` (the release `gatekeeper` binary: daemon
    /// start, daemon RSS, `allow add`, `status`, `allow list --json`, clustered and spread lists),
    /// comma-separated, or `none` (default 10000,100000,1000000; 10000,100000 with --quick).
    #[arg(long, value_name = "LIST")]
    pub control_sizes: Option<String>,
    /// IPv4 list shapes for `xdp`, comma-separated: `routed` (like a routing table) and `spread`
    /// (every entry its own random /24, with the "many sources, denied" rows); default both.
    #[arg(long, value_name = "LIST")]
    pub shapes: Option<String>,
    /// Also write the report to docs/benchmarks.md and its charts to docs/ (with `all` or
    /// `report`).
    #[arg(long)]
    pub publish: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Suite {
    /// The XDP program through BPF_PROG_TEST_RUN against an empty program: per packet class,
    /// per allowlist size, hot and with many sources; load time and kernel memory. Then the
    /// control plane with the release binary: daemon start and RSS, `allow add`, `status`,
    /// `allow list --json` (see --control-sizes).
    Xdp,
    /// A SYN flood over a veth from an in-kernel generator, dropped by the gatekeeper's XDP
    /// program, by nftables (netdev ingress), by nothing, and by an empty XDP_DROP program.
    Flood,
    /// The SMTP relay: messages per second, latency, RSS, beside Postfix when installed.
    Relay,
    /// xdp (sizes up to 1,000,000), flood, then the report (with relay.json if present).
    All,
    /// Only the report, from the JSON files already under target/bench/.
    Report,
}

/// Allowlist sizes of the `xdp` part of `all`.
const ALL_SIZES: &str = "10,10000,100000,1000000";

pub fn run(args: &Args) -> anyhow::Result<()> {
    if args.suite == Suite::Report {
        return crate::report::write(args.publish);
    }
    if !shell::is_root() {
        anyhow::bail!("benchmarks load BPF programs: run as root (`sudo -E cargo xtask bench`)");
    }
    crate::setup::run()?;
    if args.suite != Suite::Relay {
        crate::build::ebpf_objects()?;
    }
    match args.suite {
        Suite::Xdp => xdp(args, args.sizes.as_deref()),
        Suite::Flood => flood(args),
        Suite::Relay => crate::bench_relay::run(),
        Suite::All => {
            xdp(args, Some(args.sizes.as_deref().unwrap_or(ALL_SIZES)))?;
            flood(args)?;
            crate::report::write(args.publish)
        }
        Suite::Report => unreachable!("handled above"),
    }
}

fn xdp(args: &Args, sizes: Option<&str>) -> anyhow::Result<()> {
    step("bench xdp: ns per packet through BPF_PROG_TEST_RUN, beside an empty XDP program");
    let mut cmd = bench_command("xdp");
    if args.quick {
        cmd.arg("--quick");
    }
    if let Some(sizes) = sizes {
        cmd.args(["--sizes", sizes]);
    }
    if let Some(shapes) = &args.shapes {
        cmd.args(["--shapes", shapes]);
    }
    shell::run(&mut cmd)?;
    control(args)
}

/// Control-plane sizes when `--control-sizes` is not given.
const CONTROL_SIZES: &str = "10000,100000,1000000";
const CONTROL_SIZES_QUICK: &str = "10000,100000";

/// The control-plane rows: the release binary against lists of each size and shape, attached to
/// a veth in namespaces the benchmark creates and removes.
fn control(args: &Args) -> anyhow::Result<()> {
    let sizes = match args.control_sizes.as_deref() {
        Some("none") => return Ok(()),
        Some(sizes) => sizes,
        None if args.quick => CONTROL_SIZES_QUICK,
        None => CONTROL_SIZES,
    };
    step("bench control: build the gatekeeper binary (release)");
    shell::run(shell::cargo().args([
        "build",
        "--release",
        "-p",
        "gatekeeper",
        "--bin",
        "gatekeeper",
    ]))?;
    step("bench control: daemon start and RSS, allow add, status, allow list --json");
    let binary = shell::workspace_root().join("target/release/gatekeeper");
    let mut cmd = bench_command("control");
    cmd.env("GATEKEEPER_BIN", binary).args(["--sizes", sizes]);
    if args.quick {
        cmd.arg("--quick");
    }
    shell::run(&mut cmd)
}

fn flood(args: &Args) -> anyhow::Result<()> {
    ensure_nftables()?;
    step(
        "bench flood: a SYN flood over a veth against XDP, nftables, no filter and an empty XDP_DROP",
    );
    let mut cmd = bench_command("flood");
    if args.quick {
        cmd.arg("--quick");
    }
    shell::run(&mut cmd)
}

fn bench_command(bench: &str) -> Command {
    let mut cmd = shell::cargo();
    cmd.args([
        "bench",
        "--package",
        "gatekeeper-tests",
        "--bench",
        bench,
        "--",
    ]);
    cmd
}

/// The flood benchmark's nftables baseline needs `nft`: installed from Debian when missing.
fn ensure_nftables() -> anyhow::Result<()> {
    if succeeds(Command::new("nft").arg("--version")) {
        println!("    ok: nftables (`nft`, the flood benchmark's baseline filter)");
        return Ok(());
    }
    step("bench: installing nftables from Debian (the flood benchmark compares XDP with it)");
    let install = |cmd: &mut Command| {
        shell::run(cmd.env("DEBIAN_FRONTEND", "noninteractive").args([
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "nftables",
        ]))
    };
    if install(&mut Command::new("apt-get")).is_err() {
        shell::run(Command::new("apt-get").args(["update", "-qq"]))
            .context("`apt-get update` failed")?;
        install(&mut Command::new("apt-get")).context("installing nftables failed")?;
    }
    Ok(())
}
