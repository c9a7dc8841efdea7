//! Gradient checking against central finite differences, computed in f64.
//!
//! The function's output is reduced to a scalar with fixed random weights
//! (`L = sum(w * f(x))`) so every output element's gradient is exercised, then each input
//! element is nudged by ±eps and `(L(x+eps) - L(x-eps)) / 2eps` is compared with the
//! analytic gradient that `backward()` produced.

use crate::tensor::{DType, Tensor};
use crate::{Error, Result};

#[derive(Clone, Copy, Debug)]
pub struct GradCheck {
    pub eps: f64,
    pub atol: f64,
    pub rtol: f64,
    /// Seed of the output weights.
    pub seed: u64,
}

impl Default for GradCheck {
    fn default() -> Self {
        GradCheck {
            eps: 1e-6,
            atol: 1e-6,
            rtol: 1e-5,
            seed: 17,
        }
    }
}

/// Checks the gradient of `f` with respect to every floating-point input. Inputs are converted
/// to f64 leaves first; integer inputs (indices, masks) are passed through untouched.
pub fn check_gradients(
    f: impl Fn(&[Tensor]) -> Result<Tensor>,
    inputs: &[Tensor],
    opts: GradCheck,
) -> Result<()> {
    let leaves: Vec<Tensor> = inputs
        .iter()
        .map(|t| {
            if t.dtype().is_float() {
                t.to_dtype(DType::F64)?.contiguous_copy()?.requires_grad_()
            } else {
                Ok(t.clone())
            }
        })
        .collect::<Result<_>>()?;

    let y = f(&leaves)?;
    if y.dtype() != DType::F64 {
        return Err(Error::msg(format!(
            "gradcheck: output dtype is {:?}, expected F64",
            y.dtype()
        )));
    }
    let w = Tensor::rand_with_seed(y.shape().clone(), DType::F64, y.device(), opts.seed, 0)?
        .affine(2.0, -1.0)?;
    let loss = y.mul(&w)?.sum_all()?;
    loss.backward()?;

    let scalar_loss = |xs: &[Tensor]| -> Result<f64> {
        crate::autograd::no_grad(|| f(xs)?.mul(&w)?.sum_all()?.item())
    };

    for (i, leaf) in leaves.iter().enumerate() {
        if !leaf.dtype().is_float() {
            continue;
        }
        let analytic = match leaf.grad() {
            Some(g) => g.to_vec::<f64>()?,
            None => vec![0.0; leaf.elem_count()],
        };
        let base = leaf.to_vec::<f64>()?;
        for j in 0..base.len() {
            let eval = |delta: f64| -> Result<f64> {
                let mut v = base.clone();
                v[j] += delta;
                let xj = Tensor::from_vec(v, leaf.shape().clone(), leaf.device())?;
                let xs: Vec<Tensor> = leaves
                    .iter()
                    .enumerate()
                    .map(|(k, t)| if k == i { xj.clone() } else { t.detach() })
                    .collect();
                scalar_loss(&xs)
            };
            let numeric = (eval(opts.eps)? - eval(-opts.eps)?) / (2.0 * opts.eps);
            let a = analytic[j];
            if (a - numeric).abs() > opts.atol + opts.rtol * numeric.abs() {
                return Err(Error::msg(format!(
                    "gradcheck: input {i} (shape {}) element {j}: analytic {a:.10e} vs numeric {numeric:.10e}",
                    leaf.shape()
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Device;

    /// The checker itself must be able to fail: an op whose backward is off by a factor of 2.
    #[test]
    fn detects_a_wrong_backward_rule() {
        let x = Tensor::randn_with_seed(5, DType::F64, Device::Cpu, 1, 0).unwrap();
        let wrong_sqr = |xs: &[Tensor]| -> Result<Tensor> {
            let out = xs[0].detach().sqr()?;
            let saved = xs[0].detach();
            Ok(Tensor::record(out, "wrong_sqr", &[&xs[0]], move |g| {
                Ok(vec![Some(g.mul(&saved)?)])
            }))
        };
        assert!(
            check_gradients(wrong_sqr, std::slice::from_ref(&x), GradCheck::default()).is_err()
        );
        assert!(check_gradients(|xs| xs[0].sqr(), &[x], GradCheck::default()).is_ok());
    }
}
