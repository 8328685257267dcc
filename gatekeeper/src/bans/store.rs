//! Every change of the bans goes through here, whoever makes it (`gatekeeper ban`, the daemon's
//! ban socket, its sweeper, its start-up): under the `bans.lock` lock, the state file is read, the
//! change made in the live maps (when the filter is loaded) and written to the file.
//!
//! Order, as for `allow`: an added ban goes into the maps first, then the file (the file write is
//! the commit point; if it fails the map entry is put back as it was); a removed one leaves the
//! file first, then the maps. The maps are the authority for what is enforced now; the file for
//! what comes back after a reboot.

use std::{net::IpAddr, path::Path, time::Duration};

use anyhow::Context as _;
use ipnet::IpNet;

use super::{
    clock::Now,
    state::{self, BanRecord},
};

/// How long a change waits for another one to finish.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// One ban as the program holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveBan {
    /// CLOCK_MONOTONIC nanoseconds: the program drops while now is before it.
    pub deadline_ns: u64,
    /// Segments the ban dropped.
    pub hits: u64,
}

/// A ban the maps refused to take.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    /// The family's map holds `max_bans` entries already (E2BIG): never evicted to make room.
    #[error("the ban table is full ({max} bans in force for this address family, `max_bans`)")]
    Full { max: u32 },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// The live ban maps (both families), keyed by the masked source.
pub trait BanTable {
    fn get(&self, source: IpNet) -> anyhow::Result<Option<LiveBan>>;
    /// Inserts or updates the deadline (an update keeps the hit counter).
    fn put(&mut self, source: IpNet, deadline_ns: u64) -> Result<(), PutError>;
    /// True if it was there.
    fn delete(&mut self, source: IpNet) -> anyhow::Result<bool>;
    fn entries(&self) -> anyhow::Result<Vec<(IpNet, LiveBan)>>;
    /// Brings the maps' own bookkeeping in line with their bans (at daemon start).
    fn repair(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// The network a ban of `addr` covers: the address itself for IPv4, its /`v6_prefix` for IPv6
/// (one host's addresses: a /64 by default, since a host picks any address in its /64).
pub fn ban_source(addr: IpAddr, v6_prefix: u8) -> IpNet {
    match addr {
        IpAddr::V4(v4) => IpNet::from(IpAddr::V4(v4)),
        IpAddr::V6(v6) => ipnet::Ipv6Net::new(v6, v6_prefix.min(128))
            .map(|n| IpNet::V6(n.trunc()))
            .unwrap_or_else(|_| IpNet::from(IpAddr::V6(v6))),
    }
}

/// Parses what an admin or a requester names as a ban: an address, or the network a ban of it
/// covers (an IPv4 /32, an IPv6 /`v6_prefix`).
pub fn parse_ban_source(text: &str, v6_prefix: u8) -> anyhow::Result<IpNet> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<IpAddr>() {
        if let IpAddr::V6(v6) = addr
            && v6.to_ipv4_mapped().is_some()
        {
            anyhow::bail!("{text} is an IPv4-mapped IPv6 address: name the IPv4 address");
        }
        return Ok(ban_source(addr, v6_prefix));
    }
    let net = gatekeeper_support::cidr::parse_cidr(text).map_err(|e| anyhow::anyhow!("{e}"))?;
    if ban_source(net.addr(), v6_prefix) == net {
        return Ok(net);
    }
    anyhow::bail!(
        "{text}: a ban covers one IPv4 address or one IPv6 /{v6_prefix}; use `gatekeeper deny add` for networks"
    )
}

/// A ban to add.
#[derive(Clone, Debug)]
pub struct NewBan {
    pub source: IpNet,
    pub duration: Duration,
    pub reason: String,
    /// Who asks, for the file and the log.
    pub by: String,
}

/// What adding a ban did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Added {
    pub source: IpNet,
    pub until_unix: u64,
    /// The source was banned already: its deadline is now the later of the two.
    pub extended: bool,
    /// False when the filter is not loaded (applies when `gatekeeper run` starts).
    pub live: bool,
}

/// One ban for `ban list`: the file's record, the live entry, or both.
#[derive(Clone, Debug)]
pub struct ListedBan {
    pub source: IpNet,
    pub until_unix: u64,
    pub reason: Option<String>,
    pub by: Option<String>,
    /// `None` when the filter is not loaded or the ban is not live.
    pub live: Option<LiveBan>,
}

