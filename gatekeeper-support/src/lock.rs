//! Advisory exclusive locks (`flock`, through std's `File::try_lock`): on a lock file, so two
//! writers never interleave, or on a directory, so one daemon owns it. A lock is released when
//! its [`Lock`] is dropped or the process dies, however it dies.

use std::{
    fs::{File, OpenOptions, Permissions, TryLockError},
    io,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// Mode of a lock file this module creates.
pub const LOCK_FILE_MODE: u32 = 0o600;

/// How often a waiting [`lock_file_waiting`] tries again.
const RETRY_INTERVAL: Duration = Duration::from_millis(20);

/// A held lock.
#[derive(Debug)]
pub struct Lock {
    _file: File,
    path: PathBuf,
}

impl Lock {
    /// The lock file or directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Takes the lock of the lock file `path` (created 0600 if missing) if nobody holds it.
pub fn try_lock_file(path: &Path) -> io::Result<Option<Lock>> {
    try_lock(open_lock_file(path)?, path)
}

/// Takes the lock of the lock file `path`, waiting up to `timeout` for another holder;
/// `None` if it is still held then.
pub fn lock_file_waiting(path: &Path, timeout: Duration) -> io::Result<Option<Lock>> {
    let file = open_lock_file(path)?;
    let deadline = Instant::now() + timeout;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(Some(held(file, path))),
            Err(TryLockError::Error(err)) => return Err(err),
            Err(TryLockError::WouldBlock) if Instant::now() >= deadline => return Ok(None),
            Err(TryLockError::WouldBlock) => std::thread::sleep(RETRY_INTERVAL),
        }
    }
}

/// Takes the lock of the directory `dir` if nobody holds it.
pub fn try_lock_dir(dir: &Path) -> io::Result<Option<Lock>> {
    try_lock(File::open(dir)?, dir)
}

fn try_lock(file: File, path: &Path) -> io::Result<Option<Lock>> {
    match file.try_lock() {
        Ok(()) => Ok(Some(held(file, path))),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(err)) => Err(err),
    }
}

fn held(file: File, path: &Path) -> Lock {
    Lock {
        _file: file,
        path: path.to_path_buf(),
    }
}

/// Opens or creates a lock file, never through a symlink. `flock` needs no write access, so an
/// existing lock file in a read-only directory still works. One of ours that others may read
/// (left 0644 by an older version) is made 0600: whoever can open it can `flock` it and block
/// every edit.
fn open_lock_file(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.custom_flags(libc::O_NOFOLLOW);
    let file = match options
        .clone()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(LOCK_FILE_MODE)
        .open(path)
    {
        Ok(file) => file,
        Err(err) => options.read(true).open(path).map_err(|_| err)?,
    };
    let meta = file.metadata()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let mine = meta.uid() == unsafe { libc::geteuid() };
    if mine && meta.mode() & 0o077 != 0 {
        file.set_permissions(Permissions::from_mode(LOCK_FILE_MODE))?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_waits_then_gives_up() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("gatekeeper.toml.lock");
        let first = lock_file_waiting(&path, Duration::from_secs(1))
            .expect("lock")
            .expect("free");
        assert_eq!(first.path(), path);
        let started = Instant::now();
        assert!(
            lock_file_waiting(&path, Duration::from_millis(100))
                .expect("lock")
                .is_none(),
            "held by the first"
        );
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert!(try_lock_file(&path).expect("lock").is_none());
        drop(first);
        assert!(try_lock_file(&path).expect("lock").is_some(), "free again");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, LOCK_FILE_MODE);
    }

    #[test]
    fn a_lock_file_others_could_read_is_made_private() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("gatekeeper.toml.lock");
        std::fs::write(&path, "").expect("an old lock file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let _held = try_lock_file(&path).expect("lock").expect("free");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, LOCK_FILE_MODE);
    }

    #[test]
    fn a_directory_lock_is_exclusive() {
        let dir = tempfile::tempdir().expect("dir");
        let held = try_lock_dir(dir.path()).expect("lock").expect("free");
        assert!(try_lock_dir(dir.path()).expect("lock").is_none());
        drop(held);
        assert!(try_lock_dir(dir.path()).expect("lock").is_some());
        assert!(try_lock_dir(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn a_symlinked_lock_file_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "x").expect("write");
        let link = dir.path().join("spool.lock");
        std::os::unix::fs::symlink(&target, &link).expect("plant");
        assert!(try_lock_file(&link).is_err());
    }
}
