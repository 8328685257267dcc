//! RFC 5321 paths (`<local@domain>`) and the one question the relay policy
//! asks of them: is this plainly a mailbox in one of our local domains?
//!
//! Anything that is not plainly `dot-atom@local-domain` is *external*: the
//! percent hack, bang paths, quoted local parts, source routes, address
//! literals and trailing dots all name some other host to a naive next hop,
//! so an unauthenticated client may not use them (that is how open relays
//! happen).

use std::fmt;

/// Longest path we accept (RFC 5321 4.5.3.1.3: 256 octets including `<>`).
pub const MAX_PATH: usize = 256;
const MAX_LOCAL_PART: usize = 64;
const MAX_DOMAIN: usize = 255;

/// Why a path was refused. Callers branch on it: non-ASCII gets `553 5.6.7`,
/// the rest `501 5.1.3`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("non-ASCII address without SMTPUTF8")]
    NonAscii,
    #[error("bad address syntax: {0}")]
    Syntax(&'static str),
}

/// The domain part of a mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Domain {
    /// A host name as written (case preserved); `trailing_dot` is a root dot
    /// the client appended (`example.org.`), kept so we pass on what we got.
    Name { name: String, trailing_dot: bool },
    /// An address literal such as `[192.0.2.1]` or `[IPv6:::1]`, brackets included.
    Literal(String),
}

/// `local-part@domain`, syntax-checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    /// As written; a quoted local part keeps its quotes.
    pub local_part: String,
    pub quoted: bool,
    pub domain: Domain,
}

/// A reverse-path or forward-path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Path {
    /// `<>`: the null reverse-path of bounces.
    Null,
    /// `<Postmaster>` without a domain (RCPT only, RFC 5321 4.5.1).
    Postmaster,
    Mailbox {
        mailbox: Mailbox,
        /// `<@a,@b:user@c>`: an obsolete source route was present.
        source_route: bool,
    },
}

/// Where a recipient goes, as far as relay policy is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Local,
    External,
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local_part, self.domain)
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Domain::Name { name, trailing_dot } => {
                write!(f, "{name}{}", if *trailing_dot { "." } else { "" })
            }
            Domain::Literal(lit) => f.write_str(lit),
        }
    }
}

impl Mailbox {
    /// `Some("local@domain")` with the domain lowercased when the mailbox is
    /// in plain form (dot-atom local part without `%` or `!`, a host name
    /// without trailing dot); `None` for every trick.
    pub fn plain_form(&self) -> Option<String> {
        if self.quoted || self.local_part.contains(['%', '!']) {
            return None;
        }
        match &self.domain {
            Domain::Name {
                name,
                trailing_dot: false,
            } => Some(format!("{}@{}", self.local_part, name.to_ascii_lowercase())),
            _ => None,
        }
    }

    /// The lowercased domain when the mailbox is in plain form.
    fn plain_domain(&self) -> Option<String> {
        self.plain_form()
            .and_then(|p| p.rsplit_once('@').map(|(_, d)| d.to_owned()))
    }
}

impl Path {
    /// Local only when plainly `local-part@local-domain` (or `<Postmaster>`);
    /// `local_domains` must be lowercase. Everything else is external.
    pub fn classify(&self, local_domains: &[String]) -> Class {
        match self {
            Path::Postmaster => Class::Local,
            Path::Mailbox {
                mailbox,
                source_route: false,
            } => match mailbox.plain_domain() {
                Some(d) if local_domains.contains(&d) => Class::Local,
                _ => Class::External,
            },
            _ => Class::External,
        }
    }

    /// The address to store in the envelope (source route dropped, as RFC
    /// 5321 4.1.1.3 asks); empty for the null path.
    pub fn address(&self, postmaster_domain: &str) -> String {
        match self {
            Path::Null => String::new(),
            Path::Postmaster => format!("postmaster@{postmaster_domain}"),
            Path::Mailbox { mailbox, .. } => mailbox.to_string(),
        }
    }
}

