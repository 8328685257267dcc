//! Noticing that the config file changed: its identity and timestamp, polled. A rename over the
//! file (how editors and `gatekeeper allow` save) changes the inode; an in-place write changes the
//! mtime or size.

use std::{os::unix::fs::MetadataExt as _, path::Path};

/// What identifies one version of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl FileStamp {
    /// The stamp of `path` now (following symlinks), or `None` if it cannot be read.
    pub fn of(path: &Path) -> Option<FileStamp> {
        let meta = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rename_over_the_file_changes_the_stamp() {
        let dir = std::env::temp_dir().join(format!("gk-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("gatekeeper.toml");
        std::fs::write(&path, "a").expect("write");
        let first = FileStamp::of(&path).expect("stamp");
        assert_eq!(FileStamp::of(&path), Some(first));
        crate::edit::write_atomic(&path, "a").expect("replace");
        assert_ne!(FileStamp::of(&path), Some(first));
        assert_eq!(FileStamp::of(&dir.join("missing")), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
