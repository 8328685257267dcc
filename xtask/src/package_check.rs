//! `cargo xtask package --check-install` (root): the packages installed into a throwaway Debian
//! root, not the host. A `debootstrap --variant=minbase` bookworm root is made once and cached
//! under `target/debootstrap-bookworm` (about 200 MB, a minute or two); each check works on a fresh
//! copy of it, so the host's dpkg database, users and /etc stay untouched. In the copy, through
//! chroot: `dpkg -i` both packages, check what the maintainer scripts made (the smtp-relay user,
//! modes and owners), `gatekeeper check` and `smtp-relay check` (as the service user) on the
//! shipped configs, then `dpkg --purge` and compare the file list with the one before the
//! install: only the system user (policy keeps it) may remain.
//!
//! The shipped relay config names a certificate the admin provides; the check puts a self-signed
//! one where the config expects it, as the admin would.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};

use crate::shell::{self, step};

const SUITE: &str = "bookworm";

pub fn run(debs: &[PathBuf]) -> anyhow::Result<()> {
    ensure!(
        shell::is_root(),
        "--check-install needs root (debootstrap, chroot)"
    );
    let root = shell::workspace_root();
    let cache = root.join(format!("target/debootstrap-{SUITE}"));
    if !cache.join("usr/bin/dpkg").exists() {
        make_cache(&cache)?;
    }
    lintian(debs)?;
    let sandbox = root.join("target/package-root");
    if sandbox.exists() {
        fs::remove_dir_all(&sandbox).with_context(|| format!("removing {}", sandbox.display()))?;
    }
    step(&format!(
        "package: a fresh copy of {} as the throwaway root",
        cache.display()
    ));
    shell::run(Command::new("cp").arg("-a").arg(&cache).arg(&sandbox))?;
    let before = files(&sandbox)?;

    let mut inside = Vec::new();
    for deb in debs {
        let name = deb.file_name().context("package file name")?;
        fs::copy(deb, sandbox.join("tmp").join(name))?;
        inside.push(format!("/tmp/{}", name.to_string_lossy()));
    }
    let mut install = vec!["dpkg", "-i"];
    install.extend(inside.iter().map(String::as_str));
    chroot(&sandbox, &install)?;
    for file in &inside {
        fs::remove_file(sandbox.join(file.trim_start_matches('/')))?;
    }

    step("package: what the maintainer scripts made");
    chroot(&sandbox, &["getent", "passwd", "smtp-relay"])?;
    expect_stat(&sandbox, "/var/lib/smtp-relay", "700 smtp-relay:smtp-relay")?;
    expect_stat(&sandbox, "/etc/smtp-relay", "750 root:smtp-relay")?;
    expect_stat(
        &sandbox,
        "/etc/smtp-relay/smtp-relay.toml",
        "640 root:smtp-relay",
    )?;
    expect_stat(&sandbox, "/etc/gatekeeper/gatekeeper.toml", "644 root:root")?;
    ensure!(
        !sandbox
            .join("etc/systemd/system/multi-user.target.wants/gatekeeper.service")
            .exists()
            && !sandbox
                .join("etc/systemd/system/multi-user.target.wants/smtp-relay.service")
                .exists(),
        "a unit was enabled on install"
    );

    step("package: `check` on the shipped configs");
    chroot(
        &sandbox,
        &[
            "gatekeeper",
            "check",
            "--config",
            "/etc/gatekeeper/gatekeeper.toml",
        ],
    )?;
    self_signed(&sandbox.join("etc/smtp-relay/tls"))?;
    chroot(
        &sandbox,
        &[
            "sh",
            "-c",
            "chgrp smtp-relay /etc/smtp-relay/tls/*.pem && chmod 640 /etc/smtp-relay/tls/*.pem",
        ],
    )?;
    chroot(
        &sandbox,
        &[
            "runuser",
            "-u",
            "smtp-relay",
            "--",
            "smtp-relay",
            "check",
            "--config",
            "/etc/smtp-relay/smtp-relay.toml",
        ],
    )?;

    step("package: dpkg --purge leaves only what policy keeps");
    chroot(&sandbox, &["dpkg", "--purge", "gatekeeper", "smtp-relay"])?;
    let after = files(&sandbox)?;
    let left: Vec<&String> = after
        .difference(&before)
        .filter(|f| !allowed_leftover(f))
        .collect();
    if !left.is_empty() {
        bail!("left after dpkg --purge: {left:?}");
    }
    let passwd = fs::read_to_string(sandbox.join("etc/passwd"))?;
    ensure!(
        passwd.contains("smtp-relay:"),
        "the system user was removed"
    );
    fs::remove_dir_all(&sandbox)?;
    step("package: installed, checked and purged cleanly in a throwaway root");
    Ok(())
}

