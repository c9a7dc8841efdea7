//! The weight gradient of a stride-1, undilated convolution as shifted dot products, with no
//! im2col.
//!
//! Lay the padded input out with row width `Wp = W + 2pw`, and the output gradient with the
//! same row width (zeros in the `Wp - OW` extra columns). Output pixel `(oy, ox)` is then at
//! `i = oy*Wp + ox`, and its tap `(ky, kx)` reads the input at `i + ky*Wp + kx`, so for every
//! tap
//!
//! `dW[co, ci, ky, kx] = sum_n sum_i dy_pad[n, co, i] * x_pad[n, ci, i + ky*Wp + kx]`,
//!
//! a contiguous dot product over `i` (zeros of `dy_pad` cover the extra columns). The
//! `KH*KW` taps of one input channel read the same `x` row at different offsets, from L1. An
//! `R x J` register tile of such dots (`R` output channels by `J` (channel, tap) columns) runs
//! `L` lanes at a time, with unaligned loads. The cost is `Wp/OW` times the convolution's
//! FLOPs (the extra columns: 6% at 32 px, 25% at 8 px) and one copy of `dy` and of `x` (plus
//! a `KH - 1` row halo) into per-task scratch, where the general tiles (`weight_grad.rs`)
//! build an im2col block of `KH*KW` copies of `x`.
//!
//! The depth (every output row of the batch, images in order) is cut into [`Segment`]s (rows
//! of one image, at most [`BLOCK`] elements), gathered into blocks of at most [`BLOCK`]
//! elements: a block's segments are copied into scratch side by side, then each register tile
//! runs over the segments in turn, adding into its lane sums after each (so at 8 px, one
//! 80-element image per flush, the tiles reach about 60% of their speed at 32 px). Tasks =
//! (group, block of <= [`COLS_MAX`] columns, chunk of about [`CHUNK`] elements of output rows,
//! both cut evenly); the chunks' partial sums are added in chunk order afterwards. The cuts
//! depend on the shape alone, so results are the same for every thread count (not across
//! instruction sets: the lane count and FMA differ). A non-finite input value can reach a sum
//! it takes no part in, through a zero of the extra columns (`0 * inf`).

use super::dot_tile::DotTile;
use super::pack::{copy_run, vectorized};
use super::weight_grad::add_partials;
use crate::backend::conv::Conv2dGeom;
use crate::backend::cpu::aligned::AlignedVec;
use crate::backend::cpu::matmul::Isa;
use rayon::prelude::*;

/// Scratch rows (one per segment) are padded to multiples of this (the most lanes any
/// instruction set uses), with zeros.
const ALIGN: usize = 16;
/// Output-row elements (`rows * Wp`) per task, at least one row.
const CHUNK: usize = 4096;
/// Fewest tasks a call is cut into (the depth cut finer), so that two threads share the
/// work evenly whatever the shape; a constant, so the cuts stay a function of the shape.
const MIN_TASKS: usize = 4;
/// Most columns (input channel, tap) per task.
const COLS_MAX: usize = 256;
/// Output-row elements per block: the block's `R` rows of `dy` and the `x` rows of a column
/// tile stay in L1 while a register tile runs over them.
const BLOCK: usize = 512;

/// Whether [`conv2d_bwd_weight_shifted`] computes this convolution's weight gradient.
pub(super) fn applies(g: &Conv2dGeom) -> bool {
    g.stride == (1, 1) && g.dilation == (1, 1)
}

