//! `examples/smtp-relay.service` against `examples/smtp-relay.toml` and the
//! real binary: the two agree on paths and privileges, and the one
//! capability the unit grants is both enough and needed to serve port 25 as
//! an unprivileged user (the unit's user is created at install time, so the
//! test uses `nobody`).

mod common;

use std::io::Read as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::process::Relay;
use common::{Client, TempDir, queue_id};
use gatekeeper_tests::notify::NotifySocket;

const BIN: &str = env!("CARGO_BIN_EXE_smtp-relay");

/// `nobody`/`nogroup`: unprivileged everywhere, owns nothing.
const UID: u32 = 65534;
const GID: u32 = 65534;

/// CAP_NET_BIND_SERVICE as a bit of the `Cap*` masks in /proc/PID/status.
const NET_BIND_SERVICE_MASK: &str = "0000000000000400";

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// A unit file's `Key=value` lines in order (comments and sections left
/// out; no line continuations in our units).
struct Unit(Vec<(String, String)>);

impl Unit {
    fn read(name: &str) -> Unit {
        let path = examples().join(name);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        Unit(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with(['#', ';', '[']))
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .collect(),
        )
    }

    fn all(&self, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The value of a key set exactly once.
    fn one(&self, key: &str) -> &str {
        match self.all(key)[..] {
            [v] => v,
            ref vs => panic!("{key} is set {} times: {vs:?}", vs.len()),
        }
    }

    /// The space-separated words of every `key=` line.
    fn words(&self, key: &str) -> Vec<&str> {
        self.all(key)
            .into_iter()
            .flat_map(str::split_whitespace)
            .collect()
    }

    /// The `--bounding-set` (or `--ambient-caps`) argument of setpriv for a
    /// capability list like `CAP_NET_BIND_SERVICE`.
    fn setpriv_caps(&self, key: &str) -> String {
        let caps: Vec<String> = self
            .words(key)
            .iter()
            .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
            .collect();
        assert!(!caps.is_empty(), "the unit sets no {key}");
        caps.join(",")
    }
}

/// `program check|run --config FILE` from ExecStartPre / ExecStart.
fn exec_line<'a>(line: &'a str, verb: &str) -> (&'a str, &'a str) {
    match line.split_whitespace().collect::<Vec<_>>()[..] {
        [program, v, "--config", config] if v == verb => (program, config),
        _ => panic!("unexpected command line {line:?}"),
    }
}

