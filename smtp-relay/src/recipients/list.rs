//! Recipient list files: one `local@domain` or `@domain` (catch-all: every local part of that
//! domain) per line, `#` starts a comment, blank lines are skipped. Addresses are compared
//! without case (as Postfix's maps and every common mail store do). An entry for a domain the
//! file is not used for is an error: a typo there would refuse a whole domain's mail silently.
//!
//! A running relay follows the file: at most every `reload_secs` it `stat`s it and reads it
//! again when it changed. A file that does not read or parse keeps the last good list in force
//! (a half-written edit must not refuse everyone) and is logged once per change, with
//! `FILE:LINE`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use gatekeeper_support::stamp::FileStamp;
use tracing::{info, warn};

use crate::address;

/// Why a list file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: {message}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// The recipients of one file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct List {
    /// Lowercased `local@domain`.
    addresses: HashSet<String>,
    /// Lowercased domains whose every local part exists.
    catch_all: HashSet<String>,
}

impl List {
    /// Whether `address` (`local@domain`, any case) is listed, by itself or by its domain's
    /// catch-all.
    pub fn contains(&self, address: &str) -> bool {
        let address = address.to_ascii_lowercase();
        let domain = address.rsplit_once('@').map_or("", |(_, d)| d);
        self.catch_all.contains(domain) || self.addresses.contains(&address)
    }

