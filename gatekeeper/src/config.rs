//! `gatekeeper.toml`: the source of truth for what the filter enforces. The schema and its
//! validation live in gatekeeper-support, because the relay's `allow_gatekeeper` reads the same
//! file through the same code; the policy the program applies from it is in [`crate::policy`].

pub use gatekeeper_support::gatekeeper_config::*;
