//! The /24 bitmaps in front of the program's ban and deny lookups (layout in
//! `gatekeeper_common::blocked`), one per family: bit `r` set while a deny entry or a ban covers
//! part of region `r` (the top 24 bits of an address: an IPv4 /24, an IPv6 /24). A clear bit lets
//! the program skip both lookups; a set bit only means "look further", so a bit set too long costs
//! a lookup and a bit cleared too early lets a denied source through: bits are set before an entry
//! goes in and cleared only after the last entry that needed them came out.
//!
//! Whether region `r` still needs its bit is read from shared kernel state, so the daemon and the
//! CLI agree whatever each did before:
//! - deny entries of /24 and shorter: a lookup of `r` at prefix length 24 in the family's deny
//!   trie finds any of them covering `r`;
//! - things smaller than a region (deny entries longer than /24, bans): a reference count per
//!   region, family and kind in `GK_BLOCKED_REFS`. Deny edits (under the config lock) write only
//!   the deny counts, ban edits (under the ban lock) only the ban counts. A writer that clears a
//!   bit reads the counts again afterwards and sets the bit back if the other kind took it
//!   meanwhile (the other kind sets its bit after raising its count, before inserting its entry).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    ops::Range,
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::Context as _;
use aya::maps::{HashMap, LpmTrie, Map, MapData, MapError, lpm_trie::Key};
use gatekeeper_common::{
    RuleValue,
    blocked::{REF_BAN, REF_BAN_V6, REF_DENY, REF_DENY_V6, REF_KIND_SHIFT, WORDS},
    map_names,
};
use ipnet::IpNet;

use super::pinned::{data_of, duplicate};

/// Which kind of small entry a reference count is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefKind {
    /// A deny entry longer than /24.
    Deny,
    /// A ban.
    Ban,
}

/// Bits of an address that name its region.
const REGION_BITS: u8 = 24;
const REGION_MASK: u32 = (1 << REGION_BITS) - 1;

/// Regions above this many are settled by one scan of the deny trie and the counts instead of
/// three lookups per region.
const SCAN_ABOVE: u32 = 1 << 16;

/// The region (top 24 bits) of `addr`.
pub fn region_of(addr: IpAddr) -> u32 {
    match addr {
        IpAddr::V4(v4) => u32::from(v4) >> 8,
        IpAddr::V6(v6) => (u128::from(v6) >> 104) as u32,
    }
}

/// The regions `net` touches.
pub fn regions(net: IpNet) -> Range<u32> {
    let first = region_of(net.network());
    let count = 1u32 << REGION_BITS.saturating_sub(net.prefix_len());
    first..first + count
}

/// The deny trie of the bitmap's family, read to find entries of /24 and shorter.
enum DenyTrie {
    V4(LpmTrie<MapData, [u8; 4], RuleValue>),
    V6(LpmTrie<MapData, [u8; 16], RuleValue>),
}

impl DenyTrie {
    /// Whether an entry of /24 or shorter covers region `region`.
    fn covers(&self, region: u32) -> anyhow::Result<bool> {
        let found = match self {
            DenyTrie::V4(trie) => trie.get(&Key::new(24, (region << 8).to_be_bytes()), 0),
            DenyTrie::V6(trie) => {
                let addr = u128::from(region) << 104;
                trie.get(&Key::new(24, addr.to_be_bytes()), 0)
            }
        };
        match found {
            Ok(_) => Ok(true),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(err) => Err(err).context("reading the deny list failed"),
        }
    }

    /// Every entry of /24 or shorter.
    fn short_entries(&self) -> anyhow::Result<Vec<IpNet>> {
        let mut nets = Vec::new();
        let short = |len: u32| len <= u32::from(REGION_BITS);
        match self {
            DenyTrie::V4(trie) => {
                for key in trie.keys() {
                    let key = key.context("reading the IPv4 deny list failed")?;
                    if short(key.prefix_len()) {
                        let len = u8::try_from(key.prefix_len()).unwrap_or(32);
                        nets.push(IpNet::new(IpAddr::V4(Ipv4Addr::from(key.data())), len)?);
                    }
                }
            }
            DenyTrie::V6(trie) => {
                for key in trie.keys() {
                    let key = key.context("reading the IPv6 deny list failed")?;
                    if short(key.prefix_len()) {
                        let len = u8::try_from(key.prefix_len()).unwrap_or(128);
                        nets.push(IpNet::new(IpAddr::V6(Ipv6Addr::from(key.data())), len)?);
                    }
                }
            }
        }
        Ok(nets)
    }
}

