#[derive(clap::Args)]
pub struct Args {
    /// `relay`: the SMTP relay benchmark (see xtask/src/bench_relay.rs).
    pub target: Option<String>,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    if args.target.as_deref() == Some("relay") {
        return crate::bench_relay::run();
    }
    anyhow::bail!("benchmarks are not built yet")
}
