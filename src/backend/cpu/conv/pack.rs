//! Packing for the convolution's implicit GEMM: panels in the GEMM micro-kernel's layout
//! (A: `a[kk*mr + r]`, B: `b[kk*nr + j]`, see `matmul::MicroKernel`) filled straight from
//! NCHW tensors, one depth block at a time, so no im2col matrix ever exists in full.
//!
//! The implicit column matrix of group `gi`: row `k = (ci, ky, kx)` (`K = C_in/G * KH * KW`),
//! column `col = n*P + oy*OW + ox` (images side by side, `P = OH*OW`), value
//! `x[n, gi*C_in/G + ci, oy*sh + ky*dh - ph, ox*sw + kx*dw - pw]` (0 in the padding).
//! Columns are walked as [`PixelRun`]s (consecutive pixels of one output row) read from the
//! input with its padding written out ([`PaddedInput`]), so each (tap, run) is one copy of an
//! input row segment (strided for stride > 1), with no border cases.

use super::super::matmul::{transpose_panel, Isa};
use super::super::simd;
use super::super::Float;
use crate::backend::conv::Conv2dGeom;
use rayon::prelude::*;
use std::borrow::Cow;
use std::mem::MaybeUninit;
use std::ops::Range;

/// Consecutive GEMM columns inside one output row of one image: pixels `(oy, ox..ox+len)` of
/// image `n`, at offset `at` from the start of the block being packed.
#[derive(Clone, Copy, Debug)]
pub(super) struct PixelRun {
    pub n: usize,
    pub oy: usize,
    pub ox: usize,
    pub len: usize,
    pub at: usize,
}

/// How GEMM columns map to output pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ColumnOrder {
    /// (image, output row, output column): each image's pixels in NCHW order.
    ByImage,
    /// (output row, image, output column): an output row across the batch together
    /// (`conv/dead_rows.rs`).
    ByRow,
}

/// Splits GEMM columns `start..start+len` into [`PixelRun`]s, also cut at every multiple of
/// `split` from `start` (panel boundaries), into `runs` (cleared first).
pub(super) fn pixel_runs(
    g: &Conv2dGeom,
    start: usize,
    len: usize,
    split: usize,
    runs: &mut Vec<PixelRun>,
) {
    pixel_runs_in(ColumnOrder::ByImage, g, start, len, split, runs);
}

/// [`pixel_runs`] with the columns in `order`.
pub(super) fn pixel_runs_in(
    order: ColumnOrder,
    g: &Conv2dGeom,
    start: usize,
    len: usize,
    split: usize,
    runs: &mut Vec<PixelRun>,
) {
    runs.clear();
    let (p, row) = (g.p(), g.n * g.ow);
    let mut at = 0;
    while at < len {
        let col = start + at;
        let (n, oy, ox) = match order {
            ColumnOrder::ByImage => (col / p, (col % p) / g.ow, col % g.ow),
            ColumnOrder::ByRow => ((col % row) / g.ow, col / row, col % g.ow),
        };
        let run = (g.ow - ox).min(len - at).min(split - at % split);
        runs.push(PixelRun {
            n,
            oy,
            ox,
            len: run,
            at,
        });
        at += run;
    }
}

/// Output positions `o` along one axis whose input position `o*s + tap - pad` lies in
/// `0..in_len` (`tap` = kernel offset times dilation).
pub(super) fn valid_outputs(
    out_len: usize,
    in_len: usize,
    s: usize,
    pad: usize,
    tap: usize,
) -> Range<usize> {
    let lo = if pad > tap {
        (pad - tap).div_ceil(s)
    } else {
        0
    };
    let hi = if in_len + pad > tap {
        ((in_len - 1 + pad - tap) / s + 1).min(out_len)
    } else {
        0
    };
    lo.min(hi)..hi
}

/// For each `kx`, the output columns whose tap `kx` lands inside the image.
pub(super) fn valid_columns(g: &Conv2dGeom) -> Vec<Range<usize>> {
    (0..g.kw)
        .map(|kx| valid_outputs(g.ow, g.w, g.stride.1, g.padding.1, kx * g.dilation.1))
        .collect()
}

