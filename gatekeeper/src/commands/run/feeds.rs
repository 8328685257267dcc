//! The deny feeds the daemon follows: each feed's last load (networks, bad lines, the file's
//! stamp), and when to load one again. A feed is followed like the config file (a change is read
//! once it has settled, see [`gatekeeper_support::settle`]); loads run on the reload thread
//! ([`super::reload`]), which syncs the union of the `[[deny]]` entries and every feed's networks
//! into the kernel in one go.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use gatekeeper::deny_feed;
use gatekeeper_support::{
    settle::{Look, Settle},
    stamp::FileStamp,
};
use ipnet::IpNet;
use tracing::{info, warn};

/// How often the feeds are looked at (one `stat` each): with the settle time, a feed renamed
/// into place is in force within a second.
pub(super) const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Bad lines logged one by one per load; the rest are counted in one line (a feed that is not a
/// drop list at all should not flood the log).
const BAD_LINES_LOGGED: usize = 100;

/// One feed as last loaded.
#[derive(Clone, Debug)]
pub(super) struct LoadedFeed {
    pub path: PathBuf,
    /// The file's stamp before it was read (`None`: missing). A change after that is seen by the
    /// next look and loads the feed again.
    pub stamp: Option<FileStamp>,
    /// Sorted, without duplicates.
    pub nets: Arc<Vec<IpNet>>,
    pub bad_lines: usize,
}

impl LoadedFeed {
    /// Reads and parses the feed, logging every bad line (FILE:LINE) and an unreadable file at
    /// WARN: a bad line is skipped, a missing feed counts as empty, neither stops the rest.
    fn load(path: &Path) -> LoadedFeed {
        let stamp = FileStamp::of(path);
        let feed = deny_feed::load(path);
        if let Some(why) = &feed.unreadable {
            warn!(feed = %path.display(), "deny feed unreadable, counts as empty: {why}");
        }
        for bad in feed.bad_lines.iter().take(BAD_LINES_LOGGED) {
            warn!("deny feed line {bad}");
        }
        if feed.bad_lines.len() > BAD_LINES_LOGGED {
            warn!(
                feed = %path.display(),
                more = feed.bad_lines.len() - BAD_LINES_LOGGED,
                "more bad lines skipped in the deny feed, not logged one by one"
            );
        }
        let mut nets = feed.nets;
        nets.sort_unstable();
        nets.dedup();
        info!(
            feed = %path.display(),
            entries = nets.len(),
            bad_lines = feed.bad_lines.len(),
            "deny feed loaded"
        );
        LoadedFeed {
            path: path.to_path_buf(),
            stamp,
            nets: Arc::new(nets),
            bad_lines: feed.bad_lines.len(),
        }
    }
}

/// Every followed feed's last load, and their networks' union.
#[derive(Clone, Debug, Default)]
pub(super) struct FeedSet {
    pub feeds: Vec<LoadedFeed>,
    /// The union of the feeds' networks, sorted, without duplicates.
    pub union: Arc<Vec<IpNet>>,
}

impl FeedSet {
    /// Loads every feed of `paths`.
    pub fn load(paths: &[PathBuf]) -> FeedSet {
        FeedSet::default().refreshed(paths)
    }

    /// The feeds of `paths`: those loaded already whose file still has the stamp it had at their
    /// load are kept as they are; the others (new, changed, gone) are loaded now. Runs on the
    /// reload thread.
    pub fn refreshed(&self, paths: &[PathBuf]) -> FeedSet {
        let mut changed = false;
        let feeds: Vec<LoadedFeed> = paths
            .iter()
            .map(|path| {
                match self
                    .feeds
                    .iter()
                    .find(|f| &f.path == path && f.stamp == FileStamp::of(path))
                {
                    Some(same) => same.clone(),
                    None => {
                        changed = true;
                        LoadedFeed::load(path)
                    }
                }
            })
            .collect();
        let same_paths = feeds.len() == self.feeds.len()
            && feeds.iter().zip(&self.feeds).all(|(a, b)| a.path == b.path);
        if !changed && same_paths {
            return self.clone();
        }
        let mut union: Vec<IpNet> = feeds.iter().flat_map(|f| f.nets.iter().copied()).collect();
        union.sort_unstable();
        union.dedup();
        FeedSet {
            feeds,
            union: Arc::new(union),
        }
    }

    /// Networks over all feeds (each feed counted on its own) and bad lines, for the metrics.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.feeds.iter().map(|f| f.nets.len() as u64).sum(),
            self.feeds.iter().map(|f| f.bad_lines as u64).sum(),
        )
    }
}

