//! A stand-in for systemd's notification socket: a Unix datagram socket the test owns, passed to a
//! daemon as `NOTIFY_SOCKET`, from which the test reads what the daemon told the service manager
//! (`READY=1`, `RELOADING=1`, `STATUS=...`), one datagram per notification, in order.

use std::{
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

pub struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    /// Binds a socket at `path` (a filesystem path, so it is reachable from any network
    /// namespace; abstract sockets belong to one).
    pub fn bind(path: &Path) -> anyhow::Result<NotifySocket> {
        let socket = UnixDatagram::bind(path)?;
        Ok(NotifySocket {
            socket,
            path: path.to_path_buf(),
        })
    }

    /// The value for `NOTIFY_SOCKET`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A notification that arrived already, if any (does not wait).
    pub fn try_recv(&self) -> Option<String> {
        self.socket.set_nonblocking(true).ok()?;
        let mut buf = [0u8; 4096];
        let got = self.socket.recv(&mut buf).ok();
        let _ = self.socket.set_nonblocking(false);
        got.map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// The next notification, waiting up to `timeout`.
    pub fn recv(&self, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            self.socket
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .ok()?;
            match self.socket.recv(&mut buf) {
                Ok(n) => return Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return None,
            }
        }
    }

    /// Waits for a notification with the line `line` (e.g. `READY=1`); the whole datagram, or
    /// what arrived instead if none does within `timeout`.
    pub fn wait_for(&self, line: &str, timeout: Duration) -> Result<String, Vec<String>> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.recv(left) {
                Some(message) if message.lines().any(|l| l == line) => return Ok(message),
                Some(message) => seen.push(message),
                None => break,
            }
        }
        Err(seen)
    }
}

/// Runs `systemd-analyze verify` on the unit file `unit` and fails the test `test` on any
/// complaint. Without systemd-analyze the test prints SKIP, or fails under CI (Debian's systemd
/// package has it).
pub fn verify_unit(test: &str, unit: &Path) {
    let Ok(probe) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("systemd-analyze is missing (Debian: the systemd package)");
        }
        eprintln!("SKIP {test}: no systemd-analyze");
        return;
    };
    assert!(probe.status.success());
    // --man=no: Documentation= names pages this host need not have.
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(unit)
        .output()
        .expect("run systemd-analyze verify");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify {}: {stderr}",
        unit.display()
    );
}

/// The `STATUS=` line of a notification.
pub fn status(message: &str) -> Option<&str> {
    message.lines().find_map(|l| l.strip_prefix("STATUS="))
}
