//! The allowlist of a `gatekeeper.toml`, held compactly, and read from the file's `[[allow]]`
//! tables without a TOML document tree.
//!
//! A generic TOML parser builds a table per `[[allow]]` entry (keys, decor, spans, a hash map):
//! about a kilobyte of heap per entry, 1.3 GB for a million. The entries here cost the network
//! (18 bytes) plus their comment when there is one, and the scanner reads the usual layout — one
//! `[[allow]]` header line, then `cidr = "…"` and `comment = "…"` lines, blank and comment lines —
//! line by line. Anything else in the `[[allow]]` part (escapes, multi-line strings, quoted or
//! dotted keys, other tables) makes the caller parse the whole file with the TOML parser instead,
//! so odd but valid files still load and odd invalid ones get the TOML parser's own message.

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::{
    cidr::{CidrError, parse_cidr},
    derived::DnsKind,
};

/// The allowlist in file order: each entry's network, and the comments of those that have one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allowlist {
    nets: Vec<IpNet>,
    /// `(index, comment)`, ascending by index: most entries have none.
    comments: Vec<(u32, Box<str>)>,
}

/// One entry, borrowed from an [`Allowlist`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllowEntry<'a> {
    pub net: IpNet,
    pub comment: Option<&'a str>,
}

impl Allowlist {
    pub fn len(&self) -> usize {
        self.nets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// The networks, in file order.
    pub fn nets(&self) -> &[IpNet] {
        &self.nets
    }

    /// Entry `index` (file order).
    pub fn get(&self, index: usize) -> Option<AllowEntry<'_>> {
        let net = *self.nets.get(index)?;
        Some(AllowEntry {
            net,
            comment: self.comment(index),
        })
    }

    /// The comment of entry `index`, if it has one.
    pub fn comment(&self, index: usize) -> Option<&str> {
        let index = u32::try_from(index).ok()?;
        self.comments
            .binary_search_by_key(&index, |(i, _)| *i)
            .ok()
            .map(|at| &*self.comments[at].1)
    }

    /// The entries in file order.
    pub fn iter(&self) -> impl Iterator<Item = AllowEntry<'_>> + '_ {
        let mut comments = self.comments.iter().peekable();
        self.nets.iter().enumerate().map(move |(index, net)| {
            let comment = match comments.peek() {
                Some((at, text)) if *at as usize == index => {
                    comments.next();
                    Some(&**text)
                }
                _ => None,
            };
            AllowEntry { net: *net, comment }
        })
    }

    /// Appends an entry.
    pub fn push(&mut self, net: IpNet, comment: Option<&str>) {
        if let Some(text) = comment
            && let Ok(index) = u32::try_from(self.nets.len())
        {
            self.comments.push((index, text.into()));
        }
        self.nets.push(net);
    }

    /// The networks sorted (IPv4 before IPv6, then by address and length): what the controller
    /// merges against the live maps in one pass.
    pub fn sorted_nets(&self) -> Vec<IpNet> {
        let mut nets = self.nets.clone();
        sort_nets(&mut nets);
        nets
    }

    /// The first entry (in file order) whose network an earlier entry already lists, as
    /// `(index, net)`. One sort of `(network, index)` keys, not a hash set of every entry:
    /// equal networks end up next to each other, in file order.
    pub fn first_duplicate(&self) -> Option<(usize, IpNet)> {
        u32::try_from(self.nets.len()).ok()?;
        // IPv4 as integers (network, length, index), which sort several times faster than
        // the enum; IPv6 as pairs.
        let mut v4: Vec<u128> = Vec::new();
        let mut v6: Vec<(Ipv6Net, u32)> = Vec::new();
        for (index, net) in (0u32..).zip(&self.nets) {
            match net {
                IpNet::V4(n) => v4.push((u128::from(v4_key(*n)) << 32) | u128::from(index)),
                IpNet::V6(n) => v6.push((*n, index)),
            }
        }
        v4.sort_unstable();
        v6.sort_unstable();
        let v4_dup = v4
            .windows(2)
            .filter(|w| w[0] >> 32 == w[1] >> 32)
            .map(|w| (w[1] & 0xffff_ffff) as usize);
        let v6_dup = v6
            .windows(2)
            .filter(|w| w[0].0 == w[1].0)
            .map(|w| w[1].1 as usize);
        v4_dup.chain(v6_dup).min().map(|i| (i, self.nets[i]))
    }
}