/// lintian (Debian's package checker) must report nothing but the overrides the packages ship.
fn lintian(debs: &[PathBuf]) -> anyhow::Result<()> {
    if !shell::succeeds(Command::new("lintian").arg("--version")) {
        step("package: installing lintian");
        shell::run(Command::new("apt-get").args([
            "install",
            "-y",
            "--no-install-recommends",
            "lintian",
        ]))?;
    }
    step("package: lintian");
    let out = Command::new("lintian")
        .args(["--fail-on", "warning"])
        .args(debs)
        .output()
        .context("running lintian")?;
    let report = String::from_utf8_lossy(&out.stdout);
    print!("{report}");
    ensure!(out.status.success(), "lintian found problems:\n{report}");
    Ok(())
}

/// What may differ after a purge: dpkg's and adduser's own records, logs, the system user.
fn allowed_leftover(file: &str) -> bool {
    [
        "/var/lib/dpkg/",
        "/var/log/",
        "/var/cache/debconf/",
        "/run/adduser",
    ]
    .iter()
    .any(|p| file.starts_with(p))
        || [
            "/etc/shadow-",
            "/etc/gshadow-",
            "/etc/passwd-",
            "/etc/group-",
            "/etc/subuid-",
            "/etc/subgid-",
        ]
        .contains(&file)
}

fn make_cache(cache: &Path) -> anyhow::Result<()> {
    if !shell::succeeds(Command::new("debootstrap").arg("--version")) {
        step("package: installing debootstrap");
        shell::run(Command::new("apt-get").args(["install", "-y", "debootstrap"]))?;
    }
    let mirror = debian_mirror()?;
    step(&format!(
        "package: debootstrap --variant=minbase {SUITE} (once, cached)"
    ));
    let partial = cache.with_extension("partial");
    if partial.exists() {
        fs::remove_dir_all(&partial)?;
    }
    shell::run(
        Command::new("debootstrap")
            .args(["--variant=minbase", "--include=adduser", SUITE])
            .arg(&partial)
            .arg(mirror),
    )?;
    fs::rename(&partial, cache)?;
    Ok(())
}

/// The Debian archive the host's apt uses (deb822 or one-line sources).
fn debian_mirror() -> anyhow::Result<String> {
    let mut texts = Vec::new();
    for dir in ["/etc/apt/sources.list.d", "/etc/apt"] {
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path
                    .extension()
                    .is_some_and(|e| e == "sources" || e == "list")
                {
                    texts.push(fs::read_to_string(path).unwrap_or_default());
                }
            }
        }
    }
    texts
        .iter()
        .flat_map(|t| t.lines())
        .filter_map(|l| {
            let l = l.trim();
            l.strip_prefix("URIs:").map(str::trim).or_else(|| {
                l.strip_prefix("deb ")
                    .and_then(|r| r.split_whitespace().find(|w| w.contains("://")))
            })
        })
        .flat_map(str::split_whitespace)
        .find(|uri| uri.trim_end_matches('/').ends_with("/debian"))
        .map(str::to_owned)
        .context("no Debian archive in the host's apt sources")
}

fn chroot(sandbox: &Path, argv: &[&str]) -> anyhow::Result<()> {
    let mut cmd = Command::new("chroot");
    cmd.arg(sandbox)
        .args(argv)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    shell::run(&mut cmd)
}

fn expect_stat(sandbox: &Path, path: &str, want: &str) -> anyhow::Result<()> {
    let got = shell::output(
        Command::new("chroot")
            .arg(sandbox)
            .args(["stat", "-c", "%a %U:%G", path]),
    )
    .with_context(|| format!("stat {path}"))?;
    ensure!(got.trim() == want, "{path}: {} (want {want})", got.trim());
    Ok(())
}

fn self_signed(dir: &Path) -> anyhow::Result<()> {
    shell::self_signed_cert(&dir.join("privkey.pem"), &dir.join("fullchain.pem"))
}

/// Every path in the tree, relative with a leading `/`, not crossing into other filesystems.
fn files(tree: &Path) -> anyhow::Result<BTreeSet<String>> {
    let out = shell::output(Command::new("find").arg(tree).args(["-xdev"])).context("find")?;
    let prefix = tree.to_string_lossy().into_owned();
    Ok(out
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .map(|l| {
            if l.is_empty() {
                "/".to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect())
}
