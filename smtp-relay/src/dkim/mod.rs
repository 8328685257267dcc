//! DKIM signing of outbound mail (RFC 6376, RFC 8463) with mail-auth's signer.
//!
//! Where: at delivery, when the queue has read the message to send it. The spool file already
//! starts with our `Received:` field, so the signature goes on top of it; the DATA path only
//! records in the envelope whether the client authenticated or came from `trusted_networks`
//! (mail from anyone else is never signed). Signing at delivery needs no second copy of the
//! message in memory while the client waits at its final dot (the queue holds it anyway), and
//! messages queued before a key rotation are signed with the current keys.
//!
//! What: the usual header set with `From:` over-signed (listed once more than it occurs, so no
//! second `From:` can be added), relaxed/relaxed, one signature per key of the `From:` domain
//! (Ed25519 and RSA together give dual signatures, RFC 8463 6).

pub mod check;
pub mod keyfile;
pub mod keys;

use std::collections::HashMap;

use anyhow::Context as _;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter as _;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};

use crate::config::DkimConfig;
use keys::{Algorithm, PrivateKey};

/// Signed header fields. `From` twice: over-signing (RFC 6376 8.15). mail-auth also lists the
/// fields a message lacks, so they cannot be added after signing either.
pub const SIGNED_HEADERS: [&str; 13] = [
    "From",
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
];

enum KeySigner {
    Ed25519(DkimSigner<Ed25519Key, Done>),
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
}

struct DomainKey {
    selector: String,
    algorithm: Algorithm,
    signer: KeySigner,
}

/// The signatures added to one message.
#[derive(Debug)]
pub struct Signed {
    /// `DKIM-Signature:` fields, CRLF-terminated, to put on top of the message.
    pub fields: String,
    /// `d=` of the signatures.
    pub domain: String,
    /// One per signature: `selector/algorithm`.
    pub keys: Vec<String>,
}

/// Every configured key, by signing domain.
pub struct Signer {
    domains: HashMap<String, Vec<DomainKey>>,
}

impl Signer {
    /// Reads every key file; an unreadable or unusable key is an error naming it.
    pub fn from_config(config: &DkimConfig) -> anyhow::Result<Signer> {
        let mut domains: HashMap<String, Vec<DomainKey>> = HashMap::new();
        for k in &config.keys {
            let key = PrivateKey::load(&k.private_key)
                .with_context(|| format!("DKIM key {} for {}", k.selector, k.domain))?;
            let algorithm = key.algorithm();
            let signer = match key {
                PrivateKey::Ed25519(key) => KeySigner::Ed25519(template(key, k)),
                PrivateKey::Rsa(key) => KeySigner::Rsa(template(key, k)),
            };
            domains
                .entry(k.domain.clone())
                .or_default()
                .push(DomainKey {
                    selector: k.selector.clone(),
                    algorithm,
                    signer,
                });
        }
        Ok(Signer { domains })
    }

    /// The keys for `domain`: its own, else those of its closest parent that has keys
    /// (DMARC's relaxed alignment accepts a parent's signature).
    fn keys_for(&self, domain: &str) -> Option<(&str, &[DomainKey])> {
        let mut d = domain;
        loop {
            if let Some((name, keys)) = self.domains.get_key_value(d) {
                return Some((name, keys));
            }
            d = d.split_once('.')?.1;
        }
    }

    /// Signs `message` when its `From:` domain has keys. `Ok(None)`: no key for it (or no
    /// single `From:` domain); `Err`: signing failed (the message goes out unsigned).
    pub fn sign(&self, message: &[u8]) -> anyhow::Result<Option<Signed>> {
        let Some(from_domain) = from_domain(message) else {
            return Ok(None);
        };
        let Some((domain, keys)) = self.keys_for(&from_domain) else {
            return Ok(None);
        };
        let mut fields = String::new();
        let mut names = Vec::with_capacity(keys.len());
        for k in keys {
            let signature = match &k.signer {
                KeySigner::Ed25519(s) => s.sign(message),
                KeySigner::Rsa(s) => s.sign(message),
            }
            .map_err(|e| anyhow::anyhow!("signing with {}: {e}", k.selector))?;
            fields.push_str(&signature.to_header());
            crate::metrics::dkim_signed(k.algorithm);
            names.push(format!("{}/{}", k.selector, k.algorithm.as_str()));
        }
        Ok(Some(Signed {
            fields,
            domain: domain.to_owned(),
            keys: names,
        }))
    }
}

fn template<T: mail_auth::common::crypto::SigningKey>(
    key: T,
    config: &crate::config::DkimKeyConfig,
) -> DkimSigner<T, Done> {
    DkimSigner::from_key(key)
        .domain(config.domain.clone())
        .selector(config.selector.clone())
        .headers(SIGNED_HEADERS)
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed)
}

/// The domain of the `From:` field, lowercased, when every address in it shares one domain.
fn from_domain(message: &[u8]) -> Option<String> {
    let parsed = mail_auth::AuthenticatedMessage::parse(message)?;
    let mut domains = parsed
        .from
        .iter()
        .map(|a| a.rsplit_once('@').map(|(_, d)| d.trim_end_matches('.')));
    let first = domains.next()??;
    domains
        .all(|d| d == Some(first))
        .then(|| first.to_ascii_lowercase())
}
