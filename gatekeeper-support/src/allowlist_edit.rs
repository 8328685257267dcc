//! One allowlist entry added to or removed from a `gatekeeper.toml`, streamed from the old file
//! into the new one: no TOML document tree (a kilobyte per entry) and no copy of the whole text
//! in memory, so editing a million-entry list costs a pass over its lines.
//!
//! Every line is read by the allowlist scanner ([`crate::allowlist`]; the usual lines by byte
//! comparisons first), and the new file is the old one written in spans, with at most the edited
//! entry left out or added: every byte outside it is kept. The layout of the result is the one
//! `toml_edit` gives (the tests compare both, and the line-by-line splice this replaced): an
//! added entry goes after the last one, before trailing comments, with a blank line before it; a
//! removed entry takes its own lines with it, and the comment lines above it stay (they move to
//! the next entry). The file is checked as it goes: the part before the entries by the TOML
//! parser, every entry line by the scanner (UTF-8, the layout, one `cidr` per table), the new
//! entry's lines read back. The other entries' values are not parsed (see [`could_be`]): an edit
//! of one entry neither makes them valid nor invalid. Anything the scanner does not read
//! ([`Spliced::Unusual`]) is left to the caller's full-document path.

use std::io::{self, Read, Write};

use ipnet::IpNet;

use crate::{
    allowlist::{Line, classify},
    cidr::parse_cidr,
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

/// Streams `input` (the old file) into `out` with `edit` applied. `head_ok` checks the text
/// before the first entry (the settings); false makes the edit [`Spliced::Unusual`].
///
/// The output is the input with at most one span left out (a removed entry) and one inserted
/// (an added entry): bytes are written in spans straight from the read buffer once nothing
/// before them can change, not a line at a time, and the usual lines (`[[allow]]`,
/// `cidr = "…"`, blank) are recognised by byte comparisons before the general scanner.
pub fn splice(
    mut input: impl Read,
    out: &mut impl Write,
    edit: Edit<'_>,
    head_ok: impl FnOnce(&str) -> bool,
) -> io::Result<Spliced> {
    let mut file = Spans::new(&mut input, out);
    // The settings: everything before the first `[[allow]]` header.
    let mut head = String::new();
    let (first_header, crlf) = loop {
        let Some((at, line)) = file.next_line()? else {
            // No `[[allow]]` tables: the full-document path adds the first one.
            return Ok(Spliced::Unusual);
        };
        let Ok(line) = std::str::from_utf8(line) else {
            return Ok(Spliced::Unusual);
        };
        let trimmed = line.trim_start_matches([' ', '\t']);
        if trimmed.starts_with("[[") && classify(line) == Ok(Line::Header) {
            break (at, line.ends_with("\r\n"));
        }
        if trimmed.starts_with("allow") {
            // An `allow` key of its own: not the layout this edit handles.
            return Ok(Spliced::Unusual);
        }
        head.push_str(line);
    };
    if !head_ok(&head) {
        return Ok(Spliced::Unusual);
    }
    // The blank and comment lines that end the settings are the first table's prefix.
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
    };
    let mut table = Table {
        prefix_at: trailing_blank_start(&head) as u64,
        header_at: first_header,
        end: 0,
        cidr: None,
        comment_seen: false,
    };
    // Where the blank and comment lines after the current table's last key begin.
    table.end = file.scanned();
    // `[[allow]]` tables read, the first one included.
    let mut tables = 1;
    while let Some((at, line)) = file.next_line()? {
        let Ok(kind) = classify_bytes(line) else {
            return Ok(Spliced::Unusual);
        };
        match kind {
            Line::Blank => {}
            Line::Header => {
                tables += 1;
                if !state.finish(&table, &mut file)? {
                    return Ok(Spliced::Unusual);
                }
                table = Table {
                    prefix_at: table.end,
                    header_at: at,
                    end: file.scanned(),
                    cidr: None,
                    comment_seen: false,
                };
            }
            Line::Key { key, value, .. } => {
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
                }
                table.end = file.scanned();
            }
        }
    }
    if !state.finish(&table, &mut file)? {
        return Ok(Spliced::Unusual);
    }
    match edit {
        Edit::Add { .. } if state.found => return Ok(Spliced::Duplicate),
        Edit::Remove { .. } if !state.found => return Ok(Spliced::Missing),
        _ => {}
    }
    let entries = match edit {
        Edit::Add { .. } => tables + 1,
        Edit::Remove { .. } => tables - 1,
    };
    if let Edit::Add { net, comment } = edit {
        let mut entry = new_entry(net, comment);
        if crlf {
            entry = entry.replace('\n', "\r\n");
        }
        if !entry_reads_back(&entry, net, comment) {
            return Ok(Spliced::Unusual);
        }
        // After the last entry's last key line, before what follows it (trailing comments).
        file.emit_until(table.end)?;
        if !file.ends_with_newline_at(table.end) {
            file.insert(if crlf { b"\r\n" } else { b"\n" })?;
        }
        file.insert(entry.as_bytes())?;
    }
    file.emit_until(file.scanned())?;
    file.write_settled()?;
    Ok(Spliced::Done { head, entries })
}

