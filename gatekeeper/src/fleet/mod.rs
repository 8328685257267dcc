//! Fleet state in etcd: allow entries, deny entries and bans that every MX host of a fleet
//! enforces, kept under one key prefix of an etcd cluster (`[fleet]` in `gatekeeper.toml`).
//!
//! Keys, under the prefix (default `/gatekeeper/`):
//! - `allow/NET` = `{"comment": …, "author": …, "added_unix": …}`: a fleet-wide allow entry;
//! - `deny/NET`, the same for deny entries;
//! - `bans/NET` = `{"until_unix": …, "reason": …, "by": …, "host": …}`, attached to an etcd lease
//!   of the ban's duration, so the key (and the ban, on every host) ends at once everywhere.
//!
//! Each daemon watches the prefix from the revision after the last one it applied ([`follow`]),
//! applies the changes to its maps (allow and deny entries through the daemon's loop, merged with
//! the file's; bans through the ban store), and keeps what it applied in a state file
//! (`fleet.json` beside `ban_state`), so a restart or an etcd outage never loses the fleet's
//! entries: the host enforces its last state until etcd answers again, then resumes from that
//! revision, or reads everything again when etcd compacted it away.
//!
//! - [`etcd`]: the etcd v3 client (the JSON gateway over HTTP/1.1 and rustls).
//! - [`follow`]: the daemon's watcher and its publisher of local bans.

pub mod etcd;
pub mod follow;

use std::{
    borrow::Cow,
    collections::BTreeMap,
    net::IpAddr,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use gatekeeper_support::{cidr::parse_cidr, fleet_config::FleetConfig};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::config::Config;

/// Where an allow or deny entry comes from, as `allow list` shows it ("source"): the config file,
/// the fleet, or (issue 23's DNS-derived entries) `spf:NAME`.
pub const SOURCE_FILE: &str = "file";
pub const SOURCE_FLEET: &str = "fleet";

/// The kinds of keys under the prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Allow,
    Deny,
    Ban,
}

impl Kind {
    fn dir(self) -> &'static str {
        match self {
            Kind::Allow => "allow/",
            Kind::Deny => "deny/",
            Kind::Ban => "bans/",
        }
    }
}

/// The key of `net` of `kind` under `prefix`.
pub fn key(prefix: &str, kind: Kind, net: IpNet) -> String {
    format!("{prefix}{}{net}", kind.dir())
}

/// What a key under `prefix` names; `None` for keys the fleet does not use.
pub fn parse_key(prefix: &str, key: &str) -> Option<(Kind, IpNet)> {
    let rest = key.strip_prefix(prefix)?;
    for kind in [Kind::Allow, Kind::Deny, Kind::Ban] {
        if let Some(net) = rest.strip_prefix(kind.dir()) {
            return parse_cidr(net).ok().map(|n| (kind, n));
        }
    }
    None
}

/// A fleet-wide allow or deny entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    #[serde(default)]
    pub comment: String,
    /// Who added it (`user@host` of the admin who ran `gatekeeper allow add --fleet`).
    #[serde(default)]
    pub author: String,
    #[serde(default)]
    pub added_unix: u64,
}

/// A fleet-wide ban.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ban {
    pub until_unix: u64,
    #[serde(default)]
    pub reason: String,
    /// Who asked on the publishing host (the relay's pid and uid, or `cli uid=…`).
    #[serde(default)]
    pub by: String,
    /// The host that published it.
    #[serde(default)]
    pub host: String,
}

/// The fleet's entries and bans as one host last applied them, with the etcd revision they are
/// complete up to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetState {
    pub revision: i64,
    pub allow: BTreeMap<IpNet, Entry>,
    pub deny: BTreeMap<IpNet, Entry>,
    pub bans: BTreeMap<IpNet, Ban>,
}

/// The state file's layout (lists, so the networks stay readable strings).
#[derive(Default, Serialize, Deserialize)]
struct File {
    revision: i64,
    #[serde(default)]
    allow: Vec<FileEntry>,
    #[serde(default)]
    deny: Vec<FileEntry>,
    #[serde(default)]
    bans: Vec<FileBan>,
}

#[derive(Serialize, Deserialize)]
struct FileEntry {
    net: IpNet,
    #[serde(flatten)]
    entry: Entry,
}

#[derive(Serialize, Deserialize)]
struct FileBan {
    net: IpNet,
    #[serde(flatten)]
    ban: Ban,
}

/// What changed between two states, as the maps must follow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub allow_added: Vec<IpNet>,
    pub allow_removed: Vec<IpNet>,
    pub deny_added: Vec<IpNet>,
    pub deny_removed: Vec<IpNet>,
    /// New bans, and bans whose deadline changed.
    pub bans_put: Vec<(IpNet, Ban)>,
    pub bans_removed: Vec<IpNet>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.allow_added.is_empty()
            && self.allow_removed.is_empty()
            && self.deny_added.is_empty()
            && self.deny_removed.is_empty()
            && self.bans_put.is_empty()
            && self.bans_removed.is_empty()
    }
}

