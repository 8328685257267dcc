//! The userspace half of the IPv4 summary (layout in `gatekeeper_common::summary`): bitmaps with
//! one bit per /20 and per /24 of the address space (or, for the trie-only load, per /16), set
//! while an allowlist entry covers at least one address of that region, so the program denies a
//! source under a clear bit without touching the allowlist tables.
//!
//! Exact in both directions, and never behind the tables: [`Summary::add`] sets the bits before
//! the entry goes in; [`Summary::remove`] clears them after it came out, and only those no other
//! entry needs. What "no other entry" means is kept where every process (daemon, CLI) finds it:
//! per /24, the DIR-24-8 first level, whose value is not NONE exactly while an entry covers part
//! of that /24 (a /20 is set while one of its 16 /24s is); without those tables, per /16, a
//! reference count in the map itself (an entry shorter than /16 counts in each /16 it covers, so
//! a /0 counts everywhere).

use std::{net::Ipv4Addr, ops::Range};

use anyhow::Context as _;
use aya::maps::{LpmTrie, MapData};
use gatekeeper_common::{
    AllowValue,
    summary::{
        COUNT_WORDS, COUNTS_BASE, FILLED, L16_BASE, L16_WORDS, L20_BASE, L20_WORDS, L24_BASE,
        L24_WORDS, META_BASE,
    },
};
use ipnet::Ipv4Net;

use crate::dir24::{Dir24, Mapped};

/// The summary map, mapped. Its words are loaded and stored one at a time (the program only
/// reads them; writers hold the config's edit lock), so a set or clear is a load and a store.
pub struct Summary {
    /// The whole map as `u64` words (bitmaps and the fill marker).
    words: Mapped<u64>,
    /// The same map as `u32`s: the per-/16 reference counts.
    counts: Mapped<u32>,
    levels: Levels,
}

/// Which bitmaps the program reads in this map, and how they are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Levels {
    /// The map ends before the /20 bitmap (the trie-only load): the /16 bitmap, kept by the
    /// reference counts.
    Coarse = 1,
    /// The /20 and /24 bitmaps, kept from the DIR-24-8 first level.
    Fine = 2,
    /// The map has the /20 and /24 bitmaps but there are no DIR-24-8 tables to keep them by
    /// (pins made for another `ipv4_lookup`, or switched to the trie): all ones, "look it up"
    /// everywhere.
    AllSet = 3,
}

impl Levels {
    /// The marker of a map filled for these levels.
    fn marker(self) -> u64 {
        FILLED ^ self as u64
    }
}

/// The IPv4 allowlist trie, the registry the summary is filled from.
pub type Registry = LpmTrie<MapData, [u8; 4], AllowValue>;

impl Summary {
    /// Maps the summary. A map nobody filled yet (the loader just created it, or a load that
    /// created it failed) is filled from `trie` and `dir24` before this returns, so before a
    /// program that reads it is attached; so is one whose /20 and /24 bitmaps lost their
    /// DIR-24-8 tables (all ones from now on). One that gained tables (a switch from the trie,
    /// whose new tables are filled after this) keeps its ones until the next fill.
    pub fn open(map: &MapData, dir24: Option<&Dir24>, trie: &Registry) -> anyhow::Result<Summary> {
        const NAME: &str = gatekeeper_common::map_names::SUMMARY_V4;
        let words: Mapped<u64> = Mapped::new(map, NAME)?;
        let len = words.len();
        anyhow::ensure!(
            len >= L20_BASE as usize,
            "{NAME} holds {len} words, fewer than the {L20_BASE} of its smallest layout"
        );
        let levels = match (len >= (L24_BASE + L24_WORDS) as usize, dir24) {
            (false, _) => Levels::Coarse,
            (true, Some(_)) => Levels::Fine,
            (true, None) => Levels::AllSet,
        };
        let mut summary = Summary {
            words,
            counts: Mapped::new(map, NAME)?,
            levels,
        };
        let marker = summary.word(META_BASE);
        let filled = [Levels::Coarse, Levels::Fine, Levels::AllSet]
            .into_iter()
            .find(|l| l.marker() == marker);
        match (filled, levels) {
            (Some(Levels::AllSet), Levels::Fine) => {}
            (Some(filled), levels) if filled == levels => {}
            _ => summary.fill(trie, dir24)?,
        }
        Ok(summary)
    }

