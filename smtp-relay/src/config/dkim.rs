//! `[dkim]`: the keys that sign outbound mail (RFC 6376, RFC 8463). One `[[dkim.key]]` per
//! signing domain and selector; two keys of one domain (Ed25519 and RSA) give two signatures.
//! The key files are read by `crate::dkim` when the relay starts (and by `smtp-relay check`).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Invalid, KeyPath, ensure, resolve};

#[derive(Debug, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawDkim {
    #[serde(rename = "key")]
    keys: Vec<RawDkimKey>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDkimKey {
    domain: String,
    selector: String,
    private_key: PathBuf,
}

/// One signing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimKeyConfig {
    /// `d=`, lowercased: signs mail whose `From:` is in this domain.
    pub domain: String,
    /// `s=`: the record is published at `<selector>._domainkey.<domain>`.
    pub selector: String,
    /// PEM, PKCS#8 (as `smtp-relay dkim keygen` writes it) or PKCS#1 for RSA; the algorithm
    /// follows from the key.
    pub private_key: PathBuf,
}

/// The validated `[dkim]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimConfig {
    pub keys: Vec<DkimKeyConfig>,
}

/// A selector is one or more DNS labels (RFC 6376 3.1).
pub fn is_selector(s: &str) -> bool {
    crate::address::is_host_name(s)
}

pub(super) fn validate(raw: RawDkim, base: &Path, at: &KeyPath) -> Result<DkimConfig, Invalid> {
    ensure(
        !raw.keys.is_empty(),
        at,
        "no [[dkim.key]]: add one per signing domain and selector, or remove [dkim]",
    )?;
    let mut keys: Vec<DkimKeyConfig> = Vec::new();
    for (i, k) in raw.keys.into_iter().enumerate() {
        let key_at = at.key("key").index(i);
        ensure(
            crate::address::is_host_name(&k.domain),
            &key_at.key("domain"),
            "not a domain",
        )?;
        ensure(
            is_selector(&k.selector),
            &key_at.key("selector"),
            "not a selector (DNS labels: letters, digits, hyphens, dots)",
        )?;
        let domain = k.domain.to_ascii_lowercase();
        ensure(
            !keys
                .iter()
                .any(|o| o.domain == domain && o.selector.eq_ignore_ascii_case(&k.selector)),
            &key_at.key("selector"),
            "this domain already has a key with this selector",
        )?;
        keys.push(DkimKeyConfig {
            domain,
            selector: k.selector,
            private_key: resolve(base, &k.private_key),
        });
    }
    Ok(DkimConfig { keys })
}
