//! CPU 2-D convolution as an implicit GEMM on the GEMM's own packed micro-kernels
//! (`matmul::MicroKernel`: AVX-512 12x32 f32, AVX2, portable; chosen at run time), with the
//! operand panels packed straight from the NCHW tensors one depth block at a time
//! (`conv/pack.rs`): no im2col buffer exists beyond one `KC x 256` panel block per task.
//!
//! Per group `gi`, with the column matrix `col[k, (n, p)]` (`k = (ci, ky, kx)`,
//! `K = C_in/G * KH * KW`, columns = every output pixel of every image):
//! - forward: `out[co, (n, p)] = W_g[co, :] . col[:, (n, p)]`. W is read in place by the
//!   micro-kernel's 12- and 8-row tiles where it has them (f32 AVX-512), else packed into
//!   `MR`-row panels once per call (`conv/weight_rows.rs`); tasks = (group, block of rows,
//!   block of <= 256 columns), each packing its own columns (im2col panel by panel, run by
//!   run through every tap) and writing its tile of `out`. f32 on AVX-512 with at least 64
//!   output channels per group on small maps orders the columns by output row, and each
//!   panel skips the kernel rows that read only padding (`conv/dead_rows.rs`; same bits).
//!   1x1 convolutions with stride 1 and no padding are the batched GEMM `W @ x[n]` itself.
//!   f32 on AVX-512 with enough channels, pixels and row width instead runs the direct
//!   convolution (`conv/direct.rs`: output channels in the vector lanes, the padded input
//!   broadcast where it lies, no panel packed).
//! - input gradient, stride 1: the forward convolution of `dy` with the flipped, transposed
//!   weights (`W'[ci, co, ky, kx] = W[co, ci, KH-1-ky, KW-1-kx]`, padding `d(k-1) - p`), so the
//!   same fast path, no scatter; the direct path packs `W'` straight from `W` into its
//!   tap-major blocks; on the implicit GEMM's path, a 3x3 `W'` is read where it
//!   lies in `W` by the micro-kernel's in-place tiles (`WeightRows::flipped_in_place`, f32 on
//!   AVX-512), and other kernels with at least 128 input channels per group pack `W'` straight
//!   into row panels (`WeightRows::flipped`).
//!   Stride > 1, undilated, with enough channels and pixels: one stride-1 forward
//!   convolution of `dy` per output phase, by the flipped sub-kernel of the taps that reach
//!   it, interleaved into `dx` (`conv/phases.rs`). Otherwise: `colgrad = W_g^T dy` on the
//!   micro-kernel per block of pixels, then col2im adds it into `dx`; tasks = (image, group,
//!   input-channel block), each owning its `dx` planes.
//! - weight gradient: `dW_g[co, k] = dy[co, (n, p)] . col[k, (n, p)]`, by the first of these
//!   paths that takes the shape:
//!   1. f32 on AVX-512 with 3-wide kernels and enough channels and pixels: computed directly,
//!      channels in the vector lanes (`conv/weight_grad_direct.rs`);
//!   2. stride 1 with at most 32 output channels per group on maps at least 16 wide: shifted
//!      dot products over padded rows, no im2col (`conv/weight_grad_shifted.rs`);
//!   3. few channels or a short `K`: a product whose depth runs over every pixel of the batch,
//!      contiguous in both operands: dot-product register tiles along the pixels, no
//!      transposes (`conv/weight_grad.rs`); tasks = (group, block of K, fixed chunk of
//!      pixels), the chunks' partial sums added in chunk order;
//!   4. f32 on AVX-512 with whole blocks of 32 input channels per group: the same product
//!      with its columns taken tap by tap, each panel skipping the pixels where its tap reads
//!      padding (`conv/weight_grad_taps.rs`); else the packed GEMM (`conv2d_bwd_weight_gemm`),
//!      whose bits it gives.
//! - 1-pixel outputs whose live taps cover the input: all three passes as plain GEMMs
//!   (`conv/dense.rs`).
//!
//! Determinism: every output element is `((0 + blk_0) + blk_1) + ...` over fixed depth blocks
//! of [`KC`], each summed in order by the micro-kernel, col2im adds in a fixed order inside
//! the task that owns the element, and the weight gradient's pixel chunks depend on the shape
//! alone, so the task split (which follows the thread count) never changes a result.
//! Cost: each pass is `2 * N * C_out * OH*OW * K` FLOPs; packing reads each input element about
//! `KH*KW/(sh*sw)` times per row block (usually 1 block), from a copy of the input with its
//! padding written out (`PaddedInput`), one vector copy per (tap, run of output pixels),
//! compiled for the micro-kernel's instruction set (`pack::vectorized`). f64 runs the same code with the f64
//! micro-kernels. Non-contiguous inputs are gathered into a contiguous copy first
//! (`contiguous_cow`).

mod dead_rows;
mod dense;
mod direct;
mod dot_tile;
mod live_taps;
mod pack;
mod phases;
mod weight_grad;
mod weight_grad_direct;
mod weight_grad_shifted;
mod weight_grad_taps;
mod weight_rows;

use super::aligned::AlignedVec;
use super::matmul::{detect_isa, Isa, MicroKernel, PackedFloat};
use super::{contiguous_cow, CpuData, CpuStorage, Float};
use crate::backend::conv::{Conv2dGeom, ConvBackend};
use crate::tensor::{Layout, Shape};
use crate::{Error, Result};
use dense::Dense;
use direct::DirectConv;
use dot_tile::DotTile;
use live_taps::LiveTaps;
use pack::{
    input_row, pack_dy_rows, pack_im2col, pack_im2col_transposed, pack_row_panels, pixel_runs,
    pixel_runs_in, valid_columns, vectorized, ColumnOrder, PaddedInput, PixelRun,
};
use rayon::prelude::*;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use weight_grad::conv2d_bwd_weight_tiles;
use weight_grad_shifted::conv2d_bwd_weight_shifted;
use weight_rows::WeightRows;

/// Depth block: rows of the packed B block (and depth of an A panel slice) per pass.
const KC: usize = 256;
/// Rows of packed A multiplied against one B block before moving on (L2-sized block of A).
const MC: usize = 192;
/// Most GEMM columns per task.
const NC_MAX: usize = 256;
/// Forward products with at most this many columns (and more rows) split only their rows
/// ([`TilePlan::few_columns`]).
const FEW_COLUMNS: usize = 128;

fn round_up(x: usize, m: usize) -> usize {
    x.div_ceil(m) * m
}

/// An output buffer that parallel tasks write through a raw pointer, each task to elements no
/// other task touches; no reference to the buffer exists while they run.
struct DisjointWrites<'a, T> {
    ptr: *mut T,
    len: usize,
    _buf: PhantomData<&'a mut [T]>,
}

// SAFETY: tasks only write disjoint elements (see `write`), and `T: Send` values move
// between threads.
unsafe impl<T: Send> Sync for DisjointWrites<'_, T> {}

impl<'a, T: Copy> DisjointWrites<'a, T> {
    /// Over possibly uninitialised memory (a `Vec`'s spare capacity): it is only written.
    fn new(buf: &'a mut [MaybeUninit<T>]) -> Self {
        DisjointWrites {
            ptr: buf.as_mut_ptr().cast(),
            len: buf.len(),
            _buf: PhantomData,
        }
    }

    /// Copies `src` to `offset..offset + src.len()`.
    /// # Safety
    /// No other task reads or writes that range while this `DisjointWrites` lives.
    unsafe fn write(&self, offset: usize, src: &[T]) {
        assert!(offset + src.len() <= self.len);
        // SAFETY: in bounds (checked above); the range is this task's alone (caller's promise),
        // so this is the only reference to it.
        let dst = unsafe { std::slice::from_raw_parts_mut(self.ptr.add(offset), src.len()) };
        pack::copy_run(dst, src);
    }
}

/// How a per-group `rows x cols` GEMM output is cut into tasks: column blocks first (they
/// share the packed rows), then row blocks (each repacks its columns) only when the column
/// blocks alone leave threads idle.
#[derive(Clone, Copy, Debug)]
struct TilePlan {
    rows: usize,
    cols: usize,
    rb: usize,
    cb: usize,
    rblocks: usize,
    cblocks: usize,
}

/// One task of a [`TilePlan`]: group, first row, rows, first column, columns.
#[derive(Clone, Copy, Debug)]
struct Tile {
    gi: usize,
    r0: usize,
    nrows: usize,
    c0: usize,
    ncols: usize,
}

