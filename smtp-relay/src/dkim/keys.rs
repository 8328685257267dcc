//! DKIM keys: reading the private key files, generating new ones (`smtp-relay dkim keygen`) and
//! the public key as the DNS TXT record publishes it (RFC 6376 3.6.1, RFC 8463 4).

use std::path::Path;

use anyhow::Context as _;
use base64ct::{Base64, Encoding as _};
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use rsa::pkcs1::DecodeRsaPublicKey as _;
use rsa::pkcs8::{DecodePublicKey as _, EncodePrivateKey as _, EncodePublicKey as _, LineEnding};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject as _;

/// RSA modulus size of generated keys (RFC 8301: at least 1024, 2048 recommended; larger keys
/// no longer fit one DNS TXT string and some verifiers refuse them).
pub const RSA_BITS: usize = 2048;

/// The signature algorithms we sign with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, clap::ValueEnum)]
#[strum(serialize_all = "lowercase")]
pub enum Algorithm {
    /// ed25519-sha256 (RFC 8463): short keys, fast; not every verifier knows it yet.
    Ed25519,
    /// rsa-sha256 with a 2048-bit key: understood everywhere.
    Rsa,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// A private key that signs.
pub enum PrivateKey {
    Ed25519(Ed25519Key),
    Rsa(RsaKey<Sha256>),
}

impl PrivateKey {
    /// Reads a PEM file: PKCS#8 (Ed25519 or RSA) or PKCS#1 (RSA).
    pub fn load(path: &Path) -> anyhow::Result<PrivateKey> {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        PrivateKey::from_pem(&pem).with_context(|| format!("{}", path.display()))
    }

    pub fn from_pem(pem: &[u8]) -> anyhow::Result<PrivateKey> {
        let der = PrivateKeyDer::from_pem_slice(pem)
            .map_err(|e| anyhow::anyhow!("not a PEM private key: {e}"))?;
        match &der {
            PrivateKeyDer::Pkcs8(p8) => {
                // ring wants PKCS#8 v2 (with the public key); OpenSSL writes v1.
                if let Ok(k) = Ed25519Key::from_pkcs8_maybe_unchecked_der(p8.secret_pkcs8_der()) {
                    return Ok(PrivateKey::Ed25519(k));
                }
            }
            PrivateKeyDer::Pkcs1(_) => {}
            _ => anyhow::bail!("unsupported key type (want Ed25519 or RSA)"),
        }
        let rsa = RsaKey::<Sha256>::from_key_der(der)
            .map_err(|e| anyhow::anyhow!("neither an Ed25519 nor a usable RSA key: {e}"))?;
        Ok(PrivateKey::Rsa(rsa))
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            PrivateKey::Ed25519(_) => Algorithm::Ed25519,
            PrivateKey::Rsa(_) => Algorithm::Rsa,
        }
    }

    /// The public key as it is compared: the raw 32 octets for Ed25519, PKCS#1 DER for RSA.
    pub fn public_key(&self) -> Vec<u8> {
        match self {
            PrivateKey::Ed25519(k) => k.public_key(),
            PrivateKey::Rsa(k) => k.public_key(),
        }
    }

    /// The TXT record's value: `v=DKIM1; k=...; p=...` (RSA keys as SubjectPublicKeyInfo, the
    /// form OpenDKIM and `openssl rsa -pubout` publish).
    pub fn record(&self) -> anyhow::Result<String> {
        let p = match self {
            PrivateKey::Ed25519(k) => k.public_key(),
            PrivateKey::Rsa(k) => rsa::RsaPublicKey::from_pkcs1_der(&k.public_key())
                .context("RSA public key")?
                .to_public_key_der()
                .context("RSA public key")?
                .into_vec(),
        };
        Ok(format!(
            "v=DKIM1; k={}; p={}",
            self.algorithm().as_str(),
            Base64::encode_string(&p)
        ))
    }
}

/// A new key as PKCS#8 PEM.
pub fn generate(algorithm: Algorithm) -> anyhow::Result<String> {
    let der = match algorithm {
        Algorithm::Ed25519 => Ed25519Key::generate_pkcs8()
            .map_err(|e| anyhow::anyhow!("generating an Ed25519 key: {e}"))?,
        Algorithm::Rsa => {
            let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, RSA_BITS)
                .context("generating an RSA key")?;
            key.to_pkcs8_der()
                .context("encoding the RSA key")?
                .as_bytes()
                .to_vec()
        }
    };
    rsa::pkcs8::der::pem::encode_string("PRIVATE KEY", LineEnding::LF, &der)
        .map_err(|e| anyhow::anyhow!("encoding the key as PEM: {e}"))
}

