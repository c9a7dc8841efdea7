//! The weight gradient with its columns taken tap by tap, skipping the pixels where a tap
//! reads padding.
//!
//! ```text
//! dW[co, ci, ky, kx] = sum_{n, oy, ox} dy[n, co, oy, ox]
//!                                    * x[n, ci, oy*sh + ky*dh - ph, ox*sw + kx*dw - pw]
//! ```
//! The packed GEMM (`conv2d_bwd_weight_gemm`) runs this as `dy [C_out, pixels] . col^T
//! [pixels, K]` with columns `k = (ci, ky, kx)`: a 32-column panel mixes every tap of three or
//! four channels, so some tap of it reads padding at almost every pixel, and every product is
//! computed. On small maps that is much of the work: a 3x3 kernel with padding 1 reads padding
//! in 31% of its (pixel, tap) pairs on 4x4 maps and in 56% on 2x2 maps.
//!
//! Here the columns go tap-major inside blocks of [`CHANNELS`] input channels: in block `b`,
//! column `t*32 + c` is channel `b*32 + c` at tap `t`. A 32-column panel is then one tap of 32
//! channels, its zero rows are exactly the pixels where that tap reads padding, and the
//! micro-kernel runs only the others (depth runs, as in `conv/dead_rows.rs`). A skipped term
//! is `fma(dy, 0, s) = s` for finite `dy`, so every sum is the packed GEMM's to the bit (same
//! pixel order, same depth blocks of [`KC`]), for fewer FMAs.
//!
//! The operands are laid out for this once per call:
//! - A, `dy` as `[C_out, N*P]` (images and channels swapped; `dy` itself when `N = 1`), read in
//!   place by the in-place row tiles (`WeightRows`), where the packed GEMM repacks `dy`'s rows
//!   for every block of columns;
//! - B, packed from `x` in NHWC order: a live pixel's 32 channels at one tap are one
//!   contiguous 128-byte copy, where the packed GEMM transposes its im2col panels.
//!
//! A task (group, block of 32 channels, block of output channels) writes its `rows x 9*32`
//! tile to `dW` a row at a time, each row one contiguous run (a channel's taps are adjacent)
//! after a `9 x 32` block transpose (element by element it was a fifth of the pass on 7x7
//! maps).
//! Traffic: `x` and `dy` read and written once more (the two copies), then each live (pixel,
//! tap) of `x` copied once per task into the panels; `dW` written once.

use super::super::aligned::AlignedVec;
use super::super::matmul::{transpose_panel, Isa, MicroKernel, PackedFloat};
use super::pack::{valid_outputs, vectorized};
use super::weight_rows::WeightRows;
use super::{DisjointWrites, KC};
use crate::backend::conv::Conv2dGeom;
use rayon::prelude::*;
use std::borrow::Cow;
use std::ops::Range;

/// Input channels per column block: one panel of the micro-kernel (32 columns) per tap.
const CHANNELS: usize = 32;
/// Pixels per task of the NHWC copy of `x`.
const NHWC_PIXELS: usize = 64;

/// Whether this path computes `g`'s weight gradient with `kern`: micro-kernels that take depth
/// runs with 32-column panels (f32 on AVX-512), whole blocks of 32 input channels per group.
pub(super) fn applies<T>(g: &Conv2dGeom, kern: &MicroKernel<T>) -> bool {
    kern.takes_depth_runs()
        && kern.nr == CHANNELS
        && g.cin_g() > 0
        && g.cin_g().is_multiple_of(CHANNELS)
        && g.cout_g() > 0
        && g.n * g.p() > 0
}

/// The output pixels a tap reads the image through: rows `rows` x columns `cols` of every
/// image, and the input position the first of them reads (offsets from `oy*sh`, `ox*sw`).
#[derive(Clone, Debug)]
struct LiveTap {
    rows: Range<usize>,
    cols: Range<usize>,
    /// `ky*dh - ph` and `kx*dw - pw`.
    dy: isize,
    dx: isize,
}