pub(super) fn conv2d_bwd_weight_shifted<T: DotTile>(
    x: &[T],
    dy: &[T],
    g: &Conv2dGeom,
    isa: Isa,
) -> Vec<T> {
    debug_assert!(applies(g));
    let (k, cout_g) = (g.k(), g.cout_g());
    let mut dw = vec![T::ZERO; g.c_out * k];
    if dw.is_empty() || g.p() == 0 || g.n == 0 {
        return dw;
    }
    let wp = g.w + 2 * g.padding.1;
    let rows = g.n * g.oh;
    // Even splits, and at least MIN_TASKS of them where there are rows enough: uneven or
    // too few tasks left one thread with most of the work at 8 and 16 px.
    let cblocks = k.div_ceil(COLS_MAX);
    let cb = k.div_ceil(cblocks);
    let chunks = (rows * wp)
        .div_ceil(CHUNK)
        .max(MIN_TASKS.div_ceil(g.groups * cblocks))
        .min(rows);
    let chunk_rows = rows.div_ceil(chunks);
    let chunks = rows.div_ceil(chunk_rows);
    let partials: Vec<Vec<T>> = (0..g.groups * cblocks * chunks)
        .into_par_iter()
        .map(|t| {
            let (gi, bi, ch) = (t / (cblocks * chunks), (t / chunks) % cblocks, t % chunks);
            let r0 = ch * chunk_rows;
            let task = Task {
                isa,
                x,
                dy,
                g,
                wp,
                gi,
                cols: bi * cb..(bi * cb + cb).min(k),
                rows: r0..(r0 + chunk_rows).min(rows),
            };
            match isa {
                Isa::Avx512 => vectorized(
                    isa,
                    #[inline(always)]
                    || task.run::<4, 4>(),
                ),
                Isa::Avx2 => vectorized(
                    isa,
                    #[inline(always)]
                    || task.run::<2, 4>(),
                ),
                Isa::Portable => task.run::<2, 4>(),
            }
        })
        .collect();
    add_partials(&mut dw, &partials, chunks, cblocks, cb, cout_g, k);
    dw
}

/// Output rows `oy0..oy1` of image `n`; in scratch, `dy` rows at `a_at` and the `x` rows they
/// read at `b_at`, `len` elements (a multiple of [`ALIGN`]) of `dy` each.
#[derive(Clone, Copy, Debug)]
struct Segment {
    n: usize,
    oy0: usize,
    oy1: usize,
    a_at: usize,
    b_at: usize,
    len: usize,
}

/// One task: rows of `dW_g` (all of group `gi`'s output channels) by columns `cols`, summed
/// over the output rows `rows` of the batch (row `q` = image `q / OH`, row `q % OH`).
struct Task<'a, T: DotTile> {
    isa: Isa,
    x: &'a [T],
    dy: &'a [T],
    g: &'a Conv2dGeom,
    wp: usize,
    gi: usize,
    cols: std::ops::Range<usize>,
    rows: std::ops::Range<usize>,
}

