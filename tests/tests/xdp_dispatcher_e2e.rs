//! Sharing an interface through libxdp's dispatcher (`xdp_attach = "dispatcher"`) with Debian's
//! xdp-tools: `xdp-filter` drops a UDP port, the gatekeeper drops strangers' SMTP SYNs, both on
//! one veth; `xdp-loader status` lists both; either can leave while the other keeps enforcing; a
//! restarted daemon takes over its component and `gatekeeper detach` takes it out. Where the
//! kernel refuses freplace programs (as libxdp finds), `auto` attaches exclusively and
//! `dispatcher` refuses to start, saying why.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    process::Command,
    time::Duration,
};

use gatekeeper_tests::{
    addresses::{HOST_V4, LINK_PARTNER_V4, LINK_STRANGER_V4},
    gk::{Testbed, stop_cleanly},
    kernel_tests_enabled,
    netns::Netns,
    tcp::{BannerServer, Outcome, connect},
    workspace_binary,
};

const TIMEOUT: Duration = Duration::from_millis(1500);
/// How long a SYN or datagram that should be dropped is waited for: an answer on the veth takes
/// milliseconds even in an emulated guest, and every dropped probe costs this much.
const DROP_WAIT: Duration = Duration::from_millis(700);
/// The port xdp-filter drops, and one it leaves alone.
const DROPPED_UDP: u16 = 5353;
const OPEN_UDP: u16 = 5354;
/// Set in the kernel matrix's guests, whose Debian kernels load freplace programs: a kernel that
/// refuses them fails the dispatcher tests there instead of skipping them.
const REQUIRE_FREPLACE: &str = "GATEKEEPER_REQUIRE_FREPLACE";

/// xdp-filter keeps one state for the whole host (a lock file that fails "Unable to read PID
/// from lockfile" while another xdp-filter starts, and maps pinned once for every interface it
/// runs on): the tests of this file take turns.
static XDP_FILTER_TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn take_turn() -> std::sync::MutexGuard<'static, ()> {
    XDP_FILTER_TURN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Whether xdp-tools is here; missing it is a SKIP, or a failure under CI (setup installs it).
