//! The README's "Running the open MX" example is a working pair of configs:
//! its gatekeeper block passes the gatekeeper's own config loader with the
//! port policies it describes, and its relay block, with the gatekeeper
//! file and the certificates put in a temporary directory, passes
//! `smtp-relay check` and says what the text around it promises.

mod common;

use std::net::IpAddr;
use std::path::Path;

use common::{TempDir, write_certs};
use gatekeeper_support::gatekeeper_config;
use smtp_relay::config::{Config, Role};

const BIN: &str = env!("CARGO_BIN_EXE_smtp-relay");
const SECTION: &str = "## Running the open MX";

/// The ```toml blocks of the section, each with the path its first line
/// names (`# /etc/...`).
fn example_blocks() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("read smtp-relay/README.md");
    let start = readme.find(SECTION).expect("the section is in the README");
    let rest = &readme[start + SECTION.len()..];
    let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    let mut blocks = Vec::new();
    let mut parts = section.split("```");
    parts.next();
    while let (Some(block), _) = (parts.next(), parts.next()) {
        let Some(body) = block.strip_prefix("toml\n") else {
            continue;
        };
        let path = body
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# "))
            .expect("a block starts with the path of its file");
        blocks.push((path.to_owned(), body.to_owned()));
    }
    blocks
}

fn block(path: &str) -> String {
    example_blocks()
        .into_iter()
        .find(|(p, _)| p == path)
        .unwrap_or_else(|| panic!("no example for {path}"))
        .1
}

const GATEKEEPER: &str = "/etc/gatekeeper/gatekeeper.toml";
const RELAY: &str = "/etc/smtp-relay/smtp-relay.toml";

/// The relay block with its paths moved into `dir` (which holds the
/// gatekeeper block and test certificates).
fn relay_config_in(dir: &Path) -> String {
    std::fs::write(dir.join("gatekeeper.toml"), block(GATEKEEPER)).expect("write gatekeeper");
    write_certs(dir);
    let text = block(RELAY);
    let moves = [
        (GATEKEEPER, dir.join("gatekeeper.toml")),
        ("/etc/smtp-relay/tls/fullchain.pem", dir.join("cert.pem")),
        ("/etc/smtp-relay/tls/privkey.pem", dir.join("key.pem")),
        ("/var/lib/smtp-relay", dir.join("spool")),
    ];
    let mut text = text;
    for (from, to) in moves {
        assert!(text.contains(from), "{from} not in the relay example");
        text = text.replace(from, &to.display().to_string());
    }
    text
}

#[test]
fn the_gatekeeper_block_opens_25_and_keeps_587_and_465_to_the_allowlist() {
    let dir = TempDir::new("readme-gk");
    let path = dir.path().join("gatekeeper.toml");
    std::fs::write(&path, block(GATEKEEPER)).expect("write");
    let gk = gatekeeper_config::Config::load(&path).expect("the gatekeeper accepts the example");
    // Judged ports: 25 open, the others allowlist-only.
    assert_eq!(gk.protected_ports, vec![25, 587, 465]);
    assert_eq!(gk.open_ports, vec![25]);
    assert_eq!((gk.syn_rate, gk.syn_burst), (20, 40));
    assert!(gk.bans.socket.is_some());
}

#[test]
fn the_relay_block_passes_check_and_does_what_the_text_says() {
    let dir = TempDir::new("readme-relay");
    let text = relay_config_in(dir.path());
    let config_path = dir.path().join("smtp-relay.toml");
    std::fs::write(&config_path, &text).expect("write relay config");
    let (ok, printed) = common::process::check(BIN, &config_path);
    assert!(ok, "check refused the README example: {printed}");

    let c = Config::load(&config_path).expect("valid");
    let stranger: IpAddr = "198.51.100.77".parse().expect("ip");
    let office: IpAddr = "192.0.2.10".parse().expect("ip");
    for l in &c.listeners {
        // Port 25 is open at XDP, so the relay admits everyone there too.
        assert_eq!(
            l.admits(stranger),
            l.role == Role::Mta,
            "{} {:?}",
            l.address,
            l.role
        );
        if l.address.is_ipv4() {
            assert!(l.admits(office), "{}", l.address);
        }
    }
    assert_eq!(c.listeners.len(), 6);
    assert_eq!(c.limits.per_client, 20);
    assert_eq!(c.limits.commands, 1000);
    assert!(
        c.trusted_networks.is_empty(),
        "an open MX relays only after AUTH"
    );
    assert_eq!(c.users[1].senders, vec!["@news.example.org"]);
    let bans = c.bans.expect("[bans]");
    assert!(bans.auth_failures.is_some() && bans.pre_greet.is_some());
    let delivery = c.delivery.expect("[delivery]");
    assert_eq!(delivery.routes[0].0, "example.org");
    assert!(!delivery.nameservers.is_empty());
}
