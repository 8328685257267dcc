//! Allow entries derived from DNS (`[[allow]] spf|mx|a = "NAME"`): what they are called, the
//! `[dns]` settings the daemon resolves them with, and the state file where the daemon keeps the
//! last good set of networks of each. The file is the one source of truth for the derived set:
//! the daemon writes it (atomically, after every change), loads it at start (so a reboot without
//! DNS still enforces it), `gatekeeper allow list` and `status` read it, and so does the relay's
//! `allow_gatekeeper`, which therefore admits exactly what the filter admits.

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    str::FromStr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Where the derived networks are kept across reboots when `[dns] state` does not say.
pub const DEFAULT_STATE: &str = "/var/lib/gatekeeper/derived-allow.json";
/// How long one DNS query may take, unless `[dns] timeout_ms` says.
pub const DEFAULT_TIMEOUT_MS: u64 = 2000;
/// How often a query is sent before it counts as failed, unless `[dns] attempts` says.
pub const DEFAULT_ATTEMPTS: usize = 2;
/// Records are looked at again after their TTL, but not sooner than this...
pub const DEFAULT_MIN_REFRESH_SECS: u64 = 60;
/// ...and not later than this (a partner's long TTL does not hide a change for a day).
pub const DEFAULT_MAX_REFRESH_SECS: u64 = 3600;
/// The state file's format.
pub const STATE_VERSION: u32 = 1;

/// The kind of DNS name an entry follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsKind {
    /// Every network the name's SPF record authorises (`ip4`, `ip6`, `a`, `mx`, `include`,
    /// `redirect`, followed with RFC 7208's limits).
    Spf,
    /// The addresses of the name's MX hosts.
    Mx,
    /// The name's own addresses (A and AAAA).
    A,
}

impl DnsKind {
    pub const ALL: [DnsKind; 3] = [DnsKind::Spf, DnsKind::Mx, DnsKind::A];

    /// The config key, and the prefix of the source's name (`spf:partner.example`).
    pub fn key(self) -> &'static str {
        match self {
            DnsKind::Spf => "spf",
            DnsKind::Mx => "mx",
            DnsKind::A => "a",
        }
    }
}

/// One DNS-derived allow entry: the kind and the name it follows. Shown as `spf:partner.example`,
/// the "source" of each network it admits.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DerivedSource {
    pub kind: DnsKind,
    /// Lower case, without a final dot.
    pub name: String,
}

impl fmt::Display for DerivedSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.key(), self.name)
    }
}

impl FromStr for DerivedSource {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, name) = s
            .split_once(':')
            .ok_or_else(|| format!("\"{s}\" is not KIND:NAME"))?;
        let kind = DnsKind::ALL
            .into_iter()
            .find(|k| k.key() == kind)
            .ok_or_else(|| format!("\"{kind}\" is not spf, mx or a"))?;
        Ok(DerivedSource {
            kind,
            name: normalize_name(name)?,
        })
    }
}

/// A `[[allow]]` table with `spf`, `mx` or `a` instead of `cidr`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DerivedEntry {
    pub source: DerivedSource,
    pub comment: Option<String>,
}

/// A DNS name as the entries take it: lower case, the final dot dropped; labels of letters,
/// digits, `-` and `_` (SPF's `_spf.example.com`), each 1-63 bytes, 253 bytes in all.
pub fn normalize_name(text: &str) -> Result<String, String> {
    let name = text.trim().trim_end_matches('.').to_ascii_lowercase();
    let bad = |why: &str| Err(format!("\"{text}\" is not a DNS name: {why}"));
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > 253 {
        return bad("longer than 253 bytes");
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return bad("every label must be 1-63 bytes");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return bad("only letters, digits, '-' and '_' may appear in a label");
        }
    }
    Ok(name)
}

/// `[dns]`: how the daemon resolves the derived entries. Only the nameservers named here are
/// asked (never the system resolver); required when the config has derived entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsSettings {
    pub nameservers: Vec<SocketAddr>,
    pub timeout: Duration,
    pub attempts: usize,
    pub min_refresh: Duration,
    pub max_refresh: Duration,
    /// The derived networks' state file (see the module doc).
    pub state: PathBuf,
}

impl Default for DnsSettings {
    fn default() -> Self {
        DnsSettings {
            nameservers: Vec::new(),
            timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
            attempts: DEFAULT_ATTEMPTS,
            min_refresh: Duration::from_secs(DEFAULT_MIN_REFRESH_SECS),
            max_refresh: Duration::from_secs(DEFAULT_MAX_REFRESH_SECS),
            state: PathBuf::from(DEFAULT_STATE),
        }
    }
}

impl DnsSettings {
    /// How long a resolution is trusted: the records' lowest TTL, within the bounds.
    pub fn refresh_after(&self, ttl_secs: u32) -> Duration {
        Duration::from_secs(u64::from(ttl_secs)).clamp(self.min_refresh, self.max_refresh)
    }
}

/// The state file: the last good resolution of every source the daemon followed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DerivedState {
    pub version: u32,
    pub sources: Vec<SourceState>,
}

