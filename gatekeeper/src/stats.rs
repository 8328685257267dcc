//! Counter snapshots per interface, for `gatekeeper stats` and the daemon's own reports.

use gatekeeper_common::{COUNTER_COUNT, Counter, Family};

use crate::{
    events::interface_name,
    maps::{FilterMaps, SlotCounters},
};

/// Counters in display order; their names come from the enum (`gatekeeper_common::Counter`).
pub const COUNTERS: [Counter; COUNTER_COUNT as usize] = [
    Counter::Allowed,
    Counter::PassedOpen,
    Counter::Dropped,
    Counter::WouldDrop,
    Counter::DeniedList,
    Counter::Banned,
    Counter::RateLimited,
    Counter::Unjudgeable,
    Counter::PassOtherPort,
    Counter::PassNotTcp,
    Counter::PassNotIp,
    Counter::PassFragment,
    Counter::Malformed,
    Counter::EventSent,
    Counter::EventSuppressed,
];

/// The name operators see for `counter` (`gatekeeper stats`, metric labels).
pub fn counter_name(counter: Counter) -> &'static str {
    counter.into()
}

pub const FAMILIES: [(&str, Family); 3] = [
    ("ipv4", Family::Ipv4),
    ("ipv6", Family::Ipv6),
    ("other", Family::Other),
];

/// Counters of one interface.
#[derive(Clone, Debug)]
pub struct InterfaceStats {
    pub interface: String,
    pub ifindex: Option<u32>,
    /// `family -> counter -> value`, in display order.
    pub counters: Vec<(String, Vec<(String, u64)>)>,
}

impl InterfaceStats {
    pub fn new(interface: String, ifindex: Option<u32>, raw: &SlotCounters) -> InterfaceStats {
        let counters = FAMILIES
            .iter()
            .map(|(fname, family)| {
                let row = COUNTERS
                    .iter()
                    .map(|&counter| {
                        (
                            counter_name(counter).to_string(),
                            raw.0[*family as usize][counter as usize],
                        )
                    })
                    .collect();
                (fname.to_string(), row)
            })
            .collect();
        InterfaceStats {
            interface,
            ifindex,
            counters,
        }
    }

    /// `{"interface": .., "ifindex": .., "counters": {"ipv4": {"allowed": ..}, ..}}`
    pub fn to_json(&self) -> serde_json::Value {
        let counters: serde_json::Map<String, serde_json::Value> = self
            .counters
            .iter()
            .map(|(family, row)| {
                let row: serde_json::Map<String, serde_json::Value> =
                    row.iter().map(|(n, v)| (n.clone(), (*v).into())).collect();
                (family.clone(), row.into())
            })
            .collect();
        serde_json::json!({
            "interface": self.interface,
            "ifindex": self.ifindex,
            "counters": counters,
        })
    }

    /// One counter summed over families.
    pub fn total(&self, counter: &str) -> u64 {
        self.counters
            .iter()
            .flat_map(|(_, row)| row.iter())
            .filter(|(name, _)| name == counter)
            .map(|(_, v)| *v)
            .sum()
    }
}

/// Counters of every interface with a slot, then slot 0 ("other interfaces") if it counted anything.
pub fn collect(maps: &FilterMaps) -> anyhow::Result<Vec<InterfaceStats>> {
    let mut all = Vec::new();
    for (ifindex, slot) in maps.slots()? {
        let raw = maps.counters(slot)?;
        all.push(InterfaceStats::new(
            interface_name(ifindex),
            Some(ifindex),
            &raw,
        ));
    }
    let other = maps.counters(0)?;
    if other != SlotCounters::default() {
        all.push(InterfaceStats::new("(other)".into(), None, &other));
    }
    Ok(all)
}

/// A table per interface: one row per counter, one column per family.
pub fn render(stats: &[InterfaceStats]) -> String {
    let mut out = String::new();
    for iface in stats {
        match iface.ifindex {
            Some(index) => out.push_str(&format!("{} (ifindex {index})\n", iface.interface)),
            None => out.push_str(&format!("{}\n", iface.interface)),
        }
        out.push_str(&format!(
            "  {:<22}{:>14}{:>14}{:>14}\n",
            "", "IPv4", "IPv6", "other"
        ));
        for (i, name) in COUNTERS.map(counter_name).iter().enumerate() {
            let value = |f: usize| {
                iface
                    .counters
                    .get(f)
                    .and_then(|(_, row)| row.get(i))
                    .map_or(0, |(_, v)| *v)
            };
            out.push_str(&format!(
                "  {:<22}{:>14}{:>14}{:>14}\n",
                name,
                value(0),
                value(1),
                value(2)
            ));
        }
    }
    if stats.is_empty() {
        out.push_str("no interface has the filter attached\n");
    }
    out
}
