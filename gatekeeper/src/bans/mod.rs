//! Bans with expiry: a source (an IPv4 address, an IPv6 /`ban_ipv6_prefix`) dropped on every
//! judged port until a deadline the program itself checks, so a ban ends on time even while the
//! daemon is down.
//!
//! - [`clock`]: monotonic deadlines (the program's clock) and wall-clock times (the file's).
//! - [`state`]: the state file that brings the bans back after a reboot.
//! - [`store`]: the one path every change takes (CLI, ban socket, sweeper, start-up).
//! - [`duration`]: `90s`, `10m`, `1h`, `7d`.
//! - [`request`]: the ban socket's protocol and the limits a request is checked against.

pub mod clock;
pub mod duration;
pub mod request;
pub mod state;
pub mod store;

use crate::config::Config;

/// The size of each family's ban table (`max_bans`, default 100,000). Pinned tables keep the size
/// they were made with until the pins are removed.
pub fn max_bans(config: &Config) -> u32 {
    config.max_bans
}

/// The leading bits of an IPv6 source a ban covers (`ban_ipv6_prefix`, default 64).
pub fn v6_prefix(config: &Config) -> u8 {
    config.ban_ipv6_prefix
}
