//! LDAP search filters built from what a client typed: every value is escaped (RFC 4515 3:
//! `*`, `(`, `)`, `\` and NUL as `\XX`), so a login name like `*)(uid=*` matches only an entry
//! whose name is literally that, never widens the search.

use ldap3::ldap_escape;

/// `(|(a1=value)(a2=value)…)` over `attributes`.
fn any_equals(attributes: &[String], values: &[String]) -> String {
    let mut f = String::from("(|");
    for a in attributes {
        for v in values {
            f.push_str(&format!("({a}={})", ldap_escape(v.as_str())));
        }
    }
    f.push(')');
    f
}

/// The entry `name` logs in as: `user_filter` and any login attribute equal to it.
pub fn login(user_filter: &str, login_attributes: &[String], name: &str) -> String {
    format!(
        "(&{user_filter}{})",
        any_equals(login_attributes, &[name.to_owned()])
    )
}

/// Entries that hold `address`: as a plain value or as a `smtp:` entry (proxyAddresses; the
/// server compares case-insensitively, so `SMTP:` primaries match too).
pub fn address(user_filter: &str, address_attributes: &[String], address: &str) -> String {
    format!(
        "(&{user_filter}{})",
        any_equals(
            address_attributes,
            &[address.to_owned(), format!("smtp:{address}")]
        )
    )
}

/// A group entry that lists `dn` as a `member`.
pub fn member(dn: &str) -> String {
    format!("(member={})", ldap_escape(dn))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_and_cannot_widen_the_filter() {
        let attrs = vec!["sAMAccountName".to_owned(), "uid".to_owned()];
        assert_eq!(
            login("(objectClass=user)", &attrs, "alice"),
            "(&(objectClass=user)(|(sAMAccountName=alice)(uid=alice)))"
        );
        assert_eq!(
            login("(objectClass=user)", &attrs[1..], "*)(uid=*"),
            "(&(objectClass=user)(|(uid=\\2a\\29\\28uid=\\2a)))"
        );
        assert_eq!(
            login("(x=y)", &attrs[1..], "a\\b\0"),
            "(&(x=y)(|(uid=a\\5cb\\00)))"
        );
        assert_eq!(
            address("(x=y)", &["mail".to_owned()], "a*@example.org"),
            "(&(x=y)(|(mail=a\\2a@example.org)(mail=smtp:a\\2a@example.org)))"
        );
        assert_eq!(member("cn=a\\,b,dc=x"), "(member=cn=a\\5c,b,dc=x)");
    }
}
