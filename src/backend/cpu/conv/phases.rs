//! The input gradient of a strided convolution as stride-1 forward convolutions, one per
//! output phase (the "sub-pixel" decomposition of a transposed convolution).
//!
//! With stride `s` and dilation 1, input row `iy` receives `dy[oy]` through tap `ky` when
//! `iy + p = oy*s + ky`, so only the taps with `ky = a (mod s)`, `a = (iy + p) mod s`, ever
//! reach it. Split the input rows by that phase `a` (and the columns by `b`): phase `a`'s rows
//! are `iy = q*s + a - p`, and with `ky = a + s*t`, `oy = q - t`:
//! ```text
//! dx[iy = q s + a - p] = sum_{co, t < T_a} W[co, ci, a + s t] * dy[co, q - t]
//!                      = sum_{co, t'} V_a[ci, co, t'] * dy[co, q - (T_a - 1) + t']
//! V_a[ci, co, t'] = W[co, ci, a + s (T_a - 1 - t')]      (T_a = taps with ky = a mod s)
//! ```
//! which is a stride-1, unpadded forward convolution of `dy` (its rows `q - (T_a-1) ..`,
//! zeros outside `0..OH`, written out into a small buffer per phase) with the flipped,
//! transposed sub-kernel `V_a` (`T_a x T_b` taps): it runs on the forward's own fast paths
//! (`conv2d_fwd`: direct, or the implicit GEMM) and its outputs are interleaved into `dx`.
//! Every product it computes is one of the convolution's own terms, so the work is the
//! forward's `2 N C_out OH OW K` FLOPs up to the borders; the col2im path instead computes
//! every `W^T dy` column (`C_in KH KW` rows), then scatter-adds nine of them into each `dx`
//! element, a pass that took a quarter of its time at ResNet-18's stride-2 layers.
//! Cost beyond the products: one copy of `dy` per phase (with its borders), one pass over W
//! (each tap lands in exactly one `V_a`), one pass over `dx` (zeroed, then each phase's
//! outputs written where they belong). Phases that no tap reaches (a 1x1 kernel with stride
//! 2: the odd rows) stay zero. Sums: each `dx` element is one forward-convolution sum over
//! `(co, t', u')`; the order depends on the shape alone.

use super::super::matmul::{Isa, PackedFloat};
use super::direct::DirectConv;
use crate::backend::conv::Conv2dGeom;
use crate::backend::cpu::elementwise::written_vec;
use rayon::prelude::*;
use std::borrow::Cow;
use std::mem::MaybeUninit;

/// Fewest input channels per group (the phase convolutions' output channels, the GEMM's
/// rows) for which the phases beat col2im: with fewer, most of each 12-row panel is padding,
/// while col2im's rows are `C_in/G * KH * KW` (147 for ResNet-18's first layer: 0.3x there).
const MIN_CIN_G: usize = 16;
/// Fewest pixels per phase, per phase: each phase is a whole forward convolution (its own
/// parallel sections, packing and copies), and on small maps those fixed costs, paid once per
/// phase, outweigh col2im's scatter. Measured on this project's 2-core machine (docs/PERF.md,
/// session 18), interleaved against col2im: a 3x3 kernel at stride 2 (4 phases) gained 1.06x
/// at 1568 pixels per phase and 1.48x at 4096, and lost at 1024 (0.84-0.93x) and at 256
/// (0.6-0.75x); a 1x1 kernel (one phase) gained 2.6x at 1024 and 1.7x at 1568.
const PIXELS_PER_PHASE: usize = 384;

/// One phase of one axis: the input rows (or columns) `q*s + a - p` for `q` in
/// `first..first + len`, reached through `taps` kernel taps; the phase convolution's input
/// row `r` is `dy` row `r + offset` (zero outside the map).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct AxisPhase {
    /// The phase `a` (`0..s`).
    a: usize,
    taps: usize,
    first: usize,
    len: usize,
    offset: isize,
}

/// The phase `a` of an axis with kernel `k`, stride `s`, padding `p`, input size `input`, or
/// `None` when no tap or no input row has it.
fn axis_phase(a: usize, k: usize, s: usize, p: usize, input: usize) -> Option<AxisPhase> {
    if a >= k {
        return None;
    }
    let taps = (k - 1 - a) / s + 1;
    // q*s + a - p >= 0  and  q*s + a - p <= input - 1.
    let first = p.saturating_sub(a).div_ceil(s);
    let top = (input + p).checked_sub(1 + a)?;
    let last = top / s;
    if last < first {
        return None;
    }
    Some(AxisPhase {
        a,
        taps,
        first,
        len: last - first + 1,
        offset: first as isize - (taps as isize - 1),
    })
}

