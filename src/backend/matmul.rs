//! Batched matrix multiply: `out[b] = lhs[b] @ rhs[b]`, operands given as rank-3 layouts
//! (`[B, M, K]` and `[B, K, N]`) with any strides, so transposed and batch-broadcast
//! (stride 0) operands are read without a copy. Output is contiguous `[B, M, N]`. An optional
//! `bias` (`[N]`) is added to every row, as a Linear layer's `x @ W^T + b`: the same values as
//! a separate broadcast add, which the CPU GEMM does tile by tile while the tile is in cache.

use super::{on_backend, operand, same_device, same_dtype, Operand, Storage};
use crate::tensor::Layout;
use crate::Result;

pub trait MatmulBackend: Sized {
    /// `bias`, when given, is `[N]` (checked by [`Storage::matmul`]).
    fn matmul(
        &self,
        lhs_layout: &Layout,
        rhs: &Self,
        rhs_layout: &Layout,
        bias: Option<(&Self, &Layout)>,
    ) -> Result<Self>;
}

impl Storage {
    pub fn matmul(
        &self,
        lhs_layout: &Layout,
        rhs: &Storage,
        rhs_layout: &Layout,
        bias: Option<(&Storage, &Layout)>,
    ) -> Result<Storage> {
        same_device("matmul", self, rhs)?;
        same_dtype("matmul", self.dtype(), rhs.dtype())?;
        if let Some((b, bl)) = bias {
            same_device("matmul", self, b)?;
            same_dtype("matmul", self.dtype(), b.dtype())?;
            // One bias element per output column, `[N]` of `rhs: [B, K, N]`.
            if rhs_layout.dims().get(2).is_none_or(|&n| bl.dims() != [n]) {
                return Err(crate::Error::ShapeMismatch {
                    op: "matmul (bias)",
                    lhs: rhs_layout.shape().clone(),
                    rhs: bl.shape().clone(),
                });
            }
        }
        let d = self.device();
        on_backend!(self, |a| {
            let bias = match bias {
                Some((b, l)) => Some((operand("matmul", d, b)?, l)),
                None => None,
            };
            Ok(
                a.matmul(lhs_layout, operand("matmul", d, rhs)?, rhs_layout, bias)?
                    .into_storage(),
            )
        })
    }
}
