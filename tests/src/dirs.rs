//! Directories a test owns: a temporary directory for configs and logs, a bpffs pin directory.
//! Both go when their guard drops, and on Ctrl-C through the cleanup registry.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

/// A temporary directory (`tempfile`: a random name, mode 0700), removed on drop.
pub struct TempDir {
    dir: tempfile::TempDir,
}

impl TempDir {
    /// A new directory named `gatekeeper-<tag>-<random>` in the system's temporary directory.
    pub fn new(tag: &str) -> anyhow::Result<TempDir> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("gatekeeper-{tag}-"))
            .tempdir()
            .with_context(|| format!("creating a temporary directory for {tag}"))?;
        crate::cleanup::add_dir(dir.path());
        Ok(TempDir { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // tempfile removes the directory itself when `dir` drops, right after this.
        crate::cleanup::remove_dir(self.dir.path());
    }
}

/// A pin directory for one test under /sys/fs/bpf, removed (with its pins) on drop.
pub struct PinDir {
    path: PathBuf,
}

impl PinDir {
    pub fn new(tag: &str) -> PinDir {
        PinDir::at(PathBuf::from(format!(
            "/sys/fs/bpf/{}",
            crate::unique_name(tag)
        )))
    }

    /// A fixed pin directory (the demo's), swept on drop whatever left pins in it.
    pub fn at(path: PathBuf) -> PinDir {
        crate::cleanup::add_dir(&path);
        PinDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Ok(entries) = fs::read_dir(&self.path) {
            for entry in entries.flatten() {
                let _ = fs::remove_file(entry.path());
            }
        }
        let _ = fs::remove_dir(&self.path);
        crate::cleanup::remove_dir(&self.path);
    }
}