fn xdp_tools_present(test: &str) -> bool {
    let found = ["xdp-loader", "xdp-filter"].iter().all(|tool| {
        Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if found {
        return true;
    }
    let reason = "needs xdp-tools (xdp-loader, xdp-filter; `cargo xtask setup` installs it)";
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{test}: {reason}");
    }
    skip_line(&format!("SKIP {test}: {reason}"));
    false
}

/// A SKIP line straight to stderr: libtest captures `eprintln!` of a passing test, and a skip
/// must be seen (and counted by `cargo xtask test`).
fn skip_line(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Runs an xdp-tools command in the host's network namespace with the host's bpffs.
fn xdp_tool(host: &Netns, argv: &[&str]) -> String {
    let out = host.nsenter().args(argv).output().expect("run xdp-tools");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{argv:?} failed:\n{text}");
    text
}

/// Takes every libxdp program (xdp-filter's, a gatekeeper component a failed test left) off the
/// test's interface, and removes pin directories of dispatchers that are gone, also on failure.
/// Dropped before the testbed: the interface must still exist.
struct LibxdpCleanup {
    netns: String,
    iface: String,
    ifindex: u32,
}

impl Drop for LibxdpCleanup {
    fn drop(&mut self) {
        for argv in [
            ["xdp-filter", "unload", self.iface.as_str()].as_slice(),
            ["xdp-loader", "unload", "--all", self.iface.as_str()].as_slice(),
        ] {
            let _ = Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", self.netns))
                .arg("--")
                .args(argv)
                .output();
        }
        // Interfaces of other namespaces (other tests) may share the index: only directories of
        // dispatchers no longer loaded are removed.
        let prefix = format!("dispatch-{}-", self.ifindex);
        let Ok(entries) = std::fs::read_dir("/sys/fs/bpf/xdp") else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_prefix(&prefix).and_then(|i| i.parse().ok()) else {
                continue;
            };
            if program_loaded(id) {
                continue;
            }
            if let Ok(files) = std::fs::read_dir(entry.path()) {
                for file in files.flatten() {
                    let _ = std::fs::remove_file(file.path());
                }
            }
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

fn program_loaded(id: u32) -> bool {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .any(|p| p.id() == id)
}

/// Whether a datagram to `port` on the host arrives.
fn udp_arrives(host: &Netns, client: &Netns, port: u16) -> bool {
    let receiver = host
        .run(move || {
            let socket = UdpSocket::bind(SocketAddr::new(IpAddr::V4(HOST_V4), port))?;
            socket.set_read_timeout(Some(DROP_WAIT))?;
            anyhow::Ok(socket)
        })
        .expect("enter the host namespace")
        .expect("bind the UDP receiver");
    client
        .run(move || {
            let socket = UdpSocket::bind(SocketAddr::new(IpAddr::V4(LINK_PARTNER_V4), 0))?;
            socket.send_to(b"ping", SocketAddr::new(IpAddr::V4(HOST_V4), port))?;
            anyhow::Ok(())
        })
        .expect("enter the client namespace")
        .expect("send the datagram");
    let mut buf = [0u8; 16];
    receiver.recv_from(&mut buf).is_ok()
}

/// A testbed whose host interface has libxdp's xdp-filter on it, dropping [`DROPPED_UDP`],
/// with the partner's and the stranger's addresses on the client side.
struct Shared {
    _cleanup: LibxdpCleanup,
    /// Held to the end, after the cleanup.
    _turn: std::sync::MutexGuard<'static, ()>,
    smtp: BannerServer,
    bed: Testbed,
    iface: String,
}

impl Shared {
    /// `None` (after a SKIP line, or a panic under [`REQUIRE_FREPLACE`]) when the test cannot
    /// run here.
    fn new(test: &str, tag: &str) -> Option<Shared> {
        if !kernel_tests_enabled(test) || !xdp_tools_present(test) {
            return None;
        }
        let turn = take_turn();
        let (bed, iface, cleanup) = testbed(tag);
        let smtp = BannerServer::start(bed.host(), "0.0.0.0:25".parse().expect("addr"), "mail")
            .expect("SMTP banner server");
        let shared = Shared {
            bed,
            iface,
            smtp,
            _cleanup: cleanup,
            _turn: turn,
        };
        // Someone else's program through libxdp first: xdp-filter dropping one UDP port.
        if !shared.load_xdp_filter() {
            refused_skip(test, "libxdp fell back to its single-program mode");
            return None;
        }
        Some(shared)
    }

    fn host(&self) -> &Netns {
        self.bed.host()
    }

    /// `xdp-filter load` and its UDP port: whether libxdp put it into a dispatcher (it falls
    /// back to single-program mode where the kernel refuses freplace programs).
    fn load_xdp_filter(&self) -> bool {
        let loaded = xdp_tool(self.host(), &["xdp-filter", "load", "-v", &self.iface]);
        if loaded.contains("without dispatcher") {
            eprintln!("{loaded}");
            return false;
        }
        xdp_tool(
            self.host(),
            &["xdp-filter", "port", &DROPPED_UDP.to_string(), "-p", "udp"],
        );
        true
    }

    fn status(&self) -> String {
        xdp_tool(self.host(), &["xdp-loader", "status", &self.iface])
    }

    fn smtp_from(&self, source: IpAddr, wait: Duration) -> Outcome {
        let smtp_v4 = SocketAddr::new(IpAddr::V4(HOST_V4), self.smtp.addr().port());
        connect(self.bed.client(), source, smtp_v4, wait)
    }

    /// The gatekeeper enforces: the stranger's SYN vanishes, the partner gets the banner.
    fn assert_gatekeeper_enforces(&self) {
        assert_eq!(
            self.smtp_from(IpAddr::V4(LINK_STRANGER_V4), DROP_WAIT),
            Outcome::TimedOut
        );
        assert!(
            self.smtp_from(IpAddr::V4(LINK_PARTNER_V4), TIMEOUT)
                .is_banner()
        );
    }

    /// The gatekeeper left, xdp-filter stays: the stranger is answered, the UDP port dropped.
    fn assert_only_xdp_filter_left(&self) {
        let status = self.status();
        assert!(
            status.contains("xdpfilt") && !status.contains("gatekeeper"),
            "{status}"
        );
        assert!(
            self.smtp_from(IpAddr::V4(LINK_STRANGER_V4), TIMEOUT)
                .is_banner()
        );
        assert!(!self.udp_arrives(DROPPED_UDP));
    }

    fn udp_arrives(&self, port: u16) -> bool {
        udp_arrives(self.host(), self.bed.client(), port)
    }
}

/// Namespaces and veth for `tag`, the client's addresses, and the cleanup of libxdp's pins.
fn testbed(tag: &str) -> (Testbed, String, LibxdpCleanup) {
    let bed = Testbed::new(tag);
    let iface = bed.link.left_if.clone();
    for addr in [LINK_PARTNER_V4, LINK_STRANGER_V4] {
        bed.client()
            .add_addr(&bed.link.right_if, &format!("{addr}/24"))
            .expect("client address");
    }
    let ifindex = bed
        .host()
        .run({
            let iface = iface.clone();
            move || gatekeeper::filter::ifindex(&iface)
        })
        .expect("enter the host namespace")
        .expect("the host interface's index");
    let cleanup = LibxdpCleanup {
        netns: bed.host().name().to_string(),
        iface: iface.clone(),
        ifindex,
    };
    (bed, iface, cleanup)
}

/// A kernel that refuses freplace programs: SKIP, or a failure where they must load.
fn refused_skip(test: &str, how: &str) {
    let reason = format!("this kernel refuses freplace (BPF_PROG_TYPE_EXT) programs: {how}");
    if std::env::var_os(REQUIRE_FREPLACE).is_some() {
        panic!("{test}: {reason}, and {REQUIRE_FREPLACE} is set");
    }
    // libxdp's own check loads an freplace program into its dispatcher; a kernel that refuses
    // BPF_PROG_TYPE_EXT (seen: EPERM on a lockdown/BPF-LSM host) leaves libxdp in its
    // single-program mode, and the gatekeeper's component would be refused the same way (what
    // `auto_falls_back_to_exclusive_where_the_kernel_refuses_freplace` checks).
    skip_line(&format!("SKIP {test}: {reason}"));
}

#[test]
fn gatekeeper_and_xdp_filter_share_an_interface_through_libxdps_dispatcher() {
    let test = "gatekeeper_and_xdp_filter_share_an_interface_through_libxdps_dispatcher";
    let Some(shared) = Shared::new(test, "gkxd") else {
        return;
    };
    let (bed, iface) = (&shared.bed, &shared.iface);
    assert!(
        !shared.udp_arrives(DROPPED_UDP),
        "xdp-filter drops its port"
    );

    bed.write_config(&bed.config_text(
        "xdp_attach = \"dispatcher\"",
        &[&format!("{LINK_PARTNER_V4}/32")],
    ));
    let mut daemon = bed.start_daemon("gatekeeper-dispatcher");
    assert!(
        daemon.log().contains("component of libxdp's dispatcher"),
        "{}",
        daemon.log()
    );

    // Both enforce: the stranger's SYN vanishes, the UDP port is dropped, the partner and other
    // UDP ports pass.
    shared.assert_gatekeeper_enforces();
    assert!(!shared.udp_arrives(DROPPED_UDP));
    assert!(shared.udp_arrives(OPEN_UDP));
    let status = shared.status();
    assert!(status.contains("xdp_dispatcher"), "{status}");
    assert!(status.contains("gatekeeper"), "{status}");
    assert!(status.contains("xdpfilt"), "{status}");

    // The other program leaves: the gatekeeper stays, alone in the dispatcher.
    xdp_tool(shared.host(), &["xdp-filter", "unload", iface]);
    let status = shared.status();
    assert!(
        status.contains("gatekeeper") && !status.contains("xdpfilt"),
        "{status}"
    );
    shared.assert_gatekeeper_enforces();
    assert!(shared.udp_arrives(DROPPED_UDP));

    // It comes back beside the gatekeeper, then the gatekeeper leaves: xdp-filter stays.
    assert!(shared.load_xdp_filter(), "xdp-filter joins the dispatcher");
    shared.assert_gatekeeper_enforces();
    assert!(!shared.udp_arrives(DROPPED_UDP));
    stop_cleanly(&mut daemon);
    shared.assert_only_xdp_filter_left();
}

#[test]
fn a_restarted_daemon_takes_over_its_component_and_detach_takes_it_out() {
    let test = "a_restarted_daemon_takes_over_its_component_and_detach_takes_it_out";
    let Some(shared) = Shared::new(test, "gkxr") else {
        return;
    };
    let bed = &shared.bed;
    bed.write_config(&bed.config_text(
        "xdp_attach = \"dispatcher\"\nkeep_attached_on_exit = true",
        &[&format!("{LINK_PARTNER_V4}/32")],
    ));
    let mut first = bed.start_daemon("gatekeeper-1");
    let first_id = component_id(&shared.status());
    stop_cleanly(&mut first);

    // No daemon: the component stays in the dispatcher and enforces.
    let status = shared.status();
    assert_eq!(component_id(&status), first_id, "{status}");
    shared.assert_gatekeeper_enforces();
    assert!(!shared.udp_arrives(DROPPED_UDP));

    // The next daemon's program replaces it in the same slot table: one gatekeeper component.
    let mut second = bed.start_daemon("gatekeeper-2");
    let status = shared.status();
    assert_eq!(status.matches("gatekeeper").count(), 1, "{status}");
    assert_ne!(component_id(&status), first_id, "{status}");
    assert!(status.contains("xdpfilt"), "{status}");
    shared.assert_gatekeeper_enforces();
    assert!(!shared.udp_arrives(DROPPED_UDP));
    stop_cleanly(&mut second);

    // `gatekeeper detach` takes the component out and removes the pins; xdp-filter stays.
    let out = bed.cli_ok(&["detach"]);
    assert!(
        out.contains(&format!("detached from {}", shared.iface)),
        "{out}"
    );
    shared.assert_only_xdp_filter_left();
    assert!(
        !bed.pins.path().join("GK_POLICY").exists(),
        "detach leaves no pinned maps"
    );
}

/// The program id `xdp-loader status` gives the gatekeeper component (its line:
/// ` => 50  gatekeeper  ID  tag  XDP_PASS`).
fn component_id(status: &str) -> String {
    status
        .lines()
        .find(|l| l.contains("gatekeeper"))
        .and_then(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "gatekeeper")?;
            words.get(at + 1).map(|w| w.to_string())
        })
        .unwrap_or_else(|| panic!("no gatekeeper component in:\n{status}"))
}

#[test]
fn auto_falls_back_to_exclusive_where_the_kernel_refuses_freplace() {
    let test = "auto_falls_back_to_exclusive_where_the_kernel_refuses_freplace";
    if !kernel_tests_enabled(test) || !xdp_tools_present(test) {
        return;
    }
    let _turn = take_turn();
    let (bed, iface, _cleanup) = testbed("gkxa");
    // libxdp's own verdict on this kernel, then the interface free again.
    let loaded = xdp_tool(bed.host(), &["xdp-filter", "load", "-v", &iface]);
    let refused = loaded.contains("without dispatcher");
    xdp_tool(bed.host(), &["xdp-filter", "unload", &iface]);
    if !refused {
        // The other branch of auto on a kernel that loads them (the matrix's guests).
        bed.write_config(&bed.config_text("xdp_attach = \"auto\"", &[]));
        let mut daemon = bed.start_daemon("gatekeeper-auto");
        assert!(
            daemon.log().contains("component of libxdp's dispatcher"),
            "{}",
            daemon.log()
        );
        stop_cleanly(&mut daemon);
        return;
    }
    if std::env::var_os(REQUIRE_FREPLACE).is_some() {
        panic!("{test}: libxdp found this kernel refusing freplace programs:\n{loaded}");
    }

    // `dispatcher` refuses to start, saying why and what to set instead; nothing is left.
    bed.write_config(&bed.config_text("xdp_attach = \"dispatcher\"", &[]));
    let out = bed
        .host()
        .nsenter()
        .args(["timeout", "30"])
        .arg(workspace_binary("gatekeeper"))
        .args(["run", "--config"])
        .arg(&bed.config)
        .output()
        .expect("run gatekeeper");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("xdp_attach = \"dispatcher\" cannot work on this kernel")
            && text.contains("BPF_PROG_TYPE_EXT")
            && text.contains("xdp_attach = \"exclusive\""),
        "{text}"
    );
    assert!(ip_link_xdp(&bed, &iface).is_none(), "nothing attached");

    // `auto` takes the interface alone, and says once why.
    bed.write_config(&bed.config_text("xdp_attach = \"auto\"", &[]));
    let mut daemon = bed.start_daemon("gatekeeper-auto");
    let log = daemon.log();
    assert_eq!(log.matches("FALLING BACK to exclusive").count(), 1, "{log}");
    assert!(log.contains("BPF_PROG_TYPE_EXT"), "{log}");
    assert!(!log.contains("component of libxdp's dispatcher"), "{log}");
    let attached = ip_link_xdp(&bed, &iface).expect("an XDP program on the interface");
    assert!(attached.contains("gatekeeper"), "{attached}");
    let smtp = BannerServer::start(bed.host(), "0.0.0.0:25".parse().expect("addr"), "mail")
        .expect("SMTP banner server");
    let smtp_v4 = SocketAddr::new(IpAddr::V4(HOST_V4), smtp.addr().port());
    assert_eq!(
        connect(
            bed.client(),
            IpAddr::V4(LINK_STRANGER_V4),
            smtp_v4,
            DROP_WAIT
        ),
        Outcome::TimedOut
    );
    stop_cleanly(&mut daemon);
}

/// The XDP part of `ip -d link show IFACE` in the host namespace, if a program is attached.
fn ip_link_xdp(bed: &Testbed, iface: &str) -> Option<String> {
    let out = bed
        .host()
        .nsenter()
        .args(["ip", "-d", "link", "show", iface])
        .output()
        .expect("run ip");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.contains("prog/xdp").then_some(text)
}
