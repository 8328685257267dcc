//! The kernel modules the guest loads, taken from the unpacked Debian package: found by name,
//! their dependencies first, decompressed for busybox `insmod`.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// Modules the tests need that Debian builds as modules: veth for the namespace tests.
pub const MODULES: &[&str] = &["veth"];

/// A kernel's modules by name, and the ones picked so far in load order. The package ships no
/// `modules.dep` (its postinst runs depmod), so dependencies come from each module's own
/// `.modinfo`, as depmod reads them.
pub struct Modules {
    /// Module name (`-` read as `_`, as the kernel does) → file.
    files: HashMap<String, PathBuf>,
    builtin: Vec<String>,
    order: Vec<String>,
}

impl Modules {
    pub fn index(modules_dir: &Path) -> anyhow::Result<Modules> {
        let mut files = HashMap::new();
        let mut paths = Vec::new();
        list_files(&modules_dir.join("kernel"), Path::new("kernel"), &mut paths)?;
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
    pub fn add(&mut self, name: &str, target: &Path) -> anyhow::Result<()> {
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

    /// The modules picked so far, in load order.
    pub fn order(&self) -> &[String] {
        &self.order
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

/// Every file under `dir`, relative to it with `prefix` in front.
fn list_files(dir: &Path, prefix: &Path, into: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let relative = prefix.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            list_files(&entry.path(), &relative, into)?;
        } else {
            into.push(relative);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
