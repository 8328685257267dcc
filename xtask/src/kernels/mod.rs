//! The kernel matrix: Debian's own kernels booted under qemu, each running the kernel test suites
//! that need nothing but the kernel (BPF_PROG_TEST_RUN, namespaces with real TCP) inside an
//! initramfs this module builds. `cargo xtask kernels` runs it alone; `cargo xtask test` runs it
//! after the host's kernel tests.

mod console;
mod fetch;
mod guest;
mod init;
mod initramfs;
mod modules;
mod sources;
mod suites;
mod xdp_tools;

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use self::{console::Report, guest::Accel, sources::Archive};
use crate::shell::{self, TestTally, step};

/// One kernel of the matrix: the Debian suite whose `linux-image-amd64` names it.
#[derive(Debug)]
pub struct Kernel {
    /// Short id for `--kernels` and the cache directory.
    pub id: &'static str,
    pub suite: &'static str,
    pub archive: Archive,
    /// Who runs it.
    pub about: &'static str,
}

/// The kernels DMZ hosts run, oldest first.
pub const KERNELS: &[Kernel] = &[
    Kernel {
        id: "5.10",
        suite: "bullseye",
        archive: Archive::Debian,
        about: "Debian 11",
    },
    // The point release's kernel: what a Debian 12 host without the security suite runs.
    Kernel {
        id: "6.1-point",
        suite: "bookworm",
        archive: Archive::Debian,
        about: "Debian 12, point release",
    },
    Kernel {
        id: "6.1-security",
        suite: "bookworm-security",
        archive: Archive::Security,
        about: "Debian 12 with security updates",
    },
    Kernel {
        id: "6.12",
        suite: "trixie",
        archive: Archive::Debian,
        about: "Debian 13",
    },
];

/// Guest size: enough RAM for the unpacked initramfs and the tests' maps (the DIR-24-8 table
/// alone is 32 MiB), two CPUs like the machines CI runs on.
const GUEST_MEMORY: &str = "2G";
const GUEST_CPUS: u32 = 2;

/// Which kernels to boot; shared by `cargo xtask kernels` and `cargo xtask test`.
#[derive(clap::Args, Clone, Debug)]
pub struct Selection {
    /// Kernels to boot, comma-separated ids: 5.10, 6.1-point, 6.1-security, 6.12 (default: all).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub kernels: Vec<String>,
    /// Seconds a guest may run (boot and tests) before it is killed and its kernel fails.
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    pub kernel_timeout: u64,
    /// Suites each guest runs, comma-separated test target names, e.g. `xdp_dispatcher_e2e`
    /// (default: all of them).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub suites: Vec<String>,
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub selection: Selection,
    /// Keep the guest's unpacked file tree (target/kernels/initramfs/) after the run.
    #[arg(long)]
    pub keep: bool,
}

/// `cargo xtask kernels`: setup, then the matrix alone.
pub fn run(args: &Args) -> anyhow::Result<()> {
    crate::setup::run()?;
    crate::build::ebpf_objects()?;
    let mut tally = TestTally::default();
    let result = run_matrix(&args.selection, args.keep, &mut tally);
    println!(
        "xtask kernels: {} passed, {} failed, {} ignored",
        tally.passed, tally.failed, tally.ignored
    );
    result
}