#[test]
fn unit_and_example_config_agree() {
    let unit = Unit::read("smtp-relay.service");
    let example_text =
        std::fs::read_to_string(examples().join("smtp-relay.toml")).expect("example config");
    let example: toml::Table = example_text.parse().expect("example config is TOML");

    // Started means listening (READY=1), and after the filter's READY=1.
    assert_eq!(unit.one("Type"), "notify");
    // A fixed system user (see the unit's comment on DynamicUser).
    assert_eq!(unit.one("User"), "smtp-relay");
    assert_eq!(unit.one("Group"), "smtp-relay");
    assert!(unit.all("DynamicUser").iter().all(|v| *v == "no"));

    // The check before the start reads the same file the relay runs with,
    // the one the example tells the admin to validate.
    let (check_bin, check_config) = exec_line(unit.one("ExecStartPre"), "check");
    let (run_bin, run_config) = exec_line(unit.one("ExecStart"), "run");
    assert_eq!((check_bin, check_config), (run_bin, run_config));
    assert!(
        example_text.contains(&format!("--config {run_config}")),
        "the example does not name {run_config}"
    );

    // The spool, with the lock and the control socket, is the unit's state
    // directory, and the only writable place.
    let spool = Path::new(example["spool_dir"].as_str().expect("spool_dir"));
    let state = Path::new("/var/lib").join(unit.one("StateDirectory"));
    assert_eq!(spool, state);
    assert_eq!(unit.one("StateDirectoryMode"), "0700");
    assert!(smtp_relay::control::socket_path(spool).starts_with(&state));
    assert_eq!(unit.one("ProtectSystem"), "strict");
    assert!(unit.all("ReadWritePaths").is_empty());
    assert!(
        unit.all("RuntimeDirectory").is_empty(),
        "nothing lives in /run"
    );
    assert!(unit.words("RestrictAddressFamilies").contains(&"AF_UNIX"));

    // Certificate and key sit with the config, where the install steps put
    // them for the smtp-relay group.
    let config_dir = Path::new(run_config).parent().expect("config dir");
    for key in ["cert", "key"] {
        let path = example["tls"][key].as_str().expect("tls path");
        assert!(Path::new(path).starts_with(config_dir), "{key} = {path}");
    }

    // Ports below 1024 are why the unit grants CAP_NET_BIND_SERVICE, and all
    // it grants.
    let listeners = example["listener"].as_array().expect("listeners");
    let privileged = listeners.iter().any(|l| {
        let address: SocketAddr = l["address"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .expect("listener address");
        address.port() < 1024
    });
    assert!(privileged, "the example listens on no SMTP port");
    for key in ["CapabilityBoundingSet", "AmbientCapabilities"] {
        assert_eq!(unit.words(key), ["CAP_NET_BIND_SERVICE"], "{key}");
    }
    assert_eq!(unit.one("NoNewPrivileges"), "yes");

    // allow_gatekeeper reads the file the gatekeeper unit runs with, and the
    // two units are ordered: filter first.
    let gatekeeper = Unit::read("gatekeeper.service");
    let (_, gatekeeper_config) = exec_line(gatekeeper.one("ExecStart"), "run");
    let gk_files: Vec<&str> = listeners
        .iter()
        .filter_map(|l| l.get("allow_gatekeeper")?.as_array())
        .flatten()
        .filter_map(|p| p.as_str())
        .collect();
    assert!(!gk_files.is_empty());
    assert!(
        gk_files.iter().all(|p| *p == gatekeeper_config),
        "{gk_files:?}"
    );
    assert!(unit.words("After").contains(&"gatekeeper.service"));
    assert!(unit.words("Wants").contains(&"gatekeeper.service"));
    assert!(gatekeeper.words("Before").contains(&"smtp-relay.service"));
    // The ordering waits for the filter only if the gatekeeper reports readiness.
    assert_eq!(gatekeeper.one("Type"), "notify");
}

/// Where the relay's 127.0.0.1:25 lives.
#[derive(Clone, Copy, PartialEq)]
enum Net {
    /// The host's loopback: port 25 is free here.
    Host,
    /// Port 25 is taken on the host (a real MTA): a fresh network namespace
    /// per relay, made by `unshare --net`. Nothing is mounted or named, so
    /// it disappears with the relay's process.
    Private,
}

impl Net {
    fn choose() -> Net {
        match TcpListener::bind("127.0.0.1:25") {
            Ok(_) => Net::Host,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                eprintln!("127.0.0.1:25 is in use: the relay runs in a fresh network namespace");
                Net::Private
            }
            Err(e) => panic!("probing 127.0.0.1:25: {e}"),
        }
    }

    /// `argv` as a command, in a new network namespace with lo up if
    /// `Private`. The wrappers exec, so the child's PID is the relay's.
    fn command(self, argv: &[String]) -> Command {
        let mut command = match self {
            Net::Host => Command::new(&argv[0]),
            Net::Private => {
                let mut c = Command::new("unshare");
                c.args([
                    "--net",
                    "--",
                    "sh",
                    "-c",
                    r#"ip link set lo up && exec "$@""#,
                ])
                .args(["sh", &argv[0]]);
                c
            }
        };
        command.args(&argv[1..]);
        command
    }

    /// Runs `f` on a thread in the network namespace of process `pid`
    /// (setns moves only the calling thread).
    fn run_in<T: Send>(self, pid: u32, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                if self == Net::Private {
                    let path = format!("/proc/{pid}/ns/net");
                    let ns = std::fs::File::open(&path)
                        .unwrap_or_else(|e| panic!("opening {path}: {e}"));
                    // SAFETY: setns(2) on a descriptor we hold open; it
                    // changes the namespace of this thread only.
                    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
                }
                f()
            })
            .join()
            .expect("client thread")
        })
    }
}

/// setpriv as the unit runs the relay: another user, no supplementary
/// groups, no new privileges, the unit's bounding set, and the ambient
/// capabilities (inheritable too, which ambient ones require) if given.
fn as_unit_user(bounding: &str, ambient: Option<&str>, args: &[&str]) -> Vec<String> {
    let mut argv: Vec<String> = [
        "setpriv".to_owned(),
        format!("--reuid={UID}"),
        format!("--regid={GID}"),
        "--clear-groups".to_owned(),
        "--no-new-privs".to_owned(),
        format!("--bounding-set=-all,{bounding}"),
    ]
    .into();
    if let Some(ambient) = ambient {
        argv.push(format!("--inh-caps={ambient}"));
        argv.push(format!("--ambient-caps={ambient}"));
    }
    argv.extend(["--", BIN].iter().chain(args).map(|s| (*s).to_owned()));
    argv
}

