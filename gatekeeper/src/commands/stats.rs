use std::path::Path;

use gatekeeper::{config::Config, maps::FilterMaps, stats};

pub fn stats(path: &Path, json: bool) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let maps = FilterMaps::open_pinned(&config.pin_dir)?;
    let all = stats::collect(&maps)?;
    if json {
        let list: Vec<_> = all.iter().map(stats::InterfaceStats::to_json).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "interfaces": list }))?
        );
    } else {
        print!("{}", stats::render(&all));
    }
    Ok(())
}
