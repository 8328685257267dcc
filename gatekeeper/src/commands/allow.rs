//! `gatekeeper allow add|remove|list`: allowlist edits applied to the live maps (when the filter
//! is loaded) and written back to the config file, under the config's edit lock.
//!
//! Order: for `add`, the live map first, then the file (the file write is the commit point; if it
//! fails the entry is taken back out of the map). For `remove`, the file first, then the map (if
//! the map refuses, the old file is put back). Either way, while an edit is under way, and if it is
//! cut short, the live allowlist holds at least what the file lists: a crash never locks out a
//! partner the file admits, and `gatekeeper status` shows any difference.

use std::{io::Write as _, path::Path, time::Duration};

use anyhow::{Context as _, anyhow};
use gatekeeper::{
    bpffs,
    config::{Config, parse_cidr},
    edit::{self, ConfigDocument, EditError, Streamed},
    lock,
    maps::FilterMaps,
};
use gatekeeper_support::{allowlist_edit::Edit, atomic::Staged};

use super::entry_rows::{self, Live};
use ipnet::IpNet;

/// How long an edit waits for another admin's edit to finish.
pub(super) const LOCK_WAIT: Duration = Duration::from_secs(10);

/// The config file, locked and read, validated as it is now (the full-document path).
struct Locked {
    text: String,
    doc: ConfigDocument,
}

fn read_whole(real: &Path, path: &Path) -> anyhow::Result<Locked> {
    let text = gatekeeper::config::read_text(real, path)?;
    Config::parse(&text, path).context(
        "the config file is not valid as it stands; fix it (`gatekeeper check`) before editing it with `gatekeeper allow`",
    )?;
    let doc = ConfigDocument::parse(&text, path)?;
    Ok(Locked { text, doc })
}

/// The edited file, ready to be put in place.
pub(super) enum NewFile {
    /// Streamed line by line into a staged temp file (the usual layout, any size); `old` is the
    /// replaced file, readable after the commit.
    Staged { staged: Staged, old: std::fs::File },
    /// Edited as a whole document (files the line scanner does not read).
    Text { new: String, old: String },
    /// An added entry written at the end of the file in place.
    Append(edit::append::Append),
}

impl NewFile {
    pub(super) fn commit(self, real: &Path) -> anyhow::Result<Restore> {
        Ok(match self {
            NewFile::Staged { staged, old } => {
                staged.commit()?;
                Restore::File(old)
            }
            NewFile::Text { new, old } => {
                edit::write_atomic(real, &new)?;
                Restore::Text(old)
            }
            NewFile::Append(append) => Restore::CutBack(append.commit(real)?),
        })
    }
}

/// How to put the old file back after a commit.
pub(super) enum Restore {
    File(std::fs::File),
    Text(String),
    CutBack(edit::append::CutBack),
}

impl Restore {
    pub(super) fn restore(self, real: &Path) -> anyhow::Result<()> {
        match self {
            Restore::File(mut old) => edit::restore(real, &mut old),
            Restore::Text(old) => edit::write_atomic(real, &old),
            Restore::CutBack(cut) => cut.restore(real),
        }
    }
}

/// Applies `change` to the file: streamed when the scanner reads the file, else as a whole
/// document. Returns the new file, the config's settings (for the pin directory) and the
/// warnings about the edited file.
fn prepare(
    real: &Path,
    path: &Path,
    change: Edit<'_>,
) -> anyhow::Result<(NewFile, Config, Vec<String>)> {
    if let Edit::Add { net, comment } = change {
        match edit::append::plan(real, path, net, comment)? {
            edit::append::Planned::Ready { append, config } => {
                let warnings = config.warnings_after_edit(1, Some(net));
                return Ok((NewFile::Append(append), *config, warnings));
            }
            edit::append::Planned::Duplicate => return Err(duplicate(net, path)),
            edit::append::Planned::Stream => {}
        }
    }
    match edit::stream(real, path, change)? {
        Streamed::Ready {
            staged,
            config,
            entries,
            old,
        } => {
            // The streamed config holds the settings only: its own warnings would call the
            // list empty.
            let added = match change {
                Edit::Add { net, .. } => Some(net),
                Edit::Remove { .. } => None,
            };
            let warnings = config.warnings_after_edit(entries, added);
            return Ok((NewFile::Staged { staged, old }, *config, warnings));
        }
        Streamed::Duplicate => {
            if let Edit::Add { net, .. } = change {
                return Err(duplicate(net, path));
            }
        }
        Streamed::Missing => {
            if let Edit::Remove { net } = change {
                return Err(EditError::Missing {
                    net,
                    path: path.to_path_buf(),
                    table: "allow",
                }
                .into());
            }
        }
        Streamed::Unusual => {}
    }
    let mut file = read_whole(real, path)?;
    match change {
        Edit::Add { net, comment } => file.doc.add(net, comment)?,
        Edit::Remove { net } => file.doc.remove(net)?,
    }
    let new = file.doc.text();
    let config = Config::parse(&new, path)
        .context("the edited config would not be valid; nothing changed")?;
    let warnings = config.warnings();
    Ok((
        NewFile::Text {
            new,
            old: file.text,
        },
        config,
        warnings,
    ))
}

fn duplicate(net: IpNet, path: &Path) -> anyhow::Error {
    EditError::Duplicate {
        net,
        path: path.to_path_buf(),
        table: "allow",
    }
    .into()
}

fn parse_net(cidr: &str) -> anyhow::Result<IpNet> {
    parse_cidr(cidr).map_err(|e| anyhow!("invalid allowlist entry: {e}"))
}

