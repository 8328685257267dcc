//! The Debian mirrors this host already uses, read from its own apt configuration, so the kernel
//! matrix fetches from wherever the machine is configured to fetch (no mirror is written down in
//! this repository).

use std::path::Path;

use anyhow::{Context as _, bail};

/// The host's deb822 source file for Debian.
pub const HOST_SOURCES: &str = "/etc/apt/sources.list.d/debian.sources";
/// The keyring Debian's own sources are signed with, used when a stanza names no file.
const DEFAULT_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Which Debian archive a suite lives in: the main archive or the security archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Archive {
    Debian,
    Security,
}

/// Where one archive is and which keyring checks its signatures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mirror {
    pub uri: String,
    pub keyring: String,
}

/// The host's mirrors for both archives.
#[derive(Clone, Debug)]
pub struct Mirrors {
    debian: Mirror,
    security: Mirror,
}

impl Mirrors {
    pub fn from_host() -> anyhow::Result<Mirrors> {
        let path = Path::new(HOST_SOURCES);
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the host's apt sources {}", path.display()))?;
        Mirrors::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// Reads deb822 stanzas: a stanza whose suites end in `-security` names the security
    /// archive, any other `deb` stanza the main archive.
    pub fn parse(text: &str) -> anyhow::Result<Mirrors> {
        let (mut debian, mut security) = (None, None);
        for stanza in text.split("\n\n") {
            let field = |name: &str| {
                stanza.lines().find_map(|line| {
                    let (key, value) = line.split_once(':')?;
                    key.trim()
                        .eq_ignore_ascii_case(name)
                        .then(|| value.trim().to_string())
                })
            };
            let (Some(types), Some(uris), Some(suites)) =
                (field("Types"), field("URIs"), field("Suites"))
            else {
                continue;
            };
            if field("Enabled").is_some_and(|v| v.eq_ignore_ascii_case("no"))
                || !types.split_whitespace().any(|t| t == "deb")
            {
                continue;
            }
            let Some(uri) = uris.split_whitespace().next() else {
                continue;
            };
            // Signed-By may hold an inline key instead of a path; only a path can be passed on.
            let keyring = field("Signed-By")
                .filter(|k| k.starts_with('/'))
                .unwrap_or_else(|| DEFAULT_KEYRING.to_string());
            let mirror = Mirror {
                uri: uri.trim_end_matches('/').to_string(),
                keyring,
            };
            let slot = if suites.split_whitespace().any(|s| s.ends_with("-security")) {
                &mut security
            } else {
                &mut debian
            };
            slot.get_or_insert(mirror);
        }
        match (debian, security) {
            (Some(debian), Some(security)) => Ok(Mirrors { debian, security }),
            (None, _) => bail!("no enabled `Types: deb` stanza for the main Debian archive"),
            (_, None) => bail!("no enabled `Types: deb` stanza for a `-security` suite"),
        }
    }

    pub fn get(&self, archive: Archive) -> &Mirror {
        match archive {
            Archive::Debian => &self.debian,
            Archive::Security => &self.security,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: &str = "Types: deb\n# a comment\nURIs: http://mirror.example/debian/\n\
        Suites: bookworm bookworm-updates\nComponents: main\n\
        Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
        Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\
        Components: main\n";

    #[test]
    fn both_archives_are_found_with_their_keyrings() -> anyhow::Result<()> {
        let mirrors = Mirrors::parse(HOST)?;
        assert_eq!(
            mirrors.get(Archive::Debian).uri,
            "http://mirror.example/debian"
        );
        assert_eq!(
            mirrors.get(Archive::Security).uri,
            "http://mirror.example/debian-security"
        );
        assert_eq!(mirrors.get(Archive::Security).keyring, DEFAULT_KEYRING);
        Ok(())
    }

    #[test]
    fn a_missing_security_stanza_is_an_error() {
        let text = HOST.split("\n\n").next().unwrap_or_default();
        assert!(Mirrors::parse(text).is_err());
    }
}
