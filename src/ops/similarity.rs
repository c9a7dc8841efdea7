//! L2 normalization and cosine similarity, composed from differentiable ops (autograd follows).
//!
//! * `l2_normalize(x, dim, eps) = x / max(||x||_2, eps)`. The norm is computed as
//!   `m * sqrt(sum((x / m)^2))` with `m = max|x|` along `dim` held constant (detached): the same
//!   value for any constant `m > 0`, hence the same gradient, but `x / m` lies in [-1, 1], so the
//!   squares neither overflow (|x| ~ 1e20 in f32) nor underflow (|x| ~ 1e-25 in f32).
//!   For a row that is not all zero the scaled sum of squares is at least 1 (the largest entry
//!   scales to exactly 1), so clamping it below at 1/2 changes nothing there; for an all-zero
//!   row the clamp keeps `sqrt` away from 0, whose derivative is infinite (`0 * inf` would turn
//!   the gradient into NaN). Such a row then divides by `eps` and gets the finite gradient `1/eps`.
//! * `cosine_similarity(a, b, dim, eps) = sum(a / max(||a||, eps) * b / max(||b||, eps))` along
//!   `dim` after broadcasting, as PyTorch computes it: each operand is normalized on its own, so
//!   the product `||a|| ||b||` (which can overflow or underflow) is never formed.

use crate::tensor::{DType, Dim, Tensor};
use crate::Result;

impl Tensor {
    /// `x / max(||x||_2, eps)` along `dim` (as `torch.nn.functional.normalize`).
    pub fn l2_normalize<D: Dim>(&self, dim: D, eps: f64) -> Result<Tensor> {
        let d = dim.to_index(self.shape(), "l2_normalize")?;
        self.check_float("l2_normalize")?;
        // The per-row scale m = max|x|, a constant of the graph; at least the smallest normal
        // number so that an all-zero row divides 0 by something nonzero.
        let tiny = match self.dtype() {
            DType::F32 => f32::MIN_POSITIVE as f64,
            _ => f64::MIN_POSITIVE,
        };
        let scale = self
            .detach()
            .abs()?
            .max_keepdim(d)?
            .clamp(tiny, f64::INFINITY)?;
        let norm = self
            .div(&scale)?
            .sqr()?
            .sum_keepdim(d)?
            .clamp(0.5, f64::INFINITY)?
            .sqrt()?
            .mul(&scale)?;
        self.div(&norm.clamp(eps, f64::INFINITY)?)
    }

    /// Cosine similarity along `dim` (broadcasting), as `torch.nn.functional.cosine_similarity`.
    pub fn cosine_similarity<D: Dim>(&self, other: &Tensor, dim: D, eps: f64) -> Result<Tensor> {
        self.check_same(other, "cosine_similarity")?;
        let shape = self
            .shape()
            .broadcast_with(other.shape(), "cosine_similarity")?;
        let (a, b) = (self.broadcast_as(&shape)?, other.broadcast_as(&shape)?);
        let d = dim.to_index(&shape, "cosine_similarity")?;
        a.l2_normalize(d, eps)?
            .mul(&b.l2_normalize(d, eps)?)?
            .sum(d)
    }
}
