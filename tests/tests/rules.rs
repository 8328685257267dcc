//! The deny list, bans and the SYN rate limit of open ports, through the real program
//! (`BPF_PROG_TEST_RUN`) and the rules module that fills its maps: generated frames must get the
//! reference classifier's verdict while deny entries and bans (some expiring during the run) are
//! edited between batches; the /24 bitmap in front of the IPv4 lookups must stay exact; the SYN
//! bucket must refill with elapsed time; a full ban table refuses; bans outlive the loader.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    thread::sleep,
    time::Duration,
};

use gatekeeper::{
    filter::{Filter, Ipv4Lookup, LoadOptions},
    policy::{Mode, Policy},
    rules::{BanError, clock},
};
use gatekeeper_common::{Counter, Family};
use gatekeeper_tests::{
    dirs::PinDir,
    frames::{tcp_v4, tcp_v6},
    generate::{FrameGen, Rng, random_in_v4, random_in_v6, random_v4_net, random_v6_net},
    kernel_tests_enabled,
    program::{XDP_DROP, XDP_PASS, verdict},
    reference::{Action, Class, Fam, Rules, SynBucket, no_limit},
};
use ipnet::IpNet;

const PORTS: [u16; 3] = [25, 465, 587];
const OPEN: [u16; 1] = [25];
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const HOST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const HOST6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
/// Bans whose deadline is this close to the clock when a frame is judged are left out of that
/// frame's sources: the program reads a coarse clock (one tick behind), so "now" is blurred there.
const BLUR_NS: u64 = 50_000_000;