fn diff_keys<V: PartialEq>(
    old: &BTreeMap<IpNet, V>,
    new: &BTreeMap<IpNet, V>,
) -> (Vec<IpNet>, Vec<IpNet>) {
    let added = new
        .keys()
        .filter(|n| !old.contains_key(n))
        .copied()
        .collect();
    let removed = old
        .keys()
        .filter(|n| !new.contains_key(n))
        .copied()
        .collect();
    (added, removed)
}

impl FleetState {
    /// Reads the state file; a missing file is the empty state at revision 0.
    pub fn load(path: &Path) -> anyhow::Result<FleetState> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok(FleetState::default());
            }
            Err(err) => {
                return Err(err).with_context(|| format!("{}: cannot read", path.display()));
            }
        };
        let file: File = serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: not a fleet state file", path.display()))?;
        Ok(FleetState {
            revision: file.revision,
            allow: file.allow.into_iter().map(|e| (e.net, e.entry)).collect(),
            deny: file.deny.into_iter().map(|e| (e.net, e.entry)).collect(),
            bans: file.bans.into_iter().map(|b| (b.net, b.ban)).collect(),
        })
    }

    /// Writes the state file atomically (its directory made 0700 if missing).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        crate::bans::state::create_parent(path)?;
        let file = File {
            revision: self.revision,
            allow: self
                .allow
                .iter()
                .map(|(net, entry)| FileEntry {
                    net: *net,
                    entry: entry.clone(),
                })
                .collect(),
            deny: self
                .deny
                .iter()
                .map(|(net, entry)| FileEntry {
                    net: *net,
                    entry: entry.clone(),
                })
                .collect(),
            bans: self
                .bans
                .iter()
                .map(|(net, ban)| FileBan {
                    net: *net,
                    ban: ban.clone(),
                })
                .collect(),
        };
        let mut text = serde_json::to_vec_pretty(&file)?;
        text.push(b'\n');
        gatekeeper_support::atomic::replace(path, &text)
            .with_context(|| format!("{}: writing the fleet state", path.display()))
    }

    /// The state a full read of the prefix gives (`kvs` at `revision`).
    pub fn from_kvs(prefix: &str, kvs: &[etcd::KeyValue], revision: i64) -> FleetState {
        let mut state = FleetState {
            revision,
            ..FleetState::default()
        };
        for kv in kvs {
            state.put(prefix, kv);
        }
        state
    }

    /// Applies one put; false for a key or value the fleet does not use.
    pub fn put(&mut self, prefix: &str, kv: &etcd::KeyValue) -> bool {
        let Some((kind, net)) = parse_key(prefix, &kv.key) else {
            return false;
        };
        match kind {
            Kind::Allow | Kind::Deny => {
                let entry = serde_json::from_slice::<Entry>(&kv.value).unwrap_or_default();
                let map = if kind == Kind::Allow {
                    &mut self.allow
                } else {
                    &mut self.deny
                };
                map.insert(net, entry);
                true
            }
            Kind::Ban => match serde_json::from_slice::<Ban>(&kv.value) {
                Ok(ban) => {
                    self.bans.insert(net, ban);
                    true
                }
                Err(_) => false,
            },
        }
    }

    /// Applies one delete.
    pub fn delete(&mut self, prefix: &str, key: &str) {
        match parse_key(prefix, key) {
            Some((Kind::Allow, net)) => {
                self.allow.remove(&net);
            }
            Some((Kind::Deny, net)) => {
                self.deny.remove(&net);
            }
            Some((Kind::Ban, net)) => {
                self.bans.remove(&net);
            }
            None => {}
        }
    }

    /// What the maps must do to go from `self` to `new`.
    pub fn diff(&self, new: &FleetState) -> Diff {
        let (allow_added, allow_removed) = diff_keys(&self.allow, &new.allow);
        let (deny_added, deny_removed) = diff_keys(&self.deny, &new.deny);
        let bans_put = new
            .bans
            .iter()
            .filter(|(net, ban)| {
                self.bans
                    .get(net)
                    .is_none_or(|old| old.until_unix != ban.until_unix)
            })
            .map(|(net, ban)| (*net, ban.clone()))
            .collect();
        let bans_removed = self
            .bans
            .keys()
            .filter(|n| !new.bans.contains_key(n))
            .copied()
            .collect();
        Diff {
            allow_added,
            allow_removed,
            deny_added,
            deny_removed,
            bans_put,
            bans_removed,
        }
    }

    /// The allow and deny networks, sorted, for the maps.
    pub fn extra(&self) -> Extra {
        Extra {
            allow: self.allow.keys().copied().collect(),
            deny: self.deny.keys().copied().collect(),
        }
    }
}

