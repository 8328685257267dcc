//! The IPv4 /24 bitmap in front of the program's ban and deny lookups (layout in
//! `gatekeeper_common::blocked`): bit `X` set while a deny entry or a ban covers part of /24 `X`.
//! A clear bit lets the program skip both lookups; a set bit only means "look further", so a bit
//! set too long costs a lookup and a bit cleared too early lets a denied source through: bits are
//! set before an entry goes in and cleared only after the last entry that needed them came out.
//!
//! Whether /24 `X` still needs its bit is read from shared kernel state, so the daemon and the CLI
//! agree whatever each did before:
//! - deny entries of /24 and shorter: a lookup of `X` at prefix length 24 in the deny trie finds
//!   any of them covering `X`;
//! - things smaller than a /24 (deny entries longer than /24, IPv4 bans): a reference count per
//!   /24 and kind in `GK_BLOCKED_REFS`. Deny edits (under the config lock) write only the deny
//!   counts, ban edits (under the ban lock) only the ban counts. A writer that clears a bit reads
//!   the counts again afterwards and sets the bit back if the other kind took it meanwhile (the
//!   other kind sets its bit after raising its count, before inserting its entry).

use std::{
    ops::Range,
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::Context as _;
use aya::maps::{HashMap, LpmTrie, Map, MapData, lpm_trie::Key};
use gatekeeper_common::{
    RuleValue,
    blocked::{REF_BAN, REF_DENY, REF_KIND_SHIFT, WORDS},
    map_names,
};
use ipnet::Ipv4Net;

use super::pinned::{data_of, duplicate};

/// Which kind of small entry a reference count is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefKind {
    /// A deny entry longer than /24.
    Deny,
    /// An IPv4 ban.
    Ban,
}

impl RefKind {
    fn key(self, slash24: u32) -> u32 {
        let kind = match self {
            RefKind::Deny => REF_DENY,
            RefKind::Ban => REF_BAN,
        };
        (kind << REF_KIND_SHIFT) | (slash24 & 0x00ff_ffff)
    }
}

/// Ranges of /24s above this many are settled by one scan of the deny trie and the counts
/// instead of three lookups per /24.
const SCAN_ABOVE: u32 = 1 << 16;

/// The bitmap, mapped, with what decides its bits.
pub struct Blocked {
    words: NonNull<AtomicU64>,
    bytes: usize,
    refs: HashMap<MapData, u32, u32>,
    deny_v4: LpmTrie<MapData, [u8; 4], RuleValue>,
}

// SAFETY: the mapping is shared memory only reached through atomics.
unsafe impl Send for Blocked {}

impl Drop for Blocked {
    fn drop(&mut self) {
        // SAFETY: unmapping the mapping `open` made; no reference into it outlives `self`.
        unsafe { libc::munmap(self.words.as_ptr().cast(), self.bytes) };
    }
}

/// The /24s `net` touches.
pub fn slash24s(net: Ipv4Net) -> Range<u32> {
    let first = u32::from(net.network()) >> 8;
    let count = 1u32 << 24u8.saturating_sub(net.prefix_len());
    first..first + count
}

impl Blocked {
    pub(super) fn open(bitmap: &Map, refs: &Map, deny_v4: &Map) -> anyhow::Result<Blocked> {
        const NAME: &str = map_names::BLOCKED_V4;
        let bitmap = data_of(bitmap, NAME)?;
        let info = bitmap
            .info()
            .with_context(|| format!("reading {NAME}'s info"))?;
        anyhow::ensure!(
            info.value_size() == 8 && info.max_entries() == WORDS,
            "{NAME} holds {} values of {} bytes, expected {WORDS} of 8",
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
            return Err(std::io::Error::last_os_error()).with_context(|| format!("mapping {NAME}"));
        }
        let words = NonNull::new(ptr.cast::<AtomicU64>()).context("mmap returned null")?;
        Ok(Blocked {
            words,
            bytes,
            refs: HashMap::try_from(duplicate(refs, map_names::BLOCKED_REFS)?)
                .context(map_names::BLOCKED_REFS)?,
            deny_v4: LpmTrie::try_from(duplicate(deny_v4, map_names::DENY_V4)?)
                .context(map_names::DENY_V4)?,
        })
    }

