//! The guest's root filesystem: a gzip'd cpio (newc) archive the kernel unpacks into RAM. It comes
//! in two layers the kernel unpacks one after the other: a common layer built once per run
//! (busybox, iproute2's `ip`, the test binaries, every shared library they load, `/init`) and a
//! small per-kernel layer with that kernel's modules.

use std::{
    collections::BTreeSet,
    fs,
    io::Write as _,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use super::{
    init::init_script,
    modules::{MODULES, Modules},
    suites::Suite,
    xdp_tools::XdpTools,
};
use crate::shell::{self, output};

/// Where the test binaries and the daemon live in the guest.
pub const GUEST_BIN: &str = "/matrix/bin";

/// What goes into the common layer.
pub struct Contents<'a> {
    pub suites: &'a [(Suite, PathBuf)],
    /// The daemon binary the end-to-end tests spawn (`GATEKEEPER_BIN` in the guest).
    pub gatekeeper: &'a Path,
    /// xdp-tools for the dispatcher test.
    pub xdp_tools: &'a XdpTools,
}

/// Builds the common layer from a staging tree at `staging` (left in place for inspection).
pub fn build_common(contents: &Contents<'_>, staging: &Path, out: &Path) -> anyhow::Result<()> {
    recreate_dir(staging)?;
    for dir in ["proc", "sys", "dev", "run", "tmp", "var", "modules", "bin"] {
        fs::create_dir_all(staging.join(dir))?;
    }
    // iproute2 keeps `ip netns` state under /var/run/netns.
    symlink("../run", staging.join("var/run"))?;

    let ip = find_program("ip")?;
    let busybox = find_program("busybox")?;
    let mut executables = vec![
        install(&busybox, &staging.join("bin/busybox"))?,
        install(&ip, &staging.join("bin/ip"))?,
    ];
    for tool in &contents.xdp_tools.tools {
        let name = tool.file_name().context("a tool without a file name")?;
        executables.push(install(tool, &staging.join("bin").join(name))?);
    }
    for object in &contents.xdp_tools.objects {
        install_at_same_path(object, staging)?;
    }
    install_applets(&busybox, staging)?;

    let bin = staging.join(GUEST_BIN.trim_start_matches('/'));
    fs::create_dir_all(&bin)?;
    for (suite, path) in contents.suites {
        executables.push(install_stripped(path, &bin.join(suite.name))?);
    }
    executables.push(install_stripped(
        contents.gatekeeper,
        &bin.join("gatekeeper"),
    )?);
    install_libraries(&executables, staging)?;

    let init = staging.join("init");
    let suites: Vec<Suite> = contents.suites.iter().map(|(s, _)| *s).collect();
    fs::write(&init, init_script(&suites)).context("writing /init")?;
    set_executable(&init)?;
    pack(staging, out)
}

/// Builds the per-kernel layer: the modules the tests need and their dependencies, decompressed,
/// with `/modules/order` listing them in load order.
pub fn build_modules(modules_dir: &Path, staging: &Path, out: &Path) -> anyhow::Result<()> {
    recreate_dir(staging)?;
    let target = staging.join("modules");
    fs::create_dir_all(&target)?;
    let mut modules = Modules::index(modules_dir)?;
    for module in MODULES {
        modules.add(module, &target)?;
    }
    let order: String = modules
        .order()
        .iter()
        .map(|m| format!("{m}.ko\n"))
        .collect();
    fs::write(target.join("order"), order).context("writing /modules/order")?;
    pack(staging, out)
}

/// Concatenates layers into one initrd file for qemu's `-initrd`.
pub fn concatenate(layers: &[&Path], out: &Path) -> anyhow::Result<()> {
    let mut file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    for layer in layers {
        let bytes = fs::read(layer).with_context(|| format!("reading {}", layer.display()))?;
        file.write_all(&bytes)?;
    }
    Ok(())
}

/// A program on PATH (or in the sbin directories a non-root PATH may lack), symlinks resolved.
fn find_program(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
        .and_then(|p| fs::canonicalize(p).ok())
        .with_context(|| format!("`{name}` not found: run `cargo xtask setup`"))
}

