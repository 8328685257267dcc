//! A validating resolver on 127.0.0.1 for the DANE tests: unbound (NLnet Labs, Debian package
//! `unbound`) with its own config, run as the test's child (killed by PID on drop), asking an
//! authoritative server (the NSD fixture) for the test zones as stub zones. Zones are signed at
//! test time with ldns-keygen/ldns-signzone (package `ldnsutils`); the zones whose DS goes into
//! [`Unbound::start`] as a trust anchor are validated (answers carry the AD bit), the others
//! are insecure (no AD bit).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{SystemTime, UNIX_EPOCH};

use super::TempDir;
use super::nsd::{free_port, spawn_foreground, wait_answer, zone_text};

const UNBOUND: &str = "/usr/sbin/unbound";
const KEYGEN: &str = "/usr/bin/ldns-keygen";
const SIGNZONE: &str = "/usr/bin/ldns-signzone";

/// Makes sure unbound and the ldns tools are installed (`cargo xtask setup` installs them).
pub fn ensure_installed() {
    super::debian::ensure_package("unbound", &[UNBOUND]);
    super::debian::ensure_package("ldnsutils", &[KEYGEN, SIGNZONE]);
}

/// A zone signed with a fresh ECDSA P-256 key (one key as KSK and ZSK).
pub struct SignedZone {
    /// The signed zone file, for [`super::nsd::Nsd::serve`].
    pub text: String,
    /// The DS record of the key, as unbound's `trust-anchor:` takes it.
    pub ds: String,
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run ldns tool");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Signs the zone `origin` with `records` (see [`zone_text`]). Signatures start a day ago, so
/// a resolver's clock a little behind does not call them not yet valid.
pub fn sign(origin: &str, records: &str) -> SignedZone {
    ensure_installed();
    let dir = TempDir::new("ldns");
    let zone = dir.path().join(format!("{origin}.zone"));
    std::fs::write(&zone, zone_text(origin, 1, records)).expect("write zone");
    let key = run(Command::new(KEYGEN).current_dir(dir.path()).args([
        "-a",
        "ECDSAP256SHA256",
        "-k",
        origin,
    ]));
    let yesterday = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        - 86_400;
    run(Command::new(SIGNZONE)
        .current_dir(dir.path())
        .arg("-i")
        .arg(yesterday.to_string())
        .arg(&zone)
        .arg(&key));
    let read = |p: &Path| std::fs::read_to_string(p).expect("read ldns output");
    SignedZone {
        text: read(&dir.path().join(format!("{origin}.zone.signed"))),
        ds: read(&dir.path().join(format!("{key}.ds")))
            .trim()
            .to_owned(),
    }
}

pub struct Unbound {
    pub addr: SocketAddr,
    child: Child,
    dir: TempDir,
}

impl Unbound {
    /// Resolves `zones` by asking `authoritative`; validates with the DS records `anchors`.
    pub fn start(zones: &[&str], authoritative: SocketAddr, anchors: &[&str]) -> Unbound {
        ensure_installed();
        let dir = TempDir::new("unbound");
        let d = dir.path().display();
        for attempt in 0..5 {
            let port = free_port();
            let mut conf = format!(
                "server:\n  interface: 127.0.0.1@{port}\n  port: {port}\n  username: \"\"\n  \
                 chroot: \"\"\n  directory: \"{d}\"\n  pidfile: \"\"\n  use-syslog: no\n  \
                 logfile: \"{d}/unbound.log\"\n  do-daemonize: no\n  num-threads: 1\n  \
                 do-ip6: no\n  do-not-query-localhost: no\n  access-control: 127.0.0.0/8 allow\n  \
                 module-config: \"validator iterator\"\n  val-log-level: 2\n  verbosity: 1\n"
            );
            for ds in anchors {
                conf.push_str(&format!("  trust-anchor: \"{ds}\"\n"));
            }
            for zone in zones {
                conf.push_str(&format!(
                    "stub-zone:\n  name: \"{zone}\"\n  stub-addr: {}@{}\n",
                    authoritative.ip(),
                    authoritative.port()
                ));
            }
            conf.push_str("remote-control:\n  control-enable: no\n");
            let conf_path = dir.path().join("unbound.conf");
            std::fs::write(&conf_path, conf).expect("write unbound.conf");
            let mut child = spawn_foreground(Command::new(UNBOUND), &conf_path);
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let zone = zones.first().copied().unwrap_or("invalid");
            if wait_answer(addr, zone, None, || matches!(child.try_wait(), Ok(None))) {
                return Unbound { addr, child, dir };
            }
            let log = std::fs::read_to_string(dir.path().join("unbound.log")).unwrap_or_default();
            eprintln!("unbound attempt {attempt} on port {port} failed: {log}");
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("unbound did not start after 5 attempts");
    }

    /// unbound's log (validation failures are logged at `val-log-level: 2`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("unbound.log")).unwrap_or_default()
    }
}

impl Drop for Unbound {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
