//! The bpffs directory where the filter's state is pinned: found, mounted if the conventional
//! mount point lacks it, created private to root, and refused if another user could reach into
//! it (whoever can delete the link pin turns the filter off). Also tells the CLI's "nothing is
//! pinned" apart from "this process cannot see the pins".

use std::{
    ffi::CString,
    fs::DirBuilder,
    io,
    os::unix::{
        ffi::OsStrExt as _,
        fs::{DirBuilderExt as _, MetadataExt as _},
    },
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use tracing::info;

/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: u32 = 0xcafe_4a11;
/// Where systemd and libbpf expect bpffs.
pub const CONVENTIONAL_MOUNT: &str = "/sys/fs/bpf";
/// How to mount bpffs so that only root can create anything in it (systemd does this at boot).
pub const MOUNT_HINT: &str = "mount -t bpf -o mode=700 bpf /sys/fs/bpf";
/// Mode of the pin directory the daemon creates.
pub const PIN_DIR_MODE: u32 = 0o700;

/// Makes sure `dir` exists on a bpffs mount, mounting bpffs at /sys/fs/bpf if `dir` is below it
/// and nothing is mounted there yet; creates it 0700 and refuses it if another user could
/// delete or replace the pins in it (see [`check_pin_dir`]).
pub fn ensure_pin_dir(dir: &Path) -> anyhow::Result<()> {
    let existing = deepest_existing(dir);
    if !is_bpffs(&existing)? {
        let conventional = Path::new(CONVENTIONAL_MOUNT);
        if !dir.starts_with(conventional) || !conventional.is_dir() {
            bail!(
                "pin_dir {} is not on a bpffs mount (mount one with `{MOUNT_HINT}`, or set pin_dir below one)",
                dir.display()
            );
        }
        mount_bpffs(conventional)?;
    }
    // Every directory created on the way is 0700 (the umask only takes bits away).
    DirBuilder::new()
        .recursive(true)
        .mode(PIN_DIR_MODE)
        .create(dir)
        .with_context(|| format!("creating the pin directory {}", dir.display()))?;
    Ok(check_pin_dir(dir)?)
}

/// A pin directory another local user could reach into: refused, with how to fix it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnsafePinDir {
    #[error(
        "pin_dir {path} is owned by uid {uid}, not by root: that user could delete the filter's pins and turn it off. Check what is in it, remove it (`rm -r {path}`) and keep bpffs private to root (`chmod 700 {mount}` now; at boot `{MOUNT_HINT}`)"
    )]
    ForeignOwner {
        path: String,
        uid: u32,
        mount: String,
    },
    #[error(
        "pin_dir {path} is writable by group or others (mode {mode:04o}): any local user could delete the filter's pins and turn it off. Fix: `chmod 700 {path}`"
    )]
    Writable { path: String, mode: u32 },
    #[error(
        "{path}, above pin_dir {pin_dir} on bpffs, is owned by uid {uid}, not by root: that user could replace pin_dir. Keep bpffs private to root: remove what that user created, and `chmod 700 {mount}` now; at boot `{MOUNT_HINT}`"
    )]
    ForeignParent {
        path: String,
        pin_dir: String,
        uid: u32,
        mount: String,
    },
    #[error(
        "{path}, above pin_dir {pin_dir} on bpffs, is writable by group or others without the sticky bit (mode {mode:04o}): any local user could rename pin_dir away and put their own in its place. Fix: `chmod 700 {path}` (at boot `{MOUNT_HINT}`)"
    )]
    WritableParent {
        path: String,
        pin_dir: String,
        mode: u32,
    },
    #[error("pin_dir {path} is not a directory")]
    NotADirectory { path: String },
    #[error("checking pin_dir {path}: {error}")]
    Unreadable { path: String, error: String },
}

/// Refuses a pin directory that a user other than root (or the daemon's own user) owns or may
/// write, and one whose parents on the same bpffs mount would let such a user swap it: a
/// writable parent is fine only with the sticky bit (bpffs mounted without `mode=` is 1777).
/// The directory is checked as named and, if a symlink is on the way, as resolved.
pub fn check_pin_dir(dir: &Path) -> Result<(), UnsafePinDir> {
    check_path(dir)?;
    match std::fs::canonicalize(dir) {
        Ok(real) if real != dir => check_path(&real),
        Ok(_) => Ok(()),
        Err(err) => Err(unreadable(dir, &err)),
    }
}

fn check_path(dir: &Path) -> Result<(), UnsafePinDir> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let trusted = |uid: u32| uid == 0 || uid == me;
    let shown = |p: &Path| p.display().to_string();
    let meta = std::fs::symlink_metadata(dir).map_err(|e| unreadable(dir, &e))?;
    let mount = mount_root(dir);
    if !trusted(meta.uid()) {
        return Err(UnsafePinDir::ForeignOwner {
            path: shown(dir),
            uid: meta.uid(),
            mount: shown(&mount),
        });
    }
    if !meta.file_type().is_symlink() {
        if !meta.is_dir() {
            return Err(UnsafePinDir::NotADirectory { path: shown(dir) });
        }
        if meta.mode() & 0o022 != 0 {
            return Err(UnsafePinDir::Writable {
                path: shown(dir),
                mode: meta.mode() & 0o7777,
            });
        }
    }
    for parent in dir.ancestors().skip(1) {
        if !parent.starts_with(&mount) {
            break;
        }
        let meta = std::fs::symlink_metadata(parent).map_err(|e| unreadable(parent, &e))?;
        if !trusted(meta.uid()) {
            return Err(UnsafePinDir::ForeignParent {
                path: shown(parent),
                pin_dir: shown(dir),
                uid: meta.uid(),
                mount: shown(&mount),
            });
        }
        let sticky = meta.mode() & libc::S_ISVTX != 0;
        if !meta.file_type().is_symlink() && meta.mode() & 0o022 != 0 && !sticky {
            return Err(UnsafePinDir::WritableParent {
                path: shown(parent),
                pin_dir: shown(dir),
                mode: meta.mode() & 0o7777,
            });
        }
    }
    Ok(())
}