/// Whether the phases compute this input gradient: strided, undilated, enough channels, and
/// enough pixels per phase ([`PIXELS_PER_PHASE`] times the phases that any tap reaches).
fn applies(g: &Conv2dGeom) -> bool {
    if g.stride == (1, 1) || g.dilation != (1, 1) || g.cin_g() < MIN_CIN_G {
        return false;
    }
    let live = |k: usize, s: usize| s.min(k);
    let phases = live(g.kh, g.stride.0) * live(g.kw, g.stride.1);
    let pixels = g.n * g.h.div_ceil(g.stride.0) * g.w.div_ceil(g.stride.1);
    pixels >= PIXELS_PER_PHASE * phases
}

/// The input gradient `dx` (`[N, C_in, H, W]`) of the convolution `g` from `dy`
/// (`[N, C_out, OH, OW]`) and `w` (`[C_out, C_in/G, KH, KW]`), if the phases apply.
pub(super) fn backward_input<T: PackedFloat + DirectConv>(
    dy: &[T],
    w: &[T],
    g: &Conv2dGeom,
    isa: Isa,
) -> Option<Vec<T>> {
    applies(g).then(|| compute(dy, w, g, isa))
}

/// The same wherever the phases can compute the shape (any stride, dilation 1): for tests.
#[cfg(test)]
pub(super) fn backward_input_anyway<T: PackedFloat + DirectConv>(
    dy: &[T],
    w: &[T],
    g: &Conv2dGeom,
    isa: Isa,
) -> Option<Vec<T>> {
    (g.dilation == (1, 1)).then(|| compute(dy, w, g, isa))
}

fn compute<T: PackedFloat + DirectConv>(dy: &[T], w: &[T], g: &Conv2dGeom, isa: Isa) -> Vec<T> {
    let mut phases = Vec::new();
    for py in (0..g.stride.0).filter_map(|a| axis_phase(a, g.kh, g.stride.0, g.padding.0, g.h)) {
        for px in (0..g.stride.1).filter_map(|b| axis_phase(b, g.kw, g.stride.1, g.padding.1, g.w))
        {
            let pg = Conv2dGeom {
                n: g.n,
                c_in: g.c_out,
                h: py.len + py.taps - 1,
                w: px.len + px.taps - 1,
                c_out: g.c_in,
                kh: py.taps,
                kw: px.taps,
                stride: (1, 1),
                padding: (0, 0),
                dilation: (1, 1),
                groups: g.groups,
                oh: py.len,
                ow: px.len,
            };
            // The phase reads `dy` as it is when its rows and columns are exactly dy's.
            let exact = (py.offset, px.offset) == (0, 0) && (pg.h, pg.w) == (g.oh, g.ow);
            let input = if exact {
                Cow::Borrowed(dy)
            } else {
                Cow::Owned(phase_input(dy, g, &pg, py.offset, px.offset))
            };
            let weights = phase_weights(w, g, py, px);
            phases.push((py, px, super::forward(&input, &weights, &pg, isa)));
        }
    }
    interleave(&phases, g)
}

/// `dy` rows `offset_y ..` and columns `offset_x ..` as the phase convolution's input
/// (`[N, C_out, pg.h, pg.w]`), zero where they fall outside `dy`.
fn phase_input<T: PackedFloat>(
    dy: &[T],
    g: &Conv2dGeom,
    pg: &Conv2dGeom,
    offset_y: isize,
    offset_x: isize,
) -> Vec<T> {
    let (hb, wb) = (pg.h, pg.w);
    let mut buf = vec![T::ZERO; g.n * g.c_out * hb * wb];
    // The columns `c` of a buffer row whose `dy` column `c + offset_x` lies in `0..OW`.
    let c0 = (-offset_x).max(0) as usize;
    let c1 = ((g.ow as isize - offset_x).max(0) as usize).min(wb);
    buf.par_chunks_mut(hb * wb)
        .zip(dy.par_chunks(g.oh * g.ow))
        .for_each(|(plane, src)| {
            if c0 >= c1 {
                return;
            }
            for (r, row) in plane.chunks_exact_mut(wb).enumerate() {
                let y = r as isize + offset_y;
                if y < 0 || y >= g.oh as isize {
                    continue;
                }
                let from = y as usize * g.ow;
                let (s0, s1) = (
                    (c0 as isize + offset_x) as usize,
                    (c1 as isize + offset_x) as usize,
                );
                row[c0..c1].copy_from_slice(&src[from + s0..from + s1]);
            }
        });
    buf
}