fn seed() -> u64 {
    std::env::var("GATEKEEPER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x0b4e_d0e5)
}

fn frames(default: usize) -> usize {
    std::env::var("GATEKEEPER_FRAMES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn policy(mode: Mode, syn_rate: u32, syn_burst: u32) -> Policy {
    Policy {
        mode,
        ports: PORTS.to_vec(),
        open_ports: OPEN.to_vec(),
        syn_rate,
        syn_burst,
        ..Policy::default()
    }
}

fn load(options: &LoadOptions, policy: &Policy) -> Filter {
    let mut filter = Filter::load_with(options).expect("load the XDP program");
    filter.maps().set_policy(policy).expect("set the policy");
    filter
}

/// A deny network no shorter than /12 for IPv4 (a /1 would deny half of everything and starve the other
/// classes).
fn deny_net(rng: &mut Rng, existing: &[IpNet]) -> IpNet {
    loop {
        let net = if rng.chance(75) {
            random_v4_net(rng, existing, false)
        } else {
            random_v6_net(rng)
        };
        let min = if net.addr().is_ipv4() { 12 } else { 16 };
        if net.prefix_len() >= min && !existing.contains(&net) {
            return net;
        }
    }
}

/// A ban: its address, the source it covers and its deadline.
#[derive(Clone, Copy, Debug)]
struct LiveBan {
    addr: IpAddr,
    source: IpNet,
    deadline_ns: u64,
}

/// A deadline: in force for long, already expired, just expired, or expiring during the run.
fn deadline(rng: &mut Rng) -> u64 {
    let now = clock::monotonic_ns();
    match rng.below(4) {
        0 => now + 3_600_000_000_000,
        // At least 1: a ban's deadline is never 0 (that marks a free IPv6 ban slot), and a guest
        // kernel booted a minute ago has no "an hour ago".
        1 => now.saturating_sub(3_600_000_000_000).max(1),
        2 => now.saturating_sub(2 * BLUR_NS),
        _ => now + 2 * BLUR_NS + rng.below(400) as u64 * 1_000_000,
    }
}

fn run(mode: Mode, total: usize, batch: usize) {
    let total = frames(total);
    let seed = seed();
    eprintln!("rules differential: mode {mode}, {total} frames, seed {seed}");
    let mut rng = Rng::new(seed ^ (mode as u64));
    let options = LoadOptions {
        ipv4_lookup: Ipv4Lookup::Dir24,
        ..LoadOptions::default()
    };
    let mut filter = load(&options, &policy(mode, 0, 0));
    let mut allow: Vec<IpNet> = Vec::new();
    for _ in 0..30 {
        let net = if rng.chance(75) {
            random_v4_net(&mut rng, &allow, false)
        } else {
            random_v6_net(&mut rng)
        };
        if !allow.contains(&net) {
            filter.maps().insert(net).expect("allow insert");
            allow.push(net);
        }
    }
    let mut deny: Vec<IpNet> = Vec::new();
    let mut bans: Vec<LiveBan> = Vec::new();
    // An address in every region (top 24 bits) a deny entry or ban ever touched: where the
    // bitmaps are checked.
    let mut touched: Vec<IpAddr> = Vec::new();
    let mut tally: HashMap<(Fam, Class), u64> = HashMap::new();
    let mut checked = 0;
    while checked < total {
        edit_rules(
            &mut rng,
            &mut filter,
            &allow,
            &mut deny,
            &mut bans,
            &mut touched,
        );
        assert_bitmap_exact(&mut filter, &deny, &bans, &touched);
        // Sources: from every list, so that each rule is hit often.
        let mut pool: Vec<IpNet> = allow.clone();
        pool.extend(&deny);
        pool.extend(bans.iter().map(|b| b.source));
        let mut sent = 0;
        while sent < batch.min(total - checked) {
            let generated = FrameGen {
                rng: &mut rng,
                protected: &PORTS,
                allow: &pool,
            }
            .frame();
            let now = clock::monotonic_ns();
            // Frames without a known shape (mutated ones) may carry any ban's source.
            let blurred = bans.iter().any(|b| {
                b.deadline_ns.abs_diff(now) < BLUR_NS
                    && generated
                        .shape
                        .as_ref()
                        .is_none_or(|shape| b.source.contains(&shape.source))
            });
            if blurred {
                continue;
            }
            let banned: Vec<IpNet> = bans
                .iter()
                .filter(|b| b.deadline_ns > now)
                .map(|b| b.source)
                .collect();
            let expected = Rules {
                ports: &PORTS,
                open: &OPEN,
                monitor: mode == Mode::Monitor,
                allow: &allow,
                deny: &deny,
                banned: &banned,
                over_rate: &no_limit,
            }
            .judge(&generated.frame);
            let got = verdict(&mut filter, &generated.frame);
            let want = match expected.action {
                Action::Pass => XDP_PASS,
                Action::Drop => XDP_DROP,
            };
            assert_eq!(
                got, want,
                "frame #{checked} (seed {seed}): kernel {got}, reference {expected:?}\nframe: {:02x?}",
                generated.frame
            );
            *tally.entry((expected.family, expected.class)).or_default() += 1;
            checked += 1;
            sent += 1;
        }
    }
    let counters = filter.maps().counters(0).expect("counters");
    for (fam, family) in [(Fam::V4, Family::Ipv4), (Fam::V6, Family::Ipv6)] {
        for (class, counter) in [
            (Class::Allowed, Counter::Allowed),
            (Class::Dropped, Counter::Dropped),
            (Class::WouldDrop, Counter::WouldDrop),
            (Class::Banned, Counter::Banned),
            (Class::DeniedList, Counter::DeniedList),
            (Class::PassedOpen, Counter::PassedOpen),
            (Class::RateLimited, Counter::RateLimited),
        ] {
            let want = tally.get(&(fam, class)).copied().unwrap_or(0);
            let got = counters.0[family as usize][counter as usize];
            assert_eq!(
                got, want,
                "counter {counter:?} for {family:?} (seed {seed})"
            );
        }
    }
    let count = |class| {
        tally
            .iter()
            .filter(|((_, c), _)| *c == class)
            .map(|(_, n)| *n)
            .sum::<u64>()
    };
    eprintln!("rules differential: {checked} frames agree; {tally:?}");
    if std::env::var_os("GATEKEEPER_SEED").is_none() {
        for class in [
            Class::Allowed,
            Class::Banned,
            Class::DeniedList,
            Class::PassedOpen,
        ] {
            assert!(count(class) > 0, "the generator must exercise {class:?}");
        }
    }
}

/// Adds and removes deny entries and bans through the rules module, as the daemon and the CLI do.
fn edit_rules(
    rng: &mut Rng,
    filter: &mut Filter,
    allow: &[IpNet],
    deny: &mut Vec<IpNet>,
    bans: &mut Vec<LiveBan>,
    touched: &mut Vec<IpAddr>,
) {
    let rules = filter.rules();
    for _ in 0..8 {
        if rng.chance(40) && !deny.is_empty() {
            let victim = deny.remove(rng.below(deny.len()));
            assert!(
                rules.deny.remove(victim).expect("deny remove"),
                "{victim} was in"
            );
        } else {
            let net = deny_net(rng, deny);
            assert!(
                rules.deny.insert(net).expect("deny insert"),
                "{net} was new"
            );
            deny.push(net);
            touched.extend([net.network(), net.broadcast()]);
        }
    }
    for _ in 0..8 {
        if rng.chance(40) && !bans.is_empty() {
            let victim = bans.remove(rng.below(bans.len()));
            assert!(rules.bans.unban(victim.addr).expect("unban"), "{victim:?}");
            continue;
        }
        // Banned sources come from the allowlist a third of the time: bans win over it.
        let addr = match (rng.chance(33), allow.is_empty(), rng.chance(70)) {
            (true, false, _) => match *rng.pick(allow) {
                IpNet::V4(n) => IpAddr::V4(random_in_v4(rng, n)),
                IpNet::V6(n) => IpAddr::V6(random_in_v6(rng, n)),
            },
            (_, _, true) => IpAddr::V4(Ipv4Addr::from(rng.next_u64() as u32)),
            _ => IpAddr::V6(Ipv6Addr::from(u128::from(rng.next_u64()) << 64)),
        };
        let source = rules.bans.source_of(addr);
        if bans.iter().any(|b| b.source == source) {
            continue;
        }
        let deadline_ns = deadline(rng);
        let outcome = rules.bans.ban(addr, deadline_ns).expect("ban");
        assert!(
            outcome.new && outcome.deadline_ns == deadline_ns,
            "{outcome:?}"
        );
        // A second ban of the same source keeps the later deadline.
        let again = rules.bans.ban(addr, deadline_ns / 2).expect("ban again");
        assert_eq!((again.new, again.deadline_ns), (false, deadline_ns));
        bans.push(LiveBan {
            addr,
            source,
            deadline_ns,
        });
        touched.push(addr);
    }
    let listed = rules.bans.list().expect("ban list");
    assert_eq!(listed.len(), bans.len(), "ban list");
}

/// The bitmaps' bit for each touched region (the top 24 bits of an address) is set exactly when
/// a deny entry or a ban of that family covers part of it.
fn assert_bitmap_exact(filter: &mut Filter, deny: &[IpNet], bans: &[LiveBan], touched: &[IpAddr]) {
    let region = |addr: IpAddr| match addr {
        IpAddr::V4(v4) => (4, u128::from(u32::from(v4) >> 8)),
        IpAddr::V6(v6) => (6, u128::from(v6) >> 104),
    };
    let rules = filter.rules();
    for &addr in touched {
        let want = region(addr);
        let needed = deny.iter().any(|n| {
            let (low, high) = (region(n.network()), region(n.broadcast()));
            low.0 == want.0 && low.1 <= want.1 && want.1 <= high.1
        }) || bans.iter().any(|b| region(b.addr) == want);
        assert_eq!(
            rules.deny.blocked_bit(addr),
            needed,
            "bitmap bit of the region of {addr}"
        );
    }
}

#[test]
fn open_ports_deny_and_bans_match_the_reference_in_enforce_mode() {
    if !kernel_tests_enabled("open_ports_deny_and_bans_match_the_reference_in_enforce_mode") {
        return;
    }
    run(Mode::Enforce, 40_000, 2_000);
}

#[test]
fn monitor_mode_counts_every_rule_and_passes() {
    if !kernel_tests_enabled("monitor_mode_counts_every_rule_and_passes") {
        return;
    }
    run(Mode::Monitor, 10_000, 2_000);
}

/// SYNs of one source to an open port, judged against the reference bucket at the clock read
/// just before each: the bucket empties, refills with elapsed time, and never limits a partner
/// or another source.
#[test]
fn syn_bucket_empties_and_refills_with_time() {
    if !kernel_tests_enabled("syn_bucket_empties_and_refills_with_time") {
        return;
    }
    // 5 SYNs a second (200 ms of credit each), bursts of 3.
    let (rate, burst) = (5, 3);
    let mut filter = load(&LoadOptions::default(), &policy(Mode::Enforce, rate, burst));
    let partner: Ipv4Addr = "198.51.100.7".parse().unwrap();
    filter
        .maps()
        .insert("198.51.100.0/24".parse().unwrap())
        .expect("allow");
    let stranger: Ipv4Addr = "203.0.113.9".parse().unwrap();
    let other: Ipv4Addr = "203.0.113.10".parse().unwrap();
    let stranger6: Ipv6Addr = "2001:db8:99::9".parse().unwrap();
    let mut model = SynBucket::new(rate, burst);
    let mut model6 = SynBucket::new(rate, burst);
    let mut limited = 0;
    // Bursts separated by gaps that refill part of the bucket; the credit left at each SYN stays
    // 50 ms or more away from a SYN's cost, so a tick of clock blur never changes the answer
    // (after the gaps: 300 ms, then 100 + 250, then capped at 600, then full).
    for gap_ms in [0u64, 300, 250, 700, 1_100] {
        sleep(Duration::from_millis(gap_ms));
        for _ in 0..4 {
            let now = clock::monotonic_ns();
            let want = if model.spend(now) { XDP_PASS } else { XDP_DROP };
            limited += u64::from(want == XDP_DROP);
            let got = verdict(&mut filter, &tcp_v4(stranger, HOST, 25, SYN));
            assert_eq!(got, want, "SYN after a {gap_ms} ms gap");
            let want6 = if model6.spend(now) {
                XDP_PASS
            } else {
                XDP_DROP
            };
            limited += u64::from(want6 == XDP_DROP);
            let got6 = verdict(&mut filter, &tcp_v6(stranger6, HOST6, 25, SYN));
            assert_eq!(got6, want6, "IPv6 SYN after a {gap_ms} ms gap");
        }
        // Only SYNs spend credit: the limited source's established traffic still passes.
        assert_eq!(
            verdict(&mut filter, &tcp_v4(stranger, HOST, 25, ACK)),
            XDP_PASS
        );
        // Another source has a bucket of its own; partners have none.
        assert_eq!(
            verdict(&mut filter, &tcp_v4(other, HOST, 25, SYN)),
            XDP_PASS
        );
        for _ in 0..10 {
            assert_eq!(
                verdict(&mut filter, &tcp_v4(partner, HOST, 25, SYN)),
                XDP_PASS
            );
        }
        // An allowlist port never rate-limits: the stranger is refused there by the allowlist.
        assert_eq!(
            verdict(&mut filter, &tcp_v4(stranger, HOST, 587, SYN)),
            XDP_DROP
        );
    }
    assert!(limited >= 2, "the bursts must go over the rate");
    let counters = filter.maps().counters(0).expect("counters");
    let v4 = counters.0[Family::Ipv4 as usize];
    let v6 = counters.0[Family::Ipv6 as usize];
    assert_eq!(
        v4[Counter::RateLimited as usize] + v6[Counter::RateLimited as usize],
        limited
    );
    assert_eq!(
        v4[Counter::Dropped as usize],
        5,
        "the allowlist port's refusals"
    );
}

#[test]
fn a_full_ban_table_refuses_new_bans_and_evicts_none() {
    if !kernel_tests_enabled("a_full_ban_table_refuses_new_bans_and_evicts_none") {
        return;
    }
    let options = LoadOptions {
        max_bans: 4,
        ..LoadOptions::default()
    };
    let mut filter = load(&options, &policy(Mode::Enforce, 0, 0));
    let until = clock::deadline_after(Duration::from_secs(600));
    let addr = |i: u8| IpAddr::V4(Ipv4Addr::new(203, 0, 113, i));
    for i in 1..=4 {
        filter.rules().bans.ban(addr(i), until).expect("room for 4");
    }
    match filter.rules().bans.ban(addr(5), until) {
        Err(BanError::TableFull { capacity: 4, .. }) => {}
        other => panic!("expected a full table, got {other:?}"),
    }
    // Extending a ban still works when the table is full; nothing was evicted.
    let later = filter.rules().bans.ban(addr(1), until + 1).expect("extend");
    assert_eq!((later.new, later.deadline_ns), (false, until + 1));
    assert_eq!(filter.rules().bans.list().expect("list").len(), 4);
    assert_eq!(
        verdict(
            &mut filter,
            &tcp_v4(Ipv4Addr::new(203, 0, 113, 4), HOST, 25, SYN)
        ),
        XDP_DROP
    );
    assert_eq!(
        verdict(
            &mut filter,
            &tcp_v4(Ipv4Addr::new(203, 0, 113, 5), HOST, 25, SYN)
        ),
        XDP_PASS,
        "the refused ban must not drop"
    );
    // Expired bans are swept; the others stay.
    let now = clock::monotonic_ns();
    filter.rules().bans.ban(addr(2), 0).expect("no-op");
    let swept = filter.rules().bans.remove_expired(now).expect("sweep");
    assert!(swept.is_empty(), "{swept:?}");
    assert_eq!(
        filter
            .rules()
            .bans
            .remove_expired(until)
            .expect("sweep")
            .len(),
        3,
        "every ban but the extended one ends at `until`"
    );
}

#[test]
fn pinned_bans_and_deny_entries_outlive_the_loader() {
    if !kernel_tests_enabled("pinned_bans_and_deny_entries_outlive_the_loader") {
        return;
    }
    let pins = PinDir::new("gk-rules");
    std::fs::create_dir_all(pins.path()).expect("create the pin directory");
    let options = LoadOptions {
        pin_dir: Some(pins.path()),
        ..LoadOptions::default()
    };
    let banned = Ipv4Addr::new(203, 0, 113, 77);
    let denied = Ipv4Addr::new(198, 51, 100, 200);
    {
        let mut filter = load(&options, &policy(Mode::Enforce, 0, 0));
        let until = clock::deadline_after(Duration::from_secs(600));
        filter
            .rules()
            .bans
            .ban(IpAddr::V4(banned), until)
            .expect("ban");
        filter
            .rules()
            .deny
            .insert("198.51.100.192/26".parse().unwrap())
            .expect("deny");
        filter
            .maps()
            .insert("198.51.100.0/24".parse().unwrap())
            .expect("allow");
    }
    // A new loader adopts the pinned maps: the ban and the deny entry still win over the allow
    // entry, and the CLI's view of the pins sees them too.
    let mut filter = load(&options, &policy(Mode::Enforce, 0, 0));
    assert_eq!(
        verdict(&mut filter, &tcp_v4(banned, HOST, 25, SYN)),
        XDP_DROP
    );
    assert_eq!(
        verdict(&mut filter, &tcp_v4(denied, HOST, 587, SYN)),
        XDP_DROP
    );
    assert_eq!(
        verdict(
            &mut filter,
            &tcp_v4(Ipv4Addr::new(198, 51, 100, 1), HOST, 587, SYN)
        ),
        XDP_PASS
    );
    let cli = gatekeeper::rules::Rules::open_pinned(pins.path(), 64).expect("open pins");
    let bans = cli.bans.list().expect("list");
    assert_eq!(bans.len(), 1);
    assert_eq!(bans[0].hits, 1, "the ban counts its drop");
    let deny = cli.deny.entries().expect("deny entries");
    assert_eq!(deny.len(), 1);
    assert_eq!(deny[0].hits, 1);
    filter.unpin().expect("unpin");
}

/// Every ban of a full table at the default `max_bans` (100,000 per family) is dropped by the
/// program and no other source is: the ban slots (two buckets of four per source) and the few
/// bans that overflow into the hash maps together hold them all, and `max_bans` holds exactly.
#[test]
fn a_full_default_size_ban_table_drops_every_ban_and_nothing_else() {
    if !kernel_tests_enabled("a_full_default_size_ban_table_drops_every_ban_and_nothing_else") {
        return;
    }
    let options = LoadOptions::default();
    let max = options.max_bans as usize;
    let mut filter = load(&options, &policy(Mode::Enforce, 0, 0));
    let until = clock::deadline_after(Duration::from_secs(600));
    let mut rng = Rng::new(seed() ^ 0xf011);
    let mut banned: std::collections::HashSet<IpAddr> = std::collections::HashSet::new();
    // Distinct /64s (the ban prefix) and distinct IPv4 addresses, outside 192.0.2.0/24 (HOST).
    let (mut v4, mut v6) = (0, 0);
    while v4 < max || v6 < max {
        let addr = if v4 < max {
            IpAddr::V4(Ipv4Addr::from(rng.next_u64() as u32))
        } else {
            IpAddr::V6(Ipv6Addr::from(u128::from(rng.next_u64()) << 64))
        };
        if addr == IpAddr::V4(HOST) || !banned.insert(addr) {
            continue;
        }
        let outcome = filter.rules().bans.ban(addr, until).expect("room");
        assert!(outcome.new, "{addr}");
        if addr.is_ipv4() {
            v4 += 1;
        } else {
            v6 += 1;
        }
    }
    let (over_v4, over_v6) = filter.rules().bans.overflow_counters();
    eprintln!(
        "full table: {} buckets a family; overflow counters {over_v4} (IPv4), {over_v6} (IPv6)",
        filter.rules().bans.buckets()
    );
    for addr in [
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, 250)),
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xfff, 0, 0, 0, 0, 1)),
    ] {
        match filter.rules().bans.ban(addr, until) {
            Err(BanError::TableFull { .. }) => {}
            other => panic!("expected a full table for {addr}, got {other:?}"),
        }
    }
    assert_eq!(filter.rules().bans.list().expect("list").len(), 2 * max);
    let frame = |addr: IpAddr| match addr {
        IpAddr::V4(a) => tcp_v4(a, HOST, 25, SYN),
        IpAddr::V6(a) => tcp_v6(a, HOST6, 25, SYN),
    };
    for addr in &banned {
        assert_eq!(verdict(&mut filter, &frame(*addr)), XDP_DROP, "{addr}");
    }
    let mut strangers = 0;
    while strangers < 50_000 {
        let addr = if strangers % 2 == 0 {
            IpAddr::V4(Ipv4Addr::from(rng.next_u64() as u32))
        } else {
            IpAddr::V6(Ipv6Addr::from(
                (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64()),
            ))
        };
        let masked = match addr {
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) >> 64 << 64)),
            v4 => v4,
        };
        if banned.contains(&masked) || addr == IpAddr::V4(HOST) {
            continue;
        }
        strangers += 1;
        assert_eq!(verdict(&mut filter, &frame(addr)), XDP_PASS, "{addr}");
    }
}

