//! CPU softmax / log_softmax, forward and backward.
//!
//! The input (gathered into a contiguous copy only when it is strided) is viewed as
//! `[outer, n, inner]` with `n` the softmax dim. Each of the `outer` slabs of `n * inner`
//! elements is independent, so slabs run in parallel. Within a slab the reductions run over the
//! `n` rows for all `inner` columns at once (contiguous inner loops the compiler vectorizes);
//! when `dim` is the last dimension (`inner == 1`) a slab is one row, whose reductions (max,
//! sum) go through `lanes::max_reduce` and `lanes::sum_wide` (64 independent accumulators)
//! so they vectorize and do not wait on one accumulator's add latency. One pass finds the max,
//! one writes `exp(x - max)` (`Float::exp_fused`: branch-free fused multiply-adds, which
//! vectorize; 17 vector operations per 16 values, where the two-rounding `exp` took 36 and
//! kept the softmax at 80% of the copy bandwidth), one sums it, one normalizes; a row is
//! 2 KiB at `n = 512`, so all but the first stay in L1. The log-softmax backward's `exp(y)`
//! (`y <= 0`) takes the same exp.
//! Memory traffic: x read once from memory, y written once (into uninitialised memory: zeroing
//! a reused 128 MiB output first was a single-threaded `memset` as long as the softmax).
//! The next row is prefetched piece by piece during the exp loop. Without it, a row's reads
//! from memory (the max pass) and its arithmetic (the exp, sum and normalize passes, from L1)
//! took turns, and the hardware prefetcher, which follows demand misses, sat idle during the
//! arithmetic: the 128 MiB softmax went 15.6-17.1 -> 12.0-13.2 ms on the Ice Lake VM
//! (docs/PERF.md, session 20). Prefetching the whole next row at the start of a row was
//! slower (session 19), as was one line per 16 outputs (a loop in pieces of 16 vectorizes
//! worse than one in pieces of 128); in the backward, the same gained nothing measurable.
//! Regular stores, also past the last-level cache: computing each row in a scratch row and
//! streaming it out (`stream.rs`) saves y's read-for-ownership but made the 128 MiB softmax
//! 6% slower on the Ice Lake VM (session 20), and streaming it line by line as the elementwise
//! ops do since session 23 did not pay either: after the arithmetic (a burst of 64 stores per
//! row, 13.2-13.6 against 11.6-11.9 ms) nor spread over the next row's exp loop (11.85-11.90
//! against 11.47-11.75; docs/PERF.md, session 23).
//! Instead, past the last-level cache and where the CPU has `PREFETCHW`, each piece of the exp
//! loop also asks for the matching 8 lines of the next row's output ready to be written, so
//! that the next row's first stores do not each wait for a read-for-ownership: 11.9-12.2 ->
//! 11.3-11.7 ms on the same 128 MiB softmax (docs/PERF.md, session 22).

use super::elementwise::{assume_init, written_vec};
use super::lanes::{map_reduce2_wide, max_reduce, sum_wide};
use super::simd::vectorized;
use super::stream::{has_prefetch_write, next_row, prefetch_piece, prefetch_write_piece, streams};
use super::{contiguous_cow, CpuData, CpuStorage, Float};
use crate::backend::softmax::{SoftmaxBackend, SoftmaxKind};
use crate::tensor::Layout;
use crate::{Error, Result};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Elements per piece of a row's pass that prefetches the matching piece of the next row.
const PIECE: usize = 128;

/// Slabs smaller than this many elements are grouped into one Rayon task.
const MIN_ELEMS_PER_TASK: usize = 4096;

/// `(outer, n, inner)` around `dim`.
fn split_at_dim(dims: &[usize], dim: usize) -> (usize, usize, usize) {
    (
        dims[..dim].iter().product(),
        dims[dim],
        dims[dim + 1..].iter().product(),
    )
}

/// The larger of `m` and `v`, a NaN `v` skipped: one `vmaxps` per vector, where a NaN-winning
/// maximum took four (two compares, a mask or, a blend), a tenth of the softmax's time in L2.
/// A NaN input still makes its whole row NaN, through the sum: its `exp(NaN - max)` is NaN, so
/// the row's sum is, and every output is divided by it (or, for log_softmax, has its log
/// subtracted).
#[inline(always)]
fn row_max<T: Float>(m: T, v: T) -> T {
    if v > m {
        v
    } else {
        m
    }
}