/// Boots every selected kernel, adds its test counts to `tally`, and fails if any kernel did not
/// boot, timed out or had a failing test.
pub fn run_matrix(selection: &Selection, keep: bool, tally: &mut TestTally) -> anyhow::Result<()> {
    let kernels = select(&selection.kernels)?;
    let ids: Vec<&str> = kernels.iter().map(|k| k.id).collect();
    step(&format!(
        "kernels: the kernel test suites under qemu on {}",
        ids.join(", ")
    ));
    let cache = cache_dir();
    let fetched = fetch_all(&kernels, &cache)?;

    let suites = suites::test_binaries(&selection.suites)?;
    let gatekeeper = suites::gatekeeper_binary()?;
    let xdp_tools = xdp_tools::find()?;
    let staging = cache.join("initramfs");
    let common = cache.join("common.cpio.gz");
    step(&format!(
        "kernels: building the guest's initramfs (busybox, ip, xdp-tools, {} test binaries, gatekeeper) in {}",
        suites.len(),
        staging.display()
    ));
    let built = initramfs::build_common(
        &initramfs::Contents {
            suites: &suites,
            gatekeeper: &gatekeeper,
            xdp_tools: &xdp_tools,
        },
        &staging,
        &common,
    );
    let result = built.and_then(|()| boot_all(&kernels, &fetched, &cache, &common, selection));
    if !keep {
        remove_dir(&staging);
    }
    let results = result?;

    let mut failures = Vec::new();
    let mut total = TestTally::default();
    let mut wall = Duration::ZERO;
    for result in &results {
        total.add(&result.report.tally);
        wall += result.elapsed;
        let problems = result.problems();
        if !problems.is_empty() {
            failures.push(format!(
                "{} ({}): {}; console log: {}",
                result.id,
                result.report.version(),
                problems.join("; "),
                result.console.display()
            ));
        }
    }
    println!(
        "kernels: {} booted, {} passed, {} failed, {} ignored, {:.0} s in all",
        results.len(),
        total.passed,
        total.failed,
        total.ignored,
        wall.as_secs_f64()
    );
    tally.add(&total);
    if !failures.is_empty() {
        bail!(
            "{} of {} kernels failed:\n  {}",
            failures.len(),
            results.len(),
            failures.join("\n  ")
        );
    }
    Ok(())
}

/// The kernels named in `ids`, in the matrix's order; all of them if `ids` is empty.
fn select(ids: &[String]) -> anyhow::Result<Vec<&'static Kernel>> {
    let known: Vec<&str> = KERNELS.iter().map(|k| k.id).collect();
    if let Some(unknown) = ids.iter().find(|id| !known.contains(&id.as_str())) {
        bail!(
            "unknown kernel {unknown:?} in --kernels; known: {}",
            known.join(", ")
        );
    }
    Ok(KERNELS
        .iter()
        .filter(|k| ids.is_empty() || ids.iter().any(|id| id == k.id))
        .collect())
}

/// `target/kernels` (or under `CARGO_TARGET_DIR`).
fn cache_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| shell::workspace_root().join("target"))
        .join("kernels")
}

fn fetch_all(kernels: &[&Kernel], cache: &Path) -> anyhow::Result<Vec<fetch::Fetched>> {
    step(&format!(
        "kernels: Debian kernel packages, cached in {}",
        cache.display()
    ));
    let mut mirrors = None;
    let mut fetched = Vec::new();
    for kernel in kernels {
        let dir = cache.join(kernel.id);
        let found = match fetch::cached(&dir)? {
            Some(found) => {
                println!(
                    "    cached: {} → {} {}",
                    kernel.id, found.package, found.version
                );
                found
            }
            None => {
                let mirrors = match &mut mirrors {
                    Some(mirrors) => mirrors,
                    None => mirrors.insert(sources::Mirrors::from_host()?),
                };
                fetch::download(kernel, &dir, mirrors)?
            }
        };
        fetched.push(found);
    }
    Ok(fetched)
}

/// One kernel's run.
struct KernelResult {
    id: &'static str,
    report: Report,
    elapsed: Duration,
    timed_out: bool,
    timeout: Duration,
    qemu_failed: Option<std::process::ExitStatus>,
    console: PathBuf,
}

impl KernelResult {
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.timed_out {
            problems.push(format!(
                "killed after {} s (--kernel-timeout)",
                self.timeout.as_secs()
            ));
        }
        if let Some(status) = self.qemu_failed {
            problems.push(format!("qemu failed ({status})"));
        }
        problems.extend(self.report.problems());
        problems
    }
}

