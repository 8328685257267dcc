//! The userspace half of the DIR-24-8 IPv4 lookup: keeps the memory-mapped tables exact for every
//! prefix length while the program reads them.
//!
//! Every change is a sequence of single aligned `u32` stores, each of which the program sees
//! whole, ordered so that no address is ever without the entry that should cover it: adding a
//! prefix only overwrites what a shorter (or no) prefix claimed; removing one hands its addresses
//! to its longest remaining ancestor; a new second-level block is filled before the first level
//! points to it; a block emptied back to one value (or to one /32 over nothing) is unhooked and
//! reused only after a grace period (a program run that read the old pointer may still be reading
//! it; runs last nanoseconds, the grace period is a second).
//!
//! A first-level entry is one of three things ([`First`]): the value of the whole /24 (`id + 1`
//! of the longest prefix of /24 or shorter covering it, or NONE); a single host
//! ([`gatekeeper_common::dir24::single`]: the /24 holds exactly one /32 and nothing covers the
//! rest of it, so its last octet and `id + 1` fit in the entry and no block is needed); or a
//! block of 256 values. Transitions, each a single store: NONE → single (a /32 added to an empty
//! /24); single → block (anything else added to that /24: the block is filled with the host and
//! NONE, then hooked); single → NONE (the host removed); block → single (a remove leaves one /32
//! over NONE: the block is retired as when it collapses to one value).

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
    dir24::{
        ENTRY_HITS_MASK, ENTRY_LEN_SHIFT, LONG_FLAG, NONE, SINGLE_FLAG, SINGLE_OCTET_SHIFT,
        SINGLE_VALUE_MASK, TBL24_ENTRIES, single,
    },
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

// A single-host entry must read as a block index past any pool to a program that predates it.
const _: () = assert!(MAX_DIR24_BLOCKS < gatekeeper_common::dir24::SINGLE_GUARD);

/// What a first-level entry says about its /24.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum First {
    /// Every address resolves to this (`id + 1`, or NONE).
    Whole(u32),
    /// Host `.octet` resolves to `value` (`id + 1`), every other address to NONE.
    Single { octet: u8, value: u32 },
    /// Each address resolves to its value in this second-level block.
    Block(u32),
}

impl First {
    fn of(entry: u32) -> First {
        if entry & SINGLE_FLAG != 0 {
            First::Single {
                octet: ((entry >> SINGLE_OCTET_SHIFT) & 0xff) as u8,
                value: entry & SINGLE_VALUE_MASK,
            }
        } else if entry & LONG_FLAG != 0 {
            First::Block(entry & !LONG_FLAG)
        } else {
            First::Whole(entry)
        }
    }
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

/// Second-level blocks a list of networks needs: one per /24 that holds a prefix longer than /24,
/// except a /24 whose only entry is one /32 that nothing shorter covers (a single-host entry).
/// A network listed twice counts once (a reload sizes the pool from the config and the live
/// entries together).
pub fn blocks_needed<'a>(nets: impl IntoIterator<Item = &'a ipnet::IpNet>) -> u32 {
    // One bit per /24 covered by a prefix of /24 or shorter (2 MiB, whose pages are only touched
    // where such prefixes are), and the longer prefixes as `network << 8 | len`, sorted: 8 bytes
    // per entry and one sort, before the daemon loads a million-entry list.
    let mut covered = vec![0u64; (TBL24_ENTRIES as usize).div_ceil(64)];
    let mut long = Vec::new();
    for net in nets {
        if let ipnet::IpNet::V4(v4) = net {
            let start = u32::from(v4.network());
            let len = v4.prefix_len();
            if len > 24 {
                long.push(u64::from(start) << 8 | u64::from(len));
            } else {
                mark_slots(&mut covered, start >> 8, 1 << (24 - len));
            }
        }
    }
    long.sort_unstable();
    long.dedup();
    let mut count = 0u32;
    // `key >> 16` is the /24 (`network >> 8`).
    for group in long.chunk_by(|a, b| a >> 16 == b >> 16) {
        let slot = (group[0] >> 16) as usize;
        let is_covered = covered[slot / 64] & 1 << (slot % 64) != 0;
        let single_host = group.len() == 1 && group[0] & 0xff == 32 && !is_covered;
        if !single_host {
            count = count.saturating_add(1);
        }
    }
    count
}

