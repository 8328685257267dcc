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
    net::Ipv4Addr,
    os::fd::{AsFd as _, AsRawFd as _},
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::maps::MapData;
use gatekeeper_common::{
    ALLOWLIST_CAPACITY,
    dir24::{ENTRY_HITS_MASK, ENTRY_LEN_SHIFT, LONG_FLAG, NONE, TBL24_ENTRIES},
};
use ipnet::Ipv4Net;

/// A map's value array mapped into this process (the map was created `BPF_F_MMAPABLE`), seen as
/// an array of `T`. The kernel lays array values out 8 bytes apart, so the tables are maps of
/// `u64` and a `u32` view sees two table entries per map value (little-endian: the even one is
/// the low half), exactly as the program splits them.
///
/// Mapped in windows of [`WINDOW`] bytes, on first use, at most [`WINDOWS_KEPT`] at a time: the
/// kernel populates the whole range of a BPF array mapping at `mmap`, so mapping a 1 GiB
/// second level whole would make a CLI edit of one entry (or the daemon at rest) 1 GiB resident.
/// Cells are only loaded and stored through the window, never borrowed, so a window can be
/// unmapped whenever another one is needed. The IPv4 summary (`summary`) maps its map the same way.
pub(crate) struct Mapped<T> {
    fd: std::os::fd::OwnedFd,
    len: usize,
    bytes: usize,
    windows: std::cell::RefCell<Windows>,
    _cell: std::marker::PhantomData<T>,
}

/// Bytes per mapped window (a multiple of any page size).
const WINDOW: usize = 1 << 18;
/// Windows one table keeps mapped: 16 MiB, whatever the table's size.
const WINDOWS_KEPT: usize = 64;

#[derive(Default)]
struct Windows {
    /// Start of each window's mapping, null when not mapped.
    at: Vec<*mut u8>,
    /// Mapped windows, oldest first.
    order: VecDeque<usize>,
}

impl<T> Mapped<T> {
    pub(crate) fn new(map: &MapData, name: &str) -> anyhow::Result<Mapped<T>> {
        Mapped::with_value_size(map, name, 8)
    }

    /// The same for a map of `value_size`-byte values (a multiple of 8, laid out back to back).
    pub(crate) fn with_value_size(
        map: &MapData,
        name: &str,
        value_size: u32,
    ) -> anyhow::Result<Mapped<T>> {
        let info = map
            .info()
            .with_context(|| format!("reading {name}'s info"))?;
        anyhow::ensure!(
            info.value_size() == value_size,
            "{name} holds {}-byte values, expected {value_size}",
            info.value_size()
        );
        let fd = map
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .with_context(|| format!("duplicating {name}'s descriptor"))?;
        Ok(Mapped::from_fd(
            fd,
            info.max_entries() as usize * value_size as usize,
        ))
    }

    /// `bytes` of the file `fd` (a BPF array map, or a memfd in tests), seen as `T`s.
    pub(crate) fn from_fd(fd: std::os::fd::OwnedFd, bytes: usize) -> Mapped<T> {
        let len = bytes / size_of::<T>();
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let bytes = (len * size_of::<T>()).div_ceil(page) * page;
        Mapped {
            fd,
            len,
            bytes,
            windows: std::cell::RefCell::new(Windows {
                at: vec![std::ptr::null_mut(); bytes.div_ceil(WINDOW)],
                order: VecDeque::new(),
            }),
            _cell: std::marker::PhantomData,
        }
    }

