//! The convolution's weight gradient, `dW_g[co, k] = sum over pixels of dy[co, pixel] *
//! col[k, pixel]`: a product whose depth (every pixel of the batch) is the contiguous axis of
//! both operands. Packing them for the GEMM micro-kernel (depth-major panels) meant
//! transposing both, one scalar store per element, which cost more than the multiply when
//! channels are few. Here both stay pixel-contiguous: per depth block, `dy` rows and im2col
//! rows are copied into row-major scratch (vector copies) and an `R x J` register tile of dot
//! products runs along the pixels `L` lanes at a time.
//!
//! Tasks = (group, block of <= [`COLS_MAX`] im2col rows, chunk of [`DEPTH_CHUNK`] pixels); the
//! chunks' partial sums are added in chunk order afterwards. The chunking depends only on the
//! shape, never on the thread count, so results are deterministic for every thread count.

use super::dot_tile::DotTile;
use super::pack::{copy_run, pack_im2col, pixel_runs, vectorized, PaddedInput};
use super::{round_up, KC};
use crate::backend::conv::Conv2dGeom;
use crate::backend::cpu::aligned::AlignedVec;
use crate::backend::cpu::matmul::Isa;
use rayon::prelude::*;

/// Pixels per task (a multiple of the depth block [`KC`]).
const DEPTH_CHUNK: usize = 16 * KC;
/// Most im2col rows (weight-gradient columns) per task: bounds the `COLS_MAX x KC` scratch.
const COLS_MAX: usize = 256;

pub(super) fn conv2d_bwd_weight_tiles<T: DotTile>(
    x: &[T],
    dy: &[T],
    g: &Conv2dGeom,
    isa: Isa,
) -> Vec<T> {
    let (p, k, cout_g) = (g.p(), g.k(), g.cout_g());
    let mut dw = vec![T::ZERO; g.c_out * k];
    if dw.is_empty() || p == 0 || g.n == 0 {
        return dw;
    }
    let depth = g.n * p;
    let chunks = depth.div_ceil(DEPTH_CHUNK);
    let cb = COLS_MAX.min(k);
    let cblocks = k.div_ceil(cb);
    let xp = PaddedInput::new(x, g, isa);
    let partials: Vec<Vec<T>> = (0..g.groups * cblocks * chunks)
        .into_par_iter()
        .map(|t| {
            let (gi, bi, ch) = (t / (cblocks * chunks), (t / chunks) % cblocks, t % chunks);
            let cols = bi * cb..(bi * cb + cb).min(k);
            let d0 = ch * DEPTH_CHUNK;
            let pixels = d0..(d0 + DEPTH_CHUNK).min(depth);
            let task = Task {
                isa,
                xp: &xp,
                dy,
                g,
                gi,
                cols,
                pixels,
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

/// Adds the tasks' partial tiles into `dw` (`C_out x k`, row-major): tasks are ordered
/// (group, column block of `cb`, chunk), each tile `C_out/G x ncols`, and the `chunks` tiles
/// of one (group, block) are added in chunk order, so the sum's order depends on the shape
/// alone.
pub(super) fn add_partials<T: DotTile>(
    dw: &mut [T],
    partials: &[Vec<T>],
    chunks: usize,
    cblocks: usize,
    cb: usize,
    cout_g: usize,
    k: usize,
) {
    for (gb, tiles) in partials.chunks(chunks).enumerate() {
        let (gi, bi) = (gb / cblocks, gb % cblocks);
        let (c0, ncols) = (bi * cb, cb.min(k - bi * cb));
        for r in 0..cout_g {
            let row = &mut dw[(gi * cout_g + r) * k + c0..][..ncols];
            for tile in tiles {
                for (d, &v) in row.iter_mut().zip(&tile[r * ncols..(r + 1) * ncols]) {
                    *d += v;
                }
            }
        }
    }
}

/// One task: rows of `dW_g` (all of group `gi`'s output channels) by im2col rows `cols`,
/// summed over the GEMM columns (pixels) `pixels`.
struct Task<'a, T: DotTile> {
    isa: Isa,
    xp: &'a PaddedInput<'a, T>,
    dy: &'a [T],
    g: &'a Conv2dGeom,
    gi: usize,
    cols: std::ops::Range<usize>,
    pixels: std::ops::Range<usize>,
}

impl<T: DotTile> Task<'_, T> {
    /// The task's `C_out/G x cols.len()` tile, row-major, with `R x J` register tiles
    /// ([`DotTile`]).
    #[inline(always)]
    fn run<const R: usize, const J: usize>(&self) -> Vec<T> {
        let g = self.g;
        let (p, cout_g, ncols) = (g.p(), g.cout_g(), self.cols.len());
        let (rows, cols) = (round_up(cout_g, R), round_up(ncols, J));
        let lanes = T::lanes(self.isa);
        let ld = round_up(KC.min(self.pixels.len()), lanes);
        // a[r*kl + t] = dy[co = gi*C_out/G + r, pixel t]; b[j*kl + t] = col[cols.start + j, t];
        // zero past kc (and rows past the live ones, whose sums are dropped).
        let (mut a, mut b) = (AlignedVec::zeroed(rows * ld), AlignedVec::zeroed(cols * ld));
        // Per element, `L` lane sums: the lanes are added up once, at the end (adding them at
        // every depth block cost more than the block's multiplies).
        let mut c = AlignedVec::zeroed(rows * cols * lanes);
        let mut runs = Vec::new();
        for pc in self.pixels.clone().step_by(KC) {
            let kc = KC.min(self.pixels.end - pc);
            let kl = round_up(kc, lanes);
            pixel_runs(g, pc, kc, usize::MAX, &mut runs);
            for r in 0..cout_g {
                let co = self.gi * cout_g + r;
                let arow = &mut a[r * kl..(r + 1) * kl];
                for run in &runs {
                    let src = &self.dy[(run.n * g.c_out + co) * p + run.oy * g.ow + run.ox..];
                    copy_run(&mut arow[run.at..run.at + run.len], src);
                }
                arow[kc..].fill(T::ZERO);
            }
            let (xp, c0) = (self.xp, self.cols.start);
            pack_im2col(xp, g, self.gi, &runs, kc, c0, ncols, kl, &mut b);
            // `J` im2col rows at a time against all of `a` (which stays in L1).
            for j0 in (0..cols).step_by(J) {
                let bt = std::array::from_fn(|j| &b[(j0 + j) * kl..(j0 + j + 1) * kl]);
                for r0 in (0..rows).step_by(R) {
                    let at = std::array::from_fn(|r| &a[(r0 + r) * kl..(r0 + r + 1) * kl]);
                    let c = &mut c[r0 * cols * lanes + j0 * lanes..];
                    T::dot_tile::<R, J>(self.isa, at, bt, kl, c, cols);
                }
            }
        }
        let mut tile = Vec::with_capacity(cout_g * ncols);
        for r in 0..cout_g {
            let sums = c[r * cols * lanes..][..ncols * lanes].chunks_exact(lanes);
            tile.extend(sums.map(|v| v.iter().fold(T::ZERO, |s, &x| s + x)));
        }
        tile
    }
}
