//! CPU 2-D convolution as an implicit GEMM over small packed tiles (never a whole-batch
//! im2col buffer).
//!
//! Per image `n` and group `g`, the convolution is the GEMM `out[co, p] = sum_k W[co, k] col[k, p]`
//! with `k = (ci, ky, kx)` (length `K = C_in/G * KH * KW`) and `p` the output pixel. Instead of
//! materialising `col` (`K x OH*OW` per image, `N` times that for the batch), we walk the
//! output pixels in tiles of [`TILE_P`]: each tile's columns are packed into a `K x TILE_P`
//! buffer (zeros where the window hits padding), then multiplied by an `MR x NR` register-tile
//! kernel ([`gemm_tile`], fixed-size accumulator arrays that LLVM keeps in vector registers;
//! an AVX2+FMA build of it is chosen at run time when the CPU has those features).
//!
//! - forward: tasks = (image, group, block of [`CO_BLOCK`] output channels), Rayon-parallel.
//! - input gradient: `colgrad = W_g^T dy_tile`, then col2im scatter-adds it into `dx`;
//!   tasks = (image, group, block of [`CI_BLOCK`] input channels), each owning its `dx` planes.
//! - weight gradient: `dW_g += dy_tile colT_tile` over images and tiles; tasks = (group,
//!   output-channel block), each owning its rows of `dW`. Sequential inside a task, so results
//!   are deterministic for any thread count.
//!
//! Cost: each pass is `2 * N * C_out * OH*OW * K` FLOPs. Packing reads each input element about
//! `KH*KW/(sh*sw)` times per output-channel block (from cache); the output is written once.
//! Non-contiguous inputs are gathered into a contiguous copy first (`contiguous_cow`).

use super::{contiguous_cow, CpuData, CpuStorage, Float};
use crate::backend::conv::{Conv2dGeom, ConvBackend};
use crate::tensor::Layout;
use crate::{Error, Result};
use rayon::prelude::*;

/// Register tile: rows of the left operand per micro-kernel call.
const MR: usize = 4;
/// Column padding of the packed tiles; the micro-kernel takes 16 (f32) or 8 (f64) at a time.
const NR: usize = 16;
/// Output pixels per packed tile.
const TILE_P: usize = 128;
/// Output channels per forward / weight-gradient task.
const CO_BLOCK: usize = 32;
/// Input channels per input-gradient task.
const CI_BLOCK: usize = 8;

fn round_up(x: usize, m: usize) -> usize {
    x.div_ceil(m) * m
}

