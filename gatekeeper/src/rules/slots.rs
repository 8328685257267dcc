//! One family's ban slots (layout and protocol in `gatekeeper_common::ban_slots`), mapped into
//! this process in windows ([`crate::dir24::Mapped`]: the kernel makes a whole BPF array mapping
//! resident at once, and a daemon must not hold 12 MiB for a restore it did at start): every read
//! and write is a single aligned 8-byte atomic access, in the order the program relies on, so a
//! program run racing a writer sees either no ban or a whole one. Writers serialise under the ban
//! lock; nothing here takes it (so the overflow counters, which only writers change, are read and
//! stored rather than swapped).

use std::{
    collections::HashMap,
    mem::{offset_of, size_of},
};

use aya::maps::{Map, MapData};
use gatekeeper_common::{BanBucketV4, BanBucketV6, ban_slots};

use super::pinned::data_of;
use crate::dir24::Mapped;

/// Which family's bucket layout a table has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Layout {
    V4,
    V6,
}

/// A source as the slots key it: [`ban_slots::v4_key`], or the masked IPv6 source's halves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum SlotKey {
    V4(u64),
    V6([u64; 2]),
}

/// Where a ban sits: bucket and way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Slot {
    bucket: u32,
    way: usize,
}

/// A used slot's contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct SlotBan {
    pub key: SlotKey,
    pub deadline_ns: u64,
    pub hits: u64,
}

/// Word offsets of one bucket's fields (the buckets are arrays of `u64`).
struct Fields {
    words: usize,
    key: usize,
    key_words: usize,
    deadline: usize,
    hits: usize,
    overflow: usize,
}

const V4_FIELDS: Fields = Fields {
    words: size_of::<BanBucketV4>() / 8,
    key: offset_of!(BanBucketV4, keys) / 8,
    key_words: 1,
    deadline: offset_of!(BanBucketV4, deadlines) / 8,
    hits: offset_of!(BanBucketV4, hits) / 8,
    overflow: offset_of!(BanBucketV4, overflow) / 8,
};

const V6_FIELDS: Fields = Fields {
    words: size_of::<BanBucketV6>() / 8,
    key: offset_of!(BanBucketV6, keys) / 8,
    key_words: 2,
    deadline: offset_of!(BanBucketV6, deadlines) / 8,
    hits: offset_of!(BanBucketV6, hits) / 8,
    overflow: offset_of!(BanBucketV6, overflow) / 8,
};

/// One family's slot map, mapped.
pub(super) struct SlotTable {
    cells: Mapped<u64>,
    buckets: u32,
    layout: Layout,
}

impl SlotTable {
    /// Maps the slot map `map` (named `name`, a `BPF_F_MMAPABLE` array of `layout`'s buckets).
    pub fn open(map: &Map, name: &str, layout: Layout) -> anyhow::Result<SlotTable> {
        let data: &MapData = data_of(map, name)?;
        let words = fields(layout).words;
        let cells = Mapped::with_value_size(data, name, (words * 8) as u32)?;
        let buckets = u32::try_from(cells.len() / words).unwrap_or(u32::MAX);
        anyhow::ensure!(buckets > 0, "{name} has no buckets");
        Ok(SlotTable {
            cells,
            buckets,
            layout,
        })
    }

    pub fn buckets(&self) -> u32 {
        self.buckets
    }

