//! The line-by-line splice this module used before the span-based one: the oracle of
//! the differential test (same outcome, same bytes).

use std::io::{self, Read, Write};

use ipnet::IpNet;

use super::{Edit, Spliced, Target, could_be, entry_reads_back, new_entry, trailing_blank_start};
use crate::{
    allowlist::{Line, classify},
    cidr::parse_cidr,
};

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

/// Streams `input` (the old file) into `out` with `edit` applied. `head_ok` checks the text
/// before the first entry (the settings); false makes the edit [`Spliced::Unusual`].
pub fn splice(
    mut input: impl Read,
    out: &mut impl Write,
    edit: Edit<'_>,
    head_ok: impl FnOnce(&str) -> bool,
) -> io::Result<Spliced> {
    let mut lines = LineReader::new(&mut input);
    // The settings: everything before the first `[[allow]]` header.
    let mut head = String::new();
    let first_header = loop {
        let Some(line) = lines.next_line()? else {
            // No `[[allow]]` tables: the full-document path adds the first one.
            return Ok(Spliced::Unusual);
        };
        let trimmed = line.trim_start_matches([' ', '\t']);
        if trimmed.starts_with("[[") && classify(line) == Ok(Line::Header) {
            break line.to_string();
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
    // `[[allow]]` tables read, the first one included.
    let mut tables = 1;
    while let Some(line) = lines.next_line()? {
        let Ok(kind) = classify(line) else {
            return Ok(Spliced::Unusual);
        };
        match kind {
            Line::Blank => pending.push_str(line),
            Line::Header => {
                tables += 1;
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
        out.write_all(entry.as_bytes())?;
    }
    // What follows the last entry (trailing comments), after a removed last entry's comments.
    out.write_all(pending.as_bytes())?;
    Ok(Spliced::Done { head, entries })
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

/// The lines of a file, read in large chunks: `BufRead::read_line` per line (a copy, a UTF-8
/// check and a guard each) was a third of an edit's time at a million entries. Each chunk's
/// complete lines are checked as UTF-8 at once.
struct LineReader<'r, R> {
    input: &'r mut R,
    /// Complete lines (and, at the end, a last line without a newline); read from `pos`.
    text: String,
    pos: usize,
    /// Bytes after the last newline read so far: the start of the next chunk.
    tail: Vec<u8>,
}

/// Bytes read at once.
pub(super) const CHUNK: usize = 1 << 16;

impl<'r, R: Read> LineReader<'r, R> {
    fn new(input: &'r mut R) -> Self {
        LineReader {
            input,
            text: String::new(),
            pos: 0,
            tail: Vec::new(),
        }
    }

    /// The next line with its ending (the last one may have none); `None` at the end. Invalid
    /// UTF-8 is an `InvalidData` error (the caller's full parse words it).
    fn next_line(&mut self) -> io::Result<Option<&str>> {
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