impl TilePlan {
    fn new(
        groups: usize,
        rows: usize,
        cols: usize,
        kern_mr: usize,
        nr: usize,
        cb_min: usize,
    ) -> Self {
        let threads = rayon::current_num_threads().max(1);
        let cb = round_up((cols * groups).div_ceil(4 * threads), nr)
            .clamp(cb_min.max(nr), NC_MAX.max(cb_min))
            .min(round_up(cols, nr));
        let rsplit = (2 * threads).div_ceil(groups * cols.div_ceil(cb));
        Self::with_blocks(rows, cols, kern_mr, cb, rsplit)
    }
    /// The forward's plan when the product has at most [`FEW_COLUMNS`] columns (deep layers on
    /// small maps: ResNet-18's 7x7 maps at batch 2 are 98 columns against 512 x 4608
    /// weights): every column in one block and the rows split between the threads, so each
    /// task streams only its share of the weights and none runs a narrow last panel alone.
    /// Column blocks instead (the general plan) stream all of the weights once per block:
    /// 4 times 9.4 MB there, for 0.85-0.93x of this plan's speed (docs/PERF.md, session 17).
    fn few_columns(groups: usize, rows: usize, cols: usize, kern_mr: usize, nr: usize) -> Self {
        let threads = rayon::current_num_threads().max(1);
        Self::with_blocks(
            rows,
            cols,
            kern_mr,
            round_up(cols, nr),
            threads.div_ceil(groups),
        )
    }

    /// Column blocks of `cb` and the rows cut into `rsplit` blocks of whole `kern_mr` panels
    /// (at least one, at most one per panel).
    fn with_blocks(rows: usize, cols: usize, kern_mr: usize, cb: usize, rsplit: usize) -> Self {
        let mpan = rows.div_ceil(kern_mr);
        let rb = mpan.div_ceil(rsplit.clamp(1, mpan.max(1))) * kern_mr;
        TilePlan {
            rows,
            cols,
            rb,
            cb,
            rblocks: rows.div_ceil(rb),
            cblocks: cols.div_ceil(cb),
        }
    }
    fn tasks(&self, groups: usize) -> usize {
        groups * self.rblocks * self.cblocks
    }
    fn tile(&self, t: usize) -> Tile {
        let (gi, rest) = (
            t / (self.rblocks * self.cblocks),
            t % (self.rblocks * self.cblocks),
        );
        let (ri, ci) = (rest / self.cblocks, rest % self.cblocks);
        let (r0, c0) = (ri * self.rb, ci * self.cb);
        Tile {
            gi,
            r0,
            nrows: self.rb.min(self.rows - r0),
            c0,
            ncols: self.cb.min(self.cols - c0),
        }
    }
}

/// `c[r*ncols + j] += A[r, :] . B[:, j]` over one depth block of `kc`, for `r < nrows`,
/// `j < ncols`: `a_panel(q)` is the `q`-th `mr`-row panel, `bpack` holds the `nr`-wide panels.
fn multiply_block<'a, T: Float>(
    kern: &MicroKernel<T>,
    kc: usize,
    a_panel: impl Fn(usize) -> &'a [T],
    bpack: &[T],
    c: &mut [T],
    nrows: usize,
    ncols: usize,
) {
    let (mr, nr) = (kern.mr, kern.nr);
    let mc = (MC / mr).max(1) * mr;
    for ic in (0..nrows).step_by(mc) {
        let rows = mc.min(nrows - ic);
        for jq in 0..ncols.div_ceil(nr) {
            let bp = &bpack[jq * kc * nr..(jq + 1) * kc * nr];
            let w = nr.min(ncols - jq * nr);
            for iq in 0..rows.div_ceil(mr) {
                let r = ic + iq * mr;
                let h = mr.min(nrows - r);
                kern.tile(
                    kc,
                    a_panel(r / mr),
                    bp,
                    &mut c[r * ncols + jq * nr..],
                    ncols,
                    h,
                    w,
                );
            }
        }
    }
}

/// A 1x1 convolution with stride 1 and no padding or groups: a plain GEMM per image.
fn is_pointwise(g: &Conv2dGeom) -> bool {
    g.kh == 1 && g.kw == 1 && g.stride == (1, 1) && g.padding == (0, 0) && g.groups == 1
}

/// The forward convolution, with the taps that only read padding dropped first
/// (`conv/live_taps.rs`); a dense layer when what is left covers the input (`conv/dense.rs`).
fn forward<T: PackedFloat + DirectConv>(x: &[T], w: &[T], g: &Conv2dGeom, isa: Isa) -> Vec<T> {
    if let Some(dense) = Dense::of(g) {
        return dense.forward(x, &dense.weights(w, g), isa);
    }
    match LiveTaps::of(g) {
        Some(live) => conv2d_fwd(x, &live.crop_weight(w, g), &live.geom, isa),
        None => conv2d_fwd(x, w, g, isa),
    }
}

/// The input gradient, with the dead taps dropped (they only ever touch padding).
fn backward_input<T: PackedFloat + DirectConv>(
    dy: &[T],
    w: &[T],
    g: &Conv2dGeom,
    isa: Isa,
) -> Vec<T> {
    if let Some(dense) = Dense::of(g) {
        return dense.backward_input(dy, &dense.weights(w, g), isa);
    }
    match LiveTaps::of(g) {
        Some(live) => conv2d_bwd_input(dy, &live.crop_weight(w, g), &live.geom, isa),
        None => conv2d_bwd_input(dy, w, g, isa),
    }
}

/// The weight gradient, computed for the live taps only; the dead taps' gradients are zero.
fn backward_weight<T: PackedFloat + DotTile + DirectConv>(
    x: &[T],
    dy: &[T],
    g: &Conv2dGeom,
    isa: Isa,
) -> Vec<T> {
    if let Some(dense) = Dense::of(g) {
        return dense.backward_weight(x, dy, g, isa);
    }
    match LiveTaps::of(g) {
        Some(live) => {
            let dw = conv2d_bwd_weight(x, dy, &live.geom, isa);
            live.expand_weight_grad(&dw, g)
        }
        None => conv2d_bwd_weight(x, dy, g, isa),
    }
}

fn conv2d_fwd<T: PackedFloat + DirectConv>(x: &[T], w: &[T], g: &Conv2dGeom, isa: Isa) -> Vec<T> {
    let (p, k) = (g.p(), g.k());
    let total = g.n * g.c_out * p;
    if total == 0 || k == 0 {
        return vec![T::ZERO; total];
    }
    if is_pointwise(g) {
        // out[n] = W [C_out, C_in] @ x[n] [C_in, H*W]: the GEMM with W broadcast over images.
        let lw = Layout::new(
            Shape::new(vec![g.n, g.c_out, g.c_in]),
            vec![0, g.c_in, 1],
            0,
        );
        let lx = Layout::contiguous([g.n, g.c_in, p]);
        return T::gemm(w, &lw, x, &lx, None, isa);
    }
    if let Some(out) = T::direct_forward(x, w, g, isa) {
        return out;
    }
    conv2d_fwd_gemm(x, w, g, isa)
}

/// The forward convolution as an implicit GEMM (see the module docs).
fn conv2d_fwd_gemm<T: PackedFloat>(x: &[T], w: &[T], g: &Conv2dGeom, isa: Isa) -> Vec<T> {
    // W_g [C_out/G, K] per group, read in place or packed once for every task.
    let weights = WeightRows::new(w, g.groups, g.cout_g(), g.k(), &T::micro_kernel(isa));
    conv2d_fwd_gemm_with(x, &weights, g, isa)
}