    fn word(&self, slash24: u32) -> &AtomicU64 {
        let index = (slash24 >> 6) as usize % WORDS as usize;
        // SAFETY: `index` < WORDS, inside the mapping, which lives as long as `self`.
        unsafe { &*self.words.as_ptr().add(index) }
    }

    /// Whether /24 `slash24`'s bit is set.
    pub fn is_set(&self, slash24: u32) -> bool {
        self.word(slash24).load(Ordering::Acquire) & (1 << (slash24 & 63)) != 0
    }

    fn set(&self, slash24: u32) {
        self.word(slash24)
            .fetch_or(1 << (slash24 & 63), Ordering::AcqRel);
    }

    fn clear(&self, slash24: u32) {
        self.word(slash24)
            .fetch_and(!(1 << (slash24 & 63)), Ordering::AcqRel);
    }

    /// Sets the bits of every /24 `net` covers (before a deny entry of /24 or shorter goes in).
    pub fn cover(&self, net: Ipv4Net) {
        let range = slash24s(net);
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

    fn refs(&self, kind: RefKind, slash24: u32) -> anyhow::Result<u32> {
        match self.refs.get(&kind.key(slash24), 0) {
            Ok(count) => Ok(count),
            Err(aya::maps::MapError::KeyNotFound) => Ok(0),
            Err(err) => Err(err).context("reading the blocked-/24 reference counts failed"),
        }
    }

    /// Counts one more `kind` entry inside /24 `slash24` and sets its bit (before the entry goes
    /// in).
    pub fn add_ref(&mut self, kind: RefKind, slash24: u32) -> anyhow::Result<()> {
        let count = self.refs(kind, slash24)?;
        self.refs
            .insert(kind.key(slash24), count.saturating_add(1), 0)
            .context("raising a blocked-/24 reference count failed")?;
        self.set(slash24);
        Ok(())
    }

    /// Counts one `kind` entry less inside /24 `slash24` (after it came out), clearing the bit if
    /// nothing needs it any more.
    pub fn drop_ref(&mut self, kind: RefKind, slash24: u32) -> anyhow::Result<()> {
        let key = kind.key(slash24);
        match self.refs(kind, slash24)? {
            0 => {}
            1 => match self.refs.remove(&key) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(err) => {
                    return Err(err).context("removing a blocked-/24 reference count failed");
                }
            },
            count => self
                .refs
                .insert(key, count - 1, 0)
                .context("lowering a blocked-/24 reference count failed")?,
        }
        self.settle(slash24..slash24 + 1)
    }

    /// Whether something still needs /24 `slash24`'s bit.
    fn needed(&self, slash24: u32) -> anyhow::Result<bool> {
        let key = Key::new(24, (slash24 << 8).to_be_bytes());
        match self.deny_v4.get(&key, 0) {
            Ok(_) => return Ok(true),
            Err(aya::maps::MapError::KeyNotFound) => {}
            Err(err) => return Err(err).context("reading the IPv4 deny list failed"),
        }
        Ok(self.refs(RefKind::Deny, slash24)? > 0 || self.refs(RefKind::Ban, slash24)? > 0)
    }

    /// Clears the bits of the /24s in `range` that nothing needs any more (after entries came
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

    /// [`Blocked::settle`] for a large range: which /24s are needed comes from one pass over the
    /// deny trie's keys and the reference counts.
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
        for key in self.deny_v4.keys() {
            let key = key.context("reading the IPv4 deny list failed")?;
            let len = u8::try_from(key.prefix_len()).unwrap_or(32).min(32);
            let net = Ipv4Net::new(key.data().into(), len).context("a deny key")?;
            if len <= 24 {
                mark(slash24s(net));
            }
        }
        for key in self.refs.keys() {
            let x = key.context("reading the blocked-/24 reference counts failed")? & 0x00ff_ffff;
            mark(x..x + 1);
        }
        for x in range.clone() {
            if !needed[(x - range.start) as usize] {
                self.clear(x);
            }
        }
        // As in `settle`: counts raised meanwhile set their bits back.
        for key in self.refs.keys() {
            let x = key.context("reading the blocked-/24 reference counts failed")? & 0x00ff_ffff;
            if range.contains(&x) {
                self.set(x);
            }
        }
        Ok(())
    }
}
