//! Pooling and nearest upsampling over `[N, C, H, W]`.
//!
//! All four ops are windowed reductions over separable per-axis ranges (see
//! `backend/pool.rs`):
//! - `max_pool2d`: `out = max(window)`; padding never wins (it is skipped, like PyTorch's
//!   -inf padding). The forward stores the argmax (i64, per plane) and the backward
//!   scatter-adds `dy` there.
//! - `avg_pool2d`: `out = sum(window) / (KH*KW)`, padding counted in the divisor
//!   (PyTorch's `count_include_pad=True`); backward spreads `dy / (KH*KW)` over the window.
//! - `adaptive_avg_pool2d`: bin `i` covers `[floor(i*H/oh), ceil((i+1)*H/oh))`, averaged.
//! - `upsample_nearest2d`: `out[i, j] = x[floor(i*H/oh), floor(j*W/ow)]` (exact integer
//!   arithmetic for PyTorch's `mode="nearest"`); backward sums `dy` over every copy.
//!
//! Output size of the strided pools per axis: `O = (I + 2p - k) / s + 1` (floor mode).

use crate::backend::pool::{Window, Windows2d};
use crate::tensor::Tensor;
use crate::{Error, Result};

/// The clipped windows of a strided pool along one axis, divisor `k`.
fn strided_windows(len: usize, k: usize, s: usize, p: usize) -> Vec<Window> {
    let out = (len + 2 * p - k) / s + 1;
    (0..out)
        .map(|i| {
            let a = i * s; // window start in padded coordinates
            Window {
                start: a.max(p) - p,
                end: ((a + k).min(p + len)).max(p) - p,
                div: k,
            }
        })
        .collect()
}

impl Tensor {
    fn check_nchw(&self, op: &'static str) -> Result<(usize, usize)> {
        self.check_float(op)?;
        if self.rank() != 4 || self.dims()[2] == 0 || self.dims()[3] == 0 {
            return Err(Error::shape(
                op,
                "expected a [N, C, H, W] input with H, W > 0",
                &[self.shape()],
            ));
        }
        Ok((self.dims()[2], self.dims()[3]))
    }

    fn pool_windows(
        &self,
        op: &'static str,
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
    ) -> Result<Windows2d> {
        let (h, w) = self.check_nchw(op)?;
        let bad = |msg: &str| {
            Err(Error::shape(
                op,
                format!("{msg} (kernel {kernel:?}, stride {stride:?}, padding {padding:?})"),
                &[self.shape()],
            ))
        };
        if kernel.0 == 0 || kernel.1 == 0 || stride.0 == 0 || stride.1 == 0 {
            return bad("kernel and stride must be positive");
        }
        if padding.0 > kernel.0 / 2 || padding.1 > kernel.1 / 2 {
            return bad("padding must be at most half the kernel size");
        }
        if kernel.0 > h + 2 * padding.0 || kernel.1 > w + 2 * padding.1 {
            return bad("the kernel is larger than the padded input");
        }
        Ok(Windows2d {
            in_h: h,
            in_w: w,
            rows: strided_windows(h, kernel.0, stride.0, padding.0),
            cols: strided_windows(w, kernel.1, stride.1, padding.1),
        })
    }

    /// Runs the window-average primitive and records its adjoint.
    fn window_avg(&self, op: &'static str, win: Windows2d) -> Result<Tensor> {
        let d = self.dims();
        let out_shape = [d[0], d[1], win.out_h(), win.out_w()];
        let storage = self.storage().window_avg2d(self.layout(), &win)?;
        let out = Tensor::from_storage(storage, out_shape);
        let in_shape = self.shape().clone();
        Ok(Tensor::record(out, op, &[self], move |g| {
            let dx = g.storage().window_avg2d_backward(g.layout(), &win)?;
            Ok(vec![Some(Tensor::from_storage(dx, in_shape))])
        }))
    }

    pub fn max_pool2d(
        &self,
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
    ) -> Result<Tensor> {
        let win = self.pool_windows("max_pool2d", kernel, stride, padding)?;
        let d = self.dims();
        let out_shape = [d[0], d[1], win.out_h(), win.out_w()];
        let (vals, idx) = self.storage().max_pool2d(self.layout(), &win)?;
        let out = Tensor::from_storage(vals, out_shape);
        if !crate::autograd::is_recording(&[self]) {
            return Ok(out);
        }
        let idx = Tensor::from_storage(idx, out_shape);
        let (in_shape, in_hw) = (self.shape().clone(), (win.in_h, win.in_w));
        Ok(Tensor::record(out, "max_pool2d", &[self], move |g| {
            let dx =
                g.storage()
                    .max_pool2d_backward(g.layout(), &idx.storage(), idx.layout(), in_hw)?;
            Ok(vec![Some(Tensor::from_storage(dx, in_shape))])
        }))
    }
    /// Average pooling; padded positions count in the divisor (PyTorch's `count_include_pad=True`).
    pub fn avg_pool2d(
        &self,
        kernel: (usize, usize),
        stride: (usize, usize),
        padding: (usize, usize),
    ) -> Result<Tensor> {
        let win = self.pool_windows("avg_pool2d", kernel, stride, padding)?;
        self.window_avg("avg_pool2d", win)
    }
    pub fn adaptive_avg_pool2d(&self, out: (usize, usize)) -> Result<Tensor> {
        let op = "adaptive_avg_pool2d";
        let (h, w) = self.check_nchw(op)?;
        if out.0 == 0 || out.1 == 0 {
            return Err(Error::shape(
                op,
                format!("output size {out:?} must be positive"),
                &[self.shape()],
            ));
        }
        let bins = |len: usize, o: usize| -> Vec<Window> {
            (0..o)
                .map(|i| {
                    let (start, end) = (i * len / o, ((i + 1) * len).div_ceil(o));
                    Window {
                        start,
                        end,
                        div: end - start,
                    }
                })
                .collect()
        };
        let win = Windows2d {
            in_h: h,
            in_w: w,
            rows: bins(h, out.0),
            cols: bins(w, out.1),
        };
        self.window_avg(op, win)
    }
    /// Nearest-neighbour resize to `out = (H_out, W_out)` (PyTorch's `mode="nearest"`).
    pub fn upsample_nearest2d(&self, out: (usize, usize)) -> Result<Tensor> {
        let op = "upsample_nearest2d";
        let (h, w) = self.check_nchw(op)?;
        if out.0 == 0 || out.1 == 0 {
            return Err(Error::shape(
                op,
                format!("output size {out:?} must be positive"),
                &[self.shape()],
            ));
        }
        let src = |len: usize, o: usize| -> Vec<Window> {
            (0..o)
                .map(|i| {
                    let s = i * len / o;
                    Window {
                        start: s,
                        end: s + 1,
                        div: 1,
                    }
                })
                .collect()
        };
        let win = Windows2d {
            in_h: h,
            in_w: w,
            rows: src(h, out.0),
            cols: src(w, out.1),
        };
        self.window_avg(op, win)
    }
}