/// One `[[allow]]` table, as offsets into the file.
struct Table {
    /// Where its prefix begins: the blank and comment lines before its header (after the
    /// previous table's last key).
    prefix_at: u64,
    header_at: u64,
    /// The end of its last key line (of the header, before any key).
    end: u64,
    /// `Some` once the `cidr` line was seen: its network if it may be the edited one.
    cidr: Option<Option<IpNet>>,
    comment_seen: bool,
}

struct State<'a> {
    edit: Edit<'a>,
    /// The added entry is there already, or the removed one was found (and left out).
    found: bool,
    /// A removed entry's comment lines stayed: the next prefix loses its leading newlines.
    strip_next_prefix: bool,
}

impl State<'_> {
    /// Settles what of a complete table is written (all of it but for the removed entry).
    /// False if it is not a valid entry (no `cidr`).
    fn finish<R: Read, W: Write>(
        &mut self,
        table: &Table,
        file: &mut Spans<'_, R, W>,
    ) -> io::Result<bool> {
        let Some(net) = table.cidr else {
            return Ok(false);
        };
        if std::mem::take(&mut self.strip_next_prefix) {
            let newlines = file.count_newlines(table.prefix_at, table.header_at);
            file.emit_until(table.prefix_at)?;
            file.skip_until(table.prefix_at + newlines)?;
        }
        match self.edit {
            Edit::Remove { net: gone } if net == Some(gone) && !self.found => {
                self.found = true;
                file.emit_until(table.prefix_at)?;
                if file.contains_hash(table.prefix_at, table.header_at) {
                    // Comments above it may describe the whole list: they stay.
                    file.emit_until(table.header_at)?;
                    self.strip_next_prefix = true;
                }
                file.skip_until(table.end)?;
            }
            Edit::Add { net: new, .. } if net == Some(new) => self.found = true,
            _ => {}
        }
        // Nothing up to its end changes any more: an added entry goes after the last table,
        // and a removed one takes its own prefix and lines.
        file.emit_until(table.end)?;
        Ok(true)
    }
}

/// [`classify`] for a line of the file as bytes, with the lines a million-entry file repeats
/// (`[[allow]]`, `cidr = "…"`, blank) recognised without a UTF-8 check: they are ASCII.
fn classify_bytes(line: &[u8]) -> Result<Line<'_>, crate::allowlist::Unusual> {
    match line {
        b"\n" | b"\r\n" | b"" => return Ok(Line::Blank),
        b"[[allow]]\n" | b"[[allow]]\r\n" | b"[[allow]]" => return Ok(Line::Header),
        _ => {}
    }
    // `cidr = "VALUE"` as the project writes it (see `allowlist::plain_cidr_line`).
    if let Some(rest) = line.strip_prefix(b"cidr = \"") {
        let rest = rest
            .strip_suffix(b"\n")
            .map_or(rest, |l| l.strip_suffix(b"\r").unwrap_or(l));
        if let Some(value) = rest.strip_suffix(b"\"")
            && value
                .iter()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b'.' | b'/' | b':'))
        {
            // SAFETY: every byte was just checked to be ASCII, which is UTF-8 (a checked
            // conversion of a million values was a seventh of an edit).
            let value = unsafe { std::str::from_utf8_unchecked(value) };
            return Ok(Line::Key {
                key: crate::allowlist::Key::Cidr,
                value,
                at: crate::allowlist::VALUE_AT,
            });
        }
    }
    std::str::from_utf8(line)
        .map_err(|_| crate::allowlist::Unusual)
        .and_then(classify)
}

