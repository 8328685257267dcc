//! `smtp-relay`: the SMTP service for the peers the gatekeeper admits.
//!
//! The crate is a library so that later work (delivery queue, the fuzzer in
//! `smtp-relay/fuzz`, hardening) can reuse its parts; `main.rs` is a thin CLI over [`prepare`]
//! and [`server::Server`].
//!
//! Module map, one job each:
//! - [`config`]: the TOML config, validated into typed values.
//! - [`admission`]: listener ranges, following the gatekeeper config.
//! - [`address`]: RFC 5321 paths and the local/external classification.
//! - [`command`]: one SMTP command line into a [`command::Command`].
//! - [`reply`]: SMTP replies with enhanced status codes.
//! - [`session`]: the per-connection state machine (no I/O).
//! - [`data`]: the DATA decoder (dot-unstuffing, bare CR/LF, size limit).
//! - [`spool`]: durable message storage for the delivery worker.
//! - [`envelope`]: the queue envelope and typed delivery state (format v2,
//!   v1 still read).
//! - [`tls`]: rustls server config from PEM files, reloaded when they change.
//! - [`auth`]: users and SASL PLAIN/LOGIN decoding.
//! - [`password`]: argon2id hashes (below both `config` and `auth`).
//! - [`audit`]: the audit log lines.
//! - [`conn`]: bounded line/DATA reading over plain or TLS streams.
//! - [`server`]: listeners, access ranges, the connection loop.
//! - [`clock`]: UTC timestamps for headers and the spool.
//! - [`delivery`]: the queue: routes, MX, SMTP client, retries, bounces.
//! - [`dkim`]: DKIM keys (keygen, published-record check) and signing at delivery.
//! - [`control`]: operator commands on the queue of a running relay.
//! - [`metrics`]: counters and the Prometheus endpoint.
//! - [`refusal`]: refusal reasons (metric labels) and message outcomes.
//! - [`throttle`]: AUTH brute-force delays and lockout.
//! - [`bans`]: ban triggers and the client of the gatekeeper's ban socket.
//! - [`recipients`]: recipient validation at RCPT time (lists, next-hop probes, harvesting).
//! - [`screen`]: connection-time screening (DNS lists, pre-greet, HELO).
//! - [`check`]: names of the checks and their results (metric labels).
//! - [`sender_auth`]: SPF, DKIM, ARC, DMARC and our `Authentication-Results:` field.
//! - [`message_sink`]: where DATA goes: the spool, or held for verification (bounded).
//! - [`directory`]: the company directory (LDAP / AD): AUTH, senders, recipients.

pub mod address;
pub mod admission;
pub mod audit;
pub mod auth;
pub mod bans;
pub mod check;
pub mod clock;
pub mod command;
pub mod config;
pub mod conn;
pub mod control;
pub mod data;
pub mod delivery;
pub mod directory;
pub mod disconnect;
pub mod dkim;
pub mod dns;
pub mod envelope;
pub mod message_sink;
pub mod metrics;
pub mod password;
pub mod recipients;
pub mod refusal;
pub mod reply;
pub mod screen;
pub mod sender_auth;
pub mod server;
pub mod session;
pub mod spool;
pub mod throttle;
pub mod tls;

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;

/// Everything `run` needs, loaded and checked. `check` stops here, so the two
/// commands can never disagree about whether a config is valid.
pub struct Prepared {
    pub config: config::Config,
    pub tls: tls::TlsStore,
    pub users: Arc<auth::Users>,
    /// The company directory (`[directory]`), not yet connected.
    pub directory: Option<directory::Shared>,
    /// The `[dkim]` keys, read; `None` without the table.
    pub dkim: Option<Arc<dkim::Signer>>,
}

/// Loads and validates the config, the TLS certificate and key and the user
/// table. Errors name the file, the line and column, and the key.
pub fn prepare(config_path: &Path) -> anyhow::Result<Prepared> {
    let config = config::Config::load(config_path)?;
    let tls = tls::TlsStore::load(&config.tls_cert, &config.tls_key)
        .map_err(|e| config.error_at(config::KeyPath::root().key("tls"), &e))?;
    let users = auth::Users::from_config(&config.users)
        .with_context(|| format!("{}: users", config.path.display()))?;
    if let Some(d) = &config.delivery {
        // The CA file for next hops must be usable before we accept mail.
        delivery::tls::clients(d.ca_file.as_deref()).map_err(|e| {
            config.error_at(config::KeyPath::root().key("delivery").key("ca_file"), &e)
        })?;
    }
    let directory = match &config.directory {
        Some(d) => Some(Arc::new(directory::CompanyDirectory::new(d).map_err(
            |e| config.error_at(config::KeyPath::root().key("directory"), &e),
        )?)),
        None => None,
    };
    let dkim = match &config.dkim {
        Some(d) => Some(Arc::new(dkim::Signer::from_config(d).map_err(|e| {
            config.error_at(config::KeyPath::root().key("dkim").key("key"), &e)
        })?)),
        None => None,
    };
    Ok(Prepared {
        dkim,
        config,
        tls,
        users: Arc::new(users),
        directory,
    })
}
