//! Which process holds a `flock` on a file, read from `/proc/locks`, so a daemon that waited too
//! long for a lock can name who holds it (and tell one of its own admin commands from anything
//! else).

use std::{os::unix::fs::MetadataExt as _, path::Path};

/// A process holding a lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    /// Its command name (`/proc/PID/comm`), if it could be read.
    pub command: Option<String>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.command {
            Some(command) => write!(f, "pid {} ({command})", self.pid),
            None => write!(f, "pid {}", self.pid),
        }
    }
}

/// The process holding a `flock` on `path`, if the kernel lists one.
pub fn flock_holder(path: &Path) -> Option<Holder> {
    let meta = std::fs::metadata(path).ok()?;
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let pid = holder_in(&locks, meta.dev(), meta.ino())?;
    let command = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim_end().to_string());
    Some(Holder { pid, command })
}

/// The pid of the granted FLOCK on device `dev`, inode `ino` in a `/proc/locks` text. Lines look
/// like `1: FLOCK  ADVISORY  WRITE 4242 00:1f:1234 0 EOF`; waiters are marked `->` and skipped.
fn holder_in(locks: &str, dev: u64, ino: u64) -> Option<u32> {
    let file_id = format!("{:02x}:{:02x}:{ino}", libc::major(dev), libc::minor(dev));
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [_, "FLOCK", _, _, pid, id, ..] if *id == file_id => pid.parse().ok(),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd as _;

    use super::*;

    #[test]
    fn names_the_holder_of_a_flock() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("x.lock");
        let file = std::fs::File::create(&path).expect("create");
        assert_eq!(flock_holder(&path), None);
        // SAFETY: flock on a file this test owns.
        assert_eq!(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) }, 0);
        let holder = flock_holder(&path).expect("listed in /proc/locks");
        assert_eq!(holder.pid, std::process::id());
        assert!(
            holder
                .to_string()
                .starts_with(&format!("pid {} (", holder.pid))
        );
    }

    #[test]
    fn waiters_and_other_files_are_not_holders() {
        let locks = "1: FLOCK  ADVISORY  WRITE 42 00:1f:77 0 EOF\n\
                     1: -> FLOCK  ADVISORY  WRITE 43 00:1f:99 0 EOF\n\
                     2: POSIX  ADVISORY  WRITE 44 00:1f:99 0 EOF\n";
        let dev = libc::makedev(0, 0x1f);
        assert_eq!(holder_in(locks, dev, 77), Some(42));
        assert_eq!(holder_in(locks, dev, 99), None);
    }
}
