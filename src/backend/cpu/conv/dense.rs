//! Convolutions that are one dense layer: one output pixel per image, read through taps that
//! cover the whole input exactly.
//!
//! At the end of ResNet-18 on 32x32 pictures the maps are 2x2 and 1x1: a 3x3 convolution with
//! padding 1 on a 1x1 map reads it through its centre tap alone, and a stride-2 3x3 on a 2x2
//! map reads the four pixels through taps `1..=2` of each axis (`live_taps.rs` finds them).
//! After the dead taps are dropped, the kernel is the size of the input, the padding is zero
//! and the output is 1x1, so with `x` flattened to `[N, K]` (`K = C_in * H * W`, in the order
//! `(ci, iy, ix)` of both `x` and the cropped kernel):
//! ```text
//! forward         y[n, co]  = sum_k x[n, k] W[co, k]     y  = x  @ W^T
//! input gradient  dx[n, k]  = sum_co dy[n, co] W[co, k]  dx = dy @ W
//! weight gradient dW[co, k] = sum_n dy[n, co] x[n, k]    dW = dy^T @ x
//! ```
//! three calls of the GEMM, where the implicit GEMM would put the `C_out` channels on the rows
//! and only `N` (16) pixels on the columns of a 32-wide register tile, and would pack `K` x `N`
//! panels of an im2col for every row block.
//!
//! The weights are never copied when the live taps are the single tap `(y0, x0)`: the GEMM
//! reads `W[co, ci, y0, x0]` in place, as a matrix with strides `(C_in*KH*KW, KH*KW)`. Other
//! crops (2x2 of 3x3) copy the live taps first (`LiveTaps::crop_weight`).
//! Cost: `2 * N * C_out * K` FLOPs per pass, plus reading `W` once (all of it, in cache lines,
//! when it is read in place with a stride).

use super::live_taps::LiveTaps;
use super::{Isa, PackedFloat};
use crate::backend::conv::Conv2dGeom;
use crate::tensor::{Layout, Shape};
use std::borrow::Cow;

/// The weights as a `[C_out, K]` matrix: element `(co, k)` at `offset + co*s_co + k*s_k` of
/// `data` (the caller's tensor, or a copy of its live taps).
pub(super) struct DenseWeights<'a, T: Clone> {
    data: Cow<'a, [T]>,
    offset: usize,
    s_co: usize,
    s_k: usize,
}

/// A convolution that is a dense layer: `K` inputs per image, `C_out` outputs.
pub(super) struct Dense {
    n: usize,
    k: usize,
    c_out: usize,
    live: Option<LiveTaps>,
}

impl Dense {
    /// `g` as a dense layer, if its live taps cover its whole input with one output pixel.
    pub fn of(g: &Conv2dGeom) -> Option<Dense> {
        let live = LiveTaps::of(g);
        let lg = live.map_or(*g, |l| l.geom);
        let covers = lg.groups == 1
            && (lg.oh, lg.ow) == (1, 1)
            && lg.padding == (0, 0)
            && (lg.kh, lg.kw) == (lg.h, lg.w)
            && (lg.kh == 1 || lg.dilation.0 == 1)
            && (lg.kw == 1 || lg.dilation.1 == 1);
        covers.then(|| Dense {
            n: g.n,
            k: g.c_in * g.h * g.w,
            c_out: g.c_out,
            live,
        })
    }

    /// The weights as `[C_out, K]`: in place when no tap is dead or a single one is live,
    /// else a copy of the live taps.
    pub fn weights<'a, T: PackedFloat>(&self, w: &'a [T], g: &Conv2dGeom) -> DenseWeights<'a, T> {
        let khw = g.kh * g.kw;
        match self.live {
            None => DenseWeights {
                data: Cow::Borrowed(w),
                offset: 0,
                s_co: self.k,
                s_k: 1,
            },
            Some(l) if (l.geom.kh, l.geom.kw) == (1, 1) => DenseWeights {
                data: Cow::Borrowed(w),
                offset: l.y0 * g.kw + l.x0,
                s_co: g.c_in * khw,
                s_k: khw,
            },
            Some(l) => DenseWeights {
                data: Cow::Owned(l.crop_weight(w, g)),
                offset: 0,
                s_co: self.k,
                s_k: 1,
            },
        }
    }

    /// `y [N, C_out] = x [N, K] @ W^T`.
    pub fn forward<T: PackedFloat>(&self, x: &[T], w: &DenseWeights<T>, isa: Isa) -> Vec<T> {
        let lx = Layout::contiguous([1, self.n, self.k]);
        let lw = Layout::new(
            Shape::new(vec![1, self.k, self.c_out]),
            vec![0, w.s_k, w.s_co],
            w.offset,
        );
        T::gemm(x, &lx, &w.data, &lw, None, isa)
    }

    /// `dx [N, K] = dy [N, C_out] @ W`.
    pub fn backward_input<T: PackedFloat>(
        &self,
        dy: &[T],
        w: &DenseWeights<T>,
        isa: Isa,
    ) -> Vec<T> {
        let ldy = Layout::contiguous([1, self.n, self.c_out]);
        let lw = Layout::new(
            Shape::new(vec![1, self.c_out, self.k]),
            vec![0, w.s_co, w.s_k],
            w.offset,
        );
        T::gemm(dy, &ldy, &w.data, &lw, None, isa)
    }

    /// `dW [C_out, C_in, KH, KW]`: `dy^T @ x` at the live taps, zero at the dead ones.
    pub fn backward_weight<T: PackedFloat>(
        &self,
        x: &[T],
        dy: &[T],
        g: &Conv2dGeom,
        isa: Isa,
    ) -> Vec<T> {
        let ldy = Layout::new(
            Shape::new(vec![1, self.c_out, self.n]),
            vec![0, 1, self.c_out],
            0,
        );
        let lx = Layout::contiguous([1, self.n, self.k]);
        let dw = T::gemm(dy, &ldy, x, &lx, None, isa);
        match self.live {
            Some(l) => l.expand_weight_grad(&dw, g),
            None => dw,
        }
    }
}