impl<T: DotTile> Task<'_, T> {
    /// Elements past a segment's `dy` rows that its taps read in `x`.
    fn halo(&self) -> usize {
        (self.g.kh - 1) * self.wp + self.g.kw - 1
    }

    /// The task's rows cut into blocks of segments (offsets inside the block's scratch).
    fn blocks(&self) -> Vec<Vec<Segment>> {
        let (g, wp) = (self.g, self.wp);
        let seg_rows = (BLOCK / wp).clamp(1, g.oh);
        let (mut blocks, mut block) = (Vec::new(), Vec::<Segment>::new());
        let (mut a_at, mut b_at) = (0, 0);
        let mut q = self.rows.start;
        while q < self.rows.end {
            let (n, oy0) = (q / g.oh, q % g.oh);
            let oy1 = (oy0 + seg_rows).min(g.oh).min(oy0 + self.rows.end - q);
            let len = ((oy1 - oy0) * wp).next_multiple_of(ALIGN);
            if !block.is_empty() && a_at + len > BLOCK {
                blocks.push(std::mem::take(&mut block));
                (a_at, b_at) = (0, 0);
            }
            block.push(Segment {
                n,
                oy0,
                oy1,
                a_at,
                b_at,
                len,
            });
            a_at += len;
            b_at += (len + self.halo()).next_multiple_of(ALIGN);
            q += oy1 - oy0;
        }
        blocks.push(block);
        blocks
    }

    /// Copies the block's `dy` rows (output channels of group `gi`, `a_pitch` apart) and `x`
    /// rows (input channels `ci0..`, `b_pitch` apart, with their padding) into scratch; every
    /// element a dot reads is written (zeros past the data).
    #[inline(always)]
    fn fill(
        &self,
        block: &[Segment],
        ci0: usize,
        a: &mut [T],
        a_pitch: usize,
        b: &mut [T],
        b_pitch: usize,
    ) {
        let (g, wp) = (self.g, self.wp);
        let (ph, pw) = g.padding;
        let cout_g = g.cout_g();
        for (co, arow) in a.chunks_mut(a_pitch).take(cout_g).enumerate() {
            for s in block {
                let dst = &mut arow[s.a_at..s.a_at + s.len];
                let plane = (s.n * g.c_out + self.gi * cout_g + co) * g.oh;
                for (t, oy) in (s.oy0..s.oy1).enumerate() {
                    let row = &mut dst[t * wp..(t + 1) * wp];
                    copy_run(&mut row[..g.ow], &self.dy[(plane + oy) * g.ow..]);
                    row[g.ow..].fill(T::ZERO);
                }
                dst[(s.oy1 - s.oy0) * wp..].fill(T::ZERO);
            }
        }
        for (c, brow) in b.chunks_mut(b_pitch).enumerate() {
            let channel = self.gi * g.cin_g() + ci0 + c;
            for s in block {
                let dst = &mut brow[s.b_at..s.b_at + s.len + self.halo()];
                let span = s.oy1 - s.oy0 + g.kh - 1;
                for t in 0..span {
                    let row = &mut dst[t * wp..(t + 1) * wp];
                    match (s.oy0 + t).checked_sub(ph).filter(|&iy| iy < g.h) {
                        Some(iy) => {
                            let src = &self.x[((s.n * g.c_in + channel) * g.h + iy) * g.w..];
                            row[..pw].fill(T::ZERO);
                            copy_run(&mut row[pw..pw + g.w], src);
                            row[pw + g.w..].fill(T::ZERO);
                        }
                        None => row.fill(T::ZERO),
                    }
                }
                dst[span * wp..].fill(T::ZERO);
            }
        }
    }

    /// The task's `C_out/G x cols.len()` tile, row-major, with `R x J` register tiles
    /// ([`DotTile`]).
    #[inline(always)]
    fn run<const R: usize, const J: usize>(&self) -> Vec<T> {
        let (g, wp) = (self.g, self.wp);
        let (cout_g, ncols, khw) = (g.cout_g(), self.cols.len(), g.kh * g.kw);
        let (rows, ldc) = (cout_g.next_multiple_of(R), ncols.next_multiple_of(J));
        let (ci0, ci1) = (self.cols.start / khw, (self.cols.end - 1) / khw + 1);
        let blocks = self.blocks();
        let a_pitch = blocks
            .iter()
            .map(|b| b.last().map_or(0, |s| s.a_at + s.len))
            .max()
            .unwrap_or(0);
        let b_pitch = blocks
            .iter()
            .map(|b| {
                b.last().map_or(0, |s| {
                    s.b_at + (s.len + self.halo()).next_multiple_of(ALIGN)
                })
            })
            .max()
            .unwrap_or(0);
        let mut a = AlignedVec::zeroed(cout_g * a_pitch);
        let mut b = AlignedVec::zeroed((ci1 - ci0) * b_pitch);
        // Scratch offsets of each dy row and of each column's x row (its channel's row,
        // shifted by its tap). Rows and columns past the live ones repeat the last live one;
        // their sums are dropped.
        let row_at: Vec<usize> = (0..rows).map(|r| r.min(cout_g - 1) * a_pitch).collect();
        let col_at: Vec<usize> = (0..ldc)
            .map(|j| {
                let kk = self.cols.start + j.min(ncols - 1);
                let (ci, ky, kx) = (kk / khw, (kk % khw) / g.kw, kk % g.kw);
                (ci - ci0) * b_pitch + ky * wp + kx
            })
            .collect();
        // Per element, `lanes` lane sums, added up once at the end.
        let lanes = T::lanes(self.isa);
        let mut c = AlignedVec::zeroed(rows * ldc * lanes);
        for block in &blocks {
            self.fill(block, ci0, &mut a, a_pitch, &mut b, b_pitch);
            for r0 in (0..rows).step_by(R) {
                for j0 in (0..ldc).step_by(J) {
                    let c = &mut c[(r0 * ldc + j0) * lanes..];
                    for s in block {
                        let ar = std::array::from_fn(|r| &a[row_at[r0 + r] + s.a_at..]);
                        let br = std::array::from_fn(|j| &b[col_at[j0 + j] + s.b_at..]);
                        T::dot_tile::<R, J>(self.isa, ar, br, s.len, c, ldc);
                    }
                }
            }
        }
        let mut tile = Vec::with_capacity(cout_g * ncols);
        for r in 0..cout_g {
            let sums = c[r * ldc * lanes..][..ncols * lanes].chunks_exact(lanes);
            tile.extend(sums.map(|v| v.iter().fold(T::ZERO, |s, &x| s + x)));
        }
        tile
    }
}
