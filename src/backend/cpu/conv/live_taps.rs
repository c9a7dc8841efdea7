//! Dropping the kernel taps that only ever read padding.
//!
//! On maps no larger than the kernel's reach, some taps fall outside the picture for *every*
//! output pixel: ResNet-18 on 32x32 pictures ends on 1x1 maps, where a 3x3 convolution with
//! padding 1 reads the picture through its centre tap alone and the other 8 multiply zeros.
//! An implicit GEMM still packs and multiplies them (its depth is `C_in * KH * KW`), and at
//! those shapes the weights dominate the traffic: 9x the work and bytes for nothing.
//!
//! Tap `ky` is live when some output row reads a real input row through it:
//! ```text
//! live(ky)  <=>  exists oy < OH:  0 <= oy*s + ky*d - p < H
//! ```
//! The live taps of each axis form one run `lo..=hi` (the read position grows with `ky`). The
//! cropped convolution has kernel `hi - lo + 1`, padding `p - lo*d`, the same stride,
//! dilation and output size, and reads the same input element at every (output, live tap):
//! `oy*s + (ky - lo)*d - (p - lo*d) = oy*s + ky*d - p`. So:
//! - forward and input gradient: the cropped convolution on the cropped weights gives the
//!   same sums without the zero terms;
//! - weight gradient: the live taps' gradients are the cropped convolution's, the dead taps'
//!   are exactly zero (each term multiplies a padding zero).
//!
//! The crop is taken only when it is a valid geometry (padding stays >= 0 and symmetric
//! padding still gives the same output size); otherwise the convolution runs as it is.
//! Cost: one copy of the live part of the weights (forward, input gradient), one scatter of
//! the weight gradient into zeros; both parallel, one pass each. A convolution left with one
//! output pixel per image and taps covering its whole input skips the copy when a single tap
//! is live (`dense.rs`).

use crate::backend::conv::Conv2dGeom;
use crate::backend::cpu::elementwise::written_vec;
use crate::backend::cpu::Float;
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// A convolution whose dead taps are cropped away: `geom` is the cropped geometry, the live
/// taps start at (`y0`, `x0`) of the original kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct LiveTaps {
    pub geom: Conv2dGeom,
    pub y0: usize,
    pub x0: usize,
}

/// The run `lo..=hi` of live taps along one axis, if any tap is live.
fn live_run(
    input: usize,
    output: usize,
    kernel: usize,
    stride: usize,
    pad: usize,
    dil: usize,
) -> Option<(usize, usize)> {
    let live = |k: usize| {
        (0..output).any(|o| {
            let at = o * stride + k * dil;
            at >= pad && at - pad < input
        })
    };
    let lo = (0..kernel).find(|&k| live(k))?;
    let hi = (0..kernel).rev().find(|&k| live(k))?;
    Some((lo, hi))
}

impl LiveTaps {
    /// The cropped convolution, when `g` has dead taps and cropping them gives a valid
    /// geometry with the same output size.
    pub fn of(g: &Conv2dGeom) -> Option<LiveTaps> {
        let (y0, y1) = live_run(g.h, g.oh, g.kh, g.stride.0, g.padding.0, g.dilation.0)?;
        let (x0, x1) = live_run(g.w, g.ow, g.kw, g.stride.1, g.padding.1, g.dilation.1)?;
        let (kh, kw) = (y1 - y0 + 1, x1 - x0 + 1);
        if kh == g.kh && kw == g.kw {
            return None;
        }
        let geom = Conv2dGeom {
            kh,
            kw,
            padding: (
                g.padding.0.checked_sub(y0 * g.dilation.0)?,
                g.padding.1.checked_sub(x0 * g.dilation.1)?,
            ),
            ..*g
        };
        geom.check("conv2d").ok()?;
        Some(LiveTaps { geom, y0, x0 })
    }

    /// Offsets of the live taps inside one `KH x KW` plane of the full kernel, in the
    /// cropped kernel's order.
    fn tap_offsets(&self, g: &Conv2dGeom) -> Vec<usize> {
        let (kh, kw) = (self.geom.kh, self.geom.kw);
        (0..kh * kw)
            .map(|j| (self.y0 + j / kw) * g.kw + self.x0 + j % kw)
            .collect()
    }

    /// The live taps of `w [C_out, C_in/G, KH, KW]`: `[C_out, C_in/G, kh, kw]`.
    pub fn crop_weight<T: Float>(&self, w: &[T], g: &Conv2dGeom) -> Vec<T> {
        let (taps, khw) = (self.tap_offsets(g), g.kh * g.kw);
        let planes = g.c_out * g.cin_g();
        let per_task = TAPS_PER_TASK.div_ceil(khw);
        let fill = |out: &mut [MaybeUninit<T>]| {
            out.par_chunks_mut(per_task * taps.len())
                .zip(w.par_chunks(per_task * khw))
                .for_each(|(live, full)| match taps.len() {
                    1 => gather_planes::<T, 1>(live, full, khw, &taps),
                    2 => gather_planes::<T, 2>(live, full, khw, &taps),
                    4 => gather_planes::<T, 4>(live, full, khw, &taps),
                    6 => gather_planes::<T, 6>(live, full, khw, &taps),
                    _ => {
                        for (live, full) in live
                            .chunks_exact_mut(taps.len())
                            .zip(full.chunks_exact(khw))
                        {
                            for (l, &t) in live.iter_mut().zip(&taps) {
                                *l = MaybeUninit::new(full[t]);
                            }
                        }
                    }
                })
        };
        // SAFETY: each of the `planes` output planes gets its `taps.len()` taps written.
        unsafe { written_vec(planes * taps.len(), fill) }
    }