    /// The address of cell `index` (< `len`), mapping its window if needed.
    fn cell_ptr(&self, index: usize) -> *mut T {
        let byte = index * size_of::<T>();
        let window = byte / WINDOW;
        let mut windows = self.windows.borrow_mut();
        let mut base = windows.at[window];
        if base.is_null() {
            if windows.order.len() >= WINDOWS_KEPT
                && let Some(old) = windows.order.pop_front()
            {
                let len = self.window_len(old);
                // SAFETY: unmapping a window this mapping made; no reference into it exists
                // (cells are copied in and out, never borrowed).
                unsafe { libc::munmap(windows.at[old].cast(), len) };
                windows.at[old] = std::ptr::null_mut();
            }
            // SAFETY: mapping part of a BPF array map's values, as the kernel allows for
            // BPF_F_MMAPABLE maps (any page-aligned offset inside the array).
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    self.window_len(window),
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    self.fd.as_raw_fd(),
                    libc::off_t::try_from(window * WINDOW).unwrap_or(libc::off_t::MAX),
                )
            };
            if ptr == libc::MAP_FAILED {
                // Out of address space or memory: nothing sensible is left to do for a writer
                // of the live tables halfway through an edit.
                panic!(
                    "mapping a window of a BPF table failed: {}",
                    std::io::Error::last_os_error()
                );
            }
            base = ptr.cast();
            windows.at[window] = base;
            windows.order.push_back(window);
        }
        // SAFETY: `byte` lies inside this window (`index < len`).
        unsafe { base.add(byte % WINDOW).cast() }
    }

    fn window_len(&self, window: usize) -> usize {
        WINDOW.min(self.bytes - window * WINDOW)
    }

    /// Cells of type `T` in the map.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Unmaps every window (the memory stays in the map; this process stops holding it).
    pub(crate) fn release(&self) {
        let mut windows = self.windows.borrow_mut();
        while let Some(window) = windows.order.pop_front() {
            let len = self.window_len(window);
            // SAFETY: as in `cell_ptr`.
            unsafe { libc::munmap(windows.at[window].cast(), len) };
            windows.at[window] = std::ptr::null_mut();
        }
    }
}

impl<T> Drop for Mapped<T> {
    fn drop(&mut self) {
        self.release();
    }
}

impl Mapped<u32> {
    pub(crate) fn load(&self, index: usize) -> u32 {
        // SAFETY: an aligned u32 of the shared mapping; atomics are the right view of memory
        // the program reads concurrently.
        unsafe { (*self.cell_ptr(index).cast::<AtomicU32>()).load(Ordering::Acquire) }
    }

    pub(crate) fn store(&self, index: usize, value: u32) {
        // SAFETY: as in `load`.
        unsafe { (*self.cell_ptr(index).cast::<AtomicU32>()).store(value, Ordering::Release) }
    }
}

impl Mapped<u32> {
    /// Cells `index..index + count`, which must lie in one window (a second-level block does:
    /// blocks are 1 KiB, aligned, and windows a multiple of that), for `f` to load and store
    /// with one window lookup instead of one per cell (a new block is 256 stores; a million of
    /// them was a tenth of a daemon's start). `f` must not use this mapping otherwise: another
    /// window mapped meanwhile could unmap this one.
    pub(crate) fn with_run<R>(
        &self,
        index: usize,
        count: usize,
        f: impl FnOnce(&[AtomicU32]) -> R,
    ) -> R {
        if count == 0 {
            return f(&[]);
        }
        let first = index * size_of::<u32>() / WINDOW;
        let last = ((index + count) * size_of::<u32>() - 1) / WINDOW;
        assert!(
            first == last && index + count <= self.len,
            "a run of cells crosses a window or the table's end"
        );
        let ptr = self.cell_ptr(index);
        // SAFETY: `count` aligned u32 cells of one mapped window (checked above), seen as
        // atomics as in `load`; the window stays mapped while `f` runs, since only a lookup
        // through this mapping (which `f` must not make) unmaps windows.
        let cells = unsafe { std::slice::from_raw_parts(ptr.cast::<AtomicU32>(), count) };
        f(cells)
    }
}

impl Mapped<u64> {
    pub(crate) fn load(&self, index: usize) -> u64 {
        // SAFETY: as for `Mapped<u32>::load`.
        unsafe { (*self.cell_ptr(index).cast::<AtomicU64>()).load(Ordering::Acquire) }
    }

    pub(crate) fn store(&self, index: usize, value: u64) {
        // SAFETY: as for `Mapped<u32>::load`.
        unsafe { (*self.cell_ptr(index).cast::<AtomicU64>()).store(value, Ordering::Release) }
    }
}

