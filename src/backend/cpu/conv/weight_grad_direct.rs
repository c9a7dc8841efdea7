//! The weight gradient computed directly, with the output channels in the vector lanes (f32
//! on AVX-512, kernels 3 wide): the counterpart of the direct forward (`direct.rs`).
//!
//! ```text
//! dW[co, kk] = sum_{n, oy, ox} dy[n, co, oy, ox] * xpad[n, ci, oy*sh + ky*dh, ox*sw + kx]
//!              kk = (ci, ky, kx) = 3 * pair + kx, pair = (ci, ky)
//! ```
//! A GEMM whose depth is every output pixel of the batch. `dy` is first transposed to
//! channel-last, `dyt[block][n*P + p][32]` (32 output channels per block, 16 x 16 register
//! transposes), so one pixel's 32 gradients are two vector loads. A register tile is those 32
//! channels x 12 taps (4 pairs x 3 `kx`): per pixel 2 loads of `dyt` and 12 broadcasts of the
//! inputs the taps read, which lie at 4 row pointers plus 0, 1 and 2 (the 3 `kx`), for 24
//! FMAs, walking the pixels of one output row at a time (stride `sw` along the input row).
//! Nothing is packed beyond `dyt`; the implicit GEMM instead copies every (tap, pixel) of the
//! input into transposed panels.
//!
//! Order of work: a task is (block of 32 channels, split of the batch's pixels); it walks its
//! pixels in sub-chunks of [`SUB_PIXELS`] (their `dyt` rows, 32 KB, stay in L1 while every tap
//! group reads them) and adds each sub-chunk's tile sums to its partial `dW` (tap-major,
//! `[kk][32]`). The splits' partials are added in split order, then transposed into `dW`.
//! Every element is so a fixed sum: sub-chunks in order within a split, splits in order, the
//! number of splits a function of the shape alone, so the thread count never changes a bit.

use super::super::matmul::Isa;
use super::direct::{channel_blocks, transpose_band, LANES, MIN_COUT, MIN_PIXELS};
use super::pack::{vectorized, PaddedInput};
use crate::backend::conv::Conv2dGeom;
use crate::backend::cpu::aligned::AlignedVec;
use rayon::prelude::*;

/// Pixels per sub-chunk: their `dyt` rows are `256 * 128` bytes = 32 KB.
const SUB_PIXELS: usize = 256;
/// Pixels per split of the batch, about (fewer splits on small batches).
const SPLIT_PIXELS: usize = 2048;
/// Most tasks per call across blocks and splits (bounds the partials' memory).
const MAX_TASKS: usize = 16;
/// Input-row pairs `(ci, ky)` per register tile: 4 x 3 taps.
const PAIRS: usize = 4;

/// Shallowest reductions per output channel (`C_in/G * KH * KW`, 64 channels of 3x3) that
/// take the direct path from [`MIN_PIXELS_SHALLOW`] pixels on, not [`MIN_PIXELS`].
const SHALLOW_K: usize = 64 * 9;
/// Fewest output pixels in the batch for a shallow reduction.
const MIN_PIXELS_SHALLOW: usize = 256;

/// Whether the direct weight gradient takes this shape on this instruction set (the
/// dispatch's choice; [`supports`] is what it can compute). Measured against the packed GEMM
/// (docs/PERF.md, sessions 12 and 13): from [`MIN_PIXELS`] pixels on it wins at every depth;
/// below that it still wins while each output channel reduces over at most 64 input
/// channels of 3x3 (1.2-1.7x on 4x4 and 8x8 maps at batch 16: ResNet-18 on 32 px, the demo's
/// U-Net), but loses on deeper ones (256 channels on 4x4 to 14x14 maps: 0.6-0.8x), where each
/// tile's few pixels no longer pay for its setup and its input reads.
pub(super) fn applies(g: &Conv2dGeom, isa: Isa) -> bool {
    let pixels = g.n * g.p();
    supports(g, isa)
        && g.cout_g() >= MIN_COUT
        && (pixels >= MIN_PIXELS || (g.k() <= SHALLOW_K && pixels >= MIN_PIXELS_SHALLOW))
}