/// An IPv4 network as an integer that sorts as [`Ipv4Net`] does (address, then length).
fn v4_key(net: Ipv4Net) -> u64 {
    (u64::from(u32::from(net.addr())) << 8) | u64::from(net.prefix_len())
}

/// Sorts networks in [`IpNet`]'s order (IPv4 first, then by address and length). IPv4 ones are
/// sorted as integers: a million random entries in a fraction of the generic sort's time, and
/// the controller sorts both the file's and the kernel's list (start, reload, `status`).
pub fn sort_nets(nets: &mut [IpNet]) {
    let mut v4: Vec<u64> = nets
        .iter()
        .filter_map(|net| match net {
            IpNet::V4(n) => Some(v4_key(*n)),
            IpNet::V6(_) => None,
        })
        .collect();
    if v4.len() < 64 {
        nets.sort_unstable();
        return;
    }
    let mut v6: Vec<IpNet> = nets
        .iter()
        .copied()
        .filter(|n| n.addr().is_ipv6())
        .collect();
    v4.sort_unstable();
    v6.sort_unstable();
    let v4 = v4.into_iter().map(|key| {
        let addr = std::net::Ipv4Addr::from(u32::try_from(key >> 8).unwrap_or(0));
        // Rebuilt from a valid network's address and length: never out of range.
        IpNet::V4(Ipv4Net::new(addr, (key & 0xff) as u8).unwrap_or_default())
    });
    for (slot, net) in nets.iter_mut().zip(v4.chain(v6)) {
        *slot = net;
    }
}

impl<'a> IntoIterator for &'a Allowlist {
    type Item = AllowEntry<'a>;
    type IntoIter = Box<dyn Iterator<Item = AllowEntry<'a>> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

/// The `[[allow]]` tables of a file, as the scanner read them.
#[derive(Debug, Default)]
pub(crate) struct ScannedAllow {
    pub list: Allowlist,
    /// Byte offset of each entry's `cidr` value (its opening quote), for messages.
    pub cidr_at: Vec<u32>,
    /// The first entry whose `cidr` is not a network: `(offset, error)`.
    pub first_invalid: Option<(usize, CidrError)>,
    /// The tables with `spf`, `mx` or `a` instead of `cidr` (names not checked yet).
    pub derived: Vec<ScannedDerived>,
}

/// A `[[allow]]` table naming a DNS name (`spf = "partner.example"`), as scanned.
#[derive(Debug)]
pub(crate) struct ScannedDerived {
    pub kind: DnsKind,
    pub name: String,
    pub comment: Option<String>,
    /// Byte offset of the name's value, for messages.
    pub at: usize,
}

/// Why the scanner handed the file to the TOML parser.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Unusual;

/// Where the `[[allow]]` part of `text` begins: the first line that is an `[[allow]]` header.
/// `None` if no line is (no entries, or only an inline `allow = [...]`).
pub(crate) fn allow_section_start(text: &str) -> Option<usize> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start_matches([' ', '\t']);
        if trimmed.starts_with("[[") && classify(line) == Ok(Line::Header) {
            return Some(offset);
        }
        offset += line.len();
    }
    None
}

/// Reads the `[[allow]]` part of a file (`section` starts at byte `base` of the file, with a
/// header line). `Err(Unusual)` when it holds anything beyond the usual layout.
pub(crate) fn scan_allow_section(section: &str, base: usize) -> Result<ScannedAllow, Unusual> {
    if u32::try_from(base + section.len()).is_err() {
        return Err(Unusual);
    }
    let mut scanned = ScannedAllow::default();
    let mut table: Option<Table<'_>> = None;
    let mut offset = base;
    for line in section.split_inclusive('\n') {
        match classify(line)? {
            Line::Blank => {}
            Line::Header => {
                if let Some(done) = table.take() {
                    done.finish(&mut scanned)?;
                }
                table = Some(Table::default());
            }
            Line::Key { key, value, at } => {
                let table = table.as_mut().ok_or(Unusual)?;
                let slot = match key {
                    Key::Cidr => &mut table.cidr,
                    Key::Comment => &mut table.comment,
                    Key::Dns(kind) => {
                        if table.dns.is_some() {
                            return Err(Unusual);
                        }
                        table.dns = Some(kind);
                        &mut table.name
                    }
                };
                if slot.is_some() {
                    // A key given twice: the TOML parser words that error.
                    return Err(Unusual);
                }
                *slot = Some((value, offset + at));
            }
        }
        offset += line.len();
    }
    if let Some(done) = table.take() {
        done.finish(&mut scanned)?;
    }
    Ok(scanned)
}

