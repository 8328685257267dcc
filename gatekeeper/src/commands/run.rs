//! `gatekeeper run`: the daemon.

use std::{path::Path, time::Duration};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use gatekeeper::{
    bpffs, capabilities,
    config::Config,
    events,
    filter::{Filter, LoadOptions},
    stats, sync,
};
use tokio::io::{Interest, unix::AsyncFd};
use tracing::{info, warn};

use super::join_ports;

/// How often the daemon reports drop events the kernel suppressed.
const SUPPRESSED_REPORT_INTERVAL: Duration = Duration::from_secs(10);

pub fn run(path: &Path, ifaces: Vec<String>) -> anyhow::Result<()> {
    let mut config = Config::load(path)?;
    if !ifaces.is_empty() {
        config.interfaces = ifaces;
    }
    capabilities::ensure_can_load()?;
    bpffs::ensure_pin_dir(&config.pin_dir)?;

    let mut filter = Filter::load_with(&LoadOptions {
        pin_dir: Some(&config.pin_dir),
        ipv4_lookup: config.ipv4_lookup,
        dir24_blocks: config.ipv4_dir24_blocks,
    })?;
    // Maps are filled before the program is attached, so it never runs with an empty allowlist.
    sync::apply(filter.maps(), &config)?;
    info!(
        config = %path.display(),
        mode = %config.mode,
        ports = %join_ports(&config.protected_ports),
        entries = config.allow.len(),
        pin_dir = %config.pin_dir.display(),
        ipv4_lookup = filter.maps().ipv4_lookup()?,
        "allowlist loaded"
    );
    for (index, iface) in config.interfaces.iter().enumerate() {
        let slot = u32::try_from(index + 1).unwrap_or(u32::MAX);
        if let Err(err) = filter.attach(iface, config.xdp_mode, slot) {
            // Leave nothing half-attached.
            filter.detach_all()?;
            filter.unpin()?;
            return Err(err);
        }
    }
    info!(interfaces = %config.interfaces.join(","), "enforcing; stop with SIGINT or SIGTERM");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime failed")?;
    let events = filter.take_events();
    let result = runtime.block_on(serve(&mut filter, events));
    filter.detach_all()?;
    filter.unpin()?;
    result
}

async fn serve(filter: &mut Filter, events: Option<RingBuf<MapData>>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut events = match events {
        Some(ring) => {
            // SAFETY: the ring buffer owns its fd and keeps it open for as long as the AsyncFd
            // that owns the ring buffer is registered.
            let fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
                .map_err(|e| e.into_parts().1)
                .context("watching the drop-event ring buffer")?;
            Some(fd)
        }
        None => None,
    };
    let mut report = tokio::time::interval(SUPPRESSED_REPORT_INTERVAL);
    let mut suppressed_reported = 0u64;
    loop {
        tokio::select! {
            _ = interrupt.recv() => { info!(signal = "SIGINT", "stopping"); return Ok(()); }
            _ = terminate.recv() => { info!(signal = "SIGTERM", "stopping"); return Ok(()); }
            ready = readable(&mut events) => {
                let mut guard = ready?;
                while let Some(item) = guard.get_inner_mut().next() {
                    match events::decode(&item) {
                        Some(drop) if drop.monitor => info!(
                            source = %drop.source,
                            dest_port = drop.dest_port,
                            iface = %events::interface_name(drop.ifindex),
                            "would drop SYN from a source outside the allowlist (monitor mode, passed)"
                        ),
                        Some(drop) => info!(
                            source = %drop.source,
                            dest_port = drop.dest_port,
                            iface = %events::interface_name(drop.ifindex),
                            "dropped SYN from a source outside the allowlist"
                        ),
                        None => warn!(len = item.len(), "undecodable drop event"),
                    }
                }
                guard.clear_ready();
            }
            _ = report.tick() => {
                let suppressed: u64 = stats::collect(filter.maps())?
                    .iter()
                    .map(|s| s.total("events_suppressed"))
                    .sum();
                if suppressed > suppressed_reported {
                    info!(
                        suppressed = suppressed - suppressed_reported,
                        total = suppressed,
                        "drop events suppressed by the in-kernel rate limit (see `gatekeeper stats` for counts)"
                    );
                    suppressed_reported = suppressed;
                }
            }
        }
    }
}

async fn readable(
    events: &mut Option<AsyncFd<RingBuf<MapData>>>,
) -> std::io::Result<tokio::io::unix::AsyncFdReadyMutGuard<'_, RingBuf<MapData>>> {
    match events {
        Some(fd) => fd.readable_mut().await,
        None => std::future::pending().await,
    }
}
