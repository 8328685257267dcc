//! What to remove if the process is interrupted: guards clean up on drop, but Ctrl-C or SIGTERM
//! ends the process without unwinding, so live namespaces and child PIDs are also kept here.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
};

struct Registry {
    namespaces: Vec<String>,
    pids: Vec<u32>,
    /// Temporary and bpffs pin directories, removed with their contents.
    dirs: Vec<PathBuf>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    namespaces: Vec::new(),
    pids: Vec::new(),
    dirs: Vec::new(),
});

fn with<T>(f: impl FnOnce(&mut Registry) -> T) -> T {
    let mut guard = REGISTRY
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    f(&mut guard)
}

pub(crate) fn add_namespace(name: &str) {
    with(|r| r.namespaces.push(name.to_string()));
}

pub(crate) fn remove_namespace(name: &str) {
    with(|r| r.namespaces.retain(|n| n != name));
}

pub(crate) fn add_pid(pid: u32) {
    with(|r| r.pids.push(pid));
}

pub(crate) fn remove_pid(pid: u32) {
    with(|r| r.pids.retain(|p| *p != pid));
}

pub(crate) fn add_dir(path: &Path) {
    with(|r| r.dirs.push(path.to_path_buf()));
}

pub(crate) fn remove_dir(path: &Path) {
    with(|r| r.dirs.retain(|d| d != path));
}

/// On SIGINT/SIGTERM: stop the children this process started, delete its namespaces and
/// directories, exit 130.
pub fn on_interrupt_clean_up() -> anyhow::Result<()> {
    ctrlc::set_handler(|| {
        eprintln!("\ninterrupted: cleaning up");
        let (namespaces, pids, dirs) =
            with(|r| (r.namespaces.clone(), r.pids.clone(), r.dirs.clone()));
        for pid in pids {
            if let Ok(pid) = libc::pid_t::try_from(pid) {
                // SAFETY: a child this process started and registered; signalling it is harmless.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
        // Time for a daemon to detach and remove its own pins before we sweep up.
        std::thread::sleep(std::time::Duration::from_millis(1000));
        for name in namespaces {
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
        }
        for dir in dirs {
            let _ = std::fs::remove_dir_all(&dir);
        }
        std::process::exit(130);
    })?;
    Ok(())
}
