//! NSD (NLnet Labs' authoritative server, Debian package `nsd`) as the DNS of the tests: real zone
//! files, multi-string TXT, NXDOMAIN inside its zones, REFUSED outside them and SERVFAIL for a
//! zone it serves without data (both free temporary errors), and zones changed while it runs
//! (a new serial, SIGHUP, waited for until NSD answers with it). It listens on 127.0.0.1 of the
//! test's own network namespace ([`Nsd::start`], the relay's tests) or of another one
//! ([`Nsd::start_in`], for a daemon inside it). Everything lives in a temp dir; the child is
//! killed by PID on drop. [`SilentDns`] is the other failure: a server that never answers.
//!
//! Shared by the relay's tests (`smtp-relay/tests/common`) and the gatekeeper's.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::netns::Netns;

/// Where Debian installs the daemon (not on a normal user's PATH).
const NSD: &str = "/usr/sbin/nsd";

/// Makes sure NSD is installed (`cargo xtask setup` installs it; apt-get as a fallback).
pub fn ensure_installed() {
    crate::debian::ensure_package("nsd", &[NSD]);
}

pub struct Nsd {
    pub addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
    /// The namespace NSD runs in (`None`: the test's own).
    netns: Option<String>,
    /// Each zone's serial, bumped by [`Nsd::set_zone`].
    serials: HashMap<String, u32>,
}

/// Runs `cmd -d -c conf`: in the foreground (the test's child, killed by PID), quiet (it logs
/// to the file its config names). NSD and unbound (the DANE tests' resolver) take the same flags.
pub fn spawn_foreground(mut cmd: Command, conf: &Path) -> Child {
    cmd.arg("-d")
        .arg("-c")
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"))
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

/// A zone file: SOA (with `serial`) and NS, then `records` (zone-file lines, names relative to
/// the origin or absolute with a final dot).
pub fn zone_text(origin: &str, serial: u32, records: &str) -> String {
    format!(
        "$ORIGIN {origin}.\n$TTL 60\n@ IN SOA ns.{origin}. hostmaster.{origin}. {serial} 3600 600 86400 60\n\
         @ IN NS ns.{origin}.\nns IN A 127.0.0.1\n{records}\n"
    )
}

/// A minimal DNS query for `name`'s SOA, to learn when NSD answers (and with which serial).
fn soa_query(name: &str) -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 6, 0, 1]);
    q
}

/// Skips a (possibly compressed) name at `at`; the offset after it.
fn skip_name(msg: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *msg.get(at)?;
        if len == 0 {
            return Some(at + 1);
        }
        if len & 0xc0 == 0xc0 {
            return Some(at + 2);
        }
        at += 1 + len as usize;
    }
}

