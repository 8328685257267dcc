//! Where the gatekeeper's advisory locks are, and what it says when one is held: one on a lock
//! file next to the config, so two admins (or an admin and the daemon's reload) never interleave
//! their edits; one on the pin directory, held by the running daemon, so a second daemon or
//! `gatekeeper detach` cannot pull the state from under it. The locking itself is
//! gatekeeper-support's.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
pub use gatekeeper_support::lock::Lock;
use gatekeeper_support::lock::{lock_file_waiting, try_lock_dir};

/// The lock file guarding edits of `config`: `<config>.lock` in the same directory.
pub fn config_lock_path(config: &Path) -> PathBuf {
    let mut name = config
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| "gatekeeper.toml".into());
    name.push(".lock");
    config.with_file_name(name)
}

/// Takes the exclusive edit lock of `config`, waiting up to `timeout` for another holder.
/// A symlinked config is locked next to the file it points to.
pub fn lock_config(config: &Path, timeout: Duration) -> anyhow::Result<Lock> {
    let real = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_path_buf());
    let path = config_lock_path(&real);
    lock_file_waiting(&path, timeout)
        .with_context(|| format!("opening the lock file {}", path.display()))?
        .with_context(|| {
            format!(
                "{} is locked by another gatekeeper command (waited {timeout:?}); try again",
                path.display()
            )
        })
}

/// Takes the lock on the pin directory `dir` without waiting; `None` if a daemon holds it.
pub fn try_lock_pin_dir(dir: &Path) -> anyhow::Result<Option<Lock>> {
    try_lock_dir(dir).with_context(|| format!("opening the pin directory {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_config_lock_waits_then_fails() {
        let dir = std::env::temp_dir().join(format!("gk-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let config = dir.join("gatekeeper.toml");
        assert_eq!(config_lock_path(&config), dir.join("gatekeeper.toml.lock"));
        let first = lock_config(&config, Duration::from_secs(1)).expect("first lock");
        let second = lock_config(&config, Duration::from_millis(100));
        let err = second.expect_err("held by the first");
        assert!(err.to_string().contains("is locked by another"), "{err}");
        drop(first);
        lock_config(&config, Duration::from_millis(100)).expect("free again");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
