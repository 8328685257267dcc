//! One directory entry as the relay uses it: its DN, the addresses it may send as (and
//! receives for), its groups and whether the account is disabled.

use std::collections::HashMap;

use crate::config::DirectoryConfig;

/// AD's `userAccountControl` ACCOUNTDISABLE bit.
const ACCOUNT_DISABLE: u64 = 0x2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub dn: String,
    /// Lowercased plain addresses, the primary (`mail`, `SMTP:`) first, no duplicates.
    pub addresses: Vec<String>,
    /// `memberOf` values as the server returned them.
    pub groups: Vec<String>,
    pub disabled: bool,
}

/// The values of `name` in `attrs`, whatever case the server spelled the name in.
fn values<'a>(attrs: &'a HashMap<String, Vec<String>>, name: &str) -> &'a [String] {
    attrs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map_or(&[], |(_, v)| v.as_slice())
}

/// The address in one value: plain `local@domain`, or `smtp:`/`SMTP:` entries of
/// proxyAddresses. Other prefixes (`X500:`, `SIP:`) are not mail addresses.
fn address(value: &str) -> Option<String> {
    let value = value.trim();
    let plain = match value.split_once(':') {
        Some((prefix, rest)) if prefix.eq_ignore_ascii_case("smtp") => rest,
        Some(_) => return None,
        None => value,
    };
    let (local, domain) = plain.rsplit_once('@')?;
    (!local.is_empty() && !domain.is_empty()).then(|| plain.to_ascii_lowercase())
}

/// DNs compared the way directories do for our purpose: case and spaces after separators
/// do not matter.
pub fn same_dn(a: &str, b: &str) -> bool {
    fn norm(dn: &str) -> String {
        dn.split(',')
            .map(|rdn| rdn.trim().to_ascii_lowercase())
            .collect::<Vec<_>>()
            .join(",")
    }
    norm(a) == norm(b)
}

impl Account {
    pub fn from_entry(
        dn: String,
        attrs: &HashMap<String, Vec<String>>,
        c: &DirectoryConfig,
    ) -> Account {
        let mut addresses: Vec<String> = Vec::new();
        // Primaries first: `mail` values and `SMTP:` (upper case) proxy addresses.
        let mut primary = Vec::new();
        let mut aliases = Vec::new();
        for attr in &c.address_attributes {
            for v in values(attrs, attr) {
                if let Some(a) = address(v) {
                    if v.contains(':') && !v.trim().starts_with("SMTP:") {
                        aliases.push(a);
                    } else {
                        primary.push(a);
                    }
                }
            }
        }
        for a in primary.into_iter().chain(aliases) {
            if !addresses.contains(&a) {
                addresses.push(a);
            }
        }
        let disabled = c.disabled_attribute.as_deref().is_some_and(|name| {
            values(attrs, name).iter().any(|v| {
                // AD stores a signed 32-bit integer; anything unreadable counts as disabled.
                v.trim()
                    .parse::<i64>()
                    .map_or(true, |n| (n as u64) & ACCOUNT_DISABLE != 0)
            })
        });
        Account {
            dn,
            addresses,
            groups: values(attrs, "memberOf").to_vec(),
            disabled,
        }
    }

    /// Whether `plain` (an address in plain form) is one of this account's.
    pub fn owns(&self, plain: &str) -> bool {
        self.addresses.iter().any(|a| a.eq_ignore_ascii_case(plain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_from_mail_and_proxy_addresses() {
        assert_eq!(
            address("SMTP:Alice@Example.org"),
            Some("alice@example.org".into())
        );
        assert_eq!(
            address("smtp:al@example.org"),
            Some("al@example.org".into())
        );
        assert_eq!(address("X500:/o=Org/cn=alice"), None);
        assert_eq!(address("sip:alice@example.org"), None);
        assert_eq!(
            address("alice@example.org"),
            Some("alice@example.org".into())
        );
        assert_eq!(address("alice"), None);
        assert!(same_dn(
            "CN=Relay, OU=Groups,DC=example,DC=org",
            "cn=relay,ou=groups,dc=example,dc=org"
        ));
        assert!(!same_dn(
            "cn=relay2,dc=example,dc=org",
            "cn=relay,dc=example,dc=org"
        ));
    }
}
