//! Which peers a listener admits, kept in step with the gatekeeper config.
//!
//! A listener's ranges are its own `allow` CIDRs plus the `[[allow]]` tables
//! of the gatekeeper configs named in `allow_gatekeeper`. Those files change
//! while we run (`gatekeeper allow add` rewrites them), and the relay must
//! admit a new partner as soon as the XDP filter does. So before judging a
//! connection we `stat` the files (one syscall each, far cheaper than the TLS
//! handshake that follows) and re-read them when their identity, size or
//! modification time changed. A file that cannot be read or parsed leaves the
//! previous list in force — a half-written or broken file must not lock every
//! partner out — and is logged once per change. A gatekeeper config that makes
//! the listener's port `open` admits everyone: the XDP filter already sheds the
//! denied, banned and rate-limited sources there. A gatekeeper config with
//! DNS-derived entries (`spf`, `mx`, `a`) adds the networks the gatekeeper daemon
//! resolved for them, read from its state file, which is followed the same way:
//! one source of truth for the filter and the relay.

use std::net::IpAddr;
use std::path::PathBuf;

use gatekeeper_support::stamp::FileStamp;
use ipnet::IpNet;
use tracing::{info, warn};

use crate::config::{ListenerConfig, load_gatekeeper_admission};

/// One listener's admitted ranges, refreshed from the gatekeeper files.
/// Owned by the listener's accept loop, so it needs no lock.
#[derive(Debug)]
pub struct Admission {
    listener: std::net::SocketAddr,
    fixed: Vec<IpNet>,
    files: Vec<PathBuf>,
    stamps: Vec<Option<FileStamp>>,
    /// The gatekeeper's derived-allow state files the configs named at the last read.
    states: Vec<PathBuf>,
    state_stamps: Vec<Option<FileStamp>>,
    ranges: Vec<IpNet>,
}

impl Admission {
    /// Starts from the ranges validated at config load and stamps the files
    /// as they are now, re-reading them if they changed since the load.
    pub fn new(config: &ListenerConfig) -> Admission {
        // Stamp first, then read: a change after the stamp is seen next time.
        let mut admission = Admission {
            listener: config.address,
            fixed: config.fixed_allow.clone(),
            files: config.gatekeeper_files.clone(),
            stamps: config
                .gatekeeper_files
                .iter()
                .map(|f| FileStamp::of(f))
                .collect(),
            states: Vec::new(),
            state_stamps: Vec::new(),
            ranges: config.allow.clone(),
        };
        if let Ok((ranges, states)) = admission.read_all() {
            admission.ranges = ranges;
            admission.follow_states(states);
        }
        admission
    }

    /// Follows the state files `states` from now on (stamped now if they are new).
    fn follow_states(&mut self, states: Vec<PathBuf>) {
        if states != self.states {
            self.state_stamps = states.iter().map(|f| FileStamp::of(f)).collect();
            self.states = states;
        }
    }

    /// Whether `peer` may talk to this listener, after picking up any change
    /// to the gatekeeper files. IPv4-mapped IPv6 peers are matched as IPv4.
    pub fn admits(&mut self, peer: IpAddr) -> bool {
        self.refresh();
        let peer = peer.to_canonical();
        self.ranges.iter().any(|net| net.contains(&peer))
    }

    /// The ranges in force now.
    pub fn ranges(&self) -> &[IpNet] {
        &self.ranges
    }

    /// Re-reads the files if any of them changed since the last look.
    pub fn refresh(&mut self) {
        if self.files.is_empty() {
            return;
        }
        let now: Vec<Option<FileStamp>> = self.files.iter().map(|f| FileStamp::of(f)).collect();
        let states_now: Vec<Option<FileStamp>> =
            self.states.iter().map(|f| FileStamp::of(f)).collect();
        if now == self.stamps && states_now == self.state_stamps {
            return;
        }
        self.stamps = now;
        self.state_stamps = states_now;
        match self.read_all() {
            Ok((ranges, states)) => {
                self.follow_states(states);
                if ranges != self.ranges {
                    info!(event = "allowlist_reloaded", listener = %self.listener,
                        ranges = ranges.len(), previous = self.ranges.len(),
                        "admitted ranges changed with the gatekeeper config");
                    if ranges.is_empty() {
                        warn!(event = "allowlist_empty", listener = %self.listener,
                            "the listener now admits no peer");
                    }
                    self.ranges = ranges;
                }
            }
            Err(e) => {
                warn!(event = "allowlist_reload_failed", listener = %self.listener,
                    ranges = self.ranges.len(), error = format!("{e:#}"),
                    "keeping the previous ranges");
            }
        }
    }