/// The input row tap `ky` reads for output row `oy`, if inside the image.
#[inline]
pub(super) fn input_row(g: &Conv2dGeom, oy: usize, ky: usize) -> Option<usize> {
    (oy * g.stride.0 + ky * g.dilation.0)
        .checked_sub(g.padding.0)
        .filter(|&iy| iy < g.h)
}

/// Runs `f` compiled for the micro-kernel's instruction set (or the widest below it that
/// `simd` can vouch for), so that the packing loops (inlined into it) copy with the widest
/// vectors the CPU has: compiled for the baseline they moved 16 bytes at a time, and packing
/// cost as much as the GEMM at small channel counts.
#[inline(always)]
pub(super) fn vectorized<R>(isa: Isa, f: impl FnOnce() -> R) -> R {
    let want = match isa {
        Isa::Avx512 => simd::Isa::Avx512,
        Isa::Avx2 => simd::Isa::Avx2,
        _ => simd::Isa::Baseline,
    };
    simd::vectorized_at(want, f)
}

/// Elements of the padded input written per task (whole planes, at least one).
const PAD_TASK_ELEMS: usize = 1 << 14;

/// The convolution's input with its zero padding written out (`[N, C_in, H + 2ph, W + 2pw]`),
/// so that every tap of every output pixel reads inside it: packing is then a plain copy per
/// (tap, run of pixels), with no border tests. Borrowed when there is no padding.
pub(super) struct PaddedInput<'a, T: Clone> {
    pub(super) data: Cow<'a, [T]>,
    /// Padded height and width.
    pub(super) h: usize,
    pub(super) w: usize,
}

impl<'a, T: Float> PaddedInput<'a, T> {
    /// `isa`: the micro-kernel's instruction set, which the copies are compiled for.
    pub(super) fn new(x: &'a [T], g: &Conv2dGeom, isa: Isa) -> Self {
        let (ph, pw) = g.padding;
        let (h, w) = (g.h + 2 * ph, g.w + 2 * pw);
        if ph == 0 && pw == 0 {
            return PaddedInput {
                data: Cow::Borrowed(x),
                h,
                w,
            };
        }
        let (hw, len) = (g.h * g.w, g.n * g.c_in * h * w);
        if hw == 0 {
            return PaddedInput {
                data: Cow::Owned(vec![T::ZERO; len]),
                h,
                w,
            };
        }
        // Written once, not zeroed first: per plane the top and bottom padding rows, then per
        // row its left padding, the input row, its right padding. Several planes per task:
        // small maps (ResNet's 2x2 planes) have thousands, too small to be a task each.
        let mut data = Vec::with_capacity(len);
        let zero = MaybeUninit::new(T::ZERO);
        let planes = (PAD_TASK_ELEMS / (h * w)).max(1);
        data.spare_capacity_mut()[..len]
            .par_chunks_mut(planes * h * w)
            .zip(x.par_chunks(planes * hw))
            .for_each(|(dsts, srcs)| {
                // Inlined into `vectorized`'s AVX-512 body: as a call of its own it was
                // compiled for the baseline, 16-byte moves.
                vectorized(
                    isa,
                    #[inline(always)]
                    || {
                        for (dst, src) in dsts.chunks_exact_mut(h * w).zip(srcs.chunks_exact(hw)) {
                            dst[..ph * w].fill(zero);
                            dst[(ph + g.h) * w..].fill(zero);
                            for (iy, row) in src.chunks_exact(g.w).enumerate() {
                                // SAFETY: `MaybeUninit<T>` has `T`'s layout, and a `T` is a valid
                                // one.
                                let row: &[MaybeUninit<T>] = unsafe {
                                    std::slice::from_raw_parts(row.as_ptr().cast(), row.len())
                                };
                                let drow = &mut dst[(iy + ph) * w..(iy + ph + 1) * w];
                                drow[..pw].fill(zero);
                                copy_run(&mut drow[pw..pw + g.w], row);
                                drow[pw + g.w..].fill(zero);
                            }
                        }
                    },
                );
            });
        // SAFETY: every plane's rows were all written above (padding rows, then each input
        // row with its left and right padding).
        unsafe { data.set_len(len) };
        PaddedInput {
            data: Cow::Owned(data),
            h,
            w,
        }
    }
}