/// A ban whose two buckets have no free slot lives in the hash map, counted in both buckets: the
/// program still drops it, and lifting it takes the counts back to zero. A tiny `max_bans` and
/// the quarantine of freed slots force that path: each ban lifted at once leaves its slot
/// unusable for a second, so the few slots run out.
#[test]
fn a_ban_whose_buckets_are_full_lives_in_the_hash_map_and_still_drops() {
    if !kernel_tests_enabled("a_ban_whose_buckets_are_full_lives_in_the_hash_map_and_still_drops") {
        return;
    }
    let options = LoadOptions {
        max_bans: 4,
        ..LoadOptions::default()
    };
    let mut filter = load(&options, &policy(Mode::Enforce, 0, 0));
    assert_eq!(filter.rules().bans.buckets(), 2, "max_bans / 2 buckets");
    let until = clock::deadline_after(Duration::from_secs(600));
    let v4 = |i: u16| IpAddr::V4(Ipv4Addr::new(203, 0, 113, i as u8));
    let v6 = |i: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xbad, i, 0, 0, 0, 1));
    let frame = |addr: IpAddr| match addr {
        IpAddr::V4(a) => tcp_v4(a, HOST, 25, SYN),
        IpAddr::V6(a) => tcp_v6(a, HOST6, 25, SYN),
    };
    for (family, addr) in [("IPv4", &v4 as &dyn Fn(u16) -> IpAddr), ("IPv6", &v6)] {
        // Ban and lift until a ban finds every slot of its buckets quarantined (at most 8 slots).
        let mut overflowed = None;
        for i in 1..=20 {
            let a = addr(i);
            assert!(filter.rules().bans.ban(a, until).expect("ban").new);
            if filter.rules().bans.overflowed(a).expect("overflowed") {
                overflowed = Some(a);
                break;
            }
            assert_eq!(verdict(&mut filter, &frame(a)), XDP_DROP, "{a} in a slot");
            assert!(filter.rules().bans.unban(a).expect("unban"));
            assert_eq!(verdict(&mut filter, &frame(a)), XDP_PASS, "{a} lifted");
        }
        let a = overflowed.unwrap_or_else(|| panic!("{family}: no ban reached the hash map"));
        let counters = filter.rules().bans.overflow_counters();
        let counted = if family == "IPv4" {
            counters.0
        } else {
            counters.1
        };
        assert_eq!(
            counted, 2,
            "{family}: counted once in each of its two buckets"
        );
        assert_eq!(
            verdict(&mut filter, &frame(a)),
            XDP_DROP,
            "{a} in the hash map"
        );
        // Found, extended and listed like any other ban, with its hit.
        let later = filter.rules().bans.ban(a, until + 5).expect("extend");
        assert_eq!((later.new, later.deadline_ns), (false, until + 5));
        let live = filter.rules().bans.get(a).expect("get").expect("banned");
        assert_eq!((live.deadline_ns, live.hits), (until + 5, 1));
        assert!(filter.rules().bans.list().expect("list").contains(&live));
        // max_bans counts it: three more fit, the fourth does not.
        for i in 100..103 {
            filter.rules().bans.ban(addr(i), until).expect("room for 4");
        }
        match filter.rules().bans.ban(addr(103), until) {
            Err(BanError::TableFull { capacity: 4, .. }) => {}
            other => panic!("{family}: expected a full table, got {other:?}"),
        }
        assert!(filter.rules().bans.unban(a).expect("lift"));
        assert_eq!(verdict(&mut filter, &frame(a)), XDP_PASS, "{a} lifted");
        // (Those three may have overflowed too: every slot is still quarantined.)
        for i in 100..103 {
            assert!(filter.rules().bans.unban(addr(i)).expect("lift"));
        }
        let counters = filter.rules().bans.overflow_counters();
        assert_eq!(
            if family == "IPv4" {
                counters.0
            } else {
                counters.1
            },
            0,
            "{family}: lifting it clears the counts"
        );
    }
}