/// `c[r*ldc + j] (+)= sum_{t < inner} a[r*lda + t] * b[t*ldb + j]` for `r < m`, `j < ncols`.
/// `b` must have `ldb >= round_up(ncols, NR)` readable columns per row (extra ones are ignored).
/// Runs the AVX2+FMA build of the kernel when the CPU has it (checked at run time).
#[allow(clippy::too_many_arguments)]
fn gemm_tile<T: Float>(
    m: usize,
    ncols: usize,
    inner: usize,
    a: &[T],
    lda: usize,
    b: &[T],
    ldb: usize,
    c: &mut [T],
    ldc: usize,
    accumulate: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU features this function is compiled for were checked just above.
        unsafe { gemm_tile_avx512(m, ncols, inner, a, lda, b, ldb, c, ldc, accumulate) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU features this function is compiled for were checked just above.
        unsafe { gemm_tile_avx2(m, ncols, inner, a, lda, b, ldb, c, ldc, accumulate) };
        return;
    }
    gemm_tile_impl::<T, MR, false>(m, ncols, inner, a, lda, b, ldb, c, ldc, accumulate)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
fn gemm_tile_avx512<T: Float>(
    m: usize,
    ncols: usize,
    inner: usize,
    a: &[T],
    lda: usize,
    b: &[T],
    ldb: usize,
    c: &mut [T],
    ldc: usize,
    accumulate: bool,
) {
    // 32 vector registers: twice the rows of the AVX2 tile.
    gemm_tile_impl::<T, { 2 * MR }, true>(m, ncols, inner, a, lda, b, ldb, c, ldc, accumulate)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
fn gemm_tile_avx2<T: Float>(
    m: usize,
    ncols: usize,
    inner: usize,
    a: &[T],
    lda: usize,
    b: &[T],
    ldb: usize,
    c: &mut [T],
    ldc: usize,
    accumulate: bool,
) {
    gemm_tile_impl::<T, MR, true>(m, ncols, inner, a, lda, b, ldb, c, ldc, accumulate)
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn gemm_tile_impl<T: Float, const ROWS: usize, const FMA: bool>(
    m: usize,
    ncols: usize,
    inner: usize,
    a: &[T],
    lda: usize,
    b: &[T],
    ldb: usize,
    c: &mut [T],
    ldc: usize,
    accumulate: bool,
) {
    // Register tiles LLVM vectorizes fully: 4 x 16 for f32 (8 ymm), 4 x 8 for f64.
    let f32_like = std::mem::size_of::<T>() == 4;
    let mut r = 0;
    while r + ROWS <= m {
        if f32_like {
            row_block::<T, ROWS, 16, FMA>(r, ncols, inner, a, lda, b, ldb, c, ldc, accumulate);
        } else {
            row_block::<T, ROWS, 8, FMA>(r, ncols, inner, a, lda, b, ldb, c, ldc, accumulate);
        }
        r += ROWS;
    }
    while r < m {
        if f32_like {
            row_block::<T, 1, 16, FMA>(r, ncols, inner, a, lda, b, ldb, c, ldc, accumulate);
        } else {
            row_block::<T, 1, 8, FMA>(r, ncols, inner, a, lda, b, ldb, c, ldc, accumulate);
        }
        r += 1;
    }
}

/// Rows `r0..r0+R` of the tile, `KN` columns at a time (`KN` divides [`NR`]).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn row_block<T: Float, const R: usize, const KN: usize, const FMA: bool>(
    r0: usize,
    ncols: usize,
    inner: usize,
    a: &[T],
    lda: usize,
    b: &[T],
    ldb: usize,
    c: &mut [T],
    ldc: usize,
    accumulate: bool,
) {
    let mut j = 0;
    while j < ncols {
        let mut acc = [[T::ZERO; KN]; R];
        for t in 0..inner {
            let Some((brow, _)) = b[t * ldb + j..].split_first_chunk::<KN>() else {
                return; // unreachable: ldb is padded to a multiple of NR
            };
            for (rr, accr) in acc.iter_mut().enumerate() {
                let av = a[(r0 + rr) * lda + t];
                for (x, &bv) in accr.iter_mut().zip(brow) {
                    *x = if FMA {
                        av.mul_add(bv, *x)
                    } else {
                        *x + av * bv
                    };
                }
            }
        }
        let w = KN.min(ncols - j);
        for (rr, accr) in acc.iter().enumerate() {
            let crow = &mut c[(r0 + rr) * ldc + j..(r0 + rr) * ldc + j + w];
            for (o, &v) in crow.iter_mut().zip(&accr[..w]) {
                if accumulate {
                    *o += v
                } else {
                    *o = v
                }
            }
        }
        j += KN;
    }
}

/// Calls `f(kk, t, plane_index)` for every (row `kk` of the column matrix, tile column `t`)
/// whose window position lands inside the image; `plane_index` is `ci*H*W + iy*W + ix`.
/// Positions in the padding are skipped (the caller's buffer must hold zeros there).
fn for_each_tap(
    g: &Conv2dGeom,
    ci_range: std::ops::Range<usize>,
    p0: usize,
    np: usize,
    mut f: impl FnMut(usize, usize, usize),
) {
    let (sh, sw) = g.stride;
    let (ph, pw) = g.padding;
    let (dh, dw) = g.dilation;
    for ci in ci_range.clone() {
        let plane = (ci - ci_range.start) * g.h * g.w;
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let kk = ((ci - ci_range.start) * g.kh + ky) * g.kw + kx;
                let (mut oy, mut ox) = (p0 / g.ow, p0 % g.ow);
                for t in 0..np {
                    let iy = oy * sh + ky * dh;
                    let ix = ox * sw + kx * dw;
                    if iy >= ph && iy - ph < g.h && ix >= pw && ix - pw < g.w {
                        f(kk, t, plane + (iy - ph) * g.w + (ix - pw));
                    }
                    ox += 1;
                    if ox == g.ow {
                        ox = 0;
                        oy += 1;
                    }
                }
            }
        }
    }
}