/// Parses a path at the start of `s` (which begins with `<`). Returns the
/// path and the rest of the input (ESMTP parameters).
pub fn parse_path(s: &str) -> Result<(Path, &str), AddressError> {
    if !s.is_ascii() {
        // Only the path itself matters, but non-ASCII anywhere in MAIL/RCPT
        // means the client wants SMTPUTF8, which we do not offer.
        return Err(AddressError::NonAscii);
    }
    let inner_start = s
        .strip_prefix('<')
        .ok_or(AddressError::Syntax("path must start with <"))?;
    let end = closing_bracket(inner_start).ok_or(AddressError::Syntax("missing >"))?;
    let inner = &inner_start[..end];
    let rest = &inner_start[end + 1..];
    if inner.len() + 2 > MAX_PATH {
        return Err(AddressError::Syntax("path too long"));
    }
    if inner.is_empty() {
        return Ok((Path::Null, rest));
    }
    if inner.eq_ignore_ascii_case("postmaster") {
        return Ok((Path::Postmaster, rest));
    }
    let (source_route, mailbox) = match inner.strip_prefix('@') {
        Some(_) => {
            let colon = route_end(inner).ok_or(AddressError::Syntax("bad source route"))?;
            check_route(&inner[..colon])?;
            (true, &inner[colon + 1..])
        }
        None => (false, inner),
    };
    Ok((
        Path::Mailbox {
            mailbox: parse_mailbox(mailbox)?,
            source_route,
        },
        rest,
    ))
}

/// Parses a bare `local@domain` (no angle brackets), as used in the config.
pub fn parse_mailbox(s: &str) -> Result<Mailbox, AddressError> {
    if !s.is_ascii() {
        return Err(AddressError::NonAscii);
    }
    let (local_part, quoted, domain) = if s.starts_with('"') {
        let close = quoted_end(s).ok_or(AddressError::Syntax("unterminated quoted string"))?;
        let domain = s[close + 1..]
            .strip_prefix('@')
            .ok_or(AddressError::Syntax("missing @"))?;
        (&s[..=close], true, domain)
    } else {
        let (local, domain) = s.split_once('@').ok_or(AddressError::Syntax("missing @"))?;
        if !is_dot_string(local) {
            return Err(AddressError::Syntax("bad local part"));
        }
        (local, false, domain)
    };
    if local_part.len() > MAX_LOCAL_PART {
        return Err(AddressError::Syntax("local part too long"));
    }
    Ok(Mailbox {
        local_part: local_part.to_owned(),
        quoted,
        domain: parse_domain(domain)?,
    })
}

fn parse_domain(s: &str) -> Result<Domain, AddressError> {
    if s.len() > MAX_DOMAIN {
        return Err(AddressError::Syntax("domain too long"));
    }
    if let Some(inner) = s.strip_prefix('[') {
        let body = inner
            .strip_suffix(']')
            .ok_or(AddressError::Syntax("bad address literal"))?;
        let ok = !body.is_empty()
            && body
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'[' && b != b']' && b != b'\\');
        return if ok {
            Ok(Domain::Literal(s.to_owned()))
        } else {
            Err(AddressError::Syntax("bad address literal"))
        };
    }
    let (name, trailing_dot) = match s.strip_suffix('.') {
        Some(n) => (n, true),
        None => (s, false),
    };
    if is_host_name(name) {
        Ok(Domain::Name {
            name: name.to_owned(),
            trailing_dot,
        })
    } else {
        Err(AddressError::Syntax("bad domain"))
    }
}

/// Dot-separated labels of letters, digits and inner hyphens.
pub fn is_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_DOMAIN
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b)
}

fn is_dot_string(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|a| !a.is_empty() && a.bytes().all(is_atext))
}

/// Index of the closing `"` of a quoted string starting at 0.
fn quoted_end(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            c if c < 0x20 || c == 0x7f => return None,
            _ => i += 1,
        }
    }
    None
}

