//! What the gatekeeper daemon and smtp-relay share, so it exists once.
//!
//! Module map, one job each:
//! - [`stamp`]: noticing that a file changed (identity, size, modification time).
//! - [`settle`]: waiting until a changed file stopped changing, so a half-written one is never read.
//! - [`atomic`]: replacing a file atomically, keeping its mode, owner and group.
//! - [`lock`]: advisory `flock` locks on lock files and directories.
//! - [`lock_holder`]: which process holds a lock file, to name it when it is held too long.
//! - [`logging`]: the tracing subscriber both daemons log through.
//! - [`notify`]: readiness and reload notifications to systemd (`Type=notify`).
//! - [`cli_docs`]: shell completions and man pages from a clap definition.
//! - [`metrics`]: Prometheus exposition and the `GET /metrics` HTTP endpoint.
//! - [`cidr`]: CIDR-or-address parsing with the allowlist's rules.
//! - [`allowlist`]: the allowlist held compactly, and its scanner for `[[allow]]` tables.
//! - [`allowlist_edit`]: one entry added or removed, streamed line by line through that scanner.
//! - [`fleet_config`]: the `[fleet]` table (the etcd cluster MX hosts share entries and bans through).
//! - [`gatekeeper_config`]: the `gatekeeper.toml` schema, read by the gatekeeper and by the
//!   relay's `allow_gatekeeper`.

pub mod allowlist;
pub mod allowlist_append;
pub mod allowlist_edit;
pub mod atomic;
pub mod cidr;
pub mod cli_docs;
pub mod derived;
pub mod dns;
pub mod fleet_config;
pub mod gatekeeper_config;
pub mod lock;
pub mod lock_holder;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod settle;
pub mod stamp;
