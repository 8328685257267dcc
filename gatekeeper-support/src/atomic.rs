//! Replacing a file atomically: readers see the old or the new file, never a mix, and after a
//! crash it is one or the other. The temp file gets a random name and is created with
//! `O_CREAT|O_EXCL|O_NOFOLLOW`, so a local user cannot plant a symlink where it will be written;
//! it takes the mode, owner, group and extended attributes (POSIX ACLs among them) of the file it
//! replaces before any byte goes in, so whoever could read the old file can read the new one.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

/// Mode of a file that did not exist before: private, as for every file the daemons create.
pub const NEW_FILE_MODE: u32 = 0o600;

/// A replacement that did not happen; the file is as it was.
#[derive(Debug, thiserror::Error)]
pub enum ReplaceError {
    #[error("{0} names no file")]
    NoFileName(PathBuf),
    #[error("{0} is a symbolic link; replace the file it points to")]
    Symlink(PathBuf),
    #[error("keeping the extended attribute {name} of {path}")]
    Xattr {
        name: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{step} {path}")]
    Io {
        step: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl From<ReplaceError> for io::Error {
    fn from(err: ReplaceError) -> io::Error {
        let kind = match &err {
            ReplaceError::Io { source, .. } | ReplaceError::Xattr { source, .. } => source.kind(),
            ReplaceError::NoFileName(_) | ReplaceError::Symlink(_) => io::ErrorKind::InvalidInput,
        };
        io::Error::new(kind, err)
    }
}

/// Replaces `path` with `contents`, the temp file next to it.
pub fn replace(path: &Path, contents: &[u8]) -> Result<(), ReplaceError> {
    replace_staged_in(path, parent(path), contents)
}

/// Replaces `path` with `contents`, the temp file in `staging` (on the same filesystem), for
/// callers that sweep a directory of their own for leftovers of a crash.
pub fn replace_staged_in(path: &Path, staging: &Path, contents: &[u8]) -> Result<(), ReplaceError> {
    let mut staged = stage_in(path, staging)?;
    staged
        .file()
        .write_all(contents)
        .map_err(io_err("writing", staged.tmp.path()))?;
    staged.commit()
}

/// A replacement under way: the new contents go into [`Staged::file`] (a temp file that already
/// has the mode, owner and group of the file it replaces), and [`Staged::commit`] puts it in
/// place. Dropped uncommitted, the temp file is removed and `path` stays as it was. For writers
/// that produce the new file piece by piece (a million-entry config edited in one line).
pub struct Staged {
    tmp: tempfile::NamedTempFile,
    path: PathBuf,
}

/// Starts replacing `path`, the temp file next to it.
pub fn stage(path: &Path) -> Result<Staged, ReplaceError> {
    stage_in(path, parent(path))
}

fn io_err(step: &'static str, at: &Path) -> impl FnOnce(io::Error) -> ReplaceError {
    let path = at.to_path_buf();
    move |source| ReplaceError::Io { step, path, source }
}

fn stage_in(path: &Path, staging: &Path) -> Result<Staged, ReplaceError> {
    let name = path
        .file_name()
        .ok_or_else(|| ReplaceError::NoFileName(path.to_path_buf()))?;
    // A link would be replaced by a plain file: the caller resolves links it means to follow.
    let keep = match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(ReplaceError::Symlink(path.to_path_buf()));
        }
        Ok(meta) => Some(meta),
        Err(err) if err.kind() == io::ErrorKind::NotFound => None,
        Err(err) => return Err(io_err("reading the metadata of", path)(err)),
    };
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    let tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .make_in(staging, create_exclusive)
        .map_err(io_err("creating a temp file in", staging))?;
    if let Some(meta) = &keep {
        // Owner first: chown clears set-id bits, the mode below puts back what was there.
        std::os::unix::fs::fchown(tmp.as_file(), Some(meta.uid()), Some(meta.gid()))
            .map_err(io_err("keeping the owner and group of", path))?;
    }
    let mode = keep.as_ref().map_or(NEW_FILE_MODE, |m| m.mode() & 0o7777);
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_err("setting the mode of", tmp.path()))?;
    if keep.is_some() {
        // After the mode: an ACL's mask entry is the group bits, and the ACL carries the old
        // file's own.
        copy_xattrs(path, tmp.as_file())?;
    }
    Ok(Staged {
        tmp,
        path: path.to_path_buf(),
    })
}

impl Staged {
    /// The temp file the new contents go into.
    pub fn file(&mut self) -> &mut File {
        self.tmp.as_file_mut()
    }

    /// Puts the new file in place: fsync, rename over the old one, fsync the directory.
    pub fn commit(self) -> Result<(), ReplaceError> {
        let Staged { tmp, path } = self;
        tmp.as_file()
            .sync_all()
            .map_err(io_err("fsync", tmp.path()))?;
        // On failure the PersistError drops the temp file, which removes it.
        tmp.persist(&path)
            .map_err(|e| io_err("renaming the temp file over", &path)(e.error))?;
        let dir = parent(&path);
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("fsync the directory", dir))
    }
}

