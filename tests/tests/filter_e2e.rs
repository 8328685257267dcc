//! The filter on a real interface: two namespaces joined by a veth, real TCP, the real daemon.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use gatekeeper_tests::{
    kernel_tests_enabled,
    netns::Link,
    process::{Daemon, PinDir, TempDir},
    tcp::{BannerServer, Outcome, connect},
    workspace_binary,
};

const HOST_V4: &str = "192.0.2.25";
const PARTNER_V4: &str = "192.0.2.10";
const STRANGER_V4: &str = "192.0.2.66";
const HOST_V6: &str = "2001:db8::25";
const PARTNER_V6: &str = "2001:db8::10";
const STRANGER_V6: &str = "2001:db8::66";
/// Long enough for a SYN/SYN-ACK on a veth, short enough to keep the test quick.
const TIMEOUT: Duration = Duration::from_millis(1500);

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

#[test]
fn daemon_drops_strangers_smtp_syns_and_nothing_else() -> anyhow::Result<()> {
    if !kernel_tests_enabled("daemon_drops_strangers_smtp_syns_and_nothing_else") {
        return Ok(());
    }
    // left: the mail host with the filter; right: the Internet side (partner and stranger).
    let link = Link::new("gkf")?;
    let (host, client) = (&link.left, &link.right);
    host.add_addr(&link.left_if, &format!("{HOST_V4}/24"))?;
    host.add_addr(&link.left_if, &format!("{HOST_V6}/64"))?;
    for addr in [PARTNER_V4, STRANGER_V4] {
        client.add_addr(&link.right_if, &format!("{addr}/24"))?;
    }
    for addr in [PARTNER_V6, STRANGER_V6] {
        client.add_addr(&link.right_if, &format!("{addr}/64"))?;
    }
    let smtp = BannerServer::start(host, "[::]:25".parse()?, "mail")?;
    let other = BannerServer::start(host, "[::]:2525".parse()?, "other")?;
    let smtp_v4 = SocketAddr::new(ip(HOST_V4), smtp.addr().port());
    let smtp_v6 = SocketAddr::new(ip(HOST_V6), smtp.addr().port());
    let other_v4 = SocketAddr::new(ip(HOST_V4), other.addr().port());
    let other_v6 = SocketAddr::new(ip(HOST_V6), other.addr().port());

    // Before the filter: everybody gets the banner.
    assert!(connect(client, ip(STRANGER_V4), smtp_v4, TIMEOUT).is_banner());

    let dir = TempDir::new("e2e")?;
    let pins = PinDir::new("gkf");
    let config = dir.path().join("gatekeeper.toml");
    std::fs::write(
        &config,
        format!(
            "interfaces = [\"{}\"]\nxdp_mode = \"native\"\nprotected_ports = [25]\npin_dir = \"{}\"\n\n\
             [[allow]]\ncidr = \"{PARTNER_V4}/32\"\ncomment = \"partner\"\n\n\
             [[allow]]\ncidr = \"{PARTNER_V6}/128\"\n",
            link.left_if,
            pins.path().display()
        ),
    )?;
    let mut cmd = host.nsenter();
    cmd.arg(workspace_binary("gatekeeper"))
        .args(["run", "--config"])
        .arg(&config);
    let mut daemon = Daemon::start("gatekeeper run", cmd, &dir.path().join("gatekeeper.log"))?;
    daemon.wait_for_log("enforcing", Duration::from_secs(10))?;
    assert!(daemon.log().contains("mode=native"), "{}", daemon.log());

    // The partner gets the banner over both families.
    let partner4 = connect(client, ip(PARTNER_V4), smtp_v4, TIMEOUT);
    assert!(partner4.is_banner(), "partner IPv4: {partner4:?}");
    let partner6 = connect(client, ip(PARTNER_V6), smtp_v6, TIMEOUT);
    assert!(partner6.is_banner(), "partner IPv6: {partner6:?}");

    // The stranger's SYNs to port 25 vanish: the connect times out, it is not refused.
    assert_eq!(
        connect(client, ip(STRANGER_V4), smtp_v4, TIMEOUT),
        Outcome::TimedOut
    );
    assert_eq!(
        connect(client, ip(STRANGER_V6), smtp_v6, TIMEOUT),
        Outcome::TimedOut
    );

    // The stranger still reaches every other port.
    assert!(connect(client, ip(STRANGER_V4), other_v4, TIMEOUT).is_banner());
    assert!(connect(client, ip(STRANGER_V6), other_v6, TIMEOUT).is_banner());

    // The daemon stops cleanly on SIGTERM and detaches: everybody connects again.
    assert!(
        daemon.stop_with(libc::SIGTERM, Duration::from_secs(10))?,
        "daemon exit status"
    );
    let after = connect(client, ip(STRANGER_V4), smtp_v4, TIMEOUT);
    assert!(after.is_banner(), "after stop: {after:?}");
    assert!(connect(client, ip(STRANGER_V6), smtp_v6, TIMEOUT).is_banner());
    // A clean stop removes the pins too.
    assert!(
        !pins.path().exists(),
        "pins left behind in {}",
        pins.path().display()
    );
    Ok(())
}

#[test]
fn bad_config_attaches_nothing_and_names_the_entry() -> anyhow::Result<()> {
    if !kernel_tests_enabled("bad_config_attaches_nothing_and_names_the_entry") {
        return Ok(());
    }
    let link = Link::new("gkb")?;
    let dir = TempDir::new("badcfg")?;
    let config = dir.path().join("gatekeeper.toml");
    std::fs::write(
        &config,
        format!(
            "interfaces = [\"{}\"]\n[[allow]]\ncidr = \"192.0.2.10/24\"\n",
            link.left_if
        ),
    )?;
    let out = link
        .left
        .command(&[])
        .arg(workspace_binary("gatekeeper"))
        .args(["run", "--config"])
        .arg(&config)
        .output()?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:3:8: allow entry \"192.0.2.10/24\" has host bits set",
            config.display()
        )),
        "{stderr}"
    );
    // Nothing attached: the interface has no XDP program.
    let show = link
        .left
        .command(&["ip", "-d", "link", "show", &link.left_if])
        .output()?;
    let show = String::from_utf8_lossy(&show.stdout);
    assert!(!show.contains("prog/xdp"), "{show}");
    Ok(())
}