    /// Marks every region `net` touches as holding an entry. Call before the entry goes into the
    /// tables.
    pub fn add(&mut self, net: Ipv4Net) {
        match self.levels {
            Levels::Coarse => {
                for region in regions(net, 16) {
                    let count = count_index(region);
                    let was = self.counts.load(count);
                    self.counts.store(count, was.saturating_add(1));
                    self.set(L16_BASE, region / 64, 1 << (region % 64));
                }
            }
            Levels::Fine => {
                for (word, mask) in word_masks(regions(net, 20)) {
                    self.set(L20_BASE, word, mask);
                }
                for (word, mask) in word_masks(regions(net, 24)) {
                    self.set(L24_BASE, word, mask);
                }
            }
            Levels::AllSet => {}
        }
    }

    /// Clears the bits of the regions `net` touched that no entry covers any more. Call after the
    /// entry came out of the tables (`dir24`: the tables the program reads, if loaded).
    pub fn remove(&mut self, net: Ipv4Net, dir24: Option<&Dir24>) {
        match (self.levels, dir24) {
            (Levels::Coarse, _) => {
                for region in regions(net, 16) {
                    let count = count_index(region);
                    let left = self.counts.load(count).saturating_sub(1);
                    self.counts.store(count, left);
                    if left == 0 {
                        self.clear(L16_BASE, region / 64, 1 << (region % 64));
                    }
                }
            }
            (Levels::Fine, Some(dir24)) => {
                for (word, mask) in word_masks(regions(net, 24)) {
                    self.clear(L24_BASE, word, mask & !covered_24(dir24, word, mask));
                }
                for (word, mask) in word_masks(regions(net, 20)) {
                    let l24 = |r20: u32| self.word(L24_BASE + r20 / 4);
                    let empty = bits(mask)
                        .filter(|bit| quarter(l24(word * 64 + bit), word * 64 + bit) == 0)
                        .fold(0, |acc, bit| acc | 1 << bit);
                    self.clear(L20_BASE, word, empty);
                }
            }
            _ => {}
        }
    }

    /// What the program concludes for `addr`: false means "no entry covers it" (for tests).
    pub fn may_be_listed(&self, addr: Ipv4Addr) -> bool {
        let addr = u32::from(addr);
        let bit = |base: u32, region: u32| self.word(base + region / 64) >> (region % 64) & 1 != 0;
        match self.levels {
            Levels::Coarse => bit(L16_BASE, addr >> 16),
            _ => bit(L20_BASE, addr >> 12) && bit(L24_BASE, addr >> 8),
        }
    }

    /// A copy of the /16 bitmap (bit `a >> 16` of the address `a`) and the per-/16 reference
    /// counts (how many entries cover part of each /16), if the program reads them (the
    /// trie-only load).
    pub fn level16(&self) -> Option<(Vec<u64>, Vec<u32>)> {
        if self.levels != Levels::Coarse {
            return None;
        }
        let first = count_index(0);
        let counts = (first..first + 2 * COUNT_WORDS as usize)
            .map(|index| self.counts.load(index))
            .collect();
        Some((self.copy(L16_BASE, L16_WORDS), counts))
    }

    /// Copies of the /20 (bit `a >> 12`) and /24 (bit `a >> 8`) bitmaps, if the program reads
    /// them (the DIR-24-8 tables are loaded).
    pub fn levels_20_24(&self) -> Option<(Vec<u64>, Vec<u64>)> {
        (self.levels != Levels::Coarse).then(|| {
            (
                self.copy(L20_BASE, L20_WORDS),
                self.copy(L24_BASE, L24_WORDS),
            )
        })
    }