/// The bans of one state file, and the live maps when the filter is loaded; holds `bans.lock`.
pub struct BanStore<M> {
    state: std::path::PathBuf,
    maps: Option<M>,
    max_bans: u32,
    _lock: gatekeeper_support::lock::Lock,
}

impl<M: BanTable> BanStore<M> {
    /// Takes the lock of the bans in `state` (waiting for another change to finish).
    pub fn lock(state: &Path, maps: Option<M>, max_bans: u32) -> anyhow::Result<BanStore<M>> {
        let lock_path = state::lock_path(state);
        state::create_parent(&lock_path)?;
        let lock = gatekeeper_support::lock::lock_file_waiting(&lock_path, LOCK_WAIT)
            .with_context(|| format!("opening the lock file {}", lock_path.display()))?
            .with_context(|| {
                format!(
                    "{} is held by another ban change (waited {LOCK_WAIT:?}); try again",
                    lock_path.display()
                )
            })?;
        Ok(BanStore {
            state: state.to_path_buf(),
            maps,
            max_bans,
            _lock: lock,
        })
    }

    pub fn is_live(&self) -> bool {
        self.maps.is_some()
    }

    /// Bans `ban.source` until now + `ban.duration`, or extends a ban in force to that deadline
    /// when it is later. The maps refuse a new source when full ([`PutError::Full`]).
    pub fn add(&mut self, ban: NewBan) -> Result<Added, PutError> {
        let now = Now::read();
        let mut records = state::load(&self.state, now.unix)?;
        let wanted = now.unix.saturating_add(ban.duration.as_secs());
        let in_file = records.iter().position(|r| r.source == ban.source);
        let mut until = wanted;
        let mut extended = false;
        if let Some(at) = in_file {
            extended = true;
            until = until.max(records[at].until_unix);
        }
        let mut previous = None;
        if let Some(maps) = self.maps.as_mut() {
            previous = maps.get(ban.source)?;
            if let Some(live) = previous.filter(|l| l.deadline_ns > now.monotonic_ns) {
                extended = true;
                until = until.max(now.until_unix(live.deadline_ns));
            }
            maps.put(ban.source, now.deadline_ns(until))?;
        } else if in_file.is_none() {
            let family = |n: &IpNet| n.addr().is_ipv4();
            let same = records
                .iter()
                .filter(|r| family(&r.source) == family(&ban.source))
                .count();
            if same >= self.max_bans as usize {
                return Err(PutError::Full { max: self.max_bans });
            }
        }
        let record = BanRecord {
            source: ban.source,
            until_unix: until,
            reason: ban.reason,
            added_unix: now.unix,
            by: ban.by,
        };
        match in_file {
            Some(at) => {
                // The first reason and time stay; a later request only extends.
                let old = &mut records[at];
                old.until_unix = until;
                if old.reason.is_empty() {
                    old.reason = record.reason;
                }
            }
            None => records.push(record),
        }
        if let Err(err) = state::save(&self.state, &records) {
            if let Some(maps) = self.maps.as_mut() {
                // The maps keep the later deadline: back to the old one through a removal.
                let undo = maps.delete(ban.source).and_then(|_| match previous {
                    Some(live) => maps
                        .put(ban.source, live.deadline_ns)
                        .map_err(anyhow::Error::from),
                    None => Ok(()),
                });
                if let Err(undo) = undo {
                    return Err(PutError::Other(err.context(format!(
                        "and taking the ban of {} back out of the live maps failed too ({undo:#})",
                        ban.source
                    ))));
                }
            }
            return Err(PutError::Other(err.context("the ban was not added")));
        }
        Ok(Added {
            source: ban.source,
            until_unix: until,
            extended,
            live: self.maps.is_some(),
        })
    }

    /// Lifts the ban of `source`; false if there was none (in the file or live).
    pub fn remove(&mut self, source: IpNet) -> anyhow::Result<bool> {
        let now = Now::read();
        let mut records = state::load(&self.state, now.unix)?;
        let before = records.len();
        records.retain(|r| r.source != source);
        let in_file = records.len() != before;
        if in_file {
            state::save(&self.state, &records)?;
        }
        let live = match self.maps.as_mut() {
            Some(maps) => maps.delete(source)?,
            None => false,
        };
        Ok(in_file || live)
    }