/// The DIR-24-8 tables and the entry table, mapped.
///
/// The entry table (`GK_ENTRY`) is made larger than the program needs (see [`entry_map_len`]):
/// after the `ALLOWLIST_CAPACITY` values the program reads (prefix length, hit counter) come, for
/// userspace only, each id's network (so `status` and `allow list` read the entries through the
/// mapping instead of one syscall per trie key), then one bit per second-level block in use (so
/// an edit that needs a new block finds one without scanning the 64 MiB first level). Tables
/// pinned by a build without these parts still work: networks then come from the trie, and free
/// blocks from a scan of the first level.
pub struct Dir24 {
    tbl24: Mapped<u32>,
    long: Mapped<u32>,
    entries: Mapped<u64>,
    /// Whether the entry table holds the networks and the block bitmap.
    registry: bool,
    /// Without the bitmap: blocks no /24 points to, found by one scan of the first level when
    /// first needed. Valid for one edit session: writers open the tables afresh under the
    /// config's edit lock (the daemon for each reload, the CLI per command), so no other writer
    /// changes them meanwhile.
    free_blocks: Option<Vec<u32>>,
    /// With the bitmap: the word where the search for a free block resumes.
    next_block_word: usize,
    /// Where the search for a free entry id resumes.
    next_id: usize,
    /// Blocks this process unhooked, oldest first, with when: reusable after [`BLOCK_GRACE`]. A
    /// block another process retired is reused at the earliest a process start later, far
    /// beyond the nanoseconds a program run that read the old pointer can take (XDP runs with
    /// preemption off).
    retired: VecDeque<(u32, Instant)>,
}

/// How long an unhooked block stays untouched before it may be reused.
const BLOCK_GRACE: Duration = Duration::from_secs(1);

/// Entry ids: the part of the entry table the program reads.
const IDS: usize = ALLOWLIST_CAPACITY as usize;
/// In the network part of the entry table: set for an id that has a network.
const NET_SET: u64 = 1 << 63;

/// Values of the entry table for a pool of `blocks` second-level blocks: the ids, their
/// networks, and the block bitmap.
pub fn entry_map_len(blocks: u32) -> u32 {
    ALLOWLIST_CAPACITY * 2 + blocks.div_ceil(64)
}

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
    for index in 0..old.len.min(new.len) {
        let value = old.load(index);
        if value != 0 {
            new.store(index, value);
        }
    }
    Ok(())
}

/// Second-level blocks a list of networks needs: one per /24 that holds a prefix longer than /24.
pub fn blocks_needed<'a>(nets: impl IntoIterator<Item = &'a ipnet::IpNet>) -> u32 {
    // One bit per /24 (2 MiB, whose pages are only touched where entries are): a pass, no sort
    // (the daemon sizes its tables from this before it loads a million-entry list).
    let mut seen = vec![0u64; (TBL24_ENTRIES as usize).div_ceil(64)];
    let mut count = 0u32;
    for net in nets {
        if let ipnet::IpNet::V4(v4) = net
            && v4.prefix_len() > 24
        {
            let slot = (u32::from(v4.network()) >> 8) as usize;
            let (word, bit) = (slot / 64, 1u64 << (slot % 64));
            if seen[word] & bit == 0 {
                seen[word] |= bit;
                count = count.saturating_add(1);
            }
        }
    }
    count
}