/// [`conv2d_fwd_gemm`] with the weights already in the micro-kernel's form.
fn conv2d_fwd_gemm_with<T: PackedFloat>(
    x: &[T],
    weights: &WeightRows<'_, T>,
    g: &Conv2dGeom,
    isa: Isa,
) -> Vec<T> {
    let (p, k, cout_g) = (g.p(), g.k(), g.cout_g());
    let total = g.n * g.c_out * p;
    let kern = T::micro_kernel(isa);
    let (mr, nr) = (kern.mr, kern.nr);
    let cols = g.n * p;
    let plan = if cols <= FEW_COLUMNS && cout_g > cols {
        TilePlan::few_columns(g.groups, cout_g, cols, mr, nr)
    } else {
        TilePlan::new(g.groups, cout_g, cols, mr, nr, nr)
    };
    let xp = PaddedInput::new(x, g, isa);
    // Where the micro-kernels take depth runs, the columns go by output row, and each panel
    // skips the kernel rows that read only padding in all of its columns (`conv/dead_rows.rs`).
    let skip_rows = dead_rows::applies(g, kern.takes_depth_runs());
    // Not zeroed first: the tiles write every element.
    let mut out = Vec::with_capacity(total);
    let sink = DisjointWrites::new(&mut out.spare_capacity_mut()[..total]);
    // Packing and tile buffers, allocated once per batch of tasks a worker takes (zeroing a
    // fresh 320 KB per task showed in profiles): every depth block packs all the panels it
    // uses, and its first overwrites the tile.
    let scratch = || {
        let bpack = AlignedVec::zeroed(KC.min(k) * round_up(plan.cb, nr));
        (
            bpack,
            vec![T::ZERO; plan.rb * plan.cb],
            Vec::new(),
            Vec::new(),
            (Vec::new(), Vec::new()),
        )
    };
    (0..plan.tasks(g.groups)).into_par_iter().for_each_init(
        scratch,
        |(bpack, c, runs, scratch, (panel_rows, panel_depths)), t| {
            let tile = plan.tile(t);
            let (nrows, ncols) = (tile.nrows, tile.ncols);
            let c = &mut c[..nrows * ncols];
            let order = if skip_rows {
                ColumnOrder::ByRow
            } else {
                ColumnOrder::ByImage
            };
            pixel_runs_in(order, g, tile.c0, ncols, nr, runs);
            if skip_rows {
                dead_rows::panel_rows(g, runs, nr, panel_rows);
                panel_depths.resize_with(panel_rows.len(), Vec::new);
            }
            for pc in (0..k).step_by(KC) {
                let kc = KC.min(k - pc);
                let b = &mut bpack[..kc * round_up(ncols, nr)];
                vectorized(
                    isa,
                    #[inline(always)]
                    || pack_im2col(&xp, g, tile.gi, runs, ncols, pc, kc, nr, b),
                );
                let depths: &[Vec<(usize, usize)>] = if skip_rows {
                    for (rows, d) in panel_rows.iter().zip(panel_depths.iter_mut()) {
                        dead_rows::depth_runs(g, *rows, (pc, kc), d);
                    }
                    panel_depths
                } else {
                    &[]
                };
                let rows = (tile.gi, tile.r0, nrows);
                let (b, c, s) = (&bpack[..kc * round_up(ncols, nr)], &mut *c, &mut *scratch);
                weights.multiply(&kern, rows, (pc, kc), b, c, ncols, pc == 0, s, depths);
            }
            store_rows(&sink, g, runs, c, tile);
        },
    );
    // SAFETY: the plan's tiles cover every (output channel, pixel) of every image and
    // `store_rows` writes each one, so all `total` elements are initialised.
    unsafe { out.set_len(total) };
    out
}

/// Writes a task's `nrows x ncols` tile of `out[N, C_out, P]` (rows = output channels of
/// group `gi` from `r0`, columns = the pixels in `runs`).
fn store_rows<T: Copy>(
    sink: &DisjointWrites<T>,
    g: &Conv2dGeom,
    runs: &[PixelRun],
    c: &[T],
    tile: Tile,
) {
    let p = g.p();
    for r in 0..tile.nrows {
        let co = tile.gi * g.cout_g() + tile.r0 + r;
        for run in runs {
            let dst = (run.n * g.c_out + co) * p + run.oy * g.ow + run.ox;
            // SAFETY: tiles of the plan cover disjoint (row, column) sets, so no other task
            // writes these output elements.
            unsafe { sink.write(dst, &c[r * tile.ncols + run.at..][..run.len]) };
        }
    }
}

/// The geometry under which the input gradient of a stride-1 convolution is itself a
/// forward convolution of `dy` (by the flipped, transposed weights), if it is one.
fn transposed_geometry(g: &Conv2dGeom) -> Option<Conv2dGeom> {
    if g.stride != (1, 1) {
        return None;
    }
    let ph = (g.dilation.0 * (g.kh - 1)).checked_sub(g.padding.0)?;
    let pw = (g.dilation.1 * (g.kw - 1)).checked_sub(g.padding.1)?;
    Some(Conv2dGeom {
        n: g.n,
        c_in: g.c_out,
        h: g.oh,
        w: g.ow,
        c_out: g.c_in,
        kh: g.kh,
        kw: g.kw,
        stride: (1, 1),
        padding: (ph, pw),
        dilation: g.dilation,
        groups: g.groups,
        oh: g.h,
        ow: g.w,
    })
}

fn conv2d_bwd_input<T: PackedFloat + DirectConv>(
    dy: &[T],
    w: &[T],
    g: &Conv2dGeom,
    isa: Isa,
) -> Vec<T> {
    let hw = g.h * g.w;
    if g.n * g.c_in * hw == 0 || g.p() == 0 || g.cout_g() == 0 {
        return vec![T::ZERO; g.n * g.c_in * hw];
    }
    if let Some(tg) = transposed_geometry(g) {
        // W'[gi*C_in/G + ci, co, ky, kx] = W[gi*C_out/G + co, ci, KH-1-ky, KW-1-kx].
        let (cin_g, cout_g, khw) = (g.cin_g(), g.cout_g(), g.kh * g.kw);
        let kern = T::micro_kernel(isa);
        let gemm = !is_pointwise(&tg) && !T::direct_forward_applies(&tg, isa) && tg.k() > 0;
        let sizes = (cin_g, cout_g, khw);
        if gemm {
            // The implicit GEMM's path: W' read in place from W (3x3 kernels, where the
            // micro-kernel has tiles for it) or flipped straight into the micro-kernel's row
            // panels, one pass over W (W' itself, then its panels or its in-place reads, was
            // two passes and a zeroed buffer: 9.4 MB each at 512 channels).
            if let Some(weights) = WeightRows::flipped_in_place(w, sizes, &kern) {
                return conv2d_fwd_gemm_with(dy, &weights, &tg, isa);
            }
            if kern.in_place_rows.is_empty() || cin_g >= FLIP_PACK_MIN_ROWS {
                let weights = WeightRows::flipped(w, g.groups, sizes, &kern);
                return conv2d_fwd_gemm_with(dy, &weights, &tg, isa);
            }
        }
        // The direct path packs W' straight from W.
        if !is_pointwise(&tg) {
            if let Some(dx) = T::direct_forward_flipped(dy, w, &tg, isa) {
                return dx;
            }
        }
        // Tasks of FLIP_ROWS rows of W' (the flip-transpose of all of W is memory-bound: 9.4
        // MB at 512 channels). Inside one, output channel by output channel: the task's input
        // channels of `W[co]` are one contiguous read, written as one plane into each of its
        // rows, so both sides stream; row by row, every plane read was a cache miss.
        let mut wt = vec![T::ZERO; w.len()];
        wt.par_chunks_mut(cin_g * cout_g * khw)
            .enumerate()
            .for_each(|(gi, wt_g)| {
                wt_g.par_chunks_mut(FLIP_ROWS * cout_g * khw)
                    .enumerate()
                    .for_each(|(bi, rows)| {
                        let ci0 = bi * FLIP_ROWS;
                        let src = |co: usize| &w[((gi * cout_g + co) * cin_g + ci0) * khw..];
                        match khw {
                            9 => flip_block::<T, 9>(rows, cout_g, src),
                            1 => flip_block::<T, 1>(rows, cout_g, src),
                            _ => flip_block_any(rows, cout_g, khw, src),
                        }
                    })
            });
        return conv2d_fwd(dy, &wt, &tg, isa);
    }
    if let Some(dx) = phases::backward_input(dy, w, g, isa) {
        return dx;
    }
    conv2d_bwd_input_col2im(dy, w, g, isa)
}

/// Fewest input channels per group for which the stride-1 input gradient of a kernel other
/// than 3x3 packs its flipped weights into the micro-kernel's 12-row panels where it could
/// flip them and read the copy in place: the packed kernel is faster and the packing replaces
/// the flip, but a last panel is padded to 12 rows (at 16 channels 24 rows are computed, and
/// that was 0.6-0.8x; from 128 on at most 3% are padding). 3x3 weights are read in place
/// from `W` with no copy at all (`WeightRows::flipped_in_place`).
const FLIP_PACK_MIN_ROWS: usize = 128;

/// Rows of `W'` per task of the flip-transpose.
const FLIP_ROWS: usize = 16;

/// `rows[r][co][t] = src(co)[r][KHW - 1 - t]` for the `rows.len() / (cout_g*KHW)` rows of a
/// block of `W'`: `src(co)` is `W[co]` from the block's first input channel. The plane size
/// fixed at compile time (3x3, 1x1) so the reversed copy unrolls.
#[inline(always)]
fn flip_block<'w, T: Copy + 'w, const KHW: usize>(
    rows: &mut [T],
    cout_g: usize,
    src: impl Fn(usize) -> &'w [T],
) {
    let nrows = rows.len() / (cout_g * KHW);
    for co in 0..cout_g {
        let planes = &src(co)[..nrows * KHW];
        for (r, plane) in planes.chunks_exact(KHW).enumerate() {
            let plane: &[T; KHW] = plane.try_into().unwrap();
            let dst: &mut [T; KHW] = (&mut rows[(r * cout_g + co) * KHW..][..KHW])
                .try_into()
                .unwrap();
            for t in 0..KHW {
                dst[t] = plane[KHW - 1 - t];
            }
        }
    }
}

