//! Removes every `Authentication-Results:` field that claims our authserv-id (RFC 8601 5: a
//! receiver must remove or rename such fields coming from outside, or a sender could forge our
//! verdict). Fields of other authserv-ids stay.
//!
//! The filter is incremental so the same code serves a held message and one streamed to the
//! spool: only the header block is looked at, line by line; the body passes through as is.
//! An A-R field is held until its last folded line, so an id on a continuation line counts.

use std::borrow::Cow;

const FIELD: &[u8] = b"authentication-results";
/// Longest header line or A-R field we hold. Longer lines are refused by the DATA decoder
/// anyway (`max_text_line` ≤ 16384); an A-R field this long is dropped whoever it claims.
const HOLD_LIMIT: usize = 64 * 1024;

/// The header field being read.
#[derive(Debug)]
enum Open {
    None,
    /// Held until its last line: judged then, on the whole field.
    Held(Vec<u8>),
    /// Too long to hold and not an A-R field: its further lines pass.
    Passing,
    /// An A-R field too long to read: dropped whoever it claims.
    Dropping,
}

/// The filter over one message.
#[derive(Debug)]
pub struct Stripper {
    /// Our authserv-id, lowercased, without a final dot.
    id: Vec<u8>,
    in_body: bool,
    /// The header line read so far (no line end yet).
    line: Vec<u8>,
    field: Open,
    removed: usize,
}

impl Stripper {
    pub fn new(authserv_id: &str) -> Stripper {
        let id = authserv_id.trim_end_matches('.').to_ascii_lowercase();
        Stripper {
            id: id.into_bytes(),
            in_body: false,
            line: Vec::new(),
            field: Open::None,
            removed: 0,
        }
    }

    /// How many fields were removed so far.
    pub fn removed(&self) -> usize {
        self.removed
    }

    /// Filters `input` (any chunk of the message), appending what stays to `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !self.in_body && !input.is_empty() {
            match input.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    self.line.extend_from_slice(&input[..=end]);
                    input = &input[end + 1..];
                    let line = std::mem::take(&mut self.line);
                    self.header_line(line, out);
                }
                None => {
                    self.line.extend_from_slice(input);
                    input = &[];
                    if self.line.len() > HOLD_LIMIT {
                        // Not a header any more (and refused as too long): pass it on.
                        self.end_of_header(out);
                        out.append(&mut self.line);
                    }
                }
            }
        }
        out.extend_from_slice(input);
    }

    /// The end of the message: a last line without its line ending.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.in_body {
            let line = std::mem::take(&mut self.line);
            if !line.is_empty() {
                self.header_line(line, out);
            }
            self.close_field(out);
        }
    }

    fn header_line(&mut self, line: Vec<u8>, out: &mut Vec<u8>) {
        if line == b"\r\n" || line == b"\n" {
            self.end_of_header(out);
            out.extend_from_slice(&line);
            return;
        }
        if !matches!(line.first(), Some(b' ' | b'\t')) {
            self.close_field(out);
            self.field = Open::Held(line);
            return;
        }
        match &mut self.field {
            Open::Held(field) if field.len() + line.len() <= HOLD_LIMIT => {
                field.extend_from_slice(&line);
            }
            Open::Held(field) => {
                if is_ar_field(field) {
                    self.removed += 1;
                    self.field = Open::Dropping;
                } else {
                    out.append(field);
                    out.extend_from_slice(&line);
                    self.field = Open::Passing;
                }
            }
            Open::Dropping => {}
            Open::Passing | Open::None => out.extend_from_slice(&line),
        }
    }

    fn end_of_header(&mut self, out: &mut Vec<u8>) {
        self.close_field(out);
        self.in_body = true;
    }

    /// Judges the held field: out if it is an A-R field of ours, else kept.
    fn close_field(&mut self, out: &mut Vec<u8>) {
        if let Open::Held(field) = std::mem::replace(&mut self.field, Open::None) {
            if is_ar_field(&field) && authserv_id(&field).is_some_and(|id| self.is_ours(id)) {
                self.removed += 1;
            } else {
                out.extend_from_slice(&field);
            }
        }
    }

    fn is_ours(&self, id: &[u8]) -> bool {
        let id = id.strip_suffix(b".").unwrap_or(id);
        id.eq_ignore_ascii_case(&self.id)
    }
}

/// Whether a (whole) header field is `Authentication-Results`: any case, white space (even
/// a line break, which a lax reader may unfold) allowed before the colon.
fn is_ar_field(field: &[u8]) -> bool {
    let Some(colon) = field.iter().position(|&b| b == b':') else {
        return false;
    };
    field[..colon].trim_ascii().eq_ignore_ascii_case(FIELD)
}

/// The authserv-id of a whole (unfolded or folded) A-R field: the first value after the
/// colon, past white space, line breaks and comments. `None` when there is none.
pub fn authserv_id(field: &[u8]) -> Option<&[u8]> {
    let colon = field.iter().position(|&b| b == b':')?;
    let rest = skip_cfws(&field[colon + 1..]);
    if let Some(quoted) = rest.strip_prefix(b"\"") {
        let end = quoted.iter().position(|&b| b == b'"')?;
        return Some(&quoted[..end]);
    }
    let end = rest
        .iter()
        .position(|&b| b.is_ascii_whitespace() || b == b';' || b == b'(')
        .unwrap_or(rest.len());
    (end > 0).then(|| &rest[..end])
}

