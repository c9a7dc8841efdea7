//! Fused cross-entropy primitives over logits `[N, C]` and class indices `[N]` (i64).
//!
//! Forward, per row i that is not ignored: `lse_i = log Σ_c exp(x_ic)`,
//! `nll_i = lse_i - x_i,t_i`, `smooth_i = lse_i - mean_c(x_ic)` (= mean_c of -log p_ic), and
//! `loss = Σ_i [(1-ε)·nll_i + ε·smooth_i] / count` with `count` the number of non-ignored
//! rows (PyTorch's mean reduction; all rows ignored gives 0/0 = NaN, as PyTorch).
//!
//! Backward: `dx_ic = g/count · (softmax(x_i)_c - (1-ε)·[c = t_i] - ε/C)` for non-ignored rows,
//! 0 for ignored rows (and 0 everywhere when count = 0).
//!
//! Memory traffic: the forward reads the logits twice (max, then Σ exp) and saves only `lse`
//! (`N` values); the backward reads the logits once and writes the gradient once.

use super::{on_backend, operand, Operand, Storage};
use crate::tensor::Layout;
use crate::Result;

/// Options of the primitive, already validated by the op layer.
#[derive(Clone, Copy, Debug)]
pub struct CrossEntropyParams {
    pub n: usize,
    pub c: usize,
    pub ignore_index: Option<i64>,
    pub label_smoothing: f64,
}

pub trait LossBackend: Sized {
    /// Returns `(loss [1], lse [N], count)`. Targets out of `0..C` (other than `ignore_index`)
    /// are an error.
    fn cross_entropy_fwd(
        &self,
        logits_layout: &Layout,
        targets: &Self,
        targets_layout: &Layout,
        p: CrossEntropyParams,
    ) -> Result<(Self, Self, usize)>;

    /// The gradient `[N, C]` of the loss for the output gradient `grad` (one element).
    #[allow(clippy::too_many_arguments)]
    fn cross_entropy_bwd(
        &self,
        logits_layout: &Layout,
        targets: &Self,
        targets_layout: &Layout,
        lse: &Self,
        grad: &Self,
        grad_layout: &Layout,
        count: usize,
        p: CrossEntropyParams,
    ) -> Result<Self>;
}

impl Storage {
    pub fn cross_entropy_fwd(
        &self,
        logits_layout: &Layout,
        targets: &Storage,
        targets_layout: &Layout,
        p: CrossEntropyParams,
    ) -> Result<(Storage, Storage, usize)> {
        let d = self.device();
        on_backend!(self, |x| {
            let (l, lse, n) = x.cross_entropy_fwd(
                logits_layout,
                operand("cross_entropy", d, targets)?,
                targets_layout,
                p,
            )?;
            Ok((l.into_storage(), lse.into_storage(), n))
        })
    }

    #[allow(clippy::too_many_arguments)]
    pub fn cross_entropy_bwd(
        &self,
        logits_layout: &Layout,
        targets: &Storage,
        targets_layout: &Layout,
        lse: &Storage,
        grad: &Storage,
        grad_layout: &Layout,
        count: usize,
        p: CrossEntropyParams,
    ) -> Result<Storage> {
        const OP: &str = "cross_entropy_backward";
        let d = self.device();
        on_backend!(self, |x| Ok(x
            .cross_entropy_bwd(
                logits_layout,
                operand(OP, d, targets)?,
                targets_layout,
                operand(OP, d, lse)?,
                operand(OP, d, grad)?,
                grad_layout,
                count,
                p,
            )?
            .into_storage()))
    }
}
