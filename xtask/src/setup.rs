//! `cargo xtask setup`: detect and install the eBPF toolchain. Idempotent; each check is cheap so
//! a machine that has everything passes through in well under a second.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::shell::{self, output, step, succeeds};

/// LLVM major version shared by rustc 1.95, the nightly toolchain and bpf-linker 0.13.
const LLVM_MAJOR: u32 = 22;
const BPF_LINKER_VERSION: &str = "0.13.0";
pub const NIGHTLY: &str = "nightly";

pub fn run() -> anyhow::Result<()> {
    step(
        "setup: checking the toolchain (nightly + rust-src, LLVM 22, bpf-linker 0.13, iproute2, openssl, python3, nsd, unbound, ldnsutils, slapd, etcd, xdp-tools, and qemu, busybox-static, cpio, xz for the kernel matrix)",
    );
    ensure_nightly()?;
    ensure_rust_src()?;
    let mut apt = Apt::default();
    ensure_llvm(&mut apt)?;
    ensure_bpf_linker()?;
    ensure_tools(&mut apt)?;
    step("setup: everything is in place");
    Ok(())
}

fn ensure_nightly() -> anyhow::Result<()> {
    if let Some(version) = output(Command::new("rustup").args(["run", NIGHTLY, "rustc", "-V"])) {
        println!("    ok: nightly toolchain ({})", version.trim());
        return Ok(());
    }
    step("setup: installing the nightly toolchain (builds the eBPF crate only)");
    shell::run(Command::new("rustup").args([
        "toolchain",
        "install",
        NIGHTLY,
        "--profile",
        "minimal",
    ]))
    .context("installing the nightly Rust toolchain failed (is rustup on PATH?)")
}

fn ensure_rust_src() -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]))
    .unwrap_or_default();
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        println!("    ok: rust-src for nightly (needed by -Z build-std=core)");
        return Ok(());
    }
    step(
        "setup: adding rust-src to nightly (bpfel-unknown-none is tier 3: core is built from source)",
    );
    shell::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        NIGHTLY,
    ]))
    .context("adding the rust-src component to the nightly toolchain failed")
}

fn llvm_config() -> String {
    format!("llvm-config-{LLVM_MAJOR}")
}

fn ensure_llvm(apt: &mut Apt) -> anyhow::Result<()> {
    let packages = [
        format!("llvm-{LLVM_MAJOR}-dev"),
        format!("libclang-{LLVM_MAJOR}-dev"),
        format!("libpolly-{LLVM_MAJOR}-dev"),
    ];
    let missing: Vec<&str> = packages
        .iter()
        .map(String::as_str)
        .filter(|p| !apt.is_installed(p))
        .collect();
    if missing.is_empty() {
        println!("    ok: LLVM {LLVM_MAJOR} development packages");
        return Ok(());
    }
    step(&format!(
        "setup: installing LLVM {LLVM_MAJOR} development packages (bpf-linker links against them)"
    ));
    apt.install(&missing)
}

fn ensure_bpf_linker() -> anyhow::Result<()> {
    let version = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if version.contains(BPF_LINKER_VERSION) {
        println!("    ok: bpf-linker {BPF_LINKER_VERSION}");
        return Ok(());
    }
    step(&format!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {LLVM_MAJOR} (about two minutes)"
    ));
    let prefix = output(Command::new(llvm_config()).arg("--prefix")).with_context(|| {
        format!(
            "`{} --prefix` failed: LLVM {LLVM_MAJOR} is not installed",
            llvm_config()
        )
    })?;
    // Without LLVM_PREFIX the build finds the system's older llvm-config and fails to link.
    shell::run(
        Command::new("cargo")
            .env("LLVM_PREFIX", prefix.trim())
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                &format!("llvm-{LLVM_MAJOR}"),
            ]),
    )
    .context("building bpf-linker failed (see the cargo output above)")?;
    if !succeeds(Command::new("bpf-linker").arg("--version")) {
        bail!("bpf-linker was installed but is not on PATH: add ~/.cargo/bin to PATH");
    }
    Ok(())
}

