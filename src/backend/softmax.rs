//! Fused softmax and log_softmax along one dimension, with their analytic backward.
//!
//! Along `dim`, with `m = max_j x_j` subtracted first so `exp` never overflows:
//!
//! * softmax:     `y_j = exp(x_j - m) / sum_k exp(x_k - m)`
//! * log_softmax: `y_j = x_j - m - ln(sum_k exp(x_k - m))`
//!
//! Backward from the saved output `y` and the output gradient `dy`:
//!
//! * softmax:     `dx = y * (dy - sum_k dy_k y_k)`
//! * log_softmax: `dx = dy - exp(y) * sum_k dy_k`
//!
//! Inputs come with any layout; outputs are fresh contiguous storages of the input's shape.

use super::{on_backend, operand, same_device, same_dtype, Operand, Storage};
use crate::tensor::Layout;
use crate::Result;

/// Which of the two normalizations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SoftmaxKind {
    Softmax,
    LogSoftmax,
}

impl SoftmaxKind {
    pub fn name(self) -> &'static str {
        match self {
            SoftmaxKind::Softmax => "softmax",
            SoftmaxKind::LogSoftmax => "log_softmax",
        }
    }
}

pub trait SoftmaxBackend: Sized {
    /// `kind` of `self` along `dim`.
    fn softmax(&self, kind: SoftmaxKind, layout: &Layout, dim: usize) -> Result<Self>;
    /// `dx` from the forward output `self` (`y`) and the output gradient `dy` (same shape).
    fn softmax_backward(
        &self,
        kind: SoftmaxKind,
        y_layout: &Layout,
        dy: &Self,
        dy_layout: &Layout,
        dim: usize,
    ) -> Result<Self>;
}

impl Storage {
    pub fn softmax(&self, kind: SoftmaxKind, layout: &Layout, dim: usize) -> Result<Storage> {
        on_backend!(self, |s| Ok(s.softmax(kind, layout, dim)?.into_storage()))
    }
    pub fn softmax_backward(
        &self,
        kind: SoftmaxKind,
        y_layout: &Layout,
        dy: &Storage,
        dy_layout: &Layout,
        dim: usize,
    ) -> Result<Storage> {
        same_device(kind.name(), self, dy)?;
        same_dtype(kind.name(), self.dtype(), dy.dtype())?;
        let d = self.device();
        on_backend!(self, |y| Ok(y
            .softmax_backward(kind, y_layout, operand(kind.name(), d, dy)?, dy_layout, dim)?
            .into_storage()))
    }
}
