//! `gatekeeper allow add|remove|list`: allowlist edits applied to the live maps (when the filter
//! is loaded) and written back to the config file, under the config's edit lock.
//!
//! Order: for `add`, the live map first, then the file (the file write is the commit point; if it
//! fails the entry is taken back out of the map). For `remove`, the file first, then the map (if
//! the map refuses, the old file is put back). Either way, while an edit is under way, and if it is
//! cut short, the live allowlist holds at least what the file lists: a crash never locks out a
//! partner the file admits, and `gatekeeper status` shows any difference.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, anyhow};
use gatekeeper::{
    bpffs,
    config::{Config, parse_cidr},
    edit::{self, ConfigDocument},
    lock,
    maps::FilterMaps,
};
use ipnet::IpNet;

/// How long an edit waits for another admin's edit to finish.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// The config file, locked and read, validated as it is now.
struct Locked {
    _lock: lock::Lock,
    real: std::path::PathBuf,
    text: String,
    doc: ConfigDocument,
}

fn open(path: &Path) -> anyhow::Result<Locked> {
    let real = edit::resolve(path)?;
    let lock = lock::lock_config(&real, LOCK_WAIT)?;
    let text = gatekeeper::config::read_text(&real, path)?;
    Config::parse(&text, path).context(
        "the config file is not valid as it stands; fix it (`gatekeeper check`) before editing it with `gatekeeper allow`",
    )?;
    let doc = ConfigDocument::parse(&text, path)?;
    Ok(Locked {
        _lock: lock,
        real,
        text,
        doc,
    })
}

fn parse_net(cidr: &str) -> anyhow::Result<IpNet> {
    parse_cidr(cidr).map_err(|e| anyhow!("invalid allowlist entry: {e}"))
}

pub fn add(path: &Path, cidr: &str, comment: Option<&str>) -> anyhow::Result<()> {
    let net = parse_net(cidr)?;
    let mut file = open(path)?;
    file.doc.add(net, comment)?;
    let new_text = file.doc.text();
    let config = Config::parse(&new_text, path)
        .context("the edited config would not be valid; nothing changed")?;
    bpffs::require_pins_visible(&config.pin_dir)?;
    let mut live = FilterMaps::open_if_pinned(&config.pin_dir)?;
    let mut inserted = false;
    if let Some(maps) = live.as_mut()
        && !maps.contains(net)?
    {
        maps.insert(net)?;
        inserted = true;
    }
    if let Err(err) = edit::write_atomic(&file.real, &new_text) {
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
    super::print_warnings(&config);
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
    let mut file = open(path)?;
    file.doc.remove(net)?;
    let new_text = file.doc.text();
    let config = Config::parse(&new_text, path)
        .context("the edited config would not be valid; nothing changed")?;
    bpffs::require_pins_visible(&config.pin_dir)?;
    let mut live = FilterMaps::open_if_pinned(&config.pin_dir)?;
    edit::write_atomic(&file.real, &new_text)
        .with_context(|| format!("{} not changed; nothing removed", path.display()))?;
    if let Some(maps) = live.as_mut()
        && let Err(err) = maps.remove(net)
    {
        edit::write_atomic(&file.real, &file.text).with_context(|| {
            format!("removing {net} from the live allowlist failed ({err:#}), and restoring {} failed too; check `gatekeeper status`", path.display())
        })?;
        return Err(err.context(format!("{} restored; nothing removed", path.display())));
    }
    super::print_warnings(&config);
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

pub fn list(path: &Path, json: bool) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    bpffs::require_pins_visible(&config.pin_dir)?;
    let live = FilterMaps::open_if_pinned(&config.pin_dir)?
        .map(|maps| maps.entries())
        .transpose()?;
    let mut rows: Vec<serde_json::Value> = Vec::new();
    for entry in &config.allow {
        let hits = live
            .as_ref()
            .map(|l| l.iter().find(|e| e.net == entry.net).map(|e| e.hits));
        rows.push(serde_json::json!({
            "cidr": entry.net.to_string(),
            "comment": entry.comment,
            "in_config": true,
            "live": hits.map(|h| h.is_some()),
            "hits": hits.flatten(),
        }));
    }
    for entry in live.iter().flatten() {
        if !config.allow.iter().any(|a| a.net == entry.net) {
            rows.push(serde_json::json!({
                "cidr": entry.net.to_string(),
                "comment": null,
                "in_config": false,
                "live": true,
                "hits": entry.hits,
            }));
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "config": path.display().to_string(),
                "loaded": live.is_some(),
                "entries": rows,
            }))?
        );
        return Ok(());
    }
    println!("{:<44} {:>12}  COMMENT", "CIDR", "HITS");
    for row in &rows {
        let cidr = row["cidr"].as_str().unwrap_or("");
        let hits = match (&row["hits"], &row["live"]) {
            (serde_json::Value::Number(n), _) => n.to_string(),
            (_, serde_json::Value::Bool(false)) => "NOT LIVE".into(),
            _ => "-".into(),
        };
        let comment = if row["in_config"] == false {
            "(live only: not in the config file)"
        } else {
            row["comment"].as_str().unwrap_or("")
        };
        println!("{cidr:<44} {hits:>12}  {comment}");
    }
    if live.is_none() {
        println!("(the filter is not loaded: no live hit counters)");
    }
    Ok(())
}
