//! The DIR-24-8 tables against the plain definition of longest-prefix match, after thousands of
//! random adds, removes and replacements of prefixes of every length from /0 to /32, nested and
//! overlapping: for every probed address the tables must name exactly the longest matching entry,
//! and the IPv4 summary in front of them must equal its recomputation from the list. The block pool
//! starts small and is grown (new tables filled and swapped in, as the daemon's reload does)
//! whenever an add runs out of blocks, so the verdicts and the summary are also checked across
//! replaced tables. Hosts are added alone in their /24 (a single-host first-level entry, no
//! block), beside another host (single → block, and back to single when one goes) and under a
//! new shorter prefix (single → block): after every round the pool holds exactly the blocks the
//! list needs. Then the summary's verdicts through the program itself, and its filling beside
//! pins that had none.

use std::net::Ipv4Addr;

use gatekeeper::{
    dir24::{self, OutOfBlocks},
    filter::{Filter, Ipv4Lookup, LoadOptions},
    maps::FilterMaps,
    policy::Mode,
};
use gatekeeper_common::map_names;
use gatekeeper_tests::{
    addresses::{HOST_V4, PARTNER_V4},
    dirs::PinDir,
    frames::{TCP_SYN, tcp_v4},
    generate::{Rng, random_in_v4, random_v4_net},
    kernel_tests_enabled,
    program::{XDP_DROP, XDP_PASS, loaded, verdict},
    summary,
};
use ipnet::{IpNet, Ipv4Net};
use rstest::rstest;

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

/// Whether `host` is the only entry in its /24 and nothing shorter covers the /24.
fn alone_in_24(entries: &[Ipv4Net], host: Ipv4Net) -> bool {
    let slot = u32::from(host.network()) >> 8;
    entries.iter().all(|n| {
        *n == host
            || if n.prefix_len() > 24 {
                u32::from(n.network()) >> 8 != slot
            } else {
                !n.contains(&host.network())
            }
    })
}

/// The longest entry containing `addr`.
fn longest(entries: &[Ipv4Net], addr: Ipv4Addr) -> Option<Ipv4Net> {
    entries
        .iter()
        .filter(|n| n.contains(&addr))
        .max_by_key(|n| n.prefix_len())
        .copied()
}

