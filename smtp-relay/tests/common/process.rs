//! The relay binary as a child process for tests: its stderr is collected
//! (and echoed), its listening addresses read from the audit log; killed
//! by PID on drop.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `smtp-relay check --config CONFIG` with the binary `bin`: whether it succeeded, and what it
/// printed (stdout then stderr).
pub fn check(bin: &str, config: &Path) -> (bool, String) {
    let out = Command::new(bin)
        .args(["check", "--config"])
        .arg(config)
        .output()
        .expect("run smtp-relay check");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The relay as a child process; killed by PID on drop.
pub struct Relay {
    pub child: Child,
    log: Arc<Mutex<Vec<String>>>,
    /// (address, role) from the `listening` audit lines.
    pub addrs: Vec<(SocketAddr, String)>,
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {name}="))? + name.len() + 2;
    let rest = &line[start..];
    Some(rest.split(' ').next().unwrap_or(rest).trim_matches('"'))
}

impl Relay {
    /// Starts `bin run --config config` and waits for `listeners` listening lines.
    pub fn start(bin: &str, config: &Path, listeners: usize) -> Relay {
        let mut command = Command::new(bin);
        command.args(["run", "--config"]).arg(config);
        Self::spawn(command, listeners)
    }

    /// Starts `command` (a `run`, possibly behind wrappers that exec it) and
    /// waits for `listeners` listening lines.
    pub fn spawn(mut command: Command, listeners: usize) -> Relay {
        let mut child = command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start smtp-relay");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("relay: {line}");
                sink.lock().expect("log lock").push(line);
            }
        });
        let mut relay = Relay {
            child,
            log,
            addrs: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while relay.addrs.len() < listeners {
            assert!(Instant::now() < deadline, "relay did not start listening");
            if let Ok(Some(status)) = relay.child.try_wait() {
                panic!("relay exited early: {status}");
            }
            relay.addrs = relay
                .lines()
                .iter()
                .filter(|l| l.contains("event=\"listening\""))
                .filter_map(|l| {
                    Some((
                        field(l, "address")?.parse().ok()?,
                        field(l, "role")?.to_owned(),
                    ))
                })
                .collect();
            std::thread::sleep(Duration::from_millis(20));
        }
        relay
    }

    pub fn lines(&self) -> Vec<String> {
        self.log.lock().expect("log lock").clone()
    }

    pub fn addr(&self, role: &str, ipv4: bool) -> SocketAddr {
        self.addrs
            .iter()
            .find(|(a, r)| r == role && a.is_ipv4() == ipv4)
            .map(|(a, _)| *a)
            .expect("listener for role")
    }

    /// Waits until a log line contains all `needles`; returns it.
    pub fn wait_for_log(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(l) = self
                .lines()
                .into_iter()
                .find(|l| needles.iter().all(|n| l.contains(n)))
            {
                return l;
            }
            assert!(Instant::now() < deadline, "no log line with {needles:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The value of `series` (name and labels, e.g. `x_total{a="b"}`) on the metrics endpoint
    /// (`metrics_listen` in the config).
    pub fn metric(&self, series: &str) -> u64 {
        use std::io::{Read as _, Write as _};
        let line = self.wait_for_log(&["event=\"metrics_listening\""]);
        let addr: SocketAddr = field(&line, "address")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line}"));
        let mut tcp = std::net::TcpStream::connect(addr).expect("connect to metrics");
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        let mut text = String::new();
        tcp.read_to_string(&mut text).expect("read");
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{series} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{series} missing in {text}"))
    }

    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "relay did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Child::kill sends SIGKILL to this PID only.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
