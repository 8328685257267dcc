//! Sharing an interface through libxdp's dispatcher (`xdp_attach = "dispatcher"`) with Debian's
//! xdp-tools: `xdp-filter` drops a UDP port, the gatekeeper drops strangers' SMTP SYNs, both on
//! one veth; `xdp-loader status` lists both; either can leave while the other keeps enforcing.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    path::PathBuf,
    process::Command,
    time::Duration,
};

use gatekeeper_tests::{
    addresses::{HOST_V4, LINK_PARTNER_V4, LINK_STRANGER_V4},
    gk::{Testbed, stop_cleanly},
    kernel_tests_enabled,
    netns::Netns,
    tcp::{BannerServer, Outcome, connect},
};

const TIMEOUT: Duration = Duration::from_millis(1500);
/// The port xdp-filter drops, and one it leaves alone.
const DROPPED_UDP: u16 = 5353;
const OPEN_UDP: u16 = 5354;

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

/// Takes xdp-filter off and removes libxdp's pins of the test's dispatchers, also on failure
/// (the veth goes with its namespace, libxdp's pins under /sys/fs/bpf/xdp do not).
struct LibxdpCleanup {
    netns: String,
    iface: String,
    ifindex: u32,
}

impl Drop for LibxdpCleanup {
    fn drop(&mut self) {
        let _ = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .args(["--", "xdp-filter", "unload", &self.iface])
            .output();
        let prefix = format!("dispatch-{}-", self.ifindex);
        let dir = PathBuf::from("/sys/fs/bpf/xdp");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix)
                && let Ok(files) = std::fs::read_dir(entry.path())
            {
                // Only dispatchers no longer on an interface of this test remain by now.
                for file in files.flatten() {
                    let _ = std::fs::remove_file(file.path());
                }
                let _ = std::fs::remove_dir(entry.path());
            }
        }
    }
}

/// Whether a datagram to `port` on the host arrives.
fn udp_arrives(host: &Netns, client: &Netns, port: u16) -> bool {
    let receiver = host
        .run(move || {
            let socket = UdpSocket::bind(SocketAddr::new(IpAddr::V4(HOST_V4), port))?;
            socket.set_read_timeout(Some(TIMEOUT))?;
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

#[test]
fn gatekeeper_and_xdp_filter_share_an_interface_through_libxdps_dispatcher() {
    let test = "gatekeeper_and_xdp_filter_share_an_interface_through_libxdps_dispatcher";
    if !kernel_tests_enabled(test) || !xdp_tools_present(test) {
        return;
    }
    let bed = Testbed::new("gkxd");
    let (host, client) = (bed.host(), bed.client());
    let iface = bed.link.left_if.clone();
    for addr in [LINK_PARTNER_V4, LINK_STRANGER_V4] {
        client
            .add_addr(&bed.link.right_if, &format!("{addr}/24"))
            .expect("client address");
    }
    let ifindex = host
        .run({
            let iface = iface.clone();
            move || gatekeeper::filter::ifindex(&iface)
        })
        .expect("enter the host namespace")
        .expect("the host interface's index");
    let _cleanup = LibxdpCleanup {
        netns: host.name().to_string(),
        iface: iface.clone(),
        ifindex,
    };
    let smtp = BannerServer::start(host, "0.0.0.0:25".parse().expect("addr"), "mail")
        .expect("SMTP banner server");
    let smtp_v4 = SocketAddr::new(IpAddr::V4(HOST_V4), smtp.addr().port());
    let stranger = IpAddr::V4(LINK_STRANGER_V4);
    let partner = IpAddr::V4(LINK_PARTNER_V4);

    // Someone else's program through libxdp first: xdp-filter dropping one UDP port.
    let loaded = xdp_tool(host, &["xdp-filter", "load", "-v", &iface]);
    if loaded.contains("without dispatcher") {
        // libxdp's own check loads an freplace program into its dispatcher; a kernel that
        // refuses BPF_PROG_TYPE_EXT (seen: EPERM on a lockdown/BPF-LSM host) leaves libxdp in its
        // single-program mode, and the gatekeeper's component would be refused the same way.
        skip_line(&format!(
            "SKIP {test}: this kernel refuses freplace (BPF_PROG_TYPE_EXT) programs, libxdp fell back to single-program mode:\n{loaded}"
        ));
        return;
    }
    xdp_tool(
        host,
        &["xdp-filter", "port", &DROPPED_UDP.to_string(), "-p", "udp"],
    );
    assert!(
        !udp_arrives(host, client, DROPPED_UDP),
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
    assert_eq!(
        connect(client, stranger, smtp_v4, TIMEOUT),
        Outcome::TimedOut
    );
    assert!(connect(client, partner, smtp_v4, TIMEOUT).is_banner());
    assert!(!udp_arrives(host, client, DROPPED_UDP));
    assert!(udp_arrives(host, client, OPEN_UDP));
    let status = xdp_tool(host, &["xdp-loader", "status", &iface]);
    assert!(status.contains("xdp_dispatcher"), "{status}");
    assert!(status.contains("gatekeeper"), "{status}");
    assert!(status.contains("xdpfilt"), "{status}");

    // The other program leaves: the gatekeeper stays, alone in the dispatcher.
    xdp_tool(host, &["xdp-filter", "unload", &iface]);
    let status = xdp_tool(host, &["xdp-loader", "status", &iface]);
    assert!(
        status.contains("gatekeeper") && !status.contains("xdpfilt"),
        "{status}"
    );
    assert_eq!(
        connect(client, stranger, smtp_v4, TIMEOUT),
        Outcome::TimedOut
    );
    assert!(connect(client, partner, smtp_v4, TIMEOUT).is_banner());
    assert!(udp_arrives(host, client, DROPPED_UDP));

    // It comes back beside the gatekeeper, then the gatekeeper leaves: xdp-filter stays.
    xdp_tool(host, &["xdp-filter", "load", &iface]);
    xdp_tool(
        host,
        &["xdp-filter", "port", &DROPPED_UDP.to_string(), "-p", "udp"],
    );
    assert_eq!(
        connect(client, stranger, smtp_v4, TIMEOUT),
        Outcome::TimedOut
    );
    assert!(!udp_arrives(host, client, DROPPED_UDP));
    stop_cleanly(&mut daemon);
    let status = xdp_tool(host, &["xdp-loader", "status", &iface]);
    assert!(
        status.contains("xdpfilt") && !status.contains("gatekeeper"),
        "{status}"
    );
    assert!(connect(client, stranger, smtp_v4, TIMEOUT).is_banner());
    assert!(!udp_arrives(host, client, DROPPED_UDP));
}
