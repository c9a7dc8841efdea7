//! Pooling and nearest upsampling primitives over `[N, C, H, W]`.
//!
//! Every op of the family reads, for output pixel `(i, j)`, a rectangle of input rows
//! `rows[i] = [start, end)` times columns `cols[j]`, already clipped to the image. That
//! separable description, a [`Windows2d`], covers them all:
//! - `avg_pool2d` (count_include_pad): windows `[i*s - p, i*s - p + k)` clipped, divisor `k` per axis;
//! - `adaptive_avg_pool2d`: `[floor(i*H/oh), ceil((i+1)*H/oh))`, divisor = window length;
//! - `upsample_nearest2d`: the single pixel `floor(i*H/oh)`, divisor 1;
//! - `max_pool2d`: the clipped windows, with the max and its position.
//!
//! Primitives: `window_avg2d` (`out = sum(window) / (div_r[i] * div_c[j])`) and its backward,
//! `max_pool2d` (values plus i64 argmax indices `iy*W + ix` within the plane) and its backward
//! (scatter-add of `dy` to the argmax). Inputs with any layout; outputs fresh and contiguous.

use super::{on_backend, operand, same_device, same_dtype, Operand, Storage};
use crate::tensor::Layout;
use crate::{Error, Result};

/// One output position's input range along an axis: `[start, end)` and its divisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start: usize,
    pub end: usize,
    pub div: usize,
}

/// The separable windows of a 2-D pooling: `rows.len() = OH`, `cols.len() = OW`, all inside
/// an `in_h x in_w` plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Windows2d {
    pub in_h: usize,
    pub in_w: usize,
    pub rows: Vec<Window>,
    pub cols: Vec<Window>,
}

impl Windows2d {
    pub fn out_h(&self) -> usize {
        self.rows.len()
    }
    pub fn out_w(&self) -> usize {
        self.cols.len()
    }
    /// Checks every window lies inside the plane (so kernels index without bounds failures).
    pub fn validate(&self, op: &'static str) -> Result<()> {
        let ok = |ws: &[Window], n: usize| ws.iter().all(|w| w.start <= w.end && w.end <= n);
        if ok(&self.rows, self.in_h) && ok(&self.cols, self.in_w) {
            Ok(())
        } else {
            Err(Error::msg(format!("{op}: windows outside the input plane")))
        }
    }
}

pub trait PoolBackend: Sized {
    /// `out[n, c, i, j] = sum_{rows[i] x cols[j]} x / (rows[i].div * cols[j].div)`.
    fn window_avg2d(&self, layout: &Layout, win: &Windows2d) -> Result<Self>;
    /// The adjoint of `window_avg2d`: `dx` of shape `[N, C, in_h, in_w]`.
    fn window_avg2d_backward(&self, dy_layout: &Layout, win: &Windows2d) -> Result<Self>;
    /// The window maxima and their i64 positions `iy * in_w + ix` in the plane (first max wins;
    /// an empty window gives -inf and index 0).
    fn max_pool2d(&self, layout: &Layout, win: &Windows2d) -> Result<(Self, Self)>;
    /// `dx[n, c, idx] += dy[n, c, i, j]`; `self` is `dy`, `indices` from the forward.
    fn max_pool2d_backward(
        &self,
        dy_layout: &Layout,
        indices: &Self,
        idx_layout: &Layout,
        in_hw: (usize, usize),
    ) -> Result<Self>;
}

impl Storage {
    pub fn window_avg2d(&self, layout: &Layout, win: &Windows2d) -> Result<Storage> {
        on_backend!(self, |s| Ok(s.window_avg2d(layout, win)?.into_storage()))
    }
    pub fn window_avg2d_backward(&self, dy_layout: &Layout, win: &Windows2d) -> Result<Storage> {
        on_backend!(self, |s| Ok(s
            .window_avg2d_backward(dy_layout, win)?
            .into_storage()))
    }
    pub fn max_pool2d(&self, layout: &Layout, win: &Windows2d) -> Result<(Storage, Storage)> {
        on_backend!(self, |s| {
            let (v, i) = s.max_pool2d(layout, win)?;
            Ok((v.into_storage(), i.into_storage()))
        })
    }
    pub fn max_pool2d_backward(
        &self,
        dy_layout: &Layout,
        indices: &Storage,
        idx_layout: &Layout,
        in_hw: (usize, usize),
    ) -> Result<Storage> {
        same_device("max_pool2d_backward", self, indices)?;
        same_dtype(
            "max_pool2d_backward",
            indices.dtype(),
            crate::tensor::DType::I64,
        )?;
        let d = self.device();
        on_backend!(self, |dy| Ok(dy
            .max_pool2d_backward(
                dy_layout,
                operand("max_pool2d_backward", d, indices)?,
                idx_layout,
                in_hw
            )?
            .into_storage()))
    }
}
