//! `gatekeeper deny add|remove|list`: `[[deny]]` entries edited in the config file like the
//! allowlist (comments kept, atomic replace, under the config's edit lock). The kernel's deny set
//! is the union of these entries and the deny feeds, so only the daemon writes it (its reload of
//! the file, within a second): a CLI that took an entry out of the kernel could remove a network
//! a feed still lists.

use std::{io::Write as _, path::Path};

use anyhow::{Context as _, anyhow};
use gatekeeper::{
    bans::request::overlapping,
    bpffs,
    config::{Config, parse_cidr},
    deny_feed,
    edit::{self, ConfigDocument, EditError, Streamed},
    lock,
    maps::FilterMaps,
    rules::{BanMaps, DenyMaps},
};
use gatekeeper_support::allowlist_edit::{self, Edit};
use ipnet::IpNet;

use super::{
    allow::{LOCK_WAIT, NewFile},
    entry_rows::{self, Live},
};

/// At most this many overlapping entries are named in a warning; the rest are counted.
const NAMED_OVERLAPS: usize = 5;

fn parse_net(cidr: &str) -> anyhow::Result<IpNet> {
    parse_cidr(cidr).map_err(|e| anyhow!("invalid deny entry: {e}"))
}

/// Reads and validates the whole file (a `[[deny]]` edit may put the first entry before the
/// `[[allow]]` tables, which it then copies unread: they must be valid already), checks the
/// edit against its entries and makes the new file.
fn prepare(real: &Path, path: &Path, change: Edit<'_>) -> anyhow::Result<(NewFile, Config)> {
    let text = gatekeeper::config::read_text(real, path)?;
    let config = Config::parse(&text, path).context(
        "the config file is not valid as it stands; fix it (`gatekeeper check`) before editing it with `gatekeeper deny`",
    )?;
    match change {
        Edit::Add { net, .. } if config.deny.nets().contains(&net) => {
            return Err(EditError::Duplicate {
                net,
                path: path.to_path_buf(),
                table: "deny",
            }
            .into());
        }
        Edit::Remove { net } if !config.deny.nets().contains(&net) => {
            return Err(EditError::Missing {
                net,
                path: path.to_path_buf(),
                table: "deny",
            }
            .into());
        }
        _ => {}
    }
    let expected = match change {
        Edit::Add { .. } => config.deny.len() + 1,
        Edit::Remove { .. } => config.deny.len() - 1,
    };
    // The stream counts the entries it saw: fewer than the file has means it stopped at the
    // first other table (`[[port]]`) and would have split the `[[deny]]` tables around it; the
    // document editor puts the entry after the others instead.
    if let Streamed::Ready {
        staged,
        old,
        entries,
        ..
    } = edit::stream_in(real, path, allowlist_edit::DENY, change)?
        && entries == expected
    {
        return Ok((NewFile::Staged { staged, old }, config));
    }
    let mut doc = ConfigDocument::parse_for(&text, path, "deny")?;
    match change {
        Edit::Add { net, comment } => doc.add(net, comment)?,
        Edit::Remove { net } => doc.remove(net)?,
    }
    let new = doc.text();
    Config::parse(&new, path).context("the edited config would not be valid; nothing changed")?;
    Ok((NewFile::Text { new, old: text }, config))
}

/// "applies when …": what happens next to a file-only change.
pub(super) fn applies(config: &Config) -> &'static str {
    if FilterMaps::is_pinned(&config.pin_dir) {
        "the running daemon applies it when it reloads the file (within a second); a stopped one at `gatekeeper run`"
    } else {
        "the filter is not loaded; it applies when `gatekeeper run` starts"
    }
}

pub fn add(path: &Path, cidr: &str, comment: Option<&str>) -> anyhow::Result<()> {
    let net = parse_net(cidr)?;
    let real = edit::resolve(path)?;
    let _lock = lock::lock_config(&real, LOCK_WAIT)?;
    let (new_file, config) = prepare(&real, path, Edit::Add { net, comment })?;
    bpffs::require_pins_visible(&config.pin_dir)?;
    new_file
        .commit(&real)
        .with_context(|| format!("{} not changed", path.display()))?;
    super::print_each(&shadowed_allow(&config, net));
    println!(
        "added {net} to the deny list of {} ({})",
        path.display(),
        applies(&config)
    );
    Ok(())
}

pub fn remove(path: &Path, cidr: &str) -> anyhow::Result<()> {
    let net = parse_net(cidr)?;
    let real = edit::resolve(path)?;
    let _lock = lock::lock_config(&real, LOCK_WAIT)?;
    let (new_file, config) = prepare(&real, path, Edit::Remove { net })?;
    bpffs::require_pins_visible(&config.pin_dir)?;
    new_file
        .commit(&real)
        .with_context(|| format!("{} not changed", path.display()))?;
    let feeds: Vec<String> = config
        .deny_feeds
        .iter()
        .filter(|feed| deny_feed::load(feed).nets.contains(&net))
        .map(|feed| feed.display().to_string())
        .collect();
    if !feeds.is_empty() {
        super::print_each(&[format!(
            "{net} is still denied: the deny feed {} lists it",
            feeds.join(", ")
        )]);
    }
    println!(
        "removed {net} from the deny list of {} ({})",
        path.display(),
        applies(&config)
    );
    Ok(())
}

