//! The userspace half of the DIR-24-8 IPv4 lookup: keeps the memory-mapped tables exact for every
//! prefix length while the program reads them.
//!
//! Every change is a sequence of single aligned `u32` stores, each of which the program sees
//! whole, ordered so that no address is ever without the entry that should cover it: adding a
//! prefix only overwrites what a shorter (or no) prefix claimed; removing one hands its addresses
//! to its longest remaining ancestor; a new second-level block is filled before the first level
//! points to it; a block emptied back to one value is unhooked and reused only after a grace
//! period (a program run that read the old pointer may still be reading it; runs last
//! nanoseconds, the grace period is a second).

use std::{
    collections::VecDeque,
    os::fd::{AsFd as _, AsRawFd as _},
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::maps::MapData;
use gatekeeper_common::dir24::{ENTRY_HITS_MASK, ENTRY_LEN_SHIFT, LONG_FLAG, NONE, TBL24_ENTRIES};
use ipnet::Ipv4Net;

/// A map's value array mapped into this process (the map was created `BPF_F_MMAPABLE`), seen as
/// an array of `T`. The kernel lays array values out 8 bytes apart, so the tables are maps of
/// `u64` and a `u32` view sees two table entries per map value (little-endian: the even one is
/// the low half), exactly as the program splits them.
struct Mapped<T> {
    ptr: *mut T,
    len: usize,
    bytes: usize,
}

impl<T> Mapped<T> {
    fn new(map: &MapData, name: &str) -> anyhow::Result<Mapped<T>> {
        let info = map
            .info()
            .with_context(|| format!("reading {name}'s info"))?;
        anyhow::ensure!(
            info.value_size() == 8,
            "{name} holds {}-byte values, expected 8",
            info.value_size()
        );
        let len = info.max_entries() as usize * 8 / size_of::<T>();
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let bytes = (len * size_of::<T>()).div_ceil(page) * page;
        let fd = map.fd().as_fd().as_raw_fd();
        // SAFETY: mapping a BPF array map's values, as the kernel allows for BPF_F_MMAPABLE maps;
        // the mapping lives until `Drop` unmaps it.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("mapping {name} into memory"));
        }
        Ok(Mapped {
            ptr: ptr.cast(),
            len,
            bytes,
        })
    }
}

impl<T> Drop for Mapped<T> {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.bytes) };
    }
}

impl Mapped<u32> {
    fn cells(&self) -> &[AtomicU32] {
        // SAFETY: the mapping holds `len` aligned u32s shared with the kernel; atomics are the
        // right view of memory another party reads concurrently.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<AtomicU32>(), self.len) }
    }
}

impl Mapped<u64> {
    fn cells(&self) -> &[AtomicU64] {
        // SAFETY: as for `Mapped<u32>::cells`.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<AtomicU64>(), self.len) }
    }
}

/// The DIR-24-8 tables and the entry table, mapped.
pub struct Dir24 {
    tbl24: Mapped<u32>,
    long: Mapped<u32>,
    entries: Mapped<u64>,
    /// Blocks no /24 points to, found by one scan of the first level when first needed. Valid for one
    /// edit session: writers open the tables afresh under the config's edit lock (the daemon for
    /// each reload, the CLI per command), so no other writer changes them meanwhile. A block
    /// another process retired is reused at the earliest a process start later, far beyond the
    /// nanoseconds a program run that read the old pointer can take (XDP runs with preemption
    /// off).
    /// Each allocation pops one (O(1)): a search of a used-flag list from its start per new block
    /// made a load of many /24s quadratic.
    free_blocks: Option<Vec<u32>>,
    /// Where the search for a free entry id resumes.
    next_id: usize,
    /// Blocks this process unhooked, oldest first, with when: reusable after [`BLOCK_GRACE`].
    retired: VecDeque<(u32, Instant)>,
}

/// How long an unhooked block stays untouched before it may be reused.
const BLOCK_GRACE: Duration = Duration::from_secs(1);

/// A second-level block could not be had: the list needs more /24s with longer prefixes.
#[derive(Debug, thiserror::Error)]
#[error(
    "the DIR-24-8 table has no free block for {net} ({blocks} blocks, each serving one /24 that holds prefixes longer than /24): raise the ipv4_dir24_blocks ceiling or set ipv4_lookup = \"trie\""
)]
pub struct OutOfBlocks {
    pub net: Ipv4Net,
    pub blocks: usize,
}

/// Copies the values of the mmapable array `old` into `new`, up to the smaller of the two.
pub fn copy_values(old: &MapData, new: &MapData, name: &str) -> anyhow::Result<()> {
    let old = Mapped::<u64>::new(old, name)?;
    let new = Mapped::<u64>::new(new, name)?;
    for (to, from) in new.cells().iter().zip(old.cells()) {
        to.store(from.load(Ordering::Acquire), Ordering::Release);
    }
    Ok(())
}

