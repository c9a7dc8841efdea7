//! Batched matrix multiply on the GPU (kernels in `kernels/matmul.cu`). Not written yet: every primitive returns
//! [`Error::UnsupportedDevice`], so a model that needs it on the GPU fails clearly instead of
//! silently running on the host.

use super::CudaStorage;
use crate::backend::matmul::MatmulBackend;
use crate::backend::BackendStorage;
use crate::tensor::Layout;
use crate::{Error, Result};

fn unsupported<T>(op: &'static str, s: &CudaStorage) -> Result<T> {
    Err(Error::UnsupportedDevice {
        op,
        device: s.device(),
    })
}

impl MatmulBackend for CudaStorage {
    fn matmul(&self, _lhs_layout: &Layout, _rhs: &Self, _rhs_layout: &Layout) -> Result<Self> {
        unsupported("matmul", self)
    }
}
