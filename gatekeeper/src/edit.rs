//! Edits of `gatekeeper.toml` made by the admin CLI: allowlist entries added and removed with
//! `toml_edit`, so comments and layout survive, and the result written back atomically.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use ipnet::IpNet;
use toml_edit::{Array, ArrayOfTables, DocumentMut, InlineTable, Item, Table, Value, value};

use gatekeeper_support::{
    allowlist_edit::{self, Edit, Spliced},
    atomic::Staged,
};

use crate::config::{Config, parse_cidr};

pub mod append;

/// What the operator calls the entries of the array of tables `table`.
fn list_name(table: &str) -> &'static str {
    if table == "deny" {
        "deny list"
    } else {
        "allowlist"
    }
}

/// An edit that cannot be made; nothing was changed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EditError {
    #[error("{net} is already in the {} of {path}", list_name(.table))]
    Duplicate {
        net: IpNet,
        path: PathBuf,
        table: &'static str,
    },
    #[error("{net} is not in the {} of {path} (see `gatekeeper {table} list`)", list_name(.table))]
    Missing {
        net: IpNet,
        path: PathBuf,
        table: &'static str,
    },
    #[error("{path}: `{table}` is not a list of [[{table}]] tables; edit the file by hand")]
    Layout { path: PathBuf, table: &'static str },
    #[error("{path}: cannot parse as TOML: {message}")]
    Syntax { path: PathBuf, message: String },
}

/// The config file as a comment-preserving document.
pub struct ConfigDocument {
    path: PathBuf,
    doc: DocumentMut,
    /// The array of tables edited: `allow`, or `deny` (same keys).
    table: &'static str,
}

impl ConfigDocument {
    /// Parses `text`, read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<ConfigDocument, EditError> {
        Self::parse_for(text, path, "allow")
    }

    /// [`ConfigDocument::parse`] for edits of the `table` entries (`deny`).
    pub fn parse_for(
        text: &str,
        path: &Path,
        table: &'static str,
    ) -> Result<ConfigDocument, EditError> {
        let doc = text.parse::<DocumentMut>().map_err(|e| EditError::Syntax {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        })?;
        Ok(ConfigDocument {
            path: path.to_path_buf(),
            doc,
            table,
        })
    }

    /// The document as text.
    pub fn text(&self) -> String {
        self.doc.to_string()
    }

    /// Appends `[[allow]] cidr = NET, comment = TEXT` after the last entry.
    pub fn add(&mut self, net: IpNet, comment: Option<&str>) -> Result<(), EditError> {
        if self.position(net)?.is_some() {
            return Err(EditError::Duplicate {
                net,
                path: self.path.clone(),
                table: self.table,
            });
        }
        let layout = EditError::Layout {
            path: self.path.clone(),
            table: self.table,
        };
        let root = self.doc.as_table_mut();
        if !root.contains_key(self.table) {
            root.insert(self.table, Item::ArrayOfTables(ArrayOfTables::new()));
        }
        match root.get_mut(self.table) {
            Some(Item::ArrayOfTables(tables)) => {
                let mut table = Table::new();
                table.insert("cidr", value(net.to_string()));
                if let Some(comment) = comment {
                    table.insert("comment", value(comment));
                }
                // A blank line before each entry, as in the example config.
                table.decor_mut().set_prefix("\n");
                tables.push(table);
                Ok(())
            }
            Some(Item::Value(Value::Array(array))) => {
                let mut table = InlineTable::new();
                table.insert("cidr", net.to_string().into());
                if let Some(comment) = comment {
                    table.insert("comment", comment.into());
                }
                array.push(table);
                Ok(())
            }
            _ => Err(layout),
        }
    }

    /// Removes the entry for `net` (written either as a CIDR or, for a single host, as a bare
    /// address). Comment lines above the removed entry are kept: they move to the next entry (or
    /// the end of the file), since they may describe the whole list.
    pub fn remove(&mut self, net: IpNet) -> Result<(), EditError> {
        let Some(index) = self.position(net)? else {
            return Err(EditError::Missing {
                net,
                path: self.path.clone(),
                table: self.table,
            });
        };
        let mut orphaned: Option<String> = None;
        match self.doc.as_table_mut().get_mut(self.table) {
            Some(Item::ArrayOfTables(tables)) => {
                let prefix = tables
                    .get(index)
                    .and_then(|t| t.decor().prefix())
                    .and_then(|p| p.as_str())
                    .map(str::to_string)
                    .unwrap_or_default();
                tables.remove(index);
                if prefix.contains('#') {
                    match tables.get_mut(index) {
                        Some(next) => {
                            let next_prefix = next
                                .decor()
                                .prefix()
                                .and_then(|p| p.as_str())
                                .unwrap_or("")
                                .to_string();
                            next.decor_mut().set_prefix(format!(
                                "{prefix}{}",
                                next_prefix.trim_start_matches('\n')
                            ));
                        }
                        None => orphaned = Some(prefix),
                    }
                }
            }
            Some(Item::Value(Value::Array(array))) => {
                array.remove(index);
            }
            _ => {
                return Err(EditError::Layout {
                    path: self.path.clone(),
                    table: self.table,
                });
            }
        }
        if let Some(lines) = orphaned {
            let trailing = self.doc.trailing().as_str().unwrap_or("").to_string();
            self.doc.set_trailing(format!("{lines}{trailing}"));
        }
        if let Some(Item::ArrayOfTables(tables)) = self.doc.get(self.table)
            && tables.is_empty()
        {
            self.doc.as_table_mut().remove(self.table);
        }
        Ok(())
    }

    /// Index of the entry for `net`, if present.
    fn position(&self, net: IpNet) -> Result<Option<usize>, EditError> {
        let same = |cidr: Option<&str>| cidr.and_then(|c| parse_cidr(c).ok()) == Some(net);
        match self.doc.get(self.table) {
            None => Ok(None),
            Some(Item::ArrayOfTables(tables)) => Ok(tables
                .iter()
                .position(|t| same(t.get("cidr").and_then(Item::as_str)))),
            Some(Item::Value(Value::Array(array))) => Ok(inline_position(array, same)),
            Some(_) => Err(EditError::Layout {
                path: self.path.clone(),
                table: self.table,
            }),
        }
    }
}