/// Skips folding white space and (nested, escaped) comments.
fn skip_cfws(mut s: &[u8]) -> &[u8] {
    loop {
        s = s.trim_ascii_start();
        let Some(mut inner) = s.strip_prefix(b"(") else {
            return s;
        };
        let mut depth = 1;
        while depth > 0 {
            match inner.split_first() {
                None => return inner,
                Some((b'\\', tail)) => inner = tail.get(1..).unwrap_or_default(),
                Some((b'(', tail)) => {
                    depth += 1;
                    inner = tail;
                }
                Some((b')', tail)) => {
                    depth -= 1;
                    inner = tail;
                }
                Some((_, tail)) => inner = tail,
            }
        }
        s = inner;
    }
}

/// `msg` without the A-R fields claiming `authserv_id`; borrowed when there were none.
pub fn strip_authserv<'a>(msg: &'a [u8], authserv_id: &str) -> Cow<'a, [u8]> {
    let mut stripper = Stripper::new(authserv_id);
    let mut out = Vec::with_capacity(msg.len());
    stripper.feed(msg, &mut out);
    stripper.finish(&mut out);
    if stripper.removed() == 0 {
        Cow::Borrowed(msg)
    } else {
        Cow::Owned(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "mx.example.org";

    fn strip(msg: &str) -> String {
        String::from_utf8(strip_authserv(msg.as_bytes(), ID).into_owned()).expect("utf8")
    }

    #[test]
    fn ours_go_foreign_stay() {
        let msg = "Authentication-Results: mx.example.org; dkim=pass\r\n\
                   Subject: hi\r\n\
                   Authentication-Results: other.example; spf=pass\r\n\
                   authentication-results :  MX.Example.ORG. ; spf=pass\r\n\
                   \r\n\
                   Authentication-Results: mx.example.org; in the body\r\n";
        assert_eq!(
            strip(msg),
            "Subject: hi\r\n\
             Authentication-Results: other.example; spf=pass\r\n\
             \r\n\
             Authentication-Results: mx.example.org; in the body\r\n"
        );
    }

    #[test]
    fn folded_and_commented_ids_are_found() {
        let msg = "From: a@b.example\r\n\
                   Authentication-Results:\r\n\
                   \t(forged\r\n\
                   \t (nested \\) comment)) mx.example.org;\r\n\
                   \tdkim=pass header.d=bank.example\r\n\
                   Authentication-Results: \"mx.example.org\"; spf=pass\r\n\
                   Authentication-Results: mx.example.org.evil.example; spf=pass\r\n\
                   To: c@d.example\r\n\r\nbody\r\n";
        assert_eq!(
            strip(msg),
            "From: a@b.example\r\n\
             Authentication-Results: mx.example.org.evil.example; spf=pass\r\n\
             To: c@d.example\r\n\r\nbody\r\n"
        );
    }

    #[test]
    fn nothing_to_remove_is_borrowed() {
        let msg = b"Subject: x\r\n\r\nAuthentication-Results: mx.example.org; x\r\n";
        assert!(matches!(strip_authserv(msg, ID), Cow::Borrowed(_)));
        // No header/body split at all, and a last field without a line end.
        assert_eq!(
            strip("Subject: x\r\nAuthentication-Results: mx.example.org; x"),
            "Subject: x\r\n"
        );
        assert_eq!(strip(""), "");
    }

    #[test]
    fn any_chunking_gives_the_same_output() {
        let msg = b"Received: x\r\nAuthentication-Results: mx.example.org;\r\n spf=pass\r\n\
                    Authentication-Results: a.example; spf=fail\r\nSubject: s\r\n\r\nline\r\n";
        let whole = strip_authserv(msg, ID).into_owned();
        for size in 1..msg.len() {
            let mut s = Stripper::new(ID);
            let mut out = Vec::new();
            for chunk in msg.chunks(size) {
                s.feed(chunk, &mut out);
            }
            s.finish(&mut out);
            assert_eq!(out, whole, "chunks of {size}");
            assert_eq!(s.removed(), 1);
        }
    }

    #[test]
    fn authserv_id_parsing() {
        assert_eq!(
            authserv_id(b"Authentication-Results: a.example 1; none"),
            Some(&b"a.example"[..])
        );
        assert_eq!(authserv_id(b"Authentication-Results: (c)"), None);
        assert_eq!(authserv_id(b"Authentication-Results: (unclosed"), None);
        assert_eq!(authserv_id(b"Authentication-Results:"), None);
    }

    #[test]
    fn an_overlong_field_is_dropped_and_the_body_kept() {
        let mut msg = b"Authentication-Results: x.example;\r\n".to_vec();
        for _ in 0..2000 {
            msg.extend_from_slice(b" spf=pass smtp.mailfrom=someone@x.example\r\n");
        }
        msg.extend_from_slice(b"Subject: s\r\n\r\nbody\r\n");
        assert_eq!(
            strip_authserv(&msg, ID).as_ref(),
            b"Subject: s\r\n\r\nbody\r\n"
        );
    }
}
