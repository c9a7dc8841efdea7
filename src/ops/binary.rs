//! add, sub, mul, div, maximum, minimum with NumPy broadcasting, and their scalar forms.
//! Backward: each operand's gradient is reduced back to its own shape (`sum_to_shape`).

use crate::backend::elementwise::{BinaryOp, CmpOp};
use crate::tensor::Tensor;
use crate::Result;

impl Tensor {
    fn binary_op(&self, rhs: &Tensor, op: BinaryOp) -> Result<Tensor> {
        self.check_same(rhs, op.name())?;
        self.check_float(op.name())?;
        let shape = self.shape().broadcast_with(rhs.shape(), op.name())?;
        let (ll, rl) = (
            self.layout().broadcast_as(&shape)?,
            rhs.layout().broadcast_as(&shape)?,
        );
        let storage = self.storage().binary(op, &ll, &rhs.storage(), &rl)?;
        let out = Tensor::from_storage(storage, shape);
        if !crate::autograd::is_recording(&[self, rhs]) {
            return Ok(out);
        }
        let (a, b) = (self.detach(), rhs.detach());
        let (need_a, need_b) = (self.requires_grad(), rhs.requires_grad());
        Ok(Tensor::record(out, op.name(), &[self, rhs], move |g| {
            let (ga, gb) = match op {
                BinaryOp::Add => (need_a.then(|| g.clone()), need_b.then(|| g.clone())),
                BinaryOp::Sub => (
                    need_a.then(|| g.clone()),
                    if need_b { Some(g.neg()?) } else { None },
                ),
                BinaryOp::Mul => (
                    if need_a { Some(g.mul(&b)?) } else { None },
                    if need_b { Some(g.mul(&a)?) } else { None },
                ),
                BinaryOp::Div => {
                    let ga = g.div(&b)?;
                    // d(a/b)/db = -a / b^2 = -(g/b) * (a/b)
                    let gb = if need_b {
                        Some(ga.mul(&a.div(&b)?)?.neg()?)
                    } else {
                        None
                    };
                    (need_a.then_some(ga), gb)
                }
                BinaryOp::Maximum | BinaryOp::Minimum => {
                    // The winner takes the gradient; exact ties split it evenly.
                    let win = if op == BinaryOp::Maximum {
                        CmpOp::Gt
                    } else {
                        CmpOp::Lt
                    };
                    let wa = a.cmp(&b, win)?.to_dtype(a.dtype())?.add(
                        &a.cmp(&b, CmpOp::Eq)?
                            .to_dtype(a.dtype())?
                            .affine(0.5, 0.0)?,
                    )?;
                    let ga = g.mul(&wa)?;
                    let gb = if need_b { Some(g.sub(&ga)?) } else { None };
                    (need_a.then_some(ga), gb)
                }
            };
            Ok(vec![
                ga.map(|t| t.sum_to_shape(a.shape())).transpose()?,
                gb.map(|t| t.sum_to_shape(b.shape())).transpose()?,
            ])
        }))
    }

    pub fn add(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_op(rhs, BinaryOp::Add)
    }
    pub fn sub(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_op(rhs, BinaryOp::Sub)
    }
    pub fn mul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_op(rhs, BinaryOp::Mul)
    }
    pub fn div(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_op(rhs, BinaryOp::Div)
    }
    /// Elementwise maximum of two tensors.
    pub fn maximum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_op(rhs, BinaryOp::Maximum)
    }
    /// Elementwise minimum of two tensors.
    pub fn minimum(&self, rhs: &Tensor) -> Result<Tensor> {
        self.binary_op(rhs, BinaryOp::Minimum)
    }

    pub fn add_scalar(&self, v: f64) -> Result<Tensor> {
        self.affine(1.0, v)
    }
    pub fn sub_scalar(&self, v: f64) -> Result<Tensor> {
        self.affine(1.0, -v)
    }
    pub fn mul_scalar(&self, v: f64) -> Result<Tensor> {
        self.affine(v, 0.0)
    }
    pub fn div_scalar(&self, v: f64) -> Result<Tensor> {
        self.affine(1.0 / v, 0.0)
    }
}