    fn fields(&self) -> &'static Fields {
        fields(self.layout)
    }

    /// The index of word `offset` of bucket `bucket`.
    fn word(&self, bucket: u32, offset: usize) -> usize {
        let fields = self.fields();
        (bucket % self.buckets) as usize * fields.words + offset % fields.words
    }

    fn key_word(&self, slot: Slot, half: usize) -> usize {
        let fields = self.fields();
        self.word(slot.bucket, fields.key + slot.way * fields.key_words + half)
    }

    fn deadline(&self, slot: Slot) -> usize {
        self.word(slot.bucket, self.fields().deadline + slot.way)
    }

    fn hits(&self, slot: Slot) -> usize {
        self.word(slot.bucket, self.fields().hits + slot.way)
    }

    fn overflow(&self, bucket: u32) -> usize {
        self.word(bucket, self.fields().overflow)
    }

    fn load(&self, word: usize) -> u64 {
        self.cells.load(word)
    }

    fn store(&self, word: usize, value: u64) {
        self.cells.store(word, value);
    }

    /// The two candidate buckets of `key`.
    pub fn candidates(&self, key: SlotKey) -> [u32; 2] {
        let (first, second) = match key {
            SlotKey::V4(word) => ban_slots::buckets_v4((word >> 32) as u32, self.buckets),
            SlotKey::V6(halves) => ban_slots::buckets_v6(halves, self.buckets),
        };
        [first, second]
    }

    /// What slot `slot` holds, if it is used.
    fn used(&self, slot: Slot) -> Option<SlotBan> {
        match self.layout {
            Layout::V4 => {
                let key = self.load(self.key_word(slot, 0));
                (key & 1 == 1).then(|| SlotBan {
                    key: SlotKey::V4(key),
                    deadline_ns: self.load(self.deadline(slot)),
                    hits: self.load(self.hits(slot)),
                })
            }
            Layout::V6 => {
                let deadline_ns = self.load(self.deadline(slot));
                (deadline_ns != 0).then(|| SlotBan {
                    key: SlotKey::V6([
                        self.load(self.key_word(slot, 0)),
                        self.load(self.key_word(slot, 1)),
                    ]),
                    deadline_ns,
                    hits: self.load(self.hits(slot)),
                })
            }
        }
    }

    /// The slot holding `key`, with its ban.
    pub fn find(&self, key: SlotKey) -> Option<(Slot, SlotBan)> {
        for bucket in self.candidates(key) {
            for way in 0..ban_slots::WAYS {
                let slot = Slot { bucket, way };
                if let Some(ban) = self.used(slot).filter(|b| b.key == key) {
                    return Some((slot, ban));
                }
            }
        }
        None
    }

    /// Whether `slot` is free and out of its quarantine at `now_ns`.
    fn reusable(&self, slot: Slot, now_ns: u64) -> bool {
        let freed_at = match self.layout {
            Layout::V4 => {
                let key = self.load(self.key_word(slot, 0));
                if key & 1 == 1 {
                    return false;
                }
                key
            }
            Layout::V6 => {
                if self.load(self.deadline(slot)) != 0 {
                    return false;
                }
                self.load(self.hits(slot))
            }
        };
        // 0: never used. A stamp ahead of now (impossible: pins do not outlive a boot) waits.
        freed_at == 0 || now_ns.saturating_sub(freed_at) >= ban_slots::QUARANTINE_NS
    }

    /// Puts a new ban of `key` into the candidate bucket with more reusable ways (the first on a
    /// tie); `None` when both have none (the ban goes to the hash map).
    pub fn place(&self, key: SlotKey, deadline_ns: u64, now_ns: u64) -> Option<Slot> {
        let mut best: Option<(Slot, usize)> = None;
        for bucket in self.candidates(key) {
            let reusable: Vec<usize> = (0..ban_slots::WAYS)
                .filter(|&way| self.reusable(Slot { bucket, way }, now_ns))
                .collect();
            if let Some(&way) = reusable.first()
                && best.is_none_or(|(_, free)| reusable.len() > free)
            {
                best = Some((Slot { bucket, way }, reusable.len()));
            }
        }
        let (slot, _) = best?;
        // A deadline of 0 marks a free IPv6 slot: a ban that is over already gets 1.
        let deadline_ns = deadline_ns.max(1);
        match key {
            SlotKey::V4(word) => {
                // Deadline and hits first, the key last: a run that sees the key sees the ban.
                self.store(self.deadline(slot), deadline_ns);
                self.store(self.hits(slot), 0);
                self.store(self.key_word(slot, 0), word);
            }
            SlotKey::V6(halves) => {
                // Key and hits first, the deadline (non-zero: used) last.
                self.store(self.key_word(slot, 0), halves[0]);
                self.store(self.key_word(slot, 1), halves[1]);
                self.store(self.hits(slot), 0);
                self.store(self.deadline(slot), deadline_ns);
            }
        }
        Some(slot)
    }

    /// Moves the deadline of the ban in `slot` (one 8-byte store; its hits stay).
    pub fn set_deadline(&self, slot: Slot, deadline_ns: u64) {
        self.store(self.deadline(slot), deadline_ns.max(1));
    }

    /// Frees `slot`, stamped with `now_ns` so it is not reused before the quarantine is over.
    pub fn free(&self, slot: Slot, now_ns: u64) {
        // Never 0 (that reads "never used") and, for IPv4, bit 0 clear (free).
        let stamp = (now_ns & !1).max(2);
        match self.layout {
            Layout::V4 => self.store(self.key_word(slot, 0), stamp),
            Layout::V6 => {
                self.store(self.deadline(slot), 0);
                self.store(self.hits(slot), stamp);
            }
        }
    }

    /// Counts one more (`delta` 1) or one fewer (`delta` -1) overflowed ban of `key` in both its
    /// buckets (the same bucket twice when both choices name it: removal mirrors it). Never below
    /// 0: a counter too low would hide a ban, one too high only costs a lookup.
    pub fn add_overflow(&self, key: SlotKey, delta: i64) {
        for bucket in self.candidates(key) {
            let word = self.overflow(bucket);
            let count = self.load(word);
            let count = if delta >= 0 {
                count.saturating_add(delta.unsigned_abs())
            } else {
                count.saturating_sub(delta.unsigned_abs())
            };
            self.store(word, count);
        }
    }

    /// Every used slot.
    pub fn bans(&self) -> Vec<SlotBan> {
        let mut bans = Vec::new();
        for bucket in 0..self.buckets {
            for way in 0..ban_slots::WAYS {
                if let Some(ban) = self.used(Slot { bucket, way }) {
                    bans.push(ban);
                }
            }
        }
        bans
    }

    /// The sum of the overflow counters (each overflowed ban counts twice: once per bucket).
    pub fn overflow_total(&self) -> u64 {
        (0..self.buckets).map(|b| self.load(self.overflow(b))).sum()
    }

    /// Unmaps the table from this process until next used (after a scan of the whole table).
    pub fn release(&self) {
        self.cells.release();
    }

    /// Sets every bucket's overflow counter to what the hash map's `keys` need. One store per
    /// bucket whose counter differs, so a counter a ban needs never reads 0 on the way.
    pub fn rebuild_overflow(&self, keys: &[SlotKey]) {
        let mut wanted: HashMap<u32, u64> = HashMap::new();
        for key in keys {
            for bucket in self.candidates(*key) {
                *wanted.entry(bucket).or_default() += 1;
            }
        }
        for bucket in 0..self.buckets {
            let want = wanted.get(&bucket).copied().unwrap_or(0);
            let word = self.overflow(bucket);
            if self.load(word) != want {
                self.store(word, want);
            }
        }
    }
}

