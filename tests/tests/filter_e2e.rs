//! The filter on a real interface: two namespaces joined by a veth, real TCP, the real daemon.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use gatekeeper_tests::{
    addresses::{
        HOST_V4, HOST_V6, LINK_PARTNER_V4, LINK_PARTNER_V6, LINK_STRANGER_V4, LINK_STRANGER_V6,
    },
    gk::{Testbed, stop_cleanly},
    kernel_tests_enabled,
    tcp::{BannerServer, Outcome, connect},
};

/// Long enough for a SYN/SYN-ACK on a veth, short enough to keep the test quick.
const TIMEOUT: Duration = Duration::from_millis(1500);

#[test]
fn daemon_drops_strangers_smtp_syns_and_nothing_else() {
    if !kernel_tests_enabled("daemon_drops_strangers_smtp_syns_and_nothing_else") {
        return;
    }
    // left: the mail host with the filter; right: the Internet side (partner and stranger).
    let bed = Testbed::new("gkf");
    let (host, client) = (bed.host(), bed.client());
    host.add_addr(&bed.link.left_if, &format!("{HOST_V6}/64"))
        .expect("host IPv6 address");
    for addr in [LINK_PARTNER_V4, LINK_STRANGER_V4] {
        client
            .add_addr(&bed.link.right_if, &format!("{addr}/24"))
            .expect("client IPv4 address");
    }
    for addr in [LINK_PARTNER_V6, LINK_STRANGER_V6] {
        client
            .add_addr(&bed.link.right_if, &format!("{addr}/64"))
            .expect("client IPv6 address");
    }
    let smtp = BannerServer::start(host, "[::]:25".parse().expect("addr"), "mail")
        .expect("SMTP banner server");
    let other = BannerServer::start(host, "[::]:2525".parse().expect("addr"), "other")
        .expect("banner server on another port");
    let smtp_v4 = SocketAddr::new(IpAddr::V4(HOST_V4), smtp.addr().port());
    let smtp_v6 = SocketAddr::new(IpAddr::V6(HOST_V6), smtp.addr().port());
    let other_v4 = SocketAddr::new(IpAddr::V4(HOST_V4), other.addr().port());
    let other_v6 = SocketAddr::new(IpAddr::V6(HOST_V6), other.addr().port());
    let stranger_v4 = IpAddr::V4(LINK_STRANGER_V4);
    let stranger_v6 = IpAddr::V6(LINK_STRANGER_V6);

    // Before the filter: everybody gets the banner.
    assert!(connect(client, stranger_v4, smtp_v4, TIMEOUT).is_banner());

    bed.write_config(&format!(
        "interfaces = [\"{}\"]\nxdp_mode = \"native\"\nprotected_ports = [25]\npin_dir = \"{}\"\n\n\
         [[allow]]\ncidr = \"{LINK_PARTNER_V4}/32\"\ncomment = \"partner\"\n\n\
         [[allow]]\ncidr = \"{LINK_PARTNER_V6}/128\"\n",
        bed.link.left_if,
        bed.pins.path().display()
    ));
    let mut daemon = bed.start_daemon("gatekeeper-run");
    assert!(daemon.log().contains("mode=native"), "{}", daemon.log());

    // The partner gets the banner over both families.
    let partner4 = connect(client, IpAddr::V4(LINK_PARTNER_V4), smtp_v4, TIMEOUT);
    assert!(partner4.is_banner(), "partner IPv4: {partner4:?}");
    let partner6 = connect(client, IpAddr::V6(LINK_PARTNER_V6), smtp_v6, TIMEOUT);
    assert!(partner6.is_banner(), "partner IPv6: {partner6:?}");

    // The stranger's SYNs to port 25 vanish: the connect times out, it is not refused.
    assert_eq!(
        connect(client, stranger_v4, smtp_v4, TIMEOUT),
        Outcome::TimedOut
    );
    assert_eq!(
        connect(client, stranger_v6, smtp_v6, TIMEOUT),
        Outcome::TimedOut
    );

    // The stranger still reaches every other port.
    assert!(connect(client, stranger_v4, other_v4, TIMEOUT).is_banner());
    assert!(connect(client, stranger_v6, other_v6, TIMEOUT).is_banner());

    // The daemon stops cleanly on SIGTERM and detaches: everybody connects again.
    stop_cleanly(&mut daemon);
    let after = connect(client, stranger_v4, smtp_v4, TIMEOUT);
    assert!(after.is_banner(), "after stop: {after:?}");
    assert!(connect(client, stranger_v6, smtp_v6, TIMEOUT).is_banner());
    // A clean stop removes the pins too.
    assert!(
        !bed.pins.path().exists(),
        "pins left behind in {}",
        bed.pins.path().display()
    );
}

#[test]
fn bad_config_attaches_nothing_and_names_the_entry() {
    if !kernel_tests_enabled("bad_config_attaches_nothing_and_names_the_entry") {
        return;
    }
    let bed = Testbed::new("gkb");
    bed.write_config(&format!(
        "interfaces = [\"{}\"]\n[[allow]]\ncidr = \"192.0.2.10/24\"\n",
        bed.link.left_if
    ));
    let out = bed
        .host()
        .command(&[])
        .arg(gatekeeper_tests::workspace_binary("gatekeeper"))
        .args(["run", "--config"])
        .arg(&bed.config)
        .output()
        .expect("run gatekeeper");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:3:8: allow entry \"192.0.2.10/24\" has host bits set",
            bed.config.display()
        )),
        "{stderr}"
    );
    // Nothing attached: the interface has no XDP program.
    let show = bed
        .host()
        .command(&["ip", "-d", "link", "show", &bed.link.left_if])
        .output()
        .expect("ip link show");
    let show = String::from_utf8_lossy(&show.stdout);
    assert!(!show.contains("prog/xdp"), "{show}");
}