/// With the trie only there are no tables to probe; the summary's /16 level and its reference
/// counts go through the same edits.
#[rstest]
#[case::tables_and_fine_summary(Ipv4Lookup::Dir24)]
#[case::trie_only_summary(Ipv4Lookup::Trie)]
fn dir24_names_the_longest_matching_entry_through_random_edits(#[case] lookup: Ipv4Lookup) {
    if !kernel_tests_enabled("dir24_names_the_longest_matching_entry_through_random_edits") {
        return;
    }
    let mut rng = Rng::new(0xd1_24_08);
    let pins = PinDir::new("gkd24");
    gatekeeper::bpffs::ensure_pin_dir(pins.path()).expect("pin dir on bpffs");
    let mut filter = Filter::load_with(&LoadOptions {
        pin_dir: Some(pins.path()),
        ipv4_lookup: lookup,
        dir24_blocks: FIRST_POOL,
        ..LoadOptions::default()
    })
    .expect("load");
    let fine = lookup != Ipv4Lookup::Trie;
    let mut entries: Vec<Ipv4Net> = Vec::new();
    let mut grown = 0;
    // Adds that turned a single-host /24 into a block: beside the host, and over it.
    let (mut beside, mut over) = (0, 0);
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
            } else if choice < 6 {
                // A host alone in a new /24, or beside a host alone in its /24, or a shorter
                // prefix over such a host.
                let lone: Vec<Ipv4Net> = entries
                    .iter()
                    .filter(|h| h.prefix_len() == 32 && alone_in_24(&entries, **h))
                    .copied()
                    .collect();
                let net = if lone.is_empty() || rng.chance(30) {
                    Ipv4Net::new(Ipv4Addr::from(rng.next_u64() as u32), 32).expect("net")
                } else {
                    let host = *rng.pick(&lone);
                    let slash24 = Ipv4Net::new(host.network(), 24).expect("net").trunc();
                    if choice == 4 {
                        beside += 1;
                        let len = 25 + rng.below(8) as u8;
                        Ipv4Net::new(random_in_v4(&mut rng, slash24), len)
                            .expect("net")
                            .trunc()
                    } else {
                        over += 1;
                        let len = 8 + rng.below(17) as u8;
                        Ipv4Net::new(host.network(), len).expect("net").trunc()
                    }
                };
                if !entries.contains(&net) {
                    add(&mut filter, &mut entries, net, &mut grown);
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
        let summary = maps.summary().expect("the program has a summary");
        summary::assert_exact(summary, &entries, fine, &format!("round {round}"));
        let Some(dir24) = maps.dir24() else {
            assert!(!fine, "loaded with DIR-24-8");
            continue;
        };
        // Single hosts take no block; every other /24 with longer prefixes exactly one.
        let all: Vec<IpNet> = entries.iter().map(|n| IpNet::V4(*n)).collect();
        assert_eq!(
            dir24.blocks_in_use(),
            Some(dir24::blocks_needed(&all) as usize),
            "round {round}: blocks hooked in"
        );
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
    assert!(!fine || grown >= 3, "the pool grew only {grown} times");
    assert!(
        beside >= 5 && over >= 5,
        "single hosts got a neighbour {beside} times and a prefix over them {over} times"
    );
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
        ..gatekeeper::policy::Policy::default()
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

/// Checks the program's verdict on a SYN to port 25 from each source, and whether the summary
/// sends it on to the table (`looked_up`) or denies it itself.
fn expect(filter: &mut Filter, cases: &[(&str, u32, bool)], step: &str) {
    for &(source, want, looked_up) in cases {
        let addr: Ipv4Addr = source.parse().expect("address");
        let got = verdict(filter, &tcp_v4(addr, HOST_V4, 25, TCP_SYN));
        let word = |v| if v == XDP_PASS { "pass" } else { "drop" };
        assert_eq!(got, want, "{step}: {source} should {}", word(want));
        let summary = filter.maps().summary().expect("the program has a summary");
        assert_eq!(
            summary.may_be_listed(addr),
            looked_up,
            "{step}: the summary should {} {source}",
            if looked_up { "send on" } else { "deny" }
        );
    }
}

fn net(s: &str) -> Ipv4Net {
    s.parse().expect("net")
}

/// A source under a clear bit is denied by the summary alone; under a set bit the table judges
/// (and may still deny); a remove keeps every bit another entry needs; prefixes shorter than /16
/// (a /15, a /0) set every region they cover and take them back when removed. With the DIR-24-8
/// tables the program reads the /20 and /24 levels, also when the trie serves the lookup (auto,
/// short list); the trie-only load has only the /16 level.
#[rstest]
#[case::dir24(Ipv4Lookup::Dir24)]
#[case::auto_trie_lookup_with_fine_levels(Ipv4Lookup::Auto)]
#[case::trie_only_with_the_16_level(Ipv4Lookup::Trie)]
fn summary_denies_sources_nobody_listed_and_keeps_bits_others_need(#[case] lookup: Ipv4Lookup) {
    if !kernel_tests_enabled("summary_denies_sources_nobody_listed_and_keeps_bits_others_need") {
        return;
    }
    let fine = lookup != Ipv4Lookup::Trie;
    let options = LoadOptions {
        ipv4_lookup: lookup,
        ..LoadOptions::default()
    };
    let mut filter = loaded(&options, Mode::Enforce, &[25]);
    let mut entries = Vec::new();
    let edit = |filter: &mut Filter, entries: &mut Vec<Ipv4Net>, add: bool, s: &str| {
        let n = net(s);
        if add {
            filter.maps().insert(IpNet::V4(n)).expect("insert");
            entries.push(n);
        } else {
            assert!(filter.maps().remove(IpNet::V4(n)).expect("remove"));
            entries.retain(|e| *e != n);
        }
        let summary = filter.maps().summary().expect("the program has a summary");
        summary::assert_exact(summary, entries, fine, &format!("after {s}"));
    };
    // With an empty list the summary alone denies everyone.
    expect(&mut filter, &[("198.51.100.7", XDP_DROP, false)], "empty");
    for s in ["198.51.100.0/24", "198.51.100.128/25", "203.0.113.64/26"] {
        edit(&mut filter, &mut entries, true, s);
    }
    // (source, verdict, looked up): outside every entry's /16 the summary denies at any level;
    // in a listed /16 but another /24 only the finer levels deny, the trie-only load asks the
    // trie; in a listed /24 the table judges.
    expect(
        &mut filter,
        &[
            ("198.51.100.7", XDP_PASS, true),
            ("198.51.100.200", XDP_PASS, true),
            ("192.0.2.1", XDP_DROP, false),
            ("198.51.101.7", XDP_DROP, !fine),
            ("198.51.200.1", XDP_DROP, !fine),
            ("203.0.113.1", XDP_DROP, true),
            ("203.0.113.70", XDP_PASS, true),
        ],
        "three entries",
    );
    // The /25 still needs the /24's, /20's and /16's bits.
    edit(&mut filter, &mut entries, false, "198.51.100.0/24");
    expect(
        &mut filter,
        &[
            ("198.51.100.7", XDP_DROP, true),
            ("198.51.100.200", XDP_PASS, true),
        ],
        "the /24 removed, its /25 kept",
    );
    // Shorter than every level: a /15 covers two /16s, 32 /20s, 512 /24s; a /0 everything.
    edit(&mut filter, &mut entries, true, "198.50.0.0/15");
    edit(&mut filter, &mut entries, true, "0.0.0.0/0");
    expect(
        &mut filter,
        &[
            ("192.0.2.1", XDP_PASS, true),
            ("198.50.3.4", XDP_PASS, true),
            ("203.0.113.1", XDP_PASS, true),
        ],
        "with a /15 and a /0",
    );
    edit(&mut filter, &mut entries, false, "0.0.0.0/0");
    expect(
        &mut filter,
        &[
            ("192.0.2.1", XDP_DROP, false),
            ("198.50.3.4", XDP_PASS, true),
            ("198.51.222.1", XDP_PASS, true),
            ("198.52.0.1", XDP_DROP, false),
            ("203.0.113.1", XDP_DROP, true),
        ],
        "the /0 removed",
    );
    edit(&mut filter, &mut entries, false, "198.50.0.0/15");
    expect(
        &mut filter,
        &[
            ("198.50.3.4", XDP_DROP, false),
            ("198.51.222.1", XDP_DROP, !fine),
            ("198.51.100.200", XDP_PASS, true),
        ],
        "the /15 removed",
    );
    for s in ["198.51.100.128/25", "203.0.113.64/26"] {
        edit(&mut filter, &mut entries, false, s);
    }
    expect(
        &mut filter,
        &[("198.51.100.200", XDP_DROP, false)],
        "empty again",
    );
}

/// The program's verdicts for single-host /24s (the host's entry in the first level, no block):
/// the host passes, its neighbours in the /24 do not; a second host (a block) and a prefix over
/// the host (a block) change nothing for it, and removing them brings the single entry back.
#[test]
fn the_program_resolves_a_host_alone_in_its_24_without_a_block() {
    if !kernel_tests_enabled("the_program_resolves_a_host_alone_in_its_24_without_a_block") {
        return;
    }
    let options = LoadOptions {
        ipv4_lookup: Ipv4Lookup::Dir24,
        ..LoadOptions::default()
    };
    let mut filter = loaded(&options, Mode::Enforce, &[25]);
    let edit = |filter: &mut Filter, add: bool, s: &str| {
        let n = IpNet::V4(net(s));
        if add {
            filter.maps().insert(n).expect("insert");
        } else {
            assert!(filter.maps().remove(n).expect("remove"));
        }
    };
    let blocks = |filter: &mut Filter| filter.maps().dir24().and_then(|d| d.blocks_in_use());
    edit(&mut filter, true, "198.51.100.7/32");
    assert_eq!(blocks(&mut filter), Some(0), "a host alone takes no block");
    let alone = [
        ("198.51.100.7", XDP_PASS, true),
        ("198.51.100.6", XDP_DROP, true),
        ("198.51.100.8", XDP_DROP, true),
        ("198.51.100.135", XDP_DROP, true),
    ];
    expect(&mut filter, &alone, "the host alone");
    edit(&mut filter, true, "198.51.100.200/32");
    assert_eq!(blocks(&mut filter), Some(1));
    expect(
        &mut filter,
        &[
            ("198.51.100.7", XDP_PASS, true),
            ("198.51.100.200", XDP_PASS, true),
            ("198.51.100.8", XDP_DROP, true),
        ],
        "two hosts",
    );
    edit(&mut filter, false, "198.51.100.200/32");
    edit(&mut filter, true, "198.51.0.0/16");
    expect(
        &mut filter,
        &[
            ("198.51.100.7", XDP_PASS, true),
            ("198.51.100.8", XDP_PASS, true),
        ],
        "a /16 over the host",
    );
    edit(&mut filter, false, "198.51.0.0/16");
    assert_eq!(blocks(&mut filter), Some(0), "single again");
    expect(&mut filter, &alone, "the host alone again");
    edit(&mut filter, false, "198.51.100.7/32");
    expect(
        &mut filter,
        &[("198.51.100.7", XDP_DROP, false)],
        "the host removed",
    );
}

/// Pins left by a gatekeeper without a summary: the CLI edits them without one (the old program
/// reads none), and the next daemon's load creates the summary and fills it from the allowlist
/// before its program can run, so no entry is denied.
#[test]
fn a_summary_missing_from_older_pins_is_filled_from_the_allowlist() {
    if !kernel_tests_enabled("a_summary_missing_from_older_pins_is_filled_from_the_allowlist") {
        return;
    }
    let pins = PinDir::new("gks");
    gatekeeper::bpffs::ensure_pin_dir(pins.path()).expect("pin dir on bpffs");
    let options = LoadOptions {
        pin_dir: Some(pins.path()),
        ..LoadOptions::default()
    };
    let mut old = Filter::load_with(&options).expect("load");
    old.maps()
        .insert("198.51.100.0/24".parse().expect("net"))
        .expect("insert");
    drop(old);
    std::fs::remove_file(pins.path().join(map_names::SUMMARY_V4)).expect("unpin the summary");

    let mut cli = FilterMaps::open_pinned(pins.path()).expect("open pins without a summary");
    assert!(cli.summary().is_none());
    cli.insert("203.0.113.0/24".parse().expect("net"))
        .expect("edit without a summary");
    drop(cli);

    let mut filter = loaded(&options, Mode::Enforce, &[25]);
    let summary = filter
        .maps()
        .summary()
        .expect("the new load made a summary");
    summary::assert_exact(
        summary,
        &[net("198.51.100.0/24"), net("203.0.113.0/24")],
        true,
        "filled at load",
    );
    expect(
        &mut filter,
        &[
            ("198.51.100.7", XDP_PASS, true),
            ("203.0.113.7", XDP_PASS, true),
            ("192.0.2.1", XDP_DROP, false),
        ],
        "after the load",
    );
    filter.unpin().expect("unpin");
}

/// The program really reads the summary: with the bit of a listed source's region cleared behind
/// the controller's back, that source is denied although the table still holds its entry.
#[rstest]
#[case::fine_levels(Ipv4Lookup::Dir24, gatekeeper_common::summary::L20_BASE, 12)]
#[case::trie_only_16_level(Ipv4Lookup::Trie, gatekeeper_common::summary::L16_BASE, 16)]
fn the_program_denies_under_a_clear_summary_bit(
    #[case] lookup: Ipv4Lookup,
    #[case] base: u32,
    #[case] shift: u32,
) {
    if !kernel_tests_enabled("the_program_denies_under_a_clear_summary_bit") {
        return;
    }
    let pins = PinDir::new("gkc");
    gatekeeper::bpffs::ensure_pin_dir(pins.path()).expect("pin dir on bpffs");
    let options = LoadOptions {
        pin_dir: Some(pins.path()),
        ipv4_lookup: lookup,
        ..LoadOptions::default()
    };
    let mut filter = loaded(&options, Mode::Enforce, &[25]);
    filter
        .maps()
        .insert("198.51.100.0/24".parse().expect("net"))
        .expect("insert");
    let partner = [("198.51.100.7", XDP_PASS, true)];
    expect(&mut filter, &partner, "listed");

    let map = aya::maps::MapData::from_pin(pins.path().join(map_names::SUMMARY_V4))
        .expect("open the pinned summary");
    let mut words: aya::maps::Array<_, u64> =
        aya::maps::Array::try_from(aya::maps::Map::Array(map)).expect("an array");
    let region = u32::from(Ipv4Addr::new(198, 51, 100, 7)) >> shift;
    let index = base + region / 64;
    let word = words.get(&index, 0).expect("read the word");
    assert_ne!(
        word & 1 << (region % 64),
        0,
        "the listed region's bit is set"
    );
    words
        .set(index, word & !(1 << (region % 64)), 0)
        .expect("clear the bit");
    let got = verdict(&mut filter, &tcp_v4(PARTNER_V4, HOST_V4, 25, TCP_SYN));
    assert_eq!(got, XDP_DROP, "the program ignored a clear summary bit");
    filter.unpin().expect("unpin");
}

/// Pins whose summary went stale: a gatekeeper without a summary (an older version, run after this
/// one) edited the allowlist while the summary pin sat there unread. The refill a daemon does at
/// start (`gatekeeper run`, under the edit lock, before attaching) rebuilds the summary from the
/// allowlist, so the new entry is not denied and the removed one not let on.
#[test]
fn a_stale_summary_pin_is_rebuilt_when_a_daemon_starts() {
    if !kernel_tests_enabled("a_stale_summary_pin_is_rebuilt_when_a_daemon_loads") {
        return;
    }
    let pins = PinDir::new("gkt");
    gatekeeper::bpffs::ensure_pin_dir(pins.path()).expect("pin dir on bpffs");
    let options = LoadOptions {
        pin_dir: Some(pins.path()),
        ..LoadOptions::default()
    };
    let mut first = Filter::load_with(&options).expect("load");
    first
        .maps()
        .insert("198.51.100.0/24".parse().expect("net"))
        .expect("insert");
    drop(first);
    // The older gatekeeper does not know the summary: it edits as if there were none.
    let pin = pins.path().join(map_names::SUMMARY_V4);
    let aside = pins.path().join("summary-aside");
    std::fs::rename(&pin, &aside).expect("move the summary pin aside");
    let mut older = FilterMaps::open_pinned(pins.path()).expect("open pins");
    older
        .insert("203.0.113.0/24".parse().expect("net"))
        .expect("insert");
    assert!(
        older
            .remove("198.51.100.0/24".parse().expect("net"))
            .expect("remove")
    );
    drop(older);
    std::fs::rename(&aside, &pin).expect("put the summary pin back");

    let mut filter = loaded(&options, Mode::Enforce, &[25]);
    filter.maps().refill_summary().expect("refill");
    let summary = filter.maps().summary().expect("a summary");
    summary::assert_exact(summary, &[net("203.0.113.0/24")], true, "rebuilt at start");
    expect(
        &mut filter,
        &[
            ("203.0.113.7", XDP_PASS, true),
            ("198.51.100.7", XDP_DROP, false),
        ],
        "after the load",
    );
    filter.unpin().expect("unpin");
}

/// `ipv4_lookup` switched over pinned state (the IPv4 tables replaced, the summary shared): to
/// the trie, the full-size summary loses the tables that keep its /20 and /24 levels and says
/// "look it up" everywhere; back to DIR-24-8 it keeps saying so until the daemon's start refill
/// makes it exact again. Verdicts stay right throughout, and a pool that grows keeps the summary
/// exact.
#[test]
fn the_summary_follows_the_ipv4_tables_when_they_are_replaced() {
    if !kernel_tests_enabled("the_summary_follows_the_ipv4_tables_when_they_are_replaced") {
        return;
    }
    let pins = PinDir::new("gkr");
    gatekeeper::bpffs::ensure_pin_dir(pins.path()).expect("pin dir on bpffs");
    let options = |lookup, dir24_blocks| LoadOptions {
        pin_dir: Some(pins.path()),
        ipv4_lookup: lookup,
        dir24_blocks,
        ..LoadOptions::default()
    };
    let blocks = gatekeeper_common::dir24::DEFAULT_LONG_BLOCKS;
    let mut filter = loaded(&options(Ipv4Lookup::Dir24, blocks), Mode::Enforce, &[25]);
    let mut entries = vec![net("198.51.100.0/24"), net("203.0.113.64/26")];
    for n in &entries {
        filter.maps().insert(IpNet::V4(*n)).expect("insert");
    }
    let cases = [
        ("198.51.100.7", XDP_PASS, true),
        ("203.0.113.70", XDP_PASS, true),
        ("192.0.2.1", XDP_DROP, false),
    ];
    expect(&mut filter, &cases, "DIR-24-8");

    filter
        .replace_ipv4_tables(&options(Ipv4Lookup::Trie, blocks))
        .expect("switch to the trie");
    let summary = filter.maps().summary().expect("a summary");
    let (l20, l24) = summary.levels_20_24().expect("the full-size summary");
    assert!(
        l20.iter().chain(&l24).all(|w| *w == u64::MAX),
        "without tables the summary must say \"look it up\" everywhere"
    );
    let looked_up: Vec<_> = cases.iter().map(|&(s, v, _)| (s, v, true)).collect();
    expect(&mut filter, &looked_up, "switched to the trie");
    entries.push(net("192.0.2.0/24"));
    filter
        .maps()
        .insert("192.0.2.0/24".parse().expect("net"))
        .expect("insert");
    expect(
        &mut filter,
        &[("192.0.2.1", XDP_PASS, true)],
        "added under the trie",
    );

    filter
        .replace_ipv4_tables(&options(Ipv4Lookup::Dir24, blocks))
        .expect("switch back to DIR-24-8");
    expect(
        &mut filter,
        &[
            ("198.51.100.7", XDP_PASS, true),
            ("198.51.101.7", XDP_DROP, true),
        ],
        "back to DIR-24-8, before the refill",
    );
    filter.maps().refill_summary().expect("refill");
    summary::assert_exact(
        filter.maps().summary().expect("a summary"),
        &entries,
        true,
        "refilled",
    );
    expect(
        &mut filter,
        &[
            ("198.51.101.7", XDP_DROP, false),
            ("192.0.2.1", XDP_PASS, true),
        ],
        "refilled",
    );

    // A larger pool: the tables are copied, the summary stays exact without a refill.
    filter
        .replace_ipv4_tables(&options(Ipv4Lookup::Dir24, blocks * 2))
        .expect("grow the pool");
    entries.retain(|n| *n != net("198.51.100.0/24"));
    assert!(
        filter
            .maps()
            .remove("198.51.100.0/24".parse().expect("net"))
            .expect("remove")
    );
    summary::assert_exact(
        filter.maps().summary().expect("a summary"),
        &entries,
        true,
        "grown",
    );
    expect(
        &mut filter,
        &[
            ("198.51.100.7", XDP_DROP, false),
            ("203.0.113.70", XDP_PASS, true),
        ],
        "grown",
    );
    filter.unpin().expect("unpin");
}
