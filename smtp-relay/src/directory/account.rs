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

    fn config(disabled_attribute: Option<&str>) -> DirectoryConfig {
        use crate::config::directory::Membership;
        DirectoryConfig {
            servers: Vec::new(),
            ca_file: None,
            insecure_plaintext: false,
            bind_dn: String::new(),
            bind_password_file: Default::default(),
            base_dn: String::new(),
            login_attributes: vec!["sAMAccountName".into()],
            address_attributes: vec!["mail".into(), "proxyAddresses".into()],
            user_filter: "(objectClass=user)".into(),
            disabled_attribute: disabled_attribute.map(str::to_owned),
            relay_group: None,
            group_membership: Membership::MemberOf,
            timeout: std::time::Duration::from_secs(1),
            pool_size: 1,
        }
    }

    fn entry(pairs: &[(&str, &[&str])]) -> HashMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.iter().map(|s| (*s).to_owned()).collect()))
            .collect()
    }

    #[test]
    fn an_entry_as_the_relay_uses_it() {
        let attrs = entry(&[
            ("mail", &["Alice@Example.org"]),
            (
                "proxyaddresses",
                &[
                    "smtp:a.smith@example.org",
                    "SMTP:alice@example.org",
                    "X500:/o=Example/cn=alice",
                ],
            ),
            ("userAccountControl", &["512"]),
            ("memberOf", &["CN=Relay,DC=example,DC=org"]),
        ]);
        let uac = config(Some("userAccountControl"));
        let a = Account::from_entry("cn=alice".into(), &attrs, &uac);
        assert_eq!(a.addresses, ["alice@example.org", "a.smith@example.org"]);
        assert_eq!(a.groups, ["CN=Relay,DC=example,DC=org"]);
        assert!(!a.disabled);
        assert!(a.owns("A.Smith@example.org") && !a.owns("bob@example.org"));
        for (value, disabled) in [
            ("514", true),
            ("66050", true),
            ("66048", false),
            ("junk", true),
        ] {
            let attrs = entry(&[("userAccountControl", &[value])]);
            let a = Account::from_entry("cn=x".into(), &attrs, &uac);
            assert_eq!(a.disabled, disabled, "{value}");
        }
        let attrs = entry(&[("userAccountControl", &["514"])]);
        assert!(!Account::from_entry("cn=x".into(), &attrs, &config(None)).disabled);
    }
}
