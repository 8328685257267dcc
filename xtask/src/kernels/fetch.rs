//! Debian kernel packages fetched with apt into `target/kernels/<id>/`, through a private apt
//! state (its own source list, package lists, cache and dpkg status), so the host's apt sources
//! and state stay untouched. A kernel fetched once is reused without any download.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use super::{
    Kernel,
    sources::{Mirror, Mirrors},
};
use crate::shell::{self, step};

/// The metapackage each suite points at its current kernel with.
const METAPACKAGE: &str = "linux-image-amd64";
/// Written last, so its presence means the package was downloaded and unpacked completely.
const STAMP: &str = "package.txt";

/// A kernel package unpacked in the cache.
#[derive(Clone, Debug)]
pub struct Fetched {
    /// The binary package, e.g. `linux-image-6.12.117+deb13-amd64`.
    pub package: String,
    /// Its Debian version, e.g. `6.12.117-1`.
    pub version: String,
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>` (or `usr/lib/modules/<release>` on merged-/usr packages).
    pub modules: PathBuf,
}

/// The kernel in the cache at `dir`, if an earlier run fetched it completely.
pub fn cached(dir: &Path) -> anyhow::Result<Option<Fetched>> {
    let Some((package, version)) = read_stamp(dir) else {
        return Ok(None);
    };
    locate(&dir.join("root"), package, version).map(Some)
}

/// Resolves the suite's current kernel package, downloads it and unpacks it into `dir`.
pub fn download(kernel: &Kernel, dir: &Path, mirrors: &Mirrors) -> anyhow::Result<Fetched> {
    let root = dir.join("root");
    step(&format!(
        "kernels: fetching {} ({}) from the `{}` suite with a private apt state",
        kernel.id, kernel.about, kernel.suite
    ));
    let apt = PrivateApt::create(&dir.join("apt"), mirrors.get(kernel.archive), kernel.suite)?;
    shell::run(apt.command("apt-get").args(["-q", "update"]))
        .with_context(|| format!("`apt-get update` for the {} suite failed", kernel.suite))?;
    let (package, version) = apt.resolve_metapackage()?;
    println!(
        "    {METAPACKAGE} in {} → {package} {version}",
        kernel.suite
    );

    let debs = dir.join("deb");
    recreate_dir(&debs)?;
    shell::run(apt.command("apt-get").current_dir(&debs).args([
        "-q",
        "download",
        &format!("{package}={version}"),
    ]))
    .with_context(|| format!("downloading {package} {version} failed"))?;
    let deb = only_file(&debs, ".deb")?;

    let unpacking = dir.join("root.partial");
    recreate_dir(&unpacking)?;
    shell::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacking))
        .with_context(|| format!("unpacking {} failed", deb.display()))?;
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    }
    fs::rename(&unpacking, &root).with_context(|| format!("renaming to {}", root.display()))?;
    // The package is unpacked: the .deb and the private apt state (tens of MB of package
    // lists) are not needed again.
    for done in [&debs, &apt.dir] {
        fs::remove_dir_all(done).with_context(|| format!("removing {}", done.display()))?;
    }
    let fetched = locate(&root, package, version)?;
    fs::write(
        dir.join(STAMP),
        format!("{}\n{}\n", fetched.package, fetched.version),
    )
    .context("writing the cache stamp")?;
    Ok(fetched)
}

fn read_stamp(dir: &Path) -> Option<(String, String)> {
    let text = fs::read_to_string(dir.join(STAMP)).ok()?;
    let mut lines = text.lines();
    Some((lines.next()?.to_string(), lines.next()?.to_string()))
}

/// Finds the kernel image and the module tree in an unpacked package.
fn locate(root: &Path, package: String, version: String) -> anyhow::Result<Fetched> {
    let release = package
        .strip_prefix("linux-image-")
        .with_context(|| format!("{package} is not a linux-image package"))?;
    let vmlinuz = root.join("boot").join(format!("vmlinuz-{release}"));
    if !vmlinuz.is_file() {
        bail!(
            "{} is missing: delete {} to fetch again",
            vmlinuz.display(),
            root.display()
        );
    }
    let modules = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|base| root.join(base).join(release))
        .find(|path| path.join("modules.builtin").is_file())
        .with_context(|| format!("no modules for {release} under {}", root.display()))?;
    Ok(Fetched {
        package,
        version,
        vmlinuz,
        modules,
    })
}

/// An apt configuration of its own under `dir`: one suite of one mirror, its own package lists,
/// cache and an empty dpkg status (so packages installed on the host play no part).
struct PrivateApt {
    dir: PathBuf,
}

impl PrivateApt {
    fn create(dir: &Path, mirror: &Mirror, suite: &str) -> anyhow::Result<PrivateApt> {
        for sub in ["lists/partial", "cache/archives/partial"] {
            fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        fs::write(
            dir.join("sources.list"),
            format!(
                "deb [signed-by={}] {} {suite} main\n",
                mirror.keyring, mirror.uri
            ),
        )
        .context("writing the private source list")?;
        fs::write(dir.join("status"), "").context("writing the private dpkg status")?;
        Ok(PrivateApt {
            dir: dir.to_path_buf(),
        })
    }

    fn command(&self, tool: &str) -> Command {
        let path = |sub: &str| self.dir.join(sub).display().to_string();
        let mut cmd = Command::new(tool);
        for option in [
            format!("Dir::Etc::sourcelist={}", path("sources.list")),
            "Dir::Etc::sourceparts=-".to_string(),
            format!("Dir::State::lists={}", path("lists")),
            format!("Dir::State::status={}", path("status")),
            format!("Dir::Cache={}", path("cache")),
            // Only the package index is needed: no translations, no AppStream metadata.
            "Acquire::Languages=none".to_string(),
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".to_string(),
            "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false".to_string(),
            "Acquire::IndexTargets::deb::DEP-11-icons-hidpi::DefaultEnabled=false".to_string(),
            // The private directories belong to whoever runs this, not to the `_apt` user.
            "APT::Sandbox::User=root".to_string(),
        ] {
            cmd.arg("-o").arg(option);
        }
        cmd
    }

    /// The kernel package the suite's metapackage depends on, with its exact version.
    fn resolve_metapackage(&self) -> anyhow::Result<(String, String)> {
        let out = shell::output(self.command("apt-cache").args(["show", METAPACKAGE]))
            .with_context(|| format!("`apt-cache show {METAPACKAGE}` found nothing"))?;
        kernel_dependency(&out)
            .with_context(|| format!("{METAPACKAGE} depends on no linux-image package:\n{out}"))
    }
}

/// The `linux-image-*` dependency of a metapackage's `apt-cache show` record: its name and the
/// version it is pinned to.
fn kernel_dependency(record: &str) -> Option<(String, String)> {
    let depends = record
        .lines()
        .find_map(|line| line.strip_prefix("Depends:"))?;
    depends.split([',', '|']).find_map(|dep| {
        let dep = dep.trim();
        let (name, rest) = dep.split_once(' ').unwrap_or((dep, ""));
        let version = rest.trim().strip_prefix("(=")?.trim_end_matches(')').trim();
        name.starts_with("linux-image-")
            .then(|| (name.to_string(), version.to_string()))
    })
}

fn recreate_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

fn only_file(dir: &Path, suffix: &str) -> anyhow::Result<PathBuf> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.to_string_lossy().ends_with(suffix) {
            found.push(path);
        }
    }
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!(
            "expected one {suffix} file in {}, found {found:?}",
            dir.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metapackage_names_the_kernel_and_its_version() {
        let record = "Package: linux-image-amd64\nSource: linux-signed-amd64 (6.1.176+1)\n\
            Version: 6.1.176-1\nDepends: linux-image-6.1.0-44-amd64 (= 6.1.176-1)\n";
        assert_eq!(
            kernel_dependency(record),
            Some((
                "linux-image-6.1.0-44-amd64".to_string(),
                "6.1.176-1".to_string()
            ))
        );
    }

    #[test]
    fn a_dependency_without_a_pinned_version_is_not_taken() {
        assert_eq!(
            kernel_dependency("Depends: linux-image-6.1.0-44-amd64\n"),
            None
        );
    }
}