    /// The bans in force: the file's, with their live entry, then live ones the file lacks.
    pub fn list(&self) -> anyhow::Result<Vec<ListedBan>> {
        let now = Now::read();
        let records = state::load(&self.state, now.unix)?;
        let mut live = match &self.maps {
            Some(maps) => maps.entries()?,
            None => Vec::new(),
        };
        live.retain(|(_, l)| l.deadline_ns > now.monotonic_ns);
        let mut listed: Vec<ListedBan> = records
            .into_iter()
            .map(|r| ListedBan {
                live: live.iter().find(|(s, _)| *s == r.source).map(|(_, l)| *l),
                source: r.source,
                until_unix: r.until_unix,
                reason: Some(r.reason),
                by: (!r.by.is_empty()).then_some(r.by),
            })
            .collect();
        for (source, ban) in live {
            if !listed.iter().any(|l| l.source == source) {
                listed.push(ListedBan {
                    source,
                    until_unix: now.until_unix(ban.deadline_ns),
                    reason: None,
                    by: None,
                    live: Some(ban),
                });
            }
        }
        Ok(listed)
    }

    /// Drops the bans that are over from the maps and the file; returns how many went.
    pub fn sweep(&mut self) -> anyhow::Result<usize> {
        let now = Now::read();
        let mut swept = 0;
        if let Some(maps) = self.maps.as_mut() {
            for (source, ban) in maps.entries()? {
                if ban.deadline_ns <= now.monotonic_ns && maps.delete(source)? {
                    swept += 1;
                }
            }
        }
        // Every record, the expired ones included: rewritten without them when there are any.
        let all = state::load(&self.state, 0)?;
        let kept: Vec<BanRecord> = all
            .iter()
            .filter(|r| r.until_unix > now.unix)
            .cloned()
            .collect();
        if kept.len() < all.len() {
            swept = swept.max(all.len() - kept.len());
            state::save(&self.state, &kept)?;
        }
        Ok(swept)
    }

    /// Puts the file's bans into the maps (at daemon start: after a reboot the maps are new and
    /// empty; after a restart they hold these already), after repairing the maps' bookkeeping. A live deadline later than the file's is
    /// kept. Returns how many were put, and the sources the maps refused as full.
    pub fn restore(&mut self) -> anyhow::Result<(usize, Vec<IpNet>)> {
        let now = Now::read();
        // First (a broken state file must not stop it), before anything is counted against
        // max_bans, and before the program is attached.
        if let Some(maps) = self.maps.as_mut() {
            maps.repair()?;
        }
        let records = state::load(&self.state, now.unix)?;
        let Some(maps) = self.maps.as_mut() else {
            return Ok((0, Vec::new()));
        };
        let mut put = 0;
        let mut refused = Vec::new();
        for record in &records {
            let deadline = now.deadline_ns(record.until_unix);
            if maps
                .get(record.source)?
                .is_some_and(|l| l.deadline_ns >= deadline)
            {
                continue;
            }
            match maps.put(record.source, deadline) {
                Ok(()) => put += 1,
                Err(PutError::Full { .. }) => refused.push(record.source),
                Err(PutError::Other(err)) => return Err(err),
            }
        }
        Ok((put, refused))
    }

    /// Adds many bans with one read and one write of the state file (the fleet's bursts): each
    /// as [`BanStore::add`] would, keeping the later deadline. Returns how many were put, and how
    /// many the full maps refused. The maps keep what went in if the file write fails.
    pub fn add_all(&mut self, bans: Vec<NewBan>) -> anyhow::Result<(usize, usize)> {
        let now = Now::read();
        let mut records = state::load(&self.state, now.unix)?;
        let mut at: std::collections::HashMap<IpNet, usize> = records
            .iter()
            .enumerate()
            .map(|(i, r)| (r.source, i))
            .collect();
        let (mut put, mut full) = (0, 0);
        for ban in bans {
            let mut until = now.unix.saturating_add(ban.duration.as_secs());
            let in_file = at.get(&ban.source).copied();
            if let Some(i) = in_file {
                until = until.max(records[i].until_unix);
            }
            if let Some(maps) = self.maps.as_mut() {
                if let Some(live) = maps
                    .get(ban.source)?
                    .filter(|l| l.deadline_ns > now.monotonic_ns)
                {
                    until = until.max(now.until_unix(live.deadline_ns));
                }
                match maps.put(ban.source, now.deadline_ns(until)) {
                    Ok(()) => {}
                    Err(PutError::Full { .. }) => {
                        full += 1;
                        continue;
                    }
                    Err(PutError::Other(err)) => return Err(err),
                }
            }
            match in_file {
                Some(i) => records[i].until_unix = until,
                None => {
                    at.insert(ban.source, records.len());
                    records.push(BanRecord {
                        source: ban.source,
                        until_unix: until,
                        reason: ban.reason,
                        added_unix: now.unix,
                        by: ban.by,
                    });
                }
            }
            put += 1;
        }
        state::save(&self.state, &records)?;
        Ok((put, full))
    }

