//! What the program enforces besides the allowlist and the deny and ban tables: mode, judged ports
//! and their policies, the SYN rate on open ports, the IPv6 ban prefix, drop-event limits.

pub use gatekeeper_common::Mode;
use gatekeeper_common::{FilterConfig, v6_prefix_mask};
use serde::Serialize;

use crate::config::Config;

/// The policy half of the config, as the program sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub mode: Mode,
    /// Sorted, without duplicates.
    pub ports: Vec<u16>,
    /// Drop events per second each CPU may report (0: none).
    pub event_rate: u32,
    /// Drop events each CPU may report in a burst.
    pub event_burst: u32,
    /// The judged ports with policy "open" (sorted; each also in `ports`).
    pub open_ports: Vec<u16>,
    /// SYNs per second a source may send to an open port (0: no limit).
    pub syn_rate: u32,
    /// SYNs a source may send in a burst.
    pub syn_burst: u32,
    /// Leading bits of an IPv6 source that key its ban and its SYN bucket.
    pub ban_ipv6_prefix: u8,
}

impl Default for Policy {
    /// Enforcing, no ports, no events, no limit, IPv6 bans per /64.
    fn default() -> Self {
        Policy {
            mode: Mode::Enforce,
            ports: Vec::new(),
            event_rate: 0,
            event_burst: 0,
            open_ports: Vec::new(),
            syn_rate: 0,
            syn_burst: 0,
            ban_ipv6_prefix: 64,
        }
    }
}

const NS_PER_SEC: u64 = 1_000_000_000;

impl Policy {
    /// The policy half of `config`, as the program applies it.
    pub fn of(config: &Config) -> Policy {
        let mut ports = config.protected_ports.clone();
        ports.sort_unstable();
        Policy {
            mode: config.mode,
            ports,
            event_rate: config.drop_event_rate,
            event_burst: config.drop_event_burst,
            open_ports: config.open_ports.clone(),
            syn_rate: config.syn_rate,
            syn_burst: if config.syn_rate == 0 {
                0
            } else {
                config.syn_burst
            },
            ban_ipv6_prefix: config.ban_ipv6_prefix,
        }
    }

    pub fn to_filter_config(&self) -> FilterConfig {
        let mut config = FilterConfig::empty();
        config.mode = self.mode as u32;
        for port in &self.ports {
            config.protect(*port);
        }
        for port in &self.open_ports {
            config.open(*port);
        }
        // Credit in nanoseconds: the program refills by elapsed time and never divides.
        if self.syn_rate != 0 {
            config.syn_interval_ns = NS_PER_SEC / u64::from(self.syn_rate);
            config.syn_burst_ns = u64::from(self.syn_burst.max(1)) * config.syn_interval_ns;
        }
        config.ban_v6_mask = v6_prefix_mask(u32::from(self.ban_ipv6_prefix));
        config.event_burst = self.event_burst;
        config.event_interval_ns = match self.event_rate {
            0 => 0,
            rate => 1_000_000_000 / u64::from(rate),
        };
        config
    }

    pub fn from_filter_config(config: &FilterConfig) -> Policy {
        let ports = (0..=u16::MAX).filter(|p| config.is_protected(*p)).collect();
        let open_ports = (0..=u16::MAX).filter(|p| config.is_open(*p)).collect();
        let (syn_rate, syn_burst) = match config.syn_interval_ns {
            0 => (0, 0),
            ns => (
                u32::try_from(NS_PER_SEC / ns).unwrap_or(u32::MAX),
                u32::try_from(config.syn_burst_ns / ns).unwrap_or(u32::MAX),
            ),
        };
        let ban_ipv6_prefix = config
            .ban_v6_mask
            .iter()
            .map(|b| b.count_ones())
            .sum::<u32>();
        Policy {
            open_ports,
            syn_rate,
            syn_burst,
            ban_ipv6_prefix: u8::try_from(ban_ipv6_prefix).unwrap_or(128),
            mode: Mode::from_raw(config.mode),
            ports,
            event_rate: match config.event_interval_ns {
                0 => 0,
                ns => u32::try_from(1_000_000_000 / ns).unwrap_or(u32::MAX),
            },
            event_burst: config.event_burst,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{ConfigError, Ipv4Lookup};

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("gk.toml"))
    }

    fn error(text: &str) -> String {
        match parse(text) {
            Ok(config) => panic!("expected an error, got {config:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn monitor_mode_ports_and_event_limits_make_the_policy() {
        let config = parse(
            "interfaces = [\"eth0\"]\nmode = \"monitor\"\nprotected_ports = [587, 25]\ndrop_event_rate = 5\ndrop_event_burst = 7\npin_dir = \"/sys/fs/bpf/gk2\"\n",
        )
        .expect("valid config");
        let policy = Policy::of(&config);
        assert_eq!(policy.mode, Mode::Monitor);
        assert_eq!(policy.ports, [25, 587]);
        assert_eq!((policy.event_rate, policy.event_burst), (5, 7));
        assert_eq!(config.pin_dir, Path::new("/sys/fs/bpf/gk2"));
        let e = error("interfaces = [\"eth0\"]\npin_dir = \"gk\"\n");
        assert!(
            e.starts_with("gk.toml:2:11: pin_dir \"gk\" must be an absolute path"),
            "{e}"
        );
        let config =
            parse("interfaces = [\"eth0\"]\nipv4_lookup = \"trie\"\nipv4_dir24_blocks = 100\n")
                .expect("valid config");
        assert_eq!(
            (config.ipv4_lookup, config.ipv4_dir24_blocks.unwrap_or(0)),
            (Ipv4Lookup::Trie, 100)
        );
        let e = error("interfaces = [\"eth0\"]\nipv4_dir24_blocks = 0\n");
        assert!(
            e.starts_with("gk.toml:2:21: ipv4_dir24_blocks 0 is out of range"),
            "{e}"
        );
        let e = error("interfaces = [\"eth0\"]\nipv4_lookup = \"hash\"\n");
        assert!(e.starts_with("gk.toml:2:15: "), "{e}");
        let e = error("interfaces = [\"eth0\"]\nmode = \"block\"\n");
        assert!(e.starts_with("gk.toml:2:8: "), "{e}");
    }

    #[test]
    fn policy_round_trips_through_the_map_layout() {
        let policy = Policy {
            mode: Mode::Monitor,
            ports: vec![25, 465, 587, 65535],
            event_rate: 20,
            event_burst: 50,
            ..Policy::default()
        };
        let config = policy.to_filter_config();
        assert!(config.is_protected(25) && config.is_protected(65535));
        assert!(!config.is_protected(26) && !config.is_protected(0));
        assert!(!config.is_open(25));
        assert_eq!(Policy::from_filter_config(&config), policy);
        for syn_rate in [1, 3, 7, 20, 333, 9_999, 10_000] {
            let policy = Policy {
                ports: vec![25, 587],
                open_ports: vec![25],
                syn_rate,
                syn_burst: 40,
                ban_ipv6_prefix: 56,
                ..Policy::default()
            };
            let config = policy.to_filter_config();
            assert!(config.is_open(25) && !config.is_open(587));
            assert_eq!(config.syn_burst_ns, 40 * config.syn_interval_ns);
            assert_eq!(
                Policy::from_filter_config(&config),
                policy,
                "rate {syn_rate}"
            );
        }
    }
}