/// Second-level blocks a list of networks needs: one per /24 that holds a prefix longer than /24.
pub fn blocks_needed<'a>(nets: impl IntoIterator<Item = &'a ipnet::IpNet>) -> u32 {
    let mut slots: Vec<u32> = nets
        .into_iter()
        .filter_map(|net| match net {
            ipnet::IpNet::V4(v4) if v4.prefix_len() > 24 => Some(u32::from(v4.network()) >> 8),
            _ => None,
        })
        .collect();
    slots.sort_unstable();
    slots.dedup();
    u32::try_from(slots.len()).unwrap_or(u32::MAX)
}

/// The pool to create for a list that needs `needed` blocks: a quarter more and 1024 blocks of
/// headroom for later additions (so most reloads find room), at least the historic default,
/// at most `ceiling` (the config's `ipv4_dir24_blocks`) or [`MAX_DIR24_BLOCKS`].
pub fn pool_size(needed: u32, ceiling: Option<u32>) -> u32 {
    let want = needed
        .saturating_add(needed / 4)
        .saturating_add(1024)
        .max(gatekeeper_common::dir24::DEFAULT_LONG_BLOCKS);
    want.min(ceiling.unwrap_or(MAX_DIR24_BLOCKS))
}

pub use gatekeeper_support::gatekeeper_config::MAX_DIR24_BLOCKS;

impl Dir24 {
    /// Maps the three tables; `None` if the first level is not full size (the filter was
    /// loaded for the trie lookup only).
    pub fn open(
        tbl24: &MapData,
        long: &MapData,
        entries: &MapData,
    ) -> anyhow::Result<Option<Dir24>> {
        let first_len = tbl24
            .info()
            .context("reading GK_DIR24's info")?
            .max_entries();
        if first_len * 2 != TBL24_ENTRIES {
            return Ok(None);
        }
        Ok(Some(Dir24 {
            tbl24: Mapped::new(tbl24, "GK_DIR24")?,
            long: Mapped::new(long, "GK_DIR24_LONG")?,
            entries: Mapped::new(entries, "GK_ENTRY")?,
            free_blocks: None,
            next_id: 0,
            retired: VecDeque::new(),
        }))
    }

    /// Forgets the free-block list (after the tables were overwritten by a copy).
    pub fn forget_free_blocks(&mut self) {
        self.free_blocks = None;
        self.retired.clear();
    }

    /// Number of second-level blocks.
    pub fn blocks(&self) -> usize {
        self.long.len / 256
    }

    /// Reserves an entry id for a prefix of length `len`.
    pub fn alloc_id(&mut self, len: u8) -> anyhow::Result<u32> {
        let cells = self.entries.cells();
        let total = cells.len();
        for step in 0..total {
            let id = (self.next_id + step) % total;
            if cells[id].load(Ordering::Relaxed) == 0 {
                cells[id].store((u64::from(len) + 1) << ENTRY_LEN_SHIFT, Ordering::Release);
                self.next_id = id + 1;
                return u32::try_from(id).context("entry id out of range");
            }
        }
        bail!("the allowlist is full ({total} entries)")
    }

    /// Entry ids in use: the number of IPv4 entries.
    pub fn entries_in_use(&self) -> usize {
        self.entries
            .cells()
            .iter()
            .filter(|c| c.load(Ordering::Relaxed) != 0)
            .count()
    }

    /// Releases an entry id.
    pub fn free_id(&mut self, id: u32) {
        if let Some(cell) = self.entries.cells().get(id as usize) {
            cell.store(0, Ordering::Release);
        }
    }

    /// Prefix length of entry `id`, if the id is in use.
    pub fn prefix_len(&self, id: u32) -> Option<u8> {
        let value = self
            .entries
            .cells()
            .get(id as usize)?
            .load(Ordering::Acquire);
        let len = value >> ENTRY_LEN_SHIFT;
        (len != 0).then(|| u8::try_from(len - 1).unwrap_or(u8::MAX))
    }