/// Sets bits `first..first + count` (a power of two, `first` a multiple of it).
fn mark_slots(bits: &mut [u64], first: u32, count: u32) {
    let (first, count) = (first as usize, count as usize);
    if count >= 64 {
        bits[first / 64..(first + count) / 64].fill(u64::MAX);
    } else {
        bits[first / 64] |= ((1u64 << count) - 1) << (first % 64);
    }
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

    /// Second-level blocks hooked in (the bitmap's count; retired blocks are not); `None`
    /// without the registry.
    pub fn blocks_in_use(&self) -> Option<usize> {
        self.registry.then(|| {
            (0..self.blocks().div_ceil(64))
                .map(|word| self.entries.load(2 * IDS + word).count_ones() as usize)
                .sum()
        })
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
            if let First::Block(block) = First::of(self.tbl24.load(slot))
                && (block as usize) < self.blocks()
            {
                self.mark_block(block, true);
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

    /// Makes every address of `net` resolve to entry `id` unless a longer prefix holds it. Fails
    /// with [`OutOfBlocks`] before changing anything when the pool lacks a block it needs.
    pub fn add(&mut self, net: Ipv4Net, id: u32) -> anyhow::Result<()> {
        let value = id + 1;
        let len = net.prefix_len();
        let start = u32::from(net.network());
        if len <= 24 {
            let first = start >> 8;
            let count = 1u32 << (24 - len);
            // Each single-host /24 under the prefix becomes a block (the host keeps its address,
            // the prefix takes the rest): all the blocks are had before anything changes.
            let singles = (first..first + count)
                .filter(|&slot| {
                    matches!(
                        First::of(self.tbl24.load(slot as usize)),
                        First::Single { .. }
                    )
                })
                .count();
            let mut spare = self.take_blocks(singles, net)?;
            for slot in first..first + count {
                let slot = slot as usize;
                let mut current = First::of(self.tbl24.load(slot));
                if let First::Single { octet, value: host } = current
                    && let Some(block) = spare.pop()
                {
                    self.hook_single_as_block(slot, block, octet, host);
                    current = First::Block(block);
                }
                match current {
                    First::Block(block) => self.fill_block(block, 0, 256, |d, old| {
                        d.yields_to(old, len).then_some(value)
                    }),
                    First::Whole(old) if self.yields_to(old, len) => self.tbl24.store(slot, value),
                    First::Whole(_) | First::Single { .. } => {}
                }
            }
            return Ok(());
        }
        let slot = (start >> 8) as usize;
        let offset = (start & 0xff) as usize;
        let block = match First::of(self.tbl24.load(slot)) {
            First::Block(block) => block,
            // A host alone in its /24: no block.
            First::Whole(NONE) if len == 32 => {
                self.tbl24.store(slot, single(offset as u8, value));
                return Ok(());
            }
            First::Single { octet, value: host } => {
                let block = self.take_blocks(1, net)?[0];
                self.hook_single_as_block(slot, block, octet, host);
                block
            }
            First::Whole(current) => {
                // A new block inherits the /24's value for all its addresses, then is hooked in.
                let block = self.take_blocks(1, net)?[0];
                self.fill_block(block, 0, 256, |_, _| Some(current));
                self.tbl24.store(slot, LONG_FLAG | block);
                block
            }
        };
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
            let slot = slot as usize;
            match First::of(self.tbl24.load(slot)) {
                First::Block(block) => {
                    self.fill_block(block, offset, in_block, |_, old| {
                        (old == value).then_some(replacement)
                    });
                    self.collapse(slot, block);
                }
                // The host goes to its replacement, the rest of the /24 stays NONE (nothing
                // covers it, or this would not be a single-host entry): NONE in practice.
                First::Single { octet, value: host } if host == value => {
                    let entry = if replacement == NONE {
                        NONE
                    } else {
                        single(octet, replacement)
                    };
                    self.tbl24.store(slot, entry);
                }
                First::Whole(current) if current == value => self.tbl24.store(slot, replacement),
                First::Whole(_) | First::Single { .. } => {}
            }
        }
    }

    /// Points the /24 `slot`, a single-host entry, at `block` filled with the same: the host's
    /// value at `octet`, NONE elsewhere (written whole: a reused block holds old values).
    fn hook_single_as_block(&self, slot: usize, block: u32, octet: u8, host: u32) {
        self.long.with_run(block as usize * 256, 256, |cells| {
            for (i, cell) in cells.iter().enumerate() {
                let want = if i == usize::from(octet) { host } else { NONE };
                if cell.load(Ordering::Acquire) != want {
                    cell.store(want, Ordering::Release);
                }
            }
        });
        self.tbl24.store(slot, LONG_FLAG | block);
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
    /// and retires the block; the same if only one address resolves to anything and that is a
    /// /32's (a single-host entry).
    fn collapse(&mut self, slot: usize, block: u32) {
        let shape = self.long.with_run(block as usize * 256, 256, |cells| {
            let first = cells[0].load(Ordering::Acquire);
            if cells
                .iter()
                .all(|cell| cell.load(Ordering::Acquire) == first)
            {
                return Some(First::Whole(first));
            }
            let mut held = cells
                .iter()
                .enumerate()
                .map(|(i, cell)| (i, cell.load(Ordering::Acquire)))
                .filter(|&(_, value)| value != NONE);
            match (held.next(), held.next()) {
                (Some((octet, value)), None) => Some(First::Single {
                    octet: u8::try_from(octet).ok()?,
                    value,
                }),
                _ => None,
            }
        });
        let entry = match shape {
            Some(First::Whole(value)) => value,
            Some(First::Single { octet, value }) if self.prefix_len(value - 1) == Some(32) => {
                single(octet, value)
            }
            _ => return,
        };
        self.tbl24.store(slot, entry);
        // Free for other processes from now on (they start later than the grace period); this
        // process keeps it aside until the grace period is over.
        self.mark_block(block, false);
        self.retired.push_back((block, Instant::now()));
    }

    /// `count` free blocks for an add of `net`, or none at all and [`OutOfBlocks`].
    fn take_blocks(&mut self, count: usize, net: Ipv4Net) -> Result<Vec<u32>, OutOfBlocks> {
        let mut taken = Vec::with_capacity(count);
        while taken.len() < count {
            match self.take_block() {
                Some(block) => taken.push(block),
                None => {
                    for block in taken {
                        self.give_back(block);
                    }
                    return Err(OutOfBlocks {
                        net,
                        blocks: self.blocks(),
                    });
                }
            }
        }
        Ok(taken)
    }

    /// Returns a block [`Dir24::take_block`] gave and nothing hooked in.
    fn give_back(&mut self, block: u32) {
        self.mark_block(block, false);
        if let Some(free) = &mut self.free_blocks {
            free.push(block);
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
            if let First::Block(block) = First::of(self.tbl24.load(slot))
                && let Some(u) = used.get_mut(block as usize)
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
        let block = match First::of(self.tbl24.load((addr >> 8) as usize)) {
            First::Whole(value) => return value,
            First::Single { octet, value } => {
                return if addr & 0xff == u32::from(octet) {
                    value
                } else {
                    NONE
                };
            }
            First::Block(block) => block,
        };
        let index = block as usize * 256 + (addr & 0xff) as usize;
        if index >= self.long.len {
            return NONE;
        }
        self.long.load(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file of `bytes` zero bytes in memory, mapped as a map's values would be.
    fn memfd<T>(name: &std::ffi::CStr, bytes: usize) -> Mapped<T> {
        use std::os::fd::{FromRawFd as _, OwnedFd};
        // SAFETY: a fresh memfd, owned from here on.
        let fd = unsafe {
            let fd = libc::memfd_create(name.as_ptr(), 0);
            assert!(fd >= 0, "memfd_create");
            assert_eq!(libc::ftruncate(fd, bytes as libc::off_t), 0, "ftruncate");
            OwnedFd::from_raw_fd(fd)
        };
        Mapped::from_fd(fd, bytes)
    }

    impl Dir24 {
        /// Tables of `blocks` blocks in plain memory (what the kernel's maps would hold, without
        /// the program), with the registry.
        fn anonymous(blocks: u32) -> Dir24 {
            Dir24 {
                tbl24: memfd(c"tbl24", TBL24_ENTRIES as usize * 4),
                long: memfd(c"long", blocks as usize * 1024),
                entries: memfd(c"entries", entry_map_len(blocks) as usize * 8),
                registry: true,
                free_blocks: None,
                next_block_word: 0,
                next_id: 0,
                retired: VecDeque::new(),
            }
        }

        fn first(&self, net: Ipv4Net) -> First {
            First::of(self.tbl24.load((u32::from(net.network()) >> 8) as usize))
        }
    }

    /// The entries added so far, to add and remove by network as `FilterMaps` does.
    struct Tables {
        dir24: Dir24,
        ids: Vec<(Ipv4Net, u32)>,
    }

    impl Tables {
        fn new(blocks: u32) -> Tables {
            Tables {
                dir24: Dir24::anonymous(blocks),
                ids: Vec::new(),
            }
        }

        fn add(&mut self, s: &str) -> anyhow::Result<()> {
            let net = net(s);
            let id = self.dir24.alloc_id(net).expect("id");
            if let Err(err) = self.dir24.add(net, id) {
                self.dir24.free_id(id);
                return Err(err);
            }
            self.ids.push((net, id));
            Ok(())
        }

        fn remove(&mut self, s: &str) {
            let net = net(s);
            let at = self
                .ids
                .iter()
                .position(|(n, _)| *n == net)
                .expect("listed");
            let (_, id) = self.ids.swap_remove(at);
            let replacement = self.longest(|n| n.contains(&net));
            self.dir24.remove(net, id, replacement);
            self.dir24.free_id(id);
        }

        /// `id + 1` of the longest entry `covers` accepts, or NONE.
        fn longest(&self, covers: impl Fn(&Ipv4Net) -> bool) -> u32 {
            self.ids
                .iter()
                .filter(|(n, _)| covers(n))
                .max_by_key(|(n, _)| n.prefix_len())
                .map_or(NONE, |(_, id)| id + 1)
        }

        /// `id + 1` of entry `s`, or NONE.
        fn value(&self, s: &str) -> u32 {
            self.ids
                .iter()
                .find(|(n, _)| *n == net(s))
                .map_or(NONE, |(_, id)| id + 1)
        }

        /// Every address of the /24 of `s` resolves to its longest entry.
        fn assert_exact(&self, s: &str, step: &str) {
            let base = u32::from(net(s).network()) & !0xff;
            for addr in base..=base + 0xff {
                let ip = Ipv4Addr::from(addr);
                let want = self.longest(|n| n.contains(&ip));
                assert_eq!(self.dir24.lookup(addr), want, "{step}: {ip}");
            }
        }
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("net")
    }

    #[test]
    fn a_host_alone_in_its_24_needs_no_block_and_goes_back_to_none() {
        let mut t = Tables::new(4);
        t.add("198.51.100.7/32").expect("add");
        let value = t.value("198.51.100.7/32");
        assert_eq!(
            t.dir24.first(net("198.51.100.0/24")),
            First::Single { octet: 7, value }
        );
        assert_eq!(t.dir24.blocks_in_use(), Some(0));
        t.assert_exact("198.51.100.0/24", "one host");
        t.remove("198.51.100.7/32");
        assert_eq!(t.dir24.first(net("198.51.100.0/24")), First::Whole(NONE));
        t.assert_exact("198.51.100.0/24", "removed");
    }

    /// single → block (a second host, a /28 beside the host, a /29 over it) → single when the
    /// other goes.
    #[test]
    fn a_second_long_prefix_makes_a_block_that_falls_back_to_single() {
        for other in ["198.51.100.200/32", "198.51.100.16/28", "198.51.100.0/29"] {
            second_long_prefix(other);
        }
    }

    fn second_long_prefix(other: &str) {
        let mut t = Tables::new(4);
        t.add("198.51.100.7/32").expect("add");
        t.add(other).expect("add the second");
        assert!(matches!(
            t.dir24.first(net("198.51.100.0/24")),
            First::Block(_)
        ));
        assert_eq!(t.dir24.blocks_in_use(), Some(1));
        t.assert_exact("198.51.100.0/24", "host and another");
        t.remove(other);
        let value = t.value("198.51.100.7/32");
        assert_eq!(
            t.dir24.first(net("198.51.100.0/24")),
            First::Single { octet: 7, value }
        );
        assert_eq!(t.dir24.blocks_in_use(), Some(0), "the block is free again");
        t.assert_exact("198.51.100.0/24", "back to the host");
        // The retired block waits out its grace period; another block serves the next one.
        t.add(other).expect("add again");
        t.assert_exact("198.51.100.0/24", "again");
    }

    /// A shorter prefix over single hosts takes a block per /24 for the rest of it, and leaves
    /// them single again when it goes.
    #[test]
    fn a_shorter_prefix_over_single_hosts_gives_them_blocks() {
        let mut t = Tables::new(4);
        t.add("198.51.100.7/32").expect("add");
        t.add("198.51.101.9/32").expect("add");
        t.add("198.51.0.0/16").expect("add the /16");
        assert_eq!(t.dir24.blocks_in_use(), Some(2));
        for s in ["198.51.100.0/24", "198.51.101.0/24", "198.51.102.0/24"] {
            t.assert_exact(s, "under the /16");
        }
        assert_eq!(
            t.dir24.first(net("198.51.102.0/24")),
            First::Whole(t.value("198.51.0.0/16"))
        );
        t.remove("198.51.0.0/16");
        assert!(matches!(
            t.dir24.first(net("198.51.100.0/24")),
            First::Single { octet: 7, .. }
        ));
        assert_eq!(t.dir24.blocks_in_use(), Some(0));
        t.assert_exact("198.51.101.0/24", "the /16 removed");
        // Host removed under the /16: the /24 goes back to the /16 whole.
        t.add("198.51.0.0/16").expect("add the /16 again");
        t.remove("198.51.100.7/32");
        assert_eq!(
            t.dir24.first(net("198.51.100.0/24")),
            First::Whole(t.value("198.51.0.0/16"))
        );
        t.assert_exact("198.51.100.0/24", "host removed under the /16");
    }

    /// A /32 added to a /24 a shorter prefix covers gets a block (the rest is the prefix's).
    #[test]
    fn a_host_under_a_shorter_prefix_takes_a_block() {
        let mut t = Tables::new(4);
        t.add("198.51.100.0/24").expect("add");
        t.add("198.51.100.7/32").expect("add");
        assert!(matches!(
            t.dir24.first(net("198.51.100.0/24")),
            First::Block(_)
        ));
        t.assert_exact("198.51.100.0/24", "host under its /24");
        t.remove("198.51.100.0/24");
        assert!(matches!(
            t.dir24.first(net("198.51.100.0/24")),
            First::Single { octet: 7, .. }
        ));
        t.assert_exact("198.51.100.0/24", "the /24 removed");
    }

    /// Too few blocks for every single host a shorter prefix covers: the add fails and nothing
    /// changed, not one /24 half converted.
    #[test]
    fn an_add_short_of_blocks_changes_nothing() {
        let mut t = Tables::new(1);
        t.add("198.51.100.7/32").expect("add");
        t.add("198.51.101.9/32").expect("add");
        let err = t
            .add("198.51.0.0/16")
            .expect_err("two blocks needed, one in the pool");
        assert!(err.downcast_ref::<OutOfBlocks>().is_some(), "{err:#}");
        assert_eq!(t.dir24.blocks_in_use(), Some(0));
        for s in ["198.51.100.0/24", "198.51.101.0/24", "198.51.102.0/24"] {
            t.assert_exact(s, "after the failed add");
        }
        t.add("198.51.101.0/24")
            .expect("one block is enough for a /24");
        t.assert_exact("198.51.101.0/24", "the /24 over a host");
    }

    #[test]
    fn blocks_needed_counts_no_block_for_a_host_alone_in_its_24() {
        let count = |nets: &[&str]| {
            let nets: Vec<ipnet::IpNet> = nets.iter().map(|s| s.parse().expect("net")).collect();
            blocks_needed(&nets)
        };
        assert_eq!(count(&["198.51.100.7/32", "203.0.113.9/32"]), 0);
        assert_eq!(
            count(&["198.51.100.7/32", "198.51.100.7/32"]),
            0,
            "listed twice"
        );
        assert_eq!(count(&["198.51.100.7/32", "198.51.100.8/32"]), 1);
        assert_eq!(count(&["198.51.100.0/25"]), 1);
        assert_eq!(count(&["198.51.100.7/32", "198.51.0.0/16"]), 1, "covered");
        assert_eq!(count(&["198.51.100.7/32", "198.51.100.0/24"]), 1, "covered");
        assert_eq!(count(&["198.51.100.7/32", "0.0.0.0/0"]), 1, "covered");
        assert_eq!(count(&["198.51.100.7/32", "198.51.101.0/24"]), 0, "beside");
        assert_eq!(
            count(&["198.51.100.7/32", "198.51.100.0/22", "2001:db8::1/128"]),
            1
        );
        assert_eq!(count(&["198.51.100.7/32", "198.51.96.0/22"]), 0, "beside");
    }

    /// A program that knows only blocks reads a single-host entry as a block past any pool (and
    /// denies) instead of reading another /24's block.
    #[test]
    fn an_older_program_reads_a_single_host_entry_as_no_block() {
        for octet in [0u8, 1, 0x80, 0xff] {
            for value in [1, 2, 0xff_ffff & SINGLE_VALUE_MASK, ALLOWLIST_CAPACITY] {
                let entry = single(octet, value);
                assert_ne!(entry & LONG_FLAG, 0);
                // The old program: `((entry & !LONG_FLAG) << 8) | (addr & 0xff)`, in u32.
                let index = (entry & !LONG_FLAG) << 8;
                assert!(u64::from(index) >= u64::from(MAX_DIR24_BLOCKS) * 256);
                assert_eq!(
                    First::of(entry),
                    First::Single { octet, value },
                    "round trip"
                );
            }
        }
    }
}