/// Ban hash maps pinned by a gatekeeper without ban slots (an upgrade) hold bans the new program
/// finds only once the daemon's start-up repair counted them as overflow; after it they drop.
#[test]
fn bans_in_hash_maps_pinned_without_slots_drop_after_the_repair() {
    if !kernel_tests_enabled("bans_in_hash_maps_pinned_without_slots_drop_after_the_repair") {
        return;
    }
    let pins = PinDir::new("gk-bup");
    std::fs::create_dir_all(pins.path()).expect("create the pin directory");
    let options = LoadOptions {
        pin_dir: Some(pins.path()),
        ..LoadOptions::default()
    };
    let banned = [
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 7, 7, 0, 0, 0, 1)),
    ];
    let until = clock::deadline_after(Duration::from_secs(600));
    {
        let mut filter = load(&options, &policy(Mode::Enforce, 0, 0));
        filter.rules().bans.set_force_overflow(true);
        for addr in banned {
            filter.rules().bans.ban(addr, until).expect("ban");
        }
    }
    // What an older gatekeeper leaves: the hash maps with their bans, no slots, no count.
    for name in ["GK_BAN_SLOTS_V4", "GK_BAN_SLOTS_V6", "GK_BAN_COUNT"] {
        std::fs::remove_file(pins.path().join(name)).expect("remove a pin");
    }
    let mut filter = load(&options, &policy(Mode::Enforce, 0, 0));
    let frame = |addr: IpAddr| match addr {
        IpAddr::V4(a) => tcp_v4(a, HOST, 25, SYN),
        IpAddr::V6(a) => tcp_v6(a, HOST6, 25, SYN),
    };
    for addr in banned {
        assert_eq!(
            verdict(&mut filter, &frame(addr)),
            XDP_PASS,
            "{addr}: not counted as overflow yet (this is why the daemon repairs before attaching)"
        );
    }
    filter.rules().bans.repair().expect("repair");
    assert_eq!(filter.rules().bans.overflow_counters(), (2, 2));
    for addr in banned {
        assert_eq!(verdict(&mut filter, &frame(addr)), XDP_DROP, "{addr}");
    }
    // The count was rebuilt too: lifting both leaves room for max_bans again, counters at 0.
    for addr in banned {
        assert!(filter.rules().bans.unban(addr).expect("lift"));
    }
    assert_eq!(filter.rules().bans.overflow_counters(), (0, 0));
    assert!(filter.rules().bans.list().expect("list").is_empty());
    filter.unpin().expect("unpin");
}