fn inline_position(array: &Array, same: impl Fn(Option<&str>) -> bool) -> Option<usize> {
    array.iter().position(|v| {
        same(
            v.as_inline_table()
                .and_then(|t| t.get("cidr"))
                .and_then(Value::as_str),
        )
    })
}

/// An edit streamed into a staged new file ([`stream`]), not yet in place.
pub enum Streamed {
    /// The new file, to [`Staged::commit`], the settings of the file (its entries unread, so
    /// `config.allow` is empty), the number of entries in the new file, and the old file, still
    /// readable after the commit (to put it back, see [`restore`]).
    Ready {
        staged: Staged,
        config: Box<Config>,
        entries: usize,
        old: fs::File,
    },
    Duplicate,
    Missing,
    /// Not the layout the line scanner reads: edit the whole document ([`ConfigDocument`]).
    Unusual,
}

/// Applies `edit` to the config file `real` line by line (see
/// [`gatekeeper_support::allowlist_edit`]): a pass over the file, whatever the number of entries,
/// with every line outside the edited entry kept byte for byte. `path` names the file in
/// messages.
pub fn stream(real: &Path, path: &Path, edit: Edit<'_>) -> anyhow::Result<Streamed> {
    stream_in(real, path, allowlist_edit::ALLOW, edit)
}

