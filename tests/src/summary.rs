//! The IPv4 summary recomputed from the plain list of entries, written from its definition (a bit
//! is set exactly when some entry shares an address with that /16, /20 or /24) rather than from
//! `gatekeeper::summary`: the oracle its bits are checked against after any sequence of edits.

use gatekeeper::summary::Summary;
use ipnet::Ipv4Net;

/// What the summary must hold for a list of entries.
pub struct Expected {
    /// Per /16: how many entries share an address with it.
    pub counts16: Vec<u32>,
    pub bitmap16: Vec<u64>,
    pub bitmap20: Vec<u64>,
    pub bitmap24: Vec<u64>,
}

/// The first and last address of `net`, as numbers.
fn bounds(net: &Ipv4Net) -> (u64, u64) {
    (
        u64::from(u32::from(net.network())),
        u64::from(u32::from(net.broadcast())),
    )
}

/// A bitmap of `2^bits` regions with a bit set for every region that shares an address with an
/// entry.
fn bitmap(entries: &[Ipv4Net], bits: u32) -> Vec<u64> {
    let mut map = vec![0u64; (1usize << bits) / 64];
    let shift = 32 - bits;
    for net in entries {
        let (first, last) = bounds(net);
        let mut region = first >> shift;
        while region <= last >> shift {
            let word = (region / 64) as usize;
            if region.is_multiple_of(64) && (last >> shift) - region >= 63 {
                map[word] = u64::MAX;
                region += 64;
            } else {
                map[word] |= 1 << (region % 64);
                region += 1;
            }
        }
    }
    map
}

/// The summary `entries` call for.
pub fn expected(entries: &[Ipv4Net]) -> Expected {
    let mut counts16 = vec![0u32; 1 << 16];
    for net in entries {
        let (first, last) = bounds(net);
        for region in first >> 16..=last >> 16 {
            counts16[region as usize] += 1;
        }
    }
    Expected {
        counts16,
        bitmap16: bitmap(entries, 16),
        bitmap20: bitmap(entries, 20),
        bitmap24: bitmap(entries, 24),
    }
}

/// The first word that differs, as a message.
fn first_difference(level: &str, got: &[u64], want: &[u64]) -> Option<String> {
    let at = got.iter().zip(want).position(|(g, w)| g != w)?;
    Some(format!(
        "{level} word {at} (regions {}..{}): got {:#018x}, want {:#018x}",
        at * 64,
        at * 64 + 64,
        got[at],
        want[at]
    ))
}

/// Panics with the first difference between the bitmaps the program reads and what `entries`
/// call for: the /20 and /24 levels when the DIR-24-8 tables are loaded (`fine`), else the /16
/// level and its reference counts.
pub fn assert_exact(summary: &Summary, entries: &[Ipv4Net], fine: bool, context: &str) {
    let want = expected(entries);
    let mut problems = Vec::new();
    match (fine, summary.level16(), summary.levels_20_24()) {
        (true, None, Some((got20, got24))) => {
            problems.extend(first_difference("/20", &got20, &want.bitmap20));
            problems.extend(first_difference("/24", &got24, &want.bitmap24));
        }
        (false, Some((got16, counts)), None) => {
            if let Some(at) = counts.iter().zip(&want.counts16).position(|(g, w)| g != w) {
                problems.push(format!(
                    "/16 number {at} counts {} entries, want {}",
                    counts[at], want.counts16[at]
                ));
            }
            problems.extend(first_difference("/16", &got16, &want.bitmap16));
        }
        _ => problems.push(format!(
            "the program should read the {} level(s)",
            if fine { "/20 and /24" } else { "/16" }
        )),
    }
    assert!(
        problems.is_empty(),
        "{context}: the summary differs from its recomputation ({} entries): {}",
        entries.len(),
        problems.join("; ")
    );
}

/// Whether an entry shares an address with `addr`'s /16, /20 or /24 (for counting which part of
/// the program's path a generated source takes).
pub fn region_listed(entries: &[Ipv4Net], addr: std::net::Ipv4Addr, bits: u8) -> bool {
    let region = Ipv4Net::new(addr, bits)
        .map(|n| n.trunc())
        .unwrap_or_default();
    entries
        .iter()
        .any(|n| n.contains(&region.network()) || region.contains(&n.network()))
}
