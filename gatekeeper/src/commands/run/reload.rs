//! The part of a reload that may block, run on a blocking thread (never on the daemon's event
//! loop, which keeps handling signals, link events and drop events meanwhile): taking the
//! config's edit lock, reading and parsing the file, filling the maps. What follows (attaching
//! and detaching interfaces, logging) is the loop's, with the [`Outcome`].

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use gatekeeper::{
    config::Config,
    dir24,
    fleet::{Extra, merge_sorted},
    lock,
    maps::FilterMaps,
    rules::{DenyMaps, DenySyncReport},
    sync::{self, SyncReport},
};
use gatekeeper_support::{lock_holder, settle, stamp::FileStamp};
use ipnet::IpNet;
use tracing::warn;

use super::{feeds::FeedSet, ipv4_tables};

/// How long a reload waits for the config's edit lock before asking who holds it.
const EDIT_LOCK_WAIT: Duration = Duration::from_millis(500);
/// How long it waits in all when a `gatekeeper allow` edit holds it (they take moments).
const GATEKEEPER_EDIT_WAIT: Duration = Duration::from_secs(5);
/// A reload that takes out more than this share of the entries in force, and more than
/// [`MASS_REMOVAL_MIN`] of them, is logged at WARN with the count: the usual cause is a file
/// written in place and read half-way, or a generator that failed part-way.
const MASS_REMOVAL_PERCENT: usize = 10;
pub(super) const MASS_REMOVAL_MIN: usize = 20;

/// What to reload.
pub(super) struct Job {
    pub path: PathBuf,
    pub iface_override: Vec<String>,
    /// The pin directory in force (changing it needs a restart).
    pub pin_dir: PathBuf,
    pub kind: Kind,
    /// The deny feeds in force: loaded again where their files changed.
    pub feeds: FeedSet,
    /// The DNS-derived networks (sorted): a config reload keeps them in the allowlist.
    pub derived: Arc<Vec<IpNet>>,
    /// The fleet's networks the maps hold: merged into every sync, so it keeps them.
    pub extra: Arc<Extra>,
}

/// What a job reloads.
pub(super) enum Kind {
    /// The config file (and the feeds it names): the version of the file that settled, or
    /// `None` to read what is there now (SIGHUP).
    Config { expected: Option<FileStamp> },
    /// The deny feeds only: the config in force names them (`paths`) and has these `[[deny]]`
    /// entries (sorted).
    Feeds {
        paths: Vec<PathBuf>,
        entries: Vec<IpNet>,
    },
    /// The DNS-derived networks changed: these go in, then these come out (the loop left out
    /// those the config's own entries list).
    Derived { add: Vec<IpNet>, remove: Vec<IpNet> },
    /// The fleet's allow and deny networks changed (see [`super::fleet`]).
    Fleet(super::fleet::Job),
}

/// A config applied to the maps; the loop attaches and detaches interfaces after it.
pub(super) struct Applied {
    pub config: Config,
    pub report: SyncReport,
    pub feeds: FeedSet,
    pub stamp: FileStamp,
    pub took: Duration,
    /// The derived networks this reload kept in the maps.
    pub derived: Arc<Vec<IpNet>>,
}

/// A config the pinned IPv4 tables cannot hold: another `ipv4_lookup`, or more DIR-24-8 blocks
/// than the pool has. The loop replaces the tables (it owns the program and its links), then
/// reloads again.
pub(super) struct Refit {
    pub config: Config,
    /// The DIR-24-8 pool the new tables get.
    pub blocks: u32,
}

pub(super) enum Outcome {
    Applied(Box<Applied>),
    Refit(Box<Refit>),
    /// The file changed while it was read: wait for it to settle.
    Changed,
    /// Not applied, with the version of the file that was refused.
    Refused(anyhow::Error, Option<FileStamp>),
    /// The deny feeds loaded again and the deny list synced (a [`Kind::Feeds`] job).
    Feeds(FeedSet, DenySyncReport),
    /// Syncing the reloaded feeds failed: the deny list is as before.
    FeedsFailed(anyhow::Error),
    /// The derived networks `derived` are in the maps (a [`Kind::Derived`] job).
    Derived {
        derived: Arc<Vec<IpNet>>,
        added: usize,
        removed: usize,
    },
    /// Applying the derived networks failed.
    DerivedFailed(anyhow::Error),
    /// A [`Kind::Fleet`] job's outcome.
    Fleet(anyhow::Result<super::fleet::Done>),
}

