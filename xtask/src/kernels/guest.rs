//! Booting one kernel under qemu with the matrix's initramfs, its serial console captured to a
//! file (and echoed, prefixed with the kernel's id), killed if it outlives its time budget.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::shell;

/// How qemu runs the guest's CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// KVM when the CPU has hardware virtualization and `/dev/kvm` creates a VM. Neither alone
    /// is enough: this machine kind has a `/dev/kvm` that creates VMs, but its CPU lacks
    /// vmx/svm and qemu then aborts setting the first vCPU's MSRs.
    pub fn probe() -> Accel {
        if cpu_has_virtualization() && kvm_creates_a_vm() {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

fn cpu_has_virtualization() -> bool {
    std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| {
        info.lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
    })
}

fn kvm_creates_a_vm() -> bool {
    use std::os::fd::AsRawFd as _;
    // From <linux/kvm.h>: _IO(KVMIO, 0x00) and _IO(KVMIO, 0x01), KVMIO = 0xAE.
    const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
    const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
    const KVM_API_VERSION: libc::c_int = 12;
    let Ok(kvm) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    else {
        return false;
    };
    // SAFETY: both ioctls take no argument pointer; the fd is open for the whole call.
    unsafe {
        if libc::ioctl(kvm.as_raw_fd(), KVM_GET_API_VERSION, 0) != KVM_API_VERSION {
            return false;
        }
        let vm = libc::ioctl(kvm.as_raw_fd(), KVM_CREATE_VM, 0);
        if vm < 0 {
            return false;
        }
        libc::close(vm);
    }
    true
}

/// One guest to boot.
pub struct Boot<'a> {
    /// Prefix of the echoed console lines.
    pub label: &'a str,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub console: &'a Path,
    pub accel: Accel,
    pub timeout: Duration,
    pub memory: &'a str,
    pub cpus: u32,
}

/// How a boot ended.
#[derive(Debug)]
pub struct Outcome {
    pub elapsed: Duration,
    pub timed_out: bool,
    /// qemu's exit status when it failed on its own (not killed by the timeout).
    pub qemu_failed: Option<std::process::ExitStatus>,
}

impl Boot<'_> {
    /// The qemu command line (also what the README tells a person to run by hand).
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-accel", self.accel.name()]);
        if self.accel == Accel::Kvm {
            cmd.args(["-cpu", "host"]);
        } else {
            // The newest CPU model TCG emulates, so the kernel sees as many features as it can.
            cmd.args(["-cpu", "max"]);
        }
        cmd.arg("-kernel")
            .arg(self.kernel)
            .arg("-initrd")
            .arg(self.initrd)
            .args(["-append", "console=ttyS0 panic=-1 quiet"])
            .args(["-nographic", "-no-reboot"])
            .args(["-m", self.memory, "-smp", &self.cpus.to_string()]);
        cmd
    }

    /// Boots the guest and waits until it powers off or its time is up; the console goes to
    /// `self.console` whatever happens.
    pub fn run(&self) -> anyhow::Result<Outcome> {
        let mut cmd = self.command();
        println!("    $ {}", shell::display(&cmd));
        let log = File::create(self.console)
            .with_context(|| format!("creating {}", self.console.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("could not start qemu-system-x86_64: run `cargo xtask setup`")?;
        let mut guest = Guest(child);
        let stdout = guest.0.stdout.take().context("no qemu stdout")?;
        let stderr = guest.0.stderr.take().context("no qemu stderr")?;
        let label = self.label.to_string();
        let echo = thread::spawn(move || copy_console(stdout, stderr, log, &label));

        let started = Instant::now();
        let mut timed_out = false;
        let mut qemu_failed = None;
        loop {
            if let Some(status) = guest.0.try_wait()? {
                qemu_failed = (!status.success()).then_some(status);
                break;
            }
            if started.elapsed() > self.timeout {
                timed_out = true;
                // Killed by its PID: only the guest this run started.
                guest.stop();
                break;
            }
            thread::sleep(Duration::from_millis(200));
        }
        let elapsed = started.elapsed();
        if echo.join().is_err() {
            eprintln!("    warning: the console reader panicked");
        }
        Ok(Outcome {
            elapsed,
            timed_out,
            qemu_failed,
        })
    }
}

/// Copies qemu's output (the serial console; qemu's own errors on stderr) into the log and onto
/// this terminal, each line prefixed with the kernel's id.
fn copy_console(
    stdout: impl std::io::Read,
    stderr: impl std::io::Read + Send + 'static,
    mut log: File,
    label: &str,
) {
    let errors_label = label.to_string();
    let errors = thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("    [{errors_label}] qemu: {line}");
            lines.push(line);
        }
        lines
    });
    let mut reader = BufReader::new(stdout);
    let mut line = Vec::new();
    // Raw bytes: a kernel may print anything on the serial line.
    while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
        let _ = log.write_all(&line);
        let text = String::from_utf8_lossy(&line);
        println!("    [{label}] {}", text.trim_end());
        line.clear();
    }
    for qemu_line in errors.join().unwrap_or_default() {
        let _ = writeln!(log, "qemu: {qemu_line}");
    }
}

/// A running qemu, killed (by its PID) and reaped when dropped, also on an error or a panic.
struct Guest(Child);

impl Guest {
    fn stop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.stop();
    }
}