impl LiveTap {
    fn all(g: &Conv2dGeom) -> Vec<LiveTap> {
        let (sh, sw) = g.stride;
        let (ph, pw) = g.padding;
        let mut taps = Vec::with_capacity(g.kh * g.kw);
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let (ty, tx) = (ky * g.dilation.0, kx * g.dilation.1);
                taps.push(LiveTap {
                    rows: valid_outputs(g.oh, g.h, sh, ph, ty),
                    cols: valid_outputs(g.ow, g.w, sw, pw, tx),
                    dy: ty as isize - ph as isize,
                    dx: tx as isize - pw as isize,
                });
            }
        }
        taps
    }

    /// Calls `f(d, len, src)` for each run of live pixels inside the depth block `pc..pc+kc`
    /// (pixels `n*P + oy*OW + ox` of the GEMM's depth): `len` pixels from depth `pc + d`,
    /// consecutive in one output row, the first reading input pixel `src` (`(n*H + iy)*W +
    /// ix`; the next ones `sw` further each).
    #[inline(always)]
    fn runs(
        &self,
        g: &Conv2dGeom,
        (pc, kc): (usize, usize),
        mut f: impl FnMut(usize, usize, usize),
    ) {
        let p = g.p();
        if self.cols.is_empty() || kc == 0 {
            return;
        }
        for n in pc / p..=(pc + kc - 1) / p {
            // The output rows of image `n` inside the block.
            let first = (pc.max(n * p) - n * p) / g.ow;
            let last = ((pc + kc).min((n + 1) * p) - n * p).div_ceil(g.ow);
            for oy in self.rows.start.max(first)..self.rows.end.min(last) {
                let row = n * p + oy * g.ow;
                let a = (row + self.cols.start).max(pc);
                let b = (row + self.cols.end).min(pc + kc);
                if a >= b {
                    continue;
                }
                let ox = a - row;
                let iy = (oy * g.stride.0) as isize + self.dy;
                let ix = (ox * g.stride.1) as isize + self.dx;
                f(a - pc, b - a, (n * g.h + iy as usize) * g.w + ix as usize);
            }
        }
    }

    /// The live depths of the block as runs `d0..d1` relative to `pc`, merged where they
    /// touch, into `out` (cleared first).
    fn depth_runs(&self, g: &Conv2dGeom, block: (usize, usize), out: &mut Vec<(usize, usize)>) {
        out.clear();
        self.runs(g, block, |d, len, _| match out.last_mut() {
            Some(last) if last.1 == d => last.1 = d + len,
            _ => out.push((d, d + len)),
        });
    }
}

/// `x` `[N, C, H, W]` as `[N, H, W, C]`.
fn nhwc<T: PackedFloat>(x: &[T], g: &Conv2dGeom, isa: Isa) -> Vec<T> {
    let (hw, c) = (g.h * g.w, g.c_in);
    let mut out = vec![T::ZERO; x.len()];
    let blocks = hw.div_ceil(NHWC_PIXELS);
    out.par_chunks_mut(hw * c)
        .enumerate()
        .flat_map(|(n, img)| {
            img.par_chunks_mut(NHWC_PIXELS * c)
                .enumerate()
                .map(move |(b, dst)| (n * blocks + b, dst))
        })
        .for_each(|(t, dst)| {
            let (n, p0) = (t / blocks, (t % blocks) * NHWC_PIXELS);
            let len = NHWC_PIXELS.min(hw - p0);
            vectorized(
                isa,
                #[inline(always)]
                || transpose_panel(x, n * c * hw + p0, hw, c, len, dst, c),
            );
        });
    out
}

/// `dy` `[N, C_out, P]` as `[C_out, N*P]` (borrowed when `N = 1`).
fn channels_first<'a, T: PackedFloat>(dy: &'a [T], g: &Conv2dGeom) -> Cow<'a, [T]> {
    if g.n == 1 {
        return Cow::Borrowed(dy);
    }
    let (p, np) = (g.p(), g.n * g.p());
    let mut out = vec![T::ZERO; dy.len()];
    out.par_chunks_mut(np).enumerate().for_each(|(co, row)| {
        for (n, dst) in row.chunks_exact_mut(p).enumerate() {
            dst.copy_from_slice(&dy[(n * g.c_out + co) * p..][..p]);
        }
    });
    Cow::Owned(out)
}

/// Packs the panel of tap `tap` for the channels `ci0..ci0+32` of `x_t` over the depth block
/// `pc..pc+kc`: row `d` (live pixels only) is the 32 channels that pixel reads through the tap.
#[inline(always)]
fn pack_tap<T: PackedFloat>(
    x_t: &[T],
    g: &Conv2dGeom,
    tap: &LiveTap,
    ci0: usize,
    block: (usize, usize),
    panel: &mut [T],
) {
    let (c, step) = (g.c_in, g.stride.1 * g.c_in);
    tap.runs(g, block, |d, len, src| {
        let mut at = src * c + ci0;
        for row in panel[d * CHANNELS..(d + len) * CHANNELS].chunks_exact_mut(CHANNELS) {
            let from: &[T; CHANNELS] = x_t[at..at + CHANNELS].try_into().unwrap();
            let to: &mut [T; CHANNELS] = row.try_into().unwrap();
            *to = *from;
            at += step;
        }
    });
}