/// One family's bitmap, mapped, with what decides its bits.
pub struct Blocked {
    words: NonNull<AtomicU64>,
    bytes: usize,
    refs: HashMap<MapData, u32, u32>,
    deny: DenyTrie,
    /// The reference kinds of this family: (deny, ban).
    kinds: (u32, u32),
}

// SAFETY: the mapping is shared memory only reached through atomics.
unsafe impl Send for Blocked {}

impl Drop for Blocked {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping `open` made; no reference into it outlives `self`.
        unsafe { libc::munmap(self.words.as_ptr().cast(), self.bytes) };
    }
}

impl Blocked {
    /// The IPv4 bitmap (`GK_BLOCKED_V4`) with the IPv4 deny trie.
    pub(super) fn open_v4(bitmap: &Map, refs: &Map, deny_v4: &Map) -> anyhow::Result<Blocked> {
        let deny = DenyTrie::V4(
            LpmTrie::try_from(duplicate(deny_v4, map_names::DENY_V4)?)
                .context(map_names::DENY_V4)?,
        );
        Blocked::open(
            map_names::BLOCKED_V4,
            bitmap,
            refs,
            deny,
            (REF_DENY, REF_BAN),
        )
    }

    /// The IPv6 bitmap (`GK_BLOCKED_V6`) with the IPv6 deny trie.
    pub(super) fn open_v6(bitmap: &Map, refs: &Map, deny_v6: &Map) -> anyhow::Result<Blocked> {
        let deny = DenyTrie::V6(
            LpmTrie::try_from(duplicate(deny_v6, map_names::DENY_V6)?)
                .context(map_names::DENY_V6)?,
        );
        Blocked::open(
            map_names::BLOCKED_V6,
            bitmap,
            refs,
            deny,
            (REF_DENY_V6, REF_BAN_V6),
        )
    }

