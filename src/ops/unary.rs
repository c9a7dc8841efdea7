//! Pointwise maps. Forward and backward are each one pass: the backward primitive computes
//! `dy * f'(x)` directly from the saved input.

use crate::backend::elementwise::UnaryOp;
use crate::tensor::Tensor;
use crate::Result;

impl Tensor {
    pub(crate) fn unary_op(&self, op: UnaryOp) -> Result<Tensor> {
        self.check_float(op.name())?;
        let storage = self.storage().unary(op, self.layout())?;
        let out = Tensor::from_storage(storage, self.shape().clone());
        if !crate::autograd::is_recording(&[self]) {
            return Ok(out);
        }
        let x = self.detach();
        Ok(Tensor::record(out, op.name(), &[self], move |g| {
            let dx = x
                .storage()
                .unary_backward(op, x.layout(), &g.storage(), g.layout())?;
            Ok(vec![Some(Tensor::from_storage(dx, x.shape().clone()))])
        }))
    }

    pub fn neg(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Neg)
    }
    pub fn exp(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Exp)
    }
    pub fn log(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Log)
    }
    pub fn sqrt(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Sqrt)
    }
    pub fn rsqrt(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Rsqrt)
    }
    pub fn abs(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Abs)
    }
    pub fn relu(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Relu)
    }
    /// GELU, exact form: `0.5 x (1 + erf(x / sqrt 2))`.
    pub fn gelu(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::GeluErf)
    }
    /// GELU, tanh approximation (GPT-2's).
    pub fn gelu_tanh(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::GeluTanh)
    }
    pub fn silu(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Silu)
    }
    pub fn sigmoid(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Sigmoid)
    }
    pub fn tanh(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Tanh)
    }
    pub fn sqr(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Sqr)
    }
    pub fn recip(&self) -> Result<Tensor> {
        self.unary_op(UnaryOp::Recip)
    }
    pub fn powf(&self, e: f64) -> Result<Tensor> {
        self.unary_op(UnaryOp::Powf(e))
    }
    /// Clamps into [min, max]; the gradient is 1 inside (bounds included) and 0 outside.
    pub fn clamp(&self, min: f64, max: f64) -> Result<Tensor> {
        self.unary_op(UnaryOp::Clamp { min, max })
    }
    /// `mul * x + add` in one pass.
    pub fn affine(&self, mul: f64, add: f64) -> Result<Tensor> {
        self.unary_op(UnaryOp::Affine { mul, add })
    }
}
