//! Python's aiosmtpd (PyPI) as a second, independent next hop. Installed
//! with pip if missing; the child is killed by PID on drop.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::TempDir;

pub struct Aiosmtpd {
    pub addr: SocketAddr,
    child: Child,
    out: TempDir,
}

/// Makes sure `import aiosmtpd` works, installing it with pip if needed.
pub fn ensure_installed() {
    let ok = |c: &mut Command| c.status().map(|s| s.success()).unwrap_or(false);
    if ok(Command::new("python3").args(["-c", "import aiosmtpd"])) {
        return;
    }
    let quiet = |c: &mut Command| {
        c.stdout(Stdio::null()).stderr(Stdio::null());
        ok(c)
    };
    let installed = quiet(Command::new("python3").args(["-m", "pip", "install", "-q", "aiosmtpd"]))
        || quiet(Command::new("python3").args([
            "-m",
            "pip",
            "install",
            "-q",
            "--break-system-packages",
            "aiosmtpd",
        ]));
    assert!(
        installed && ok(Command::new("python3").args(["-c", "import aiosmtpd"])),
        "aiosmtpd is missing and `python3 -m pip install aiosmtpd` failed"
    );
}

/// One stored message.
#[derive(Debug)]
pub struct Stored {
    pub from: String,
    pub rcpts: Vec<String>,
    pub data: Vec<u8>,
}

impl Aiosmtpd {
    pub fn start(refused: &[&str]) -> Aiosmtpd {
        ensure_installed();
        let out = TempDir::new("aiosmtpd");
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/nexthop/aiosmtpd_sink.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(out.path())
            .args(refused)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start aiosmtpd");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("port line");
        let port: u16 = line.trim().parse().expect("aiosmtpd port");
        Aiosmtpd {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
            out,
        }
    }

    pub fn messages(&self) -> Vec<Stored> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(self.out.path())
            .expect("read out dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|p| {
                let meta: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(p.with_extension("json")).expect("json"))
                        .expect("parse json");
                Stored {
                    from: meta["from"].as_str().unwrap_or("").to_owned(),
                    rcpts: meta["rcpts"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|v| v.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default(),
                    data: std::fs::read(&p).expect("eml"),
                }
            })
            .collect()
    }

    #[track_caller]
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Stored> {
        super::wait_for_items("aiosmtpd", n, timeout, || self.messages())
    }
}

impl Drop for Aiosmtpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