fn fields(layout: Layout) -> &'static Fields {
    match layout {
        Layout::V4 => &V4_FIELDS,
        Layout::V6 => &V6_FIELDS,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    impl SlotTable {
        /// A table in plain memory (a memfd: what the kernel's map would hold, without the
        /// program).
        fn anonymous(buckets: u32, layout: Layout) -> SlotTable {
            use std::os::fd::{FromRawFd as _, OwnedFd};
            let bytes = buckets as usize * fields(layout).words * 8;
            // SAFETY: a fresh memfd, owned from here on.
            let fd = unsafe {
                let fd = libc::memfd_create(c"ban-slots".as_ptr(), 0);
                assert!(fd >= 0, "memfd_create");
                assert_eq!(libc::ftruncate(fd, bytes as libc::off_t), 0, "ftruncate");
                OwnedFd::from_raw_fd(fd)
            };
            SlotTable {
                cells: Mapped::from_fd(fd, bytes),
                buckets,
                layout,
            }
        }
    }

    /// xorshift64*: deterministic keys.
    struct Keys(u64);

    impl Keys {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn key(&mut self, layout: Layout) -> SlotKey {
            match layout {
                Layout::V4 => SlotKey::V4(ban_slots::v4_key(self.next() as u32)),
                // A /64: the low half masked away, as the ban prefix does.
                Layout::V6 => SlotKey::V6([self.next(), 0]),
            }
        }
    }

    /// A full table at the default `max_bans`: every ban is found where it was put, nearly all
    /// of them in slots (the rest would go to the hash map), and no other source is found.
    #[test]
    fn a_full_default_size_table_finds_every_ban_and_nothing_else() {
        let max_bans = gatekeeper_common::DEFAULT_MAX_BANS;
        for layout in [Layout::V4, Layout::V6] {
            let table = SlotTable::anonymous(ban_slots::buckets_for(max_bans), layout);
            let mut keys = Keys(0x5eed_0000 + layout as u64);
            let mut banned = HashSet::new();
            let mut overflowed = 0;
            while banned.len() < max_bans as usize {
                let key = keys.key(layout);
                if !banned.insert(key) {
                    continue;
                }
                let deadline = 1_000 + banned.len() as u64;
                if table.place(key, deadline, 5_000_000_000).is_none() {
                    overflowed += 1;
                }
            }
            eprintln!("{layout:?}: {overflowed} of {max_bans} overflowed");
            // Two choices of four ways at half load: a handful at most (the simulation in the
            // design found 1 to 3 of 100,000).
            assert!(overflowed <= 20, "{layout:?}: {overflowed} overflowed");
            let placed = table.bans();
            assert_eq!(placed.len(), max_bans as usize - overflowed);
            for ban in &placed {
                assert!(banned.contains(&ban.key));
                let (_, found) = table.find(ban.key).expect("placed ban found");
                assert_eq!(found, *ban);
            }
            let mut strangers = 0;
            while strangers < 100_000 {
                let key = keys.key(layout);
                if banned.contains(&key) {
                    continue;
                }
                strangers += 1;
                assert_eq!(table.find(key), None, "{key:?} was never banned");
            }
        }
    }

    #[test]
    fn a_freed_slot_waits_out_its_quarantine() {
        for layout in [Layout::V4, Layout::V6] {
            // One bucket: both choices name it.
            let table = SlotTable::anonymous(1, layout);
            let mut keys = Keys(7);
            let now = 10 * ban_slots::QUARANTINE_NS;
            let first: Vec<SlotKey> = (0..4).map(|_| keys.key(layout)).collect();
            for key in &first {
                assert!(table.place(*key, now + 100, now).is_some());
            }
            let extra = keys.key(layout);
            assert_eq!(table.place(extra, now + 100, now), None, "full");
            let (slot, ban) = table.find(first[1]).expect("placed");
            assert_eq!(ban.deadline_ns, now + 100);
            table.set_deadline(slot, now + 200);
            assert_eq!(
                table.find(first[1]).expect("there").1.deadline_ns,
                now + 200
            );
            table.free(slot, now);
            assert_eq!(table.find(first[1]), None, "lifted");
            assert_eq!(
                table.place(extra, now + 100, now + ban_slots::QUARANTINE_NS - 1),
                None,
                "the freed slot is quarantined"
            );
            let reused = table
                .place(extra, now + 100, now + ban_slots::QUARANTINE_NS)
                .expect("reused after the quarantine");
            assert_eq!(reused, slot);
            let (_, ban) = table.find(extra).expect("placed");
            assert_eq!((ban.deadline_ns, ban.hits), (now + 100, 0));
        }
    }

    #[test]
    fn overflow_counters_are_rebuilt_from_the_hash_maps_keys() {
        let table = SlotTable::anonymous(64, Layout::V4);
        let mut keys = Keys(11);
        let hashed: Vec<SlotKey> = (0..10).map(|_| keys.key(Layout::V4)).collect();
        for key in &hashed[..3] {
            table.add_overflow(*key, 1);
        }
        // A stale count left by a writer killed between the raise and the insert.
        table.add_overflow(keys.key(Layout::V4), 1);
        table.rebuild_overflow(&hashed);
        assert_eq!(table.overflow_total(), 20);
        for key in &hashed {
            for bucket in table.candidates(*key) {
                assert!(table.load(table.overflow(bucket)) > 0);
            }
        }
        for key in &hashed {
            table.add_overflow(*key, -1);
        }
        assert_eq!(table.overflow_total(), 0);
        table.add_overflow(hashed[0], -1);
        assert_eq!(table.overflow_total(), 0, "never below zero");
    }
}
