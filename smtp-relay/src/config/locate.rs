//! Config errors that name `FILE:LINE:COLUMN`, the key and the value as
//! written, the way the gatekeeper reports its own config errors.
//!
//! Validation works on plain deserialized values and names the offending key
//! by its path (`listener[2].role`); only when an error is reported is the
//! text parsed again with `toml_edit` to find where that key sits. The happy
//! path pays nothing for positions.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use gatekeeper_support::gatekeeper_config::line_column;
use toml_edit::{ImDocument, Item, Table, Value};

/// Keys whose values are never repeated in an error (they may hold a
/// password pasted in the wrong place).
const SECRET_KEYS: &[&str] = &["password_hash"];

/// At most this many characters of a value are quoted in an error.
const MAX_SHOWN: usize = 80;

/// One step of a key path: a key of a table, or an index in an array (of
/// tables or of values).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(&'static str),
    Index(usize),
}

/// Where a value is in the config: `hostname`, `listener[2].role`,
/// `delivery.route[0].host`. The empty path is the whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(Vec<Step>);

impl KeyPath {
    /// The whole file.
    pub fn root() -> KeyPath {
        KeyPath::default()
    }

    /// `self.key`.
    pub fn key(&self, key: &'static str) -> KeyPath {
        let mut steps = self.0.clone();
        steps.push(Step::Key(key));
        KeyPath(steps)
    }

    /// `self[index]`.
    pub fn index(&self, index: usize) -> KeyPath {
        let mut steps = self.0.clone();
        steps.push(Step::Index(index));
        KeyPath(steps)
    }

    fn is_secret(&self) -> bool {
        matches!(self.0.last(), Some(Step::Key(k)) if SECRET_KEYS.contains(k))
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, step) in self.0.iter().enumerate() {
            match step {
                Step::Key(key) if i == 0 => write!(f, "{key}")?,
                Step::Key(key) => write!(f, ".{key}")?,
                Step::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// A value that parsed but is refused, named by its key path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {message}")]
pub struct Invalid {
    pub at: KeyPath,
    pub message: String,
}

impl Invalid {
    pub fn new(at: KeyPath, message: impl Into<String>) -> Invalid {
        Invalid {
            at,
            message: message.into(),
        }
    }

    /// An error from elsewhere (a file the key names, a TLS load) about
    /// the value at `at`, with its whole context chain.
    pub fn from_error(at: KeyPath, error: &anyhow::Error) -> Invalid {
        Invalid::new(at, format!("{error:#}"))
    }
}

/// Why a config was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key, a value of the wrong type or form:
    /// toml's own message, which quotes the line.
    #[error("{}:{line}:{column}: invalid config: {message}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// A well-formed value that is refused.
    #[error("{}:{line}:{column}: {}{message}", path.display(), subject(key, value))]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        /// Empty for an error about the whole file (a missing key).
        key: KeyPath,
        /// The value as written, when the key is in the file and not secret.
        value: Option<String>,
        message: String,
    },
}

impl ConfigError {
    /// A deserialization error from the `toml` crate, at its span.
    pub fn syntax(path: &Path, text: &str, error: &toml::de::Error) -> ConfigError {
        let (line, column) = line_column(text, error.span().map_or(0, |s| s.start));
        ConfigError::Syntax {
            path: path.to_owned(),
            line,
            column,
            message: error.to_string().trim_end().to_owned(),
        }
    }

