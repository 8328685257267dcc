//! One allowlist entry added to or removed from a `gatekeeper.toml`, streamed from the old file
//! into the new one a line at a time: no TOML document tree (a kilobyte per entry) and no copy of
//! the whole text in memory, so editing a million-entry list costs a pass over its lines.
//!
//! The lines are read by the allowlist scanner ([`crate::allowlist`]) and every line outside the
//! edited entry is copied byte for byte. The layout of the result is the one `toml_edit` gives
//! (the tests compare both): an added entry goes after the last one, before trailing comments,
//! with a blank line before it; a removed entry takes its own lines with it, and the comment
//! lines above it stay (they move to the next entry). The file is checked as it goes: the part
//! before the entries by the TOML parser, every entry line by the scanner, the new entry's lines
//! read back. The other entries' values are not parsed (see [`could_be`]): an edit of one entry
//! neither makes them valid nor invalid. Anything the scanner does not read
//! ([`Spliced::Unusual`]) is left to the caller's full-document path.

use std::io::{self, Read, Write};

use ipnet::IpNet;

use crate::{
    allowlist::{Line, classify, classify_in},
    cidr::parse_cidr,
};

/// Which array of tables an edit works on: `[[allow]]` or `[[deny]]` (same keys).
#[derive(Clone, Copy, Debug)]
pub struct Tables {
    pub name: &'static str,
    /// What follows the tables (another array of tables, e.g. `[[allow]]` after `[[deny]]`) is
    /// copied as it is, and the first entry goes before it: only for callers that validated the
    /// whole file. Otherwise anything after the tables is [`Spliced::Unusual`].
    pub copy_tail: bool,
}

pub const ALLOW: Tables = Tables {
    name: "allow",
    copy_tail: false,
};

pub const DENY: Tables = Tables {
    name: "deny",
    copy_tail: true,
};

/// The edit to make.
#[derive(Clone, Copy, Debug)]
pub enum Edit<'a> {
    Add {
        net: IpNet,
        comment: Option<&'a str>,
    },
    Remove {
        net: IpNet,
    },
}

/// How a streamed edit ended.
#[derive(Debug)]
pub enum Spliced {
    /// The new file was written; `head` is the text before the first entry (for its settings),
    /// `entries` the number of entries in the new file.
    Done { head: String, entries: usize },
    /// Adding an entry that is there already (in any spelling).
    Duplicate,
    /// Removing an entry that is not there.
    Missing,
    /// The file holds something the scanner does not read, or is invalid: the caller parses it
    /// whole (which also words any error). Nothing useful was written.
    Unusual,
}

/// The lines of one `[[allow]]` table being copied.
#[derive(Default)]
struct Table {
    /// Blank and comment lines before its header (after the previous table's last key).
    prefix: String,
    /// From the header to its last key line.
    body: String,
    /// `Some` once the `cidr` line was seen: its network if it may be the edited one.
    cidr: Option<Option<IpNet>>,
    comment_seen: bool,
}

impl Table {
    /// Empty, its buffers kept for the next table.
    fn reset(&mut self) {
        self.prefix.clear();
        self.body.clear();
        self.cidr = None;
        self.comment_seen = false;
    }
}

/// Streams `input` (the old file) into `out` with `edit` applied to its `[[allow]]` tables.
/// `head_ok` checks the text before the first entry (the settings); false makes the edit
/// [`Spliced::Unusual`].
pub fn splice(
    input: impl Read,
    out: &mut impl Write,
    edit: Edit<'_>,
    head_ok: impl FnOnce(&str) -> bool,
) -> io::Result<Spliced> {
    splice_in(input, out, ALLOW, edit, head_ok)
}