/// One slab `[n, inner]` of the forward: `x` in, `y` out (written whole by the exp loop before
/// anything reads it). Always inlined into the caller's [`vectorized`] closure, so its loops are
/// compiled for the wide instruction set. `next` is the next row when `inner == 1` (else
/// empty): the exp loop runs in pieces of [`PIECE`] elements, each first prefetching the
/// matching 8 lines of `next`, so that row's reads from memory overlap this row's arithmetic,
/// and with `write_ahead` (the CPU has `PREFETCHW`) the same lines of the next row's output.
#[inline(always)]
fn forward_slab<T: Float>(
    kind: SoftmaxKind,
    x: &[T],
    y: &mut [MaybeUninit<T>],
    inner: usize,
    next: &[T],
    write_ahead: bool,
) {
    if inner == 1 {
        // Three separate flat loops (max, exp, sum) so each vectorizes: a running sum fused
        // into the exp loop would be a serial dependency that keeps the whole loop scalar.
        let max = max_reduce(x, T::NEG_INFINITY, row_max);
        // The next row's output follows this one's in the same buffer (when there is a next
        // row): its lines are asked for ready to be written, piece by piece beside its input.
        let next_out = y.as_ptr().wrapping_add(y.len());
        for (c, (y, x)) in y.chunks_mut(PIECE).zip(x.chunks(PIECE)).enumerate() {
            prefetch_piece(next, c, PIECE);
            if write_ahead {
                prefetch_write_piece(next_out, next.len(), c, PIECE);
            }
            for (o, &v) in y.iter_mut().zip(x) {
                o.write((v - max).exp_fused());
            }
        }
        // SAFETY: the loop above wrote all of `y` (as long as `x`, one slab).
        let y = unsafe { assume_init(y) };
        let sum = sum_wide(y);
        match kind {
            SoftmaxKind::Softmax => {
                let inv = T::ONE / sum;
                y.iter_mut().for_each(|o| *o *= inv);
            }
            SoftmaxKind::LogSoftmax => {
                let log_norm = max + sum.ln();
                y.iter_mut().zip(x).for_each(|(o, &v)| *o = v - log_norm);
            }
        }
        return;
    }
    let mut max = vec![T::NEG_INFINITY; inner];
    for row in x.chunks_exact(inner) {
        max.iter_mut()
            .zip(row)
            .for_each(|(m, &v)| *m = row_max(*m, v));
    }
    let mut sum = vec![T::ZERO; inner];
    for (out_row, row) in y.chunks_exact_mut(inner).zip(x.chunks_exact(inner)) {
        for (((o, &v), &m), s) in out_row.iter_mut().zip(row).zip(&max).zip(&mut sum) {
            let e = (v - m).exp_fused();
            o.write(e);
            *s += e;
        }
    }
    // SAFETY: the loop above wrote every row of `y`.
    let y = unsafe { assume_init(y) };
    match kind {
        SoftmaxKind::Softmax => {
            let inv: Vec<T> = sum.iter().map(|&s| T::ONE / s).collect();
            for out_row in y.chunks_exact_mut(inner) {
                out_row.iter_mut().zip(&inv).for_each(|(o, &i)| *o *= i);
            }
        }
        SoftmaxKind::LogSoftmax => {
            let log_norm: Vec<T> = max.iter().zip(&sum).map(|(&m, &s)| m + s.ln()).collect();
            for (out_row, row) in y.chunks_exact_mut(inner).zip(x.chunks_exact(inner)) {
                for ((o, &v), &l) in out_row.iter_mut().zip(row).zip(&log_norm) {
                    *o = v - l;
                }
            }
        }
    }
}

/// One slab `[n, inner]` of the backward: `y` (forward output) and `dy` in, `dx` out (each
/// element written before it is read).
#[inline(always)]
fn backward_slab<T: Float>(
    kind: SoftmaxKind,
    y: &[T],
    dy: &[T],
    dx: &mut [MaybeUninit<T>],
    inner: usize,
) {
    // softmax: s = sum dy*y, dx = y (dy - s); log_softmax: s = sum dy, dx = dy - exp(y) s.
    let term = |y: T, dy: T| match kind {
        SoftmaxKind::Softmax => dy * y,
        SoftmaxKind::LogSoftmax => dy,
    };
    let grad = |y: T, dy: T, s: T| match kind {
        SoftmaxKind::Softmax => y * (dy - s),
        SoftmaxKind::LogSoftmax => dy - y.exp_fused() * s,
    };
    if inner == 1 {
        // One row: flat loops, each sum a wide lane fold.
        match kind {
            SoftmaxKind::Softmax => {
                let s = map_reduce2_wide(y, dy, T::ZERO, |y, d| d * y, |a, b| a + b);
                dx.iter_mut()
                    .zip(y.iter().zip(dy))
                    .for_each(|(o, (&y, &d))| {
                        o.write(y * (d - s));
                    });
            }
            SoftmaxKind::LogSoftmax => {
                let s = sum_wide(dy);
                dx.iter_mut()
                    .zip(y.iter().zip(dy))
                    .for_each(|(o, (&y, &d))| {
                        o.write(d - y.exp_fused() * s);
                    });
            }
        }
        return;
    }
    let mut sum = vec![T::ZERO; inner];
    for (yr, dyr) in y.chunks_exact(inner).zip(dy.chunks_exact(inner)) {
        for ((s, &y), &d) in sum.iter_mut().zip(yr).zip(dyr) {
            *s += term(y, d);
        }
    }
    for ((dxr, yr), dyr) in dx
        .chunks_exact_mut(inner)
        .zip(y.chunks_exact(inner))
        .zip(dy.chunks_exact(inner))
    {
        for (((o, &y), &d), &s) in dxr.iter_mut().zip(yr).zip(dyr).zip(&sum) {
            o.write(grad(y, d, s));
        }
    }
}

