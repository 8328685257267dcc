//! The daemon at run time, end to end (issue 16): an interface deleted and re-created under it,
//! the program taken off by someone else, a config written in place slowly, a foreign `flock` on
//! the edit lock, a flood of `/metrics` connections at 100k entries, and a second daemon on an
//! interface that already runs one. Two namespaces joined by a veth, real TCP, the real binary.

use std::{
    fmt::Write as _,
    fs::File,
    io::{Read as _, Write as _},
    net::{IpAddr, TcpStream},
    ops::Deref,
    os::fd::AsRawFd as _,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use gatekeeper_tests::{
    addresses::{HOST_V4, LINK_PARTNER_V4 as PARTNER_V4, LINK_STRANGER_V4 as STRANGER_V4},
    dirs::PinDir,
    gk::MailHost,
    kernel_tests_enabled,
    process::Daemon,
    tcp::Outcome,
    workspace_binary,
};

/// Long enough for a SYN/SYN-ACK on a veth, short enough to keep the tests quick.
const TIMEOUT: Duration = Duration::from_millis(1500);
/// For probes that are expected to time out.
const PROBE: Duration = Duration::from_millis(300);
/// The daemon's metrics port, on the host namespace's own loopback.
const METRICS_PORT: u16 = 9725;

/// The mail host with its banner server, a partner and a stranger on the Internet side.
struct Setup(MailHost);

impl Deref for Setup {
    type Target = MailHost;

    fn deref(&self) -> &MailHost {
        &self.0
    }
}

impl Setup {
    fn new(tag: &str) -> Setup {
        Setup(MailHost::new(tag))
    }

    /// A config with `keys`, `entries` first and the partner listed last.
    fn config(&self, keys: &str, entries: &[String]) -> String {
        let mut text = format!(
            "interfaces = [\"{}\"]\npin_dir = \"{}\"\nmetrics_listen = \"127.0.0.1:{METRICS_PORT}\"\n{keys}\n",
            self.link.left_if,
            self.pins.path().display()
        );
        for cidr in entries {
            let _ = write!(text, "\n[[allow]]\ncidr = \"{cidr}\"\n");
        }
        let _ = write!(
            text,
            "\n[[allow]]\ncidr = \"{PARTNER_V4}/32\"\ncomment = \"partner, listed last\"\n"
        );
        text
    }

    /// The stranger is refused and the partner admitted: the filter runs.
    fn assert_enforcing(&self, log: &str) {
        assert_eq!(
            self.connect(IpAddr::V4(STRANGER_V4), PROBE),
            Outcome::TimedOut,
            "the stranger got through:\n{log}"
        );
        let partner = self.connect(IpAddr::V4(PARTNER_V4), TIMEOUT);
        assert!(partner.is_banner(), "partner: {partner:?}\n{log}");
    }

    /// `GET /metrics` from the host namespace.
    fn metrics(&self) -> String {
        self.host()
            .run(|| scrape(Duration::from_secs(10)))
            .expect("thread in the host namespace")
            .unwrap_or_else(|err| panic!("scraping /metrics: {err}"))
    }

    /// Waits until a gauge shows `value` (a scrape may answer from a snapshot up to 1 s old).
    fn wait_for_gauge(&self, name: &str, value: u64) {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let metrics = self.metrics();
            if gauge(&metrics, name) == Some(value) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} never {value}:\n{metrics}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The exit status of `gatekeeper status`.
    fn status_code(&self) -> Option<i32> {
        self.cli(&["status"]).status.code()
    }
}

/// One scrape of the daemon's metrics on this thread's loopback.
fn scrape(timeout: Duration) -> std::io::Result<String> {
    let mut tcp = TcpStream::connect(("127.0.0.1", METRICS_PORT))?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let mut text = String::new();
    tcp.read_to_string(&mut text)?;
    Ok(text)
}

fn gauge(metrics: &str, name: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

fn signal(daemon: &Daemon, signal: i32) {
    let pid = daemon.pid().expect("daemon running");
    let pid = libc::pid_t::try_from(pid).expect("pid in range");
    // SAFETY: signalling a child this test started, by its PID.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
}

/// Waits until `needle` is in the log `at_least` times; how long that took.
fn wait_for_count(daemon: &Daemon, needle: &str, at_least: usize, timeout: Duration) -> Duration {
    let started = Instant::now();
    while daemon.log().matches(needle).count() < at_least {
        assert!(
            started.elapsed() <= timeout,
            "the daemon did not log {needle:?} {at_least} times within {timeout:?}:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    started.elapsed()
}

/// Sends SIGHUP and waits for the reload it causes; how long it took.
fn reload(daemon: &Daemon, timeout: Duration) -> Duration {
    let before = daemon.log().matches("config reloaded").count();
    signal(daemon, libc::SIGHUP);
    wait_for_count(daemon, "config reloaded", before + 1, timeout)
}

/// Detaches the BPF link pinned at `pin` (`bpftool link detach`): the program comes off its
/// interface, the link and its pin stay.
fn detach_link(pin: &std::path::Path) {
    let path = std::ffi::CString::new(pin.as_os_str().as_encoded_bytes()).expect("path");
    // bpf_attr for BPF_OBJ_GET: pathname, bpf_fd, file_flags.
    let mut get = [0u64; 2];
    get[0] = path.as_ptr() as u64;
    // SAFETY: BPF_OBJ_GET (7) reads the attr and the NUL-terminated path, both alive here.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 7, get.as_mut_ptr(), 16) };
    assert!(fd >= 0, "BPF_OBJ_GET {}", std::io::Error::last_os_error());
    let fd = i32::try_from(fd).expect("fd");
    let mut detach = [0u32; 4];
    detach[0] = fd as u32;
    // SAFETY: BPF_LINK_DETACH (34) on the link fd just opened.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, 34, detach.as_mut_ptr(), 16) };
    let err = std::io::Error::last_os_error();
    // SAFETY: closing the fd BPF_OBJ_GET returned to this test.
    unsafe { libc::close(fd) };
    assert_eq!(rc, 0, "BPF_LINK_DETACH {err}");
}

#[test]
fn a_recreated_interface_is_filtered_again_within_a_second() {
    if !kernel_tests_enabled("a_recreated_interface_is_filtered_again_within_a_second") {
        return;
    }
    let setup = Setup::new("gdr");
    setup.write_config(&setup.config("", &[]));
    let mut daemon = setup.start_daemon("gatekeeper-run");
    setup.assert_enforcing(&daemon.log());
    setup.wait_for_gauge("gatekeeper_interfaces_unfiltered", 0);

    // The interface goes (a driver reload, a network manager rebuilding it): the filter with it.
    setup.link.delete_veth().expect("delete the veth");
    daemon
        .wait_for_log("is gone, and the filter with it", Duration::from_secs(1))
        .unwrap_or_else(|err| panic!("{err:#}"));
    let log = daemon.log();
    let line = log
        .lines()
        .find(|l| l.contains("is gone"))
        .expect("the loss is logged");
    assert!(line.contains("ERROR"), "{line}");
    assert!(
        line.contains(&format!("iface=\"{}\"", setup.link.left_if)),
        "{line}"
    );
    assert!(line.contains("ifindex="), "{line}");
    setup.wait_for_gauge("gatekeeper_interfaces_unfiltered", 1);
    assert_eq!(
        setup.status_code(),
        Some(2),
        "status says the filter is missing"
    );

    // It comes back under the same name: filtered again within a second.
    let recreated = Instant::now();
    setup.link.add_veth().expect("re-create the veth");
    daemon
        .wait_for_log("re-attached", Duration::from_secs(1))
        .unwrap_or_else(|err| panic!("{err:#}"));
    let took = recreated.elapsed();
    eprintln!("re-attached {took:?} after the interface was re-created");
    assert!(took < Duration::from_secs(1), "{took:?}");
    setup
        .host()
        .add_addr(&setup.link.left_if, &format!("{HOST_V4}/24"))
        .expect("host address");
    setup.add_client_addresses();
    setup.assert_enforcing(&daemon.log());
    setup.wait_for_gauge("gatekeeper_interfaces_unfiltered", 0);
    assert_eq!(setup.status_code(), Some(0), "{}", daemon.log());

    // Someone takes the program off (`bpftool link detach`): reported, and attached again.
    let pin = setup
        .pins
        .path()
        .join(format!("link-{}", setup.link.left_if));
    detach_link(&pin);
    daemon
        .wait_for_log("taken off", Duration::from_secs(2))
        .unwrap_or_else(|err| panic!("{err:#}"));
    wait_for_count(&daemon, "re-attached", 2, Duration::from_secs(2));
    setup.assert_enforcing(&daemon.log());
    gatekeeper_tests::gk::stop_cleanly(&mut daemon);
}

#[test]
fn a_config_written_in_place_slowly_is_never_applied_half_way() {
    if !kernel_tests_enabled("a_config_written_in_place_slowly_is_never_applied_half_way") {
        return;
    }
    let setup = Setup::new("gds");
    let fillers: Vec<String> = (0..300).map(|i| format!("2001:db8:1:{i:x}::/64")).collect();
    setup.write_config(&setup.config("", &fillers));
    let daemon = setup.start_daemon("gatekeeper-run");

    // The same entries and one more, written in place in ten chunks 150 ms apart, each cut at an
    // entry boundary, so every prefix of the file parses and lacks the partner (listed last).
    let mut with_new = fillers.clone();
    with_new.push("2001:db8:2::/64".to_string());
    let text = setup.config("", &with_new);
    let cuts: Vec<usize> = text
        .match_indices("\n[[allow]]")
        .map(|(at, _)| at)
        .collect();
    let chunk_ends: Vec<usize> = (1..10)
        .map(|k| cuts[k * cuts.len() / 10])
        .chain([text.len()])
        .collect();
    let stop = AtomicBool::new(false);
    let attempts = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                // Shorter than the SYN retransmission (1 s): each dropped SYN is a failure.
                let outcome = setup.connect(IpAddr::V4(PARTNER_V4), Duration::from_millis(700));
                attempts.fetch_add(1, Ordering::Relaxed);
                if !outcome.is_banner()
                    && let Ok(mut f) = failures.lock()
                {
                    f.push(outcome);
                }
            }
        });
        let mut file = File::options()
            .write(true)
            .truncate(true)
            .open(&setup.config)
            .expect("open the config in place");
        let mut from = 0;
        for end in &chunk_ends {
            file.write_all(&text.as_bytes()[from..*end])
                .expect("write a chunk");
            from = *end;
            std::thread::sleep(Duration::from_millis(150));
        }
        drop(file);
        wait_for_count(&daemon, "config reloaded", 1, Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, Ordering::Relaxed);
    });
    let log = daemon.log();
    let failures = failures.into_inner().unwrap_or_default();
    let attempts = attempts.into_inner();
    eprintln!(
        "slow in-place write: {attempts} partner connections, {} refused",
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:?}\n{log}");
    assert!(attempts >= 5, "only {attempts} probes\n{log}");
    assert_eq!(log.matches("config reloaded").count(), 1, "{log}");
    assert!(log.contains("added=1 removed=0"), "{log}");

    // A writer that stops half-way (a failed generator) leaves a file that parses: applied once
    // settled, with a WARN naming how many entries went.
    let cut = cuts[30];
    File::options()
        .write(true)
        .truncate(true)
        .open(&setup.config)
        .and_then(|mut f| f.write_all(&text.as_bytes()[..cut]))
        .expect("write a prefix in place");
    wait_for_count(&daemon, "config reloaded", 2, Duration::from_secs(5));
    let log = daemon.log();
    assert!(
        log.contains("this reload removed 272 of the 302 allowlist entries in force at once"),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("removed 272")),
        "{log}"
    );
}

