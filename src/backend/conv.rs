//! 2-D convolution primitives (cross-correlation, as in every DL framework):
//!
//! ```text
//! out[n, co, oy, ox] = sum_{ci < C_in/G, ky, kx}
//!     w[co, ci, ky, kx] * x[n, g*C_in/G + ci, oy*sh + ky*dh - ph, ox*sw + kx*dw - pw]
//! ```
//! with `g = co / (C_out/G)` and out-of-range input positions reading as zero (padding).
//! Output size per axis: `O = (I + 2p - d(k-1) - 1) / s + 1`.
//!
//! Three primitives cover forward and backward (bias is a broadcast add in the op layer, so
//! its gradient, the sum over N, H, W, comes from the broadcast rule):
//! - `conv2d`:                 x, w  -> out `[N, C_out, OH, OW]`
//! - `conv2d_backward_input`:  dy, w -> dx  `[N, C_in, H, W]`   (`W^T dy`, then col2im)
//! - `conv2d_backward_weight`: x, dy -> dw  `[C_out, C_in/G, KH, KW]` (`dy col^T`)
//!
//! Each takes storages with any layout and returns a fresh contiguous storage; the geometry
//! is validated by the op layer and passed as a [`Conv2dGeom`].

use super::{on_backend, operand, same_device, same_dtype, Operand, Storage};
use crate::tensor::Layout;
use crate::Result;

/// The full geometry of one 2-D convolution, already validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dGeom {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
    pub groups: usize,
    pub oh: usize,
    pub ow: usize,
}

impl Conv2dGeom {
    /// Checks that the geometry is consistent (positive strides and dilations, groups that
    /// divide the channels, output sizes that follow from the input's), for any backend.
    pub fn check(&self, op: &'static str) -> Result<()> {
        let out_len = |i: usize, k: usize, s: usize, p: usize, d: usize| {
            let padded = p.checked_mul(2)?.checked_add(i)?;
            let span = d.checked_mul(k.max(1) - 1)?.checked_add(1)?;
            Some(padded.checked_sub(span)? / s.max(1) + 1)
        };
        let g = self;
        let ok = g.groups > 0
            && g.kh > 0
            && g.kw > 0
            && g.c_in.is_multiple_of(g.groups)
            && g.c_out.is_multiple_of(g.groups)
            && g.stride.0 > 0
            && g.stride.1 > 0
            && g.dilation.0 > 0
            && g.dilation.1 > 0
            && out_len(g.h, g.kh, g.stride.0, g.padding.0, g.dilation.0) == Some(g.oh)
            && out_len(g.w, g.kw, g.stride.1, g.padding.1, g.dilation.1) == Some(g.ow);
        if ok {
            Ok(())
        } else {
            Err(crate::Error::msg(format!(
                "{op}: inconsistent geometry {g:?}"
            )))
        }
    }

    /// Checks that `layout` (the input, weight or output gradient) has the `dims` this
    /// geometry implies.
    pub fn expect_dims(
        op: &'static str,
        what: &str,
        layout: &Layout,
        dims: [usize; 4],
    ) -> Result<()> {
        if layout.dims() == dims {
            Ok(())
        } else {
            Err(crate::Error::shape(
                op,
                format!("{what} does not match the convolution geometry (expected {dims:?})"),
                &[layout.shape(), &crate::tensor::Shape::new(dims.to_vec())],
            ))
        }
    }

    /// Input channels per group.
    pub fn cin_g(&self) -> usize {
        self.c_in / self.groups
    }
    /// Output channels per group.
    pub fn cout_g(&self) -> usize {
        self.c_out / self.groups
    }
    /// The reduction length of the implicit GEMM: `C_in/G * KH * KW`.
    pub fn k(&self) -> usize {
        self.cin_g() * self.kh * self.kw
    }
    /// Output pixels per image.
    pub fn p(&self) -> usize {
        self.oh * self.ow
    }
}

pub trait ConvBackend: Sized {
    /// `self` is the input `x`; returns `[N, C_out, OH, OW]` (no bias).
    fn conv2d(
        &self,
        x_layout: &Layout,
        w: &Self,
        w_layout: &Layout,
        g: &Conv2dGeom,
    ) -> Result<Self>;
    /// `self` is the output gradient `dy`; returns `dx` `[N, C_in, H, W]`.
    fn conv2d_backward_input(
        &self,
        dy_layout: &Layout,
        w: &Self,
        w_layout: &Layout,
        g: &Conv2dGeom,
    ) -> Result<Self>;
    /// `self` is the input `x`; returns `dw` `[C_out, C_in/G, KH, KW]`.
    fn conv2d_backward_weight(
        &self,
        x_layout: &Layout,
        dy: &Self,
        dy_layout: &Layout,
        g: &Conv2dGeom,
    ) -> Result<Self>;
}

fn check_pair(op: &'static str, a: &Storage, b: &Storage) -> Result<()> {
    same_device(op, a, b)?;
    same_dtype(op, a.dtype(), b.dtype())
}

impl Storage {
    pub fn conv2d(
        &self,
        x_layout: &Layout,
        w: &Storage,
        w_layout: &Layout,
        g: &Conv2dGeom,
    ) -> Result<Storage> {
        check_pair("conv2d", self, w)?;
        let d = self.device();
        on_backend!(self, |x| Ok(x
            .conv2d(x_layout, operand("conv2d", d, w)?, w_layout, g)?
            .into_storage()))
    }
    pub fn conv2d_backward_input(
        &self,
        dy_layout: &Layout,
        w: &Storage,
        w_layout: &Layout,
        g: &Conv2dGeom,
    ) -> Result<Storage> {
        check_pair("conv2d_backward_input", self, w)?;
        let d = self.device();
        on_backend!(self, |dy| Ok(dy
            .conv2d_backward_input(
                dy_layout,
                operand("conv2d_backward_input", d, w)?,
                w_layout,
                g
            )?
            .into_storage()))
    }
    pub fn conv2d_backward_weight(
        &self,
        x_layout: &Layout,
        dy: &Storage,
        dy_layout: &Layout,
        g: &Conv2dGeom,
    ) -> Result<Storage> {
        check_pair("conv2d_backward_weight", self, dy)?;
        let d = self.device();
        on_backend!(self, |x| Ok(x
            .conv2d_backward_weight(
                x_layout,
                operand("conv2d_backward_weight", d, dy)?,
                dy_layout,
                g
            )?
            .into_storage()))
    }
}
