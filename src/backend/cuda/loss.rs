//! Fused cross-entropy on the GPU (kernels in `kernels/loss.cu`). Not written yet: every primitive returns
//! [`Error::UnsupportedDevice`], so a model that needs it on the GPU fails clearly instead of
//! silently running on the host.

use super::CudaStorage;
use crate::backend::loss::{CrossEntropyParams, LossBackend};
use crate::backend::BackendStorage;
use crate::tensor::Layout;
use crate::{Error, Result};

fn unsupported<T>(op: &'static str, s: &CudaStorage) -> Result<T> {
    Err(Error::UnsupportedDevice {
        op,
        device: s.device(),
    })
}

impl LossBackend for CudaStorage {
    fn cross_entropy_fwd(
        &self,
        _logits_layout: &Layout,
        _targets: &Self,
        _targets_layout: &Layout,
        _p: CrossEntropyParams,
    ) -> Result<(Self, Self, usize)> {
        unsupported("cross_entropy", self)
    }
    fn cross_entropy_bwd(
        &self,
        _logits_layout: &Layout,
        _targets: &Self,
        _targets_layout: &Layout,
        _lse: &Self,
        _grad: &Self,
        _grad_layout: &Layout,
        _count: usize,
        _p: CrossEntropyParams,
    ) -> Result<Self> {
        unsupported("cross_entropy_backward", self)
    }
}
