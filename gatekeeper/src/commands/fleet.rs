//! `gatekeeper allow|deny add|remove --fleet`: fleet-wide entries, written to etcd under the
//! `[fleet]` prefix (every host's daemon applies them from its watch, this one's included), and
//! the fleet's rows of `allow list` and `deny list`.
//!
//! The CLI talks to etcd as the config's `[fleet]` says; an admin whose etcd identity differs from
//! the daemons' (RBAC: the daemons' role may not write entries) gives it in
//! `GATEKEEPER_FLEET_USER` and `GATEKEEPER_FLEET_PASSWORD_FILE`.

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context as _, anyhow, bail};
use gatekeeper::{
    config::{Config, parse_cidr},
    fleet::{Entry, Kind, SOURCE_FLEET, etcd::Client, key},
};
use ipnet::IpNet;

/// The fleet's entries that `allow list` / `deny list` show (those the file has too are shown as
/// the file's), with their comments as printed.
pub(super) struct Rows {
    /// Sorted.
    pub nets: Vec<IpNet>,
    comments: Vec<String>,
}

impl Rows {
    pub fn iter<'a>(&'a self) -> impl Iterator<Item = (IpNet, Option<&'a str>, &'a str)> + 'a {
        super::entry_rows::tagged(
            self.nets
                .iter()
                .zip(&self.comments)
                .map(|(net, comment)| (*net, Some(comment.as_str()))),
            SOURCE_FLEET,
        )
    }
}

pub(super) fn rows(entries: &BTreeMap<IpNet, Entry>, in_file: &[IpNet]) -> Rows {
    let mut rows = Rows {
        nets: Vec::new(),
        comments: Vec::new(),
    };
    for (net, entry) in entries {
        if in_file.contains(net) {
            continue;
        }
        rows.nets.push(*net);
        rows.comments.push(match entry.author.as_str() {
            "" => entry.comment.clone(),
            author => format!("{} (by {author})", entry.comment)
                .trim_start()
                .to_string(),
        });
    }
    rows
}

/// `user@host` of whoever runs the command (the sudo caller when run through sudo).
fn author(config: &Config) -> String {
    let user = std::env::var("SUDO_USER")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| {
            // SAFETY: getpwuid returns a pointer into static storage or null; read at once.
            unsafe {
                let pw = libc::getpwuid(libc::getuid());
                (!pw.is_null()).then(|| {
                    std::ffi::CStr::from_ptr((*pw).pw_name)
                        .to_string_lossy()
                        .into_owned()
                })
            }
        })
        .unwrap_or_else(|| format!("uid={}", unsafe { libc::getuid() }));
    let host = config
        .fleet
        .as_ref()
        .map_or_else(|| "unknown".into(), gatekeeper::fleet::host_name);
    format!("{user}@{host}")
}

/// The config's `[fleet]` and a client for it (as the admin, when the environment says who).
fn client(config: &Config, path: &Path) -> anyhow::Result<(Client, String)> {
    let fleet = config.fleet.as_ref().ok_or_else(|| {
        anyhow!(
            "{} has no [fleet] table: --fleet needs the etcd cluster the fleet shares",
            path.display()
        )
    })?;
    let credentials = match (
        std::env::var("GATEKEEPER_FLEET_USER"),
        std::env::var("GATEKEEPER_FLEET_PASSWORD_FILE"),
    ) {
        (Ok(user), Ok(file)) => {
            let password = std::fs::read_to_string(&file)
                .with_context(|| format!("reading GATEKEEPER_FLEET_PASSWORD_FILE {file}"))?;
            Some((user, password.trim_end_matches(['\n', '\r']).to_string()))
        }
        _ => None,
    };
    Ok((
        Client::with_credentials(fleet, credentials)?,
        fleet.prefix.clone(),
    ))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime failed")
}

fn list_name(kind: Kind) -> &'static str {
    if kind == Kind::Deny {
        "fleet deny list"
    } else {
        "fleet allowlist"
    }
}

/// `allow add --fleet` / `deny add --fleet`.
pub fn add(path: &Path, kind: Kind, cidr: &str, comment: Option<&str>) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let net = parse_cidr(cidr).map_err(|e| anyhow!("invalid entry: {e}"))?;
    let (client, prefix) = client(&config, path)?;
    let entry = Entry {
        comment: comment.unwrap_or("").to_string(),
        author: author(&config),
        added_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    let key = key(&prefix, kind, net);
    runtime()?.block_on(async {
        if client.get(&key).await?.is_some() {
            bail!("{net} is already in the {} (key {key})", list_name(kind));
        }
        client
            .put(&key, &serde_json::to_vec(&entry)?, 0)
            .await
            .with_context(|| format!("writing {key} to etcd ({})", client.endpoints()))?;
        Ok(())
    })?;
    println!(
        "added {net} to the {} (by {}); every host of the fleet applies it from its watch",
        list_name(kind),
        entry.author
    );
    Ok(())
}

/// `allow remove --fleet` / `deny remove --fleet`.
pub fn remove(path: &Path, kind: Kind, cidr: &str) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    let net = parse_cidr(cidr).map_err(|e| anyhow!("invalid entry: {e}"))?;
    let (client, prefix) = client(&config, path)?;
    let key = key(&prefix, kind, net);
    let deleted = runtime()?
        .block_on(client.delete(&key))
        .with_context(|| format!("deleting {key} from etcd ({})", client.endpoints()))?;
    if !deleted {
        bail!("{net} is not in the {} (key {key})", list_name(kind));
    }
    println!(
        "removed {net} from the {}; every host of the fleet applies it from its watch",
        list_name(kind)
    );
    Ok(())
}
