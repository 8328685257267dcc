//! `cargo xtask demo`: the whole product in network namespaces, told step by step.
//!
//! Two namespaces stand for the mail host in the DMZ (192.0.2.25, 2001:db8::25) and the Internet.
//! The mail host runs the gatekeeper (allowlist: the partner networks 198.51.100.0/24 and
//! 2001:db8:100::/48), the smtp-relay (a certificate made on the spot, one user) and, on its
//! loopback, a capturing next hop standing for the internal mail server. On the Internet side a
//! partner mail server (198.51.100.10, 2001:db8:100::10) and a stranger (203.0.113.66,
//! 2001:db8:6600::66) try their luck; later a password guesser (203.0.113.99) tries port 587 once
//! the admin has opened it to everyone, and is banned at XDP on the relay's evidence.
//!
//! Every step checks what it shows; the demo exits 0 only when all of them behaved as expected.
//! Namespaces, daemons and pins are removed on success, failure and Ctrl-C alike.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};
use gatekeeper_tests::{
    cleanup,
    netns::Link,
    process::{Daemon, PinDir, TempDir},
    smtp_sink::SmtpSink,
    tcp::{BannerServer, Outcome, connect},
};

use crate::shell::{self, step};

#[derive(clap::Args)]
pub struct Args {
    /// Leave the namespaces and daemons up afterwards for exploring (`ip netns exec gk-demo-dmz
    /// ...`); stop them with Ctrl-C.
    #[arg(long)]
    pub keep: bool,
}

const DMZ_NS: &str = "gk-demo-dmz";
const NET_NS: &str = "gk-demo-inet";
const DMZ_IF: &str = "gkdemo-dmz";
const NET_IF: &str = "gkdemo-inet";
const MAIL_HOST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 25);
const PARTNER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const STRANGER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 66);
/// Guesses passwords on the open submission port until the relay has it banned.
const GUESSER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 99);
/// AUTH failures after which the relay asks for a ban (its `[bans] auth_failures` trigger).
const GUESSES: u32 = 10;
// The same three over IPv6, all on one /32 of the documentation prefix, so no routes are needed.
const MAIL_HOST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x25);
const PARTNER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x10);
const STRANGER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x6600, 0, 0, 0, 0, 0x66);
/// The demo's own pin directory, so it never touches a real gatekeeper's state.
const PIN_DIR: &str = "/sys/fs/bpf/gatekeeper-demo";
/// The internal mail server the relay forwards to, on the mail host's loopback.
const NEXT_HOP: &str = "127.0.0.1:2525";
const USER: &str = "partner-relay";
const PASSWORD: &str = "demo-password-only";
const TIMEOUT: Duration = Duration::from_secs(2);
const STEPS: usize = 10;

/// The SMTP client the partner and the stranger use: Python's smtplib, a client not written here.
const CLIENT: &str = r#"
import smtplib, ssl, sys
source, host, port, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE  # the demo's certificate is self-signed
message = (
    "From: partner@example.net\r\nTo: bob@elsewhere.example\r\n"
    "Subject: quarterly report\r\n\r\nHello Bob,\r\n.a line starting with a dot\r\nBye\r\n"
)
class Client(smtplib.SMTP):
    def connect(self, *args, **kwargs):
        code, banner = super().connect(*args, **kwargs)
        print("    smtp:", code, banner.decode())
        return code, banner
with Client(host, port, source_address=(source, 0), timeout=10) as smtp:
    smtp.ehlo("mx.example.net")
    smtp.starttls(context=context)
    print("    smtp: STARTTLS done:", smtp.sock.version())
    smtp.ehlo("mx.example.net")
    if mode == "auth":
        smtp.login(sys.argv[5], sys.argv[6])
        print("    smtp: AUTH PLAIN inside TLS accepted for", sys.argv[5])
    try:
        smtp.sendmail("partner@example.net", ["bob@elsewhere.example"], message)
        print("    smtp: 250: accepted for relaying to bob@elsewhere.example")
    except smtplib.SMTPRecipientsRefused as refused:
        code, text = refused.recipients["bob@elsewhere.example"]
        print("    smtp: RCPT TO:<bob@elsewhere.example> refused:", code, text.decode())
        sys.exit(3)
