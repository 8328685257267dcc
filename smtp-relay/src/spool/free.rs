//! Spent spool files kept for reuse: a delivered message's `.eml` and `.env` move to
//! `free/` instead of being unlinked, and the next messages are written into them (renamed
//! into `tmp/`, overwritten, cut to length). A spool turns over two files per message; ext4
//! without a journal skips every inode freed in the last minute (minutes more while its
//! table block is not yet written back) when it allocates one — a scan that grows with the
//! delivery rate, made while holding the directory's lock, so every session's file creation
//! waits for it. Reused files allocate no inode, and on any filesystem save the inode and
//! bitmap updates of a create and an unlink.
//!
//! A spent file is emptied as it enters the pool, so a delivered message is no more readable
//! from `free/` than from an unlinked file (its blocks are released as an unlink would). Files
//! in `free/` are garbage: a crash may leave any number there, and they are emptied at start
//! and reused (or removed when over [`MAX_FREE`]) like the others.

use std::fs;
use std::io;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Most spent files kept; beyond that they are unlinked.
pub const MAX_FREE: usize = 4096;

/// The pool of spent files under `<spool_dir>/free`.
#[derive(Debug)]
pub struct Free {
    dir: PathBuf,
    names: Mutex<Vec<String>>,
}

/// Cuts the spent file at `path` to nothing (a delivered message's content must not outlive its
/// delivery); not synced: after a crash `Free::open` empties it again.
fn empty(path: &Path) -> io::Result<()> {
    fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?
        .set_len(0)
}

impl Free {
    /// Creates `free/` (0700) if needed and takes what it holds into the pool.
    pub fn open(spool_dir: &Path) -> io::Result<Free> {
        let dir = spool_dir.join("free");
        super::create_private_dir(&dir)?;
        let mut names = Vec::new();
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            match name.to_str() {
                Some(n) if super::is_valid_id(n) && names.len() < MAX_FREE => {
                    // A crash between the move and the emptying in `keep`.
                    empty(&entry.path())?;
                    names.push(n.to_owned());
                }
                _ => fs::remove_file(entry.path())?,
            }
        }
        Ok(Free {
            dir,
            names: Mutex::new(names),
        })
    }

    fn names(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Moves the spent file `path` into the pool (unlinks it when the pool is full). A file
    /// that is already gone is fine.
    pub fn keep(&self, path: &Path) -> io::Result<()> {
        let result = if self.names().len() >= MAX_FREE {
            fs::remove_file(path)
        } else {
            let name = super::new_id();
            let kept = self.dir.join(&name);
            // Moved first, emptied after: the spool never holds an emptied envelope.
            fs::rename(path, &kept)
                .and_then(|()| empty(&kept))
                .map(|()| self.names().push(name))
        };
        match result {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// A file at `path` (which must not exist) to write from its start: a spent one moved
    /// there, else a new one (`O_EXCL`). Either way 0600 and opened `O_NOFOLLOW`. The caller
    /// cuts it to the length written ([`fs::File::set_len`]): a reused file may be longer.
    pub fn create(&self, path: &Path) -> io::Result<fs::File> {
        let spent = self.names().pop();
        if let Some(name) = spent
            && fs::rename(self.dir.join(name), path).is_ok()
        {
            match fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)
            {
                Ok(f) => return Ok(f),
                // Not usable after all: a new file in its place.
                Err(_) => fs::remove_file(path)?,
            }
        }
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(path)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.names().len()
    }
}