    /// Segments admitted through entry `id` by the DIR-24-8 lookup.
    pub fn hits(&self, id: u32) -> u64 {
        self.entries
            .cells()
            .get(id as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed) & ENTRY_HITS_MASK)
    }

    /// Whether `value` (a table value, `id + 1` or NONE) should give way to a prefix of `len`.
    fn yields_to(&self, value: u32, len: u8) -> bool {
        value == NONE || self.prefix_len(value - 1).is_none_or(|held| held <= len)
    }

    /// Makes every address of `net` resolve to entry `id` unless a longer prefix holds it.
    pub fn add(&mut self, net: Ipv4Net, id: u32) -> anyhow::Result<()> {
        let value = id + 1;
        let len = net.prefix_len();
        let start = u32::from(net.network());
        if len <= 24 {
            let first = start >> 8;
            let count = 1u32 << (24 - len);
            for slot in first..first + count {
                let current = self.tbl24.cells()[slot as usize].load(Ordering::Acquire);
                if current & LONG_FLAG != 0 {
                    self.fill_block(current & !LONG_FLAG, 0, 256, |d, old| {
                        d.yields_to(old, len).then_some(value)
                    });
                } else if self.yields_to(current, len) {
                    self.tbl24.cells()[slot as usize].store(value, Ordering::Release);
                }
            }
            return Ok(());
        }
        let slot = (start >> 8) as usize;
        let current = self.tbl24.cells()[slot].load(Ordering::Acquire);
        let block = if current & LONG_FLAG != 0 {
            current & !LONG_FLAG
        } else {
            // A new block inherits the /24's value for all its addresses, then is hooked in.
            let block = self.take_block().ok_or(OutOfBlocks {
                net,
                blocks: self.blocks(),
            })?;
            self.fill_block(block, 0, 256, |_, _| Some(current));
            self.tbl24.cells()[slot].store(LONG_FLAG | block, Ordering::Release);
            block
        };
        let offset = (start & 0xff) as usize;
        let count = 1usize << (32 - len);
        self.fill_block(block, offset, count, |d, old| {
            d.yields_to(old, len).then_some(value)
        });
        Ok(())
    }

    /// Hands every address that resolves to `id` inside `net` to `replacement` (the longest
    /// remaining prefix that contains `net`, as `id + 1`, or NONE).
    pub fn remove(&mut self, net: Ipv4Net, id: u32, replacement: u32) {
        let value = id + 1;
        let len = net.prefix_len();
        let start = u32::from(net.network());
        let (first, count, offset, in_block) = if len <= 24 {
            (start >> 8, 1u32 << (24 - len), 0usize, 256usize)
        } else {
            (start >> 8, 1, (start & 0xff) as usize, 1usize << (32 - len))
        };
        for slot in first..first + count {
            let current = self.tbl24.cells()[slot as usize].load(Ordering::Acquire);
            if current & LONG_FLAG != 0 {
                let block = current & !LONG_FLAG;
                self.fill_block(block, offset, in_block, |_, old| {
                    (old == value).then_some(replacement)
                });
                self.collapse(slot as usize, block);
            } else if current == value {
                self.tbl24.cells()[slot as usize].store(replacement, Ordering::Release);
            }
        }
    }

    /// Rewrites entries `offset..offset + count` of `block` where `f` returns a new value.
    fn fill_block(
        &self,
        block: u32,
        offset: usize,
        count: usize,
        f: impl Fn(&Dir24, u32) -> Option<u32>,
    ) {
        let base = block as usize * 256 + offset;
        for cell in &self.long.cells()[base..base + count] {
            let old = cell.load(Ordering::Acquire);
            if let Some(new) = f(self, old)
                && new != old
            {
                cell.store(new, Ordering::Release);
            }
        }
    }

    /// If every address of `block` resolves the same way, points the /24 at that value directly
    /// and retires the block.
    fn collapse(&mut self, slot: usize, block: u32) {
        let base = block as usize * 256;
        let cells = &self.long.cells()[base..base + 256];
        let first = cells[0].load(Ordering::Acquire);
        if cells.iter().all(|c| c.load(Ordering::Acquire) == first) {
            self.tbl24.cells()[slot].store(first, Ordering::Release);
            self.retired.push_back((block, Instant::now()));
        }
    }

    fn take_block(&mut self) -> Option<u32> {
        if self
            .retired
            .front()
            .is_some_and(|(_, when)| when.elapsed() >= BLOCK_GRACE)
        {
            return self.retired.pop_front().map(|(block, _)| block);
        }
        if self.free_blocks.is_none() {
            self.free_blocks = Some(self.scan_free_blocks());
        }
        self.free_blocks.as_mut()?.pop()
    }

    /// The blocks no /24 points to, highest first (so they are handed out lowest first), by one
    /// scan of the first level.
    fn scan_free_blocks(&self) -> Vec<u32> {
        let blocks = self.blocks();
        let mut used = vec![false; blocks];
        for cell in self.tbl24.cells() {
            let value = cell.load(Ordering::Relaxed);
            if value & LONG_FLAG != 0
                && let Some(u) = used.get_mut((value & !LONG_FLAG) as usize)
            {
                *u = true;
            }
        }
        (0..blocks)
            .rev()
            .filter(|&b| !used[b])
            .filter_map(|b| u32::try_from(b).ok())
            .collect()
    }

    /// The table value for `addr`, as the program computes it (for tests).
    pub fn lookup(&self, addr: u32) -> u32 {
        let first = self.tbl24.cells()[(addr >> 8) as usize].load(Ordering::Acquire);
        if first & LONG_FLAG == 0 {
            return first;
        }
        let index = ((first & !LONG_FLAG) as usize) * 256 + (addr & 0xff) as usize;
        self.long
            .cells()
            .get(index)
            .map_or(NONE, |c| c.load(Ordering::Acquire))
    }
}