/// Runs on a blocking thread.
pub(super) fn run(job: Job) -> Outcome {
    let started = Instant::now();
    let _edit = edit_lock(&job.path);
    let expected = match job.kind {
        Kind::Config { expected } => expected,
        Kind::Feeds {
            ref paths,
            ref entries,
        } => return sync_feeds(&job, paths, entries),
        Kind::Derived {
            ref add,
            ref remove,
        } => {
            return match super::derived::apply(&job.pin_dir, add, remove) {
                Ok((added, removed)) => Outcome::Derived {
                    derived: Arc::clone(&job.derived),
                    added,
                    removed,
                },
                Err(err) => Outcome::DerivedFailed(err),
            };
        }
        Kind::Fleet(fleet) => return Outcome::Fleet(super::fleet::run(fleet)),
    };
    let Some(stamp) = expected.or_else(|| FileStamp::of(&job.path)) else {
        return Outcome::Refused(anyhow::anyhow!("cannot read {}", job.path.display()), None);
    };
    let text = match settle::read_if_unchanged(&job.path, stamp) {
        Ok(Some(text)) => text,
        Ok(None) => return Outcome::Changed,
        Err(err) => {
            return Outcome::Refused(
                anyhow::Error::new(err).context(format!("reading {}", job.path.display())),
                Some(stamp),
            );
        }
    };
    match apply(&job, &text) {
        Ok(Step::Applied(config, report, feeds)) => Outcome::Applied(Box::new(Applied {
            config,
            report,
            feeds,
            stamp,
            took: started.elapsed(),
            derived: Arc::clone(&job.derived),
        })),
        Ok(Step::Refit(refit)) => Outcome::Refit(Box::new(refit)),
        Err(err) => Outcome::Refused(err, Some(stamp)),
    }
}

/// A [`Kind::Feeds`] job: the changed feeds loaded again, and the deny list synced to the union
/// of the config's `[[deny]]` entries and every feed (never one half alone: it would take the
/// other's entries out).
fn sync_feeds(job: &Job, paths: &[PathBuf], entries: &[IpNet]) -> Outcome {
    let feeds = job.feeds.refreshed(paths);
    let synced = DenyMaps::open_pinned(&job.pin_dir)
        .context("opening the pinned deny list")
        .and_then(|mut deny| {
            sync::apply_deny(
                &mut deny,
                entries,
                &merge_sorted(&feeds.union, &job.extra.deny),
            )
        });
    match synced {
        Ok(report) => Outcome::Feeds(feeds, report),
        Err(err) => Outcome::FeedsFailed(err),
    }
}

enum Step {
    Applied(Config, SyncReport, FeedSet),
    Refit(Refit),
}