/// [`flip_block`] for any kernel size.
fn flip_block_any<'w, T: Copy + 'w>(
    rows: &mut [T],
    cout_g: usize,
    khw: usize,
    src: impl Fn(usize) -> &'w [T],
) {
    let nrows = rows.len() / (cout_g * khw);
    for co in 0..cout_g {
        let planes = &src(co)[..nrows * khw];
        for (r, plane) in planes.chunks_exact(khw).enumerate() {
            let dst = &mut rows[(r * cout_g + co) * khw..][..khw];
            for (d, &v) in dst.iter_mut().rev().zip(plane) {
                *d = v;
            }
        }
    }
}

/// The input gradient of a strided convolution: per task (block of images, group, block of
/// input channels), `colgrad = W_g^T dy` for a block of columns on the micro-kernel, then
/// col2im adds it into the task's own `dx` planes. Small maps put several images in one
/// block, so the micro-kernel's columns are filled and the packed `W_g^T` is read once per
/// block instead of once per image (at 1x1 maps, per image it was a matrix-vector product).
fn conv2d_bwd_input_col2im<T: PackedFloat>(dy: &[T], w: &[T], g: &Conv2dGeom, isa: Isa) -> Vec<T> {
    let (p, k, cin_g, cout_g) = (g.p(), g.k(), g.cin_g(), g.cout_g());
    let (hw, khw) = (g.h * g.w, g.kh * g.kw);
    let kern = T::micro_kernel(isa);
    let (mr, nr) = (kern.mr, kern.nr);
    // Images per block: a function of the shape alone, so the order of the adds into each
    // `dx` element does not follow the thread count.
    let nb = (NC_MAX / p).clamp(1, g.n);
    let iblocks = g.n.div_ceil(nb);
    let threads = rayon::current_num_threads().max(1);
    let splits = (2 * threads).div_ceil(iblocks * g.groups).clamp(1, cin_g);
    let cib = cin_g.div_ceil(splits);
    let cblocks = cin_g.div_ceil(cib);
    let cols_ok = valid_columns(g);
    let nc = NC_MAX.min(round_up(nb * p, nr));
    // W_g^T per (group, channel block): rows = the taps of the block's input channels,
    // depth C_out/G; packed once, shared by every image block.
    let wt_blocks: Vec<Vec<T>> = (0..g.groups * cblocks)
        .into_par_iter()
        .map(|gb| {
            let (gi, bi) = (gb / cblocks, gb % cblocks);
            let kr0 = bi * cib * khw;
            let rows = cib.min(cin_g - bi * cib) * khw;
            pack_row_panels(w, gi * cout_g * k + kr0, (0, 1, k), 1, rows, cout_g, mr)
        })
        .collect();
    // Task (image block, group, channel block) -> its planes `[images, channels, H*W]`.
    let parts: Vec<Vec<T>> = (0..iblocks * g.groups * cblocks)
        .into_par_iter()
        .map(|t| {
            let (ib, gi, bi) = (
                t / (g.groups * cblocks),
                (t / cblocks) % g.groups,
                t % cblocks,
            );
            let (n0, chans) = (ib * nb, cib.min(cin_g - bi * cib));
            let cols = nb.min(g.n - n0) * p;
            let rows = chans * khw;
            let apack = &wt_blocks[gi * cblocks + bi];
            let mut dxb = vec![T::ZERO; cols / p * chans * hw];
            let mut bpack = AlignedVec::zeroed(KC.min(cout_g) * nc);
            let mut c = vec![T::ZERO; rows * nc];
            let mut runs = Vec::new();
            for j0 in (0..cols).step_by(nc) {
                let ncols = nc.min(cols - j0);
                let c = &mut c[..rows * ncols];
                c.fill(T::ZERO);
                for pc in (0..cout_g).step_by(KC) {
                    let kc = KC.min(cout_g - pc);
                    for q in 0..ncols.div_ceil(nr) {
                        let live = nr.min(ncols - q * nr);
                        for kk in 0..kc {
                            let dst = &mut bpack[(q * kc + kk) * nr..(q * kc + kk + 1) * nr];
                            // Columns `n0*P + j0 + q*nr ..`, cut where an image ends.
                            let mut at = 0;
                            while at < live {
                                let col = n0 * p + j0 + q * nr + at;
                                let (ni, pix) = (col / p, col % p);
                                let seg = (p - pix).min(live - at);
                                let src = (ni * g.c_out + gi * cout_g + pc + kk) * p + pix;
                                dst[at..at + seg].copy_from_slice(&dy[src..src + seg]);
                                at += seg;
                            }
                            dst[live..].fill(T::ZERO);
                        }
                    }
                    let a_panel = |q: usize| &apack[(q * cout_g + pc) * mr..][..kc * mr];
                    multiply_block(&kern, kc, a_panel, &bpack, c, rows, ncols);
                }
                // col2im: dx[n, ci, iy, ix] += colgrad[(ci, ky, kx), (n, pixel)].
                pixel_runs(g, n0 * p + j0, ncols, usize::MAX, &mut runs);
                for r in 0..rows {
                    let (ci, ky, kx) = (r / khw, (r % khw) / g.kw, r % g.kw);
                    let crow = &c[r * ncols..(r + 1) * ncols];
                    let ok = &cols_ok[kx];
                    for run in &runs {
                        let Some(iy) = input_row(g, run.oy, ky) else {
                            continue;
                        };
                        let plane = ((run.n - n0) * chans + ci) * hw;
                        let lo = ok.start.clamp(run.ox, run.ox + run.len);
                        let hi = ok.end.clamp(lo, run.ox + run.len);
                        let dst = &mut dxb[plane + iy * g.w..plane + (iy + 1) * g.w];
                        for ox in lo..hi {
                            let ix = ox * g.stride.1 + kx * g.dilation.1 - g.padding.1;
                            dst[ix] += crow[run.at + ox - run.ox];
                        }
                    }
                }
            }
            dxb
        })
        .collect();
    let mut dx = vec![T::ZERO; g.n * g.c_in * hw];
    dx.par_chunks_mut(g.c_in * hw)
        .enumerate()
        .for_each(|(ni, dxn)| {
            let (ib, img) = (ni / nb, ni % nb);
            for gi in 0..g.groups {
                for bi in 0..cblocks {
                    let chans = cib.min(cin_g - bi * cib);
                    let part = &parts[(ib * g.groups + gi) * cblocks + bi];
                    let src = &part[img * chans * hw..(img + 1) * chans * hw];
                    let at = (gi * cin_g + bi * cib) * hw;
                    dxn[at..at + chans * hw].copy_from_slice(src);
                }
            }
        });
    dx
}

/// dW = dY x im2col(X)^T, by whichever path suits the shape (docs/PERF.md, sessions 6, 10,
/// 12 and 13, for the measurements behind the thresholds):
/// - f32 on AVX-512, kernels 3 wide, at least 32 output channels per group and 1536 output
///   pixels (256 when each channel reduces over at most 64 input channels of 3x3): the direct
///   weight gradient, output channels in the vector lanes, the input broadcast where it lies
///   (`weight_grad_direct.rs`; 1.3-1.9x the packed GEMM at 16-64 px, 1.2-1.7x on shallow
///   layers at 4-8 px);
/// - stride 1, no dilation, up to 32 output channels per group, maps at least 16 wide:
///   shifted dot products over padded rows, no im2col (`weight_grad_shifted.rs`); on narrower
///   maps the padding columns and the register flushes at every row end make them lose to
///   the tiles, and at 64 channels the GEMM (since its packing went through block transposes)
///   beats them at every width (16 px: 2.7-4.0 against 4.2-6.2 ms; 32 px: 5.0 against 8.5);
/// - few output channels per group (the small U-Net's 16 and 32) or a short reduction (`K`:
///   a 7x7 stem on RGB is 147, a 1x1 shortcut its input channels): dot-product tiles along
///   the pixels (`weight_grad.rs`), where the GEMM's `mr`-row panels would be mostly padding
///   or its packing would cost more than its arithmetic;
/// - otherwise the packed GEMM (the tiles alone made ResNet-18's backward 1.5-2x slower).
fn conv2d_bwd_weight<T: PackedFloat + DotTile + DirectConv>(
    x: &[T],
    dy: &[T],
    g: &Conv2dGeom,
    isa: Isa,
) -> Vec<T> {
    let cout_g = g.cout_g();
    if let Some(dw) = T::direct_backward_weight(x, dy, g, isa) {
        return dw;
    }
    if cout_g <= WEIGHT_GRAD_SHIFTED_MAX_COUT
        && g.ow >= WEIGHT_GRAD_SHIFTED_MIN_WIDTH
        && weight_grad_shifted::applies(g)
    {
        conv2d_bwd_weight_shifted(x, dy, g, isa)
    } else if cout_g <= WEIGHT_GRAD_TILES_MAX_COUT || g.k() <= WEIGHT_GRAD_TILES_MAX_K {
        conv2d_bwd_weight_tiles(x, dy, g, isa)
    } else if weight_grad_taps::applies(g, &T::micro_kernel(isa)) {
        weight_grad_taps::conv2d_bwd_weight_taps(x, dy, g, isa)
    } else {
        conv2d_bwd_weight_gemm(x, dy, g, isa)
    }
}