    /// The weight gradient of the full kernel from the cropped one: the live taps' values,
    /// zeros at the dead taps.
    pub fn expand_weight_grad<T: Float>(&self, dw: &[T], g: &Conv2dGeom) -> Vec<T> {
        let (taps, khw) = (self.tap_offsets(g), g.kh * g.kw);
        let total = g.c_out * g.cin_g() * khw;
        let per_task = TAPS_PER_TASK.div_ceil(khw);
        let fill = |out: &mut [MaybeUninit<T>]| {
            out.par_chunks_mut(per_task * khw)
                .zip(dw.par_chunks(per_task * taps.len()))
                .for_each(|(full, live)| match taps.len() {
                    1 => scatter_planes::<T, 1>(full, live, khw, &taps),
                    2 => scatter_planes::<T, 2>(full, live, khw, &taps),
                    4 => scatter_planes::<T, 4>(full, live, khw, &taps),
                    6 => scatter_planes::<T, 6>(full, live, khw, &taps),
                    _ => {
                        for (full, live) in full
                            .chunks_exact_mut(khw)
                            .zip(live.chunks_exact(taps.len()))
                        {
                            full.fill(MaybeUninit::new(T::ZERO));
                            for (&v, &t) in live.iter().zip(&taps) {
                                full[t] = MaybeUninit::new(v);
                            }
                        }
                    }
                })
        };
        // SAFETY: every plane of `khw` taps is filled with zeros, then its live taps written.
        unsafe { written_vec(total, fill) }
    }
}

/// `live[p][j] = full[p][taps[j]]` for every plane `p` (`M` live taps out of `khw`): the tap
/// count fixed at compile time, so the loop over it unrolls (the copy is memory-bound only
/// once the per-element loop overhead is gone).
fn gather_planes<T: Float, const M: usize>(
    live: &mut [MaybeUninit<T>],
    full: &[T],
    khw: usize,
    taps: &[usize],
) {
    let taps: [usize; M] = taps.try_into().expect("M live taps");
    for (live, full) in live.chunks_exact_mut(M).zip(full.chunks_exact(khw)) {
        for j in 0..M {
            live[j] = MaybeUninit::new(full[taps[j]]);
        }
    }
}

/// `full[p] = 0` then `full[p][taps[j]] = live[p][j]` for every plane `p`; see
/// [`gather_planes`].
fn scatter_planes<T: Float, const M: usize>(
    full: &mut [MaybeUninit<T>],
    live: &[T],
    khw: usize,
    taps: &[usize],
) {
    let taps: [usize; M] = taps.try_into().expect("M live taps");
    for (full, live) in full.chunks_exact_mut(khw).zip(live.chunks_exact(M)) {
        full.fill(MaybeUninit::new(T::ZERO));
        for j in 0..M {
            full[taps[j]] = MaybeUninit::new(live[j]);
        }
    }
}

/// Elements of the full kernel per parallel task when cropping or expanding weights: the
/// copy is memory-bound (9.4 MB for a 512-channel 3x3 kernel).
const TAPS_PER_TASK: usize = 1 << 16;

#[cfg(test)]
mod tests {
    use super::*;

    fn geom(h: usize, k: usize, stride: usize, pad: usize, dil: usize) -> Conv2dGeom {
        let o = (h + 2 * pad - dil * (k - 1) - 1) / stride + 1;
        Conv2dGeom {
            n: 2,
            c_in: 3,
            h,
            w: h,
            c_out: 4,
            kh: k,
            kw: k,
            stride: (stride, stride),
            padding: (pad, pad),
            dilation: (dil, dil),
            groups: 1,
            oh: o,
            ow: o,
        }
    }

    #[test]
    fn finds_the_dead_taps_of_small_maps() {
        // 1x1 map, 3x3 padding 1: the centre tap alone, a pointwise convolution.
        let c = LiveTaps::of(&geom(1, 3, 1, 1, 1)).unwrap();
        assert_eq!((c.geom.kh, c.geom.padding, c.y0), (1, (0, 0), 1));
        // 2x2 -> 1x1 with stride 2: taps 1 and 2, padding 0.
        let c = LiveTaps::of(&geom(2, 3, 2, 1, 1)).unwrap();
        assert_eq!(
            (c.geom.kh, c.geom.padding, c.y0, c.geom.oh),
            (2, (0, 0), 1, 1)
        );
        // 2x2 stride 1: every tap reads a real pixel for some output.
        assert_eq!(LiveTaps::of(&geom(2, 3, 1, 1, 1)), None);
        assert_eq!(LiveTaps::of(&geom(8, 3, 1, 1, 1)), None);
        // A stem on a tiny picture: 7x7, padding 3, stride 2 on 2x2.
        let c = LiveTaps::of(&geom(2, 7, 2, 3, 1)).unwrap();
        assert_eq!((c.geom.kh, c.y0), (2, 3));
    }

    #[test]
    fn crop_then_expand_keeps_the_live_taps_and_zeroes_the_rest() {
        let g = geom(1, 3, 1, 1, 1);
        let c = LiveTaps::of(&g).unwrap();
        let w: Vec<f64> = (0..g.c_out * g.c_in * 9).map(|i| i as f64).collect();
        let live = c.crop_weight(&w, &g);
        assert_eq!(live.len(), g.c_out * g.c_in);
        assert!(live
            .iter()
            .enumerate()
            .all(|(i, &v)| v == (9 * i + 4) as f64));
        let back = c.expand_weight_grad(&live, &g);
        for (i, &v) in back.iter().enumerate() {
            assert_eq!(v, if i % 9 == 4 { w[i] } else { 0.0 });
        }
    }
}
