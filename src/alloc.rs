//! A caching host allocator: large blocks freed by one step are handed to the next.
//!
//! Why: a training step, or a memory-bound op run in a loop, asks for outputs of the same sizes
//! again and again. Under the system allocator (glibc) every block above its mmap threshold
//! (at most 32 MiB, often much less) is mapped fresh: the first touch of each 4 KiB page faults
//! and the kernel zeroes it, and `free` unmaps it again with a TLB shootdown. On the 2-core
//! development machine a fresh 128 MiB output makes a copy ~2.5x slower than the copy into
//! memory that is already mapped (docs/PERF.md, session 8). This allocator keeps blocks of at
//! least [`THRESHOLD`] bytes when they are freed and hands them back for the next request of
//! the same size class, the way PyTorch's CUDA caching allocator does for device memory.
//!
//! Install it in a binary with two lines (the `tessera` binary, the examples and the
//! benchmarks do; the library itself never chooses the allocator for its users):
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOC: tessera::alloc::CachingAllocator = tessera::alloc::CachingAllocator::new();
//! ```
//!
//! The rules:
//! - Blocks below [`THRESHOLD`] or with an alignment above a page go straight to the system
//!   allocator (glibc's arenas already reuse small blocks well).
//! - A large request is rounded up to its size class (eight classes per power of two, so at
//!   most 12.5% of address space is wasted, and the rounded tail is never touched, so it costs
//!   no memory) and served from a cached block of that class when there is one, the most
//!   recently freed first (its pages are the likeliest still in cache).
//! - Fresh large blocks are page aligned and, on Linux, advised as transparent huge pages, so a
//!   first touch faults once per 2 MiB instead of once per 4 KiB.
//! - At most [`CachingAllocator::limit`] bytes are kept (1 GiB unless set; 0 turns caching
//!   off); past it the least recently freed blocks go back to the system first. So a process
//!   holds at most its live memory plus the limit.
//! - `alloc_zeroed` on a cached block zeroes the bytes asked for, as the contract requires.
//!
//! Nothing here allocates while holding the lock: the cache is a fixed array of slots.
//! Blocks released past the limit go back to `System` under the lock (rare: only on overflow).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// glibc's malloc serves big blocks with fresh `mmap`s and unmaps them (or trims the heap)
/// on free, so every training step faults its activations' pages in again and the kernel
/// zeroes them: 134k page faults in 80 steps of the demo's U-Net, 8% of its CPU time
/// (docs/PERF.md, session 6). Serving blocks up to 32 MiB (glibc's largest mmap threshold)
/// from the heap and never trimming it below 1 GiB keeps freed blocks for reuse. Peak
/// memory is what the process held at its peak either way.
///
/// Complements [`CachingAllocator`], which keeps blocks of at least [`THRESHOLD`]: this keeps
/// the smaller ones glibc serves. Call it once at start-up, before other threads exist (the
/// `tessera` binary and the timing examples do, so the examples measure what the binary runs).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn keep_freed_memory() {
    extern "C" {
        fn mallopt(param: i32, value: i32) -> i32;
    }
    const M_TRIM_THRESHOLD: i32 = -1;
    const M_MMAP_THRESHOLD: i32 = -3;
    // SAFETY: mallopt only sets allocator parameters (glibc takes its arena lock for it), and
    // a refused value (return 0) leaves glibc's default in place.
    unsafe {
        mallopt(M_MMAP_THRESHOLD, 32 << 20);
        mallopt(M_TRIM_THRESHOLD, 1 << 30);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn keep_freed_memory() {}

/// Requests of at least this many bytes are cached.
pub const THRESHOLD: usize = 1 << 20;
/// Blocks are page aligned; a request with a larger alignment bypasses the cache.
const PAGE: usize = 4096;
/// Transparent huge page size on x86-64 and most aarch64 kernels.
const HUGE_PAGE: usize = 2 << 20;
/// How many freed blocks the cache holds at once.
const SLOTS: usize = 256;
const DEFAULT_LIMIT: usize = 1 << 30;

/// The size class of a request of `size >= THRESHOLD` bytes: `size` rounded up to a multiple
/// of an eighth of the power of two below it (and of a page).
pub fn size_class(size: usize) -> usize {
    let pow2_below = 1usize << (usize::BITS - 1 - size.leading_zeros());
    let step = (pow2_below / 8).max(PAGE);
    size.div_ceil(step) * step
}

#[derive(Clone, Copy)]
struct Slot {
    /// Address of the block; 0 when the slot is empty.
    addr: usize,
    class: usize,
    /// When it was freed, in frees since start-up (least recently freed go first).
    freed_at: u64,
}

const EMPTY: Slot = Slot {
    addr: 0,
    class: 0,
    freed_at: 0,
};

struct Cache {
    slots: [Slot; SLOTS],
    frees: u64,
}

/// Counters for reports and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Large requests served from the cache.
    pub hits: u64,
    /// Large requests that took a fresh block from the system.
    pub misses: u64,
    /// Bytes held in cached (freed, not yet reused) blocks right now.
    pub cached_bytes: usize,
}

