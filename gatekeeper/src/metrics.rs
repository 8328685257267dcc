//! Prometheus metrics: the filter's counters per interface, the allowlist size, and the daemon's
//! reloads. The daemon reads a [`Snapshot`] from the maps at each scrape; a prometheus-client
//! collector over it renders the text that gatekeeper-support's endpoint serves on
//! `metrics_listen` (`GET /metrics`).

use gatekeeper_support::metrics as expose;
use prometheus_client::{collector::Collector, encoding::DescriptorEncoder};

use crate::{
    bans::request::Refusal,
    maps::FilterMaps,
    stats::{self, InterfaceStats},
};

/// Counts the daemon keeps about itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct DaemonCounts {
    pub reloads: u64,
    pub reload_failures: u64,
    pub attached_interfaces: usize,
    /// Interfaces in the config without the filter (gone, attaching failed, another program).
    pub unfiltered_interfaces: usize,
    /// Ban-socket requests that became (or extended) a ban.
    pub ban_requests_accepted: u64,
    /// Ban-socket requests refused, by [`crate::bans::request::Refusal::LABELS`].
    pub ban_requests_refused: [u64; 7],
    /// Bans refused because the ban table was full (`max_bans`), from the socket or at start.
    pub bans_refused_full: u64,
    /// Deny-feed lines skipped as not a network, at the last load of each feed.
    pub feed_bad_lines: u64,
    /// Networks the deny feeds hold, at their last load.
    pub feed_entries: u64,
    /// Bans the sweeper removed after their deadline.
    pub bans_expired: u64,
}

/// Everything one scrape shows, read from the pinned maps and the daemon.
#[derive(Clone, Debug)]
pub struct Snapshot {
    interfaces: Vec<InterfaceStats>,
    entries_v4: usize,
    entries_v6: usize,
    allowlist_hits: u64,
    daemon: DaemonCounts,
}

impl Snapshot {
    pub fn read(maps: &FilterMaps, daemon: &DaemonCounts) -> anyhow::Result<Snapshot> {
        let entries = maps.entries()?;
        let entries_v4 = entries.iter().filter(|e| e.net.addr().is_ipv4()).count();
        Ok(Snapshot {
            interfaces: stats::collect(maps)?,
            entries_v4,
            entries_v6: entries.len() - entries_v4,
            allowlist_hits: entries.iter().map(|e| e.hits).sum(),
            daemon: *daemon,
        })
    }
}