/// [`stream`] for the array of tables `tables` (`[[deny]]`: the caller validated the whole file,
/// see [`allowlist_edit::Tables::copy_tail`]).
pub fn stream_in(
    real: &Path,
    path: &Path,
    tables: allowlist_edit::Tables,
    edit: Edit<'_>,
) -> anyhow::Result<Streamed> {
    let old = fs::File::open(real).with_context(|| format!("{}: cannot read", path.display()))?;
    let input = old.try_clone()?;
    let mut staged = gatekeeper_support::atomic::stage(real)
        .with_context(|| format!("{} not changed", path.display()))?;
    let mut config = None;
    let outcome = {
        let mut out = std::io::BufWriter::with_capacity(1 << 16, staged.file());
        let outcome = allowlist_edit::splice_in(input, &mut out, tables, edit, |head| {
            config = Config::parse(head, path).ok();
            config.as_ref().is_some_and(|c| c.allow.is_empty())
        });
        match outcome {
            // Invalid UTF-8 and the like: the full parse words it.
            Err(err) if err.kind() == std::io::ErrorKind::InvalidData => Spliced::Unusual,
            other => {
                let outcome =
                    other.with_context(|| format!("{}: cannot read or write", path.display()))?;
                std::io::Write::flush(&mut out)
                    .with_context(|| format!("{}: writing the new file", path.display()))?;
                outcome
            }
        }
    };
    Ok(match (outcome, config) {
        (Spliced::Done { entries, .. }, Some(config)) => Streamed::Ready {
            staged,
            config: Box::new(config),
            entries,
            old,
        },
        (Spliced::Duplicate, _) => Streamed::Duplicate,
        (Spliced::Missing, _) => Streamed::Missing,
        _ => Streamed::Unusual,
    })
}

/// Puts the contents of `old` (an open handle on the file an edit replaced) back at `real`,
/// atomically, as a new file with the current metadata.
pub fn restore(real: &Path, old: &mut fs::File) -> anyhow::Result<()> {
    use std::io::Seek as _;
    let mut staged = gatekeeper_support::atomic::stage(real)?;
    old.seek(std::io::SeekFrom::Start(0))?;
    std::io::copy(old, staged.file())
        .with_context(|| format!("{}: copying the old contents back", real.display()))?;
    Ok(staged.commit()?)
}

/// The file a path names, following symlinks, so an atomic replace writes the real file and
/// keeps the link. Anything but a regular file is refused before a lock file is made next to it.
pub fn resolve(path: &Path) -> anyhow::Result<PathBuf> {
    let real =
        fs::canonicalize(path).with_context(|| format!("{}: cannot resolve", path.display()))?;
    let meta = fs::metadata(&real).with_context(|| format!("{}: cannot read", path.display()))?;
    if meta.is_dir() {
        anyhow::bail!(
            "{} is a directory: --config names the config file (e.g. {})",
            path.display(),
            crate::config::DEFAULT_CONFIG_PATH
        );
    }
    if !meta.is_file() {
        anyhow::bail!("{} is not a regular file", path.display());
    }
    Ok(real)
}