/// The file read in large chunks and written back in spans. Offsets are from the start of the
/// file. Everything before `emitted` is settled (to be written, or left out), and written up
/// to `written` (settled bytes are written a chunk at a time); the buffer holds the bytes from
/// `written` to the end of the last complete line read, plus a partial line.
struct Spans<'a, R, W> {
    input: &'a mut R,
    out: &'a mut W,
    /// Read bytes in `buf[..filled]`; the rest is room for the next read (zeroed once, when
    /// the buffer grows, not for every read).
    buf: Vec<u8>,
    filled: usize,
    /// The offset of `buf[0]`.
    buf_at: u64,
    /// Bytes of `buf` in complete lines (and, at the end of the input, the last line).
    complete: usize,
    /// Where the next line starts, in `buf`.
    next: usize,
    emitted: u64,
    written: u64,
    at_end: bool,
}

/// Bytes read at once.
pub(crate) const CHUNK: usize = 1 << 20;

impl<'a, R: Read, W: Write> Spans<'a, R, W> {
    fn new(input: &'a mut R, out: &'a mut W) -> Self {
        Spans {
            input,
            out,
            buf: Vec::new(),
            filled: 0,
            buf_at: 0,
            complete: 0,
            next: 0,
            emitted: 0,
            written: 0,
            at_end: false,
        }
    }

    /// The offset where the next line starts: the end of those read so far.
    fn scanned(&self) -> u64 {
        self.buf_at + self.next as u64
    }

    /// The next line with its ending (the last one may have none) and its offset; `None` at
    /// the end.
    fn next_line(&mut self) -> io::Result<Option<(u64, &[u8])>> {
        if self.next >= self.complete && !self.refill()? {
            return Ok(None);
        }
        let start = self.next;
        let rest = &self.buf[start..self.complete];
        // Most lines are short: a plain loop over their first bytes costs less than memchr's
        // set-up; longer ones go to memchr.
        let short = &rest[..rest.len().min(32)];
        let len = match short.iter().position(|&b| b == b'\n') {
            Some(at) => at + 1,
            None => memchr::memchr(b'\n', rest).map_or(rest.len(), |at| at + 1),
        };
        self.next += len;
        Ok(Some((
            self.buf_at + start as u64,
            &self.buf[start..start + len],
        )))
    }

    /// Drops the settled bytes and reads until the buffer holds another complete line (or the
    /// last bytes); false at the end of the input.
    fn refill(&mut self) -> io::Result<bool> {
        // Settled bytes are written and gone; the unsettled ones (a table not yet decided) stay.
        self.write_settled()?;
        let settled = usize::try_from(self.written - self.buf_at)
            .unwrap_or(usize::MAX)
            .min(self.next);
        self.buf.copy_within(settled..self.filled, 0);
        self.filled -= settled;
        self.buf_at += settled as u64;
        self.next -= settled;
        self.complete -= settled;
        loop {
            if self.at_end {
                self.complete = self.filled;
                return Ok(self.next < self.complete);
            }
            if self.buf.len() - self.filled < CHUNK / 2 {
                self.buf.resize(self.filled + CHUNK, 0);
            }
            let start = self.filled;
            let read = loop {
                match self.input.read(&mut self.buf[start..]) {
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other?,
                }
            };
            self.filled += read;
            if read == 0 {
                self.at_end = true;
                continue;
            }
            if let Some(last) = memchr::memrchr(b'\n', &self.buf[start..self.filled]) {
                self.complete = start + last + 1;
                return Ok(true);
            }
        }
    }

    /// `buf` indices of the file span `from..to`, which must still be in the buffer.
    fn range(&self, from: u64, to: u64) -> std::ops::Range<usize> {
        let index = |at: u64| usize::try_from(at - self.buf_at).unwrap_or(usize::MAX);
        index(from)..index(to)
    }

    /// Settles the bytes from the last settled one up to `to` as written.
    fn emit_until(&mut self, to: u64) -> io::Result<()> {
        self.emitted = self.emitted.max(to);
        Ok(())
    }

    /// Writes what is settled as written and not yet written.
    fn write_settled(&mut self) -> io::Result<()> {
        if self.emitted > self.written {
            let range = self.range(self.written, self.emitted);
            self.out.write_all(&self.buf[range])?;
            self.written = self.emitted;
        }
        Ok(())
    }