    /// Unmaps the summary from this process until next used (as `Dir24::release`).
    pub fn release(&self) {
        self.words.release();
        self.counts.release();
    }

    fn copy(&self, base: u32, words: u32) -> Vec<u64> {
        (base..base + words).map(|w| self.word(w)).collect()
    }

    fn word(&self, index: u32) -> u64 {
        self.words.load(index as usize)
    }

    fn set(&self, base: u32, word: u32, mask: u64) {
        let was = self.word(base + word);
        if was & mask != mask {
            self.words.store((base + word) as usize, was | mask);
        }
    }

    fn clear(&self, base: u32, word: u32, mask: u64) {
        let was = self.word(base + word);
        if was & mask != 0 {
            self.words.store((base + word) as usize, was & !mask);
        }
    }

    /// Rebuilds the bitmaps the program reads from the allowlist (`trie`, and `dir24` when
    /// loaded), then marks the map filled. Bits are set before stale ones are cleared, so a
    /// program reading the map meanwhile never misses an entry. The caller holds the edit lock:
    /// an edit between the scan and the stores would be lost.
    pub fn fill(&mut self, trie: &Registry, dir24: Option<&Dir24>) -> anyhow::Result<()> {
        match (self.levels, dir24) {
            (Levels::Coarse, _) => {
                let mut counts = vec![0u32; 1 << 16];
                for key in trie.keys() {
                    let key = key.context("reading the IPv4 allowlist to fill its summary")?;
                    let len = u8::try_from(key.prefix_len()).unwrap_or(32).min(32);
                    let net = Ipv4Net::new(Ipv4Addr::from(key.data()), len)?;
                    for region in regions(net, 16) {
                        counts[region as usize] += 1;
                    }
                }
                let mut bitmap16 = vec![0u64; L16_WORDS as usize];
                for (region, _) in (0u32..).zip(&counts).filter(|(_, c)| **c != 0) {
                    bitmap16[(region / 64) as usize] |= 1 << (region % 64);
                }
                for (index, count) in (count_index(0)..).zip(&counts) {
                    self.counts.store(index, *count);
                }
                self.replace(L16_BASE, &bitmap16);
            }
            (Levels::Fine, Some(dir24)) => {
                // An empty list (every fresh load) needs no scan of the 16M-entry first level.
                let bitmap24: Vec<u64> = if trie.keys().next().is_none() {
                    vec![0; L24_WORDS as usize]
                } else {
                    (0..L24_WORDS)
                        .map(|word| covered_24(dir24, word, u64::MAX))
                        .collect()
                };
                let mut bitmap20 = vec![0u64; L20_WORDS as usize];
                for (word, bits) in (0u32..).zip(&bitmap24).filter(|(_, b)| **b != 0) {
                    for r20 in (word * 4..word * 4 + 4).filter(|r| quarter(*bits, *r) != 0) {
                        bitmap20[(r20 / 64) as usize] |= 1 << (r20 % 64);
                    }
                }
                self.replace(L20_BASE, &bitmap20);
                self.replace(L24_BASE, &bitmap24);
            }
            _ => {
                self.levels = Levels::AllSet;
                self.replace(L20_BASE, &vec![u64::MAX; L20_WORDS as usize]);
                self.replace(L24_BASE, &vec![u64::MAX; L24_WORDS as usize]);
            }
        }
        self.words.store(META_BASE as usize, self.levels.marker());
        Ok(())
    }

    fn replace(&self, base: u32, words: &[u64]) {
        for (index, want) in (base..).zip(words) {
            let was = self.word(index);
            if was != *want {
                // Set first, then clear: never a moment with fewer bits than either state.
                self.words.store(index as usize, was | want);
                self.words.store(index as usize, *want);
            }
        }
    }
}