fn forward_typed<T: Float>(kind: SoftmaxKind, x: &[T], layout: &Layout, dim: usize) -> Vec<T> {
    let (_, n, inner) = split_at_dim(layout.dims(), dim);
    let x = contiguous_cow(x, layout);
    let slab = n * inner;
    if slab == 0 {
        return vec![T::ZERO; x.len()];
    }
    // Past the last-level cache (the streaming stores' threshold), where y's lines come from
    // memory: in L2 the hint cost 3-5% (0.059-0.061 -> 0.062 ms for 128 x 1024).
    let write_ahead = has_prefetch_write() && streams(std::mem::size_of_val(&x[..]));
    // SAFETY: the slabs cover `x.len()` (a whole number of them) and each is written whole.
    unsafe {
        written_vec(x.len(), |y| {
            y.par_chunks_mut(slab)
                .zip(x.par_chunks(slab))
                .enumerate()
                .with_min_len((MIN_ELEMS_PER_TASK / slab).max(1))
                .for_each(|(r, (y, xr))| {
                    // Rows (`inner == 1`) prefetch the next one while they compute.
                    let next = if inner == 1 {
                        next_row(&x, r, slab)
                    } else {
                        &[]
                    };
                    vectorized(
                        #[inline(always)]
                        || forward_slab(kind, xr, y, inner, next, write_ahead),
                    )
                })
        })
    }
}

fn backward_typed<T: Float>(
    kind: SoftmaxKind,
    y: &[T],
    y_layout: &Layout,
    dy: &[T],
    dy_layout: &Layout,
    dim: usize,
) -> Vec<T> {
    let (_, n, inner) = split_at_dim(y_layout.dims(), dim);
    let (y, dy) = (contiguous_cow(y, y_layout), contiguous_cow(dy, dy_layout));
    let slab = n * inner;
    if slab == 0 {
        return vec![T::ZERO; y.len()];
    }
    // SAFETY: the slabs cover `y.len()` (a whole number of them) and each is written whole.
    unsafe {
        written_vec(y.len(), |dx| {
            dx.par_chunks_mut(slab)
                .zip(y.par_chunks(slab).zip(dy.par_chunks(slab)))
                .with_min_len((MIN_ELEMS_PER_TASK / slab).max(1))
                .for_each(|(dx, (y, dy))| {
                    vectorized(
                        #[inline(always)]
                        || backward_slab(kind, y, dy, dx, inner),
                    )
                })
        })
    }
}

fn check_dim(kind: SoftmaxKind, layout: &Layout, dim: usize) -> Result<()> {
    if dim < layout.dims().len() {
        Ok(())
    } else {
        Err(Error::DimOutOfRange {
            op: kind.name(),
            dim: dim as isize,
            shape: layout.shape().clone(),
        })
    }
}

impl SoftmaxBackend for CpuStorage {
    fn softmax(&self, kind: SoftmaxKind, layout: &Layout, dim: usize) -> Result<Self> {
        check_dim(kind, layout, dim)?;
        let data = match self.data() {
            CpuData::F32(x) => CpuData::F32(forward_typed(kind, x, layout, dim)),
            CpuData::F64(x) => CpuData::F64(forward_typed(kind, x, layout, dim)),
            d => {
                return Err(Error::UnsupportedDType {
                    op: kind.name(),
                    dtype: d.dtype_of(),
                    expected: "f32 or f64",
                })
            }
        };
        Ok(CpuStorage::new(data))
    }

    fn softmax_backward(
        &self,
        kind: SoftmaxKind,
        y_layout: &Layout,
        dy: &Self,
        dy_layout: &Layout,
        dim: usize,
    ) -> Result<Self> {
        check_dim(kind, y_layout, dim)?;
        if y_layout.shape() != dy_layout.shape() {
            return Err(Error::ShapeMismatch {
                op: kind.name(),
                lhs: y_layout.shape().clone(),
                rhs: dy_layout.shape().clone(),
            });
        }
        let data = match (self.data(), dy.data()) {
            (CpuData::F32(y), CpuData::F32(g)) => {
                CpuData::F32(backward_typed(kind, y, y_layout, g, dy_layout, dim))
            }
            (CpuData::F64(y), CpuData::F64(g)) => {
                CpuData::F64(backward_typed(kind, y, y_layout, g, dy_layout, dim))
            }
            (d, _) => {
                return Err(Error::UnsupportedDType {
                    op: kind.name(),
                    dtype: d.dtype_of(),
                    expected: "f32 or f64",
                })
            }
        };
        Ok(CpuStorage::new(data))
    }
}
