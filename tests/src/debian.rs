//! Debian packages the tests' real servers come from: `cargo xtask setup` installs them, and a
//! test run without setup falls back to `apt-get install` once.

use std::path::Path;
use std::process::{Command, Stdio};

/// Makes sure `package` is installed: every path in `files` exists, else `apt-get install`
/// it (panics naming the package when that fails).
pub fn ensure_package(package: &str, files: &[&str]) {
    let present = || files.iter().all(|f| Path::new(f).exists());
    if present() {
        return;
    }
    let ok = Command::new("apt-get")
        .args(["install", "-y", "-q", package])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok && present(),
        "{package} is missing: run `cargo xtask setup` (Debian package {package})"
    );
}