/// Where one [`PixelRun`] reads (offset in the padded input of its first pixel at tap (0, 0)
/// of group channel 0) and writes (offset in the packed block at depth 0).
#[derive(Clone, Copy)]
struct RunCopy {
    src: usize,
    dst: usize,
    len: usize,
}

/// `dst.copy_from_slice(src)` for runs of at most a few dozen elements, inline: a call to
/// `memmove` per run cost about as much as the packing itself. Copies 64 bytes at a time (one
/// AVX-512 register under [`vectorized`]), then the tail in one move each of 32, 16 and 8
/// bytes as needed: the rows of small maps (ResNet's 7, 4, 2 pixels) are all tail, and an
/// element at a time their packing cost as much as the arithmetic.
#[inline(always)]
pub(super) fn copy_run<T: Copy>(dst: &mut [T], src: &[T]) {
    let lanes = (64 / std::mem::size_of::<T>().max(1)).max(1);
    let n = dst.len();
    let src = &src[..n];
    let mut i = 0;
    while n - i >= lanes {
        dst[i..i + lanes].copy_from_slice(&src[i..i + lanes]);
        i += lanes;
    }
    for w in [lanes / 2, lanes / 4, lanes / 8] {
        if w > 0 && n - i >= w {
            dst[i..i + w].copy_from_slice(&src[i..i + w]);
            i += w;
        }
    }
    for (d, &s) in dst[i..].iter_mut().zip(&src[i..]) {
        *d = s;
    }
}

/// The B operand of the forward GEMM: rows `k0..k0+kc` of group `gi`'s column matrix, for the
/// columns in `runs` (`ncols` in all; `stride` apart in `buf`, each run inside one `nr`-wide
/// panel), as panels `buf[(q*kc + kk)*nr + j]`; columns past `ncols` in the last panel are
/// zero. Each (row, run) is one copy of `run.len` inputs (every `sw`-th for stride `sw`).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn pack_im2col<T: Float>(
    xp: &PaddedInput<T>,
    g: &Conv2dGeom,
    gi: usize,
    runs: &[PixelRun],
    ncols: usize,
    k0: usize,
    kc: usize,
    nr: usize,
    buf: &mut [T],
) {
    let (hp, wp) = (xp.h, xp.w);
    let (plane, khw) = (hp * wp, g.kh * g.kw);
    let (sh, sw) = g.stride;
    let (dh, dw) = g.dilation;
    let x = &xp.data[..];
    let panels = ncols.div_ceil(nr);
    if !ncols.is_multiple_of(nr) {
        buf[(panels - 1) * kc * nr..panels * kc * nr].fill(T::ZERO);
    }
    // Offset of each row's tap `(ci, ky, kx)` from where a run reads at tap (0, 0, 0).
    let mut taps = Vec::with_capacity(kc);
    let (mut ci, mut ky, mut kx) = (k0 / khw, (k0 % khw) / g.kw, k0 % g.kw);
    for _ in 0..kc {
        taps.push(ci * plane + ky * dh * wp + kx * dw);
        kx += 1;
        if kx == g.kw {
            (kx, ky) = (0, ky + 1);
            if ky == g.kh {
                (ky, ci) = (0, ci + 1);
            }
        }
    }
    // Panel by panel: a panel made of runs of one common length is written a whole row (all
    // of its runs at one tap) at a time, in order; run by run, each run's taps were stores
    // `nr` apart through the whole block, one cache line per store.
    let mut rest = runs;
    while let Some(first) = rest.first() {
        let q = first.at / nr;
        let end = rest
            .iter()
            .position(|r| r.at / nr != q)
            .unwrap_or(rest.len());
        let (panel, next) = rest.split_at(end);
        rest = next;
        let len = first.len;
        let even = panel.len() <= MAX_PANEL_RUNS
            && panel
                .iter()
                .enumerate()
                .all(|(m, r)| r.len == len && r.at == first.at + m * len);
        let src = |run: &PixelRun| {
            (run.n * g.c_in + gi * g.cin_g()) * plane + run.oy * sh * wp + run.ox * sw
        };
        if even {
            let mut srcs = [0; MAX_PANEL_RUNS];
            for (s, run) in srcs.iter_mut().zip(panel) {
                *s = src(run);
            }
            let c = PanelCopy {
                srcs: &srcs[..panel.len()],
                dst: q * kc * nr + first.at % nr,
            };
            match (sw, len) {
                (1, 32) => copy_panel_rows::<T, 32, 1>(x, c, &taps, nr, buf),
                (1, 16) => copy_panel_rows::<T, 16, 1>(x, c, &taps, nr, buf),
                (1, 8) => copy_panel_rows::<T, 8, 1>(x, c, &taps, nr, buf),
                (1, 4) => copy_panel_rows::<T, 4, 1>(x, c, &taps, nr, buf),
                (2, 32) => copy_panel_rows::<T, 32, 2>(x, c, &taps, nr, buf),
                (2, 16) => copy_panel_rows::<T, 16, 2>(x, c, &taps, nr, buf),
                (2, 8) => copy_panel_rows::<T, 8, 2>(x, c, &taps, nr, buf),
                (2, 4) => copy_panel_rows::<T, 4, 2>(x, c, &taps, nr, buf),
                _ => copy_runs(x, panel, src, &taps, (sw, kc, nr), buf),
            }
        } else {
            copy_runs(x, panel, src, &taps, (sw, kc, nr), buf);
        }
    }
}