/// [`splice`] for the array of tables `tables`.
pub fn splice_in(
    mut input: impl Read,
    out: &mut impl Write,
    tables: Tables,
    edit: Edit<'_>,
    head_ok: impl FnOnce(&str) -> bool,
) -> io::Result<Spliced> {
    let mut lines = LineReader::new(&mut input);
    let (head, first_header) = match read_head(&mut lines, tables)? {
        Head::Entries { head, first_header } => (head, first_header),
        Head::Unusual => return Ok(Spliced::Unusual),
        Head::OtherTable { head, header } => {
            return first_entry_before(header, lines, out, tables, edit, head, head_ok);
        }
    };
    if !head_ok(&head) {
        return Ok(Spliced::Unusual);
    }
    // The blank and comment lines that end the settings are the first table's prefix.
    let body_end = trailing_blank_start(&head);
    out.write_all(&head.as_bytes()[..body_end])?;

    // New lines end the way the file's lines do.
    let crlf = first_header.ends_with("\r\n");
    let target = match edit {
        Edit::Add { net, .. } | Edit::Remove { net } => net,
    };
    let target = Target {
        v4_addr: match target {
            IpNet::V4(v4) => Some(v4.network().to_string()),
            IpNet::V6(_) => None,
        },
    };
    let mut state = State {
        edit,
        found: false,
        strip_next_prefix: false,
        crlf,
    };
    let mut table = Table {
        prefix: head[body_end..].to_string(),
        body: first_header,
        ..Table::default()
    };
    // Blank and comment lines after the current table's last key: its tail or the next prefix.
    let mut pending = String::new();
    // Tables read, the first one included.
    let mut count = 1;
    // The first line after the tables, when the caller lets the rest be copied.
    let mut tail = None;
    while let Some(line) = lines.next_line()? {
        let Ok(kind) = classify_in(line, tables.name) else {
            if tables.copy_tail && line.trim_start_matches([' ', '\t']).starts_with('[') {
                tail = Some(line.to_string());
                break;
            }
            return Ok(Spliced::Unusual);
        };
        match kind {
            Line::Blank => pending.push_str(line),
            Line::Header => {
                count += 1;
                if !state.finish(&table, out, false)? {
                    return Ok(Spliced::Unusual);
                }
                // The buffers are reused: a million tables, no allocation each.
                table.reset();
                std::mem::swap(&mut table.prefix, &mut pending);
                table.body.push_str(line);
            }
            Line::Key { key, value, .. } => {
                table.body.push_str(&pending);
                pending.clear();
                match key {
                    crate::allowlist::Key::Cidr => {
                        if table.cidr.is_some() {
                            return Ok(Spliced::Unusual);
                        }
                        table.cidr = Some(if could_be(value, &target) {
                            let Ok(net) = parse_cidr(value) else {
                                return Ok(Spliced::Unusual);
                            };
                            Some(net)
                        } else {
                            None
                        });
                    }
                    crate::allowlist::Key::Comment => {
                        if table.comment_seen {
                            return Ok(Spliced::Unusual);
                        }
                        table.comment_seen = true;
                    }
                    crate::allowlist::Key::Dns(_) => {
                        // A DNS-derived entry (`spf = "..."`): never the edited network, copied
                        // as it is. Only `[[allow]]` has them; with a cidr too, the full parse
                        // words the error.
                        if tables.name != "allow" || table.cidr.is_some() {
                            return Ok(Spliced::Unusual);
                        }
                        table.cidr = Some(None);
                    }
                }
                table.body.push_str(line);
            }
        }
    }
    if !state.finish(&table, out, true)? {
        return Ok(Spliced::Unusual);
    }
    match edit {
        Edit::Add { .. } if state.found => return Ok(Spliced::Duplicate),
        Edit::Remove { .. } if !state.found => return Ok(Spliced::Missing),
        _ => {}
    }
    let entries = match edit {
        Edit::Add { .. } => count + 1,
        Edit::Remove { .. } => count - 1,
    };
    if let Edit::Add { net, comment } = edit {
        let Some(entry) = checked_entry(tables, net, comment, crlf) else {
            return Ok(Spliced::Unusual);
        };
        out.write_all(entry.as_bytes())?;
    }
    // What follows the last entry (trailing comments), after a removed last entry's comments.
    out.write_all(pending.as_bytes())?;
    if let Some(line) = tail {
        if pending.is_empty() {
            out.write_all(if crlf { b"\r\n" } else { b"\n" })?;
        }
        out.write_all(line.as_bytes())?;
        lines.copy_rest(out)?;
    }
    Ok(Spliced::Done { head, entries })
}

/// What comes before the edited tables.
pub(crate) enum Head {
    /// The settings (`head`), then the first of the tables' headers.
    Entries { head: String, first_header: String },
    /// None of the tables, but another table (`header`) after the settings, where the caller
    /// lets the rest of the file be copied ([`Tables::copy_tail`]).
    OtherTable { head: String, header: String },
    /// No such tables, or a key of their name: the full-document path handles it.
    Unusual,
}

