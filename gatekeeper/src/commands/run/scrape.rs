//! The daemon's `/metrics`: rendered on a blocking thread from its own handles on the pinned maps
//! (a walk over every allowlist entry: about a second at 100k entries), at most once a second
//! however many clients ask (see [`endpoint::serve_cached`]). The daemon's event loop, which
//! applies reloads, never renders and holds no lock a render needs: it only publishes its counts.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::anyhow;
use gatekeeper::{
    maps::FilterMaps,
    metrics::{self, DaemonCounts},
};
use gatekeeper_support::metrics::endpoint;
use tokio::net::TcpListener;

/// How long one rendered snapshot answers scrapes.
const FRESH_FOR: Duration = Duration::from_secs(1);

/// The daemon's counts, published for the renderer.
pub(super) type SharedCounts = Arc<Mutex<DaemonCounts>>;

/// Serves `GET /metrics` on `listener` in a task of its own.
pub(super) fn serve(listener: TcpListener, pin_dir: PathBuf, counts: SharedCounts) {
    tokio::spawn(endpoint::serve_cached(
        listener,
        move || {
            let pin_dir = pin_dir.clone();
            let counts = Arc::clone(&counts);
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
        },
        FRESH_FOR,
    ));
}
