//! NSD (NLnet Labs' authoritative server, Debian package `nsd`) on 127.0.0.1 as the DNS of the
//! checks' tests: real zone files, multi-string TXT, NXDOMAIN inside its zones and REFUSED
//! outside them (a free temporary error). Everything lives in a temp dir; the child is killed by
//! PID on drop. [`SilentDns`] is the other failure: a server that never answers.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::TempDir;

/// Where Debian installs the daemon (not on a normal user's PATH).
const NSD: &str = "/usr/sbin/nsd";

/// Makes sure NSD is installed (`cargo xtask setup` installs it; apt-get as a fallback).
pub fn ensure_installed() {
    super::debian::ensure_package("nsd", &[NSD]);
}

pub struct Nsd {
    pub addr: SocketAddr,
    child: Child,
    dir: TempDir,
}

/// A port free on 127.0.0.1 for both UDP and TCP at the time of asking.
pub fn free_port() -> u16 {
    for _ in 0..20 {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind udp");
        let port = udp.local_addr().expect("addr").port();
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP on 127.0.0.1");
}

/// A zone file: SOA and NS, then `records` (zone-file lines, names relative to the origin or
/// absolute with a final dot).
pub fn zone_text(origin: &str, records: &str) -> String {
    format!(
        "$ORIGIN {origin}.\n$TTL 60\n@ IN SOA ns.{origin}. hostmaster.{origin}. 1 3600 600 86400 60\n\
         @ IN NS ns.{origin}.\nns IN A 127.0.0.1\n{records}\n"
    )
}

/// A minimal DNS query for `name`'s SOA, to learn when a server answers.
pub fn soa_query(name: &str) -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 6, 0, 1]);
    q
}

impl Nsd {
    /// Serves `zones` as (origin, records) pairs. Panics (with NSD's log) if it does not answer.
    pub fn start(zones: &[(&str, &str)]) -> Nsd {
        let files: Vec<(&str, String)> = zones
            .iter()
            .map(|(origin, records)| (*origin, zone_text(origin, records)))
            .collect();
        Self::serve(&files)
    }

    /// Serves whole zone files (e.g. signed ones) as (origin, text) pairs.
    pub fn serve(zones: &[(&str, String)]) -> Nsd {
        ensure_installed();
        let mut dir = TempDir::new("nsd");
        let d = dir.path().display().to_string();
        for attempt in 0..5 {
            let port = free_port();
            let mut conf = format!(
                "server:\n  ip-address: 127.0.0.1@{port}\n  port: {port}\n  username: \"\"\n  \
                 chroot: \"\"\n  zonesdir: \"{d}\"\n  database: \"\"\n  pidfile: \"{d}/nsd.pid\"\n  \
                 xfrdfile: \"{d}/xfrd.state\"\n  zonelistfile: \"{d}/zone.list\"\n  \
                 logfile: \"{d}/nsd.log\"\n  server-count: 1\n  verbosity: 1\n\
                 remote-control:\n  control-enable: no\n"
            );
            for (origin, text) in zones {
                let file = format!("{origin}.zone");
                std::fs::write(dir.path().join(&file), text).expect("write zone");
                conf.push_str(&format!("zone:\n  name: {origin}\n  zonefile: {file}\n"));
            }
            let conf_path = dir.path().join("nsd.conf");
            std::fs::write(&conf_path, conf).expect("write nsd.conf");
            let child = spawn_foreground(NSD, &conf_path);
            let mut nsd = Nsd {
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                child,
                dir,
            };
            let probe = zones.first().map(|z| z.0).unwrap_or("invalid");
            if wait_answering(&mut nsd.child, nsd.addr, probe) {
                return nsd;
            }
            let log = std::fs::read_to_string(nsd.dir.path().join("nsd.log")).unwrap_or_default();
            eprintln!("nsd attempt {attempt} on port {port} failed: {log}");
            let _ = nsd.child.kill();
            let _ = nsd.child.wait();
            // Take the dir back for the next attempt.
            dir = std::mem::replace(&mut nsd.dir, TempDir(std::path::PathBuf::new()));
        }
        panic!("NSD did not start after 5 attempts");
    }

    /// The `[dns]` table pointing at this server, with a short timeout.
    pub fn dns_section(&self) -> String {
        format!(
            "[dns]\nnameservers = [\"{}\"]\ntimeout_ms = 1000\n",
            self.addr
        )
    }
}

/// Runs `program -d -c conf`: in the foreground (the test's child, killed by PID), quiet (it
/// logs to the file its config names). NSD and unbound take the same flags.
pub fn spawn_foreground(program: &str, conf: &std::path::Path) -> Child {
    Command::new(program)
        .arg("-d")
        .arg("-c")
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {program}: {e}"))
}

/// Waits (up to 10 s) until a SOA query for `zone` to the server at `addr` (the process
/// `child`) gets an answer; `false` when it exits or stays silent.
pub fn wait_answering(child: &mut Child, addr: SocketAddr, zone: &str) -> bool {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let query = soa_query(zone);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        let _ = socket.send_to(&query, addr);
        if let Ok((n, _)) = socket.recv_from(&mut buf)
            && n >= 12
            && buf[..2] == query[..2]
        {
            return true;
        }
    }
    false
}

impl Drop for Nsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A UDP socket that reads queries and never answers: every lookup times out.
pub struct SilentDns {
    pub addr: SocketAddr,
    _socket: UdpSocket,
}

impl SilentDns {
    pub fn start() -> SilentDns {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind silent dns");
        SilentDns {
            addr: socket.local_addr().expect("addr"),
            _socket: socket,
        }
    }
}
