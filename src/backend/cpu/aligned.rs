//! Scratch buffers whose first element sits on a cache-line (64-byte) boundary.
//!
//! The micro-kernels read packed panels with 64-byte vector loads (one cache line each when
//! the panel starts on a line). The system allocator aligns a large block to 16 bytes only,
//! so every such load straddled two lines, and an Intel core serves a split load as two:
//! square GEMM on the Ice Lake VM ran 10-13% slower on one thread (docs/PERF.md, session
//! 19). AMD's Zen 4, which executes a 512-bit load as two 256-bit halves, barely noticed.

use super::Float;
use std::ops::{Deref, DerefMut};

/// Bytes of the boundary.
const ALIGN: usize = 64;

/// A growable, zero-initialised buffer of `len` elements starting on a 64-byte boundary.
pub(crate) struct AlignedVec<T> {
    buf: Vec<T>,
    /// Elements skipped at the front of `buf` to reach the boundary.
    start: usize,
    len: usize,
}

impl<T: Float> AlignedVec<T> {
    /// An empty buffer (no allocation).
    pub(crate) fn new() -> Self {
        AlignedVec {
            buf: Vec::new(),
            start: 0,
            len: 0,
        }
    }

    /// `len` zeros.
    pub(crate) fn zeroed(len: usize) -> Self {
        let mut v = Self::new();
        v.reserve(len);
        v
    }

    /// At least `len` elements; when it has to grow, the contents are zeros again (callers
    /// use it as scratch that they overwrite before reading).
    pub(crate) fn reserve(&mut self, len: usize) {
        if self.len >= len {
            return;
        }
        let size = std::mem::size_of::<T>();
        self.buf = vec![T::ZERO; len + ALIGN / size];
        // The allocator aligns to at least `size` bytes, so the gap is whole elements.
        let addr = self.buf.as_ptr() as usize;
        self.start = (addr.next_multiple_of(ALIGN) - addr) / size;
        self.len = len;
    }
}

impl<T> Deref for AlignedVec<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl<T> DerefMut for AlignedVec<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_on_a_cache_line_and_holds_its_length() {
        for len in [1, 7, 16, 1000, 300_000] {
            let mut v = AlignedVec::<f32>::zeroed(len);
            assert_eq!(v.as_ptr() as usize % ALIGN, 0, "f32, {len} elements");
            assert_eq!(v.len(), len);
            assert!(v.iter().all(|&x| x == 0.0));
            v[len - 1] = 1.0;
            v.reserve(len / 2);
            assert_eq!(
                (v.len(), v[len - 1]),
                (len, 1.0),
                "no shrink, contents kept"
            );
            v.reserve(2 * len + 3);
            assert_eq!(v.as_ptr() as usize % ALIGN, 0, "grown");
            assert_eq!(v.len(), 2 * len + 3);
            let w = AlignedVec::<f64>::zeroed(len);
            assert_eq!(w.as_ptr() as usize % ALIGN, 0, "f64, {len} elements");
        }
    }
}