#[derive(Default)]
struct Table<'a> {
    cidr: Option<(&'a str, usize)>,
    comment: Option<(&'a str, usize)>,
    /// `spf`, `mx` or `a`, and its value in `name`.
    dns: Option<DnsKind>,
    name: Option<(&'a str, usize)>,
}

impl Table<'_> {
    fn finish(self, scanned: &mut ScannedAllow) -> Result<(), Unusual> {
        if let (Some(kind), Some((name, at))) = (self.dns, self.name) {
            // A table with a cidr too: the TOML path words that error.
            if self.cidr.is_some() {
                return Err(Unusual);
            }
            scanned.derived.push(ScannedDerived {
                kind,
                name: name.to_string(),
                comment: self.comment.map(|(text, _)| text.to_string()),
                at,
            });
            return Ok(());
        }
        // Without a cidr the TOML parser's "missing field" message is the right one.
        let (cidr, at) = self.cidr.ok_or(Unusual)?;
        let net = match parse_cidr(cidr) {
            Ok(net) => net,
            Err(err) => {
                if scanned.first_invalid.is_none() {
                    scanned.first_invalid = Some((at, err));
                }
                // A placeholder keeps indices aligned; the whole parse fails anyway.
                IpNet::default()
            }
        };
        scanned.list.push(net, self.comment.map(|(text, _)| text));
        scanned
            .cidr_at
            .push(u32::try_from(at).map_err(|_| Unusual)?);
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Key {
    Cidr,
    Comment,
    /// `spf`, `mx` or `a`: a DNS-derived entry (`[[allow]]` only).
    Dns(DnsKind),
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line<'a> {
    /// Blank, or only a comment.
    Blank,
    /// `[[allow]]`.
    Header,
    /// `cidr = "…"` or `comment = "…"`; `at` is the value's byte offset in the line.
    Key { key: Key, value: &'a str, at: usize },
}

/// One line of the `[[allow]]` part (with its line ending, if any).
pub(crate) fn classify(line: &str) -> Result<Line<'_>, Unusual> {
    // The two lines a million-entry file repeats most, as the project writes them.
    match line {
        "\n" | "\r\n" | "" => return Ok(Line::Blank),
        "[[allow]]\n" | "[[allow]]\r\n" | "[[allow]]" => return Ok(Line::Header),
        _ => {}
    }
    if let Some(value) = plain_cidr_line(line) {
        return Ok(Line::Key {
            key: Key::Cidr,
            value,
            at: VALUE_AT,
        });
    }
    classify_any(line)
}

/// [`classify`] for the tables named `table` (`deny`), whose entries have the same keys: the
/// header of any other array of tables is [`Unusual`] (for `allow`, exactly [`classify`]).
pub(crate) fn classify_in<'l>(line: &'l str, table: &str) -> Result<Line<'l>, Unusual> {
    if table == "allow" {
        return classify(line);
    }
    match header_name(line) {
        Some(name) if name == table => Ok(Line::Header),
        Some(_) => Err(Unusual),
        None => classify(line),
    }
}

/// The name in a `[[name]]` header line; `None` if the line is not one.
pub(crate) fn header_name(line: &str) -> Option<&str> {
    let body = line
        .strip_suffix('\n')
        .map_or(line, |l| l.strip_suffix('\r').unwrap_or(l));
    let inner = skip_ws(skip_ws(body).strip_prefix("[[")?);
    let end = inner.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))?;
    let (name, rest) = inner.split_at(end);
    let after = skip_ws(rest).strip_prefix("]]")?;
    (!name.is_empty() && line_end_ok(after)).then_some(name)
}

/// [`classify`] without the shortcuts for the common lines.
fn classify_any(line: &str) -> Result<Line<'_>, Unusual> {
    let body = line
        .strip_suffix('\n')
        .map_or(line, |l| l.strip_suffix('\r').unwrap_or(l));
    let rest = skip_ws(body);
    if rest.is_empty() {
        return Ok(Line::Blank);
    }
    if let Some(comment) = rest.strip_prefix('#') {
        return comment_ok(comment).then_some(Line::Blank).ok_or(Unusual);
    }
    if let Some(header) = rest.strip_prefix("[[") {
        let header = skip_ws(header).strip_prefix("allow").ok_or(Unusual)?;
        let after = skip_ws(header).strip_prefix("]]").ok_or(Unusual)?;
        return line_end_ok(after).then_some(Line::Header).ok_or(Unusual);
    }
    let (key, after_key) = if let Some(r) = rest.strip_prefix("cidr") {
        (Key::Cidr, r)
    } else if let Some(r) = rest.strip_prefix("comment") {
        (Key::Comment, r)
    } else if let Some((kind, r)) = DnsKind::ALL
        .into_iter()
        .find_map(|kind| Some((kind, rest.strip_prefix(kind.key())?)))
        .filter(|(_, r)| r.starts_with([' ', '\t', '=']))
    {
        (Key::Dns(kind), r)
    } else {
        return Err(Unusual);
    };
    let value_part = skip_ws(skip_ws(after_key).strip_prefix('=').ok_or(Unusual)?);
    let at = body.len() - value_part.len();
    let (value, after) = string_value(value_part)?;
    if !line_end_ok(after) {
        return Err(Unusual);
    }
    Ok(Line::Key { key, value, at })
}