    /// Leaves the bytes from the last settled one up to `to` out.
    fn skip_until(&mut self, to: u64) -> io::Result<()> {
        self.write_settled()?;
        self.emitted = self.emitted.max(to);
        self.written = self.emitted;
        Ok(())
    }

    /// Writes bytes that are not in the input (after everything settled so far).
    fn insert(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_settled()?;
        self.out.write_all(bytes)
    }

    fn contains_hash(&self, from: u64, to: u64) -> bool {
        memchr::memchr(b'#', &self.buf[self.range(from, to)]).is_some()
    }

    /// Leading `\n` bytes of the span `from..to`.
    fn count_newlines(&self, from: u64, to: u64) -> u64 {
        self.buf[self.range(from, to)]
            .iter()
            .take_while(|&&b| b == b'\n')
            .count() as u64
    }

    /// Whether the byte before `at` is a newline (or `at` is the start).
    fn ends_with_newline_at(&self, at: u64) -> bool {
        at == 0 || at <= self.buf_at || self.buf[self.range(at - 1, at)] == *b"\n"
    }
}

/// What the edited network's `cidr` value can look like, for a cheap test before parsing.
struct Target {
    /// The network address, when IPv4: an IPv4 value names the same network only if its
    /// address part is this text (the parser takes no leading zeros and no host bits).
    v4_addr: Option<String>,
}