/// Reads the settings: everything before the first header of the edited tables.
pub(crate) fn read_head<R: Read>(
    lines: &mut LineReader<'_, R>,
    tables: Tables,
) -> io::Result<Head> {
    let mut head = String::new();
    loop {
        let Some(line) = lines.next_line()? else {
            // No such tables: the full-document path adds the first one.
            return Ok(Head::Unusual);
        };
        let trimmed = line.trim_start_matches([' ', '\t']);
        if trimmed.starts_with("[[") && classify_in(line, tables.name) == Ok(Line::Header) {
            let first_header = line.to_string();
            return Ok(Head::Entries { head, first_header });
        }
        if trimmed.starts_with(tables.name)
            && (tables.name == "allow"
                || trimmed[tables.name.len()..]
                    .trim_start_matches([' ', '\t'])
                    .starts_with('='))
        {
            // A key of that name of its own: not the layout this edit handles.
            return Ok(Head::Unusual);
        }
        if tables.copy_tail && trimmed.starts_with('[') {
            // Another table begins and none of ours came first: the first entry goes here.
            let header = line.to_string();
            return Ok(Head::OtherTable { head, header });
        }
        head.push_str(line);
    }
}

/// The first entry of `tables`, added before `header` (the first line of another table) with
/// the rest of the file copied after it.
fn first_entry_before<R: Read>(
    header: String,
    mut lines: LineReader<'_, R>,
    out: &mut impl Write,
    tables: Tables,
    edit: Edit<'_>,
    head: String,
    head_ok: impl FnOnce(&str) -> bool,
) -> io::Result<Spliced> {
    let Edit::Add { net, comment } = edit else {
        return Ok(Spliced::Missing);
    };
    if !head_ok(&head) {
        return Ok(Spliced::Unusual);
    }
    let crlf = header.ends_with("\r\n");
    let Some(entry) = checked_entry(tables, net, comment, crlf) else {
        return Ok(Spliced::Unusual);
    };
    let body_end = trailing_blank_start(&head);
    out.write_all(&head.as_bytes()[..body_end])?;
    out.write_all(entry.as_bytes())?;
    // The comments above the other table stay with it, after a blank line.
    let prefix = &head[body_end..];
    if !prefix.starts_with(['\r', '\n']) {
        out.write_all(if crlf { b"\r\n" } else { b"\n" })?;
    }
    out.write_all(prefix.as_bytes())?;
    out.write_all(header.as_bytes())?;
    lines.copy_rest(out)?;
    Ok(Spliced::Done { head, entries: 1 })
}

/// The lines of a new entry with the file's line ends, if the scanner reads them back.
pub(crate) fn checked_entry(
    tables: Tables,
    net: IpNet,
    comment: Option<&str>,
    crlf: bool,
) -> Option<String> {
    let mut entry = new_entry(net, comment);
    if !entry_reads_back(&entry, net, comment) {
        return None;
    }
    entry = entry.replacen("[[allow]]", &format!("[[{}]]", tables.name), 1);
    if crlf {
        entry = entry.replace('\n', "\r\n");
    }
    Some(entry)
}

struct State<'a> {
    edit: Edit<'a>,
    /// The added entry is there already, or the removed one was found (and left out).
    found: bool,
    /// A removed entry's comment lines stayed: the next prefix loses its leading newlines.
    strip_next_prefix: bool,
    crlf: bool,
}

impl State<'_> {
    /// Writes a complete table (or leaves it out if it is the removed one). False if it is not
    /// a valid entry (no `cidr`).
    fn finish(&mut self, table: &Table, out: &mut impl Write, last: bool) -> io::Result<bool> {
        let Some(net) = table.cidr else {
            return Ok(false);
        };
        let mut prefix = table.prefix.as_str();
        if std::mem::take(&mut self.strip_next_prefix) {
            prefix = prefix.trim_start_matches('\n');
        }
        match self.edit {
            Edit::Remove { net: gone } if net == Some(gone) && !self.found => {
                self.found = true;
                if table.prefix.contains('#') {
                    // Comments above it may describe the whole list: they stay.
                    out.write_all(table.prefix.as_bytes())?;
                    self.strip_next_prefix = true;
                }
                return Ok(true);
            }
            Edit::Add { net: new, .. } if net == Some(new) => self.found = true,
            _ => {}
        }
        out.write_all(prefix.as_bytes())?;
        out.write_all(table.body.as_bytes())?;
        if last && matches!(self.edit, Edit::Add { .. }) && !table.body.ends_with('\n') {
            out.write_all(if self.crlf { b"\r\n" } else { b"\n" })?;
        }
        Ok(true)
    }
}