/// Index of the `>` that closes the path, skipping quoted strings.
fn closing_bracket(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut in_quotes = false;
    while i < b.len() {
        match (b[i], in_quotes) {
            (b'\\', true) => i += 1,
            (b'"', _) => in_quotes = !in_quotes,
            (b'>', false) => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

/// Index of the `:` ending a source route `@a,@b:`.
fn route_end(s: &str) -> Option<usize> {
    s.find(':')
}

fn check_route(route: &str) -> Result<(), AddressError> {
    for hop in route.split(',') {
        let d = hop
            .strip_prefix('@')
            .ok_or(AddressError::Syntax("bad source route"))?;
        parse_domain(d)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> Vec<String> {
        vec!["example.org".into(), "mail.example.net".into()]
    }

    fn class(p: &str) -> Result<Class, AddressError> {
        parse_path(p).map(|(path, _)| path.classify(&local()))
    }

    #[test]
    fn plain_local_addresses_are_local_case_insensitively() {
        assert_eq!(class("<alice@example.org>"), Ok(Class::Local));
        assert_eq!(class("<Alice.B@EXAMPLE.Org>"), Ok(Class::Local));
        assert_eq!(class("<x+tag@mail.example.net>"), Ok(Class::Local));
        assert_eq!(class("<postmaster>"), Ok(Class::Local));
        assert_eq!(class("<PostMaster>"), Ok(Class::Local));
    }

    #[test]
    fn other_domains_are_external() {
        assert_eq!(class("<bob@other.example>"), Ok(Class::External));
        // A subdomain or a suffix of a local domain is not local.
        assert_eq!(class("<bob@sub.example.org>"), Ok(Class::External));
        assert_eq!(class("<bob@badexample.org>"), Ok(Class::External));
        assert_eq!(class("<bob@example.org.evil>"), Ok(Class::External));
    }

    #[test]
    fn every_relay_trick_is_external() {
        for trick in [
            "<user%other.example@example.org>",
            "<other.example!user@example.org>",
            "<\"user@other.example\"@example.org>",
            "<\"user\"@example.org>",
            "<\"user%other.example\"@example.org>",
            "<@example.org,@relay.example:user@example.org>",
            "<@example.org:user@other.example>",
            "<user@[192.0.2.1]>",
            "<user@[IPv6:2001:db8::1]>",
            "<user@example.org.>",
            "<user@EXAMPLE.ORG.>",
        ] {
            assert_eq!(class(trick), Ok(Class::External), "{trick}");
        }
    }

    #[test]
    fn malformed_paths_are_refused() {
        for bad in [
            "alice@example.org",
            "<alice@example.org",
            "<alice>",
            "<alice@>",
            "<@example.org>",
            "<a..b@example.org>",
            "<.a@example.org>",
            "<a@b@example.org>",
            "<a@-x.example>",
            "<a@exa_mple.org>",
            "<a@example..org>",
            "<\"unterminated@example.org>",
            "<a b@example.org>",
            "<a@[]>",
        ] {
            assert!(
                matches!(parse_path(bad), Err(AddressError::Syntax(_))),
                "{bad}"
            );
        }
        let long = format!("<{}@example.org>", "a".repeat(65));
        assert!(parse_path(&long).is_err());
    }

    #[test]
    fn non_ascii_is_refused_not_passed_on() {
        assert_eq!(
            parse_path("<jörg@example.org>"),
            Err(AddressError::NonAscii)
        );
        assert_eq!(parse_path("<a@exämple.org>"), Err(AddressError::NonAscii));
    }

    #[test]
    fn rest_and_stored_address() {
        let (p, rest) = parse_path("<a@Example.ORG> SIZE=10").expect("parses");
        assert_eq!(rest, " SIZE=10");
        assert_eq!(p.address("example.org"), "a@Example.ORG");
        let (p, _) = parse_path("<\"a>b\"@x.example>").expect("quoted > ok");
        assert_eq!(p.address("example.org"), "\"a>b\"@x.example");
        let (p, _) = parse_path("<@r.example:u@x.example>").expect("route ok");
        assert_eq!(p.address("example.org"), "u@x.example");
        let (p, _) = parse_path("<>").expect("null ok");
        assert_eq!(p, Path::Null);
        assert_eq!(
            Path::Postmaster.address("example.org"),
            "postmaster@example.org"
        );
    }

    #[test]
    fn plain_form_normalises_domain_only() {
        let m = parse_mailbox("Alice@Example.ORG").expect("parses");
        assert_eq!(m.plain_form().as_deref(), Some("Alice@example.org"));
        let m = parse_mailbox("a%b@example.org").expect("parses");
        assert_eq!(m.plain_form(), None);
    }
}
