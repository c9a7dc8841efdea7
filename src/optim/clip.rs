//! Gradient-norm clipping, as `torch.nn.utils.clip_grad_norm_` (norm_type 2): the total norm
//! is the L2 norm of all gradients concatenated,
//! ```text
//! total = sqrt(sum_p sum_i g_p[i]^2)
//! coef  = max_norm / (total + 1e-6);   if coef < 1: every g_p *= coef
//! ```
//! Gradients are scaled in place (their storage is written), so every holder of a gradient
//! tensor sees the clipped values. Returns the total norm before clipping. Like PyTorch
//! (with `error_if_nonfinite=False`), a non-finite norm is returned as is.

use crate::tensor::Tensor;
use crate::{Error, Result};

/// Clips the gradients of `params` (those that require grad and have one) to a total L2
/// norm of at most `max_norm`; returns the norm before clipping.
pub fn clip_grad_norm(params: &[(String, Tensor)], max_norm: f64) -> Result<f64> {
    if max_norm.is_nan() || max_norm < 0.0 {
        return Err(Error::msg(format!(
            "clip_grad_norm: max_norm must be non-negative, got {max_norm}"
        )));
    }
    let grads: Vec<Tensor> = params
        .iter()
        .filter(|(_, p)| p.requires_grad())
        .filter_map(|(_, p)| p.grad())
        .collect();
    crate::no_grad(|| {
        let mut sum_sq = 0.0f64;
        for g in &grads {
            // Squares are summed in the gradient's dtype per tensor, then across tensors in f64.
            sum_sq += g.sqr()?.sum_all()?.item()?;
        }
        let total = sum_sq.sqrt();
        let coef = max_norm / (total + 1e-6);
        if coef < 1.0 {
            for g in &grads {
                let scaled = g.affine(coef, 0.0)?;
                let s = scaled.storage();
                g.storage_mut().copy_into(g.layout(), &s, scaled.layout())?;
            }
        }
        Ok(total)
    })
}
