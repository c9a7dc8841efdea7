//! 2-D convolution (stride, padding, dilation, groups), forward and both backwards.
//!
//! `out[n, co] = bias[co] + sum_{ci in group(co), ky, kx} w[co, ci, ky, kx] * x_pad[n, ci, oy*s + ky*d, ox*s + kx*d]`
//! on `x: [N, C_in, H, W]`, `w: [C_out, C_in/G, KH, KW]`, giving `[N, C_out, OH, OW]` with
//! `O = (I + 2p - d(k-1) - 1) / s + 1` per axis.
//!
//! The convolution itself is one backend primitive (an implicit GEMM, see
//! `backend/cpu/conv.rs`); its backward calls the two gradient primitives:
//! `dx = conv2d_backward_input(dy, w)` (the transposed convolution) and
//! `dw = conv2d_backward_weight(x, dy)`. The bias is a broadcast add, so its gradient, the
//! sum of `dy` over N, OH, OW, comes from the broadcast rule of `add`.
//! Non-contiguous inputs are accepted; the CPU kernel gathers them contiguously first.

use crate::backend::conv::Conv2dGeom;
use crate::tensor::Tensor;
use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dParams {
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
    pub groups: usize,
}

impl Default for Conv2dParams {
    fn default() -> Self {
        Conv2dParams {
            stride: (1, 1),
            padding: (0, 0),
            dilation: (1, 1),
            groups: 1,
        }
    }
}

/// Checks the shapes and parameters of a convolution and computes its geometry.
fn conv2d_geom(x: &Tensor, w: &Tensor, p: &Conv2dParams) -> Result<Conv2dGeom> {
    let op = "conv2d";
    let shapes = [x.shape(), w.shape()];
    let fail = |msg: String| Error::shape(op, format!("{msg} (params {p:?})"), &shapes);
    if x.rank() != 4 || w.rank() != 4 {
        return Err(fail(
            "expected input [N, C_in, H, W] and weight [C_out, C_in/groups, KH, KW]".into(),
        ));
    }
    let (xd, wd) = (x.dims(), w.dims());
    let (n, c_in, h, wi) = (xd[0], xd[1], xd[2], xd[3]);
    let (c_out, wc, kh, kw) = (wd[0], wd[1], wd[2], wd[3]);
    if p.groups == 0 || p.stride.0 == 0 || p.stride.1 == 0 {
        return Err(fail("groups and stride must be positive".into()));
    }
    if p.dilation.0 == 0 || p.dilation.1 == 0 || kh == 0 || kw == 0 {
        return Err(fail("dilation and kernel size must be positive".into()));
    }
    if c_in % p.groups != 0 || c_out % p.groups != 0 {
        return Err(fail(format!(
            "C_in = {c_in} and C_out = {c_out} must both be divisible by groups = {}",
            p.groups
        )));
    }
    if wc * p.groups != c_in {
        return Err(fail(format!(
            "weight has {wc} input channels per group, but the input has C_in = {c_in} over {} groups",
            p.groups
        )));
    }
    // Checked: absurd parameters are an error, not an overflow.
    let span = |d: usize, k: usize| d.checked_mul(k - 1).and_then(|v| v.checked_add(1));
    let padded = |i: usize, pad: usize| pad.checked_mul(2).and_then(|v| v.checked_add(i));
    let (Some(ekh), Some(ekw), Some(hp), Some(wp)) = (
        span(p.dilation.0, kh),
        span(p.dilation.1, kw),
        padded(h, p.padding.0),
        padded(wi, p.padding.1),
    ) else {
        return Err(fail("dilation or padding too large".into()));
    };
    if ekh > hp || ekw > wp {
        return Err(fail(format!(
            "the dilated kernel {ekh}x{ekw} is larger than the padded input {hp}x{wp}"
        )));
    }
    Ok(Conv2dGeom {
        n,
        c_in,
        h,
        w: wi,
        c_out,
        kh,
        kw,
        stride: p.stride,
        padding: p.padding,
        dilation: p.dilation,
        groups: p.groups,
        oh: (hp - ekh) / p.stride.0 + 1,
        ow: (wp - ekw) / p.stride.1 + 1,
    })
}

impl Tensor {
    /// Input `[N, C_in, H, W]`, weight `[C_out, C_in/groups, KH, KW]`, bias `[C_out]`.
    pub fn conv2d(
        &self,
        weight: &Tensor,
        bias: Option<&Tensor>,
        params: Conv2dParams,
    ) -> Result<Tensor> {
        self.check_same(weight, "conv2d")?;
        self.check_float("conv2d")?;
        let geom = conv2d_geom(self, weight, &params)?;
        if let Some(b) = bias {
            self.check_same(b, "conv2d")?;
            if b.dims() != [geom.c_out] {
                return Err(Error::shape(
                    "conv2d",
                    format!("bias must be [C_out] = [{}]", geom.c_out),
                    &[self.shape(), weight.shape(), b.shape()],
                ));
            }
        }
        let storage =
            self.storage()
                .conv2d(self.layout(), &weight.storage(), weight.layout(), &geom)?;
        let out = Tensor::from_storage(storage, [geom.n, geom.c_out, geom.oh, geom.ow]);
        let out = if crate::autograd::is_recording(&[self, weight]) {
            let (x, w) = (self.detach(), weight.detach());
            let (need_x, need_w) = (self.requires_grad(), weight.requires_grad());
            Tensor::record(out, "conv2d", &[self, weight], move |g| {
                let gx = if need_x {
                    let s = g.storage().conv2d_backward_input(
                        g.layout(),
                        &w.storage(),
                        w.layout(),
                        &geom,
                    )?;
                    Some(Tensor::from_storage(s, x.shape().clone()))
                } else {
                    None
                };
                let gw = if need_w {
                    let s = x.storage().conv2d_backward_weight(
                        x.layout(),
                        &g.storage(),
                        g.layout(),
                        &geom,
                    )?;
                    Some(Tensor::from_storage(s, w.shape().clone()))
                } else {
                    None
                };
                Ok(vec![gx, gw])
            })
        } else {
            out
        };
        match bias {
            Some(b) => out.add(&b.reshape((1, geom.c_out, 1, 1))?),
            None => Ok(out),
        }
    }
}
