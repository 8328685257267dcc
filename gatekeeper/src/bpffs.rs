//! The bpffs directory where the filter's state is pinned: found, mounted if the conventional
//! mount point lacks it, created.

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use tracing::info;

/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: u32 = 0xcafe_4a11;
/// Where systemd and libbpf expect bpffs.
pub const CONVENTIONAL_MOUNT: &str = "/sys/fs/bpf";

/// Makes sure `dir` exists on a bpffs mount, mounting bpffs at /sys/fs/bpf if `dir` is below it
/// and nothing is mounted there yet.
pub fn ensure_pin_dir(dir: &Path) -> anyhow::Result<()> {
    let existing = deepest_existing(dir);
    if !is_bpffs(&existing)? {
        let conventional = Path::new(CONVENTIONAL_MOUNT);
        if !dir.starts_with(conventional) || !conventional.is_dir() {
            bail!(
                "pin_dir {} is not on a bpffs mount (mount one with `mount -t bpf bpf /sys/fs/bpf`, or set pin_dir below one)",
                dir.display()
            );
        }
        mount_bpffs(conventional)?;
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the pin directory {}", dir.display()))
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
