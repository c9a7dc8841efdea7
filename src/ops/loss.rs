//! Losses: fused cross-entropy (class indices, ignore_index, label smoothing) and MSE.
//!
//! `cross_entropy` is one forward primitive (per-row log-sum-exp, NLL and the smoothing term,
//! averaged over the non-ignored rows) and one backward primitive
//! (`(softmax - smoothed one-hot)·g/count`), so neither the probabilities nor the log-softmax
//! are ever materialized: the backward recomputes `softmax = exp(x - lse)` from the saved
//! per-row `lse` (N values). Semantics are PyTorch's `F.cross_entropy` with
//! `reduction='mean'`: `loss = Σ_i [(1-ε)·nll_i + ε·mean_c(-log p_ic)] / count`. When every
//! row is ignored the loss is NaN (0/0) as in PyTorch, and the gradient is zero.
//!
//! `mse_loss = mean((pred - target)^2)` is composed of primitives (its backward comes from
//! theirs): `d pred = 2 (pred - target) / numel`, `d target = -d pred`.

use crate::backend::loss::CrossEntropyParams;
use crate::tensor::{DType, Tensor};
use crate::{Error, Result};

#[derive(Clone, Copy, Debug, Default)]
pub struct CrossEntropyOpts {
    /// Targets equal to this are skipped (and excluded from the mean).
    pub ignore_index: Option<i64>,
    /// PyTorch's `label_smoothing`, in [0, 1).
    pub label_smoothing: f64,
}

/// Mean cross-entropy of `logits` `[N, C]` against class indices `targets` `[N]` (i64).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor, opts: CrossEntropyOpts) -> Result<Tensor> {
    const OP: &str = "cross_entropy";
    logits.check_float(OP)?;
    if targets.dtype() != DType::I64 {
        return Err(Error::UnsupportedDType {
            op: OP,
            dtype: targets.dtype(),
            expected: "i64 class indices",
        });
    }
    if logits.device() != targets.device() {
        return Err(Error::DeviceMismatch {
            op: OP,
            lhs: logits.device(),
            rhs: targets.device(),
        });
    }
    if logits.rank() != 2 || targets.rank() != 1 || targets.dims()[0] != logits.dims()[0] {
        return Err(Error::shape(
            OP,
            "expected logits [N, C] and targets [N]",
            &[logits.shape(), targets.shape()],
        ));
    }
    let eps = opts.label_smoothing;
    if !(0.0..1.0).contains(&eps) {
        return Err(Error::msg(format!(
            "{OP}: label_smoothing must be in [0, 1), got {eps}"
        )));
    }
    let p = CrossEntropyParams {
        n: logits.dims()[0],
        c: logits.dims()[1],
        ignore_index: opts.ignore_index,
        label_smoothing: eps,
    };
    let (loss, lse, count) = logits.storage().cross_entropy_fwd(
        logits.layout(),
        &targets.storage(),
        targets.layout(),
        p,
    )?;
    let out = Tensor::from_storage(loss, ());
    if !crate::autograd::is_recording(&[logits]) {
        return Ok(out);
    }
    let (x, t) = (logits.detach(), targets.detach());
    let lse = Tensor::from_storage(lse, p.n);
    Ok(Tensor::record(out, OP, &[logits], move |g| {
        let dx = x.storage().cross_entropy_bwd(
            x.layout(),
            &t.storage(),
            t.layout(),
            &lse.storage(),
            &g.storage(),
            g.layout(),
            count,
            p,
        )?;
        Ok(vec![Some(Tensor::from_storage(dx, x.shape().clone()))])
    }))
}

/// Mean squared error over all elements (shapes must match).
pub fn mse_loss(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    if pred.shape() != target.shape() {
        return Err(Error::ShapeMismatch {
            op: "mse_loss",
            lhs: pred.shape().clone(),
            rhs: target.shape().clone(),
        });
    }
    pred.check_same(target, "mse_loss")?;
    pred.check_float("mse_loss")?;
    pred.sub(target)?.sqr()?.mean_all()
}
