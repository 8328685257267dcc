//! Loading a program into the kernel, and turning the verifier's refusal into a message an admin
//! can act on: the kernel's version, the last lines of the verifier log (where the reason is; the
//! log starts with hundreds of instructions that say nothing), and the whole log in a file.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use aya::programs::{ProgramError, Xdp};

/// Lines of the verifier log shown in the error; the whole log goes to a file.
const TAIL_LINES: usize = 12;

/// The kernel refused to load a program.
#[derive(Debug, thiserror::Error)]
#[error(
    "the kernel (Linux {kernel}) refused the XDP program {program}: {errno}\n\
     last lines of the verifier log (the reason is at the end):\n{tail}\n\
     the whole verifier log: {log}"
)]
pub struct Refusal {
    pub program: String,
    pub kernel: String,
    pub errno: std::io::Error,
    /// The log's last lines, indented.
    pub tail: String,
    /// Where the whole log was written, or why it could not be.
    pub log: String,
}

/// Loads (verifies) `program`, named `name`; a refusal by the verifier becomes a [`Refusal`] whose
/// whole log is written to a file in `log_dir`.
pub fn load_xdp(program: &mut Xdp, name: &str, log_dir: &Path) -> anyhow::Result<()> {
    match program.load() {
        Ok(()) => Ok(()),
        Err(ProgramError::LoadError {
            io_error,
            verifier_log,
        }) => Err(refusal(name, io_error, &verifier_log.to_string(), log_dir).into()),
        Err(other) => {
            Err(anyhow::Error::new(other).context(format!("loading the XDP program {name} failed")))
        }
    }
}

fn refusal(program: &str, errno: std::io::Error, log: &str, log_dir: &Path) -> Refusal {
    let kernel = kernel_release();
    let log_file = match write_log(program, &kernel, log, log_dir) {
        Ok(path) => path.display().to_string(),
        Err(err) => format!("not written ({err}); run with RUST_LOG=debug to see it in the log"),
    };
    tracing::debug!(
        program,
        verifier_log = log,
        "the kernel refused the program"
    );
    Refusal {
        program: program.to_string(),
        kernel,
        errno,
        tail: tail(log, TAIL_LINES),
        log: log_file,
    }
}

/// The last `n` non-empty lines of `log`, indented for the error message.
pub fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return "    (the kernel gave no verifier log)".to_string();
    }
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Writes the log to a new file with a random name in `dir` (created O_EXCL, 0600, so a local
/// user cannot plant a link there) and keeps it.
fn write_log(program: &str, kernel: &str, log: &str, dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let mut file = tempfile::Builder::new()
        .prefix(&format!("gatekeeper-verifier-{program}-"))
        .suffix(".log")
        .tempfile_in(dir)?;
    writeln!(file, "# verifier log of {program} on Linux {kernel}")?;
    file.write_all(log.as_bytes())?;
    let (_, path) = file.keep().map_err(|e| e.error)?;
    Ok(path)
}

/// Where verifier logs go: systemd's `RuntimeDirectory=` when set, else the temporary directory.
pub fn default_log_dir() -> PathBuf {
    std::env::var_os("RUNTIME_DIRECTORY")
        .and_then(|dirs| {
            // systemd lists several directories separated by ':' when several are configured.
            dirs.to_str()
                .and_then(|d| d.split(':').next())
                .map(PathBuf::from)
        })
        .unwrap_or_else(std::env::temp_dir)
}

/// The running kernel's release (`uname -r`), or "unknown".
pub fn kernel_release() -> String {
    // SAFETY: uname fills the zeroed struct it is given; the fields are NUL-terminated.
    unsafe {
        let mut uts: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut uts) != 0 {
            return "unknown".to_string();
        }
        std::ffi::CStr::from_ptr(uts.release.as_ptr())
            .to_string_lossy()
            .into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines_where_the_reason_is() {
        let log = "0: (b7) r0 = 0\n1: (85) call unknown#160\n\nunknown func bpf_ktime_get_coarse_ns#160\nprocessed 2 insns\n";
        let t = tail(log, 2);
        assert_eq!(
            t,
            "    unknown func bpf_ktime_get_coarse_ns#160\n    processed 2 insns"
        );
        assert!(tail("", 3).contains("no verifier log"));
    }

    #[test]
    fn refusal_names_kernel_tail_and_a_file_holding_the_whole_log() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log: String = (0..100).map(|i| format!("{i}: insn\n")).collect::<String>()
            + "R1 invalid mem access 'scalar'\n";
        let refusal = refusal(
            "gatekeeper",
            std::io::Error::from_raw_os_error(libc::EACCES),
            &log,
            dir.path(),
        );
        let message = refusal.to_string();
        assert!(
            message.contains("R1 invalid mem access 'scalar'"),
            "{message}"
        );
        assert!(!message.contains("\n    0: insn"), "{message}");
        assert!(message.contains(&kernel_release()), "{message}");
        let path = PathBuf::from(&refusal.log);
        assert!(path.starts_with(dir.path()), "{message}");
        let written = std::fs::read_to_string(&path).expect("log file");
        assert!(written.contains("0: insn") && written.contains("invalid mem access"));
    }
}