fn boot_all(
    kernels: &[&Kernel],
    fetched: &[fetch::Fetched],
    cache: &Path,
    common: &Path,
    selection: &Selection,
) -> anyhow::Result<Vec<KernelResult>> {
    let accel = Accel::probe();
    println!(
        "    accelerator: {} ({})",
        accel.name(),
        match accel {
            Accel::Kvm => "/dev/kvm creates VMs",
            Accel::Tcg => "/dev/kvm missing or unusable: emulated CPUs, slower",
        }
    );
    let timeout = Duration::from_secs(selection.kernel_timeout);
    let mut results = Vec::new();
    for (kernel, found) in kernels.iter().zip(fetched) {
        let dir = cache.join(kernel.id);
        step(&format!(
            "kernels: {} ({}, {} {}): booting and running the suites",
            kernel.id, kernel.about, found.package, found.version
        ));
        let modules = dir.join("modules.cpio.gz");
        let staging = dir.join("modules.d");
        let built = initramfs::build_modules(&found.modules, &staging, &modules);
        remove_dir(&staging);
        built?;
        let initrd = dir.join("initrd.img");
        initramfs::concatenate(&[common, &modules], &initrd)?;
        let console = dir.join("console.log");
        let started = Instant::now();
        let outcome = guest::Boot {
            label: kernel.id,
            kernel: &found.vmlinuz,
            initrd: &initrd,
            console: &console,
            accel,
            timeout,
            memory: GUEST_MEMORY,
            cpus: GUEST_CPUS,
        }
        .run()?;
        let text = fs::read(&console).with_context(|| format!("reading {}", console.display()))?;
        let result = KernelResult {
            id: kernel.id,
            report: Report::parse(&String::from_utf8_lossy(&text)),
            elapsed: started.elapsed().max(outcome.elapsed),
            timed_out: outcome.timed_out,
            timeout,
            qemu_failed: outcome.qemu_failed,
            console,
        };
        print_result(&result);
        results.push(result);
    }
    Ok(results)
}

fn print_result(result: &KernelResult) {
    let tally = &result.report.tally;
    let verdict = if result.problems().is_empty() {
        "ok"
    } else {
        "FAILED"
    };
    println!(
        "    kernel {}: {verdict}: booted {}: {} passed, {} failed, {} ignored, {:.0} s wall",
        result.id,
        result.report.version(),
        tally.passed,
        tally.failed,
        tally.ignored,
        result.elapsed.as_secs_f64()
    );
    let timings: Vec<String> = result
        .report
        .suites
        .iter()
        .map(|s| match s.seconds {
            Some(secs) => format!("{} {secs:.1} s", s.name),
            None => format!("{} unfinished", s.name),
        })
        .collect();
    if !timings.is_empty() {
        println!("      suites: {}", timings.join(", "));
    }
    for problem in result.problems() {
        println!("      problem: {problem}");
    }
}

fn remove_dir(dir: &Path) {
    if let Err(err) = fs::remove_dir_all(dir)
        && err.kind() != std::io::ErrorKind::NotFound
    {
        eprintln!("    warning: could not remove {}: {err}", dir.display());
    }
}

/// The README's requirements line: the kernels this matrix boots, oldest first. A test keeps
/// README.md saying exactly this, so the documented kernels are the proven ones.
#[cfg(test)]
fn requirements_line() -> String {
    let kernels: Vec<String> = KERNELS
        .iter()
        .map(|k| format!("`{}` ({})", k.id, k.about))
        .collect();
    format!(
        "- Linux {} or newer with BPF, BTF and XDP. Proven by the kernel matrix of `cargo xtask test` on Debian's kernels {}, and on the build machine's kernel.",
        KERNELS.first().map_or("?", |k| k.id),
        kernels.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_keeps_the_matrix_order_and_refuses_unknown_ids() -> anyhow::Result<()> {
        let picked = select(&["6.12".to_string(), "5.10".to_string()])?;
        assert_eq!(
            picked.iter().map(|k| k.id).collect::<Vec<_>>(),
            ["5.10", "6.12"]
        );
        assert_eq!(select(&[])?.len(), KERNELS.len());
        assert!(select(&["4.19".to_string()]).is_err());
        Ok(())
    }

    #[test]
    fn the_readme_requirements_name_the_kernels_the_matrix_proves() {
        let readme =
            std::fs::read_to_string(shell::workspace_root().join("README.md")).expect("README.md");
        let requirements = readme
            .split("\n## ")
            .find(|section| section.starts_with("Requirements"))
            .expect("a Requirements section in README.md");
        let unwrapped = requirements.replace("\n  ", " ");
        assert!(
            unwrapped.contains(&requirements_line()),
            "README.md's Requirements must say, on one bullet:\n{}",
            requirements_line()
        );
    }
}
