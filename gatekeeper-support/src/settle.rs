//! Applying a changed file only once it has settled. An editor or a generator that writes a file
//! in place leaves it half-written for a while, and a prefix of a TOML file often parses: applied,
//! it would drop every entry the writer had not reached yet. A change counts as settled when two
//! looks at least one poll apart saw the same stamp (identity, size, modification time) and the
//! file was last written at least [`SETTLE_TIME`] ago, or the stamp stayed the same for that
//! long (a modification time in the future, a clock that jumped). The reader then checks that
//! the stamp did not change while it read. A writer that pauses longer than [`SETTLE_TIME`] in
//! the middle can still be caught half-way: atomic replacement (write a temporary file, rename it
//! over the original) is the only safe way to write a watched file.

use std::time::{Duration, Instant, SystemTime};

use crate::stamp::FileStamp;

/// How long a changed file must stay unwritten before it is read.
pub const SETTLE_TIME: Duration = Duration::from_millis(500);

/// What one look at the watched file found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Look {
    /// As last applied (or missing, as before).
    Unchanged,
    /// Changed, but written too recently (or changed since the last look): look again.
    Changing,
    /// Changed and settled: read it now and hand the stamp back to [`Settle::applied`].
    Settled(FileStamp),
}

/// Tracks one watched file between looks.
#[derive(Clone, Copy, Debug)]
pub struct Settle {
    applied: Option<FileStamp>,
    /// The stamp of the last look that differed from `applied`, and since when it is seen.
    seen: Option<(FileStamp, Instant)>,
}

impl Settle {
    /// Watches a file whose version `applied` is in force.
    pub fn new(applied: Option<FileStamp>) -> Settle {
        Settle {
            applied,
            seen: None,
        }
    }

    /// One look: `now` is the file's stamp at this moment (`None` if missing: nothing to read,
    /// so never settled).
    pub fn look(&mut self, now: Option<FileStamp>) -> Look {
        let Some(stamp) = now else {
            self.seen = None;
            return Look::Unchanged;
        };
        if Some(stamp) == self.applied {
            self.seen = None;
            return Look::Unchanged;
        }
        match self.seen {
            Some((seen, since)) if seen == stamp => {
                let written_long_ago = SystemTime::now()
                    .duration_since(stamp.modified())
                    .is_ok_and(|age| age >= SETTLE_TIME);
                if written_long_ago || since.elapsed() >= SETTLE_TIME {
                    Look::Settled(stamp)
                } else {
                    Look::Changing
                }
            }
            _ => {
                self.seen = Some((stamp, Instant::now()));
                Look::Changing
            }
        }
    }

    /// The version with this stamp is in force now (applied, or refused as invalid: either way
    /// it is not looked at again until it changes).
    pub fn applied(&mut self, stamp: Option<FileStamp>) {
        self.applied = stamp;
        self.seen = None;
    }

    /// Forgets the look in progress, so the next look starts the wait anew (the file changed
    /// while it was being read).
    pub fn restart(&mut self) {
        self.seen = None;
    }
}

/// Reads `path` whole, and only if its stamp is `expected` before and after the read; `Ok(None)`
/// if it changed (or vanished) meanwhile.
pub fn read_if_unchanged(
    path: &std::path::Path,
    expected: FileStamp,
) -> std::io::Result<Option<String>> {
    if FileStamp::of(path) != Some(expected) {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path)?;
    Ok((FileStamp::of(path) == Some(expected)).then_some(text))
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    #[test]
    fn a_file_being_written_settles_only_after_it_stops() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("gatekeeper.toml");
        std::fs::write(&path, "a = 1\n").expect("write");
        let mut settle = Settle::new(FileStamp::of(&path));
        assert_eq!(settle.look(FileStamp::of(&path)), Look::Unchanged);

        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        let started = Instant::now();
        let mut settled_at = None;
        for round in 0..40 {
            // Written in place for the first 0.6 s, a chunk every 100 ms.
            if round < 6 {
                file.write_all(b"b = 2\n").expect("append");
            }
            match settle.look(FileStamp::of(&path)) {
                Look::Settled(stamp) => {
                    settled_at = Some(started.elapsed());
                    assert_eq!(Some(stamp), FileStamp::of(&path));
                    settle.applied(Some(stamp));
                    break;
                }
                Look::Changing => {}
                Look::Unchanged => panic!("a change went unnoticed"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let at = settled_at.expect("settles once the writer stops");
        // The last write was at 0.5 s: not read before it is SETTLE_TIME old (less a coarse tick).
        assert!(at >= Duration::from_millis(450) + SETTLE_TIME, "{at:?}");
        assert_eq!(settle.look(FileStamp::of(&path)), Look::Unchanged);
    }

    #[test]
    fn an_old_file_renamed_in_settles_on_the_second_look() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("gatekeeper.toml");
        std::fs::write(&path, "a = 1\n").expect("write");
        let mut settle = Settle::new(FileStamp::of(&path));
        let new = dir.path().join("new");
        std::fs::write(&new, "a = 2\n").expect("write");
        let old = SystemTime::now() - Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(&new)
            .and_then(|f| f.set_modified(old))
            .expect("age it");
        std::fs::rename(&new, &path).expect("rename");
        assert_eq!(settle.look(FileStamp::of(&path)), Look::Changing);
        assert!(matches!(
            settle.look(FileStamp::of(&path)),
            Look::Settled(_)
        ));
        assert_eq!(
            settle.look(None),
            Look::Unchanged,
            "a missing file never settles"
        );
    }

    #[test]
    fn a_read_during_a_change_is_discarded() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("gatekeeper.toml");
        std::fs::write(&path, "a = 1\n").expect("write");
        let stamp = FileStamp::of(&path).expect("stamp");
        assert_eq!(
            read_if_unchanged(&path, stamp).expect("read").as_deref(),
            Some("a = 1\n")
        );
        std::fs::write(&path, "a = 12\n").expect("write");
        assert_eq!(read_if_unchanged(&path, stamp).expect("read"), None);
    }
}