/// Packs the column tile `col[kk*ks + t*ts] = x_g[window(kk, p0 + t)]` for `t < np`, with 0
/// for padding taps; columns `np..zero_cols` are zeroed too (the micro-kernel's tail).
#[allow(clippy::too_many_arguments)]
fn pack_cols<T: Float>(
    xg: &[T],
    g: &Conv2dGeom,
    p0: usize,
    np: usize,
    zero_cols: usize,
    buf: &mut [T],
    ks: usize,
    ts: usize,
) {
    for kk in 0..g.k() {
        for t in 0..zero_cols.max(np) {
            buf[kk * ks + t * ts] = T::ZERO;
        }
    }
    for_each_tap(g, 0..g.cin_g(), p0, np, |kk, t, xi| {
        buf[kk * ks + t * ts] = xg[xi];
    });
}

/// Images per column tile when a whole image has fewer than [`TILE_P`] output pixels (deep
/// layers of a CNN on small pictures: a 1x1 map alone would fill 1 of the micro-kernel's 16
/// columns and waste the rest). Whole images then share one tile, capped so that the batch
/// still splits into at least one tile per thread.
fn images_per_tile(n: usize, p: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    (TILE_P / p.max(1)).min(n.div_ceil(threads)).max(1)
}

/// [`conv2d_fwd`] for small maps: tasks = tiles of whole images; the GEMM's columns are
/// (image, pixel) pairs, written back to each image's planes.
fn conv2d_fwd_small<T: Float>(x: &[T], w: &[T], g: &Conv2dGeom) -> Vec<T> {
    let (p, k, cin_g, cout_g) = (g.p(), g.k(), g.cin_g(), g.cout_g());
    let hw = g.h * g.w;
    let mut out = vec![T::ZERO; g.n * g.c_out * p];
    let ipt = images_per_tile(g.n, p);
    out.par_chunks_mut(ipt * g.c_out * p)
        .enumerate()
        .for_each(|(ti, ot)| {
            let (n0, imgs) = (ti * ipt, ot.len() / (g.c_out * p));
            let cols = imgs * p;
            let ldb = round_up(cols, NR);
            let mut col = vec![T::ZERO; k * ldb];
            let mut acc = vec![T::ZERO; cout_g * ldb];
            for gi in 0..g.groups {
                for i in 0..imgs {
                    let xg = &x[((n0 + i) * g.c_in + gi * cin_g) * hw..][..cin_g * hw];
                    pack_cols(xg, g, 0, p, p, &mut col[i * p..], ldb, 1);
                }
                let wg = &w[gi * cout_g * k..][..cout_g * k];
                gemm_tile(cout_g, cols, k, wg, k, &col, ldb, &mut acc, ldb, false);
                for i in 0..imgs {
                    for co in 0..cout_g {
                        ot[(i * g.c_out + gi * cout_g + co) * p..][..p]
                            .copy_from_slice(&acc[co * ldb + i * p..][..p]);
                    }
                }
            }
        });
    out
}

