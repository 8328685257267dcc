//! `allow add` in place: a new IPv4 entry written at the end of the file, where the streamed
//! edit ([`crate::allowlist_edit`]) would put it, without copying the file.
//!
//! A streamed edit of a million-entry file reads and writes all its lines and syncs 35 MB;
//! this path reads the settings, the last entry and the lines that contain the added address (a
//! SIMD substring search over the whole file), and writes one entry. It applies when the file
//! ends with an `[[allow]]` entry (no trailing comments) and the address is IPv4: an IPv4 value
//! names the network only if its text holds the network address (the parser takes no leading
//! zeros and no host bits), while an IPv6 network has many spellings and needs the streamed
//! pass that parses every IPv6 value. Anything else, or any line near a match that the scanner
//! does not read, goes back to the streamed edit ([`Appending::Stream`]), which words errors.
//! Lines far from the added address are not checked, as the streamed edit does not parse them
//! either: `gatekeeper check` and the daemon's reload do.

use ipnet::{IpNet, Ipv4Net};
use memchr::{memchr, memmem, memrchr};

use crate::{
    allowlist::{Key, Line, classify},
    allowlist_edit::{ALLOW, Head, LineReader, Target, checked_entry, could_be, read_head},
    cidr::parse_cidr,
};

/// How an `allow add` can be made in place.
#[derive(Debug, PartialEq, Eq)]
pub enum Appending {
    /// Write `entry` at the end of the file; `head` is the text before the first entry (the
    /// settings).
    At { head: String, entry: String },
    /// The network is in the list already (in any spelling).
    Duplicate,
    /// Not a file or an address this path handles: make the streamed edit.
    Stream,
}

/// Plans adding `net` (with `comment`) to the `[[allow]]` tables of the file `text`. `head_ok`
/// checks the settings, as for the streamed edit.
pub fn plan(
    text: &[u8],
    net: IpNet,
    comment: Option<&str>,
    head_ok: impl FnOnce(&str) -> bool,
) -> Appending {
    let IpNet::V4(v4) = net else {
        return Appending::Stream;
    };
    let mut input = text;
    let mut lines = LineReader::new(&mut input);
    let Ok(Head::Entries { head, first_header }) = read_head(&mut lines, ALLOW) else {
        return Appending::Stream;
    };
    if !head_ok(&head) || !ends_with_entry(text, head.len()) {
        return Appending::Stream;
    }
    match listed(text, head.len(), v4) {
        Some(true) => return Appending::Duplicate,
        Some(false) => {}
        None => return Appending::Stream,
    }
    // New lines end the way the file's lines do.
    let crlf = first_header.ends_with("\r\n");
    match checked_entry(ALLOW, net, comment, crlf) {
        Some(entry) => Appending::At { head, entry },
        None => Appending::Stream,
    }
}

/// Whether the file ends with a complete `[[allow]]` entry: its last line a key ending in a
/// newline, every line back to the entry's header one the scanner reads. `from` is where the
/// first entry begins.
fn ends_with_entry(text: &[u8], from: usize) -> bool {
    if !text.ends_with(b"\n") {
        return false;
    }
    let mut end = text.len();
    let mut last = true;
    let (mut named, mut commented) = (false, false);
    while end > from {
        let start = line_start(text, end - 1).max(from);
        let Ok(line) = std::str::from_utf8(&text[start..end]) else {
            return false;
        };
        match classify(line) {
            Ok(Line::Header) => return named,
            Ok(Line::Key {
                key: Key::Cidr | Key::Dns(_),
                ..
            }) if !named => named = true,
            Ok(Line::Key {
                key: Key::Comment, ..
            }) if !commented => commented = true,
            // Comments inside the entry; trailing ones stay last, which only the streamed
            // edit does.
            Ok(Line::Blank) if !last => {}
            _ => return false,
        }
        last = false;
        end = start;
    }
    false
}

/// Whether an `[[allow]]` entry of the file (after `from`) names `net`; `None` when a line that
/// may name it is not one the scanner reads.
fn listed(text: &[u8], from: usize, net: Ipv4Net) -> Option<bool> {
    let addr = net.network().to_string();
    let target = Target {
        v4_addr: Some(addr.clone()),
    };
    let entries = &text[from..];
    // The end of the last line looked at: more matches on it are skipped.
    let mut seen_to = 0;
    for hit in memmem::find_iter(entries, addr.as_bytes()) {
        if hit < seen_to {
            continue;
        }
        let start = line_start(entries, hit);
        let end = memchr(b'\n', &entries[hit..]).map_or(entries.len(), |at| hit + at + 1);
        seen_to = end;
        let line = std::str::from_utf8(&entries[start..end]).ok()?;
        match classify(line) {
            Ok(Line::Key {
                key: Key::Cidr,
                value,
                ..
            }) if could_be(value, &target) => {
                if parse_cidr(value).ok()? == IpNet::V4(net) && in_allow_table(entries, start)? {
                    return Some(true);
                }
            }
            // A comment, another key or another value that holds the address's text.
            Ok(_) => {}
            // `[[deny]]` headers and the like: not a value.
            Err(_) if line.trim_start().starts_with('[') => {}
            Err(_) => return None,
        }
    }
    Some(false)
}

/// Whether the key line at `at` belongs to an `[[allow]]` table rather than another one
/// (`[[deny]]`); `None` when a line between it and its header is not one the scanner reads.
fn in_allow_table(text: &[u8], at: usize) -> Option<bool> {
    let mut end = at;
    while end > 0 {
        let start = line_start(text, end - 1);
        let line = std::str::from_utf8(&text[start..end]).ok()?;
        match classify(line) {
            Ok(Line::Header) => return Some(true),
            Ok(_) => {}
            Err(_) if line.trim_start().starts_with('[') => return Some(false),
            Err(_) => return None,
        }
        end = start;
    }
    // `text` starts at the first `[[allow]]` header, so this is not reached.
    None
}

