//! The DIR-24-8 tables against the plain definition of longest-prefix match, after thousands of
//! random adds, removes and replacements of prefixes of every length from /0 to /32, nested and
//! overlapping: for every probed address the tables must name exactly the longest matching entry.
//! The block pool starts small and is grown (new tables filled and swapped in, as the daemon's
//! reload does) whenever an add runs out of blocks, so the verdicts are also checked across
//! replaced tables.

use std::net::Ipv4Addr;

use gatekeeper::{
    dir24::{self, OutOfBlocks},
    filter::{Filter, Ipv4Lookup, LoadOptions},
};
use gatekeeper_tests::{
    dirs::PinDir,
    generate::{Rng, random_in_v4, random_v4_net},
    kernel_tests_enabled,
};
use ipnet::{IpNet, Ipv4Net};

/// The pool the test starts with: a handful of blocks, so the random prefixes longer than /24
/// outgrow it several times.
const FIRST_POOL: u32 = 4;

/// Adds `net` (not yet an entry); when the pool has no free block, replaces the IPv4 tables with
/// a pool a few blocks larger (copied from the old tables) and adds again.
/// Counts the replacements in `grown`.
fn add(filter: &mut Filter, entries: &mut Vec<Ipv4Net>, net: Ipv4Net, grown: &mut usize) {
    match filter.maps().insert(IpNet::V4(net)) {
        Ok(()) => {}
        Err(err) if err.downcast_ref::<OutOfBlocks>().is_some() => {
            let all: Vec<IpNet> = entries
                .iter()
                .chain([&net])
                .map(|n| IpNet::V4(*n))
                .collect();
            // Blocks this process retired just now (removed /24s) are not handed out again
            // yet, so the pool may be short of blocks while the entries need fewer.
            let current = u32::try_from(filter.maps().ipv4_blocks()).expect("pool size");
            let blocks = dir24::blocks_needed(&all).max(current) + 3;
            filter
                .replace_ipv4_tables(&LoadOptions {
                    ipv4_lookup: Ipv4Lookup::Dir24,
                    dir24_blocks: blocks,
                    ..LoadOptions::default()
                })
                .expect("grow the block pool");
            assert_eq!(filter.maps().ipv4_blocks(), blocks as usize);
            *grown += 1;
            filter
                .maps()
                .insert(IpNet::V4(net))
                .expect("insert after growing the pool");
        }
        Err(err) => panic!("insert {net}: {err:#}"),
    }
    entries.push(net);
}

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
    let pins = PinDir::new("gkd24");
    gatekeeper::bpffs::ensure_pin_dir(pins.path()).expect("pin dir on bpffs");
    let mut filter = Filter::load_with(&LoadOptions {
        pin_dir: Some(pins.path()),
        ipv4_lookup: Ipv4Lookup::Dir24,
        dir24_blocks: FIRST_POOL,
        ..LoadOptions::default()
    })
    .expect("load");
    let mut entries: Vec<Ipv4Net> = Vec::new();
    let mut grown = 0;
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
                    add(&mut filter, &mut entries, new, &mut grown);
                }
            } else {
                let existing: Vec<IpNet> = entries.iter().map(|n| IpNet::V4(*n)).collect();
                // /0 now and then, and mostly short prefixes early so later ones nest in them.
                let net = as_v4(random_v4_net(&mut rng, &existing, round % 10 == 3));
                if !entries.contains(&net) {
                    add(&mut filter, &mut entries, net, &mut grown);
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
                "round {round}: {addr} (entries: {}, pool grown {grown} times)",
                entries.len()
            );
        }
    }
    assert!(grown >= 3, "the pool grew only {grown} times");
    eprintln!(
        "the block pool grew {grown} times, to {} blocks",
        filter.maps().ipv4_blocks()
    );
    filter.unpin().expect("unpin");
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