/// While another handle of the pinned maps (as the CLI or the ban socket would) places and lifts
/// bans in the same few buckets, in slots and through the overflow hash map, the program's
/// verdict on a source banned all along and on one never banned does not change in any run.
#[test]
fn bans_placed_and_lifted_meanwhile_never_change_another_sources_verdict() {
    if !kernel_tests_enabled(
        "bans_placed_and_lifted_meanwhile_never_change_another_sources_verdict",
    ) {
        return;
    }
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };
    let pins = PinDir::new("gk-brace");
    std::fs::create_dir_all(pins.path()).expect("create the pin directory");
    // 4 buckets of 4 slots a family: every source shares its buckets with the churn.
    let options = LoadOptions {
        pin_dir: Some(pins.path()),
        max_bans: 8,
        ..LoadOptions::default()
    };
    let mut filter = load(&options, &policy(Mode::Enforce, 0, 0));
    let until = clock::deadline_after(Duration::from_secs(600));
    let stable = [
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1)),
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 1, 0, 0, 0, 1)),
    ];
    let never = [
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, 2)),
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0, 0, 0, 1)),
    ];
    for addr in stable {
        filter.rules().bans.ban(addr, until).expect("ban");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = Arc::clone(&stop);
        let dir = pins.path().to_path_buf();
        std::thread::spawn(move || {
            let mut cli = gatekeeper::rules::Rules::open_pinned(&dir, 64).expect("open pins");
            let churn: Vec<IpAddr> = (10..16u16)
                .flat_map(|i| {
                    [
                        IpAddr::V4(Ipv4Addr::new(203, 0, 113, i as u8)),
                        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, i, 0, 0, 0, 1)),
                    ]
                })
                .collect();
            let (mut rounds, mut overflowed) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let until = clock::deadline_after(Duration::from_secs(600));
                for addr in &churn {
                    cli.bans.ban(*addr, until).expect("churn ban");
                    overflowed += u64::from(cli.bans.overflowed(*addr).expect("overflowed"));
                }
                for addr in &churn {
                    assert!(cli.bans.unban(*addr).expect("churn lift"), "{addr}");
                }
                rounds += 1;
            }
            (rounds, overflowed)
        })
    };
    let frame = |addr: IpAddr| match addr {
        IpAddr::V4(a) => tcp_v4(a, HOST, 25, SYN),
        IpAddr::V6(a) => tcp_v6(a, HOST6, 25, SYN),
    };
    let frames: Vec<(Vec<u8>, u32, IpAddr)> = stable
        .iter()
        .map(|a| (frame(*a), XDP_DROP, *a))
        .chain(never.iter().map(|a| (frame(*a), XDP_PASS, *a)))
        .collect();
    let started = std::time::Instant::now();
    let mut runs = 0;
    while started.elapsed() < Duration::from_secs(3) {
        for (frame, want, addr) in &frames {
            assert_eq!(
                verdict(&mut filter, frame),
                *want,
                "{addr} after {runs} runs"
            );
            runs += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (rounds, overflowed) = writer.join().expect("the writer thread");
    eprintln!(
        "{runs} verdicts while {rounds} rounds of 12 bans and lifts ran ({overflowed} in the hash map)"
    );
    assert!(
        rounds > 0 && overflowed > 0,
        "the churn must reach the hash map too"
    );
    filter.unpin().expect("unpin");
}
