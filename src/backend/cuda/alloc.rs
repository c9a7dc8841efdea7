//! A caching allocator for device memory, one per GPU.
//!
//! `cuMemAlloc`/`cuMemFree` synchronize the device and cost tens of microseconds, far more
//! than most kernels, so freed blocks are kept and reused:
//!
//! - **Size classes.** A request is rounded up to a class: powers of two from 512 B up to
//!   1 MiB, above that multiples of an eighth of the next power of two (at least 2 MiB), so
//!   rounding wastes at most 12.5% on large blocks and blocks of one class are interchangeable.
//! - **Free lists.** A dropped buffer goes onto its class's free list; the next request of that
//!   class takes it back without calling the driver.
//! - **Stream-ordered frees.** Every kernel and copy of a device runs on its one stream, so a
//!   block freed on the host while kernels that use it are still queued can be handed to the
//!   next allocation at once: anything that writes the reused block is queued behind them.
//!   Only returning blocks to the driver ([`CachingAllocator::empty_cache`]) waits for the
//!   stream first.
//! - **Accounting.** Bytes held by live buffers (current and peak, by class size), bytes
//!   parked in free lists, driver calls and reuses.
//! - **Out of memory is an error.** When the driver refuses, the cache is emptied and the
//!   request retried once; a second refusal is an [`Error::Cuda`] saying how much was asked
//!   for and how much is in use.
//!
//! The policy is independent of the driver ([`RawMemory`]), so it is tested on the CPU.

use crate::{Error, Result};
use std::collections::HashMap;

/// Why the driver refused an allocation.
#[derive(Debug)]
pub enum RawError {
    OutOfMemory,
    Other(String),
}

/// The driver calls the allocator needs.
pub trait RawMemory {
    fn malloc(&mut self, bytes: usize) -> std::result::Result<u64, RawError>;
    /// Frees a block no queued work uses any more (the caller synchronized).
    fn free(&mut self, ptr: u64);
    /// Waits until all queued work on the stream is done.
    fn synchronize(&mut self) -> Result<()>;
}

/// Counters reported by `tessera info`, benchmarks and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocStats {
    /// Bytes (by class size) held by live buffers now.
    pub current_bytes: usize,
    /// The most `current_bytes` since start-up or the last reset.
    pub peak_bytes: usize,
    /// Bytes parked in free lists, ready for reuse.
    pub cached_bytes: usize,
    /// Blocks obtained from the driver.
    pub driver_allocs: u64,
    /// Requests served from a free list.
    pub reuses: u64,
}

const SMALL_LIMIT: usize = 1 << 20;
const MIN_CLASS: usize = 512;
const LARGE_GRANULE: usize = 2 << 20;

/// The size class of a request of `bytes` (0 for an empty request, which allocates nothing).
pub fn size_class(bytes: usize) -> usize {
    if bytes == 0 {
        return 0;
    }
    if bytes <= SMALL_LIMIT {
        return bytes.next_power_of_two().max(MIN_CLASS);
    }
    let step = (bytes
        .checked_next_power_of_two()
        .unwrap_or(usize::MAX / 2 + 1)
        / 8)
    .max(LARGE_GRANULE);
    bytes.div_ceil(step).saturating_mul(step)
}

#[derive(Debug, Default)]
pub struct CachingAllocator {
    free: HashMap<usize, Vec<u64>>,
    stats: AllocStats,
}

impl CachingAllocator {
    pub fn stats(&self) -> AllocStats {
        self.stats
    }
    pub fn reset_peak(&mut self) {
        self.stats.peak_bytes = self.stats.current_bytes;
    }

    /// A block of at least `bytes`: `(device pointer, class size)`. `what` names the device
    /// in the out-of-memory error.
    pub fn alloc(
        &mut self,
        bytes: usize,
        mem: &mut impl RawMemory,
        what: &str,
    ) -> Result<(u64, usize)> {
        let class = size_class(bytes);
        if class == 0 {
            return Ok((0, 0));
        }
        let ptr = if let Some(ptr) = self.free.get_mut(&class).and_then(Vec::pop) {
            self.stats.cached_bytes -= class;
            self.stats.reuses += 1;
            ptr
        } else {
            let ptr = match mem.malloc(class) {
                Ok(p) => p,
                Err(RawError::OutOfMemory) if self.stats.cached_bytes > 0 => {
                    self.empty_cache(mem)?;
                    mem.malloc(class)
                        .map_err(|e| self.oom_error(bytes, e, what))?
                }
                Err(e) => return Err(self.oom_error(bytes, e, what)),
            };
            self.stats.driver_allocs += 1;
            ptr
        };
        self.stats.current_bytes += class;
        self.stats.peak_bytes = self.stats.peak_bytes.max(self.stats.current_bytes);
        Ok((ptr, class))
    }