/// `V[ci, co, t', u'] = W[gi*C_out/G + co, ci - gi*C_in/G, a + sh (T_a-1-t'), b + sw (T_b-1-u')]`
/// with `gi` the group of input channel `ci`: `[C_in, C_out/G, T_a, T_b]`.
fn phase_weights<T: PackedFloat>(w: &[T], g: &Conv2dGeom, py: AxisPhase, px: AxisPhase) -> Vec<T> {
    let (cin_g, cout_g) = (g.cin_g(), g.cout_g());
    let (ta, tb) = (py.taps, px.taps);
    let mut v = vec![T::ZERO; g.c_in * cout_g * ta * tb];
    v.par_chunks_mut(cout_g * ta * tb)
        .enumerate()
        .for_each(|(ci, rows)| {
            let (gi, cl) = (ci / cin_g, ci % cin_g);
            for (co, taps) in rows.chunks_exact_mut(ta * tb).enumerate() {
                let src = &w[((gi * cout_g + co) * cin_g + cl) * g.kh * g.kw..];
                for t in 0..ta {
                    let ky = py.a + g.stride.0 * (ta - 1 - t);
                    for u in 0..tb {
                        let kx = px.a + g.stride.1 * (tb - 1 - u);
                        taps[t * tb + u] = src[ky * g.kw + kx];
                    }
                }
            }
        });
    v
}

/// `dx` from the phases' outputs (`[N, C_in, len_y, len_x]` each): output `(o, o2)` of phase
/// `(py, px)` is input pixel `((first_y + o) sh + a - ph, (first_x + o2) sw + b - pw)`. One
/// pass over `dx`, plane by plane; zeroed first only where some pixel has no phase.
fn interleave<T: PackedFloat>(phases: &[(AxisPhase, AxisPhase, Vec<T>)], g: &Conv2dGeom) -> Vec<T> {
    let ((sh, sw), (ph, pw), hw) = (g.stride, g.padding, g.h * g.w);
    let covered: usize = phases.iter().map(|(py, px, _)| py.len * px.len).sum();
    let fill = |dx: &mut [MaybeUninit<T>]| {
        dx.par_chunks_mut(hw)
            .enumerate()
            .for_each(|(plane_at, plane)| {
                if covered < hw {
                    plane.fill(MaybeUninit::new(T::ZERO));
                }
                for (py, px, out) in phases {
                    let src = &out[plane_at * py.len * px.len..][..py.len * px.len];
                    let (y0, x0) = (py.first * sh + py.a - ph, px.first * sw + px.a - pw);
                    for (o, row) in src.chunks_exact(px.len).enumerate() {
                        let dst = &mut plane[(y0 + o * sh) * g.w + x0..];
                        for (o2, &v) in row.iter().enumerate() {
                            dst[o2 * sw] = MaybeUninit::new(v);
                        }
                    }
                }
            })
    };
    // SAFETY: the phases partition the input pixels that any tap reaches (each row and column
    // belongs to the one phase of its residue), so when they cover all `H*W` of them every
    // element of each plane is written; otherwise each plane is zeroed first.
    unsafe { written_vec(g.n * g.c_in * hw, fill) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every input row belongs to one phase, every tap to one phase, and each row's phase
    /// sums exactly the convolution's (output row, tap) pairs that reach it.
    #[test]
    fn phases_cover_every_row_and_tap_once() {
        for (k, s, p, input) in [
            (3, 2, 1, 16),
            (3, 2, 1, 7),
            (1, 2, 0, 8),
            (7, 2, 3, 9),
            (4, 3, 2, 10),
            (2, 2, 0, 5),
            (3, 3, 0, 4),
        ] {
            let out = (input + 2 * p - k) / s + 1;
            let (mut rows, mut taps) = (vec![0; input], 0);
            for a in 0..s {
                if let Some(ph) = axis_phase(a, k, s, p, input) {
                    taps += ph.taps;
                    for q in ph.first..ph.first + ph.len {
                        let iy = q * s + a - p;
                        rows[iy] += 1;
                        // The (output row, tap) pairs the phase sums for this row, `(q - t,
                        // a + s t)` within the output, are all the convolution's pairs
                        // `oy s + ky - p = iy`.
                        let mut mine: Vec<(usize, usize)> = (0..ph.taps)
                            .filter(|&t| t <= q && q - t < out)
                            .map(|t| (q - t, a + s * t))
                            .collect();
                        let mut all: Vec<(usize, usize)> = (0..out)
                            .flat_map(|oy| (0..k).map(move |ky| (oy, ky)))
                            .filter(|&(oy, ky)| oy * s + ky == iy + p)
                            .collect();
                        mine.sort_unstable();
                        all.sort_unstable();
                        assert_eq!(mine, all, "k {k} s {s} p {p} row {iy}");
                    }
                } else if a < k {
                    // A phase with taps but no rows: none of its rows exist.
                    assert!((0..input).all(|iy| (iy + p) % s != a));
                }
            }
            assert_eq!(taps, k, "k {k} s {s} p {p}");
            // Rows whose phase has no taps receive nothing; all others exactly once.
            for (iy, &n) in rows.iter().enumerate() {
                assert_eq!(
                    n,
                    usize::from((iy + p) % s < k),
                    "k {k} s {s} p {p} row {iy}"
                );
            }
        }
    }
}