/// The weight gradient `[C_out, C_in/G, KH, KW]` (see the module docs; [`applies`] must hold).
pub(super) fn conv2d_bwd_weight_taps<T: PackedFloat>(
    x: &[T],
    dy: &[T],
    g: &Conv2dGeom,
    isa: Isa,
) -> Vec<T> {
    let kern = T::micro_kernel(isa);
    assert!(applies(g, &kern), "weight_grad_taps on {g:?}");
    let (khw, cin_g, cout_g) = (g.kh * g.kw, g.cin_g(), g.cout_g());
    let (k, depth) = (cin_g * khw, g.n * g.p());
    let total = g.c_out * k;
    let x_t = nhwc(x, g, isa);
    let dy_t = channels_first(dy, g);
    let rows = WeightRows::new(&dy_t, g.groups, cout_g, depth, &kern);
    let taps = LiveTap::all(g);
    // Tasks: (group, block of 32 channels, block of rows); rows split only when the channel
    // blocks alone leave threads idle.
    let blocks = cin_g / CHANNELS;
    let threads = rayon::current_num_threads().max(1);
    let rsplit = (2 * threads).div_ceil(g.groups * blocks);
    let mpan = cout_g.div_ceil(kern.mr);
    let rb = mpan.div_ceil(rsplit.clamp(1, mpan)) * kern.mr;
    let rblocks = cout_g.div_ceil(rb);
    let ncols = khw * CHANNELS;
    let mut dw = Vec::with_capacity(total);
    let sink = DisjointWrites::new(&mut dw.spare_capacity_mut()[..total]);
    let scratch = || {
        (
            AlignedVec::zeroed(khw * KC.min(depth) * CHANNELS),
            vec![T::ZERO; rb * ncols],
            vec![Vec::new(); khw],
            Vec::new(),
            vec![T::ZERO; ncols],
        )
    };
    let tasks = g.groups * blocks * rblocks;
    // Few pieces, so few scratch sets are allocated and zeroed (`for_each_init` makes one per
    // piece).
    let per_piece = tasks.div_ceil(2 * threads);
    (0..tasks)
        .into_par_iter()
        .with_min_len(per_piece)
        .for_each_init(scratch, |(bpack, c, depths, scratch, row), t| {
            let (gi, bi, ri) = (t / (blocks * rblocks), (t / rblocks) % blocks, t % rblocks);
            let (r0, ci0) = (ri * rb, gi * cin_g + bi * CHANNELS);
            let nrows = rb.min(cout_g - r0);
            let c = &mut c[..nrows * ncols];
            for pc in (0..depth).step_by(KC) {
                let kc = KC.min(depth - pc);
                // Rows of dead pixels are never written nor read (every tile, in place or
                // packed, runs the panel's depth runs alone).
                let b = &mut bpack[..khw * kc * CHANNELS];
                for ((tap, d), panel) in taps
                    .iter()
                    .zip(depths.iter_mut())
                    .zip(b.chunks_exact_mut(kc * CHANNELS))
                {
                    tap.depth_runs(g, (pc, kc), d);
                    vectorized(
                        isa,
                        #[inline(always)]
                        || pack_tap(&x_t, g, tap, ci0, (pc, kc), panel),
                    );
                }
                let b = &bpack[..khw * kc * CHANNELS];
                rows.multiply(
                    &kern,
                    (gi, r0, nrows),
                    (pc, kc),
                    b,
                    c,
                    ncols,
                    pc == 0,
                    scratch,
                    depths,
                );
            }
            // Row r of the tile is (tap, channel); dW's row is (channel, tap): a `KHW x 32`
            // transpose per row (4 x 4 blocks; element by element it was a fifth of the pass
            // on 7x7 maps).
            for r in 0..nrows {
                vectorized(
                    isa,
                    #[inline(always)]
                    || transpose_panel(c, r * ncols, CHANNELS, khw, CHANNELS, row, khw),
                );
                let co = gi * cout_g + r0 + r;
                // SAFETY: tasks write disjoint (output channel, channel block) ranges of dW.
                unsafe { sink.write(co * k + bi * CHANNELS * khw, row) };
            }
        });
    // SAFETY: the tasks cover every (output channel, channel block) of every group, and each
    // writes all `32 * KHW` weights of its rows.
    unsafe { dw.set_len(total) };
    dw
}
