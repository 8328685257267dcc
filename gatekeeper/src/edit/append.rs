//! `allow add` written at the end of the config file in place (see
//! [`gatekeeper_support::allowlist_append`]): one entry written and synced instead of a
//! million-entry file copied, synced and renamed.
//!
//! A write of a few dozen bytes at the end of a file is all or nothing for its readers and,
//! after a crash, on the usual filesystems (ext4 and XFS write the data before the new size).
//! Readers that matter take the edit lock the caller holds (the daemon's reload); the others
//! see the old file or the new one, as with a rename. A failed write or sync is cut back off.

use std::{
    fs,
    os::unix::fs::{FileExt as _, MetadataExt as _},
    path::Path,
};

use anyhow::{Context as _, bail};
use gatekeeper_support::allowlist_append::{self, Appending};
use ipnet::IpNet;

use crate::config::Config;

/// An entry ready to go at the end of the file.
pub struct Append {
    file: fs::File,
    /// The file's length when it was read: where the entry goes.
    at: u64,
    entry: String,
}

/// What [`plan`] found.
pub enum Planned {
    /// The entry to write, and the settings of the file (its entries unread, so `config.allow`
    /// is empty).
    Ready {
        append: Append,
        config: Box<Config>,
    },
    Duplicate,
    /// Not a file or a network the in-place path handles: stream the edit.
    Stream,
}

/// Plans adding `net` to the config file `real` in place; `path` names it in messages.
pub fn plan(
    real: &Path,
    path: &Path,
    net: IpNet,
    comment: Option<&str>,
) -> anyhow::Result<Planned> {
    // In place needs the file writable (a rename needs its directory): otherwise stream.
    let Ok(file) = fs::OpenOptions::new().read(true).write(true).open(real) else {
        return Ok(Planned::Stream);
    };
    // SAFETY: the mapping is only read. A file cut shorter while it is mapped would make the
    // read fault; the edits of this CLI take the edit lock the caller holds, and editors and
    // config management save by a rename, which leaves the mapping on the old file.
    let text = unsafe { memmap2::MmapOptions::new().populate().map(&file) }
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let mut config = None;
    let planned = allowlist_append::plan(&text, net, comment, |head| {
        config = Config::parse(head, path).ok();
        config.as_ref().is_some_and(|c| c.allow.is_empty())
    });
    Ok(match (planned, config) {
        (Appending::At { entry, .. }, Some(config)) => Planned::Ready {
            append: Append {
                file,
                at: text.len() as u64,
                entry,
            },
            config: Box::new(config),
        },
        (Appending::Duplicate, _) => Planned::Duplicate,
        _ => Planned::Stream,
    })
}

impl Append {
    /// Writes the entry and syncs it; the result cuts it off again.
    pub fn commit(self, real: &Path) -> anyhow::Result<CutBack> {
        let ours = self.file.metadata()?;
        let named = fs::metadata(real)?;
        if (named.dev(), named.ino()) != (ours.dev(), ours.ino()) || ours.len() != self.at {
            bail!(
                "{} changed while it was edited (by a program that does not take the edit lock); nothing written",
                real.display()
            );
        }
        let written = self
            .file
            .write_all_at(self.entry.as_bytes(), self.at)
            .and_then(|()| self.file.sync_data());
        let cut = CutBack {
            file: self.file,
            len: self.at,
        };
        if let Err(err) = written {
            let err = anyhow::Error::new(err).context(format!("writing to {}", real.display()));
            return Err(match cut.restore(real) {
                Ok(()) => err,
                Err(cut_err) => err.context(format!(
                    "cutting the partial entry off failed too: {cut_err:#}"
                )),
            });
        }
        Ok(cut)
    }
}

/// The file as it was before an [`Append`]: its old length.
pub struct CutBack {
    file: fs::File,
    len: u64,
}

impl CutBack {
    pub fn restore(self, real: &Path) -> anyhow::Result<()> {
        self.file
            .set_len(self.len)
            .and_then(|()| self.file.sync_data())
            .with_context(|| format!("{}: cutting the added entry off", real.display()))
    }
}
