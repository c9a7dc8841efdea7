//! Optimizers and training utilities: SGD (momentum, Nesterov), Adam and AdamW with bias
//! correction, gradient-norm clipping, learning-rate schedules, and an exponential moving
//! average of weights. Each reproduces its PyTorch counterpart's update rule exactly
//! (`torch.optim.SGD`, `torch.optim.Adam`, `torch.optim.AdamW`,
//! `torch.nn.utils.clip_grad_norm_`).
//!
//! Optimizers hold *named* parameters (`blocks.0.attn.qkv.weight`, as a PyTorch state dict
//! names them) and update them in place through their shared storage, so every holder of a
//! parameter sees the new values. A parameter that does not require grad, or that has no
//! gradient at the time of `step()`, is skipped (frozen parameters stay frozen). The state of
//! an optimizer (moments, momentum buffers, step counts, learning rate) is a list of named
//! tensors, ready to be written into a checkpoint and loaded back.

pub mod adam;
pub mod clip;
pub mod ema;
pub mod schedule;
pub mod sgd;

pub use adam::{Adam, AdamConfig, AdamW, AdamWConfig};
pub use clip::clip_grad_norm;
pub use ema::Ema;
pub use schedule::{ConstantLr, LrSchedule, WarmupCosine};
pub use sgd::{Sgd, SgdConfig};

use crate::tensor::{DType, Tensor};
use crate::{Error, Result};
use std::collections::HashSet;

/// What every optimizer provides.
pub trait Optimizer {
    /// Applies one update to every parameter that requires grad and has a gradient.
    fn step(&mut self) -> Result<()>;
    /// Clears the gradient of every parameter.
    fn zero_grad(&self);
    /// The current learning rate.
    fn lr(&self) -> f64;
    /// Sets the learning rate used by the next `step()` (schedules call this).
    fn set_lr(&mut self, lr: f64);
    /// The named state for a checkpoint: per-parameter buffers (`<param>.exp_avg`, ...), the
    /// number of `step()` calls (`step`, an i64 scalar) and the learning rate (`lr`, f64).
    /// The buffers are the live tensors (no copy): save them before the next `step()`.
    fn state(&self) -> Vec<(String, Tensor)>;
    /// Restores what [`state`](Self::state) returned. Every entry is checked (names, shapes)
    /// before anything changes; the tensors are copied, so the caller's stay untouched.
    fn load_state(&mut self, state: &[(String, Tensor)]) -> Result<()>;
}

/// A parameter held by an optimizer.
#[derive(Clone, Debug)]
pub(crate) struct Param {
    pub name: String,
    pub tensor: Tensor,
}

/// Checks the parameter list: names unique, no tensor twice, float dtypes.
pub(crate) fn collect_params(
    op: &'static str,
    params: Vec<(String, Tensor)>,
) -> Result<Vec<Param>> {
    let mut names = HashSet::new();
    let mut ids = HashSet::new();
    for (name, t) in &params {
        if !names.insert(name.as_str()) {
            return Err(Error::msg(format!(
                "{op}: parameter name `{name}` appears more than once"
            )));
        }
        if !ids.insert(t.id()) {
            return Err(Error::msg(format!(
                "{op}: parameter `{name}` is the same tensor as an earlier one"
            )));
        }
        if !t.dtype().is_compute_float() {
            return Err(Error::UnsupportedDType {
                op,
                dtype: t.dtype(),
                expected: "f32 or f64 parameters",
            });
        }
    }
    Ok(params
        .into_iter()
        .map(|(name, tensor)| Param { name, tensor })
        .collect())
}

/// The gradient to apply to `p`, or `None` when the parameter is frozen or has none.
pub(crate) fn grad_for(op: &'static str, p: &Param) -> Result<Option<Tensor>> {
    if !p.tensor.requires_grad() {
        return Ok(None);
    }
    let Some(g) = p.tensor.grad() else {
        return Ok(None);
    };
    if g.shape() != p.tensor.shape() {
        return Err(Error::shape(
            op,
            format!("the gradient of `{}` does not have its shape", p.name),
            &[p.tensor.shape(), g.shape()],
        ));
    }
    if g.same_storage(&p.tensor) {
        return Err(Error::msg(format!(
            "{op}: the gradient of `{}` shares storage with the parameter itself",
            p.name
        )));
    }
    Ok(Some(g))
}

/// A private, contiguous copy of `src` in `dtype` (state loaded from a checkpoint).
pub(crate) fn fresh_copy(src: &Tensor, dtype: DType) -> Result<Tensor> {
    crate::no_grad(|| src.detach().contiguous_copy()?.to_dtype(dtype)).map(|t| t.detach())
}

/// Writes the values of `src` into `dst` in place (through its storage, so every view and
/// holder of `dst` sees them), converting the dtype if needed. Shapes must match.
pub fn assign(dst: &Tensor, src: &Tensor) -> Result<()> {
    if dst.shape() != src.shape() {
        return Err(Error::ShapeMismatch {
            op: "assign",
            lhs: dst.shape().clone(),
            rhs: src.shape().clone(),
        });
    }
    // A converted or aliasing source gets its own storage first, so the locks never overlap.
    let src = if src.dtype() != dst.dtype() || src.same_storage(dst) {
        fresh_copy(src, dst.dtype())?
    } else {
        src.detach()
    };
    let s = src.storage();
    dst.storage_mut().copy_into(dst.layout(), &s, src.layout())
}

/// An i64 scalar tensor (step counts in optimizer state).
pub(crate) fn count_tensor(n: u64) -> Result<Tensor> {
    Tensor::scalar(n as i64, crate::Device::Cpu)
}

/// Reads a step count saved by [`count_tensor`] (any dtype, one element, non-negative integer).
pub(crate) fn read_count(name: &str, t: &Tensor) -> Result<u64> {
    let v = t
        .item()
        .map_err(|e| Error::msg(format!("optimizer state `{name}`: {e}")))?;
    if !(v >= 0.0 && v.fract() == 0.0 && v <= 2f64.powi(53)) {
        return Err(Error::msg(format!(
            "optimizer state `{name}`: {v} is not a step count"
        )));
    }
    Ok(v as u64)
}

/// Reads the learning rate entry.
pub(crate) fn read_lr(t: &Tensor) -> Result<f64> {
    let v = t
        .item()
        .map_err(|e| Error::msg(format!("optimizer state `lr`: {e}")))?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(Error::msg(format!(
            "optimizer state `lr`: {v} is not a learning rate"
        )));
    }
    Ok(v)
}

/// Checks a loaded buffer has its parameter's shape.
pub(crate) fn check_state_shape(key: &str, param: &Param, t: &Tensor) -> Result<()> {
    if t.shape() != param.tensor.shape() {
        return Err(Error::shape(
            "load_state",
            format!("optimizer state `{key}` does not have the shape of its parameter"),
            &[t.shape(), param.tensor.shape()],
        ));
    }
    Ok(())
}

/// Checks a hyper-parameter is finite and within `[lo, hi)` (or `[lo, hi]` when `closed`).
pub(crate) fn check_range(
    op: &str,
    what: &str,
    v: f64,
    lo: f64,
    hi: f64,
    closed: bool,
) -> Result<()> {
    let ok = v.is_finite() && v >= lo && (v < hi || (closed && v == hi));
    if !ok {
        let r = if closed { "]" } else { ")" };
        return Err(Error::msg(format!(
            "{op}: {what} = {v} is outside [{lo}, {hi}{r}"
        )));
    }
    Ok(())
}