/// One source in the state file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceState {
    /// `spf:partner.example`.
    pub source: String,
    /// The last good set, sorted, without duplicates: what the filter admits for this source.
    pub networks: Vec<IpNet>,
    /// When that set was resolved (seconds since the epoch).
    pub resolved_at: u64,
    /// The lowest TTL of the records it came from.
    pub ttl_secs: u32,
    /// When the source was last asked, successfully or not.
    pub checked_at: u64,
    /// Why the last attempt failed (the set above is the older good one); `None` after success.
    #[serde(default)]
    pub error: Option<String>,
    /// What the last good resolution skipped (`ptr`, `exists`, macros...).
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// A state file that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct StateError {
    pub path: PathBuf,
    pub message: String,
}

impl DerivedState {
    /// Reads the state file; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<DerivedState, StateError> {
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(DerivedState::default());
            }
            Err(e) => {
                return Err(StateError {
                    path: path.to_path_buf(),
                    message: format!("cannot read: {e}"),
                });
            }
        };
        let state: DerivedState = serde_json::from_slice(&text).map_err(|e| StateError {
            path: path.to_path_buf(),
            message: format!("not a derived-allow state file: {e}"),
        })?;
        if state.version != STATE_VERSION {
            return Err(StateError {
                path: path.to_path_buf(),
                message: format!(
                    "state file version {} (this gatekeeper reads {STATE_VERSION})",
                    state.version
                ),
            });
        }
        Ok(state)
    }

    /// Writes the state file atomically. A new file gets mode 0644: the relay, another user,
    /// reads it (the networks are public DNS data).
    pub fn store(&self, path: &Path) -> anyhow::Result<()> {
        let existed = path.exists();
        let mut text = serde_json::to_vec_pretty(self)?;
        text.push(b'\n');
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        crate::atomic::replace(path, &text)?;
        if !existed {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))?;
        }
        Ok(())
    }

    /// The state of `source`, if the file has it.
    pub fn get(&self, source: &DerivedSource) -> Option<&SourceState> {
        let key = source.to_string();
        self.sources.iter().find(|s| s.source == key)
    }

    /// The networks of `sources` (those of the config; others in the file are left over from an
    /// earlier config and admit nothing), each with the source it came from, sorted by network.
    pub fn networks_of<'a>(&'a self, sources: &[DerivedSource]) -> Vec<(IpNet, &'a str)> {
        let wanted: Vec<String> = sources.iter().map(ToString::to_string).collect();
        let mut nets: Vec<(IpNet, &str)> = self
            .sources
            .iter()
            .filter(|s| wanted.contains(&s.source))
            .flat_map(|s| s.networks.iter().map(move |n| (*n, s.source.as_str())))
            .collect();
        nets.sort_unstable();
        nets
    }
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The union of the networks of `sources` in the state file at `path`, sorted, without
/// duplicates: what the relay's `allow_gatekeeper` adds for the derived entries. An unreadable
/// file is an error (the relay then keeps the ranges it had).
pub fn derived_networks(path: &Path, sources: &[DerivedSource]) -> Result<Vec<IpNet>, StateError> {
    let state = DerivedState::load(path)?;
    let mut nets: Vec<IpNet> = state
        .networks_of(sources)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    nets.dedup();
    Ok(nets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised_and_checked() {
        assert_eq!(
            normalize_name(" Partner.Example. ").as_deref(),
            Ok("partner.example")
        );
        assert_eq!(
            normalize_name("_spf.partner.example").as_deref(),
            Ok("_spf.partner.example")
        );
        assert!(normalize_name("").is_err());
        assert!(normalize_name("a..b").is_err());
        assert!(normalize_name("a b.example").is_err());
        assert!(normalize_name(&format!("{}.example", "x".repeat(64))).is_err());
        let source: DerivedSource = "mx:Partner.Example".parse().expect("source");
        assert_eq!(source.to_string(), "mx:partner.example");
        assert!("txt:x.example".parse::<DerivedSource>().is_err());
    }

    #[test]
    fn the_state_file_round_trips_and_filters_by_source() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("sub/derived.json");
        assert_eq!(
            DerivedState::load(&path).expect("missing"),
            DerivedState::default()
        );
        let n = |s: &str| s.parse::<IpNet>().expect("net");
        let state = DerivedState {
            version: STATE_VERSION,
            sources: vec![
                SourceState {
                    source: "spf:partner.example".into(),
                    networks: vec![n("192.0.2.0/24"), n("2001:db8::/32")],
                    resolved_at: 1,
                    ttl_secs: 300,
                    checked_at: 2,
                    error: None,
                    warnings: vec![],
                },
                SourceState {
                    source: "a:old.example".into(),
                    networks: vec![n("198.51.100.1/32")],
                    resolved_at: 1,
                    ttl_secs: 300,
                    checked_at: 2,
                    error: Some("SERVFAIL".into()),
                    warnings: vec![],
                },
            ],
        };
        state.store(&path).expect("store");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        assert_eq!(DerivedState::load(&path).expect("load"), state);
        let spf: DerivedSource = "spf:partner.example".parse().expect("source");
        assert_eq!(
            derived_networks(&path, std::slice::from_ref(&spf)).expect("nets"),
            [n("192.0.2.0/24"), n("2001:db8::/32")]
        );
        std::fs::write(&path, "{").expect("break");
        assert!(DerivedState::load(&path).is_err());
    }
}
