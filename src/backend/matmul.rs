//! Batched matrix multiply: `out[b] = lhs[b] @ rhs[b]`, operands given as rank-3 layouts
//! (`[B, M, K]` and `[B, K, N]`) with any strides, so transposed and batch-broadcast
//! (stride 0) operands are read without a copy. Output is contiguous `[B, M, N]`.

use super::{on_backend, operand, same_device, same_dtype, Operand, Storage};
use crate::tensor::Layout;
use crate::Result;

pub trait MatmulBackend: Sized {
    fn matmul(&self, lhs_layout: &Layout, rhs: &Self, rhs_layout: &Layout) -> Result<Self>;
}

impl Storage {
    pub fn matmul(
        &self,
        lhs_layout: &Layout,
        rhs: &Storage,
        rhs_layout: &Layout,
    ) -> Result<Storage> {
        same_device("matmul", self, rhs)?;
        same_dtype("matmul", self.dtype(), rhs.dtype())?;
        let d = self.device();
        on_backend!(self, |a| Ok(a
            .matmul(lhs_layout, operand("matmul", d, rhs)?, rhs_layout)?
            .into_storage()))
    }
}