/// Whether [`backward_weight`] can compute this shape: kernels 3 taps wide, undilated along
/// the row, stride 1 or 2 along it.
pub(super) fn supports(g: &Conv2dGeom, isa: Isa) -> bool {
    isa == Isa::Avx512
        && g.kw == 3
        && g.dilation.1 == 1
        && matches!(g.stride.1, 1 | 2)
        && g.n * g.p() * g.k() * g.c_out > 0
}

/// One output-row segment of a sub-chunk: where its first pixel reads at tap (0, 0, 0) in the
/// padded input, its index in `dyt`, its pixel count.
#[derive(Clone, Copy, Debug)]
struct Segment {
    x: usize,
    dy: usize,
    len: usize,
}

/// `dW` (`[C_out, C_in/G, KH, 3]`) of the convolution of `x` whose output gradient is `dy`.
pub(super) fn backward_weight(x: &[f32], dy: &[f32], g: &Conv2dGeom, isa: Isa) -> Vec<f32> {
    assert!(supports(g, isa));
    let (p, k) = (g.p(), g.k());
    let blocks = channel_blocks(g);
    let xp = PaddedInput::new(x, g, isa);
    let (hp, wp) = (xp.h, xp.w);
    let xdata: &[f32] = &xp.data;
    let dyt = channel_last(dy, g, &blocks, isa);
    // Each pair's offset from where a pixel reads at tap (0, 0, 0); increasing.
    let pairs: Vec<usize> = (0..g.cin_g() * g.kh)
        .map(|j| (j / g.kh) * hp * wp + (j % g.kh) * g.dilation.0 * wp)
        .collect();
    let total = g.n * p;
    let splits = total
        .div_ceil(SPLIT_PIXELS)
        .clamp(1, (MAX_TASKS / blocks.len()).max(2));
    let per_split = total.div_ceil(splits);
    let sw = g.stride.1;
    // Partial dW of each (block, split), tap-major.
    let partials: Vec<AlignedVec<f32>> = (0..blocks.len() * splits)
        .into_par_iter()
        .map(|t| {
            let (b, s) = (t / splits, t % splits);
            let (gi, _, _) = blocks[b];
            let dyt_b = &dyt[b * total * LANES..][..total * LANES];
            let mut part = AlignedVec::zeroed(k * LANES);
            let mut segs = Vec::new();
            let (start, end) = (s * per_split, ((s + 1) * per_split).min(total));
            for sub in (start..end).step_by(SUB_PIXELS) {
                segments(g, gi, hp, wp, sub..(sub + SUB_PIXELS).min(end), &mut segs);
                for j0 in (0..pairs.len()).step_by(PAIRS) {
                    let group = &pairs[j0..(j0 + PAIRS).min(pairs.len())];
                    for seg in &segs {
                        // The last input the group reads for this segment.
                        let last = seg.x + (seg.len - 1) * sw + group[group.len() - 1] + 2;
                        assert!(last < xdata.len() && (seg.dy + seg.len) * LANES <= dyt_b.len());
                    }
                    let out = &mut part[3 * j0 * LANES..][..3 * group.len() * LANES];
                    // SAFETY: AVX-512F (`supports`); every read was bounded above (the pair
                    // offsets increase), `out` holds the group's 3 * pairs taps of 32 sums.
                    unsafe { tile(group, sw, &segs, xdata, dyt_b, out) };
                }
            }
            part
        })
        .collect();
    // Per block: the splits' partials added in order, transposed to `[channel][kk]`.
    let mut dw = vec![0f32; g.c_out * k];
    let stride = k.next_multiple_of(16);
    let cout_g = g.cout_g();
    let sums: Vec<Vec<f32>> = (0..blocks.len())
        .into_par_iter()
        .map(|b| {
            let mut sum = partials[b * splits].to_vec();
            for part in &partials[b * splits + 1..(b + 1) * splits] {
                for (a, v) in sum.iter_mut().zip(part.iter()) {
                    *a += v;
                }
            }
            let mut t = vec![0f32; LANES * stride];
            // SAFETY: AVX-512F; `sum` is `k` taps of 32 sums, `t` 32 rows of `stride >= k`.
            unsafe { transpose_band(&sum, &mut t, stride) };
            t
        })
        .collect();
    for (&(gi, c0, nch), t) in blocks.iter().zip(&sums) {
        for l in 0..nch {
            let co = gi * cout_g + c0 + l;
            dw[co * k..(co + 1) * k].copy_from_slice(&t[l * stride..][..k]);
        }
    }
    dw
}

