//! Advisory locks (`flock`): one on a lock file next to the config, so two admins (or an admin and
//! the daemon's reload) never interleave their edits; one on the pin directory, held by the running
//! daemon, so a second daemon or `gatekeeper detach` cannot pull the state from under it.

use std::{
    fs::{File, OpenOptions},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// A held lock; released when dropped (or when the process dies, however it dies).
#[derive(Debug)]
pub struct Lock {
    _file: File,
    path: PathBuf,
}

impl Lock {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

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
    // flock needs no write access: an existing lock file in a read-only directory still works.
    let file = match OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
    {
        Ok(file) => file,
        Err(err) => File::open(&path)
            .map_err(|_| err)
            .with_context(|| format!("opening the lock file {}", path.display()))?,
    };
    let deadline = Instant::now() + timeout;
    loop {
        if try_flock(&file)? {
            return Ok(Lock { _file: file, path });
        }
        if Instant::now() >= deadline {
            bail!(
                "{} is locked by another gatekeeper command (waited {timeout:?}); try again",
                path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Takes the lock on the pin directory `dir` without waiting; `None` if a daemon holds it.
pub fn try_lock_pin_dir(dir: &Path) -> anyhow::Result<Option<Lock>> {
    let file =
        File::open(dir).with_context(|| format!("opening the pin directory {}", dir.display()))?;
    Ok(try_flock(&file)?.then(|| Lock {
        _file: file,
        path: dir.to_path_buf(),
    }))
}

/// `flock(LOCK_EX | LOCK_NB)`: true if taken, false if someone else holds it.
fn try_flock(file: &File) -> anyhow::Result<bool> {
    // SAFETY: flock on a valid open fd; the lock lives as long as the file.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        return Ok(false);
    }
    Err(err).context("flock")
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