    /// Lifts the bans of `sources` whose record `lift` accepts (the file's and the live entry),
    /// with one read and one write of the file; how many went.
    pub fn remove_where(
        &mut self,
        sources: &[IpNet],
        lift: impl Fn(&BanRecord) -> bool,
    ) -> anyhow::Result<usize> {
        let now = Now::read();
        let mut records = state::load(&self.state, now.unix)?;
        let wanted: std::collections::HashSet<IpNet> = sources.iter().copied().collect();
        let mut lifted = Vec::new();
        records.retain(|r| {
            let go = wanted.contains(&r.source) && lift(r);
            if go {
                lifted.push(r.source);
            }
            !go
        });
        if lifted.is_empty() {
            return Ok(0);
        }
        state::save(&self.state, &records)?;
        if let Some(maps) = self.maps.as_mut() {
            for source in &lifted {
                maps.delete(*source)?;
            }
        }
        Ok(lifted.len())
    }
}

/// The pinned (or the daemon's own) ban maps.
impl BanTable for crate::rules::BanMaps {
    fn get(&self, source: IpNet) -> anyhow::Result<Option<LiveBan>> {
        Ok(
            crate::rules::BanMaps::get(self, source.addr())?.map(|l| LiveBan {
                deadline_ns: l.deadline_ns,
                hits: l.hits,
            }),
        )
    }

    fn put(&mut self, source: IpNet, deadline_ns: u64) -> Result<(), PutError> {
        match self.ban(source.addr(), deadline_ns) {
            Ok(_) => Ok(()),
            Err(crate::rules::BanError::TableFull { capacity, .. }) => {
                Err(PutError::Full { max: capacity })
            }
            Err(crate::rules::BanError::Other(err)) => Err(PutError::Other(err)),
        }
    }

    fn delete(&mut self, source: IpNet) -> anyhow::Result<bool> {
        self.unban(source.addr())
    }

    fn repair(&mut self) -> anyhow::Result<()> {
        crate::rules::BanMaps::repair(self)
    }

    fn entries(&self) -> anyhow::Result<Vec<(IpNet, LiveBan)>> {
        Ok(self
            .list()?
            .into_iter()
            .map(|l| {
                (
                    l.source,
                    LiveBan {
                        deadline_ns: l.deadline_ns,
                        hits: l.hits,
                    },
                )
            })
            .collect())
    }
}