/// Up to this many output channels per group, a stride-1 weight gradient uses the shifted
/// dots: at 32 they beat the packed GEMM by 1.15x at 16 px and at 16 channels 2x at 32 px; at
/// 64 the GEMM wins (docs/PERF.md, session 10; in session 6, before the GEMM's packing was
/// vectorized, the shifted dots won at 64).
const WEIGHT_GRAD_SHIFTED_MAX_COUT: usize = 32;
/// ... and only on output maps at least this wide (docs/PERF.md, session 10).
const WEIGHT_GRAD_SHIFTED_MIN_WIDTH: usize = 16;
/// Up to this many output channels per group, other weight gradients use the pixel tiles...
const WEIGHT_GRAD_TILES_MAX_COUT: usize = 32;
/// ... and so do those whose reduction is at most this long: ResNet's 7x7 stem on RGB
/// (`K` = 147: 6.8 against 8.2 ms at 64 px) and 1x1 shortcuts (`K` = 64: 0.47-0.71 against
/// 0.87-0.90 ms); at `K` = 256 (a 1x1 shortcut on 2x2 maps) the GEMM is 10x faster.
const WEIGHT_GRAD_TILES_MAX_K: usize = 160;

fn conv2d_bwd_weight_gemm<T: PackedFloat>(x: &[T], dy: &[T], g: &Conv2dGeom, isa: Isa) -> Vec<T> {
    let (p, k, cout_g) = (g.p(), g.k(), g.cout_g());
    let total = g.c_out * k;
    if total == 0 || p == 0 || g.n == 0 {
        return vec![T::ZERO; total];
    }
    let kern = T::micro_kernel(isa);
    let (mr, nr) = (kern.mr, kern.nr);
    let depth = g.n * p;
    // Column blocks repack dy's rows each, so keep them wide.
    let plan = TilePlan::new(g.groups, cout_g, k, mr, nr, 4 * nr);
    let xp = PaddedInput::new(x, g, isa);
    let mut dw = Vec::with_capacity(total);
    let sink = DisjointWrites::new(&mut dw.spare_capacity_mut()[..total]);
    (0..plan.tasks(g.groups)).into_par_iter().for_each(|t| {
        let tile = plan.tile(t);
        let (nrows, ncols) = (tile.nrows, tile.ncols);
        let co0 = tile.gi * cout_g + tile.r0;
        let kc_max = KC.min(depth);
        let mut apack = vec![T::ZERO; round_up(nrows, mr) * kc_max];
        let mut bpack = AlignedVec::zeroed(kc_max * round_up(ncols, nr));
        let mut c = vec![T::ZERO; nrows * ncols];
        let (mut runs, mut scratch) = (Vec::new(), Vec::new());
        for pc in (0..depth).step_by(KC) {
            let kc = KC.min(depth - pc);
            pixel_runs(g, pc, kc, usize::MAX, &mut runs);
            let b = &mut bpack[..kc * round_up(ncols, nr)];
            vectorized(
                isa,
                #[inline(always)]
                || {
                    pack_dy_rows(dy, g, co0, nrows, &runs, kc, mr, &mut apack);
                    let (gi, c0, s) = (tile.gi, tile.c0, &mut scratch);
                    pack_im2col_transposed(&xp, g, gi, &runs, kc, c0, ncols, nr, s, b);
                },
            );
            let a_panel = |q: usize| &apack[q * kc * mr..(q + 1) * kc * mr];
            multiply_block(&kern, kc, a_panel, b, &mut c, nrows, ncols);
        }
        for r in 0..nrows {
            // SAFETY: tiles of the plan cover disjoint (row, column) sets of dW.
            unsafe { sink.write((co0 + r) * k + tile.c0, &c[r * ncols..(r + 1) * ncols]) };
        }
    });
    // SAFETY: the plan's tiles cover every (output channel, column) of dW and each tile
    // writes all of its rows, so all `total` elements are initialised.
    unsafe { dw.set_len(total) };
    dw
}

macro_rules! float_pair {
    ($op:expr, $a:expr, $b:expr, |$x:ident, $y:ident| $body:expr) => {
        match ($a.data(), $b.data()) {
            (CpuData::F32($x), CpuData::F32($y)) => CpuData::F32($body),
            (CpuData::F64($x), CpuData::F64($y)) => CpuData::F64($body),
            (d, _) => {
                return Err(Error::UnsupportedDType {
                    op: $op,
                    dtype: d.dtype_of(),
                    expected: "f32 or f64",
                })
            }
        }
    };
}

impl ConvBackend for CpuStorage {
    fn conv2d(
        &self,
        x_layout: &Layout,
        w: &Self,
        w_layout: &Layout,
        g: &Conv2dGeom,
    ) -> Result<Self> {
        let op = "conv2d";
        g.check(op)?;
        Conv2dGeom::expect_dims(op, "input", x_layout, [g.n, g.c_in, g.h, g.w])?;
        Conv2dGeom::expect_dims(op, "weight", w_layout, [g.c_out, g.cin_g(), g.kh, g.kw])?;
        let data = float_pair!(op, self, w, |x, wv| {
            let (x, wv) = (contiguous_cow(x, x_layout), contiguous_cow(wv, w_layout));
            forward(&x, &wv, g, detect_isa())
        });
        Ok(CpuStorage::new(data))
    }

    fn conv2d_backward_input(
        &self,
        dy_layout: &Layout,
        w: &Self,
        w_layout: &Layout,
        g: &Conv2dGeom,
    ) -> Result<Self> {
        let op = "conv2d_backward_input";
        g.check(op)?;
        Conv2dGeom::expect_dims(op, "output gradient", dy_layout, [g.n, g.c_out, g.oh, g.ow])?;
        Conv2dGeom::expect_dims(op, "weight", w_layout, [g.c_out, g.cin_g(), g.kh, g.kw])?;
        let data = float_pair!(op, self, w, |dy, wv| {
            let (dy, wv) = (contiguous_cow(dy, dy_layout), contiguous_cow(wv, w_layout));
            backward_input(&dy, &wv, g, detect_isa())
        });
        Ok(CpuStorage::new(data))
    }