    fn oom_error(&self, bytes: usize, e: RawError, what: &str) -> Error {
        match e {
            RawError::OutOfMemory => Error::Cuda(format!(
                "out of memory on {what}: asked for {bytes} bytes ({} MiB) with {} MiB in use \
                 by tensors (the allocator's cache was emptied and the request retried)",
                bytes >> 20,
                self.stats.current_bytes >> 20
            )),
            RawError::Other(m) => {
                Error::Cuda(format!("allocating {bytes} bytes on {what} failed: {m}"))
            }
        }
    }

    /// Takes back a block of class `class` (no driver call: see the module note on ordering).
    pub fn free(&mut self, ptr: u64, class: usize) {
        if class == 0 {
            return;
        }
        self.stats.current_bytes -= class;
        self.stats.cached_bytes += class;
        self.free.entry(class).or_default().push(ptr);
    }

    /// Returns every cached block to the driver, after the queued work finished.
    pub fn empty_cache(&mut self, mem: &mut impl RawMemory) -> Result<()> {
        if self.stats.cached_bytes == 0 {
            return Ok(());
        }
        mem.synchronize()?;
        for (_, ptrs) in self.free.drain() {
            for p in ptrs {
                mem.free(p);
            }
        }
        self.stats.cached_bytes = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake device with `capacity` bytes.
    struct FakeMemory {
        capacity: usize,
        used: HashMap<u64, usize>,
        next: u64,
        syncs: usize,
    }
    impl FakeMemory {
        fn new(capacity: usize) -> Self {
            FakeMemory {
                capacity,
                used: HashMap::new(),
                next: 0x1000,
                syncs: 0,
            }
        }
        fn in_use(&self) -> usize {
            self.used.values().sum()
        }
    }
    impl RawMemory for FakeMemory {
        fn malloc(&mut self, bytes: usize) -> std::result::Result<u64, RawError> {
            if self.in_use() + bytes > self.capacity {
                return Err(RawError::OutOfMemory);
            }
            self.next += bytes as u64;
            self.used.insert(self.next, bytes);
            Ok(self.next)
        }
        fn free(&mut self, ptr: u64) {
            self.used.remove(&ptr).expect("double free");
        }
        fn synchronize(&mut self) -> Result<()> {
            self.syncs += 1;
            Ok(())
        }
    }

    #[test]
    fn size_classes_round_up_with_bounded_waste() {
        assert_eq!(size_class(0), 0);
        assert_eq!(size_class(1), 512);
        assert_eq!(size_class(513), 1024);
        assert_eq!(size_class(1 << 20), 1 << 20);
        for bytes in [(1 << 20) + 1, 3 << 20, 100_000_000, 1 << 40] {
            let c = size_class(bytes);
            assert!(
                c >= bytes && c - bytes <= (bytes / 8).max(LARGE_GRANULE),
                "{bytes} -> {c}"
            );
        }
        // 1 PB still has a class (the driver then refuses it).
        assert!(size_class(1 << 50) >= 1 << 50);
    }

    #[test]
    fn freed_blocks_are_reused_and_counted() {
        let mut mem = FakeMemory::new(1 << 30);
        let mut a = CachingAllocator::default();
        let (p1, c1) = a.alloc(1000, &mut mem, "fake").unwrap();
        assert_eq!(c1, 1024);
        let (p2, c2) = a.alloc(3 << 20, &mut mem, "fake").unwrap();
        assert_eq!(c2, 4 << 20);
        assert_eq!(a.stats().current_bytes, 1024 + c2);
        a.free(p1, c1);
        assert_eq!(a.stats().cached_bytes, 1024);
        let (p3, _) = a.alloc(700, &mut mem, "fake").unwrap();
        assert_eq!(p3, p1, "same class reuses the freed block");
        let s = a.stats();
        assert_eq!((s.driver_allocs, s.reuses, s.cached_bytes), (2, 1, 0));
        assert_eq!(s.peak_bytes, 1024 + c2);
        a.free(p2, c2);
        a.free(p3, 1024);
        assert_eq!(a.stats().current_bytes, 0);
        assert_eq!(a.stats().peak_bytes, 1024 + c2);
        a.empty_cache(&mut mem).unwrap();
        assert_eq!(mem.in_use(), 0);
        assert_eq!(
            mem.syncs, 1,
            "blocks go back to the driver only after a sync"
        );
    }

    #[test]
    fn out_of_memory_empties_the_cache_retries_then_errors() {
        let mut mem = FakeMemory::new(4 << 20);
        let mut a = CachingAllocator::default();
        let (p, c) = a.alloc(3 << 20, &mut mem, "fake").unwrap();
        a.free(p, c);
        // A 4 MiB block cached + 2 MiB asked > 4 MiB: the cache is emptied, the retry succeeds.
        let (_q, _) = a.alloc(2 << 20, &mut mem, "fake").unwrap();
        assert_eq!(a.stats().cached_bytes, 0);
        let err = a
            .alloc(1 << 50, &mut mem, "fake:0")
            .unwrap_err()
            .to_string();
        assert!(err.contains("out of memory on fake:0"), "{err}");
    }
}