"#;

/// The password guesser: AUTH PLAIN with a new wrong password each time (one mechanism per
/// attempt, as brute-forcing tools do), reconnecting whenever the relay hangs up, until it can no
/// longer connect (banned) or has tried `max_guesses` passwords.
const GUESSER_CLIENT: &str = r#"
import smtplib, ssl, sys
source, host, port, max_guesses = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
guesses = 0
while guesses < max_guesses:
    try:
        smtp = smtplib.SMTP(host, port, source_address=(source, 0), timeout=3)
    except OSError as failed:
        print(f"    after {guesses} wrong passwords the guesser cannot connect any more:", failed)
        sys.exit(0 if guesses else 2)
    try:
        smtp.ehlo("guesser.example")
        smtp.starttls(context=context)
        smtp.ehlo("guesser.example")
        while guesses < max_guesses:
            password = f"Winter2026-{guesses + 1}"
            try:
                smtp.auth("PLAIN", lambda challenge=None: f"\0admin\0{password}")
                print("    a guess was accepted: the demo user table is wrong")
                sys.exit(1)
            except smtplib.SMTPAuthenticationError as refused:
                guesses += 1
                print(f"    guess {guesses} (admin / {password}):", refused.smtp_code, refused.smtp_error.decode())
    except (smtplib.SMTPServerDisconnected, OSError) as closed:
        print("    the session ended:", closed or "closed by the relay")
    finally:
        try:
            smtp.close()
        except OSError:
            pass
print(f"    still connecting after {guesses} wrong passwords")
sys.exit(3)
"#;