    fn conv2d_backward_weight(
        &self,
        x_layout: &Layout,
        dy: &Self,
        dy_layout: &Layout,
        g: &Conv2dGeom,
    ) -> Result<Self> {
        let op = "conv2d_backward_weight";
        g.check(op)?;
        Conv2dGeom::expect_dims(op, "input", x_layout, [g.n, g.c_in, g.h, g.w])?;
        Conv2dGeom::expect_dims(op, "output gradient", dy_layout, [g.n, g.c_out, g.oh, g.ow])?;
        let data = float_pair!(op, self, dy, |x, dyv| {
            let (x, dyv) = (contiguous_cow(x, x_layout), contiguous_cow(dyv, dy_layout));
            backward_weight(&x, &dyv, g, detect_isa())
        });
        Ok(CpuStorage::new(data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A convolution case: (n, c_in, h, w, c_out, kh, kw, stride, padding, dilation, groups).
    type Case = (
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        (usize, usize),
        (usize, usize),
        (usize, usize),
        usize,
    );

    fn geom(c: Case) -> Conv2dGeom {
        let (n, c_in, h, w, c_out, kh, kw, stride, padding, dilation, groups) = c;
        let o = |i: usize, k: usize, s: usize, p: usize, d: usize| {
            (i + 2 * p - d * (k - 1) - 1) / s + 1
        };
        let g = Conv2dGeom {
            n,
            c_in,
            h,
            w,
            c_out,
            kh,
            kw,
            stride,
            padding,
            dilation,
            groups,
            oh: o(h, kh, stride.0, padding.0, dilation.0),
            ow: o(w, kw, stride.1, padding.1, dilation.1),
        };
        g.check("test").unwrap();
        g
    }

    /// Calls `f(x_index, w_index, out_index)` for every multiply of the convolution: the
    /// direct 7-loop definition, independent of the implicit-GEMM code above.
    fn taps(g: &Conv2dGeom, mut f: impl FnMut(usize, usize, usize)) {
        let (cin_g, cout_g) = (g.cin_g(), g.cout_g());
        for n in 0..g.n {
            for co in 0..g.c_out {
                let gi = co / cout_g;
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let oi = ((n * g.c_out + co) * g.oh + oy) * g.ow + ox;
                        for ci in 0..cin_g {
                            for ky in 0..g.kh {
                                for kx in 0..g.kw {
                                    let iy = (oy * g.stride.0 + ky * g.dilation.0) as isize
                                        - g.padding.0 as isize;
                                    let ix = (ox * g.stride.1 + kx * g.dilation.1) as isize
                                        - g.padding.1 as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize
                                    {
                                        continue;
                                    }
                                    let xi = ((n * g.c_in + gi * cin_g + ci) * g.h + iy as usize)
                                        * g.w
                                        + ix as usize;
                                    let wi = ((co * cin_g + ci) * g.kh + ky) * g.kw + kx;
                                    f(xi, wi, oi);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Reference (value, sum of |terms|) per element of out, dx and dw, in f64.
    type Ref = (Vec<f64>, Vec<f64>);
    fn reference(g: &Conv2dGeom, x: &[f64], w: &[f64], dy: &[f64]) -> [Ref; 3] {
        let z = |len: usize| (vec![0.0; len], vec![0.0; len]);
        let (mut out, mut dx, mut dw) = (z(dy.len()), z(x.len()), z(w.len()));
        taps(g, |xi, wi, oi| {
            out.0[oi] += x[xi] * w[wi];
            out.1[oi] += (x[xi] * w[wi]).abs();
            dx.0[xi] += w[wi] * dy[oi];
            dx.1[xi] += (w[wi] * dy[oi]).abs();
            dw.0[wi] += x[xi] * dy[oi];
            dw.1[wi] += (x[xi] * dy[oi]).abs();
        });
        [out, dx, dw]
    }

    fn random(len: usize, seed: u64) -> Vec<f64> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
            })
            .collect()
    }

    fn isas() -> Vec<Isa> {
        let mut isas = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                isas.push(Isa::Avx2);
            }
            if super::super::matmul::detect_isa_uncached() == Isa::Avx512 {
                isas.push(Isa::Avx512);
            }
        }
        isas
    }

    fn cases() -> Vec<Case> {
        vec![
            // Odd sizes, 3x3, padding 1: the stride-1 fast paths.
            (1, 3, 17, 19, 5, 3, 3, (1, 1), (1, 1), (1, 1), 1),
            // Stride 2: col2im input gradient.
            (2, 4, 13, 11, 14, 3, 3, (2, 2), (1, 1), (1, 1), 1),
            // Mixed strides, asymmetric kernel and padding.
            (2, 3, 10, 9, 7, 2, 3, (2, 1), (1, 0), (1, 1), 1),
            // Dilation and groups.
            (1, 6, 12, 10, 9, 3, 3, (1, 1), (2, 2), (2, 2), 3),
            // Depthwise, asymmetric.
            (2, 4, 6, 5, 4, 3, 2, (1, 2), (2, 0), (1, 1), 4),
            // 1x1: the plain GEMM forward; and 1x1 stride 2.
            (3, 8, 9, 7, 16, 1, 1, (1, 1), (0, 0), (1, 1), 1),
            (2, 8, 9, 7, 13, 1, 1, (2, 2), (0, 0), (1, 1), 1),
            // 7x7 stride 2 padding 3 (a ResNet stem).
            (1, 3, 23, 21, 13, 7, 7, (2, 2), (3, 3), (1, 1), 1),
            // Small maps: tiles span several images; K = 288 crosses the KC depth block.
            (3, 32, 3, 3, 33, 3, 3, (1, 1), (1, 1), (1, 1), 1),
            // Many output channels: several MC row blocks and row-split tasks; batch 1.
            (1, 4, 6, 6, 200, 3, 3, (1, 1), (1, 1), (1, 1), 1),
            // Padding larger than the kernel span: the stride-1 col2im fallback.
            (1, 2, 4, 4, 3, 3, 3, (1, 1), (3, 3), (1, 1), 1),
            // Maps at least 16 wide take the run-by-run packing (narrower ones a tap table):
            // with stride, dilation, and groups.
            (1, 3, 9, 40, 6, 3, 3, (2, 1), (1, 1), (1, 2), 1),
            (1, 2, 5, 37, 4, 3, 3, (1, 2), (1, 1), (1, 1), 1),
            (2, 4, 4, 33, 6, 3, 3, (1, 1), (1, 1), (1, 1), 2),
            // 1x1 output map, kernel the size of the input: a dense layer with every tap live.
            (5, 6, 3, 3, 7, 3, 3, (1, 1), (0, 0), (1, 1), 1),
            // The small diffusion U-Net's shapes: RGB in (C_in = 3), 16 channels at 32x32 (runs
            // of one panel row), the stride-2 downsample, and 8x8 maps (several runs a panel).
            (2, 3, 32, 32, 16, 3, 3, (1, 1), (1, 1), (1, 1), 1),
            (2, 16, 32, 32, 16, 3, 3, (1, 1), (1, 1), (1, 1), 1),
            (2, 16, 32, 32, 16, 3, 3, (2, 2), (1, 1), (1, 1), 1),
            (3, 16, 8, 8, 32, 3, 3, (1, 1), (1, 1), (1, 1), 1),
            // Dead taps (`live_taps.rs`): ResNet-18's layer4 on 32 px pictures (1x1 maps, the
            // centre tap alone: a dense layer on the weights in place) and its stride-2 entry
            // (2x2 -> 1x1, taps 1..=2: a dense layer on a copy of the live taps), a 7x7 stem on a 2x3 picture, and a dilated 1-row map.
            (5, 40, 1, 1, 36, 3, 3, (1, 1), (1, 1), (1, 1), 1),
            (4, 24, 2, 2, 40, 3, 3, (2, 2), (1, 1), (1, 1), 1),
            (2, 3, 2, 3, 8, 7, 7, (2, 2), (3, 3), (1, 1), 1),
            (2, 6, 1, 9, 4, 3, 3, (1, 1), (2, 1), (2, 1), 2),
            // Dense layers (`dense.rs`) reading the weights in place through one live tap
            // that is not the centre one: tap (1, 1) of 2x2 and of 3x2.
            (3, 10, 1, 1, 12, 2, 2, (2, 2), (1, 1), (1, 1), 1),
            (3, 10, 1, 1, 12, 3, 2, (1, 2), (1, 1), (1, 1), 1),
            // Weights read in place (`conv/weight_rows.rs`): rows tiled 4x12 + 2x8 on 4-pixel
            // runs; 12 + 8 rows on 2-pixel runs with 16 columns in all (the 16-wide tile);
            // 8 tiled rows and 3 packed ones on a non-square map (10-pixel runs); groups of 12
            // rows with stride (2, 1) on 16-pixel runs; three depth blocks (K = 576) with
            // 3 x 12 + 8 rows, 7-pixel runs and a last panel of 6 columns.
            (2, 20, 4, 4, 64, 3, 3, (1, 1), (1, 1), (1, 1), 1),
            (4, 24, 2, 2, 20, 3, 3, (1, 1), (1, 1), (1, 1), 1),
            (3, 6, 16, 10, 11, 3, 3, (1, 1), (1, 1), (1, 1), 1),
            (2, 8, 9, 16, 24, 3, 3, (2, 1), (1, 1), (1, 1), 2),
            (2, 64, 5, 7, 44, 3, 3, (1, 1), (1, 1), (1, 1), 1),
            // For the direct forward (`conv/direct.rs`, f32 on AVX-512, checked on every
            // case it supports): 40 channels (a block of 32 and one of 8 live lanes), K = 180
            // in two chunks, 13-pixel rows; stride 2 on 15-pixel rows (tiles of 8 and 7);
            // groups of 33 channels with a vertical dilation and a 3x2 kernel; a 7x7 stem,
            // stride 2; a row stride of 3; 40 input channels (a stride-1 input gradient).
            (2, 20, 9, 13, 40, 3, 3, (1, 1), (1, 1), (1, 1), 1),
            (1, 6, 11, 30, 64, 3, 3, (2, 2), (1, 1), (1, 1), 1),
            (2, 8, 10, 20, 66, 3, 2, (1, 1), (2, 1), (2, 1), 2),
            (1, 3, 12, 40, 32, 7, 7, (2, 2), (3, 3), (1, 1), 1),
            (1, 5, 7, 12, 32, 1, 3, (3, 1), (0, 1), (1, 1), 1),
            (2, 40, 6, 9, 32, 3, 3, (1, 1), (1, 1), (1, 1), 1),
            // Few columns against many rows: the forward splits only its rows
            // (`TilePlan::few_columns`), 260 channels. Then 130 and 136 input
            // channels per group: the stride-1 input gradient reads its flipped 3x3 weights
            // in place (10 x 12 + 8 rows and 2 packed ones per group), and packs those of a
            // 2x3 kernel (at least `FLIP_PACK_MIN_ROWS`) into 12-row panels, the last one
            // partial.
            (1, 12, 5, 6, 260, 3, 3, (1, 1), (1, 1), (1, 1), 1),
            (1, 260, 4, 5, 8, 3, 3, (1, 1), (1, 1), (1, 1), 2),
            (2, 136, 3, 4, 6, 2, 3, (1, 1), (1, 0), (1, 1), 1),
            // Strided input gradients from at least 16 input channels per group run as one
            // stride-1 convolution per phase (`conv/phases.rs`): odd maps at stride 2; stride
            // (3, 2) with a 4x4 kernel (phases of 2 and 1 taps), groups; a 1x1 kernel at
            // stride 2 (the odd rows and columns receive nothing); a 2x2 kernel at stride 2
            // (one tap per phase); a 1-row input (a phase with taps but no rows).
            (2, 20, 9, 8, 12, 3, 3, (2, 2), (1, 1), (1, 1), 1),
            (1, 32, 10, 11, 8, 4, 4, (3, 2), (2, 1), (1, 1), 2),
            (2, 16, 7, 6, 10, 1, 1, (2, 2), (0, 0), (1, 1), 1),
            (2, 24, 8, 6, 20, 2, 2, (2, 2), (0, 0), (1, 1), 1),
            (3, 18, 1, 7, 9, 3, 3, (2, 2), (1, 1), (1, 1), 1),
            // Dead kernel rows skipped (`conv/dead_rows.rs`, f32 on AVX-512, from 64 output
            // channels): each output row across the batch fills two panels (16 x 4 columns),
            // and one (8 x 4); the second's input gradient (130 channels out) on the packed
            // flipped panels, the last one partial.
            (16, 8, 4, 4, 64, 3, 3, (1, 1), (1, 1), (1, 1), 1),
            (8, 130, 4, 4, 6, 3, 3, (1, 1), (1, 1), (1, 1), 1),
            // Large enough for the dispatch to take both direct paths: the weight gradient's
            // pixels in 3 splits of several sub-chunks, 6 groups of input-row pairs.
            (3, 8, 40, 40, 40, 3, 3, (1, 1), (1, 1), (1, 1), 1),
            // The direct forward's depth (K = 360) in pieces of 128, 128 and 104 taps, the
            // FMA chains passed between the first block's pieces (`conv/direct.rs`); 35
            // output channels: a second block of 3 lanes.
            (2, 40, 12, 12, 35, 3, 3, (1, 1), (1, 1), (1, 1), 1),
            // Stride 2 along rows 28 wide: the direct forward's widest tiles (14 + 14 pixels)
            // reading every other input.
            (1, 3, 10, 56, 33, 3, 3, (2, 2), (1, 1), (1, 1), 1),
        ]
    }

    /// Every element of `got` within `tol * (magnitude + 1e-3)` of the f64 reference, where
    /// the magnitude is the sum of the absolute products behind that element.
    fn assert_close<T: PackedFloat>(what: &str, got: &[T], want: &[f64], mag: &[f64], tol: f64) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (a, (b, m))) in got.iter().zip(want.iter().zip(mag)).enumerate() {
            let err = (a.to_f64() - b).abs();
            assert!(
                err <= tol * (m + 1e-3),
                "{what} element {i}: {} vs {b}",
                a.to_f64()
            );
        }
    }

    fn check<T: PackedFloat + DotTile + DirectConv>(tol: f64) {
        for (ci, &case) in cases().iter().enumerate() {
            let g = geom(case);
            let seed = 17 * ci as u64;
            let x = random(g.n * g.c_in * g.h * g.w, seed);
            let w = random(g.c_out * g.k(), seed + 1);
            let dy = random(g.n * g.c_out * g.p(), seed + 2);
            let refs = reference(&g, &x, &w, &dy);
            let cast = |v: &[f64]| v.iter().map(|&a| T::from_f64(a)).collect::<Vec<T>>();
            let (xt, wt, dyt) = (cast(&x), cast(&w), cast(&dy));
            for isa in isas() {
                let got = [
                    forward(&xt, &wt, &g, isa),
                    backward_input(&dyt, &wt, &g, isa),
                    backward_weight(&xt, &dyt, &g, isa),
                ];
                for ((name, got), (want, mag)) in ["forward", "grad input", "grad weight"]
                    .iter()
                    .zip(&got)
                    .zip(&refs)
                {
                    assert_close(&format!("{name} {isa:?} {case:?}"), got, want, mag, tol);
                }
                // The direct forward on every shape it can take, not only those the dispatch
                // gives it (f32 on AVX-512).
                if let Some(got) = T::direct_forward_anyway(&xt, &wt, &g, isa) {
                    let (want, mag) = &refs[0];
                    assert_close(&format!("direct {case:?}"), &got, want, mag, tol);
                    // The implicit GEMM's bits, so the dispatch (which looks at the batch
                    // size) never changes a result.
                    if !is_pointwise(&g) && LiveTaps::of(&g).is_none() {
                        let gemm = conv2d_fwd_gemm(&xt, &wt, &g, isa);
                        assert!(got == gemm, "direct forward bits differ {case:?}");
                    }
                }
                // A stride-1 input gradient's flipped weights, on every such shape, three ways:
                // packed into panels (on every instruction set), 3x3 ones read in place (f32 on
                // AVX-512; the panels' values), and packed straight from W by the direct path
                // wherever it can run (the implicit GEMM's bits, as any direct forward).
                if let Some(tg) = transposed_geometry(&g) {
                    let kern = T::micro_kernel(isa);
                    let sizes = (g.cin_g(), g.cout_g(), g.kh * g.kw);
                    let (want, mag) = &refs[1];
                    let packed = WeightRows::flipped(&wt, g.groups, sizes, &kern);
                    let packed = conv2d_fwd_gemm_with(&dyt, &packed, &tg, isa);
                    assert_close(
                        &format!("packed dx {isa:?} {case:?}"),
                        &packed,
                        want,
                        mag,
                        tol,
                    );
                    if let Some(in_place) = WeightRows::flipped_in_place(&wt, sizes, &kern) {
                        let got = conv2d_fwd_gemm_with(&dyt, &in_place, &tg, isa);
                        assert!(got == packed, "flipped in place differs {case:?}");
                    }
                    if let Some(got) = T::direct_forward_flipped_anyway(&dyt, &wt, &tg, isa) {
                        assert_close(&format!("direct dx {case:?}"), &got, want, mag, tol);
                        if !is_pointwise(&tg) && LiveTaps::of(&tg).is_none() {
                            assert!(got == packed, "direct flipped bits differ {case:?}");
                        }
                    }
                }
                // The phases on every strided shape they can take, whatever the channels.
                if g.stride != (1, 1) {
                    if let Some(got) = phases::backward_input_anyway(&dyt, &wt, &g, isa) {
                        let (want, mag) = &refs[1];
                        assert_close(&format!("phases dx {isa:?} {case:?}"), &got, want, mag, tol);
                    }
                }
                if let Some(got) = T::direct_backward_weight_anyway(&xt, &dyt, &g, isa) {
                    let (want, mag) = &refs[2];
                    assert_close(&format!("direct dW {case:?}"), &got, want, mag, tol);
                }
            }
        }
    }

    #[test]
    fn implicit_gemm_matches_direct_loops_f64() {
        check::<f64>(1e-12);
    }

    #[test]
    fn implicit_gemm_matches_direct_loops_f32() {
        check::<f32>(2e-6);
    }

    /// Stride-1 undilated shapes for the shifted-dot weight gradient: odd sizes, widths that
    /// are not a multiple of any lane count, padding 0 to 2, 1x1, 3x3 and 5x5 kernels, groups,
    /// batch 1 and 3, more than one column block (K > 256) and more than one depth chunk.
    fn shifted_cases() -> Vec<Case> {
        vec![
            (1, 3, 7, 5, 4, 3, 3, (1, 1), (1, 1), (1, 1), 1),
            (3, 5, 9, 13, 6, 3, 3, (1, 1), (0, 0), (1, 1), 1),
            (3, 4, 11, 6, 5, 5, 5, (1, 1), (2, 2), (1, 1), 1),
            (2, 6, 8, 17, 3, 1, 1, (1, 1), (0, 0), (1, 1), 1),
            (1, 4, 6, 7, 9, 1, 1, (1, 1), (1, 1), (1, 1), 1),
            (3, 6, 10, 9, 6, 3, 5, (1, 1), (1, 2), (1, 1), 3),
            (1, 33, 5, 6, 7, 3, 3, (1, 1), (1, 1), (1, 1), 1),
            (3, 2, 40, 37, 5, 3, 3, (1, 1), (1, 1), (1, 1), 1),
            (2, 3, 2, 3, 4, 3, 3, (1, 1), (2, 1), (1, 1), 1),
        ]
    }

    /// Each weight-gradient path on its own, against the direct loops in f64, on every
    /// instruction set: the shifted dots (stride 1), the general tiles, the packed GEMM.
    fn check_weight_grad_paths<T: PackedFloat + DotTile + DirectConv>(tol: f64) {
        let general = cases().into_iter().step_by(2);
        let all = shifted_cases()
            .into_iter()
            .chain(general)
            .chain(taps_cases());
        for (ci, case) in all.enumerate() {
            let g = geom(case);
            let seed = 1000 + 31 * ci as u64;
            let x = random(g.n * g.c_in * g.h * g.w, seed);
            let dy = random(g.n * g.c_out * g.p(), seed + 1);
            let w = vec![0.0; g.c_out * g.k()];
            let [_, _, (want, mag)] = reference(&g, &x, &w, &dy);
            let cast = |v: &[f64]| v.iter().map(|&a| T::from_f64(a)).collect::<Vec<T>>();
            let (xt, dyt) = (cast(&x), cast(&dy));
            for isa in isas() {
                let mut paths = vec![
                    ("tiles", conv2d_bwd_weight_tiles(&xt, &dyt, &g, isa)),
                    ("gemm", conv2d_bwd_weight_gemm(&xt, &dyt, &g, isa)),
                ];
                if weight_grad_shifted::applies(&g) {
                    paths.push(("shifted", conv2d_bwd_weight_shifted(&xt, &dyt, &g, isa)));
                }
                if let Some(dw) = T::direct_backward_weight_anyway(&xt, &dyt, &g, isa) {
                    paths.push(("direct", dw));
                }
                if weight_grad_taps::applies(&g, &T::micro_kernel(isa)) {
                    let taps = weight_grad_taps::conv2d_bwd_weight_taps(&xt, &dyt, &g, isa);
                    // The packed GEMM's sums without the terms that multiply padding.
                    let same = taps
                        .iter()
                        .zip(&paths[1].1)
                        .all(|(a, b)| a.to_f64() == b.to_f64());
                    assert!(same, "taps dW bits differ from the packed GEMM's {case:?}");
                    paths.push(("taps", taps));
                }
                for (name, got) in paths {
                    assert_close(&format!("{name} {isa:?} {case:?}"), &got, &want, &mag, tol);
                }
            }
        }
    }

    /// Shapes for the tap-major weight gradient (`conv/weight_grad_taps.rs`: f32 on AVX-512,
    /// 32 input channels per group): 4x4 and 2x2 maps at batch 16 and 4 (rows tiled 2 x 12
    /// and 12 + 8); stride 2 with 10 output channels (rows the in-place tiles leave to the
    /// packed kernel, which must skip the same dead pixels, over two depth blocks whose dead
    /// rows differ); groups of 32
    /// channels with dilation 2 over two depth blocks; an asymmetric kernel, stride and
    /// padding; one image (`dy` read as it is); padding 2 on 2x2 maps (taps live at a few
    /// pixels only).
    fn taps_cases() -> Vec<Case> {
        vec![
            (16, 32, 4, 4, 24, 3, 3, (1, 1), (1, 1), (1, 1), 1),
            (4, 64, 2, 2, 20, 3, 3, (1, 1), (1, 1), (1, 1), 1),
            (12, 32, 9, 11, 10, 3, 3, (2, 2), (1, 1), (1, 1), 1),
            (2, 64, 12, 13, 16, 3, 3, (1, 1), (2, 2), (2, 2), 2),
            (5, 32, 7, 9, 12, 2, 3, (1, 2), (1, 0), (1, 1), 1),
            (1, 32, 6, 6, 8, 3, 3, (1, 1), (1, 1), (1, 1), 1),
            (4, 32, 2, 2, 8, 3, 3, (1, 1), (2, 2), (1, 1), 1),
        ]
    }

    #[test]
    fn weight_grad_paths_match_direct_loops_f64() {
        check_weight_grad_paths::<f64>(1e-12);
    }

    #[test]
    fn weight_grad_paths_match_direct_loops_f32() {
        check_weight_grad_paths::<f32>(2e-6);
    }

    /// The shifted-dot weight gradient gives the same bits for every thread count, on shapes
    /// with several depth chunks and column blocks.
    #[test]
    fn shifted_weight_grad_ignores_thread_count() {
        for case in [
            (3, 2, 40, 37, 5, 3, 3, (1, 1), (1, 1), (1, 1), 1),
            (4, 32, 16, 16, 32, 3, 3, (1, 1), (1, 1), (1, 1), 1),
            (2, 6, 19, 21, 6, 5, 5, (1, 1), (2, 2), (1, 1), 2),
        ] {
            let g = geom(case);
            let to32 = |v: Vec<f64>| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
            let x = to32(random(g.n * g.c_in * g.h * g.w, 7));
            let dy = to32(random(g.n * g.c_out * g.p(), 8));
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| conv2d_bwd_weight_shifted(&x, &dy, &g, detect_isa()))
            };
            let one = run(1);
            for threads in [2, 3, 5] {
                assert!(run(threads) == one, "{case:?} with {threads} threads");
            }
        }
    }

