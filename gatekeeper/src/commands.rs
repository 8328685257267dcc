//! One function per CLI verb.

use std::path::Path;

use anyhow::Context as _;
use gatekeeper::{capabilities, config::Config, filter::Filter};
use tracing::info;

use crate::cli::{Cli, Command};

pub fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { config, ifaces } => run(&config, ifaces),
        Command::Check { config } => check(&config),
    }
}

fn check(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let (v4, v6) = config
        .allow
        .iter()
        .partition::<Vec<_>, _>(|e| e.net.addr().is_ipv4());
    println!(
        "{}: ok: interfaces {}, xdp_mode {}, protected ports {}, allowlist {} IPv4 + {} IPv6 entries",
        path.display(),
        config.interfaces.join(","),
        config.xdp_mode,
        join(&config.protected_ports),
        v4.len(),
        v6.len()
    );
    Ok(())
}

fn run(path: &Path, ifaces: Vec<String>) -> anyhow::Result<()> {
    let mut config = Config::load(path)?;
    if !ifaces.is_empty() {
        config.interfaces = ifaces;
    }
    capabilities::ensure_can_load()?;

    let mut filter = Filter::load()?;
    // Maps are filled before the program is attached, so it never runs with an empty allowlist.
    filter.protect_ports(&config.protected_ports)?;
    for entry in &config.allow {
        filter.allow(entry.net)?;
    }
    info!(
        config = %path.display(),
        ports = %join(&config.protected_ports),
        entries = config.allow.len(),
        "allowlist loaded"
    );
    for iface in &config.interfaces {
        if let Err(err) = filter.attach(iface, config.xdp_mode) {
            // Leave nothing half-attached.
            filter.detach_all()?;
            return Err(err);
        }
    }
    info!(interfaces = %config.interfaces.join(","), "enforcing; stop with SIGINT or SIGTERM");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime failed")?;
    let signal = runtime.block_on(wait_for_stop_signal())?;
    info!(signal, "stopping");
    filter.detach_all()
}

async fn wait_for_stop_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    Ok(tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    })
}

fn join(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}