/// Edits one entry: an added IPv4 entry is appended to the file in place (see
/// [`edit::append`]), other edits stream the file, neither parses it whole, and the live maps see
/// one insert or removal (no read of the whole live state), so an edit costs the same at 10 and
/// at a million entries (at most a pass over the file's lines).
pub fn add(path: &Path, cidr: &str, comment: Option<&str>) -> anyhow::Result<()> {
    let net = parse_net(cidr)?;
    let real = edit::resolve(path)?;
    let _lock = lock::lock_config(&real, LOCK_WAIT)?;
    let (new_file, config, warnings) = prepare(&real, path, Edit::Add { net, comment })?;
    bpffs::require_pins_visible(&config.pin_dir)?;
    let mut warnings = warnings;
    warnings.extend(super::deny::shadowing_allow(&config, net));
    let mut live = FilterMaps::open_if_pinned(&config.pin_dir)?;
    let mut inserted = false;
    // The live DIR-24-8 tables may lack the blocks a short prefix over single hosts needs: the
    // file still takes the entry, and the daemon's reload grows the pool and applies it.
    let mut needs_pool = None;
    if let Some(maps) = live.as_mut()
        && !maps.contains(net)?
    {
        match maps.insert(net) {
            Ok(()) => inserted = true,
            Err(err) => match err.downcast_ref::<gatekeeper::dir24::OutOfBlocks>() {
                Some(short) => needs_pool = Some(short.blocks),
                None => return Err(err),
            },
        }
    }
    if let Err(err) = new_file.commit(&real) {
        if inserted && let Some(maps) = live.as_mut() {
            maps.remove(net).with_context(|| {
                format!("writing the config failed ({err:#}), and taking {net} back out of the live allowlist failed too; check `gatekeeper status`")
            })?;
        }
        return Err(err.context(format!(
            "{} not changed; the live allowlist is as before",
            path.display()
        )));
    }
    super::print_each(&warnings);
    if let Some(blocks) = needs_pool {
        println!(
            "added {net} to {}; not yet live: the live DIR-24-8 tables need more than their {blocks} second-level blocks for it, and the pool grows when the file is loaded ({})",
            path.display(),
            super::deny::applies(&config)
        );
        return Ok(());
    }
    match live {
        Some(_) => println!("added {net} to {} and to the live filter", path.display()),
        None => println!(
            "added {net} to {} (the filter is not loaded; it applies when `gatekeeper run` starts)",
            path.display()
        ),
    }
    Ok(())
}

pub fn remove(path: &Path, cidr: &str) -> anyhow::Result<()> {
    let net = parse_net(cidr)?;
    let real = edit::resolve(path)?;
    let _lock = lock::lock_config(&real, LOCK_WAIT)?;
    let (new_file, config, warnings) = prepare(&real, path, Edit::Remove { net })?;
    bpffs::require_pins_visible(&config.pin_dir)?;
    let mut live = FilterMaps::open_if_pinned(&config.pin_dir)?;
    // A network a DNS-derived entry admits too stays in the filter (the daemon keeps it there).
    let derived = gatekeeper::derived::listing::Derived::source_of(&config, net);
    let restore = new_file
        .commit(&real)
        .with_context(|| format!("{} not changed; nothing removed", path.display()))?;
    if let Some(maps) = live.as_mut().filter(|_| derived.is_none())
        && let Err(err) = maps.remove(net)
    {
        restore.restore(&real).with_context(|| {
            format!("removing {net} from the live allowlist failed ({err:#}), and restoring {} failed too; check `gatekeeper status`", path.display())
        })?;
        return Err(err.context(format!("{} restored; nothing removed", path.display())));
    }
    super::print_each(&warnings);
    if let Some(source) = derived {
        println!(
            "removed {net} from {}; the live filter keeps it: the derived entry {source} admits it too",
            path.display()
        );
        return Ok(());
    }
    match live {
        Some(_) => println!(
            "removed {net} from {} and from the live filter",
            path.display()
        ),
        None => println!(
            "removed {net} from {} (the filter is not loaded)",
            path.display()
        ),
    }
    Ok(())
}

/// Lists the config's entries in file order with their live hit counters, then live entries the
/// file lacks (see [`entry_rows`]).
pub fn list(path: &Path, json: bool) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    bpffs::require_pins_visible(&config.pin_dir)?;
    let live = Live::new(
        FilterMaps::open_if_pinned(&config.pin_dir)?
            .map(|maps| maps.entries())
            .transpose()?
            .map(|entries| entries.into_iter().map(|e| (e.net, e.hits)).collect()),
    );
    // The DNS-derived entries' networks, from the daemon's state file, and the fleet's, as
    // this host last applied them.
    let derived = gatekeeper::derived::listing::Derived::read(&config);
    let fleet = super::fleet::rows(
        &gatekeeper::fleet::saved(&config).allow,
        config.allow.nets(),
    );
    let file_nets = config.allow.sorted_nets();
    let wanted =
        derived.with(gatekeeper::fleet::merge_sorted(&file_nets, &fleet.nets).into_owned());

    let live_nets = live.nets();
    let rows = live.rows(
        entry_rows::tagged(
            config.allow.iter().map(|entry| (entry.net, entry.comment)),
            gatekeeper::fleet::SOURCE_FILE,
        )
        .chain(derived.rows())
        .chain(fleet.iter()),
        &wanted,
        &live_nets,
    );
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if json {
        entry_rows::write_json_head(&mut out, path, live.is_loaded())?;
        entry_rows::write_json(&mut out, rows)?;
        writeln!(out, "]}}")?;
        return Ok(out.flush()?);
    }
    entry_rows::write_table(&mut out, rows, "(live only: not in the config file)")?;
    derived.write_notes(&mut out)?;
    if !live.is_loaded() {
        writeln!(out, "(the filter is not loaded: no live hit counters)")?;
    }
    Ok(out.flush()?)
}