/// Allow and deny networks enforced besides the config file's (the fleet's), each list sorted
/// without duplicates: every sync of the maps (start, reload, feed change) merges them in, so
/// a reload of the file never takes a fleet entry out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extra {
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
}

/// The sorted union of two sorted lists (`a` itself when `b` is empty: no copy of a million
/// file entries for a fleet of none).
pub fn merge_sorted<'a>(a: &'a [IpNet], b: &[IpNet]) -> Cow<'a, [IpNet]> {
    if b.is_empty() {
        return Cow::Borrowed(a);
    }
    let mut out = Vec::with_capacity(a.len() + b.len());
    out.extend_from_slice(a);
    out.extend_from_slice(b);
    gatekeeper_support::allowlist::sort_nets(&mut out);
    out.dedup();
    Cow::Owned(out)
}

/// The fleet state file of `config`: `[fleet] state`, else `fleet.json` beside `ban_state`.
pub fn state_path(config: &Config, fleet: &FleetConfig) -> PathBuf {
    fleet
        .state
        .clone()
        .unwrap_or_else(|| config.bans.state.with_file_name("fleet.json"))
}

/// The fleet state this host saved (empty without `[fleet]`, or when unreadable): what
/// `allow list`, `deny list` and `status` show beside the file's entries.
pub fn saved(config: &Config) -> FleetState {
    config
        .fleet
        .as_ref()
        .and_then(|fleet| FleetState::load(&state_path(config, fleet)).ok())
        .unwrap_or_default()
}

/// This host's name in the fleet: `[fleet] host`, else the system's host name.
pub fn host_name(fleet: &FleetConfig) -> String {
    if let Some(host) = &fleet.host {
        return host.clone();
    }
    let mut buffer = [0u8; 256];
    // SAFETY: gethostname writes at most the buffer's length.
    let rc = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}

/// Whether `addr` is inside one of `nets`.
pub fn covered(nets: &[IpNet], addr: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(&addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str) -> etcd::KeyValue {
        etcd::KeyValue {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            mod_revision: 1,
            lease: 0,
        }
    }

    fn net(s: &str) -> IpNet {
        s.parse().expect("net")
    }

    #[test]
    fn keys_name_the_kind_and_the_network() {
        assert_eq!(
            key("/gk/", Kind::Ban, net("203.0.113.9/32")),
            "/gk/bans/203.0.113.9/32"
        );
        assert_eq!(
            parse_key("/gk/", "/gk/allow/2001:db8::/32"),
            Some((Kind::Allow, net("2001:db8::/32")))
        );
        assert_eq!(parse_key("/gk/", "/gk/allow/198.51.100.7/24"), None);
        assert_eq!(parse_key("/gk/", "/other/allow/192.0.2.0/24"), None);
        assert_eq!(parse_key("/gk/", "/gk/notes/x"), None);
    }

    #[test]
    fn states_diff_and_round_trip_through_the_file() {
        let old = FleetState::from_kvs(
            "/gk/",
            &[
                kv(
                    "/gk/allow/192.0.2.0/24",
                    r#"{"comment":"partner","author":"root@a"}"#,
                ),
                kv(
                    "/gk/bans/203.0.113.9/32",
                    r#"{"until_unix":100,"host":"a"}"#,
                ),
                kv("/gk/deny/198.51.100.0/24", "{}"),
            ],
            7,
        );
        let mut new = old.clone();
        new.delete("/gk/", "/gk/allow/192.0.2.0/24");
        assert!(new.put(
            "/gk/",
            &kv("/gk/bans/203.0.113.10/32", r#"{"until_unix":50}"#)
        ));
        assert!(!new.put("/gk/", &kv("/gk/bans/203.0.113.11/32", "garbage")));
        let diff = old.diff(&new);
        assert_eq!(diff.allow_removed, [net("192.0.2.0/24")]);
        assert_eq!(diff.bans_put.len(), 1);
        assert!(diff.deny_added.is_empty() && diff.bans_removed.is_empty());
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state/fleet.json");
        old.save(&path).expect("saved");
        assert_eq!(FleetState::load(&path).expect("loaded"), old);
        assert_eq!(
            FleetState::load(&dir.path().join("none.json")).expect("empty"),
            FleetState::default()
        );
        assert_eq!(
            *merge_sorted(
                &[net("192.0.2.0/24")],
                &[net("192.0.2.0/24"), net("203.0.113.0/24")]
            ),
            [net("192.0.2.0/24"), net("203.0.113.0/24")]
        );
    }
}
