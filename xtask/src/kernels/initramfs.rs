//! The guest's root filesystem: a gzip'd cpio (newc) archive the kernel unpacks into RAM. It comes
//! in two layers the kernel unpacks one after the other: a common layer built once per run
//! (busybox, iproute2's `ip`, the test binaries, every shared library they load, `/init`) and a
//! small per-kernel layer with that kernel's modules.

use std::{
    collections::{BTreeSet, HashMap},
    fs,
    io::Write as _,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use super::{console, suites::Suite};
use crate::shell::{self, output};

/// Where the test binaries and the daemon live in the guest.
pub const GUEST_BIN: &str = "/matrix/bin";
/// Modules the tests need that Debian builds as modules: veth for the namespace tests.
const MODULES: &[&str] = &["veth"];

/// What goes into the common layer.
pub struct Contents<'a> {
    pub suites: &'a [(Suite, PathBuf)],
    /// The daemon binary the end-to-end tests spawn (`GATEKEEPER_BIN` in the guest).
    pub gatekeeper: &'a Path,
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

/// Builds the per-kernel layer: the modules in `MODULES` and their dependencies, decompressed,
/// with `/modules/order` listing them in load order.
pub fn build_modules(modules_dir: &Path, staging: &Path, out: &Path) -> anyhow::Result<()> {
    recreate_dir(staging)?;
    let target = staging.join("modules");
    fs::create_dir_all(&target)?;
    let mut modules = Modules::index(modules_dir)?;
    for module in MODULES {
        modules.add(module, &target)?;
    }
    let order: String = modules.order.iter().map(|m| format!("{m}.ko\n")).collect();
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

/// A kernel's modules by name, and the ones picked so far in load order. The package ships no
/// `modules.dep` (its postinst runs depmod), so dependencies come from each module's own
/// `.modinfo`, as depmod reads them.
struct Modules {
    /// Module name (`-` read as `_`, as the kernel does) → file.
    files: HashMap<String, PathBuf>,
    builtin: Vec<String>,
    order: Vec<String>,
}

impl Modules {
    fn index(modules_dir: &Path) -> anyhow::Result<Modules> {
        let mut files = HashMap::new();
        let mut paths = Vec::new();
        tree(&modules_dir.join("kernel"), Path::new("kernel"), &mut paths)?;
        for path in paths {
            let text = path.to_string_lossy();
            if text.contains(".ko") {
                files.insert(module_name(&text), modules_dir.join(&path));
            }
        }
        let builtin_path = modules_dir.join("modules.builtin");
        let builtin = fs::read_to_string(&builtin_path)
            .with_context(|| format!("reading {}", builtin_path.display()))?
            .lines()
            .map(module_name)
            .collect();
        Ok(Modules {
            files,
            builtin,
            order: Vec::new(),
        })
    }

    /// Copies `name` (decompressed) and what it depends on into `target`, dependencies first.
    /// A module built into the kernel needs nothing.
    fn add(&mut self, name: &str, target: &Path) -> anyhow::Result<()> {
        let name = name.replace('-', "_");
        if self.order.contains(&name) || self.builtin.contains(&name) {
            return Ok(());
        }
        let source = self
            .files
            .get(&name)
            .with_context(|| format!("module {name} is neither shipped nor built in"))?;
        let dest = target.join(format!("{name}.ko"));
        decompress_module(source, &dest)?;
        let bytes = fs::read(&dest).with_context(|| format!("reading {}", dest.display()))?;
        // Marked before its dependencies so that a dependency cycle cannot recurse forever.
        self.order.push(name.clone());
        for dep in modinfo_depends(&bytes) {
            self.add(&dep, target)?;
        }
        // Dependencies were appended after it: move the module itself behind them.
        self.order.retain(|m| *m != name);
        self.order.push(name);
        Ok(())
    }
}

/// The `depends=` field of a module's `.modinfo` section: NUL-separated `key=value` strings.
fn modinfo_depends(module: &[u8]) -> Vec<String> {
    module
        .split(|b| *b == 0)
        .find_map(|field| field.strip_prefix(b"depends="))
        .map(|list| {
            String::from_utf8_lossy(list)
                .split(',')
                .filter(|d| !d.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// `kernel/drivers/net/veth.ko.xz` → `veth`; `-` read as `_` like the kernel does.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

fn decompress_module(source: &Path, dest: &Path) -> anyhow::Result<()> {
    let name = source.to_string_lossy();
    if name.ends_with(".ko") {
        fs::copy(source, dest).with_context(|| format!("copying {name}"))?;
        return Ok(());
    }
    let tool = if name.ends_with(".ko.xz") {
        "xz"
    } else if name.ends_with(".ko.zst") {
        "zstd"
    } else {
        bail!("{name}: unknown module compression");
    };
    let file = fs::File::create(dest).with_context(|| format!("creating {}", dest.display()))?;
    let status = Command::new(tool)
        .arg("-dc")
        .arg(source)
        .stdout(file)
        .status()
        .with_context(|| format!("could not start `{tool}` to decompress {name}"))?;
    if !status.success() {
        bail!("`{tool} -dc {name}` failed ({status})");
    }
    Ok(())
}

/// The guest's `/init`: mounts, loads modules, runs each suite between markers the host parses
/// (see `console`), then powers off. With `gkmatrix=shell` on the kernel command line it opens a
/// shell on the console instead of running the suites.
fn init_script(suites: &[Suite]) -> String {
    let m = console::MARKER;
    let mut script = format!(
        r#"#!/bin/sh
# Generated by `cargo xtask kernels`.
/bin/busybox mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
export PATH=/bin HOME=/tmp TMPDIR=/tmp CI=true RUST_BACKTRACE=1 GATEKEEPER_BIN={GUEST_BIN}/gatekeeper
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t bpf bpf /sys/fs/bpf
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /run/netns
ip link set lo up
while read -r module; do
    insmod "/modules/$module"
    echo "{m} module $module rc=$?"
done </modules/order
echo "{m} release $(uname -r)"
echo "{m} build $(uname -v)"
echo "{m} cpus $(nproc)"
if grep -q gkmatrix=shell /proc/cmdline; then
    echo "{m} shell: the test binaries are in {GUEST_BIN}; 'poweroff -f' ends the guest"
    setsid cttyhack sh
    poweroff -f
fi
suite() {{
    name=$1
    shift
    read -r start _ </proc/uptime
    echo "{m} suite-start $name"
    "$@"
    rc=$?
    read -r end _ </proc/uptime
    echo "{m} suite-end $name rc=$rc start=$start end=$end"
}}
"#
    );
    for suite in suites {
        let mut line = format!("suite {} env", suite.name);
        for (key, value) in suite.env {
            line.push_str(&format!(" {key}={value}"));
        }
        line.push_str(&format!(" {GUEST_BIN}/{}", suite.name));
        if !suite.only.is_empty() {
            line.push_str(" --exact");
            for name in suite.only {
                line.push_str(&format!(" {name}"));
            }
        }
        for skip in suite.skip {
            line.push_str(&format!(" --skip {skip}"));
        }
        script.push_str(&line);
        script.push('\n');
    }
    script.push_str(&format!("echo \"{m} end\"\npoweroff -f\n"));
    script
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
        let dest = staging.join(library.strip_prefix("/").unwrap_or(library));
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)?;
        }
        install(library, &dest)?;
    }
    Ok(())
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

    #[test]
    fn dependencies_load_first_and_builtins_not_at_all() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("xtask-modules-{}", std::process::id()));
        let result = (|| {
            let net = dir.join("kernel/net");
            fs::create_dir_all(&net)?;
            fs::write(
                net.join("a.ko"),
                b"\0license=GPL\0depends=b,c-d\0vermagic=x\0",
            )?;
            fs::write(net.join("b.ko"), b"\0depends=c_d\0")?;
            fs::write(net.join("c-d.ko"), b"\0depends=\0")?;
            fs::write(dir.join("modules.builtin"), "kernel/drivers/net/veth.ko\n")?;
            let target = dir.join("out");
            fs::create_dir_all(&target)?;
            let mut modules = Modules::index(&dir)?;
            modules.add("a", &target)?;
            modules.add("veth", &target)?;
            anyhow::Ok(modules.order)
        })();
        fs::remove_dir_all(&dir)?;
        assert_eq!(result?, ["c_d", "b", "a"]);
        Ok(())
    }
}