    /// Results are bitwise the same whatever the thread count (the task split changes with
    /// it; the summation order must not).
    #[test]
    fn thread_count_does_not_change_results() {
        for case in [
            (4, 16, 9, 9, 40, 3, 3, (1, 1), (1, 1), (1, 1), 1),
            (2, 8, 11, 10, 24, 3, 3, (2, 2), (1, 1), (1, 1), 2),
            // Enough pixels for several weight-gradient depth chunks.
            (3, 3, 48, 48, 8, 3, 3, (1, 1), (1, 1), (1, 1), 1),
            // Dead taps cropped: 1x1 and 2x2 -> 1x1 maps.
            (6, 40, 1, 1, 72, 3, 3, (1, 1), (1, 1), (1, 1), 1),
            (6, 24, 2, 2, 40, 3, 3, (2, 2), (1, 1), (1, 1), 1),
            // The tap-major weight gradient: 40 output channels in row blocks that change
            // with the thread count (a last block of 4 rows with 3 threads: the packed kernel).
            (4, 32, 4, 4, 40, 3, 3, (1, 1), (1, 1), (1, 1), 1),
            // The direct forward, two chunks of taps, on rows cut into bands; stride 2.
            (4, 20, 24, 20, 40, 3, 3, (1, 1), (1, 1), (1, 1), 1),
            (4, 6, 48, 40, 33, 3, 3, (2, 2), (1, 1), (1, 1), 1),
            (3, 8, 40, 40, 40, 3, 3, (1, 1), (1, 1), (1, 1), 1),
        ] {
            let g = geom(case);
            let x: Vec<f32> = random(g.n * g.c_in * g.h * g.w, 1)
                .iter()
                .map(|&v| v as f32)
                .collect();
            let w: Vec<f32> = random(g.c_out * g.k(), 2)
                .iter()
                .map(|&v| v as f32)
                .collect();
            let dy: Vec<f32> = random(g.n * g.c_out * g.p(), 3)
                .iter()
                .map(|&v| v as f32)
                .collect();
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| {
                    let isa = detect_isa();
                    (
                        forward(&x, &w, &g, isa),
                        backward_input(&dy, &w, &g, isa),
                        backward_weight(&x, &dy, &g, isa),
                    )
                })
            };
            let one = run(1);
            for threads in [2, 3, 7] {
                assert!(run(threads) == one, "{case:?} with {threads} threads");
            }
        }
    }
}
