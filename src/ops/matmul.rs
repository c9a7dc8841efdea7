//! Matrix multiply with NumPy/PyTorch semantics: batched, batch dims broadcast, 1-D operands
//! promoted (and the added dim removed again). Transposed views are passed to the backend as
//! strided layouts, never copied first.
//!
//! Backward: `dA = dC @ B^T`, `dB = A^T @ dC`, each summed back over broadcast batch dims.
//!
//! [`Tensor::linear`] is PyTorch's `F.linear`, `x @ W^T + b`: the bias goes to the GEMM,
//! which adds it to each output tile while the tile is still in cache (on the CPU; the same
//! values as a separate add, one pass over the output fewer). Its gradient is `dC` summed
//! over every dim but the last.

use crate::tensor::{Layout, Shape, Tensor};
use crate::{Error, Result};

impl Tensor {
    pub fn matmul(&self, rhs: &Tensor) -> Result<Tensor> {
        self.matmul_plus(rhs, None)
    }

    /// `self @ weight^T + bias` (PyTorch's `F.linear`): `self` `[..., in]`, `weight`
    /// `[out, in]`, `bias` `[out]`.
    pub fn linear(&self, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        if weight.rank() != 2 {
            return Err(Error::shape(
                "linear",
                "the weight must be [out_features, in_features]",
                &[self.shape(), weight.shape()],
            ));
        }
        if let Some(b) = bias {
            self.check_same(b, "linear")?;
            if b.dims() != [weight.dims()[0]] {
                return Err(Error::shape(
                    "linear",
                    format!(
                        "the bias must be [{}] (one per output feature)",
                        weight.dims()[0]
                    ),
                    &[weight.shape(), b.shape()],
                ));
            }
        }
        self.matmul_plus(&weight.t()?, bias)
    }

    /// `self @ rhs`, plus `bias` on every row when given: then `rhs` is a matrix `[K, N]` and
    /// `bias` `[N]` (both checked by [`Tensor::linear`], the only caller with a bias).
    fn matmul_plus(&self, rhs: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        debug_assert!(bias.is_none() || rhs.rank() == 2);
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
            return self.unsqueeze(0)?.matmul_plus(rhs, bias)?.squeeze(-2);
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
                .matmul_plus(rhs, bias)?;
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
            let bias_storage = bias.map(|t| t.storage());
            let bias = bias_storage.as_deref().zip(bias.map(|t| t.layout()));
            pa.matmul(&l3a, pb, &l3b, bias)?
        };
        let out = Tensor::from_storage(storage, full([m, n]));
        let inputs: Vec<&Tensor> = [self, rhs].into_iter().chain(bias).collect();
        if !crate::autograd::is_recording(&inputs) {
            return Ok(out);
        }
        let (a, b) = (self.detach(), rhs.detach());
        let (need_a, need_b) = (self.requires_grad(), rhs.requires_grad());
        let bias_shape = bias
            .filter(|t| t.requires_grad())
            .map(|t| t.shape().clone());
        let with_bias = bias.is_some();
        let op = if with_bias { "linear" } else { "matmul" };
        Ok(Tensor::record(out, op, &inputs, move |g| {
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
            let mut grads = vec![ga, gb];
            if with_bias {
                grads.push(bias_shape.as_ref().map(|s| g.sum_to_shape(s)).transpose()?);
            }
            Ok(grads)
        }))
    }
}
