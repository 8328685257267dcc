//! DNS-derived allow entries end to end (issue 23): the real daemon in a namespace resolves
//! `[[allow]] spf = "partner.example"` through NSD (a real authoritative server inside the same
//! namespace, never the system resolver) and the XDP filter admits the partner's servers that
//! the SPF record authorises through include, redirect, mx and a. A changed record (TTL 2 s)
//! moves the admission within the TTL plus a second; an SPF loop, a record over 10 lookups and a
//! SERVFAIL keep the last good set and the log says why; a restart without DNS enforces the
//! persisted set.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use gatekeeper_tests::{
    addresses::LINK_STRANGER_V4 as STRANGER,
    gk::{MailHost, stop_cleanly},
    kernel_tests_enabled,
    nsd::Nsd,
    tcp::Outcome,
};

/// Long enough for a SYN/SYN-ACK on a veth, short enough to keep the tests quick.
const TIMEOUT: Duration = Duration::from_millis(1500);
/// For probes that are expected to time out.
const PROBE: Duration = Duration::from_millis(300);

// The partner's servers, on the Internet side's link (one per way the SPF record names them).
const VIA_INCLUDE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
const VIA_REDIRECT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 12);
const VIA_MX: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 13);
const VIA_A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 14);
/// The server the changed record names instead of VIA_INCLUDE.
const MOVED: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 15);

/// The partner's zone, with `spf` as `_spf.partner.example`'s record; TTL 2 s everywhere.
fn partner_zone(spf: &str, redirect: &str) -> String {
    let mut zone = format!(
        "@ 2 IN TXT \"v=spf1 include:_spf.partner.example redirect=_r.partner.example\"\n\
         _spf 2 IN TXT \"{spf}\"\n\
         _r 2 IN TXT \"{redirect}\"\n\
         @ 2 IN MX 10 mx1.partner.example.\n\
         mx1 2 IN A {VIA_MX}\n\
         out 2 IN A {VIA_A}\n"
    );
    for i in 0..12 {
        zone.push_str(&format!("h{i} 2 IN A 198.51.100.{i}\n"));
    }
    zone
}

fn spf_with(first: Ipv4Addr) -> String {
    format!("v=spf1 ip4:{first} mx:partner.example a:out.partner.example -all")
}

const REDIRECT: &str = "v=spf1 ip4:192.0.2.12 -all";

fn admitted(host: &MailHost, source: Ipv4Addr) -> bool {
    host.connect(IpAddr::V4(source), TIMEOUT).is_banner()
}

fn refused(host: &MailHost, source: Ipv4Addr) -> bool {
    host.connect(IpAddr::V4(source), PROBE) == Outcome::TimedOut
}