/// Where the line holding byte `at` begins.
fn line_start(text: &[u8], at: usize) -> usize {
    memrchr(b'\n', &text[..at]).map_or(0, |nl| nl + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allowlist_edit::{Edit, Spliced, splice};

    fn net(s: &str) -> IpNet {
        parse_cidr(s).expect("cidr")
    }

    fn plan_add(text: &str, cidr: &str) -> Appending {
        plan(text.as_bytes(), net(cidr), None, |_| true)
    }

    /// The file the streamed edit writes.
    fn streamed(text: &str, cidr: &str, comment: Option<&str>) -> String {
        let mut out = Vec::new();
        let edit = Edit::Add {
            net: net(cidr),
            comment,
        };
        match splice(text.as_bytes(), &mut out, edit, |_| true).expect("io") {
            Spliced::Done { .. } => String::from_utf8(out).expect("utf-8"),
            other => panic!("streamed edit: {other:?}"),
        }
    }

    #[test]
    fn the_entry_goes_where_the_streamed_edit_puts_it() {
        for text in [
            "mode = \"enforce\"\n\n[[allow]]\ncidr = \"192.0.2.1\"\n",
            "# partners\n[[allow]]\ncidr = \"192.0.2.1\"\ncomment = \"a\"\n\n[[allow]]\n# b\ncidr = \"192.0.2.0/28\"\ncomment = \"b\"\n",
            "[[allow]]\r\ncidr = \"192.0.2.1\"\r\n",
            "[[allow]]\nspf = \"example.org\"\n",
        ] {
            for comment in [None, Some("relay of the branch office")] {
                let planned = plan(text.as_bytes(), net("198.51.100.7"), comment, |_| true);
                let Appending::At { head, entry } = planned else {
                    panic!("{text:?}: {planned:?}");
                };
                assert_eq!(
                    format!("{text}{entry}"),
                    streamed(text, "198.51.100.7", comment)
                );
                assert!(text.starts_with(&head) && !head.contains("[[allow]]"));
            }
        }
    }

    #[test]
    fn a_network_listed_in_any_spelling_is_a_duplicate() {
        let text = "[[allow]]\ncidr = \"198.51.100.70\"\n\n[[allow]]\n# it\ncidr = \"198.51.100.7/32\"\n\n[[allow]]\ncidr = \"203.0.113.0/24\"\n";
        assert_eq!(plan_add(text, "198.51.100.7"), Appending::Duplicate);
        assert_eq!(plan_add(text, "198.51.100.7/32"), Appending::Duplicate);
        assert_eq!(plan_add(text, "203.0.113.0/24"), Appending::Duplicate);
        // The same address with another length, a longer address, a comment, a deny entry.
        for cidr in ["198.51.100.0/24", "203.0.113.0/25", "198.51.100.1"] {
            assert!(
                matches!(plan_add(text, cidr), Appending::At { .. }),
                "{cidr}"
            );
        }
        let denied =
            "[[deny]]\ncidr = \"192.0.2.9\"\n\n[[allow]]\n# not 192.0.2.9\ncidr = \"192.0.2.1\"\n";
        assert!(matches!(
            plan_add(denied, "192.0.2.9"),
            Appending::At { .. }
        ));
        assert_eq!(
            plan_add(
                &format!("{denied}\n[[allow]]\ncidr = \"192.0.2.9\"\n"),
                "192.0.2.9"
            ),
            Appending::Duplicate
        );
    }

    #[test]
    fn other_shapes_go_to_the_streamed_edit() {
        let entry = "[[allow]]\ncidr = \"192.0.2.1\"\n";
        for (text, cidr, what) in [
            (entry, "2001:db8::1", "an IPv6 address"),
            (
                &format!("{entry}# trailing\n") as &str,
                "192.0.2.2",
                "trailing comments",
            ),
            (&format!("{entry}\n"), "192.0.2.2", "a trailing blank line"),
            (
                "[[allow]]\ncidr = \"192.0.2.1\"",
                "192.0.2.2",
                "no final newline",
            ),
            (
                &format!("{entry}[[deny]]\ncidr = \"192.0.2.3\"\n"),
                "192.0.2.2",
                "another table last",
            ),
            (
                "[[allow]]\ncomment = \"no cidr\"\n",
                "192.0.2.2",
                "an entry without a network",
            ),
            (
                "[[allow]]\ncidr = \"192.0.2.1\"\ncidr = \"192.0.2.4\"\n",
                "192.0.2.2",
                "two networks",
            ),
            (
                &format!("[[allow]]\ncidr = \"192.0.2.2\" junk\n\n{entry}"),
                "192.0.2.2",
                "a line the scanner does not read, holding the address",
            ),
            ("interfaces = [\"eth0\"]\n", "192.0.2.2", "no entries"),
        ] {
            assert_eq!(plan_add(text, cidr), Appending::Stream, "{what}");
        }
        assert_eq!(
            plan(entry.as_bytes(), net("192.0.2.2"), None, |_| false),
            Appending::Stream,
            "settings the caller refuses"
        );
        assert_eq!(
            plan(
                entry.as_bytes(),
                net("192.0.2.2"),
                Some("\"quoted\" 'both'"),
                |_| true
            ),
            Appending::Stream,
            "a comment the scanner cannot read back"
        );
    }
}