/// See the module docs.
pub struct CachingAllocator {
    cache: Mutex<Cache>,
    limit: AtomicUsize,
    cached_bytes: AtomicUsize,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Default for CachingAllocator {
    fn default() -> Self {
        Self::new()
    }
}

impl CachingAllocator {
    pub const fn new() -> Self {
        CachingAllocator {
            cache: Mutex::new(Cache {
                slots: [EMPTY; SLOTS],
                frees: 0,
            }),
            limit: AtomicUsize::new(DEFAULT_LIMIT),
            cached_bytes: AtomicUsize::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The most bytes kept in freed blocks.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Sets the most bytes kept in freed blocks (0 turns caching off) and releases what no
    /// longer fits.
    pub fn set_limit(&self, bytes: usize) {
        self.limit.store(bytes, Ordering::Relaxed);
        self.evict_down_to(bytes);
    }

    /// Reads `TESSERA_HOST_CACHE_MB` (whole MiB) if set; call it once at start-up, outside any
    /// allocation. Returns the limit in force.
    pub fn limit_from_env(&self) -> usize {
        if let Some(mb) = std::env::var("TESSERA_HOST_CACHE_MB")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
        {
            self.set_limit(mb << 20);
        }
        self.limit()
    }

    /// Gives every cached block back to the system.
    pub fn release_cached(&self) {
        self.evict_down_to(0);
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            cached_bytes: self.cached_bytes.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        // Nothing panics while the lock is held, but never turn a poisoned lock into a panic
        // inside the allocator.
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn cacheable(layout: Layout) -> bool {
        layout.size() >= THRESHOLD && layout.align() <= PAGE
    }

    fn block_layout(class: usize) -> Layout {
        // A class is a multiple of the page size and far below isize::MAX for any real request.
        Layout::from_size_align(class, PAGE).expect("size class fits a Layout")
    }

    /// The most recently freed cached block of `class`, if any.
    fn take(&self, class: usize) -> Option<*mut u8> {
        let mut cache = self.lock();
        let best = cache
            .slots
            .iter_mut()
            .filter(|s| s.addr != 0 && s.class == class)
            .max_by_key(|s| s.freed_at)?;
        let addr = best.addr;
        *best = EMPTY;
        self.cached_bytes.fetch_sub(class, Ordering::Relaxed);
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(addr as *mut u8)
    }

    /// A new block from the system, advised as huge pages where that is possible.
    unsafe fn fresh(&self, class: usize, zeroed: bool) -> *mut u8 {
        self.misses.fetch_add(1, Ordering::Relaxed);
        let layout = Self::block_layout(class);
        let p = if zeroed {
            System.alloc_zeroed(layout)
        } else {
            System.alloc(layout)
        };
        if !p.is_null() && class >= HUGE_PAGE {
            advise_huge_pages(p, class);
        }
        p
    }

    /// Keeps a freed block, releasing the least recently freed ones that no longer fit.
    unsafe fn put(&self, ptr: *mut u8, class: usize) {
        let limit = self.limit();
        if class > limit {
            System.dealloc(ptr, Self::block_layout(class));
            return;
        }
        let mut cache = self.lock();
        self.release_oldest_while(&mut cache, |held, full| full || held + class > limit);
        cache.frees += 1;
        let freed_at = cache.frees;
        let slot = cache
            .slots
            .iter_mut()
            .find(|s| s.addr == 0)
            .expect("room was made above");
        *slot = Slot {
            addr: ptr as usize,
            class,
            freed_at,
        };
        self.cached_bytes.fetch_add(class, Ordering::Relaxed);
    }

    fn evict_down_to(&self, bytes: usize) {
        let mut cache = self.lock();
        self.release_oldest_while(&mut cache, |held, _| held > bytes);
    }

    /// Gives the least recently freed blocks back to the system while `more(cached bytes,
    /// every slot taken)` holds. Runs under the lock: `System.dealloc` never re-enters this
    /// allocator, and releases only happen when the cache overflows.
    fn release_oldest_while(&self, cache: &mut Cache, more: impl Fn(usize, bool) -> bool) {
        loop {
            let held = self.cached_bytes.load(Ordering::Relaxed);
            let full = cache.slots.iter().all(|s| s.addr != 0);
            if !more(held, full) {
                return;
            }
            let Some(oldest) = cache
                .slots
                .iter_mut()
                .filter(|s| s.addr != 0)
                .min_by_key(|s| s.freed_at)
            else {
                return;
            };
            let Slot { addr, class, .. } = std::mem::replace(oldest, EMPTY);
            self.cached_bytes.fetch_sub(class, Ordering::Relaxed);
            // SAFETY: every cached block came from `System` with its class's layout.
            unsafe { System.dealloc(addr as *mut u8, Self::block_layout(class)) };
        }
    }
}

// SAFETY: large blocks are allocated with `block_layout(size_class(size))`, which is at least
// as large and as aligned as the request, and are returned to `System` with that same layout;
// a cached block is handed to one caller at a time (taken out of its slot under the lock).
// Everything else is forwarded to `System` unchanged.
unsafe impl GlobalAlloc for CachingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !Self::cacheable(layout) {
            return System.alloc(layout);
        }
        let class = size_class(layout.size());
        match self.take(class) {
            Some(p) => p,
            None => self.fresh(class, false),
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !Self::cacheable(layout) {
            return System.alloc_zeroed(layout);
        }
        let class = size_class(layout.size());
        match self.take(class) {
            Some(p) => {
                std::ptr::write_bytes(p, 0, layout.size());
                p
            }
            None => self.fresh(class, true),
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !Self::cacheable(layout) {
            return System.dealloc(ptr, layout);
        }
        self.put(ptr, size_class(layout.size()));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY (of the Layout): the caller guarantees new_size, rounded up to the alignment,
        // does not overflow isize.
        let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
        match (Self::cacheable(layout), Self::cacheable(new_layout)) {
            (false, false) => System.realloc(ptr, layout, new_size),
            (true, true) if size_class(layout.size()) == size_class(new_size) => ptr,
            _ => {
                let p = self.alloc(new_layout);
                if !p.is_null() {
                    std::ptr::copy_nonoverlapping(ptr, p, layout.size().min(new_size));
                    self.dealloc(ptr, layout);
                }
                p
            }
        }
    }
}

/// Asks the kernel to back `[p, p + len)` with transparent huge pages (Linux, `madvise` mode).
/// Advice only: failure changes nothing but speed.
#[cfg(target_os = "linux")]
unsafe fn advise_huge_pages(p: *mut u8, len: usize) {
    extern "C" {
        fn madvise(
            addr: *mut std::ffi::c_void,
            len: usize,
            advice: std::ffi::c_int,
        ) -> std::ffi::c_int;
    }
    const MADV_HUGEPAGE: std::ffi::c_int = 14;
    let _ = madvise(p.cast(), len, MADV_HUGEPAGE);
}

#[cfg(not(target_os = "linux"))]
unsafe fn advise_huge_pages(_p: *mut u8, _len: usize) {}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize) -> Layout {
        Layout::from_size_align(size, 8).unwrap()
    }

    #[test]
    fn size_classes_round_up_by_at_most_an_eighth() {
        for size in [
            THRESHOLD,
            THRESHOLD + 1,
            3 << 20,
            (128 << 20) + 12345,
            1 << 33,
        ] {
            let c = size_class(size);
            assert!(c >= size && c.is_multiple_of(PAGE), "{size} -> {c}");
            assert!((c - size) as f64 <= size as f64 / 8.0, "{size} -> {c}");
            assert_eq!(size_class(c), c, "a class is its own class");
        }
        assert_eq!(size_class(THRESHOLD + 1), THRESHOLD + THRESHOLD / 8);
    }

    #[test]
    fn a_freed_block_serves_the_next_request_of_its_class() {
        let a = CachingAllocator::new();
        unsafe {
            let p = a.alloc(layout(3 << 20));
            assert!(!p.is_null());
            std::ptr::write_bytes(p, 7, 3 << 20);
            a.dealloc(p, layout(3 << 20));
            assert_eq!(a.stats().cached_bytes, size_class(3 << 20));
            // Same class, slightly different size: the same block.
            let q = a.alloc(layout((3 << 20) - 100));
            assert_eq!(q, p);
            assert_eq!(a.stats().hits, 1);
            assert_eq!(a.stats().cached_bytes, 0);
            // Another class: a fresh block.
            let r = a.alloc(layout(8 << 20));
            assert_ne!(r, p);
            assert_eq!(a.stats().misses, 2);
            a.dealloc(q, layout((3 << 20) - 100));
            a.dealloc(r, layout(8 << 20));
        }
        a.release_cached();
        assert_eq!(a.stats().cached_bytes, 0);
    }

    #[test]
    fn alloc_zeroed_zeroes_a_reused_block() {
        let a = CachingAllocator::new();
        let n = 2 << 20;
        unsafe {
            let p = a.alloc(layout(n));
            std::ptr::write_bytes(p, 0xAB, n);
            a.dealloc(p, layout(n));
            let q = a.alloc_zeroed(layout(n));
            assert_eq!(q, p, "the block is reused");
            let bytes = std::slice::from_raw_parts(q, n);
            assert!(bytes.iter().all(|&b| b == 0));
            a.dealloc(q, layout(n));
        }
        a.release_cached();
    }

    #[test]
    fn small_and_over_aligned_requests_are_not_cached() {
        let a = CachingAllocator::new();
        unsafe {
            let p = a.alloc(layout(THRESHOLD - 1));
            a.dealloc(p, layout(THRESHOLD - 1));
            let big_align = Layout::from_size_align(4 << 20, 2 * PAGE).unwrap();
            let q = a.alloc(big_align);
            assert_eq!(q as usize % (2 * PAGE), 0);
            a.dealloc(q, big_align);
        }
        assert_eq!(
            a.stats(),
            CacheStats {
                hits: 0,
                misses: 0,
                cached_bytes: 0
            }
        );
    }

    #[test]
    fn the_limit_releases_the_least_recently_freed_first() {
        let a = CachingAllocator::new();
        a.set_limit(5 << 20);
        unsafe {
            let ps: Vec<*mut u8> = (0..3).map(|_| a.alloc(layout(2 << 20))).collect();
            for &p in &ps {
                a.dealloc(p, layout(2 << 20));
            }
            // Three 2 MiB blocks do not fit 5 MiB: the first freed went back to the system.
            assert_eq!(a.stats().cached_bytes, 4 << 20);
            let q = a.alloc(layout(2 << 20));
            assert_eq!(
                q, ps[2],
                "the most recently freed block is handed out first"
            );
            let r = a.alloc(layout(2 << 20));
            assert_eq!(r, ps[1]);
            a.dealloc(q, layout(2 << 20));
            a.dealloc(r, layout(2 << 20));
        }
        a.set_limit(0);
        assert_eq!(a.stats().cached_bytes, 0);
        unsafe {
            let p = a.alloc(layout(2 << 20));
            a.dealloc(p, layout(2 << 20));
        }
        assert_eq!(a.stats().cached_bytes, 0, "a zero limit caches nothing");
    }

    #[test]
    fn more_blocks_than_slots_release_the_oldest() {
        let a = CachingAllocator::new();
        let n = SLOTS + 5;
        unsafe {
            let ps: Vec<*mut u8> = (0..n).map(|_| a.alloc(layout(THRESHOLD))).collect();
            for &p in &ps {
                a.dealloc(p, layout(THRESHOLD));
            }
            assert_eq!(a.stats().cached_bytes, SLOTS * THRESHOLD);
        }
        a.release_cached();
    }

    #[test]
    fn realloc_keeps_the_contents() {
        let a = CachingAllocator::new();
        unsafe {
            // Small to large, large within its class, large to another class, large to small.
            let mut size = 1000;
            let mut p = a.alloc(layout(size));
            for i in 0..size {
                *p.add(i) = (i % 251) as u8;
            }
            for new_size in [(2 << 20) + 10, (2 << 20) + 20, 9 << 20, 500] {
                let q = a.realloc(p, layout(size), new_size);
                assert!(!q.is_null());
                if size_class(size) == size_class(new_size) && size >= THRESHOLD {
                    assert_eq!(q, p, "same class: resized in place");
                }
                let kept = size.min(new_size).min(1000);
                for i in 0..kept {
                    assert_eq!(
                        *q.add(i),
                        (i % 251) as u8,
                        "byte {i} after {size} -> {new_size}"
                    );
                }
                p = q;
                size = new_size;
            }
            a.dealloc(p, layout(size));
        }
        a.release_cached();
    }
}