/// The pool to create for a list that needs `needed` blocks: a sixteenth more and 256 blocks of
/// headroom for later additions (so most reloads find room; one that does not grows the pool
/// without a gap, see `Filter::replace_ipv4_tables`), at least the historic default,
/// at most `ceiling` (the config's `ipv4_dir24_blocks`) or [`MAX_DIR24_BLOCKS`].
pub fn pool_size(needed: u32, ceiling: Option<u32>) -> u32 {
    let want = needed
        .saturating_add(needed / 16)
        .saturating_add(256)
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
        let long = Mapped::new(long, "GK_DIR24_LONG")?;
        let entries = Mapped::<u64>::new(entries, "GK_ENTRY")?;
        let blocks = u32::try_from(long.len / 256).unwrap_or(u32::MAX);
        let registry = entries.len >= entry_map_len(blocks) as usize;
        Ok(Some(Dir24 {
            tbl24: Mapped::new(tbl24, "GK_DIR24")?,
            long,
            entries,
            registry,
            free_blocks: None,
            next_block_word: 0,
            next_id: 0,
            retired: VecDeque::new(),
        }))
    }

    /// Forgets what this process learnt about free blocks (after the tables were overwritten by
    /// a copy).
    pub fn forget_free_blocks(&mut self) {
        self.free_blocks = None;
        self.next_block_word = 0;
        self.retired.clear();
    }

    /// Unmaps the tables from this process (they are mapped again, a window at a time, when
    /// next used): a daemon at rest does not hold a copy of them in its resident memory.
    pub fn release(&self) {
        self.tbl24.release();
        self.long.release();
        self.entries.release();
    }

    /// Number of second-level blocks.
    pub fn blocks(&self) -> usize {
        self.long.len / 256
    }

    /// Whether the entry table records each id's network (see [`Dir24`]).
    pub fn has_registry(&self) -> bool {
        self.registry
    }

    /// Reserves an entry id for `net` and records its network.
    pub fn alloc_id(&mut self, net: Ipv4Net) -> anyhow::Result<u32> {
        let total = self.entries.len.min(IDS);
        for step in 0..total {
            let id = (self.next_id + step) % total;
            if self.entries.load(id) == 0 {
                if self.registry {
                    let bits = u64::from(u32::from(net.network())) << 8;
                    self.entries
                        .store(IDS + id, NET_SET | bits | u64::from(net.prefix_len()));
                }
                self.entries
                    .store(id, (u64::from(net.prefix_len()) + 1) << ENTRY_LEN_SHIFT);
                self.next_id = id + 1;
                return u32::try_from(id).context("entry id out of range");
            }
        }
        bail!("the allowlist is full ({total} entries)")
    }

    /// Writes the registry (networks, block bitmap) for tables made without it: `ids` are the
    /// trie's `(id, network)` pairs, the bitmap comes from one scan of the first level.
    pub fn rebuild_registry(&mut self, ids: &[(u32, Ipv4Net)]) {
        if !self.registry {
            return;
        }
        for &(id, net) in ids {
            if (id as usize) < IDS {
                let bits = u64::from(u32::from(net.network())) << 8;
                self.entries.store(
                    IDS + id as usize,
                    NET_SET | bits | u64::from(net.prefix_len()),
                );
            }
        }
        for slot in 0..self.tbl24.len {
            let value = self.tbl24.load(slot);
            if value & LONG_FLAG != 0 && ((value & !LONG_FLAG) as usize) < self.blocks() {
                self.mark_block(value & !LONG_FLAG, true);
            }
        }
    }

    /// Entry ids in use: the number of IPv4 entries.
    pub fn entries_in_use(&self) -> usize {
        (0..self.entries.len.min(IDS))
            .filter(|&id| self.entries.load(id) != 0)
            .count()
    }

    /// Releases an entry id.
    pub fn free_id(&mut self, id: u32) {
        let id = id as usize;
        if id < self.entries.len.min(IDS) {
            self.entries.store(id, 0);
            if self.registry {
                self.entries.store(IDS + id, 0);
            }
        }
    }

    /// Every entry as `(id, network, DIR-24-8 hits)`, by id; `None` without the registry.
    pub fn registered(&self) -> Option<impl Iterator<Item = (u32, Ipv4Net, u64)> + '_> {
        if !self.registry {
            return None;
        }
        Some((0..IDS).filter_map(move |id| {
            let value = self.entries.load(id);
            if value == 0 {
                return None;
            }
            let net = self.entries.load(IDS + id);
            if net & NET_SET == 0 {
                return None;
            }
            let len = u8::try_from(net & 0xff).ok()?;
            let addr = Ipv4Addr::from(u32::try_from((net >> 8) & 0xffff_ffff).ok()?);
            let net = Ipv4Net::new(addr, len).ok()?;
            Some((u32::try_from(id).ok()?, net, value & ENTRY_HITS_MASK))
        }))
    }

    /// Prefix length of entry `id`, if the id is in use.
    pub fn prefix_len(&self, id: u32) -> Option<u8> {
        let id = id as usize;
        if id >= self.entries.len.min(IDS) {
            return None;
        }
        let len = self.entries.load(id) >> ENTRY_LEN_SHIFT;
        (len != 0).then(|| u8::try_from(len - 1).unwrap_or(u8::MAX))
    }

    /// Segments admitted through entry `id` by the DIR-24-8 lookup.
    pub fn hits(&self, id: u32) -> u64 {
        let id = id as usize;
        if id >= self.entries.len.min(IDS) {
            return 0;
        }
        self.entries.load(id) & ENTRY_HITS_MASK
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
                let current = self.tbl24.load(slot as usize);
                if current & LONG_FLAG != 0 {
                    self.fill_block(current & !LONG_FLAG, 0, 256, |d, old| {
                        d.yields_to(old, len).then_some(value)
                    });
                } else if self.yields_to(current, len) {
                    self.tbl24.store(slot as usize, value);
                }
            }
            return Ok(());
        }
        let slot = (start >> 8) as usize;
        let current = self.tbl24.load(slot);
        let block = if current & LONG_FLAG != 0 {
            current & !LONG_FLAG
        } else {
            // A new block inherits the /24's value for all its addresses, then is hooked in.
            let block = self.take_block().ok_or(OutOfBlocks {
                net,
                blocks: self.blocks(),
            })?;
            self.fill_block(block, 0, 256, |_, _| Some(current));
            self.tbl24.store(slot, LONG_FLAG | block);
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
            let current = self.tbl24.load(slot as usize);
            if current & LONG_FLAG != 0 {
                let block = current & !LONG_FLAG;
                self.fill_block(block, offset, in_block, |_, old| {
                    (old == value).then_some(replacement)
                });
                self.collapse(slot as usize, block);
            } else if current == value {
                self.tbl24.store(slot as usize, replacement);
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
        // `f` reads the entry table only, never this mapping (see `with_run`).
        self.long
            .with_run(block as usize * 256 + offset, count, |cells| {
                for cell in cells {
                    let old = cell.load(Ordering::Acquire);
                    if let Some(new) = f(self, old)
                        && new != old
                    {
                        cell.store(new, Ordering::Release);
                    }
                }
            });
    }

    /// If every address of `block` resolves the same way, points the /24 at that value directly
    /// and retires the block.
    fn collapse(&mut self, slot: usize, block: u32) {
        let uniform = self.long.with_run(block as usize * 256, 256, |cells| {
            let first = cells[0].load(Ordering::Acquire);
            cells
                .iter()
                .all(|cell| cell.load(Ordering::Acquire) == first)
                .then_some(first)
        });
        if let Some(first) = uniform {
            self.tbl24.store(slot, first);
            // Free for other processes from now on (they start later than the grace period);
            // this process keeps it aside until the grace period is over.
            self.mark_block(block, false);
            self.retired.push_back((block, Instant::now()));
        }
    }

    fn take_block(&mut self) -> Option<u32> {
        if self
            .retired
            .front()
            .is_some_and(|(_, when)| when.elapsed() >= BLOCK_GRACE)
        {
            let block = self.retired.pop_front().map(|(block, _)| block)?;
            self.mark_block(block, true);
            return Some(block);
        }
        if self.registry {
            let block = self.free_block_from_bitmap()?;
            self.mark_block(block, true);
            return Some(block);
        }
        if self.free_blocks.is_none() {
            self.free_blocks = Some(self.scan_free_blocks());
        }
        self.free_blocks.as_mut()?.pop()
    }

    /// Records in the bitmap whether `block` is in use (nothing without the registry).
    fn mark_block(&self, block: u32, used: bool) {
        if !self.registry {
            return;
        }
        let index = 2 * IDS + block as usize / 64;
        let bit = 1u64 << (block % 64);
        let word = self.entries.load(index);
        self.entries
            .store(index, if used { word | bit } else { word & !bit });
    }

    /// The lowest block the bitmap marks free that this process did not retire just now.
    fn free_block_from_bitmap(&mut self) -> Option<u32> {
        let blocks = self.blocks();
        let words = blocks.div_ceil(64);
        for step in 0..words {
            let word_index = (self.next_block_word + step) % words;
            let mut free = !self.entries.load(2 * IDS + word_index);
            while free != 0 {
                let bit = free.trailing_zeros() as usize;
                free &= free - 1;
                let block = word_index * 64 + bit;
                if block >= blocks {
                    break;
                }
                let block = u32::try_from(block).ok()?;
                if self.retired.iter().any(|(b, _)| *b == block) {
                    continue;
                }
                self.next_block_word = word_index;
                return Some(block);
            }
        }
        None
    }

    /// The blocks no /24 points to, highest first (so they are handed out lowest first), by one
    /// scan of the first level.
    fn scan_free_blocks(&self) -> Vec<u32> {
        let blocks = self.blocks();
        let mut used = vec![false; blocks];
        for slot in 0..self.tbl24.len {
            let value = self.tbl24.load(slot);
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

    /// Whether an entry covers any address of /24 number `slot` (`addr >> 8`): a block is hooked
    /// in only while it holds an entry, so a first-level value other than NONE says so.
    pub fn covers_24(&self, slot: u32) -> bool {
        (slot as usize) < self.tbl24.len && self.tbl24.load(slot as usize) != NONE
    }

    /// The table value for `addr`, as the program computes it (for tests).
    pub fn lookup(&self, addr: u32) -> u32 {
        let first = self.tbl24.load((addr >> 8) as usize);
        if first & LONG_FLAG == 0 {
            return first;
        }
        let index = ((first & !LONG_FLAG) as usize) * 256 + (addr & 0xff) as usize;
        if index >= self.long.len {
            return NONE;
        }
        self.long.load(index)
    }
}