    /// `invalid`, at the value its key names (or, for a key left out, at
    /// the nearest table that is there).
    pub fn invalid(path: &Path, text: &str, invalid: Invalid) -> ConfigError {
        let found = find(text, &invalid.at);
        let (line, column) = line_column(text, found.as_ref().map_or(0, |f| f.span.start));
        let value = found
            .filter(|f| f.exact && f.is_value && !invalid.at.is_secret())
            .and_then(|f| text.get(f.span))
            .map(shown);
        ConfigError::Invalid {
            path: path.to_owned(),
            line,
            column,
            key: invalid.at,
            value,
            message: invalid.message,
        }
    }
}

/// `key = value: `, `key: ` (left out or secret), or nothing (the file).
fn subject(key: &KeyPath, value: &Option<String>) -> String {
    match value {
        _ if key.0.is_empty() => String::new(),
        Some(value) => format!("{key} = {value}: "),
        None => format!("{key}: "),
    }
}

/// A value as written, on one line and bounded.
fn shown(raw: &str) -> String {
    let first = raw.lines().next().unwrap_or_default();
    let mut out: String = first.chars().take(MAX_SHOWN).collect();
    if out.len() < raw.len() {
        out.push_str(" ...");
    }
    out
}

struct Found {
    span: Range<usize>,
    /// The whole path is in the file (not only a table on the way).
    exact: bool,
    /// A value, not a table header.
    is_value: bool,
}

/// A place in the parsed document: arrays of tables hold `Table`s, tables
/// hold `Item`s, arrays and inline tables hold `Value`s.
#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a Item),
    Table(&'a Table),
    Value(&'a Value),
}

impl<'a> Node<'a> {
    fn child(self, step: &Step) -> Option<Node<'a>> {
        match (self, step) {
            (Node::Item(Item::Table(table)) | Node::Table(table), Step::Key(key)) => {
                table.get(key).map(Node::Item)
            }
            (Node::Item(Item::ArrayOfTables(tables)), Step::Index(i)) => {
                tables.get(*i).map(Node::Table)
            }
            (Node::Item(Item::Value(value)) | Node::Value(value), Step::Key(key)) => {
                value.as_inline_table()?.get(key).map(Node::Value)
            }
            (Node::Item(Item::Value(value)) | Node::Value(value), Step::Index(i)) => {
                value.as_array()?.get(*i).map(Node::Value)
            }
            _ => None,
        }
    }

    fn span(self) -> Option<Range<usize>> {
        match self {
            Node::Item(Item::Value(value)) | Node::Value(value) => value.span(),
            Node::Item(item) => item.span(),
            Node::Table(table) => table.span(),
        }
    }

    fn is_value(self) -> bool {
        matches!(self, Node::Item(Item::Value(_)) | Node::Value(_))
    }
}

/// The span of the value at `at`, or of the deepest table on the way that is
/// in the file. `None` when the text does not parse or nothing has a span.
fn find(text: &str, at: &KeyPath) -> Option<Found> {
    let doc = ImDocument::parse(text).ok()?;
    let mut node = Node::Item(doc.as_item());
    let mut best = None;
    for (depth, step) in at.0.iter().enumerate() {
        let Some(next) = node.child(step) else {
            break;
        };
        if let Some(span) = next.span() {
            best = Some(Found {
                span,
                exact: depth + 1 == at.0.len(),
                is_value: next.is_value(),
            });
        }
        node = next;
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "hostname = \"mx\"\n\
                        [tls]\n\
                        cert = \"c.pem\"\n\
                        [[listener]]\n\
                        address = \"0.0.0.0:25\"\n\
                        [[listener]]\n\
                        role = \"relay\"\n\
                        allow = [\"10.0.0.0/8\", \"bad\"]\n\
                        [delivery.smarthost]\n\
                        host = \"h\"\n\
                        [[user]]\n\
                        password_hash = \"hunter2\"\n";

    fn at(path: KeyPath) -> String {
        ConfigError::invalid(Path::new("r.toml"), TEXT, Invalid::new(path, "refused")).to_string()
    }

    #[test]
    fn values_are_found_by_key_path() {
        let root = KeyPath::root();
        assert_eq!(
            at(root.key("hostname")),
            "r.toml:1:12: hostname = \"mx\": refused"
        );
        assert_eq!(
            at(root.key("tls").key("cert")),
            "r.toml:3:8: tls.cert = \"c.pem\": refused"
        );
        let second = root.key("listener").index(1);
        assert_eq!(
            at(second.key("role")),
            "r.toml:7:8: listener[1].role = \"relay\": refused"
        );
        assert_eq!(
            at(second.key("allow").index(1)),
            "r.toml:8:24: listener[1].allow[1] = \"bad\": refused"
        );
        assert_eq!(
            at(root.key("delivery").key("smarthost").key("host")),
            "r.toml:10:8: delivery.smarthost.host = \"h\": refused"
        );
    }

    #[test]
    fn a_key_left_out_points_at_its_table() {
        let root = KeyPath::root();
        // listener[0] has no allow: its [[listener]] header.
        assert_eq!(
            at(root.key("listener").index(0).key("allow")),
            "r.toml:4:1: listener[0].allow: refused"
        );
        assert_eq!(at(root.key("spool_dir")), "r.toml:1:1: spool_dir: refused");
        assert_eq!(at(root), "r.toml:1:1: refused");
    }

    #[test]
    fn secrets_are_not_repeated() {
        let e = at(KeyPath::root().key("user").index(0).key("password_hash"));
        assert_eq!(e, "r.toml:12:17: user[0].password_hash: refused");
        assert!(!e.contains("hunter2"));
    }

    #[test]
    fn long_values_are_cut() {
        assert_eq!(shown(&"x".repeat(200)).len(), MAX_SHOWN + 4);
        assert_eq!(shown("[\"a\",\n\"b\"]"), "[\"a\", ...");
        assert_eq!(line_column("ab\ncé\nx", 7), (3, 1));
        assert_eq!(line_column("ab\ncéz", 6), (2, 3));
    }
}