    /// Entries (addresses and catch-alls).
    pub fn len(&self) -> usize {
        self.addresses.len() + self.catch_all.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A line without its comment: `#` at the start or after white space.
fn strip_comment(line: &str) -> &str {
    let mut previous = ' ';
    for (i, c) in line.char_indices() {
        if c == '#' && previous.is_whitespace() {
            return &line[..i];
        }
        previous = c;
    }
    line
}

/// One entry: `Ok(Err(domain))` for a catch-all, `Ok(Ok(address))` for an address.
fn entry(text: &str) -> Result<Result<String, String>, String> {
    if text.split_whitespace().nth(1).is_some() {
        return Err("one address per line".into());
    }
    if let Some(domain) = text.strip_prefix('@') {
        return if address::is_host_name(domain) {
            Ok(Err(domain.to_ascii_lowercase()))
        } else {
            Err(format!("{text:?}: not a domain after @"))
        };
    }
    address::parse_mailbox(text)
        .ok()
        .and_then(|m| m.plain_form())
        .map(|a| Ok(a.to_ascii_lowercase()))
        .ok_or_else(|| format!("{text:?}: not a plain local@domain address or @domain"))
}

/// Parses the text of `path`, whose entries must be of `domains` (lowercase).
pub fn parse(text: &str, path: &Path, domains: &[String]) -> Result<List, ListError> {
    let mut list = List::default();
    for (i, raw) in text.lines().enumerate() {
        let text = strip_comment(raw).trim();
        if text.is_empty() {
            continue;
        }
        let error = |message: String| ListError::Line {
            path: path.to_owned(),
            line: i + 1,
            message,
        };
        let parsed = entry(text).map_err(error)?;
        let domain = match &parsed {
            Ok(a) => a.rsplit_once('@').map_or("", |(_, d)| d),
            Err(d) => d.as_str(),
        };
        if !domains.iter().any(|d| d == domain) {
            return Err(error(format!(
                "{domain} is not a domain this list is used for ({})",
                domains.join(", ")
            )));
        }
        match parsed {
            Ok(a) => list.addresses.insert(a),
            Err(d) => list.catch_all.insert(d),
        };
    }
    Ok(list)
}

/// Reads and parses `path`.
pub fn load(path: &Path, domains: &[String]) -> Result<List, ListError> {
    let text = std::fs::read_to_string(path).map_err(|source| ListError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path, domains)
}

/// When the file was last looked at, and what it was then.
struct Seen {
    stamp: Option<FileStamp>,
    checked: Instant,
}

/// A list file followed on change; the last good list stays in force.
pub struct ListFile {
    path: PathBuf,
    domains: Vec<String>,
    reload: Duration,
    seen: Mutex<Seen>,
    list: RwLock<Arc<List>>,
}

impl ListFile {
    /// Loads `path` now: an error here is a config error.
    pub fn open(
        path: &Path,
        domains: Vec<String>,
        reload: Duration,
    ) -> Result<ListFile, ListError> {
        // Stamp first, then read: a change after the stamp is seen next time.
        let stamp = FileStamp::of(path);
        let list = load(path, &domains)?;
        Ok(ListFile {
            path: path.to_owned(),
            domains,
            reload,
            seen: Mutex::new(Seen {
                stamp,
                checked: Instant::now(),
            }),
            list: RwLock::new(Arc::new(list)),
        })
    }

    /// Whether `address` is listed, after picking up a change of the file.
    pub fn contains(&self, address: &str) -> bool {
        self.refresh();
        self.list
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(address)
    }

    /// Re-reads the file when `reload` has passed since the last look and it changed. One
    /// session looks; the others use the list in force meanwhile.
    fn refresh(&self) {
        let Ok(mut seen) = self.seen.try_lock() else {
            return;
        };
        if seen.checked.elapsed() < self.reload {
            return;
        }
        seen.checked = Instant::now();
        let stamp = FileStamp::of(&self.path);
        if stamp == seen.stamp {
            return;
        }
        seen.stamp = stamp;
        match load(&self.path, &self.domains) {
            Ok(list) => {
                info!(event = "recipients_reloaded", file = %self.path.display(),
                    entries = list.len(), "recipient list changed");
                *self.list.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(list);
            }
            Err(e) => {
                warn!(event = "recipients_reload_failed", file = %self.path.display(),
                    error = %e, "keeping the last good recipient list");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domains() -> Vec<String> {
        vec!["example.org".into(), "example.net".into()]
    }

    fn p(text: &str) -> Result<List, ListError> {
        parse(text, Path::new("/etc/rcpt"), &domains())
    }

    #[test]
    fn addresses_catch_alls_comments() {
        let l = p("# staff\nAlice@Example.org\n  bob@example.org   # Bob\n\n@example.net\nc#d@example.org\n")
            .expect("valid");
        assert_eq!(l.len(), 4);
        assert!(l.contains("alice@example.org"));
        assert!(l.contains("ALICE@EXAMPLE.ORG"));
        assert!(l.contains("bob@Example.Org"));
        assert!(
            l.contains("c#d@example.org"),
            "# inside an address is no comment"
        );
        assert!(l.contains("anyone@example.net"));
        assert!(!l.contains("carol@example.org"));
        assert!(!l.contains("bob@example.org.evil"));
    }

    #[test]
    fn errors_name_file_and_line() {
        for (text, needle) in [
            (
                "alice@example.org\nnot an address\n",
                "/etc/rcpt:2: one address per line",
            ),
            ("\n\nalice\n", "/etc/rcpt:3: \"alice\": not a plain"),
            (
                "x@other.example\n",
                "/etc/rcpt:1: other.example is not a domain this list",
            ),
            (
                "@bad_domain\n",
                "/etc/rcpt:1: \"@bad_domain\": not a domain",
            ),
            ("\"a b\"@example.org\n", "/etc/rcpt:1:"),
            ("a%b@example.org\n", "not a plain"),
            ("@other.example\n", "other.example is not a domain"),
        ] {
            let e = p(text).expect_err(text).to_string();
            assert!(e.contains(needle), "{needle:?} not in {e:?}");
        }
    }

    #[test]
    fn a_followed_file_keeps_the_last_good_list() {
        let dir = std::env::temp_dir().join(format!("smtp-relay-rcpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("list");
        std::fs::write(&path, "alice@example.org\n").expect("write");
        let f = ListFile::open(&path, domains(), Duration::from_millis(1)).expect("open");
        assert!(f.contains("alice@example.org") && !f.contains("bob@example.org"));
        std::fs::write(&path, "alice@example.org\nbob@example.org\n").expect("write");
        std::thread::sleep(Duration::from_millis(5));
        assert!(f.contains("bob@example.org"), "the edit is picked up");
        std::fs::write(&path, "alice@example.org\nbroken line here\n").expect("write");
        std::thread::sleep(Duration::from_millis(5));
        assert!(
            f.contains("bob@example.org"),
            "a broken edit keeps the last good list"
        );
        std::fs::remove_file(&path).expect("rm");
        std::thread::sleep(Duration::from_millis(5));
        assert!(f.contains("bob@example.org"), "a missing file too");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