/// Renders every metric in the Prometheus text exposition format (version 0.0.4).
pub fn render(maps: &FilterMaps, daemon: &DaemonCounts) -> anyhow::Result<String> {
    Ok(expose::render(Snapshot::read(maps, daemon)?))
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let e = &mut encoder;
        let frames = self.interfaces.iter().flat_map(|iface| {
            iface.counters.iter().flat_map(move |(family, row)| {
                row.iter()
                    .filter(|(name, _)| !name.starts_with("events_"))
                    .map(move |(verdict, value)| {
                        (
                            [
                                ("interface", iface.interface.as_str()),
                                ("family", family.as_str()),
                                ("verdict", verdict.as_str()),
                            ],
                            *value,
                        )
                    })
            })
        });
        expose::counter_family(
            e,
            "gatekeeper_frames",
            "Frames the XDP filter judged, by interface, address family and verdict.",
            frames,
        )?;
        let events = self.interfaces.iter().flat_map(|iface| {
            ["sent", "suppressed"].map(|result| {
                (
                    [("interface", iface.interface.as_str()), ("result", result)],
                    iface.total(&format!("events_{result}")),
                )
            })
        });
        expose::counter_family(
            e,
            "gatekeeper_drop_events",
            "Drop events sent to the daemon or suppressed by the in-kernel rate limit.",
            events,
        )?;
        expose::gauge_family(
            e,
            "gatekeeper_allowlist_entries",
            "Entries in the live allowlist.",
            [
                ([("family", "ipv4")], expose::gauge_value(self.entries_v4)),
                ([("family", "ipv6")], expose::gauge_value(self.entries_v6)),
            ],
        )?;
        expose::counter(
            e,
            "gatekeeper_allowlist_hits",
            "Segments the live allowlist entries admitted.",
            self.allowlist_hits,
        )?;
        expose::counter(
            e,
            "gatekeeper_config_reloads",
            "Config reloads applied.",
            self.daemon.reloads,
        )?;
        expose::counter(
            e,
            "gatekeeper_config_reload_failures",
            "Config reloads refused (the previous config stayed in force).",
            self.daemon.reload_failures,
        )?;
        expose::gauge(
            e,
            "gatekeeper_attached_interfaces",
            "Interfaces the daemon has the filter attached to.",
            expose::gauge_value(self.daemon.attached_interfaces),
        )?;
        expose::gauge(
            e,
            "gatekeeper_interfaces_unfiltered",
            "Interfaces in the config that the filter is not attached to (gone, attaching failed, or another XDP program there); anything but 0 means SMTP is unprotected there.",
            expose::gauge_value(self.daemon.unfiltered_interfaces),
        )?;
        let refused = Refusal::LABELS
            .iter()
            .zip(self.daemon.ban_requests_refused)
            .map(|(reason, count)| ([("result", "refused"), ("reason", *reason)], count));
        expose::counter_family(
            e,
            "gatekeeper_ban_requests",
            "Ban-socket requests, accepted or refused (by reason).",
            std::iter::once((
                [("result", "accepted"), ("reason", "")],
                self.daemon.ban_requests_accepted,
            ))
            .chain(refused),
        )?;
        expose::counter(
            e,
            "gatekeeper_bans_refused_full",
            "Bans refused because the ban table was full (max_bans); nothing is evicted.",
            self.daemon.bans_refused_full,
        )?;
        expose::counter(
            e,
            "gatekeeper_bans_expired",
            "Bans the daemon swept after their deadline.",
            self.daemon.bans_expired,
        )?;
        expose::gauge(
            e,
            "gatekeeper_deny_feed_entries",
            "Networks in the deny feeds at their last load.",
            expose::gauge_value(self.daemon.feed_entries),
        )?;
        expose::gauge(
            e,
            "gatekeeper_deny_feed_bad_lines",
            "Deny-feed lines skipped (not a network) at the last load of each feed.",
            expose::gauge_value(self.daemon.feed_bad_lines),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        let counters = stats::FAMILIES
            .iter()
            .map(|(family, _)| {
                let row = stats::COUNTERS
                    .iter()
                    .enumerate()
                    .map(|(i, &counter)| (stats::counter_name(counter).to_string(), i as u64))
                    .collect();
                (family.to_string(), row)
            })
            .collect();
        Snapshot {
            interfaces: vec![InterfaceStats {
                interface: "we\"ird".into(),
                ifindex: Some(7),
                counters,
            }],
            entries_v4: 2,
            entries_v6: 1,
            allowlist_hits: 9,
            daemon: DaemonCounts {
                reloads: 3,
                reload_failures: 1,
                attached_interfaces: 1,
                unfiltered_interfaces: 2,
                ban_requests_accepted: 4,
                ban_requests_refused: [0, 0, 0, 5, 0, 0, 0],
                ..DaemonCounts::default()
            },
        }
    }

    #[test]
    fn every_series_keeps_its_name_and_labels() {
        let text = expose::render(snapshot());
        for line in [
            "# TYPE gatekeeper_frames_total counter",
            "gatekeeper_frames_total{interface=\"we\\\"ird\",family=\"ipv4\",verdict=\"dropped\"} 2",
            "gatekeeper_frames_total{interface=\"we\\\"ird\",family=\"ipv4\",verdict=\"denied_list\"} 4",
            "gatekeeper_frames_total{interface=\"we\\\"ird\",family=\"ipv6\",verdict=\"banned\"} 5",
            "gatekeeper_frames_total{interface=\"we\\\"ird\",family=\"ipv4\",verdict=\"rate_limited\"} 6",
            "gatekeeper_frames_total{interface=\"we\\\"ird\",family=\"ipv4\",verdict=\"passed_open\"} 1",
            "gatekeeper_frames_total{interface=\"we\\\"ird\",family=\"other\",verdict=\"malformed\"} 12",
            "gatekeeper_drop_events_total{interface=\"we\\\"ird\",result=\"sent\"} 39",
            "gatekeeper_drop_events_total{interface=\"we\\\"ird\",result=\"suppressed\"} 42",
            "# TYPE gatekeeper_allowlist_entries gauge",
            "gatekeeper_allowlist_entries{family=\"ipv4\"} 2",
            "gatekeeper_allowlist_entries{family=\"ipv6\"} 1",
            "gatekeeper_allowlist_hits_total 9",
            "gatekeeper_config_reloads_total 3",
            "gatekeeper_config_reload_failures_total 1",
            "# TYPE gatekeeper_attached_interfaces gauge",
            "gatekeeper_attached_interfaces 1",
            "# TYPE gatekeeper_interfaces_unfiltered gauge",
            "gatekeeper_interfaces_unfiltered 2",
            "gatekeeper_ban_requests_total{result=\"accepted\",reason=\"\"} 4",
            "gatekeeper_ban_requests_total{result=\"refused\",reason=\"allowlisted\"} 5",
            "gatekeeper_bans_refused_full_total 0",
            "gatekeeper_deny_feed_bad_lines 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert!(!text.contains("verdict=\"events_"), "{text}");
    }
}