/// Runs a command that should exit by itself and returns its status and
/// stderr; kills it by PID after `timeout` (and fails the test).
fn run_to_exit(mut command: Command, timeout: Duration) -> (ExitStatus, String) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn (setpriv and unshare come with util-linux)");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} still running after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    (status, stderr)
}

/// A config listening on 127.0.0.1:25 only, its files owned as the
/// install steps own them (root:group 0640), and a spool owned by the
/// unprivileged user as the unit's StateDirectory is.
fn unit_setup() -> (TempDir, PathBuf, PathBuf) {
    let dir = TempDir::new("unit");
    let root = dir.path();
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    common::write_certs(root);
    let config = root.join("relay.toml");
    std::fs::write(
        &config,
        "hostname = \"mx.example.org\"\nspool_dir = \"spool\"\nlocal_domains = [\"example.org\"]\n\n\
         [tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n\n\
         [[listener]]\naddress = \"127.0.0.1:25\"\nrole = \"mta\"\nallow = [\"127.0.0.0/8\"]\n",
    )
    .expect("write config");
    for file in ["relay.toml", "cert.pem", "key.pem"] {
        let path = root.join(file);
        std::os::unix::fs::chown(&path, Some(0), Some(GID)).expect("chown");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    }
    let spool = root.join("spool");
    std::fs::create_dir(&spool).expect("mkdir spool");
    std::os::unix::fs::chown(&spool, Some(UID), Some(GID)).expect("chown spool");
    std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    (dir, config, spool)
}

