//! argon2id password hashes (PHC strings): checking a configured hash,
//! hashing a new password, verifying one. Used by the config (to refuse a
//! malformed hash at load) and by [`crate::auth`] (to verify at AUTH), so it
//! sits below both.

use std::sync::OnceLock;

use anyhow::Context as _;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2};

/// Checks that `phc` is a well-formed argon2id hash with usable parameters.
pub fn check_hash(phc: &str) -> anyhow::Result<()> {
    let hash = PasswordHash::new(phc)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("not a PHC hash string (generate one with `smtp-relay hash-password`)")?;
    anyhow::ensure!(
        hash.algorithm == Algorithm::Argon2id.ident(),
        "algorithm is {}, expected argon2id",
        hash.algorithm
    );
    argon2::Params::try_from(&hash)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("bad argon2 parameters")?;
    anyhow::ensure!(
        hash.hash.is_some() && hash.salt.is_some(),
        "hash or salt missing"
    );
    Ok(())
}

/// Hashes `password` with argon2id and the crate's default (OWASP) parameters.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing failed: {e}"))
}

/// Whether `password` matches the PHC string `phc` (slow: call it on the
/// blocking pool).
pub fn verify(phc: &str, password: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(hash) => Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok(),
        Err(_) => false,
    }
}

/// A hash of a random password, verified against for unknown user names so
/// that they take as long as known ones.
pub(crate) fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        hash_password(salt.as_str()).unwrap_or_default()
    })
}

/// A hash with cheap parameters: tests must not spend seconds per hash.
#[cfg(test)]
pub(crate) fn cheap_hash(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    let params = argon2::Params::new(64, 1, 1, None).expect("params");
    Argon2::new(Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .expect("hash")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_password_produces_checkable_argon2id() {
        let h = hash_password("pw").expect("hash");
        assert!(h.starts_with("$argon2id$"), "{h}");
        check_hash(&h).expect("valid");
        assert!(verify(&h, "pw"));
        assert!(!verify(&h, "pW"));
    }

    #[test]
    fn check_hash_refuses_junk() {
        assert!(check_hash("secret").is_err());
        assert!(
            check_hash("$argon2i$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$Hl5xgeqfV3fP1s/UVQcaVQ").is_err()
        );
        assert!(check_hash("$argon2id$v=19$m=64,t=1,p=1").is_err());
        check_hash(&cheap_hash("x")).expect("cheap hash valid");
    }
}