#[test]
fn a_foreign_flock_on_the_edit_lock_does_not_hold_reloads_back() {
    if !kernel_tests_enabled("a_foreign_flock_on_the_edit_lock_does_not_hold_reloads_back") {
        return;
    }
    let setup = Setup::new("gdf");
    setup.write_config(&setup.config("", &[]));
    let daemon = setup.start_daemon("gatekeeper-run");
    let lock_path = setup.dir.path().join("gatekeeper.toml.lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .expect("open the lock file");
    // SAFETY: flock on a file this test opened.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);

    setup.write_config(&setup.config("", &[format!("{STRANGER_V4}/32")]));
    let took = reload(&daemon, Duration::from_secs(10));
    eprintln!("reload with a foreign flock held: {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}\n{}", daemon.log());
    let log = daemon.log();
    assert!(
        log.contains(&format!(
            "the config's edit lock is held by pid {}",
            std::process::id()
        )),
        "{log}"
    );
    assert!(setup.connect(IpAddr::V4(STRANGER_V4), TIMEOUT).is_banner());
    drop(lock);
}

#[test]
fn a_metrics_flood_does_not_delay_reloads_at_100k_entries() {
    if !kernel_tests_enabled("a_metrics_flood_does_not_delay_reloads_at_100k_entries") {
        return;
    }
    let setup = Setup::new("gdm");
    let entries: Vec<String> = (0..100_000u32)
        .map(|i| format!("2001:db8:{:x}:{:x}::/64", 0x100 + (i >> 16), i & 0xffff))
        .collect();
    let write = |round: usize| {
        let mut list = entries.clone();
        list.push(format!("2001:db8:ff:{round:x}::/64"));
        setup.write_config(&setup.config("", &list));
    };
    write(0);
    let daemon = setup.start_daemon("gatekeeper-run");
    let before = setup.metrics();
    assert!(
        before.contains("gatekeeper_allowlist_entries{family=\"ipv6\"} 100001"),
        "{before}"
    );

    // Medians of three: this machine's other load must not decide the verdict.
    let mut alone: Vec<Duration> = (1..4)
        .map(|round| {
            write(round);
            reload(&daemon, Duration::from_secs(60))
        })
        .collect();

    let stop = AtomicBool::new(false);
    let answered = AtomicUsize::new(0);
    let mut flooded = Vec::new();
    std::thread::scope(|scope| {
        for _ in 0..6 {
            scope.spawn(|| {
                let _ = setup.host().on_this_thread(|| {
                    while !stop.load(Ordering::Relaxed) {
                        if scrape(Duration::from_secs(20))
                            .is_ok_and(|t| t.starts_with("HTTP/1.1 200"))
                        {
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            });
        }
        // Idle connections that never send a request hold connection slots too.
        scope.spawn(|| {
            let _ = setup.host().on_this_thread(|| {
                let idle: Vec<TcpStream> = (0..20)
                    .filter_map(|_| TcpStream::connect(("127.0.0.1", METRICS_PORT)).ok())
                    .collect();
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                drop(idle);
            });
        });
        std::thread::sleep(Duration::from_secs(2));
        for round in 4..7 {
            write(round);
            flooded.push(reload(&daemon, Duration::from_secs(60)));
        }
        stop.store(true, Ordering::Relaxed);
    });
    let answered = answered.into_inner();
    eprintln!(
        "100k entries: reloads took {alone:?} alone, {flooded:?} under a /metrics flood ({answered} scrapes answered)"
    );
    assert!(
        answered > 0,
        "the endpoint answered nothing during the flood"
    );
    alone.sort();
    flooded.sort();
    assert!(
        flooded[1] < alone[1] + Duration::from_secs(1),
        "under the flood a reload took {:?} (median), alone {:?}:\n{}",
        flooded[1],
        alone[1],
        daemon.log()
    );
}

#[test]
fn a_second_daemon_on_an_occupied_interface_names_the_program_there() {
    if !kernel_tests_enabled("a_second_daemon_on_an_occupied_interface_names_the_program_there") {
        return;
    }
    let setup = Setup::new("gdo");
    setup.write_config(&setup.config("", &[]));
    let daemon = setup.start_daemon("gatekeeper-run");
    let status: serde_json::Value =
        serde_json::from_str(&setup.cli_ok(&["status", "--json"])).expect("status JSON");
    let prog_id = status["interfaces"][0]["prog_id"]
        .as_u64()
        .expect("the program's id");

    // A second daemon, its own pin directory, the same interface, `xdp_mode = "auto"`.
    let other_pins = PinDir::new("gdo2");
    let other = setup.dir.path().join("other.toml");
    std::fs::write(
        &other,
        format!(
            "interfaces = [\"{}\"]\npin_dir = \"{}\"\nxdp_mode = \"auto\"\n\n[[allow]]\ncidr = \"{PARTNER_V4}/32\"\n",
            setup.link.left_if,
            other_pins.path().display()
        ),
    )
    .expect("write the second config");
    let out = setup
        .host()
        .nsenter()
        .arg(workspace_binary("gatekeeper"))
        .args(["run", "--config"])
        .arg(&other)
        .output()
        .expect("run the second daemon");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let iface = &setup.link.left_if;
    for needle in [
        format!(
            "cannot attach to {iface}: {iface} already runs XDP program id {prog_id} \"gatekeeper\" (native mode)"
        ),
        format!(
            "attached through the link pinned at {}/link-{iface} by the gatekeeper daemon running with pin_dir {}",
            setup.pins.path().display(),
            setup.pins.path().display()
        ),
        format!("`ip -d link show dev {iface}` and `bpftool net show dev {iface}` show it"),
    ] {
        assert!(stderr.contains(&needle), "{needle:?} missing in:\n{stderr}");
    }
    assert!(
        !stderr.contains("xdp_mode = \""),
        "no xdp_mode advice:\n{stderr}"
    );
    assert!(
        !stderr.contains("FALLING BACK"),
        "no fallback attempt:\n{stderr}"
    );
    assert!(
        !other_pins.path().exists(),
        "the failed start left pins behind"
    );
    setup.assert_enforcing(&daemon.log());
}
