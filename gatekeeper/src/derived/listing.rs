//! The derived entries as the admin CLI shows them (`allow list`, `status`), read from the state
//! file the daemon writes: each network with the source it came from, and each source's age and
//! last error.

use std::io::{self, Write};

use gatekeeper_support::derived::{DerivedEntry, DerivedState, SourceState, unix_now};
use ipnet::IpNet;

use crate::config::Config;

/// The config's derived entries and what the state file says of them.
pub struct Derived {
    entries: Vec<DerivedEntry>,
    state: DerivedState,
    /// Why the state file could not be read.
    unreadable: Option<String>,
    /// `(network, index of the entry)`, sorted by network.
    nets: Vec<(IpNet, usize)>,
}

impl Derived {
    /// Reads the state file of `config` (not at all when it has no derived entries).
    pub fn read(config: &Config) -> Derived {
        let mut derived = Derived {
            entries: config.derived.clone(),
            state: DerivedState::default(),
            unreadable: None,
            nets: Vec::new(),
        };
        if derived.entries.is_empty() {
            return derived;
        }
        match DerivedState::load(&config.dns.state) {
            Ok(state) => derived.state = state,
            Err(err) => derived.unreadable = Some(err.to_string()),
        }
        for (index, entry) in derived.entries.iter().enumerate() {
            if let Some(state) = derived.state.get(&entry.source) {
                derived
                    .nets
                    .extend(state.networks.iter().map(|n| (*n, index)));
            }
        }
        derived.nets.sort_unstable();
        derived
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The derived networks, sorted, without duplicates.
    pub fn nets(&self) -> Vec<IpNet> {
        let mut nets: Vec<IpNet> = self.nets.iter().map(|(n, _)| *n).collect();
        nets.dedup();
        nets
    }

    /// `sorted` (the file's networks) with the derived ones.
    pub fn with(&self, sorted: Vec<IpNet>) -> Vec<IpNet> {
        super::refresh::union(&sorted, &self.nets())
    }

    /// The derived source that admits `net` as the daemon's state file has it (the file holds
    /// the sources of the config the daemon runs; `config` may hold its settings only, as a
    /// streamed edit reads it).
    pub fn source_of(config: &Config, net: IpNet) -> Option<String> {
        let state = DerivedState::load(&config.dns.state).ok()?;
        state
            .sources
            .iter()
            .find(|s| s.networks.contains(&net))
            .map(|s| s.source.clone())
    }

    /// One row per derived network: `(network, the entry's comment, source)`, by source in file
    /// order, then by network.
    pub fn rows(&self) -> impl Iterator<Item = (IpNet, Option<&str>, &str)> + '_ {
        self.entries.iter().flat_map(move |entry| {
            let source = self.state.get(&entry.source);
            let label = source.map_or("", |s| s.source.as_str());
            source
                .into_iter()
                .flat_map(|s| s.networks.iter())
                .map(move |net| (*net, entry.comment.as_deref(), label))
        })
    }

    /// One line per source: its networks, age and last error.
    pub fn summary(&self) -> Vec<String> {
        let now = unix_now();
        let mut lines = Vec::new();
        if let Some(why) = &self.unreadable {
            lines.push(format!("derived state unreadable: {why}"));
        }
        for entry in &self.entries {
            lines.push(match self.state.get(&entry.source) {
                None => format!("{}: not resolved yet", entry.source),
                Some(state) => describe(&entry.source.to_string(), state, now),
            });
        }
        lines
    }

    /// After `allow list`'s table: sources without networks, and failing ones.
    pub fn write_notes(&self, out: &mut impl Write) -> io::Result<()> {
        if self.entries.is_empty() {
            return Ok(());
        }
        writeln!(out)?;
        writeln!(out, "derived entries (DNS):")?;
        for line in self.summary() {
            writeln!(out, "  {line}")?;
        }
        Ok(())
    }

    /// The sources and their state, for `status --json`.
    pub fn json(&self) -> serde_json::Value {
        let now = unix_now();
        serde_json::Value::Array(
            self.entries
                .iter()
                .map(|entry| {
                    let state = self.state.get(&entry.source);
                    serde_json::json!({
                        "source": entry.source.to_string(),
                        "networks": state.map_or(0, |s| s.networks.len()),
                        "age_secs": state.filter(|s| s.resolved_at > 0).map(|s| now.saturating_sub(s.resolved_at)),
                        "ttl_secs": state.map(|s| s.ttl_secs),
                        "error": state.and_then(|s| s.error.clone()),
                    })
                })
                .collect(),
        )
    }
}

fn describe(source: &str, state: &SourceState, now: u64) -> String {
    let count = state.networks.len();
    let mut line = format!(
        "{source}: {count} network{}",
        if count == 1 { "" } else { "s" }
    );
    if state.resolved_at == 0 {
        line.push_str(", never resolved");
    } else {
        let age = now.saturating_sub(state.resolved_at);
        line.push_str(&format!(
            ", resolved {} ago (TTL {}s)",
            humantime::format_duration(std::time::Duration::from_secs(age)),
            state.ttl_secs
        ));
    }
    if let Some(error) = &state.error {
        line.push_str(&format!("; last attempt failed, kept: {error}"));
    }
    line
}
