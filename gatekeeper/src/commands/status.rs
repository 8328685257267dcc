//! `gatekeeper status [--json]`: what is attached where and how, the policy and allowlist in
//! force, and whether the live maps match the config file (with the difference if not).

use std::path::Path;

use aya::programs::links::{FdLink, PinnedLink};
use gatekeeper::{
    bpffs,
    config::Config,
    filter::{self, link_pin_path},
    lock,
    maps::FilterMaps,
    netlink,
    policy::Policy,
    rules::DenyMaps,
    sync::{self, sorted_difference},
};
use gatekeeper_support::allowlist::sort_nets;
use ipnet::IpNet;
use serde_json::{Value, json};

use super::join_ports;

/// What `status` found, as monitoring wants it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Loaded, attached everywhere the config says, live maps match the file.
    AsConfigured,
    /// Loaded, but not what the file says.
    Differs,
    /// Nothing pinned: no filter.
    NotLoaded,
}

impl Health {
    pub fn exit_code(self) -> std::process::ExitCode {
        std::process::ExitCode::from(match self {
            Health::AsConfigured => 0,
            Health::Differs => 2,
            Health::NotLoaded => 3,
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            Health::AsConfigured => "as_configured",
            Health::Differs => "differs",
            Health::NotLoaded => "not_loaded",
        }
    }
}

pub fn status(path: &Path, json_out: bool) -> anyhow::Result<Health> {
    let config = Config::load(path)?;
    let dir = &config.pin_dir;
    // "Not loaded" only from a process that can see the pins.
    let daemon_running = bpffs::pin_dir_visible(dir)? && lock::try_lock_pin_dir(dir)?.is_none();
    let maps = FilterMaps::open_if_pinned(dir)?;
    // Both sides as sorted lists, compared in one merge (keys only from the kernel): the file's
    // list sorted on a second thread while this one reads the kernel's.
    let (wanted, live) = std::thread::scope(|scope| -> anyhow::Result<_> {
        let sorting = scope.spawn(|| config.allow.sorted_nets());
        let live = match &maps {
            Some(maps) => {
                let mut entries = maps.nets()?;
                sort_nets(&mut entries);
                Some((maps.policy()?, entries))
            }
            None => None,
        };
        let wanted = sorting
            .join()
            .map_err(|_| anyhow::anyhow!("sorting the allowlist failed"))?;
        // The fleet's entries (as this host last saved them) are wanted too.
        let fleet = gatekeeper::fleet::saved(&config).extra();
        let wanted = gatekeeper::fleet::merge_sorted(&wanted, &fleet.allow).into_owned();
        Ok((wanted, live))
    })?;
    // The DNS-derived entries are wanted too: their networks as the daemon's state file has them.
    let derived = gatekeeper::derived::listing::Derived::read(&config);
    let wanted = if derived.is_empty() {
        wanted
    } else {
        derived.with(wanted)
    };

    let mut names: Vec<String> = config.interfaces.clone();
    for iface in filter::pinned_link_ifaces(dir)? {
        if !names.contains(&iface) {
            names.push(iface);
        }
    }
    let interfaces: Vec<Value> = names.iter().map(|i| interface(dir, i, &config)).collect();

    let wanted_policy = Policy::of(&config);
    let counts = |set: &[IpNet]| {
        let v4 = set.iter().filter(|n| n.addr().is_ipv4()).count();
        json!({ "ipv4": v4, "ipv6": set.len() - v4 })
    };
    let (in_sync, difference) = match &live {
        None => (Value::Null, Value::Null),
        Some((policy, entries)) => {
            let missing: Vec<String> = sorted_difference(&wanted, entries)
                .map(|n| n.to_string())
                .collect();
            let extra: Vec<String> = sorted_difference(entries, &wanted)
                .map(|n| n.to_string())
                .collect();
            let policy_differs = !same_policy(policy, &wanted_policy);
            (
                Value::Bool(missing.is_empty() && extra.is_empty() && !policy_differs),
                json!({
                    "missing_from_live": missing,
                    "live_not_in_config": extra,
                    "policy_differs": policy_differs,
                }),
            )
        }
    };
    let deny = deny_report(&config, maps.is_some());
    let all_attached = interfaces
        .iter()
        .filter(|i| i["configured"] == true)
        .all(|i| i["attached"] == true);
    let health = match &in_sync {
        Value::Null => Health::NotLoaded,
        Value::Bool(true) if all_attached && deny["in_sync"] != false => Health::AsConfigured,
        _ => Health::Differs,
    };
    let report = json!({
        "health": health.as_str(),
        "config": path.display().to_string(),
        "pin_dir": dir.display().to_string(),
        "loaded": maps.is_some(),
        "daemon_running": daemon_running,
        "interfaces": interfaces,
        "config_policy": { "mode": wanted_policy.mode.to_string(), "ports": wanted_policy.ports },
        "live_policy": live.as_ref().map(|(p, _)| json!({ "mode": p.mode.to_string(), "ports": p.ports })),
        "config_entries": counts(&wanted),
        "live_entries": live.as_ref().map(|(_, e)| counts(e)),
        "in_sync": in_sync,
        "difference": difference,
        "deny": deny,
        "derived": derived.json(),
    });
    if json_out {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!(
            "{}",
            render(&report, &config, live.as_ref().map(|(p, _)| p))
        );
    }
    Ok(health)
}

/// The deny list: the config's entries, every feed (read now: networks, bad lines), the live
/// entries and whether they are the union of both (the daemon syncs it on every reload and feed
/// change).
fn deny_report(config: &Config, loaded: bool) -> Value {
    let (feeds, feed_nets) = super::deny::read_feeds(config);
    let fleet = gatekeeper::fleet::saved(config).extra();
    let feed_nets = gatekeeper::fleet::merge_sorted(&feed_nets, &fleet.deny);
    let wanted = sync::wanted_deny(&config.deny.sorted_nets(), &feed_nets);
    let live = loaded
        .then(|| DenyMaps::open_pinned(&config.pin_dir).and_then(|d| d.nets()))
        .and_then(Result::ok)
        .map(|mut nets| {
            nets.sort_unstable();
            nets
        });
    let (in_sync, missing, extra) = match &live {
        Some(live) => {
            let missing = sorted_difference(&wanted, live).count();
            let extra = sorted_difference(live, &wanted).count();
            (
                Value::Bool(missing == 0 && extra == 0),
                json!(missing),
                json!(extra),
            )
        }
        None => (Value::Null, Value::Null, Value::Null),
    };
    json!({
        "config_entries": config.deny.len(),
        "feeds": feeds.iter().map(|f| json!({
            "path": f.path,
            "entries": f.entries,
            "bad_lines": f.bad_lines,
            "unreadable": f.unreadable,
        })).collect::<Vec<_>>(),
        "wanted_entries": wanted.len(),
        "live_entries": live.as_ref().map(Vec::len),
        "in_sync": in_sync,
        "missing_from_live": missing,
        "live_not_wanted": extra,
    })
}

fn same_policy(a: &Policy, b: &Policy) -> bool {
    a.mode == b.mode && a.ports == b.ports
}

/// One interface: present here? XDP program and mode (from the kernel), pinned link, ours?
fn interface(dir: &Path, iface: &str, config: &Config) -> Value {
    let configured = config.interfaces.iter().any(|i| i == iface);
    let link_path = link_pin_path(dir, iface);
    let link_prog = link_path
        .exists()
        .then(|| PinnedLink::from_pin(&link_path).ok())
        .flatten()
        .and_then(|l| FdLink::from(l).info().ok())
        .map(|i| i.program_id());
    let (ifindex, xdp, error) = match filter::ifindex(iface) {
        Err(_) => (
            None,
            None,
            Some("no such interface in this network namespace".to_string()),
        ),
        Ok(index) => match netlink::xdp_state(index) {
            Ok(state) => (Some(index), state, None),
            Err(err) => (Some(index), None, Some(format!("{err:#}"))),
        },
    };
    let attached = matches!((xdp, link_prog), (Some(x), Some(p)) if x.prog_id == p);
    json!({
        "name": iface,
        "configured": configured,
        "ifindex": ifindex,
        "attached": attached,
        "mode": xdp.map(|x| x.mode.to_string()),
        "prog_id": xdp.map(|x| x.prog_id),
        "pinned_link": link_prog.is_some(),
        "foreign_program": xdp.is_some() && !attached,
        "error": error,
    })
}

fn render(report: &Value, config: &Config, live_policy: Option<&Policy>) -> String {
    let mut out = String::new();
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let any_attached = report["interfaces"]
        .as_array()
        .is_some_and(|ifaces| ifaces.iter().any(|i| i["attached"] == true));
    out.push_str(&format!("file:     {}\n", s(&report["config"])));
    out.push_str(&format!(
        "pin_dir:  {} ({}; daemon {})\n",
        s(&report["pin_dir"]),
        match (report["loaded"] == true, any_attached) {
            (true, true) => "filter loaded",
            // Maps without a program judge nothing: never call that a loaded filter.
            (true, false) => "maps pinned, but no program attached",
            (false, _) => "nothing pinned",
        },
        if report["daemon_running"] == true {
            "running"
        } else {
            "not running"
        },
    ));
    out.push_str("interfaces:\n");
    for iface in report["interfaces"].as_array().into_iter().flatten() {
        let name = s(&iface["name"]);
        let state = if iface["attached"] == true {
            format!(
                "attached, {} mode, prog id {}",
                s(&iface["mode"]),
                iface["prog_id"]
            )
        } else if iface["foreign_program"] == true {
            format!(
                "NOT attached: another XDP program (id {}) runs there in {} mode",
                iface["prog_id"],
                s(&iface["mode"])
            )
        } else if !iface["error"].is_null() {
            format!("NOT attached: {}", s(&iface["error"]))
        } else {
            "NOT attached".to_string()
        };
        let note = if iface["configured"] == false {
            " (not in the config)"
        } else {
            ""
        };
        out.push_str(&format!("  {name:<16} {state}{note}\n"));
    }
    out.push_str(&format!(
        "config:   mode {}, ports {}, {} entries\n",
        config.mode,
        join_ports(&config.protected_ports),
        config.allow.len()
    ));
    match live_policy {
        Some(policy) => out.push_str(&format!(
            "live:     mode {}, ports {}, {} IPv4 + {} IPv6 entries\n",
            policy.mode,
            join_ports(&policy.ports),
            report["live_entries"]["ipv4"],
            report["live_entries"]["ipv6"]
        )),
        None => out.push_str("live:     the filter is not loaded\n"),
    }
    // DNS-derived entries: each source, its networks, age and last error.
    for line in gatekeeper::derived::listing::Derived::read(config).summary() {
        out.push_str(&format!("derived:  {line}\n"));
    }
    let deny = &report["deny"];
    out.push_str(&format!(
        "deny:     {} [[deny]] entries + {} feed(s) = {} networks wanted, live: {}{}\n",
        deny["config_entries"],
        deny["feeds"].as_array().map_or(0, Vec::len),
        deny["wanted_entries"],
        match deny["live_entries"].as_u64() {
            Some(n) => n.to_string(),
            None => "-".into(),
        },
        match deny["in_sync"] {
            Value::Bool(true) => " (in sync)".to_string(),
            Value::Bool(false) => format!(
                " (NOT in sync: {} missing, {} not wanted; the daemon syncs on reload and feed change)",
                deny["missing_from_live"], deny["live_not_wanted"]
            ),
            _ => String::new(),
        }
    ));
    for feed in deny["feeds"].as_array().into_iter().flatten() {
        match feed["unreadable"].as_str() {
            Some(why) => out.push_str(&format!(
                "  feed {}: UNREADABLE, counts as empty ({why})\n",
                s(&feed["path"])
            )),
            None => out.push_str(&format!(
                "  feed {}: {} networks, {} bad lines skipped\n",
                s(&feed["path"]),
                feed["entries"],
                feed["bad_lines"]
            )),
        }
    }
    match &report["in_sync"] {
        Value::Bool(true) => out.push_str("in sync:  yes, the live maps match the config file\n"),
        Value::Bool(false) => {
            out.push_str("in sync:  NO\n");
            let diff = &report["difference"];
            for (key, text) in [
                ("missing_from_live", "in the config, not live"),
                ("live_not_in_config", "live, not in the config"),
            ] {
                let list: Vec<String> = diff[key].as_array().into_iter().flatten().map(s).collect();
                if !list.is_empty() {
                    out.push_str(&format!("  {text}: {}\n", list.join(", ")));
                }
            }
            if diff["policy_differs"] == true {
                out.push_str("  mode or ports differ\n");
            }
            out.push_str(
                "  (a running daemon applies the file on SIGHUP or when the file changes)\n",
            );
        }
        _ => {}
    }
    out
}