/// Most runs in a panel copied a row at a time ([`copy_panel_rows`]): a 32-wide panel of
/// 4-pixel runs (16 runs of 2, on 2x2 maps, measured no faster than run by run).
const MAX_PANEL_RUNS: usize = 8;

/// The runs of one panel, each through every tap of a depth block, run by run.
#[inline(always)]
fn copy_runs<T: Copy>(
    x: &[T],
    runs: &[PixelRun],
    src: impl Fn(&PixelRun) -> usize,
    taps: &[usize],
    (sw, kc, nr): (usize, usize, usize),
    buf: &mut [T],
) {
    for run in runs {
        let c = RunCopy {
            src: src(run),
            dst: (run.at / nr) * kc * nr + run.at % nr,
            len: run.len,
        };
        // Run by run, every row: the length is then fixed through the inner loop, and the
        // common ones (a small map's whole row, a panel's width) are one fixed-size move.
        let one = PanelCopy {
            srcs: &[c.src],
            dst: c.dst,
        };
        match (sw, c.len) {
            (1, 32) => copy_panel_rows::<T, 32, 1>(x, one, taps, nr, buf),
            (1, 16) => copy_panel_rows::<T, 16, 1>(x, one, taps, nr, buf),
            (1, 8) => copy_panel_rows::<T, 8, 1>(x, one, taps, nr, buf),
            (1, 4) => copy_panel_rows::<T, 4, 1>(x, one, taps, nr, buf),
            (1, 2) => copy_panel_rows::<T, 2, 1>(x, one, taps, nr, buf),
            (2, 32) => copy_panel_rows::<T, 32, 2>(x, one, taps, nr, buf),
            (2, 16) => copy_panel_rows::<T, 16, 2>(x, one, taps, nr, buf),
            (2, 8) => copy_panel_rows::<T, 8, 2>(x, one, taps, nr, buf),
            (2, 4) => copy_panel_rows::<T, 4, 2>(x, one, taps, nr, buf),
            (1, _) => {
                for (kk, &tap) in taps.iter().enumerate() {
                    copy_run(&mut buf[kk * nr + c.dst..][..c.len], &x[c.src + tap..]);
                }
            }
            (2, _) => {
                for (kk, &tap) in taps.iter().enumerate() {
                    let dst = &mut buf[kk * nr + c.dst..][..c.len];
                    copy_run_strided::<T, 2>(dst, &x[c.src + tap..][..(c.len - 1) * 2 + 1]);
                }
            }
            _ => {
                for (kk, &tap) in taps.iter().enumerate() {
                    let dst = &mut buf[kk * nr + c.dst..][..c.len];
                    let src = &x[c.src + tap..][..(c.len - 1) * sw + 1];
                    for (i, d) in dst.iter_mut().enumerate() {
                        *d = src[i * sw];
                    }
                }
            }
        }
    }
}