/// A `Key:` line of /proc/PID/status, whitespace collapsed.
fn proc_status(pid: u32, key: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn the_units_capability_is_enough_and_needed_to_serve_port_25_unprivileged() {
    let test = "the_units_capability_is_enough_and_needed_to_serve_port_25_unprivileged";
    if !common::root_tests_enabled(test, "setpriv to another user, a network namespace") {
        return;
    }
    let unit = Unit::read("smtp-relay.service");
    let bounding = unit.setpriv_caps("CapabilityBoundingSet");
    let ambient = unit.setpriv_caps("AmbientCapabilities");
    let (dir, config, spool) = unit_setup();
    let config_arg = config.to_str().expect("utf-8 temp path");

    // ExecStartPre: the unit's user can read everything the config names.
    let (status, stderr) = run_to_exit(
        Net::Host.command(&as_unit_user(
            &bounding,
            None,
            &["check", "--config", config_arg],
        )),
        Duration::from_secs(20),
    );
    assert!(
        status.success(),
        "uid {UID} cannot check {} (is every directory above it searchable?): {stderr}",
        config.display()
    );

    let net = Net::choose();
    let addr: SocketAddr = "127.0.0.1:25".parse().expect("addr");

    // Without the ambient capability the same user cannot bind port 25,
    // and says so.
    let (status, stderr) = run_to_exit(
        net.command(&as_unit_user(
            &bounding,
            None,
            &["run", "--config", config_arg],
        )),
        Duration::from_secs(20),
    );
    assert!(
        !status.success(),
        "bound port 25 without CAP_NET_BIND_SERVICE: {stderr}"
    );
    for needle in [
        "relay.toml",
        "127.0.0.1:25",
        "cannot listen",
        "Permission denied",
    ] {
        assert!(stderr.contains(needle), "{needle:?} missing in: {stderr}");
    }
    if net == Net::Host {
        assert!(
            TcpStream::connect(addr).is_err(),
            "something listens on port 25"
        );
    }

    // With it: the relay serves, as that user, with that one capability.
    let mut relay = Relay::spawn(
        net.command(&as_unit_user(
            &bounding,
            Some(&ambient),
            &["run", "--config", config_arg],
        )),
        1,
    );
    assert_eq!(relay.addrs[0].0, addr);
    let pid = relay.child.id();
    assert_eq!(proc_status(pid, "Uid"), format!("{UID} {UID} {UID} {UID}"));
    assert_eq!(proc_status(pid, "Groups"), "");
    for key in ["CapEff", "CapPrm", "CapAmb", "CapBnd"] {
        assert_eq!(proc_status(pid, key), NET_BIND_SERVICE_MASK, "{key}");
    }
    assert_eq!(proc_status(pid, "NoNewPrivs"), "1");
    let id = net.run_in(pid, || {
        let mut c = Client::connect(addr);
        assert_eq!(c.greeting.code, 220, "{:?}", c.greeting);
        assert!(
            c.greeting.text().contains("mx.example.org"),
            "{:?}",
            c.greeting
        );
        c.ehlo().expect(250, "");
        let r = c.send_mail(
            "someone@sender.example",
            &["postmaster@example.org"],
            b"Subject: unit\r\n\r\nwritten by the unit's user\r\n",
        );
        r.expect(250, "2.0.0");
        queue_id(&r)
    });
    // It wrote the spool as that user, privately.
    for file in [format!("{id}.env"), format!("{id}.eml")] {
        let meta = std::fs::metadata(spool.join(&file)).expect("spool file");
        assert_eq!((meta.uid(), meta.mode() & 0o777), (UID, 0o600), "{file}");
    }
    // SAFETY: kill(2) on our own child's PID.
    assert_eq!(unsafe { libc::kill(pid_t(pid), libc::SIGTERM) }, 0);
    let status = relay.wait_exit();
    assert!(status.success(), "{status}");
    drop(relay);
    drop(dir);
}

fn pid_t(pid: u32) -> libc::pid_t {
    libc::pid_t::try_from(pid).expect("pid fits pid_t")
}

#[test]
fn ready_is_sent_once_every_listener_answers_and_reloads_are_bracketed() {
    let setup = common::Setup::new("notify", &common::config_text("", 10_000));
    let socket_path = setup.dir.path().join("notify.sock");
    let notify = NotifySocket::bind(&socket_path).expect("bind the notify socket");
    let mut command = Command::new(BIN);
    command
        .args(["run", "--config"])
        .arg(&setup.config)
        .env("NOTIFY_SOCKET", &socket_path);
    let relay = Relay::spawn(command, 0);

    let ready = notify
        .wait_for("READY=1", Duration::from_secs(20))
        .unwrap_or_else(|seen| panic!("no READY=1 within 20 s; received {seen:?}"));
    // STATUS= names every listener with the port it got (the config asks for port 0).
    let status = ready
        .lines()
        .find_map(|l| l.strip_prefix("STATUS=serving on "))
        .unwrap_or_else(|| panic!("no STATUS= with the listeners: {ready:?}"));
    let listeners: Vec<(SocketAddr, &str)> = status
        .split(", ")
        .map(|l| {
            let (addr, role) = l.split_once(' ').expect("ADDRESS (ROLE)");
            (
                addr.parse().expect("listener address"),
                role.trim_matches(['(', ')']),
            )
        })
        .collect();
    assert_eq!(listeners.len(), 6, "{status}");
    // Each answers at once: none is still being set up when READY=1 arrives.
    for (addr, role) in &listeners {
        let tcp = TcpStream::connect_timeout(addr, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("{role} listener {addr} after READY=1: {e}"));
        if *role != "submissions" {
            // Implicit TLS speaks only after a handshake; the others greet.
            tcp.set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            let mut greeting = [0u8; 4];
            (&tcp).read_exact(&mut greeting).expect("greeting");
            assert_eq!(&greeting, b"220 ", "{role} listener {addr}");
        }
    }

    // `systemctl reload` (SIGHUP): RELOADING=1 with the time systemd ≥ 253 matches, then READY=1.
    let pid = libc::pid_t::try_from(relay.child.id()).expect("pid");
    // SAFETY: signalling the child this test started, by its PID.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let reloading = notify
        .wait_for("RELOADING=1", Duration::from_secs(10))
        .unwrap_or_else(|seen| panic!("no RELOADING=1 within 10 s; received {seen:?}"));
    assert!(
        reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{reloading:?}"
    );
    let ready = notify
        .wait_for("READY=1", Duration::from_secs(10))
        .unwrap_or_else(|seen| panic!("no READY=1 within 10 s; received {seen:?}"));
    assert!(ready.contains("STATUS=serving on "), "{ready:?}");
}

#[test]
fn systemd_analyze_verifies_the_relay_unit() {
    let unit = Unit::read("smtp-relay.service");
    assert_eq!(unit.one("Type"), "notify");
    // The unit with its binary path pointed at this build: nothing is installed on the host.
    let dir = TempDir::new("verify");
    let text = std::fs::read_to_string(examples().join("smtp-relay.service")).expect("unit");
    let path = dir.path().join("smtp-relay.service");
    std::fs::write(&path, text.replace("/usr/local/sbin/smtp-relay", BIN)).expect("write unit");
    gatekeeper_tests::notify::verify_unit("systemd_analyze_verifies_the_relay_unit", &path);
}