/// The output-row segments of the batch pixels `range` (`n*P + oy*OW + ox`), into `segs`.
fn segments(
    g: &Conv2dGeom,
    gi: usize,
    hp: usize,
    wp: usize,
    range: std::ops::Range<usize>,
    segs: &mut Vec<Segment>,
) {
    segs.clear();
    let p = g.p();
    let mut at = range.start;
    while at < range.end {
        let (n, pix) = (at / p, at % p);
        let (oy, ox) = (pix / g.ow, pix % g.ow);
        let len = (g.ow - ox).min(range.end - at);
        let image = (n * g.c_in + gi * g.cin_g()) * hp * wp;
        segs.push(Segment {
            x: image + oy * g.stride.0 * wp + ox * g.stride.1,
            dy: at,
            len,
        });
        at += len;
    }
}

/// `dy` per block of 32 channels, channel-last: `dyt[b][n*P + p][l] = dy[n, co0_b + l, p]`
/// (0 past the block's channels), by 16 x 16 register transposes.
fn channel_last(
    dy: &[f32],
    g: &Conv2dGeom,
    blocks: &[(usize, usize, usize)],
    isa: Isa,
) -> AlignedVec<f32> {
    let p = g.p();
    let mut dyt = AlignedVec::zeroed(blocks.len() * g.n * p * LANES);
    dyt.par_chunks_mut(p * LANES)
        .enumerate()
        .for_each(|(t, dst)| {
            let (b, n) = (t / g.n, t % g.n);
            let (gi, c0, nch) = blocks[b];
            let first = (n * g.c_out + gi * g.cout_g() + c0) * p;
            let planes = &dy[first..first + nch * p];
            // SAFETY: AVX-512F (the caller's `supports`); `planes` holds `nch` planes of `p`
            // and `dst` `p` rows of 32.
            vectorized(isa, || unsafe { planes_to_rows(planes, nch, p, dst) });
        });
    dyt
}

/// `dst[q*32 + l] = planes[l*p + q]` for `l < nch` (0 for `nch <= l < 32`), `q < p`.
///
/// # Safety
/// The CPU has AVX-512F; `planes.len() >= nch * p`, `dst.len() >= 32 * p`, `nch <= 32`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn planes_to_rows(planes: &[f32], nch: usize, p: usize, dst: &mut [f32]) {
    use super::direct::transpose_16x16;
    use std::arch::x86_64::*;
    assert!(nch <= LANES && planes.len() >= nch * p && dst.len() >= LANES * p);
    // SAFETY: loads read planes l < nch at pixels below p (masked), stores write rows q < p.
    unsafe {
        for q0 in (0..p).step_by(16) {
            let live = (p - q0).min(16);
            let mask: u16 = if live == 16 { 0xffff } else { (1 << live) - 1 };
            for half in 0..2 {
                let mut r = [_mm512_setzero_ps(); 16];
                for (i, row) in r.iter_mut().enumerate() {
                    let l = 16 * half + i;
                    if l < nch {
                        *row = _mm512_maskz_loadu_ps(mask, planes.as_ptr().add(l * p + q0));
                    }
                }
                let cols = transpose_16x16(r);
                for (j, col) in cols.iter().enumerate().take(live) {
                    _mm512_storeu_ps(dst.as_mut_ptr().add((q0 + j) * LANES + 16 * half), *col);
                }
            }
        }
    }
}

