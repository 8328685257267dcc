//! Crash safety: the real relay binary is killed with SIGKILL at random
//! moments while clients send, again and again, then started once more to
//! drain the queue. Every message that got `250` must reach the next hop,
//! no partial message may ever reach it, and duplicates are counted and
//! reported (target zero; the only window is between the next hop's `250`
//! and our envelope update, RFC 1047).
//!
//! Iterations: `SMTP_RELAY_CRASH_ITERATIONS` (default 200).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::nexthop::{NextHop, Script};
use common::process::Relay;
use common::{Setup, config_with, delivery_section, split_received};

const BIN: &str = env!("CARGO_BIN_EXE_smtp-relay");
const CLIENTS: usize = 3;

/// Reproducible kill moments (xorshift64): the same schedule on every run.
struct KillSchedule(u64);

impl KillSchedule {
    fn next_ms(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        10 + self.0 % 150
    }
}

/// The body for `tag`: enough lines that a cut is visible, and an end mark.
fn body(tag: &str) -> Vec<u8> {
    let mut b = format!("Subject: {tag}\r\nX-Tag: {tag}\r\n\r\n").into_bytes();
    for i in 0..40 {
        b.extend_from_slice(
            format!("{tag} line {i} .......................................\r\n").as_bytes(),
        );
    }
    b.extend_from_slice(format!("END {tag}\r\n").as_bytes());
    b
}

/// Sends messages until `stop` or an error; returns the tags that got 250.
fn client(addr: std::net::SocketAddr, prefix: String, stop: Arc<AtomicBool>) -> Vec<String> {
    use std::io::{BufRead as _, BufReader, Write as _};
    let mut acked = Vec::new();
    let Ok(tcp) = std::net::TcpStream::connect(addr) else {
        return acked;
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(5)));
    let Ok(mut w) = tcp.try_clone() else {
        return acked;
    };
    let mut r = BufReader::new(tcp);
    let mut reply = || -> Option<u16> {
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return line.get(..3)?.parse().ok();
            }
        }
    };
    if reply() != Some(220) {
        return acked;
    }
    let mut n = 0;
    let send = |w: &mut std::net::TcpStream, s: &[u8]| w.write_all(s).is_ok();
    if !send(&mut w, b"EHLO crash.test\r\n") || reply() != Some(250) {
        return acked;
    }
    while !stop.load(Ordering::Relaxed) {
        let tag = format!("{prefix}-{n}");
        n += 1;
        if !send(&mut w, b"MAIL FROM:<c@sender.example>\r\n") || reply() != Some(250) {
            break;
        }
        if !send(&mut w, b"RCPT TO:<alice@example.org>\r\n") || reply() != Some(250) {
            break;
        }
        if !send(&mut w, b"DATA\r\n") || reply() != Some(354) {
            break;
        }
        let mut data = common::dot_stuff(&body(&tag));
        data.extend_from_slice(b".\r\n");
        if !send(&mut w, &data) {
            break;
        }
        match reply() {
            Some(250) => acked.push(tag),
            _ => break,
        }
    }
    acked
}

#[test]
fn sigkill_at_random_moments_loses_nothing_and_delivers_nothing_partial() {
    let iterations: usize = std::env::var("SMTP_RELAY_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let hop = NextHop::start("127.0.0.1:0", Script::default());
    let config = config_with(
        "",
        &delivery_section(&[("example.org", hop.addr, "none")], ""),
    );
    let setup = Setup::new("crash", &config);
    let mut schedule = KillSchedule(0xC0FFEE);
    let acked: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    for i in 0..iterations {
        let mut relay = Relay::start(BIN, &setup.config, 6);
        let addr = relay.addr("mta", true);
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (stop, acked) = (stop.clone(), acked.clone());
                std::thread::spawn(move || {
                    let tags = client(addr, format!("i{i}c{c}"), stop);
                    acked.lock().expect("lock").extend(tags);
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(schedule.next_ms()));
        relay.child.kill().expect("SIGKILL");
        relay.wait_exit();
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.join().expect("client thread");
        }
    }
    let crash_phase = started.elapsed();
    // Drain: one last relay that is left alone.
    let relay = Relay::start(BIN, &setup.config, 6);
    let spool = setup.spool();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !spool.queued_ids().expect("list").is_empty() {
        assert!(Instant::now() < deadline, "queue not drained");
        std::thread::sleep(Duration::from_millis(50));
    }
    let drain = started.elapsed() - crash_phase;
    std::thread::sleep(Duration::from_millis(500));
    drop(relay);

    let acked = acked.lock().expect("lock").clone();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for m in hop.messages() {
        let (_, data) = split_received(&m.data);
        let text = String::from_utf8_lossy(&data);
        let tag = text
            .lines()
            .find_map(|l| l.strip_prefix("X-Tag: "))
            .unwrap_or_else(|| panic!("message without tag: {text}"))
            .to_owned();
        assert_eq!(data, body(&tag), "partial or altered message for {tag}");
        *seen.entry(tag).or_default() += 1;
    }
    let lost: Vec<&String> = acked.iter().filter(|t| !seen.contains_key(*t)).collect();
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    println!(
        "crash test: {iterations} SIGKILLs in {:.1}s (drain {:.1}s), {} messages acknowledged, {} distinct delivered, {} lost, {duplicates} duplicate(s)",
        crash_phase.as_secs_f64(),
        drain.as_secs_f64(),
        acked.len(),
        seen.len(),
        lost.len()
    );
    assert!(
        lost.is_empty(),
        "acknowledged but never delivered: {lost:?}"
    );
    assert!(!acked.is_empty(), "no message was acknowledged at all");
    // Duplicates are reported above; more than a few means the state
    // update after the next hop's 250 is broken.
    assert!(
        duplicates * 20 <= acked.len().max(20),
        "{duplicates} duplicates for {} messages",
        acked.len()
    );
}
