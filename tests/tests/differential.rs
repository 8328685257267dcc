//! Differential test: generated frames through the real program (`BPF_PROG_TEST_RUN`) and
//! through the reference classifier must get the same verdict, and the kernel's counters must
//! equal the reference's tally. Allowlists mix prefixes of every length, nested and overlapping,
//! edited in random order between batches.

use std::collections::HashMap;

use gatekeeper::{
    filter::{Filter, Ipv4Lookup, LoadOptions},
    policy::Mode,
};
use gatekeeper_common::{Counter, Family};
use gatekeeper_tests::{
    generate::{FrameGen, Rng, random_v4_net, random_v6_net},
    kernel_tests_enabled,
    program::{XDP_DROP, XDP_PASS, loaded, verdict},
    reference::{Action, Class, Fam, Rules, no_limit},
    summary,
};
use ipnet::{IpNet, Ipv4Net};
use rstest::rstest;

const PORTS: [u16; 3] = [25, 465, 587];

fn seed() -> u64 {
    std::env::var("GATEKEEPER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6a7e_4ee9)
}

/// Frames per test: `GATEKEEPER_FRAMES` overrides each test's own count (the kernel matrix uses
/// fewer frames under emulated CPUs, where each BPF_PROG_TEST_RUN costs many times more).
fn frames(default: usize) -> usize {
    std::env::var("GATEKEEPER_FRAMES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn run(mode: Mode, lookup: Ipv4Lookup, frames: usize, batch: usize) {
    let frames = self::frames(frames);
    let seed = seed();
    eprintln!(
        "differential: mode {mode}, IPv4 lookup {lookup}, {frames} frames, seed {seed} (set GATEKEEPER_SEED to replay)"
    );
    let mut rng = Rng::new(seed ^ (mode as u64));
    let options = LoadOptions {
        ipv4_lookup: lookup,
        ..LoadOptions::default()
    };
    let mut filter = loaded(&options, mode, &PORTS);

    let mut allow: Vec<IpNet> = Vec::new();
    for _ in 0..60 {
        let net = random_v4_net(&mut rng, &allow, false);
        add(&mut filter, &mut allow, net);
    }
    for _ in 0..20 {
        let net = random_v6_net(&mut rng);
        add(&mut filter, &mut allow, net);
    }

    let mut tally: HashMap<(Fam, Class), u64> = HashMap::new();
    // IPv4 strangers to a protected port denied by the summary alone / by the table behind it.
    let (mut summary_denied, mut table_denied) = (0u64, 0u64);
    // The finest summary level the program reads: /24 with the DIR-24-8 tables, else /16.
    let level = if lookup == Ipv4Lookup::Trie { 16 } else { 24 };
    let mut checked = 0;
    while checked < frames {
        for _ in 0..batch.min(frames - checked) {
            let generated = FrameGen {
                rng: &mut rng,
                protected: &PORTS,
                allow: &allow,
            }
            .frame();
            let rules = Rules {
                ports: &PORTS,
                open: &[],
                monitor: mode == Mode::Monitor,
                allow: &allow,
                deny: &[],
                banned: &[],
                over_rate: &no_limit,
            };
            let expected = rules.judge(&generated.frame);
            let verdict = verdict(&mut filter, &generated.frame);
            let want = match expected.action {
                Action::Pass => XDP_PASS,
                Action::Drop => XDP_DROP,
            };
            assert_eq!(
                verdict, want,
                "frame #{checked} (seed {seed}): kernel {verdict}, reference {expected:?}\nframe: {:02x?}",
                generated.frame
            );
            if let Some(shape) = generated.shape {
                // Invariants, from what the generator built rather than from the reference.
                if shape.judgeable && !shape.tcp_to_protected {
                    assert_eq!(
                        verdict, XDP_PASS,
                        "not TCP to a protected port, yet dropped: {:02x?}",
                        generated.frame
                    );
                }
                let allowed = allow.iter().any(|n| n.contains(&shape.source));
                if let (true, false, std::net::IpAddr::V4(source)) = (
                    shape.judgeable && shape.tcp_to_protected,
                    allowed,
                    shape.source,
                ) {
                    if summary::region_listed(&v4(&allow), source, level) {
                        table_denied += 1;
                    } else {
                        summary_denied += 1;
                    }
                }
                if shape.tcp_to_protected && !allowed && mode == Mode::Enforce {
                    assert_eq!(
                        verdict, XDP_DROP,
                        "a stranger's segment to a protected port passed: {:02x?}",
                        generated.frame
                    );
                }
                if mode == Mode::Monitor {
                    assert_eq!(verdict, XDP_PASS, "monitor mode dropped a frame");
                }
            }
            *tally.entry((expected.family, expected.class)).or_default() += 1;
            checked += 1;
        }
        // The summary's bits equal their recomputation from the list, whatever the edits did.
        let summary = filter.maps().summary().expect("the program has a summary");
        summary::assert_exact(
            summary,
            &v4(&allow),
            lookup != Ipv4Lookup::Trie,
            &format!("after frame #{checked} (seed {seed})"),
        );
        // Edits between batches: adds (new entries may nest in old ones) and removes.
        for _ in 0..10 {
            if rng.chance(50) && !allow.is_empty() {
                let victim = allow.remove(rng.below(allow.len()));
                assert!(
                    filter.maps().remove(victim).expect("remove"),
                    "{victim} was in the map"
                );
            } else if rng.chance(80) {
                let with_default = rng.chance(3);
                let net = random_v4_net(&mut rng, &allow, with_default);
                add(&mut filter, &mut allow, net);
            } else {
                let net = random_v6_net(&mut rng);
                add(&mut filter, &mut allow, net);
            }
        }
    }

    // The kernel's counters (slot 0: BPF_PROG_TEST_RUN has no ingress interface) equal the tally.
    let counters = filter.maps().counters(0).expect("counters");
    for (fam, family) in [
        (Fam::Other, Family::Other),
        (Fam::V4, Family::Ipv4),
        (Fam::V6, Family::Ipv6),
    ] {
        for (class, counter) in [
            (Class::PassNotIp, Counter::PassNotIp),
            (Class::PassNotTcp, Counter::PassNotTcp),
            (Class::PassOtherPort, Counter::PassOtherPort),
            (Class::PassFragment, Counter::PassFragment),
            (Class::Allowed, Counter::Allowed),
            (Class::Dropped, Counter::Dropped),
            (Class::WouldDrop, Counter::WouldDrop),
            (Class::Unjudgeable, Counter::Unjudgeable),
            (Class::Malformed, Counter::Malformed),
        ] {
            let want = tally.get(&(fam, class)).copied().unwrap_or(0);
            let got = counters.0[family as usize][counter as usize];
            assert_eq!(got, want, "counter {counter:?} for {family:?}");
        }
        assert_eq!(
            counters.0[family as usize][Counter::EventSent as usize],
            0,
            "events are off"
        );
    }
    let drops = tally
        .iter()
        .filter(|((_, c), _)| matches!(c, Class::Dropped | Class::WouldDrop))
        .map(|(_, n)| n)
        .sum::<u64>();
    let allowed = tally
        .iter()
        .filter(|((_, c), _)| *c == Class::Allowed)
        .map(|(_, n)| n)
        .sum::<u64>();
    eprintln!(
        "differential: {checked} frames agree; allowed {allowed}, dropped {drops}, classes {}",
        tally.len()
    );
    assert!(
        drops > 0 && allowed > 0,
        "the generator must exercise both verdicts"
    );
    eprintln!(
        "differential: IPv4 strangers denied by the summary {summary_denied}, by the table behind it {table_denied}"
    );
    // Coverage, not correctness (every verdict was checked above): with the default seed the
    // lists leave room for strangers on both paths. Another seed's list may cover all of IPv4.
    if std::env::var_os("GATEKEEPER_SEED").is_none() {
        assert!(
            summary_denied > 0 && table_denied > 0,
            "the generator must send strangers both under clear and under set summary bits"
        );
    }
}

/// The IPv4 entries of a mixed list.
fn v4(allow: &[IpNet]) -> Vec<Ipv4Net> {
    allow
        .iter()
        .filter_map(|n| match n {
            IpNet::V4(n) => Some(*n),
            IpNet::V6(_) => None,
        })
        .collect()
}

fn add(filter: &mut Filter, allow: &mut Vec<IpNet>, net: IpNet) {
    if !allow.contains(&net) {
        filter.maps().insert(net).expect("insert");
        allow.push(net);
    }
}

#[rstest]
#[case::enforce_mode_matches_the_reference_on_100k_frames_with_dir24(
    Mode::Enforce,
    Ipv4Lookup::Dir24,
    100_000,
    2_000
)]
#[case::enforce_mode_matches_the_reference_on_100k_frames_with_the_trie(
    Mode::Enforce,
    Ipv4Lookup::Trie,
    100_000,
    5_000
)]
#[case::monitor_mode_matches_the_reference_and_never_drops(
    Mode::Monitor,
    Ipv4Lookup::Dir24,
    20_000,
    5_000
)]
fn kernel_and_reference_agree(
    #[case] mode: Mode,
    #[case] lookup: Ipv4Lookup,
    #[case] frames: usize,
    #[case] batch: usize,
) {
    if !kernel_tests_enabled("kernel_and_reference_agree") {
        return;
    }
    run(mode, lookup, frames, batch);
}