/// A symlink for each busybox applet, except names another file in `/bin` already provides.
fn install_applets(busybox: &Path, staging: &Path) -> anyhow::Result<()> {
    let list = output(Command::new(busybox).arg("--list"))
        .with_context(|| format!("`{} --list` failed", busybox.display()))?;
    for applet in list.lines().filter(|a| !a.is_empty() && *a != "busybox") {
        let link = staging.join("bin").join(applet);
        if !link.exists() {
            symlink("busybox", &link)?;
        }
    }
    Ok(())
}

fn install(source: &Path, dest: &Path) -> anyhow::Result<PathBuf> {
    fs::copy(source, dest)
        .with_context(|| format!("copying {} to {}", source.display(), dest.display()))?;
    Ok(dest.to_path_buf())
}

/// Copies a binary without its debug info: the guest's RAM holds the whole archive, and symbol
/// names (kept) are enough for backtraces.
fn install_stripped(source: &Path, dest: &Path) -> anyhow::Result<PathBuf> {
    shell::run(
        Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(dest)
            .arg(source),
    )
    .with_context(|| format!("stripping {}", source.display()))?;
    Ok(dest.to_path_buf())
}

/// Copies every shared library `executables` load (per `ldd`), and the dynamic loader, to the
/// same paths in the staging tree.
fn install_libraries(executables: &[PathBuf], staging: &Path) -> anyhow::Result<()> {
    let mut libraries = BTreeSet::new();
    for exe in executables {
        // `ldd` fails on a static binary such as busybox-static: it needs no libraries.
        if let Some(text) = output(Command::new("ldd").arg(exe)) {
            libraries.extend(ldd_paths(&text));
        }
    }
    for library in &libraries {
        install_at_same_path(library, staging)?;
    }
    Ok(())
}

/// Copies a host file to the same path in the staging tree.
fn install_at_same_path(source: &Path, staging: &Path) -> anyhow::Result<PathBuf> {
    let dest = staging.join(source.strip_prefix("/").unwrap_or(source));
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent)?;
    }
    install(source, &dest)
}

/// The absolute paths in `ldd` output: `libc.so.6 => /lib/.../libc.so.6 (0x…)` and the loader's
/// bare `/lib64/ld-linux-x86-64.so.2 (0x…)`; the vDSO has no file.
fn ldd_paths(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = line.split_once("=>").map_or(line, |(_, p)| p.trim());
            let path = path.split(" (").next()?.trim();
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

fn set_executable(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", path.display()))
}

fn recreate_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// Every path under `dir`, relative, parents before children (what cpio needs).
fn tree(dir: &Path, prefix: &Path, into: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let relative = prefix.join(entry.file_name());
        into.push(relative.clone());
        if entry.file_type()?.is_dir() {
            tree(&entry.path(), &relative, into)?;
        }
    }
    Ok(())
}

/// `cpio -o -H newc | gzip` of the staging tree, owned by root in the archive.
fn pack(staging: &Path, out: &Path) -> anyhow::Result<()> {
    let mut paths = Vec::new();
    tree(staging, Path::new("."), &mut paths)?;
    let file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut gzip = Command::new("gzip")
        .args(["-1", "-n"])
        .stdin(Stdio::piped())
        .stdout(file)
        .spawn()
        .context("could not start gzip")?;
    let gzip_in = gzip.stdin.take().context("no gzip stdin")?;
    let mut cpio = Command::new("cpio")
        .args(["--quiet", "-o", "-H", "newc", "-R", "0:0"])
        .current_dir(staging)
        .stdin(Stdio::piped())
        .stdout(gzip_in)
        .spawn()
        .context("could not start cpio: run `cargo xtask setup`")?;
    {
        let mut list = cpio.stdin.take().context("no cpio stdin")?;
        for path in &paths {
            writeln!(list, "{}", path.display())?;
        }
    }
    let cpio_status = cpio.wait()?;
    let gzip_status = gzip.wait()?;
    if !cpio_status.success() || !gzip_status.success() {
        bail!(
            "packing {} failed (cpio {cpio_status}, gzip {gzip_status})",
            staging.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_libraries_and_the_loader() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            ldd_paths(text),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
    }
}
