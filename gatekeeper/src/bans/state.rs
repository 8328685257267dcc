//! The ban state file (`ban_state`, default [`crate::config::DEFAULT_BAN_STATE`]): what brings the bans
//! back after a reboot, when the pinned maps are gone. JSON with wall-clock (Unix) times, written
//! atomically (a temp file renamed over it) on every change; entries already over are dropped when
//! it is read. Pinned maps carry the bans across a daemon restart; this file across a reboot.

use std::{
    io,
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// One ban as the file keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanRecord {
    /// The banned network: an IPv4 /32, or an IPv6 address masked to `ban_ipv6_prefix`.
    pub source: IpNet,
    /// When the ban ends (Unix seconds).
    pub until_unix: u64,
    pub reason: String,
    pub added_unix: u64,
    /// Who asked: `cli uid=0`, or the socket peer's `pid=… uid=…`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub by: String,
}

#[derive(Default, Serialize, Deserialize)]
struct File {
    bans: Vec<BanRecord>,
}

/// Reads the bans in `path` that have not ended by `now_unix`; a missing file holds none.
/// A file that is not valid JSON is an error naming it: the caller decides (the daemon refuses to
/// start rather than silently forget every ban, which would also be overwritten at the next ban).
pub fn load(path: &Path, now_unix: u64) -> anyhow::Result<Vec<BanRecord>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err).with_context(|| format!("{}: cannot read", path.display())),
    };
    let file: File = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "{}: not a ban state file (fix or remove it; `gatekeeper ban list` shows the live bans)",
            path.display()
        )
    })?;
    Ok(file
        .bans
        .into_iter()
        .filter(|b| b.until_unix > now_unix)
        .collect())
}

/// Creates the directory of `path` (0700, with missing parents) unless it exists: the state file
/// and its lock live there, and only the daemon's user has business in it.
pub fn create_parent(path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(())
}

/// Writes `bans` to `path` atomically (mode 0600 for a new file), creating its directory (0700)
/// if needed.
pub fn save(path: &Path, bans: &[BanRecord]) -> anyhow::Result<()> {
    create_parent(path)?;
    let file = File {
        bans: bans.to_vec(),
    };
    let mut text = serde_json::to_vec_pretty(&file)?;
    text.push(b'\n');
    gatekeeper_support::atomic::replace(path, &text)
        .with_context(|| format!("{}: writing the ban state", path.display()))
}

/// The lock file serialising changes of the bans (state file and maps): `bans.lock` next to the
/// state file.
pub fn lock_path(state: &Path) -> PathBuf {
    state.with_file_name("bans.lock")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(source: &str, until_unix: u64) -> BanRecord {
        BanRecord {
            source: source.parse().expect("net"),
            until_unix,
            reason: "auth-failures".into(),
            added_unix: 1_000,
            by: String::new(),
        }
    }

    #[test]
    fn saved_bans_load_back_without_the_expired_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state/bans.json");
        assert!(load(&path, 0).expect("missing = empty").is_empty());
        let bans = [
            record("203.0.113.9/32", 5_000),
            record("2001:db8:1:2::/64", 9_000),
            record("198.51.100.1/32", 2_000),
        ];
        save(&path, &bans).expect("saved");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains("\"source\": \"203.0.113.9/32\""), "{text}");
        assert!(text.contains("\"until_unix\": 5000"), "{text}");
        let loaded = load(&path, 3_000).expect("loaded");
        assert_eq!(loaded, bans[..2]);
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(path.parent().expect("dir"))
            .expect("dir")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(lock_path(&path), dir.path().join("state/bans.lock"));
    }

    #[test]
    fn a_broken_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bans.json");
        std::fs::write(&path, "{ not json").expect("write");
        let err = load(&path, 0).expect_err("broken");
        assert!(
            format!("{err:#}").contains("bans.json: not a ban state file"),
            "{err:#}"
        );
    }
}