/// Where a panel's runs read (at tap (0, 0, 0)) and where its first run's first column is.
#[derive(Clone, Copy)]
struct PanelCopy<'a> {
    srcs: &'a [usize],
    dst: usize,
}

/// `buf[kk*stride + c.dst + m*L + i] = x[c.srcs[m] + taps[kk] + i*S]`, `i < L`, for every
/// `kk` and run `m`: a panel's runs of `L` pixels side by side, one row of the panel (every
/// run at one tap) at a time, so the stores go in order; a single run is a panel of one. With
/// `L` and the input stride `S` fixed at compile time each run's copy is a few vector moves at
/// stride 1 and vector shuffles at stride 2 (two 16-lane loads and one two-source permute per
/// 16 outputs on AVX-512) instead of one scalar move per element, which had the packing of
/// ResNet's stride-2 stem cost more than its GEMM.
#[inline(always)]
fn copy_panel_rows<T: Copy, const L: usize, const S: usize>(
    x: &[T],
    c: PanelCopy,
    taps: &[usize],
    stride: usize,
    buf: &mut [T],
) {
    let width = c.srcs.len() * L;
    for (kk, &tap) in taps.iter().enumerate() {
        let row = &mut buf[kk * stride + c.dst..][..width];
        for (dst, &at) in row.chunks_exact_mut(L).zip(c.srcs) {
            let src = &x[at + tap..][..(L - 1) * S + 1];
            let dst: &mut [T; L] = dst.try_into().unwrap();
            for (i, d) in dst.iter_mut().enumerate() {
                *d = src[i * S];
            }
        }
    }
}

/// `dst[i] = src[i*S]` for runs of any length: blocks of 16 (vector permutes, as in
/// [`copy_panel_rows`]), then the tail element by element.
#[inline(always)]
fn copy_run_strided<T: Copy, const S: usize>(dst: &mut [T], src: &[T]) {
    const BLOCK: usize = 16;
    let n = dst.len();
    let mut i = 0;
    while n - i >= BLOCK {
        let s = &src[i * S..][..(BLOCK - 1) * S + 1];
        let d: &mut [T; BLOCK] = (&mut dst[i..i + BLOCK]).try_into().unwrap();
        for (j, d) in d.iter_mut().enumerate() {
            *d = s[j * S];
        }
        i += BLOCK;
    }
    for (j, d) in dst.iter_mut().enumerate().skip(i) {
        *d = src[j * S];
    }
}