/// The loop's watch on the feeds: one [`Settle`] per feed, started from the stamps of the feeds
/// in force.
pub(super) struct FeedWatch {
    watched: Vec<(PathBuf, Option<FileStamp>, Settle)>,
}

impl FeedWatch {
    pub fn new(set: &FeedSet) -> FeedWatch {
        FeedWatch {
            watched: set
                .feeds
                .iter()
                .map(|f| (f.path.clone(), f.stamp, Settle::new(f.stamp)))
                .collect(),
        }
    }

    /// A watch on `paths` from their stamps now: after a failed sync, only a new change
    /// triggers another.
    pub fn settled_now(paths: &[PathBuf]) -> FeedWatch {
        FeedWatch {
            watched: paths
                .iter()
                .map(|path| {
                    let stamp = FileStamp::of(path);
                    (path.clone(), stamp, Settle::new(stamp))
                })
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.watched.is_empty()
    }

    /// One look at every feed: true when one changed and settled (or vanished) and the feeds
    /// should be loaded again.
    pub fn changed(&mut self) -> bool {
        let mut changed = false;
        for (path, applied, settle) in &mut self.watched {
            let now = FileStamp::of(path);
            match settle.look(now) {
                Look::Settled(_) => changed = true,
                // A feed taken away counts as empty from now on (a fetch that fails leaves the
                // old file in place; removing it is deliberate).
                Look::Unchanged if now.is_none() && applied.is_some() => changed = true,
                _ => {}
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("cidr")
    }

    #[test]
    fn a_refresh_loads_only_changed_feeds_and_unites_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let a = dir.path().join("a.txt");
        let b = dir.path().join("b.txt");
        let missing = dir.path().join("missing.txt");
        std::fs::write(&a, "203.0.113.0/24 ; x\nbogus\n192.0.2.0/28\n").expect("write a");
        std::fs::write(&b, "192.0.2.0/28\n2001:db8::/32\n").expect("write b");
        let paths = [a.clone(), b.clone(), missing.clone()];
        let set = FeedSet::load(&paths);
        assert_eq!(
            *set.union,
            [
                net("192.0.2.0/28"),
                net("203.0.113.0/24"),
                net("2001:db8::/32")
            ]
        );
        assert_eq!(set.counts(), (4, 1), "networks per feed summed, bad lines");
        assert!(set.feeds[2].nets.is_empty() && set.feeds[2].stamp.is_none());

        // Nothing changed: the same loads (the very same allocations).
        let again = set.refreshed(&paths);
        assert!(Arc::ptr_eq(&again.union, &set.union));
        assert!(Arc::ptr_eq(&again.feeds[0].nets, &set.feeds[0].nets));

        // One feed replaced by rename: only it is loaded again.
        let tmp = dir.path().join("b.part");
        std::fs::write(&tmp, "198.51.100.0/24\n").expect("write tmp");
        std::fs::rename(&tmp, &b).expect("rename");
        let changed = set.refreshed(&paths);
        assert!(Arc::ptr_eq(&changed.feeds[0].nets, &set.feeds[0].nets));
        assert_eq!(
            *changed.union,
            [
                net("192.0.2.0/28"),
                net("198.51.100.0/24"),
                net("203.0.113.0/24")
            ]
        );

        // A feed taken out of the config leaves the union.
        let fewer = changed.refreshed(&paths[1..]);
        assert_eq!(*fewer.union, [net("198.51.100.0/24")]);
    }

    #[test]
    fn the_watch_sees_a_new_file_and_a_vanished_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let feed = dir.path().join("drop.txt");
        let mut watch = FeedWatch::new(&FeedSet::load(std::slice::from_ref(&feed)));
        assert!(!watch.changed(), "missing, as loaded");
        std::fs::write(&feed, "192.0.2.0/24\n").expect("write");
        // Written long ago as far as the settle rule goes: set its mtime back.
        let old = std::time::SystemTime::now() - Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&feed)
            .and_then(|f| f.set_modified(old))
            .expect("mtime");
        assert!(!watch.changed(), "first look: changing");
        assert!(
            watch.changed(),
            "second look, same stamp, written long ago: settled"
        );
        let mut watch = FeedWatch::new(&FeedSet::load(std::slice::from_ref(&feed)));
        assert!(!watch.changed());
        std::fs::remove_file(&feed).expect("remove");
        assert!(watch.changed(), "a feed taken away counts as a change");
    }
}
