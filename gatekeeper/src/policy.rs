//! What the program enforces besides the allowlist: mode, protected ports, drop-event limits.

use gatekeeper_common::FilterConfig;
pub use gatekeeper_common::Mode;
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
}

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
        }
    }

    pub fn to_filter_config(&self) -> FilterConfig {
        let mut config = FilterConfig::empty();
        config.mode = self.mode as u32;
        for port in &self.ports {
            config.protect(*port);
        }
        config.event_burst = self.event_burst;
        config.event_interval_ns = match self.event_rate {
            0 => 0,
            rate => 1_000_000_000 / u64::from(rate),
        };
        config
    }

    pub fn from_filter_config(config: &FilterConfig) -> Policy {
        let ports = (0..=u16::MAX).filter(|p| config.is_protected(*p)).collect();
        Policy {
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
        };
        let config = policy.to_filter_config();
        assert!(config.is_protected(25) && config.is_protected(65535));
        assert!(!config.is_protected(26) && !config.is_protected(0));
        assert_eq!(Policy::from_filter_config(&config), policy);
    }
}
