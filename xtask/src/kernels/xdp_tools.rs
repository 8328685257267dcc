//! xdp-tools in the guest: the dispatcher test (`xdp_dispatcher_e2e`) shares a veth with
//! Debian's `xdp-filter` and reads `xdp-loader status`, so the guest gets both tools and every
//! BPF object libxdp loads (its dispatcher, xdp-filter's programs), taken from the host's
//! installed packages at the paths dpkg put them (libxdp looks for its objects at a compiled-in
//! path). Their shared libraries (libxdp, libbpf, libelf…) follow through `ldd` like every other
//! executable's.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

use crate::shell::output;

/// The Debian packages whose files go into the guest.
const PACKAGES: &[&str] = &["xdp-tools", "libxdp1"];
/// The tools the test runs.
const TOOLS: &[&str] = &["xdp-loader", "xdp-filter"];

/// The host's xdp-tools files for the guest.
pub struct XdpTools {
    /// `xdp-loader`, `xdp-filter`: installed into the guest's `/bin`.
    pub tools: Vec<PathBuf>,
    /// libxdp's BPF objects (`…/bpf/*.o`): installed at the same paths.
    pub objects: Vec<PathBuf>,
}

/// What `dpkg -L` says the packages installed; an error naming `cargo xtask setup` when one is
/// missing.
pub fn find() -> anyhow::Result<XdpTools> {
    let listing = output(Command::new("dpkg").arg("-L").args(PACKAGES)).with_context(|| {
        format!(
            "`dpkg -L {}` failed: run `cargo xtask setup`",
            PACKAGES.join(" ")
        )
    })?;
    let mut found = from_listing(&listing);
    // Directories of the listing never match; a file an admin removed is left out (and missed).
    found.tools.retain(|p| p.is_file());
    found.objects.retain(|p| p.is_file());
    if found.tools.len() != TOOLS.len() || found.objects.is_empty() {
        bail!(
            "the installed {} lack {} or libxdp's BPF objects: run `cargo xtask setup`",
            PACKAGES.join(", "),
            TOOLS.join(", ")
        );
    }
    Ok(found)
}

/// The tools and objects among the paths of a `dpkg -L` listing.
fn from_listing(listing: &str) -> XdpTools {
    let paths: Vec<PathBuf> = listing
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('/'))
        .map(PathBuf::from)
        .collect();
    let tools = paths
        .iter()
        .filter(|p| p.file_name().is_some_and(|n| TOOLS.iter().any(|t| n == *t)))
        .cloned()
        .collect();
    let objects = paths
        .iter()
        .filter(|p| {
            p.extension().is_some_and(|e| e == "o")
                && p.parent().is_some_and(|d| d.ends_with("bpf"))
        })
        .cloned()
        .collect();
    XdpTools { tools, objects }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_and_objects_are_picked_from_the_listing() {
        let listing = "/.\n/usr/sbin\n/usr/sbin/xdp-loader\n/usr/sbin/xdp-filter\n/usr/sbin/xdpdump\n\
            /usr/lib/x86_64-linux-gnu/bpf/xdp-dispatcher.o\n/usr/share/man/man8/xdp-loader.8.gz\n";
        let found = from_listing(listing);
        assert_eq!(
            found.tools,
            [
                PathBuf::from("/usr/sbin/xdp-loader"),
                PathBuf::from("/usr/sbin/xdp-filter")
            ]
        );
        assert_eq!(
            found.objects,
            [PathBuf::from(
                "/usr/lib/x86_64-linux-gnu/bpf/xdp-dispatcher.o"
            )]
        );
    }
}