/// `groups` strided `[m, k]` matrices (element `(gi, i, kk)` at `src[off + gi*sg + i*si +
/// kk*sk]`) as `mr`-row panels over the full depth:
/// `buf[((gi*mpan + q)*k + kk)*mr + r] = src(gi, q*mr + r, kk)`, 0 for rows past `m`
/// (`mpan = ceil(m / mr)`). A depth block `pc..pc+kc` of panel `q` is then the slice at
/// `((gi*mpan + q)*k + pc)*mr`, already in the micro-kernel's layout. Written in order (the
/// panel's rows are read as `mr` streams), since one store per cache line was the slow part.
#[allow(clippy::too_many_arguments)]
pub(super) fn pack_row_panels<T: Float>(
    src: &[T],
    off: usize,
    (sg, si, sk): (usize, usize, usize),
    groups: usize,
    m: usize,
    k: usize,
    mr: usize,
) -> Vec<T> {
    let mpan = m.div_ceil(mr);
    let mut buf = vec![T::ZERO; groups * mpan * k * mr];
    if buf.is_empty() {
        return buf;
    }
    buf.par_chunks_mut(k * mr)
        .enumerate()
        .for_each(|(pi, panel)| {
            let (gi, q) = (pi / mpan, pi % mpan);
            let live = mr.min(m - q * mr);
            let base = off + gi * sg + q * mr * si;
            if sk == 1 {
                // Rows contiguous in depth: read them 16 at a time, so the `mr x 16` block
                // being written stays in L1 while the rows stream in.
                const BLOCK: usize = 16;
                for kk0 in (0..k).step_by(BLOCK) {
                    let b = BLOCK.min(k - kk0);
                    let block = &mut panel[kk0 * mr..(kk0 + b) * mr];
                    for r in 0..live {
                        let row = &src[base + r * si + kk0..][..b];
                        for (t, &v) in row.iter().enumerate() {
                            block[t * mr + r] = v;
                        }
                    }
                }
                return;
            }
            for (kk, prow) in panel.chunks_exact_mut(mr).enumerate() {
                let at = base + kk * sk;
                for (r, v) in prow[..live].iter_mut().enumerate() {
                    *v = src[at + r * si];
                }
            }
        });
    buf
}
/// The B operand of the weight-gradient GEMM, the transposed column matrix: depth = the
/// pixels in `runs` (`kc` of them), columns = rows `k0..k0+ncols` of group `gi`'s column
/// matrix, as `nr`-wide panels `buf[(q*kc + kk)*nr + j]`; columns past `ncols` are zero.
/// Each panel is gathered row by row into `scratch` (`nr x kc`, contiguous copies) and then
/// transposed in blocks: writing the panel directly would store one element per cache line.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn pack_im2col_transposed<T: Float>(
    xp: &PaddedInput<T>,
    g: &Conv2dGeom,
    gi: usize,
    runs: &[PixelRun],
    kc: usize,
    k0: usize,
    ncols: usize,
    nr: usize,
    scratch: &mut Vec<T>,
    buf: &mut [T],
) {
    scratch.resize(nr * kc, T::ZERO);
    for q in 0..ncols.div_ceil(nr) {
        let live = nr.min(ncols - q * nr);
        // scratch[j*kc + t] = col[k0 + q*nr + j, pixel t]: one panel of width kc.
        pack_im2col(xp, g, gi, runs, kc, k0 + q * nr, live, kc, scratch);
        let panel = &mut buf[q * kc * nr..(q + 1) * kc * nr];
        transpose_into_panel(&scratch[..live * kc], live, kc, nr, panel);
    }
}

/// `panel[t*nr + j] = rows[j*kc + t]` for `j < live`, 0 for `live <= j < nr`, by the GEMM's
/// 4 x 4 block transposes (`matmul::transpose_panel`; element by element, this and
/// [`pack_dy_rows`] were half of a stride-2 weight gradient).
#[inline(always)]
fn transpose_into_panel<T: Float>(rows: &[T], live: usize, kc: usize, nr: usize, panel: &mut [T]) {
    if live < nr {
        for prow in panel.chunks_exact_mut(nr) {
            prow[live..].fill(T::ZERO);
        }
    }
    transpose_panel(rows, 0, kc, live, kc, panel, nr);
}

/// The A operand of the weight-gradient GEMM: rows `co0..co0+rows` of the output gradient
/// `dy` `[N, C_out, P]`, depth = the pixels in `runs` (`kc` of them), as `mr`-row panels
/// `buf[(q*kc + kk)*mr + r]`; rows past `rows` are zero. Each (panel, run) is one block
/// transpose of `live` rows of `dy` (`P` apart) by `run.len` pixels.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn pack_dy_rows<T: Float>(
    dy: &[T],
    g: &Conv2dGeom,
    co0: usize,
    rows: usize,
    runs: &[PixelRun],
    kc: usize,
    mr: usize,
    buf: &mut [T],
) {
    let p = g.p();
    for q in 0..rows.div_ceil(mr) {
        let panel = &mut buf[q * kc * mr..(q + 1) * kc * mr];
        let live = mr.min(rows - q * mr);
        if live < mr {
            panel.fill(T::ZERO);
        }
        for run in runs {
            let base = (run.n * g.c_out + co0 + q * mr) * p + run.oy * g.ow + run.ox;
            let dst = &mut panel[run.at * mr..];
            transpose_panel(dy, base, p, live, run.len, dst, mr);
        }
    }
}
