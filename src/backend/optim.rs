//! Fused, in-place optimizer updates: one pass over a parameter reads its gradient and
//! updates the parameter and its state buffers where they live (no temporaries).
//!
//! Adam / AdamW (Kingma & Ba, 2015; Loshchilov & Hutter, 2019), as `torch.optim.Adam/AdamW`:
//! ```text
//! g  = grad (+ wd * p            Adam: L2 penalty folded into the gradient)
//! p  = p * (1 - lr * wd)         AdamW: decoupled weight decay
//! m  = b1 * m + (1 - b1) * g
//! v  = b2 * v + (1 - b2) * g^2
//! p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
//! ```
//! SGD with momentum, as `torch.optim.SGD`:
//! ```text
//! d = grad + wd * p
//! buf = d                              (first step)
//! buf = mu * buf + (1 - dampening) * d (later steps)
//! d = d + mu * buf (nesterov)  or  d = buf
//! p -= lr * d
//! ```
//! Exponential moving average of weights (`optim::Ema`), in place on the average `s`:
//! ```text
//! s = decay * s + (1 - decay) * p
//! ```
//! The parameter may be any strided view; the gradient any view of the same shape; the state
//! buffers are contiguous with one element per parameter element, in the parameter's dtype.

use super::{on_backend, operand, operand_mut, Storage};
use crate::tensor::Layout;
use crate::{Error, Result};

/// Hyper-parameters of one Adam/AdamW update. `step` is the 1-based count of updates this
/// parameter has received, this one included (it drives the bias correction).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamStep {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// `true`: AdamW's decoupled decay `p *= 1 - lr*wd`; `false`: Adam's L2 term `g += wd*p`.
    pub decoupled: bool,
    pub step: u64,
}

/// Hyper-parameters of one SGD update.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdStep {
    pub lr: f64,
    pub momentum: f64,
    pub dampening: f64,
    pub weight_decay: f64,
    pub nesterov: bool,
    /// The momentum buffer is initialised to the gradient on its first step (no dampening).
    pub first_step: bool,
}

pub trait OptimBackend: Sized {
    /// Updates `self` (the parameter, viewed through `layout`), `m` and `v` in place.
    fn adam_step(
        &mut self,
        layout: &Layout,
        grad: &Self,
        grad_layout: &Layout,
        m: &mut Self,
        v: &mut Self,
        hyper: &AdamStep,
    ) -> Result<()>;
    /// `self = decay * self + (1 - decay) * param` in place (`self`: the averaged weights,
    /// viewed through `layout`; `param` any view of the same shape and dtype).
    fn ema_step(
        &mut self,
        layout: &Layout,
        param: &Self,
        param_layout: &Layout,
        decay: f64,
    ) -> Result<()>;
    /// Updates `self` (the parameter) and the momentum buffer (when momentum is non-zero) in place.
    fn sgd_step(
        &mut self,
        layout: &Layout,
        grad: &Self,
        grad_layout: &Layout,
        momentum_buf: Option<&mut Self>,
        hyper: &SgdStep,
    ) -> Result<()>;
}

fn check_grad_shape(op: &'static str, layout: &Layout, grad_layout: &Layout) -> Result<()> {
    if layout.shape() != grad_layout.shape() {
        return Err(Error::ShapeMismatch {
            op,
            lhs: layout.shape().clone(),
            rhs: grad_layout.shape().clone(),
        });
    }
    Ok(())
}

impl Storage {
    pub fn adam_step(
        &mut self,
        layout: &Layout,
        grad: &Storage,
        grad_layout: &Layout,
        m: &mut Storage,
        v: &mut Storage,
        hyper: &AdamStep,
    ) -> Result<()> {
        check_grad_shape("adam_step", layout, grad_layout)?;
        let d = self.device();
        on_backend!(self, |p| p.adam_step(
            layout,
            operand("adam_step", d, grad)?,
            grad_layout,
            operand_mut("adam_step", d, m)?,
            operand_mut("adam_step", d, v)?,
            hyper,
        ))
    }
    pub fn ema_step(
        &mut self,
        layout: &Layout,
        param: &Storage,
        param_layout: &Layout,
        decay: f64,
    ) -> Result<()> {
        check_grad_shape("ema_step", layout, param_layout)?;
        let d = self.device();
        on_backend!(self, |s| s.ema_step(
            layout,
            operand("ema_step", d, param)?,
            param_layout,
            decay
        ))
    }
    pub fn sgd_step(
        &mut self,
        layout: &Layout,
        grad: &Storage,
        grad_layout: &Layout,
        momentum_buf: Option<&mut Storage>,
        hyper: &SgdStep,
    ) -> Result<()> {
        check_grad_shape("sgd_step", layout, grad_layout)?;
        let d = self.device();
        on_backend!(self, |p| {
            let buf = match momentum_buf {
                Some(b) => Some(operand_mut("sgd_step", d, b)?),
                None => None,
            };
            p.sgd_step(
                layout,
                operand("sgd_step", d, grad)?,
                grad_layout,
                buf,
                hyper,
            )
        })
    }
}
