//! Helpers for the end-to-end tests and the demo: network namespaces, veth pairs, sockets opened
//! inside a namespace, daemons, crafted frames. Everything a helper creates is removed when its
//! guard is dropped, also when a test fails.

pub mod addresses;
pub mod ban_socket;
pub mod cleanup;
pub mod debian;
pub mod dirs;
pub mod etcd;
pub mod frames;
pub mod generate;
pub mod gk;
pub mod netns;
pub mod notify;
pub mod nsd;
pub mod process;
#[cfg(feature = "program")]
pub mod program;
pub mod raw;
pub mod reference;
pub mod smtp_sink;
#[cfg(feature = "program")]
pub mod summary;
pub mod tcp;

use std::path::PathBuf;

/// Whether a kernel test can run here. Without root it prints a visible SKIP line with the reason
/// and returns false; under CI (`CI=true`) a missing privilege is a failure, never a skip.
pub fn kernel_tests_enabled(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let reason = "needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN for namespaces)";
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{test}: {reason}, and CI must run every kernel test");
    }
    eprintln!("SKIP {test}: {reason}; run `sudo cargo xtask test`");
    false
}

/// Path of a binary of this workspace, as built by `cargo xtask build` / `cargo xtask test`
/// (`GATEKEEPER_BIN`, `SMTP_RELAY_BIN` override it).
pub fn workspace_binary(name: &str) -> PathBuf {
    let var = format!("{}_BIN", name.to_uppercase().replace('-', "_"));
    if let Some(path) = std::env::var_os(&var) {
        return PathBuf::from(path);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.parent().unwrap_or(&root).join("target"));
    target.join("debug").join(name)
}

/// A unique name for this process and call, short enough for an interface name (≤ 15 bytes).
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!("{prefix}{}{n}", std::process::id() % 100_000);
    assert!(name.len() <= 15, "interface name {name} too long");
    name
}
