//! Matrix multiply with NumPy/PyTorch semantics: batched, batch dims broadcast, 1-D operands
//! promoted (and the added dim removed again). Transposed views are passed to the backend as
//! strided layouts, never copied first.
//!
//! Backward: `dA = dC @ B^T`, `dB = A^T @ dC`, each summed back over broadcast batch dims.

use crate::tensor::{Layout, Shape, Tensor};
use crate::{Error, Result};

impl Tensor {
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.check_same(rhs, "matmul")?;
        self.check_float("matmul")?;
        if self.rank() == 0 || rhs.rank() == 0 {
            return Err(Error::ShapeMismatch {
                op: "matmul",
                lhs: self.shape().clone(),
                rhs: rhs.shape().clone(),
            });
        }
        // 1-D operands: a vector on the left is a row, on the right a column.
        if self.rank() == 1 {
            return self.unsqueeze(0)?.matmul(rhs)?.squeeze(-2);
        }
        if rhs.rank() == 1 {
            return self.matmul(&rhs.unsqueeze(1)?)?.squeeze(-1);
        }
        // A matrix on the right (every Linear layer): fold the left operand's batch dims into
        // its rows, one large GEMM instead of many small ones. The weight gradient then comes
        // out of a single [K, B*M] x [B*M, N] product rather than a batched one plus a sum.
        if rhs.rank() == 2 && self.rank() > 2 {
            let lead = &self.dims()[..self.rank() - 1];
            let rows: usize = lead.iter().product();
            let out = self
                .reshape(vec![rows, self.dims()[self.rank() - 1]])?
                .matmul(rhs)?;
            return out.reshape(
                lead.iter()
                    .copied()
                    .chain([rhs.dims()[1]])
                    .collect::<Vec<_>>(),
            );
        }
        let (ad, bd) = (self.dims(), rhs.dims());
        let (m, k, k2, n) = (
            ad[ad.len() - 2],
            ad[ad.len() - 1],
            bd[bd.len() - 2],
            bd[bd.len() - 1],
        );
        if k != k2 {
            return Err(Error::ShapeMismatch {
                op: "matmul",
                lhs: self.shape().clone(),
                rhs: rhs.shape().clone(),
            });
        }
        let batch = Shape::new(ad[..ad.len() - 2].to_vec())
            .broadcast_with(&Shape::new(bd[..bd.len() - 2].to_vec()), "matmul")
            .map_err(|_| Error::ShapeMismatch {
                op: "matmul",
                lhs: self.shape().clone(),
                rhs: rhs.shape().clone(),
            })?;
        let nb = batch.elem_count();
        let full =
            |inner: [usize; 2]| Shape::new(batch.dims().iter().copied().chain(inner).collect());
        let (la, lb) = (
            self.layout().broadcast_as(&full([m, k]))?,
            rhs.layout().broadcast_as(&full([k, n]))?,
        );
        let storage = {
            let (sa, sb) = (self.storage(), rhs.storage());
            // Fold the batch dims into one; when the strides cannot express that, copy first.
            let (ca, cb);
            let (pa, l3a) = match la.reshape(&Shape::new(vec![nb, m, k])) {
                Some(l) => (&*sa, l),
                None => {
                    ca = sa.copy_strided(&la)?;
                    (&ca, Layout::contiguous([nb, m, k]))
                }
            };
            let (pb, l3b) = match lb.reshape(&Shape::new(vec![nb, k, n])) {
                Some(l) => (&*sb, l),
                None => {
                    cb = sb.copy_strided(&lb)?;
                    (&cb, Layout::contiguous([nb, k, n]))
                }
            };
            pa.matmul(&l3a, pb, &l3b)?
        };
        let out = Tensor::from_storage(storage, full([m, n]));
        if !crate::autograd::is_recording(&[self, rhs]) {
            return Ok(out);
        }
        let (a, b) = (self.detach(), rhs.detach());
        let (need_a, need_b) = (self.requires_grad(), rhs.requires_grad());
        Ok(Tensor::record(out, "matmul", &[self, rhs], move |g| {
            let ga = if need_a {
                Some(g.matmul(&b.t()?)?.sum_to_shape(a.shape())?)
            } else {
                None
            };
            let gb = if need_b {
                Some(a.t()?.matmul(g)?.sum_to_shape(b.shape())?)
            } else {
                None
            };
            Ok(vec![ga, gb])
        }))
    }
}
