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
//! the weight gradient into zeros.

use crate::backend::conv::Conv2dGeom;

/// A convolution whose dead taps are cropped away: `geom` is the cropped geometry, the live
/// taps start at (`y0`, `x0`) of the original kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct LiveTaps {
    pub geom: Conv2dGeom,
    y0: usize,
    x0: usize,
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

    /// The live taps of `w [C_out, C_in/G, KH, KW]`: `[C_out, C_in/G, kh, kw]`.
    pub fn crop_weight<T: Copy>(&self, w: &[T], g: &Conv2dGeom) -> Vec<T> {
        let (kh, kw) = (self.geom.kh, self.geom.kw);
        let mut out = Vec::with_capacity(g.c_out * g.cin_g() * kh * kw);
        for plane in w.chunks_exact(g.kh * g.kw) {
            for ky in 0..kh {
                let row = (self.y0 + ky) * g.kw + self.x0;
                out.extend_from_slice(&plane[row..row + kw]);
            }
        }
        out
    }

    /// The weight gradient of the full kernel from the cropped one: the live taps' values,
    /// zeros at the dead taps.
    pub fn expand_weight_grad<T: Copy>(&self, dw: &[T], g: &Conv2dGeom, zero: T) -> Vec<T> {
        let (kh, kw) = (self.geom.kh, self.geom.kw);
        let mut out = vec![zero; g.c_out * g.cin_g() * g.kh * g.kw];
        for (full, live) in out
            .chunks_exact_mut(g.kh * g.kw)
            .zip(dw.chunks_exact(kh * kw))
        {
            for ky in 0..kh {
                let row = (self.y0 + ky) * g.kw + self.x0;
                full[row..row + kw].copy_from_slice(&live[ky * kw..(ky + 1) * kw]);
            }
        }
        out
    }
}

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
        let back = c.expand_weight_grad(&live, &g, 0.0);
        for (i, &v) in back.iter().enumerate() {
            assert_eq!(v, if i % 9 == 4 { w[i] } else { 0.0 });
        }
    }
}
