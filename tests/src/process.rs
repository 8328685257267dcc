//! Daemons started by tests: output captured to a file, stopped by PID on drop.

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

// xtask's demo and the readme sandbox take the directories from here, next to the daemons.
pub use crate::dirs::{PinDir, TempDir};

/// A child process that is terminated (SIGTERM, then SIGKILL) when dropped.
pub struct Daemon {
    child: Option<Child>,
    log: PathBuf,
    name: String,
}

impl Daemon {
    /// Starts `cmd` with stdout and stderr going to `log`.
    pub fn start(name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<Daemon> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        crate::cleanup::add_pid(child.id());
        Ok(Daemon {
            child: Some(child),
            log: log.to_path_buf(),
            name: name.to_string(),
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The output so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the output contains `needle`; fails early if the process exits.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "{} exited ({status}) before logging {needle:?}:\n{}",
                    self.name,
                    self.log()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not log {needle:?} within {timeout:?}:\n{}",
                    self.name,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `signal` and waits for the process to exit; returns whether it exited successfully.
    pub fn stop_with(&mut self, signal: i32, timeout: Duration) -> anyhow::Result<bool> {
        let Some(mut child) = self.child.take() else {
            bail!("{} already stopped", self.name);
        };
        crate::cleanup::remove_pid(child.id());
        let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
        // SAFETY: signalling our own child by its PID; it has not been reaped yet.
        unsafe { libc::kill(pid, signal) };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status.success());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{} did not exit within {timeout:?} after signal {signal}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            crate::cleanup::remove_pid(child.id());
            if let Ok(pid) = libc::pid_t::try_from(child.id()) {
                // SAFETY: as in `stop_with`.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