impl<T: BanTable> BanTable for &mut T {
    fn get(&self, source: IpNet) -> anyhow::Result<Option<LiveBan>> {
        (**self).get(source)
    }
    fn put(&mut self, source: IpNet, deadline_ns: u64) -> Result<(), PutError> {
        (**self).put(source, deadline_ns)
    }
    fn delete(&mut self, source: IpNet) -> anyhow::Result<bool> {
        (**self).delete(source)
    }
    fn entries(&self) -> anyhow::Result<Vec<(IpNet, LiveBan)>> {
        (**self).entries()
    }
    fn repair(&mut self) -> anyhow::Result<()> {
        (**self).repair()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Plain memory with the maps' contract (full at `max`), to check the store's bookkeeping;
    /// the real maps are exercised by the end-to-end tests.
    struct Memory {
        bans: BTreeMap<IpNet, LiveBan>,
        max: usize,
    }

    impl BanTable for Memory {
        fn get(&self, source: IpNet) -> anyhow::Result<Option<LiveBan>> {
            Ok(self.bans.get(&source).copied())
        }
        fn put(&mut self, source: IpNet, deadline_ns: u64) -> Result<(), PutError> {
            if !self.bans.contains_key(&source) && self.bans.len() >= self.max {
                return Err(PutError::Full {
                    max: self.max as u32,
                });
            }
            self.bans
                .entry(source)
                .or_insert(LiveBan {
                    deadline_ns,
                    hits: 0,
                })
                .deadline_ns = deadline_ns;
            Ok(())
        }
        fn delete(&mut self, source: IpNet) -> anyhow::Result<bool> {
            Ok(self.bans.remove(&source).is_some())
        }
        fn entries(&self) -> anyhow::Result<Vec<(IpNet, LiveBan)>> {
            Ok(self.bans.iter().map(|(s, l)| (*s, *l)).collect())
        }
    }

    fn ban(source: &str, secs: u64) -> NewBan {
        NewBan {
            source: source.parse().expect("net"),
            duration: Duration::from_secs(secs),
            reason: "test".into(),
            by: "cli uid=0".into(),
        }
    }

    #[test]
    fn sources_are_masked_per_family() {
        assert_eq!(
            parse_ban_source("203.0.113.9", 64).expect("v4").to_string(),
            "203.0.113.9/32"
        );
        assert_eq!(
            parse_ban_source("2001:db8:1:2:3:4:5:6", 64)
                .expect("v6")
                .to_string(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            parse_ban_source("2001:db8:1:2::/64", 64)
                .expect("the /64 itself")
                .to_string(),
            "2001:db8:1:2::/64"
        );
        let err = parse_ban_source("203.0.113.0/24", 64).expect_err("a network");
        assert!(err.to_string().contains("deny add"), "{err}");
        assert!(parse_ban_source("::ffff:192.0.2.1", 64).is_err());
    }

    #[test]
    fn add_extend_list_remove_and_full() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("bans.json");
        let mut memory = Memory {
            bans: BTreeMap::new(),
            max: 2,
        };
        {
            let mut store = BanStore::lock(&state, Some(&mut memory), 2).expect("lock");
            let first = store.add(ban("203.0.113.9/32", 3600)).expect("added");
            assert!(!first.extended && first.live);
            // A shorter request keeps the later deadline; a longer one extends.
            let again = store.add(ban("203.0.113.9/32", 60)).expect("again");
            assert!(again.extended);
            assert_eq!(again.until_unix, first.until_unix);
            let longer = store.add(ban("203.0.113.9/32", 7200)).expect("longer");
            assert!(longer.until_unix >= first.until_unix + 3599);
            store.add(ban("2001:db8::/64", 60)).expect("second");
            let full = store.add(ban("198.51.100.1/32", 60)).expect_err("full");
            assert!(matches!(full, PutError::Full { max: 2 }), "{full}");
            let listed = store.list().expect("list");
            assert_eq!(listed.len(), 2);
            assert!(listed.iter().all(|l| l.live.is_some()));
            assert!(
                store
                    .remove("2001:db8::/64".parse().expect("net"))
                    .expect("rm")
            );
            assert!(
                !store
                    .remove("2001:db8::/64".parse().expect("net"))
                    .expect("rm")
            );
        }
        assert_eq!(memory.bans.len(), 1);
        // A reboot: empty maps filled again from the file.
        let mut fresh = Memory {
            bans: BTreeMap::new(),
            max: 10,
        };
        let mut store = BanStore::lock(&state, Some(&mut fresh), 10).expect("lock");
        assert_eq!(store.restore().expect("restore"), (1, Vec::new()));
        drop(store);
        assert!(
            fresh
                .bans
                .contains_key(&"203.0.113.9/32".parse().expect("net"))
        );
    }

    #[test]
    fn the_sweeper_drops_what_is_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("bans.json");
        let now = Now::read();
        state::save(
            &state,
            &[
                BanRecord {
                    source: "203.0.113.1/32".parse().expect("net"),
                    until_unix: now.unix - 5,
                    reason: "old".into(),
                    added_unix: 0,
                    by: String::new(),
                },
                BanRecord {
                    source: "203.0.113.2/32".parse().expect("net"),
                    until_unix: now.unix + 500,
                    reason: "new".into(),
                    added_unix: 0,
                    by: String::new(),
                },
            ],
        )
        .expect("save");
        let mut memory = Memory {
            bans: BTreeMap::new(),
            max: 10,
        };
        memory.bans.insert(
            "203.0.113.1/32".parse().expect("net"),
            LiveBan {
                deadline_ns: now.monotonic_ns - 1,
                hits: 3,
            },
        );
        let mut store = BanStore::lock(&state, Some(&mut memory), 10).expect("lock");
        assert_eq!(store.sweep().expect("sweep"), 1);
        assert_eq!(state::load(&state, 0).expect("load").len(), 1);
        assert_eq!(store.sweep().expect("sweep"), 0);
        drop(store);
        assert!(memory.bans.is_empty());
    }
}