/// Without x86-64 there is no AVX-512 ([`supports`] is false everywhere).
#[cfg(not(target_arch = "x86_64"))]
unsafe fn planes_to_rows(_: &[f32], _: usize, _: usize, _: &mut [f32]) {
    unreachable!("AVX-512 transposes on a CPU without AVX-512")
}

/// `out[(3j + kx)*32 + l] += sum over the segments' pixels q of
/// dyt[(seg.dy + q)*32 + l] * x[seg.x + q*sw + group[j] + kx]`.
///
/// # Safety
/// The CPU has AVX-512F; every read is in bounds (the caller checks the last one of each
/// segment); `out.len() >= 3 * group.len() * 32`; `group.len()` in `1..=4`; `sw` 1 or 2.
unsafe fn tile(
    group: &[usize],
    sw: usize,
    segs: &[Segment],
    x: &[f32],
    dyt: &[f32],
    out: &mut [f32],
) {
    let (x, dyt, out) = (x.as_ptr(), dyt.as_ptr(), out.as_mut_ptr());
    // SAFETY: forwarded (see above).
    unsafe {
        match (group.len(), sw) {
            (4, 1) => tile_avx512::<4, 1>(group, segs, x, dyt, out),
            (3, 1) => tile_avx512::<3, 1>(group, segs, x, dyt, out),
            (2, 1) => tile_avx512::<2, 1>(group, segs, x, dyt, out),
            (1, 1) => tile_avx512::<1, 1>(group, segs, x, dyt, out),
            (4, 2) => tile_avx512::<4, 2>(group, segs, x, dyt, out),
            (3, 2) => tile_avx512::<3, 2>(group, segs, x, dyt, out),
            (2, 2) => tile_avx512::<2, 2>(group, segs, x, dyt, out),
            (1, 2) => tile_avx512::<1, 2>(group, segs, x, dyt, out),
            _ => unreachable!("1 to 4 pairs, stride 1 or 2"),
        }
    }
}

/// The `32 x 3G` register tile of [`tile`] (`G` pairs, input stride `SW`).
///
/// # Safety
/// See [`tile`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512<const G: usize, const SW: usize>(
    group: &[usize],
    segs: &[Segment],
    x: *const f32,
    dyt: *const f32,
    out: *mut f32,
) {
    use std::arch::x86_64::*;
    // SAFETY: the bounds are the caller's (see `tile`).
    unsafe {
        let mut lo = [_mm512_setzero_ps(); 12];
        let mut hi = [_mm512_setzero_ps(); 12];
        for seg in segs {
            let d = dyt.add(seg.dy * LANES);
            let mut rows = [x; G];
            for (row, &off) in rows.iter_mut().zip(group) {
                *row = x.add(seg.x + off);
            }
            for q in 0..seg.len {
                let d0 = _mm512_loadu_ps(d.add(q * LANES));
                let d1 = _mm512_loadu_ps(d.add(q * LANES + 16));
                for (j, row) in rows.iter().enumerate() {
                    for kx in 0..3 {
                        let v = _mm512_set1_ps(*row.add(q * SW + kx));
                        lo[3 * j + kx] = _mm512_fmadd_ps(v, d0, lo[3 * j + kx]);
                        hi[3 * j + kx] = _mm512_fmadd_ps(v, d1, hi[3 * j + kx]);
                    }
                }
            }
        }
        for t in 0..3 * G {
            let o = out.add(t * LANES);
            _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), lo[t]));
            _mm512_storeu_ps(o.add(16), _mm512_add_ps(_mm512_loadu_ps(o.add(16)), hi[t]));
        }
    }
}

/// Without x86-64 there is no AVX-512 ([`supports`] is false everywhere).
#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile_avx512<const G: usize, const SW: usize>(
    _: &[usize],
    _: &[Segment],
    _: *const f32,
    _: *const f32,
    _: *mut f32,
) {
    unreachable!("AVX-512 tiles on a CPU without AVX-512")
}