pub fn run(args: &Args) -> anyhow::Result<()> {
    if !shell::is_root() {
        bail!(
            "the demo creates network namespaces and attaches an XDP program: run it as root (`sudo -E cargo xtask demo`)"
        );
    }
    crate::setup::run()?;
    crate::build::build_binaries(false)?;
    cleanup::on_interrupt_clean_up()?;
    let gatekeeper = gatekeeper_tests::workspace_binary("gatekeeper");
    let relay = gatekeeper_tests::workspace_binary("smtp-relay");

    step(&format!(
        "demo 1/{STEPS}: two network namespaces joined by a veth cable: {DMZ_NS} (the mail host, {MAIL_HOST}) and {NET_NS} (the Internet: partner {PARTNER} and {PARTNER_V6}, stranger {STRANGER} and {STRANGER_V6})"
    ));
    let link = Link::create(DMZ_NS, DMZ_IF, NET_NS, NET_IF)?;
    link.left.add_addr(DMZ_IF, &format!("{MAIL_HOST}/24"))?;
    link.right.add_addr(NET_IF, &format!("{PARTNER}/24"))?;
    link.right.add_addr(NET_IF, &format!("{STRANGER}/24"))?;
    link.right.add_addr(NET_IF, &format!("{GUESSER}/24"))?;
    link.left.add_addr(DMZ_IF, &format!("{MAIL_HOST_V6}/32"))?;
    link.right.add_addr(NET_IF, &format!("{PARTNER_V6}/32"))?;
    link.right.add_addr(NET_IF, &format!("{STRANGER_V6}/32"))?;
    link.left
        .exec(&["ip", "route", "add", "198.51.100.0/24", "dev", DMZ_IF])?;
    link.left
        .exec(&["ip", "route", "add", "203.0.113.0/24", "dev", DMZ_IF])?;
    link.right
        .exec(&["ip", "route", "add", "192.0.2.0/24", "dev", NET_IF])?;

    let dir = TempDir::new("demo")?;
    // Whatever happens, no demo pins outlive the demo.
    let _pins = PinDir::at(PIN_DIR.into());
    let client = dir.path().join("smtp-client.py");
    std::fs::write(&client, CLIENT).context("writing the demo's SMTP client")?;
    let guesser = dir.path().join("guesser.py");
    std::fs::write(&guesser, GUESSER_CLIENT).context("writing the demo's password guesser")?;
    step(&format!(
        "demo 2/{STEPS}: the mail host's configuration: a TLS certificate made on the spot, a user for the partner, the allowlist"
    ));
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    shell::self_signed_cert(&key, &cert).context("making the demo certificate with openssl")?;
    let hash = hash_password(&relay, PASSWORD)?;
    let gk_config = dir.path().join("gatekeeper.toml");
    let (ban_socket, ban_state) = (dir.path().join("ban.sock"), dir.path().join("bans.json"));
    let gk_text = format!(
        "# Who may open SMTP sessions to this host.\ninterfaces = [\"{DMZ_IF}\"]\nxdp_mode = \"native\"\nprotected_ports = [25, 587]\npin_dir = \"{PIN_DIR}\"\n# The relay asks for bans here; they are kept in ban_state across reboots.\nban_socket = \"{}\"\nban_state = \"{}\"\n\n[[allow]]\ncidr = \"198.51.100.0/24\"\ncomment = \"partner relays\"\n\n[[allow]]\ncidr = \"2001:db8:100::/48\"\ncomment = \"partner relays, IPv6\"\n",
        ban_socket.display(),
        ban_state.display(),
    );
    std::fs::write(&gk_config, &gk_text).context("writing the demo gatekeeper config")?;
    let relay_config = dir.path().join("smtp-relay.toml");
    std::fs::write(&relay_config, relay_text(&dir, &hash)).context("writing the relay config")?;
    println!("    {}:", gk_config.display());
    for line in gk_text.lines() {
        println!("      | {line}");
    }
    shell::run(
        Command::new(&gatekeeper)
            .args(["check", "--config"])
            .arg(&gk_config),
    )?;
    shell::run(
        Command::new(&relay)
            .args(["check", "--config"])
            .arg(&relay_config),
    )?;

    step(&format!(
        "demo 3/{STEPS}: the mail host starts its internal mail server (a capture on {NEXT_HOP}), the gatekeeper on {DMZ_IF}, then smtp-relay on ports 25 (IPv4 and IPv6) and 587"
    ));
    let sink = SmtpSink::start(&link.left, NEXT_HOP.parse()?)?;
    // Something else the host serves, to show that the filter leaves it alone.
    let web = BannerServer::start(&link.left, "0.0.0.0:8080".parse()?, "web")?;
    // The filter first, so the SMTP ports are guarded before anything listens on them.
    let mut gk_cmd = link.left.nsenter();
    gk_cmd
        .arg(&gatekeeper)
        .args(["run", "--config"])
        .arg(&gk_config);
    let mut gk_daemon =
        Daemon::start("gatekeeper run", gk_cmd, &dir.path().join("gatekeeper.log"))?;
    gk_daemon.wait_for_log("enforcing", Duration::from_secs(15))?;
    for line in gk_daemon.log().lines() {
        println!("      gatekeeper: {line}");
    }
    let mut relay_cmd = link.left.nsenter();
    relay_cmd
        .arg(&relay)
        .args(["run", "--config"])
        .arg(&relay_config);
    let mut relay_daemon = Daemon::start("smtp-relay", relay_cmd, &dir.path().join("relay.log"))?;
    // It binds every listener before serving any, then logs each.
    relay_daemon.wait_for_log(&format!("address={MAIL_HOST}:587"), Duration::from_secs(15))?;
    show_log("smtp-relay", &relay_daemon, "event=\"listening\"")?;

    step(&format!(
        "demo 4/{STEPS}: the partner sends a message for an outside domain on port 587: STARTTLS, AUTH, relayed, delivered"
    ));
    python_client(&link, &client, PARTNER, 587, &["auth", USER, PASSWORD])?;
    let delivered = sink.wait_for(1, Duration::from_secs(20))?;
    let message = String::from_utf8_lossy(&delivered[0].data);
    println!(
        "    ok: the next hop received it: MAIL FROM:<{}> RCPT TO:<{}>",
        delivered[0].from,
        delivered[0].to.join(">,<")
    );
    if let Some(received) = message.lines().find(|l| l.starts_with("Received:")) {
        println!("      | {received}");
    }
    for line in message
        .lines()
        .skip_while(|l| !l.starts_with("Received:"))
        .skip(1)
        .take(3)
    {
        println!("      | {line}");
    }
    show_log("smtp-relay", &relay_daemon, "event=\"message\"")?;

    step(&format!(
        "demo 5/{STEPS}: the partner tries to relay on port 25 without AUTH: never an open relay"
    ));
    let refused = python_client_status(&link, &client, PARTNER, 25, &["noauth"])?;
    ensure!(
        refused == Some(3),
        "the unauthenticated relay attempt was not refused (client exit {refused:?})"
    );
    show_log("smtp-relay", &relay_daemon, "event=\"relay_denied\"")?;
    ensure!(
        sink.messages().len() == 1,
        "the refused message reached the next hop"
    );
    println!("    ok: refused with 554 5.7.1; the next hop still holds one message");

    step(&format!(
        "demo 6/{STEPS}: the stranger tries port 25, over IPv4 and IPv6: its SYNs are dropped at XDP"
    ));
    let smtp = SocketAddr::new(IpAddr::V4(MAIL_HOST), 25);
    let outcome = connect(&link.right, IpAddr::V4(STRANGER), smtp, TIMEOUT);
    ensure!(
        outcome == Outcome::TimedOut,
        "the stranger should have been dropped, got {outcome:?}"
    );
    let smtp_v6 = SocketAddr::new(IpAddr::V6(MAIL_HOST_V6), 25);
    let outcome = connect(&link.right, IpAddr::V6(STRANGER_V6), smtp_v6, TIMEOUT);
    ensure!(
        outcome == Outcome::TimedOut,
        "the stranger's IPv6 address should have been dropped, got {outcome:?}"
    );
    println!(
        "    ok: no answer within {TIMEOUT:?} on either address: no socket, no TLS handshake, no relay process woken"
    );
    gk_daemon.wait_for_log(&format!("source={STRANGER_V6}"), Duration::from_secs(5))?;
    show_log("gatekeeper", &gk_daemon, "dropped SYN")?;
    for family in ["ipv4", "ipv6"] {
        let dropped = counter(&link, &gatekeeper, &gk_config, family, "dropped")?;
        ensure!(
            dropped >= 1,
            "`gatekeeper stats` counts no dropped {family} frame"
        );
        println!(
            "    ok: `gatekeeper stats` counts {dropped} dropped {family} frame(s) on {DMZ_IF}"
        );
    }
    match connect(&link.right, IpAddr::V6(PARTNER_V6), smtp_v6, TIMEOUT) {
        Outcome::Banner(line) if line.starts_with("220 ") => println!(
            "    ok: the partner's IPv6 server ({PARTNER_V6}) gets the banner on {smtp_v6}: {line:?}"
        ),
        other => bail!("the partner's IPv6 address should reach the relay, got {other:?}"),
    }
    let web_addr = SocketAddr::new(IpAddr::V4(MAIL_HOST), web.addr().port());
    match connect(&link.right, IpAddr::V4(STRANGER), web_addr, TIMEOUT) {
        Outcome::Banner(_) => println!(
            "    ok: the stranger still reaches the web server on port {}: only TCP to the SMTP ports is judged",
            web_addr.port()
        ),
        other => bail!("traffic to port 8080 must pass untouched, got {other:?}"),
    }

    step(&format!(
        "demo 7/{STEPS}: the admin allows the stranger with the CLI (live and written to the config)"
    ));
    shell::run(
        link.left
            .nsenter()
            .arg(&gatekeeper)
            .args([
                "allow",
                "add",
                &STRANGER.to_string(),
                "--comment",
                "new partner, ticket 4711",
                "--config",
            ])
            .arg(&gk_config),
    )?;
    match connect(&link.right, IpAddr::V4(STRANGER), smtp, TIMEOUT) {
        Outcome::Banner(line) if line.starts_with("220 ") => {
            println!("    ok: the stranger now gets the relay's banner: {line:?}");
        }
        other => bail!("after `allow add` the stranger should get the banner, got {other:?}"),
    }
    show_log("smtp-relay", &relay_daemon, "event=\"allowlist_reloaded\"")?;
    let written = std::fs::read_to_string(&gk_config)?;
    for line in written
        .lines()
        .skip_while(|l| !l.contains(&STRANGER.to_string()))
        .take(2)
    {
        println!("      | {line}");
    }

    step(&format!(
        "demo 8/{STEPS}: the allowlist and the counters (`gatekeeper allow list`, `gatekeeper stats`)"
    ));
    shell::run(
        link.left
            .nsenter()
            .arg(&gatekeeper)
            .args(["allow", "list", "--config"])
            .arg(&gk_config),
    )?;
    shell::run(
        link.left
            .nsenter()
            .arg(&gatekeeper)
            .args(["stats", "--config"])
            .arg(&gk_config),
    )?;

    open_port_ban(
        &link,
        &gatekeeper,
        &gk_config,
        &guesser,
        &mut gk_daemon,
        &mut relay_daemon,
    )?;

    if args.keep {
        step(&format!(
            "demo 10/{STEPS}: keeping everything up for you to explore (Ctrl-C ends it)"
        ));
        let (gk, gk_conf, d) = (
            gatekeeper.display(),
            gk_config.display(),
            dir.path().display(),
        );
        println!(
            "    (nsenter rather than `ip netns exec`, which mounts a fresh /sys and so hides the pins in /sys/fs/bpf)"
        );
        println!("    what the gatekeeper enforces, and its counters:");
        println!("      nsenter --net=/run/netns/{DMZ_NS} {gk} status --config {gk_conf}");
        println!("      nsenter --net=/run/netns/{DMZ_NS} {gk} stats --config {gk_conf}");
        println!("    take the stranger off the allowlist again, then knock:");
        println!(
            "      nsenter --net=/run/netns/{DMZ_NS} {gk} allow remove {STRANGER}/32 --config {gk_conf}"
        );
        println!(
            "      ip netns exec {NET_NS} python3 {d}/smtp-client.py {STRANGER} {MAIL_HOST} 25 noauth"
        );
        println!("    the partner, with its password:");
        println!(
            "      ip netns exec {NET_NS} python3 {d}/smtp-client.py {PARTNER} {MAIL_HOST} 587 auth {USER} {PASSWORD}"
        );
        println!("    the bans, with the time each has left:");
        println!("      nsenter --net=/run/netns/{DMZ_NS} {gk} ban list --config {gk_conf}");
        println!("    the daemons' logs: {d}/gatekeeper.log, {d}/relay.log");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    step(&format!(
        "demo 10/{STEPS}: stopping the daemons (the gatekeeper detaches) and removing the namespaces"
    ));
    ensure!(
        gk_daemon.stop_with(libc::SIGTERM, Duration::from_secs(10))?,
        "gatekeeper did not exit cleanly:\n{}",
        gk_daemon.log()
    );
    ensure!(
        relay_daemon.stop_with(libc::SIGTERM, Duration::from_secs(40))?,
        "smtp-relay did not exit cleanly:\n{}",
        relay_daemon.log()
    );
    drop(sink);
    drop(link);
    println!("\nDemo complete: every step behaved as expected.");
    Ok(())
}

/// Step 9: the admin opens port 587 to everyone; a password guesser gets in, fails AUTH ten
/// times, the relay asks the gatekeeper's ban socket, and the guesser's next SYN is dropped at XDP.
fn open_port_ban(
    link: &Link,
    gatekeeper: &Path,
    gk_config: &Path,
    guesser: &Path,
    gk_daemon: &mut Daemon,
    relay_daemon: &mut Daemon,
) -> anyhow::Result<()> {
    step(&format!(
        "demo 9/{STEPS}: the admin opens port 587 to everyone; a stranger ({GUESSER}) guesses passwords there, the relay asks the gatekeeper for a ban, and its next SYN is dropped at XDP"
    ));
    // Written as an admin's editor would: a new file renamed over the old one.
    let text = std::fs::read_to_string(gk_config).context("reading the demo gatekeeper config")?;
    ensure!(
        text.contains("protected_ports = [25, 587]"),
        "the demo config lost its protected_ports line"
    );
    // A table goes after every top-level key: at the end of the file.
    let opened = text.replace("protected_ports = [25, 587]", "protected_ports = [25]")
        + "\n# Submission open to the whole Internet: bans, deny entries and SYN limits still apply.\n[[port]]\nnumber = 587\npolicy = \"open\"\n";
    let staged = gk_config.with_extension("toml.new");
    std::fs::write(&staged, &opened).context("writing the opened config")?;
    std::fs::rename(&staged, gk_config).context("renaming the opened config into place")?;
    for line in opened.lines().filter(|l| {
        l.starts_with("protected_ports")
            || l.starts_with("[[port]]")
            || l.starts_with("number")
            || l.starts_with("policy")
    }) {
        println!("      | {line}");
    }
    let submission = SocketAddr::new(IpAddr::V4(MAIL_HOST), 587);
    let mut last = None;
    let reached = wait_until(Duration::from_secs(10), || {
        let outcome = connect(&link.right, IpAddr::V4(GUESSER), submission, TIMEOUT);
        let banner = matches!(&outcome, Outcome::Banner(line) if line.starts_with("220 "));
        last = Some(outcome);
        banner
    });
    if reached.is_err() {
        bail!(
            "the stranger never got the banner on port 587 after it was opened (last: {last:?})\ngatekeeper:\n{}\nsmtp-relay:\n{}",
            gk_daemon.log(),
            relay_daemon.log()
        );
    }
    println!(
        "    ok: the daemon and the relay picked up the change: {GUESSER} gets the banner on port 587"
    );

    let mut cmd = link.right.command(&["python3"]);
    cmd.arg(guesser).args([
        GUESSER.to_string(),
        MAIL_HOST.to_string(),
        "587".into(),
        (3 * GUESSES).to_string(),
    ]);
    println!("    $ {}", shell::display(&cmd));
    let status = cmd.status().context("running the password guesser")?;
    ensure!(status.success(), "the password guesser failed ({status})");
    relay_daemon.wait_for_log("event=\"ban\"", Duration::from_secs(10))?;
    show_log("smtp-relay", relay_daemon, "event=\"ban\"")?;
    gk_daemon.wait_for_log("banned (ban socket)", Duration::from_secs(10))?;
    show_log("gatekeeper", gk_daemon, "banned (ban socket)")?;

    let outcome = connect(&link.right, IpAddr::V4(GUESSER), submission, TIMEOUT);
    ensure!(
        outcome == Outcome::TimedOut,
        "the banned guesser's SYN should have been dropped, got {outcome:?}"
    );
    println!("    ok: no answer within {TIMEOUT:?}: the banned source's SYN is dropped at XDP");
    match connect(&link.right, IpAddr::V4(PARTNER), submission, TIMEOUT) {
        Outcome::Banner(line) if line.starts_with("220 ") => {
            println!("    ok: the partner still gets the banner on port 587: {line:?}")
        }
        other => bail!("the partner should still reach port 587, got {other:?}"),
    }
    shell::run(
        link.left
            .nsenter()
            .arg(gatekeeper)
            .args(["ban", "list", "--config"])
            .arg(gk_config),
    )?;
    let banned = counter(link, gatekeeper, gk_config, "ipv4", "banned")?;
    ensure!(
        banned >= 1,
        "`gatekeeper stats` counts no banned ipv4 frame"
    );
    println!(
        "    ok: `gatekeeper stats` counts {banned} ipv4 frame(s) dropped as `banned` on {DMZ_IF}"
    );
    Ok(())
}

/// Polls `ready` every 100 ms until it holds or `limit` has passed.
fn wait_until(limit: Duration, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("not within {limit:?}")
}

fn relay_text(dir: &TempDir, hash: &str) -> String {
    let path = |name: &str| dir.path().join(name).display().to_string();
    format!(
        r#"hostname = "mx.example.org"
spool_dir = "{spool}"
local_domains = ["example.org"]
# Short AUTH failure delays, so the demo's password guesser is done in a second.
auth_failure_delay_ms = 5

[tls]
cert = "{cert}"
key = "{key}"

# Port 25 admits exactly the peers the gatekeeper admits (defence in depth).
[[listener]]
address = "{MAIL_HOST}:25"
role = "mta"
allow_gatekeeper = ["{gatekeeper}"]

[[listener]]
address = "[{MAIL_HOST_V6}]:25"
role = "mta"
allow_gatekeeper = ["{gatekeeper}"]

[[listener]]
address = "{MAIL_HOST}:587"
role = "submission"
allow_gatekeeper = ["{gatekeeper}"]

[[user]]
name = "{USER}"
password_hash = "{hash}"
senders = ["partner@example.net"]

[delivery]
retry_initial_secs = 1.0

[[delivery.route]]
domain = "example.org"
host = "127.0.0.1"
port = 2525
tls = "none"

[delivery.smarthost]
host = "127.0.0.1"
port = 2525
tls = "none"

# Evidence the relay has becomes a ban at XDP: the gatekeeper's ban socket.
[bans]
socket = "{ban_socket}"
auth_failures = {{ count = {GUESSES}, within_secs = 600, ban_secs = 3600 }}
"#,
        spool = path("spool"),
        cert = path("cert.pem"),
        key = path("key.pem"),
        gatekeeper = path("gatekeeper.toml"),
        ban_socket = path("ban.sock"),
    )
}

fn hash_password(relay: &Path, password: &str) -> anyhow::Result<String> {
    use std::io::Write as _;
    let mut child = Command::new(relay)
        .args(["hash-password", "--stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running smtp-relay hash-password")?;
    child
        .stdin
        .take()
        .context("no stdin")?
        .write_all(format!("{password}\n").as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "smtp-relay hash-password failed");
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn python_client(
    link: &Link,
    script: &Path,
    source: Ipv4Addr,
    port: u16,
    rest: &[&str],
) -> anyhow::Result<()> {
    match python_client_status(link, script, source, port, rest)? {
        Some(0) => Ok(()),
        other => bail!("the SMTP client failed ({other:?})"),
    }
}

/// Runs the smtplib client in the Internet namespace; `Some(3)` means the relay refused the
/// recipient.
fn python_client_status(
    link: &Link,
    script: &Path,
    source: Ipv4Addr,
    port: u16,
    rest: &[&str],
) -> anyhow::Result<Option<i32>> {
    let mut cmd = link.right.command(&["python3"]);
    cmd.arg(script)
        .args([source.to_string(), MAIL_HOST.to_string(), port.to_string()])
        .args(rest);
    println!("    $ {}", shell::display(&cmd));
    Ok(cmd.status().context("running python3")?.code())
}

/// One counter (`dropped`, `banned`, ...) of one family (`ipv4`, `ipv6`) on the demo interface,
/// from `gatekeeper stats --json`.
fn counter(
    link: &Link,
    gatekeeper: &Path,
    config: &Path,
    family: &str,
    name: &str,
) -> anyhow::Result<u64> {
    let out = link
        .left
        .nsenter()
        .arg(gatekeeper)
        .args(["stats", "--json", "--config"])
        .arg(config)
        .output()
        .context("running gatekeeper stats")?;
    ensure!(
        out.status.success(),
        "gatekeeper stats failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("gatekeeper stats --json printed no JSON")?;
    stats["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["interface"] == DMZ_IF)
        .and_then(|i| i["counters"][family][name].as_u64())
        .with_context(|| format!("no {family} {name} counter for {DMZ_IF} in {stats}"))
}

/// Prints the log lines of `daemon` that contain `needle`; none is a failure.
fn show_log(name: &str, daemon: &Daemon, needle: &str) -> anyhow::Result<()> {
    let log = daemon.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(needle)).collect();
    ensure!(
        !lines.is_empty(),
        "{name} logged no line with {needle:?}:\n{log}"
    );
    for line in lines {
        println!("      {name}: {}", line.trim());
    }
    Ok(())
}