/// The DNS name of a key's record.
pub fn record_name(selector: &str, domain: &str) -> String {
    format!("{selector}._domainkey.{domain}")
}

/// A record in zone-file syntax, split into strings of at most 255 octets (RFC 1035 3.3.14).
pub fn zone_line(selector: &str, domain: &str, record: &str) -> String {
    let chunks: Vec<String> = record
        .as_bytes()
        .chunks(250)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    format!(
        "{}. IN TXT ( {} )",
        record_name(selector, domain),
        chunks.join(" ")
    )
}

/// What a published record says about a key.
#[derive(Debug, PartialEq, Eq)]
pub enum Published {
    Key {
        algorithm: Algorithm,
        key: Vec<u8>,
    },
    /// `p=` empty: the key was revoked (RFC 6376 3.6.1).
    Revoked,
}

/// Parses a TXT record's value (the strings concatenated). `Err` says what is wrong.
pub fn parse_record(txt: &str) -> Result<Published, String> {
    let mut k = "rsa".to_owned();
    let mut p: Option<String> = None;
    for tag in txt.split(';') {
        let Some((name, value)) = tag.split_once('=') else {
            if tag.trim().is_empty() {
                continue;
            }
            return Err(format!("malformed tag {:?}", tag.trim()));
        };
        let value: String = value.chars().filter(|c| !c.is_whitespace()).collect();
        match name.trim() {
            "v" if value != "DKIM1" => return Err(format!("v={value}, not DKIM1")),
            "k" => k = value.to_ascii_lowercase(),
            "p" => p = Some(value),
            _ => {}
        }
    }
    let p = p.ok_or("no p= tag")?;
    if p.is_empty() {
        return Ok(Published::Revoked);
    }
    let bytes = Base64::decode_vec(&p).map_err(|_| "p= is not base64".to_owned())?;
    match k.as_str() {
        "ed25519" => Ok(Published::Key {
            algorithm: Algorithm::Ed25519,
            key: bytes,
        }),
        "rsa" => {
            // SubjectPublicKeyInfo is what everyone publishes; RFC 6376 also allows PKCS#1.
            let key = rsa::RsaPublicKey::from_public_key_der(&bytes)
                .or_else(|_| rsa::RsaPublicKey::from_pkcs1_der(&bytes))
                .map_err(|_| "p= is not an RSA public key".to_owned())?;
            use rsa::pkcs1::EncodeRsaPublicKey as _;
            let der = key
                .to_pkcs1_der()
                .map_err(|e| format!("RSA public key: {e}"))?;
            Ok(Published::Key {
                algorithm: Algorithm::Rsa,
                key: der.as_bytes().to_vec(),
            })
        }
        other => Err(format!("unknown key type k={other}")),
    }
}

/// Our key in the same form as [`parse_record`] gives (RSA normalised through PKCS#1).
pub fn ours(key: &PrivateKey) -> anyhow::Result<Published> {
    let record = key.record()?;
    parse_record(&record).map_err(|e| anyhow::anyhow!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_load_and_their_records_parse_back() {
        for alg in [Algorithm::Ed25519, Algorithm::Rsa] {
            let pem = generate(alg).unwrap();
            let key = PrivateKey::from_pem(pem.as_bytes()).unwrap();
            assert_eq!(key.algorithm(), alg);
            let record = key.record().unwrap();
            assert!(record.starts_with(&format!("v=DKIM1; k={}; p=", alg.as_str())));
            match parse_record(&record).unwrap() {
                Published::Key { algorithm, key: k } => {
                    assert_eq!(algorithm, alg);
                    assert_eq!(k, key.public_key());
                }
                Published::Revoked => panic!("revoked"),
            }
        }
    }

    #[test]
    fn records_are_parsed_strictly() {
        assert_eq!(parse_record("v=DKIM1; p="), Ok(Published::Revoked));
        assert!(parse_record("v=DKIM2; p=AAAA").is_err());
        assert!(parse_record("v=DKIM1; k=dsa; p=AAAA").is_err());
        assert!(parse_record("v=DKIM1; k=ed25519").is_err());
        assert!(parse_record("v=DKIM1; k=rsa; p=AAAA").is_err());
    }

    #[test]
    fn long_records_are_split_for_the_zone_file() {
        let line = zone_line("s1", "example.org", &"x".repeat(600));
        assert!(line.starts_with("s1._domainkey.example.org. IN TXT ( \""));
        assert_eq!(line.matches('"').count(), 6);
    }
}