/// "a, b, c and 4 more"
fn named(nets: &[IpNet]) -> String {
    let shown: Vec<String> = nets
        .iter()
        .take(NAMED_OVERLAPS)
        .map(IpNet::to_string)
        .collect();
    match nets.len().saturating_sub(NAMED_OVERLAPS) {
        0 => shown.join(", "),
        more => format!("{} and {more} more", shown.join(", ")),
    }
}

/// Whether the two networks share an address.
fn overlaps(a: IpNet, b: IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The warning for a new deny entry `net` over allow entries: deny wins.
fn shadowed_allow(config: &Config, net: IpNet) -> Vec<String> {
    let covered: Vec<IpNet> = config
        .allow
        .nets()
        .iter()
        .copied()
        .filter(|allow| overlaps(*allow, net))
        .collect();
    if covered.is_empty() {
        return Vec::new();
    }
    vec![format!(
        "{net} overlaps the allow entr{} {}: deny wins over allow (ban > deny > allow), so those sources are dropped on every judged port",
        if covered.len() == 1 { "y" } else { "ies" },
        named(&covered)
    )]
}

/// The warnings for a new allow entry `net` that a deny entry, a deny feed or a live ban
/// overrides (ban > deny > allow). Feeds are read and bans listed here: an admin's edit, not a
/// hot path.
pub(super) fn shadowing_allow(config: &Config, net: IpNet) -> Vec<String> {
    let mut warnings = Vec::new();
    if let Some(deny) = overlapping(config.deny.nets(), net) {
        warnings.push(format!(
            "{net} overlaps the deny entry {deny}: deny wins over allow, so those sources stay dropped"
        ));
    }
    for feed in &config.deny_feeds {
        if let Some(deny) = overlapping(&deny_feed::load(feed).nets, net) {
            warnings.push(format!(
                "{net} overlaps {deny} in the deny feed {}: deny wins over allow, so those sources stay dropped",
                feed.display()
            ));
        }
    }
    let bans = FilterMaps::is_pinned(&config.pin_dir)
        .then(|| BanMaps::open_pinned(&config.pin_dir, config.ban_ipv6_prefix))
        .and_then(Result::ok)
        .and_then(|maps| maps.list().ok())
        .unwrap_or_default();
    let banned: Vec<IpNet> = bans
        .iter()
        .map(|ban| ban.source)
        .filter(|source| overlaps(*source, net))
        .collect();
    if !banned.is_empty() {
        warnings.push(format!(
            "{net} covers the banned source{} {}: a ban wins over allow until it ends (`gatekeeper ban remove` lifts it)",
            if banned.len() == 1 { "" } else { "s" },
            named(&banned)
        ));
    }
    warnings
}

/// A deny feed as `deny list` and `status` report it: read from its file now.
pub struct FeedSummary {
    pub path: String,
    pub entries: usize,
    pub bad_lines: usize,
    pub unreadable: Option<String>,
}

/// Every feed of `config`, read now, and their networks (sorted, deduplicated).
pub fn read_feeds(config: &Config) -> (Vec<FeedSummary>, Vec<IpNet>) {
    let mut all = Vec::new();
    let summaries = config
        .deny_feeds
        .iter()
        .map(|path| {
            let feed = deny_feed::load(path);
            let summary = FeedSummary {
                path: path.display().to_string(),
                entries: feed.nets.len(),
                bad_lines: feed.bad_lines.len(),
                unreadable: feed.unreadable,
            };
            all.extend(feed.nets);
            summary
        })
        .collect();
    all.sort_unstable();
    all.dedup();
    (summaries, all)
}

/// Lists the `[[deny]]` entries in file order with their live hit counters, the feeds with
/// their counts, and live entries neither lists (left by an earlier config, until the daemon's
/// next sync).
pub fn list(path: &Path, json: bool) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    bpffs::require_pins_visible(&config.pin_dir)?;
    let live = Live::new(if FilterMaps::is_pinned(&config.pin_dir) {
        let entries = DenyMaps::open_pinned(&config.pin_dir)?.entries()?;
        Some(entries.into_iter().map(|e| (e.net, e.hits)).collect())
    } else {
        None
    });
    let (feeds, feed_nets) = read_feeds(&config);
    let fleet = super::fleet::rows(&gatekeeper::fleet::saved(&config).deny, config.deny.nets());
    let feed_nets = gatekeeper::fleet::merge_sorted(&feed_nets, &fleet.nets);
    let wanted = gatekeeper::sync::wanted_deny(&config.deny.sorted_nets(), &feed_nets);
    let live_nets = live.nets();
    let rows = live.rows(
        entry_rows::tagged(
            config.deny.iter().map(|entry| (entry.net, entry.comment)),
            gatekeeper::fleet::SOURCE_FILE,
        )
        .chain(fleet.iter()),
        &wanted,
        &live_nets,
    );
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if json {
        entry_rows::write_json_head(&mut out, path, live.is_loaded())?;
        entry_rows::write_json(&mut out, rows)?;
        out.write_all(b"],\"feeds\":[")?;
        for (i, feed) in feeds.iter().enumerate() {
            if i > 0 {
                out.write_all(b",")?;
            }
            serde_json::to_writer(
                &mut out,
                &serde_json::json!({
                    "path": feed.path,
                    "entries": feed.entries,
                    "bad_lines": feed.bad_lines,
                    "unreadable": feed.unreadable,
                }),
            )?;
        }
        writeln!(out, "]}}")?;
        return Ok(out.flush()?);
    }
    entry_rows::write_table(
        &mut out,
        rows,
        "(live only: in neither the config file nor a feed)",
    )?;
    for feed in &feeds {
        match &feed.unreadable {
            Some(why) => writeln!(
                out,
                "feed {}: unreadable, counts as empty ({why})",
                feed.path
            )?,
            None => writeln!(
                out,
                "feed {}: {} networks, {} bad lines skipped",
                feed.path, feed.entries, feed.bad_lines
            )?,
        }
    }
    if !live.is_loaded() {
        writeln!(out, "(the filter is not loaded: no live hit counters)")?;
    }
    Ok(out.flush()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Applies one edit to `text` in a temp file through [`prepare`]; the new text.
    fn edited(text: &str, change: Edit<'_>) -> String {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("gk.toml");
        std::fs::write(&path, text).expect("write");
        let (new_file, _) = prepare(&path, &path, change).expect("prepared");
        new_file.commit(&path).expect("committed");
        std::fs::read_to_string(&path).expect("read")
    }

    fn net(s: &str) -> IpNet {
        parse_cidr(s).expect("cidr")
    }

    #[test]
    fn entries_are_added_after_the_others_and_removed_with_comments_kept() {
        let head = "interfaces = [\"eth0\"]\n";
        let port = "\n[[port]]\nnumber = 25\npolicy = \"open\"\n";
        let allow = "\n# partners\n[[allow]]\ncidr = \"198.51.100.0/24\"\n";
        // The first entry goes before the other tables.
        let first = edited(
            &format!("{head}{port}{allow}"),
            Edit::Add {
                net: net("203.0.113.0/28"),
                comment: Some("hijacked"),
            },
        );
        assert_eq!(
            first,
            format!(
                "{head}\n[[deny]]\ncidr = \"203.0.113.0/28\"\ncomment = \"hijacked\"\n{port}{allow}"
            )
        );
        // Deny tables after a [[port]] table: the new one joins them, not split before [[port]].
        let deny = "\n# ours\n[[deny]]\ncidr = \"203.0.113.0/28\"\n";
        let text = format!("{head}{port}{deny}{allow}");
        let second = edited(
            &text,
            Edit::Add {
                net: net("192.0.2.0/24"),
                comment: None,
            },
        );
        let config = Config::parse(&second, Path::new("gk.toml")).expect("valid");
        assert_eq!(
            config.deny.nets(),
            [net("203.0.113.0/28"), net("192.0.2.0/24")]
        );
        assert!(
            second.find("[[port]]") < second.find("[[deny]]"),
            "{second}"
        );
        assert!(second.contains("# ours\n[[deny]]"), "{second}");
        let removed = edited(
            &second,
            Edit::Remove {
                net: net("203.0.113.0/28"),
            },
        );
        let config = Config::parse(&removed, Path::new("gk.toml")).expect("valid");
        assert_eq!(config.deny.nets(), [net("192.0.2.0/24")]);
        assert!(removed.contains("# partners\n[[allow]]"), "{removed}");
    }

    #[test]
    fn duplicates_and_missing_entries_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("gk.toml");
        std::fs::write(
            &path,
            "interfaces = [\"eth0\"]\n[[deny]]\ncidr = \"203.0.113.0/28\"\n",
        )
        .expect("write");
        let dup = prepare(
            &path,
            &path,
            Edit::Add {
                net: net("203.0.113.0/28"),
                comment: None,
            },
        )
        .err()
        .expect("duplicate");
        assert!(
            dup.to_string().contains("is already in the deny list"),
            "{dup}"
        );
        let missing = prepare(
            &path,
            &path,
            Edit::Remove {
                net: net("192.0.2.0/24"),
            },
        )
        .err()
        .expect("missing");
        assert!(
            missing.to_string().contains("is not in the deny list"),
            "{missing}"
        );
    }

    #[test]
    fn a_deny_entry_over_allow_entries_warns() {
        let config = Config::parse(
            "interfaces = [\"eth0\"]\n[[allow]]\ncidr = \"198.51.100.0/24\"\n[[allow]]\ncidr = \"192.0.2.1\"\n",
            Path::new("gk.toml"),
        )
        .expect("valid");
        let warnings = shadowed_allow(&config, net("198.51.100.128/25"));
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("198.51.100.0/24"), "{warnings:?}");
        assert!(warnings[0].contains("deny wins"), "{warnings:?}");
        assert!(shadowed_allow(&config, net("203.0.113.0/24")).is_empty());
    }
}