fn apply(job: &Job, text: &str) -> anyhow::Result<Step> {
    let mut config = Config::parse(text, &job.path)?;
    if !job.iface_override.is_empty() {
        config.interfaces.clone_from(&job.iface_override);
    }
    // As at start (`load` in run.rs): every load of the file words its warnings.
    for warning in config.warnings() {
        warn!(config = %job.path.display(), "{warning}");
    }
    if config.pin_dir != job.pin_dir {
        anyhow::bail!(
            "pin_dir changed from {} to {}: restart the daemon to move the pinned state",
            job.pin_dir.display(),
            config.pin_dir.display()
        );
    }
    // Fresh handles on the pinned maps: the CLI may have edited them since the last sync, and
    // the DIR-24-8 writer's idea of which second-level blocks are free is per process (built
    // from the tables when first needed), so a long-lived one would hand out a block the CLI
    // took. Opened under the edit lock, its picture is current.
    let mut maps =
        FilterMaps::open_pinned(&job.pin_dir).context("opening the pinned maps for the reload")?;
    if let Some(blocks) = ipv4_tables::lookup_switch(&maps, &config) {
        return Ok(Step::Refit(Refit { config, blocks }));
    }
    let mut deny = DenyMaps::open_pinned(&job.pin_dir)
        .context("opening the pinned deny list for the reload")?;
    let feeds = job.feeds.refreshed(&config.deny_feeds);
    let with_derived = super::derived::with_derived(config.allow.sorted_nets(), &job.derived);
    let wanted = merge_sorted(&with_derived, &job.extra.allow);
    let deny_nets = merge_sorted(&feeds.union, &job.extra.deny);
    let report = match sync::apply_sorted(&mut maps, &mut deny, &config, &deny_nets, &wanted) {
        Err(err) if err.downcast_ref::<dir24::OutOfBlocks>().is_some() => {
            return match ipv4_tables::grown_pool(&maps, &config)? {
                Some(blocks) => Ok(Step::Refit(Refit { config, blocks })),
                None => Err(err),
            };
        }
        other => other?,
    };
    // What the maps held: the file's, the derived and the fleet's networks (`wanted`, merged),
    // not the file's alone.
    let before = (wanted.len() + report.removed.len()).saturating_sub(report.added.len());
    if is_mass_removal(before, report.removed.len()) {
        warn!(
            removed = report.removed.len(),
            before,
            config = %job.path.display(),
            "this reload removed {} of the {before} allowlist entries in force at once: if the file was written in place, check it is complete (write it to a temporary file and rename it over the config instead)",
            report.removed.len()
        );
    }
    Ok(Step::Applied(config, report, feeds))
}

/// More than [`MASS_REMOVAL_PERCENT`] of `before`, and more than [`MASS_REMOVAL_MIN`].
fn is_mass_removal(before: usize, removed: usize) -> bool {
    removed > MASS_REMOVAL_MIN && removed * 100 > before * MASS_REMOVAL_PERCENT
}

/// The config's edit lock (for the start-up fill too), so a reload never lands between the two halves of an admin's
/// `gatekeeper allow` (map, then file). It is waited for [`EDIT_LOCK_WAIT`]; if a gatekeeper
/// command holds it then, up to [`GATEKEEPER_EDIT_WAIT`]; anything else holding it (a stuck
/// script, a foreign `flock`) is named at WARN and the reload goes ahead without the lock, so it
/// cannot hold reloads back. Without a lock file (a read-only config directory) the daemon still
/// works; it says so.
pub(super) fn edit_lock(path: &Path) -> Option<lock::Lock> {
    let err = match lock::lock_config(path, EDIT_LOCK_WAIT) {
        Ok(lock) => return Some(lock),
        Err(err) => err,
    };
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let lock_path = lock::config_lock_path(&real);
    match lock_holder::flock_holder(&lock_path) {
        Some(holder) if holder.command.as_deref() == Some("gatekeeper") => {
            match lock::lock_config(path, GATEKEEPER_EDIT_WAIT - EDIT_LOCK_WAIT) {
                Ok(lock) => Some(lock),
                Err(err) => {
                    warn!(lock = %lock_path.display(), %holder, error = %format!("{err:#}"), "reading the config without the edit lock");
                    None
                }
            }
        }
        Some(holder) => {
            warn!(
                lock = %lock_path.display(),
                %holder,
                "the config's edit lock is held by {holder}, which is not a gatekeeper command, for more than {EDIT_LOCK_WAIT:?}: reloading without it"
            );
            None
        }
        None => {
            warn!(error = %format!("{err:#}"), "reading the config without the edit lock");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mass_removal_is_more_than_a_tenth_and_more_than_twenty() {
        assert!(!is_mass_removal(100, 20), "20 is not more than 20");
        assert!(is_mass_removal(100, 21));
        assert!(
            !is_mass_removal(1000, 100),
            "a tenth is not more than a tenth"
        );
        assert!(is_mass_removal(1000, 101));
        assert!(
            !is_mass_removal(20, 20),
            "a short list may be replaced whole"
        );
        assert!(is_mass_removal(100_000, 99_000));
    }
}