/// How the project writes a `cidr` line, up to the value.
const PLAIN_CIDR: &str = "cidr = \"";
/// The offset of its value in the line, counted from the opening quote as the general path does.
const VALUE_AT: usize = PLAIN_CIDR.len() - 1;

/// The value of a `cidr` line written the project's way (`cidr = "VALUE"` and the line end,
/// VALUE only address characters), found without the general path's steps: the line every
/// entry of a million-entry file has. `None` sends any other line to the general path.
fn plain_cidr_line(line: &str) -> Option<&str> {
    let rest = line.strip_prefix(PLAIN_CIDR)?;
    let rest = rest
        .strip_suffix('\n')
        .map_or(rest, |l| l.strip_suffix('\r').unwrap_or(l));
    let value = rest.strip_suffix('"')?;
    value
        .bytes()
        .all(|b| b.is_ascii_hexdigit() || matches!(b, b'.' | b'/' | b':'))
        .then_some(value)
}

/// A one-line basic string without escapes, or a literal string: its content and what follows.
fn string_value(text: &str) -> Result<(&str, &str), Unusual> {
    let quote = match text.chars().next() {
        Some(q @ ('"' | '\'')) => q,
        _ => return Err(Unusual),
    };
    let inner = &text[1..];
    // Byte searches: this runs for every line of a million-entry file (the quote is ASCII).
    let end = inner
        .bytes()
        .position(|b| b == quote as u8)
        .ok_or(Unusual)?;
    let content = &inner[..end];
    let after = &inner[end + 1..];
    // `""` followed by a quote opens a multi-line string; a backslash starts an escape.
    if (content.is_empty() && after.starts_with(quote))
        || (quote == '"' && content.as_bytes().contains(&b'\\'))
        || has_control(content)
    {
        return Err(Unusual);
    }
    Ok((content, after))
}

/// What may follow a value or header on its line: whitespace and a comment.
fn line_end_ok(rest: &str) -> bool {
    let rest = skip_ws(rest);
    rest.is_empty() || rest.strip_prefix('#').is_some_and(comment_ok)
}

/// TOML comments hold no control characters other than tab.
fn comment_ok(comment: &str) -> bool {
    !has_control(comment)
}

/// Whether `text` holds a control character other than tab. One pass over the bytes (every
/// line of a million-entry file passes here); chars only when it meets an ASCII control or a
/// non-ASCII byte, for the C1 controls (U+0080..U+009F).
fn has_control(text: &str) -> bool {
    text.bytes().any(|b| (b < 0x20 && b != b'\t') || b >= 0x7f)
        && text.chars().any(|c| c != '\t' && c.is_control())
}