/// What the edited network's `cidr` value can look like, for a cheap test before parsing.
pub(crate) struct Target {
    /// The network address, when IPv4: an IPv4 value names the same network only if its
    /// address part is this text (the parser takes no leading zeros and no host bits).
    pub(crate) v4_addr: Option<String>,
}

/// Whether the `cidr` value `value` may name the edited network: IPv6 values are always parsed
/// (they have many spellings), IPv4 ones only when their address is the target's. Skipping the
/// parse of the other million is what keeps an edit a pass over the lines; a value that does not
/// parse is left for `gatekeeper check`, the daemon's reload and `gatekeeper status` to report.
pub(crate) fn could_be(value: &str, target: &Target) -> bool {
    // Bytes, not chars: this runs for every entry of the file.
    let value = value.trim().as_bytes();
    if value.contains(&b':') {
        return true;
    }
    let addr = match value.iter().position(|&b| b == b'/') {
        Some(slash) => &value[..slash],
        None => value,
    };
    target.v4_addr.as_deref().map(str::as_bytes) == Some(addr)
}

/// The lines of a new entry, as `toml_edit` writes them: a blank line, the header, the keys.
fn new_entry(net: IpNet, comment: Option<&str>) -> String {
    let mut entry = format!("\n[[allow]]\ncidr = \"{net}\"\n");
    if let Some(comment) = comment {
        let mut value = toml_edit::Value::from(comment);
        value.decor_mut().clear();
        entry.push_str(&format!("comment = {value}\n"));
    }
    entry
}

/// Whether the scanner reads `entry` back as `net` with `comment` (a comment that needs escapes
/// is written by the full-document path instead).
fn entry_reads_back(entry: &str, net: IpNet, comment: Option<&str>) -> bool {
    let Ok(scanned) =
        crate::allowlist::scan_allow_section(entry.trim_start_matches(['\r', '\n']), 0)
    else {
        return false;
    };
    scanned.first_invalid.is_none()
        && scanned.list.get(0).map(|e| (e.net, e.comment)) == Some((net, comment))
        && scanned.list.len() == 1
}

/// Where the run of blank and comment lines that ends `text` begins.
fn trailing_blank_start(text: &str) -> usize {
    let mut start = text.len();
    for line in text.split_inclusive('\n').rev() {
        if classify(line) != Ok(Line::Blank) {
            break;
        }
        start -= line.len();
    }
    start
}

/// The lines of a file, read in large chunks: `BufRead::read_line` per line (a copy, a UTF-8
/// check and a guard each) was a third of an edit's time at a million entries. Each chunk's
/// complete lines are checked as UTF-8 at once.
pub(crate) struct LineReader<'r, R> {
    input: &'r mut R,
    /// Complete lines (and, at the end, a last line without a newline); read from `pos`.
    text: String,
    pos: usize,
    /// Bytes after the last newline read so far: the start of the next chunk.
    tail: Vec<u8>,
}

/// Bytes read at once.
const CHUNK: usize = 1 << 16;

impl<'r, R: Read> LineReader<'r, R> {
    pub(crate) fn new(input: &'r mut R) -> Self {
        LineReader {
            input,
            text: String::new(),
            pos: 0,
            tail: Vec::new(),
        }
    }

    /// Writes what is left of the input, as it is.
    fn copy_rest(&mut self, out: &mut impl Write) -> io::Result<()> {
        out.write_all(&self.text.as_bytes()[self.pos..])?;
        self.pos = self.text.len();
        out.write_all(&std::mem::take(&mut self.tail))?;
        io::copy(self.input, out)?;
        Ok(())
    }