#[test]
fn spf_derived_entries_follow_dns_and_survive_its_failures() {
    if !kernel_tests_enabled("spf_derived_entries_follow_dns_and_survive_its_failures") {
        return;
    }
    let host = MailHost::new("gkspf");
    for addr in [VIA_INCLUDE, VIA_REDIRECT, VIA_MX, VIA_A, MOVED] {
        host.client()
            .add_addr(&host.link.right_if, &format!("{addr}/24"))
            .expect("partner address");
    }
    let mut nsd = Nsd::start_in(
        host.host(),
        &[(
            "partner.example",
            &partner_zone(&spf_with(VIA_INCLUDE), REDIRECT),
        )],
        &["broken.example"],
    );
    let state = host.dir.path().join("derived-allow.json");
    let config = host.config_text(
        &format!(
            "[dns]\nnameservers = [\"{}\"]\ntimeout_ms = 500\nattempts = 1\nmin_refresh_secs = 1\nmax_refresh_secs = 4\nstate = \"{}\"\n",
            nsd.addr,
            state.display()
        ),
        &[],
    );
    host.write_config(&format!(
        "{config}\n[[allow]]\nspf = \"partner.example\"\ncomment = \"partner's outbound servers\"\n\n[[allow]]\na = \"out.partner.example\"\n"
    ));
    let mut daemon = host.start_daemon("gatekeeper-run");

    // Admitted because partner.example's SPF names them: include, redirect, mx, a.
    for (via, addr) in [
        ("include", VIA_INCLUDE),
        ("redirect", VIA_REDIRECT),
        ("mx", VIA_MX),
        ("a", VIA_A),
    ] {
        assert!(
            admitted(&host, addr),
            "{addr} (via {via}) refused:\n{}",
            daemon.log()
        );
    }
    assert!(refused(&host, STRANGER), "the stranger got through");
    let list = host.cli_ok(&["allow", "list"]);
    for row in [
        format!("{VIA_INCLUDE}/32"),
        format!("{VIA_REDIRECT}/32"),
        format!("{VIA_MX}/32"),
    ] {
        assert!(
            list.lines()
                .any(|l| l.starts_with(&row) && l.contains("spf:partner.example")),
            "{row} from spf:partner.example not listed:\n{list}"
        );
    }
    assert!(
        list.lines()
            .any(|l| l.starts_with(&format!("{VIA_A}/32")) && l.contains("a:out.partner.example")),
        "{list}"
    );
    let status = host.cli_ok(&["status"]);
    assert!(
        status.contains("derived:  spf:partner.example: 4 networks, resolved"),
        "{status}"
    );
    assert_eq!(
        host.cli(&["status"]).status.code(),
        Some(0),
        "the live allowlist is not what the config and the derived set want:\n{status}"
    );

    // The partner moves a server: the new address is admitted, the old one refused, within the
    // TTL (2 s) plus a second of NSD serving the new record.
    nsd.set_zone("partner.example", &partner_zone(&spf_with(MOVED), REDIRECT));
    let changed = Instant::now();
    while !host.connect(IpAddr::V4(MOVED), PROBE).is_banner() {
        assert!(
            changed.elapsed() < Duration::from_secs(3),
            "{MOVED} not admitted 3 s after the change:\n{}",
            daemon.log()
        );
    }
    let took = changed.elapsed();
    assert!(
        refused(&host, VIA_INCLUDE),
        "the old address is still admitted"
    );
    eprintln!("admission moved {took:?} after the record changed (TTL 2 s)");
    daemon
        .wait_for_log(
            &format!("added={MOVED}/32 removed={VIA_INCLUDE}/32"),
            Duration::from_secs(1),
        )
        .expect("the change logged as a diff");

    // Failures keep the last good set and say why.
    let failures = [
        (
            "an SPF loop",
            partner_zone(&spf_with(MOVED), "v=spf1 redirect=partner.example"),
            "SPF loop: partner.example -> _r.partner.example -> partner.example",
        ),
        (
            "a record over 10 lookups",
            partner_zone(
                &format!(
                    "v=spf1 {} -all",
                    (0..11)
                        .map(|i| format!("a:h{i}.partner.example"))
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
                REDIRECT,
            ),
            "too many DNS lookups",
        ),
        (
            "a SERVFAIL",
            partner_zone(
                &format!("v=spf1 ip4:{MOVED} include:broken.example -all"),
                REDIRECT,
            ),
            "DNS failure: broken.example TXT",
        ),
    ];
    for (what, zone, why) in failures {
        nsd.set_zone("partner.example", &zone);
        daemon
            .wait_for_log(why, Duration::from_secs(6))
            .unwrap_or_else(|e| panic!("{what}: {e:#}"));
        for addr in [MOVED, VIA_REDIRECT, VIA_MX, VIA_A] {
            assert!(
                admitted(&host, addr),
                "{what}: {addr} no longer admitted:\n{}",
                daemon.log()
            );
        }
        assert!(refused(&host, STRANGER), "{what}: the stranger got through");
        let status = host.cli_ok(&["status"]);
        assert!(
            status.contains("last attempt failed, kept:"),
            "{what}: status does not say:\n{status}"
        );
    }
    assert!(
        daemon
            .log()
            .contains("resolving the derived allow entry failed, keeping the last good set"),
        "{}",
        daemon.log()
    );

    // A restart without DNS enforces the persisted set.
    stop_cleanly(&mut daemon);
    drop(nsd);
    let mut daemon = host.start_daemon("gatekeeper-run-no-dns");
    for addr in [MOVED, VIA_REDIRECT, VIA_MX, VIA_A] {
        assert!(
            admitted(&host, addr),
            "after a restart without DNS {addr} is refused:\n{}",
            daemon.log()
        );
    }
    assert!(refused(&host, STRANGER), "the stranger got through");
    assert!(refused(&host, VIA_INCLUDE), "the old address came back");
    assert!(
        daemon
            .log()
            .contains("resolving the derived allow entry failed"),
        "{}",
        daemon.log()
    );
    stop_cleanly(&mut daemon);
}