    fn open(
        name: &str,
        bitmap: &Map,
        refs: &Map,
        deny: DenyTrie,
        kinds: (u32, u32),
    ) -> anyhow::Result<Blocked> {
        let bitmap = data_of(bitmap, name)?;
        let info = bitmap
            .info()
            .with_context(|| format!("reading {name}'s info"))?;
        anyhow::ensure!(
            info.value_size() == 8 && info.max_entries() == WORDS,
            "{name} holds {} values of {} bytes, expected {WORDS} of 8",
            info.max_entries(),
            info.value_size()
        );
        let bytes = WORDS as usize * 8;
        use std::os::fd::{AsFd as _, AsRawFd as _};
        // SAFETY: mapping the whole value area of a BPF_F_MMAPABLE array map, shared.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                bitmap.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("mapping {name}"));
        }
        let words = NonNull::new(ptr.cast::<AtomicU64>()).context("mmap returned null")?;
        Ok(Blocked {
            words,
            bytes,
            refs: HashMap::try_from(duplicate(refs, map_names::BLOCKED_REFS)?)
                .context(map_names::BLOCKED_REFS)?,
            deny,
            kinds,
        })
    }

    fn ref_key(&self, kind: RefKind, region: u32) -> u32 {
        let kind = match kind {
            RefKind::Deny => self.kinds.0,
            RefKind::Ban => self.kinds.1,
        };
        (kind << REF_KIND_SHIFT) | (region & REGION_MASK)
    }

    fn word(&self, region: u32) -> &AtomicU64 {
        let index = (region >> 6) as usize % WORDS as usize;
        // SAFETY: `index` < WORDS, inside the mapping, which lives as long as `self`.
        unsafe { &*self.words.as_ptr().add(index) }
    }

    /// Whether region `region`'s bit is set.
    pub fn is_set(&self, region: u32) -> bool {
        self.word(region).load(Ordering::Acquire) & (1 << (region & 63)) != 0
    }

    fn set(&self, region: u32) {
        self.word(region)
            .fetch_or(1 << (region & 63), Ordering::AcqRel);
    }

    fn clear(&self, region: u32) {
        self.word(region)
            .fetch_and(!(1 << (region & 63)), Ordering::AcqRel);
    }

    /// Sets the bits of every region `net` covers (before a deny entry of /24 or shorter goes in).
    pub fn cover(&self, net: IpNet) {
        let range = regions(net);
        let mut x = range.start;
        while x < range.end {
            if x & 63 == 0 && range.end - x >= 64 {
                self.word(x).store(u64::MAX, Ordering::Release);
                x += 64;
            } else {
                self.set(x);
                x += 1;
            }
        }
    }

    fn refs(&self, kind: RefKind, region: u32) -> anyhow::Result<u32> {
        match self.refs.get(&self.ref_key(kind, region), 0) {
            Ok(count) => Ok(count),
            Err(MapError::KeyNotFound) => Ok(0),
            Err(err) => Err(err).context("reading the blocked-region reference counts failed"),
        }
    }

    /// Counts one more `kind` entry inside region `region` and sets its bit (before the entry
    /// goes in).
    pub fn add_ref(&mut self, kind: RefKind, region: u32) -> anyhow::Result<()> {
        let count = self.refs(kind, region)?;
        let key = self.ref_key(kind, region);
        self.refs
            .insert(key, count.saturating_add(1), 0)
            .context("raising a blocked-region reference count failed")?;
        self.set(region);
        Ok(())
    }

    /// Counts one `kind` entry less inside region `region` (after it came out), clearing the bit
    /// if nothing needs it any more.
    pub fn drop_ref(&mut self, kind: RefKind, region: u32) -> anyhow::Result<()> {
        let key = self.ref_key(kind, region);
        match self.refs(kind, region)? {
            0 => {}
            1 => match self.refs.remove(&key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(err) => {
                    return Err(err).context("removing a blocked-region reference count failed");
                }
            },
            count => self
                .refs
                .insert(key, count - 1, 0)
                .context("lowering a blocked-region reference count failed")?,
        }
        self.settle(region..region + 1)
    }

    /// Whether something still needs region `region`'s bit.
    fn needed(&self, region: u32) -> anyhow::Result<bool> {
        Ok(self.deny.covers(region)?
            || self.refs(RefKind::Deny, region)? > 0
            || self.refs(RefKind::Ban, region)? > 0)
    }

    /// Clears the bits of the regions in `range` that nothing needs any more (after entries came
    /// out).
    pub fn settle(&mut self, range: Range<u32>) -> anyhow::Result<()> {
        if range.end - range.start > SCAN_ABOVE {
            return self.settle_by_scan(range);
        }
        for x in range {
            if !self.is_set(x) || self.needed(x)? {
                continue;
            }
            self.clear(x);
            // The other kind may have raised its count and set the bit between the check and
            // the clear: read again, and set the bit back if so.
            if self.needed(x)? {
                self.set(x);
            }
        }
        Ok(())
    }

    /// This family's regions with a reference count.
    fn counted_regions(&self) -> anyhow::Result<Vec<u32>> {
        let mut regions = Vec::new();
        for key in self.refs.keys() {
            let key = key.context("reading the blocked-region reference counts failed")?;
            let kind = key >> REF_KIND_SHIFT;
            if kind == self.kinds.0 || kind == self.kinds.1 {
                regions.push(key & REGION_MASK);
            }
        }
        Ok(regions)
    }

    /// [`Blocked::settle`] for a large range: which regions are needed comes from one pass over
    /// the deny trie's keys and the reference counts.
    fn settle_by_scan(&mut self, range: Range<u32>) -> anyhow::Result<()> {
        let len = (range.end - range.start) as usize;
        let mut needed = vec![false; len];
        let mut mark = |r: Range<u32>| {
            let start = r.start.max(range.start);
            let end = r.end.min(range.end);
            for x in start..end {
                needed[(x - range.start) as usize] = true;
            }
        };
        for net in self.deny.short_entries()? {
            mark(regions(net));
        }
        for x in self.counted_regions()? {
            mark(x..x + 1);
        }
        for x in range.clone() {
            if !needed[(x - range.start) as usize] {
                self.clear(x);
            }
        }
        // As in `settle`: counts raised meanwhile set their bits back.
        for x in self.counted_regions()? {
            if range.contains(&x) {
                self.set(x);
            }
        }
        Ok(())
    }
}
