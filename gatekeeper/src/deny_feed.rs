//! Deny feeds: files in the common drop-list format (`CIDR ; comment`, one network a line, `;`
//! or `#` starting a comment, blank lines ignored), as published by blocklist operators and
//! fetched by a timer outside the daemon (see `examples/systemd/gatekeeper-feed@.service`).
//!
//! A feed is read whole and never refused: a bad line is reported with `FILE:LINE` and skipped,
//! the rest of the feed applies. A missing or unreadable feed counts as empty (with a warning):
//! fetching is somebody else's job and may fail, and the filter keeps enforcing the config's own
//! `[[deny]]` entries meanwhile.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use gatekeeper_support::cidr::{CidrError, parse_cidr};
use ipnet::IpNet;

/// One line of a feed that is not a network, with its position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadLine {
    pub path: PathBuf,
    /// 1-based.
    pub line: usize,
    pub error: CidrError,
}

impl fmt::Display for BadLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: skipped: {}",
            self.path.display(),
            self.line,
            self.error
        )
    }
}

/// What one load of a feed found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Feed {
    /// The networks in file order (duplicates kept: the caller merges).
    pub nets: Vec<IpNet>,
    pub bad_lines: Vec<BadLine>,
    /// Why the file could not be read (missing, not UTF-8, ...): the feed counts as empty.
    pub unreadable: Option<String>,
}

/// Parses feed text; `path` only names the file in bad-line reports.
pub fn parse(text: &str, path: &Path) -> Feed {
    let mut feed = Feed::default();
    for (index, line) in text.lines().enumerate() {
        let data = match line.find([';', '#']) {
            Some(at) => &line[..at],
            None => line,
        };
        // Some lists add columns after the network (`1.2.3.0/24 SBL123`): the first word is it.
        let Some(word) = data.split_whitespace().next() else {
            continue;
        };
        match parse_cidr(word) {
            Ok(net) => feed.nets.push(net),
            Err(error) => feed.bad_lines.push(BadLine {
                path: path.to_path_buf(),
                line: index + 1,
                error,
            }),
        }
    }
    feed
}

/// Reads and parses the feed at `path`; a file that cannot be read is an empty feed with the
/// reason in [`Feed::unreadable`].
pub fn load(path: &Path) -> Feed {
    match std::fs::read(path) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => parse(&text, path),
            // Lists are ASCII; a stray byte in a comment should not lose the whole feed.
            Err(err) => parse(&String::from_utf8_lossy(err.as_bytes()), path),
        },
        Err(err) => Feed {
            unreadable: Some(format!("{}: cannot read: {err}", path.display())),
            ..Feed::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        parse_cidr(s).expect("cidr")
    }

    #[test]
    fn the_drop_list_format_is_read_and_bad_lines_are_skipped_with_their_line() {
        let text = "; Spamhaus-style DROP list\n\
                    ; Last-Modified: somewhen\n\
                    \n\
                    192.0.2.0/24 ; SBL1\n\
                    198.51.100.7\n\
                    203.0.113.0/25;SBL2\n\
                    2001:db8::/32 ; v6\n\
                    not-a-network ; oops\n\
                    198.51.101.0/23 ; host bits\n\
                    # hash comment\n\
                    \t203.0.113.128/25 SBL3 extra column\r\n";
        let feed = parse(text, Path::new("drop.txt"));
        assert_eq!(
            feed.nets,
            [
                net("192.0.2.0/24"),
                net("198.51.100.7/32"),
                net("203.0.113.0/25"),
                net("2001:db8::/32"),
                net("203.0.113.128/25"),
            ]
        );
        let lines: Vec<String> = feed.bad_lines.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "drop.txt:8: skipped: \"not-a-network\" is not an IPv4 or IPv6 address or CIDR",
                "drop.txt:9: skipped: \"198.51.101.0/23\" has host bits set; the network is 198.51.100.0/23",
            ]
        );
        assert!(feed.unreadable.is_none());
    }

    #[test]
    fn a_missing_feed_is_empty_and_says_why() {
        let feed = load(Path::new("/nonexistent/gatekeeper/feed.txt"));
        assert!(feed.nets.is_empty());
        assert!(
            feed.unreadable
                .as_deref()
                .is_some_and(|r| r.starts_with("/nonexistent/gatekeeper/feed.txt: cannot read")),
            "{feed:?}"
        );
    }

    #[test]
    fn tens_of_thousands_of_lines() {
        let mut text = String::new();
        for i in 0..50_000u32 {
            let [_, b, c, _] = i.to_be_bytes();
            text.push_str(&format!("10.{b}.{c}.0/24 ; SBL{i}\n"));
        }
        let feed = parse(&text, Path::new("big.txt"));
        assert_eq!(feed.nets.len(), 50_000);
        assert!(feed.bad_lines.is_empty());
    }
}
