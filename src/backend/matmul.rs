//! Batched matrix multiply: `out[b] = lhs[b] @ rhs[b]`, operands given as rank-3 layouts
//! (`[B, M, K]` and `[B, K, N]`) with any strides, so transposed and batch-broadcast
//! (stride 0) operands are read without a copy. Output is contiguous `[B, M, N]`.

use super::{same_dtype, Storage};
use crate::tensor::Layout;
use crate::{Error, Result};

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
        same_dtype("matmul", self.dtype(), rhs.dtype())?;
        match (self, rhs) {
            (Storage::Cpu(a), Storage::Cpu(b)) => {
                Ok(Storage::Cpu(a.matmul(lhs_layout, b, rhs_layout)?))
            }
            #[allow(unreachable_patterns)]
            _ => Err(Error::DeviceMismatch {
                op: "matmul",
                lhs: self.device(),
                rhs: rhs.device(),
            }),
        }
    }
}
