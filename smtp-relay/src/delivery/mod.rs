//! Delivery: the queue that forwards spooled mail to next hops.
//!
//! - [`queue`]: scheduling, attempts, per-recipient state, bounces, retries.
//! - [`pool`]: bounded, reused connections per destination.
//! - [`client`]: the SMTP client (STARTTLS, AUTH, transactions).
//! - [`route`]: routes, smarthost, MX.
//! - [`dane`]: DANE (RFC 7672) for MX hosts: TLSA lookups and the certificate check.
//! - [`dns`]: MX and address lookups through the configured nameservers.
//! - [`dsn`]: RFC 3464 bounces.
//! - [`tls`]: TLS client configs (verifying, opportunistic).
//! - [`tls_policy`]: which TLS policy applies to a delivery (DANE, MTA-STS, the route's mode),
//!   and the per-attempt TLS audit.
//! - [`mta_sts`]: MTA-STS policies (RFC 8461): lookup, fetch, cache.

pub mod client;
pub mod dane;
pub mod dns;
pub mod dsn;
pub mod mta_sts;
pub mod pool;
pub mod queue;
pub mod route;
pub mod tls;
pub mod tls_policy;

pub use queue::{Queue, Removal};