/// Whether the `cidr` value `value` may name the edited network: IPv6 values are always parsed
/// (they have many spellings), IPv4 ones only when their address is the target's. Skipping the
/// parse of the other million is what keeps an edit a pass over the lines; a value that does not
/// parse is left for `gatekeeper check`, the daemon's reload and `gatekeeper status` to report.
fn could_be(value: &str, target: &Target) -> bool {
    // Bytes, not chars, and one loop: this runs for every entry of the file.
    let bytes = value.as_bytes();
    let value = if bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
    {
        bytes
    } else {
        value.trim().as_bytes()
    };
    let mut slash = value.len();
    for (at, &b) in value.iter().enumerate() {
        match b {
            b':' => return true,
            b'/' if slash == value.len() => slash = at,
            _ => {}
        }
    }
    target.v4_addr.as_deref().map(str::as_bytes) == Some(&value[..slash])
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

#[cfg(test)]
mod reference;

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

    /// Outcome tag and output of an edit through `splice` (the span-based one) or the
    /// line-by-line reference, reading `step` bytes at a time.
    fn both(
        text: &str,
        edit: Edit<'_>,
        step: usize,
    ) -> ((String, &'static str), (String, &'static str)) {
        let run_with = |spans: bool| {
            let mut out = Vec::new();
            let input = Trickle {
                data: text.as_bytes(),
                step,
            };
            let outcome = if spans {
                splice(input, &mut out, edit, |_| true)
            } else {
                reference::splice(input, &mut out, edit, |_| true)
            };
            let tag = match outcome {
                Ok(Spliced::Done { .. }) => "done",
                Ok(Spliced::Duplicate) => "duplicate",
                Ok(Spliced::Missing) => "missing",
                Ok(Spliced::Unusual) => "unusual",
                // The reference reports invalid UTF-8 as an error; the caller treats both alike.
                Err(err) if err.kind() == io::ErrorKind::InvalidData => "unusual",
                Err(err) => panic!("io: {err}"),
            };
            // Only a finished edit's output is used.
            let out = if tag == "done" {
                String::from_utf8(out).expect("utf-8")
            } else {
                String::new()
            };
            (out, tag)
        };
        (run_with(true), run_with(false))
    }

    /// A random file in the layouts the scanner reads (and a few it does not): blank and
    /// comment lines anywhere, CRLF, comments after values, `comment` keys before or after the
    /// `cidr`, spaced headers, a missing final newline, trailing comments, duplicates.
    fn random_file(seed: &mut u64, entries: usize) -> (String, Vec<IpNet>) {
        let mut next = |n: u64| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed % n
        };
        let nl = if next(4) == 0 { "\r\n" } else { "\n" };
        let mut text = format!("mode = \"enforce\"{nl}");
        let mut nets = Vec::new();
        let filler = |pick: u64| match pick {
            0 => "# a note".to_string(),
            1 => "   ".to_string(),
            2 => "  # indented note [[allow]]".to_string(),
            _ => String::new(),
        };
        for _ in 0..next(3) {
            text.push_str(&filler(next(5)));
            text.push_str(nl);
        }
        for _ in 0..entries {
            for _ in 0..next(3) {
                text.push_str(&filler(next(5)));
                text.push_str(nl);
            }
            text.push_str(if next(8) == 0 {
                "[[ allow ]]"
            } else {
                "[[allow]]"
            });
            text.push_str(nl);
            let cidr = match next(6) {
                0 => format!("2001:db8:{:x}::/48", next(8)),
                1 => format!("198.51.100.{}", next(8)),
                2 => format!("192.0.2.{}/32", next(8)),
                3 => format!("203.0.113.{}/32", next(8) * 2),
                4 => format!("10.{}.0.0/16", next(4)),
                _ => format!("198.51.{}.0/24", 100 + next(4)),
            };
            nets.push(parse_cidr(&cidr).expect("valid"));
            let comment_first = next(4) == 0;
            let comment = match next(4) {
                0 => Some("comment = \"partner\" # why"),
                1 => Some("comment = 'x'"),
                _ => None,
            };
            if comment_first && let Some(c) = comment {
                text.push_str(c);
                text.push_str(nl);
            }
            if next(5) == 0 {
                text.push_str(&filler(0));
                text.push_str(nl);
            }
            text.push_str(&match next(5) {
                0 => format!("cidr=\"{cidr}\" # note"),
                1 => format!("  cidr = '{cidr}'"),
                _ => format!("cidr = \"{cidr}\""),
            });
            text.push_str(nl);
            if !comment_first && let Some(c) = comment {
                text.push_str(c);
                text.push_str(nl);
            }
        }
        for _ in 0..next(3) {
            text.push_str(&filler(next(5)));
            text.push_str(nl);
        }
        if next(4) == 0 {
            text.truncate(text.trim_end_matches(['\r', '\n']).len());
        }
        (text, nets)
    }

    #[test]
    fn spans_write_what_the_line_by_line_edit_wrote() {
        let mut seed = 0x00c0_ffee_u64;
        for round in 0..300 {
            let (text, nets) = random_file(&mut seed, (round % 9) + 1);
            let mut edits: Vec<Edit<'_>> = nets
                .iter()
                .map(|&net| Edit::Remove { net })
                .chain(nets.iter().map(|&net| Edit::Add { net, comment: None }))
                .collect();
            for new in [
                "192.0.2.200/32",
                "2001:db8:ff::/48",
                "198.51.100.7",
                "10.9.0.0/16",
            ] {
                edits.push(Edit::Add {
                    net: net(new),
                    comment: Some("new"),
                });
                edits.push(Edit::Remove { net: net(new) });
            }
            for edit in edits {
                for step in [5, CHUNK] {
                    let (spans, lines) = both(&text, edit, step);
                    assert_eq!(spans, lines, "{edit:?} on {text:?}, {step} bytes a read");
                }
            }
        }
    }

    #[test]
    fn spans_keep_every_byte_across_reads_and_long_lines() {
        let long = "#".repeat(3 * CHUNK + 7);
        let text = format!(
            "mode = \"enforce\"\r\n\n{long}\n[[allow]]\ncidr = \"192.0.2.1\"\n# ré {long}\n\n[[allow]]\ncidr = \"192.0.2.2\""
        );
        for step in [4096, CHUNK - 1, CHUNK, 10 * CHUNK] {
            for edit in [
                Edit::Add {
                    net: net("192.0.2.3"),
                    comment: None,
                },
                Edit::Remove {
                    net: net("192.0.2.1"),
                },
                Edit::Remove {
                    net: net("192.0.2.2"),
                },
            ] {
                let ((spans, tag), lines) = both(&text, edit, step);
                assert_eq!(tag, "done");
                assert_eq!((spans, tag), lines, "{edit:?}, {step} bytes a read");
            }
        }
        // Invalid UTF-8 anywhere: the full parse words it.
        for bad in [
            &b"mode = \"enforce\"\n\xff\n[[allow]]\ncidr = \"192.0.2.1\"\n"[..],
            b"[[allow]]\ncidr = \"192.0.2.1\"\n# \xff\n",
        ] {
            let outcome = splice(
                bad,
                &mut Vec::new(),
                Edit::Add {
                    net: net("192.0.2.3"),
                    comment: None,
                },
                |_| true,
            );
            assert!(matches!(outcome, Ok(Spliced::Unusual)), "{outcome:?}");
        }
    }
}