/// [`conv2d_bwd_input`] for small maps: tasks = tiles of whole images, each owning their `dx`.
fn conv2d_bwd_input_small<T: Float>(dy: &[T], wt: &[T], g: &Conv2dGeom) -> Vec<T> {
    let (p, k, cin_g, cout_g) = (g.p(), g.k(), g.cin_g(), g.cout_g());
    let hw = g.h * g.w;
    let mut dx = vec![T::ZERO; g.n * g.c_in * hw];
    let ipt = images_per_tile(g.n, p);
    dx.par_chunks_mut(ipt * g.c_in * hw)
        .enumerate()
        .for_each(|(ti, dxt)| {
            let (n0, imgs) = (ti * ipt, dxt.len() / (g.c_in * hw));
            let cols = imgs * p;
            let ldb = round_up(cols, NR);
            let mut dyt = vec![T::ZERO; cout_g * ldb];
            let mut colg = vec![T::ZERO; k * ldb];
            for gi in 0..g.groups {
                for i in 0..imgs {
                    for co in 0..cout_g {
                        dyt[co * ldb + i * p..][..p].copy_from_slice(
                            &dy[((n0 + i) * g.c_out + gi * cout_g + co) * p..][..p],
                        );
                    }
                }
                let a = &wt[gi * k * cout_g..][..k * cout_g];
                gemm_tile(k, cols, cout_g, a, cout_g, &dyt, ldb, &mut colg, ldb, false);
                for i in 0..imgs {
                    let dxg = &mut dxt[(i * g.c_in + gi * cin_g) * hw..][..cin_g * hw];
                    for_each_tap(g, 0..cin_g, 0, p, |kk, t, xi| {
                        dxg[xi] += colg[kk * ldb + i * p + t];
                    });
                }
            }
        });
    dx
}

/// [`conv2d_bwd_weight`] for small maps: the GEMM's inner dimension runs over (image, pixel)
/// pairs of [`TILE_P`] / p whole images at a time instead of one image's few pixels.
fn conv2d_bwd_weight_small<T: Float>(x: &[T], dy: &[T], g: &Conv2dGeom) -> Vec<T> {
    let (p, k, cin_g, cout_g) = (g.p(), g.k(), g.cin_g(), g.cout_g());
    let mut dw = vec![T::ZERO; g.c_out * k];
    let hw = g.h * g.w;
    let kpad = round_up(k, NR);
    let cob = CO_BLOCK.min(cout_g);
    let ipt = (TILE_P / p).max(1);
    dw.par_chunks_mut(cout_g * k)
        .enumerate()
        .for_each(|(gi, dwg)| {
            dwg.par_chunks_mut(cob * k)
                .enumerate()
                .for_each(|(bi, dwb)| {
                    let co0 = gi * cout_g + bi * cob;
                    let m = dwb.len() / k;
                    let mut colt = vec![T::ZERO; ipt * p * kpad];
                    let mut dyt = vec![T::ZERO; m * ipt * p];
                    for n0 in (0..g.n).step_by(ipt) {
                        let imgs = ipt.min(g.n - n0);
                        let cols = imgs * p;
                        for i in 0..imgs {
                            let xg = &x[((n0 + i) * g.c_in + gi * cin_g) * hw..][..cin_g * hw];
                            pack_cols(xg, g, 0, p, p, &mut colt[i * p * kpad..], 1, kpad);
                            for r in 0..m {
                                dyt[r * cols + i * p..][..p].copy_from_slice(
                                    &dy[((n0 + i) * g.c_out + co0 + r) * p..][..p],
                                );
                            }
                        }
                        gemm_tile(m, k, cols, &dyt, cols, &colt, kpad, dwb, k, true);
                    }
                });
        });
    dw
}

