//! Comparisons (u8 masks, not differentiable), `where_cond` and `masked_fill`.

use crate::backend::elementwise::CmpOp;
use crate::tensor::Tensor;
use crate::{Error, Result};

impl Tensor {
    /// A u8 mask, 1 where `self <op> rhs` holds (broadcasting).
    pub fn cmp(&self, rhs: &Tensor, op: CmpOp) -> Result<Tensor> {
        self.check_same(rhs, "cmp")?;
        let shape = self.shape().broadcast_with(rhs.shape(), "cmp")?;
        let (ll, rl) = (
            self.layout().broadcast_as(&shape)?,
            rhs.layout().broadcast_as(&shape)?,
        );
        let storage = self.storage().cmp(op, &ll, &rhs.storage(), &rl)?;
        Ok(Tensor::from_storage(storage, shape))
    }
    pub fn eq_t(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp(rhs, CmpOp::Eq)
    }
    pub fn ne_t(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp(rhs, CmpOp::Ne)
    }
    pub fn lt_t(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp(rhs, CmpOp::Lt)
    }
    pub fn le_t(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp(rhs, CmpOp::Le)
    }
    pub fn gt_t(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp(rhs, CmpOp::Gt)
    }
    pub fn ge_t(&self, rhs: &Tensor) -> Result<Tensor> {
        self.cmp(rhs, CmpOp::Ge)
    }
    /// Compares against a scalar of this tensor's dtype.
    pub fn cmp_scalar(&self, v: f64, op: CmpOp) -> Result<Tensor> {
        let s = Tensor::full(v, (), self.dtype(), self.device())?;
        self.cmp(&s, op)
    }

    /// `on_true` where this u8 mask is nonzero, else `on_false` (all three broadcast).
    /// Gradients flow to both branches through the mask; the mask gets none.
    pub fn where_cond(&self, on_true: &Tensor, on_false: &Tensor) -> Result<Tensor> {
        if self.dtype() != crate::DType::U8 {
            return Err(Error::UnsupportedDType {
                op: "where_cond",
                dtype: self.dtype(),
                expected: "a u8 mask",
            });
        }
        on_true.check_same(on_false, "where_cond")?;
        let shape = self
            .shape()
            .broadcast_with(on_true.shape(), "where_cond")?
            .broadcast_with(on_false.shape(), "where_cond")?;
        let (lc, lt, lf) = (
            self.layout().broadcast_as(&shape)?,
            on_true.layout().broadcast_as(&shape)?,
            on_false.layout().broadcast_as(&shape)?,
        );
        let storage =
            self.storage()
                .where_cond(&lc, &on_true.storage(), &lt, &on_false.storage(), &lf)?;
        let out = Tensor::from_storage(storage, shape);
        if !crate::autograd::is_recording(&[on_true, on_false]) {
            return Ok(out);
        }
        let mask = self.detach();
        let (ts, fs) = (on_true.shape().clone(), on_false.shape().clone());
        Ok(Tensor::record(
            out,
            "where_cond",
            &[self, on_true, on_false],
            move |g| {
                let zero = g.zeros_like()?;
                let gt = mask.where_cond(g, &zero)?.sum_to_shape(&ts)?;
                let gf = mask.where_cond(&zero, g)?.sum_to_shape(&fs)?;
                Ok(vec![None, Some(gt), Some(gf)])
            },
        ))
    }

    /// `value` where the u8 `mask` (broadcast to this shape) is nonzero, else this tensor.
    pub fn masked_fill(&self, mask: &Tensor, value: f64) -> Result<Tensor> {
        let fill = Tensor::full(value, (), self.dtype(), self.device())?;
        let out = mask.where_cond(&fill, self)?;
        if out.shape() != self.shape() {
            return Err(Error::ShapeMismatch {
                op: "masked_fill",
                lhs: self.shape().clone(),
                rhs: mask.shape().clone(),
            });
        }
        Ok(out)
    }
}
