//! Running external commands with their command line echoed, so a newcomer sees every step.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

/// Prints a step heading.
pub fn step(text: &str) {
    println!("==> {text}");
}

/// Runs `cmd`, echoing it first; fails with the command line if it exits non-zero.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    println!("    $ {}", display(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{}`", display(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", display(cmd));
    }
    Ok(())
}

/// Test counts gathered from `cargo test` output across several runs.
#[derive(Default, Debug)]
pub struct TestTally {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
    pub skipped: u64,
}

impl TestTally {
    /// Adds another tally's counts to this one.
    pub fn add(&mut self, other: &TestTally) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.ignored += other.ignored;
        self.skipped += other.skipped;
    }

    /// Reads one line of `cargo test` output: a `test result:` summary or a `SKIP` line.
    pub fn observe(&mut self, line: &str) {
        if line.starts_with("SKIP ") {
            self.skipped += 1;
        }
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(kind), Some(count)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(count) = count.parse::<u64>() else {
                continue;
            };
            match kind {
                "passed" => self.passed += count,
                "failed" => self.failed += count,
                "ignored" => self.ignored += count,
                _ => {}
            }
        }
    }
}

/// Runs a `cargo test` command, echoing its output live and adding its counts to `tally`.
pub fn run_tests(cmd: &mut Command, tally: &mut TestTally) -> anyhow::Result<()> {
    use std::io::{BufRead as _, BufReader};
    println!("    $ {}", display(cmd));
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{}`", display(cmd)))?;
    // stderr carries SKIP lines and cargo's progress: echo it from a thread, tally SKIPs.
    let stderr = child.stderr.take().context("no stderr pipe")?;
    let skips = std::thread::spawn(move || {
        let mut tally = TestTally::default();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
            tally.observe(&line);
        }
        tally.skipped
    });
    let stdout = child.stdout.take().context("no stdout pipe")?;
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        println!("{line}");
        tally.observe(&line);
    }
    let status = child.wait()?;
    tally.skipped += skips.join().unwrap_or(0);
    if !status.success() {
        bail!("`{}` failed ({status})", display(cmd));
    }
    Ok(())
}

/// Runs `cmd` quietly and returns whether it succeeded (false if it cannot start).
/// A throwaway P-256 certificate for `mx.example.org`, valid two days, made with openssl
/// (quietly): the demo's and the package check's TLS.
pub fn self_signed_cert(key: &Path, cert: &Path) -> anyhow::Result<()> {
    run(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:P-256", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=mx.example.org", "-keyout"])
        .arg(key)
        .arg("-out")
        .arg(cert)
        .stderr(std::process::Stdio::null()))
}

pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `cmd` quietly and returns its stdout if it succeeded.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A command as a shell line, for showing what runs.
pub fn display(cmd: &Command) -> String {
    let mut parts = Vec::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            parts.push(format!(
                "{}={}",
                key.to_string_lossy(),
                value.to_string_lossy()
            ));
        }
    }
    parts.push(cmd.get_program().to_string_lossy().into_owned());
    parts.extend(cmd.get_args().map(|a| quote(&a.to_string_lossy())));
    parts.join(" ")
}

/// Quotes an argument for display so that a printed command can be pasted into a shell.
fn quote(arg: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,@+%".contains(c);
    if !arg.is_empty() && arg.chars().all(plain) {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// A `cargo` command run from the workspace root; once this run built the eBPF objects, its build
/// scripts embed those instead of building their own (`gatekeeper-ebpf/embed.rs`).
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    if let Some(dir) = crate::build::prebuilt_objects() {
        cmd.env("GATEKEEPER_EBPF_OBJECTS", dir);
    }
    cmd
}

/// Whether this process runs as root (needed to load XDP programs and create namespaces).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