fn conv2d_fwd<T: Float>(x: &[T], w: &[T], g: &Conv2dGeom) -> Vec<T> {
    let (p, k, cin_g, cout_g) = (g.p(), g.k(), g.cin_g(), g.cout_g());
    let mut out = vec![T::ZERO; g.n * g.c_out * p];
    if out.is_empty() || k == 0 {
        return out;
    }
    if p < TILE_P {
        return conv2d_fwd_small(x, w, g);
    }
    let cob = CO_BLOCK.min(cout_g);
    let hw = g.h * g.w;
    out.par_chunks_mut(cout_g * p)
        .enumerate()
        .for_each(|(ng, og)| {
            let (ni, gi) = (ng / g.groups, ng % g.groups);
            let xg = &x[(ni * g.c_in + gi * cin_g) * hw..][..cin_g * hw];
            og.par_chunks_mut(cob * p).enumerate().for_each(|(bi, ob)| {
                let co0 = gi * cout_g + bi * cob;
                let m = ob.len() / p;
                let wb = &w[co0 * k..(co0 + m) * k];
                let ldb_max = round_up(TILE_P, NR);
                let mut col = vec![T::ZERO; k * ldb_max];
                for p0 in (0..p).step_by(TILE_P) {
                    let np = TILE_P.min(p - p0);
                    let ldb = round_up(np, NR);
                    pack_cols(xg, g, p0, np, ldb, &mut col, ldb, 1);
                    gemm_tile(m, np, k, wb, k, &col, ldb, &mut ob[p0..], p, false);
                }
            });
        });
    out
}

fn conv2d_bwd_input<T: Float>(dy: &[T], w: &[T], g: &Conv2dGeom) -> Vec<T> {
    let (p, k, cin_g, cout_g) = (g.p(), g.k(), g.cin_g(), g.cout_g());
    let hw = g.h * g.w;
    let mut dx = vec![T::ZERO; g.n * g.c_in * hw];
    if dx.is_empty() || p == 0 || cout_g == 0 {
        return dx;
    }
    // W_g^T, `[K, C_out/G]` per group, so the micro-kernel reads rows contiguously.
    let mut wt = vec![T::ZERO; g.groups * k * cout_g];
    for gi in 0..g.groups {
        for co in 0..cout_g {
            for kk in 0..k {
                wt[(gi * k + kk) * cout_g + co] = w[(gi * cout_g + co) * k + kk];
            }
        }
    }
    if p < TILE_P {
        return conv2d_bwd_input_small(dy, &wt, g);
    }
    let khw = g.kh * g.kw;
    let cib = CI_BLOCK.min(cin_g);
    let ldb_max = round_up(TILE_P, NR);
    dx.par_chunks_mut(cin_g * hw)
        .enumerate()
        .for_each(|(ng, dxg)| {
            let (ni, gi) = (ng / g.groups, ng % g.groups);
            let dyg = &dy[(ni * g.c_out + gi * cout_g) * p..][..cout_g * p];
            dxg.par_chunks_mut(cib * hw)
                .enumerate()
                .for_each(|(bi, dxb)| {
                    let ci0 = bi * cib;
                    let nci = dxb.len() / hw;
                    let rows = nci * khw;
                    let a = &wt[(gi * k + ci0 * khw) * cout_g..][..rows * cout_g];
                    let mut dyt = vec![T::ZERO; cout_g * ldb_max];
                    let mut colg = vec![T::ZERO; rows * ldb_max];
                    for p0 in (0..p).step_by(TILE_P) {
                        let np = TILE_P.min(p - p0);
                        let ldb = round_up(np, NR);
                        for co in 0..cout_g {
                            let dst = &mut dyt[co * ldb..(co + 1) * ldb];
                            dst[..np].copy_from_slice(&dyg[co * p + p0..co * p + p0 + np]);
                            dst[np..].fill(T::ZERO);
                        }
                        gemm_tile(
                            rows, np, cout_g, a, cout_g, &dyt, ldb, &mut colg, ldb, false,
                        );
                        // col2im: scatter-add the column gradients onto this block's planes.
                        for_each_tap(g, ci0..ci0 + nci, p0, np, |kk, t, xi| {
                            dxb[xi] += colg[kk * ldb + t];
                        });
                    }
                });
        });
    dx
}

