//! The `[fleet]` table of `gatekeeper.toml`: the etcd cluster that MX hosts share fleet-wide allow
//! entries, deny entries and bans through (see the gatekeeper's `fleet` module).
//!
//! ```toml
//! [fleet]
//! endpoints = ["https://etcd1.example:2379", "https://etcd2.example:2379"]
//! prefix = "/gatekeeper/"
//! ca_file = "/etc/gatekeeper/etcd/ca.crt"
//! cert_file = "/etc/gatekeeper/etcd/client.crt"
//! key_file = "/etc/gatekeeper/etcd/client.key"
//! ```

use std::{ops::Range, path::PathBuf};

use serde::Deserialize;
use toml::Spanned;

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "/gatekeeper/";

/// The fleet's etcd cluster, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetConfig {
    /// `https://HOST:PORT` (or `http://` for a cluster without TLS), tried in order.
    pub endpoints: Vec<String>,
    /// Every key of the fleet starts with it; ends with `/`.
    pub prefix: String,
    /// The CA that signed the members' certificates (else the system's trust store).
    pub ca_file: Option<PathBuf>,
    /// The client certificate and key (etcd's `--client-cert-auth`).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// The etcd user of this host (RBAC), with its password in `password_file`.
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
    /// This host's name in the fleet (who published a ban); the system's host name by default.
    pub host: Option<String>,
    /// The fleet state last applied, kept across restarts and outages; `fleet.json` next to
    /// `ban_state` by default.
    pub state: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFleet {
    endpoints: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    prefix: Option<Spanned<String>>,
    #[serde(default)]
    ca_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    cert_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    key_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    user: Option<Spanned<String>>,
    #[serde(default)]
    password_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    host: Option<Spanned<String>>,
    #[serde(default)]
    state: Option<Spanned<PathBuf>>,
}

type SpannedError = (Range<usize>, String);

fn absolute(what: &str, path: &Option<Spanned<PathBuf>>) -> Result<Option<PathBuf>, SpannedError> {
    match path {
        None => Ok(None),
        Some(p) if p.get_ref().is_absolute() => Ok(Some(p.get_ref().clone())),
        Some(p) => Err((
            p.span(),
            format!(
                "fleet.{what} \"{}\" must be an absolute path",
                p.get_ref().display()
            ),
        )),
    }
}

impl RawFleet {
    pub(crate) fn validate(&self) -> Result<FleetConfig, SpannedError> {
        if self.endpoints.get_ref().is_empty() {
            return Err((
                self.endpoints.span(),
                "fleet.endpoints is empty: name the etcd members (https://HOST:PORT)".into(),
            ));
        }
        let mut endpoints = Vec::new();
        for endpoint in self.endpoints.get_ref() {
            let text = endpoint.get_ref().trim().trim_end_matches('/');
            let rest = text
                .strip_prefix("https://")
                .or_else(|| text.strip_prefix("http://"));
            let valid = rest.is_some_and(|r| {
                !r.is_empty()
                    && !r.contains('/')
                    && r.rsplit_once(':')
                        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            });
            if !valid {
                return Err((
                    endpoint.span(),
                    format!(
                        "fleet endpoint \"{}\" is not https://HOST:PORT",
                        endpoint.get_ref()
                    ),
                ));
            }
            endpoints.push(text.to_string());
        }
        let prefix = match &self.prefix {
            None => DEFAULT_PREFIX.to_string(),
            Some(p) => {
                let text = p.get_ref().trim();
                if text.is_empty() || text == "/" {
                    return Err((
                        p.span(),
                        "fleet.prefix is empty: give the fleet its own key prefix (e.g. \"/gatekeeper/\")"
                            .into(),
                    ));
                }
                if text.ends_with('/') {
                    text.to_string()
                } else {
                    format!("{text}/")
                }
            }
        };
        let cert_file = absolute("cert_file", &self.cert_file)?;
        let key_file = absolute("key_file", &self.key_file)?;
        if cert_file.is_some() != key_file.is_some() {
            let span = self
                .cert_file
                .as_ref()
                .or(self.key_file.as_ref())
                .map_or(0..0, Spanned::span);
            return Err((
                span,
                "fleet.cert_file and fleet.key_file go together (the client certificate and its key)"
                    .into(),
            ));
        }
        let password_file = absolute("password_file", &self.password_file)?;
        let user = match &self.user {
            Some(u) if u.get_ref().trim().is_empty() => {
                return Err((u.span(), "fleet.user is empty".into()));
            }
            Some(u) => Some(u.get_ref().trim().to_string()),
            None => None,
        };
        if user.is_some() != password_file.is_some() {
            let span = self
                .user
                .as_ref()
                .map(Spanned::span)
                .or(self.password_file.as_ref().map(Spanned::span))
                .unwrap_or(0..0);
            return Err((
                span,
                "fleet.user and fleet.password_file go together (etcd RBAC)".into(),
            ));
        }
        let host = match &self.host {
            Some(h) if h.get_ref().trim().is_empty() || h.get_ref().contains('/') => {
                return Err((
                    h.span(),
                    "fleet.host must be a non-empty name without '/'".into(),
                ));
            }
            Some(h) => Some(h.get_ref().trim().to_string()),
            None => None,
        };
        Ok(FleetConfig {
            endpoints,
            prefix,
            ca_file: absolute("ca_file", &self.ca_file)?,
            cert_file,
            key_file,
            user,
            password_file,
            host,
            state: absolute("state", &self.state)?,
        })
    }
}