    /// The ranges of every file, and the derived-allow state files they name.
    fn read_all(&self) -> anyhow::Result<(Vec<IpNet>, Vec<PathBuf>)> {
        let mut ranges = self.fixed.clone();
        let mut states = Vec::new();
        for file in &self.files {
            let (nets, state) = load_gatekeeper_admission(file, self.listener.port())?;
            ranges.extend(nets);
            states.extend(state);
        }
        Ok((ranges, states))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::load_gatekeeper_allow;

    /// A directory of its own per test, removed afterwards.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new() -> Scratch {
            static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = std::env::temp_dir()
                .join(format!("smtp-relay-admission-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("mkdir");
            Scratch(dir)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn listener(dir: &Path, fixed: &[&str]) -> ListenerConfig {
        let file = dir.join("gatekeeper.toml");
        let fixed: Vec<IpNet> = fixed.iter().map(|n| n.parse().expect("net")).collect();
        let mut allow = fixed.clone();
        allow.extend(load_gatekeeper_allow(&file, 25).expect("initial file"));
        ListenerConfig {
            address: "127.0.0.1:25".parse().expect("addr"),
            role: crate::config::Role::Mta,
            allow,
            fixed_allow: fixed,
            gatekeeper_files: vec![file],
            dmarc_policy: Default::default(),
        }
    }

    /// Writes like `gatekeeper allow add` does: a new file renamed over the old.
    fn write_atomically(dir: &Path, text: &str) {
        gatekeeper_support::atomic::replace(&dir.join("gatekeeper.toml"), text.as_bytes())
            .expect("replace");
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    /// A gatekeeper config without entries: the relay reads it through the gatekeeper's own
    /// schema, so it is a whole, valid one.
    const NONE: &str = "interfaces = [\"eth0\"]\n";
    const ONE: &str = "interfaces = [\"eth0\"]\n[[allow]]\ncidr = \"198.51.100.0/24\"\n";
    const TWO: &str = "interfaces = [\"eth0\"]\n[[allow]]\ncidr = \"198.51.100.0/24\"\n[[allow]]\ncidr = \"203.0.113.66/32\"\n";

    #[test]
    fn a_port_the_gatekeeper_makes_open_admits_everyone() {
        let dir = Scratch::new();
        write_atomically(dir.path(), ONE);
        let mut a = Admission::new(&listener(dir.path(), &[]));
        assert!(!a.admits(ip("203.0.113.9")));
        // The admin opens port 25: the relay follows the filter.
        let open25 = format!("{ONE}[[port]]\nnumber = 25\npolicy = \"open\"\n");
        write_atomically(dir.path(), &open25);
        assert!(a.admits(ip("203.0.113.9")));
        assert!(a.admits(ip("2001:db8:6600::66")));
        // Another port open leaves this listener's port to the allowlist.
        let open587 = format!("{ONE}[[port]]\nnumber = 587\npolicy = \"open\"\n");
        write_atomically(dir.path(), &open587);
        assert!(!a.admits(ip("203.0.113.9")));
        assert!(a.admits(ip("198.51.100.9")));
    }

    /// The gatekeeper daemon's state file with `source` resolved to `nets`.
    fn write_state(path: &Path, sources: &[(&str, &[&str])]) {
        use gatekeeper_support::derived::{DerivedState, STATE_VERSION, SourceState};
        let state = DerivedState {
            version: STATE_VERSION,
            sources: sources
                .iter()
                .map(|(source, nets)| SourceState {
                    source: source.to_string(),
                    networks: nets.iter().map(|n| n.parse().expect("net")).collect(),
                    resolved_at: 1,
                    ttl_secs: 300,
                    checked_at: 1,
                    error: None,
                    warnings: vec![],
                })
                .collect(),
        };
        state.store(path).expect("store");
    }

    #[test]
    fn derived_entries_follow_the_gatekeepers_state_file() {
        let dir = Scratch::new();
        let state = dir.path().join("derived.json");
        let config = format!(
            "interfaces = [\"eth0\"]\n[dns]\nnameservers = [\"127.0.0.1:53\"]\nstate = \"{}\"\n[[allow]]\nspf = \"partner.example\"\n",
            state.display()
        );
        write_atomically(dir.path(), &config);
        let mut a = Admission::new(&listener(dir.path(), &[]));
        assert!(!a.admits(ip("198.51.100.7")), "nothing resolved yet");
        write_state(
            &state,
            &[
                ("spf:partner.example", &["198.51.100.0/24"]),
                ("a:old.example", &["203.0.113.1/32"]),
            ],
        );
        assert!(a.admits(ip("198.51.100.7")), "the daemon's set");
        assert!(
            !a.admits(ip("203.0.113.1")),
            "a source the config no longer names admits nothing"
        );
        write_state(&state, &[("spf:partner.example", &["192.0.2.0/24"])]);
        assert!(!a.admits(ip("198.51.100.7")));
        assert!(a.admits(ip("192.0.2.9")));
        std::fs::write(&state, "{").expect("break the state file");
        assert!(
            a.admits(ip("192.0.2.9")),
            "an unreadable state keeps the ranges"
        );
    }

    #[test]
    fn picks_up_additions_and_removals() {
        let dir = Scratch::new();
        write_atomically(dir.path(), ONE);
        let mut a = Admission::new(&listener(dir.path(), &["127.0.0.0/8"]));
        assert!(a.admits(ip("198.51.100.9")));
        assert!(a.admits(ip("127.0.0.1")));
        assert!(!a.admits(ip("203.0.113.66")));

        write_atomically(dir.path(), TWO);
        assert!(a.admits(ip("203.0.113.66")));
        assert!(a.admits(ip("::ffff:203.0.113.66")));

        write_atomically(dir.path(), NONE);
        assert!(!a.admits(ip("203.0.113.66")));
        assert!(!a.admits(ip("198.51.100.9")));
        assert!(a.admits(ip("127.0.0.1")), "fixed ranges stay");
    }

    #[test]
    fn in_place_append_is_noticed() {
        let dir = Scratch::new();
        write_atomically(dir.path(), ONE);
        let mut a = Admission::new(&listener(dir.path(), &[]));
        assert!(!a.admits(ip("203.0.113.66")));
        let path = dir.path().join("gatekeeper.toml");
        let mut text = std::fs::read_to_string(&path).expect("read");
        text.push_str("[[allow]]\ncidr = \"203.0.113.66/32\"\n");
        std::fs::write(&path, text).expect("append");
        assert!(a.admits(ip("203.0.113.66")));
    }

    #[test]
    fn broken_or_missing_file_keeps_previous_ranges() {
        let dir = Scratch::new();
        write_atomically(dir.path(), TWO);
        let mut a = Admission::new(&listener(dir.path(), &[]));
        assert!(a.admits(ip("203.0.113.66")));

        write_atomically(dir.path(), "[[allow]]\ncidr = \"not a network\"\n");
        assert!(a.admits(ip("203.0.113.66")), "broken file: old ranges");

        std::fs::remove_file(dir.path().join("gatekeeper.toml")).expect("rm");
        assert!(a.admits(ip("198.51.100.1")), "missing file: old ranges");

        write_atomically(dir.path(), ONE);
        assert!(!a.admits(ip("203.0.113.66")), "fixed file applies again");
        assert!(a.admits(ip("198.51.100.1")));
    }

    #[test]
    fn a_file_the_gatekeeper_refuses_keeps_previous_ranges() {
        let dir = Scratch::new();
        write_atomically(dir.path(), ONE);
        let mut a = Admission::new(&listener(dir.path(), &[]));
        // Host bits set: the gatekeeper refuses the file, so the relay keeps the old ranges
        // rather than admitting 203.0.113.0/24.
        write_atomically(
            dir.path(),
            "interfaces = [\"eth0\"]\n[[allow]]\ncidr = \"203.0.113.66/24\"\n",
        );
        assert!(!a.admits(ip("203.0.113.1")));
        assert!(a.admits(ip("198.51.100.1")));
        // So does a file without the gatekeeper's required keys.
        write_atomically(dir.path(), "[[allow]]\ncidr = \"203.0.113.0/24\"\n");
        assert!(!a.admits(ip("203.0.113.1")));
        assert!(a.admits(ip("198.51.100.1")));
    }

    #[test]
    fn unchanged_files_are_not_reread() {
        let dir = Scratch::new();
        write_atomically(dir.path(), ONE);
        let mut a = Admission::new(&listener(dir.path(), &[]));
        let before = a.stamps.clone();
        assert!(a.admits(ip("198.51.100.1")));
        assert_eq!(a.stamps, before);
        assert_eq!(a.ranges().len(), 1);
    }
}
