//! `smtp-relay dkim check`: is each configured key published, and is it the same key?
//! Asks the nameservers of `[dns]` (or `[delivery] nameservers`), never the system resolver.

use hickory_resolver::TokioResolver;

use super::keys::{self, Published};
use crate::config::DkimKeyConfig;

/// The verdict on one key.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyStatus {
    Matches,
    /// Published, but another key (or another algorithm).
    Differs,
    /// Published with an empty `p=`.
    Revoked,
    /// No TXT record at the name (NXDOMAIN or no data).
    Missing,
    /// A record that is not a DKIM key record; the reason.
    Invalid(String),
    /// DNS failed (timeout, SERVFAIL); the error.
    LookupFailed(String),
    /// Our key file failed; the error.
    KeyUnreadable(String),
}

impl KeyStatus {
    pub fn ok(&self) -> bool {
        *self == KeyStatus::Matches
    }
}

/// Looks up `key`'s record and compares it with the key file.
pub async fn check_key(resolver: &TokioResolver, key: &DkimKeyConfig) -> KeyStatus {
    let ours = match keys::PrivateKey::load(&key.private_key).and_then(|k| keys::ours(&k)) {
        Ok(o) => o,
        Err(e) => return KeyStatus::KeyUnreadable(format!("{e:#}")),
    };
    let name = format!("{}.", keys::record_name(&key.selector, &key.domain));
    let records: Vec<String> = match resolver.txt_lookup(name.as_str()).await {
        Ok(lookup) => lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                hickory_resolver::proto::rr::RData::TXT(txt) => Some(
                    txt.txt_data
                        .iter()
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .collect(),
                ),
                _ => None,
            })
            .collect(),
        Err(e) if e.is_no_records_found() || e.is_nx_domain() => Vec::new(),
        Err(e) => return KeyStatus::LookupFailed(e.to_string()),
    };
    // Only records that claim to be DKIM keys count (RFC 6376 3.6.2.2 allows other TXT).
    let dkim: Vec<&String> = records.iter().filter(|r| r.contains("p=")).collect();
    match dkim.as_slice() {
        [] => KeyStatus::Missing,
        [one] => match keys::parse_record(one) {
            Ok(published) if published == ours => KeyStatus::Matches,
            Ok(Published::Revoked) => KeyStatus::Revoked,
            Ok(Published::Key { .. }) => KeyStatus::Differs,
            Err(e) => KeyStatus::Invalid(e),
        },
        _ => KeyStatus::Invalid(format!("{} key records at one name", dkim.len())),
    }
}

/// One line of the report.
pub fn describe(key: &DkimKeyConfig, status: &KeyStatus) -> String {
    let name = keys::record_name(&key.selector, &key.domain);
    let verdict = match status {
        KeyStatus::Matches => "OK: published record matches the key".to_owned(),
        KeyStatus::Differs => "MISMATCH: the published record holds another key".to_owned(),
        KeyStatus::Revoked => "REVOKED: the published record has an empty p=".to_owned(),
        KeyStatus::Missing => "MISSING: no TXT record published".to_owned(),
        KeyStatus::Invalid(e) => format!("INVALID: {e}"),
        KeyStatus::LookupFailed(e) => format!("LOOKUP FAILED: {e}"),
        KeyStatus::KeyUnreadable(e) => format!("KEY UNREADABLE: {e}"),
    };
    format!("{name}: {verdict}")
}
