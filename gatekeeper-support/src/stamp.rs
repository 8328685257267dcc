//! Noticing that a file changed, by polling its metadata. A rename over the file (how editors,
//! `gatekeeper allow` and certificate renewals save) changes the inode; an in-place write changes
//! the size or the modification time. One `stat` per look, far cheaper than re-reading.

use std::{
    os::unix::fs::MetadataExt as _,
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

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
    /// The stamp of `path` now (following symlinks), or `None` if it is missing or unreadable;
    /// that too is a state a change is noticed from.
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

    /// The modification time: any write(2) to the file sets it to now.
    pub fn modified(&self) -> SystemTime {
        let nanos = u32::try_from(self.mtime_nsec).unwrap_or(0);
        match u64::try_from(self.mtime) {
            Ok(secs) => UNIX_EPOCH + Duration::new(secs, nanos),
            Err(_) => UNIX_EPOCH,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    #[test]
    fn a_rename_over_the_file_changes_the_stamp() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("gatekeeper.toml");
        std::fs::write(&path, "a").expect("write");
        let first = FileStamp::of(&path).expect("stamp");
        assert_eq!(FileStamp::of(&path), Some(first));
        crate::atomic::replace(&path, b"a").expect("replace");
        assert_ne!(FileStamp::of(&path), Some(first));
        assert_eq!(FileStamp::of(&dir.path().join("missing")), None);
    }

    #[test]
    fn an_in_place_append_changes_the_stamp() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("cert.pem");
        std::fs::write(&path, "a").expect("write");
        let first = FileStamp::of(&path);
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(b"b"))
            .expect("append");
        assert_ne!(FileStamp::of(&path), first);
        std::fs::remove_file(&path).expect("rm");
        assert_eq!(FileStamp::of(&path), None);
    }
}