fn skip_ws(text: &str) -> &str {
    let spaces = text
        .bytes()
        .take_while(|&b| b == b' ' || b == b'\t')
        .count();
    &text[spaces..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("net")
    }

    #[test]
    fn the_plain_cidr_shortcut_reads_what_the_general_path_reads() {
        for line in [
            "cidr = \"192.0.2.1\"\n",
            "cidr = \"192.0.2.0/24\"\r\n",
            "cidr = \"2001:db8::/32\"",
            "cidr = \"\"\n",
            "cidr = \"\"\"\n",
            "cidr = \"1.2\" # x\n",
            "cidr = \"1.2\"x\n",
            "cidr = \"1.2\n",
            "cidr = \"1.2\"\r\r\n",
            "cidr = \"1\u{85}2\"\n",
            "cidr = \"1\\2\"\n",
        ] {
            let shortcut = plain_cidr_line(line).map(|value| Line::Key {
                key: Key::Cidr,
                value,
                at: VALUE_AT,
            });
            if let Some(shortcut) = shortcut {
                assert_eq!(Ok(shortcut), classify_any(line), "{line:?}");
            }
            assert_eq!(classify(line), classify_any(line), "{line:?}");
        }
    }

    #[test]
    fn the_usual_layout_is_read_line_by_line() {
        let text = "[[allow]]\ncidr = \"192.0.2.0/24\" # a\ncomment = 'partner \"x\"'\n\n# note\n[[ allow ]]  # b\r\ncidr=\"2001:db8::/32\"\r\n";
        let scanned = scan_allow_section(text, 100).expect("usual");
        assert_eq!(
            scanned.list.nets(),
            [net("192.0.2.0/24"), net("2001:db8::/32")]
        );
        assert_eq!(scanned.list.comment(0), Some("partner \"x\""));
        assert_eq!(scanned.list.comment(1), None);
        assert_eq!(scanned.cidr_at, [117, 191]);
        assert!(scanned.first_invalid.is_none());
    }

    #[test]
    fn anything_else_goes_to_the_toml_parser() {
        for odd in [
            "[[allow]]\ncidr = \"192.0.2.1\\u0030\"\n",
            "[[allow]]\ncidr = \"\"\"192.0.2.1\"\"\"\n",
            "[[allow]]\n\"cidr\" = \"192.0.2.1\"\n",
            "[[allow]]\ncidr = \"192.0.2.1\"\ncidr = \"192.0.2.2\"\n",
            "[[allow]]\ncomment = \"no cidr\"\n",
            "[[allow]]\ncidr = \"192.0.2.1\"\n[other]\n",
            "[[allow]]\ncidr = \"192.0.2.1\" x\n",
            "[[allow]]\ncidr = \"192.0.2.1\"\nextra = 1\n",
            "[[allow]]\ncidr = \"192.0.2.1\" # bell \u{7}\n",
        ] {
            assert_eq!(scan_allow_section(odd, 0).err(), Some(Unusual), "{odd:?}");
        }
    }

    #[test]
    fn the_section_starts_at_the_first_allow_header() {
        assert_eq!(
            allow_section_start("a = 1\n# [[allow]]\n  [[allow]]\n"),
            Some(18)
        );
        assert_eq!(allow_section_start("allow = []\n"), None);
    }

    #[test]
    fn sort_nets_sorts_as_the_enum_does() {
        let mut seed = 0x5eed_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for (count, v6_share) in [(10, 2), (1000, 0), (1000, 3), (5000, 10)] {
            let nets: Vec<IpNet> = (0..count)
                .map(|_| {
                    let r = next();
                    if v6_share != 0 && r % v6_share == 0 {
                        let addr = std::net::Ipv6Addr::from(u128::from(r) << 64);
                        IpNet::V6(Ipv6Net::new(addr, (r % 129) as u8).expect("len").trunc())
                    } else {
                        // Few addresses and all lengths: equal addresses of several lengths.
                        let addr = std::net::Ipv4Addr::from((r as u32) & 0xff00_0f00);
                        IpNet::V4(
                            Ipv4Net::new(addr, (r >> 40) as u8 % 33)
                                .expect("len")
                                .trunc(),
                        )
                    }
                })
                .collect();
            let mut expected = nets.clone();
            expected.sort_unstable();
            let mut sorted = nets;
            sort_nets(&mut sorted);
            assert_eq!(sorted, expected, "{count} nets");
        }
    }

    #[test]
    fn duplicates_are_found_in_file_order() {
        let mut list = Allowlist::default();
        for n in [
            "192.0.2.0/24",
            "192.0.2.1/32",
            "192.0.2.0/24",
            "192.0.2.1/32",
        ] {
            list.push(net(n), None);
        }
        assert_eq!(list.first_duplicate(), Some((2, net("192.0.2.0/24"))));
        let mut list = Allowlist::default();
        for n in [
            "2001:db8::/32",
            "192.0.2.0/24",
            "192.0.2.0/25",
            "2001:db8::/32",
            "192.0.2.0/25",
        ] {
            list.push(net(n), None);
        }
        assert_eq!(list.first_duplicate(), Some((3, net("2001:db8::/32"))));
        let mut list = Allowlist::default();
        list.push(net("192.0.2.0/24"), Some("x"));
        assert_eq!(list.first_duplicate(), None);
        assert_eq!(
            list.iter().collect::<Vec<_>>(),
            [AllowEntry {
                net: net("192.0.2.0/24"),
                comment: Some("x")
            }]
        );
    }
}
