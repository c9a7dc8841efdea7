//! Packing for the convolution's implicit GEMM: panels in the GEMM micro-kernel's layout
//! (A: `a[kk*mr + r]`, B: `b[kk*nr + j]`, see `matmul::MicroKernel`) filled straight from
//! NCHW tensors, one depth block at a time, so no im2col matrix ever exists in full.
//!
//! The implicit column matrix of group `gi`: row `k = (ci, ky, kx)` (`K = C_in/G * KH * KW`),
//! column `col = n*P + oy*OW + ox` (images side by side, `P = OH*OW`), value
//! `x[n, gi*C_in/G + ci, oy*sh + ky*dh - ph, ox*sw + kx*dw - pw]` (0 in the padding).
//! Columns are walked as [`PixelRun`]s (consecutive pixels of one output row), so for stride 1
//! each (tap, run) is one `copy_from_slice` of an input row segment.

use super::super::Float;
use crate::backend::conv::Conv2dGeom;
use rayon::prelude::*;
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

/// Splits GEMM columns `start..start+len` into [`PixelRun`]s, also cut at every multiple of
/// `split` from `start` (panel boundaries), into `runs` (cleared first).
pub(super) fn pixel_runs(
    g: &Conv2dGeom,
    start: usize,
    len: usize,
    split: usize,
    runs: &mut Vec<PixelRun>,
) {
    runs.clear();
    let p = g.p();
    let mut at = 0;
    while at < len {
        let col = start + at;
        let (n, pix) = (col / p, col % p);
        let (oy, ox) = (pix / g.ow, pix % g.ow);
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
fn valid_outputs(out_len: usize, in_len: usize, s: usize, pad: usize, tap: usize) -> Range<usize> {
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

/// `dst[t] = plane[window of pixel (run.oy, run.ox + t) at tap (ky, kx)]` for `t < run.len`,
/// 0 where the window is in the padding; `cols` is [`valid_columns`]`[kx]`.
#[inline(always)]
fn gather_tap_run<T: Float>(
    plane: &[T],
    g: &Conv2dGeom,
    ky: usize,
    kx: usize,
    run: &PixelRun,
    cols: &Range<usize>,
    dst: &mut [T],
) {
    let (ox, len) = (run.ox, run.len);
    let dst = &mut dst[..len];
    let Some(iy) = input_row(g, run.oy, ky) else {
        dst.fill(T::ZERO);
        return;
    };
    let lo = cols.start.clamp(ox, ox + len) - ox;
    let hi = cols.end.clamp(ox + lo, ox + len) - ox;
    dst[..lo].fill(T::ZERO);
    dst[hi..].fill(T::ZERO);
    if lo == hi {
        return;
    }
    let row = &plane[iy * g.w..(iy + 1) * g.w];
    let sw = g.stride.1;
    let ix0 = (ox + lo) * sw + kx * g.dilation.1 - g.padding.1;
    if sw == 1 {
        copy_run(&mut dst[lo..hi], &row[ix0..ix0 + (hi - lo)]);
    } else {
        for (i, d) in dst[lo..hi].iter_mut().enumerate() {
            *d = row[ix0 + i * sw];
        }
    }
}

/// Output maps narrower than this are packed through a [`tap_table`]: their runs are a few
/// pixels long, and the work per run would cost more than the copying.
const SHORT_ROW: usize = 16;
/// A tap in the padding, in a [`tap_table`].
const PADDING: usize = usize::MAX;

/// Whether [`pack_im2col`] should be given a [`tap_table`] for this geometry.
pub(super) fn wants_tap_table(g: &Conv2dGeom) -> bool {
    g.ow < SHORT_ROW
}

/// `table[tap*ncols + col]`: the offset in `x` of the input that tap `(ky, kx)` of the
/// `col`-th column of `runs` reads, minus the offset of its channel plane (`n*C_in*H*W +
/// iy*W + ix`), or [`PADDING`].
pub(super) fn tap_table(g: &Conv2dGeom, runs: &[PixelRun], ncols: usize, table: &mut Vec<usize>) {
    table.clear();
    table.resize(g.kh * g.kw * ncols, PADDING);
    let hw = g.h * g.w;
    for ky in 0..g.kh {
        for kx in 0..g.kw {
            let row = &mut table[(ky * g.kw + kx) * ncols..][..ncols];
            for run in runs {
                let Some(iy) = input_row(g, run.oy, ky) else {
                    continue;
                };
                for t in 0..run.len {
                    let ix =
                        ((run.ox + t) * g.stride.1 + kx * g.dilation.1).checked_sub(g.padding.1);
                    if let Some(ix) = ix.filter(|&ix| ix < g.w) {
                        row[run.at + t] = run.n * g.c_in * hw + iy * g.w + ix;
                    }
                }
            }
        }
    }
}

/// `dst.copy_from_slice(src)` for runs of at most a few dozen elements, inline: a call to
/// `memmove` per run cost about as much as the packing itself.
#[inline(always)]
pub(super) fn copy_run<T: Copy>(dst: &mut [T], src: &[T]) {
    let n = dst.len();
    let src = &src[..n];
    let (mut dc, mut sc) = (dst.chunks_exact_mut(8), src.chunks_exact(8));
    for (d, s) in (&mut dc).zip(&mut sc) {
        d.copy_from_slice(s);
    }
    for (d, &s) in dc.into_remainder().iter_mut().zip(sc.remainder()) {
        *d = s;
    }
}

/// The B operand of the forward GEMM: rows `k0..k0+kc` of group `gi`'s column matrix, for the
/// columns in `runs` (`ncols` in all, cut at `nr`), as `nr`-wide panels
/// `buf[(q*kc + kk)*nr + j]`; columns past `ncols` are zero. `table`, when given, is the
/// [`tap_table`] of `runs` (the same values, read element by element).
#[allow(clippy::too_many_arguments)]
pub(super) fn pack_im2col<T: Float>(
    x: &[T],
    g: &Conv2dGeom,
    gi: usize,
    runs: &[PixelRun],
    ncols: usize,
    k0: usize,
    kc: usize,
    nr: usize,
    cols: &[Range<usize>],
    table: Option<&[usize]>,
    buf: &mut [T],
) {
    let (hw, khw) = (g.h * g.w, g.kh * g.kw);
    let panels = ncols.div_ceil(nr);
    if !ncols.is_multiple_of(nr) {
        buf[(panels - 1) * kc * nr..panels * kc * nr].fill(T::ZERO);
    }
    if let Some(table) = table {
        for kk in 0..kc {
            let k = k0 + kk;
            let (ci, tap) = (k / khw, k % khw);
            let plane = &x[(gi * g.cin_g() + ci) * hw..];
            let offsets = &table[tap * ncols..(tap + 1) * ncols];
            for (q, oq) in offsets.chunks(nr).enumerate() {
                let dst = &mut buf[(q * kc + kk) * nr..][..oq.len()];
                for (d, &o) in dst.iter_mut().zip(oq) {
                    *d = if o == PADDING { T::ZERO } else { plane[o] };
                }
            }
        }
        return;
    }
    for kk in 0..kc {
        let k = k0 + kk;
        let (ci, ky, kx) = (k / khw, (k % khw) / g.kw, k % g.kw);
        for run in runs {
            let plane = &x[(run.n * g.c_in + gi * g.cin_g() + ci) * hw..][..hw];
            let (q, j) = (run.at / nr, run.at % nr);
            let dst = &mut buf[(q * kc + kk) * nr + j..][..run.len];
            gather_tap_run(plane, g, ky, kx, run, &cols[kx], dst);
        }
    }
}

/// The B operand of the weight-gradient GEMM, the transposed column matrix: depth = the
/// pixels in `runs` (`kc` of them), columns = rows `k0..k0+ncols` of group `gi`'s column
/// matrix, as `nr`-wide panels `buf[(q*kc + kk)*nr + j]`; columns past `ncols` are zero.
/// Each panel is gathered row by row into `scratch` (`nr x kc`, contiguous copies) and then
/// transposed: writing the panel directly would store one element per cache line.
#[allow(clippy::too_many_arguments)]
pub(super) fn pack_im2col_transposed<T: Float>(
    x: &[T],
    g: &Conv2dGeom,
    gi: usize,
    runs: &[PixelRun],
    kc: usize,
    k0: usize,
    ncols: usize,
    nr: usize,
    cols: &[Range<usize>],
    table: Option<&[usize]>,
    scratch: &mut Vec<T>,
    buf: &mut [T],
) {
    scratch.resize(nr * kc, T::ZERO);
    for q in 0..ncols.div_ceil(nr) {
        let live = nr.min(ncols - q * nr);
        // scratch[j*kc + t] = col[k0 + q*nr + j, pixel t]: one panel of width kc.
        pack_im2col(
            x,
            g,
            gi,
            runs,
            kc,
            k0 + q * nr,
            live,
            kc,
            cols,
            table,
            scratch,
        );
        let panel = &mut buf[q * kc * nr..(q + 1) * kc * nr];
        for (t, prow) in panel.chunks_exact_mut(nr).enumerate() {
            for (j, v) in prow[..live].iter_mut().enumerate() {
                *v = scratch[j * kc + t];
            }
            prow[live..].fill(T::ZERO);
        }
    }
}

/// The A operand of the weight-gradient GEMM: rows `co0..co0+rows` of the output gradient
/// `dy` `[N, C_out, P]`, depth = the pixels in `runs` (`kc` of them), as `mr`-row panels
/// `buf[(q*kc + kk)*mr + r]`; rows past `rows` are zero.
#[allow(clippy::too_many_arguments)]
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
        for r in 0..live {
            let co = co0 + q * mr + r;
            for run in runs {
                let src = &dy[(run.n * g.c_out + co) * p + run.oy * g.ow + run.ox..][..run.len];
                for (t, &v) in src.iter().enumerate() {
                    panel[(run.at + t) * mr + r] = v;
                }
            }
        }
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