    /// The next line with its ending (the last one may have none); `None` at the end. Invalid
    /// UTF-8 is an `InvalidData` error (the caller's full parse words it).
    pub(crate) fn next_line(&mut self) -> io::Result<Option<&str>> {
        loop {
            if self.pos < self.text.len() {
                let start = self.pos;
                // A plain loop: lines are short, memchr's set-up costs more than it saves.
                let len = self.text.as_bytes()[start..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(self.text.len() - start, |at| at + 1);
                self.pos += len;
                return Ok(Some(&self.text[start..start + len]));
            }
            if !self.refill()? {
                return Ok(None);
            }
        }
    }

    /// Reads until `text` holds at least one complete line (or the last bytes); false at the
    /// end of the input.
    fn refill(&mut self) -> io::Result<bool> {
        // The old chunk's allocation takes the next one.
        let mut bytes = std::mem::take(&mut self.text).into_bytes();
        bytes.clear();
        bytes.append(&mut self.tail);
        self.pos = 0;
        loop {
            let filled = bytes.len();
            bytes.resize(filled + CHUNK, 0);
            let read = loop {
                match self.input.read(&mut bytes[filled..]) {
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other?,
                }
            };
            bytes.truncate(filled + read);
            if read == 0 {
                if bytes.is_empty() {
                    return Ok(false);
                }
                break;
            }
            if let Some(last) = bytes[filled..].iter().rposition(|&b| b == b'\n') {
                self.tail.extend_from_slice(&bytes[filled + last + 1..]);
                bytes.truncate(filled + last + 1);
                break;
            }
        }
        self.text = String::from_utf8(bytes)
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str, edit: Edit<'_>) -> (String, &'static str) {
        let mut out = Vec::new();
        let outcome = splice(text.as_bytes(), &mut out, edit, |_| true).expect("io");
        let tag = match outcome {
            Spliced::Done { .. } => "done",
            Spliced::Duplicate => "duplicate",
            Spliced::Missing => "missing",
            Spliced::Unusual => "unusual",
        };
        (String::from_utf8(out).expect("utf-8"), tag)
    }

    fn net(s: &str) -> IpNet {
        parse_cidr(s).expect("cidr")
    }

    #[test]
    fn odd_files_go_to_the_full_parser() {
        for (text, what) in [
            ("interfaces = [\"eth0\"]\n", "no entries"),
            ("allow = [{ cidr = \"192.0.2.1\" }]\n", "inline list"),
            (
                "[[allow]]\ncidr = \"192.0.2.1\"\n[other]\n",
                "a table after",
            ),
            (
                "[[allow]]\ncidr = \"198.51.100.0/33\"\n",
                "an invalid value that may be the edited one",
            ),
            ("[[allow]]\ncomment = \"x\"\n", "no cidr"),
        ] {
            let (_, tag) = run(
                text,
                Edit::Add {
                    net: net("198.51.100.0/24"),
                    comment: None,
                },
            );
            assert_eq!(tag, "unusual", "{what}");
        }
        let (_, tag) = run(
            "[[allow]]\ncidr = \"192.0.2.1\"\n",
            Edit::Add {
                net: net("198.51.100.0/24"),
                comment: Some("needs \"both\" 'quotes'"),
            },
        );
        assert_eq!(tag, "unusual", "a comment the scanner cannot read back");
    }

    #[test]
    fn deny_tables_are_edited_before_the_allow_tables_which_are_copied() {
        let deny = |text: &str, edit| {
            let mut out = Vec::new();
            let outcome = splice_in(text.as_bytes(), &mut out, DENY, edit, |_| true).expect("io");
            (String::from_utf8(out).expect("utf-8"), outcome)
        };
        let add = |cidr| Edit::Add {
            net: net(cidr),
            comment: Some("hijacked"),
        };
        let allow = "# partners\n[[allow]]\ncidr = \"192.0.2.1\"\n";
        // No deny tables yet: the first goes before the allow tables, their comments stay theirs.
        let (first, outcome) = deny(
            &format!("mode = \"enforce\"\n\n{allow}"),
            add("203.0.113.0/28"),
        );
        assert!(
            matches!(outcome, Spliced::Done { entries: 1, .. }),
            "{outcome:?}"
        );
        assert_eq!(
            first,
            format!(
                "mode = \"enforce\"\n\n[[deny]]\ncidr = \"203.0.113.0/28\"\ncomment = \"hijacked\"\n\n{allow}"
            )
        );
        let (second, outcome) = deny(&first, add("198.51.100.0/24"));
        assert!(
            matches!(outcome, Spliced::Done { entries: 2, .. }),
            "{outcome:?}"
        );
        assert_eq!(
            second,
            format!(
                "mode = \"enforce\"\n\n[[deny]]\ncidr = \"203.0.113.0/28\"\ncomment = \"hijacked\"\n\n[[deny]]\ncidr = \"198.51.100.0/24\"\ncomment = \"hijacked\"\n\n{allow}"
            )
        );
        assert!(matches!(
            deny(&second, add("198.51.100.0/24")).1,
            Spliced::Duplicate
        ));
        let (removed, outcome) = deny(
            &second,
            Edit::Remove {
                net: net("203.0.113.0/28"),
            },
        );
        assert!(
            matches!(outcome, Spliced::Done { entries: 1, .. }),
            "{outcome:?}"
        );
        assert_eq!(
            removed,
            format!(
                "mode = \"enforce\"\n\n[[deny]]\ncidr = \"198.51.100.0/24\"\ncomment = \"hijacked\"\n\n{allow}"
            )
        );
        // A `deny_feeds` key is a setting, not an inline deny list.
        let (_, outcome) = deny(
            &format!("deny_feeds = []\n{allow}"),
            Edit::Remove {
                net: net("203.0.113.0/28"),
            },
        );
        assert!(matches!(outcome, Spliced::Missing), "{outcome:?}");
        let (_, outcome) = deny("deny = []\n", add("203.0.113.0/28"));
        assert!(matches!(outcome, Spliced::Unusual), "{outcome:?}");
        // The allow edit still reads deny tables before its own as settings.
        let (text, tag) = run(&second, add("198.51.100.0/24"));
        assert_eq!(tag, "done");
        assert!(text.starts_with(&second), "{text}");
    }

    #[test]
    fn duplicates_and_missing_entries_are_reported() {
        let text = "[[allow]]\ncidr = \"192.0.2.1\"\n";
        let add = Edit::Add {
            net: net("192.0.2.1/32"),
            comment: None,
        };
        assert_eq!(run(text, add).1, "duplicate");
        let remove = Edit::Remove {
            net: net("192.0.2.2"),
        };
        assert_eq!(run(text, remove).1, "missing");
    }

    #[test]
    fn done_counts_the_entries_of_the_new_file() {
        let text = "mode = \"enforce\"\n\n[[allow]]\ncidr = \"192.0.2.1\"\n\n[[allow]]\ncidr = \"192.0.2.2\"\n";
        let entries =
            |edit| match splice(text.as_bytes(), &mut Vec::new(), edit, |_| true).expect("io") {
                Spliced::Done { entries, .. } => entries,
                _ => panic!("not done"),
            };
        let add = Edit::Add {
            net: net("192.0.2.3"),
            comment: None,
        };
        assert_eq!(entries(add), 3);
        assert_eq!(
            entries(Edit::Remove {
                net: net("192.0.2.2")
            }),
            1
        );
        let one = "[[allow]]\ncidr = \"192.0.2.1\"\n";
        match splice(
            one.as_bytes(),
            &mut Vec::new(),
            Edit::Remove {
                net: net("192.0.2.1"),
            },
            |_| true,
        ) {
            Ok(Spliced::Done { entries, .. }) => assert_eq!(entries, 0),
            _ => panic!("not done"),
        }
    }

    /// Hands out at most `step` bytes per read, as a pipe or a slow disk may.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    #[test]
    fn line_reader_keeps_every_byte_across_reads_and_long_lines() {
        let long = "#".repeat(3 * CHUNK + 7);
        let text = format!("a\r\n\n{long}\nré\nlast without newline");
        for step in [1, 5, CHUNK - 1, CHUNK, 10 * CHUNK] {
            let mut input = Trickle {
                data: text.as_bytes(),
                step,
            };
            let mut reader = LineReader::new(&mut input);
            let mut lines = Vec::new();
            while let Some(line) = reader.next_line().expect("read") {
                lines.push(line.to_string());
            }
            assert_eq!(lines.concat(), text, "step {step}");
            assert_eq!(lines.len(), 5, "step {step}");
            assert_eq!(lines[3], "ré\n");
        }
        // Checked a chunk at a time: the error may come before the valid lines ahead of it.
        let mut bad: &[u8] = b"ok\n\xff\n";
        let mut reader = LineReader::new(&mut bad);
        let err = loop {
            match reader.next_line() {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("invalid UTF-8 read as text"),
                Err(err) => break err,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
