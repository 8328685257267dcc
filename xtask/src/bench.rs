//! `cargo xtask bench`: performance figures, always as ratios against a baseline measured in the
//! same run. Results go to `target/bench/*.json` beside the printed tables.

use crate::shell::{self, step};

#[derive(clap::Args)]
pub struct Args {
    /// What to measure.
    #[arg(value_enum, default_value_t = Suite::Xdp)]
    pub suite: Suite,
    /// Fewer repetitions: a quick look, not figures to publish.
    #[arg(long)]
    pub quick: bool,
    /// Allowlist sizes for `xdp`, comma-separated (default 10,10000,1000000).
    #[arg(long, value_name = "LIST")]
    pub sizes: Option<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Suite {
    /// The XDP program through BPF_PROG_TEST_RUN against an empty program: per packet class,
    /// per allowlist size, hot and with many sources; load time and kernel memory.
    Xdp,
    /// The SMTP relay: messages per second, latency, RSS, beside Postfix when installed.
    Relay,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    if !shell::is_root() {
        anyhow::bail!("benchmarks load BPF programs: run as root (`sudo -E cargo xtask bench`)");
    }
    crate::setup::run()?;
    match args.suite {
        Suite::Xdp => {
            step("bench xdp: ns per packet through BPF_PROG_TEST_RUN, beside an empty XDP program");
            let mut cmd = shell::cargo();
            cmd.args([
                "bench",
                "--package",
                "gatekeeper-tests",
                "--bench",
                "xdp",
                "--",
            ]);
            if args.quick {
                cmd.arg("--quick");
            }
            if let Some(sizes) = &args.sizes {
                cmd.args(["--sizes", sizes]);
            }
            shell::run(&mut cmd)
        }
        Suite::Relay => crate::bench_relay::run(),
    }
}
