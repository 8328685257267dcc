//! The DIR-24-8 tables against the plain definition of longest-prefix match, after thousands of
//! random adds, removes and replacements of prefixes of every length from /0 to /32, nested and
//! overlapping: for every probed address the tables must name exactly the longest matching entry.

use std::net::Ipv4Addr;

use gatekeeper::filter::Filter;
use gatekeeper_tests::{
    generate::{Rng, random_in_v4, random_v4_net},
    kernel_tests_enabled,
};
use ipnet::{IpNet, Ipv4Net};

/// The longest entry containing `addr`.
fn longest(entries: &[Ipv4Net], addr: Ipv4Addr) -> Option<Ipv4Net> {
    entries
        .iter()
        .filter(|n| n.contains(&addr))
        .max_by_key(|n| n.prefix_len())
        .copied()
}

#[test]
fn dir24_names_the_longest_matching_entry_through_random_edits() {
    if !kernel_tests_enabled("dir24_names_the_longest_matching_entry_through_random_edits") {
        return;
    }
    let mut rng = Rng::new(0xd1_24_08);
    let mut filter = Filter::load(None).expect("load");
    let mut entries: Vec<Ipv4Net> = Vec::new();
    let as_v4 = |n: IpNet| match n {
        IpNet::V4(n) => n,
        IpNet::V6(_) => unreachable!("random_v4_net returns IPv4"),
    };
    for round in 0..25 {
        for _ in 0..50 {
            let choice = rng.below(10);
            if choice < 3 && !entries.is_empty() {
                let victim = entries.swap_remove(rng.below(entries.len()));
                assert!(filter.maps().remove(IpNet::V4(victim)).expect("remove"));
            } else if choice < 4 && !entries.is_empty() {
                // Replace: out with an entry, in with a neighbour of the same length.
                let i = rng.below(entries.len());
                let old = entries[i];
                assert!(filter.maps().remove(IpNet::V4(old)).expect("remove"));
                entries.swap_remove(i);
                let new = Ipv4Net::new(
                    random_in_v4(&mut rng, old.supernet().unwrap_or(old)),
                    old.prefix_len(),
                )
                .expect("net")
                .trunc();
                if !entries.contains(&new) {
                    filter.maps().insert(IpNet::V4(new)).expect("insert");
                    entries.push(new);
                }
            } else {
                let existing: Vec<IpNet> = entries.iter().map(|n| IpNet::V4(*n)).collect();
                // /0 now and then, and mostly short prefixes early so later ones nest in them.
                let net = as_v4(random_v4_net(&mut rng, &existing, round % 10 == 3));
                if !entries.contains(&net) {
                    filter.maps().insert(IpNet::V4(net)).expect("insert");
                    entries.push(net);
                }
            }
        }
        let maps = filter.maps();
        let dir24 = maps.dir24().expect("loaded with DIR-24-8");
        // Probes: random addresses, and the edges of every entry and just outside them.
        let mut probes: Vec<Ipv4Addr> = (0..5_000)
            .map(|_| Ipv4Addr::from(rng.next_u64() as u32))
            .collect();
        for net in &entries {
            let first = u32::from(net.network());
            let last = u32::from(net.broadcast());
            probes.extend(
                [first, last, first.wrapping_sub(1), last.wrapping_add(1)].map(Ipv4Addr::from),
            );
            probes.push(random_in_v4(&mut rng, *net));
        }
        for addr in probes {
            let want = match longest(&entries, addr) {
                Some(net) => maps.entry_id(net).expect("id").expect("entry has an id") + 1,
                None => 0,
            };
            let got = dir24.lookup(u32::from(addr));
            assert_eq!(
                got,
                want,
                "round {round}: {addr} (entries: {})",
                entries.len()
            );
        }
    }
}

#[test]
fn auto_lookup_switches_to_dir24_for_long_lists() {
    if !kernel_tests_enabled("auto_lookup_switches_to_dir24_for_long_lists") {
        return;
    }
    let policy = gatekeeper::policy::Policy {
        mode: gatekeeper::policy::Mode::Enforce,
        ports: vec![25],
        event_rate: 0,
        event_burst: 0,
    };
    let mut filter = Filter::load(None).expect("load");
    let mut rng = Rng::new(7);
    for _ in 0..10 {
        let net = random_v4_net(&mut rng, &[], false);
        filter.maps().insert(net).expect("insert");
    }
    filter.maps().set_policy(&policy).expect("policy");
    assert_eq!(filter.maps().ipv4_lookup().expect("lookup"), "trie");
    let mut added = 0;
    while added < gatekeeper::filter::AUTO_DIR24_THRESHOLD {
        let addr = Ipv4Addr::from(0x0a00_0000 + (added as u32) * 256);
        let net = IpNet::V4(Ipv4Net::new(addr, 24).expect("net"));
        filter.maps().insert(net).expect("insert");
        added += 1;
    }
    filter.maps().set_policy(&policy).expect("policy");
    assert_eq!(filter.maps().ipv4_lookup().expect("lookup"), "dir24");
}