/// The serial of the SOA in the answer to [`soa_query`], if it has one.
fn soa_serial(msg: &[u8]) -> Option<u32> {
    if msg.len() < 12 || u16::from_be_bytes([msg[6], msg[7]]) == 0 {
        return None;
    }
    let at = skip_name(msg, 12)? + 4;
    // The answer: name, type, class, TTL, length, then the SOA's two names and the serial.
    let at = skip_name(msg, at)? + 10;
    let at = skip_name(msg, at)?;
    let at = skip_name(msg, at)?;
    let b = msg.get(at..at + 4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Asks `addr` for `zone`'s SOA until it answers (with `serial`, if given) or 10 s pass; `alive`
/// says whether the server still runs (also used for the tests' other DNS servers).
pub fn wait_answer(
    addr: SocketAddr,
    zone: &str,
    serial: Option<u32>,
    mut alive: impl FnMut() -> bool,
) -> bool {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let query = soa_query(zone);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        if !alive() {
            return false;
        }
        let _ = socket.send_to(&query, addr);
        if let Ok((n, _)) = socket.recv_from(&mut buf)
            && n >= 12
            && buf[..2] == query[..2]
            && serial.is_none_or(|s| soa_serial(&buf[..n]) == Some(s))
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

impl Nsd {
    /// Serves `zones` as (origin, records) pairs on 127.0.0.1 of this namespace. Panics (with
    /// NSD's log) if it does not answer.
    pub fn start(zones: &[(&str, &str)]) -> Nsd {
        let files: Vec<(&str, String)> = zones
            .iter()
            .map(|(origin, records)| (*origin, zone_text(origin, 1, records)))
            .collect();
        Nsd::launch(None, &files, &[])
    }

    /// Serves whole zone files (e.g. signed ones) as (origin, text) pairs.
    pub fn serve(zones: &[(&str, String)]) -> Nsd {
        Nsd::launch(None, zones, &[])
    }

    /// Serves `zones` on 127.0.0.1:53 inside `netns`, and `servfail` as zones without data
    /// (every question there gets SERVFAIL).
    pub fn start_in(netns: &Netns, zones: &[(&str, &str)], servfail: &[&str]) -> Nsd {
        let files: Vec<(&str, String)> = zones
            .iter()
            .map(|(origin, records)| (*origin, zone_text(origin, 1, records)))
            .collect();
        Nsd::launch(Some(netns), &files, servfail)
    }

    /// Starts NSD with `zones` as (origin, zone file text) pairs.
    fn launch(netns: Option<&Netns>, zones: &[(&str, String)], servfail: &[&str]) -> Nsd {
        ensure_installed();
        for attempt in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("nsd-")
                .tempdir()
                .expect("temp dir for NSD");
            // A namespace of the test's own is empty: port 53 is free there.
            let port = if netns.is_some() { 53 } else { free_port() };
            let d = dir.path().display().to_string();
            let mut conf = format!(
                "server:\n  ip-address: 127.0.0.1@{port}\n  port: {port}\n  username: \"\"\n  \
                 chroot: \"\"\n  zonesdir: \"{d}\"\n  database: \"\"\n  pidfile: \"{d}/nsd.pid\"\n  \
                 xfrdfile: \"{d}/xfrd.state\"\n  zonelistfile: \"{d}/zone.list\"\n  \
                 logfile: \"{d}/nsd.log\"\n  server-count: 1\n  verbosity: 1\n\
                 remote-control:\n  control-enable: no\n"
            );
            let mut serials = HashMap::new();
            for (origin, text) in zones {
                let file = format!("{origin}.zone");
                std::fs::write(dir.path().join(&file), text).expect("write zone");
                conf.push_str(&format!("zone:\n  name: {origin}\n  zonefile: {file}\n"));
                serials.insert(origin.to_string(), 1);
            }
            for origin in servfail {
                // A zone file that does not exist: NSD serves the zone without data.
                conf.push_str(&format!(
                    "zone:\n  name: {origin}\n  zonefile: {origin}.missing\n"
                ));
            }
            let conf_path = dir.path().join("nsd.conf");
            std::fs::write(&conf_path, conf).expect("write nsd.conf");
            let cmd = match netns {
                Some(ns) => {
                    let mut cmd = ns.nsenter();
                    cmd.arg(NSD);
                    cmd
                }
                None => Command::new(NSD),
            };
            let child = spawn_foreground(cmd, &conf_path);
            let mut nsd = Nsd {
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                child,
                dir,
                netns: netns.map(|ns| ns.name().to_string()),
                serials,
            };
            let probe = zones.first().map(|z| z.0).unwrap_or("invalid");
            if nsd.wait(probe, None) {
                return nsd;
            }
            eprintln!("nsd attempt {attempt} on port {port} failed: {}", nsd.log());
            let _ = nsd.child.kill();
            let _ = nsd.child.wait();
        }
        panic!("NSD did not start after 5 attempts");
    }

    /// NSD's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nsd.log")).unwrap_or_default()
    }

    /// Waits (up to 10 s) until a SOA query for `zone` gets an answer (with `serial`).
    fn wait(&mut self, zone: &str, serial: Option<u32>) -> bool {
        let addr = self.addr;
        let zone = zone.to_string();
        let pid = self.child.id();
        // Alive while the child has not exited (polled from the probing thread by PID).
        let alive = move || Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid);
        match &self.netns {
            None => wait_answer(addr, &zone, serial, alive),
            Some(name) => {
                crate::netns::run_in(name, move || wait_answer(addr, &zone, serial, alive))
                    .unwrap_or(false)
            }
        }
    }

    /// Replaces `origin`'s records (a new serial), makes NSD read the zone again (SIGHUP) and
    /// waits until it answers with the new serial.
    pub fn set_zone(&mut self, origin: &str, records: &str) {
        let serial = self.serials.get(origin).copied().unwrap_or(0) + 1;
        self.serials.insert(origin.to_string(), serial);
        let file = self.dir.path().join(format!("{origin}.zone"));
        let tmp = self.dir.path().join(format!("{origin}.zone.new"));
        std::fs::write(&tmp, zone_text(origin, serial, records)).expect("write zone");
        std::fs::rename(&tmp, &file).expect("replace zone");
        // SAFETY: kill has no memory preconditions; the PID is our child's.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) };
        assert!(
            self.wait(origin, Some(serial)),
            "NSD did not serve serial {serial} of {origin}:\n{}",
            self.log()
        );
    }

    /// The `[dns]` table pointing at this server, with a short timeout.
    pub fn dns_section(&self) -> String {
        format!(
            "[dns]\nnameservers = [\"{}\"]\ntimeout_ms = 1000\n",
            self.addr
        )
    }
}

/// Whether process `pid` has exited and waits to be reaped.
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_serial_is_read_from_a_soa_answer() {
        // Header (1 answer), question, answer with compressed names.
        let mut msg = vec![0x12, 0x34, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
        msg.extend_from_slice(&soa_query("p.example")[12..]);
        msg.extend_from_slice(&[0xc0, 12, 0, 6, 0, 1, 0, 0, 0, 60, 0, 30]);
        msg.extend_from_slice(&[2, b'n', b's', 0xc0, 12]);
        msg.extend_from_slice(&[1, b'h', 0xc0, 12]);
        msg.extend_from_slice(&7u32.to_be_bytes());
        msg.extend_from_slice(&[0; 16]);
        assert_eq!(soa_serial(&msg), Some(7));
        assert_eq!(soa_serial(&msg[..12]), None);
    }
}
