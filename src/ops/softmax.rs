//! softmax and log_softmax as fused ops with analytic backward.
//!
//! `softmax(x)_j = exp(x_j - m) / sum_k exp(x_k - m)` and
//! `log_softmax(x)_j = x_j - m - ln sum_k exp(x_k - m)`, with `m = max_k x_k` along `dim`
//! (subtracting it changes nothing mathematically and keeps `exp` from overflowing). Each is
//! one backend pass over the rows of `dim`, whatever the layout. The backward is one fused pass
//! from the saved output `y`: `dx = y * (dy - sum(dy * y))` for softmax and
//! `dx = dy - exp(y) * sum(dy)` for log_softmax.

use crate::backend::softmax::SoftmaxKind;
use crate::tensor::{Dim, Tensor};
use crate::Result;

impl Tensor {
    fn softmax_op(&self, kind: SoftmaxKind, dim: usize) -> Result<Tensor> {
        self.check_float(kind.name())?;
        let storage = self.storage().softmax(kind, self.layout(), dim)?;
        let out = Tensor::from_storage(storage, self.shape().clone());
        if !crate::autograd::is_recording(&[self]) {
            return Ok(out);
        }
        let y = out.detach();
        Ok(Tensor::record(out, kind.name(), &[self], move |g| {
            let dx =
                y.storage()
                    .softmax_backward(kind, y.layout(), &g.storage(), g.layout(), dim)?;
            Ok(vec![Some(Tensor::from_storage(dx, y.shape().clone()))])
        }))
    }

    /// `exp(x) / sum(exp(x))` along `dim` (rows sum to 1).
    pub fn softmax<D: Dim>(&self, dim: D) -> Result<Tensor> {
        let d = dim.to_index(self.shape(), "softmax")?;
        self.softmax_op(SoftmaxKind::Softmax, d)
    }
    /// `x - log(sum(exp(x)))` along `dim`, computed without forming `exp(x)` unshifted.
    pub fn log_softmax<D: Dim>(&self, dim: D) -> Result<Tensor> {
        let d = dim.to_index(self.shape(), "log_softmax")?;
        self.softmax_op(SoftmaxKind::LogSoftmax, d)
    }
}
