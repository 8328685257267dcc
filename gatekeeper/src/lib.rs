//! Gatekeeper's controller: loads the XDP program, keeps its maps in line with `gatekeeper.toml`,
//! and serves the admin CLI. The binary in `main.rs` is a thin shell around this library, which the
//! end-to-end tests and benchmarks also use.

pub mod bans;
pub mod bpffs;
pub mod capabilities;
pub mod compat;
pub mod config;
pub mod deny_feed;
pub mod derived;
pub mod dir24;
pub mod dispatcher;
pub mod edit;
pub mod events;
pub mod filter;
pub mod fleet;
pub mod link_watch;
pub mod lock;
pub mod maps;
pub mod metrics;
pub mod netlink;
pub mod object;
pub mod occupant;
pub mod policy;
pub mod rules;
pub mod stats;
pub mod summary;
pub mod sync;
pub mod verifier;
pub mod xdp_attach;
