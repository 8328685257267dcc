//! `gatekeeper ban add|remove|list`: bans in the pinned maps (when the filter is loaded) and in
//! the ban state file, through the one ban store the daemon also uses (under `bans.lock`).

use std::{io::Write as _, path::Path, time::Duration};

use anyhow::Context as _;
use gatekeeper::{
    bans::{
        self,
        clock::Now,
        duration,
        request::overlapping,
        store::{BanStore, NewBan, PutError, parse_ban_source},
    },
    bpffs,
    config::Config,
    maps::FilterMaps,
    rules::BanMaps,
};

/// The config, and the ban store with the live maps when the filter is loaded.
fn open(path: &Path) -> anyhow::Result<(Config, BanStore<BanMaps>)> {
    let config = Config::load(path)?;
    bpffs::require_pins_visible(&config.pin_dir)?;
    let maps = if FilterMaps::is_pinned(&config.pin_dir) {
        Some(BanMaps::open_pinned(
            &config.pin_dir,
            bans::v6_prefix(&config),
        )?)
    } else {
        None
    };
    let store = BanStore::lock(&config.bans.state, maps, bans::max_bans(&config))?;
    Ok((config, store))
}

/// Who asks, for the file and the daemon's log.
fn cli_requester() -> String {
    // SAFETY: getuid cannot fail.
    format!("cli uid={}", unsafe { libc::getuid() })
}

pub fn add(path: &Path, addr: &str, duration: Duration, reason: &str) -> anyhow::Result<()> {
    let (config, mut store) = open(path)?;
    let source = parse_ban_source(addr, bans::v6_prefix(&config))?;
    if let Some(entry) = overlapping(&config.bans.never_ban, source) {
        anyhow::bail!(
            "{source} is in never_ban ({entry}): not banned (take it out of never_ban first if you mean it)"
        );
    }
    if let Some(entry) = overlapping(config.allow.nets(), source) {
        eprintln!(
            "gatekeeper: warning: {source} is covered by the allow entry {entry}: the ban wins (ban > deny > allow) while it lasts"
        );
    }
    let added = store
        .add(NewBan {
            source,
            duration,
            reason: bans::request::clean_reason(reason),
            by: cli_requester(),
        })
        .map_err(|err| match err {
            PutError::Full { .. } => anyhow::anyhow!("{err}: {source} was not banned"),
            PutError::Other(err) => err,
        })?;
    let left = duration::format(Now::read().left(added.until_unix));
    let verb = if added.extended {
        "banned (extended)"
    } else {
        "banned"
    };
    match added.live {
        true => println!(
            "{verb} {source} for {left} (live, and in {})",
            config.bans.state.display()
        ),
        false => println!(
            "{verb} {source} for {left} in {} (the filter is not loaded; it applies when `gatekeeper run` starts)",
            config.bans.state.display()
        ),
    }
    Ok(())
}

pub fn remove(path: &Path, addr: &str) -> anyhow::Result<()> {
    let (config, mut store) = open(path)?;
    let source = parse_ban_source(addr, bans::v6_prefix(&config))?;
    if !store.remove(source)? {
        anyhow::bail!("{source} is not banned (see `gatekeeper ban list`)");
    }
    println!("lifted the ban of {source}");
    Ok(())
}

pub fn list(path: &Path, json: bool) -> anyhow::Result<()> {
    let (config, store) = open(path)?;
    let listed = store.list().context("reading the bans")?;
    let now = Now::read();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if json {
        let bans: Vec<_> = listed
            .iter()
            .map(|b| {
                serde_json::json!({
                    "source": b.source.to_string(),
                    "until_unix": b.until_unix,
                    "left_secs": now.left(b.until_unix).as_secs(),
                    "reason": b.reason,
                    "by": b.by,
                    "live": store.is_live().then_some(b.live.is_some()),
                    "hits": b.live.map(|l| l.hits),
                })
            })
            .collect();
        serde_json::to_writer(
            &mut out,
            &serde_json::json!({
                "state": config.bans.state.display().to_string(),
                "loaded": store.is_live(),
                "bans": bans,
            }),
        )?;
        writeln!(out)?;
        return Ok(out.flush()?);
    }
    writeln!(
        out,
        "{:<44} {:>14} {:>10}  REASON",
        "SOURCE", "LEFT", "HITS"
    )?;
    for ban in &listed {
        let hits = match (store.is_live(), ban.live) {
            (true, Some(live)) => live.hits.to_string(),
            (true, None) => "NOT LIVE".into(),
            (false, _) => "-".into(),
        };
        let reason = ban
            .reason
            .as_deref()
            .unwrap_or("(live only: not in the state file)");
        writeln!(
            out,
            "{:<44} {:>14} {hits:>10}  {reason}",
            ban.source.to_string(),
            duration::format(now.left(ban.until_unix)),
        )?;
    }
    if !store.is_live() {
        writeln!(out, "(the filter is not loaded: no live hit counters)")?;
    }
    Ok(out.flush()?)
}