fn unreadable(path: &Path, err: &io::Error) -> UnsafePinDir {
    UnsafePinDir::Unreadable {
        path: path.display().to_string(),
        error: err.to_string(),
    }
}

/// The top of the bpffs mount `path` is on: its highest ancestor still on bpffs.
fn mount_root(path: &Path) -> PathBuf {
    let mut root = path;
    for parent in path.ancestors().skip(1) {
        if !is_bpffs(parent).unwrap_or(false) {
            break;
        }
        root = parent;
    }
    root.to_path_buf()
}

/// Why a command cannot tell whether anything is pinned: it must not report "not loaded" or
/// "nothing to detach" while the filter may well be enforcing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CannotSeePins {
    #[error(
        "cannot see the pins in {pin_dir}: permission denied on {path} (the pins belong to root: run this as root)"
    )]
    PermissionDenied { pin_dir: String, path: String },
    #[error(
        "cannot see the pins in {pin_dir}: {path} is not on bpffs in this mount namespace (`ip netns exec` remounts /sys without it: run the command outside it, or enter only the network namespace with `nsenter --net=/run/netns/NAME`; if bpffs is not mounted at all, nothing was ever pinned: `{MOUNT_HINT}`)"
    )]
    NotBpffs { pin_dir: String, path: String },
    #[error("cannot see the pins in {pin_dir}: {path}: {error}")]
    Other {
        pin_dir: String,
        path: String,
        error: String,
    },
}

/// Whether the pin directory exists, from a process that can see it: `Ok(true)` if it does,
/// `Ok(false)` if it does not and its parent is a readable bpffs directory (truly nothing
/// pinned), an error if this process cannot tell (no permission, or no bpffs where pin_dir
/// should be, as inside `ip netns exec`).
pub fn pin_dir_visible(pin_dir: &Path) -> Result<bool, CannotSeePins> {
    let fail = |path: &Path, err: io::Error| {
        let (pin_dir, path) = (pin_dir.display().to_string(), path.display().to_string());
        if err.kind() == io::ErrorKind::PermissionDenied {
            CannotSeePins::PermissionDenied { pin_dir, path }
        } else {
            CannotSeePins::Other {
                pin_dir,
                path,
                error: err.to_string(),
            }
        }
    };
    match std::fs::read_dir(pin_dir) {
        Ok(_) => {
            return if is_bpffs(pin_dir).unwrap_or(false) {
                Ok(true)
            } else {
                Err(CannotSeePins::NotBpffs {
                    pin_dir: pin_dir.display().to_string(),
                    path: pin_dir.display().to_string(),
                })
            };
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(fail(pin_dir, err)),
    }
    // Missing: truly nothing pinned only if the closest existing parent is a bpffs directory
    // this process may look into.
    let existing = deepest_existing_checked(pin_dir).map_err(|(p, e)| fail(&p, e))?;
    if !is_bpffs(&existing).unwrap_or(false) {
        return Err(CannotSeePins::NotBpffs {
            pin_dir: pin_dir.display().to_string(),
            path: existing.display().to_string(),
        });
    }
    std::fs::read_dir(&existing).map_err(|e| fail(&existing, e))?;
    Ok(false)
}

/// The closest ancestor of `path` that exists; an error other than "not found" on the way (a
/// parent this process may not search) is returned with the path it happened on.
fn deepest_existing_checked(path: &Path) -> Result<PathBuf, (PathBuf, io::Error)> {
    for candidate in path.ancestors().skip(1) {
        match std::fs::symlink_metadata(candidate) {
            Ok(_) => return Ok(candidate.to_path_buf()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err((candidate.to_path_buf(), err)),
        }
    }
    Ok(PathBuf::from("/"))
}

/// For the CLI: an error unless this process can see whether anything is pinned in `pin_dir`.
pub fn require_pins_visible(pin_dir: &Path) -> Result<(), CannotSeePins> {
    pin_dir_visible(pin_dir).map(|_| ())
}

/// Whether `path` lies on a bpffs mount.
pub fn is_bpffs(path: &Path) -> anyhow::Result<bool> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .with_context(|| format!("{} contains a NUL byte", path.display()))?;
    // SAFETY: statfs fills the zeroed struct; the path is NUL-terminated.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statfs {}", path.display()));
    }
    // f_type's integer type differs between libc targets; the magic fits in 32 bits.
    #[allow(clippy::unnecessary_cast)]
    Ok(stat.f_type as u32 == BPF_FS_MAGIC)
}

fn deepest_existing(dir: &Path) -> PathBuf {
    dir.ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
        .to_path_buf()
}

fn mount_bpffs(target: &Path) -> anyhow::Result<()> {
    let source = c"bpf";
    let fstype = c"bpf";
    let c_target = CString::new(target.as_os_str().as_bytes())?;
    let options = c"mode=0700";
    // SAFETY: all strings are NUL-terminated and outlive the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            c_target.as_ptr(),
            fstype.as_ptr(),
            0,
            options.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("mounting bpffs at {}", target.display()));
    }
    info!(target = %target.display(), "mounted bpffs");
    Ok(())
}