fn conv2d_bwd_weight<T: Float>(x: &[T], dy: &[T], g: &Conv2dGeom) -> Vec<T> {
    let (p, k, cin_g, cout_g) = (g.p(), g.k(), g.cin_g(), g.cout_g());
    let mut dw = vec![T::ZERO; g.c_out * k];
    if dw.is_empty() || p == 0 || g.n == 0 {
        return dw;
    }
    if p < TILE_P {
        return conv2d_bwd_weight_small(x, dy, g);
    }
    let hw = g.h * g.w;
    let kpad = round_up(k, NR);
    let cob = CO_BLOCK.min(cout_g);
    dw.par_chunks_mut(cout_g * k)
        .enumerate()
        .for_each(|(gi, dwg)| {
            dwg.par_chunks_mut(cob * k)
                .enumerate()
                .for_each(|(bi, dwb)| {
                    let co0 = gi * cout_g + bi * cob;
                    let m = dwb.len() / k;
                    // colT[t][kk]: tile pixels as rows, so the GEMM is dy_tile @ colT.
                    let mut colt = vec![T::ZERO; TILE_P * kpad];
                    for ni in 0..g.n {
                        let xg = &x[(ni * g.c_in + gi * cin_g) * hw..][..cin_g * hw];
                        for p0 in (0..p).step_by(TILE_P) {
                            let np = TILE_P.min(p - p0);
                            pack_cols(xg, g, p0, np, np, &mut colt, 1, kpad);
                            let a = &dy[(ni * g.c_out + co0) * p + p0..];
                            gemm_tile(m, k, np, a, p, &colt, kpad, dwb, k, true);
                        }
                    }
                });
        });
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
            conv2d_fwd(&x, &wv, g)
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
            conv2d_bwd_input(&dy, &wv, g)
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
            conv2d_bwd_weight(&x, &dyv, g)
        });
        Ok(CpuStorage::new(data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every build of the tile kernel this CPU can run against a naive loop (the conv tests
    /// only reach the one picked at run time).
    fn check_variants<T: Float>() {
        let (m, ncols, inner) = (11, 37, 9);
        let (lda, ldb, ldc) = (inner + 2, round_up(ncols, NR), ncols + 3);
        let val = |i: usize, p: usize| T::from_f64(((i * p) % 13) as f64 - 6.0);
        let a: Vec<T> = (0..m * lda).map(|i| val(i, 7)).collect();
        let b: Vec<T> = (0..inner * ldb).map(|i| val(i, 5)).collect();
        let c0: Vec<T> = (0..m * ldc).map(|i| val(i, 3)).collect();
        let mut want = c0.clone();
        for r in 0..m {
            for j in 0..ncols {
                for t in 0..inner {
                    want[r * ldc + j] += a[r * lda + t] * b[t * ldb + j];
                }
            }
        }
        type Kernel<T> = fn(usize, usize, usize, &[T], usize, &[T], usize, &mut [T], usize, bool);
        let mut kernels: Vec<(&str, Kernel<T>)> =
            vec![("portable", gemm_tile_impl::<T, MR, false>)];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                // SAFETY: features checked on the line above.
                kernels.push(("avx2", |m, n, i, a, la, b, lb, c, lc, acc| unsafe {
                    gemm_tile_avx2(m, n, i, a, la, b, lb, c, lc, acc)
                }));
            }
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
                // SAFETY: features checked on the line above.
                kernels.push(("avx512", |m, n, i, a, la, b, lb, c, lc, acc| unsafe {
                    gemm_tile_avx512(m, n, i, a, la, b, lb, c, lc, acc)
                }));
            }
        }
        for (name, k) in kernels {
            let mut c = c0.clone();
            k(m, ncols, inner, &a, lda, &b, ldb, &mut c, ldc, true);
            assert_eq!(c, want, "{name}");
        }
    }

    #[test]
    fn tile_kernels_match_naive() {
        check_variants::<f32>();
        check_variants::<f64>();
    }
}
