//! DANE (RFC 7672) on MX delivery against real DNSSEC: a zone signed at test time with
//! ldns-signzone, served by NSD, resolved and validated by unbound on loopback (the relay's
//! `[delivery] nameservers`, trusted for its AD bit), and next hops with STARTTLS.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::nexthop::{NextHop, Script};
use common::nsd::{Nsd, zone_text};
use common::unbound::{self, Unbound};
use common::{Client, PASSWORD, TestServer, config_with, queue_id};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, PublicKeyData as _};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use smtp_relay::config::Role;
use smtp_relay::delivery::dane::{Dane, Tlsa};

const WAIT: Duration = Duration::from_secs(20);

const MESSAGE: &[u8] = b"From: alice@example.org\r\nTo: someone\r\nSubject: dane\r\n\r\nhello\r\n";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// A test CA and next-hop certificates it signs.
struct Ca {
    cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new() -> Ca {
        let key = KeyPair::generate().expect("ca key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("ca cert").der().clone();
        Ca {
            cert,
            issuer: Issuer::new(params, key),
        }
    }

    /// A STARTTLS config for `name` sending the chain leaf, CA; and the leaf key's SPKI.
    fn server(&self, name: &str) -> (Arc<rustls::ServerConfig>, Vec<u8>) {
        let key = KeyPair::generate().expect("leaf key");
        let leaf = CertificateParams::new(vec![name.to_owned()])
            .expect("params")
            .signed_by(&key, &self.issuer)
            .expect("leaf");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone(), self.cert.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("server config");
        (Arc::new(config), key.subject_public_key_info())
    }
}

fn hop_with_tls(bind: &str, tls: Arc<rustls::ServerConfig>) -> NextHop {
    NextHop::start(
        bind,
        Script {
            tls: Some(tls),
            ..Script::default()
        },
    )
}

fn submit(server: &TestServer, to: &str) -> String {
    let mut c = Client::connect_tls(server.addr(Role::Submissions), &server.setup.ca());
    c.ehlo();
    c.auth_plain("alice", PASSWORD).expect(235, "2.7.0");
    let r = c.send_mail("alice@example.org", &[to], MESSAGE);
    c.cmd("QUIT");
    queue_id(&r)
}

/// TLSA 3 1 1 matching: delivered over TLS (the certificate's name plays no part). TLSA 3 1 1
/// not matching: deferred, and the host never sees a MAIL FROM (no plaintext fallback). TLSA
/// 2 0 1 naming the CA that signed the MX host's certificate: delivered. A mismatching TLSA
/// record in an unsigned zone (no AD bit): ignored, delivered opportunistically.
#[test]
fn dane_decides_tls_per_mx_host() {
    let started = Instant::now();
    let ca = Ca::new();
    let (ee_tls, ee_spki) = ca.server("not-the-mx-name.invalid");
    let (bad_tls, _) = ca.server("mx-bad.dane.example");
    let (ta_tls, _) = ca.server("mx-ta.dane.example");
    let (plain_tls, _) = ca.server("mx.plain.example");
    let unrelated = sha256(&KeyPair::generate().expect("key").subject_public_key_info());

    let ee = hop_with_tls("127.0.0.2:0", ee_tls);
    let port = ee.addr.port();
    let bad = hop_with_tls(&format!("127.0.0.3:{port}"), bad_tls);
    let ta = hop_with_tls(&format!("127.0.0.4:{port}"), ta_tls);
    let plain = hop_with_tls(&format!("127.0.0.5:{port}"), plain_tls);

    let signed = unbound::sign(
        "dane.example",
        &format!(
            "ee IN MX 10 mx-ee\nbad IN MX 10 mx-bad\nta IN MX 10 mx-ta\n\
             mx-ee IN A 127.0.0.2\nmx-bad IN A 127.0.0.3\nmx-ta IN A 127.0.0.4\n\
             _{port}._tcp.mx-ee IN TLSA 3 1 1 {}\n\
             _{port}._tcp.mx-bad IN TLSA 3 1 1 {unrelated}\n\
             _{port}._tcp.mx-ta IN TLSA 2 0 1 {}\n",
            sha256(&ee_spki),
            sha256(&ca.cert),
        ),
    );
    let unsigned = zone_text(
        "plain.example",
        1,
        &format!("@ IN MX 10 mx\nmx IN A 127.0.0.5\n_{port}._tcp.mx IN TLSA 3 1 1 {unrelated}\n"),
    );
    let nsd = Nsd::serve(&[("dane.example", signed.text), ("plain.example", unsigned)]);
    let resolver = Unbound::start(
        &["dane.example", "plain.example"],
        nsd.addr,
        &[signed.ds.as_str()],
    );
    eprintln!("DNS fixtures up after {:?}", started.elapsed());

    // What the lookup makes of the answers: the AD bit comes from the validating resolver only.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let validating = Dane::new(&[resolver.addr])
            .expect("dane")
            .expect("nameservers");
        let authoritative = Dane::new(&[nsd.addr]).expect("dane").expect("nameservers");
        let tlsa = |d: &'static str| format!("mx-{d}.dane.example");
        assert!(
            matches!(validating.tlsa(&tlsa("ee"), port).await, Ok(Tlsa::Usable(r)) if r.len() == 1),
            "{}",
            resolver.log()
        );
        // The same signed records straight from NSD carry no AD bit: no DANE.
        assert_eq!(
            authoritative.tlsa(&tlsa("ee"), port).await.expect("lookup"),
            Tlsa::Insecure
        );
        assert_eq!(
            validating
                .tlsa("mx.plain.example", port)
                .await
                .expect("lookup"),
            Tlsa::Insecure
        );
        assert_eq!(
            validating
                .tlsa(&tlsa("ee"), port + 1)
                .await
                .expect("lookup"),
            Tlsa::None
        );
    });

    let tail = common::delivery_section(
        &[],
        &format!("nameservers = [\"{}\"]\nmx_port = {port}\n", resolver.addr),
    );
    let server = TestServer::start_with("dane", &config_with("", &tail));
    let bad_id = submit(&server, "b@bad.dane.example");
    for to in ["a@ee.dane.example", "c@ta.dane.example", "d@plain.example"] {
        submit(&server, to);
    }
    for (hop, to) in [
        (&ee, "a@ee.dane.example"),
        (&ta, "c@ta.dane.example"),
        (&plain, "d@plain.example"),
    ] {
        let got = hop.wait_for(1, WAIT);
        assert_eq!(got[0].rcpts, vec![to]);
        assert!(got[0].tls, "{to} delivered without TLS");
    }

    let deferred = || {
        let env = server.setup.spool().read_envelope(&bad_id).ok()?;
        (env.attempts >= 1).then(|| env.recipients[0].last_reply().unwrap_or_default())
    };
    let deadline = Instant::now() + WAIT;
    while deferred().is_none() {
        assert!(
            bad.messages().is_empty(),
            "delivered despite a mismatching TLSA record"
        );
        assert!(
            Instant::now() < deadline,
            "no attempt to the mismatching MX"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let reply = deferred().unwrap_or_default();
    assert!(reply.contains("DANE"), "{reply}");
    assert!(reply.contains("no TLSA record matches"), "{reply}");
    assert!(!bad.connect_times().is_empty(), "the MX was not tried");
    // No plaintext retry after the failed handshake.
    std::thread::sleep(Duration::from_millis(300));
    assert!(bad.mails_seen().is_empty(), "{:?}", bad.mails_seen());
    assert!(bad.messages().is_empty());
    eprintln!("done after {:?}", started.elapsed());
}
