//! `[directory]`: the company directory (LDAP / Active Directory) for AUTH, the addresses a
//! user may send as, and (with `source = "directory"` in `[recipients]`) which local recipients
//! exist. Attribute names default to Active Directory's; `schema = "openldap"` switches the
//! defaults to `uid` / `mail` / `groupOfNames`, and every name can be set on its own.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{Invalid, KeyPath, duration, ensure, positive, resolve};

/// Longest timeout of one directory operation: a login waits for it.
const MAX_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawDirectory {
    servers: Vec<String>,
    ca_file: Option<PathBuf>,
    insecure_plaintext: bool,
    bind_dn: Option<String>,
    bind_password_file: Option<PathBuf>,
    base_dn: Option<String>,
    schema: Schema,
    login_attributes: Option<Vec<String>>,
    address_attributes: Option<Vec<String>>,
    user_filter: Option<String>,
    disabled_attribute: Option<String>,
    relay_group: Option<String>,
    group_membership: Option<Membership>,
    #[serde(deserialize_with = "duration::millis")]
    timeout_ms: Duration,
    pool_size: usize,
}

impl Default for RawDirectory {
    fn default() -> RawDirectory {
        RawDirectory {
            servers: Vec::new(),
            ca_file: None,
            insecure_plaintext: false,
            bind_dn: None,
            bind_password_file: None,
            base_dn: None,
            schema: Schema::ActiveDirectory,
            login_attributes: None,
            address_attributes: None,
            user_filter: None,
            disabled_attribute: None,
            relay_group: None,
            group_membership: None,
            timeout_ms: Duration::from_secs(5),
            pool_size: 8,
        }
    }
}

/// Which directory the attribute defaults are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schema {
    ActiveDirectory,
    Openldap,
}

/// How membership of `relay_group` is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Membership {
    /// The user entry's `memberOf` lists the group's DN (AD, OpenLDAP's memberof overlay).
    MemberOf,
    /// The group entry's `member` lists the user's DN (plain `groupOfNames`).
    GroupSearch,
}

/// How a server is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `ldaps://`: TLS from the first byte.
    Ldaps,
    /// `ldap://`: StartTLS before anything else.
    StartTls,
    /// `ldap://` with `insecure_plaintext = true` (loopback only).
    Plain,
}

/// One server, as written (the URL ldap3 connects to) and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub url: String,
    pub transport: Transport,
}

/// The validated `[directory]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryConfig {
    /// Tried in order; the first that answers is used until it fails.
    pub servers: Vec<Server>,
    pub ca_file: Option<PathBuf>,
    pub insecure_plaintext: bool,
    /// The service account the searches run as.
    pub bind_dn: String,
    /// Its password, first line of the file (read at start, never logged).
    pub bind_password_file: PathBuf,
    pub base_dn: String,
    /// A user matches when any of these equals the login name.
    pub login_attributes: Vec<String>,
    /// Where the addresses are: plain values, or `smtp:`/`SMTP:` entries (proxyAddresses).
    pub address_attributes: Vec<String>,
    /// ANDed with every user search (e.g. `(objectClass=user)`).
    pub user_filter: String,
    /// An integer attribute whose bit 2 (AD's ACCOUNTDISABLE) marks a disabled account.
    pub disabled_attribute: Option<String>,
    /// Only members of this group (DN) may log in.
    pub relay_group: Option<String>,
    pub group_membership: Membership,
    /// One whole operation: connect, search, bind.
    pub timeout: Duration,
    /// Connections kept open per kind (searches, user binds).
    pub pool_size: usize,
}

impl DirectoryConfig {
    /// The attributes a user search asks for.
    pub fn user_attributes(&self) -> Vec<String> {
        let mut attrs: Vec<String> = self.address_attributes.clone();
        attrs.extend(self.disabled_attribute.iter().cloned());
        if self.relay_group.is_some() && self.group_membership == Membership::MemberOf {
            attrs.push("memberOf".into());
        }
        attrs
    }
}

