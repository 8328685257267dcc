//! What the program enforces besides the allowlist: mode, protected ports, drop-event limits.

use gatekeeper_common::{FilterConfig, MODE_ENFORCE, MODE_MONITOR};
use serde::{Deserialize, Serialize};

/// Drop what the allowlist refuses, or only count it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Monitor,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Enforce => "enforce",
            Mode::Monitor => "monitor",
        })
    }
}

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
    pub fn to_filter_config(&self) -> FilterConfig {
        let mut config = FilterConfig::empty();
        config.mode = match self.mode {
            Mode::Enforce => MODE_ENFORCE,
            Mode::Monitor => MODE_MONITOR,
        };
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
            mode: if config.mode == MODE_MONITOR {
                Mode::Monitor
            } else {
                Mode::Enforce
            },
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
    use super::*;

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
