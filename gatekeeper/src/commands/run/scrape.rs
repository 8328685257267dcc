//! The daemon's `/metrics`, on a thread of its own (with its own async runtime, at a lower CPU
//! priority): the daemon's event loop, which applies reloads, never serves a connection, never
//! renders, and holds no lock a render needs; it only publishes its counts. A snapshot is rendered
//! on a blocking thread from the renderer's own handles on the pinned maps (a walk over every
//! allowlist entry: about a second at 100k entries), at most once a second however many clients
//! ask (see [`endpoint::serve_cached`]).

use std::{
    net::{SocketAddr, TcpListener as StdListener},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, anyhow};
use gatekeeper::{
    maps::FilterMaps,
    metrics::{self, DaemonCounts},
};
use gatekeeper_support::metrics::endpoint;
use tokio::net::TcpListener;
use tracing::{error, info};

/// How long one rendered snapshot answers scrapes.
const FRESH_FOR: Duration = Duration::from_secs(1);
/// The metrics thread's nice value: under load, reloads and packets' userspace come first.
const NICE: libc::c_int = 10;

/// The daemon's counts, published for the renderer.
pub(super) type SharedCounts = Arc<Mutex<DaemonCounts>>;

/// Binds `addr` (so a taken port fails the start) and serves `GET /metrics` there on a thread of
/// its own until the process exits.
pub(super) fn serve(
    addr: SocketAddr,
    pin_dir: PathBuf,
    counts: SharedCounts,
) -> anyhow::Result<()> {
    let listener =
        StdListener::bind(addr).with_context(|| format!("listening for metrics on {addr}"))?;
    listener
        .set_nonblocking(true)
        .context("making the metrics socket non-blocking")?;
    std::thread::Builder::new()
        .name("gk-metrics".into())
        .spawn(move || {
            // SAFETY: setpriority on this thread's own id (Linux nice values are per thread);
            // threads it starts (the render threads) inherit it.
            unsafe {
                libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, NICE);
            }
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(err) => {
                    error!(error = %err, "starting the metrics runtime failed: no /metrics");
                    return;
                }
            };
            runtime.block_on(async move {
                let listener = match TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(err) => {
                        error!(error = %err, "serving metrics failed: no /metrics");
                        return;
                    }
                };
                info!(%addr, "serving Prometheus metrics at /metrics");
                endpoint::serve_cached(listener, move || render(&pin_dir, &counts), FRESH_FOR)
                    .await;
            });
        })
        .context("starting the metrics thread")?;
    Ok(())
}

/// One snapshot, rendered on a blocking thread.
fn render(
    pin_dir: &std::path::Path,
    counts: &SharedCounts,
) -> impl std::future::Future<Output = anyhow::Result<String>> + use<> {
    let pin_dir = pin_dir.to_path_buf();
    let counts = Arc::clone(counts);
    async move {
        tokio::task::spawn_blocking(move || {
            let counts = *counts
                .lock()
                .map_err(|_| anyhow!("daemon counts poisoned"))?;
            let maps = FilterMaps::open_pinned(&pin_dir)?;
            metrics::render(&maps, &counts)
        })
        .await
        .map_err(|err| anyhow!("rendering metrics failed: {err}"))?
    }
}
