//! The resolver every check uses (`smtp_relay::dns`), against a real authoritative server
//! (NSD) on loopback: answers, the two kinds of failure the checks must tell apart (the name does
//! not exist; no usable answer), and a server that never answers.

mod common;

use std::time::{Duration, Instant};

use common::nsd::{Nsd, SilentDns};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn resolver_reads_records_from_the_configured_server_only() {
    // A TXT over 255 octets must be split into strings; the resolver joins them.
    let long = "a".repeat(250);
    let zone = format!(
        "@ IN TXT \"v=spf1 ip4:192.0.2.0/24 -all\"\n\
         long IN TXT \"{long}\" \"tail\"\n\
         mx1 IN A 192.0.2.25\n"
    );
    let nsd = Nsd::start(&[("dns.test", &zone)]);
    let resolver =
        smtp_relay::dns::resolver(&[nsd.addr], Duration::from_secs(1), 1, 64).expect("resolver");
    runtime().block_on(async {
        let txt = resolver.txt_lookup("dns.test.").await.expect("txt");
        let texts: Vec<String> = txt.answers().iter().map(|r| r.data.to_string()).collect();
        assert!(
            texts
                .iter()
                .any(|t| t.contains("v=spf1 ip4:192.0.2.0/24 -all")),
            "{texts:?}"
        );
        let long_txt = resolver
            .txt_lookup("long.dns.test.")
            .await
            .expect("long txt");
        let joined = long_txt.answers()[0].data.to_string();
        assert!(
            joined.contains(&long) && joined.contains("tail"),
            "{joined}"
        );
        let ips = resolver.lookup_ip("mx1.dns.test.").await.expect("a");
        assert_eq!(ips.iter().next(), Some("192.0.2.25".parse().expect("ip")));

        // Inside the zone, a missing name is NXDOMAIN: "does not exist", a final answer.
        let missing = resolver
            .txt_lookup("nothing.dns.test.")
            .await
            .expect_err("nxdomain");
        assert!(missing.is_nx_domain(), "{missing}");
        // Outside its zones NSD refuses: no answer at all, which checks treat as temporary.
        let refused = resolver
            .txt_lookup("elsewhere.test.")
            .await
            .expect_err("refused");
        assert!(
            !refused.is_nx_domain() && !refused.is_no_records_found(),
            "{refused}"
        );
    });
}

#[test]
fn a_silent_server_times_out_within_the_configured_bound() {
    let silent = SilentDns::start();
    let resolver = smtp_relay::dns::resolver(&[silent.addr], Duration::from_millis(300), 1, 0)
        .expect("resolver");
    let started = Instant::now();
    let err = runtime()
        .block_on(resolver.txt_lookup("dns.test."))
        .expect_err("timeout");
    assert!(!err.is_nx_domain(), "{err}");
    // Bounded by timeout × attempts, with slack for a loaded machine (not a speed claim).
    assert!(started.elapsed() < Duration::from_secs(10), "{err}");
}

#[test]
fn dns_table_is_required_to_name_nameservers() {
    let setup = common::Setup::new("dns-config", &common::config_with("", "[dns]\n"));
    let err = smtp_relay::config::Config::load(&setup.config).expect_err("empty nameservers");
    assert!(err.to_string().contains("dns.nameservers"), "{err}");
    setup.rewrite(&common::config_with(
        "",
        "[dns]\nnameservers = [\"127.0.0.1:53\"]\ntimeout_ms = 500\n",
    ));
    let c = smtp_relay::config::Config::load(&setup.config).expect("valid");
    let dns = c.dns.expect("dns");
    assert_eq!(dns.timeout, Duration::from_millis(500));
    assert_eq!(dns.attempts, 1);
}