/// Command-line tools the tests and the demo run, with the Debian package that provides each.
const TOOLS: &[(&str, &[&str], &str, &str)] = &[
    (
        "ip",
        &["-V"],
        "iproute2",
        "network namespaces for the kernel tests and the demo",
    ),
    (
        "openssl",
        &["version"],
        "openssl",
        "the demo's TLS certificate",
    ),
    (
        "python3",
        &["-V"],
        "python3",
        "smtplib, an independent SMTP client for the tests and the demo",
    ),
    (
        // xdp-loader has no version flag and every help exits non-zero: ask the shell.
        "sh",
        &["-c", "command -v xdp-loader && command -v xdp-filter"],
        "xdp-tools",
        "xdp-loader and xdp-filter (libxdp's dispatcher) for the test of sharing an interface",
    ),
    (
        "qemu-system-x86_64",
        &["--version"],
        "qemu-system-x86",
        "boots Debian's kernels for the kernel matrix",
    ),
    (
        "busybox",
        &["--help"],
        "busybox-static",
        "the kernel matrix guest's shell and tools, with no libraries to copy",
    ),
    (
        "cpio",
        &["--version"],
        "cpio",
        "packs the kernel matrix guest's initramfs",
    ),
    (
        "xz",
        &["--version"],
        "xz-utils",
        "decompresses the .ko.xz modules of newer kernels for busybox insmod",
    ),
    (
        "setfacl",
        &["--version"],
        "acl",
        "POSIX ACLs on the config the tests of `gatekeeper allow` edit",
    ),
    (
        // Debian installs daemons outside a normal user's PATH.
        "/usr/sbin/nsd",
        &["-v"],
        "nsd",
        "an authoritative DNS server on loopback for the relay's SPF/DKIM/DMARC/DNSBL tests",
    ),
    (
        "/usr/sbin/unbound",
        &["-V"],
        "unbound",
        "a validating resolver on loopback for the relay's DANE tests (run as the test's child)",
    ),
    (
        "ldns-signzone",
        &["-v"],
        "ldnsutils",
        "ldns-keygen and ldns-signzone sign the DANE tests' zone",
    ),
    (
        "/usr/bin/etcd",
        &["--version"],
        "etcd-server",
        "a three-member etcd cluster in a namespace for the fleet tests (issue 23)",
    ),
    (
        "/usr/bin/etcdctl",
        &["version"],
        "etcd-client",
        "etcdctl: the fleet tests' cluster checks, removals and compaction",
    ),
    (
        "/usr/sbin/slapd",
        &["-VV"],
        "slapd",
        "OpenLDAP on loopback as the company directory of the relay's [directory] tests",
    ),
];

/// Packages installed only for the servers the tests run as their own children: their system
/// services, which Debian starts and enables on install, are not wanted on a build machine.
const TEST_ONLY_SERVICES: &[(&str, &[&str])] = &[
    ("nsd", &["nsd"]),
    ("unbound", &["unbound", "unbound-resolvconf"]),
    ("slapd", &["slapd"]),
    ("etcd-server", &["etcd"]),
];

fn ensure_tools(apt: &mut Apt) -> anyhow::Result<()> {
    for (tool, version_args, package, why) in TOOLS {
        if succeeds(Command::new(tool).args(*version_args)) {
            println!("    ok: {tool} ({why})");
            continue;
        }
        step(&format!("setup: installing {package} ({why})"));
        match TEST_ONLY_SERVICES.iter().find(|(p, _)| p == package) {
            Some((_, units)) => install_without_service(apt, package, units)?,
            None => apt.install(&[package])?,
        }
    }
    Ok(())
}

/// Installs `package` without starting its system service (a temporary `policy-rc.d` that
/// refuses every start, unless the host has its own), then disables `units` where systemd
/// runs: the tests start the server themselves, on loopback ports of their own.
fn install_without_service(apt: &mut Apt, package: &str, units: &[&str]) -> anyhow::Result<()> {
    const POLICY: &str = "/usr/sbin/policy-rc.d";
    let guard = !std::path::Path::new(POLICY).exists() && shell::is_root();
    if guard {
        write_executable(
            POLICY,
            "#!/bin/sh\n# cargo xtask setup: no service starts during this install\nexit 101\n",
        )?;
    }
    let installed = apt.install(&[package]);
    if guard {
        std::fs::remove_file(POLICY).with_context(|| format!("removing {POLICY}"))?;
    }
    installed?;
    if std::path::Path::new("/run/systemd/system").exists() {
        println!(
            "    {package}: disabling its system service ({}): the tests run their own",
            units.join(", ")
        );
        // A unit the package version does not ship is no error.
        let _ = shell::run(
            Command::new("systemctl")
                .args(["disable", "--quiet"])
                .args(units),
        );
    }
    Ok(())
}

fn write_executable(path: &str, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text).with_context(|| format!("writing {path}"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("making {path} executable"))
}

/// Debian package installs; `apt-get update` runs at most once per setup.
#[derive(Default)]
struct Apt {
    updated: bool,
}

impl Apt {
    fn is_installed(&self, package: &str) -> bool {
        output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
            .is_some_and(|s| s.contains("install ok installed"))
    }

    fn install(&mut self, packages: &[&str]) -> anyhow::Result<()> {
        if !shell::is_root() {
            bail!(
                "missing Debian packages {}: run `cargo xtask setup` as root, or `sudo apt-get install -y {}`",
                packages.join(", "),
                packages.join(" ")
            );
        }
        if !self.updated {
            shell::run(Command::new("apt-get").args(["update", "-qq"]))
                .context("`apt-get update` failed")?;
            self.updated = true;
        }
        shell::run(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(packages),
        )
        .with_context(|| format!("installing {} failed", packages.join(", ")))
    }
}