/// The host of an `ldap://` or `ldaps://` URL, without brackets and port.
fn url_host(rest: &str) -> &str {
    let authority = rest.split('/').next().unwrap_or("");
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split(']').next().unwrap_or("");
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn server(url: &str, insecure_plaintext: bool, at: &KeyPath) -> Result<Server, Invalid> {
    let lower = url.to_ascii_lowercase();
    let (transport, rest) = if let Some(rest) = lower.strip_prefix("ldaps://") {
        (Transport::Ldaps, rest)
    } else if let Some(rest) = lower.strip_prefix("ldap://") {
        let t = if insecure_plaintext {
            Transport::Plain
        } else {
            Transport::StartTls
        };
        (t, rest)
    } else {
        return Err(Invalid::new(
            at.clone(),
            "not an ldaps:// or ldap:// URL (ldapi:// and others are not supported)",
        ));
    };
    let host = url_host(rest);
    ensure(!host.is_empty(), at, "no host in the URL")?;
    ensure(
        transport != Transport::Plain || is_loopback(host),
        at,
        "insecure_plaintext is only allowed for a server on loopback: passwords would cross \
         the network in clear",
    )?;
    Ok(Server {
        url: url.to_owned(),
        transport,
    })
}

fn names(
    list: Option<Vec<String>>,
    default: &[&str],
    at: &KeyPath,
) -> Result<Vec<String>, Invalid> {
    let list = list.unwrap_or_else(|| default.iter().map(|s| (*s).to_owned()).collect());
    ensure(!list.is_empty(), at, "empty: name at least one attribute")?;
    for (i, name) in list.iter().enumerate() {
        ensure(
            is_attribute_name(name),
            &at.index(i),
            "not an LDAP attribute name",
        )?;
    }
    Ok(list)
}

/// RFC 4512 descriptor (letters, digits, hyphens, a letter first) or a numeric OID.
fn is_attribute_name(name: &str) -> bool {
    let descr = name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    let oid = !name.is_empty() && name.chars().all(|c| c.is_ascii_digit() || c == '.');
    descr || oid
}

pub(super) fn validate(
    raw: RawDirectory,
    base: &Path,
    at: &KeyPath,
) -> Result<DirectoryConfig, Invalid> {
    let servers_at = at.key("servers");
    ensure(
        !raw.servers.is_empty(),
        &servers_at,
        "empty: list the directory servers (ldaps://dc1.example.org, ...)",
    )?;
    let servers = raw
        .servers
        .iter()
        .enumerate()
        .map(|(i, url)| server(url, raw.insecure_plaintext, &servers_at.index(i)))
        .collect::<Result<Vec<_>, _>>()?;
    let missing = |key: &'static str| Invalid::new(at.clone(), format!("missing field `{key}`"));
    let bind_dn = raw.bind_dn.ok_or_else(|| missing("bind_dn"))?;
    let password_file = resolve(
        base,
        &raw.bind_password_file
            .ok_or_else(|| missing("bind_password_file"))?,
    );
    ensure(
        password_file.is_file(),
        &at.key("bind_password_file"),
        format!("{}: no such file", password_file.display()),
    )?;
    let base_dn = raw.base_dn.ok_or_else(|| missing("base_dn"))?;
    ensure(!base_dn.is_empty(), &at.key("base_dn"), "empty")?;
    let ad = raw.schema == Schema::ActiveDirectory;
    let login_attributes = names(
        raw.login_attributes,
        if ad {
            &["sAMAccountName", "userPrincipalName"]
        } else {
            &["uid"]
        },
        &at.key("login_attributes"),
    )?;
    let address_attributes = names(
        raw.address_attributes,
        if ad {
            &["mail", "proxyAddresses"]
        } else {
            &["mail"]
        },
        &at.key("address_attributes"),
    )?;
    let user_filter = raw.user_filter.unwrap_or_else(|| {
        if ad {
            "(objectClass=user)".into()
        } else {
            "(objectClass=inetOrgPerson)".into()
        }
    });
    ensure(
        user_filter.starts_with('(') && user_filter.ends_with(')'),
        &at.key("user_filter"),
        "an LDAP filter in parentheses, e.g. \"(objectClass=user)\"",
    )?;
    let disabled_attribute = match raw.disabled_attribute {
        Some(a) if a.is_empty() => None,
        Some(a) => Some(a),
        None if ad => Some("userAccountControl".into()),
        None => None,
    };
    if let Some(a) = &disabled_attribute {
        ensure(
            is_attribute_name(a),
            &at.key("disabled_attribute"),
            "not an LDAP attribute name",
        )?;
    }
    let group_membership = raw.group_membership.unwrap_or(if ad {
        Membership::MemberOf
    } else {
        Membership::GroupSearch
    });
    let timeout_at = at.key("timeout_ms");
    let timeout = positive(raw.timeout_ms, &timeout_at)?;
    ensure(timeout <= MAX_TIMEOUT, &timeout_at, "at most 30000")?;
    let pool_size = positive(raw.pool_size, &at.key("pool_size"))?;
    Ok(DirectoryConfig {
        servers,
        ca_file: raw.ca_file.map(|f| resolve(base, &f)),
        insecure_plaintext: raw.insecure_plaintext,
        bind_dn,
        bind_password_file: password_file,
        base_dn,
        login_attributes,
        address_attributes,
        user_filter,
        disabled_attribute,
        relay_group: raw.relay_group.filter(|g| !g.is_empty()),
        group_membership,
        timeout,
        pool_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const BASE: &str = r#"
hostname = "mx.example.org"
spool_dir = "spool"
local_domains = ["example.org"]

[tls]
cert = "cert.pem"
key = "key.pem"

[[listener]]
address = "127.0.0.1:587"
role = "submission"
allow = ["127.0.0.0/8"]
"#;

    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Dir {
            let d =
                std::env::temp_dir().join(format!("smtp-relay-dcfg-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&d).expect("mkdir");
            std::fs::write(d.join("ldap.pw"), "secret\n").expect("write");
            Dir(d)
        }
        fn parse(&self, text: &str) -> Result<Config, String> {
            Config::parse(text, &self.0.join("relay.toml")).map_err(|e| format!("{e:#}"))
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn table(body: &str) -> String {
        format!(
            "{BASE}\n[directory]\nbind_dn = \"CN=svc,DC=example,DC=org\"\n\
             bind_password_file = \"ldap.pw\"\nbase_dn = \"DC=example,DC=org\"\n{body}\n"
        )
    }

    #[test]
    fn active_directory_defaults_and_openldap_alternatives() {
        let dir = Dir::new("ok");
        // A submission listener needs no [[user]] when the directory has the users.
        let c = dir
            .parse(&table(
                "servers = [\"ldaps://dc1.example.org\", \"ldap://dc2.example.org:389\"]",
            ))
            .expect("valid")
            .directory
            .expect("directory");
        assert_eq!(c.servers[0].transport, Transport::Ldaps);
        assert_eq!(c.servers[1].transport, Transport::StartTls);
        assert_eq!(c.login_attributes, ["sAMAccountName", "userPrincipalName"]);
        assert_eq!(c.address_attributes, ["mail", "proxyAddresses"]);
        assert_eq!(c.disabled_attribute.as_deref(), Some("userAccountControl"));
        assert_eq!(c.group_membership, Membership::MemberOf);
        assert_eq!(c.user_filter, "(objectClass=user)");
        assert_eq!(c.timeout, Duration::from_secs(5));
        assert_eq!(c.bind_password_file, dir.0.join("ldap.pw"));

        let c = dir
            .parse(&table(
                "servers = [\"ldap://127.0.0.1:3389\"]\ninsecure_plaintext = true\n\
                 schema = \"openldap\"\nrelay_group = \"cn=relay,dc=example,dc=org\"",
            ))
            .expect("valid")
            .directory
            .expect("directory");
        assert_eq!(c.servers[0].transport, Transport::Plain);
        assert_eq!(c.login_attributes, ["uid"]);
        assert_eq!(c.address_attributes, ["mail"]);
        assert_eq!(c.disabled_attribute, None);
        assert_eq!(c.group_membership, Membership::GroupSearch);
    }

    #[test]
    fn errors_name_the_key_and_why() {
        let dir = Dir::new("bad");
        for (text, needle) in [
            (table("servers = []"), "directory.servers = []: empty"),
            (
                BASE.to_owned(),
                "needs AUTH but no [[user]] and no [directory] is configured",
            ),
            (
                table("servers = [\"http://dc1.example.org\"]"),
                "directory.servers[0] = \"http://dc1.example.org\": not an ldaps:// or ldap:// URL",
            ),
            (
                table("servers = [\"ldap://dc1.example.org\"]\ninsecure_plaintext = true"),
                "insecure_plaintext is only allowed for a server on loopback",
            ),
            (
                table("servers = [\"ldaps://dc1.example.org\"]\nlogin_attributes = [\"a b\"]"),
                "directory.login_attributes[0] = \"a b\": not an LDAP attribute name",
            ),
            (
                table(
                    "servers = [\"ldaps://dc1.example.org\"]\nuser_filter = \"objectClass=user\"",
                ),
                "an LDAP filter in parentheses",
            ),
            (
                table("servers = [\"ldaps://dc1.example.org\"]\ntimeout_ms = 0"),
                "directory.timeout_ms = 0: must be positive",
            ),
            (
                format!(
                    "{BASE}\n[directory]\nservers = [\"ldaps://dc1.example.org\"]\n\
                     bind_dn = \"x\"\nbind_password_file = \"missing\"\nbase_dn = \"y\"\n"
                ),
                "no such file",
            ),
        ] {
            let e = dir.parse(&text).expect_err(&text);
            assert!(e.contains(needle), "{needle:?} not in {e}");
            assert!(e.contains("relay.toml:"), "{e}");
        }
    }
}