/// The regions of prefix length `bits` that `net` touches: all those it covers when it is
/// shorter, else the one that contains it.
fn regions(net: Ipv4Net, bits: u8) -> Range<u32> {
    let first = u32::from(net.network()) >> (32 - bits);
    let len = net.prefix_len();
    let count = if len < bits { 1 << (bits - len) } else { 1 };
    first..first + count
}

/// `(word, mask)` for every bitmap word a range of regions touches.
fn word_masks(regions: Range<u32>) -> impl Iterator<Item = (u32, u64)> {
    let Range { mut start, end } = regions;
    std::iter::from_fn(move || {
        if start >= end {
            return None;
        }
        let bit = start % 64;
        let n = (64 - bit).min(end - start);
        let mask = if n == 64 {
            u64::MAX
        } else {
            ((1u64 << n) - 1) << bit
        };
        let item = (start / 64, mask);
        start += n;
        Some(item)
    })
}

/// The positions of the set bits of `mask`.
fn bits(mask: u64) -> impl Iterator<Item = u32> {
    (0..64).filter(move |bit| mask >> bit & 1 != 0)
}

/// The 16 bits of a /24 bitmap word that are /20 number `r20`'s /24s.
fn quarter(l24_word: u64, r20: u32) -> u64 {
    l24_word >> (r20 % 4 * 16) & 0xffff
}

/// Of the /24s of bitmap word `word` selected by `mask`, those an entry covers.
fn covered_24(dir24: &Dir24, word: u32, mask: u64) -> u64 {
    bits(mask)
        .filter(|bit| dir24.covers_24(word * 64 + bit))
        .fold(0, |acc, bit| acc | 1 << bit)
}

/// Where the count of /16 number `region` sits in the map's `u32` view.
fn count_index(region: u32) -> usize {
    2 * COUNTS_BASE as usize + region as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("net")
    }

    #[test]
    fn short_prefixes_touch_every_region_they_cover() {
        assert_eq!(regions(net("0.0.0.0/0"), 16), 0..1 << 16);
        assert_eq!(regions(net("0.0.0.0/0"), 24), 0..1 << 24);
        assert_eq!(regions(net("10.0.0.0/8"), 16), 0x0a00..0x0b00);
        assert_eq!(regions(net("10.0.0.0/15"), 16), 0x0a00..0x0a02);
        assert_eq!(regions(net("10.1.0.0/16"), 16), 0x0a01..0x0a02);
        assert_eq!(regions(net("10.1.2.128/25"), 16), 0x0a01..0x0a02);
        assert_eq!(regions(net("10.1.16.0/20"), 20), 0x0a011..0x0a012);
        assert_eq!(regions(net("10.1.2.128/25"), 24), 0x0a0102..0x0a0103);
        assert_eq!(
            regions(net("255.255.255.255/32"), 24),
            0xff_ffff..0x100_0000
        );
    }

    #[test]
    fn word_masks_cover_a_range_exactly() {
        let masks: Vec<_> = word_masks(3..5).collect();
        assert_eq!(masks, [(0, 0b11000)]);
        let masks: Vec<_> = word_masks(60..130).collect();
        assert_eq!(masks, [(0, 0xf << 60), (1, u64::MAX), (2, 0b11)]);
        assert_eq!(word_masks(0..1 << 24).count(), 1 << 18);
        assert!(word_masks(7..7).next().is_none());
    }

    #[test]
    fn a_20_is_a_quarter_of_a_24_word() {
        // /20 number 6 is /24s 96..112: bits 32..48 of /24 word 1.
        assert_eq!(quarter(0xabcd << 32, 6), 0xabcd);
        assert_eq!(quarter(0xabcd << 32, 5), 0);
        assert_eq!(bits(0b1010).collect::<Vec<_>>(), [1, 3]);
    }
}