/// Writes the config text back to `path` (the real file, see [`resolve`]) atomically, keeping
/// its mode, owner and group: readers and a crash see the old or the new file, never a mix.
pub fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    Ok(gatekeeper_support::atomic::replace(path, text.as_bytes())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "# gatekeeper.toml: who may talk SMTP to us\n\
interfaces = [\"eth0\"] # the DMZ side\n\
\n\
# Allowlist: partners only.\n\
[[allow]]\n\
cidr = \"198.51.100.0/24\"\n\
comment = \"partner\"\n\
\n\
[[allow]]\n\
cidr = \"203.0.113.25\" # backup MX\n";

    fn doc(text: &str) -> ConfigDocument {
        ConfigDocument::parse(text, Path::new("gk.toml")).expect("parses")
    }

    fn net(s: &str) -> IpNet {
        parse_cidr(s).expect("cidr")
    }

    #[test]
    fn add_appends_an_entry_and_keeps_comments_and_layout() {
        let mut d = doc(EXAMPLE);
        d.add(net("192.0.2.0/24"), Some("new partner \"quoted\""))
            .expect("added");
        let text = d.text();
        assert!(text.starts_with(EXAMPLE), "{text}");
        assert_eq!(
            &text[EXAMPLE.len()..],
            "\n[[allow]]\ncidr = \"192.0.2.0/24\"\ncomment = 'new partner \"quoted\"'\n"
        );
        let config = crate::config::Config::parse(&text, Path::new("gk.toml")).expect("valid");
        assert_eq!(config.allow.len(), 3);
        assert_eq!(config.allow.comment(2), Some("new partner \"quoted\""));
    }

    #[test]
    fn add_to_a_file_without_entries() {
        let mut d = doc("interfaces = [\"eth0\"]\n");
        d.add(net("2001:db8::/32"), None).expect("added");
        assert_eq!(
            d.text(),
            "interfaces = [\"eth0\"]\n\n[[allow]]\ncidr = \"2001:db8::/32\"\n"
        );
        let mut d = doc("interfaces = [\"eth0\"]\nallow = [{ cidr = \"192.0.2.1\" }]\n");
        d.add(net("192.0.2.2"), Some("x")).expect("added inline");
        let config = crate::config::Config::parse(&d.text(), Path::new("gk.toml")).expect("valid");
        assert_eq!(config.allow.len(), 2);
    }

    #[test]
    fn duplicates_are_refused_also_in_another_spelling() {
        let mut d = doc(EXAMPLE);
        let err = d.add(net("203.0.113.25/32"), None).expect_err("duplicate");
        assert_eq!(
            err.to_string(),
            "203.0.113.25/32 is already in the allowlist of gk.toml"
        );
        assert_eq!(d.text(), EXAMPLE);
    }

    #[test]
    fn remove_takes_the_entry_and_keeps_other_comments() {
        let mut d = doc(EXAMPLE);
        d.remove(net("198.51.100.0/24")).expect("removed");
        let text = d.text();
        assert!(
            text.contains("# gatekeeper.toml: who may talk SMTP to us\n"),
            "{text}"
        );
        assert!(text.contains("# the DMZ side"), "{text}");
        assert!(
            text.contains(
                "# Allowlist: partners only.\n[[allow]]\ncidr = \"203.0.113.25\" # backup MX"
            ),
            "{text}"
        );
        assert!(!text.contains("198.51.100.0"), "{text}");
        // The bare address matches its /32.
        d.remove(net("203.0.113.25/32")).expect("removed");
        let text = d.text();
        assert!(text.contains("# Allowlist: partners only."), "{text}");
        let config = crate::config::Config::parse(&text, Path::new("gk.toml")).expect("valid");
        assert!(config.allow.is_empty());
    }

    #[test]
    fn removing_a_missing_entry_is_an_error_and_changes_nothing() {
        let mut d = doc(EXAMPLE);
        let err = d.remove(net("192.0.2.0/24")).expect_err("missing");
        assert!(matches!(err, EditError::Missing { .. }));
        assert!(
            err.to_string()
                .starts_with("192.0.2.0/24 is not in the allowlist of gk.toml")
        );
        assert_eq!(d.text(), EXAMPLE);
    }

    #[test]
    fn odd_layouts_are_refused() {
        let mut d = doc("interfaces = [\"eth0\"]\nallow = 3\n");
        assert!(matches!(
            d.add(net("192.0.2.0/24"), None),
            Err(EditError::Layout { .. })
        ));
        assert!(matches!(
            ConfigDocument::parse("interfaces = [", Path::new("gk.toml")),
            Err(EditError::Syntax { .. })
        ));
    }

    /// The streamed edit, or None when it hands the file to the full-document path.
    fn streamed(text: &str, edit: Edit<'_>) -> Option<String> {
        let mut out = Vec::new();
        match allowlist_edit::splice(text.as_bytes(), &mut out, edit, |head| {
            Config::parse(head, Path::new("gk.toml")).is_ok_and(|c| c.allow.is_empty())
        })
        .expect("io")
        {
            Spliced::Done { .. } => Some(String::from_utf8(out).expect("utf-8")),
            _ => None,
        }
    }

    #[test]
    fn dns_derived_entries_are_copied_by_both_editors() {
        let text = "interfaces = [\"eth0\"]\n[dns]\nnameservers = [\"127.0.0.1:53\"]\n\n[[allow]]\nspf = \"partner.example\"\ncomment = \"p\"\n\n[[allow]]\ncidr = \"198.51.100.0/24\"\n";
        let add = Edit::Add {
            net: net("192.0.2.0/24"),
            comment: None,
        };
        let streamed_add = streamed(text, add).expect("the scanner reads spf entries");
        let mut d = doc(text);
        d.add(net("192.0.2.0/24"), None).expect("add");
        assert_eq!(streamed_add, d.text());
        let config = Config::parse(&streamed_add, Path::new("gk.toml")).expect("valid");
        assert_eq!(config.derived.len(), 1);
        assert_eq!(config.allow.len(), 2);
        let remove = Edit::Remove {
            net: net("198.51.100.0/24"),
        };
        let streamed_remove = streamed(text, remove).expect("streamed");
        assert!(streamed_remove.contains("spf = \"partner.example\""));
        assert!(!streamed_remove.contains("198.51.100.0/24"));
        // A table with both a cidr and spf is the full parser's to refuse.
        let both =
            "interfaces = [\"eth0\"]\n[[allow]]\nspf = \"p.example\"\ncidr = \"192.0.2.1\"\n";
        assert_eq!(streamed(both, add), None);
    }

    #[test]
    fn streamed_edits_write_what_the_document_editor_writes() {
        let layouts = [
            EXAMPLE.to_string(),
            format!("{EXAMPLE}\n# trailing note\n"),
            "interfaces = [\"eth0\"]\n[[allow]]\ncidr = \"198.51.100.0/24\"".to_string(),
            "interfaces = [\"eth0\"]\n\n[[allow]]\ncidr = \"198.51.100.0/24\"\n\n\n[[allow]]\ncidr = \"203.0.113.25\"\n# end\n\n".to_string(),
        ];
        for text in &layouts {
            let config = Config::parse(text, Path::new("gk.toml")).expect("valid");
            for comment in [None, Some("new partner \"quoted\""), Some("plain")] {
                let mut d = doc(text);
                d.add(net("192.0.2.0/24"), comment).expect("add");
                let streamed = streamed(
                    text,
                    Edit::Add {
                        net: net("192.0.2.0/24"),
                        comment,
                    },
                );
                assert_eq!(
                    streamed.as_deref(),
                    Some(d.text().as_str()),
                    "add to {text:?}"
                );
            }
            for entry in config.allow.nets() {
                let mut d = doc(text);
                d.remove(*entry).expect("remove");
                let streamed = streamed(text, Edit::Remove { net: *entry });
                assert_eq!(
                    streamed.as_deref(),
                    Some(d.text().as_str()),
                    "remove {entry} from {text:?}"
                );
            }
        }
        // Where toml_edit rewrites (CRLF to LF, `[[ allow ]]` to `[[allow]]`), the stream keeps
        // every byte outside the edited entry, and new lines end as the file's do.
        let crlf = "interfaces = [\"eth0\"]\r\n\r\n# partners\r\n[[allow]]\r\ncidr = \"198.51.100.0/24\" # a\r\n\r\n  # about b\r\n[[ allow ]]\r\n# inside\r\ncomment = 'b'\r\ncidr=\"203.0.113.25\"\r\n";
        let added = streamed(
            crlf,
            Edit::Add {
                net: net("192.0.2.0/24"),
                comment: None,
            },
        )
        .expect("streamed");
        assert_eq!(
            added,
            format!("{crlf}\r\n[[allow]]\r\ncidr = \"192.0.2.0/24\"\r\n")
        );
        let removed = streamed(
            crlf,
            Edit::Remove {
                net: net("198.51.100.0/24"),
            },
        )
        .expect("streamed");
        assert_eq!(
            removed,
            "interfaces = [\"eth0\"]\r\n\r\n# partners\r\n\r\n  # about b\r\n[[ allow ]]\r\n# inside\r\ncomment = 'b'\r\ncidr=\"203.0.113.25\"\r\n"
        );
    }
}