/// Copies every extended attribute of `from` (not followed if a link) to `to`. One the new file
/// already has with the same value (an SELinux label the directory gave it) is left alone; one
/// that cannot be set fails the replacement rather than silently dropping an ACL.
fn copy_xattrs(from: &Path, to: &File) -> Result<(), ReplaceError> {
    use xattr::FileExt as _;
    let names = match xattr::list(from) {
        Ok(names) => names,
        // A filesystem without extended attributes has none to keep.
        Err(err) if err.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(()),
        Err(source) => {
            return Err(ReplaceError::Io {
                step: "listing the extended attributes of",
                path: from.to_path_buf(),
                source,
            });
        }
    };
    for name in names {
        let failed = |source| ReplaceError::Xattr {
            name: name.to_string_lossy().into_owned(),
            path: from.to_path_buf(),
            source,
        };
        let Some(value) = xattr::get(from, &name).map_err(failed)? else {
            continue; // removed meanwhile
        };
        if to.get_xattr(&name).ok().flatten().as_deref() == Some(value.as_slice()) {
            continue;
        }
        to.set_xattr(&name, &value).map_err(failed)?;
    }
    Ok(())
}

/// The directory a file is in (`.` for a bare name).
fn parent(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Creates `path` for writing, failing if anything (a file, a symlink) is already there.
fn create_exclusive(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(NEW_FILE_MODE)
        .open(path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn names(dir: &Path) -> Vec<std::ffi::OsString> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .expect("list")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn replaces_the_file_and_keeps_its_mode() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("gatekeeper.toml");
        fs::write(&path, "old\n").expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).expect("chmod");
        replace(&path, b"new\n").expect("atomic write");
        assert_eq!(fs::read_to_string(&path).expect("read"), "new\n");
        let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        // No temp file is left behind.
        assert_eq!(
            names(dir.path()),
            vec![std::ffi::OsString::from("gatekeeper.toml")]
        );
        // A directory that cannot take the temp file: an error, the old file untouched.
        let err =
            replace(&dir.path().join("missing").join("gatekeeper.toml"), b"x").expect_err("no dir");
        assert!(
            format!("{:#}", anyhow::Error::from(err)).contains("creating"),
            "error names the step"
        );
    }

    #[test]
    fn keeps_owner_and_group() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("relay.env");
        fs::write(&path, "old").expect("write");
        // As root the file goes to another owner; otherwise it stays ours, which still checks
        // that the replacement does not fall back to the writer's defaults.
        let (uid, gid) = match std::os::unix::fs::chown(&path, Some(4321), Some(8765)) {
            Ok(()) => (4321, 8765),
            Err(_) => {
                let meta = fs::metadata(&path).expect("stat");
                (meta.uid(), meta.gid())
            }
        };
        fs::set_permissions(&path, fs::Permissions::from_mode(0o604)).expect("chmod");
        replace(&path, b"new").expect("replace");
        let meta = fs::metadata(&path).expect("stat");
        assert_eq!((meta.uid(), meta.gid()), (uid, gid));
        assert_eq!(meta.mode() & 0o7777, 0o604);
        assert_eq!(fs::read(&path).expect("read"), b"new");
    }

    #[test]
    fn keeps_extended_attributes() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("gatekeeper.toml");
        fs::write(&path, "old").expect("write");
        match xattr::set(&path, "user.gatekeeper.test", b"kept") {
            Ok(()) => {}
            Err(err) => {
                eprintln!("SKIP keeps_extended_attributes: no user xattrs here ({err})");
                return;
            }
        }
        replace(&path, b"new").expect("replace");
        assert_eq!(
            xattr::get(&path, "user.gatekeeper.test").expect("get"),
            Some(b"kept".to_vec())
        );
        assert_eq!(fs::read(&path).expect("read"), b"new");
    }

    #[test]
    fn a_new_file_is_private() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("fresh");
        replace(&path, b"x").expect("replace");
        assert_eq!(
            fs::metadata(&path).expect("stat").mode() & 0o777,
            NEW_FILE_MODE
        );
    }

    #[test]
    fn a_planted_symlink_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let victim = dir.path().join("victim");
        fs::write(&victim, "precious").expect("write");
        // At the temp name: the exclusive create fails instead of writing through the link.
        let planted = dir.path().join(".gatekeeper.toml.XXXXXX.tmp");
        symlink(&victim, &planted).expect("plant");
        let err = create_exclusive(&planted).expect_err("planted link");
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        // At the target: refused, the link and the file it points to stay as they were.
        let err = replace(&planted, b"evil").expect_err("symlink target");
        assert!(matches!(err, ReplaceError::Symlink(_)), "{err}");
        assert_eq!(fs::read_to_string(&victim).expect("read"), "precious");
        assert!(
            fs::symlink_metadata(&planted)
                .expect("stat")
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn a_staging_directory_holds_the_temp_file() {
        let dir = tempfile::tempdir().expect("dir");
        let staging = dir.path().join("tmp");
        fs::create_dir(&staging).expect("mkdir");
        let path = dir.path().join("abc.env");
        replace_staged_in(&path, &staging, b"{}").expect("replace");
        assert_eq!(fs::read(&path).expect("read"), b"{}");
        assert!(names(&staging).is_empty());
    }
}
