//! Users and SASL PLAIN/LOGIN (RFC 4954, 4616). The argon2id hashes
//! themselves are in [`crate::password`], below both this module and the
//! config.
//!
//! Hash verification is deliberately slow, so it runs on the blocking pool
//! ([`tokio::task::spawn_blocking`]), never on the runtime's worker threads.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context as _;
use base64ct::{Base64, Encoding as _};

use crate::config::UserConfig;
use crate::password::{self, check_hash};

struct User {
    hash: String,
    senders: Vec<Sender>,
}

/// An entry of a user's `senders`, as the config validated it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sender {
    /// `local@domain`: exactly this address (domain lowercased).
    Address(String),
    /// `@domain`: any local part of exactly this domain (lowercased), no
    /// subdomains.
    Domain(String),
}

impl Sender {
    fn from_config(entry: &str) -> Sender {
        match entry.strip_prefix('@') {
            Some(domain) => Sender::Domain(domain.to_owned()),
            None => Sender::Address(entry.to_owned()),
        }
    }

    /// Whether `plain` (a plain-form address, domain lowercased) is this.
    fn matches(&self, plain: &str) -> bool {
        match self {
            Sender::Address(address) => address == plain,
            Sender::Domain(domain) => plain
                .rsplit_once('@')
                .is_some_and(|(local, d)| !local.is_empty() && d == domain),
        }
    }
}

/// The configured users.
pub struct Users {
    users: HashMap<String, User>,
}

impl Users {
    pub fn from_config(users: &[UserConfig]) -> anyhow::Result<Users> {
        let mut map = HashMap::new();
        for u in users {
            check_hash(&u.password_hash).with_context(|| format!("user {:?}", u.name))?;
            map.insert(
                u.name.clone(),
                User {
                    hash: u.password_hash.clone(),
                    senders: u.senders.iter().map(|s| Sender::from_config(s)).collect(),
                },
            );
        }
        Ok(Users { users: map })
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `name` is a `[[user]]` (they come before the directory).
    pub fn contains(&self, name: &str) -> bool {
        self.users.contains_key(name)
    }

    /// Verifies a password on the blocking pool.
    pub async fn verify(self: &Arc<Self>, name: &str, password: &str) -> bool {
        let (hash, known) = match self.users.get(name) {
            Some(u) => (u.hash.clone(), true),
            None => (password::dummy_hash().to_owned(), false),
        };
        let password = password.to_owned();
        let ok = tokio::task::spawn_blocking(move || password::verify(&hash, &password))
            .await
            .unwrap_or(false);
        ok && known
    }

    /// Whether `user` may use `sender` (plain form, domain lowercased) in
    /// MAIL: one of their `senders` addresses, or any address of one of
    /// their `@domain` entries.
    pub fn may_send_as(&self, user: &str, sender_plain: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.senders.iter().any(|s| s.matches(sender_plain)))
    }
}

/// SASL mechanisms we offer; the names are the variant names, uppercased.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::EnumString, strum::IntoStaticStr)]
#[strum(serialize_all = "UPPERCASE")]
pub enum Mechanism {
    Plain,
    Login,
}

impl Mechanism {
    /// The mechanism named exactly so (the caller uppercases).
    pub fn from_name(name: &str) -> Option<Mechanism> {
        name.parse().ok()
    }

    pub fn name(self) -> &'static str {
        self.into()
    }
}

/// A client response that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    #[error("client cancelled authentication")]
    Cancelled,
    #[error("invalid base64")]
    Base64,
    #[error("malformed response")]
    Malformed,
}

/// Decodes one base64 client response line (`*` cancels, `=` is empty).
pub fn decode_response(line: &str) -> Result<Vec<u8>, SaslError> {
    let line = line.trim_end_matches(' ');
    match line {
        "*" => Err(SaslError::Cancelled),
        "=" => Ok(Vec::new()),
        _ => Base64::decode_vec(line).map_err(|_| SaslError::Base64),
    }
}

/// Base64 for server challenges.
pub fn encode(data: &[u8]) -> String {
    Base64::encode_string(data)
}

/// Credentials from a decoded PLAIN response `authzid NUL authcid NUL
/// passwd`. An authzid other than the authcid (acting as another user) is
/// refused.
pub fn parse_plain(decoded: &[u8]) -> Result<(String, String), SaslError> {
    let mut parts = decoded.split(|&b| b == 0);
    let (Some(authz), Some(authc), Some(pass), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    let authz = std::str::from_utf8(authz).map_err(|_| SaslError::Malformed)?;
    let authc = std::str::from_utf8(authc).map_err(|_| SaslError::Malformed)?;
    let pass = std::str::from_utf8(pass).map_err(|_| SaslError::Malformed)?;
    if authc.is_empty() || (!authz.is_empty() && authz != authc) {
        return Err(SaslError::Malformed);
    }
    Ok((authc.to_owned(), pass.to_owned()))
}

/// A LOGIN username or password: UTF-8 text.
pub fn parse_login_field(decoded: Vec<u8>) -> Result<String, SaslError> {
    String::from_utf8(decoded).map_err(|_| SaslError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> Arc<Users> {
        Arc::new(
            Users::from_config(&[UserConfig {
                name: "alice".into(),
                password_hash: password::cheap_hash("s3cret"),
                senders: vec!["alice@example.org".into()],
            }])
            .expect("users"),
        )
    }

    #[tokio::test]
    async fn verify_right_and_wrong() {
        let u = users();
        assert!(u.verify("alice", "s3cret").await);
        assert!(!u.verify("alice", "wrong").await);
        assert!(!u.verify("mallory", "s3cret").await);
        assert!(u.may_send_as("alice", "alice@example.org"));
        assert!(!u.may_send_as("alice", "bob@example.org"));
        assert!(!u.may_send_as("bob", "alice@example.org"));
    }

    #[test]
    fn a_domain_entry_allows_any_address_of_exactly_that_domain() {
        let u = Users::from_config(&[UserConfig {
            name: "relay".into(),
            password_hash: password::cheap_hash("s3cret"),
            senders: vec!["@example.org".into(), "boss@example.net".into()],
        }])
        .expect("users");
        for ok in [
            "alice@example.org",
            "x.y+tag@example.org",
            "boss@example.net",
        ] {
            assert!(u.may_send_as("relay", ok), "{ok}");
        }
        for refused in [
            "alice@sub.example.org",
            "alice@example.org.evil.example",
            "alice@notexample.org",
            "other@example.net",
            "example.org",
            "@example.org",
        ] {
            assert!(!u.may_send_as("relay", refused), "{refused}");
        }
        assert!(!u.may_send_as("nobody", "alice@example.org"));
    }

    #[test]
    fn sasl_plain_decoding() {
        let ok = encode(b"\0alice\0s3cret");
        let d = decode_response(&ok).expect("b64");
        assert_eq!(parse_plain(&d), Ok(("alice".into(), "s3cret".into())));
        let d = decode_response(&encode(b"alice\0alice\0pw")).expect("b64");
        assert_eq!(parse_plain(&d), Ok(("alice".into(), "pw".into())));
        let d = decode_response(&encode(b"bob\0alice\0pw")).expect("b64");
        assert_eq!(parse_plain(&d), Err(SaslError::Malformed));
        let d = decode_response(&encode(b"alice\0pw")).expect("b64");
        assert_eq!(parse_plain(&d), Err(SaslError::Malformed));
        assert_eq!(decode_response("*"), Err(SaslError::Cancelled));
        assert_eq!(decode_response("not base64!"), Err(SaslError::Base64));
        assert_eq!(decode_response("="), Ok(Vec::new()));
    }
}
